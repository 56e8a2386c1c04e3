//! Key derivation: PBKDF2 (HMAC with sha1/sha224/sha256/sha384/sha512/ripemd160) and
//! Argon2i/Argon2id, with limits that refuse absurd costs before any work is done.

use crate::exit::{ExitCode, HasExitCode};
use crate::secret::SecretBuf;
use sha2::Digest;

/// Errors of key derivation.
#[derive(Debug, thiserror::Error)]
pub enum KdfError {
    /// The hash is not one LUKS uses (or not supported here).
    #[error("Hash algorithm {0:?} is not supported (supported: sha1, sha224, sha256, sha384, sha512, ripemd160).")]
    UnsupportedHash(String),
    /// The KDF type is unknown.
    #[error("PBKDF {0:?} is not supported (supported: pbkdf2, argon2i, argon2id).")]
    UnsupportedKdf(String),
    /// PBKDF2 iteration count above the limit.
    #[error("PBKDF2 iteration count {iterations} is above the limit of {limit}; refusing (corrupted or hostile header?).")]
    TooManyIterations {
        /// The PBKDF2 iteration count the header asks for.
        iterations: u32,
        /// The highest iteration count accepted.
        limit: u32,
    },
    /// Argon2 memory cost above the limit.
    #[error("Argon2 memory cost {memory_kib} KiB is above the limit of {limit_kib} KiB (4 GiB or half the physical memory); refusing.")]
    MemoryTooHigh {
        /// The Argon2 memory cost the header asks for, in KiB.
        memory_kib: u32,
        /// The highest memory cost accepted, in KiB.
        limit_kib: u32,
    },
    /// Argon2 time cost above the limit.
    #[error("Argon2 time cost {time} is above the limit of {limit}; refusing (corrupted or hostile header?).")]
    TimeTooHigh {
        /// The Argon2 time cost (passes) the header asks for.
        time: u32,
        /// The highest time cost accepted.
        limit: u32,
    },
    /// Argon2 lanes (threads) outside 1..=limit.
    #[error("Argon2 parallel cost {lanes} is outside 1..={limit}; refusing.")]
    BadLanes {
        /// The Argon2 lane count the header asks for.
        lanes: u32,
        /// The highest lane count accepted.
        limit: u32,
    },
    /// The Argon2 memory could not be allocated.
    #[error("Cannot allocate {0} KiB of memory for Argon2.")]
    OutOfMemory(u32),
    /// Zero iterations or cost, or a cost combination the header itself makes
    /// impossible (checked before the algorithm runs).
    #[error("Invalid KDF parameters: {0}")]
    BadParams(String),
    /// The Argon2 implementation rejected the parameters or the inputs (salt or output
    /// length out of range, for instance).
    #[error("Invalid KDF parameters: {0}")]
    Argon2(#[source] argon2::Error),
}

impl HasExitCode for KdfError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::MemoryTooHigh { .. } | Self::OutOfMemory(_) => ExitCode::OutOfMemory,
            _ => ExitCode::WrongParameters,
        }
    }
}

/// Upper bounds on KDF costs read from a header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KdfLimits {
    /// Maximum PBKDF2 iterations.
    pub max_pbkdf2_iterations: u32,
    /// Maximum Argon2 memory cost in KiB.
    pub max_argon2_memory_kib: u32,
    /// Maximum Argon2 time cost.
    pub max_argon2_time: u32,
    /// Maximum Argon2 lanes.
    pub max_argon2_lanes: u32,
}

/// cryptsetup's hard maximum Argon2 memory cost (4 GiB), in KiB.
pub const ARGON2_MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;

impl Default for KdfLimits {
    /// PBKDF2 ≤ 100 M iterations (≈ a minute here); Argon2 memory ≤ min(4 GiB, half of
    /// RAM), time ≤ 1000, lanes ≤ 16 (cryptsetup's maximum threads is 16... lanes are
    /// bounded at 16 here too).
    fn default() -> Self {
        Self {
            max_pbkdf2_iterations: 100_000_000,
            max_argon2_memory_kib: ARGON2_MAX_MEMORY_KIB.min(half_physical_memory_kib()),
            max_argon2_time: 1000,
            max_argon2_lanes: 16,
        }
    }
}

fn half_physical_memory_kib() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page <= 0 {
        return ARGON2_MAX_MEMORY_KIB;
    }
    let kib = (pages as u64).saturating_mul(page as u64) / 1024 / 2;
    kib.min(u32::MAX as u64) as u32
}

/// A hash algorithm as LUKS names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// RIPEMD-160.
    Ripemd160,
}

impl Hash {
    /// Parses a LUKS hash name (`sha256`, `SHA-256`? no: cryptsetup names, case-insensitive).
    pub fn from_name(name: &str) -> Result<Self, KdfError> {
        Ok(match name.to_ascii_lowercase().as_str() {
            "sha1" => Self::Sha1,
            "sha224" => Self::Sha224,
            "sha256" => Self::Sha256,
            "sha384" => Self::Sha384,
            "sha512" => Self::Sha512,
            "ripemd160" => Self::Ripemd160,
            _ => return Err(KdfError::UnsupportedHash(name.to_string())),
        })
    }

    /// Digest length in bytes.
    pub fn output_len(self) -> usize {
        match self {
            Self::Sha1 | Self::Ripemd160 => 20,
            Self::Sha224 => 28,
            Self::Sha256 => 32,
            Self::Sha384 => 48,
            Self::Sha512 => 64,
        }
    }

    /// Hashes the concatenation of `parts` into `out` (`out.len() == output_len()`).
    ///
    /// The digest is written straight into `out` (no temporary copy of it on the stack)
    /// and the hash state is zeroized when dropped (the `zeroize` features of the hash
    /// crates): the AF diffusion hashes key material.
    ///
    /// # Panics
    /// If `out.len() != self.output_len()`.
    pub fn digest_parts(self, parts: &[&[u8]], out: &mut [u8]) {
        fn run<D: Digest>(parts: &[&[u8]], out: &mut [u8]) {
            let mut d = D::new();
            for p in parts {
                d.update(p);
            }
            let len = out.len();
            match <&mut sha2::digest::Output<D>>::try_from(out) {
                Ok(o) => d.finalize_into(o),
                Err(_) => panic!(
                    "digest output buffer has {len} bytes, the hash gives {}",
                    <D as Digest>::output_size()
                ),
            }
        }
        match self {
            Self::Sha1 => run::<sha1::Sha1>(parts, out),
            Self::Sha224 => run::<sha2::Sha224>(parts, out),
            Self::Sha256 => run::<sha2::Sha256>(parts, out),
            Self::Sha384 => run::<sha2::Sha384>(parts, out),
            Self::Sha512 => run::<sha2::Sha512>(parts, out),
            Self::Ripemd160 => run::<ripemd::Ripemd160>(parts, out),
        }
    }

    /// PBKDF2-HMAC with this hash.
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], iterations: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            Self::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, iterations, out),
            Self::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, iterations, out),
            Self::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, iterations, out),
            Self::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, iterations, out),
            Self::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, iterations, out),
            Self::Ripemd160 => pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, iterations, out),
        }
    }
}

/// Argon2 variant.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Argon2Variant {
    /// Argon2i.
    Argon2i,
    /// Argon2id.
    Argon2id,
}

/// A key derivation function with its parameters, as a keyslot stores it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Kdf {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// PRF hash.
        hash: Hash,
        /// Iteration count.
        iterations: u32,
        /// The keyslot's salt.
        salt: Vec<u8>,
    },
    /// Argon2 (version 0x13).
    Argon2 {
        /// Argon2i or Argon2id.
        variant: Argon2Variant,
        /// Time cost (passes).
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Parallel lanes.
        lanes: u32,
        /// The keyslot's salt.
        salt: Vec<u8>,
    },
}

impl Kdf {
    /// Checks the costs against `limits` without doing any work.
    pub fn check(&self, limits: &KdfLimits) -> Result<(), KdfError> {
        match *self {
            Kdf::Pbkdf2 { iterations, .. } => {
                if iterations == 0 {
                    return Err(KdfError::BadParams("PBKDF2 iteration count is 0".into()));
                }
                if iterations > limits.max_pbkdf2_iterations {
                    return Err(KdfError::TooManyIterations {
                        iterations,
                        limit: limits.max_pbkdf2_iterations,
                    });
                }
            }
            Kdf::Argon2 {
                time,
                memory_kib,
                lanes,
                ..
            } => {
                if lanes == 0 || lanes > limits.max_argon2_lanes {
                    return Err(KdfError::BadLanes {
                        lanes,
                        limit: limits.max_argon2_lanes,
                    });
                }
                if time == 0 {
                    return Err(KdfError::BadParams("Argon2 time cost is 0".into()));
                }
                if time > limits.max_argon2_time {
                    return Err(KdfError::TimeTooHigh {
                        time,
                        limit: limits.max_argon2_time,
                    });
                }
                if memory_kib > limits.max_argon2_memory_kib {
                    return Err(KdfError::MemoryTooHigh {
                        memory_kib,
                        limit_kib: limits.max_argon2_memory_kib,
                    });
                }
                if memory_kib < 8 * lanes {
                    return Err(KdfError::BadParams(format!(
                        "Argon2 memory cost {memory_kib} KiB is below 8 KiB per lane ({lanes} lanes)"
                    )));
                }
            }
        }
        Ok(())
    }

    /// Derives `out_len` bytes from `password` into a secret buffer, after [`Kdf::check`].
    pub fn derive(
        &self,
        password: &[u8],
        out_len: usize,
        limits: &KdfLimits,
    ) -> Result<SecretBuf, KdfError> {
        self.check(limits)?;
        let mut out = SecretBuf::zeroed(out_len);
        match self {
            Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            } => hash.pbkdf2(password, salt, *iterations, out.as_mut_slice()),
            Kdf::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
                salt,
            } => {
                let algo = match variant {
                    Argon2Variant::Argon2i => argon2::Algorithm::Argon2i,
                    Argon2Variant::Argon2id => argon2::Algorithm::Argon2id,
                };
                let params = argon2::Params::new(*memory_kib, *time, *lanes, Some(out_len))
                    .map_err(KdfError::Argon2)?;
                argon2::Argon2::new(algo, argon2::Version::V0x13, params)
                    .hash_password_into(password, salt, out.as_mut_slice())
                    .map_err(|e| match e {
                        argon2::Error::OutOfMemory => KdfError::OutOfMemory(*memory_kib),
                        e => KdfError::Argon2(e),
                    })?;
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(b: &[u8]) -> String {
        b.iter().map(|x| format!("{x:02x}")).collect()
    }

    #[test]
    fn pbkdf2_rfc6070_sha1() {
        let mut out = [0u8; 20];
        Hash::Sha1.pbkdf2(b"password", b"salt", 2, &mut out);
        assert_eq!(hex(&out), "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957");
    }

    #[test]
    fn pbkdf2_sha256_vector() {
        let mut out = [0u8; 32];
        Hash::Sha256.pbkdf2(b"password", b"salt", 1, &mut out);
        assert_eq!(
            hex(&out),
            "120fb6cffcf8b32c43e7225256c4f837a86548c92ccc35480805987cb70be17b"
        );
    }

    #[test]
    fn argon2id_rfc9106_shape() {
        // No secret/ad in LUKS; check determinism and the limit checks instead.
        let k = Kdf::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 1,
            memory_kib: 64,
            lanes: 1,
            salt: vec![1; 32],
        };
        let a = k.derive(b"pw", 32, &KdfLimits::default()).unwrap();
        let b = k.derive(b"pw", 32, &KdfLimits::default()).unwrap();
        assert_eq!(a.as_slice(), b.as_slice());
    }

    #[test]
    fn argon2_refusal_keeps_its_source() {
        use std::error::Error as _;
        // Argon2 wants a salt of 8 bytes or more; the header's salt is passed as it is.
        let k = Kdf::Argon2 {
            variant: Argon2Variant::Argon2id,
            time: 1,
            memory_kib: 64,
            lanes: 1,
            salt: vec![1; 4],
        };
        let e = k.derive(b"pw", 32, &KdfLimits::default()).unwrap_err();
        assert!(matches!(e, KdfError::Argon2(_)), "{e:?}");
        let source = e.source().expect("the argon2 error is kept as the source");
        assert_eq!(e.to_string(), format!("Invalid KDF parameters: {source}"));
    }

    #[test]
    fn limits_refuse() {
        let l = KdfLimits::default();
        let k = Kdf::Argon2 {
            variant: Argon2Variant::Argon2i,
            time: 4,
            memory_kib: u32::MAX,
            lanes: 1,
            salt: vec![0; 32],
        };
        assert!(matches!(k.check(&l), Err(KdfError::MemoryTooHigh { .. })));
        let p = Kdf::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: u32::MAX,
            salt: vec![],
        };
        assert!(matches!(
            p.check(&l),
            Err(KdfError::TooManyIterations { .. })
        ));
    }
}
