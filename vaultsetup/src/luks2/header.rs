//! LUKS2 binary headers: both copies, checksums, seqid choice and fallback.

use std::sync::Arc;

use crate::device::{Device, DeviceError};
use crate::kdf::Hash;
use crate::util::{be16, be64, c_str};

/// Size of the binary part of a LUKS2 header.
pub const BIN_SIZE: usize = 4096;
/// Magic of the primary header.
pub const MAGIC_PRIMARY: [u8; 6] = *b"LUKS\xba\xbe";
/// Magic of the secondary header.
pub const MAGIC_SECONDARY: [u8; 6] = *b"SKUL\xba\xbe";
/// The header sizes (binary + JSON area) LUKS2 allows, which are also the offsets at
/// which cryptsetup looks for the secondary header when the primary is unusable.
pub const HDR_SIZES: [u64; 9] = [
    0x4000, 0x8000, 0x10000, 0x20000, 0x40000, 0x80000, 0x100000, 0x200000, 0x400000,
];
const CSUM_OFF: usize = 448;
const CSUM_LEN: usize = 64;

/// Which copy a header is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Copy {
    /// The primary header at offset 0.
    Primary,
    /// The secondary header at offset `hdr_size`.
    Secondary,
}

impl core::fmt::Display for Copy {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(match self {
            Copy::Primary => "primary",
            Copy::Secondary => "secondary",
        })
    }
}

/// Why one header copy was rejected.
///
/// `Clone` (a header pair's problems are kept and reported more than once), so a device
/// error is shared behind an [`Arc`].
#[derive(Clone, Debug, thiserror::Error)]
pub enum HeaderProblem {
    /// No LUKS2 magic/version at the place.
    #[error("no LUKS2 {0} header magic")]
    NoMagic(Copy),
    /// The header size field is not an allowed value.
    #[error("header size {0} is not a power of two between 16 KiB and 4 MiB")]
    BadSize(u64),
    /// The header offset field does not match the place it was read from.
    #[error("header offset field {field} does not match its position {actual}")]
    BadOffset {
        /// The offset the header's `hdr_offset` field records.
        field: u64,
        /// The offset the header was actually read from.
        actual: u64,
    },
    /// The checksum algorithm is unsupported.
    #[error("checksum algorithm {0:?} is not supported")]
    BadChecksumAlg(String),
    /// The checksum does not match.
    #[error("checksum mismatch")]
    BadChecksum,
    /// The device is too short to hold the header.
    #[error(
        "device too short: the header needs [{offset}, +{len}) but the device has {size} bytes"
    )]
    Short {
        /// Byte offset of the header copy on the device.
        offset: u64,
        /// Bytes the header copy needs from that offset.
        len: u64,
        /// Size of the device in bytes.
        size: u64,
    },
    /// An I/O error while reading the header.
    #[error("{0}")]
    Io(#[source] Arc<DeviceError>),
    /// The JSON area has no terminating NUL / is not UTF-8.
    #[error("JSON area is not a NUL-terminated UTF-8 string")]
    BadJsonArea,
}

/// One valid binary header with its JSON text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BinHeader {
    /// Which copy.
    pub copy: Copy,
    /// Header size (binary + JSON area) in bytes.
    pub hdr_size: u64,
    /// Sequence id (epoch).
    pub seqid: u64,
    /// The volume label (`--label`), up to 47 bytes.
    pub label: String,
    /// Checksum algorithm name.
    pub checksum_alg: String,
    /// The header checksum's salt (64 random bytes).
    pub salt: [u8; 64],
    /// The volume UUID as text (what `UUID=` and udev see).
    pub uuid: String,
    /// The subsystem label (`--subsystem`), up to 47 bytes.
    pub subsystem: String,
    /// Offset of this header on the device.
    pub hdr_offset: u64,
    /// The JSON text (up to the first NUL of the JSON area).
    pub json: String,
}

/// Whether the first bytes look like a LUKS2 header (magic + version 2), either copy.
pub fn looks_like_luks2(b: &[u8]) -> bool {
    b.len() >= 8 && (b[..6] == MAGIC_PRIMARY || b[..6] == MAGIC_SECONDARY) && be16(b, 6) == 2
}

/// Reads and verifies one header copy at `offset`.
pub fn read_copy(dev: &Device, offset: u64, copy: Copy) -> Result<BinHeader, HeaderProblem> {
    let mut bin = vec![0u8; BIN_SIZE];
    dev.read_exact_at(offset, &mut bin)
        .map_err(|e| short(e, offset, BIN_SIZE as u64, dev.size()))?;
    let magic = match copy {
        Copy::Primary => MAGIC_PRIMARY,
        Copy::Secondary => MAGIC_SECONDARY,
    };
    if bin[..6] != magic || be16(&bin, 6) != 2 {
        return Err(HeaderProblem::NoMagic(copy));
    }
    let hdr_size = be64(&bin, 8);
    if !HDR_SIZES.contains(&hdr_size) {
        return Err(HeaderProblem::BadSize(hdr_size));
    }
    let hdr_offset = be64(&bin, 256);
    if hdr_offset != offset {
        return Err(HeaderProblem::BadOffset {
            field: hdr_offset,
            actual: offset,
        });
    }
    let checksum_alg = c_str(&bin[72..104]);
    let hash = Hash::from_name(&checksum_alg)
        .map_err(|_| HeaderProblem::BadChecksumAlg(checksum_alg.clone()))?;
    // hdr_size is bounded by HDR_SIZES (≤ 4 MiB).
    let mut area = vec![0u8; hdr_size as usize - BIN_SIZE];
    dev.read_exact_at(offset + BIN_SIZE as u64, &mut area)
        .map_err(|e| short(e, offset, hdr_size, dev.size()))?;
    let mut stored = [0u8; CSUM_LEN];
    stored.copy_from_slice(&bin[CSUM_OFF..CSUM_OFF + CSUM_LEN]);
    bin[CSUM_OFF..CSUM_OFF + CSUM_LEN].fill(0);
    let mut calc = [0u8; 64];
    let dl = hash.output_len();
    hash.digest_parts(&[&bin, &area], &mut calc[..dl]);
    if calc[..dl] != stored[..dl] {
        return Err(HeaderProblem::BadChecksum);
    }
    let nul = area
        .iter()
        .position(|&b| b == 0)
        .ok_or(HeaderProblem::BadJsonArea)?;
    area.truncate(nul);
    let json = String::from_utf8(area).map_err(|_| HeaderProblem::BadJsonArea)?;
    let mut salt = [0u8; 64];
    salt.copy_from_slice(&bin[104..168]);
    Ok(BinHeader {
        copy,
        hdr_size,
        seqid: be64(&bin, 16),
        label: c_str(&bin[24..72]),
        checksum_alg,
        salt,
        uuid: c_str(&bin[168..208]),
        subsystem: c_str(&bin[208..256]),
        hdr_offset,
        json,
    })
}

fn short(e: DeviceError, offset: u64, len: u64, size: u64) -> HeaderProblem {
    match e {
        DeviceError::ShortRead { .. } => HeaderProblem::Short { offset, len, size },
        other => HeaderProblem::Io(Arc::new(other)),
    }
}

/// The outcome of reading both copies.
#[derive(Debug)]
pub struct HeaderPair {
    /// The copy to use.
    pub chosen: BinHeader,
    /// The other copy when it is valid too.
    pub other: Option<BinHeader>,
    /// Why the primary was rejected, if it was.
    pub primary_problem: Option<HeaderProblem>,
    /// Why the secondary was rejected, if it was.
    pub secondary_problem: Option<HeaderProblem>,
}

impl HeaderPair {
    /// Notes for stderr about fallback or disagreement, in cryptsetup's spirit.
    pub fn notes(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(p) = &self.primary_problem {
            v.push(format!(
                "Primary LUKS2 header is corrupted ({p}); using the secondary header (seqid {}). \
                 vaultsetup never writes: run `cryptsetup repair` to restore the primary.",
                self.chosen.seqid
            ));
        } else if let Some(p) = &self.secondary_problem {
            v.push(format!(
                "Secondary LUKS2 header is corrupted ({p}); using the primary header. \
                 vaultsetup never writes: run `cryptsetup repair` to restore the secondary."
            ));
        } else if let Some(o) = &self.other {
            if o.seqid != self.chosen.seqid {
                v.push(format!(
                    "LUKS2 headers disagree (seqid {} vs {}); using the newer {} header. \
                     Run `cryptsetup repair` to resynchronize them.",
                    self.chosen.seqid, o.seqid, self.chosen.copy
                ));
            }
        }
        v
    }
}

/// Both copies failed.
#[derive(Debug, Clone, thiserror::Error)]
#[error("both LUKS2 headers are unusable: primary: {primary}; secondary: {secondary}")]
pub struct BothBad {
    /// Why the primary header copy was rejected.
    pub primary: HeaderProblem,
    /// Why the secondary header copy was rejected (at every offset searched).
    pub secondary: HeaderProblem,
}

/// Reads both copies and chooses as cryptsetup does: the valid copy with the higher
/// seqid; when the primary is unusable, the secondary is searched at every allowed
/// header size.
pub fn read_pair(dev: &Device) -> Result<HeaderPair, BothBad> {
    let primary = read_copy(dev, 0, Copy::Primary);
    let secondary = match &primary {
        Ok(p) => read_copy(dev, p.hdr_size, Copy::Secondary),
        Err(_) => {
            // Report the first copy that had a magic but was bad, else "no magic".
            let mut found = Err(HeaderProblem::NoMagic(Copy::Secondary));
            for &off in &HDR_SIZES {
                match read_copy(dev, off, Copy::Secondary) {
                    Ok(h) => {
                        found = Ok(h);
                        break;
                    }
                    Err(HeaderProblem::NoMagic(_) | HeaderProblem::Short { .. }) => {}
                    Err(e) => {
                        if matches!(found, Err(HeaderProblem::NoMagic(_))) {
                            found = Err(e);
                        }
                    }
                }
            }
            found
        }
    };
    match (primary, secondary) {
        (Ok(p), Ok(s)) => {
            let (chosen, other) = if s.seqid > p.seqid { (s, p) } else { (p, s) };
            Ok(HeaderPair {
                chosen,
                other: Some(other),
                primary_problem: None,
                secondary_problem: None,
            })
        }
        (Ok(p), Err(e)) => Ok(HeaderPair {
            chosen: p,
            other: None,
            primary_problem: None,
            secondary_problem: Some(e),
        }),
        (Err(e), Ok(s)) => Ok(HeaderPair {
            chosen: s,
            other: None,
            primary_problem: Some(e),
            secondary_problem: None,
        }),
        (Err(primary), Err(secondary)) => Err(BothBad { primary, secondary }),
    }
}
