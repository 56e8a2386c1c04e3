//! The sector cipher engine: dm-crypt's AES modes over whole sectors, in place.
//!
//! API CONTRACT (other crates code against this; keep the signatures stable):
//!
//! ```ignore
//! let spec = CipherSpec::parse("aes-xts-plain64")?;          // or "capi:xts(aes)-plain64"
//! let cipher = SectorCipher::new(spec, &key)?;               // key: 32/64 bytes for XTS, 16/24/32 otherwise
//! let geom = Geometry::new(4096, false, 0)?;                 // sector size, iv_large_sectors, iv_offset
//! cipher.encrypt(&geom, sector, &mut buf)?;                  // sector: 512-byte units, like a dm bio sector
//! cipher.decrypt(&geom, sector, &mut buf)?;
//! ```
//!
//! IV rule (dm-crypt's): `s = sector + iv_offset` (512-byte units); the IV sector of the
//! i-th sector in `buf` is `s + i * (sector_size / 512)`, or, with `iv_large_sectors`,
//! `s / (sector_size / 512) + i`.

use core::fmt;

/// Block cipher mode of a [`CipherSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Mode {
    /// XTS (IEEE 1619); the key is two AES keys.
    Xts = 1,
    /// CBC over each sector.
    Cbc = 2,
    /// ECB (no IV).
    Ecb = 3,
}

/// IV generator of a [`CipherSpec`], named as dm-crypt names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum IvMode {
    /// No IV (ECB only).
    Null = 0,
    /// Low 32 bits of the sector number, little endian.
    Plain = 1,
    /// 64-bit sector number, little endian.
    Plain64 = 2,
    /// ESSIV with SHA-256: the sector number encrypted with AES keyed by SHA-256(key).
    EssivSha256 = 3,
}

/// A parsed dm-crypt cipher specification such as `aes-xts-plain64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSpec {
    /// Block cipher mode.
    pub mode: Mode,
    /// IV generator.
    pub iv: IvMode,
}

/// Errors of the engine. Messages never contain key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The cipher specification is not one the engine supports.
    UnsupportedSpec,
    /// The key length does not fit the cipher mode.
    BadKeyLength(usize),
    /// The sector size is not 512, 1024, 2048 or 4096.
    BadSectorSize(u32),
    /// The buffer is not a whole number of sectors.
    BadLength(usize),
    /// The start sector is not aligned to the sector size.
    MisalignedSector(u64),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedSpec => f.write_str(
                "unsupported cipher specification (supported: aes-xts-plain64, aes-xts-plain, \
                 aes-cbc-essiv:sha256, aes-cbc-plain64, aes-cbc-plain, aes-ecb, capi:xts(aes)-plain64)",
            ),
            Self::BadKeyLength(n) => write!(f, "key length of {} bits does not fit the cipher", n * 8),
            Self::BadSectorSize(n) => write!(f, "sector size {n} is not 512, 1024, 2048 or 4096"),
            Self::BadLength(n) => write!(f, "buffer of {n} bytes is not a whole number of sectors"),
            Self::MisalignedSector(s) => write!(f, "sector {s} is not aligned to the sector size"),
        }
    }
}

/// Sector geometry of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sector size in bytes: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// IVs count sector-size units instead of 512-byte units.
    pub iv_large_sectors: bool,
    /// Added to the sector (512-byte units) before the IV is derived.
    pub iv_offset: u64,
}

/// A keyed sector cipher. Key material is zeroized on drop and never shown by `Debug`.
pub struct SectorCipher {
    _private: (),
}
