//! Memory sampler for a short-lived process (issue 11, point 7): stops it with ptrace
//! at chosen points of its run and searches its memory there with the residency
//! scanner, so "no key outside the locked buffers" is checked at well-defined moments
//! instead of at random ones.
//!
//! How it works:
//! - [`Tracee::seize`] attaches to a running process with `PTRACE_SEIZE`
//!   (`PTRACE_O_TRACESYSGOOD | PTRACE_O_TRACEEXIT`) and restarts it with
//!   `PTRACE_SYSCALL`: the tracee then stops at every system-call entry and exit of the
//!   traced thread, and once more at `PTRACE_EVENT_EXIT`, when `exit_group` has begun
//!   but its memory is still whole.
//! - [`Tracee::run`] serves those stops until the process is gone and hands each
//!   system-call entry and the exit stop to a callback. While the callback runs, the
//!   traced thread is stopped, so `/proc/PID/maps`, `/proc/PID/smaps` and
//!   `/proc/PID/mem` read a consistent picture of what that thread left behind.
//! - [`locked_regions`] lists the mappings whose `VmFlags` have `lo` (mlocked): in
//!   vaultsetup those are exactly its `SecretBuf`s, each a mapping of its own (the only
//!   memory vaultsetup locks). [`Finding`]s inside them can be told apart from leaks.
//!
//! Only the seized thread is stopped; other threads of the tracee keep running. For
//! vaultsetup they are Argon2's worker threads, idle after the KDF.
//!
//! Every wait is bounded: [`Tracee::run`] kills the tracee (SIGKILL) once its deadline
//! has passed, which ends the wait.

use std::ops::Range;
use std::time::{Duration, Instant};

use crate::residency::{read_maps, scan_process, Needles, ScanOptions};

/// Where the tracee stopped.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stop {
    /// Entry of system call `nr` with its first three arguments.
    SyscallEntry {
        /// System call number (x86_64).
        nr: i64,
        /// `rdi`, `rsi`, `rdx`.
        args: [u64; 3],
    },
    /// `PTRACE_EVENT_EXIT`: the process is exiting, its memory is still there.
    Exit,
}

/// A process traced by this thread.
#[derive(Debug)]
pub struct Tracee {
    pid: i32,
    done: bool,
}

fn errno_result(r: libc::c_long, what: &str) -> std::io::Result<libc::c_long> {
    if r < 0 {
        let e = std::io::Error::last_os_error();
        Err(std::io::Error::new(e.kind(), format!("{what}: {e}")))
    } else {
        Ok(r)
    }
}

impl Tracee {
    /// Seizes `pid` (a child of this process, or any process when root) and lets it run
    /// on with system-call stops. All later calls must come from this same thread.
    pub fn seize(pid: u32) -> std::io::Result<Tracee> {
        let pid = pid as i32;
        let opts = (libc::PTRACE_O_TRACESYSGOOD | libc::PTRACE_O_TRACEEXIT) as libc::c_long;
        errno_result(
            // SAFETY: ptrace requests with integer arguments only.
            unsafe { libc::ptrace(libc::PTRACE_SEIZE, pid, 0 as libc::c_long, opts) },
            "PTRACE_SEIZE",
        )?;
        let mut t = Tracee { pid, done: false };
        // Stop it once, so it can be restarted with PTRACE_SYSCALL.
        errno_result(
            // SAFETY: a ptrace request with integer arguments only.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_INTERRUPT,
                    pid,
                    0 as libc::c_long,
                    0 as libc::c_long,
                )
            },
            "PTRACE_INTERRUPT",
        )?;
        loop {
            let st = t.wait()?;
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                t.done = true;
                return Ok(t);
            }
            if libc::WIFSTOPPED(st) && (st >> 16) == libc::PTRACE_EVENT_STOP {
                break;
            }
            // A signal-delivery stop that came first: deliver it, keep waiting.
            t.restart(libc::WSTOPSIG(st))?;
        }
        t.restart(0)?;
        Ok(t)
    }

    /// The traced pid.
    pub fn pid(&self) -> u32 {
        self.pid as u32
    }

    fn wait(&self) -> std::io::Result<i32> {
        let mut st = 0;
        loop {
            // SAFETY: waitpid with a valid out-pointer.
            let r = unsafe { libc::waitpid(self.pid, &mut st, libc::__WALL) };
            if r == self.pid {
                return Ok(st);
            }
            let e = std::io::Error::last_os_error();
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }

    fn restart(&self, sig: i32) -> std::io::Result<()> {
        errno_result(
            // SAFETY: a ptrace request with integer arguments only.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_SYSCALL,
                    self.pid,
                    0 as libc::c_long,
                    sig as libc::c_long,
                )
            },
            "PTRACE_SYSCALL",
        )
        .map(|_| ())
    }

    fn regs(&self) -> std::io::Result<libc::user_regs_struct> {
        // SAFETY: user_regs_struct is plain data; PTRACE_GETREGS fills it.
        let mut regs: libc::user_regs_struct = unsafe { std::mem::zeroed() };
        errno_result(
            // SAFETY: the tracee is in a ptrace-stop; `regs` is a valid out-pointer.
            unsafe {
                libc::ptrace(
                    libc::PTRACE_GETREGS,
                    self.pid,
                    0 as libc::c_long,
                    &mut regs as *mut libc::user_regs_struct,
                )
            },
            "PTRACE_GETREGS",
        )?;
        Ok(regs)
    }

    /// Serves stops until the process has exited (returns its `waitpid` status), calling
    /// `on_stop` at every system-call entry and at the exit stop. At `deadline` the
    /// process is killed (and the kill reported as an error). At most `max_stops` stops
    /// are served; beyond that the process is killed too.
    pub fn run(
        mut self,
        deadline: Instant,
        max_stops: usize,
        mut on_stop: impl FnMut(Stop),
    ) -> std::io::Result<i32> {
        if self.done {
            return Err(std::io::Error::other(
                "the tracee exited before it was seized",
            ));
        }
        // The watchdog: waitpid cannot time out, so a thread kills the tracee when the
        // deadline passes (and is told to stand down when the run ends first).
        let pid = self.pid;
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let watchdog = std::thread::spawn(move || {
            let left = deadline.saturating_duration_since(Instant::now());
            if rx.recv_timeout(left) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
                // SAFETY: kill with a pid and a signal number.
                unsafe { libc::kill(pid, libc::SIGKILL) };
                return true;
            }
            false
        });
        let mut stops = 0usize;
        let result = loop {
            let st = match self.wait() {
                Ok(st) => st,
                Err(e) => break Err(e),
            };
            if libc::WIFEXITED(st) || libc::WIFSIGNALED(st) {
                self.done = true;
                break Ok(st);
            }
            if !libc::WIFSTOPPED(st) {
                continue;
            }
            stops += 1;
            if stops > max_stops {
                // SAFETY: kill with a pid and a signal number.
                unsafe { libc::kill(self.pid, libc::SIGKILL) };
                let _ = self.restart(0);
                continue;
            }
            let sig = libc::WSTOPSIG(st);
            let event = st >> 16;
            let r = if sig == (libc::SIGTRAP | 0x80) {
                // System-call stop; on x86_64 rax is -ENOSYS at entry.
                match self.regs() {
                    Ok(regs) => {
                        if regs.rax as i64 == -(libc::ENOSYS as i64) {
                            on_stop(Stop::SyscallEntry {
                                nr: regs.orig_rax as i64,
                                args: [regs.rdi, regs.rsi, regs.rdx],
                            });
                        }
                        self.restart(0)
                    }
                    Err(e) => Err(e),
                }
            } else if sig == libc::SIGTRAP && event == libc::PTRACE_EVENT_EXIT {
                on_stop(Stop::Exit);
                self.restart(0)
            } else if event == libc::PTRACE_EVENT_STOP {
                self.restart(0)
            } else {
                self.restart(sig)
            };
            if let Err(e) = r {
                // ESRCH: it died meanwhile (killed); the next wait reports that.
                if e.raw_os_error() != Some(libc::ESRCH) {
                    break Err(e);
                }
            }
        };
        let _ = tx.send(());
        let killed = watchdog.join().unwrap_or(false);
        if killed {
            return Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("pid {pid} still running at the deadline: killed"),
            ));
        }
        if stops > max_stops {
            return Err(std::io::Error::other(format!(
                "pid {pid}: more than {max_stops} stops: killed"
            )));
        }
        result
    }
}

impl Drop for Tracee {
    fn drop(&mut self) {
        if !self.done {
            // Never leave a stopped, traced process behind.
            // SAFETY: kill and waitpid on our tracee.
            unsafe {
                libc::kill(self.pid, libc::SIGKILL);
                let mut st = 0;
                libc::waitpid(self.pid, &mut st, libc::__WALL);
            }
        }
    }
}

/// Reads a NUL-terminated string (at most `max` bytes) at `addr` of `pid`.
pub fn read_c_string(pid: u32, addr: u64, max: usize) -> Option<String> {
    use std::os::unix::fs::FileExt;
    let f = std::fs::File::open(format!("/proc/{pid}/mem")).ok()?;
    let mut buf = vec![0u8; max];
    let n = f.read_at(&mut buf, addr).ok()?;
    let end = buf[..n].iter().position(|&b| b == 0)?;
    Some(String::from_utf8_lossy(&buf[..end]).into_owned())
}

/// The mappings of `pid` whose `VmFlags` in `/proc/PID/smaps` include `lo` (mlocked).
pub fn locked_regions(pid: u32) -> std::io::Result<Vec<Range<u64>>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/smaps"))?;
    let mut out = Vec::new();
    let mut cur: Option<Range<u64>> = None;
    for line in text.lines() {
        if let Some(flags) = line.strip_prefix("VmFlags:") {
            if let Some(r) = cur.take() {
                if flags.split_whitespace().any(|f| f == "lo") {
                    out.push(r);
                }
            }
            continue;
        }
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16)) {
                cur = Some(a..b);
            }
        }
    }
    Ok(out)
}

/// One secret to look for in a sample.
pub struct Secret {
    /// Name in findings ("volume key", "passphrase").
    pub name: String,
    /// What to search.
    pub needles: Needles,
    /// Whether a copy inside a locked mapping (a `SecretBuf`) is allowed at this point.
    pub allowed_locked: bool,
}

impl std::fmt::Debug for Secret {
    /// The name and the policy; the needles show only their labels, never secret bytes.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Secret")
            .field("name", &self.name)
            .field("needles", &self.needles)
            .field("allowed_locked", &self.allowed_locked)
            .finish()
    }
}

/// A copy of a secret found in a sample.
#[derive(Clone, Debug)]
pub struct Finding {
    /// Sampling point.
    pub stage: String,
    /// The secret's name.
    pub secret: String,
    /// Mapping, address and what matched (the scanner's description).
    pub place: String,
    /// Whether the copy was inside a locked mapping.
    pub in_locked: bool,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{}] {} {}: {}",
            self.stage,
            self.secret,
            if self.in_locked {
                "in a locked mapping (SecretBuf)"
            } else {
                "OUTSIDE the locked mappings"
            },
            self.place
        )
    }
}

/// What one sample found.
#[derive(Clone, Debug, Default)]
pub struct SampleResult {
    /// Copies not allowed at this point: outside locked mappings, or anywhere for
    /// secrets with `allowed_locked == false`.
    pub findings: Vec<Finding>,
    /// Copies that are allowed (inside locked mappings): the positive control that the
    /// sample can see the secret where it legitimately is.
    pub allowed: Vec<Finding>,
    /// Bytes searched (per secret).
    pub bytes: u64,
}

/// One sample: the memory of the stopped `pid` (every readable mapping) searched for
/// every secret.
pub fn sample(pid: u32, stage: &str, secrets: &[Secret]) -> std::io::Result<SampleResult> {
    let locked = locked_regions(pid)?;
    let maps = read_maps(pid)?;
    // A sanity check on the picture itself: a stopped process has its stack mapped.
    if !maps.iter().any(|m| m.path == "[stack]") {
        return Err(std::io::Error::other(format!(
            "pid {pid}: no [stack] mapping"
        )));
    }
    let mut res = SampleResult::default();
    for s in secrets {
        let rep = scan_process(pid, &s.needles, &ScanOptions::default())?;
        res.bytes = res.bytes.max(rep.bytes_scanned);
        for h in &rep.hits {
            let in_locked = locked.iter().any(|r| r.contains(&h.addr));
            let f = Finding {
                stage: stage.to_string(),
                secret: s.name.clone(),
                place: h.to_string(),
                in_locked,
            };
            if in_locked && s.allowed_locked {
                res.allowed.push(f);
            } else {
                res.findings.push(f);
            }
        }
    }
    Ok(res)
}

/// Opens `fifo` for writing as soon as a reader has it open (polling, bounded by
/// `timeout`), writes `data` and closes it. For key files on a FIFO.
pub fn write_fifo_when_read(
    fifo: &std::path::Path,
    data: &[u8],
    timeout: Duration,
) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let deadline = Instant::now() + timeout;
    loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(fifo)
        {
            Ok(mut f) => {
                f.write_all(data)?;
                return Ok(());
            }
            // ENXIO: no reader yet.
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(e) => return Err(e),
        }
    }
}

/// What [`Background`] found in the process it sampled.
#[derive(Clone, Debug, Default)]
pub struct BackgroundSamples {
    /// Completed scans.
    pub samples: usize,
    /// Bytes searched by the largest scan.
    pub max_bytes: u64,
    /// Each scan that found something (the scanner's report).
    pub hits: Vec<String>,
    /// Scans that failed.
    pub errors: Vec<String>,
}

/// Samples a *running* process (not stopped: e.g. vmvaultd while a vaultsetup talks to
/// it) from a thread of its own: [`scan_process`] with `opts`, over and over, until
/// [`Background::finish`]; one more complete scan follows the call to `finish`, so
/// the state after the awaited event is always sampled too.
#[derive(Debug)]
pub struct Background {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: std::thread::JoinHandle<BackgroundSamples>,
}

impl Background {
    /// Starts sampling `pid` for `needles`.
    pub fn start(pid: u32, needles: Needles, opts: ScanOptions) -> Background {
        use std::sync::atomic::{AtomicBool, Ordering};
        let stop = std::sync::Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut out = BackgroundSamples::default();
            loop {
                let last = flag.load(Ordering::Acquire);
                match scan_process(pid, &needles, &opts) {
                    Ok(r) => {
                        out.samples += 1;
                        out.max_bytes = out.max_bytes.max(r.bytes_scanned);
                        if !r.is_clean() {
                            out.hits.push(r.to_string());
                        }
                    }
                    Err(e) => out.errors.push(format!("scan of pid {pid}: {e}")),
                }
                if last {
                    return out;
                }
            }
        });
        Background { stop, thread }
    }

    /// Stops after one more complete scan; returns everything sampled.
    pub fn finish(self) -> BackgroundSamples {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        self.thread.join().expect("background sampler panicked")
    }
}
