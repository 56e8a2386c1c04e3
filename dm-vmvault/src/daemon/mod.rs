//! `vmvaultd`: one daemon per host (per run directory) serving every open volume.
//!
//! Layout of the run directory (default `/run/vmvault`, or `--run-dir`/`VMVAULT_RUN_DIR`):
//! `control` (the root-only control socket), `vmvaultd.pid` (flocked single-instance
//! lock), `mnt/<name>/volume` (each volume's FUSE export), `vmvaultd.log` (when spawned
//! on demand), `dm/<name>` (the `/dev/mapper` names this daemon created, see
//! [`stale`]), `initrd` (the marker of an initramfs daemon, see [`activation`]). The directory is checked before it is trusted ([`check_run_dir`]); the pid
//! file and the log are opened with `O_NOFOLLOW`.
//!
//! `close` never tears down a volume in use ([`busy`]); a volume leaves the table only
//! once it is gone. SIGTERM/SIGINT: see the `vmvaultd` binary.

pub mod activation;
pub mod busy;
pub mod config;
pub mod conn;
pub mod host;
pub mod keyslots;
pub mod stale;
pub mod volume;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::io::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use serde::Serialize;
use vmvault_proto::protocol::{
    refusal, Done, HelloReply, KeyRingReply, ListReply, OpenRequest, OpenUnlockRequest, PingReply,
    Request, Response, UnlockedVolume, VolumeStatus, VERSION,
};
use vmvault_proto::sock::peer_uid;
pub use vmvault_proto::sock::{socket_path, DEFAULT_RUN_DIR};
use vmvault_proto::ExitCode;
use volume::{Volume, VolumeError};

/// Daemon options (from `vmvaultd`'s command line and configuration file).
#[derive(Clone, Debug)]
pub struct DaemonConfig {
    /// Run directory: control socket, pid file, FUSE mounts, mapper records.
    pub run_dir: PathBuf,
    /// FUSE serving threads per volume.
    pub fuse_threads: usize,
    /// `mlockall` the process.
    pub mlock: bool,
    /// vCPUs of each vault.
    pub vault_vcpus: usize,
    /// Data window size of each vault, in bytes (see [`crate::vault::check_window_size`]).
    pub window_size: u64,
    /// Who runs a sleeping vCPU of each vault.
    pub vault_run: vmvault_hv::RunMode,
    /// How the vaults' vCPUs spin, sleep and are placed.
    pub vault_tuning: vmvault_hv::Tuning,
    /// The initramfs daemon (`--initrd`): writes the marker `<run-dir>/initrd` while it
    /// runs (see [`activation`]).
    pub initrd: bool,
}

/// Vault vCPUs for a machine with `cpus` CPUs: half of them, so that vCPU threads that
/// poll their rings leave cores for FUSE and backing I/O, but at least two where the
/// machine has two: Argon2 keyslot lanes run in parallel on the vault's vCPUs (a single
/// vCPU runs 4 lanes one after the other, ~1.5x cryptsetup's unlock time), and on a
/// machine that small the vault runs in caller mode, where an idle vCPU has no thread.
pub fn default_vault_vcpus(cpus: usize) -> usize {
    (cpus / 2).max(cpus.min(2)).max(1)
}

impl Default for DaemonConfig {
    /// `/run/vmvault`, 16 FUSE threads, mlock, [`default_vault_vcpus`] vault vCPUs, the
    /// default window ([`crate::vault::WINDOW_SIZE`]).
    fn default() -> Self {
        DaemonConfig {
            run_dir: PathBuf::from(DEFAULT_RUN_DIR),
            // As many as fio-style queues keep in flight (16): requests that wait for the
            // vault then share one KVM_RUN episode (random 4K: 8 threads ~2.3 requests
            // per episode, 16 threads ~3.5, ~1.2x the throughput).
            fuse_threads: 16,
            mlock: true,
            vault_vcpus: default_vault_vcpus(
                std::thread::available_parallelism().map_or(1, |n| n.get()),
            ),
            window_size: crate::vault::WINDOW_SIZE,
            vault_run: vmvault_hv::RunMode::Auto,
            vault_tuning: vmvault_hv::Tuning::default(),
            initrd: false,
        }
    }
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
        /// Socket path (`<run-dir>/control`).
        path: PathBuf,
        /// Why binding it, setting its mode or making it nonblocking failed.
        source: std::io::Error,
    },
}

/// Lifetime of a `prepare_key` keyring if nobody uses it.
const REQUEST_KEYRING_TIMEOUT_S: u32 = 60;

/// Request keyrings prepared on one control connection, invalidated when it ends, and
/// the vault key handles it holds, dropped when it ends.
#[derive(Default)]
struct ConnKeys {
    rings: Vec<i32>,
    handles: keyslots::ConnHandles,
}

impl Drop for ConnKeys {
    fn drop(&mut self) {
        for r in self.rings.drain(..) {
            let _ = vmvault_proto::keyring::invalidate(r);
        }
    }
}

#[derive(Default)]
struct State {
    volumes: HashMap<String, Volume>,
    opening: HashSet<String>,
    /// Volumes being closed (out of `volumes` meanwhile): their devices and status.
    closing: HashMap<String, (Vec<(u32, u32)>, VolumeStatus)>,
}

/// The daemon's shared state.
pub struct Daemon {
    cfg: DaemonConfig,
    mnt_root: PathBuf,
    mapper_records: stale::MapperRecords,
    state: Mutex<State>,
    stop: AtomicBool,
    /// SIGTERM arrived: no new volumes; exit once every volume is closed.
    terminating: AtomicBool,
    vaults: crate::vault::VaultPool,
}

impl std::fmt::Debug for Daemon {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Daemon")
            .field("cfg", &self.cfg)
            .field("stop", &self.stop)
            .field("terminating", &self.terminating)
            .finish_non_exhaustive()
    }
}

impl Daemon {
    fn state(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn own_devices(&self) -> Vec<(u32, u32)> {
        let st = self.state();
        st.volumes
            .values()
            .flat_map(|v| v.devices())
            .chain(st.closing.values().flat_map(|(d, _)| d.iter().copied()))
            .collect()
    }

    /// Opens a volume keyed from `key`; the reply carries the LUKS keyslot the vault
    /// unlocked, if it did.
    fn open(
        &self,
        req: &OpenRequest,
        backing_fd: Option<File>,
        key: &crate::backend::KeySource<'_>,
    ) -> Response<(VolumeStatus, Option<u32>)> {
        if self.terminating.load(Ordering::SeqCst) {
            return Response::err(
                ExitCode::Busy,
                "vmvaultd is shutting down (SIGTERM): it opens no new volumes",
            );
        }
        {
            let mut st = self.state();
            let in_mapper = crate::frontend::mapper::available()
                && Path::new("/dev/mapper").join(req.name.as_str()).exists();
            if st.volumes.contains_key(req.name.as_str())
                || st.opening.contains(req.name.as_str())
                || st.closing.contains_key(req.name.as_str())
                || in_mapper
            {
                let e = VolumeError::Exists(req.name.to_string());
                return Response::err(e.code(), e.to_string());
            }
            st.opening.insert(req.name.to_string());
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
            key,
            backing_fd,
            &self.mnt_root,
            &own,
            self.cfg.fuse_threads,
            &self.vaults,
            &mut warnings,
        );
        let mut st = self.state();
        st.opening.remove(req.name.as_str());
        match r {
            Ok(v) => {
                let status = v.status();
                let keyslot = v.keyslot();
                st.volumes.insert(req.name.to_string(), v);
                tracing::info!(
                    "opened {} on {} ({})",
                    status.name,
                    status.device.display(),
                    status.backend.as_str()
                );
                Response::Ok {
                    reply: (status, keyslot),
                    warnings,
                }
            }
            Err(e) => {
                if recorded {
                    self.mapper_records.forget(&req.name);
                }
                tracing::error!("open {} failed: {e}", req.name);
                // A refusal carries no warnings; those of a failed open go to the log.
                for w in warnings {
                    tracing::warn!("open {}: {w}", req.name);
                }
                Response::err(e.code(), e.to_string())
            }
        }
    }

    /// Closes `name`, refusing (busy, exit 5) while anything uses its devices. The
    /// volume leaves the table only once it is torn down: if the check or a teardown
    /// step fails, it goes back whole (or with what is still up), and a later `close`
    /// can finish the job.
    fn close(&self, name: &str) -> Response<Done> {
        let mut users = Vec::new();
        let r = self.try_close(name, &mut users);
        if !users.is_empty() {
            tracing::info!("close {name} refused: still in use ({})", users.join("; "));
        }
        match r {
            Ok(()) => Response::ok(Done {}),
            Err(e @ VolumeError::Busy(_)) => Response::err(e.code(), e.to_string()),
            Err(e @ VolumeError::NotActive(_)) => Response::err(e.code(), e.to_string()),
            Err(e) => Response::err(e.code(), format!("close {name}: {e}")),
        }
    }

    /// [`Daemon::close`]; when the volume is in use, `users` says by what.
    fn try_close(&self, name: &str, users: &mut Vec<String>) -> Result<(), VolumeError> {
        let mut v = {
            let mut st = self.state();
            let Some(v) = st.volumes.remove(name) else {
                return Err(VolumeError::NotActive(name.to_string()));
            };
            st.closing
                .insert(name.to_string(), (v.devices(), v.status()));
            v
        };
        *users = v.lasting_users();
        let r = if users.is_empty() {
            v.close()
        } else {
            Err(VolumeError::Busy(name.to_string()))
        };
        let mut st = self.state();
        st.closing.remove(name);
        match r {
            Ok(()) => {
                drop(st);
                // Last reference to the engine: drops the crypt backend and its key slot.
                drop(v);
                self.mapper_records.forget(name);
                tracing::info!("closed {name}");
                Ok(())
            }
            Err(e) => {
                if !matches!(e, VolumeError::Busy(_)) {
                    tracing::error!("close {name} failed, volume kept: {e}");
                }
                st.volumes.insert(name.to_string(), v);
                Err(e)
            }
        }
    }

    /// Status of `name`, also while a `close` of it is under way.
    fn status_of(&self, name: &str) -> Option<VolumeStatus> {
        let st = self.state();
        st.volumes
            .get(name)
            .map(|v| v.status())
            .or_else(|| st.closing.get(name).map(|(_, s)| s.clone()))
    }

    /// Closes every volume; refuses (busy) if one is in use.
    fn close_all(&self) -> Response<Done> {
        let names: Vec<String> = self.state().volumes.keys().cloned().collect();
        let mut busy = Vec::new();
        for n in names {
            if let Response::Error { error, .. } = self.close(&n) {
                busy.push(format!("{n}: {error}"));
            }
        }
        if busy.is_empty() {
            Response::ok(Done {})
        } else {
            Response::err(ExitCode::Busy, format!("cannot close: {}", busy.join("; ")))
        }
    }

    /// After SIGTERM: closes every volume nobody uses; returns the others with their
    /// users.
    fn close_idle(&self) -> BTreeMap<String, Vec<String>> {
        let names: Vec<String> = self.state().volumes.keys().cloned().collect();
        let mut waiting = BTreeMap::new();
        for n in names {
            let mut users = Vec::new();
            if let Err(e) = self.try_close(&n, &mut users) {
                let why = match e {
                    VolumeError::Busy(_) if users.is_empty() => vec!["in use".to_string()],
                    VolumeError::Busy(_) => users,
                    VolumeError::NotActive(_) => continue,
                    e => vec![e.to_string()],
                };
                waiting.insert(n, why);
            }
        }
        waiting
    }

    /// `prepare_key`: a request keyring in our process keyring (see
    /// [`vmvault_proto::keyring::new_request_keyring`]), remembered by the connection.
    fn prepare_key(&self, conn: &mut ConnKeys) -> Response<KeyRingReply> {
        use std::sync::atomic::AtomicU64;
        static N: AtomicU64 = AtomicU64::new(0);
        if conn.rings.len() >= 8 {
            return Response::err(
                ExitCode::Busy,
                "too many prepared key rings on this connection",
            );
        }
        let desc = format!(
            "vmvaultd:req:{}:{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        );
        match vmvault_proto::keyring::new_request_keyring(&desc, REQUEST_KEYRING_TIMEOUT_S) {
            Ok(serial) => {
                conn.rings.push(serial);
                Response::ok(KeyRingReply { key_ring: serial })
            }
            Err(e) => Response::err(ExitCode::NoPermission, format!("prepare_key: {e}")),
        }
    }

    /// `open` over a connection: a `key_ring` must be one this connection prepared; it
    /// is invalidated after the import whatever the outcome.
    fn open_conn(
        &self,
        o: &OpenRequest,
        fd: Option<File>,
        conn: &mut ConnKeys,
    ) -> Response<VolumeStatus> {
        let key = crate::backend::KeySource::Keyring {
            serial: o.key_serial,
        };
        let Some(ring) = o.key_ring else {
            return map_reply(self.open(o, fd, &key), |(s, _)| s);
        };
        let Some(i) = conn.rings.iter().position(|&r| r == ring) else {
            return Response::err(
                ExitCode::WrongParameters,
                format!("key ring {ring} was not prepared on this connection"),
            );
        };
        conn.rings.swap_remove(i);
        let r = self.open(o, fd, &key);
        let _ = vmvault_proto::keyring::invalidate(ring);
        map_reply(r, |(s, _)| s)
    }

    /// `open_unlock`/`open_fd_unlock`: the vault unlocks the first keyslot the
    /// passphrase opens and the volume is keyed from that slot.
    fn open_unlock(
        &self,
        o: &OpenUnlockRequest,
        fd: Option<File>,
        rx: keyslots::Received,
    ) -> Response<UnlockedVolume> {
        let keyslots::Received { areas, passphrase } = rx;
        let cands = match keyslots::candidates(&o.keyslots, areas) {
            Ok(c) => c,
            Err(e) => return Response::err(ExitCode::WrongParameters, e.to_string()),
        };
        let key = crate::backend::KeySource::Unlock {
            keyslots: &cands,
            passphrase: &passphrase,
        };
        let r = self.open(&o.mapping(), fd, &key);
        drop(passphrase);
        map_reply(r, |(volume, keyslot)| UnlockedVolume {
            // Always set for an unlocked key; 0 only if the backend did not say.
            keyslot: keyslot.unwrap_or_default(),
            volume,
        })
    }

    /// Serves one request after the hello; returns the answer line (each command
    /// encodes its own reply type) and the bytes that follow it (the area of
    /// `seal_keyslot`, else none). `rx` is the request's payload, already read.
    fn handle(
        &self,
        req: Request,
        mut fds: Vec<OwnedFd>,
        conn: &mut ConnKeys,
        rx: Option<keyslots::Received>,
    ) -> (String, Vec<u8>) {
        let (rx_unlock, rx_seal) = match &req {
            Request::SealKeyslot { .. } => (None, rx),
            _ => (rx, None),
        };
        let payload_missing = || {
            encode(&refusal(
                ExitCode::WrongParameters,
                "internal error: the request's payload was not read",
            ))
        };
        match req {
            Request::OpenUnlock(o) => {
                let Some(rx) = rx_unlock else {
                    return (payload_missing(), Vec::new());
                };
                (encode(&self.open_unlock(&o, None, rx)), Vec::new())
            }
            Request::OpenFdUnlock(o) => {
                let Some(rx) = rx_unlock else {
                    return (payload_missing(), Vec::new());
                };
                if fds.len() != 1 {
                    return (
                        encode(&refusal(
                            ExitCode::WrongParameters,
                            format!(
                                "open_fd_unlock: expected one backing descriptor with the request, got {}",
                                fds.len()
                            ),
                        )),
                        Vec::new(),
                    );
                }
                let fd = fds.pop().map(File::from);
                (encode(&self.open_unlock(&o, fd, rx)), Vec::new())
            }
            Request::GenerateKey {
                cipher,
                key_size,
                backend,
            } => (
                encode(
                    &conn
                        .handles
                        .generate(&self.vaults, &cipher, key_size, backend),
                ),
                Vec::new(),
            ),
            Request::UnlockKeyslot {
                cipher,
                backend,
                keyslot,
                ..
            } => {
                let Some(rx) = rx_unlock else {
                    return (payload_missing(), Vec::new());
                };
                let r = conn
                    .handles
                    .unlock(&self.vaults, &cipher, backend, &keyslot, rx);
                (encode(&r), Vec::new())
            }
            Request::SealKeyslot {
                handle, keyslot, ..
            } => {
                let Some(rx) = rx_seal else {
                    return (payload_missing(), Vec::new());
                };
                let (r, area) = conn.handles.seal(handle, &keyslot, rx);
                (encode(&r), area)
            }
            Request::KeyDigest { handle, keyslot } => {
                (encode(&conn.handles.digest(handle, &keyslot)), Vec::new())
            }
            Request::DropKey { handle } => (encode(&conn.handles.drop_key(handle)), Vec::new()),
            req => (self.handle_plain(req, fds, conn), Vec::new()),
        }
    }

    /// The requests without payload or trailing bytes.
    fn handle_plain(&self, req: Request, mut fds: Vec<OwnedFd>, conn: &mut ConnKeys) -> String {
        match req {
            Request::Hello { .. } => encode(&refusal(
                ExitCode::WrongParameters,
                "hello was already said on this connection",
            )),
            Request::PrepareKey {} => encode(&self.prepare_key(conn)),
            Request::Open(o) => encode(&self.open_conn(&o, None, conn)),
            Request::OpenFd(o) => {
                if fds.len() != 1 {
                    return encode(&refusal(
                        ExitCode::WrongParameters,
                        format!(
                            "open_fd: expected one backing descriptor with the request, got {}",
                            fds.len()
                        ),
                    ));
                }
                let fd = fds.pop().map(File::from);
                encode(&self.open_conn(&o, fd, conn))
            }
            Request::Close { name } => encode(&self.close(&name)),
            Request::Status { name } => encode(&match self.status_of(&name) {
                Some(status) => Response::ok(status),
                None => {
                    let e = VolumeError::NotActive(name.to_string());
                    Response::err(e.code(), e.to_string())
                }
            }),
            Request::List {} => {
                let st = self.state();
                let mut volumes: Vec<_> = st
                    .volumes
                    .values()
                    .map(|v| v.status())
                    .chain(st.closing.values().map(|(_, s)| s.clone()))
                    .collect();
                drop(st);
                volumes.sort_by(|a, b| a.name.cmp(&b.name));
                encode(&Response::ok(ListReply { volumes }))
            }
            Request::Ping {} => encode(&Response::ok(PingReply {
                pid: std::process::id(),
            })),
            Request::SwitchRoot { path } => encode(&match activation::switch_root(&path) {
                Ok(()) => {
                    tracing::info!(
                        "switched root to {}: serving {} volume(s) from there",
                        path.display(),
                        self.state().volumes.len()
                    );
                    Response::ok(Done {})
                }
                Err(e) => {
                    tracing::error!("{e}");
                    let code = match e {
                        activation::ActivationError::BadRoot { .. } => ExitCode::WrongParameters,
                        _ => ExitCode::NoPermission,
                    };
                    Response::err(code, e.to_string())
                }
            }),
            Request::Shutdown {} => {
                let r = self.close_all();
                if matches!(r, Response::Ok { .. }) {
                    self.stop.store(true, Ordering::SeqCst);
                }
                encode(&r)
            }
            Request::OpenUnlock(_)
            | Request::OpenFdUnlock(_)
            | Request::GenerateKey { .. }
            | Request::UnlockKeyslot { .. }
            | Request::SealKeyslot { .. }
            | Request::KeyDigest { .. }
            | Request::DropKey { .. } => encode(&refusal(
                ExitCode::WrongParameters,
                "internal error: keyslot command routed to the plain handler",
            )),
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
                let r = refusal(
                    ExitCode::NoPermission,
                    format!("vmvaultd serves root only (peer uid {uid})"),
                );
                let _ = writeln!(w, "{}", encode(&r));
                return;
            }
            Err(e) => {
                tracing::error!("SO_PEERCRED: {e}");
                return;
            }
        }
        let mut reader = conn::ConnReader::new(&stream);
        let mut conn = ConnKeys::default();
        let mut hello = false;
        loop {
            let (line, fds) = match reader.next_line() {
                conn::Next::Line(l, fds) => (l, fds),
                conn::Next::TooLong => {
                    let r = refusal(
                        ExitCode::WrongParameters,
                        format!(
                            "request line longer than {} bytes: closing the connection",
                            conn::MAX_LINE
                        ),
                    );
                    let _ = writeln!(w, "{}", encode(&r));
                    let _ = stream.shutdown(std::net::Shutdown::Both);
                    break;
                }
                conn::Next::Eof | conn::Next::Err(_) => break,
            };
            if line.iter().all(|b| b.is_ascii_whitespace()) {
                continue;
            }
            let req = serde_json::from_slice::<Request>(&line);
            // A request with a payload: check its lengths and read it before anything
            // else; if that fails the stream is out of step and the connection ends.
            let mut rx = None;
            if let (true, Ok(r)) = (hello, &req) {
                match keyslots::payload_of(r) {
                    None => {}
                    Some(Err(e)) => {
                        let r = refusal(
                            ExitCode::WrongParameters,
                            format!("bad request: {e}: closing the connection"),
                        );
                        let _ = writeln!(w, "{}", encode(&r));
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    Some(Ok(p)) => match keyslots::read_payload(&mut reader, &p) {
                        Ok(got) => rx = Some(got),
                        Err(e) => {
                            tracing::warn!("control connection: reading a request payload: {e}");
                            break;
                        }
                    },
                }
            }
            let mut trailer = Vec::new();
            let out = match (hello, req) {
                (true, Ok(req)) => {
                    let (line, t) = self.handle(req, fds, &mut conn, rx);
                    trailer = t;
                    line
                }
                (false, Ok(Request::Hello { version })) if version == VERSION => {
                    hello = true;
                    encode(&Response::ok(HelloReply {
                        version: VERSION,
                        pid: std::process::id(),
                    }))
                }
                (false, Ok(Request::Hello { version })) => {
                    let r = refusal(
                        ExitCode::WrongParameters,
                        format!(
                            "protocol version {version} is not spoken by this vmvaultd \
                             (version {VERSION}): client and daemon come from different builds"
                        ),
                    );
                    let _ = writeln!(w, "{}", encode(&r));
                    break;
                }
                (false, _) => {
                    let r = refusal(
                        ExitCode::WrongParameters,
                        format!(
                            "the first request on a connection must be \
                             {{\"cmd\":\"hello\",\"version\":{VERSION}}}: closing the connection"
                        ),
                    );
                    let _ = writeln!(w, "{}", encode(&r));
                    break;
                }
                (true, Err(e)) => {
                    // A payload may follow a line we cannot read: never take it for
                    // request lines (it may hold a passphrase).
                    let cmd = serde_json::from_slice::<serde_json::Value>(&line)
                        .ok()
                        .and_then(|v| v.get("cmd").and_then(|c| c.as_str()).map(String::from));
                    if cmd.is_some_and(|c| keyslots::PAYLOAD_COMMANDS.contains(&c.as_str())) {
                        let r = refusal(
                            ExitCode::WrongParameters,
                            format!("bad request: {e}: closing the connection"),
                        );
                        let _ = writeln!(w, "{}", encode(&r));
                        let _ = stream.shutdown(std::net::Shutdown::Both);
                        break;
                    }
                    encode(&refusal(
                        ExitCode::WrongParameters,
                        format!("bad request: {e}"),
                    ))
                }
            };
            if writeln!(w, "{out}").is_err() {
                break;
            }
            if !trailer.is_empty() && w.write_all(&trailer).is_err() {
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

/// Write end of the SIGTERM self-pipe (-1: none).
static SIGNAL_PIPE: AtomicI32 = AtomicI32::new(-1);

extern "C" fn on_terminate(_sig: libc::c_int) {
    // SAFETY: only async-signal-safe calls (write) on a pipe we own; errno is restored
    // for the interrupted code.
    unsafe {
        let saved = *libc::__errno_location();
        let fd = SIGNAL_PIPE.load(Ordering::Relaxed);
        if fd >= 0 {
            let _ = libc::write(fd, b"t".as_ptr().cast(), 1);
        }
        *libc::__errno_location() = saved;
    }
}

/// Installs the SIGTERM/SIGINT handler; returns the read end of its self-pipe.
fn terminate_pipe() -> Result<OwnedFd, DaemonError> {
    use std::os::fd::FromRawFd;
    let mut p = [-1; 2];
    let sys = |what: &str| {
        DaemonError::Host(host::HostError::Sys {
            what: what.into(),
            source: std::io::Error::last_os_error(),
        })
    };
    // SAFETY: pipe2 writes two descriptors into `p`.
    if unsafe { libc::pipe2(p.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
        return Err(sys("pipe2"));
    }
    // SAFETY: both descriptors were just created and are owned here only.
    let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(p[0]), OwnedFd::from_raw_fd(p[1])) };
    // The write end lives as long as the process (the handler may run at any time).
    SIGNAL_PIPE.store(std::os::fd::IntoRawFd::into_raw_fd(wr), Ordering::SeqCst);
    for sig in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction with a handler that is async-signal-safe.
        let r = unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_terminate as extern "C" fn(libc::c_int) as usize;
            sa.sa_flags = libc::SA_RESTART;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(sig, &sa, std::ptr::null_mut())
        };
        if r != 0 {
            return Err(sys("sigaction"));
        }
    }
    Ok(rd)
}

/// Checks the run directory before trusting it: creates it (mode 0700) if missing;
/// refuses a symbolic link, a non-directory, one not owned by root, or one that group or
/// others may write.
pub fn check_run_dir(dir: &Path) -> Result<(), host::HostError> {
    use std::os::unix::fs::{DirBuilderExt, MetadataExt};
    let bad = |why: String| host::HostError::RunDir {
        dir: dir.to_path_buf(),
        why,
    };
    match std::fs::symlink_metadata(dir) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .map_err(|source| host::HostError::Sys {
                    what: format!("create {}", dir.display()),
                    source,
                })?;
        }
        Err(source) => {
            return Err(host::HostError::Sys {
                what: format!("stat {}", dir.display()),
                source,
            })
        }
        Ok(_) => {}
    }
    let md = std::fs::symlink_metadata(dir).map_err(|source| host::HostError::Sys {
        what: format!("stat {}", dir.display()),
        source,
    })?;
    if md.file_type().is_symlink() {
        return Err(bad("it is a symbolic link".into()));
    }
    if !md.is_dir() {
        return Err(bad("it is not a directory".into()));
    }
    if md.uid() != 0 {
        return Err(bad(format!("it is owned by uid {}, not root", md.uid())));
    }
    if md.mode() & 0o022 != 0 {
        return Err(bad(format!(
            "group or others may write it (mode {:04o}; chmod go-w it)",
            md.mode() & 0o7777
        )));
    }
    Ok(())
}

/// Whether this process still maps vault memory: KVM guest memory and data windows
/// (`memfd:vmvault-*`), the soft backend's `memfd_secret` pages.
fn vault_memory_mapped() -> bool {
    std::fs::read_to_string("/proc/self/maps").is_ok_and(|m| {
        m.lines()
            .any(|l| l.contains("/memfd:vmvault-") || l.contains("/secretmem"))
    })
}

/// Runs the daemon until `shutdown`, on a control socket of its own. Blocks.
pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    run_with(cfg, None)
}

/// Runs the daemon until `shutdown`, serving `activated` (a listener systemd passed, see
/// [`activation::take_listener`]) when given instead of binding `<run-dir>/control`.
/// Blocks.
pub fn run_with(cfg: DaemonConfig, activated: Option<UnixListener>) -> Result<(), DaemonError> {
    let run_dir = cfg.run_dir.clone();
    check_run_dir(&run_dir)?;
    let _ = std::fs::set_permissions(&run_dir, std::fs::Permissions::from_mode(0o700));
    let sig_rd = terminate_pipe()?;
    let _lock = host::PidLock::acquire(&run_dir)?;
    for w in host::harden(cfg.mlock) {
        tracing::warn!("{w}");
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
        tracing::info!("{l}");
    }
    for l in crate::frontend::clean_stale() {
        tracing::info!("{l}");
    }
    for l in host::clean_stale(&mnt_root) {
        tracing::info!("{l}");
    }
    let marker = run_dir.join(activation::INITRD_MARKER);
    // We hold the run directory's lock: a marker left by a dead initramfs daemon is
    // stale (it would keep vmvaultd.socket from ever starting).
    if !cfg.initrd && std::fs::remove_file(&marker).is_ok() {
        tracing::info!("removed the stale marker {}", marker.display());
    }
    if cfg.initrd {
        std::fs::write(&marker, format!("{}\n", std::process::id())).map_err(|source| {
            host::HostError::Sys {
                what: format!("write {}", marker.display()),
                source,
            }
        })?;
    }
    let sock = socket_path(&run_dir);
    let socket_activated = activated.is_some();
    let listener = match activated {
        Some(l) => l,
        None => {
            let _ = std::fs::remove_file(&sock);
            let l = UnixListener::bind(&sock).map_err(|source| DaemonError::Socket {
                path: sock.clone(),
                source,
            })?;
            std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o600)).map_err(
                |source| DaemonError::Socket {
                    path: sock.clone(),
                    source,
                },
            )?;
            l
        }
    };
    let vaults = crate::vault::VaultPool::with_window(cfg.vault_vcpus, cfg.window_size)
        .with_tuning(cfg.vault_run, cfg.vault_tuning.clone());
    let d = Arc::new(Daemon {
        vaults,
        cfg,
        mnt_root,
        mapper_records,
        state: Mutex::new(State::default()),
        stop: AtomicBool::new(false),
        terminating: AtomicBool::new(false),
    });
    tracing::info!(
        "pid {} serving {}{}{}",
        std::process::id(),
        sock.display(),
        if socket_activated {
            " (socket from systemd)"
        } else {
            ""
        },
        if d.cfg.initrd {
            " (initramfs mode)"
        } else {
            ""
        }
    );
    listener
        .set_nonblocking(true)
        .map_err(|source| DaemonError::Socket {
            path: sock.clone(),
            source,
        })?;
    let mut logged: BTreeMap<String, Vec<String>> = BTreeMap::new();
    loop {
        let terminating = d.terminating.load(Ordering::SeqCst);
        let mut fds = [
            libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: std::os::fd::AsRawFd::as_raw_fd(&sig_rd),
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        // SAFETY: poll on two pollfds we own, for the length we pass.
        unsafe { libc::poll(fds.as_mut_ptr(), 2, if terminating { 1000 } else { -1 }) };
        if fds[1].revents != 0 {
            let mut b = [0u8; 16];
            // SAFETY: reading into a local buffer from our nonblocking pipe.
            while unsafe { libc::read(fds[1].fd, b.as_mut_ptr().cast(), b.len()) } > 0 {}
            if !d.terminating.swap(true, Ordering::SeqCst) {
                tracing::info!("SIGTERM: closing idle volumes; exiting once no volume is in use");
            }
        }
        loop {
            match listener.accept() {
                Ok((conn, _)) => {
                    let _ = conn.set_nonblocking(false);
                    let d2 = d.clone();
                    let _ = std::thread::Builder::new()
                        .name("vmvaultd-conn".into())
                        .spawn(move || d2.serve_conn(conn));
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => break,
            }
        }
        if d.stop.load(Ordering::SeqCst) {
            break;
        }
        if d.terminating.load(Ordering::SeqCst) {
            let waiting = d.close_idle();
            let in_flight = {
                let st = d.state();
                !st.opening.is_empty() || !st.closing.is_empty()
            };
            if waiting.is_empty() && !in_flight {
                // The vaults went with their last volume: their memory is wiped and
                // unmapped (vmvault-hv zeroes guest memory and key pages on drop).
                if vault_memory_mapped() {
                    tracing::warn!("vault memory is still mapped at exit");
                } else {
                    tracing::info!("every volume closed; vault memory wiped");
                }
                break;
            }
            if waiting != logged {
                for (name, users) in &waiting {
                    tracing::info!("waiting for {name}: still in use ({})", users.join("; "));
                }
                logged = waiting;
            }
        }
    }
    // A socket systemd passed stays: it is systemd's to remove.
    if !socket_activated {
        let _ = std::fs::remove_file(&sock);
    }
    if d.cfg.initrd {
        let _ = std::fs::remove_file(&marker);
    }
    tracing::info!("shut down");
    Ok(())
}

/// One answer line.
/// `r` with its reply mapped by `f`.
fn map_reply<T, U>(r: Response<T>, f: impl FnOnce(T) -> U) -> Response<U> {
    match r {
        Response::Ok { reply, warnings } => Response::Ok {
            reply: f(reply),
            warnings,
        },
        Response::Error { code, error } => Response::Error { code, error },
    }
}

fn encode<T: Serialize>(r: &Response<T>) -> String {
    serde_json::to_string(r).unwrap_or_else(|e| {
        format!(
            r#"{{"result":"error","code":1,"error":"vmvaultd cannot encode its answer: {}"}}"#,
            e.to_string().replace(['"', '\\'], "'")
        )
    })
}

#[cfg(test)]
mod vcpu_default_tests {
    use super::default_vault_vcpus;

    #[test]
    fn half_the_cpus_but_two_on_two() {
        assert_eq!(default_vault_vcpus(1), 1);
        assert_eq!(default_vault_vcpus(2), 2);
        assert_eq!(default_vault_vcpus(3), 2);
        assert_eq!(default_vault_vcpus(4), 2);
        assert_eq!(default_vault_vcpus(16), 8);
    }
}
