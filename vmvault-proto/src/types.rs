//! The mapping's facts as types, parsed once: the cipher specification, the encryption
//! sector size, the key size, and lengths in 512-byte sectors or in bytes (in the style
//! of devicemapper-rs's `Sectors`/`Bytes`). The protocol, LUKS activation, the table,
//! the I/O engine and `status` all use them, so no string or bare integer is re-parsed
//! or multiplied by 512 along the way.
//!
//! On the wire each is the plain JSON value it always was (a string or a number), so
//! `vaultsetup status --json` prints what it printed before; deserializing checks it.

use std::fmt;

use serde::{Deserialize, Serialize};

/// A value of a mapping's domain type that is out of range; the message says what the
/// allowed values are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypeError {
    /// Not 512, 1024, 2048 or 4096.
    #[error("sector size {0} is not 512, 1024, 2048 or 4096")]
    SectorSize(u64),
    /// A key size that is zero, not a whole number of bytes, or longer than 512 bytes.
    #[error("key size of {0} bits is not a whole number of bytes between 8 and 4096 bits")]
    KeyBits(u64),
    /// The cipher specification is not one the vault serves.
    #[error("cipher `{0}` is not supported (use aes-xts-plain64, aes-xts-plain, aes-cbc-essiv:sha256, aes-cbc-plain64, aes-cbc-plain, aes-ecb or their capi: forms)")]
    Cipher(String),
    /// A byte count that is not a whole number of 512-byte sectors.
    #[error("{0} bytes is not a whole number of 512-byte sectors")]
    NotSectorAligned(u64),
    /// A length that does not fit 64 bits once converted.
    #[error("{0} sectors of 512 bytes overflow a 64-bit byte count")]
    Overflow(u64),
    /// A volume name the daemon and device-mapper would refuse.
    #[error("invalid volume name `{0}` (use 1-127 characters of A-Z a-z 0-9 . _ + -)")]
    VolumeName(String),
}

/// The encryption sector size: dm-crypt's `sector_size`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum SectorSize {
    /// 512 bytes (dm-crypt's default, LUKS1's only size).
    #[default]
    B512,
    /// 1024 bytes.
    B1024,
    /// 2048 bytes.
    B2048,
    /// 4096 bytes.
    B4096,
}

impl SectorSize {
    /// Every sector size, smallest first.
    pub const ALL: [SectorSize; 4] = [Self::B512, Self::B1024, Self::B2048, Self::B4096];

    /// The size in bytes.
    pub const fn bytes(self) -> u32 {
        match self {
            Self::B512 => 512,
            Self::B1024 => 1024,
            Self::B2048 => 2048,
            Self::B4096 => 4096,
        }
    }

    /// The size in 512-byte sectors (1, 2, 4 or 8).
    pub const fn sectors(self) -> Sectors {
        Sectors(self.bytes() as u64 / 512)
    }

    /// Whether `s` (512-byte sectors) is a multiple of this size.
    pub const fn divides(self, s: Sectors) -> bool {
        s.0.is_multiple_of(self.sectors().0)
    }
}

impl TryFrom<u64> for SectorSize {
    type Error = TypeError;
    fn try_from(n: u64) -> Result<Self, TypeError> {
        match n {
            512 => Ok(Self::B512),
            1024 => Ok(Self::B1024),
            2048 => Ok(Self::B2048),
            4096 => Ok(Self::B4096),
            n => Err(TypeError::SectorSize(n)),
        }
    }
}

impl TryFrom<u32> for SectorSize {
    type Error = TypeError;
    fn try_from(n: u32) -> Result<Self, TypeError> {
        Self::try_from(u64::from(n))
    }
}

impl From<SectorSize> for u32 {
    fn from(s: SectorSize) -> u32 {
        s.bytes()
    }
}

impl fmt::Display for SectorSize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.bytes())
    }
}

impl Serialize for SectorSize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.bytes())
    }
}

impl<'de> Deserialize<'de> for SectorSize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = u64::deserialize(d)?;
        SectorSize::try_from(n).map_err(serde::de::Error::custom)
    }
}

/// A count of 512-byte sectors: the unit of dm tables, LUKS offsets and IV offsets.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Sectors(pub u64);

/// A count of bytes.
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize,
)]
#[serde(transparent)]
pub struct Bytes(pub u64);

impl Sectors {
    /// The byte count, or an error when it does not fit 64 bits.
    pub fn bytes(self) -> Result<Bytes, TypeError> {
        self.0
            .checked_mul(512)
            .map(Bytes)
            .ok_or(TypeError::Overflow(self.0))
    }

    /// `self + other`, `None` on overflow.
    pub fn checked_add(self, other: Sectors) -> Option<Sectors> {
        self.0.checked_add(other.0).map(Sectors)
    }

    /// `self - other`, `None` below zero.
    pub fn checked_sub(self, other: Sectors) -> Option<Sectors> {
        self.0.checked_sub(other.0).map(Sectors)
    }
}

impl Bytes {
    /// The whole 512-byte sectors in this many bytes, or an error when it is not whole.
    pub fn sectors_exact(self) -> Result<Sectors, TypeError> {
        if self.0.is_multiple_of(512) {
            Ok(Sectors(self.0 / 512))
        } else {
            Err(TypeError::NotSectorAligned(self.0))
        }
    }

    /// The whole 512-byte sectors in this many bytes, rounding down.
    pub fn sectors_floor(self) -> Sectors {
        Sectors(self.0 / 512)
    }
}

impl fmt::Display for Sectors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl fmt::Display for Bytes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

/// A key size. Kept in bytes; cryptsetup, LUKS2's JSON and `status` speak bits, and
/// the wire carries bits as it always did.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct KeySize(u16);

impl KeySize {
    /// Longest key the vault takes (a 4096-bit key is far above any AES mode).
    pub const MAX_BYTES: usize = 512;

    /// From a bit count: a whole number of bytes, 1..=512 of them.
    pub fn from_bits(bits: u64) -> Result<Self, TypeError> {
        if bits == 0 || !bits.is_multiple_of(8) || bits / 8 > Self::MAX_BYTES as u64 {
            return Err(TypeError::KeyBits(bits));
        }
        Ok(KeySize((bits / 8) as u16))
    }

    /// From a byte count: 1..=512.
    pub fn from_bytes(bytes: usize) -> Result<Self, TypeError> {
        Self::from_bits(bytes as u64 * 8)
    }

    /// The size in bytes.
    pub const fn bytes(self) -> usize {
        self.0 as usize
    }

    /// The size in bits.
    pub const fn bits(self) -> u32 {
        self.0 as u32 * 8
    }
}

impl fmt::Display for KeySize {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} bits", self.bits())
    }
}

impl Serialize for KeySize {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_u32(self.bits())
    }
}

impl<'de> Deserialize<'de> for KeySize {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        KeySize::from_bits(u64::deserialize(d)?).map_err(serde::de::Error::custom)
    }
}

/// A dm-crypt cipher specification, parsed once: the text as given (what tables and
/// `status` show) and the engine's reading of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CipherSpec {
    text: String,
    spec: vault_vm::engine::CipherSpec,
}

impl CipherSpec {
    /// Parses a specification (see [`vault_vm::engine::CipherSpec::parse`]).
    pub fn parse(s: &str) -> Result<Self, TypeError> {
        let spec =
            vault_vm::engine::CipherSpec::parse(s).map_err(|_| TypeError::Cipher(s.to_string()))?;
        Ok(CipherSpec {
            text: s.to_string(),
            spec,
        })
    }

    /// The engine's reading: mode, IV generator.
    pub fn engine(&self) -> vault_vm::engine::CipherSpec {
        self.spec
    }

    /// The text as given, e.g. `aes-xts-plain64`.
    pub fn as_str(&self) -> &str {
        &self.text
    }

    /// Whether a key of `size` suits this cipher (XTS takes two AES keys).
    pub fn key_size_ok(&self, size: KeySize) -> bool {
        self.spec.key_len_ok(size.bytes())
    }
}

impl fmt::Display for CipherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

impl std::str::FromStr for CipherSpec {
    type Err = TypeError;
    fn from_str(s: &str) -> Result<Self, TypeError> {
        Self::parse(s)
    }
}

impl Serialize for CipherSpec {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.text)
    }
}

impl<'de> Deserialize<'de> for CipherSpec {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        CipherSpec::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A volume name: 1-127 characters of `[A-Za-z0-9._+-]`, not starting with `.`; what
/// `/dev/mapper/NAME` and the daemon's run directory can hold.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(transparent)]
pub struct VolumeName(String);

impl VolumeName {
    /// Checks `name`.
    pub fn new(name: &str) -> Result<Self, TypeError> {
        let ok = !name.is_empty()
            && name.len() < 128
            && !name.starts_with('.')
            && name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
        if ok {
            Ok(VolumeName(name.to_string()))
        } else {
            Err(TypeError::VolumeName(name.to_string()))
        }
    }

    /// The name.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for VolumeName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::ops::Deref for VolumeName {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de> Deserialize<'de> for VolumeName {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        VolumeName::new(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sector_sizes() {
        for (n, s) in [512u32, 1024, 2048, 4096].into_iter().zip(SectorSize::ALL) {
            assert_eq!(SectorSize::try_from(n), Ok(s));
            assert_eq!(s.bytes(), n);
            assert_eq!(s.sectors(), Sectors(u64::from(n) / 512));
            assert_eq!(serde_json::to_string(&s).unwrap(), n.to_string());
        }
        for n in [0u32, 256, 513, 8192] {
            assert!(SectorSize::try_from(n).is_err());
            assert!(serde_json::from_str::<SectorSize>(&n.to_string()).is_err());
        }
        assert!(SectorSize::B4096.divides(Sectors(16)));
        assert!(!SectorSize::B4096.divides(Sectors(12)));
    }

    #[test]
    fn sectors_and_bytes() {
        assert_eq!(Sectors(8).bytes(), Ok(Bytes(4096)));
        assert!(Sectors(u64::MAX / 256).bytes().is_err());
        assert_eq!(Bytes(4096).sectors_exact(), Ok(Sectors(8)));
        assert!(Bytes(4097).sectors_exact().is_err());
        assert_eq!(Bytes(4097).sectors_floor(), Sectors(8));
        assert_eq!(Sectors(3).checked_sub(Sectors(4)), None);
    }

    #[test]
    fn key_sizes() {
        let k = KeySize::from_bits(512).unwrap();
        assert_eq!((k.bytes(), k.bits()), (64, 512));
        assert_eq!(KeySize::from_bytes(32).unwrap().bits(), 256);
        for bad in [0, 7, 4104] {
            assert!(KeySize::from_bits(bad).is_err(), "{bad}");
        }
        assert_eq!(serde_json::to_string(&k).unwrap(), "512");
        assert!(serde_json::from_str::<KeySize>("100").is_err());
    }

    #[test]
    fn cipher_specs() {
        let c = CipherSpec::parse("aes-xts-plain64").unwrap();
        assert_eq!(c.to_string(), "aes-xts-plain64");
        assert!(c.key_size_ok(KeySize::from_bits(512).unwrap()));
        assert!(!c.key_size_ok(KeySize::from_bits(128).unwrap()));
        assert!(CipherSpec::parse("twofish-xts-plain64").is_err());
        assert!(serde_json::from_str::<CipherSpec>(r#""serpent-cbc-plain""#).is_err());
    }

    #[test]
    fn volume_names() {
        for ok in ["a", "vol-1", "x.y_z+w", &"n".repeat(127)] {
            assert!(VolumeName::new(ok).is_ok(), "{ok}");
        }
        for bad in ["", ".hidden", "a/b", "a b", &"n".repeat(128), "é"] {
            assert!(VolumeName::new(bad).is_err(), "{bad}");
        }
        assert!(serde_json::from_str::<VolumeName>(r#""../x""#).is_err());
    }
}
