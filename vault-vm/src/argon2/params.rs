//! Argon2 parameters, inputs and errors, with the limits of RFC 9106 § 3.1.

use core::fmt;

use super::Block;

/// The Argon2 variant (the `y` of RFC 9106, hashed into H0).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u32)]
pub enum Algorithm {
    /// Data-dependent indexing throughout.
    Argon2d = 0,
    /// Data-independent indexing throughout.
    Argon2i = 1,
    /// Data-independent indexing in the first half of the first pass, then data-dependent.
    Argon2id = 2,
}

impl Algorithm {
    /// Decodes the value stored in a [`Job`](super::Job).
    pub(crate) fn from_u32(v: u32) -> Algorithm {
        match v {
            0 => Algorithm::Argon2d,
            1 => Algorithm::Argon2i,
            _ => Algorithm::Argon2id,
        }
    }
}

/// Cost parameters of one Argon2 computation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Params {
    /// The variant.
    pub algorithm: Algorithm,
    /// Number of passes `t` (≥ 1).
    pub t_cost: u32,
    /// Memory size `m` in KiB (≥ 8 × lanes); rounded down to a multiple of 4 × lanes.
    pub m_cost: u32,
    /// Degree of parallelism `p` (1 ..= 2^24 − 1).
    pub lanes: u32,
}

/// Number of slices per pass (synchronisation points).
pub(crate) const SYNC_POINTS: u32 = 4;

impl Params {
    /// Largest number of lanes RFC 9106 allows.
    pub const MAX_LANES: u32 = 0x00FF_FFFF;
    /// Smallest output (tag) length in bytes.
    pub const MIN_OUTPUT: usize = 4;
    /// Smallest salt length in bytes.
    pub const MIN_SALT: usize = 8;

    /// Checks the cost parameters alone.
    pub fn check(&self) -> Result<(), Argon2Error> {
        if self.t_cost == 0 {
            return Err(Argon2Error::TimeCost);
        }
        if self.lanes == 0 || self.lanes > Self::MAX_LANES {
            return Err(Argon2Error::Lanes);
        }
        if u64::from(self.m_cost) < 8 * u64::from(self.lanes) {
            return Err(Argon2Error::MemoryCost);
        }
        Ok(())
    }

    /// Number of memory blocks used (`m'` = 4 × lanes × ⌊m / (4 × lanes)⌋).
    pub fn block_count(&self) -> usize {
        self.lane_length() as usize * self.lanes as usize
    }

    /// Blocks per lane.
    pub(crate) fn lane_length(&self) -> u32 {
        self.segment_length() * SYNC_POINTS
    }

    /// Blocks per segment (one lane's part of a slice).
    pub(crate) fn segment_length(&self) -> u32 {
        self.m_cost / (SYNC_POINTS * self.lanes)
    }
}

/// The byte-string inputs: password, salt and the optional secret `K` and associated
/// data `X` of RFC 9106 (LUKS uses neither). `Debug` prints lengths only.
#[derive(Clone, Copy)]
pub struct Inputs<'a> {
    /// The password `P`.
    pub password: &'a [u8],
    /// The salt `S` (at least [`Params::MIN_SALT`] bytes).
    pub salt: &'a [u8],
    /// The secret `K` (may be empty).
    pub secret: &'a [u8],
    /// The associated data `X` (may be empty).
    pub ad: &'a [u8],
}

impl<'a> Inputs<'a> {
    /// Password and salt, no secret, no associated data.
    pub fn new(password: &'a [u8], salt: &'a [u8]) -> Self {
        Inputs {
            password,
            salt,
            secret: &[],
            ad: &[],
        }
    }

    /// Checks the lengths against RFC 9106 (each < 2^32 bytes, salt ≥ 8 bytes).
    pub(crate) fn check(&self) -> Result<(), Argon2Error> {
        let max = u32::MAX as usize;
        if self.password.len() > max
            || self.salt.len() > max
            || self.secret.len() > max
            || self.ad.len() > max
        {
            return Err(Argon2Error::InputTooLong);
        }
        if self.salt.len() < Params::MIN_SALT {
            return Err(Argon2Error::SaltTooShort);
        }
        Ok(())
    }
}

impl fmt::Debug for Inputs<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Inputs")
            .field("password_len", &self.password.len())
            .field("salt_len", &self.salt.len())
            .field("secret_len", &self.secret.len())
            .field("ad_len", &self.ad.len())
            .finish()
    }
}

/// Why an Argon2 computation was refused. Nothing is computed (and no memory touched)
/// when one of these is returned.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Error {
    /// `t_cost` is 0.
    TimeCost,
    /// `lanes` is 0 or above [`Params::MAX_LANES`].
    Lanes,
    /// `m_cost` is below 8 × lanes KiB.
    MemoryCost,
    /// The memory given holds fewer than [`Params::block_count`] blocks.
    MemoryTooSmall,
    /// The output is shorter than [`Params::MIN_OUTPUT`] bytes or 2^32 bytes or longer.
    OutputLength,
    /// The salt is shorter than [`Params::MIN_SALT`] bytes.
    SaltTooShort,
    /// An input is 2^32 bytes or longer.
    InputTooLong,
    /// The [`Job`](super::Job) already has an owner.
    JobBusy,
}

impl fmt::Display for Argon2Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Argon2Error::TimeCost => "argon2: the number of passes must be at least 1",
            Argon2Error::Lanes => "argon2: the number of lanes must be 1 to 16777215",
            Argon2Error::MemoryCost => "argon2: the memory cost must be at least 8 KiB per lane",
            Argon2Error::MemoryTooSmall => {
                "argon2: the memory given is smaller than the memory cost"
            }
            Argon2Error::OutputLength => "argon2: the output length must be 4 to 2^32-1 bytes",
            Argon2Error::SaltTooShort => "argon2: the salt must be at least 8 bytes",
            Argon2Error::InputTooLong => "argon2: an input is 2^32 bytes or longer",
            Argon2Error::JobBusy => "argon2: the job board is in use by another computation",
        })
    }
}

impl core::error::Error for Argon2Error {}

/// Checks everything before any work: parameters, inputs, output and memory sizes.
pub(crate) fn check_all(
    params: &Params,
    inputs: &Inputs<'_>,
    memory: &[Block],
    out: &[u8],
) -> Result<(), Argon2Error> {
    params.check()?;
    inputs.check()?;
    if out.len() < Params::MIN_OUTPUT || out.len() > u32::MAX as usize {
        return Err(Argon2Error::OutputLength);
    }
    if memory.len() < params.block_count() {
        return Err(Argon2Error::MemoryTooSmall);
    }
    Ok(())
}
