//! Frontends: how the kernel sees a mapping as a block device.
//!
//! `fuse` (the plaintext as a file in a FUSE mount) + `loopdev` (that file as a loop
//! device) work on any kernel with FUSE and loop; `ublk` (feature `ublk`, the `libublk`
//! crate) serves a ublk block device straight from the I/O engine where `ublk_drv`
//! exists; `mapper` adds `/dev/mapper/NAME` when device-mapper exists.
//!
//! Every frontend is a [`BlockFrontend`]; [`pick`] resolves a requested frontend against
//! what this build and this kernel have, and [`start`] starts one. This module is the one
//! place that knows which frontends a build has (the `ublk` feature): the rest of the
//! crate sees only the trait. The `/dev/mapper` name is a layer over whichever frontend
//! serves the volume ([`mapper::MapperDevice`]).

pub mod fuse;
mod fuse_loop;
pub mod loopdev;
pub mod mapper;
#[cfg(feature = "ublk")]
pub mod ublk;

use std::path::Path;
use std::sync::Arc;

use crate::io::IoEngine;
use vmvault_proto::protocol::FrontendChoice;

pub use fuse_loop::FuseLoop;

/// Which kind of frontend serves a volume (the protocol's type: `status` reports it).
pub use vmvault_proto::protocol::FrontendKind;

/// Whether this build has the ublk frontend (the `ublk` feature).
pub const HAS_UBLK: bool = cfg!(feature = "ublk");

/// Errors of the frontends, starting or stopping one.
#[derive(Debug, thiserror::Error)]
pub enum FrontendError {
    /// The FUSE export failed (mount or unmount).
    #[error(transparent)]
    Fuse(#[from] fuse::FuseError),
    /// The loop device failed (attach, detach, or still in use at detach).
    #[error(transparent)]
    Loop(#[from] loopdev::LoopError),
    /// The device numbers of a freshly attached device could not be read.
    #[error("{path}: {source}")]
    DevNumbers {
        /// The block device.
        path: std::path::PathBuf,
        /// Why its `stat` failed.
        #[source]
        source: std::io::Error,
    },
    /// The ublk frontend failed (start or stop).
    #[cfg(feature = "ublk")]
    #[error(transparent)]
    Ublk(#[from] ublk::UblkError),
    /// The requested frontend is not available in this build or on this kernel.
    #[error("{0}")]
    Unavailable(&'static str),
}

impl FrontendError {
    /// Whether the error says the device is still in use (a loop device held open when
    /// it was detached).
    pub fn is_busy(&self) -> bool {
        matches!(self, FrontendError::Loop(loopdev::LoopError::Busy(_)))
    }
}

/// A frontend whose [`BlockFrontend::close`] failed: the error, and the frontend if it
/// still serves (so a later close can go on from there).
#[derive(Debug)]
pub struct CloseFailed {
    /// The frontend, when it is still up; `None` when it is gone despite the error.
    pub kept: Option<Box<dyn BlockFrontend>>,
    /// What failed.
    pub error: FrontendError,
}

/// A block device serving one volume's plaintext from its I/O engine.
pub trait BlockFrontend: Send + std::fmt::Debug {
    /// Which kind of frontend this is.
    fn kind(&self) -> FrontendKind;
    /// The block device node (`/dev/loopN`, `/dev/ublkbN`).
    fn device(&self) -> &Path;
    /// `(major, minor)` of the block device.
    fn dev_numbers(&self) -> (u32, u32);
    /// Whether the kernel path to the engine bypasses the page cache (loop with direct
    /// I/O); `false` for ublk, which has no second cache.
    fn direct_io(&self) -> bool;
    /// Tears the frontend down. On failure the frontend comes back in
    /// [`CloseFailed::kept`] if it still serves.
    fn close(self: Box<Self>) -> Result<(), CloseFailed>;
}

/// What a frontend needs to start.
#[derive(Debug)]
pub struct StartParams<'a> {
    /// The volume's I/O engine (shared with the frontend's serving threads).
    pub engine: Arc<IoEngine>,
    /// The volume's name (the FUSE mountpoint and fs name derive from it).
    pub name: &'a str,
    /// Where FUSE exports are mounted (`<run-dir>/mnt`).
    pub mnt_root: &'a Path,
    /// Read-only device.
    pub readonly: bool,
    /// Logical block size.
    pub sector_size: vmvault_proto::SectorSize,
    /// Pass discards on to the engine.
    pub discards: bool,
    /// FUSE serving threads.
    pub fuse_threads: usize,
}

/// Whether ublk can be used here: built with the feature and the kernel has `ublk_drv`.
fn ublk_usable() -> bool {
    #[cfg(feature = "ublk")]
    {
        ublk::available()
    }
    #[cfg(not(feature = "ublk"))]
    {
        false
    }
}

/// Resolves `auto`: ublk where it works (and is built), else FUSE + loop.
pub fn pick(choice: FrontendChoice) -> Result<FrontendKind, FrontendError> {
    match choice {
        FrontendChoice::Fuse => Ok(FrontendKind::FuseLoop),
        FrontendChoice::Auto if ublk_usable() => Ok(FrontendKind::Ublk),
        FrontendChoice::Auto => Ok(FrontendKind::FuseLoop),
        FrontendChoice::Ublk if ublk_usable() => Ok(FrontendKind::Ublk),
        FrontendChoice::Ublk if HAS_UBLK => Err(FrontendError::Unavailable(
            "frontend ublk: /dev/ublk-control is missing (this kernel has no ublk_drv)",
        )),
        FrontendChoice::Ublk => Err(FrontendError::Unavailable(
            "frontend ublk: vmvaultd was built without the `ublk` feature",
        )),
    }
}

/// Starts a frontend of `kind`. Notes for the user (what the frontend cannot do with
/// these parameters) go to `warnings`.
pub fn start(
    kind: FrontendKind,
    p: StartParams<'_>,
    warnings: &mut Vec<String>,
) -> Result<Box<dyn BlockFrontend>, FrontendError> {
    match kind {
        FrontendKind::FuseLoop => Ok(Box::new(FuseLoop::start(p, warnings)?)),
        FrontendKind::Ublk => start_ublk(p),
    }
}

#[cfg(feature = "ublk")]
fn start_ublk(p: StartParams<'_>) -> Result<Box<dyn BlockFrontend>, FrontendError> {
    let opts = ublk::UblkOptions {
        discards: p.discards,
        ..Default::default()
    };
    Ok(Box::new(ublk::UblkDevice::start(p.engine, opts)?))
}

#[cfg(not(feature = "ublk"))]
fn start_ublk(_p: StartParams<'_>) -> Result<Box<dyn BlockFrontend>, FrontendError> {
    Err(FrontendError::Unavailable(
        "frontend ublk: vmvaultd was built without the `ublk` feature",
    ))
}

/// Removes what a dead predecessor left of the frontends that have kernel objects of
/// their own outside the run directory (ublk devices); returns log lines.
pub fn clean_stale() -> Vec<String> {
    #[cfg(feature = "ublk")]
    {
        ublk::clean_stale()
    }
    #[cfg(not(feature = "ublk"))]
    {
        Vec::new()
    }
}

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
