//! The typed plan of a new volume, with cryptsetup 2.6/2.7 `luksFormat` defaults.
//!
//! LUKS2: aes-xts-plain64, 512-bit key, argon2id, 16 KiB header copies (two), keyslots
//! area 16 MiB − 32 KiB, data at 16 MiB, encryption sector 4096 when the device's
//! optimal size is 4096 and the data area is a multiple of it (else 512).
//! LUKS1: same cipher and key, sha256, pbkdf2, 8 keyslots whose key material starts at
//! sector 8 and at 4096-byte steps, payload at the 1 MiB-aligned end of the last slot
//! (4096 sectors for a 512-bit key).

use std::path::Path;

use super::material::AfParams;
use super::{align_up, random, FormatError};

/// LUKS version to format.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub enum LuksVersion {
    /// LUKS1 (`--type luks1`).
    Luks1,
    /// LUKS2 (the default).
    #[default]
    Luks2,
}

/// The KDF kind new keyslots use (the vault derives with it; the host only records it).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KdfKind {
    /// PBKDF2 (LUKS1 always).
    Pbkdf2,
    /// Argon2i.
    Argon2i,
    /// Argon2id (LUKS2 default).
    Argon2id,
}

/// What `luksFormat` was asked for; `None` means cryptsetup's default.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PlanOptions {
    /// LUKS1 or LUKS2.
    pub version: LuksVersion,
    /// Cipher spec (`aes-xts-plain64`).
    pub cipher: Option<String>,
    /// Volume key size in bits (512 for XTS, else 256).
    pub key_bits: Option<u32>,
    /// Hash (LUKS1 header hash / AF hash; `sha256`).
    pub hash: Option<String>,
    /// KDF kind (LUKS2: argon2id; LUKS1: pbkdf2 only).
    pub pbkdf: Option<KdfKind>,
    /// UUID (random v4 when absent).
    pub uuid: Option<String>,
    /// LUKS2 label (≤ 47 bytes).
    pub label: Option<String>,
    /// LUKS2 subsystem (≤ 47 bytes).
    pub subsystem: Option<String>,
    /// LUKS2 encryption sector size (512..4096, power of two).
    pub sector_size: Option<u32>,
}

/// The device facts the layout depends on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceGeometry {
    /// Size in bytes.
    pub size: u64,
    /// The encryption sector size cryptsetup would pick before the alignment check:
    /// 4096 for image files, the physical block size for block devices (512 when it is
    /// not a power of two in 512..=4096).
    pub optimal_sector_size: u32,
}

impl DeviceGeometry {
    /// Reads the size and, for a block device, its physical block size from sysfs.
    pub fn from_path(path: &Path) -> Result<Self, FormatError> {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let io = |source| FormatError::Io {
            what: "stat of the device",
            offset: 0,
            source,
        };
        let meta = std::fs::metadata(path).map_err(io)?;
        if meta.file_type().is_block_device() {
            let (maj, min) = (libc::major(meta.rdev()), libc::minor(meta.rdev()));
            let sys = format!("/sys/dev/block/{maj}:{min}");
            let read = |f: &str| -> Option<u64> {
                std::fs::read_to_string(format!("{sys}/{f}"))
                    .ok()?
                    .trim()
                    .parse()
                    .ok()
            };
            let size = read("size")
                .map(|s| s * 512)
                .ok_or_else(|| io(std::io::Error::other(format!("cannot read {sys}/size"))))?;
            let pbs = read("queue/physical_block_size").unwrap_or(512);
            let optimal = match pbs {
                1024 | 2048 | 4096 => pbs as u32,
                _ => 512,
            };
            Ok(Self {
                size,
                optimal_sector_size: optimal,
            })
        } else {
            Ok(Self {
                size: meta.len(),
                optimal_sector_size: 4096,
            })
        }
    }
}

/// The layout and identity of a new LUKS2 volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks2Plan {
    /// Volume UUID text.
    pub uuid: String,
    /// Label (may be empty).
    pub label: String,
    /// Subsystem (may be empty).
    pub subsystem: String,
    /// Data segment cipher spec.
    pub cipher: String,
    /// Volume key length, bytes.
    pub key_size: u32,
    /// Data segment encryption sector size.
    pub sector_size: u32,
    /// Size of one header copy (binary + JSON), bytes.
    pub hdr_size: u64,
    /// Keyslots area size, bytes (starts at `2 * hdr_size`).
    pub keyslots_size: u64,
    /// Data segment offset, bytes.
    pub data_offset: u64,
    /// KDF kind new keyslots use.
    pub kdf: KdfKind,
    /// AF parameters new keyslots use.
    pub af: AfParams,
}

impl Luks2Plan {
    /// Size of the area a keyslot of this volume takes (`key_size * stripes`, 4 KiB aligned).
    pub fn area_size(&self) -> u64 {
        align_up(self.key_size as u64 * self.af.stripes as u64, 4096)
    }

    /// Offset of the area of the `n`-th keyslot of a new volume (packed from the start).
    pub fn area_offset(&self, n: u32) -> u64 {
        2 * self.hdr_size + n as u64 * self.area_size()
    }
}

/// The layout and identity of a new LUKS1 volume.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Luks1Plan {
    /// UUID text.
    pub uuid: String,
    /// Cipher name (`aes`).
    pub cipher_name: String,
    /// Cipher mode (`xts-plain64`).
    pub cipher_mode: String,
    /// Hash (`sha256`): PBKDF2, AF and digest.
    pub hash: String,
    /// Volume key length, bytes.
    pub key_bytes: u32,
    /// AF stripes of every keyslot.
    pub stripes: u32,
    /// Key material offsets of the 8 keyslots, 512-byte sectors.
    pub key_material_offsets: [u32; 8],
    /// Data offset, 512-byte sectors.
    pub payload_offset: u32,
}

/// A new volume of either version.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum VolumePlan {
    /// LUKS1.
    Luks1(Luks1Plan),
    /// LUKS2.
    Luks2(Luks2Plan),
}

impl VolumePlan {
    /// Byte offset of the data segment.
    pub fn data_offset(&self) -> u64 {
        match self {
            Self::Luks1(p) => p.payload_offset as u64 * 512,
            Self::Luks2(p) => p.data_offset,
        }
    }
}

/// LUKS2 default header copy size (16 KiB).
pub const LUKS2_HDR_SIZE: u64 = 0x4000;
/// LUKS2 default data offset (16 MiB).
pub const LUKS2_DATA_OFFSET: u64 = 16 << 20;
/// LUKS1 key material alignment, sectors (4096 bytes).
const LUKS1_SLOT_ALIGN: u64 = 8;
/// LUKS1 payload alignment, sectors (1 MiB).
const LUKS1_PAYLOAD_ALIGN: u64 = 2048;

fn check_text(what: &str, v: &str, max: usize) -> Result<(), FormatError> {
    if v.len() > max || v.bytes().any(|b| b == 0) {
        return Err(FormatError::BadOption(format!(
            "{what} {v:?} must be at most {max} bytes without NUL"
        )));
    }
    Ok(())
}

fn check_uuid(u: &str) -> Result<(), FormatError> {
    let ok = u.len() == 36
        && u.bytes().enumerate().all(|(i, b)| match i {
            8 | 13 | 18 | 23 => b == b'-',
            _ => b.is_ascii_hexdigit(),
        });
    if ok {
        Ok(())
    } else {
        Err(FormatError::BadOption(format!(
            "UUID {u:?} is not of the form xxxxxxxx-xxxx-xxxx-xxxx-xxxxxxxxxxxx"
        )))
    }
}

/// Plans a new volume on a device of geometry `dev` as `cryptsetup luksFormat` would.
pub fn plan(opts: &PlanOptions, dev: &DeviceGeometry) -> Result<VolumePlan, FormatError> {
    let cipher = opts
        .cipher
        .clone()
        .unwrap_or_else(|| "aes-xts-plain64".into());
    let Some((cname, cmode)) = cipher.split_once('-') else {
        return Err(FormatError::BadOption(format!(
            "cipher {cipher:?} is not of the form name-mode"
        )));
    };
    let default_bits = if cmode.starts_with("xts") { 512 } else { 256 };
    let bits = opts.key_bits.unwrap_or(default_bits);
    if bits == 0 || !bits.is_multiple_of(8) || bits > 4096 {
        return Err(FormatError::BadOption(format!(
            "key size {bits} bits must be a multiple of 8 in 8..=4096"
        )));
    }
    let hash = opts.hash.clone().unwrap_or_else(|| "sha256".into());
    crate::kdf::Hash::from_name(&hash)
        .map_err(|_| FormatError::BadOption(format!("hash {hash:?} is not supported")))?;
    let uuid = match &opts.uuid {
        Some(u) => {
            check_uuid(u)?;
            u.to_ascii_lowercase()
        }
        None => random::uuid_v4()?,
    };
    match opts.version {
        LuksVersion::Luks2 => {
            let label = opts.label.clone().unwrap_or_default();
            let subsystem = opts.subsystem.clone().unwrap_or_default();
            check_text("label", &label, 47)?;
            check_text("subsystem", &subsystem, 47)?;
            let hdr_size = LUKS2_HDR_SIZE;
            let data_offset = LUKS2_DATA_OFFSET;
            let need = data_offset + 4096;
            if dev.size < need {
                return Err(FormatError::DeviceTooSmall {
                    size: dev.size,
                    need,
                });
            }
            let sector_size = match opts.sector_size {
                Some(s @ (512 | 1024 | 2048 | 4096)) => s,
                Some(s) => {
                    return Err(FormatError::BadOption(format!(
                        "sector size {s} is not 512, 1024, 2048 or 4096"
                    )))
                }
                None if (dev.size - data_offset).is_multiple_of(dev.optimal_sector_size as u64) => {
                    dev.optimal_sector_size
                }
                None => 512,
            };
            let kdf = opts.pbkdf.unwrap_or(KdfKind::Argon2id);
            Ok(VolumePlan::Luks2(Luks2Plan {
                uuid,
                label,
                subsystem,
                cipher,
                key_size: bits / 8,
                sector_size,
                hdr_size,
                keyslots_size: data_offset - 2 * hdr_size,
                data_offset,
                kdf,
                af: AfParams {
                    stripes: 4000,
                    hash,
                },
            }))
        }
        LuksVersion::Luks1 => {
            if opts.label.is_some() || opts.subsystem.is_some() || opts.sector_size.is_some() {
                return Err(FormatError::BadOption(
                    "label, subsystem and sector size are LUKS2 only".into(),
                ));
            }
            if matches!(opts.pbkdf, Some(k) if k != KdfKind::Pbkdf2) {
                return Err(FormatError::BadOption("LUKS1 supports pbkdf2 only".into()));
            }
            if cname.len() > 31 || cmode.len() > 31 || hash.len() > 31 {
                return Err(FormatError::BadOption(format!(
                    "cipher {cipher:?} or hash {hash:?} is too long for LUKS1"
                )));
            }
            let key_bytes = bits / 8;
            let stripes = 4000u32;
            let slot_sectors = align_up(
                (key_bytes as u64 * stripes as u64).div_ceil(512),
                LUKS1_SLOT_ALIGN,
            );
            let mut offs = [0u32; 8];
            for (i, o) in offs.iter_mut().enumerate() {
                *o = (LUKS1_SLOT_ALIGN + i as u64 * slot_sectors) as u32;
            }
            let end = offs[7] as u64 + (key_bytes as u64 * stripes as u64).div_ceil(512);
            let payload = align_up(end, LUKS1_PAYLOAD_ALIGN);
            let need = payload * 512 + 512;
            if dev.size < need {
                return Err(FormatError::DeviceTooSmall {
                    size: dev.size,
                    need,
                });
            }
            Ok(VolumePlan::Luks1(Luks1Plan {
                uuid,
                cipher_name: cname.into(),
                cipher_mode: cmode.into(),
                hash,
                key_bytes,
                stripes,
                key_material_offsets: offs,
                payload_offset: payload as u32,
            }))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn luks2_defaults() {
        let dev = DeviceGeometry {
            size: 20 << 20,
            optimal_sector_size: 4096,
        };
        let VolumePlan::Luks2(p) = plan(&PlanOptions::default(), &dev).unwrap() else {
            panic!("luks2 expected");
        };
        assert_eq!(p.cipher, "aes-xts-plain64");
        assert_eq!(p.key_size, 64);
        assert_eq!(p.sector_size, 4096);
        assert_eq!(p.keyslots_size, 16744448);
        assert_eq!(p.area_size(), 258048);
        assert_eq!(p.area_offset(1), 290816);
        assert_eq!(p.kdf, KdfKind::Argon2id);
        let odd = DeviceGeometry {
            size: (20 << 20) + 512,
            ..dev
        };
        let VolumePlan::Luks2(p) = plan(&PlanOptions::default(), &odd).unwrap() else {
            panic!("luks2 expected");
        };
        assert_eq!(p.sector_size, 512);
        assert!(matches!(
            plan(
                &PlanOptions::default(),
                &DeviceGeometry {
                    size: 1 << 20,
                    ..dev
                }
            ),
            Err(FormatError::DeviceTooSmall { .. })
        ));
    }

    #[test]
    fn luks1_offsets_match_cryptsetup() {
        let dev = DeviceGeometry {
            size: 20 << 20,
            optimal_sector_size: 4096,
        };
        let o = PlanOptions {
            version: LuksVersion::Luks1,
            ..Default::default()
        };
        let VolumePlan::Luks1(p) = plan(&o, &dev).unwrap() else {
            panic!("luks1 expected");
        };
        // From `cryptsetup luksDump` of a 2.6.1 luksFormat --type luks1 image.
        assert_eq!(
            p.key_material_offsets,
            [8, 512, 1016, 1520, 2024, 2528, 3032, 3536]
        );
        assert_eq!(p.payload_offset, 4096);
        let o = PlanOptions {
            key_bits: Some(256),
            ..o
        };
        let VolumePlan::Luks1(p) = plan(&o, &dev).unwrap() else {
            panic!("luks1 expected");
        };
        assert_eq!(p.key_material_offsets[1], 264);
        assert_eq!(p.payload_offset, 4096);
    }

    #[test]
    fn bad_options() {
        let dev = DeviceGeometry {
            size: 20 << 20,
            optimal_sector_size: 512,
        };
        for o in [
            PlanOptions {
                uuid: Some("nope".into()),
                ..Default::default()
            },
            PlanOptions {
                label: Some("x".repeat(48)),
                ..Default::default()
            },
            PlanOptions {
                sector_size: Some(8192),
                ..Default::default()
            },
        ] {
            assert!(matches!(plan(&o, &dev), Err(FormatError::BadOption(_))));
        }
    }
}
