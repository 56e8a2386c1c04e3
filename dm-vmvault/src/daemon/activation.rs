//! How vmvaultd starts at boot: a listening socket handed over by systemd (socket
//! activation), the initramfs mode (`--initrd`: `argv[0]` `@vmvaultd` and the marker
//! `<run-dir>/initrd`), and the hand-over to the real root (`switch_root`).
//!
//! Socket activation follows `sd_listen_fds(3)`: when `LISTEN_PID` is this process and
//! `LISTEN_FDS` is at least 1, descriptor 3 is the listener. It must be a listening Unix
//! stream socket bound to `<run-dir>/control` (anything else is refused: the daemon
//! would serve another path than its clients use). The variables are then removed so
//! that children do not take the socket for theirs.

use std::ffi::{OsStr, OsString};
use std::os::fd::{FromRawFd, RawFd};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};

/// The first descriptor systemd passes (`SD_LISTEN_FDS_START`).
pub const LISTEN_FDS_START: RawFd = 3;

/// `argv[0]` of the initramfs daemon: systemd leaves processes whose `argv[0]` starts with
/// `@` alone in its shutdown killing spree (the root-storage daemon convention).
pub const INITRD_ARGV0: &str = "@vmvaultd";

/// Name of the marker file in the run directory that says an initramfs daemon serves it
/// (`vmvaultd.socket` has `ConditionPathExists=!/run/vmvault/initrd`).
pub const INITRD_MARKER: &str = "initrd";

/// Errors of socket activation and of the root switch.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// The passed descriptor is not what vmvaultd can serve.
    #[error("socket activation: descriptor {fd} {why} (expected a listening Unix stream socket bound to {expected})")]
    BadSocket {
        /// The descriptor.
        fd: RawFd,
        /// What is wrong with it.
        why: String,
        /// The control socket path the daemon serves.
        expected: PathBuf,
    },
    /// A system call on the passed descriptor failed.
    #[error("socket activation: descriptor {fd}: {what}: {source}")]
    Sys {
        /// The descriptor.
        fd: RawFd,
        /// The call.
        what: &'static str,
        /// Its error.
        #[source]
        source: std::io::Error,
    },
    /// `switch_root` named something that cannot become the root.
    #[error("switch_root: {path}: {why}")]
    BadRoot {
        /// The requested root.
        path: PathBuf,
        /// Why it is refused.
        why: &'static str,
    },
    /// `chroot` or `chdir` failed.
    #[error("switch_root: {what} {path}: {source}")]
    Chroot {
        /// `chroot` or `chdir`.
        what: &'static str,
        /// The requested root.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
}

/// How many descriptors systemd passed to this process: `LISTEN_FDS` when `LISTEN_PID`
/// is `pid`, else 0. Pure (the values are given), for tests.
pub fn listen_fds_for(pid: u32, listen_pid: Option<&OsStr>, listen_fds: Option<&OsStr>) -> u32 {
    let parse = |v: Option<&OsStr>| {
        v.and_then(|s| s.to_str())
            .and_then(|s| s.parse::<u32>().ok())
    };
    match (parse(listen_pid), parse(listen_fds)) {
        (Some(p), Some(n)) if p == pid => n,
        _ => 0,
    }
}

/// Takes the socket systemd passed, if any: reads `LISTEN_PID`/`LISTEN_FDS`, removes
/// them (and `LISTEN_FDNAMES`) from the environment, and checks descriptor 3 against
/// `expected` (the control socket path). Call before any thread starts.
pub fn take_listener(expected: &Path) -> Result<Option<UnixListener>, ActivationError> {
    let n = listen_fds_for(
        std::process::id(),
        std::env::var_os("LISTEN_PID").as_deref(),
        std::env::var_os("LISTEN_FDS").as_deref(),
    );
    for v in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(v);
    }
    if n == 0 {
        return Ok(None);
    }
    let fd = LISTEN_FDS_START;
    check_listener(fd, expected)?;
    // Close-on-exec from now on (systemd passes it inheritable).
    // SAFETY: fcntl on a descriptor checked above to be an open socket.
    unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) };
    // SAFETY: systemd gave this process descriptor 3 and nothing else owns it; it was
    // checked to be a listening Unix stream socket.
    Ok(Some(unsafe { UnixListener::from_raw_fd(fd) }))
}

/// Checks that `fd` is a listening Unix stream socket bound to `expected`.
pub fn check_listener(fd: RawFd, expected: &Path) -> Result<(), ActivationError> {
    let bad = |why: String| ActivationError::BadSocket {
        fd,
        why,
        expected: expected.to_path_buf(),
    };
    let sys = |what| ActivationError::Sys {
        fd,
        what,
        source: std::io::Error::last_os_error(),
    };
    let int_opt = |opt| -> Result<libc::c_int, ActivationError> {
        let mut v: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `v`.
        let r = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&mut v as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        if r != 0 {
            return Err(sys("getsockopt"));
        }
        Ok(v)
    };
    // SAFETY: stat is plain data; fstat fills it for any descriptor or fails.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `st` is a valid out-pointer.
    if unsafe { libc::fstat(fd, &mut st) } != 0 {
        return Err(sys("fstat"));
    }
    if st.st_mode & libc::S_IFMT != libc::S_IFSOCK {
        return Err(bad("is not a socket".into()));
    }
    if int_opt(libc::SO_DOMAIN)? != libc::AF_UNIX {
        return Err(bad("is not a Unix socket".into()));
    }
    if int_opt(libc::SO_TYPE)? != libc::SOCK_STREAM {
        return Err(bad("is not a stream socket".into()));
    }
    if int_opt(libc::SO_ACCEPTCONN)? == 0 {
        return Err(bad("is not listening".into()));
    }
    // SAFETY: sockaddr_un is plain data.
    let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: getsockname writes at most `len` bytes into `addr`.
    if unsafe { libc::getsockname(fd, (&mut addr as *mut libc::sockaddr_un).cast(), &mut len) } != 0
    {
        return Err(sys("getsockname"));
    }
    let path_len = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let raw: Vec<u8> = addr.sun_path[..path_len.min(addr.sun_path.len())]
        .iter()
        .map(|&c| c as u8)
        .take_while(|&c| c != 0)
        .collect();
    let bound = PathBuf::from(<OsString as std::os::unix::ffi::OsStringExt>::from_vec(raw));
    if bound != expected {
        return Err(bad(format!("is bound to {:?}", bound)));
    }
    Ok(())
}

/// `--initrd`: whether to re-execute as [`INITRD_ARGV0`] (`argv[0]` does not start with
/// `@` yet).
pub fn needs_initrd_reexec(argv0: Option<&OsStr>) -> bool {
    !argv0.is_some_and(|a| a.as_encoded_bytes().starts_with(b"@"))
}

/// Re-executes this program (`/proc/self/exe`) with `argv[0]` [`INITRD_ARGV0`] and the
/// same arguments and environment; returns only on failure.
pub fn reexec_as_initrd() -> std::io::Error {
    use std::os::unix::process::CommandExt;
    std::process::Command::new("/proc/self/exe")
        .arg0(INITRD_ARGV0)
        .args(std::env::args_os().skip(1))
        .exec()
}

/// Makes `path` the root directory of this process (all its threads) and its working
/// directory `/`.
pub fn switch_root(path: &Path) -> Result<(), ActivationError> {
    let bad = |why| ActivationError::BadRoot {
        path: path.to_path_buf(),
        why,
    };
    if !path.is_absolute() {
        return Err(bad("not an absolute path"));
    }
    match std::fs::metadata(path) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(bad("not a directory")),
        Err(_) => return Err(bad("does not exist")),
    }
    std::os::unix::fs::chroot(path).map_err(|source| ActivationError::Chroot {
        what: "chroot",
        path: path.to_path_buf(),
        source,
    })?;
    std::env::set_current_dir("/").map_err(|source| ActivationError::Chroot {
        what: "chdir / after chroot",
        path: path.to_path_buf(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn listen_env() {
        let s = |v: &'static str| Some(OsStr::new(v));
        assert_eq!(listen_fds_for(42, s("42"), s("1")), 1);
        assert_eq!(listen_fds_for(42, s("43"), s("1")), 0);
        assert_eq!(listen_fds_for(42, None, s("1")), 0);
        assert_eq!(listen_fds_for(42, s("42"), None), 0);
        assert_eq!(listen_fds_for(42, s("42"), s("x")), 0);
    }

    #[test]
    fn argv0() {
        assert!(needs_initrd_reexec(Some(OsStr::new("/usr/sbin/vmvaultd"))));
        assert!(needs_initrd_reexec(None));
        assert!(!needs_initrd_reexec(Some(OsStr::new("@vmvaultd"))));
    }

    #[test]
    fn listener_checks() {
        let d = std::env::temp_dir().join(format!("vmvaultd-act-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let p = d.join("control");
        let l = UnixListener::bind(&p).unwrap();
        check_listener(l.as_raw_fd(), &p).unwrap();
        let e = check_listener(l.as_raw_fd(), &d.join("other")).unwrap_err();
        assert!(e.to_string().contains("is bound to"), "{e}");
        let f = std::fs::File::open(&d).unwrap();
        let e = check_listener(f.as_raw_fd(), &p).unwrap_err();
        assert!(e.to_string().contains("is not a socket"), "{e}");
        let dg = std::os::unix::net::UnixDatagram::bind(d.join("dg")).unwrap();
        let e = check_listener(dg.as_raw_fd(), &d.join("dg")).unwrap_err();
        assert!(e.to_string().contains("not a stream socket"), "{e}");
        let e = switch_root(Path::new("relative")).unwrap_err();
        assert!(e.to_string().contains("absolute"), "{e}");
        let e = switch_root(&p).unwrap_err();
        assert!(e.to_string().contains("not a directory"), "{e}");
        std::fs::remove_dir_all(&d).unwrap();
    }
}
