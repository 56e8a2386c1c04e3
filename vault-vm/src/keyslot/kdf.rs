//! The keyslot KDFs: PBKDF2-HMAC and Argon2i/Argon2id (version 0x13) over a
//! caller-given memory region (the vault's scratch memslot).
//!
//! Argon2's lanes run one after the other on the calling vCPU (no threads in the
//! vault yet): an Argon2 cost made for `p` host threads takes about `p` times as long.

use argon2::{Algorithm, Argon2, Block, Params, Version};

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
    /// least [`Kdf::scratch_needed`] long; it is wiped (volatile writes) before this
    /// returns, whatever the outcome. Errors are [`status::BAD_PARAMS`].
    ///
    /// # Safety
    /// For Argon2, `scratch` must be valid for reads and writes of `scratch_len` bytes
    /// and nothing else may use it meanwhile (in the vault: the scratch memslot of this
    /// request). Not used for PBKDF2.
    pub unsafe fn derive(
        &self,
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
                let params = Params::new(memory_kib, time, lanes, Some(out.len()))
                    .map_err(|_| status::BAD_PARAMS)?;
                let blocks = params.block_count();
                let bytes = blocks as u64 * ARGON2_BLOCK as u64;
                if scratch.is_null()
                    || !(scratch as usize).is_multiple_of(core::mem::align_of::<Block>())
                    || bytes > scratch_len
                {
                    return Err(status::KDF_LIMIT);
                }
                let alg = if id {
                    Algorithm::Argon2id
                } else {
                    Algorithm::Argon2i
                };
                let r = {
                    // SAFETY: `scratch` is aligned for `Block` (checked), valid and
                    // exclusively ours for `scratch_len >= blocks * 1024` bytes
                    // (contract of this function); any bit pattern is a valid `Block`
                    // (`[u64; 128]`).
                    let mem =
                        unsafe { core::slice::from_raw_parts_mut(scratch.cast::<Block>(), blocks) };
                    Argon2::new(alg, Version::V0x13, params)
                        .hash_password_into_with_memory(password, salt, out, mem)
                };
                // SAFETY: as above, `bytes <= scratch_len`.
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
        vec![Block::new(); kib]
    }

    /// RFC 9106 §5.1/§5.2 vectors: password 32 × 0x01, salt 16 × 0x02, secret
    /// 8 × 0x03 and associated data 12 × 0x04. Secret and associated data are not part
    /// of LUKS's use, so the full RFC vector goes through the crate directly over our
    /// scratch, and our `derive` path is checked against the crate with the same
    /// parameters without them.
    #[test]
    fn argon2_rfc9106() {
        let pwd = [1u8; 32];
        let salt = [2u8; 16];
        let secret = [3u8; 8];
        let ad = [4u8; 12];
        for (alg, want) in [
            (
                Algorithm::Argon2i,
                "c814d9d1dc7f37aa13f0d77f2494bda1c8de6b016dd388d29952a4c4672b6ce8",
            ),
            (
                Algorithm::Argon2id,
                "0d640df58d78766c08c037a34a8b53c9d01ef0452d75b65eb52520e96b01e659",
            ),
        ] {
            let params = argon2::ParamsBuilder::new()
                .m_cost(32)
                .t_cost(3)
                .p_cost(4)
                .data(argon2::AssociatedData::new(&ad).unwrap())
                .output_len(32)
                .build()
                .unwrap();
            let a = Argon2::new_with_secret(&secret, alg, Version::V0x13, params).unwrap();
            let mut mem = scratch(32);
            let mut out = [0u8; 32];
            a.hash_password_into_with_memory(&pwd, &salt, &mut out, &mut mem[..])
                .unwrap();
            let hex: std::string::String = out.iter().map(|b| std::format!("{b:02x}")).collect();
            assert_eq!(hex, want, "{alg:?}");
        }
    }

    /// Our Argon2 path equals the crate's own with the same inputs, wipes the scratch,
    /// and refuses a scratch that is too small.
    #[test]
    fn argon2_derive_matches_and_wipes() {
        for (kdf, alg) in [
            (k::ARGON2I, Algorithm::Argon2i),
            (k::ARGON2ID, Algorithm::Argon2id),
        ] {
            let d = Kdf::from_params(kdf, 0, 2, 64, 2, 64 * 1024).unwrap();
            let mut mem = scratch(64);
            let mut out = [0u8; 64];
            // SAFETY: `mem` is 64 KiB of aligned blocks, ours.
            unsafe {
                d.derive(
                    b"pw",
                    b"saltsaltsalt",
                    mem.as_mut_ptr().cast(),
                    64 * 1024,
                    &mut out,
                )
            }
            .unwrap();
            assert!(mem.iter().all(|b| b.as_ref().iter().all(|&w| w == 0)));
            let mut want = [0u8; 64];
            Argon2::new(
                alg,
                Version::V0x13,
                Params::new(64, 2, 2, Some(64)).unwrap(),
            )
            .hash_password_into_with_memory(b"pw", b"saltsaltsalt", &mut want, scratch(64))
            .unwrap();
            assert_eq!(out, want);
            // SAFETY: as above; the length passed is below what the cost needs.
            let r = unsafe {
                d.derive(
                    b"pw",
                    b"saltsaltsalt",
                    mem.as_mut_ptr().cast(),
                    32 * 1024,
                    &mut out,
                )
            };
            assert_eq!(r, Err(status::KDF_LIMIT));
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
