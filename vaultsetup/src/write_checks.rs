//! Checks before anything writes a LUKS header (`luksFormat`): the device exists, is a
//! block device or an image file, nobody else uses it, it is large enough, and it is
//! not the backing device of an open vmvault volume.
//!
//! [`open_target`] opens the device read-write — block devices with `O_EXCL`, which
//! fails while the device is mounted, held by device-mapper or a loop device, or opened
//! exclusively by anyone — and keeps it open in the returned [`Target`], so that the
//! header writer writes to the very file that was checked.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::{ExitCode, HasExitCode};

/// Why a device may not be written.
#[derive(Debug, thiserror::Error)]
pub enum WriteCheckError {
    /// Missing, or no permission.
    #[error("Device {path} does not exist or access denied.")]
    Open {
        /// The device.
        path: String,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// Neither a block device nor a regular file.
    #[error("Device {0} is not a block device or image file.")]
    NotBlockOrFile(String),
    /// `O_EXCL` failed (mounted, mapped, or opened exclusively), or sysfs lists holders.
    #[error("Cannot exclusively open {path}, device in use{}.", holders_text(.holders))]
    InUse {
        /// The device.
        path: String,
        /// Its holders from sysfs (`dm-0`, `loop3`...), if any were found.
        holders: Vec<String>,
    },
    /// The device backs an open vmvault volume.
    #[error(
        "Cannot format device {path} in use: it is the backing device of vmvault volume {volume}."
    )]
    VmvaultBacking {
        /// The device.
        path: String,
        /// The volume name.
        volume: String,
    },
    /// Smaller than the header, keyslots and one sector of data.
    #[error("Device {path} is too small: {size} bytes, but the LUKS header and keyslots need {data_offset} bytes and the data at least one {sector_size}-byte sector ({needed} bytes in all).")]
    TooSmall {
        /// The device.
        path: String,
        /// Its size in bytes.
        size: u64,
        /// The data offset (header plus keyslot areas) in bytes.
        data_offset: u64,
        /// The encryption sector size.
        sector_size: u32,
        /// `data_offset + sector_size`.
        needed: u64,
    },
    /// The size could not be read.
    #[error("Cannot get the size of device {path}: {source}")]
    Size {
        /// The device.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

fn holders_text(h: &[String]) -> String {
    if h.is_empty() {
        String::new()
    } else {
        format!(" (held by {})", h.join(", "))
    }
}

impl HasExitCode for WriteCheckError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Open { source, .. } if source.kind() == std::io::ErrorKind::PermissionDenied => {
                ExitCode::NoPermission
            }
            Self::Open { .. } | Self::NotBlockOrFile(_) | Self::Size { .. } => {
                ExitCode::WrongDevice
            }
            Self::InUse { .. } | Self::VmvaultBacking { .. } => ExitCode::Busy,
            Self::TooSmall { .. } => ExitCode::WrongParameters,
        }
    }
}

/// A device opened read-write for a header write, checked not to be in use.
#[derive(Debug)]
pub struct Target {
    /// The open device (exclusive for block devices; closed when dropped).
    pub file: File,
    /// The path it was opened from.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// Whether it is a block device (else an image file).
    pub block: bool,
}

/// Opens `path` for writing a header: a block device with `O_EXCL` (and no holders in
/// sysfs), or a regular file.
pub fn open_target(path: &Path) -> Result<Target, WriteCheckError> {
    let disp = path.display().to_string();
    let meta = std::fs::metadata(path).map_err(|source| WriteCheckError::Open {
        path: disp.clone(),
        source,
    })?;
    let ft = meta.file_type();
    let block = ft.is_block_device();
    if !block && !ft.is_file() {
        return Err(WriteCheckError::NotBlockOrFile(disp));
    }
    if block {
        let holders = sysfs_holders(meta.rdev());
        if !holders.is_empty() {
            return Err(WriteCheckError::InUse {
                path: disp,
                holders,
            });
        }
    }
    let flags = libc::O_CLOEXEC | if block { libc::O_EXCL } else { 0 };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(flags)
        .open(path)
        .map_err(|source| {
            if block && source.raw_os_error() == Some(libc::EBUSY) {
                WriteCheckError::InUse {
                    path: disp.clone(),
                    holders: Vec::new(),
                }
            } else {
                WriteCheckError::Open {
                    path: disp.clone(),
                    source,
                }
            }
        })?;
    let size = if block {
        crate::device::block_device_size(&file)
    } else {
        file.metadata().map(|m| m.len())
    }
    .map_err(|source| WriteCheckError::Size { path: disp, source })?;
    Ok(Target {
        file,
        path: path.to_path_buf(),
        size,
        block,
    })
}

/// The holders of block device `rdev` in `/sys/dev/block/MAJ:MIN/holders` (empty when
/// sysfs is not there).
pub fn sysfs_holders(rdev: u64) -> Vec<String> {
    let dir = format!(
        "/sys/dev/block/{}:{}/holders",
        libc::major(rdev),
        libc::minor(rdev)
    );
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    let mut v: Vec<String> = rd
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

impl Target {
    /// Refuses a device smaller than `data_offset` (header plus keyslot areas, bytes)
    /// plus one `sector_size` sector of data. With a detached header pass the data
    /// offset on the data device (often 0).
    pub fn check_size(&self, data_offset: u64, sector_size: u32) -> Result<(), WriteCheckError> {
        let needed = data_offset.saturating_add(u64::from(sector_size));
        if self.size < needed {
            return Err(WriteCheckError::TooSmall {
                path: self.path.display().to_string(),
                size: self.size,
                data_offset,
                sector_size,
                needed,
            });
        }
        Ok(())
    }

    /// Refuses the device when it is the backing file or device of one of `volumes`
    /// (name, backing path), as the daemon's `list` reports them: same inode for
    /// files, same device number for block devices. Backings that no longer resolve are
    /// skipped.
    pub fn check_not_backing<'a>(
        &self,
        volumes: impl IntoIterator<Item = (&'a str, &'a Path)>,
    ) -> Result<(), WriteCheckError> {
        let me = self
            .file
            .metadata()
            .map_err(|source| WriteCheckError::Size {
                path: self.path.display().to_string(),
                source,
            })?;
        for (name, backing) in volumes {
            let Ok(b) = std::fs::metadata(backing) else {
                continue;
            };
            let same = if self.block {
                b.file_type().is_block_device() && b.rdev() == me.rdev()
            } else {
                b.dev() == me.dev() && b.ino() == me.ino()
            };
            if same {
                return Err(WriteCheckError::VmvaultBacking {
                    path: self.path.display().to_string(),
                    volume: name.to_string(),
                });
            }
        }
        Ok(())
    }
}

/// LUKS2's encryption sector size when `--sector-size` is not given, as cryptsetup
/// 2.6's `device_optimal_encryption_sector_size` and `_crypt_format_luks2` choose it:
/// the device's logical block size, or its physical one when larger (at most 4096);
/// for an image file its block size (`st_blksize`, at most 4096); back to 512 when the
/// data offset or the data size is not a multiple of it. LUKS1 is always 512.
pub fn optimal_sector_size(target: &Target, data_offset: u64) -> vmvault_proto::SectorSize {
    use vmvault_proto::SectorSize;
    let (logical, physical) = if target.block {
        (
            block_ioctl_u32(&target.file, BLKSSZGET),
            block_ioctl_u32(&target.file, BLKPBSZGET),
        )
    } else {
        let b = target.file.metadata().map(|m| m.blksize()).unwrap_or(512);
        (u32::try_from(b).unwrap_or(4096).min(4096), 0)
    };
    let mut size = if logical >= 4096 {
        if logical.is_multiple_of(4096) {
            4096
        } else {
            512
        }
    } else if logical >= physical
        || physical <= 512
        || physical > 4096
        || logical == 0
        || !physical.is_multiple_of(logical)
    {
        logical
    } else {
        physical
    };
    let data = target.size.saturating_sub(data_offset);
    if size == 0
        || !data_offset.is_multiple_of(u64::from(size))
        || !data.is_multiple_of(u64::from(size))
    {
        size = 512;
    }
    SectorSize::try_from(size).unwrap_or(SectorSize::B512)
}

/// `BLKSSZGET`: logical sector size (`_IO(0x12, 104)`, an `int`).
const BLKSSZGET: libc::c_ulong = 0x1268;
/// `BLKPBSZGET`: physical sector size (`_IO(0x12, 123)`, an `unsigned int`).
const BLKPBSZGET: libc::c_ulong = 0x127b;

/// A block device size ioctl that returns a 32-bit value (0 when it fails).
fn block_ioctl_u32(file: &File, request: libc::c_ulong) -> u32 {
    use std::os::fd::AsRawFd;
    let mut v: libc::c_uint = 0;
    // SAFETY: BLKSSZGET and BLKPBSZGET write one int-sized value to the pointer, which
    // points at a live c_uint; the descriptor is open for the call.
    let r = unsafe { libc::ioctl(file.as_raw_fd(), request as _, &mut v as *mut libc::c_uint) };
    if r < 0 {
        0
    } else {
        v
    }
}

/// The data offset cryptsetup 2.6 gives a header on the device itself, in bytes, when
/// no `--offset`/`--align-payload` is given: LUKS2 16 MiB (two metadata areas plus the
/// default keyslots area; or 2 × `metadata_size` + `keyslots_size` rounded up to
/// 1 MiB when those are set); LUKS1 the header sector plus 8 keyslots of 4000 stripes
/// of the key, each 4 KiB aligned, rounded up to 1 MiB.
pub fn default_data_offset(
    luks2: bool,
    key_bytes: usize,
    metadata_size: Option<u64>,
    keyslots_size: Option<u64>,
) -> u64 {
    const MIB: u64 = 1 << 20;
    let round = |n: u64| n.div_ceil(MIB) * MIB;
    if luks2 {
        match (metadata_size, keyslots_size) {
            (None, None) => 16 * MIB,
            (m, k) => {
                let m = m.unwrap_or(16 * 1024);
                let k = k.unwrap_or(16 * MIB - 2 * m);
                round(2 * m + k)
            }
        }
    } else {
        let slot = (key_bytes as u64 * 4000).div_ceil(4096) * 4096;
        round(4096 + 8 * slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offsets_match_cryptsetup() {
        // cryptsetup 2.6: LUKS2 data offset 32768 sectors, LUKS1 4096 sectors.
        assert_eq!(default_data_offset(true, 64, None, None), 16 << 20);
        assert_eq!(default_data_offset(false, 64, None, None), 2 << 20);
        assert_eq!(default_data_offset(false, 32, None, None), 2 << 20);
        assert_eq!(
            default_data_offset(true, 64, Some(16384), Some(4 << 20)),
            5 << 20
        );
    }

    #[test]
    fn image_checks() {
        let d = tempfile::tempdir().unwrap();
        let img = d.path().join("img");
        std::fs::write(&img, vec![0u8; 4 << 20]).unwrap();
        let t = open_target(&img).unwrap();
        assert_eq!(t.size, 4 << 20);
        assert!(!t.block);
        let e = t.check_size(16 << 20, 4096).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::WrongParameters);
        assert!(e.to_string().contains("4194304 bytes"), "{e}");
        assert!(e.to_string().contains("16781312 bytes in all"), "{e}");
        t.check_size(2 << 20, 512).unwrap();
        // The same image behind another name is an open volume's backing.
        let link = d.path().join("link");
        std::os::unix::fs::symlink(&img, &link).unwrap();
        let other = d.path().join("other");
        std::fs::write(&other, b"x").unwrap();
        t.check_not_backing([("v", other.as_path())]).unwrap();
        let e = t
            .check_not_backing([("v", other.as_path()), ("root", link.as_path())])
            .unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::Busy);
        assert!(e.to_string().contains("vmvault volume root"), "{e}");
        // An image of whole 4 KiB blocks gets 4096-byte sectors (as cryptsetup 2.6).
        use vmvault_proto::SectorSize;
        assert_eq!(optimal_sector_size(&t, 2 << 20), SectorSize::B4096);
        assert_eq!(optimal_sector_size(&t, (2 << 20) + 512), SectorSize::B512);
        let odd = d.path().join("odd");
        std::fs::write(&odd, vec![0u8; (4 << 20) + 512]).unwrap();
        let o = open_target(&odd).unwrap();
        assert_eq!(optimal_sector_size(&o, 2 << 20), SectorSize::B512);
        let e = open_target(&d.path().join("missing")).unwrap_err();
        assert_eq!(e.exit_code(), ExitCode::WrongDevice);
        let e = open_target(d.path()).unwrap_err();
        assert!(matches!(e, WriteCheckError::NotBlockOrFile(_)));
    }
}
