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
