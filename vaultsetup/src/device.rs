//! Read-only access to a block device or image file.
//!
//! [`Device`] is read-only by construction: it opens with `O_RDONLY` and has no method
//! that writes. Every read is bounds-checked against the device size.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::exit::{ExitCode, HasExitCode};

/// Errors of device access.
#[derive(Debug, thiserror::Error)]
pub enum DeviceError {
    /// The path does not exist or cannot be opened.
    #[error("Device {path} does not exist or access denied.")]
    Open {
        /// The device path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// The path is neither a regular file nor a block device.
    #[error("Device {0} is not a block device or image file.")]
    NotBlockOrFile(String),
    /// A read went past the end of the device.
    #[error("Device {path} is too small: need {need} bytes at offset {offset}, but the device has {size} bytes (truncated image?).")]
    ShortRead {
        /// The device path.
        path: String,
        /// Byte offset the read started at.
        offset: u64,
        /// Bytes the read needed from that offset.
        need: u64,
        /// Size of the device in bytes.
        size: u64,
    },
    /// An I/O error while reading.
    #[error("Cannot read device {path} at offset {offset}: {source}")]
    Read {
        /// The device path.
        path: String,
        /// Requested offset.
        offset: u64,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

impl HasExitCode for DeviceError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Open { .. } | Self::NotBlockOrFile(_) => ExitCode::WrongDevice,
            Self::ShortRead { .. } | Self::Read { .. } => ExitCode::WrongParameters,
        }
    }
}

#[derive(Debug)]
enum Backing {
    File(File),
    Memory(Vec<u8>),
}

/// A device opened read-only.
#[derive(Debug)]
pub struct Device {
    backing: Backing,
    size: u64,
    path: PathBuf,
}

impl Device {
    /// Opens `path` read-only (`O_RDONLY | O_CLOEXEC`). There is no way to open it for writing.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, DeviceError> {
        let path = path.as_ref();
        let disp = path.display().to_string();
        let file = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(path)
            .map_err(|source| DeviceError::Open {
                path: disp.clone(),
                source,
            })?;
        let meta = file.metadata().map_err(|source| DeviceError::Open {
            path: disp.clone(),
            source,
        })?;
        let ft = meta.file_type();
        let size = if ft.is_file() {
            meta.len()
        } else if ft.is_block_device() {
            block_device_size(&file).map_err(|source| DeviceError::Open {
                path: disp.clone(),
                source,
            })?
        } else {
            return Err(DeviceError::NotBlockOrFile(disp));
        };
        Ok(Self {
            backing: Backing::File(file),
            size,
            path: path.to_path_buf(),
        })
    }

    /// An in-memory device over `bytes` (for parsers, fuzzing and tests).
    pub fn from_bytes(bytes: Vec<u8>) -> Self {
        Self {
            size: bytes.len() as u64,
            backing: Backing::Memory(bytes),
            path: PathBuf::from("(memory)"),
        }
    }

    /// Device size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// The path it was opened from.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Whether `other` has the same file open (same inode; for block devices, the same
    /// device). False for in-memory devices.
    pub fn is_same_file(&self, other: &File) -> bool {
        use std::os::unix::fs::{FileTypeExt, MetadataExt};
        let Backing::File(f) = &self.backing else {
            return false;
        };
        match (f.metadata(), other.metadata()) {
            (Ok(a), Ok(b))
                if a.file_type().is_block_device() && b.file_type().is_block_device() =>
            {
                a.rdev() == b.rdev()
            }
            (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
            _ => false,
        }
    }

    /// Reads exactly `buf.len()` bytes at `offset`; fails (without reading) if that range
    /// is not inside the device.
    pub fn read_exact_at(&self, offset: u64, buf: &mut [u8]) -> Result<(), DeviceError> {
        let need = buf.len() as u64;
        match offset.checked_add(need) {
            Some(end) if end <= self.size => {}
            _ => {
                return Err(DeviceError::ShortRead {
                    path: self.path.display().to_string(),
                    offset,
                    need,
                    size: self.size,
                })
            }
        }
        let file = match &self.backing {
            Backing::Memory(m) => {
                // In range: checked above.
                buf.copy_from_slice(&m[offset as usize..offset as usize + buf.len()]);
                return Ok(());
            }
            Backing::File(f) => f,
        };
        file.read_exact_at(buf, offset).map_err(|source| {
            if source.kind() == std::io::ErrorKind::UnexpectedEof {
                DeviceError::ShortRead {
                    path: self.path.display().to_string(),
                    offset,
                    need,
                    size: self.size,
                }
            } else {
                DeviceError::Read {
                    path: self.path.display().to_string(),
                    offset,
                    source,
                }
            }
        })
    }
}

/// Size of an open block device (seek to its end).
pub(crate) fn block_device_size(file: &File) -> std::io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = file;
    let size = f.seek(SeekFrom::End(0))?;
    f.seek(SeekFrom::Start(0))?;
    Ok(size)
}
