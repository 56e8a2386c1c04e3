//! One open volume: key → crypt backend → I/O engine → frontend (FUSE file → loop, or
//! ublk) → /dev/mapper.

use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vault_vm::engine::{CipherSpec, Geometry};

use crate::backend::{self, BackendError};
use crate::frontend::fuse::{FuseError, FuseExport};
use crate::frontend::loopdev::{LoopDevice, LoopError};
use crate::frontend::mapper::{MapperDevice, MapperError};
use crate::io::{IoConfig, IoEngine, IoError};
use crate::keyring::KeyError;
use crate::protocol::{code, FrontendChoice, OpenRequest, VolumeStatus};
use crate::table::{KeyRef, Table, TargetOptions};

/// Errors opening or closing a volume; each maps to a cryptsetup exit code.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// The name is taken.
    #[error("Device {0} already exists.")]
    Exists(String),
    /// No such volume.
    #[error("Device {0} is not active.")]
    NotActive(String),
    /// The volume is in use (mounted or held open).
    #[error("Device {0} is still in use.")]
    Busy(String),
    /// Bad parameters.
    #[error("{0}")]
    BadArgs(String),
    /// The backing device is unusable.
    #[error("{0}")]
    Device(String),
    /// Key problems.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// Backend problems.
    #[error(transparent)]
    Backend(BackendError),
    /// I/O engine problems.
    #[error(transparent)]
    Io(#[from] IoError),
    /// FUSE problems.
    #[error(transparent)]
    Fuse(#[from] FuseError),
    /// Loop device problems.
    #[error(transparent)]
    Loop(#[from] LoopError),
    /// device-mapper problems.
    #[error(transparent)]
    Mapper(#[from] MapperError),
    /// ublk problems.
    #[cfg(feature = "ublk")]
    #[error(transparent)]
    Ublk(#[from] crate::frontend::ublk::UblkError),
    /// The requested frontend is not available here.
    #[error("{0}")]
    NoFrontend(String),
}

impl From<BackendError> for VolumeError {
    fn from(e: BackendError) -> Self {
        match e {
            BackendError::Key(k) => VolumeError::Key(k),
            other => VolumeError::Backend(other),
        }
    }
}

impl VolumeError {
    /// cryptsetup-style exit code.
    pub fn code(&self) -> i32 {
        match self {
            VolumeError::Exists(_) | VolumeError::Busy(_) => code::BUSY,
            VolumeError::NotActive(_) | VolumeError::Device(_) => code::DEVICE,
            VolumeError::BadArgs(_) => code::BAD_ARGS,
            VolumeError::Key(KeyError::Memory(_)) => code::NO_MEMORY,
            VolumeError::Key(_) => code::PERMISSION,
            VolumeError::Backend(_) | VolumeError::Io(_) | VolumeError::Fuse(_) => code::DEVICE,
            VolumeError::Loop(LoopError::Busy(_)) => code::BUSY,
            VolumeError::Loop(_) | VolumeError::Mapper(_) | VolumeError::NoFrontend(_) => {
                code::DEVICE
            }
            #[cfg(feature = "ublk")]
            VolumeError::Ublk(_) => code::DEVICE,
        }
    }
}

/// Checks a volume name: 1–127 characters of `[A-Za-z0-9._+-]`, not starting with `.`.
pub fn check_name(name: &str) -> Result<(), VolumeError> {
    let ok = !name.is_empty()
        && name.len() < 128
        && !name.starts_with('.')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if ok {
        Ok(())
    } else {
        Err(VolumeError::BadArgs(format!(
            "invalid volume name `{name}` (use 1-127 characters of A-Z a-z 0-9 . _ + -)"
        )))
    }
}

/// The frontend serving a volume's block device.
enum Frontend {
    /// FUSE file + loop device.
    Fuse { fuse: FuseExport, lo: LoopDevice },
    /// ublk device.
    #[cfg(feature = "ublk")]
    Ublk(crate::frontend::ublk::UblkDevice),
}

/// Resolves `auto`: ublk where it works (and is built), else FUSE + loop.
fn pick_frontend(choice: FrontendChoice) -> Result<FrontendChoice, VolumeError> {
    #[cfg(feature = "ublk")]
    let ublk = || crate::frontend::ublk::available();
    #[cfg(not(feature = "ublk"))]
    let ublk = || false;
    match choice {
        FrontendChoice::Fuse => Ok(FrontendChoice::Fuse),
        FrontendChoice::Auto if ublk() => Ok(FrontendChoice::Ublk),
        FrontendChoice::Auto => Ok(FrontendChoice::Fuse),
        FrontendChoice::Ublk if ublk() => Ok(FrontendChoice::Ublk),
        FrontendChoice::Ublk if cfg!(feature = "ublk") => Err(VolumeError::NoFrontend(
            "frontend ublk: /dev/ublk-control is missing (this kernel has no ublk_drv)".into(),
        )),
        FrontendChoice::Ublk => Err(VolumeError::NoFrontend(
            "frontend ublk: vmvaultd was built without the `ublk` feature".into(),
        )),
    }
}

/// An open volume.
pub struct Volume {
    status: VolumeStatus,
    engine: Arc<IoEngine>,
    front: Option<Frontend>,
    mapper: Option<MapperDevice>,
}

/// Device numbers of `path` if it is a block device.
pub fn block_dev_numbers(path: &Path) -> Option<(u32, u32)> {
    let md = std::fs::metadata(path).ok()?;
    if md.file_type().is_block_device() {
        Some((libc::major(md.rdev()), libc::minor(md.rdev())))
    } else {
        None
    }
}

impl Volume {
    /// Opens a volume. `own_devices` lists the block devices this daemon serves, which
    /// may never be used as backing (the daemon never does I/O on its own devices).
    pub fn open(
        req: &OpenRequest,
        mnt_root: &Path,
        own_devices: &[(u32, u32)],
        fuse_threads: usize,
        vaults: &crate::vault::VaultPool,
        warnings: &mut Vec<String>,
    ) -> Result<Volume, VolumeError> {
        check_name(&req.name)?;
        let spec = CipherSpec::parse(&req.cipher)
            .map_err(|e| VolumeError::BadArgs(format!("cipher `{}`: {e}", req.cipher)))?;
        if !req.key_size.is_multiple_of(8) || !spec.key_len_ok(req.key_size as usize / 8) {
            return Err(VolumeError::BadArgs(format!(
                "key size {} bits does not fit cipher {}",
                req.key_size, req.cipher
            )));
        }
        let geom = Geometry::new(req.sector_size, req.iv_large_sectors, req.iv_offset)
            .map_err(|e| VolumeError::BadArgs(e.to_string()))?;
        if !req.offset.is_multiple_of(u64::from(req.sector_size / 512)) {
            return Err(VolumeError::BadArgs(format!(
                "offset {} is not aligned to the {}-byte sector size",
                req.offset, req.sector_size
            )));
        }
        let backing = std::fs::canonicalize(&req.backing).map_err(|e| {
            VolumeError::Device(format!(
                "Device {} does not exist or access denied: {e}",
                req.backing.display()
            ))
        })?;
        if backing.starts_with(mnt_root) {
            return Err(VolumeError::Device(format!(
                "refusing to stack {} on vmvaultd's own FUSE export",
                backing.display()
            )));
        }
        if let Some(d) = block_dev_numbers(&backing) {
            if own_devices.contains(&d) {
                return Err(VolumeError::Device(format!(
                    "refusing to stack on {}: it is served by this vmvaultd",
                    backing.display()
                )));
            }
        }

        // Backing first (cheap checks) so a bad device does not import a key.
        let io_cfg = IoConfig {
            backing: backing.clone(),
            offset_sectors: req.offset,
            len_sectors: req.size,
            readonly: req.readonly,
            direct: true,
            allow_discards: req.allow_discards,
        };
        {
            // Probe open without a key: size and permissions.
            let f = std::fs::OpenOptions::new()
                .read(true)
                .write(!req.readonly)
                .open(&backing)
                .map_err(|e| {
                    VolumeError::Device(format!("Cannot open device {}: {e}", backing.display()))
                })?;
            let sz = crate::io::backing_size(&f).map_err(|e| VolumeError::Device(e.to_string()))?;
            if sz <= req.offset * 512 {
                return Err(VolumeError::Device(format!(
                    "Device {} is too small for data offset {}",
                    backing.display(),
                    req.offset
                )));
            }
        }

        let keyed = backend::key_backend(
            vaults,
            req.backend,
            spec,
            geom,
            req.key_serial,
            req.key_size as usize / 8,
        )?;
        if !req.keep_key {
            if let Err(e) = crate::keyring::invalidate(req.key_serial) {
                warnings.push(format!(
                    "could not invalidate keyring key {}: {e}",
                    req.key_serial
                ));
            }
        }
        let backend_name = keyed.crypt.backend();
        let protection = keyed.crypt.protection();
        let engine = Arc::new(IoEngine::open(&io_cfg, keyed.crypt)?);
        let len = engine.size() / 512;
        let table = Table {
            start: 0,
            len,
            cipher: req.cipher.clone(),
            key: KeyRef {
                key_bytes: req.key_size / 8,
                slot: keyed.slot,
            },
            iv_offset: req.iv_offset,
            device: backing.display().to_string(),
            offset: req.offset,
            options: TargetOptions {
                allow_discards: req.allow_discards,
                sector_size: req.sector_size,
                iv_large_sectors: req.iv_large_sectors,
                ..Default::default()
            },
        };

        let (front, front_path, (major, minor), direct_io, front_name) =
            match pick_frontend(req.frontend)? {
                #[cfg(feature = "ublk")]
                FrontendChoice::Ublk => {
                    use crate::frontend::ublk::{UblkDevice, UblkOptions};
                    let opts = UblkOptions {
                        discards: req.allow_discards,
                        ..Default::default()
                    };
                    let u = UblkDevice::start(engine.clone(), opts)?;
                    let p = u.path().display().to_string();
                    let d = u.dev_numbers();
                    (Frontend::Ublk(u), p, d, false, "ublk")
                }
                _ => {
                    if req.allow_discards {
                        warnings.push(
                            "the fuse+loop frontend does not pass discards to the backing device \
                             (the loop driver cannot tell them from write-zeroes); use the ublk \
                             frontend for discards"
                                .into(),
                        );
                    }
                    let mountpoint = mnt_root.join(&req.name);
                    let fuse = FuseExport::mount(
                        engine.clone(),
                        &mountpoint,
                        "volume",
                        &format!("vmvault:{}", req.name),
                        fuse_threads,
                    )?;
                    let lo = LoopDevice::attach(fuse.file(), req.readonly, req.sector_size)?;
                    let p = lo.path().display().to_string();
                    let d = lo
                        .dev_numbers()
                        .map_err(|e| VolumeError::Device(format!("{p}: {e}")))?;
                    let dio = lo.direct_io();
                    (Frontend::Fuse { fuse, lo }, p, d, dio, "fuse+loop")
                }
            };
        let uuid = crate::frontend::mapper::dm_uuid(
            &req.name,
            req.volume_type.as_deref(),
            req.volume_uuid.as_deref(),
        );
        let mapper = match MapperDevice::create(&req.name, &uuid, (major, minor), len, req.readonly)
        {
            Ok(m) => m,
            Err(e) => {
                close_frontend(front);
                return Err(e.into());
            }
        };
        let device = mapper
            .as_ref()
            .map(|m| m.path().display().to_string())
            .unwrap_or_else(|| front_path.clone());
        let status = VolumeStatus {
            name: req.name.clone(),
            device,
            loop_device: front_path,
            backing: backing.display().to_string(),
            cipher: req.cipher.clone(),
            key_size: req.key_size,
            sector_size: req.sector_size,
            offset: req.offset,
            iv_offset: req.iv_offset,
            iv_large_sectors: req.iv_large_sectors,
            size: len,
            readonly: req.readonly,
            allow_discards: req.allow_discards,
            backend: backend_name,
            protection,
            frontend: front_name.into(),
            direct_io,
            table: table.to_string(),
            daemon_pid: std::process::id(),
            volume_type: req.volume_type.clone(),
        };
        Ok(Volume {
            status,
            engine,
            front: Some(front),
            mapper,
        })
    }

    /// The volume's status.
    pub fn status(&self) -> &VolumeStatus {
        &self.status
    }

    /// Block devices this volume serves.
    pub fn devices(&self) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        if let Some(d) = block_dev_numbers(Path::new(&self.status.loop_device)) {
            v.push(d);
        }
        if let Some(m) = &self.mapper {
            v.push(m.dev_numbers());
        }
        v
    }

    /// Fails with `Busy` when the top device is mounted or held exclusively.
    pub fn check_unused(&self) -> Result<(), VolumeError> {
        let top = PathBuf::from(&self.status.device);
        match std::fs::OpenOptions::new()
            .read(true)
            .custom_flags_excl()
            .open(&top)
        {
            Err(e) if e.raw_os_error() == Some(libc::EBUSY) => {
                Err(VolumeError::Busy(self.status.name.clone()))
            }
            _ => Ok(()),
        }
    }

    /// Tears the volume down: mapper, then the frontend (loop and FUSE, or ublk), then
    /// the key (dropped with the engine).
    pub fn close(mut self) -> Result<(), VolumeError> {
        if let Some(m) = self.mapper.take() {
            m.remove()?;
        }
        match self.front.take() {
            Some(Frontend::Fuse { fuse, lo }) => {
                lo.detach()?;
                fuse.unmount()?;
            }
            #[cfg(feature = "ublk")]
            Some(Frontend::Ublk(u)) => u.stop()?,
            None => {}
        }
        // Last reference: drops the crypt backend and with it the key slot.
        drop(self.engine);
        Ok(())
    }
}

/// Best-effort teardown of a frontend whose volume failed to open.
fn close_frontend(front: Frontend) {
    match front {
        Frontend::Fuse { fuse, lo } => {
            let _ = lo.detach();
            let _ = fuse.unmount();
        }
        #[cfg(feature = "ublk")]
        Frontend::Ublk(u) => {
            let _ = u.stop();
        }
    }
}

trait ExclOpen {
    fn custom_flags_excl(&mut self) -> &mut Self;
}

impl ExclOpen for std::fs::OpenOptions {
    fn custom_flags_excl(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        self.custom_flags(libc::O_EXCL | libc::O_CLOEXEC)
    }
}
