//! Boot-time daemon (issue 13): `--initrd` (argv[0] `@vmvaultd`, the marker
//! `<run-dir>/initrd`), the `switch_root` hand-over that keeps volumes serving, and
//! socket activation (a listener passed as descriptor 3 with `LISTEN_PID`/`LISTEN_FDS`).
//!
//! The hand-over is played as initramfs-tools plays it, in a private mount namespace of
//! the daemon (nothing of it is seen by the host): the run directory is a tmpfs, the
//! "real root" is a bind of `/` at NEWROOT; the daemon is told `switch_root NEWROOT`,
//! then the run directory, `/dev`, `/proc` and `/sys` are moved into NEWROOT (as
//! `run-init` moves them). The volume opened before keeps serving I/O, `status` and
//! `close` work after the switch. The test reaches the daemon's socket through
//! `/proc/PID/root`, which follows the daemon's root.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use vmvault_proto::client::Client;

const NEEDS: &[&str] = &["fuse", "loop", "unshare", "nsenter"];

/// A vmvaultd in its own mount namespace; killed on drop.
struct NsDaemon {
    child: Child,
    log: PathBuf,
}

impl NsDaemon {
    fn pid(&self) -> u32 {
        self.child.id()
    }
    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
    /// Runs `sh -c script` in the daemon's mount namespace.
    fn in_ns(&self, script: &str) {
        let out = Command::new("nsenter")
            .arg("-t")
            .arg(self.pid().to_string())
            .args(["-m", "--", "sh", "-ec", script])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{script}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for NsDaemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill with a pid we spawned and have not reaped.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let t0 = Instant::now();
            while t0.elapsed() < Duration::from_secs(10) {
                if let Ok(Some(_)) = self.child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn connect(dir: &Path, within: Duration) -> Client {
    let t0 = Instant::now();
    loop {
        if let Ok(mut c) = Client::connect(dir) {
            if c.ping().is_ok() {
                return c;
            }
        }
        assert!(t0.elapsed() < within, "no vmvaultd at {}", dir.display());
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn write_read(dev: &Path, pos: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(dev)
        .unwrap();
    f.seek(SeekFrom::Start(pos)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
    drop(f);
    // Read back past the page cache: drop it, then read.
    run(Command::new("blockdev").arg("--flushbufs").arg(dev));
    let mut f = std::fs::File::open(dev).unwrap();
    f.seek(SeekFrom::Start(pos)).unwrap();
    let mut back = vec![0u8; data.len()];
    f.read_exact(&mut back).unwrap();
    assert!(
        back == data,
        "data read back from {} differs",
        dev.display()
    );
}

#[test]
fn initrd_daemon_switches_root_and_keeps_serving() {
    if !require(NEEDS) {
        return;
    }
    let t = TempDir::new("boot-switch");
    let run_dir = t.path().join("run");
    let new_root = t.path().join("newroot");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::create_dir_all(&new_root).unwrap();
    let img = t.path().join("img");
    sparse_image(&img, 17);
    let log = t.path().join("vmvaultd.log");
    let logf = std::fs::File::create(&log).unwrap();
    // The run directory is a tmpfs of the daemon's namespace (as /run in an initramfs).
    let script = format!(
        "mount -t tmpfs -o mode=0700 vmvault-run '{}' && exec '{}' --initrd --run-dir '{}'",
        run_dir.display(),
        env!("CARGO_BIN_EXE_vmvaultd"),
        run_dir.display()
    );
    let child = Command::new("unshare")
        .args(["--mount", "--propagation", "private", "--", "sh", "-c"])
        .arg(&script)
        .stdin(Stdio::null())
        .stdout(logf.try_clone().unwrap())
        .stderr(logf)
        .spawn()
        .unwrap();
    let d = NsDaemon { child, log };
    let ns_run = PathBuf::from(format!("/proc/{}/root{}", d.pid(), run_dir.display()));
    let mut c = connect(&ns_run, Duration::from_secs(10));
    assert_eq!(c.daemon_pid(), d.pid(), "--initrd re-executes in place");
    let cmdline = std::fs::read(format!("/proc/{}/cmdline", d.pid())).unwrap();
    assert!(
        cmdline.starts_with(b"@vmvaultd\0"),
        "argv[0]: {:?}",
        String::from_utf8_lossy(&cmdline)
    );
    let marker = std::fs::read_to_string(ns_run.join("initrd")).unwrap();
    assert_eq!(marker.trim(), d.pid().to_string());

    let key = test_key(64, 9);
    let mut req = open_req("handover", &img, &key, 4096);
    req.backend = vmvault_proto::protocol::BackendChoice::Soft;
    let (st, _) = c.open(req).unwrap();
    let dev = st.loop_device.clone();
    let first: Vec<u8> = (0..65536u32).map(|i| (i % 241) as u8).collect();
    write_read(&dev, 0, &first);

    // The real root, as the initramfs mounts it: here a bind of /.
    d.in_ns(&format!("mount --rbind / '{}'", new_root.display()));
    c.switch_root(&new_root).unwrap();
    drop(c);
    // run-init: /run (our run directory), /dev, /proc, /sys move into the new root.
    let nr = new_root.display();
    let rd = run_dir.display();
    d.in_ns(&format!(
        "umount -l '{nr}{rd}' 2>/dev/null || true; mount --move '{rd}' '{nr}{rd}'; \
         for m in sys dev proc; do umount -l '{nr}'/$m; mount --move /$m '{nr}'/$m; done"
    ));
    // /proc/PID/root now is the new root: the socket moved there with the run directory.
    let mut c = connect(&ns_run, Duration::from_secs(5));
    let st2 = c.status("handover").unwrap();
    assert_eq!(st2.loop_device, dev);
    assert_eq!(c.list().unwrap().len(), 1);
    let second: Vec<u8> = (0..65536u32).map(|i| (i % 239) as u8).collect();
    write_read(&dev, 1 << 20, &second);
    write_read(&dev, 0, &first);
    // A relative or missing root is refused and the daemon keeps serving.
    let e = c.switch_root(Path::new("relative/root")).unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    let e = c.switch_root(Path::new("/no/such/root")).unwrap_err();
    assert!(e.to_string().contains("does not exist"), "{e}");
    c.close("handover").unwrap();
    assert!(c.list().unwrap().is_empty());
    c.shutdown().unwrap();
    let mut d = d;
    let t0 = Instant::now();
    while d.child.try_wait().unwrap().is_none() {
        assert!(t0.elapsed() < Duration::from_secs(10), "{}", d.log());
        std::thread::sleep(Duration::from_millis(20));
    }
    let log = d.log();
    assert!(log.contains("switched root to"), "{log}");
    assert!(log.contains("initramfs mode"), "{log}");
}

#[test]
fn socket_activation_serves_the_passed_listener_and_checks_it() {
    if !require(&["fuse", "loop"]) {
        return;
    }
    let t = TempDir::new("boot-sockact");
    let run_dir = t.path().join("run");
    std::fs::create_dir_all(&run_dir).unwrap();
    std::fs::set_permissions(
        &run_dir,
        std::os::unix::fs::PermissionsExt::from_mode(0o700),
    )
    .unwrap();
    let spawn = |listener: &std::os::unix::net::UnixListener, log: &Path| {
        use std::os::fd::AsRawFd;
        let fd = listener.as_raw_fd();
        let logf = std::fs::File::create(log).unwrap();
        // LISTEN_PID is the pid of the exec'd daemon: the shell's own ($$).
        let mut cmd = Command::new("sh");
        cmd.arg("-c")
            .arg("LISTEN_PID=$$ exec \"$0\" --run-dir \"$1\"")
            .arg(env!("CARGO_BIN_EXE_vmvaultd"))
            .arg(&run_dir)
            .env("LISTEN_FDS", "1")
            .stdin(Stdio::null())
            .stdout(logf.try_clone().unwrap())
            .stderr(logf);
        // SAFETY: dup2 and fcntl are async-signal-safe; it only puts the listener at descriptor 3
        // (without close-on-exec) in the child.
        unsafe {
            cmd.pre_exec(move || {
                // dup2 onto itself keeps close-on-exec: clear it then.
                let r = if fd == 3 {
                    libc::fcntl(3, libc::F_SETFD, 0)
                } else {
                    libc::dup2(fd, 3)
                };
                if r < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    };
    // A listener bound elsewhere is refused with a clear message.
    let wrong = std::os::unix::net::UnixListener::bind(t.path().join("other.sock")).unwrap();
    let log1 = t.path().join("wrong.log");
    let mut child = spawn(&wrong, &log1);
    let st = child.wait().unwrap();
    let text = std::fs::read_to_string(&log1).unwrap();
    assert_eq!(st.code(), Some(1), "{text}");
    assert!(text.contains("is bound to"), "{text}");

    // The right one is served; the socket file stays when the daemon exits (systemd's).
    let sock = run_dir.join("control");
    // A marker left by a dead initramfs daemon: removed by the next daemon.
    std::fs::write(run_dir.join("initrd"), "12345\n").unwrap();
    let good = std::os::unix::net::UnixListener::bind(&sock).unwrap();
    let log2 = t.path().join("good.log");
    let mut child = spawn(&good, &log2);
    drop(good);
    let t0 = Instant::now();
    while Client::connect(&run_dir).is_err() && t0.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(20));
    }
    let log_now = std::fs::read_to_string(&log2).unwrap_or_default();
    let mut c = Client::connect(&run_dir).unwrap_or_else(|e| panic!("{e}: {log_now}"));
    assert_eq!(c.daemon_pid(), child.id());
    assert!(!run_dir.join("initrd").exists(), "stale initrd marker kept");
    c.shutdown().unwrap();
    child.wait().unwrap();
    let text = std::fs::read_to_string(&log2).unwrap();
    assert!(text.contains("socket from systemd"), "{text}");
    assert!(sock.exists(), "the passed socket's file was removed");
}

/// `boot/systemd/vmvaultd.{socket,service}`: `systemd-analyze verify` finds nothing, the
/// socket is the daemon's real control socket, and `systemd-analyze security` rates the
/// service's exposure at most "OK" (5.0). ExecStart= points at this build's binary (the
/// installed path does not exist here).
#[test]
fn systemd_units_verify_and_are_hardened() {
    if !require(&["systemd-analyze"]) {
        return;
    }
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../boot/systemd");
    let t = TempDir::new("boot-units");
    let socket = std::fs::read_to_string(src.join("vmvaultd.socket")).unwrap();
    let service = std::fs::read_to_string(src.join("vmvaultd.service")).unwrap();
    let sock_path = dm_vmvault::daemon::socket_path(Path::new(dm_vmvault::daemon::DEFAULT_RUN_DIR));
    assert!(
        socket.contains(&format!("ListenStream={}\n", sock_path.display())),
        "{socket}"
    );
    assert!(
        service.contains("ExecStart=/usr/sbin/vmvaultd\n"),
        "{service}"
    );
    let service = service.replace(
        "ExecStart=/usr/sbin/vmvaultd",
        &format!("ExecStart={}", env!("CARGO_BIN_EXE_vmvaultd")),
    );
    std::fs::write(t.path().join("vmvaultd.socket"), socket).unwrap();
    std::fs::write(t.path().join("vmvaultd.service"), service).unwrap();
    let out = Command::new("systemd-analyze")
        .args(["verify", "--man=no"])
        .arg(t.path().join("vmvaultd.socket"))
        .arg(t.path().join("vmvaultd.service"))
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success() && err.trim().is_empty(), "{err}");
    let out = Command::new("systemd-analyze")
        .args(["security", "--offline=yes", "--no-pager"])
        .arg(t.path().join("vmvaultd.service"))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let level: f64 = text
        .lines()
        .find_map(|l| {
            l.split("Overall exposure level for vmvaultd.service: ")
                .nth(1)
        })
        .and_then(|r| r.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no exposure level: {text}"));
    assert!(level <= 5.0, "exposure {level}: {text}");
}
