//! `vmvaultd`: one daemon per host (per run directory) serving every open volume.
//!
//! Layout of the run directory (default `/run/vmvault`, or `--run-dir`/`VMVAULT_RUN_DIR`):
//! `control` (the root-only control socket), `vmvaultd.pid` (flocked single-instance
//! lock), `mnt/<name>/volume` (each volume's FUSE export), `vmvaultd.log` (when spawned
//! on demand), `dm/<name>` (the `/dev/mapper` names this daemon created, see
//! [`stale`]).

pub mod host;
pub mod stale;
pub mod volume;

use std::collections::{HashMap, HashSet};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::protocol::{code, OpenRequest, Request, Response};
use volume::{Volume, VolumeError};

/// Default run directory.
pub const DEFAULT_RUN_DIR: &str = "/run/vmvault";

/// The run directory: `VMVAULT_RUN_DIR` if set, else [`DEFAULT_RUN_DIR`].
pub fn default_run_dir() -> PathBuf {
    std::env::var_os("VMVAULT_RUN_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_RUN_DIR))
}

/// Path of the control socket in `run_dir`.
pub fn socket_path(run_dir: &Path) -> PathBuf {
    run_dir.join("control")
}

/// Daemon options.
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Run directory.
    pub run_dir: PathBuf,
    /// FUSE serving threads per volume.
    pub fuse_threads: usize,
    /// `mlockall` the process.
    pub mlock: bool,
    /// vCPUs of each vault.
    pub vault_vcpus: usize,
}

/// Errors that stop the daemon.
#[derive(Debug, thiserror::Error)]
pub enum DaemonError {
    /// Setup failed.
    #[error(transparent)]
    Host(#[from] host::HostError),
    /// The control socket could not be set up.
    #[error("control socket {path}: {source}")]
    Socket {
        /// Socket path.
        path: PathBuf,
        /// Cause.
        source: std::io::Error,
    },
}

/// Lifetime of a `prepare_key` keyring if nobody uses it.
const REQUEST_KEYRING_TIMEOUT_S: u32 = 60;

/// Request keyrings prepared on one control connection; invalidated when it ends.
#[derive(Default)]
struct ConnKeys {
    rings: Vec<i32>,
}

impl Drop for ConnKeys {
    fn drop(&mut self) {
        for r in self.rings.drain(..) {
            let _ = crate::keyring::invalidate(r);
        }
    }
}

#[derive(Default)]
struct State {
    volumes: HashMap<String, Volume>,
    opening: HashSet<String>,
}

/// The daemon's shared state.
pub struct Daemon {
    cfg: DaemonConfig,
    mnt_root: PathBuf,
    mapper_records: stale::MapperRecords,
    state: Mutex<State>,
    stop: AtomicBool,
    vaults: crate::vault::VaultPool,
}

/// uid of the peer of a Unix stream (`SO_PEERCRED`).
pub fn peer_uid(s: &UnixStream) -> std::io::Result<u32> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: u32::MAX,
        gid: u32::MAX,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: SO_PEERCRED writes a `struct ucred` of `len` bytes into `cred`.
    let r = unsafe {
        libc::getsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(cred.uid)
}

impl Daemon {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_devices(&self) -> Vec<(u32, u32)> {
        self.state()
            .volumes
            .values()
            .flat_map(|v| v.devices())
            .collect()
    }

    fn open(&self, req: &OpenRequest) -> Response {
        if let Err(e) = volume::check_name(&req.name) {
            return Response::err(e.code(), e.to_string());
        }
        {
            let mut st = self.state();
            let in_mapper = crate::frontend::mapper::available()
                && Path::new("/dev/mapper").join(&req.name).exists();
            if st.volumes.contains_key(&req.name) || st.opening.contains(&req.name) || in_mapper {
                let e = VolumeError::Exists(req.name.clone());
                return Response::err(e.code(), e.to_string());
            }
            st.opening.insert(req.name.clone());
        }
        let own = self.own_devices();
        let mut warnings = Vec::new();
        // Record the /dev/mapper name before creating it, so a successor can tell it is
        // ours if this daemon dies (see `stale`).
        let recorded = crate::frontend::mapper::available();
        if recorded {
            let uuid = crate::frontend::mapper::dm_uuid(
                &req.name,
                req.volume_type.as_deref(),
                req.volume_uuid.as_deref(),
            );
            if let Err(e) = self.mapper_records.record(&req.name, &uuid) {
                warnings.push(format!(
                    "cannot record /dev/mapper/{} in the run directory ({e}): if vmvaultd \
                     dies, remove it with `dmsetup remove {}`",
                    req.name, req.name
                ));
            }
        }
        let r = Volume::open(
            req,
            &self.mnt_root,
            &own,
            self.cfg.fuse_threads,
            &self.vaults,
            &mut warnings,
        );
        let mut st = self.state();
        st.opening.remove(&req.name);
        match r {
            Ok(v) => {
                let status = v.status().clone();
                st.volumes.insert(req.name.clone(), v);
                eprintln!(
                    "vmvaultd: opened {} on {} ({})",
                    status.name, status.device, status.backend
                );
                Response {
                    ok: true,
                    status: Some(status),
                    warnings,
                    ..Default::default()
                }
            }
            Err(e) => {
                if recorded {
                    self.mapper_records.forget(&req.name);
                }
                eprintln!("vmvaultd: open {} failed: {e}", req.name);
                let mut r = Response::err(e.code(), e.to_string());
                r.warnings = warnings;
                r
            }
        }
    }

    fn close(&self, name: &str) -> Response {
        let v = {
            let mut st = self.state();
            let Some(v) = st.volumes.get(name) else {
                let e = VolumeError::NotActive(name.to_string());
                return Response::err(e.code(), e.to_string());
            };
            if let Err(e) = v.check_unused() {
                return Response::err(e.code(), e.to_string());
            }
            st.volumes
                .remove(name)
                .expect("present: checked under the same lock")
        };
        match v.close() {
            Ok(()) => {
                self.mapper_records.forget(name);
                eprintln!("vmvaultd: closed {name}");
                Response::ok()
            }
            Err(e) => Response::err(e.code(), format!("close {name}: {e}")),
        }
    }

    /// Closes every volume; refuses (busy) if one is in use.
    fn close_all(&self) -> Response {
        let names: Vec<String> = self.state().volumes.keys().cloned().collect();
        let mut busy = Vec::new();
        for n in names {
            let r = self.close(&n);
            if !r.ok {
                busy.push(format!("{n}: {}", r.error.unwrap_or_default()));
            }
        }
        if busy.is_empty() {
            Response::ok()
        } else {
            Response::err(code::BUSY, format!("cannot close: {}", busy.join("; ")))
        }
    }

    /// `prepare_key`: a request keyring in our process keyring (see
    /// [`crate::keyring::new_request_keyring`]), remembered by the connection.
    fn prepare_key(&self, conn: &mut ConnKeys) -> Response {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        if conn.rings.len() >= 8 {
            return Response::err(code::BUSY, "too many prepared key rings on this connection");
        }
        let desc = format!(
            "vmvaultd:req:{}:{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        match crate::keyring::new_request_keyring(&desc, REQUEST_KEYRING_TIMEOUT_S) {
            Ok(serial) => {
                conn.rings.push(serial);
                Response {
                    ok: true,
                    key_ring: Some(serial),
                    ..Default::default()
                }
            }
            Err(e) => Response::err(code::PERMISSION, format!("prepare_key: {e}")),
        }
    }

    /// `open` over a connection: a `key_ring` must be one this connection prepared; it
    /// is invalidated after the import whatever the outcome.
    fn open_conn(&self, o: &OpenRequest, conn: &mut ConnKeys) -> Response {
        let Some(ring) = o.key_ring else {
            return self.open(o);
        };
        let Some(i) = conn.rings.iter().position(|&r| r == ring) else {
            return Response::err(
                code::BAD_ARGS,
                format!("key ring {ring} was not prepared on this connection"),
            );
        };
        conn.rings.swap_remove(i);
        let r = self.open(o);
        let _ = crate::keyring::invalidate(ring);
        r
    }

    fn handle(&self, req: Request, conn: &mut ConnKeys) -> Response {
        match req {
            Request::PrepareKey => self.prepare_key(conn),
            Request::Open(o) => self.open_conn(&o, conn),
            Request::Close { name } => self.close(&name),
            Request::Status { name } => match self.state().volumes.get(&name) {
                Some(v) => Response {
                    ok: true,
                    status: Some(v.status().clone()),
                    ..Default::default()
                },
                None => {
                    let e = VolumeError::NotActive(name);
                    Response::err(e.code(), e.to_string())
                }
            },
            Request::List => {
                let mut v: Vec<_> = self
                    .state()
                    .volumes
                    .values()
                    .map(|v| v.status().clone())
                    .collect();
                v.sort_by(|a, b| a.name.cmp(&b.name));
                Response {
                    ok: true,
                    volumes: Some(v),
                    ..Default::default()
                }
            }
            Request::Ping => Response {
                ok: true,
                pid: Some(std::process::id()),
                ..Default::default()
            },
            Request::Shutdown => {
                let r = self.close_all();
                if r.ok {
                    self.stop.store(true, Ordering::SeqCst);
                }
                r
            }
        }
    }

    fn serve_conn(self: &Arc<Self>, stream: UnixStream) {
        let mut w = match stream.try_clone() {
            Ok(w) => w,
            Err(_) => return,
        };
        match peer_uid(&stream) {
            Ok(0) => {}
            Ok(uid) => {
                // Take the peer's first line (bounded, with a short timeout) before
                // answering, so a client that writes its request first sees the refusal
                // instead of a broken pipe. Nothing of it is parsed.
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(1)));
                let mut first = Vec::new();
                let _ = BufReader::new(std::io::Read::take(&stream, 4096))
                    .read_until(b'\n', &mut first);
                let r = Response::err(
                    code::PERMISSION,
                    format!("vmvaultd serves root only (peer uid {uid})"),
                );
                let _ = writeln!(w, "{}", serde_json::to_string(&r).unwrap_or_default());
                return;
            }
            Err(e) => {
                eprintln!("vmvaultd: SO_PEERCRED: {e}");
                return;
            }
        }
        let reader = BufReader::new(stream);
        let mut conn = ConnKeys::default();
        for line in reader.lines() {
            let Ok(line) = line else { break };
            if line.trim().is_empty() {
                continue;
            }
            let resp = match serde_json::from_str::<Request>(&line) {
                Ok(req) => self.handle(req, &mut conn),
                Err(e) => Response::err(code::BAD_ARGS, format!("bad request: {e}")),
            };
            let out =
                serde_json::to_string(&resp).unwrap_or_else(|_| r#"{"ok":false,"code":1}"#.into());
            if writeln!(w, "{out}").is_err() {
                break;
            }
            if self.stop.load(Ordering::SeqCst) {
                // Wake the accept loop so it sees the stop flag.
                let _ = UnixStream::connect(socket_path(&self.cfg.run_dir));
                break;
            }
        }
    }
}

/// Runs the daemon until `shutdown`. Blocks.
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    let run_dir = cfg.run_dir.clone();
    std::fs::create_dir_all(&run_dir).map_err(|source| host::HostError::Sys {
        what: format!("create {}", run_dir.display()),
        source,
    })?;
    let _ = std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700));
    let _lock = host::PidLock::acquire(&run_dir)?;
    for w in host::harden(cfg.mlock) {
        eprintln!("vmvaultd: warning: {w}");
    }
    let mnt_root = run_dir.join("mnt");
    std::fs::create_dir_all(&mnt_root).map_err(|source| host::HostError::Sys {
        what: format!("create {}", mnt_root.display()),
        source,
    })?;
    // What a dead predecessor left: its /dev/mapper devices first (they hold its loop
    // and ublk devices open, and tell which of those are ours), then ublk devices, loop
    // devices and FUSE mounts.
    let mapper_records = stale::MapperRecords::new(&run_dir);
    for l in stale::clean_stale_mappers(&mapper_records, &mnt_root) {
        eprintln!("vmvaultd: {l}");
    }
    #[cfg(feature = "ublk")]
    for l in crate::frontend::ublk::clean_stale() {
        eprintln!("vmvaultd: {l}");
    }
    for l in host::clean_stale(&mnt_root) {
        eprintln!("vmvaultd: {l}");
    }
    let sock = socket_path(&run_dir);
    let _ = std::fs::remove_file(&sock);
    let listener = UnixListener::bind(&sock).map_err(|source| DaemonError::Socket {
        path: sock.clone(),
        source,
    })?;
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(|source| {
        DaemonError::Socket {
            path: sock.clone(),
            source,
        }
    })?;
    let vaults = crate::vault::VaultPool::new(cfg.vault_vcpus);
    let d = Arc::new(Daemon {
        vaults,
        cfg,
        mnt_root,
        mapper_records,
        state: Mutex::new(State::default()),
        stop: AtomicBool::new(false),
    });
    eprintln!(
        "vmvaultd: pid {} serving {}",
        std::process::id(),
        sock.display()
    );
    for conn in listener.incoming() {
        if d.stop.load(Ordering::SeqCst) {
            break;
        }
        let Ok(conn) = conn else { continue };
        let d2 = d.clone();
        let _ = std::thread::Builder::new()
            .name("vmvaultd-conn".into())
            .spawn(move || d2.serve_conn(conn));
    }
    let _ = std::fs::remove_file(&sock);
    eprintln!("vmvaultd: shut down");
    Ok(())
}
