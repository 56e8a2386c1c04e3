//! `/dev/mapper/NAME` as a dm-linear device over the frontend's block device, when the
//! kernel has device-mapper (`/dev/mapper/control` exists). On kernels without it this
//! module does nothing, and the frontend device is the volume's device.
//!
//! The device is created the way `dmsetup create`/cryptsetup do it, udev-friendly:
//! `DM_DEV_CREATE` with a uuid `VMVAULT-<type>-<uuid>-NAME` (cryptsetup's
//! `CRYPT-LUKS2-<uuid>-NAME` pattern), `DM_TABLE_LOAD`, then a resume whose uevent
//! carries a udev cookie with no `DM_UDEV_DISABLE_*` flags, so the stock dm rules run in
//! full (`/dev/mapper/NAME`, `/dev/disk/by-id/dm-name-NAME`, `dm-uuid-…`). When udev
//! runs, the resume and the remove wait on the cookie's semaphore until udev has
//! processed the event (the devicemapper crate implements libdevmapper's protocol);
//! without udev, this module makes and removes the `/dev/mapper` node itself, as
//! libdevmapper does.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Errors of the device-mapper naming layer.
#[derive(Debug, thiserror::Error)]
pub enum MapperError {
    /// A device-mapper ioctl (create, load, resume, remove, info, status) failed.
    #[cfg(feature = "devicemapper")]
    #[error("device-mapper: {0}")]
    Dm(#[source] devicemapper::DmError),
    /// Creating or removing the `/dev/mapper` node failed.
    #[error("{path}: {source}")]
    Node {
        /// Node path.
        path: PathBuf,
        /// Why `mknod` (or the removal) failed.
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

/// Whether udev is running (its control socket exists), as libdevmapper decides.
pub fn udev_running() -> bool {
    Path::new("/run/udev/control").exists()
}

/// Waits (at most `max`) until udev's event queue is empty, like `udevadm settle`:
/// systemd-udevd keeps `/run/udev/queue` while events are queued. Returns whether it
/// settled (immediately true when udev is not running).
pub fn udev_settle(max: Duration) -> bool {
    if !udev_running() {
        return true;
    }
    let t0 = Instant::now();
    while Path::new("/run/udev/queue").exists() {
        if t0.elapsed() >= max {
            return false;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    true
}

/// The prefix of every device-mapper uuid vmvault gives (see [`dm_uuid`]).
pub const UUID_PREFIX: &str = "VMVAULT-";

/// The device-mapper uuid of volume `name`: `VMVAULT-<TYPE>-<uuid without dashes>-NAME`
/// (cryptsetup's `CRYPT-<TYPE>-<uuid>-NAME`), `VMVAULT-<TYPE>-NAME` without a uuid,
/// `VMVAULT-NAME` with neither; cut at the 128 bytes device-mapper allows. The prefix is
/// what udev rules match (`ENV{DM_UUID}=="VMVAULT-*"`).
pub fn dm_uuid(name: &str, volume_type: Option<&str>, volume_uuid: Option<&str>) -> String {
    let clean = |s: &str| -> String {
        s.chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._+".contains(*c))
            .collect()
    };
    let mut u = String::from(UUID_PREFIX);
    if let Some(t) = volume_type.map(clean).filter(|t| !t.is_empty()) {
        u += &t;
        u.push('-');
    }
    if let Some(id) = volume_uuid.map(clean).filter(|t| !t.is_empty()) {
        u += &id;
        u.push('-');
    }
    u += name;
    u.truncate(128);
    u
}

/// A `/dev/mapper/NAME` linear device (present only when device-mapper exists).
#[derive(Debug)]
pub struct MapperDevice {
    #[cfg_attr(not(feature = "devicemapper"), allow(dead_code))]
    name: String,
    path: PathBuf,
    dev: (u32, u32),
    made_node: bool,
}

impl MapperDevice {
    /// The node path, `/dev/mapper/NAME`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(major, minor)` of the dm device.
    pub fn dev_numbers(&self) -> (u32, u32) {
        self.dev
    }

    /// Creates `/dev/mapper/NAME` (device-mapper uuid `uuid`, see [`dm_uuid`]) mapping
    /// `len_sectors` sectors linearly onto the block device `(major, minor)`. Returns
    /// `Ok(None)` when device-mapper is absent (or the crate was built without the
    /// `devicemapper` feature). `readonly` loads the table read-only, as cryptsetup does
    /// for `--readonly`.
    pub fn create(
        name: &str,
        uuid: &str,
        (major, minor): (u32, u32),
        len_sectors: u64,
        readonly: bool,
    ) -> Result<Option<Self>, MapperError> {
        if !available() {
            return Ok(None);
        }
        Self::create_dm(name, uuid, (major, minor), len_sectors, readonly)
    }

    #[cfg(feature = "devicemapper")]
    fn create_dm(
        name: &str,
        uuid: &str,
        (major, minor): (u32, u32),
        len_sectors: u64,
        readonly: bool,
    ) -> Result<Option<Self>, MapperError> {
        use devicemapper::{DevId, DmFlags, DmName, DmOptions, DmUuid, DM};
        let e = MapperError::Dm;
        let dm = DM::new().map_err(e)?;
        let dm_name = DmName::new(name).map_err(e)?;
        let dm_uuid = DmUuid::new(uuid).map_err(e)?;
        let id = DevId::Name(dm_name);
        // Default options: no DM_UDEV_DISABLE_* flags, so udev's dm rules run in full.
        let info = dm
            .device_create(dm_name, Some(dm_uuid), DmOptions::default())
            .map_err(e)?;
        let table = vec![(
            0u64,
            len_sectors,
            "linear".to_string(),
            format!("{major}:{minor} 0"),
        )];
        let load_opts = if readonly {
            DmOptions::default().set_flags(DmFlags::DM_READONLY)
        } else {
            DmOptions::default()
        };
        let loaded = dm
            .table_load(&id, &table, load_opts)
            // Resume: activates the table; the uevent carries the udev cookie, and the
            // call returns once udev has run the rules for it (when udev runs).
            .and_then(|_| dm.device_suspend(&id, DmOptions::default()));
        if let Err(err) = loaded {
            let _ = dm.device_remove(&id, DmOptions::default());
            return Err(e(err));
        }
        let d = info.device();
        let mut dev = MapperDevice {
            name: name.to_string(),
            path: PathBuf::from(format!("/dev/mapper/{name}")),
            dev: (d.major, d.minor),
            made_node: false,
        };
        // Without udev (minimal systems) nobody makes the node: make it ourselves, as
        // libdevmapper does when udev is not running. With udev, its rules made it while
        // we waited on the cookie; give a late or cookie-less udev a moment first.
        if udev_running() {
            let t0 = Instant::now();
            while !dev.path.exists() && t0.elapsed() < Duration::from_secs(5) {
                std::thread::sleep(Duration::from_millis(10));
            }
        }
        if !dev.path.exists() {
            if let Err(source) = super::mknod_block(&dev.path, d.major, d.minor) {
                let path = dev.path.clone();
                let _ = dev.remove();
                return Err(MapperError::Node { path, source });
            }
            dev.made_node = true;
        }
        Ok(Some(dev))
    }

    #[cfg(not(feature = "devicemapper"))]
    fn create_dm(
        _name: &str,
        _uuid: &str,
        _dev: (u32, u32),
        _len: u64,
        _readonly: bool,
    ) -> Result<Option<Self>, MapperError> {
        Ok(None)
    }

    /// Removes the device (and the node if this process made it). Like `dmsetup
    /// remove`, waits for udev to finish with the device first (its rules open it to
    /// probe after every close of a writer), retries while it is busy, and waits on the
    /// remove's udev cookie so the links are gone when this returns.
    /// On failure the device is still there: the caller keeps it and may try again.
    pub fn remove(&self) -> Result<(), MapperError> {
        #[cfg(feature = "devicemapper")]
        {
            use devicemapper::{DevId, DmName, DmOptions, DM};
            let e = MapperError::Dm;
            let dm = DM::new().map_err(e)?;
            let id = DevId::Name(DmName::new(&self.name).map_err(e)?);
            let mut tries = 0;
            loop {
                udev_settle(Duration::from_secs(10));
                // device_remove itself retries EBUSY 5 times, 200 ms apart.
                match dm.device_remove(&id, DmOptions::default()) {
                    Ok(_) => break,
                    Err(err) => {
                        let gone = dm.device_info(&id).is_err();
                        if gone {
                            break;
                        }
                        tries += 1;
                        if tries >= 3 {
                            return Err(e(err));
                        }
                    }
                }
            }
        }
        if self.made_node {
            let _ = std::fs::remove_file(&self.path);
        }
        Ok(())
    }
}

/// What device-mapper says about an existing device (see [`query`]).
#[derive(Clone, Debug, Default)]
pub struct DmDeviceState {
    /// Its uuid, if it has one.
    pub uuid: Option<String>,
    /// How many openers hold it.
    pub open_count: i32,
    /// The live table: `(start, length, target type, parameters)` per target.
    pub table: Vec<(u64, u64, String, String)>,
}

/// The state of the device-mapper device `name`; `Ok(None)` when there is none (or
/// device-mapper is absent).
pub fn query(name: &str) -> Result<Option<DmDeviceState>, MapperError> {
    if !available() {
        return Ok(None);
    }
    query_dm(name)
}

#[cfg(feature = "devicemapper")]
fn query_dm(name: &str) -> Result<Option<DmDeviceState>, MapperError> {
    use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
    let e = MapperError::Dm;
    let dm = DM::new().map_err(e)?;
    let id = DevId::Name(DmName::new(name).map_err(e)?);
    let Ok(info) = dm.device_info(&id) else {
        return Ok(None);
    };
    let (_, table) = dm
        .table_status(
            &id,
            DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
        )
        .map_err(e)?;
    Ok(Some(DmDeviceState {
        uuid: info.uuid().map(|u| u.to_string()),
        open_count: info.open_count(),
        table,
    }))
}

#[cfg(not(feature = "devicemapper"))]
fn query_dm(_name: &str) -> Result<Option<DmDeviceState>, MapperError> {
    Ok(None)
}

/// How [`remove_stale`] got rid of a device.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StaleRemoval {
    /// Removed now.
    Removed,
    /// Still held open (e.g. a filesystem mounted on it): its table now fails every
    /// I/O (`error` target) and the kernel removes it when the last opener closes it
    /// (deferred remove).
    Deferred,
}

/// Removes the device-mapper device `name` left by a vmvaultd that died (the caller
/// decides it is stale). When it is still held open, its table is replaced by an
/// `error` target of the same length (so its holders fail fast instead of waiting on a
/// dead frontend) and it is marked for deferred removal. Without udev, removes the
/// `/dev/mapper/NAME` node as well.
pub fn remove_stale(name: &str) -> Result<StaleRemoval, MapperError> {
    let r = remove_stale_dm(name)?;
    let node = Path::new("/dev/mapper").join(name);
    if r == StaleRemoval::Removed && !udev_running() && node.exists() {
        let _ = std::fs::remove_file(&node);
    }
    Ok(r)
}

#[cfg(feature = "devicemapper")]
fn remove_stale_dm(name: &str) -> Result<StaleRemoval, MapperError> {
    use devicemapper::{DevId, DmFlags, DmName, DmOptions, DM};
    let e = MapperError::Dm;
    let dm = DM::new().map_err(e)?;
    let id = DevId::Name(DmName::new(name).map_err(e)?);
    udev_settle(Duration::from_secs(10));
    // device_remove retries EBUSY 5 times, 200 ms apart.
    let first = match dm.device_remove(&id, DmOptions::default()) {
        Ok(_) => return Ok(StaleRemoval::Removed),
        Err(err) if dm.device_info(&id).is_err() => {
            let _ = err;
            return Ok(StaleRemoval::Removed);
        }
        Err(err) => err,
    };
    // Held open: fail its I/O from now on, and let the last close remove it.
    let len: u64 = dm
        .table_status(
            &id,
            DmOptions::default().set_flags(DmFlags::DM_STATUS_TABLE),
        )
        .map(|(_, t)| t.iter().map(|t| t.1).sum())
        .unwrap_or(0);
    if len > 0 {
        let table = vec![(0u64, len, "error".to_string(), String::new())];
        let quiet = DmOptions::default().set_flags(DmFlags::DM_NOFLUSH | DmFlags::DM_SKIP_LOCKFS);
        let _ = dm
            .table_load(&id, &table, DmOptions::default())
            .and_then(|_| dm.device_suspend(&id, quiet));
    }
    match dm.device_remove(
        &id,
        DmOptions::default().set_flags(DmFlags::DM_DEFERRED_REMOVE),
    ) {
        Ok(_) if dm.device_info(&id).is_err() => Ok(StaleRemoval::Removed),
        Ok(_) => Ok(StaleRemoval::Deferred),
        Err(_) => Err(e(first)),
    }
}

#[cfg(not(feature = "devicemapper"))]
fn remove_stale_dm(_name: &str) -> Result<StaleRemoval, MapperError> {
    Ok(StaleRemoval::Removed)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dm_uuid_like_cryptsetup() {
        assert_eq!(
            dm_uuid(
                "vol",
                Some("LUKS2"),
                Some("2f6a2e6d-1b2c-4d5e-8f90-0123456789ab")
            ),
            "VMVAULT-LUKS2-2f6a2e6d1b2c4d5e8f900123456789ab-vol"
        );
        assert_eq!(dm_uuid("vol", Some("LUKS1"), None), "VMVAULT-LUKS1-vol");
        assert_eq!(dm_uuid("vol", None, None), "VMVAULT-vol");
        let long = "n".repeat(127);
        assert_eq!(dm_uuid(&long, Some("LUKS2"), Some("abc")).len(), 128);
    }
}
