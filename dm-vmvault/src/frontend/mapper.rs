//! `/dev/mapper/NAME` as a dm-linear device over the frontend's block device, when the
//! kernel has device-mapper (`/dev/mapper/control` exists). On kernels without it this
//! module does nothing, and the frontend device is the volume's device.

use std::path::{Path, PathBuf};

/// Errors of the device-mapper naming layer.
#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    /// A device-mapper call failed.
    #[error("device-mapper: {0}")]
    Dm(String),
    /// Creating or removing the `/dev/mapper` node failed.
    #[error("{path}: {source}")]
    Node {
        /// Node path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Whether this kernel has device-mapper: `/dev/mapper/control` exists *and* opens (a
/// stale node on a kernel without dm fails with `ENODEV`).
pub fn available() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/mapper/control")
        .is_ok()
}

/// A `/dev/mapper/NAME` linear device (present only when device-mapper exists).
pub struct MapperDevice {
    #[cfg(feature = "devicemapper")]
    dev: devicemapper::LinearDev,
    path: PathBuf,
    made_node: bool,
}

impl MapperDevice {
    /// The node path, `/dev/mapper/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Creates `/dev/mapper/NAME` mapping `len_sectors` sectors linearly onto the block
    /// device `(major, minor)`. Returns `Ok(None)` when device-mapper is absent (or the
    /// crate was built without the `devicemapper` feature).
    pub fn create(
        name: &str,
        major: u32,
        minor: u32,
        len_sectors: u64,
    ) -> Result<Option<Self>, MapperError> {
        if !available() {
            return Ok(None);
        }
        Self::create_dm(name, major, minor, len_sectors)
    }

    #[cfg(feature = "devicemapper")]
    fn create_dm(
        name: &str,
        major: u32,
        minor: u32,
        len_sectors: u64,
    ) -> Result<Option<Self>, MapperError> {
        use devicemapper::{
            Device, DmDevice, DmName, DmUuid, LinearDev, LinearDevTargetParams, LinearTargetParams,
            Sectors, TargetLine, DM,
        };
        let e = |x: devicemapper::DmError| MapperError::Dm(x.to_string());
        let dm = DM::new().map_err(e)?;
        let dm_name = DmName::new(name).map_err(e)?;
        let uuid = format!("VMVAULT-{name}");
        let dm_uuid = DmUuid::new(&uuid).map_err(e)?;
        let line = TargetLine::new(
            Sectors(0),
            Sectors(len_sectors),
            LinearDevTargetParams::Linear(LinearTargetParams::new(
                Device { major, minor },
                Sectors(0),
            )),
        );
        let dev = LinearDev::setup(&dm, dm_name, Some(dm_uuid), vec![line]).map_err(e)?;
        let path = PathBuf::from(format!("/dev/mapper/{name}"));
        // Without udev (minimal systems) nobody makes the node: make it ourselves, as
        // libdevmapper does when udev is not running.
        let mut made_node = false;
        if !path.exists() {
            let d = dev.device();
            mknod_block(&path, d.major, d.minor).map_err(|source| MapperError::Node {
                path: path.clone(),
                source,
            })?;
            made_node = true;
        }
        Ok(Some(MapperDevice {
            dev,
            path,
            made_node,
        }))
    }

    #[cfg(not(feature = "devicemapper"))]
    fn create_dm(
        _name: &str,
        _major: u32,
        _minor: u32,
        _len: u64,
    ) -> Result<Option<Self>, MapperError> {
        Ok(None)
    }

    /// Removes the device (and the node if this process made it).
    pub fn remove(self) -> Result<(), MapperError> {
        #[cfg(feature = "devicemapper")]
        {
            use devicemapper::{DmDevice, DM};
            let mut dev = self.dev;
            let dm = DM::new().map_err(|x| MapperError::Dm(x.to_string()))?;
            dev.teardown(&dm)
                .map_err(|x| MapperError::Dm(x.to_string()))?;
        }
        if self.made_node {
            let _ = std::fs::remove_file(&self.path);
        }
        Ok(())
    }
}

#[cfg(feature = "devicemapper")]
fn mknod_block(path: &Path, major: u32, minor: u32) -> std::io::Result<()> {
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
