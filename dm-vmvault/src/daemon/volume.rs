//! One open volume: key → crypt backend → I/O engine → frontend (FUSE file → loop, or
//! ublk) → /dev/mapper.

use std::fs::File;
use std::os::unix::fs::{FileTypeExt, MetadataExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use vault_vm::engine::{EngineError, Geometry};
use vmvault_proto::keyring::KeyError;
use vmvault_proto::protocol::{BackendChoice, FrontendKind, OpenRequest, VolumeStatus};
use vmvault_proto::{ExitCode, Sectors};

use crate::backend::{self, BackendError, KeySource};
use crate::frontend::mapper::{MapperDevice, MapperError};
use crate::frontend::{self, BlockFrontend, CloseFailed, FrontendError, StartParams};
use crate::io::{IoConfig, IoEngine, IoError};
use crate::table::{KeyRef, Table, TargetOptions};

/// Errors opening or closing a volume; each maps to a cryptsetup exit code.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// A volume of that name is open (or opening, or closing) already, here or in
    /// `/dev/mapper`.
    #[error("Device {0} already exists.")]
    Exists(String),
    /// No volume of that name is open.
    #[error("Device {0} is not active.")]
    NotActive(String),
    /// The volume is in use (mounted, held open, or under another device), so it was
    /// not closed.
    #[error("Device {0} is still in use.")]
    Busy(String),
    /// The request's parameters are invalid (name, cipher, key size, alignment, range).
    #[error("{0}")]
    BadArgs(String),
    /// The sector geometry (sector size, IV offset) is invalid.
    #[error(transparent)]
    Geometry(EngineError),
    /// The backing device is unusable: missing, of the wrong type, too small, or one
    /// of this daemon's own devices.
    #[error("{0}")]
    Device(String),
    /// The backing device could not be opened.
    #[error("Device {} does not exist or access denied: {source}", path.display())]
    OpenBacking {
        /// The backing device as the request names it.
        path: PathBuf,
        /// Why open(2) failed.
        #[source]
        source: std::io::Error,
    },
    /// The backing device could not be examined.
    #[error("Cannot stat device {}: {source}", path.display())]
    StatBacking {
        /// The backing device as the request names it.
        path: PathBuf,
        /// Why fstat(2) failed.
        #[source]
        source: std::io::Error,
    },
    /// The size of the backing device could not be read.
    #[error(transparent)]
    BackingSize(std::io::Error),
    /// The volume key could not be read from the keyring or imported.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The crypt backend (vault or in-process engine) refused the volume.
    #[error(transparent)]
    Backend(BackendError),
    /// The I/O engine could not be set up on the backing device.
    #[error(transparent)]
    Io(#[from] IoError),
    /// The frontend (FUSE + loop, or ublk) failed to start or stop, or is not available.
    #[error(transparent)]
    Frontend(#[from] FrontendError),
    /// `/dev/mapper/NAME` could not be created or removed.
    #[error(transparent)]
    Mapper(#[from] MapperError),
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
            VolumeError::NotActive(_)
            | VolumeError::Device(_)
            | VolumeError::OpenBacking { .. }
            | VolumeError::StatBacking { .. }
            | VolumeError::BackingSize(_) => ExitCode::WrongDevice,
            VolumeError::BadArgs(_) | VolumeError::Geometry(_) => ExitCode::WrongParameters,
            VolumeError::Key(KeyError::Memory(_)) => ExitCode::OutOfMemory,
            VolumeError::Key(_) | VolumeError::Backend(BackendError::NoKey) => {
                ExitCode::NoPermission
            }
            VolumeError::Backend(BackendError::InProcessUnlock) => ExitCode::WrongParameters,
            // A keyslot's KDF cost above what the vault or this host accepts: as
            // cryptsetup's memory limit, 3.
            VolumeError::Backend(BackendError::Vault(vmvault_hv::HvError::ScratchTooLarge {
                ..
            })) => ExitCode::OutOfMemory,
            VolumeError::Backend(BackendError::Vault(vmvault_hv::HvError::Refused {
                status,
                ..
            })) if *status == vault_vm::abi::keyslot::status::KDF_LIMIT => ExitCode::OutOfMemory,
            VolumeError::Backend(BackendError::Vault(
                vmvault_hv::HvError::BadKeyslot(_) | vmvault_hv::HvError::Unsupported(_),
            )) => ExitCode::WrongParameters,
            VolumeError::Backend(BackendError::Vault(vmvault_hv::HvError::Refused {
                status,
                ..
            })) if *status == vault_vm::abi::keyslot::status::BAD_PARAMS => {
                ExitCode::WrongParameters
            }
            VolumeError::Backend(_) | VolumeError::Io(_) => ExitCode::WrongDevice,
            VolumeError::Frontend(e) if e.is_busy() => ExitCode::Busy,
            VolumeError::Frontend(_) | VolumeError::Mapper(_) => ExitCode::WrongDevice,
        }
    }
}

/// An open volume: its status, its engine, and the block devices serving it (a
/// frontend, and `/dev/mapper/NAME` over it when device-mapper exists). A device is
/// `None` once torn down, while a close that failed later keeps the rest.
#[derive(Debug)]
pub struct Volume {
    facts: Facts,
    /// Held for the volume's life: the last reference drops the crypt backend and its key.
    _engine: Arc<IoEngine>,
    front: Option<Box<dyn BlockFrontend>>,
    mapper: Option<MapperDevice>,
}

/// What the daemon knows of an open volume: typed, and its own. The wire's
/// [`VolumeStatus`] is made from it on demand ([`Volume::status`]); nothing is read
/// back from a status (no device path is parsed again for its numbers).
#[derive(Debug, Clone)]
struct Facts {
    /// The request it was opened with (its key serial long invalidated).
    req: OpenRequest,
    /// Where the backing file is now (display only: I/O uses the open file).
    backing: PathBuf,
    /// The frontend's block device and its numbers, as started.
    front_path: PathBuf,
    front_dev: (u32, u32),
    frontend: FrontendKind,
    direct_io: bool,
    /// Plaintext length.
    len: Sectors,
    backend: BackendChoice,
    protection: String,
    table: Table,
    /// The LUKS keyslot the vault unlocked (keys from [`KeySource::Unlock`]).
    keyslot: Option<u32>,
}

/// What [`check_request`] derived from an open request.
struct Checked {
    spec: vault_vm::engine::CipherSpec,
    geom: Geometry,
    /// The data offset in bytes (checked against overflow).
    offset_bytes: u64,
}

/// The volume's keyed I/O engine and what its status shows of the backend.
struct Engine {
    engine: Arc<IoEngine>,
    /// The vault slot of the key (0 for the in-process engine).
    slot: u32,
    /// The LUKS keyslot the vault unlocked, if it did.
    keyslot: Option<u32>,
    backend: BackendChoice,
    protection: String,
}

/// The block devices of a freshly opened volume: a frontend and, when device-mapper
/// exists, `/dev/mapper/NAME` over it.
struct Devices {
    front: Box<dyn BlockFrontend>,
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
    let md = file.metadata().map_err(|source| VolumeError::StatBacking {
        path: req.backing.clone(),
        source,
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

/// Checks what parsing the request could not: the key size against the cipher, the
/// geometry and alignment, and that `offset` and `size` in bytes do not overflow. (The
/// name, the cipher, the key and sector sizes were checked when the request parsed.)
fn check_request(req: &OpenRequest) -> Result<Checked, VolumeError> {
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
    .map_err(VolumeError::Geometry)?;
    if !req.sector_size.divides(req.offset) {
        return Err(VolumeError::BadArgs(format!(
            "offset {} is not aligned to the {}-byte sector size",
            req.offset, req.sector_size
        )));
    }
    // Products of request fields, checked: a wrapped `offset * 512` would map the
    // wrong part of the backing device.
    let offset_bytes = req
        .offset
        .bytes()
        .map_err(|_| {
            VolumeError::BadArgs(format!("offset {} sectors is out of range", req.offset))
        })?
        .0;
    if let Some(size) = req.size {
        let end = size
            .bytes()
            .ok()
            .and_then(|s| s.0.checked_add(offset_bytes));
        if end.is_none() {
            return Err(VolumeError::BadArgs(format!(
                "size {size} sectors at offset {} is out of range",
                req.offset
            )));
        }
    }
    Ok(Checked {
        spec,
        geom,
        offset_bytes,
    })
}

/// The backing device: the descriptor the client passed (the file whose header it
/// read: no path is resolved again), else the request's path, opened once here. Every
/// later use (probe, I/O) goes through this one open file.
fn open_backing(req: &OpenRequest, backing_fd: Option<File>) -> Result<File, VolumeError> {
    match backing_fd {
        Some(f) => Ok(f),
        None => std::fs::OpenOptions::new()
            .read(true)
            .write(!req.readonly)
            .custom_flags(libc::O_CLOEXEC)
            .open(&req.backing)
            .map_err(|source| VolumeError::OpenBacking {
                path: req.backing.clone(),
                source,
            }),
    }
}

/// Size probe without a key: the backing device must extend past the data offset.
fn check_size(
    file: &File,
    backing: &Path,
    req: &OpenRequest,
    offset_bytes: u64,
) -> Result<(), VolumeError> {
    let sz = crate::io::backing_size(file).map_err(VolumeError::BackingSize)?;
    if sz <= offset_bytes {
        return Err(VolumeError::Device(format!(
            "Device {} is too small for data offset {}",
            backing.display(),
            req.offset
        )));
    }
    Ok(())
}

/// Imports the key into the requested backend (then invalidates the keyring key unless
/// asked to keep it; a failure to do so is a warning) and starts the I/O engine on the
/// backing file.
fn key_engine(
    req: &OpenRequest,
    key: &KeySource<'_>,
    checked: Checked,
    file: File,
    backing: &Path,
    vaults: &crate::vault::VaultPool,
    warnings: &mut Vec<String>,
) -> Result<Engine, VolumeError> {
    let io_cfg = IoConfig {
        backing: backing.to_path_buf(),
        offset: req.offset,
        len: req.size,
        readonly: req.readonly,
        direct: true,
        allow_discards: req.allow_discards,
    };
    let keyed = backend::key_backend(
        vaults,
        req.backend,
        checked.spec,
        checked.geom,
        key,
        req.key_size.bytes(),
    )?;
    if let KeySource::Keyring { serial } = key {
        if !req.keep_key {
            if let Err(e) = vmvault_proto::keyring::invalidate(*serial) {
                warnings.push(format!("could not invalidate keyring key {serial}: {e}"));
            }
        }
    }
    let backend = keyed.crypt.backend();
    let protection = keyed.crypt.protection();
    let engine = Arc::new(IoEngine::open_file(&io_cfg, file, keyed.crypt)?);
    Ok(Engine {
        engine,
        slot: keyed.slot,
        keyslot: keyed.keyslot,
        backend,
        protection,
    })
}

/// The dm-crypt-style table shown in the status (`len` sectors of plaintext).
fn table_of(req: &OpenRequest, backing: &Path, slot: u32, len: Sectors) -> Table {
    Table {
        start: Sectors(0),
        len,
        cipher: req.cipher.clone(),
        key: KeyRef {
            key: req.key_size,
            slot,
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
    }
}

/// Starts the requested frontend on `engine`, then `/dev/mapper/NAME` over it (when
/// device-mapper exists). If the mapper fails, the frontend is torn down again.
fn start_devices(
    req: &OpenRequest,
    engine: &Arc<IoEngine>,
    mnt_root: &Path,
    fuse_threads: usize,
    warnings: &mut Vec<String>,
) -> Result<Devices, VolumeError> {
    let kind = frontend::pick(req.frontend)?;
    let params = StartParams {
        engine: engine.clone(),
        name: &req.name,
        mnt_root,
        readonly: req.readonly,
        sector_size: req.sector_size,
        discards: req.allow_discards,
        fuse_threads,
    };
    let front = frontend::start(kind, params, warnings)?;
    let uuid = crate::frontend::mapper::dm_uuid(
        &req.name,
        req.volume_type.as_deref(),
        req.volume_uuid.as_deref(),
    );
    let len = engine.size() / 512;
    match MapperDevice::create(&req.name, &uuid, front.dev_numbers(), len, req.readonly) {
        Ok(mapper) => Ok(Devices { front, mapper }),
        Err(e) => {
            // Best effort: the open fails with the mapper's error either way.
            let _ = front.close();
            Err(e.into())
        }
    }
}

impl Volume {
    /// Opens a volume. `own_devices` lists the block devices this daemon serves, which
    /// may never be used as backing (the daemon never does I/O on its own devices).
    ///
    /// `backing_fd` is the backing device as the client opened it (passed over the
    /// control socket); without it the daemon opens `req.backing` itself, once.
    ///
    /// Steps: check the request; open and check the backing device (cheap checks
    /// first, so a bad device does not import a key); key the backend and start the
    /// engine; start the frontend and the mapper over it.
    #[expect(
        clippy::too_many_arguments,
        reason = "the request, its key source and the daemon's context, each used once"
    )]
    pub fn open(
        req: &OpenRequest,
        key: &KeySource<'_>,
        backing_fd: Option<File>,
        mnt_root: &Path,
        own_devices: &[(u32, u32)],
        fuse_threads: usize,
        vaults: &crate::vault::VaultPool,
        warnings: &mut Vec<String>,
    ) -> Result<Volume, VolumeError> {
        let checked = check_request(req)?;
        let file = open_backing(req, backing_fd)?;
        let backing = check_backing(&file, req, mnt_root, own_devices)?;
        check_size(&file, &backing, req, checked.offset_bytes)?;
        let eng = key_engine(req, key, checked, file, &backing, vaults, warnings)?;
        let len = Sectors(eng.engine.size() / 512);
        let table = table_of(req, &backing, eng.slot, len);
        let devs = start_devices(req, &eng.engine, mnt_root, fuse_threads, warnings)?;
        let facts = Facts {
            req: req.clone(),
            backing,
            front_path: devs.front.device().to_path_buf(),
            front_dev: devs.front.dev_numbers(),
            frontend: devs.front.kind(),
            direct_io: devs.front.direct_io(),
            len,
            backend: eng.backend,
            protection: eng.protection,
            table,
            keyslot: eng.keyslot,
        };
        Ok(Volume {
            facts,
            _engine: eng.engine,
            front: Some(devs.front),
            mapper: devs.mapper,
        })
    }

    /// The LUKS keyslot the vault unlocked for this volume (`None`: the key came from
    /// the keyring).
    pub fn keyslot(&self) -> Option<u32> {
        self.facts.keyslot
    }

    /// The volume's name.
    pub fn name(&self) -> &str {
        self.facts.req.name.as_str()
    }

    /// The volume's status, as the protocol carries it: the top device is
    /// `/dev/mapper/NAME` while the mapper is up, else the frontend's device.
    pub fn status(&self) -> VolumeStatus {
        let f = &self.facts;
        let r = &f.req;
        VolumeStatus {
            name: r.name.clone(),
            device: self
                .mapper
                .as_ref()
                .map(|m| m.path().to_path_buf())
                .unwrap_or_else(|| f.front_path.clone()),
            loop_device: f.front_path.clone(),
            backing: f.backing.clone(),
            cipher: r.cipher.clone(),
            key_size: r.key_size,
            sector_size: r.sector_size,
            offset: r.offset,
            iv_offset: r.iv_offset,
            iv_large_sectors: r.iv_large_sectors,
            size: f.len,
            readonly: r.readonly,
            allow_discards: r.allow_discards,
            backend: f.backend,
            protection: f.protection.clone(),
            frontend: f.frontend,
            direct_io: f.direct_io,
            table: f.table.to_string(),
            daemon_pid: std::process::id(),
            volume_type: r.volume_type.clone(),
        }
    }

    /// Block devices this volume serves.
    pub fn devices(&self) -> Vec<(u32, u32)> {
        let mut v = Vec::new();
        if self.front.is_some() {
            v.push(self.facts.front_dev);
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
        let front = self.front.as_ref().map(|_| self.facts.front_dev);
        let front_path = self.facts.front_path.display().to_string();
        let mut named = |path: &str, list: Vec<String>| {
            users.extend(list.into_iter().map(|u| format!("{path}: {u}")));
        };
        match &self.mapper {
            Some(m) => {
                let top = m.dev_numbers();
                let path = m.path().display().to_string();
                match crate::frontend::mapper::query(self.name()) {
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
                    let lp = &front_path;
                    named(lp, busy::holders(f, &[top]));
                    named(lp, busy::processes(f));
                    named(lp, busy::loops_backed_by(f));
                }
            }
            None => {
                if let Some(f) = front {
                    let lp = front_path;
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

    /// [`Volume::users`], looked at again, for up to half a second, while it finds any:
    /// a process that holds a device for a moment (udev probing it after a change,
    /// another process's loop attach that lost its race for the device) is no user to
    /// refuse a close for. A mount or an open descriptor stays, and is reported.
    pub fn lasting_users(&self) -> Vec<String> {
        let mut users = self.users();
        for _ in 0..5 {
            if users.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
            users = self.users();
        }
        users
    }

    /// Fails with `Busy` when anything uses the volume's devices (see [`Volume::users`]).
    pub fn check_unused(&self) -> Result<(), VolumeError> {
        if self.users().is_empty() {
            Ok(())
        } else {
            Err(VolumeError::Busy(self.name().to_string()))
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
                let held = crate::frontend::mapper::query(self.name())
                    .is_ok_and(|q| q.is_some_and(|q| q.open_count > 0));
                return Err(if held {
                    VolumeError::Busy(self.name().to_string())
                } else {
                    e.into()
                });
            }
            self.mapper = None;
        }
        if let Some(front) = self.front.take() {
            if let Err(CloseFailed { kept, error }) = front.close() {
                self.front = kept;
                return Err(if error.is_busy() {
                    VolumeError::Busy(self.name().to_string())
                } else {
                    error.into()
                });
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmvault_hv::HvError;

    #[test]
    fn in_vault_unlock_errors_keep_cryptsetups_exit_codes() {
        let v = |e| VolumeError::Backend(e);
        let no_key = v(BackendError::NoKey);
        assert_eq!(no_key.code(), ExitCode::NoPermission);
        assert_eq!(no_key.to_string(), "No key available with this passphrase.");
        assert_eq!(
            v(BackendError::Vault(HvError::ScratchTooLarge {
                requested: 1,
                limit: 0
            }))
            .code(),
            ExitCode::OutOfMemory
        );
        assert_eq!(
            v(BackendError::Vault(HvError::Refused {
                status: vault_vm::abi::keyslot::status::KDF_LIMIT,
                detail: 0
            }))
            .code(),
            ExitCode::OutOfMemory
        );
        assert_eq!(
            v(BackendError::Vault(HvError::Unsupported("UNLOCK_KEYSLOT"))).code(),
            ExitCode::WrongParameters
        );
        assert_eq!(
            v(BackendError::InProcessUnlock).code(),
            ExitCode::WrongParameters
        );
        assert_eq!(
            v(BackendError::Vault(HvError::ShutDown)).code(),
            ExitCode::WrongDevice
        );
    }
}
