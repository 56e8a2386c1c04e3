//! The I/O engine: plaintext byte ranges in, sector-aligned encrypted backing I/O out.
//!
//! Requests of any alignment are widened to whole sectors; partial sectors of a write are
//! read, decrypted, patched and re-encrypted under an exclusive range lock (reads hold
//! the range shared). Buffers come from the [`Crypt`] (the vault's data window when the
//! vault is in use), so backing I/O and encryption share one buffer. Encryption is split
//! into requests of at most [`Crypt::max_request`] bytes. Every backing I/O error and
//! every short read inside the device becomes an [`IoError`] that maps to `EIO`.
//!
//! Buffers: a request holds at most one lent buffer at a time ([`IO_BUF_LEN`] bytes,
//! taken after its range lock and given back before the next chunk), and never waits
//! for anything but the vault and the backing file while it holds one. Taking a buffer
//! may wait when the vault's data window is busy with other volumes
//! ([`crate::vault`]); because no holder waits for a second buffer, that wait always
//! ends, and a full window slows requests down instead of failing them.

use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::crypt::{Crypt, CryptError, IoBuf};
use crate::locks::RangeLocks;
use vmvault_proto::Sectors;

/// Largest plaintext range one pooled buffer serves (bigger requests are split).
pub const MAX_IO: usize = 1024 * 1024;

/// Size of a pooled I/O buffer: [`MAX_IO`] widened by a partial sector at each end.
pub const IO_BUF_LEN: usize = MAX_IO + 2 * 4096;

/// Errors of the I/O engine.
#[derive(Debug, thiserror::Error)]
pub enum IoError {
    /// Opening or sizing the backing file failed.
    #[error("backing file {path}: {source}")]
    Open {
        /// Backing path.
        path: PathBuf,
        /// Why the open (or the size probe) failed.
        source: std::io::Error,
    },
    /// The backing file is smaller than the data offset plus one sector.
    #[error("backing file {0} has no room for data after the offset")]
    TooSmall(PathBuf),
    /// A backing read or write failed.
    #[error("backing {op} at byte {pos}: {source}")]
    Backing {
        /// `read`, `write`, `sync` or `discard`.
        op: &'static str,
        /// Byte position on the backing file.
        pos: u64,
        /// The OS error of the read, write, sync or discard.
        source: std::io::Error,
    },
    /// The backing file ended inside the device (it was truncated under us).
    #[error("backing file ended early at byte {0}")]
    ShortRead(u64),
    /// Encryption or decryption failed.
    #[error("crypt: {0}")]
    Crypt(#[from] CryptError),
    /// Write to a read-only mapping.
    #[error("read-only mapping")]
    ReadOnly,
    /// Write at or past the end of the device.
    #[error("write past the end of the device")]
    NoSpace,
    /// The operation is not enabled (discards without `allow_discards`).
    #[error("operation not supported")]
    Unsupported,
}

impl IoError {
    /// The errno a frontend should return: `EIO` for anything that went wrong on the
    /// backing file or in the vault.
    pub fn errno(&self) -> i32 {
        match self {
            IoError::ReadOnly => libc::EROFS,
            IoError::NoSpace => libc::ENOSPC,
            IoError::Unsupported => libc::EOPNOTSUPP,
            _ => libc::EIO,
        }
    }
}

/// How to open the backing file.
#[derive(Clone, Debug)]
pub struct IoConfig {
    /// Backing file or block device.
    pub backing: PathBuf,
    /// Start of the encrypted data.
    pub offset: Sectors,
    /// Device length; `None` = to the end of the backing file.
    pub len: Option<Sectors>,
    /// Open read-only and refuse writes.
    pub readonly: bool,
    /// Try `O_DIRECT` on the backing file (falls back to buffered I/O if refused).
    pub direct: bool,
    /// Pass discards down as hole punches.
    pub allow_discards: bool,
}

/// Sets `O_DIRECT` on `f`; false where the filesystem refuses it.
fn set_direct(f: &File) -> bool {
    // SAFETY: F_GETFL/F_SETFL on a descriptor we own; no memory is passed.
    unsafe {
        let fl = libc::fcntl(f.as_raw_fd(), libc::F_GETFL);
        fl >= 0 && libc::fcntl(f.as_raw_fd(), libc::F_SETFL, fl | libc::O_DIRECT) == 0
    }
}

/// Size in bytes of a regular file or block device.
pub fn backing_size(f: &File) -> std::io::Result<u64> {
    let md = f.metadata()?;
    use std::os::unix::fs::FileTypeExt;
    if md.file_type().is_block_device() {
        let mut sz: u64 = 0;
        // BLKGETSIZE64 = _IOR(0x12, 114, size_t)
        const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
        // SAFETY: BLKGETSIZE64 writes one u64 to the pointer we pass, which is valid.
        let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut sz as *mut u64) };
        if r < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(sz)
    } else {
        Ok(md.len())
    }
}

/// A buffer lent by the mapping's [`Crypt`], given back when dropped.
struct Lease<'a> {
    crypt: &'a dyn Crypt,
    buf: Option<Box<dyn IoBuf>>,
}

impl Lease<'_> {
    fn buf(&mut self) -> &mut dyn IoBuf {
        self.buf
            .as_deref_mut()
            .expect("lease holds a buffer until dropped")
    }
}

impl Drop for Lease<'_> {
    fn drop(&mut self) {
        if let Some(b) = self.buf.take() {
            self.crypt.give_buf(b);
        }
    }
}

/// The I/O engine of one mapping.
pub struct IoEngine {
    file: File,
    path: PathBuf,
    data_off: u64,
    size: u64,
    ss: u64,
    crypt: Arc<dyn Crypt>,
    locks: RangeLocks,
    readonly: bool,
    allow_discards: bool,
    direct: bool,
}

/// Shows where the engine maps, never its crypt backend (which holds the key).
impl std::fmt::Debug for IoEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IoEngine")
            .field("path", &self.path)
            .field("data_off", &self.data_off)
            .field("size", &self.size)
            .field("sector_size", &self.ss)
            .field("readonly", &self.readonly)
            .field("allow_discards", &self.allow_discards)
            .field("direct", &self.direct)
            .finish_non_exhaustive()
    }
}

impl IoEngine {
    /// Opens the backing file and sizes the device.
    pub fn open(cfg: &IoConfig, crypt: Arc<dyn Crypt>) -> Result<Self, IoError> {
        let open = |direct: bool| {
            let mut o = OpenOptions::new();
            o.read(true).write(!cfg.readonly);
            let mut flags = libc::O_CLOEXEC;
            if direct {
                flags |= libc::O_DIRECT;
            }
            o.custom_flags(flags);
            o.open(&cfg.backing)
        };
        let err = |source| IoError::Open {
            path: cfg.backing.clone(),
            source,
        };
        let (file, direct) = if cfg.direct {
            match open(true) {
                Ok(f) => (f, true),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    (open(false).map_err(err)?, false)
                }
                Err(e) => return Err(err(e)),
            }
        } else {
            (open(false).map_err(err)?, false)
        };
        Self::with_file(cfg, file, direct, crypt)
    }

    /// [`IoEngine::open`] on a backing file the caller already opened (vmvaultd: the
    /// descriptor the client passed): no path is resolved, `cfg.backing` only names it.
    /// With `cfg.direct`, `O_DIRECT` is set on it (`F_SETFL`) where the filesystem
    /// takes it.
    pub fn open_file(cfg: &IoConfig, file: File, crypt: Arc<dyn Crypt>) -> Result<Self, IoError> {
        let direct = cfg.direct && set_direct(&file);
        Self::with_file(cfg, file, direct, crypt)
    }

    fn with_file(
        cfg: &IoConfig,
        file: File,
        direct: bool,
        crypt: Arc<dyn Crypt>,
    ) -> Result<Self, IoError> {
        let err = |source| IoError::Open {
            path: cfg.backing.clone(),
            source,
        };
        let ss = u64::from(crypt.geometry().sector_size);
        let total = backing_size(&file).map_err(err)?;
        let too_small = || IoError::TooSmall(cfg.backing.clone());
        let data_off = cfg.offset.bytes().map_err(|_| too_small())?.0;
        let avail = total.saturating_sub(data_off) / ss * ss;
        let size = match cfg.len.map(Sectors::bytes) {
            Some(Ok(l)) if l.0 <= avail => l.0,
            Some(_) => return Err(too_small()),
            None => avail,
        };
        if size == 0 || size % ss != 0 {
            return Err(IoError::TooSmall(cfg.backing.clone()));
        }
        Ok(IoEngine {
            file,
            path: cfg.backing.clone(),
            data_off,
            size,
            ss,
            crypt,
            locks: RangeLocks::new(),
            readonly: cfg.readonly,
            allow_discards: cfg.allow_discards,
            direct,
        })
    }

    /// Plaintext device size in bytes.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Encryption sector size in bytes.
    pub fn sector_size(&self) -> u32 {
        self.ss as u32
    }

    /// Whether writes are refused.
    pub fn readonly(&self) -> bool {
        self.readonly
    }

    /// Whether the backing file is open with `O_DIRECT`.
    pub fn direct(&self) -> bool {
        self.direct
    }

    /// The backing path.
    pub fn backing(&self) -> &Path {
        &self.path
    }

    /// The crypt backend.
    pub fn crypt(&self) -> &Arc<dyn Crypt> {
        &self.crypt
    }

    /// Lends one buffer (may wait for one; see the module documentation). Callers hold
    /// no other lease.
    fn lease(&self) -> Result<Lease<'_>, IoError> {
        let buf = self.crypt.take_buf(IO_BUF_LEN)?;
        Ok(Lease {
            crypt: &*self.crypt,
            buf: Some(buf),
        })
    }

    fn pread_exact(&self, buf: &mut [u8], pos: u64) -> Result<(), IoError> {
        let mut done = 0;
        while done < buf.len() {
            let at = self.data_off + pos + done as u64;
            match self.file.read_at(&mut buf[done..], at) {
                Ok(0) => return Err(IoError::ShortRead(at)),
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(IoError::Backing {
                        op: "read",
                        pos: at,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    fn pwrite_all(&self, buf: &[u8], pos: u64) -> Result<(), IoError> {
        let mut done = 0;
        while done < buf.len() {
            let at = self.data_off + pos + done as u64;
            match self.file.write_at(&buf[done..], at) {
                Ok(0) => {
                    return Err(IoError::Backing {
                        op: "write",
                        pos: at,
                        source: std::io::Error::from(std::io::ErrorKind::WriteZero),
                    })
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(source) => {
                    return Err(IoError::Backing {
                        op: "write",
                        pos: at,
                        source,
                    })
                }
            }
        }
        Ok(())
    }

    /// Runs `f` over `range` of the buffer in pieces of at most `max_request` bytes.
    fn crypt_range(
        &self,
        buf: &mut dyn IoBuf,
        start: usize,
        len: usize,
        dev_pos: u64,
        enc: bool,
    ) -> Result<(), IoError> {
        let step = (self.crypt.max_request() / self.ss as usize).max(1) * self.ss as usize;
        let mut done = 0;
        while done < len {
            let n = step.min(len - done);
            let r = start + done..start + done + n;
            let sector = (dev_pos + done as u64) / 512;
            if enc {
                self.crypt.encrypt(buf, r, sector)?;
            } else {
                self.crypt.decrypt(buf, r, sector)?;
            }
            done += n;
        }
        Ok(())
    }

    fn align(&self, off: u64, len: usize) -> (u64, u64) {
        let a0 = off / self.ss * self.ss;
        let a1 = (off + len as u64).div_ceil(self.ss) * self.ss;
        (a0, a1)
    }

    /// Reads `len` plaintext bytes at `off` (clamped at the end of the device) and hands
    /// them to `f`. Requests up to [`MAX_IO`] bytes are served from one buffer, without a
    /// copy.
    pub fn read_with<R>(
        &self,
        off: u64,
        len: usize,
        f: impl FnOnce(&[u8]) -> R,
    ) -> Result<R, IoError> {
        let len = (len as u64).min(self.size.saturating_sub(off)) as usize;
        if len == 0 {
            return Ok(f(&[]));
        }
        if len > MAX_IO {
            let mut v = vec![0u8; len];
            self.read_into(off, &mut v)?;
            return Ok(f(&v));
        }
        let (a0, a1) = self.align(off, len);
        let n = (a1 - a0) as usize;
        let _g = self.locks.lock(a0, a1, false);
        let mut lease = self.lease()?;
        let buf = lease.buf();
        self.pread_exact(&mut buf.bytes_mut()[..n], a0)?;
        self.crypt_range(buf, 0, n, a0, false)?;
        let s = (off - a0) as usize;
        Ok(f(&buf.bytes()[s..s + len]))
    }

    /// Reads plaintext into `out`; returns the bytes read (short only at the end).
    pub fn read_into(&self, off: u64, out: &mut [u8]) -> Result<usize, IoError> {
        let mut done = 0;
        while done < out.len() {
            let n = (out.len() - done).min(MAX_IO);
            let got = self.read_with(off + done as u64, n, |s| {
                out[done..done + s.len()].copy_from_slice(s);
                s.len()
            })?;
            done += got;
            if got < n {
                break;
            }
        }
        Ok(done)
    }

    /// Writes plaintext `data` at `off`; returns the bytes written (short only when the
    /// write runs past the end of the device).
    pub fn write(&self, off: u64, data: &[u8]) -> Result<usize, IoError> {
        self.write_impl(off, data.len(), |dst, from| {
            dst.copy_from_slice(&data[from..from + dst.len()])
        })
    }

    /// Writes `len` zero bytes of plaintext at `off` (encrypted zeros, as dm-crypt's
    /// write-zeroes does).
    pub fn write_zeroes(&self, off: u64, len: u64) -> Result<u64, IoError> {
        let len = len.min(self.size.saturating_sub(off));
        let mut done = 0u64;
        while done < len {
            let n = (len - done).min(MAX_IO as u64) as usize;
            done += self.write_impl(off + done, n, |dst, _| dst.fill(0))? as u64;
        }
        Ok(done)
    }

    fn write_impl(
        &self,
        off: u64,
        len: usize,
        fill: impl Fn(&mut [u8], usize),
    ) -> Result<usize, IoError> {
        if self.readonly {
            return Err(IoError::ReadOnly);
        }
        if len == 0 {
            return Ok(0);
        }
        if off >= self.size {
            return Err(IoError::NoSpace);
        }
        let len = (len as u64).min(self.size - off) as usize;
        let mut done = 0;
        while done < len {
            let n = (len - done).min(MAX_IO);
            self.write_chunk(off + done as u64, n, |dst| fill(dst, done))?;
            done += n;
        }
        Ok(len)
    }

    fn write_chunk(
        &self,
        off: u64,
        len: usize,
        fill: impl FnOnce(&mut [u8]),
    ) -> Result<(), IoError> {
        let ss = self.ss as usize;
        let (a0, a1) = self.align(off, len);
        let n = (a1 - a0) as usize;
        let _g = self.locks.lock(a0, a1, true);
        let mut lease = self.lease()?;
        let buf = lease.buf();
        let head = off != a0;
        let tail = off + len as u64 != a1;
        if head {
            self.pread_exact(&mut buf.bytes_mut()[..ss], a0)?;
            self.crypt_range(buf, 0, ss, a0, false)?;
        }
        if tail && !(head && n == ss) {
            self.pread_exact(&mut buf.bytes_mut()[n - ss..n], a1 - self.ss)?;
            self.crypt_range(buf, n - ss, ss, a1 - self.ss, false)?;
        }
        let s = (off - a0) as usize;
        fill(&mut buf.bytes_mut()[s..s + len]);
        self.crypt_range(buf, 0, n, a0, true)?;
        self.pwrite_all(&buf.bytes()[..n], a0)
    }

    /// Makes written data durable on the backing file (`fdatasync`).
    pub fn flush(&self) -> Result<(), IoError> {
        self.file.sync_data().map_err(|source| IoError::Backing {
            op: "sync",
            pos: 0,
            source,
        })
    }

    /// Discards the whole sectors inside `[off, off+len)` by punching holes in the
    /// backing file (their plaintext becomes undefined, as with dm-crypt).
    pub fn discard(&self, off: u64, len: u64) -> Result<(), IoError> {
        if !self.allow_discards {
            return Err(IoError::Unsupported);
        }
        if self.readonly {
            return Err(IoError::ReadOnly);
        }
        let end = (off + len).min(self.size);
        let a0 = off.div_ceil(self.ss) * self.ss;
        let a1 = end / self.ss * self.ss;
        if a1 <= a0 {
            return Ok(());
        }
        let _g = self.locks.lock(a0, a1, true);
        let pos = self.data_off + a0;
        // SAFETY: plain fallocate(2) on an fd we own; no memory is passed.
        let r = unsafe {
            libc::fallocate(
                self.file.as_raw_fd(),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                pos as libc::off_t,
                (a1 - a0) as libc::off_t,
            )
        };
        if r < 0 {
            let source = std::io::Error::last_os_error();
            if source.raw_os_error() == Some(libc::EOPNOTSUPP) {
                return Err(IoError::Unsupported);
            }
            return Err(IoError::Backing {
                op: "discard",
                pos,
                source,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::crypt::EngineCrypt;
    use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};

    fn setup(ss: u32, sectors: u64) -> (tempdir::Dir, IoEngine, SectorCipher, Geometry) {
        let d = tempdir::Dir::new();
        let p = d.0.join("img");
        std::fs::write(&p, vec![0u8; (sectors * 512 + 4096) as usize]).unwrap();
        let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
        let key: Vec<u8> = (0..64u8).collect();
        let geom = Geometry::new(ss, false, 0).unwrap();
        let crypt = Arc::new(EngineCrypt::new(spec, &key, geom).unwrap());
        let cfg = IoConfig {
            backing: p,
            offset: Sectors(8),
            len: None,
            readonly: false,
            direct: false,
            allow_discards: true,
        };
        let e = IoEngine::open(&cfg, crypt).unwrap();
        (d, e, SectorCipher::new(spec, &key).unwrap(), geom)
    }

    mod tempdir {
        pub struct Dir(pub std::path::PathBuf);
        impl Dir {
            pub fn new() -> Self {
                use std::sync::atomic::{AtomicU32, Ordering};
                static N: AtomicU32 = AtomicU32::new(0);
                let p = std::env::temp_dir().join(format!(
                    "dmvv-io-{}-{}",
                    std::process::id(),
                    N.fetch_add(1, Ordering::SeqCst)
                ));
                std::fs::create_dir_all(&p).unwrap();
                Dir(p)
            }
        }
        impl Drop for Dir {
            fn drop(&mut self) {
                let _ = std::fs::remove_dir_all(&self.0);
            }
        }
    }

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect()
    }

    #[test]
    fn unaligned_writes_match_a_model_and_the_engine() {
        for ss in [512u32, 4096] {
            let (d, e, cipher, geom) = setup(ss, 512);
            assert_eq!(e.size(), 512 * 512 - (512 * 512) % u64::from(ss));
            let mut model = vec![0u8; e.size() as usize];
            // Initialise so that reads decrypt to the model.
            e.write(0, &model).unwrap();
            let cases: &[(u64, usize)] = &[
                (0, 1),
                (1, 511),
                (100, 1000),
                (4095, 2),
                (5000, 70000),
                (3, 9000),
                (e.size() - 7, 7),
            ];
            for (i, &(off, len)) in cases.iter().enumerate() {
                let data = pattern(len, i as u8);
                assert_eq!(e.write(off, &data).unwrap(), len);
                model[off as usize..off as usize + len].copy_from_slice(&data);
                let mut back = vec![0u8; len + 10];
                let got = e.read_into(off.saturating_sub(5), &mut back).unwrap();
                let s = off.saturating_sub(5) as usize;
                assert_eq!(&back[..got], &model[s..s + got]);
            }
            // Independent check: decrypt the raw image with the engine directly.
            let mut raw =
                std::fs::read(d.0.join("img")).unwrap()[4096..4096 + e.size() as usize].to_vec();
            cipher.decrypt(&geom, 0, &mut raw).unwrap();
            assert_eq!(raw, model);
        }
    }

    #[test]
    fn end_of_device_and_readonly() {
        let (_d, e, _, _) = setup(512, 16);
        assert_eq!(e.write(16 * 512 - 10, &[1u8; 100]).unwrap(), 10);
        assert!(matches!(
            e.write(16 * 512, &[1u8; 1]),
            Err(IoError::NoSpace)
        ));
        let n = e.read_with(16 * 512 - 4, 100, |s| s.len()).unwrap();
        assert_eq!(n, 4);
        assert_eq!(e.read_with(16 * 512, 100, |s| s.len()).unwrap(), 0);
    }

    #[test]
    fn truncated_backing_is_eio() {
        let (d, e, _, _) = setup(512, 64);
        e.write(0, &[9u8; 4096]).unwrap();
        std::fs::OpenOptions::new()
            .write(true)
            .open(d.0.join("img"))
            .unwrap()
            .set_len(4096 + 1024)
            .unwrap();
        let err = e.read_with(0, 8192, |_| ()).unwrap_err();
        assert_eq!(err.errno(), libc::EIO, "{err}");
        let err = e.write(10_000, &[1u8; 10]).unwrap_err();
        assert_eq!(err.errno(), libc::EIO, "{err}");
    }

    #[test]
    fn zeroes_and_discard() {
        let (_d, e, _, _) = setup(4096, 256);
        e.write(0, &vec![7u8; 65536]).unwrap();
        e.write_zeroes(100, 9000).unwrap();
        let v = e.read_with(0, 65536, |s| s.to_vec()).unwrap();
        assert!(v[..100].iter().all(|&x| x == 7));
        assert!(v[100..9100].iter().all(|&x| x == 0));
        assert!(v[9100..].iter().all(|&x| x == 7));
        e.discard(0, 65536).unwrap();
    }

    #[test]
    fn concurrent_unaligned_writers_do_not_tear() {
        let (_d, e, _, _) = setup(4096, 64);
        let e = Arc::new(e);
        e.write(0, &vec![0u8; 8192]).unwrap();
        // Each thread owns distinct bytes inside the same two sectors.
        let threads: Vec<_> = (0..4u8)
            .map(|t| {
                let e = e.clone();
                std::thread::spawn(move || {
                    for round in 0..200u32 {
                        let off = u64::from(t) * 1000 + u64::from(round % 7) * 100;
                        e.write(off, &[t + 1; 50]).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        let v = e.read_with(0, 8192, |s| s.to_vec()).unwrap();
        for t in 0..4u64 {
            for r in 0..7u64 {
                let off = (t * 1000 + r * 100) as usize;
                assert!(
                    v[off..off + 50].iter().all(|&x| x == t as u8 + 1),
                    "thread {t} round {r}"
                );
            }
        }
    }
}
