//! One open volume: key → crypt backend → I/O engine → frontend (FUSE file → loop, or
//! ublk) → /dev/mapper.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vault_vm::engine::Geometry;
use vmvault_proto::keyring::KeyError;
use vmvault_proto::protocol::{FrontendChoice, FrontendKind, OpenRequest, VolumeStatus};
use vmvault_proto::{ExitCode, Sectors};

use crate::backend::{self, BackendError};
use crate::frontend::fuse::{FuseError, FuseExport};
use crate::frontend::loopdev::{LoopDevice, LoopError};
use crate::frontend::mapper::{MapperDevice, MapperError};
use crate::io::{IoConfig, IoEngine, IoError};
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
    pub fn code(&self) -> ExitCode {
        match self {
            VolumeError::Exists(_) | VolumeError::Busy(_) => ExitCode::Busy,
            VolumeError::NotActive(_) | VolumeError::Device(_) => ExitCode::WrongDevice,
            VolumeError::BadArgs(_) => ExitCode::WrongParameters,
            VolumeError::Key(KeyError::Memory(_)) => ExitCode::OutOfMemory,
            VolumeError::Key(_) => ExitCode::NoPermission,
            VolumeError::Backend(_) | VolumeError::Io(_) | VolumeError::Fuse(_) => {
                ExitCode::WrongDevice
            }
            VolumeError::Loop(LoopError::Busy(_)) => ExitCode::Busy,
            VolumeError::Loop(_) | VolumeError::Mapper(_) | VolumeError::NoFrontend(_) => {
                ExitCode::WrongDevice
            }
            #[cfg(feature = "ublk")]
            VolumeError::Ublk(_) => ExitCode::WrongDevice,
        }
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
    /// Held for the volume's life: the last reference drops the crypt backend and its key.
    _engine: Arc<IoEngine>,
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

/// Checks the open backing file: a regular file or a block device, opened with the
/// access the request needs, not one of this daemon's own devices or FUSE exports.
/// Returns the path to show for it (where the open file is now, else the request's).
fn check_backing(
    file: &File,
    req: &OpenRequest,
    mnt_root: &Path,
    own_devices: &[(u32, u32)],
) -> Result<PathBuf, VolumeError> {
    let md = file.metadata().map_err(|e| {
        VolumeError::Device(format!("Cannot stat device {}: {e}", req.backing.display()))
    })?;
    let ft = md.file_type();
    if !ft.is_file() && !ft.is_block_device() {
        return Err(VolumeError::Device(format!(
            "Device {} is not a regular file or a block device.",
            req.backing.display()
        )));
    }
    // SAFETY: F_GETFL on a descriptor we own; no memory is passed.
    let fl = unsafe { libc::fcntl(file.as_raw_fd(), libc::F_GETFL) };
    if fl < 0 {
        return Err(VolumeError::Device(format!(
            "Device {}: {}",
            req.backing.display(),
            std::io::Error::last_os_error()
        )));
    }
    let acc = fl & libc::O_ACCMODE;
    if acc == libc::O_WRONLY || (!req.readonly && acc != libc::O_RDWR) {
        return Err(VolumeError::BadArgs(format!(
            "the descriptor passed for {} is not open for {}",
            req.backing.display(),
            if req.readonly {
                "reading"
            } else {
                "reading and writing"
            }
        )));
    }
    // Display only: where this open file is now.
    let shown = std::fs::read_link(format!("/proc/self/fd/{}", file.as_raw_fd()))
        .ok()
        .filter(|p| p.is_absolute())
        .unwrap_or_else(|| req.backing.clone());
    if ft.is_block_device() {
        let d = (libc::major(md.rdev()), libc::minor(md.rdev()));
        if own_devices.contains(&d) {
            return Err(VolumeError::Device(format!(
                "refusing to stack on {}: it is served by this vmvaultd",
                shown.display()
            )));
        }
    } else if shown.starts_with(mnt_root) || on_own_export(&md, mnt_root) {
        return Err(VolumeError::Device(format!(
            "refusing to stack {} on vmvaultd's own FUSE export",
            shown.display()
        )));
    }
    Ok(shown)
}

/// Whether the file of `md` lies in one of the FUSE exports mounted under `mnt_root`
/// (same filesystem as an export's mount point).
fn on_own_export(md: &std::fs::Metadata, mnt_root: &Path) -> bool {
    let Ok(rd) = std::fs::read_dir(mnt_root) else {
        return false;
    };
    rd.flatten().any(|e| {
        crate::frontend::fuse::is_mounted(&e.path())
            && std::fs::metadata(e.path()).is_ok_and(|m| m.dev() == md.dev())
    })
}

impl Volume {
    /// Opens a volume. `own_devices` lists the block devices this daemon serves, which
    /// may never be used as backing (the daemon never does I/O on its own devices).
    ///
    /// `backing_fd` is the backing device as the client opened it (passed over the
    /// control socket); without it the daemon opens `req.backing` itself, once.
    pub fn open(
        req: &OpenRequest,
        backing_fd: Option<File>,
        mnt_root: &Path,
        own_devices: &[(u32, u32)],
        fuse_threads: usize,
        vaults: &crate::vault::VaultPool,
        warnings: &mut Vec<String>,
    ) -> Result<Volume, VolumeError> {
        // Name, cipher, key size and sector size were checked when the request parsed.
        let spec = req.cipher.engine();
        if !req.cipher.key_size_ok(req.key_size) {
            return Err(VolumeError::BadArgs(format!(
                "key size {} bits does not fit cipher {}",
                req.key_size.bits(),
                req.cipher
            )));
        }
        let geom = Geometry::new(
            req.sector_size.bytes(),
            req.iv_large_sectors,
            req.iv_offset.0,
        )
        .map_err(|e| VolumeError::BadArgs(e.to_string()))?;
        if !req.sector_size.divides(req.offset) {
            return Err(VolumeError::BadArgs(format!(
                "offset {} is not aligned to the {}-byte sector size",
                req.offset, req.sector_size
            )));
        }
        // Products of request fields, checked: a wrapped `offset * 512` would map the
        // wrong part of the backing device.
        let offset_bytes = req.offset.bytes().map_err(|_| {
            VolumeError::BadArgs(format!("offset {} sectors is out of range", req.offset))
        })?;
        if let Some(size) = req.size {
            let end = size
                .bytes()
                .ok()
                .and_then(|s| s.0.checked_add(offset_bytes.0));
            if end.is_none() {
                return Err(VolumeError::BadArgs(format!(
                    "size {size} sectors at offset {} is out of range",
                    req.offset
                )));
            }
        }

        // The backing device: the descriptor the client passed (the file whose
        // header it read: no path is resolved again), else the request's path, opened
        // once here. Every later use (probe, I/O) goes through this one open file.
        let file = match backing_fd {
            Some(f) => f,
            None => std::fs::OpenOptions::new()
                .read(true)
                .write(!req.readonly)
                .custom_flags(libc::O_CLOEXEC)
                .open(&req.backing)
                .map_err(|e| {
                    VolumeError::Device(format!(
                        "Device {} does not exist or access denied: {e}",
                        req.backing.display()
                    ))
                })?,
        };
        let backing = check_backing(&file, req, mnt_root, own_devices)?;
        {
            // Size probe without a key.
            let sz =
                crate::io::backing_size(&file).map_err(|e| VolumeError::Device(e.to_string()))?;
            if sz <= offset_bytes.0 {
                return Err(VolumeError::Device(format!(
                    "Device {} is too small for data offset {}",
                    backing.display(),
                    req.offset
                )));
            }
        }

        // Backing first (cheap checks) so a bad device does not import a key.
        let io_cfg = IoConfig {
            backing: backing.clone(),
            offset: req.offset,
            len: req.size,
            readonly: req.readonly,
            direct: true,
            allow_discards: req.allow_discards,
        };

        let keyed = backend::key_backend(
            vaults,
            req.backend,
            spec,
            geom,
            req.key_serial,
            req.key_size.bytes(),
        )?;
        if !req.keep_key {
            if let Err(e) = vmvault_proto::keyring::invalidate(req.key_serial) {
                warnings.push(format!(
                    "could not invalidate keyring key {}: {e}",
                    req.key_serial
                ));
            }
        }
        let backend_name = keyed.crypt.backend();
        let protection = keyed.crypt.protection();
        let engine = Arc::new(IoEngine::open_file(&io_cfg, file, keyed.crypt)?);
        let len = Sectors(engine.size() / 512);
        let table = Table {
            start: Sectors(0),
            len,
            cipher: req.cipher.clone(),
            key: KeyRef {
                key: req.key_size,
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
                    let p = u.path().to_path_buf();
                    let d = u.dev_numbers();
                    (Frontend::Ublk(u), p, d, false, FrontendKind::Ublk)
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
                    let mountpoint = mnt_root.join(req.name.as_str());
                    let fuse = FuseExport::mount(
                        engine.clone(),
                        &mountpoint,
                        "volume",
                        &format!("vmvault:{}", req.name),
                        fuse_threads,
                    )?;
                    let lo =
                        LoopDevice::attach(fuse.file(), req.readonly, req.sector_size.bytes())?;
                    let p = lo.path().to_path_buf();
                    let d = lo
                        .dev_numbers()
                        .map_err(|e| VolumeError::Device(format!("{}: {e}", p.display())))?;
                    let dio = lo.direct_io();
                    (
                        Frontend::Fuse { fuse, lo },
                        p,
                        d,
                        dio,
                        FrontendKind::FuseLoop,
                    )
                }
            };
        let uuid = crate::frontend::mapper::dm_uuid(
            &req.name,
            req.volume_type.as_deref(),
            req.volume_uuid.as_deref(),
        );
        let mapper =
            match MapperDevice::create(&req.name, &uuid, (major, minor), len.0, req.readonly) {
                Ok(m) => m,
                Err(e) => {
                    close_frontend(front);
                    return Err(e.into());
                }
            };
        let device = mapper
            .as_ref()
            .map(|m| m.path().to_path_buf())
            .unwrap_or_else(|| front_path.clone());
        let status = VolumeStatus {
            name: req.name.clone(),
            device,
            loop_device: front_path,
            backing: backing.clone(),
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
            frontend: front_name,
            direct_io,
            table: table.to_string(),
            daemon_pid: std::process::id(),
            volume_type: req.volume_type.clone(),
        };
        Ok(Volume {
            status,
            _engine: engine,
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
        if self.front.is_some() {
            if let Some(d) = block_dev_numbers(&self.status.loop_device) {
                v.push(d);
            }
        }
        if let Some(m) = &self.mapper {
            v.push(m.dev_numbers());
        }
        v
    }

    /// Who uses the volume's devices, in words (empty when nothing does). Checked on
    /// the top device (`/dev/mapper/NAME`, else the frontend's) and, under a mapper, on
    /// the frontend device too (someone may open `/dev/loopN` directly); see
    /// [`super::busy`] for what each check covers.
    pub fn users(&self) -> Vec<String> {
        use super::busy;
        if self.front.is_none() && self.mapper.is_none() {
            // Torn down but for the key (a close that failed late): no device left.
            return Vec::new();
        }
        crate::frontend::mapper::udev_settle(std::time::Duration::from_secs(10));
        let mut users = Vec::new();
        let front = block_dev_numbers(&self.status.loop_device);
        let mut named = |path: &str, list: Vec<String>| {
            users.extend(list.into_iter().map(|u| format!("{path}: {u}")));
        };
        match &self.mapper {
            Some(m) => {
                let top = m.dev_numbers();
                let path = m.path().display().to_string();
                match crate::frontend::mapper::query(&self.status.name) {
                    Ok(Some(st)) if st.open_count > 0 => {
                        named(&path, vec![format!("open count {}", st.open_count)])
                    }
                    Ok(_) => {}
                    Err(e) => named(&path, vec![format!("cannot query device-mapper: {e}")]),
                }
                if busy::claimed(m.path()) {
                    named(&path, vec!["claimed exclusively".into()]);
                }
                named(&path, busy::holders(top, &[]));
                named(&path, busy::mounts(top));
                named(&path, busy::processes(top));
                named(&path, busy::loops_backed_by(top));
                if let Some(f) = front {
                    // Claimed by our mapper (O_EXCL says nothing), held by it in sysfs.
                    let lp = &self.status.loop_device.display().to_string();
                    named(lp, busy::holders(f, &[top]));
                    named(lp, busy::processes(f));
                    named(lp, busy::loops_backed_by(f));
                }
            }
            None => {
                if let Some(f) = front {
                    let lp = self.status.loop_device.display().to_string();
                    if busy::claimed(Path::new(&lp)) {
                        named(&lp, vec!["claimed exclusively".into()]);
                    }
                    named(&lp, busy::holders(f, &[]));
                    named(&lp, busy::mounts(f));
                    named(&lp, busy::processes(f));
                    named(&lp, busy::loops_backed_by(f));
                }
            }
        }
        users
    }

    /// Fails with `Busy` when anything uses the volume's devices (see [`Volume::users`]).
    pub fn check_unused(&self) -> Result<(), VolumeError> {
        if self.users().is_empty() {
            Ok(())
        } else {
            Err(VolumeError::Busy(self.status.name.to_string()))
        }
    }

    /// Tears the volume down: mapper, then the frontend (loop and FUSE, or ublk), then
    /// the key (dropped with the engine). Resumable: a step that fails leaves the
    /// volume with what is still up (its status follows), so the caller keeps it and a
    /// later `close` goes on from there. A frontend still in use when it is detached
    /// (someone opened it after [`Volume::check_unused`]) fails with `Busy`.
    pub fn close(&mut self) -> Result<(), VolumeError> {
        if let Some(m) = &self.mapper {
            if let Err(e) = m.remove() {
                // Opened after the check: busy, as cryptsetup says when dm refuses.
                let held = crate::frontend::mapper::query(&self.status.name)
                    .is_ok_and(|q| q.is_some_and(|q| q.open_count > 0));
                return Err(if held {
                    VolumeError::Busy(self.status.name.to_string())
                } else {
                    e.into()
                });
            }
            self.mapper = None;
            self.status.device = self.status.loop_device.clone();
        }
        match self.front.take() {
            Some(Frontend::Fuse { fuse, lo }) => {
                if let Err((lo, e)) = lo.detach() {
                    self.front = Some(Frontend::Fuse { fuse, lo });
                    return Err(match e {
                        LoopError::Busy(_) => VolumeError::Busy(self.status.name.to_string()),
                        e => e.into(),
                    });
                }
                fuse.unmount()?;
            }
            #[cfg(feature = "ublk")]
            Some(Frontend::Ublk(mut u)) => {
                if let Err(e) = u.stop() {
                    self.front = Some(Frontend::Ublk(u));
                    return Err(e.into());
                }
            }
            None => {}
        }
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
        Frontend::Ublk(mut u) => {
            let _ = u.stop();
        }
    }
}
