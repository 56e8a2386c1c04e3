//! The `ublk` frontend: the plaintext as a ublk block device (`/dev/ublkbN`) served by
//! this process through io_uring (the `libublk` crate), without FUSE or a loop device.
//!
//! One server thread per volume owns the control device (`UBLK_U_CMD_ADD_DEV`, params,
//! `START_DEV`) and runs [`libublk::ctrl::UblkCtrl::run_target`], which spawns one queue
//! thread per hardware queue (pinned to the queue's CPUs by libublk, `PR_SET_IO_FLUSHER`
//! set). Each queue thread serves its requests through the same [`IoEngine`] as the FUSE
//! frontend: read, write, flush (`fdatasync` of the backing file), discard (hole punch,
//! only with `allow_discards`) and write-zeroes (encrypted zeros, as dm-crypt).
//!
//! The device is created *without* `UBLK_F_USER_RECOVERY`: if the daemon dies, the
//! kernel's io_uring cancellation aborts the queues and the driver stops the disk (I/O
//! fails with `EIO` instead of hanging); a later vmvaultd deletes the leftover device
//! ([`clean_stale`]).

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::sync::Arc;
use std::time::Duration;

use libublk::ctrl::{UblkCtrl, UblkCtrlBuilder};
use libublk::helpers::IoBuf;
use libublk::io::{BufDescList, UblkDev, UblkIOCtx, UblkQueue};
use libublk::{sys, BufDesc, UblkFlags, UblkIORes};

use crate::io::IoEngine;

/// Target name in the driver's and libublk's records (`/run/ublksrvd/N.json`).
pub const TARGET_NAME: &str = "vmvault";

/// Largest request the kernel sends us (bytes); the per-tag buffer size.
const IO_BUF_BYTES: u32 = 512 * 1024;
/// Requests in flight per queue.
const QUEUE_DEPTH: u16 = 32;
/// Largest write-zeroes / discard request (512-byte sectors).
const MAX_ZEROES_SECTORS: u32 = 16 * 1024;

/// Errors of the ublk frontend.
#[derive(Debug, thiserror::Error)]
pub enum UblkError {
    /// `/dev/ublk-control` is missing (no `ublk_drv`).
    #[error("ublk is not available: /dev/ublk-control is missing (modprobe ublk_drv)")]
    Unavailable,
    /// The driver refused a control command while the device was added or started.
    #[error("ublk: {what}: {source}")]
    Call {
        /// The command (`ADD_DEV`, `START_DEV`).
        what: &'static str,
        /// The driver's (or libublk's) error.
        #[source]
        source: CallError,
    },
    /// The thread serving the device could not be started.
    #[error("ublk: spawn server thread: {0}")]
    Spawn(#[source] std::io::Error),
    /// The server thread ended without saying whether the device started.
    #[error("ublk: server thread ended early")]
    ServerEnded,
    /// The device was added but the kernel shows no disk for it.
    #[error("ublk: /sys/block/ublkb{0} is missing")]
    NoDisk(u32),
    /// `STOP_DEV` failed; the device still serves.
    #[error("ublk: stop /dev/ublkb{id}: STOP_DEV: {source}")]
    Stop {
        /// Device id.
        id: u32,
        /// The driver's (or libublk's) error.
        #[source]
        source: CallError,
    },
}

/// Why a libublk call failed: the OS error where libublk carries an errno or an I/O
/// error, else libublk's own error.
#[derive(Debug, thiserror::Error)]
pub enum CallError {
    /// The driver or io_uring returned this errno, or an I/O call failed.
    #[error(transparent)]
    Os(std::io::Error),
    /// Any other libublk failure (json, queue down, invalid value, timeout).
    #[error(transparent)]
    Ublk(libublk::UblkError),
}

impl From<libublk::UblkError> for CallError {
    fn from(e: libublk::UblkError) -> Self {
        match e {
            libublk::UblkError::OtherError(c) | libublk::UblkError::UringIOError(c) => {
                CallError::Os(std::io::Error::from_raw_os_error(-c))
            }
            libublk::UblkError::IOError(e) => CallError::Os(e),
            e => CallError::Ublk(e),
        }
    }
}

/// Whether ublk can be used: `/dev/ublk-control` exists. When it does not, one cheap
/// attempt per process is made to load `ublk_drv` (only if the module file exists for
/// this kernel).
pub fn available() -> bool {
    use std::sync::atomic::{AtomicBool, Ordering};
    static TRIED_MODPROBE: AtomicBool = AtomicBool::new(false);
    if Path::new("/dev/ublk-control").exists() {
        return true;
    }
    if TRIED_MODPROBE.swap(true, Ordering::SeqCst) || !module_installed("ublk_drv") {
        return false;
    }
    let _ = std::process::Command::new("modprobe")
        .arg("-q")
        .arg("ublk_drv")
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .status();
    for _ in 0..50 {
        if Path::new("/dev/ublk-control").exists() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    false
}

/// Whether `/lib/modules/$(uname -r)/modules.dep` names `name` (so `modprobe` can work).
fn module_installed(name: &str) -> bool {
    let Ok(rel) = std::fs::read_to_string("/proc/sys/kernel/osrelease") else {
        return false;
    };
    let Ok(dep) = std::fs::read_to_string(format!("/lib/modules/{}/modules.dep", rel.trim()))
    else {
        return false;
    };
    let needle = format!("/{name}.ko");
    dep.lines()
        .any(|l| l.split(':').next().is_some_and(|m| m.contains(&needle)))
}

/// How to shape the device.
#[derive(Clone, Copy, Debug)]
pub struct UblkOptions {
    /// Hardware queues (one serving thread each).
    pub queues: u16,
    /// Requests in flight per queue.
    pub depth: u16,
    /// Accept discards (the engine punches holes; only with `allow_discards`).
    pub discards: bool,
}

impl Default for UblkOptions {
    /// One queue per CPU up to 4 (each served by its own thread), 32 requests each.
    fn default() -> Self {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        UblkOptions {
            queues: cpus.clamp(1, 4) as u16,
            depth: QUEUE_DEPTH,
            discards: false,
        }
    }
}

/// A started ublk device serving one volume.
#[derive(Debug)]
pub struct UblkDevice {
    id: u32,
    path: PathBuf,
    dev: (u32, u32),
    server: Option<std::thread::JoinHandle<()>>,
}

/// `what: error` for log lines.
fn ublk_err(what: &str, e: libublk::UblkError) -> String {
    format!("{what}: {}", CallError::from(e))
}

impl UblkDevice {
    /// Adds and starts a ublk device serving `engine`. The logical block size is the
    /// engine's sector size; a read-only engine gives a read-only disk. Returns once
    /// `/dev/ublkbN` exists.
    pub fn start(engine: Arc<IoEngine>, opts: UblkOptions) -> Result<Self, UblkError> {
        if !Path::new("/dev/ublk-control").exists() {
            return Err(UblkError::Unavailable);
        }
        let (tx, rx) = mpsc::channel::<Result<u32, UblkError>>();
        let server = std::thread::Builder::new()
            .name("vmvault-ublk".into())
            .spawn(move || serve(engine, opts, tx))
            .map_err(UblkError::Spawn)?;
        let id = match rx.recv() {
            Ok(Ok(id)) => id,
            Ok(Err(e)) => {
                let _ = server.join();
                return Err(e);
            }
            Err(_) => {
                let _ = server.join();
                return Err(UblkError::ServerEnded);
            }
        };
        let path = PathBuf::from(format!("/dev/ublkb{id}"));
        let mut dev = UblkDevice {
            id,
            path,
            dev: (0, 0),
            server: Some(server),
        };
        match disk_devt(id) {
            Some(d) => dev.dev = d,
            None => {
                let _ = dev.stop_inner();
                return Err(UblkError::NoDisk(id));
            }
        }
        // udev (or devtmpfs) makes the node; make it ourselves if neither has.
        for _ in 0..500 {
            if dev.path.exists() {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        if !dev.path.exists() {
            let _ = super::mknod_block(&dev.path, dev.dev.0, dev.dev.1);
        }
        Ok(dev)
    }

    /// The device id N of `/dev/ublkbN`.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// The block device path, `/dev/ublkbN`.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// `(major, minor)` of the block device.
    pub fn dev_numbers(&self) -> (u32, u32) {
        self.dev
    }

    /// Stops and deletes the device: in-flight requests complete, the queue threads
    /// end, and the server thread deletes the device. On failure the device still
    /// serves, and `stop` may be called again.
    pub fn stop(&mut self) -> Result<(), UblkError> {
        self.stop_inner()
    }

    fn stop_inner(&mut self) -> Result<(), UblkError> {
        let Some(server) = self.server.take() else {
            return Ok(());
        };
        // A control handle of our own (libublk's control ring is per thread): STOP_DEV.
        let stopped = UblkCtrl::new_simple(self.id as i32)
            .and_then(|c| c.kill_dev())
            .map_err(CallError::from);
        if let Err(source) = stopped {
            // Leave the server running: the device still serves the volume.
            self.server = Some(server);
            return Err(UblkError::Stop {
                id: self.id,
                source,
            });
        }
        let _ = server.join();
        Ok(())
    }
}

impl super::BlockFrontend for UblkDevice {
    fn kind(&self) -> super::FrontendKind {
        super::FrontendKind::Ublk
    }

    fn device(&self) -> &Path {
        &self.path
    }

    fn dev_numbers(&self) -> (u32, u32) {
        self.dev
    }

    fn direct_io(&self) -> bool {
        false
    }

    /// Stops the device; it is kept (still serving) if that fails.
    fn close(mut self: Box<Self>) -> Result<(), super::CloseFailed> {
        match self.stop() {
            Ok(()) => Ok(()),
            Err(e) => Err(super::CloseFailed {
                kept: Some(self),
                error: e.into(),
            }),
        }
    }
}

impl Drop for UblkDevice {
    fn drop(&mut self) {
        let _ = self.stop_inner();
    }
}

/// `(major, minor)` of `/sys/block/ublkbN/dev`.
fn disk_devt(id: u32) -> Option<(u32, u32)> {
    let s = std::fs::read_to_string(format!("/sys/block/ublkb{id}/dev")).ok()?;
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Device parameters: size, logical block = the volume's sector size, read-only flag,
/// a volatile cache (so flushes reach us), discard/write-zeroes limits.
fn params(engine: &IoEngine, discards: bool, max_io_buf_bytes: u32) -> sys::ublk_params {
    let ss = engine.sector_size();
    let lbs = ss.trailing_zeros() as u8;
    let mut attrs = sys::UBLK_ATTR_VOLATILE_CACHE;
    if engine.readonly() {
        attrs |= sys::UBLK_ATTR_READ_ONLY;
    }
    let mut p = sys::ublk_params {
        len: std::mem::size_of::<sys::ublk_params>() as u32,
        types: sys::UBLK_PARAM_TYPE_BASIC,
        basic: sys::ublk_param_basic {
            attrs,
            logical_bs_shift: lbs,
            physical_bs_shift: lbs.max(12),
            io_opt_shift: lbs.max(12),
            io_min_shift: lbs,
            max_sectors: max_io_buf_bytes >> 9,
            dev_sectors: engine.size() >> 9,
            ..Default::default()
        },
        ..Default::default()
    };
    if !engine.readonly() {
        p.types |= sys::UBLK_PARAM_TYPE_DISCARD;
        p.discard = sys::ublk_param_discard {
            discard_alignment: 0,
            discard_granularity: ss,
            max_discard_sectors: if discards { MAX_ZEROES_SECTORS } else { 0 },
            max_write_zeroes_sectors: MAX_ZEROES_SECTORS,
            max_discard_segments: 1,
            ..Default::default()
        };
    }
    p
}

/// The server thread: add the device, run the queues until the device stops, delete it
/// (dropping the control handle deletes a device it added).
fn serve(engine: Arc<IoEngine>, opts: UblkOptions, tx: mpsc::Sender<Result<u32, UblkError>>) {
    let ctrl = match UblkCtrlBuilder::default()
        .name(TARGET_NAME)
        .id(-1)
        .nr_queues(opts.queues.max(1))
        .depth(opts.depth.max(1))
        .io_buf_bytes(IO_BUF_BYTES)
        .ctrl_flags(0)
        .dev_flags(UblkFlags::UBLK_DEV_F_ADD_DEV)
        .build()
    {
        Ok(c) => c,
        Err(e) => {
            let _ = tx.send(Err(UblkError::Call {
                what: "ADD_DEV",
                source: e.into(),
            }));
            return;
        }
    };
    let e2 = engine.clone();
    let tgt_init = move |dev: &mut UblkDev| {
        dev.set_default_params(e2.size());
        dev.tgt.params = params(&e2, opts.discards, dev.dev_info.max_io_buf_bytes);
        Ok(())
    };
    let q_engine = engine.clone();
    let q_fn = move |qid: u16, dev: &UblkDev| serve_queue(qid, dev, &q_engine);
    let started = tx.clone();
    let device_fn = move |c: &UblkCtrl| {
        let _ = started.send(Ok(c.dev_info().dev_id));
    };
    if let Err(e) = ctrl.run_target(tgt_init, q_fn, device_fn) {
        // If the device had started, the opener already has its id and ignores this.
        let _ = tx.send(Err(UblkError::Call {
            what: "START_DEV",
            source: e.into(),
        }));
    }
    drop(ctrl);
}

/// One queue: fetch requests, serve each through the engine, commit, until the device
/// stops (the driver aborts the fetches).
fn serve_queue(qid: u16, dev: &UblkDev, engine: &IoEngine) {
    let bufs: Vec<IoBuf<u8>> = dev.alloc_queue_io_bufs();
    let queue = match UblkQueue::new(qid, dev)
        .and_then(|q| q.submit_fetch_commands_unified(BufDescList::Slices(Some(&bufs))))
    {
        Ok(q) => q,
        Err(e) => {
            tracing::error!("ublk queue {qid}: {}", ublk_err("fetch", e));
            return;
        }
    };
    let dev_id = dev.dev_info.dev_id as i32;
    let handler = &|q: &UblkQueue, tag: u16, _io: &UblkIOCtx| {
        let buf = &bufs[tag as usize];
        // SAFETY: the buffer of `tag` belongs to this thread between the completion of
        // its fetch and our commit below; the kernel copies to/from it only while it
        // owns the tag. `buf` stays allocated for the queue's whole life.
        let data = unsafe { std::slice::from_raw_parts_mut(buf.as_mut_ptr(), buf.len()) };
        let res = handle(engine, q.get_iod(tag), data, dev_id);
        let _ = q.complete_io_cmd_unified(
            tag,
            BufDesc::Slice(buf.as_slice()),
            Ok(UblkIORes::Result(res)),
        );
    };
    // libublk's loop returns on any error of io_uring_enter, also on EINTR: a signal that
    // reaches this thread (systemd-shutdown's `kill(-1, SIGSTOP)` and `SIGCONT`, which
    // spare no process, not even the root's @vmvaultd; a SIGTERM this thread happens to
    // take) would end the queue while the device lives: the requests of this hardware
    // queue then wait forever (this thread hangs dropping the queue's ring), or, once
    // every queue has returned, the server thread deletes the device under its users
    // (I/O errors on every request). Serve on until the driver stops the queue.
    let mut early_returns = 0u64;
    loop {
        queue.wait_and_handle_io(handler);
        if queue.is_stopping() {
            break;
        }
        early_returns += 1;
        if early_returns <= 8 || early_returns.is_multiple_of(1000) {
            tracing::info!(
                "/dev/ublkb{dev_id} queue {qid}: the wait was interrupted ({early_returns} \
                 times so far); serving on"
            );
        }
        // No busy loop should the error persist.
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

/// Failed requests logged so far (all devices): the first [`LOGGED_ERRORS`] are logged,
/// then one in 1000, so that a failing volume cannot flood the log.
static ERRORS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
/// How many failed requests are logged one by one.
const LOGGED_ERRORS: u64 = 32;

/// Serves one request; returns the bytes done or `-errno`. A failure is logged (an error
/// from the backing file or the vault is otherwise only an `I/O error` in the kernel log).
fn handle(engine: &IoEngine, iod: &sys::ublksrv_io_desc, buf: &mut [u8], dev_id: i32) -> i32 {
    let op = iod.op_flags & 0xff;
    let off = iod.start_sector << 9;
    let len = (iod.nr_sectors as u64) << 9;
    let err = |e: crate::io::IoError| {
        let n = ERRORS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if n < LOGGED_ERRORS || n.is_multiple_of(1000) {
            tracing::error!(
                "/dev/ublkb{dev_id}: request op {op} at byte {off} ({len} bytes) failed: {e} \
                 ({} failed requests so far)",
                n + 1
            );
        }
        -e.errno()
    };
    match op {
        sys::UBLK_IO_OP_READ => {
            let Some(dst) = buf.get_mut(..len as usize) else {
                return -libc::EINVAL;
            };
            match engine.read_into(off, dst) {
                Ok(n) if n as u64 == len => len as i32,
                Ok(_) => -libc::EIO,
                Err(e) => err(e),
            }
        }
        sys::UBLK_IO_OP_WRITE => {
            let Some(src) = buf.get(..len as usize) else {
                return -libc::EINVAL;
            };
            match engine.write(off, src) {
                Ok(n) if n as u64 == len => len as i32,
                Ok(_) => -libc::ENOSPC,
                Err(e) => err(e),
            }
        }
        sys::UBLK_IO_OP_FLUSH => engine.flush().map_or_else(err, |()| 0),
        sys::UBLK_IO_OP_DISCARD => engine.discard(off, len).map_or_else(err, |()| 0),
        sys::UBLK_IO_OP_WRITE_ZEROES => match engine.write_zeroes(off, len) {
            Ok(n) if n == len => 0,
            Ok(_) => -libc::ENOSPC,
            Err(e) => err(e),
        },
        _ => -libc::EOPNOTSUPP,
    }
}

/// Deletes ublk devices of vmvault targets whose server is gone (a vmvaultd that died):
/// the kernel has stopped their disks, but the ids stay taken until `DEL_DEV`.
pub fn clean_stale() -> Vec<String> {
    let mut log = Vec::new();
    let Ok(rd) = std::fs::read_dir("/sys/class/ublk-char") else {
        return log;
    };
    for e in rd.flatten() {
        let Some(id) = e
            .file_name()
            .to_str()
            .and_then(|s| s.strip_prefix("ublkc"))
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        let Ok(c) = UblkCtrl::new_simple(id) else {
            continue;
        };
        let info = c.dev_info();
        let pid = info.ublksrv_pid;
        let alive = pid > 0 && Path::new(&format!("/proc/{pid}")).exists();
        let ours = c
            .get_target_type_from_json()
            .is_ok_and(|t| t == TARGET_NAME);
        if ours && !alive {
            // DEL_DEV waits until the disk is released: a disk still held (a dm device
            // over it that could not be removed) would block this start-up for good.
            let held = std::fs::read_dir(format!("/sys/block/ublkb{id}/holders"))
                .is_ok_and(|mut d| d.next().is_some());
            let del = if held { c.del_dev_async() } else { c.del_dev() };
            match del {
                Ok(_) => log.push(format!(
                    "deleted stale /dev/ublkb{id} (server pid {pid} gone)"
                )),
                Err(e) => log.push(format!("stale /dev/ublkb{id}: {}", ublk_err("DEL_DEV", e))),
            }
        }
    }
    log
}
