//! Frontends: how the kernel sees a mapping as a block device.
//!
//! `fuse` (the plaintext as a file in a FUSE mount) + `loopdev` (that file as a loop
//! device) work on any kernel with FUSE and loop; `mapper` adds `/dev/mapper/NAME` when
//! device-mapper exists.

pub mod fuse;
pub mod loopdev;
pub mod mapper;
