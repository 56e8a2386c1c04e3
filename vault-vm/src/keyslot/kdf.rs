//! The keyslot KDFs: PBKDF2-HMAC and Argon2i/Argon2id (version 0x13) over a
//! caller-given memory region (the vault's scratch memslot).
//!
//! Argon2 is the vault's own core ([`crate::argon2`]): the calling vCPU owns the
//! computation on the vault's [`Job`] board, and other vCPUs that the host sends a
//! KDF_JOIN ([`crate::abi::keyslot::op::KDF_JOIN`]) compute lanes beside it. Alone (one
//! vCPU, or no join) the owner computes every lane itself.

use crate::argon2::{self as a2, Algorithm, Block, Job, Params};

use super::hash::Hash;
use crate::abi::keyslot::{kdf as kdf_id, status, SCRATCH_MAX};

/// Most PBKDF2 iterations the vault runs (vaultsetup's host limit: about a minute).
pub const MAX_PBKDF2_ITERATIONS: u32 = 100_000_000;
/// Most Argon2 passes the vault runs (vaultsetup's host limit).
pub const MAX_ARGON2_TIME: u32 = 1000;
/// Most Argon2 lanes (cryptsetup's thread maximum).
pub const MAX_ARGON2_LANES: u32 = 16;
/// Bytes of one Argon2 block.
pub const ARGON2_BLOCK: usize = 1024;

/// A validated KDF choice.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2 with `hash` as the HMAC PRF.
    Pbkdf2 {
        /// The PRF's hash.
        hash: Hash,
        /// Iterations (1..=[`MAX_PBKDF2_ITERATIONS`]).
        iterations: u32,
    },
    /// Argon2i (`id == false`) or Argon2id, version 0x13.
    Argon2 {
        /// Argon2id (else Argon2i).
        id: bool,
        /// Passes (1..=[`MAX_ARGON2_TIME`]).
        time: u32,
        /// Memory in KiB (at least 8 per lane; at most the scratch length).
        memory_kib: u32,
        /// Lanes (1..=[`MAX_ARGON2_LANES`]).
        lanes: u32,
    },
}

impl Kdf {
    /// Checks the KDF fields of a keyslot against a scratch region of `scratch_len`
    /// bytes. Refusals are [`status::BAD_PARAMS`] (unknown or malformed) or
    /// [`status::KDF_LIMIT`] (a cost above what the vault or the scratch allows).
    pub fn from_params(
        kdf: u32,
        kdf_hash: u32,
        time: u32,
        memory_kib: u32,
        lanes: u32,
        scratch_len: u64,
    ) -> Result<Kdf, u32> {
        match kdf {
            kdf_id::PBKDF2 => {
                let hash = Hash::from_id(kdf_hash).ok_or(status::BAD_PARAMS)?;
                if time == 0 || memory_kib != 0 || lanes != 0 {
                    return Err(status::BAD_PARAMS);
                }
                if time > MAX_PBKDF2_ITERATIONS {
                    return Err(status::KDF_LIMIT);
                }
                Ok(Kdf::Pbkdf2 {
                    hash,
                    iterations: time,
                })
            }
            kdf_id::ARGON2I | kdf_id::ARGON2ID => {
                if kdf_hash != 0 || time == 0 || lanes == 0 || lanes > MAX_ARGON2_LANES {
                    return Err(status::BAD_PARAMS);
                }
                if memory_kib < 8 * lanes {
                    return Err(status::BAD_PARAMS);
                }
                if time > MAX_ARGON2_TIME
                    || scratch_len > SCRATCH_MAX
                    || u64::from(memory_kib) * 1024 > scratch_len
                {
                    return Err(status::KDF_LIMIT);
                }
                Ok(Kdf::Argon2 {
                    id: kdf == kdf_id::ARGON2ID,
                    time,
                    memory_kib,
                    lanes,
                })
            }
            _ => Err(status::BAD_PARAMS),
        }
    }

    /// Bytes of scratch memory the KDF uses (0 for PBKDF2).
    pub fn scratch_needed(&self) -> u64 {
        match *self {
            Kdf::Pbkdf2 { .. } => 0,
            Kdf::Argon2 { memory_kib, .. } => u64::from(memory_kib) * 1024,
        }
    }

    /// Derives `out` (4..=64 bytes for Argon2) from `password` and `salt` (Argon2: at
    /// least 8 bytes). Argon2 works in `scratch`, which must be 64-byte aligned and at
    /// least [`Kdf::scratch_needed`] long, as the owner of `job` (vCPUs joining `job`
    /// compute lanes beside this one); the blocks it used are zero when this returns,
    /// and the whole region is wiped again (volatile writes) whatever the outcome.
    /// Errors are [`status::BAD_PARAMS`], or [`status::KDF_LIMIT`] for a scratch region
    /// that is missing, misaligned or too small.
    ///
    /// # Safety
    /// For Argon2, `scratch` must be valid for reads and writes of `scratch_len` bytes
    /// and nothing else may use it meanwhile (in the vault: the scratch memslot of this
    /// request; helpers of `job` reach it only through the job, for this computation).
    /// Not used for PBKDF2.
    pub unsafe fn derive(
        &self,
        job: &Job,
        password: &[u8],
        salt: &[u8],
        scratch: *mut u8,
        scratch_len: u64,
        out: &mut [u8],
    ) -> Result<(), u32> {
        match *self {
            Kdf::Pbkdf2 { hash, iterations } => {
                hash.pbkdf2(password, salt, iterations, out);
                Ok(())
            }
            Kdf::Argon2 {
                id,
                time,
                memory_kib,
                lanes,
            } => {
                let params = Params {
                    algorithm: if id {
                        Algorithm::Argon2id
                    } else {
                        Algorithm::Argon2i
                    },
                    t_cost: time,
                    m_cost: memory_kib,
                    lanes,
                };
                params.check().map_err(|_| status::BAD_PARAMS)?;
                let blocks = params.block_count();
                let bytes = blocks as u64 * ARGON2_BLOCK as u64;
                if scratch.is_null()
                    || !(scratch as usize).is_multiple_of(core::mem::align_of::<Block>())
                    || bytes > scratch_len
                {
                    return Err(status::KDF_LIMIT);
                }
                let r = {
                    // SAFETY: `scratch` is aligned for `Block` (checked), valid and
                    // exclusively ours for `scratch_len >= blocks * 1024` bytes
                    // (contract of this function); any bit pattern is a valid `Block`
                    // (`[u64; 128]`).
                    let mem =
                        unsafe { core::slice::from_raw_parts_mut(scratch.cast::<Block>(), blocks) };
                    a2::run_owner(job, &params, password, salt, mem, out)
                };
                // SAFETY: as above, `bytes <= scratch_len`. `run_owner` returned, so no
                // helper touches the memory any more.
                unsafe { wipe(scratch, bytes as usize) };
                r.map_err(|_| status::BAD_PARAMS)
            }
        }
    }
}

/// Zeroes `len` bytes at `p` with volatile writes (8 at a time where aligned).
///
/// # Safety
/// `p` must be valid for writes of `len` bytes.
pub(crate) unsafe fn wipe(p: *mut u8, len: usize) {
    let words = if (p as usize).is_multiple_of(8) {
        len / 8
    } else {
        0
    };
    for i in 0..words {
        // SAFETY: 8-aligned and within `len` bytes (contract of this function).
        unsafe { core::ptr::write_volatile(p.cast::<u64>().add(i), 0) };
    }
    for i in words * 8..len {
        // SAFETY: within `len` bytes.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec;

    use super::*;
    use crate::abi::keyslot::kdf as k;

    fn scratch(kib: usize) -> vec::Vec<Block> {
        vec![Block::ZERO; kib]
    }

    /// RustCrypto's Argon2 (the reference, a dev-dependency) without secret or data.
    fn reference(id: bool, time: u32, kib: u32, lanes: u32, out: &mut [u8]) {
        let alg = if id {
            ::argon2::Algorithm::Argon2id
        } else {
            ::argon2::Algorithm::Argon2i
        };
        let p = ::argon2::Params::new(kib, time, lanes, Some(out.len())).unwrap();
        ::argon2::Argon2::new(alg, ::argon2::Version::V0x13, p)
            .hash_password_into(b"pw", b"saltsaltsalt", out)
            .unwrap();
    }

    /// Our Argon2 path equals RustCrypto's with the same inputs (alone and with a
    /// helper joining the job), wipes the scratch, and refuses a scratch that is too
    /// small or misaligned.
    #[test]
    fn argon2_derive_matches_and_wipes() {
        for (kdf, id) in [(k::ARGON2I, false), (k::ARGON2ID, true)] {
            for lanes in [1, 2, 4] {
                let d = Kdf::from_params(kdf, 0, 2, 256, lanes, 256 * 1024).unwrap();
                let mut want = [0u8; 64];
                reference(id, 2, 256, lanes, &mut want);
                let job = Job::new();
                let mut mem = scratch(256);
                let base = mem.as_mut_ptr().cast::<u8>() as usize;
                let out = std::thread::scope(|s| {
                    let helper = s.spawn(|| a2::join(&job, 50_000_000));
                    let mut out = [0u8; 64];
                    // SAFETY: `mem` is 256 KiB of aligned blocks, ours; the helper only
                    // reaches it through the job.
                    unsafe {
                        d.derive(
                            &job,
                            b"pw",
                            b"saltsaltsalt",
                            base as *mut u8,
                            256 * 1024,
                            &mut out,
                        )
                    }
                    .unwrap();
                    helper.join().unwrap();
                    out
                });
                assert_eq!(out, want, "kdf {kdf} lanes {lanes}");
                assert!(mem.iter().all(|b| b.0.iter().all(|&w| w == 0)));
                let mut out = [0u8; 64];
                // SAFETY: as above; the length passed is below what the cost needs.
                let r = unsafe {
                    d.derive(
                        &job,
                        b"pw",
                        b"saltsaltsalt",
                        mem.as_mut_ptr().cast(),
                        128 * 1024,
                        &mut out,
                    )
                };
                assert_eq!(r, Err(status::KDF_LIMIT));
                // SAFETY: as above; misaligned by 8 (refused before any access).
                let r = unsafe {
                    d.derive(
                        &job,
                        b"pw",
                        b"saltsaltsalt",
                        mem.as_mut_ptr().cast::<u8>().add(8),
                        255 * 1024,
                        &mut out,
                    )
                };
                assert_eq!(r, Err(status::KDF_LIMIT));
            }
        }
    }

    #[test]
    fn refusals() {
        let f = Kdf::from_params;
        assert_eq!(f(k::PBKDF2, 0, 1000, 0, 0, 0), Err(status::BAD_PARAMS));
        assert_eq!(f(k::PBKDF2, 3, 0, 0, 0, 0), Err(status::BAD_PARAMS));
        assert_eq!(f(k::PBKDF2, 3, 10, 1, 0, 0), Err(status::BAD_PARAMS));
        assert_eq!(
            f(k::PBKDF2, 3, MAX_PBKDF2_ITERATIONS + 1, 0, 0, 0),
            Err(status::KDF_LIMIT)
        );
        assert!(f(k::PBKDF2, 3, 1000, 0, 0, 0).is_ok());
        assert_eq!(
            f(k::ARGON2ID, 0, 1, 1024, 0, 1 << 20),
            Err(status::BAD_PARAMS)
        );
        assert_eq!(
            f(k::ARGON2ID, 0, 1, 1024, 17, 1 << 20),
            Err(status::BAD_PARAMS)
        );
        assert_eq!(
            f(k::ARGON2ID, 0, 0, 1024, 1, 1 << 20),
            Err(status::BAD_PARAMS)
        );
        assert_eq!(
            f(k::ARGON2ID, 3, 1, 1024, 1, 1 << 20),
            Err(status::BAD_PARAMS)
        );
        assert_eq!(f(k::ARGON2ID, 0, 1, 8, 2, 1 << 20), Err(status::BAD_PARAMS));
        assert_eq!(
            f(k::ARGON2ID, 0, 1, 1025, 1, 1 << 20),
            Err(status::KDF_LIMIT)
        );
        assert_eq!(
            f(k::ARGON2ID, 0, 1, 1024, 1, SCRATCH_MAX + (1 << 21)),
            Err(status::KDF_LIMIT)
        );
        assert_eq!(
            f(k::ARGON2I, 0, MAX_ARGON2_TIME + 1, 1024, 1, 1 << 20),
            Err(status::KDF_LIMIT)
        );
        assert!(f(k::ARGON2I, 0, 1, 1024, 4, 1 << 20).is_ok());
        assert_eq!(f(9, 0, 1, 1024, 4, 1 << 20), Err(status::BAD_PARAMS));
    }
}
