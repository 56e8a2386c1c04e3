//! The ordered write steps of a header change, and their execution.
//!
//! Order is what makes a change crash-safe (as cryptsetup orders it): a new keyslot's
//! area is written and synced before any header names it; a removed keyslot leaves the
//! header (both LUKS2 copies, each synced, primary first, seqid + 1) before its area is
//! wiped with random bytes. A crash between any two writes leaves a header that parses
//! and names either the old or the new keyslot set.

use std::fs::File;
use std::os::unix::fs::FileExt;

use super::material::{DigestParams, KeyslotMaterial};
use super::plan::VolumePlan;
use super::{luks1, luks2, random, FormatError};
use crate::luks2::header::Copy;

/// Which header a [`Step::WriteHeader`] writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HeaderSlot {
    /// The LUKS1 phdr at offset 0.
    Luks1,
    /// A LUKS2 copy.
    Luks2(Copy),
}

/// One write or sync.
#[derive(Clone, PartialEq, Eq)]
pub enum Step {
    /// Zero a range (a new volume's keyslots area, as cryptsetup wipes it).
    Zero {
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// Write a keyslot's (encrypted, opaque) area.
    WriteArea {
        /// Keyslot id.
        keyslot: u32,
        /// Byte offset.
        offset: u64,
        /// The area, padded to its full size.
        bytes: Vec<u8>,
    },
    /// Write a header (copy).
    WriteHeader {
        /// Which header.
        which: HeaderSlot,
        /// Byte offset.
        offset: u64,
        /// The serialized header.
        bytes: Vec<u8>,
    },
    /// Overwrite a dropped keyslot's area with random bytes.
    WipeArea {
        /// Keyslot id the area belonged to.
        keyslot: u32,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
    },
    /// `fsync(2)` the device.
    Sync,
}

impl core::fmt::Debug for Step {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Zero { offset, len } => write!(f, "Zero[{offset}, +{len})"),
            Self::WriteArea {
                keyslot,
                offset,
                bytes,
            } => write!(
                f,
                "WriteArea(keyslot {keyslot})[{offset}, +{}]",
                bytes.len()
            ),
            Self::WriteHeader {
                which,
                offset,
                bytes,
            } => write!(f, "WriteHeader({which:?})[{offset}, +{}]", bytes.len()),
            Self::WipeArea {
                keyslot,
                offset,
                len,
            } => write!(f, "WipeArea(keyslot {keyslot})[{offset}, +{len})"),
            Self::Sync => f.write_str("Sync"),
        }
    }
}

impl Step {
    /// The byte range the step writes, if it writes.
    pub fn range(&self) -> Option<(u64, u64)> {
        match self {
            Self::Zero { offset, len } | Self::WipeArea { offset, len, .. } => {
                Some((*offset, *len))
            }
            Self::WriteArea { offset, bytes, .. } | Self::WriteHeader { offset, bytes, .. } => {
                Some((*offset, bytes.len() as u64))
            }
            Self::Sync => None,
        }
    }
}

/// A list of steps, never to write at or past `limit` (the data segment).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WritePlan {
    /// First byte no step may touch (the data offset).
    pub limit: u64,
    /// The steps, in order.
    pub steps: Vec<Step>,
}

/// Chunk of zero / random writes.
const CHUNK: u64 = 1 << 20;

impl WritePlan {
    /// Checks every step against `limit` (nothing is written when one is out of bounds).
    pub fn check(&self) -> Result<(), FormatError> {
        for (index, s) in self.steps.iter().enumerate() {
            if let Some((offset, len)) = s.range() {
                if offset.checked_add(len).is_none_or(|e| e > self.limit) {
                    return Err(FormatError::StepOutOfBounds {
                        index,
                        offset,
                        len,
                        limit: self.limit,
                    });
                }
            }
        }
        Ok(())
    }

    /// Checks the plan, then runs its steps in order on `file` (opened for writing).
    pub fn apply(&self, file: &File) -> Result<(), FormatError> {
        self.check()?;
        let io = |what, offset| {
            move |source| FormatError::Io {
                what,
                offset,
                source,
            }
        };
        for s in &self.steps {
            match s {
                Step::Zero { offset, len } | Step::WipeArea { offset, len, .. } => {
                    let random = matches!(s, Step::WipeArea { .. });
                    let mut buf = vec![0u8; CHUNK.min(*len) as usize];
                    let mut at = *offset;
                    while at < offset + len {
                        let n = CHUNK.min(offset + len - at) as usize;
                        if random {
                            random::fill(&mut buf[..n])?;
                        }
                        file.write_all_at(&buf[..n], at)
                            .map_err(io("wipe of a keyslot area", at))?;
                        at += n as u64;
                    }
                }
                Step::WriteArea { offset, bytes, .. } => file
                    .write_all_at(bytes, *offset)
                    .map_err(io("write of a keyslot area", *offset))?,
                Step::WriteHeader { offset, bytes, .. } => file
                    .write_all_at(bytes, *offset)
                    .map_err(io("write of a header", *offset))?,
                Step::Sync => file.sync_all().map_err(io("fsync", 0))?,
            }
        }
        Ok(())
    }
}

/// Pads the vault's area bytes to the full area size with zeros.
pub(crate) fn padded(m: &KeyslotMaterial, len: u64) -> Vec<u8> {
    let mut v = m.area.clone();
    v.resize(len as usize, 0);
    v
}

/// The steps that write a new volume: keyslots area zeroed, each keyslot's area,
/// sync, then the header(s) (LUKS2: primary, sync, secondary, sync; seqid 1).
pub fn new_volume_steps(
    plan: &VolumePlan,
    keyslots: &[(u32, KeyslotMaterial)],
    digest: &DigestParams,
) -> Result<WritePlan, FormatError> {
    let mut steps = Vec::new();
    match plan {
        VolumePlan::Luks2(p) => {
            luks2::check_digest(digest)?;
            let area = p.area_size();
            let mut placed = Vec::new();
            let mut seen = std::collections::BTreeSet::new();
            for (n, (id, m)) in keyslots.iter().enumerate() {
                if *id > crate::luks2::json::MAX_ID {
                    return Err(FormatError::SlotOutOfRange {
                        slot: *id,
                        max: crate::luks2::json::MAX_ID,
                    });
                }
                if !seen.insert(*id) {
                    return Err(FormatError::SlotInUse(*id));
                }
                luks2::check_material(*id, m, p.key_size, area)?;
                let off = p.area_offset(n as u32);
                if off + area > 2 * p.hdr_size + p.keyslots_size {
                    return Err(FormatError::NoSpace {
                        slot: *id,
                        len: area,
                    });
                }
                placed.push((*id, m, off));
            }
            let json = luks2::new_metadata(p, &placed, digest);
            let id = luks2::HeaderIdentity {
                hdr_size: p.hdr_size,
                label: p.label.clone(),
                subsystem: p.subsystem.clone(),
                uuid: p.uuid.clone(),
            };
            let primary = luks2::header_copy(&id, 1, Copy::Primary, &json)?;
            let secondary = luks2::header_copy(&id, 1, Copy::Secondary, &json)?;
            steps.push(Step::Zero {
                offset: 2 * p.hdr_size,
                len: p.keyslots_size,
            });
            for (id, m, off) in &placed {
                steps.push(Step::WriteArea {
                    keyslot: *id,
                    offset: *off,
                    bytes: padded(m, area),
                });
            }
            steps.push(Step::Sync);
            push_luks2_headers(&mut steps, p.hdr_size, primary, secondary);
        }
        VolumePlan::Luks1(p) => {
            let refs: Vec<(u32, &KeyslotMaterial)> =
                keyslots.iter().map(|(i, m)| (*i, m)).collect();
            let h = luks1::new_header(p, &refs, digest)?;
            let first = p.key_material_offsets[0] as u64 * 512;
            steps.push(Step::Zero {
                offset: first,
                len: p.payload_offset as u64 * 512 - first,
            });
            for (id, m) in keyslots {
                let (off, len) = h.area(*id as usize);
                steps.push(Step::WriteArea {
                    keyslot: *id,
                    offset: off,
                    bytes: padded(m, len),
                });
            }
            steps.push(Step::Sync);
            // The whole first 4 KiB: phdr and the zeros up to the first key material.
            let mut hdr = luks1::phdr(&h).to_vec();
            hdr.resize(first as usize, 0);
            steps.push(Step::WriteHeader {
                which: HeaderSlot::Luks1,
                offset: 0,
                bytes: hdr,
            });
            steps.push(Step::Sync);
        }
    }
    Ok(WritePlan {
        limit: plan.data_offset(),
        steps,
    })
}

/// Appends the LUKS2 two-copy header write: primary, sync, secondary, sync.
pub(crate) fn push_luks2_headers(
    steps: &mut Vec<Step>,
    hdr_size: u64,
    primary: Vec<u8>,
    secondary: Vec<u8>,
) {
    steps.push(Step::WriteHeader {
        which: HeaderSlot::Luks2(Copy::Primary),
        offset: 0,
        bytes: primary,
    });
    steps.push(Step::Sync);
    steps.push(Step::WriteHeader {
        which: HeaderSlot::Luks2(Copy::Secondary),
        offset: hdr_size,
        bytes: secondary,
    });
    steps.push(Step::Sync);
}

/// Writes a new volume on `file`: [`new_volume_steps`] then [`WritePlan::apply`].
/// The device must be at least as large as the plan's data offset plus one sector.
pub fn write_new(
    file: &File,
    plan: &VolumePlan,
    keyslots: &[(u32, KeyslotMaterial)],
    digest: &DigestParams,
) -> Result<(), FormatError> {
    new_volume_steps(plan, keyslots, digest)?.apply(file)
}
