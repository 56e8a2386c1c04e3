//! The `fuse` frontend: the plaintext as one file in a per-volume FUSE mount.
//!
//! The mount holds a single regular file (inode 2) whose size is the device size. Files
//! are opened with `FOPEN_DIRECT_IO`, so the kernel keeps no page cache of plaintext in
//! FUSE (the block layer above the loop device caches instead). Several threads serve
//! requests, each with its own `/dev/fuse` clone, and the kernel may send async direct
//! I/O in parallel.

use std::ffi::OsStr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use fuser::{
    BackgroundSession, Config, Errno, FileAttr, FileHandle, FileType, Filesystem, FopenFlags,
    Generation, INodeNo, InitFlags, KernelConfig, LockOwner, MountOption, OpenAccMode, OpenFlags,
    ReplyAttr, ReplyData, ReplyDirectory, ReplyEmpty, ReplyEntry, ReplyOpen, ReplyWrite, Request,
    SessionACL, WriteFlags,
};

use crate::io::{IoEngine, MAX_IO};

/// Inode number of the volume file.
const FILE_INO: INodeNo = INodeNo(2);
const TTL: Duration = Duration::from_secs(1);

/// Errors of the FUSE frontend.
#[derive(Debug, thiserror::Error)]
pub enum FuseError {
    /// Creating the mountpoint or mounting failed.
    #[error("mount {path}: {source}")]
    Mount {
        /// Where the export is (or was to be) mounted.
        path: PathBuf,
        /// Why creating the mountpoint or the FUSE mount failed.
        source: std::io::Error,
    },
    /// Unmounting failed.
    #[error("unmount {path}: {source}")]
    Unmount {
        /// Where the export is (or was to be) mounted.
        path: PathBuf,
        /// Why the (lazy) unmount failed while the export stayed mounted.
        source: std::io::Error,
    },
}

/// The FUSE filesystem of one volume.
struct VolumeFs {
    engine: Arc<IoEngine>,
    file_name: String,
    uid: u32,
    gid: u32,
    born: SystemTime,
}

impl VolumeFs {
    fn file_attr(&self) -> FileAttr {
        FileAttr {
            ino: FILE_INO,
            size: self.engine.size(),
            blocks: self.engine.size() / 512,
            atime: self.born,
            mtime: self.born,
            ctime: self.born,
            crtime: self.born,
            kind: FileType::RegularFile,
            perm: if self.engine.readonly() { 0o400 } else { 0o600 },
            nlink: 1,
            uid: self.uid,
            gid: self.gid,
            rdev: 0,
            blksize: self.engine.sector_size().max(4096),
            flags: 0,
        }
    }

    fn root_attr(&self) -> FileAttr {
        FileAttr {
            ino: INodeNo::ROOT,
            size: 0,
            blocks: 0,
            kind: FileType::Directory,
            perm: 0o500,
            nlink: 2,
            ..self.file_attr()
        }
    }
}

fn errno(e: &crate::io::IoError) -> Errno {
    Errno::from_i32(e.errno())
}

impl Filesystem for VolumeFs {
    fn init(&mut self, _req: &Request, config: &mut KernelConfig) -> std::io::Result<()> {
        let _ = config.set_max_write(MAX_IO as u32);
        let _ = config.set_max_readahead(MAX_IO as u32);
        let _ = config.set_max_background(64);
        let _ = config.add_capabilities(InitFlags::FUSE_ASYNC_DIO);
        Ok(())
    }

    fn lookup(&self, _req: &Request, parent: INodeNo, name: &OsStr, reply: ReplyEntry) {
        if parent == INodeNo::ROOT && name == OsStr::new(&self.file_name) {
            reply.entry(&TTL, &self.file_attr(), Generation(0));
        } else {
            reply.error(Errno::ENOENT);
        }
    }

    fn getattr(&self, _req: &Request, ino: INodeNo, _fh: Option<FileHandle>, reply: ReplyAttr) {
        match ino {
            INodeNo::ROOT => reply.attr(&TTL, &self.root_attr()),
            FILE_INO => reply.attr(&TTL, &self.file_attr()),
            _ => reply.error(Errno::ENOENT),
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn setattr(
        &self,
        _req: &Request,
        ino: INodeNo,
        _mode: Option<u32>,
        _uid: Option<u32>,
        _gid: Option<u32>,
        size: Option<u64>,
        _atime: Option<fuser::TimeOrNow>,
        _mtime: Option<fuser::TimeOrNow>,
        _ctime: Option<SystemTime>,
        _fh: Option<FileHandle>,
        _crtime: Option<SystemTime>,
        _chgtime: Option<SystemTime>,
        _bkuptime: Option<SystemTime>,
        _flags: Option<fuser::BsdFileFlags>,
        reply: ReplyAttr,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EPERM);
        }
        // The device has a fixed size; other attribute changes are ignored.
        match size {
            Some(s) if s != self.engine.size() => reply.error(Errno::EPERM),
            _ => reply.attr(&TTL, &self.file_attr()),
        }
    }

    fn open(&self, _req: &Request, ino: INodeNo, flags: OpenFlags, reply: ReplyOpen) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        if self.engine.readonly() && flags.acc_mode() != OpenAccMode::O_RDONLY {
            return reply.error(Errno::EROFS);
        }
        reply.opened(FileHandle(0), FopenFlags::FOPEN_DIRECT_IO);
    }

    fn read(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        size: u32,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyData,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        let mut reply = Some(reply);
        let r = self.engine.read_with(offset, size as usize, |s| {
            if let Some(r) = reply.take() {
                r.data(s);
            }
        });
        if let (Err(e), Some(r)) = (r, reply.take()) {
            r.error(errno(&e));
        }
    }

    fn write(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        data: &[u8],
        _write_flags: WriteFlags,
        _flags: OpenFlags,
        _lock_owner: Option<LockOwner>,
        reply: ReplyWrite,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        match self.engine.write(offset, data) {
            Ok(n) => reply.written(n as u32),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn flush(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _lo: LockOwner,
        reply: ReplyEmpty,
    ) {
        reply.ok();
    }

    fn fsync(
        &self,
        _req: &Request,
        _ino: INodeNo,
        _fh: FileHandle,
        _datasync: bool,
        reply: ReplyEmpty,
    ) {
        match self.engine.flush() {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn fallocate(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        length: u64,
        mode: i32,
        reply: ReplyEmpty,
    ) {
        if ino != FILE_INO {
            return reply.error(Errno::EISDIR);
        }
        // The loop driver turns both a discard and a write-zeroes without NOUNMAP into
        // PUNCH_HOLE, and after PUNCH_HOLE reads must return zeros. Passing it on as a
        // discard of the backing file would make later reads decrypt to garbage where the
        // kernel expects zeros, so it is refused: the kernel then falls back to writing
        // zero pages, and discards are simply not passed through by this frontend.
        let r = if mode & libc::FALLOC_FL_PUNCH_HOLE != 0 {
            Err(crate::io::IoError::Unsupported)
        } else if mode & libc::FALLOC_FL_ZERO_RANGE != 0 {
            self.engine.write_zeroes(offset, length).map(|_| ())
        } else if offset.saturating_add(length) <= self.engine.size() {
            Ok(()) // plain allocation inside a fixed-size device: nothing to do
        } else {
            Err(crate::io::IoError::NoSpace)
        };
        match r {
            Ok(()) => reply.ok(),
            Err(e) => reply.error(errno(&e)),
        }
    }

    fn readdir(
        &self,
        _req: &Request,
        ino: INodeNo,
        _fh: FileHandle,
        offset: u64,
        mut reply: ReplyDirectory,
    ) {
        if ino != INodeNo::ROOT {
            return reply.error(Errno::ENOTDIR);
        }
        let entries = [
            (INodeNo::ROOT, FileType::Directory, "."),
            (INodeNo::ROOT, FileType::Directory, ".."),
            (FILE_INO, FileType::RegularFile, self.file_name.as_str()),
        ];
        for (i, (ino, kind, name)) in entries.iter().enumerate().skip(offset as usize) {
            if reply.add(*ino, (i + 1) as u64, *kind, name) {
                break;
            }
        }
        reply.ok();
    }
}

/// A mounted FUSE export of one volume.
pub struct FuseExport {
    session: Option<BackgroundSession>,
    mountpoint: PathBuf,
    file: PathBuf,
}

impl std::fmt::Debug for FuseExport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FuseExport")
            .field("mounted", &self.session.is_some())
            .field("mountpoint", &self.mountpoint)
            .field("file", &self.file)
            .finish()
    }
}

impl FuseExport {
    /// Mounts the export at `mountpoint` (created if missing) with `threads` serving
    /// threads. The volume file is `mountpoint/file_name`.
    pub fn mount(
        engine: Arc<IoEngine>,
        mountpoint: &Path,
        file_name: &str,
        fs_name: &str,
        threads: usize,
    ) -> Result<Self, FuseError> {
        let merr = |source| FuseError::Mount {
            path: mountpoint.to_path_buf(),
            source,
        };
        std::fs::create_dir_all(mountpoint).map_err(merr)?;
        let readonly = engine.readonly();
        let fs = VolumeFs {
            engine,
            file_name: file_name.to_string(),
            // SAFETY: getuid/getgid cannot fail and touch no memory.
            uid: unsafe { libc::getuid() },
            // SAFETY: as above.
            gid: unsafe { libc::getgid() },
            born: SystemTime::now(),
        };
        let mut opts = vec![
            MountOption::FSName(fs_name.to_string()),
            MountOption::Subtype("vmvault".into()),
            MountOption::NoDev,
            MountOption::NoSuid,
            MountOption::NoExec,
            MountOption::NoAtime,
            MountOption::DefaultPermissions,
        ];
        opts.push(if readonly {
            MountOption::RO
        } else {
            MountOption::RW
        });
        let mut cfg = Config::default();
        cfg.mount_options = opts;
        cfg.acl = SessionACL::Owner;
        cfg.n_threads = Some(threads.max(1));
        cfg.clone_fd = true;
        let session = fuser::spawn_mount(fs, mountpoint, &cfg).map_err(merr)?;
        Ok(FuseExport {
            session: Some(session),
            mountpoint: mountpoint.to_path_buf(),
            file: mountpoint.join(file_name),
        })
    }

    /// Path of the plaintext file.
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The mountpoint.
    pub fn mountpoint(&self) -> &Path {
        &self.mountpoint
    }

    /// Unmounts and waits for the serving threads. Falls back to a lazy unmount if the
    /// mount is still busy.
    ///
    /// Success means the mount is gone: how the serving threads ended does not matter
    /// (when the unmount itself ends the session, fuser may report a serving thread's
    /// `ECONNABORTED` as the session's error; that is the normal end, not a failure).
    pub fn unmount(mut self) -> Result<(), FuseError> {
        self.unmount_inner()
    }

    fn unmount_inner(&mut self) -> Result<(), FuseError> {
        let Some(s) = self.session.take() else {
            return Ok(());
        };
        if s.umount_and_join().is_err() && is_mounted(&self.mountpoint) {
            // Still mounted (busy): detach lazily so the session ends.
            if let Err(lazy) = lazy_unmount(&self.mountpoint) {
                if is_mounted(&self.mountpoint) {
                    return Err(FuseError::Unmount {
                        path: self.mountpoint.clone(),
                        source: lazy,
                    });
                }
            }
        }
        let _ = std::fs::remove_dir(&self.mountpoint);
        Ok(())
    }
}

/// Whether something is mounted on `path`: its device differs from its parent's, or it
/// is a FUSE mount whose server is gone (`ENOTCONN`).
pub fn is_mounted(path: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Some(parent) = path.parent() else {
        return true; // `/` is always a mount
    };
    match (std::fs::symlink_metadata(path), std::fs::metadata(parent)) {
        (Ok(m), Ok(p)) => m.dev() != p.dev(),
        (Err(e), _) => e.raw_os_error() == Some(libc::ENOTCONN),
        (Ok(_), Err(_)) => false,
    }
}

impl Drop for FuseExport {
    fn drop(&mut self) {
        let _ = self.unmount_inner();
    }
}

/// `umount2(path, MNT_DETACH)`.
pub fn lazy_unmount(path: &Path) -> std::io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let c = std::ffi::CString::new(path.as_os_str().as_bytes())?;
    // SAFETY: c is a valid NUL-terminated path for the duration of the call.
    let r = unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
    if r < 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}
