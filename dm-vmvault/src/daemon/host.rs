//! Process-level setup of vmvaultd: hardening, the single-instance lock, and cleanup of
//! what a dead predecessor left in the run directory.

use std::fs::File;
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use crate::frontend::{fuse::lazy_unmount, loopdev};

/// `PR_SET_IO_FLUSHER` (Linux 5.6): our allocations never wait on writeback of the
/// devices we serve.
const PR_SET_IO_FLUSHER: libc::c_int = 57;

/// Errors of process setup.
#[derive(Debug, thiserror::Error)]
pub enum HostError {
    /// Another vmvaultd holds the run directory.
    #[error("another vmvaultd (pid {pid}) is running for {dir}")]
    AlreadyRunning {
        /// Run directory.
        dir: PathBuf,
        /// Its pid, as recorded.
        pid: String,
    },
    /// The run directory cannot be trusted.
    #[error("run directory {dir}: {why}; refusing it (it must be a directory owned by root that only root may write)")]
    RunDir {
        /// Run directory.
        dir: PathBuf,
        /// What is wrong with it.
        why: String,
    },
    /// A filesystem or system call failed.
    #[error("{what}: {source}")]
    Sys {
        /// What was being done.
        what: String,
        /// The OS error of that call.
        source: std::io::Error,
    },
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> HostError {
    let what = what.into();
    move |source| HostError::Sys { what, source }
}

/// Hardening applied at start: no core dumps, not dumpable/ptraceable by non-root, an
/// IO flusher, and memory locked as it is touched. Returns warnings for steps the kernel
/// refused (none is fatal).
pub fn harden(mlock: bool) -> Vec<String> {
    let mut warn = Vec::new();
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: setrlimit reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_CORE, &zero) } != 0 {
        warn.push(format!("RLIMIT_CORE: {}", std::io::Error::last_os_error()));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0) } != 0 {
        warn.push(format!(
            "PR_SET_DUMPABLE: {}",
            std::io::Error::last_os_error()
        ));
    }
    // SAFETY: prctl with integer arguments only.
    if unsafe { libc::prctl(PR_SET_IO_FLUSHER, 1, 0, 0, 0) } != 0 {
        warn.push(format!(
            "PR_SET_IO_FLUSHER: {}",
            std::io::Error::last_os_error()
        ));
    }
    if mlock {
        // SAFETY: mlockall takes flags only. MCL_ONFAULT locks pages as they are touched,
        // so reserved-but-unused stacks and arenas do not pin memory.
        if unsafe { libc::mlockall(libc::MCL_CURRENT | libc::MCL_FUTURE | libc::MCL_ONFAULT) } != 0
        {
            warn.push(format!("mlockall: {}", std::io::Error::last_os_error()));
        }
    }
    warn
}

/// The single-instance lock: `<run-dir>/vmvaultd.pid`, `flock`ed for the daemon's life.
#[derive(Debug)]
pub struct PidLock {
    _file: File,
    path: PathBuf,
}

impl PidLock {
    /// Takes the lock and records our pid.
    pub fn acquire(run_dir: &Path) -> Result<Self, HostError> {
        use std::os::unix::fs::OpenOptionsExt;
        let path = run_dir.join("vmvaultd.pid");
        // O_NOFOLLOW: a symlink planted here must not make us truncate another file.
        let mut f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .mode(0o600)
            .custom_flags(libc::O_NOFOLLOW | libc::O_CLOEXEC)
            .open(&path)
            .map_err(sys(format!("open {}", path.display())))?;
        // SAFETY: flock on an fd we own.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let pid = std::fs::read_to_string(&path)
                .unwrap_or_default()
                .trim()
                .to_string();
            return Err(HostError::AlreadyRunning {
                dir: run_dir.to_path_buf(),
                pid,
            });
        }
        f.set_len(0).map_err(sys("truncate pidfile"))?;
        writeln!(f, "{}", std::process::id()).map_err(sys("write pidfile"))?;
        Ok(PidLock { _file: f, path })
    }
}

impl Drop for PidLock {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

fn unescape_mountinfo(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Mount points under `dir`, deepest first.
pub fn mounts_under(dir: &Path) -> Vec<PathBuf> {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    let mut v: Vec<PathBuf> = mi
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(|m| PathBuf::from(unescape_mountinfo(m)))
        .filter(|m| m.starts_with(dir) && m != dir)
        .collect();
    v.sort_by_key(|p| std::cmp::Reverse(p.as_os_str().len()));
    v.dedup();
    v
}

/// Cleans up after a predecessor that died: detaches loop devices backed by files under
/// `mnt_root` (a device still in use autoclears when its user closes it), lazily
/// unmounts stale FUSE mounts there, and removes their directories. Returns what was done.
pub fn clean_stale(mnt_root: &Path) -> Vec<String> {
    let mut log = Vec::new();
    for (n, file) in loopdev::loops_backed_under(mnt_root) {
        match loopdev::clear(n) {
            Ok(()) => log.push(format!("detached stale /dev/loop{n} ({})", file.display())),
            Err(e) => log.push(format!("stale /dev/loop{n} ({}): {e}", file.display())),
        }
    }
    for m in mounts_under(mnt_root) {
        match lazy_unmount(&m) {
            Ok(()) => log.push(format!("unmounted stale {}", m.display())),
            Err(e) => log.push(format!("stale mount {}: {e}", m.display())),
        }
    }
    if let Ok(rd) = std::fs::read_dir(mnt_root) {
        for e in rd.flatten() {
            let _ = std::fs::remove_dir(e.path());
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mountinfo(r"/a\040b/c"), "/a b/c");
        assert_eq!(unescape_mountinfo(r"/plain"), "/plain");
        assert_eq!(unescape_mountinfo(r"/x\"), r"/x\");
    }
}
