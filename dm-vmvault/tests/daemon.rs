//! vmvaultd end to end: control socket, keyring keys, FUSE + loop, ext4, reopen, fsck,
//! compatibility with an independent AES-XTS (Python `cryptography`), error paths.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::process::Command;

use common::*;

const NEEDS: &[&str] = &["fuse", "loop", "keyctl", "mkfs.ext4", "fsck.ext4"];

#[test]
fn ext4_open_close_reopen_fsck() {
    if !require(NEEDS) {
        return;
    }
    for backend in vault_backends() {
        ext4_cycle(backend);
    }
}

fn ext4_cycle(backend: vmvault_proto::protocol::BackendChoice) {
    let t = TempDir::new("daemon-ext4");
    let rundir = t.path().join("run");
    let img = t.path().join("img");
    sparse_image(&img, 41);
    let key = test_key(64, 3);
    let d = start_daemon(&rundir);
    let mut req = open_req("ext4vol", &img, &key, 4096);
    req.backend = backend;
    let serial = req.key_serial;
    let st = d.client().open(req.clone()).map(|(st, _)| st).unwrap();
    assert!(
        !keyring_exists(serial),
        "keyring key must be invalidated after import"
    );
    assert_eq!(st.backend, backend, "{st:?}");
    assert_eq!(st.name.as_str(), "ext4vol");
    assert_eq!(st.key_size.bits(), 512);
    assert_eq!(st.sector_size.bytes(), 4096);
    assert_eq!(st.offset.0, 2048);
    assert_eq!(st.size.0, 40 * 2048);
    assert_eq!(st.daemon_pid, d.child.id());
    assert!(st.table.contains(":64:vault:"), "{}", st.table);
    assert!(Path::new(&st.device).exists());
    let dev = Path::new(&st.device).to_path_buf();
    let fsmp = t.path().join("fs");
    mkfs_ext4(&dev);
    mount(&dev, &fsmp);
    let big: Vec<u8> = (0..5_000_000u32).map(|i| (i * 7 % 253) as u8).collect();
    std::fs::write(fsmp.join("big.bin"), &big).unwrap();
    std::fs::create_dir(fsmp.join("dir")).unwrap();
    for i in 0..50 {
        std::fs::write(
            fsmp.join(format!("dir/f{i}")),
            format!("file {i}\n").repeat(i + 1),
        )
        .unwrap();
    }
    run(&mut Command::new("sync"));
    // Busy: close refused with 5 while mounted.
    let e = d.client().close("ext4vol").unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    umount(&fsmp);
    d.client().close("ext4vol").unwrap();
    assert!(d.client().list().unwrap().is_empty());

    req.key_serial = keyring_add(&key);
    let st = d.client().open(req).map(|(st, _)| st).unwrap();
    let dev = Path::new(&st.device).to_path_buf();
    fsck_clean(&dev);
    mount(&dev, &fsmp);
    assert_eq!(std::fs::read(fsmp.join("big.bin")).unwrap(), big);
    for i in 0..50 {
        assert_eq!(
            std::fs::read_to_string(fsmp.join(format!("dir/f{i}"))).unwrap(),
            format!("file {i}\n").repeat(i + 1)
        );
    }
    umount(&fsmp);
    d.client().close("ext4vol").unwrap();
    d.shutdown();
}

#[test]
fn second_open_of_active_name_is_code_5_and_bad_requests_are_refused() {
    if !require(NEEDS) {
        return;
    }
    let t = TempDir::new("daemon-busy");
    let rundir = t.path().join("run");
    let img = t.path().join("img");
    let img2 = t.path().join("img2");
    sparse_image(&img, 9);
    sparse_image(&img2, 9);
    let key = test_key(64, 4);
    let d = start_daemon(&rundir);
    d.client()
        .open(open_req("dup", &img, &key, 512))
        .map(|(st, _)| st)
        .unwrap();
    let e = d
        .client()
        .open(open_req("dup", &img2, &key, 512))
        .map(|(st, _)| st)
        .unwrap_err();
    assert_eq!(e.exit_code(), 5, "{e}");
    assert!(e.to_string().contains("already exists"), "{e}");

    // Wrong key size in the keyring: code 2, nothing opened.
    let mut r = open_req("badkey", &img2, &key, 512);
    r.key_serial = keyring_add(&key[..32]);
    let e = d.client().open(r).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    // Missing key: code 2.
    let r = open_req("nokey", &img2, &key, 512);
    run(Command::new("keyctl").args(["invalidate", &r.key_serial.to_string()]));
    std::thread::sleep(std::time::Duration::from_millis(100));
    let e = d.client().open(r).unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    // Missing backing: code 4.
    let e = d
        .client()
        .open(open_req("nodev", &t.path().join("missing"), &key, 512))
        .map(|(st, _)| st)
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    // Stacking on our own device: refused.
    let own = d.client().status("dup").unwrap().device;
    let e = d
        .client()
        .open(open_req("stack", Path::new(&own), &key, 512))
        .map(|(st, _)| st)
        .unwrap_err();
    assert_eq!(e.exit_code(), 4, "{e}");
    // Bad name (refused before it is sent; the daemon's own refusal is in
    // tests/protocol.rs) and unknown volume.
    let e = d.client().close("a/b").unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    assert_eq!(d.client().close("nosuch").unwrap_err().exit_code(), 4);
    assert_eq!(d.client().list().unwrap().len(), 1);
    d.shutdown();
}

/// Reads `len` bytes at `pos` of `path`.
fn read_at(path: &Path, pos: u64, len: usize) -> Vec<u8> {
    let mut f = std::fs::File::open(path).unwrap();
    f.seek(SeekFrom::Start(pos)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

#[test]
fn sectors_decrypt_with_python_cryptography() {
    if !require(&["fuse", "loop", "keyctl", "python3", "python3-cryptography"]) {
        return;
    }
    for (backend, ss) in vault_backends()
        .into_iter()
        .flat_map(|b| [(b, 512u32), (b, 4096)])
    {
        let t = TempDir::new("daemon-compat");
        let rundir = t.path().join("run");
        let img = t.path().join("img");
        sparse_image(&img, 5);
        let key = test_key(64, 9);
        let d = start_daemon(&rundir);
        let mut req = open_req("compat", &img, &key, ss);
        req.backend = backend;
        let st = d.client().open(req).map(|(st, _)| st).unwrap();
        assert_eq!(st.backend, backend);
        let plain: Vec<u8> = (0..65536u32)
            .map(|i| (i * 13 % 256) as u8 ^ (i >> 9) as u8)
            .collect();
        // Write at plaintext byte 12288 (3 × 4096) through the block device, O_DIRECT.
        {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .custom_flags(libc::O_DIRECT)
                .open(&st.device)
                .unwrap();
            let mut buf = dm_vmvault::crypt::AlignedBuf::new(plain.len()).unwrap();
            use dm_vmvault::crypt::IoBuf;
            buf.bytes_mut().copy_from_slice(&plain);
            f.seek(SeekFrom::Start(12288)).unwrap();
            f.write_all(buf.bytes()).unwrap();
            f.sync_all().unwrap();
        }
        d.client().close("compat").unwrap();
        d.shutdown();
        let raw = t.path().join("raw");
        std::fs::write(&raw, read_at(&img, 2048 * 512 + 12288, plain.len())).unwrap();
        let script = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
key = bytes.fromhex(sys.argv[1]); ss = int(sys.argv[2]); first = int(sys.argv[3])
data = open(sys.argv[4], 'rb').read()
out = bytearray()
for i in range(0, len(data), ss):
    tweak = (first + (i // 512)).to_bytes(16, 'little')
    d = Cipher(algorithms.AES(key), modes.XTS(tweak)).decryptor()
    out += d.update(data[i:i+ss]) + d.finalize()
sys.stdout.buffer.write(bytes(out))
"#;
        let hex: String = key.iter().map(|b| format!("{b:02x}")).collect();
        let out = Command::new("python3")
            .args([
                "-c",
                script,
                &hex,
                &ss.to_string(),
                &(12288 / 512).to_string(),
            ])
            .arg(&raw)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            out.stdout == plain,
            "{backend:?} ss={ss}: python decryption differs"
        );
    }
}

#[test]
fn backing_io_errors_reach_the_user_as_eio() {
    if !require(&["fuse", "loop", "keyctl", "mount"]) {
        return;
    }
    let t = TempDir::new("daemon-eio");
    let rundir = t.path().join("run");
    let small = t.path().join("tmpfs");
    std::fs::create_dir_all(&small).unwrap();
    run(Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=4m", "tmpfs"])
        .arg(&small));
    let img = small.join("img");
    sparse_image(&img, 17); // 17 MiB sparse file on a 4 MiB tmpfs
    let key = test_key(64, 5);
    let d = start_daemon(&rundir);
    let st = d
        .client()
        .open(open_req("eio", &img, &key, 4096))
        .map(|(st, _)| st)
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(&st.device)
        .unwrap();
    let mut buf = dm_vmvault::crypt::AlignedBuf::new(1 << 20).unwrap();
    use dm_vmvault::crypt::IoBuf;
    buf.bytes_mut().fill(0xa5);
    let mut err = None;
    for i in 0..16u64 {
        f.seek(SeekFrom::Start(i << 20)).unwrap();
        if let Err(e) = f.write_all(buf.bytes()) {
            err = Some(e);
            break;
        }
    }
    let e = err.expect("writes beyond the tmpfs size must fail");
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);

    // Truncate the backing file under the mapping: reads past the new end are EIO.
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(2 << 20)
        .unwrap();
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(&st.device)
        .unwrap();
    f.seek(SeekFrom::Start(8 << 20)).unwrap();
    let e = f.read(buf.bytes_mut()).unwrap_err();
    assert_eq!(e.raw_os_error(), Some(libc::EIO), "{e}");
    drop(f);
    d.client().close("eio").unwrap();
    d.shutdown();
    run(Command::new("umount").arg(&small));
}

/// Runs `f` on a thread; panics if it does not finish within `secs` (a hang).
fn within<T: Send + 'static>(secs: u64, what: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(std::time::Duration::from_secs(secs))
        .unwrap_or_else(|_| panic!("{what} hung for {secs} s"))
}

#[test]
fn sigkill_during_writes_no_hang_restart_reopen_fsynced_data_intact() {
    if !require(NEEDS) {
        return;
    }
    let t = TempDir::new("daemon-kill");
    let rundir = t.path().join("run");
    let img = t.path().join("img");
    sparse_image(&img, 41);
    let key = test_key(64, 6);
    let mut d = start_daemon(&rundir);
    let st = d
        .client()
        .open(open_req("killvol", &img, &key, 4096))
        .map(|(st, _)| st)
        .unwrap();
    let dev = Path::new(&st.device).to_path_buf();
    let fsmp = t.path().join("fs");
    mkfs_ext4(&dev);
    mount(&dev, &fsmp);
    let synced: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    {
        let mut f = std::fs::File::create(fsmp.join("synced.bin")).unwrap();
        f.write_all(&synced).unwrap();
        f.sync_all().unwrap();
    }
    run(&mut Command::new("sync"));

    // A writer that keeps writing and fsyncing until it gets an error.
    let p = fsmp.join("stream.bin");
    let (started_tx, started_rx) = std::sync::mpsc::channel();
    let writer = std::thread::spawn(move || -> Result<u32, std::io::Error> {
        let mut f = std::fs::File::create(&p)?;
        let chunk = vec![0x5au8; 256 << 10];
        for i in 0..100_000u32 {
            f.write_all(&chunk)?;
            f.sync_data()?;
            if i == 2 {
                let _ = started_tx.send(());
            }
            if i % 40 == 39 {
                f.set_len(0)?; // stay small
            }
        }
        Ok(100_000)
    });
    started_rx
        .recv_timeout(std::time::Duration::from_secs(20))
        .expect("writer started");
    d.kill();
    let r = within(60, "writer after SIGKILL", move || writer.join().unwrap());
    assert!(r.is_err(), "writes after SIGKILL must fail, got {r:?}");

    // The dead mount does not hang unmount.
    let fs2 = fsmp.clone();
    within(60, "umount after SIGKILL", move || {
        let ok = Command::new("umount")
            .arg(&fs2)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&fs2).status();
        }
    });

    // A restarted daemon cleans the stale FUSE mount and reopens the volume.
    let d2 = within(30, "restart", {
        let rundir = rundir.clone();
        move || start_daemon(&rundir)
    });
    let stale: Vec<_> = std::fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .filter(|l| l.contains(rundir.join("mnt").to_str().unwrap()))
        .map(String::from)
        .collect();
    assert!(
        stale.is_empty(),
        "stale mounts left: {stale:?}\n{}",
        d2.log()
    );
    let st = d2
        .client()
        .open(open_req("killvol", &img, &key, 4096))
        .map(|(st, _)| st)
        .unwrap();
    let dev = Path::new(&st.device).to_path_buf();
    mount(&dev, &fsmp); // replays the journal
    assert!(
        std::fs::read(fsmp.join("synced.bin")).unwrap() == synced,
        "fsynced data changed"
    );
    umount(&fsmp);
    fsck_clean(&dev);
    d2.client().close("killvol").unwrap();
    d2.shutdown();
}

#[test]
fn control_socket_serves_root_only_and_spawns_on_demand() {
    if !require(&["setpriv", "python3"]) {
        return;
    }
    let t = TempDir::new("daemon-ctl");
    let rundir = t.path().join("run");
    // Spawn on demand (vmvaultd is found one directory above the test binary).
    let mut c = vmvault_proto::client::connect_or_spawn(&rundir, &Default::default()).unwrap();
    let pid = c.ping().unwrap();
    // Stop the spawned daemon whatever happens below.
    struct Stop(std::path::PathBuf, u32);
    impl Drop for Stop {
        fn drop(&mut self) {
            if let Ok(mut c) = vmvault_proto::client::Client::connect(&self.0) {
                let _ = c.shutdown();
            }
            // SAFETY: kill(2) on the pid of the daemon this test spawned.
            unsafe { libc::kill(self.1 as i32, libc::SIGKILL) };
        }
    }
    let _stop = Stop(rundir.clone(), pid);
    // A second call finds the running daemon instead of starting another.
    assert_eq!(
        vmvault_proto::client::connect_or_spawn(&rundir, &Default::default())
            .unwrap()
            .ping()
            .unwrap(),
        pid
    );
    // A second daemon on the same run dir refuses to start (exit 5).
    let st = Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
        .arg("--run-dir")
        .arg(&rundir)
        .status()
        .unwrap();
    assert_eq!(st.code(), Some(5));

    // Open the path up so that a non-root peer can reach the socket: the daemon itself
    // must still refuse it (SO_PEERCRED).
    use std::os::unix::fs::PermissionsExt;
    for p in [t.path().to_path_buf(), rundir.clone()] {
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }
    let sock = rundir.join("control");
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o666)).unwrap();
    let script = "import socket,sys\ns=socket.socket(socket.AF_UNIX)\ns.connect(sys.argv[1])\n\
                  s.sendall(b'{\"cmd\":\"list\"}\\n')\nprint(s.makefile().readline())";
    let out = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            script,
        ])
        .arg(&sock)
        .output()
        .unwrap();
    let line = String::from_utf8_lossy(&out.stdout);
    assert!(
        line.contains("\"result\":\"error\"") && line.contains("\"code\":2"),
        "non-root peer got: {line} {}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.shutdown().unwrap();
    // The daemon exits and removes its socket.
    let t0 = std::time::Instant::now();
    while sock.exists() && t0.elapsed().as_secs() < 10 {
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    assert!(!sock.exists());
}

/// Zeroing through the loop device must read back as zeros, also with `allow_discards`:
/// the loop driver sends write-zeroes as PUNCH_HOLE, which the FUSE frontend must never
/// turn into a discard of the backing file (that would decrypt to garbage).
#[test]
fn zeroout_reads_back_zeros_with_and_without_discards() {
    if !require(&["fuse", "loop", "keyctl", "blkdiscard"]) {
        return;
    }
    for allow_discards in [false, true] {
        let t = TempDir::new("daemon-zeroout");
        let rundir = t.path().join("run");
        let img = t.path().join("img");
        sparse_image(&img, 9);
        let key = test_key(64, 9);
        let d = start_daemon(&rundir);
        let mut req = open_req("zvol", &img, &key, 4096);
        req.allow_discards = allow_discards;
        let st = d.client().open(req).map(|(st, _)| st).unwrap();
        let dev = Path::new(&st.device).to_path_buf();
        let pattern = vec![0x5au8; 1 << 20];
        {
            let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
            f.write_all(&pattern).unwrap();
            f.sync_all().unwrap();
        }
        // Write-zeroes (BLKZEROOUT) over the first 512 KiB; a plain discard over the rest
        // may fail (not passed through) but must not break reads of the zeroed part.
        run(Command::new("blkdiscard")
            .args(["-z", "-o", "0", "-l", "524288"])
            .arg(&dev));
        let _ = Command::new("blkdiscard")
            .args(["-o", "524288", "-l", "524288"])
            .arg(&dev)
            .status();
        let got = read_at(&dev, 0, 1 << 20);
        assert!(
            got[..524288].iter().all(|&b| b == 0),
            "zeroed range does not read back as zeros (allow_discards={allow_discards})"
        );
        assert!(
            got[524288..].iter().all(|&b| b == 0 || b == 0x5a),
            "discarded range reads back garbage (allow_discards={allow_discards})"
        );
        d.client().close("zvol").unwrap();
    }
}
