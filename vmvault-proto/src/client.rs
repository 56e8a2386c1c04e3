//! Client side of the control protocol, and starting `vmvaultd` on demand.
//!
//! [`Client::connect`] checks that root serves the socket and says hello with
//! [`VERSION`]; each command then has a typed method returning its own reply type.

use std::ffi::OsString;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde::de::DeserializeOwned;

use crate::exit::ExitCode;
use crate::keyslot::{KeyslotCandidate, KeyslotSpec, Payload, MAX_AREA};
use crate::protocol::{
    AreaReply, BackendChoice, DigestReply, Done, GeneratedKey, HelloReply, KeyHandle, KeyRingReply,
    ListReply, OpenRequest, OpenUnlockRequest, PingReply, Request, Response, UnlockedVolume,
    VolumeStatus, VERSION,
};
use crate::secret::Passphrase;
use crate::sock::{peer_uid, send_with_fd, socket_path};
use crate::types::VolumeName;
use crate::types::{CipherSpec, KeySize};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the daemon failed.
    #[error("vmvaultd at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// The socket error.
        source: std::io::Error,
    },
    /// The daemon's answer is not the reply this request expects.
    #[error("bad answer from vmvaultd at {path}: {source}")]
    Protocol {
        /// Socket path.
        path: PathBuf,
        /// Why the answer did not parse.
        source: serde_json::Error,
    },
    /// The daemon closed the connection instead of answering.
    #[error("vmvaultd at {0} closed the connection without an answer")]
    Closed(PathBuf),
    /// The daemon speaks another protocol version: client and daemon are from
    /// different builds.
    #[error("vmvaultd at {path} does not speak protocol version {VERSION} ({detail}): vaultsetup and vmvaultd come from different builds; close its volumes and stop it (`kill $(pidof vmvaultd)`), and the next vaultsetup command starts the matching one")]
    Version {
        /// Socket path.
        path: PathBuf,
        /// What the daemon said.
        detail: String,
    },
    /// The daemon refused the request.
    #[error("{message}")]
    Remote {
        /// Exit code to use.
        code: ExitCode,
        /// The daemon's message.
        message: String,
    },
    /// The socket's peer is not root: not our daemon, so no key is handed to it.
    #[error("{path}: the process serving this socket runs as uid {uid}, not root: refusing to talk to it (check who created {path})")]
    NotRoot {
        /// Socket path.
        path: PathBuf,
        /// The peer's uid (`SO_PEERCRED`).
        uid: u32,
    },
    /// A volume name the daemon would refuse.
    #[error(transparent)]
    Name(#[from] crate::types::TypeError),
    /// No `vmvaultd` binary was found to start.
    #[error("cannot start vmvaultd: vmvaultd not found next to this program or in PATH")]
    NotFound,
    /// Preparing the run directory or the daemon's log failed.
    #[error("cannot start vmvaultd: {path}: {source}")]
    Prepare {
        /// The directory or file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// Starting `vmvaultd` failed.
    #[error("cannot start vmvaultd: {path}: {source}")]
    Exec {
        /// The program.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// `vmvaultd` exited before it answered.
    #[error("cannot start vmvaultd: vmvaultd exited ({status}): {log_tail}")]
    Exited {
        /// Its exit status.
        status: std::process::ExitStatus,
        /// The last lines of its log.
        log_tail: String,
    },
    /// `vmvaultd` did not answer in time.
    #[error("cannot start vmvaultd: vmvaultd did not answer within 10 s")]
    Timeout,
    /// The keyslot areas or passphrase given do not match the lengths of the request
    /// (a bug of the caller); nothing was sent.
    #[error("keyslot request: {0}")]
    Payload(#[from] crate::keyslot::KeyslotError),
}

impl ClientError {
    /// Exit code for the CLI (cryptsetup's): the daemon's code, 2 for a socket not
    /// served by root, else 4.
    pub fn exit_code(&self) -> ExitCode {
        match self {
            ClientError::Remote { code, .. } => *code,
            ClientError::NotRoot { .. } => ExitCode::NoPermission,
            ClientError::Name(_) | ClientError::Payload(_) => ExitCode::WrongParameters,
            _ => ExitCode::WrongDevice,
        }
    }
}

impl crate::exit::HasExitCode for ClientError {
    fn exit_code(&self) -> ExitCode {
        ClientError::exit_code(self)
    }
}

/// A connection to vmvaultd that has said hello.
#[derive(Debug)]
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
    daemon_pid: u32,
}

impl Client {
    /// Connects to the daemon of `run_dir`, checking (`SO_PEERCRED`) that the process
    /// that serves the socket runs as root (keys and backing devices go to nobody else),
    /// and agrees on the protocol version.
    pub fn connect(run_dir: &Path) -> Result<Client, ClientError> {
        let mut c = Self::connect_unchecked(run_dir)?;
        let line = c.exchange(&Request::Hello { version: VERSION }, None)?;
        match serde_json::from_str::<Response<HelloReply>>(&line) {
            Ok(Response::Ok { reply, .. }) if reply.version == VERSION => {
                c.daemon_pid = reply.pid;
                Ok(c)
            }
            Ok(Response::Ok { reply, .. }) => Err(ClientError::Version {
                path: c.path,
                detail: format!("it answered version {}", reply.version),
            }),
            Ok(Response::Error { error, .. }) => Err(ClientError::Version {
                path: c.path,
                detail: error,
            }),
            Err(_) => Err(ClientError::Version {
                path: c.path,
                detail: format!("its answer to hello: {}", line.trim_end()),
            }),
        }
    }

    /// Connects and checks the peer is root, without the hello: for tests of the
    /// daemon's own checks.
    pub fn connect_unchecked(run_dir: &Path) -> Result<Client, ClientError> {
        let path = socket_path(run_dir);
        let err = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        let s = UnixStream::connect(&path).map_err(err)?;
        match peer_uid(&s) {
            Ok(0) => {}
            Ok(uid) => return Err(ClientError::NotRoot { path, uid }),
            Err(e) => return Err(err(e)),
        }
        let writer = s.try_clone().map_err(err)?;
        Ok(Client {
            path: path.clone(),
            reader: BufReader::new(s),
            writer,
            daemon_pid: 0,
        })
    }

    /// The daemon's pid, from its hello.
    pub fn daemon_pid(&self) -> u32 {
        self.daemon_pid
    }

    /// Sends one request line (with `fd` as `SCM_RIGHTS` if given) and returns the
    /// answer line as it came.
    pub fn exchange(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<String, ClientError> {
        let mut line = serde_json::to_string(req).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        line.push('\n');
        self.send_line(line.as_bytes(), fd)?;
        self.read_line()
    }

    /// Sends raw bytes as a request line: for tests of the daemon's parser.
    pub fn send_line(
        &mut self,
        line: &[u8],
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(), ClientError> {
        let err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        match fd {
            Some(fd) => send_with_fd(&self.writer, line, fd.as_raw_fd()).map_err(err),
            None => self.writer.write_all(line).map_err(err),
        }
    }

    /// Reads one answer line.
    pub fn read_line(&mut self) -> Result<String, ClientError> {
        let mut resp = String::new();
        let n = self
            .reader
            .read_line(&mut resp)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Closed(self.path.clone()));
        }
        Ok(resp)
    }

    /// Sends one request and decodes the answer as the reply type `T` (with warnings),
    /// or a refusal.
    pub fn call_raw<T: DeserializeOwned>(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Response<T>, ClientError> {
        let line = self.exchange(req, fd)?;
        serde_json::from_str(&line).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })
    }

    /// [`Client::call_raw`]; a refusal becomes [`ClientError::Remote`], warnings are
    /// returned with the reply.
    pub fn call<T: DeserializeOwned>(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<(T, Vec<String>), ClientError> {
        match self.call_raw(req, fd)? {
            Response::Ok { reply, warnings } => Ok((reply, warnings)),
            Response::Error { code, error } => Err(ClientError::Remote {
                code,
                message: error,
            }),
        }
    }

    /// Opens a volume; returns its status and the daemon's warnings.
    pub fn open(&mut self, req: OpenRequest) -> Result<(VolumeStatus, Vec<String>), ClientError> {
        self.call(&Request::Open(req), None)
    }

    /// Opens a volume on `backing` (open read-write, or read-only with `req.readonly`),
    /// sent to the daemon as a descriptor: it uses this open file, never `req.backing`
    /// again (which only names it). Returns the status and the daemon's warnings.
    pub fn open_fd(
        &mut self,
        req: OpenRequest,
        backing: BorrowedFd<'_>,
    ) -> Result<(VolumeStatus, Vec<String>), ClientError> {
        self.call(&Request::OpenFd(req), Some(backing))
    }

    /// Asks for a request keyring to link a possessor-only key into before `open`
    /// (see [`Request::PrepareKey`]); returns its serial.
    pub fn prepare_key(&mut self) -> Result<i32, ClientError> {
        let (r, _): (KeyRingReply, _) = self.call(&Request::PrepareKey {}, None)?;
        Ok(r.key_ring)
    }

    /// Closes a volume.
    pub fn close(&mut self, name: &str) -> Result<(), ClientError> {
        let name = VolumeName::new(name)?;
        let (Done {}, _) = self.call(&Request::Close { name }, None)?;
        Ok(())
    }

    /// Status of a volume.
    pub fn status(&mut self, name: &str) -> Result<VolumeStatus, ClientError> {
        let name = VolumeName::new(name)?;
        Ok(self.call(&Request::Status { name }, None)?.0)
    }

    /// Every open volume.
    pub fn list(&mut self) -> Result<Vec<VolumeStatus>, ClientError> {
        let (r, _): (ListReply, _) = self.call(&Request::List {}, None)?;
        Ok(r.volumes)
    }

    /// The daemon's pid.
    pub fn ping(&mut self) -> Result<u32, ClientError> {
        let (r, _): (PingReply, _) = self.call(&Request::Ping {}, None)?;
        Ok(r.pid)
    }

    /// Closes everything and stops the daemon.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        let (Done {}, _) = self.call(&Request::Shutdown {}, None)?;
        Ok(())
    }

    /// Sends `req` (with `fd` as `SCM_RIGHTS` if given), then the payload straight
    /// from the caller's buffers: each area, then the passphrase (from its locked
    /// buffer; no copy is made); returns the answer line.
    fn exchange_payload(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
        areas: &[&[u8]],
        passphrase: Option<&Passphrase>,
    ) -> Result<String, ClientError> {
        let mut line = serde_json::to_string(req).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })?;
        line.push('\n');
        self.send_line(line.as_bytes(), fd)?;
        let err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        for a in areas {
            self.writer.write_all(a).map_err(err)?;
        }
        if let Some(p) = passphrase {
            self.writer.write_all(p.as_bytes()).map_err(err)?;
        }
        self.read_line()
    }

    fn decode<T: DeserializeOwned>(&self, line: &str) -> Result<(T, Vec<String>), ClientError> {
        match serde_json::from_str(line).map_err(|source| ClientError::Protocol {
            path: self.path.clone(),
            source,
        })? {
            Response::Ok { reply, warnings } => Ok((reply, warnings)),
            Response::Error { code, error } => Err(ClientError::Remote {
                code,
                message: error,
            }),
        }
    }

    /// Checks that `areas` match the keyslots' area lengths.
    fn check_areas(keyslots: &[KeyslotCandidate], areas: &[&[u8]]) -> Result<(), ClientError> {
        let lens: Vec<u64> = areas.iter().map(|a| a.len() as u64).collect();
        let want: Vec<u64> = keyslots.iter().map(|k| k.area_len).collect();
        if lens != want {
            return Err(ClientError::Payload(crate::keyslot::KeyslotError::Length {
                what: "keyslot areas given",
                len: lens.iter().sum(),
                min: want.iter().sum(),
                max: want.iter().sum(),
            }));
        }
        Ok(())
    }

    /// Opens a volume whose key the vault unlocks: `areas[i]` is the encrypted area of
    /// `req.keyslots[i]`, `passphrase` the passphrase (`req.passphrase_len` is set from
    /// it). With `backing`, the volume is opened on that descriptor
    /// ([`Request::OpenFdUnlock`]). Wrong passphrase for every keyslot:
    /// [`ClientError::Remote`] with code 2.
    pub fn open_unlock(
        &mut self,
        mut req: OpenUnlockRequest,
        areas: &[&[u8]],
        passphrase: &Passphrase,
        backing: Option<BorrowedFd<'_>>,
    ) -> Result<(UnlockedVolume, Vec<String>), ClientError> {
        req.passphrase_len = passphrase.len() as u64;
        Payload::check(&req.keyslots, req.passphrase_len, false)?;
        Self::check_areas(&req.keyslots, areas)?;
        let r = match backing {
            Some(_) => Request::OpenFdUnlock(req),
            None => Request::OpenUnlock(req),
        };
        let line = self.exchange_payload(&r, backing, areas, Some(passphrase))?;
        self.decode(&line)
    }

    /// Generates a key in the vault; returns its handle on this connection.
    pub fn generate_key(
        &mut self,
        cipher: CipherSpec,
        key_size: KeySize,
        backend: BackendChoice,
    ) -> Result<GeneratedKey, ClientError> {
        let r = Request::GenerateKey {
            cipher,
            key_size,
            backend,
        };
        Ok(self.call(&r, None)?.0)
    }

    /// Unlocks one keyslot into a handle of this connection.
    pub fn unlock_keyslot(
        &mut self,
        cipher: CipherSpec,
        backend: BackendChoice,
        keyslot: KeyslotCandidate,
        area: &[u8],
        passphrase: &Passphrase,
    ) -> Result<u64, ClientError> {
        let passphrase_len = passphrase.len() as u64;
        Payload::check(std::slice::from_ref(&keyslot), passphrase_len, false)?;
        Self::check_areas(std::slice::from_ref(&keyslot), &[area])?;
        let r = Request::UnlockKeyslot {
            cipher,
            backend,
            keyslot,
            passphrase_len,
        };
        let line = self.exchange_payload(&r, None, &[area], Some(passphrase))?;
        let (KeyHandle { handle }, _) = self.decode(&line)?;
        Ok(handle)
    }

    /// Seals the key of `handle` under `passphrase`; returns the area to write.
    pub fn seal_keyslot(
        &mut self,
        handle: u64,
        keyslot: KeyslotSpec,
        passphrase: &Passphrase,
    ) -> Result<Vec<u8>, ClientError> {
        let want = keyslot.area_len();
        let r = Request::SealKeyslot {
            handle,
            keyslot,
            passphrase_len: passphrase.len() as u64,
        };
        Payload::check(&[], passphrase.len() as u64, true)?;
        let line = self.exchange_payload(&r, None, &[], Some(passphrase))?;
        let (AreaReply { area_len }, _) = self.decode(&line)?;
        if area_len != want || area_len > MAX_AREA {
            return Err(ClientError::Payload(
                crate::keyslot::KeyslotError::AreaLength {
                    keyslot: u32::MAX,
                    got: area_len,
                    want,
                },
            ));
        }
        let mut area = vec![0u8; area_len as usize];
        std::io::Read::read_exact(&mut self.reader, &mut area).map_err(|source| {
            ClientError::Io {
                path: self.path.clone(),
                source,
            }
        })?;
        Ok(area)
    }

    /// The LUKS digest of the key of `handle`.
    pub fn key_digest(
        &mut self,
        handle: u64,
        keyslot: KeyslotSpec,
    ) -> Result<Vec<u8>, ClientError> {
        let (DigestReply { digest }, _) =
            self.call(&Request::KeyDigest { handle, keyslot }, None)?;
        Ok(digest.as_bytes().to_vec())
    }

    /// Drops the key of `handle` from the vault.
    pub fn drop_key(&mut self, handle: u64) -> Result<(), ClientError> {
        let (Done {}, _) = self.call(&Request::DropKey { handle }, None)?;
        Ok(())
    }

    /// Asks the daemon to make `new_root` its root directory (the initramfs hand-over,
    /// see [`Request::SwitchRoot`]).
    pub fn switch_root(&mut self, new_root: &Path) -> Result<(), ClientError> {
        let (Done {}, _) = self.call(
            &Request::SwitchRoot {
                path: new_root.to_path_buf(),
            },
            None,
        )?;
        Ok(())
    }
}

/// How to start `vmvaultd` when none answers. The caller (a binary) fills it from its
/// environment: this library reads none.
#[derive(Clone, Debug, Default)]
pub struct SpawnConfig {
    /// The program, when given (`$VMVAULTD`); else [`find_vmvaultd`] looks.
    pub program: Option<PathBuf>,
    /// The search path (`$PATH`).
    pub search_path: Option<OsString>,
    /// Start it with `--initrd` (the caller runs in an initramfs: see
    /// [`in_initramfs`]), so that it survives the switch to the real root.
    pub initrd: bool,
}

/// Whether this process runs in an initramfs: `/etc/initrd-release` (systemd's and
/// dracut's convention) or `/conf/initramfs.conf` (initramfs-tools) exists under `root`
/// (`/` outside tests).
pub fn in_initramfs(root: &Path) -> bool {
    root.join("etc/initrd-release").exists() || root.join("conf/initramfs.conf").exists()
}

/// Where the `vmvaultd` binary is: `cfg.program`, next to the current executable (or one
/// directory up, for test binaries in `target/*/deps`), else `vmvaultd` in the search path.
pub fn find_vmvaultd(cfg: &SpawnConfig) -> Option<PathBuf> {
    if let Some(p) = &cfg.program {
        return Some(p.clone());
    }
    if let Ok(exe) = std::env::current_exe() {
        if let Some(dir) = exe.parent() {
            for cand in [dir.join("vmvaultd"), dir.join("../vmvaultd")] {
                if cand.is_file() {
                    return Some(cand);
                }
            }
        }
    }
    let path = cfg.search_path.as_ref()?;
    std::env::split_paths(path)
        .map(|d| d.join("vmvaultd"))
        .find(|p| p.is_file())
}

/// Connects to the daemon of `run_dir`, starting `vmvaultd` (detached, in its own
/// session, logging to `<run-dir>/vmvaultd.log`) if none answers. Waits up to 10 s for
/// the socket.
pub fn connect_or_spawn(run_dir: &Path, spawn: &SpawnConfig) -> Result<Client, ClientError> {
    match Client::connect(run_dir) {
        Ok(mut c) => {
            if c.ping().is_ok() {
                return Ok(c);
            }
        }
        // A daemon of another build answers: starting one more would not help.
        Err(e @ ClientError::Version { .. }) => return Err(e),
        Err(_) => {}
    }
    let exe = find_vmvaultd(spawn).ok_or(ClientError::NotFound)?;
    // Root-only from the start (the daemon refuses a run directory others may write).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(|source| ClientError::Prepare {
            path: run_dir.to_path_buf(),
            source,
        })?;
    let log_path = run_dir.join("vmvaultd.log");
    // O_NOFOLLOW: a symlink planted as the log must not make us append to another file.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&log_path)
        .map_err(|source| ClientError::Prepare {
            path: log_path.clone(),
            source,
        })?;
    let log2 = log.try_clone().map_err(|source| ClientError::Prepare {
        path: log_path.clone(),
        source,
    })?;
    let mut cmd = Command::new(&exe);
    if spawn.initrd {
        cmd.arg("--initrd");
    }
    cmd.arg("--run-dir")
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    {
        use std::os::unix::process::CommandExt;
        // SAFETY: setsid is async-signal-safe and touches no memory of the parent.
        unsafe {
            cmd.pre_exec(|| {
                libc::setsid();
                Ok(())
            });
        }
    }
    let mut child = cmd.spawn().map_err(|source| ClientError::Exec {
        path: exe.clone(),
        source,
    })?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Ok(mut c) = Client::connect(run_dir) {
            if c.ping().is_ok() {
                // Reap the daemon when it exits, for as long as this process lives.
                std::thread::spawn(move || child.wait());
                return Ok(c);
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            // Lost a race with another starter? Then its daemon answers.
            if let Ok(mut c) = Client::connect(run_dir) {
                if c.ping().is_ok() {
                    return Ok(c);
                }
            }
            let tail = std::fs::read_to_string(&log_path).unwrap_or_default();
            let tail: Vec<&str> = tail.lines().rev().take(5).collect();
            return Err(ClientError::Exited {
                status: st,
                log_tail: tail.into_iter().rev().collect::<Vec<_>>().join(" | "),
            });
        }
        if Instant::now() > deadline {
            return Err(ClientError::Timeout);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn initramfs_markers() {
        let d = std::env::temp_dir().join(format!("vmvault-initrd-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(d.join("etc")).unwrap();
        std::fs::create_dir_all(d.join("conf")).unwrap();
        assert!(!in_initramfs(&d));
        std::fs::write(d.join("conf/initramfs.conf"), "").unwrap();
        assert!(in_initramfs(&d));
        std::fs::remove_file(d.join("conf/initramfs.conf")).unwrap();
        std::fs::write(d.join("etc/initrd-release"), "").unwrap();
        assert!(in_initramfs(&d));
        std::fs::remove_dir_all(&d).unwrap();
    }
}
