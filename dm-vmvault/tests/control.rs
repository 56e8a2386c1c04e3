//! vmvaultd's control plane under hostile or odd input (issue 11, point 8): the request
//! line cap, overflowing products in `open`, the run directory and its files (owner,
//! mode, symlinks), the client's check that the socket is served by root, and SIGTERM
//! (idle volumes close, busy ones are waited for, then a clean exit).

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

/// One line from `s` (bounded by its read timeout).
fn read_line(s: &UnixStream) -> String {
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    line
}

#[test]
fn overlong_request_line_is_refused_and_the_connection_closed() {
    if !require(&["fuse", "loop"]) {
        return;
    }
    let t = TempDir::new("ctl-long");
    let rundir = t.path().join("run");
    let d = start_daemon(&rundir);
    let s = UnixStream::connect(rundir.join("control")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let w = s.try_clone().unwrap();
    // 1 MiB without a newline; the daemon stops reading after 64 KiB, so the write
    // may fail (EPIPE) once it closes the connection.
    let writer = std::thread::spawn(move || {
        let mut w = w;
        let chunk = vec![b'x'; 64 * 1024];
        for _ in 0..16 {
            if w.write_all(&chunk).is_err() {
                break;
            }
        }
    });
    let line = read_line(&s);
    assert!(
        line.contains("\"result\":\"error\"")
            && line.contains("\"code\":1")
            && line.contains("longer than 65536"),
        "answer to an overlong line: {line:?}"
    );
    // And the connection is closed: EOF, not a timeout. ECONNRESET is a close too: the
    // kernel resets an AF_UNIX peer whose socket was closed with unread data in it, and
    // the writer above may still have been sending when the daemon closed.
    let mut rest = Vec::new();
    let r = (&s).read_to_end(&mut rest);
    assert!(
        r.is_ok()
            || r.as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "connection not closed after an overlong line: {r:?}"
    );
    let _ = writer.join();
    // The daemon still serves.
    assert_eq!(d.client().ping().unwrap(), d.pid());
    // A long line under the cap is an ordinary request.
    let mut c = d.client();
    let req = format!("{{\"cmd\":\"ping\"}}{}\n", " ".repeat(60_000));
    c.send_line(req.as_bytes(), None).unwrap();
    let line = c.read_line().unwrap();
    assert!(line.contains("\"result\":\"ok\""), "{line}");
    d.shutdown();
}

#[test]
fn overflowing_offsets_and_sizes_in_open_are_bad_args() {
    if !require(&["fuse", "loop", "keyctl"]) {
        return;
    }
    let t = TempDir::new("ctl-ovf");
    let rundir = t.path().join("run");
    let img = t.path().join("img");
    sparse_image(&img, 8);
    let d = start_daemon(&rundir);
    let serial = keyring_add(&test_key(64, 9));
    let img_s = img.display().to_string();
    let base = |extra: &str| {
        format!(
            "{{\"cmd\":\"open\",\"name\":\"ovf\",\"backing\":{},\"cipher\":\"aes-xts-plain64\",\
             \"key_size\":512,\"key_serial\":{serial},\"backend\":\"soft\",\"frontend\":\"auto\",\
             \"keep_key\":true,\"sector_size\":512,\"iv_offset\":0,\"iv_large_sectors\":false{extra}}}\n",
            serde_json::to_string(&img_s).unwrap()
        )
    };
    let cases = [
        // offset * 512 wraps to 0.
        base(",\"offset\":36028797018963968,\"size\":null"),
        // size * 512 wraps.
        base(",\"offset\":2048,\"size\":36028797018963968"),
        // offset + size overflows although each product fits.
        base(",\"offset\":18014398509481984,\"size\":18014398509481984"),
    ];
    for req in &cases {
        let mut c = d.client();
        c.send_line(req.as_bytes(), None).unwrap();
        let line = c.read_line().unwrap();
        assert!(
            line.contains("\"result\":\"error\"") && line.contains("\"code\":1"),
            "request {req} answered {line:?}; log: {}",
            d.log()
        );
        assert!(line.contains("out of range"), "{line}");
    }
    assert!(d.client().list().unwrap().is_empty());
    assert_eq!(d.client().ping().unwrap(), d.pid());
    d.shutdown();
}

/// Runs vmvaultd on `run_dir` expecting it to refuse to start (bounded wait); returns
/// its stderr.
fn refused_start(run_dir: &Path) -> String {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
        .arg("--run-dir")
        .arg(run_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        if t0.elapsed() > Duration::from_secs(10) {
            if let Ok(mut c) = vmvault_proto::client::Client::connect(run_dir) {
                let _ = c.shutdown();
            }
            let _ = child.kill();
            let _ = child.wait();
            panic!("vmvaultd started on {}", run_dir.display());
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    assert!(
        !st.success(),
        "vmvaultd on {}: {st} {err}",
        run_dir.display()
    );
    err
}

#[test]
fn run_directory_must_be_root_owned_private_and_its_files_not_symlinks() {
    if !require(&["fuse", "loop"]) {
        return;
    }
    let t = TempDir::new("ctl-rundir");
    // Writable by others.
    let open_dir = t.path().join("open");
    std::fs::create_dir(&open_dir).unwrap();
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o777)).unwrap();
    let err = refused_start(&open_dir);
    assert!(err.contains("group or others may write"), "{err}");
    // Group-writable.
    std::fs::set_permissions(&open_dir, std::fs::Permissions::from_mode(0o770)).unwrap();
    let err = refused_start(&open_dir);
    assert!(err.contains("group or others may write"), "{err}");
    // Not owned by root.
    let theirs = t.path().join("theirs");
    std::fs::create_dir(&theirs).unwrap();
    std::fs::set_permissions(&theirs, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::chown(&theirs, Some(65534), Some(65534)).unwrap();
    let err = refused_start(&theirs);
    assert!(err.contains("owned by uid 65534"), "{err}");
    // A symlink (to a good directory).
    let good = t.path().join("good");
    std::fs::create_dir(&good).unwrap();
    std::fs::set_permissions(&good, std::fs::Permissions::from_mode(0o700)).unwrap();
    let link = t.path().join("link");
    std::os::unix::fs::symlink(&good, &link).unwrap();
    let err = refused_start(&link);
    assert!(err.contains("symbolic link"), "{err}");

    // A pid file planted as a symlink: never followed (the target keeps its content).
    let victim = t.path().join("victim");
    std::fs::write(&victim, b"precious\n").unwrap();
    std::os::unix::fs::symlink(&victim, good.join("vmvaultd.pid")).unwrap();
    let err = refused_start(&good);
    assert!(err.contains("vmvaultd.pid"), "{err}");
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");
    std::fs::remove_file(good.join("vmvaultd.pid")).unwrap();

    // The log that the client opens when it spawns the daemon: never followed either.
    let run = t.path().join("spawn");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(&run, std::fs::Permissions::from_mode(0o700)).unwrap();
    std::os::unix::fs::symlink(&victim, run.join("vmvaultd.log")).unwrap();
    let r = vmvault_proto::client::connect_or_spawn(&run, &Default::default());
    if let Ok(mut c) = r {
        let _ = c.shutdown();
        panic!("connect_or_spawn followed a symlinked log");
    }
    assert_eq!(std::fs::read(&victim).unwrap(), b"precious\n");

    // A good directory works.
    let d = start_daemon(&good);
    assert_eq!(d.client().ping().unwrap(), d.pid());
    d.shutdown();
}

/// A process killed and reaped on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn client_refuses_a_control_socket_served_by_non_root() {
    if !require(&["setpriv", "python3"]) {
        return;
    }
    let t = TempDir::new("ctl-peer");
    let run = t.path().join("fake");
    std::fs::create_dir(&run).unwrap();
    std::fs::set_permissions(t.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
    std::os::unix::fs::chown(&run, Some(65534), Some(65534)).unwrap();
    // An impostor as uid 65534 that answers every request with success.
    let script = "import socket,sys,os\n\
                  s=socket.socket(socket.AF_UNIX)\n\
                  s.bind(sys.argv[1])\n\
                  os.chmod(sys.argv[1],0o777)\n\
                  s.listen(4)\n\
                  print('ready',flush=True)\n\
                  while True:\n\
                  \x20 c,_=s.accept()\n\
                  \x20 f=c.makefile('rwb')\n\
                  \x20 for l in f:\n\
                  \x20\x20 f.write(b'{\"ok\":true,\"pid\":1,\"key_ring\":1}\\n'); f.flush()\n";
    let sock = run.join("control");
    let mut child = Reaped(
        Command::new("setpriv")
            .args([
                "--reuid=65534",
                "--regid=65534",
                "--clear-groups",
                "/usr/bin/python3",
                "-c",
                script,
            ])
            .arg(&sock)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let mut ready = String::new();
    BufReader::new(child.0.stdout.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(ready.trim(), "ready");
    match vmvault_proto::client::Client::connect(&run) {
        Ok(mut c) => {
            let r = c.ping();
            panic!("the client talked to a non-root peer (ping: {r:?})");
        }
        Err(e) => {
            assert_eq!(e.exit_code(), 2, "{e}");
            assert!(e.to_string().contains("uid 65534"), "{e}");
        }
    }
    // connect_or_spawn (what vaultsetup uses) must not hand anything over either, nor
    // start a daemon over the impostor.
    assert!(vmvault_proto::client::connect_or_spawn(&run, &Default::default()).is_err());
}

/// Polls `f` every 50 ms for up to `secs`.
fn wait_for(secs: u64, what: &str, mut f: impl FnMut() -> bool) {
    let t0 = Instant::now();
    while !f() {
        assert!(
            t0.elapsed() < Duration::from_secs(secs),
            "timed out: {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn sigterm_closes_idle_volumes_waits_for_busy_ones_then_exits_0() {
    if !require(&["fuse", "loop", "keyctl"]) {
        return;
    }
    let t = TempDir::new("ctl-term");
    let rundir = t.path().join("run");
    let img1 = t.path().join("img1");
    let img2 = t.path().join("img2");
    sparse_image(&img1, 9);
    sparse_image(&img2, 9);
    let key = test_key(64, 5);
    let mut d = start_daemon(&rundir);
    d.client()
        .open(open_req("idle", &img1, &key, 512))
        .map(|(st, _)| st)
        .unwrap();
    let busy = d
        .client()
        .open(open_req("busy", &img2, &key, 512))
        .map(|(st, _)| st)
        .unwrap();
    let holder = std::fs::File::open(&busy.device).unwrap();
    // Positive control for the wipe check at exit: vault memory is mapped now.
    let maps = std::fs::read_to_string(format!("/proc/{}/maps", d.pid())).unwrap();
    assert!(
        maps.contains("/memfd:vmvault-") || maps.contains("/secretmem"),
        "no vault memory in vmvaultd's maps while volumes are open"
    );

    // SAFETY: kill(2) on the daemon this test started.
    assert_eq!(unsafe { libc::kill(d.pid() as i32, libc::SIGTERM) }, 0);
    wait_for(30, "the idle volume to close", || {
        d.client()
            .list()
            .is_ok_and(|l| l.len() == 1 && l[0].name.as_str() == "busy")
    });
    wait_for(30, "the daemon to log what it waits for", || {
        d.log().contains("waiting for busy")
    });
    assert!(
        d.child.try_wait().unwrap().is_none(),
        "vmvaultd exited with a volume in use; log: {}",
        d.log()
    );
    // No new volumes while shutting down.
    let e = d
        .client()
        .open(open_req("late", &img1, &key, 512))
        .map(|(st, _)| st)
        .unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    // The busy volume still works.
    let mut b = [0u8; 4096];
    (&holder).read_exact(&mut b).unwrap();

    drop(holder);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = d.child.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "vmvaultd did not exit after the last volume was released; log: {}",
            d.log()
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!(st.code(), Some(0), "exit status; log: {}", d.log());
    let log = d.log();
    assert!(
        log.contains("closed idle") && log.contains("closed busy"),
        "{log}"
    );
    assert!(log.contains("vault memory wiped"), "{log}");
    assert!(!rundir.join("control").exists());
}

/// The detach is itself a busy check (a holder that opens the device after `close`
/// looked): with another opener, `LOOP_CLR_FD` only marks the device for autoclear, and
/// `detach` must say busy and hand the device back still attached.
#[test]
fn loop_detach_with_another_opener_is_busy_and_keeps_the_device() {
    if !require(&["loop"]) {
        return;
    }
    use dm_vmvault::frontend::loopdev::{LoopDevice, LoopError};
    let t = TempDir::new("ctl-loop");
    let img = t.path().join("img");
    sparse_image(&img, 4);
    let lo = LoopDevice::attach(&img, false, 512).unwrap();
    let n = lo.number();
    let path = lo.path().to_path_buf();
    let holder = std::fs::File::open(&path).unwrap();
    let lo = match lo.detach() {
        Ok(()) => panic!("detach succeeded while {} was held open", path.display()),
        Err((lo, LoopError::Busy(_))) => lo,
        Err((_, e)) => panic!("detach: {e}"),
    };
    let backing = format!("/sys/block/loop{n}/loop/backing_file");
    assert!(Path::new(&backing).exists(), "device must stay attached");
    // Still serves I/O.
    let mut b = [0u8; 512];
    (&holder).read_exact(&mut b).unwrap();
    drop(holder);
    lo.detach().unwrap();
    assert!(
        !Path::new(&backing).exists(),
        "device still attached after detach"
    );
}
