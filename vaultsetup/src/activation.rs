//! What `open` activates: the dm-crypt parameters of a LUKS volume's data segment, and
//! checking a candidate volume key against the volume's digest.
//!
//! LUKS1: the whole device after `payload_offset` (512-byte sectors), 512-byte
//! encryption sectors, IV offset 0. LUKS2: segment 0 (`offset` in bytes → 512-byte
//! sectors, `encryption`, `sector_size`, `iv_tweak` → IV offset, `size` or "dynamic" =
//! to the end of the device). LUKS2 counts IVs in 512-byte units whatever the sector
//! size (cryptsetup never sets dm-crypt's `iv_large_sectors` for LUKS2).

use vmvault_proto::{CipherSpec, KeySize, SectorSize, Sectors};

use crate::device::Device;
use crate::exit::{ExitCode, HasExitCode};
use crate::kdf::{Hash, Kdf, KdfLimits};
use crate::luks2::json::SegmentSize;
use crate::util::base64_decode;
use crate::volume::Volume;

/// Errors deriving the activation parameters or checking a key.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The volume cannot be activated by vaultsetup (segment type, integrity, ...).
    #[error("{0}")]
    Unsupported(String),
    /// The device is too small or its size does not fit the segment.
    #[error("{0}")]
    Geometry(String),
    /// The header's cipher or key size is not one the protocol can carry.
    #[error(transparent)]
    Type(#[from] vmvault_proto::TypeError),
}

impl HasExitCode for ActivationError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::WrongParameters
    }
}

/// dm-crypt parameters of a volume's data segment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CryptParams {
    /// dm-crypt cipher specification, e.g. `aes-xts-plain64`.
    pub cipher: CipherSpec,
    /// Volume key size.
    pub key: KeySize,
    /// Encryption sector size.
    pub sector_size: SectorSize,
    /// Start of the data on the device.
    pub offset: Sectors,
    /// IV offset.
    pub iv_offset: Sectors,
    /// IVs counted in sector-size units (never for LUKS).
    pub iv_large_sectors: bool,
    /// Length of the data.
    pub size: Sectors,
}

/// The header's cipher and key size, checked against what the vault serves.
fn typed_cipher(cipher: &str, key_bytes: u32) -> Result<(CipherSpec, KeySize), ActivationError> {
    let spec = vault_vm::engine::CipherSpec::parse(cipher).map_err(|e| {
        ActivationError::Unsupported(format!(
            "Cipher {cipher} is not supported by the vault: {e}"
        ))
    })?;
    let bad_key = || {
        ActivationError::Unsupported(format!(
            "Cipher {cipher} cannot use a {}-bit key.",
            u64::from(key_bytes) * 8
        ))
    };
    if !spec.key_len_ok(key_bytes as usize) {
        return Err(bad_key());
    }
    let key = KeySize::from_bytes(key_bytes as usize).map_err(|_| bad_key())?;
    let cipher = CipherSpec::parse(cipher)?;
    Ok((cipher, key))
}

impl CryptParams {
    /// The parameters of `vol` on `dev` (whose size decides dynamic segments).
    pub fn from_volume(vol: &Volume, dev: &Device) -> Result<Self, ActivationError> {
        let dev_sectors = dev.size() / 512;
        let name = dev.path().display().to_string();
        let p = match vol {
            Volume::Luks1(h) => {
                let offset = u64::from(h.payload_offset);
                if dev_sectors <= offset {
                    return Err(ActivationError::Geometry(format!(
                        "Device {name} is too small: the data starts at sector {offset} but the device has {dev_sectors} sectors."
                    )));
                }
                let (cipher, key) = typed_cipher(&h.cipher_spec(), h.key_bytes)?;
                CryptParams {
                    cipher,
                    key,
                    sector_size: SectorSize::B512,
                    offset: Sectors(offset),
                    iv_offset: Sectors(0),
                    iv_large_sectors: false,
                    size: Sectors(dev_sectors - offset),
                }
            }
            Volume::Luks2(h) => {
                if let Some(r) = h.meta.mandatory_requirements().first() {
                    return Err(ActivationError::Unsupported(format!(
                        "LUKS2 requirement {r:?} is not supported by vaultsetup (finish it with cryptsetup first)."
                    )));
                }
                let mut segs = h.meta.segments.iter();
                let Some((id, seg)) = segs.next() else {
                    return Err(ActivationError::Unsupported(
                        "LUKS2 device has no data segment.".into(),
                    ));
                };
                if h.meta.segments.len() > 1 {
                    return Err(ActivationError::Unsupported(format!(
                        "LUKS2 device has {} segments (reencryption in progress?); vaultsetup activates single-segment devices only.",
                        h.meta.segments.len()
                    )));
                }
                if seg.kind != "crypt" {
                    return Err(ActivationError::Unsupported(format!(
                        "LUKS2 segment {id} has type {:?}; only \"crypt\" segments can be activated.",
                        seg.kind
                    )));
                }
                if seg.integrity.is_some() {
                    return Err(ActivationError::Unsupported(format!(
                        "LUKS2 segment {id} uses authenticated encryption (dm-integrity), which the vault does not support."
                    )));
                }
                let raw_sector_size = seg.sector_size.unwrap_or(512);
                let Ok(ss) = SectorSize::try_from(u64::from(raw_sector_size)) else {
                    return Err(ActivationError::Unsupported(format!(
                        "LUKS2 segment {id}: sector size {raw_sector_size} is not 512..4096."
                    )));
                };
                let sector_size = u64::from(ss.bytes());
                let cipher = seg.encryption.clone().unwrap_or_default();
                let Some(key_bytes) = luks2_segment_key_bytes(h, id) else {
                    return Err(ActivationError::Unsupported(format!(
                        "LUKS2 segment {id} has no digest with a keyslot; its key size is unknown."
                    )));
                };
                let off_bytes = seg.offset.0;
                if !off_bytes.is_multiple_of(sector_size) {
                    return Err(ActivationError::Geometry(format!(
                        "LUKS2 segment {id}: offset {off_bytes} is not aligned to the {sector_size}-byte sector size."
                    )));
                }
                let offset = off_bytes / 512;
                if dev.size() <= off_bytes {
                    return Err(ActivationError::Geometry(format!(
                        "Device {name} is too small: the data starts at byte {off_bytes} but the device has {} bytes.",
                        dev.size()
                    )));
                }
                let len_bytes = match seg.size {
                    SegmentSize::Dynamic => dev.size() - off_bytes,
                    SegmentSize::Bytes(n) => {
                        if n == 0 {
                            return Err(ActivationError::Geometry(format!(
                                "LUKS2 segment {id} has size 0."
                            )));
                        }
                        match off_bytes.checked_add(n) {
                            Some(end) if end <= dev.size() => n,
                            _ => {
                                return Err(ActivationError::Geometry(format!(
                                    "Device {name} is too small: segment {id} needs {n} bytes at offset {off_bytes}, the device has {} bytes.",
                                    dev.size()
                                )))
                            }
                        }
                    }
                };
                if !len_bytes.is_multiple_of(sector_size) {
                    return Err(ActivationError::Geometry(format!(
                        "Device size is not aligned to requested sector size: {len_bytes} bytes of data is not a multiple of {sector_size}."
                    )));
                }
                let (cipher, key) = typed_cipher(&cipher, key_bytes)?;
                CryptParams {
                    cipher,
                    key,
                    sector_size: ss,
                    offset: Sectors(offset),
                    iv_offset: Sectors(seg.iv_tweak.map_or(0, |t| t.0)),
                    iv_large_sectors: false,
                    size: Sectors(len_bytes / 512),
                }
            }
        };
        Ok(p)
    }
}

/// The data cipher and volume key size of `vol` (LUKS1 header; LUKS2 its only data
/// segment and the key size of a keyslot its digest covers), checked against what the
/// vault serves: the cipher and key the vault unlocks a keyslot's key for.
pub fn volume_cipher(vol: &Volume) -> Result<(CipherSpec, KeySize), ActivationError> {
    match vol {
        Volume::Luks1(h) => typed_cipher(&h.cipher_spec(), h.key_bytes),
        Volume::Luks2(h) => {
            let Some((id, seg)) = h.meta.segments.iter().next() else {
                return Err(ActivationError::Unsupported(
                    "LUKS2 device has no data segment.".into(),
                ));
            };
            let cipher = seg.encryption.clone().unwrap_or_default();
            let Some(key_bytes) = luks2_segment_key_bytes(h, id) else {
                return Err(ActivationError::Unsupported(format!(
                    "LUKS2 segment {id} has no keyslot bound to it."
                )));
            };
            typed_cipher(&cipher, key_bytes)
        }
    }
}

/// Volume key size of LUKS2 segment `seg`: the key size of a keyslot that the segment's
/// digest covers.
fn luks2_segment_key_bytes(h: &crate::luks2::Luks2Header, seg: &str) -> Option<u32> {
    let d = h
        .meta
        .digests
        .values()
        .find(|d| d.segments.iter().any(|s| s == seg))?;
    d.keyslots
        .iter()
        .find_map(|k| h.meta.keyslots.get(k))
        .map(|ks| ks.key_size)
}

/// Outcome of checking a candidate volume key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum KeyCheck {
    /// The key matches the volume's digest.
    Match,
    /// The key has the wrong length.
    WrongSize {
        /// Expected bytes.
        want: usize,
    },
    /// Right length, failing digest.
    Mismatch,
}

/// Checks a candidate volume key against the digest of `vol`'s data segment (LUKS1:
/// the master-key digest; LUKS2: the digest of segment 0). No keyslot is touched.
/// Afterwards the stack the digest's PBKDF2 used (HMAC key blocks hold the key) is
/// zeroed ([`crate::secret::wipe_stack`]).
pub fn verify_volume_key(
    vol: &Volume,
    key: &[u8],
    limits: &KdfLimits,
) -> Result<KeyCheck, ActivationError> {
    let r = verify_volume_key_inner(vol, key, limits);
    crate::secret::wipe_stack();
    r
}

#[inline(never)]
fn verify_volume_key_inner(
    vol: &Volume,
    key: &[u8],
    limits: &KdfLimits,
) -> Result<KeyCheck, ActivationError> {
    let bad = |s: String| ActivationError::Unsupported(s);
    match vol {
        Volume::Luks1(h) => {
            if key.len() != h.key_bytes as usize {
                return Ok(KeyCheck::WrongSize {
                    want: h.key_bytes as usize,
                });
            }
            let kdf = Kdf::Pbkdf2 {
                hash: h.hash,
                iterations: h.mk_digest_iter,
                salt: h.mk_digest_salt.to_vec(),
            };
            let calc = kdf
                .derive(key, 20, limits)
                .map_err(|e| bad(format!("Volume key digest: {e}")))?;
            Ok(if ct_eq(calc.as_slice(), &h.mk_digest) {
                KeyCheck::Match
            } else {
                KeyCheck::Mismatch
            })
        }
        Volume::Luks2(h) => {
            let Some((seg, _)) = h.meta.segments.iter().next() else {
                return Err(bad("LUKS2 device has no data segment.".into()));
            };
            let Some(want) = luks2_segment_key_bytes(h, seg) else {
                return Err(bad(format!(
                    "LUKS2 segment {seg} has no digest with a keyslot."
                )));
            };
            if key.len() != want as usize {
                return Ok(KeyCheck::WrongSize {
                    want: want as usize,
                });
            }
            let d = h
                .meta
                .digests
                .values()
                .find(|d| d.segments.iter().any(|s| s == seg))
                .expect("found above");
            if d.kind != "pbkdf2" {
                return Err(bad(format!("digest type {:?} is not supported", d.kind)));
            }
            let (Some(hash), Some(iterations), Some(salt), Some(digest)) =
                (&d.hash, d.iterations, &d.salt, &d.digest)
            else {
                return Err(bad(
                    "digest is missing hash, iterations, salt or digest".into()
                ));
            };
            let digest =
                base64_decode(digest).ok_or_else(|| bad("digest is not valid base64".into()))?;
            let salt =
                base64_decode(salt).ok_or_else(|| bad("digest salt is not valid base64".into()))?;
            if digest.is_empty() || digest.len() > 64 {
                return Err(bad(format!(
                    "digest length {} outside 1..=64",
                    digest.len()
                )));
            }
            let kdf = Kdf::Pbkdf2 {
                hash: Hash::from_name(hash).map_err(|e| bad(e.to_string()))?,
                iterations,
                salt,
            };
            let calc = kdf
                .derive(key, digest.len(), limits)
                .map_err(|e| bad(format!("Volume key digest: {e}")))?;
            Ok(if ct_eq(calc.as_slice(), &digest) {
                KeyCheck::Match
            } else {
                KeyCheck::Mismatch
            })
        }
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
