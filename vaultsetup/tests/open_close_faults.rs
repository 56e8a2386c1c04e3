//! `vaultsetup open/close` under faults (issue 11, points 2 and 5), through the real CLI
//! and vmvaultd:
//! - `close` while something holds the volume (a plain `exec 3<DEV` open, a mounted
//!   filesystem) answers as cryptsetup does (exit 5, "Device NAME is still in use."),
//!   and the volume stays whole: readable, and closable once released;
//! - the backing path swapped for a symlink to another image while `vaultsetup open`
//!   waits for its key file (a FIFO) changes nothing: the volume maps the file whose
//!   header was read, and the other image is untouched.
//!
//! Needs root, /dev/fuse, loop devices, cryptsetup, keyctl, mkfs.ext4. Missing pieces:
//! FAIL under `CI`, else print SKIPPED.

mod common;

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use common::*;

/// One daemon at a time (two cores).
static SERIAL: Mutex<()> = Mutex::new(());

const PASS: &[u8] = b"faults test passphrase";

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn requirements(test: &str) -> bool {
    require_for(
        test,
        &[
            "fuse",
            "loop",
            "cryptsetup",
            "keyctl",
            "mkfs.ext4",
            "mkfifo",
        ],
    )
}

/// A LUKS2 image `name` in `w`'s temp dir (cheap PBKDF2), passphrase [`PASS`].
fn format(w: &World, name: &str) -> PathBuf {
    let img = w.path().join(name);
    let kf = pass_file(w);
    support::luks_format(
        &img,
        24,
        &kf,
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    img
}

/// The passphrase as a key file in `w`'s temp dir.
fn pass_file(w: &World) -> PathBuf {
    let kf = w.path().join("pass");
    std::fs::write(&kf, PASS).unwrap();
    kf
}

/// `vaultsetup open --key-file PASS IMG NAME`, which must succeed.
fn open(w: &World, img: &Path, name: &str) {
    let kf = pass_file(w).display().to_string();
    let img = img.display().to_string();
    w.vs_ok(&["open", "--key-file", &kf, &img, name]);
}

/// A child process killed (and reaped) on drop.
struct Reaped(Child);

impl Drop for Reaped {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A 4096-aligned buffer for O_DIRECT.
struct Aligned {
    ptr: *mut u8,
    len: usize,
}

impl Aligned {
    fn new(len: usize) -> Aligned {
        let layout = std::alloc::Layout::from_size_align(len, 4096).unwrap();
        // SAFETY: non-zero size layout.
        let ptr = unsafe { std::alloc::alloc_zeroed(layout) };
        assert!(!ptr.is_null());
        Aligned { ptr, len }
    }
    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: `ptr` is valid for `len` bytes, owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, self.len) }
    }
}

impl Drop for Aligned {
    fn drop(&mut self) {
        let layout = std::alloc::Layout::from_size_align(self.len, 4096).unwrap();
        // SAFETY: allocated in `new` with this layout.
        unsafe { std::alloc::dealloc(self.ptr, layout) };
    }
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[2] ^ seed)
        .collect()
}

fn write_direct(dev: &Path, data: &[u8]) {
    let mut buf = Aligned::new(data.len());
    buf.as_mut().copy_from_slice(data);
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    f.write_all(buf.as_mut()).unwrap();
    f.sync_all().unwrap();
}

fn read_direct(dev: &Path, len: usize) -> Vec<u8> {
    use std::io::Read;
    let mut buf = Aligned::new(len);
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap();
    f.read_exact(buf.as_mut()).unwrap();
    buf.as_mut().to_vec()
}

/// A process that holds `dev` open the way `exec 3<DEV` does (no O_EXCL).
fn hold_open(dev: &Path) -> Reaped {
    let child = Command::new("sh")
        .args(["-c", "exec 3<\"$1\" && exec sleep 600", "sh"])
        .arg(dev)
        .stdin(Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded) until the shell has the device open.
    let pid = child.id();
    let t0 = Instant::now();
    loop {
        let held = std::fs::read_link(format!("/proc/{pid}/fd/3")).is_ok_and(|t| t == dev);
        if held {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "holder never opened {dev:?}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    Reaped(child)
}

fn assert_busy(w: &World, name: &str, what: &str) {
    let (rc, out, err) = w.vs(&["close", name], None);
    assert_eq!(
        rc,
        5,
        "close while {what} must be refused with 5: {out}\n{err}\ndaemon log:\n{}",
        w.log()
    );
    assert!(
        err.contains(&format!("Device {name} is still in use.")),
        "message for close while {what}: {err}"
    );
    assert_eq!(
        w.status_json(name)["name"].as_str(),
        Some(name),
        "volume must stay active after a refused close ({what})"
    );
}

#[test]
fn close_while_held_is_refused_with_5_and_the_volume_stays_whole() {
    if !requirements("close_while_held") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let img = format(&w, "held.img");
    open(&w, &img, "heldvol");
    let dev = w.device("heldvol");
    let data = pattern(256 * 1024, 7);
    write_direct(&dev, &data);

    // A plain open, as `exec 3</dev/...` does: no O_EXCL.
    let holder = hold_open(&dev);
    assert_busy(&w, "heldvol", "held by exec 3<");
    assert!(
        read_direct(&dev, data.len()) == data,
        "data after refused close"
    );
    // Refused again: nothing was torn down by the first attempt.
    assert_busy(&w, "heldvol", "still held by exec 3<");
    drop(holder);
    w.vs_ok(&["close", "heldvol"]);
    let (rc, _, _) = w.vs(&["status", "heldvol"], None);
    assert_eq!(rc, 4, "closed volume must be inactive");

    // A mounted filesystem.
    open(&w, &img, "heldvol");
    let dev = w.device("heldvol");
    run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&dev));
    let mp = w.path().join("mnt");
    std::fs::create_dir_all(&mp).unwrap();
    run(Command::new("mount").arg(&dev).arg(&mp));
    std::fs::write(mp.join("f"), b"still here").unwrap();
    run(&mut Command::new("sync"));
    assert_busy(&w, "heldvol", "mounted");
    // The filesystem still works after the refused close.
    std::fs::write(mp.join("g"), b"and writable").unwrap();
    run(&mut Command::new("sync"));
    assert_eq!(std::fs::read(mp.join("f")).unwrap(), b"still here");
    run(Command::new("umount").arg(&mp));
    w.vs_ok(&["close", "heldvol"]);

    // Reopen: what was written survived the refused closes.
    open(&w, &img, "heldvol");
    let dev = w.device("heldvol");
    run(Command::new("mount").arg(&dev).arg(&mp));
    assert_eq!(std::fs::read(mp.join("g")).unwrap(), b"and writable");
    run(Command::new("umount").arg(&mp));
    w.vs_ok(&["close", "heldvol"]);
}

#[test]
fn backing_swapped_for_a_symlink_during_the_key_wait_is_not_used() {
    if !requirements("backing_swapped") {
        return;
    }
    let _g = lock();
    let w = World::new();
    let a = format(&w, "a.img");
    let b = w.path().join("b.img");
    // Same header and key: only the data tells them apart.
    std::fs::copy(&a, &b).unwrap();
    let len = 128 * 1024;
    let pa = pattern(len, 0xa5);
    let pb = pattern(len, 0x5b);
    open(&w, &a, "swapa");
    write_direct(&w.device("swapa"), &pa);
    w.vs_ok(&["close", "swapa"]);
    open(&w, &b, "swapb");
    write_direct(&w.device("swapb"), &pb);
    w.vs_ok(&["close", "swapb"]);
    let b_sum = sha256_file(&b);

    let fifo = w.path().join("key.fifo");
    run(Command::new("mkfifo").arg(&fifo));
    let fifo_s = fifo.display().to_string();
    let a_s = a.display().to_string();
    let mut child = Reaped(
        w.cmd(&["open", "--key-file", &fifo_s, &a_s, "swapped"])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    // Once vaultsetup opens the FIFO (it has read the header by then), a nonblocking
    // write open succeeds.
    let t0 = Instant::now();
    let mut writer = loop {
        match std::fs::OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
        {
            Ok(f) => break f,
            Err(e) if e.raw_os_error() == Some(libc::ENXIO) => {}
            Err(e) => panic!("open fifo: {e}"),
        }
        if let Ok(Some(st)) = child.0.try_wait() {
            panic!("vaultsetup ended before reading its key file: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "vaultsetup never opened its key file"
        );
        std::thread::sleep(Duration::from_millis(10));
    };
    // Swap: the path now leads to the other image.
    let a_real = w.path().join("a.real");
    std::fs::rename(&a, &a_real).unwrap();
    std::os::unix::fs::symlink(&b, &a).unwrap();
    writer.write_all(PASS).unwrap();
    drop(writer);
    let t0 = Instant::now();
    let st = loop {
        if let Some(st) = child.0.try_wait().unwrap() {
            break st;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(120),
            "vaultsetup open hung"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    let mut err = String::new();
    if let Some(mut e) = child.0.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut e, &mut err);
    }
    assert!(st.success(), "open: {st} {err}\ndaemon log:\n{}", w.log());

    let dev = w.device("swapped");
    let got = read_direct(&dev, len);
    assert!(
        got == pa,
        "the volume must map the image whose header was read, not the swapped-in one \
         (it reads as {})",
        if got == pb {
            "the swapped-in image"
        } else {
            "neither image"
        }
    );
    let backing = w.status_json("swapped")["backing"]
        .as_str()
        .unwrap()
        .to_string();
    assert!(backing.ends_with("a.real"), "backing shown: {backing}");
    // Writes go to the original image only.
    write_direct(&dev, &pattern(len, 0x33));
    w.vs_ok(&["close", "swapped"]);
    assert_eq!(
        sha256_file(&b),
        b_sum,
        "the swapped-in image must be untouched"
    );
}
