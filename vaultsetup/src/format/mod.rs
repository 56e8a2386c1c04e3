//! Host-side LUKS header writing: new volumes and keyslot-set edits.
//!
//! What the host writes here is *metadata only*: the LUKS2 binary headers and JSON (both
//! copies), the LUKS1 phdr, and keyslot areas whose bytes are handed in opaque — already
//! encrypted AF material produced inside the vault VM, with its KDF parameters and the
//! volume-key digest. No passphrase, derived key or volume key ever passes through this
//! module: it cannot create or check a keyslot, only place the vault's bytes on disk.
//!
//! Layers: [`plan`] (the typed layout of a new volume, cryptsetup 2.6 defaults) →
//! [`material`] (the opaque bytes and parameters the vault hands over) → [`luks2`] /
//! [`luks1`] (serializers) → [`edit`] (keyslot add / remove / change on an existing
//! header) → [`steps`] (the ordered, crash-safe list of writes and syncs, and its
//! execution). Writes never reach the data segment: [`steps::WritePlan::apply`] refuses
//! any step at or past the data offset before writing anything.

pub mod edit;
pub mod luks1;
pub mod luks2;
pub mod material;
pub mod plan;
pub(crate) mod random;
pub mod steps;

pub use edit::{add_keyslot, change_keyslot, remove_keyslot};
pub use material::{AfParams, DigestParams, KdfParams, KeyslotMaterial};
pub use plan::{plan, DeviceGeometry, Luks1Plan, Luks2Plan, LuksVersion, PlanOptions, VolumePlan};
pub use steps::{write_new, Step, WritePlan};

/// Errors of planning, serializing, editing and writing LUKS headers.
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    /// The system random source failed.
    #[error("cannot read random bytes: {0}")]
    Random(#[source] std::io::Error),
    /// A plan option is out of range; the message names it and the value.
    #[error("invalid volume parameter: {0}")]
    BadOption(String),
    /// The device cannot hold the header, keyslots area and at least one data sector.
    #[error("device of {size} bytes is too small: the LUKS metadata alone needs {need} bytes")]
    DeviceTooSmall {
        /// Device size in bytes.
        size: u64,
        /// Bytes the metadata (headers + keyslots area) and one sector need.
        need: u64,
    },
    /// The keyslot material does not fit the volume (sizes, cipher, KDF kind).
    #[error("keyslot {slot}: {why}")]
    BadMaterial {
        /// Keyslot id.
        slot: u32,
        /// What does not fit.
        why: String,
    },
    /// The digest parameters do not fit the volume.
    #[error("volume key digest: {0}")]
    BadDigest(String),
    /// A keyslot area would be outside the keyslots area, or overlap a header, another
    /// keyslot or the data segment.
    #[error("keyslot {slot}: area [{offset}, +{len}) {why}")]
    AreaRefused {
        /// Keyslot id.
        slot: u32,
        /// Byte offset of the area.
        offset: u64,
        /// Byte length of the area.
        len: u64,
        /// What it overlaps or leaves.
        why: String,
    },
    /// No room in the keyslots area for a new area of this size.
    #[error("keyslot {slot}: no free space of {len} bytes left in the keyslots area")]
    NoSpace {
        /// Keyslot id.
        slot: u32,
        /// Bytes needed.
        len: u64,
    },
    /// Every keyslot id is in use.
    #[error("all keyslots are in use")]
    NoFreeSlot,
    /// The keyslot id is already in use.
    #[error("keyslot {0} is already in use")]
    SlotInUse(u32),
    /// The keyslot id is beyond the format's last keyslot.
    #[error("keyslot {slot} is out of range (0..={max})")]
    SlotOutOfRange {
        /// Keyslot id asked for.
        slot: u32,
        /// Largest id of the format.
        max: u32,
    },
    /// The keyslot id is not in use.
    #[error("keyslot {0} is not active")]
    SlotInactive(u32),
    /// The header has no digest bound to the data segment to attach a keyslot to.
    #[error("no volume key digest is bound to the data segment")]
    NoDigest,
    /// The header cannot be edited safely (unknown layout, reencryption in progress).
    #[error("header cannot be edited: {0}")]
    Unsupported(String),
    /// The JSON metadata does not fit the JSON area.
    #[error("LUKS2 JSON metadata is {len} bytes, the JSON area holds {max} (with its NUL)")]
    JsonTooBig {
        /// Serialized length.
        len: usize,
        /// JSON area size.
        max: u64,
    },
    /// JSON serialization failed.
    #[error("cannot serialize the LUKS2 JSON metadata: {0}")]
    Json(#[source] serde_json::Error),
    /// A planned write would reach the data segment or the device end.
    #[error(
        "write step {index} [{offset}, +{len}) reaches past {limit} (data segment or device end)"
    )]
    StepOutOfBounds {
        /// Index of the step in the plan.
        index: usize,
        /// Byte offset of the write.
        offset: u64,
        /// Length of the write.
        len: u64,
        /// First byte the writer must not touch.
        limit: u64,
    },
    /// A write or sync failed.
    #[error("{what} at offset {offset} failed: {source}")]
    Io {
        /// What was being written.
        what: &'static str,
        /// Byte offset.
        offset: u64,
        /// The system error.
        #[source]
        source: std::io::Error,
    },
}

impl crate::exit::HasExitCode for FormatError {
    /// cryptsetup's `translate_errno`: out of memory 3, anything else (bad layout,
    /// write errors) 1.
    fn exit_code(&self) -> crate::exit::ExitCode {
        match self {
            Self::Io { source, .. } | Self::Random(source)
                if source.raw_os_error() == Some(libc::ENOMEM) =>
            {
                crate::exit::ExitCode::OutOfMemory
            }
            _ => crate::exit::ExitCode::WrongParameters,
        }
    }
}

/// Standard base64 with `=` padding, as json-c writes LUKS2 salts and digests.
pub fn base64_encode(b: &[u8]) -> String {
    const T: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(b.len().div_ceil(3) * 4);
    for c in b.chunks(3) {
        let n = (c[0] as u32) << 16
            | (*c.get(1).unwrap_or(&0) as u32) << 8
            | *c.get(2).unwrap_or(&0) as u32;
        for i in 0..4 {
            if i <= c.len() {
                s.push(T[(n >> (18 - 6 * i)) as usize & 63] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

/// `v` rounded up to a multiple of `a` (a power of two or any non-zero value).
pub(crate) fn align_up(v: u64, a: u64) -> u64 {
    v.div_ceil(a) * a
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::base64_decode;

    #[test]
    fn base64_roundtrip() {
        assert_eq!(base64_encode(b""), "");
        assert_eq!(base64_encode(b"f"), "Zg==");
        assert_eq!(base64_encode(b"fo"), "Zm8=");
        assert_eq!(base64_encode(b"foobar"), "Zm9vYmFy");
        let v: Vec<u8> = (0..=255).collect();
        assert_eq!(base64_decode(&base64_encode(&v)).unwrap(), v);
    }
}
