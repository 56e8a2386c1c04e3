//! LUKS1: the 592-byte header (phdr), its 8 keyslots and the master-key digest.

use crate::device::{Device, DeviceError};
use crate::exit::{ExitCode, HasExitCode};
use crate::kdf::{Hash, Kdf, KdfError};
use crate::util::{be16, be32, c_str};

/// LUKS magic of LUKS1 and of a LUKS2 primary header.
pub const MAGIC: [u8; 6] = *b"LUKS\xba\xbe";
/// Size of the LUKS1 header on disk.
pub const PHDR_SIZE: usize = 592;
/// Number of LUKS1 keyslots.
pub const NUM_KEYSLOTS: usize = 8;
/// Keyslot state: active.
pub const KEY_ENABLED: u32 = 0x00AC_71F3;
/// Keyslot state: disabled.
pub const KEY_DISABLED: u32 = 0x0000_DEAD;
/// Sector size used by LUKS1 offsets.
pub const SECTOR: u64 = 512;
/// Largest AF stripes accepted (cryptsetup writes 4000).
pub const MAX_STRIPES: u32 = 65_536;
/// Largest volume key accepted, bytes.
pub const MAX_KEY_BYTES: u32 = 512;

/// Errors of LUKS1 parsing.
#[derive(Debug, thiserror::Error)]
pub enum Luks1Error {
    /// Device access failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The device holds no LUKS1 header (no magic or another version); the device name.
    #[error("Device {0} is not a valid LUKS device.")]
    NotLuks(String),
    /// A header field is out of range or inconsistent; the message names it.
    #[error("LUKS1 header is invalid: {0}")]
    Invalid(String),
    /// A keyslot is invalid.
    #[error("LUKS keyslot {slot} is invalid: {why}")]
    BadKeyslot {
        /// The keyslot number (0..8).
        slot: usize,
        /// What is wrong with the keyslot (which field, which value).
        why: String,
    },
    /// The hash in the header is unsupported.
    #[error(transparent)]
    Kdf(#[from] KdfError),
}

impl HasExitCode for Luks1Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Device(e) => e.exit_code(),
            Self::Kdf(e) => e.exit_code(),
            _ => ExitCode::WrongParameters,
        }
    }
}

/// One LUKS1 keyslot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks1Keyslot {
    /// Active (enabled)?
    pub active: bool,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// PBKDF2 salt.
    pub salt: [u8; 32],
    /// Start of the key material, in 512-byte sectors.
    pub key_material_offset: u32,
    /// AF stripes.
    pub stripes: u32,
}

/// A parsed and validated LUKS1 header.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks1Header {
    /// Cipher name, e.g. `aes`.
    pub cipher_name: String,
    /// Cipher mode, e.g. `xts-plain64`.
    pub cipher_mode: String,
    /// Hash spec, e.g. `sha256`.
    pub hash_spec: String,
    /// Parsed hash.
    pub hash: Hash,
    /// Data offset in 512-byte sectors.
    pub payload_offset: u32,
    /// Volume key length in bytes.
    pub key_bytes: u32,
    /// Master-key digest (PBKDF2 output, 20 bytes).
    pub mk_digest: [u8; 20],
    /// Master-key digest salt.
    pub mk_digest_salt: [u8; 32],
    /// Master-key digest iterations.
    pub mk_digest_iter: u32,
    /// UUID text.
    pub uuid: String,
    /// The 8 keyslots.
    pub keyslots: [Luks1Keyslot; NUM_KEYSLOTS],
}

impl Luks1Header {
    /// Parses and validates the 592 header bytes (`name` is used in messages).
    pub fn parse(b: &[u8], name: &str) -> Result<Self, Luks1Error> {
        if b.len() < PHDR_SIZE || b[..6] != MAGIC || be16(b, 6) != 1 {
            return Err(Luks1Error::NotLuks(name.to_string()));
        }
        let cipher_name = c_str(&b[8..40]);
        let cipher_mode = c_str(&b[40..72]);
        let hash_spec = c_str(&b[72..104]);
        let payload_offset = be32(b, 104);
        let key_bytes = be32(b, 108);
        let mut mk_digest = [0u8; 20];
        mk_digest.copy_from_slice(&b[112..132]);
        let mut mk_digest_salt = [0u8; 32];
        mk_digest_salt.copy_from_slice(&b[132..164]);
        let mk_digest_iter = be32(b, 164);
        let uuid = c_str(&b[168..208]);
        if key_bytes == 0 || key_bytes > MAX_KEY_BYTES {
            return Err(Luks1Error::Invalid(format!(
                "volume key size {key_bytes} bytes is outside 1..={MAX_KEY_BYTES}"
            )));
        }
        if mk_digest_iter == 0 {
            return Err(Luks1Error::Invalid(
                "master key digest iteration count is 0".into(),
            ));
        }
        let hash = Hash::from_name(&hash_spec)?;
        let mut keyslots: [Luks1Keyslot; NUM_KEYSLOTS] = core::array::from_fn(|_| Luks1Keyslot {
            active: false,
            iterations: 0,
            salt: [0; 32],
            key_material_offset: 0,
            stripes: 0,
        });
        let area_sectors =
            |stripes: u32| -> u64 { (key_bytes as u64 * stripes as u64).div_ceil(SECTOR) };
        for (i, ks) in keyslots.iter_mut().enumerate() {
            let o = 208 + i * 48;
            let state = be32(b, o);
            ks.active = match state {
                KEY_ENABLED => true,
                KEY_DISABLED => false,
                other => {
                    return Err(Luks1Error::BadKeyslot {
                        slot: i,
                        why: format!("state 0x{other:08x} is neither enabled nor disabled"),
                    })
                }
            };
            ks.iterations = be32(b, o + 4);
            ks.salt.copy_from_slice(&b[o + 8..o + 40]);
            ks.key_material_offset = be32(b, o + 40);
            ks.stripes = be32(b, o + 44);
            // cryptsetup checks every slot's geometry, active or not.
            if ks.stripes == 0 || ks.stripes > MAX_STRIPES {
                return Err(Luks1Error::BadKeyslot {
                    slot: i,
                    why: format!("AF stripes {} outside 1..={MAX_STRIPES}", ks.stripes),
                });
            }
            let end = ks.key_material_offset as u64 + area_sectors(ks.stripes);
            // The first sector holds the header (592 bytes, into the second sector).
            let in_header = (ks.key_material_offset as u64) * SECTOR < PHDR_SIZE as u64;
            if in_header || (payload_offset != 0 && end > payload_offset as u64) {
                return Err(Luks1Error::BadKeyslot {
                    slot: i,
                    why: format!(
                        "key material at sector {} (+{} sectors) overlaps the header or the data at sector {payload_offset}",
                        ks.key_material_offset,
                        area_sectors(ks.stripes)
                    ),
                });
            }
            if ks.active && ks.iterations == 0 {
                return Err(Luks1Error::BadKeyslot {
                    slot: i,
                    why: "iteration count is 0".into(),
                });
            }
        }
        // No two keyslots' key material may overlap (cryptsetup refuses such a header).
        for (i, a) in keyslots.iter().enumerate() {
            for (j, b) in keyslots.iter().enumerate().skip(i + 1) {
                let (a0, b0) = (a.key_material_offset as u64, b.key_material_offset as u64);
                let (a1, b1) = (a0 + area_sectors(a.stripes), b0 + area_sectors(b.stripes));
                if a0 < b1 && b0 < a1 {
                    return Err(Luks1Error::BadKeyslot {
                        slot: j,
                        why: format!(
                            "key material at sector {b0} (+{} sectors) overlaps keyslot {i}'s at sector {a0} (+{} sectors)",
                            b1 - b0,
                            a1 - a0
                        ),
                    });
                }
            }
        }
        Ok(Self {
            cipher_name,
            cipher_mode,
            hash_spec,
            hash,
            payload_offset,
            key_bytes,
            mk_digest,
            mk_digest_salt,
            mk_digest_iter,
            uuid,
            keyslots,
        })
    }

    /// Reads and parses the header of `dev`.
    pub fn read(dev: &Device) -> Result<Self, Luks1Error> {
        let name = dev.path().display().to_string();
        let mut b = [0u8; PHDR_SIZE];
        dev.read_exact_at(0, &mut b).map_err(|e| match e {
            DeviceError::ShortRead { .. } => Luks1Error::NotLuks(name.clone()),
            e => e.into(),
        })?;
        Self::parse(&b, &name)
    }

    /// The dm-crypt cipher specification, e.g. `aes-xts-plain64`.
    pub fn cipher_spec(&self) -> String {
        format!("{}-{}", self.cipher_name, self.cipher_mode)
    }

    /// Byte offset and length of keyslot `slot`'s key material.
    pub fn area(&self, slot: usize) -> (u64, u64) {
        let ks = &self.keyslots[slot];
        let len = (self.key_bytes as u64 * ks.stripes as u64).div_ceil(SECTOR) * SECTOR;
        (ks.key_material_offset as u64 * SECTOR, len)
    }

    /// The KDF of keyslot `slot`.
    pub fn kdf(&self, slot: usize) -> Kdf {
        Kdf::Pbkdf2 {
            hash: self.hash,
            iterations: self.keyslots[slot].iterations,
            salt: self.keyslots[slot].salt.to_vec(),
        }
    }
}
