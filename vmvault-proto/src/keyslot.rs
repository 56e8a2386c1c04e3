//! Keyslots on the wire: the typed parameters of one LUKS keyslot and of the volume's
//! digest, as the client read them from the header, and the binary payload (keyslot
//! areas, passphrase) that follows a request line.
//!
//! The vault runs the KDF, the AF merge and the digest check
//! ([`vault_vm::abi::keyslot`]); [`KeyslotSpec::to_params`] turns the typed values into
//! the vault's `#[repr(C)]` [`KeyslotParams`].
//!
//! # Payload
//!
//! A request that carries keyslot areas or a passphrase names their lengths in its JSON
//! line; the bytes follow the newline at once, unencoded: first each area in the order
//! of the request's keyslots, then the passphrase. [`Payload::check`] refuses lengths
//! that cannot be right before the receiver reads a byte of it. The receiver reads the
//! passphrase into a locked, zeroized buffer ([`crate::secret::SecretBuf`]).

use std::fmt;

use serde::{Deserialize, Serialize};
use vault_vm::abi::keyslot::{self as abi_ks, KeyslotParams};

use crate::types::{CipherSpec, KeySize};

/// Most keyslots one request may carry (LUKS2 has 32).
pub const MAX_KEYSLOTS: usize = 32;
/// Longest passphrase or key file (cryptsetup's key-file limit, 8 MiB).
pub const MAX_PASSPHRASE: u64 = abi_ks::MAX_PASSPHRASE;
/// Longest keyslot area: the largest key ([`KeySize::MAX_BYTES`]) times the most AF
/// stripes, in whole sectors.
pub const MAX_AREA: u64 = abi_ks::area_len(KeySize::MAX_BYTES as u32, abi_ks::MAX_STRIPES);
/// Most area bytes in one request (all keyslots together).
pub const MAX_AREAS_TOTAL: u64 = 16 << 20;

/// A keyslot parameter or payload length that cannot be right.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyslotError {
    /// A salt, digest or area is longer than the protocol allows, or empty where it may
    /// not be.
    #[error("{what} is {len} bytes; allowed: {min}..={max}")]
    Length {
        /// Which field.
        what: &'static str,
        /// Its length.
        len: u64,
        /// Shortest allowed.
        min: u64,
        /// Longest allowed.
        max: u64,
    },
    /// The area length the request names is not what key size and stripes give.
    #[error("keyslot {keyslot}: area of {got} bytes, but key size and AF stripes give {want}")]
    AreaLength {
        /// LUKS keyslot number.
        keyslot: u32,
        /// The length in the request.
        got: u64,
        /// `key_size * stripes` in whole sectors.
        want: u64,
    },
    /// More keyslots than [`MAX_KEYSLOTS`], or none.
    #[error("{0} keyslots in one request; allowed: 1..={MAX_KEYSLOTS}")]
    Count(usize),
    /// An Argon2 or PBKDF2 parameter out of range (zero cost, too many lanes, ...).
    #[error("{0}")]
    Kdf(&'static str),
}

/// A hash of LUKS (PBKDF2 PRF, AF diffusion, digest), by its LUKS name.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HashAlg {
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

impl HashAlg {
    /// From a LUKS header's hash name (`sha256`, `SHA256`, `ripemd160`, ...).
    pub fn from_name(s: &str) -> Option<Self> {
        Some(match s.to_ascii_lowercase().as_str() {
            "sha1" => Self::Sha1,
            "sha224" => Self::Sha224,
            "sha256" => Self::Sha256,
            "sha384" => Self::Sha384,
            "sha512" => Self::Sha512,
            "ripemd160" => Self::Ripemd160,
            _ => return None,
        })
    }

    /// The vault's hash id.
    pub fn id(self) -> u32 {
        use abi_ks::hash;
        match self {
            Self::Sha1 => hash::SHA1,
            Self::Sha224 => hash::SHA224,
            Self::Sha256 => hash::SHA256,
            Self::Sha384 => hash::SHA384,
            Self::Sha512 => hash::SHA512,
            Self::Ripemd160 => hash::RIPEMD160,
        }
    }
}

/// A keyslot's KDF and its cost.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase", deny_unknown_fields)]
pub enum KdfSpec {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The PRF's hash.
        hash: HashAlg,
        /// Iterations.
        iterations: u32,
    },
    /// Argon2i (version 0x13).
    Argon2i {
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory_kib: u32,
        /// Lanes.
        lanes: u32,
    },
    /// Argon2id (version 0x13).
    Argon2id {
        /// Passes.
        time: u32,
        /// Memory in KiB.
        memory_kib: u32,
        /// Lanes.
        lanes: u32,
    },
}

/// Bytes shown as lowercase hex on the wire, at most 64 of them (salts, digests).
/// Not secret: they come from the LUKS header.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct HexBytes(Vec<u8>);

impl HexBytes {
    /// Longest value.
    pub const MAX: usize = 64;

    /// `bytes`, if at most [`HexBytes::MAX`] long.
    pub fn new(bytes: &[u8]) -> Result<Self, KeyslotError> {
        if bytes.len() > Self::MAX {
            return Err(KeyslotError::Length {
                what: "salt or digest",
                len: bytes.len() as u64,
                min: 0,
                max: Self::MAX as u64,
            });
        }
        Ok(HexBytes(bytes.to_vec()))
    }

    /// The bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for HexBytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in &self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl Serialize for HexBytes {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&format!("{self:?}"))
    }
}

impl<'de> Deserialize<'de> for HexBytes {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        use serde::de::Error;
        let s = String::deserialize(d)?;
        if s.len() % 2 != 0 || s.len() > 2 * Self::MAX {
            return Err(D::Error::custom(format!(
                "hex value of {} characters; allowed: an even number up to {}",
                s.len(),
                2 * Self::MAX
            )));
        }
        let nib = |c: u8| match c {
            b'0'..=b'9' => Some(c - b'0'),
            b'a'..=b'f' => Some(c - b'a' + 10),
            _ => None,
        };
        s.as_bytes()
            .chunks(2)
            .map(|p| Some(nib(p[0])? << 4 | nib(p[1])?))
            .collect::<Option<Vec<u8>>>()
            .map(HexBytes)
            .ok_or_else(|| D::Error::custom("not lowercase hex"))
    }
}

/// One keyslot and the volume's digest, typed: everything the vault needs besides the
/// passphrase and the encrypted area.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyslotSpec {
    /// The KDF and its cost.
    pub kdf: KdfSpec,
    /// The KDF salt.
    pub salt: HexBytes,
    /// The area's encryption (LUKS1: the volume's cipher).
    pub area_cipher: CipherSpec,
    /// The area encryption's key size (= the KDF output length).
    pub area_key_size: KeySize,
    /// AF stripes (LUKS: 4000).
    pub stripes: u32,
    /// AF diffusion hash.
    pub af_hash: HashAlg,
    /// The volume key's size.
    pub volume_key_size: KeySize,
    /// The digest's PBKDF2 hash.
    pub digest_hash: HashAlg,
    /// The digest's PBKDF2 iterations.
    pub digest_iterations: u32,
    /// The digest's salt.
    pub digest_salt: HexBytes,
    /// The digest the unlocked key must have (unlock). For seal and digest requests the
    /// length of the digest to compute, any bytes (the client sends zeros).
    pub digest: HexBytes,
}

impl KeyslotSpec {
    /// Length of this keyslot's area: volume key size × stripes, in whole sectors.
    pub fn area_len(&self) -> u64 {
        abi_ks::area_len(self.volume_key_size.bytes() as u32, self.stripes)
    }

    /// Argon2 scratch memory the vault needs for this keyslot (0 for PBKDF2).
    pub fn scratch_len(&self) -> u64 {
        match self.kdf {
            KdfSpec::Pbkdf2 { .. } => 0,
            KdfSpec::Argon2i { memory_kib, .. } | KdfSpec::Argon2id { memory_kib, .. } => {
                u64::from(memory_kib) * 1024
            }
        }
    }

    /// The vault's parameter block.
    pub fn to_params(&self) -> Result<KeyslotParams, KeyslotError> {
        let len = |what, v: &HexBytes, min: u64| {
            let n = v.as_bytes().len() as u64;
            if n < min {
                Err(KeyslotError::Length {
                    what,
                    len: n,
                    min,
                    max: HexBytes::MAX as u64,
                })
            } else {
                Ok(n as u32)
            }
        };
        let mut p = KeyslotParams {
            area_cipher: vault_vm::abi::cipher_id(self.area_cipher.engine()),
            area_key_len: self.area_key_size.bytes() as u32,
            af_stripes: self.stripes,
            af_hash: self.af_hash.id(),
            volume_key_len: self.volume_key_size.bytes() as u32,
            digest_hash: self.digest_hash.id(),
            digest_iterations: self.digest_iterations,
            salt_len: len("KDF salt", &self.salt, 1)?,
            digest_len: len("digest", &self.digest, 1)?,
            digest_salt_len: len("digest salt", &self.digest_salt, 1)?,
            scratch_len: self.scratch_len(),
            ..KeyslotParams::ZERO
        };
        if self.stripes == 0 || self.stripes > abi_ks::MAX_STRIPES {
            return Err(KeyslotError::Kdf("AF stripes must be 1..=4000"));
        }
        if self.digest_iterations == 0 {
            return Err(KeyslotError::Kdf("digest iterations must not be zero"));
        }
        match self.kdf {
            KdfSpec::Pbkdf2 { hash, iterations } => {
                if iterations == 0 {
                    return Err(KeyslotError::Kdf("PBKDF2 iterations must not be zero"));
                }
                p.kdf = abi_ks::kdf::PBKDF2;
                p.kdf_hash = hash.id();
                p.time = iterations;
            }
            KdfSpec::Argon2i {
                time,
                memory_kib,
                lanes,
            }
            | KdfSpec::Argon2id {
                time,
                memory_kib,
                lanes,
            } => {
                if time == 0 || lanes == 0 || memory_kib == 0 {
                    return Err(KeyslotError::Kdf(
                        "Argon2 time, memory and lanes must not be zero",
                    ));
                }
                if u64::from(memory_kib) * 1024 > abi_ks::SCRATCH_MAX {
                    return Err(KeyslotError::Kdf("Argon2 memory above 4 GiB"));
                }
                p.kdf = if matches!(self.kdf, KdfSpec::Argon2i { .. }) {
                    abi_ks::kdf::ARGON2I
                } else {
                    abi_ks::kdf::ARGON2ID
                };
                p.time = time;
                p.memory_kib = memory_kib;
                p.lanes = lanes;
            }
        }
        p.salt[..self.salt.as_bytes().len()].copy_from_slice(self.salt.as_bytes());
        p.digest_salt[..self.digest_salt.as_bytes().len()]
            .copy_from_slice(self.digest_salt.as_bytes());
        p.digest[..self.digest.as_bytes().len()].copy_from_slice(self.digest.as_bytes());
        Ok(p)
    }
}

/// A keyslot to try, with the length of its area in the payload.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyslotCandidate {
    /// The LUKS keyslot number (for messages: which keyslot opened).
    pub keyslot: u32,
    /// Its parameters.
    pub spec: KeyslotSpec,
    /// Bytes of its area in the payload; must equal [`KeyslotSpec::area_len`].
    pub area_len: u64,
}

/// The lengths of a request's payload, checked.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Payload {
    /// Each area's length, in order.
    pub areas: Vec<u64>,
    /// The passphrase's length.
    pub passphrase: u64,
}

impl Payload {
    /// Checks the lengths a request names: 1..=[`MAX_KEYSLOTS`] keyslots (`allow_none`:
    /// 0 allowed), each area exactly what its spec gives and at most [`MAX_AREA`], all
    /// together at most [`MAX_AREAS_TOTAL`], the passphrase at most [`MAX_PASSPHRASE`].
    pub fn check(
        keyslots: &[KeyslotCandidate],
        passphrase_len: u64,
        allow_none: bool,
    ) -> Result<Payload, KeyslotError> {
        if keyslots.len() > MAX_KEYSLOTS || (keyslots.is_empty() && !allow_none) {
            return Err(KeyslotError::Count(keyslots.len()));
        }
        let mut total = 0u64;
        let mut areas = Vec::with_capacity(keyslots.len());
        for k in keyslots {
            let want = k.spec.area_len();
            if k.area_len != want {
                return Err(KeyslotError::AreaLength {
                    keyslot: k.keyslot,
                    got: k.area_len,
                    want,
                });
            }
            if want == 0 || want > MAX_AREA {
                return Err(KeyslotError::Length {
                    what: "keyslot area",
                    len: want,
                    min: 1,
                    max: MAX_AREA,
                });
            }
            total += want;
            areas.push(want);
        }
        if total > MAX_AREAS_TOTAL {
            return Err(KeyslotError::Length {
                what: "keyslot areas together",
                len: total,
                min: 1,
                max: MAX_AREAS_TOTAL,
            });
        }
        if passphrase_len > MAX_PASSPHRASE {
            return Err(KeyslotError::Length {
                what: "passphrase",
                len: passphrase_len,
                min: 0,
                max: MAX_PASSPHRASE,
            });
        }
        Ok(Payload {
            areas,
            passphrase: passphrase_len,
        })
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use std::mem::offset_of;

    pub(crate) fn spec(kdf: KdfSpec) -> KeyslotSpec {
        KeyslotSpec {
            kdf,
            salt: HexBytes::new(&[0x11; 32]).unwrap(),
            area_cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
            area_key_size: KeySize::from_bits(512).unwrap(),
            stripes: 4000,
            af_hash: HashAlg::Sha256,
            volume_key_size: KeySize::from_bits(512).unwrap(),
            digest_hash: HashAlg::Sha256,
            digest_iterations: 1000,
            digest_salt: HexBytes::new(&[0x22; 32]).unwrap(),
            digest: HexBytes::new(&[0x33; 32]).unwrap(),
        }
    }

    pub(crate) fn argon() -> KdfSpec {
        KdfSpec::Argon2id {
            time: 4,
            memory_kib: 1 << 20,
            lanes: 4,
        }
    }

    #[test]
    fn typed_values_become_the_vaults_params() {
        let p = spec(argon()).to_params().unwrap();
        assert_eq!(p.kdf, abi_ks::kdf::ARGON2ID);
        assert_eq!(
            (p.time, p.memory_kib, p.lanes, p.kdf_hash),
            (4, 1 << 20, 4, 0)
        );
        assert_eq!(p.scratch_len, 1 << 30);
        assert_eq!((p.salt_len, p.digest_len, p.digest_salt_len), (32, 32, 32));
        assert_eq!(&p.salt[..33], &[[0x11; 32].as_slice(), &[0]].concat()[..]);
        assert_eq!(&p.digest[..32], &[0x33; 32]);
        assert_eq!(&p.digest_salt[..32], &[0x22; 32]);
        assert_eq!(
            (p.area_key_len, p.volume_key_len, p.af_stripes),
            (64, 64, 4000)
        );
        assert_eq!(p.af_hash, abi_ks::hash::SHA256);
        assert_eq!(p.area_len(), 256_000);
        assert_eq!(p.reserved, 0);
        let _ = offset_of!(KeyslotParams, scratch_len);

        let p = spec(KdfSpec::Pbkdf2 {
            hash: HashAlg::Sha1,
            iterations: 2000,
        })
        .to_params()
        .unwrap();
        assert_eq!(
            (p.kdf, p.kdf_hash, p.time),
            (abi_ks::kdf::PBKDF2, abi_ks::hash::SHA1, 2000)
        );
        assert_eq!((p.memory_kib, p.lanes, p.scratch_len), (0, 0, 0));
    }

    #[test]
    fn bad_parameters_are_refused() {
        let mut s = spec(argon());
        s.salt = HexBytes::default();
        assert!(s.to_params().is_err());
        let mut s = spec(argon());
        s.stripes = 0;
        assert!(s.to_params().is_err());
        let s = spec(KdfSpec::Argon2i {
            time: 1,
            memory_kib: (4 << 20) + 1,
            lanes: 1,
        });
        assert!(s.to_params().is_err());
        let s = spec(KdfSpec::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: 0,
        });
        assert!(s.to_params().is_err());
        assert!(HexBytes::new(&[0; 65]).is_err());
    }

    #[test]
    fn wire_shape_and_strictness() {
        let s = spec(KdfSpec::Pbkdf2 {
            hash: HashAlg::Sha256,
            iterations: 7,
        });
        let j = serde_json::to_string(&s).unwrap();
        assert!(
            j.starts_with(
                r#"{"kdf":{"type":"pbkdf2","hash":"sha256","iterations":7},"salt":"1111"#
            ),
            "{j}"
        );
        assert_eq!(serde_json::from_str::<KeyslotSpec>(&j).unwrap(), s);
        for bad in [
            j.replace(r#""salt":"11"#, r#""salt":"1""#),
            j.replace(r#""salt":"11"#, r#""salt":"zz"#),
            j.replace(r#""salt":"11"#, r#""salt":"11AA"#),
            j.replace(
                r#""salt":"1111"#,
                &format!(r#""salt":"{}"#, "11".repeat(64)),
            ),
            j.replace(r#""iterations":7"#, r#""iterations":7,"x":1"#),
            j.replace(r#""stripes":4000"#, r#""stripes":4000,"x":1"#),
            j.replace("sha256", "md5"),
        ] {
            assert!(serde_json::from_str::<KeyslotSpec>(&bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn payload_lengths_are_checked() {
        let c = |area_len| KeyslotCandidate {
            keyslot: 1,
            spec: spec(argon()),
            area_len,
        };
        let p = Payload::check(&[c(256_000), c(256_000)], 12, false).unwrap();
        assert_eq!(p.areas, vec![256_000, 256_000]);
        assert_eq!(p.passphrase, 12);
        assert!(matches!(
            Payload::check(&[c(256_001)], 1, false),
            Err(KeyslotError::AreaLength { .. })
        ));
        assert!(Payload::check(&[c(0)], 1, false).is_err());
        assert!(Payload::check(&[], 1, false).is_err());
        assert!(Payload::check(&[], 1, true).is_ok());
        assert!(Payload::check(&vec![c(256_000); 33], 1, false).is_err());
        assert!(Payload::check(&[c(256_000)], MAX_PASSPHRASE + 1, false).is_err());
        // 32 keyslots of the largest area exceed the total cap.
        let mut big = spec(argon());
        big.volume_key_size = KeySize::from_bytes(512).unwrap();
        let b = KeyslotCandidate {
            keyslot: 0,
            area_len: big.area_len(),
            spec: big,
        };
        assert_eq!(b.area_len, MAX_AREA);
        assert!(Payload::check(&vec![b; 32], 1, false).is_err());
    }
}
