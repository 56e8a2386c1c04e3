//! The FUSE + loop frontend: the plaintext as a file in a FUSE mount, attached to a
//! loop device.

use std::path::Path;

use super::fuse::FuseExport;
use super::loopdev::LoopDevice;
use super::{BlockFrontend, CloseFailed, FrontendError, FrontendKind, StartParams};

/// A volume's FUSE export and the loop device over its file.
#[derive(Debug)]
pub struct FuseLoop {
    fuse: FuseExport,
    lo: LoopDevice,
    dev: (u32, u32),
}

impl FuseLoop {
    /// Mounts the export at `<mnt_root>/<name>` and attaches its file to a loop device.
    /// The loop driver cannot pass discards on: asking for them adds a warning.
    pub fn start(p: StartParams<'_>, warnings: &mut Vec<String>) -> Result<Self, FrontendError> {
        if p.discards {
            warnings.push(
                "the fuse+loop frontend does not pass discards to the backing device \
                 (the loop driver cannot tell them from write-zeroes); use the ublk \
                 frontend for discards"
                    .into(),
            );
        }
        let mountpoint = p.mnt_root.join(p.name);
        let fuse = FuseExport::mount(
            p.engine,
            &mountpoint,
            "volume",
            &format!("vmvault:{}", p.name),
            p.fuse_threads,
        )?;
        let lo = LoopDevice::attach(fuse.file(), p.readonly, p.sector_size.bytes())?;
        let dev = lo
            .dev_numbers()
            .map_err(|source| FrontendError::DevNumbers {
                path: lo.path().to_path_buf(),
                source,
            })?;
        Ok(FuseLoop { fuse, lo, dev })
    }
}

impl BlockFrontend for FuseLoop {
    fn kind(&self) -> FrontendKind {
        FrontendKind::FuseLoop
    }

    fn device(&self) -> &Path {
        self.lo.path()
    }

    fn dev_numbers(&self) -> (u32, u32) {
        self.dev
    }

    fn direct_io(&self) -> bool {
        self.lo.direct_io()
    }

    /// Detaches the loop device (kept, with the export, if that fails), then unmounts
    /// the export.
    fn close(self: Box<Self>) -> Result<(), CloseFailed> {
        let FuseLoop { fuse, lo, dev } = *self;
        if let Err((lo, e)) = lo.detach() {
            return Err(CloseFailed {
                kept: Some(Box::new(FuseLoop { fuse, lo, dev })),
                error: e.into(),
            });
        }
        fuse.unmount().map_err(|e| CloseFailed {
            kept: None,
            error: e.into(),
        })
    }
}
