//! Frontends: how the kernel sees a mapping as a block device.
//!
//! `fuse` (the plaintext as a file in a FUSE mount) + `loopdev` (that file as a loop
//! device) work on any kernel with FUSE and loop; `ublk` (feature `ublk`, the `libublk`
//! crate) serves a ublk block device straight from the I/O engine where `ublk_drv`
//! exists; `mapper` adds `/dev/mapper/NAME` when device-mapper exists.

pub mod fuse;
pub mod loopdev;
pub mod mapper;
#[cfg(feature = "ublk")]
pub mod ublk;

/// Makes a block device node (mode 0600) at `path` for `major:minor`, for when udev
/// does not create it.
#[cfg(any(feature = "devicemapper", feature = "ublk"))]
fn mknod_block(path: &std::path::Path, major: u32, minor: u32) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated path; mknod touches no other memory.
    let r = unsafe {
        libc::mknod(
            c.as_ptr(),
            libc::S_IFBLK | 0o600,
            libc::makedev(major, minor),
        )
    };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
