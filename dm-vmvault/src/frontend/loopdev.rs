//! Loop devices through the kernel's ioctls (`LOOP_CTL_GET_FREE`, `LOOP_CONFIGURE`,
//! `LOOP_CLR_FD`), without a C helper.
//!
//! Devices are configured with `LO_FLAGS_AUTOCLEAR`: the daemon keeps one descriptor open
//! while the volume is active, so a daemon that dies leaves a device that vanishes when
//! its last user closes it.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::OpenOptionsExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

const LOOP_CLR_FD: libc::c_ulong = 0x4C01;
const LOOP_CONFIGURE: libc::c_ulong = 0x4C0A;
const LOOP_CTL_GET_FREE: libc::c_ulong = 0x4C82;

const LO_FLAGS_READ_ONLY: u32 = 1;
const LO_FLAGS_AUTOCLEAR: u32 = 4;
const LO_FLAGS_DIRECT_IO: u32 = 16;

/// `struct loop_info64` from `<linux/loop.h>`.
#[repr(C)]
#[derive(Clone, Copy)]
struct LoopInfo64 {
    lo_device: u64,
    lo_inode: u64,
    lo_rdevice: u64,
    lo_offset: u64,
    lo_sizelimit: u64,
    lo_number: u32,
    lo_encrypt_type: u32,
    lo_encrypt_key_size: u32,
    lo_flags: u32,
    lo_file_name: [u8; 64],
    lo_crypt_name: [u8; 64],
    lo_encrypt_key: [u8; 32],
    lo_init: [u64; 2],
}

/// `struct loop_config` from `<linux/loop.h>`.
#[repr(C)]
struct LoopConfig {
    fd: u32,
    block_size: u32,
    info: LoopInfo64,
    reserved: [u64; 8],
}

/// Errors of loop device handling.
#[derive(Debug, thiserror::Error)]
pub enum LoopError {
    /// `/dev/loop-control` is missing or refused a free device.
    #[error("no free loop device: {0}")]
    NoFree(std::io::Error),
    /// Opening a file or device failed.
    #[error("open {path}: {source}")]
    Open {
        /// The file or device that did not open.
        path: PathBuf,
        /// The OS error of the open.
        source: std::io::Error,
    },
    /// `LOOP_CONFIGURE` failed.
    #[error("configure {path}: {source}")]
    Configure {
        /// Loop device.
        path: PathBuf,
        /// The OS error of `LOOP_CONFIGURE`.
        source: std::io::Error,
    },
    /// The device is still open elsewhere (mounted or held open).
    #[error("{0} is in use")]
    Busy(PathBuf),
    /// `LOOP_CLR_FD` failed.
    #[error("detach {path}: {source}")]
    Detach {
        /// Loop device.
        path: PathBuf,
        /// The OS error of `LOOP_CLR_FD`.
        source: std::io::Error,
    },
}

/// An attached loop device; the daemon's descriptor keeps it alive.
#[derive(Debug)]
pub struct LoopDevice {
    path: PathBuf,
    number: u32,
    dev: File,
    direct_io: bool,
}

fn ioctl_arg(fd: &File, req: libc::c_ulong, arg: libc::c_ulong) -> std::io::Result<libc::c_int> {
    // SAFETY: the loop ioctls used with this helper take an integer argument (or none).
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), req, arg) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

impl LoopDevice {
    /// Attaches `file` to a free loop device with logical block size `block_size`.
    /// Direct I/O is requested and dropped silently if the kernel refuses it.
    pub fn attach(file: &Path, readonly: bool, block_size: u32) -> Result<Self, LoopError> {
        let ctl = OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open("/dev/loop-control")
            .map_err(LoopError::NoFree)?;
        let open_backing = |direct: bool| {
            let mut flags = libc::O_CLOEXEC;
            if direct {
                flags |= libc::O_DIRECT;
            }
            OpenOptions::new()
                .read(true)
                .write(!readonly)
                .custom_flags(flags)
                .open(file)
        };
        // The backing file is opened before a loop device is picked (with O_DIRECT,
        // and without it as the fallback), so the window between taking a free device
        // and configuring it is two syscalls: while another process holds an fd of a
        // device it then fails to configure (EBUSY), that device's owner sees it as a
        // user, and its close is refused as busy.
        let mut backings = Vec::new();
        for direct in [true, false] {
            match open_backing(direct) {
                Ok(f) => backings.push((direct, f)),
                Err(_) if direct => {}
                Err(source) => {
                    return Err(LoopError::Open {
                        path: file.to_path_buf(),
                        source,
                    })
                }
            }
        }
        let mut last = None;
        for _attempt in 0..16 {
            let n = ioctl_arg(&ctl, LOOP_CTL_GET_FREE, 0).map_err(LoopError::NoFree)? as u32;
            let path = PathBuf::from(format!("/dev/loop{n}"));
            let dev = OpenOptions::new()
                .read(true)
                .write(!readonly)
                .custom_flags(libc::O_CLOEXEC)
                .open(&path)
                .map_err(|source| LoopError::Open {
                    path: path.clone(),
                    source,
                })?;
            for (direct, backing) in &backings {
                let direct = *direct;
                match configure(&dev, backing, file, readonly, block_size, direct) {
                    Ok(()) => {
                        let direct_io =
                            std::fs::read_to_string(format!("/sys/block/loop{n}/loop/dio"))
                                .map(|s| s.trim() == "1")
                                .unwrap_or(direct);
                        return Ok(LoopDevice {
                            path,
                            number: n,
                            dev,
                            direct_io,
                        });
                    }
                    // Another process took this device between GET_FREE and CONFIGURE.
                    Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                        last = Some(e);
                        break;
                    }
                    Err(e) if direct => last = Some(e),
                    Err(source) => return Err(LoopError::Configure { path, source }),
                }
            }
        }
        Err(LoopError::Configure {
            path: PathBuf::from("/dev/loop-control"),
            source: last.unwrap_or_else(|| std::io::Error::from_raw_os_error(libc::EBUSY)),
        })
    }

    /// The device path (`/dev/loopN`).
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The loop number N.
    pub fn number(&self) -> u32 {
        self.number
    }

    /// Whether the kernel accepted direct I/O on the backing file.
    pub fn direct_io(&self) -> bool {
        self.direct_io
    }

    /// `(major, minor)` of the device.
    pub fn dev_numbers(&self) -> std::io::Result<(u32, u32)> {
        use std::os::unix::fs::MetadataExt;
        let rdev = self.dev.metadata()?.rdev();
        Ok((libc::major(rdev), libc::minor(rdev)))
    }

    /// Fails with [`LoopError::Busy`] when the device is mounted or held exclusively
    /// (an `O_EXCL` probe: plain opens are not seen, [`LoopDevice::detach`] sees them).
    pub fn check_unused(&self) -> Result<(), LoopError> {
        match OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
            .open(&self.path)
        {
            Ok(_) => Ok(()),
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                Err(LoopError::Busy(self.path.clone()))
            }
            Err(source) => Err(LoopError::Open {
                path: self.path.clone(),
                source,
            }),
        }
    }

    /// Detaches the backing file and closes the daemon's descriptor, unless someone
    /// else still has the device open: then it fails with [`LoopError::Busy`] and gives
    /// the device back, still attached and serving.
    ///
    /// `LOOP_CLR_FD` is the atomic check: the kernel detaches (Linux 6.x: marks the
    /// device for rundown, done at our close; before: at once) only when the caller
    /// holds the sole open; with other openers it merely sets `LO_FLAGS_AUTOCLEAR`,
    /// which our devices carry from the start, and changes nothing. A probe open tells
    /// the two apart: a device in rundown refuses new opens (`ENXIO`), a detached one
    /// has no `backing_file`; one that opens and still has its backing file is held.
    /// Waits briefly for the kernel to release the backing file.
    pub fn detach(self) -> Result<(), (LoopDevice, LoopError)> {
        if let Err(source) = ioctl_arg(&self.dev, LOOP_CLR_FD, 0) {
            if source.raw_os_error() != Some(libc::ENXIO) {
                let path = self.path.clone();
                return Err((self, LoopError::Detach { path, source }));
            }
        }
        let n = self.number;
        let backing = format!("/sys/block/loop{n}/loop/backing_file");
        let probe = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(&self.path);
        if probe.is_ok() && Path::new(&backing).exists() {
            let path = self.path.clone();
            return Err((self, LoopError::Busy(path)));
        }
        drop(probe);
        drop(self.dev);
        for _ in 0..200 {
            if !Path::new(&backing).exists() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(5));
        }
        Ok(())
    }
}

fn configure(
    dev: &File,
    backing: &File,
    name: &Path,
    readonly: bool,
    block_size: u32,
    direct: bool,
) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let mut info = LoopInfo64 {
        lo_device: 0,
        lo_inode: 0,
        lo_rdevice: 0,
        lo_offset: 0,
        lo_sizelimit: 0,
        lo_number: 0,
        lo_encrypt_type: 0,
        lo_encrypt_key_size: 0,
        lo_flags: LO_FLAGS_AUTOCLEAR,
        lo_file_name: [0; 64],
        lo_crypt_name: [0; 64],
        lo_encrypt_key: [0; 32],
        lo_init: [0; 2],
    };
    if readonly {
        info.lo_flags |= LO_FLAGS_READ_ONLY;
    }
    if direct {
        info.lo_flags |= LO_FLAGS_DIRECT_IO;
    }
    let b = name.as_os_str().as_bytes();
    let n = b.len().min(63);
    info.lo_file_name[..n].copy_from_slice(&b[..n]);
    let cfg = LoopConfig {
        fd: backing.as_raw_fd() as u32,
        block_size,
        info,
        reserved: [0; 8],
    };
    // SAFETY: LOOP_CONFIGURE reads one `struct loop_config`, which `cfg` is (repr(C),
    // same layout as <linux/loop.h>), valid for the duration of the call.
    let r = unsafe { libc::ioctl(dev.as_raw_fd(), LOOP_CONFIGURE, &cfg as *const LoopConfig) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// Loop devices whose backing file lies under `dir`, as `(N, backing path)`.
pub fn loops_backed_under(dir: &Path) -> Vec<(u32, PathBuf)> {
    let mut out = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return out;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(n) = name
            .to_str()
            .and_then(|s| s.strip_prefix("loop"))
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(bf) = std::fs::read_to_string(e.path().join("loop/backing_file")) else {
            continue;
        };
        let bf = PathBuf::from(bf.trim_end_matches('\n').trim_end_matches(" (deleted)"));
        if bf.starts_with(dir) {
            out.push((n, bf));
        }
    }
    out
}

/// Best-effort `LOOP_CLR_FD` on `/dev/loopN` (used to clean up after a dead daemon; a
/// device still in use is left to autoclear when its last user closes it).
pub fn clear(n: u32) -> std::io::Result<()> {
    let f = OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC)
        .open(format!("/dev/loop{n}"))?;
    ioctl_arg(&f, LOOP_CLR_FD, 0).map(|_| ())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn struct_layout_matches_the_kernel() {
        assert_eq!(std::mem::size_of::<LoopInfo64>(), 232);
        assert_eq!(std::mem::size_of::<LoopConfig>(), 304);
    }
}
