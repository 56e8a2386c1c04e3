//! Issue 13: `vaultsetup attach NAME DEVICE KEYFILE OPTIONS` and `detach NAME`
//! (systemd-cryptsetup's interface), `open --header` with a detached LUKS2 header made
//! by `cryptsetup luksFormat --header`, and bad input (malformed options, missing key
//! files, unknown devices: clear messages, nothing written).
//!
//! The passphrase through systemd's ask-password protocol is tested with the real
//! `systemd-ask-password` (systemd 252 on Debian): `$NOTIFY_SOCKET` makes `attach` use
//! it, and this test answers as an agent does (reads `/run/systemd/ask-password/ask.*`,
//! sends `+PASSPHRASE` to the query's socket).
//!
//! Needs root, /dev/fuse, loop devices, cryptsetup (and systemd-ask-password for one
//! test). Missing pieces: FAIL under `CI`, else SKIPPED.

mod common;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use common::*;

static SERIAL: Mutex<()> = Mutex::new(());

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const PASS: &[u8] = b"attach test passphrase";

fn ready(test: &str) -> bool {
    require_for(test, &["fuse", "loop", "cryptsetup"]) && need("cryptsetup", test)
}

/// A LUKS2 image (fast PBKDF2) and its passphrase file.
fn image(w: &World, name: &str, extra: &[&str]) -> (PathBuf, PathBuf) {
    let img = w.path().join(name);
    let kf = w.path().join(format!("{name}.key"));
    std::fs::write(&kf, PASS).unwrap();
    let mut a = vec!["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    a.extend_from_slice(extra);
    support::luks_format(&img, 20, &kf, &a);
    (img, kf)
}

fn s(p: &Path) -> String {
    p.display().to_string()
}

#[test]
fn attach_with_key_file_options_and_detach_as_systemd_cryptsetup() {
    if !ready("attach_with_key_file") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let (img, kf) = image(&w, "a.img", &[]);
    let (rc, out, err) = w.vs(
        &[
            "attach",
            "att",
            &s(&img),
            &s(&kf),
            "luks,discard,backend=soft,frontend=fuse,x-made-up,tries=1",
        ],
        None,
    );
    assert_eq!(rc, 0, "{out}\n{err}\n{}", w.log());
    assert!(err.contains("unknown option 'x-made-up'"), "{err}");
    let st = w.status_json("att");
    assert_eq!(st["backend"], "soft", "{st}");
    assert_eq!(st["allow_discards"], true, "{st}");
    assert_eq!(st["readonly"], false, "{st}");
    // Already active on the same device: success, as systemd-cryptsetup.
    let (rc, _, err) = w.vs(&["attach", "att", &s(&img), &s(&kf), "backend=soft"], None);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("already active"), "{err}");
    // ... looked at before the key file is read.
    let (rc, _, err) = w.vs(&["attach", "att", &s(&img), "/nonexistent/k"], None);
    assert_eq!(rc, 0, "{err}");
    // The same name on another device: busy.
    let (img2, kf2) = image(&w, "b.img", &[]);
    let (rc, _, err) = w.vs(
        &["attach", "att", &s(&img2), &s(&kf2), "backend=soft"],
        None,
    );
    assert_eq!(rc, 5, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (rc, _, err) = w.vs(&["detach", "att"], None);
    assert_eq!(rc, 0, "{err}");
    assert!(w.volumes().is_empty());
    // Inactive: success too.
    let (rc, _, err) = w.vs(&["detach", "att"], None);
    assert_eq!(rc, 0, "{err}");
    assert!(err.contains("already inactive"), "{err}");

    // readonly, keyfile-offset/-size, key-slot: a key file with junk around the key.
    let mut padded = b"JUNK".to_vec();
    padded.extend_from_slice(PASS);
    padded.extend_from_slice(b"MORE");
    let pk = w.path().join("padded.key");
    std::fs::write(&pk, &padded).unwrap();
    let opts = format!(
        "readonly,keyfile-offset=4,keyfile-size={},key-slot=0,backend=soft",
        PASS.len()
    );
    let (rc, _, err) = w.vs(&["attach", "ro", &s(&img), &s(&pk), &opts], None);
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    assert_eq!(w.status_json("ro")["readonly"], true);
    w.vs_ok(&["detach", "ro"]);
    // The wrong key slot: no key (exit 2), nothing opened.
    let opts = format!(
        "keyfile-offset=4,keyfile-size={},key-slot=1,backend=soft",
        PASS.len()
    );
    let (rc, _, err) = w.vs(&["attach", "ro", &s(&img), &s(&pk), &opts], None);
    assert_ne!(rc, 0, "{err}");
    assert!(w.volumes().is_empty());
}

#[test]
fn attach_asks_on_stdin_when_not_under_systemd() {
    if !ready("attach_stdin") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let (img, _) = image(&w, "p.img", &[]);
    let mut line = PASS.to_vec();
    line.push(b'\n');
    for keyfile in ["-", "none", ""] {
        let (rc, out, err) = w.vs(
            &["attach", "pp", &s(&img), keyfile, "backend=soft"],
            Some(&line),
        );
        assert_eq!(rc, 0, "keyfile {keyfile:?}: {out}\n{err}\n{}", w.log());
        w.vs_ok(&["detach", "pp"]);
    }
    // No options field at all, and no key-file field.
    let (rc, _, err) = w.vs(&["attach", "pp", &s(&img)], Some(&line));
    assert_eq!(rc, 0, "{err}");
    w.vs_ok(&["detach", "pp"]);
    // A wrong passphrase from a pipe is not asked again: exit 2.
    let (rc, _, err) = w.vs(
        &["attach", "pp", &s(&img), "-", "backend=soft,tries=5"],
        Some(b"wrong\n"),
    );
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("No key available with this passphrase."),
        "{err}"
    );
    assert!(w.volumes().is_empty());
}

#[test]
fn attach_bad_input_gives_clear_messages_and_writes_nothing() {
    if !ready("attach_bad_input") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let (img, kf) = image(&w, "bad.img", &[]);
    let before = sha256_file(&img);
    let cases: &[(&[&str], i32, &str)] = &[
        (
            &["attach", "b", &s(&img), &s(&kf), "tries=many"],
            1,
            "tries",
        ),
        (
            &["attach", "b", &s(&img), &s(&kf), "backend=xen"],
            1,
            "backend",
        ),
        (&["attach", "b", &s(&img), &s(&kf), "plain"], 1, "plain"),
        (
            &[
                "attach",
                "b",
                &s(&img),
                "/nonexistent/vault.key",
                "backend=soft",
            ],
            1,
            "Failed to open key file /nonexistent/vault.key",
        ),
        (
            &["attach", "b", &s(&img), "relative.key"],
            1,
            "relative.key",
        ),
        (
            &[
                "attach",
                "b",
                "UUID=00000000-dead-beef-0000-000000000000",
                &s(&kf),
            ],
            4,
            "/dev/disk/by-uuid/00000000-dead-beef-0000-000000000000",
        ),
        (
            &["attach", "b", "/nonexistent/disk", &s(&kf)],
            4,
            "/nonexistent/disk",
        ),
        (&["attach", "../b", &s(&img), &s(&kf)], 1, "name"),
    ];
    for (args, code, needle) in cases {
        let (rc, out, err) = w.vs(args, None);
        assert_eq!(rc, *code, "{args:?}: {out}\n{err}");
        assert!(err.contains(needle), "{args:?}: wanted {needle:?} in {err}");
    }
    // From a generated unit: the vaulttab line goes in front of the error and warnings.
    let o = run_with_input(
        w.cmd(&[
            "attach",
            "b",
            &s(&img),
            "/nonexistent/vault.key",
            "frobnicate,backend=soft",
        ])
        .env("VMVAULT_VAULTTAB_SOURCE", "/etc/vaulttab:13"),
        None,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("/etc/vaulttab:13: Failed to open key file /nonexistent/vault.key"),
        "{err}"
    );
    assert!(err.contains("WARNING: /etc/vaulttab:13: "), "{err}");
    assert!(w.volumes().is_empty());
    assert_eq!(sha256_file(&img), before, "the device was written");
}

#[test]
fn open_with_detached_header_from_cryptsetup() {
    if !ready("open_detached_header") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let data = w.path().join("data.img");
    sparse_image(&data, 8);
    let hdr = w.path().join("hdr.img");
    let kf = w.path().join("hdr.key");
    std::fs::write(&kf, PASS).unwrap();
    run_ok(
        std::process::Command::new("cryptsetup")
            .args(["luksFormat", "--batch-mode", "--type", "luks2"])
            .args(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"])
            .arg("--header")
            .arg(&hdr)
            .arg("--key-file")
            .arg(&kf)
            .arg(&data),
        None,
    );
    // cryptsetup's detached header: keyslots in the header file, data from offset 0.
    let dump = run(std::process::Command::new("cryptsetup")
        .arg("luksDump")
        .arg(&hdr));
    assert!(dump.contains("offset: 0 [bytes]"), "{dump}");
    let data_before = sha256_file(&data);
    // The data device alone is not LUKS.
    let (rc, _, err) = w.vs(
        &[
            "open",
            "--key-file",
            &s(&kf),
            "--backend",
            "soft",
            &s(&data),
            "dh",
        ],
        None,
    );
    assert_eq!(rc, 1, "{err}");
    w.vs_ok(&[
        "open",
        "--header",
        &s(&hdr),
        "--key-file",
        &s(&kf),
        "--backend",
        "soft",
        &s(&data),
        "dh",
    ]);
    let st = w.status_json("dh");
    assert_eq!(st["offset"], 0, "{st}");
    assert_eq!(st["size"], 8 * 2048, "{st}");
    let dev = PathBuf::from(st["loop_device"].as_str().unwrap());
    let pattern: Vec<u8> = (0..4096u32).map(|i| (i % 253) as u8).collect();
    {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
        f.write_all(&pattern).unwrap();
        f.sync_all().unwrap();
    }
    w.vs_ok(&["close", "dh"]);
    // Ciphertext landed at offset 0 of the data device.
    let raw = std::fs::read(&data).unwrap();
    assert_ne!(sha256_file(&data), data_before);
    assert_ne!(&raw[..4096], &pattern[..], "data stored in the clear");
    // Reopen (attach with header=): the plaintext is back.
    let opts = format!("header={},backend=soft", s(&hdr));
    let (rc, _, err) = w.vs(&["attach", "dh", &s(&data), &s(&kf), &opts], None);
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    let dev = PathBuf::from(w.status_json("dh")["loop_device"].as_str().unwrap());
    let back = std::fs::read(&dev).unwrap();
    assert_eq!(&back[..4096], &pattern[..]);
    w.vs_ok(&["detach", "dh"]);
}

/// Answers systemd ask-password queries for `id` with `answers`, in order, as an agent
/// does; returns the messages it saw.
fn agent(id: String, answers: Vec<Vec<u8>>) -> std::thread::JoinHandle<Vec<String>> {
    std::thread::spawn(move || {
        let dir = Path::new("/run/systemd/ask-password");
        let mut seen = std::collections::HashSet::new();
        let mut messages = Vec::new();
        let mut answers = answers.into_iter();
        let t0 = std::time::Instant::now();
        while t0.elapsed() < std::time::Duration::from_secs(60) {
            let entries = std::fs::read_dir(dir).into_iter().flatten().flatten();
            for e in entries {
                let name = e.file_name().to_string_lossy().into_owned();
                if !name.starts_with("ask.") || seen.contains(&name) {
                    continue;
                }
                let Ok(text) = std::fs::read_to_string(e.path()) else {
                    continue;
                };
                let field = |k: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(&format!("{k}=")))
                        .map(str::to_string)
                };
                if field("Id").as_deref() != Some(id.as_str()) {
                    continue;
                }
                let Some(sock) = field("Socket") else {
                    continue;
                };
                seen.insert(name);
                messages.push(field("Message").unwrap_or_default());
                let Some(a) = answers.next() else {
                    return messages;
                };
                let mut dgram = b"+".to_vec();
                dgram.extend_from_slice(&a);
                let s = std::os::unix::net::UnixDatagram::unbound().unwrap();
                s.send_to(&dgram, &sock).unwrap();
            }
            if answers.len() == 0 && !messages.is_empty() {
                return messages;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        messages
    })
}

#[test]
fn attach_asks_through_systemd_ask_password_with_tries() {
    if !ready("attach_systemd_ask_password") || !need("systemd-ask-password", "attach_systemd") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let (img, _) = image(&w, "sd.img", &[]);
    let name = format!("sdask{}", std::process::id());
    let a = agent(
        format!("vmvault:{name}"),
        vec![b"wrong one".to_vec(), PASS.to_vec()],
    );
    // $NOTIFY_SOCKET: run as by a systemd unit (the value is not used by vaultsetup).
    let mut cmd = w.cmd(&["attach", &name, &s(&img), "none", "tries=3,backend=soft"]);
    cmd.env("NOTIFY_SOCKET", "/run/vmvault-test-no-notify");
    let o = run_with_input(&mut cmd, None);
    let err = String::from_utf8_lossy(&o.stderr);
    let messages = a.join().unwrap();
    assert_eq!(o.status.code(), Some(0), "{err}\n{}", w.log());
    assert_eq!(
        messages,
        vec![format!("Please enter passphrase for disk {name}:"); 2],
        "{err}"
    );
    assert!(
        err.contains("No key available with this passphrase."),
        "{err}"
    );
    w.vs_ok(&["detach", &name]);

    // tries=2, two wrong answers: exit 2 after the second.
    let a = agent(
        format!("vmvault:{name}"),
        vec![b"bad 1".to_vec(), b"bad 2".to_vec()],
    );
    let mut cmd = w.cmd(&["attach", &name, &s(&img), "-", "tries=2,backend=soft"]);
    cmd.env("NOTIFY_SOCKET", "/run/vmvault-test-no-notify");
    let o = run_with_input(&mut cmd, None);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(a.join().unwrap().len(), 2, "{err}");
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(w.volumes().is_empty());
}

/// Runs `cmd` with a new pseudo-terminal as its controlling terminal and stdin (stdout
/// and stderr piped); for each `(prompt, answer)` waits for the next `prompt` on the
/// terminal and types `answer`. Returns the exit code, the terminal's text and stderr.
fn on_pty(mut cmd: std::process::Command, dialog: &[(&str, &[u8])]) -> (i32, String, String) {
    use std::io::Read;
    use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
    use std::os::unix::process::CommandExt;
    use std::time::{Duration, Instant};
    let (mut m, mut s) = (-1, -1);
    // SAFETY: openpty writes two descriptors; the name/termios/winsize pointers may be null.
    let r = unsafe {
        libc::openpty(
            &mut m,
            &mut s,
            std::ptr::null_mut(),
            std::ptr::null(),
            std::ptr::null(),
        )
    };
    assert_eq!(r, 0, "openpty: {}", std::io::Error::last_os_error());
    // SAFETY: both descriptors were just created and are owned here only.
    let (master, slave) = unsafe { (OwnedFd::from_raw_fd(m), OwnedFd::from_raw_fd(s)) };
    cmd.stdin(std::process::Stdio::from(slave))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // SAFETY: setsid and ioctl(TIOCSCTTY) are async-signal-safe; they make the pty
    // (stdin) the child's controlling terminal, so /dev/tty is the pty.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY as _, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().unwrap();
    drop(cmd);
    let mut tty = std::fs::File::from(master);
    let mut text = String::new();
    let mut pos = 0;
    let read_some = |tty: &mut std::fs::File, text: &mut String, ms: i32| {
        let mut p = libc::pollfd {
            fd: tty.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one pollfd for the call.
        if unsafe { libc::poll(&mut p, 1, ms) } == 1 {
            let mut b = [0u8; 512];
            if let Ok(n) = tty.read(&mut b) {
                text.push_str(&String::from_utf8_lossy(&b[..n]));
            }
        }
    };
    for (prompt, answer) in dialog {
        let t0 = Instant::now();
        loop {
            if let Some(i) = text[pos..].find(prompt) {
                pos += i + prompt.len();
                break;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(30),
                "no prompt {prompt:?}; terminal: {text:?}"
            );
            read_some(&mut tty, &mut text, 100);
        }
        use std::io::Write;
        tty.write_all(answer).unwrap();
        tty.write_all(b"\n").unwrap();
    }
    let out = child.wait_with_output().unwrap();
    read_some(&mut tty, &mut text, 0);
    (
        out.status.code().unwrap_or(-1),
        text,
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn tries_and_timeout_on_a_terminal() {
    if !ready("tries_on_tty") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let (img, _) = image(&w, "tty.img", &[]);
    let prompt = "Please enter passphrase for disk tt:";
    // attach: a wrong passphrase, then the right one (tries=2).
    let (rc, tty, err) = on_pty(
        w.cmd(&["attach", "tt", &s(&img), "none", "tries=2,backend=soft"]),
        &[(prompt, b"wrong"), (prompt, PASS)],
    );
    assert_eq!(rc, 0, "{tty}\n{err}\n{}", w.log());
    assert!(
        err.contains("No key available with this passphrase."),
        "{err}"
    );
    w.vs_ok(&["detach", "tt"]);
    // open --tries 2: two wrong ones, exit 2; nothing opened.
    let oprompt = format!("Enter passphrase for {}:", s(&img));
    let (rc, tty, err) = on_pty(
        w.cmd(&["open", "--tries", "2", "--backend", "soft", &s(&img), "tt"]),
        &[(&oprompt, b"bad 1"), (&oprompt, b"bad 2")],
    );
    assert_eq!(rc, 2, "{tty}\n{err}");
    assert_eq!(err.matches("No key available").count(), 2, "{err}");
    assert!(w.volumes().is_empty());
    // open --timeout 1: nobody types; exit 1 with a clear message.
    let t0 = std::time::Instant::now();
    let (rc, tty, err) = on_pty(
        w.cmd(&[
            "open",
            "--timeout",
            "1",
            "--backend",
            "soft",
            &s(&img),
            "tt",
        ]),
        &[],
    );
    assert_eq!(rc, 1, "{tty}\n{err}");
    assert!(
        err.contains("Timed out waiting for the passphrase"),
        "{err}"
    );
    assert!(t0.elapsed() < std::time::Duration::from_secs(20));
    // attach timeout=1s: the same through vaulttab's option.
    let (rc, _, err) = on_pty(
        w.cmd(&["attach", "tt", &s(&img), "-", "timeout=1s,backend=soft"]),
        &[],
    );
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("Timed out"), "{err}");
}

#[test]
fn attach_reads_a_key_file_on_another_device() {
    if !ready("attach_keydev") || !need("mkfs.ext4", "attach_keydev") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let (img, _) = image(&w, "kd.img", &[]);
    let tree = w.path().join("tree");
    std::fs::create_dir_all(tree.join("keys")).unwrap();
    std::fs::write(tree.join("keys/data.key"), PASS).unwrap();
    let fs = w.path().join("keyfs.img");
    sparse_image(&fs, 8);
    run_ok(
        std::process::Command::new("mkfs.ext4")
            .args(["-q", "-F", "-d"])
            .arg(&tree)
            .arg(&fs),
        None,
    );
    let lo = run(std::process::Command::new("losetup")
        .args(["--find", "--show", "--read-only"])
        .arg(&fs));
    let lo = lo.trim().to_string();
    struct Detach(String);
    impl Drop for Detach {
        fn drop(&mut self) {
            let _ = std::process::Command::new("losetup")
                .args(["-d", &self.0])
                .status();
        }
    }
    let _d = Detach(lo.clone());
    let mounts_before = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    let spec = format!("/keys/data.key:{lo}");
    let (rc, _, err) = w.vs(&["attach", "kd", &s(&img), &spec, "backend=soft"], None);
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    w.vs_ok(&["detach", "kd"]);
    // The key device was mounted in a private namespace only, and nothing is left.
    let mounts_after = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert_eq!(
        mounts_before.lines().count(),
        mounts_after.lines().count(),
        "a mount leaked"
    );
    let left: Vec<_> = std::fs::read_dir("/run")
        .unwrap()
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_string_lossy()
                .starts_with("vaultsetup-keydev.")
        })
        .collect();
    assert!(left.is_empty(), "mount point left: {left:?}");
    // A missing key on that device: named, exit 1.
    let spec = format!("/keys/missing.key:{lo}");
    let (rc, _, err) = w.vs(&["attach", "kd", &s(&img), &spec, "backend=soft"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("/keys/missing.key"), "{err}");
}

#[test]
fn switch_root_verb_and_open_by_unknown_uuid() {
    if !ready("switch_root_verb") {
        return;
    }
    let _g = lock();
    let w = World::new();
    // No daemon: exit 4, nothing started.
    let (rc, _, err) = w.vs(&["switch-root", "/"], None);
    assert_eq!(rc, 4, "{err}");
    assert!(!w.run.join("control").exists());
    let _d = start_daemon(&w.run);
    let (rc, _, err) = w.vs(&["switch-root", "relative/root"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("not an absolute path"), "{err}");
    let (rc, _, err) = w.vs(&["switch-root", "/no/such/root"], None);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("does not exist"), "{err}");
    // chroot("/") changes nothing: the daemon answers and keeps serving.
    w.vs_ok(&["switch-root", "/"]);
    assert!(w.volumes().is_empty());
    // open by a UUID no device has: exit 4 naming the by-uuid link.
    let (rc, _, err) = w.vs(
        &["open", "UUID=0badc0de-0000-4000-8000-000000000000", "x"],
        Some(b"pass\n"),
    );
    assert_eq!(rc, 4, "{err}");
    assert!(
        err.contains("/dev/disk/by-uuid/0badc0de-0000-4000-8000-000000000000"),
        "{err}"
    );
    let (rc, _, err) = w.vs(
        &["open", "--header", "LABEL=no-such-header", "/dev/null", "x"],
        Some(b"pass\n"),
    );
    assert_eq!(rc, 4, "{err}");
    assert!(err.contains("/dev/disk/by-label/no-such-header"), "{err}");
}
