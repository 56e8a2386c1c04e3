//! Client side of the control protocol, and starting `vmvaultd` on demand.

use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::daemon::socket_path;
use crate::protocol::{code, OpenRequest, Request, Response, VolumeStatus};

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or talking to the daemon failed.
    #[error("vmvaultd at {path}: {source}")]
    Io {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
    /// The daemon's answer did not parse.
    #[error("bad answer from vmvaultd: {0}")]
    Protocol(String),
    /// The daemon refused the request.
    #[error("{message}")]
    Remote {
        /// Exit code to use.
        code: i32,
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
    /// `vmvaultd` could not be found or started.
    #[error("cannot start vmvaultd: {0}")]
    Spawn(String),
}

impl ClientError {
    /// Exit code for the CLI (cryptsetup's): the daemon's code, else 4.
    pub fn exit_code(&self) -> i32 {
        match self {
            ClientError::Remote { code, .. } => *code,
            ClientError::NotRoot { .. } => code::PERMISSION,
            _ => code::DEVICE,
        }
    }
}

/// A connection to vmvaultd.
pub struct Client {
    path: PathBuf,
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Client {
    /// Connects to the daemon of `run_dir`, checking (`SO_PEERCRED`) that the process
    /// that serves the socket runs as root: keys and backing devices go to nobody else.
    pub fn connect(run_dir: &Path) -> Result<Client, ClientError> {
        let path = socket_path(run_dir);
        let err = |source| ClientError::Io {
            path: path.clone(),
            source,
        };
        let s = UnixStream::connect(&path).map_err(err)?;
        match crate::daemon::peer_uid(&s) {
            Ok(0) => {}
            Ok(uid) => return Err(ClientError::NotRoot { path, uid }),
            Err(e) => return Err(err(e)),
        }
        let writer = s.try_clone().map_err(err)?;
        Ok(Client {
            path: path.clone(),
            reader: BufReader::new(s),
            writer,
        })
    }

    /// Sends one request and returns the raw response (which may be a failure).
    pub fn call_raw(&mut self, req: &Request) -> Result<Response, ClientError> {
        self.call_raw_fd(req, None)
    }

    /// [`Client::call_raw`], sending `fd` with the request line (`SCM_RIGHTS`).
    pub fn call_raw_fd(
        &mut self,
        req: &Request,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<Response, ClientError> {
        let err = |source| ClientError::Io {
            path: self.path.clone(),
            source,
        };
        let mut line =
            serde_json::to_string(req).map_err(|e| ClientError::Protocol(e.to_string()))?;
        line.push('\n');
        match fd {
            Some(fd) => {
                crate::daemon::conn::send_with_fd(&self.writer, line.as_bytes(), fd.as_raw_fd())
                    .map_err(err)?
            }
            None => self.writer.write_all(line.as_bytes()).map_err(err)?,
        }
        let mut resp = String::new();
        let n = self
            .reader
            .read_line(&mut resp)
            .map_err(|source| ClientError::Io {
                path: self.path.clone(),
                source,
            })?;
        if n == 0 {
            return Err(ClientError::Protocol("connection closed".into()));
        }
        serde_json::from_str(&resp).map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// Sends one request; a refusal becomes [`ClientError::Remote`].
    pub fn call(&mut self, req: &Request) -> Result<Response, ClientError> {
        let r = self.call_raw(req)?;
        if r.ok {
            Ok(r)
        } else {
            Err(ClientError::Remote {
                code: r.code.unwrap_or(code::DEVICE),
                message: r.error.unwrap_or_else(|| "unknown error".into()),
            })
        }
    }

    /// Opens a volume; returns its status.
    pub fn open(&mut self, req: OpenRequest) -> Result<VolumeStatus, ClientError> {
        self.call(&Request::Open(req))?
            .status
            .ok_or_else(|| ClientError::Protocol("open answered without status".into()))
    }

    /// Opens a volume on `backing` (open read-write, or read-only with `req.readonly`),
    /// sent to the daemon as a descriptor: it uses this open file, never `req.backing`
    /// again (which only names it). Returns the raw response.
    pub fn open_fd_raw(
        &mut self,
        req: OpenRequest,
        backing: BorrowedFd<'_>,
    ) -> Result<Response, ClientError> {
        self.call_raw_fd(&Request::OpenFd(req), Some(backing))
    }

    /// [`Client::open_fd_raw`]; a refusal becomes [`ClientError::Remote`].
    pub fn open_fd(
        &mut self,
        req: OpenRequest,
        backing: BorrowedFd<'_>,
    ) -> Result<VolumeStatus, ClientError> {
        let r = self.open_fd_raw(req, backing)?;
        if !r.ok {
            return Err(ClientError::Remote {
                code: r.code.unwrap_or(code::DEVICE),
                message: r.error.unwrap_or_else(|| "unknown error".into()),
            });
        }
        r.status
            .ok_or_else(|| ClientError::Protocol("open answered without status".into()))
    }

    /// Asks for a request keyring to link a possessor-only key into before `open`
    /// (see [`Request::PrepareKey`]); returns its serial.
    pub fn prepare_key(&mut self) -> Result<i32, ClientError> {
        self.call(&Request::PrepareKey)?
            .key_ring
            .ok_or_else(|| ClientError::Protocol("prepare_key answered without key_ring".into()))
    }

    /// Closes a volume.
    pub fn close(&mut self, name: &str) -> Result<(), ClientError> {
        self.call(&Request::Close { name: name.into() }).map(|_| ())
    }

    /// Status of a volume.
    pub fn status(&mut self, name: &str) -> Result<VolumeStatus, ClientError> {
        self.call(&Request::Status { name: name.into() })?
            .status
            .ok_or_else(|| ClientError::Protocol("status answered without status".into()))
    }

    /// Every open volume.
    pub fn list(&mut self) -> Result<Vec<VolumeStatus>, ClientError> {
        Ok(self.call(&Request::List)?.volumes.unwrap_or_default())
    }

    /// The daemon's pid.
    pub fn ping(&mut self) -> Result<u32, ClientError> {
        self.call(&Request::Ping)?
            .pid
            .ok_or_else(|| ClientError::Protocol("ping answered without pid".into()))
    }

    /// Closes everything and stops the daemon.
    pub fn shutdown(&mut self) -> Result<(), ClientError> {
        self.call(&Request::Shutdown).map(|_| ())
    }
}

/// Where the `vmvaultd` binary is: `$VMVAULTD`, next to the current executable (or one
/// directory up, for test binaries in `target/*/deps`), else `vmvaultd` in `PATH`.
pub fn find_vmvaultd() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("VMVAULTD") {
        return Some(PathBuf::from(p));
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
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join("vmvaultd"))
        .find(|p| p.is_file())
}

/// Connects to the daemon of `run_dir`, starting `vmvaultd` (detached, in its own
/// session, logging to `<run-dir>/vmvaultd.log`) if none answers. Waits up to 10 s for
/// the socket.
pub fn connect_or_spawn(run_dir: &Path) -> Result<Client, ClientError> {
    if let Ok(mut c) = Client::connect(run_dir) {
        if c.ping().is_ok() {
            return Ok(c);
        }
    }
    let exe = find_vmvaultd().ok_or_else(|| {
        ClientError::Spawn("vmvaultd not found next to this program or in PATH".into())
    })?;
    // Root-only from the start (the daemon refuses a run directory others may write).
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(run_dir)
        .map_err(|e| ClientError::Spawn(format!("{}: {e}", run_dir.display())))?;
    let log_path = run_dir.join("vmvaultd.log");
    // O_NOFOLLOW: a symlink planted as the log must not make us append to another file.
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
        .open(&log_path)
        .map_err(|e| ClientError::Spawn(format!("{}: {e}", log_path.display())))?;
    let log2 = log
        .try_clone()
        .map_err(|e| ClientError::Spawn(e.to_string()))?;
    let mut cmd = Command::new(&exe);
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
    let mut child = cmd
        .spawn()
        .map_err(|e| ClientError::Spawn(format!("{}: {e}", exe.display())))?;
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
            return Err(ClientError::Spawn(format!(
                "vmvaultd exited ({st}): {}",
                tail.into_iter().rev().collect::<Vec<_>>().join(" | ")
            )));
        }
        if Instant::now() > deadline {
            return Err(ClientError::Spawn(
                "vmvaultd did not answer within 10 s".into(),
            ));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}
