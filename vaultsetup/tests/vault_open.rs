//! `vaultsetup open/close/status` end to end through vmvaultd and the vault (issues 5
//! and 6): cryptsetup-made LUKS2/LUKS1 images on the kvm and soft backends, ext4,
//! reopen, fsck; compatibility with qemu-io (LUKS1) and Python `cryptography` with the
//! dumped volume key (LUKS2, 512 and 4096-byte sectors), both directions;
//! `--volume-key-keyring` good and bad inputs; exit codes.
//!
//! Needs root, /dev/fuse, loop devices, cryptsetup, mkfs.ext4, keyctl (and /dev/kvm,
//! qemu-io, python3 + cryptography for some tests). Missing pieces: FAIL under `CI`,
//! else print SKIPPED. `vmvaultd` is taken from next to the `vaultsetup` binary (where
//! `cargo test --workspace` builds it), else built with cargo into the same target dir.

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Mutex;

use common::*;

/// One vault-backed test at a time: each starts a daemon and a vault, and the machine
/// has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

const PASS: &[u8] = b"vault test passphrase";

fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

const BASE: &[&str] = &[
    "fuse",
    "loop",
    "cryptsetup",
    "keyctl",
    "mkfs.ext4",
    "fsck.ext4",
];

fn format(w: &World, name: &str, args: &[&str], mib: u64) -> PathBuf {
    let img = w.path().join(name);
    let kf = pass_file(w);
    let mut a = vec!["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    a.extend_from_slice(args);
    support::luks_format(&img, mib, Path::new(&kf), &a);
    img
}

fn pass_file(w: &World) -> String {
    let kf = w.path().join("pass");
    std::fs::write(&kf, PASS).unwrap();
    kf.display().to_string()
}

fn open(w: &World, img: &Path, name: &str, extra: &[&str]) {
    let kf = pass_file(w);
    let mut a = vec!["open", "--key-file", &kf];
    a.extend_from_slice(extra);
    let img = img.display().to_string();
    a.push(&img);
    a.push(name);
    w.vs_ok(&a);
}

fn no_staged_keys() {
    let keys = std::fs::read_to_string("/proc/keys").unwrap_or_default();
    assert!(
        !keys.contains("vaultsetup:") && !keys.contains("vmvaultd:req"),
        "staged keys left in /proc/keys:\n{keys}"
    );
}

/// Issue 5 acceptance: open, mkfs, mount, write, unmount, close, reopen, intact, fsck.
fn ext4_cycle(w: &World, img: &Path, name: &str, backend: &str, ty: &str) {
    open(w, img, name, &["--backend", backend]);
    no_staged_keys();
    let st = w.status_json(name);
    assert_eq!(st["backend"], backend, "{st}");
    assert_eq!(st["volume_type"], ty, "{st}");
    let dev = w.device(name);
    let human = w.vs_ok(&["status", name]);
    assert!(
        human.starts_with(&format!("{} is active.", dev.display())),
        "{human}"
    );
    assert!(human.contains(&format!("  type:    {ty}")), "{human}");
    assert!(
        human.contains(&format!("vault ({backend} backend")),
        "{human}"
    );
    assert!(human.contains("  mode:    read/write"), "{human}");

    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(&dev));
    let mp = w.path().join(format!("mnt-{name}"));
    std::fs::create_dir_all(&mp).unwrap();
    run(Command::new("mount").arg(&dev).arg(&mp));
    let big: Vec<u8> = (0..3_000_000u32).map(|i| (i * 31 % 251) as u8).collect();
    std::fs::write(mp.join("big.bin"), &big).unwrap();
    std::fs::create_dir(mp.join("d")).unwrap();
    for i in 0..20 {
        std::fs::write(mp.join(format!("d/{i}")), format!("{i}\n").repeat(i + 1)).unwrap();
    }
    run(&mut Command::new("sync"));
    // Busy while mounted.
    let (rc, _, err) = w.vs(&["close", name], None);
    assert_eq!(rc, 5, "close while mounted: {err}");
    run(Command::new("umount").arg(&mp));
    w.vs_ok(&["close", name]);
    let (rc, out, _) = w.vs(&["status", name], None);
    assert_eq!(rc, 4, "status after close");
    assert!(out.contains("is inactive"), "{out}");
    assert!(w.volumes().is_empty());

    open(w, img, name, &["--backend", backend]);
    let dev = w.device(name);
    run(Command::new("fsck.ext4").arg("-fn").arg(&dev));
    run(Command::new("mount").arg(&dev).arg(&mp));
    assert_eq!(std::fs::read(mp.join("big.bin")).unwrap(), big);
    for i in 0..20 {
        assert_eq!(
            std::fs::read_to_string(mp.join(format!("d/{i}"))).unwrap(),
            format!("{i}\n").repeat(i + 1)
        );
    }
    run(Command::new("umount").arg(&mp));
    w.vs_ok(&["close", name]);
}

#[test]
fn luks2_kvm_ext4_reopen_fsck_and_second_open_is_5() {
    if !require_for("luks2 kvm", &[BASE, &["kvm"]].concat()) {
        return;
    }
    let _g = lock();
    let w = World::new();
    let img = format(&w, "l2.img", &["--type", "luks2"], 48);
    ext4_cycle(&w, &img, "l2kvm", "kvm", "LUKS2");

    // status --json fields; a second open of the active NAME exits 5 (before any prompt).
    open(&w, &img, "l2kvm", &[]);
    let st = w.status_json("l2kvm");
    assert_eq!(st["name"], "l2kvm");
    assert!(st["device"].as_str().unwrap().starts_with("/dev/"), "{st}");
    assert_eq!(
        st["backing"].as_str().unwrap(),
        std::fs::canonicalize(&img).unwrap().to_str().unwrap()
    );
    assert_eq!(st["cipher"], "aes-xts-plain64");
    assert_eq!(st["key_size"], 512);
    assert_eq!(st["sector_size"], 4096);
    assert_eq!(st["offset"], 32768);
    assert_eq!(st["iv_large_sectors"], false);
    assert_eq!(st["backend"], "kvm");
    assert!(
        st["protection"].as_str().unwrap().contains("vault VM"),
        "{st}"
    );
    assert!(st["daemon_pid"].as_u64().unwrap() > 1);
    assert_eq!(st["size"], 48 * 2048 - 32768);
    let (rc, _, err) = w.vs(
        &[
            "open",
            "--key-file",
            "/dev/null",
            img.to_str().unwrap(),
            "l2kvm",
        ],
        None,
    );
    assert_eq!(rc, 5, "{err}");
    assert!(err.contains("already exists"), "{err}");
    let (rc, _, err) = w.vs(&["close", "nosuch"], None);
    assert_eq!(rc, 4, "{err}");
    w.vs_ok(&["close", "l2kvm"]);
}

#[test]
fn luks2_soft_and_luks1_ext4_reopen_fsck() {
    if !require_for("luks2 soft + luks1", BASE) {
        return;
    }
    let _g = lock();
    let w = World::new();
    let img = format(&w, "l2.img", &["--type", "luks2"], 40);
    ext4_cycle(&w, &img, "l2soft", "soft", "LUKS2");
    let img1 = format(&w, "l1.img", &["--type", "luks1"], 40);
    let backend = if kvm_usable() { "kvm" } else { "soft" };
    ext4_cycle(&w, &img1, "l1", backend, "LUKS1");
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    let mut x = seed.wrapping_mul(2_654_435_761).max(1);
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn write_direct(dev: &Path, off: u64, data: &[u8]) {
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .custom_flags(libc::O_SYNC)
        .open(dev)
        .unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    f.write_all(data).unwrap();
    f.sync_all().unwrap();
}

fn read_dev(dev: &Path, off: u64, len: usize) -> Vec<u8> {
    // Drop cached pages first so the read goes through the vault.
    let _ = Command::new("blockdev")
        .arg("--flushbufs")
        .arg(dev)
        .status();
    let mut f = std::fs::File::open(dev).unwrap();
    f.seek(SeekFrom::Start(off)).unwrap();
    let mut v = vec![0u8; len];
    f.read_exact(&mut v).unwrap();
    v
}

const PY_XTS: &str = r#"
import sys
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
op, img, keyhex, data_off, sector_size, first, count, path = sys.argv[1:9]
key = bytes.fromhex(keyhex); data_off = int(data_off); ss = int(sector_size)
first = int(first); count = int(count)
with open(img, 'r+b') as f:
    if op == 'decrypt':
        out = bytearray()
        for i in range(first, first + count):
            f.seek(data_off + i * ss); ct = f.read(ss)
            iv = ((i * ss) // 512).to_bytes(16, 'little')   # LUKS2: IVs in 512-byte units
            d = Cipher(algorithms.AES(key), modes.XTS(iv)).decryptor()
            out += d.update(ct) + d.finalize()
        open(path, 'wb').write(out)
    else:
        pt = open(path, 'rb').read()
        for j, i in enumerate(range(first, first + count)):
            iv = ((i * ss) // 512).to_bytes(16, 'little')
            e = Cipher(algorithms.AES(key), modes.XTS(iv)).encryptor()
            f.seek(data_off + i * ss); f.write(e.update(pt[j*ss:(j+1)*ss]) + e.finalize())
"#;

#[test]
fn luks2_python_cryptography_both_directions_512_and_4096() {
    if !require_for(
        "python cryptography compat",
        &[BASE, &["python3-cryptography"]].concat(),
    ) {
        return;
    }
    let _g = lock();
    let w = World::new();
    let py = w.path().join("xts.py");
    std::fs::write(&py, PY_XTS).unwrap();
    for ss in [512u32, 4096] {
        let img = format(
            &w,
            &format!("l2-{ss}.img"),
            &["--type", "luks2", "--sector-size", &ss.to_string()],
            24,
        );
        let key = cryptsetup_volume_key(w.path(), &img, PASS);
        let name = format!("py{ss}");
        open(&w, &img, &name, &[]);
        let st = w.status_json(&name);
        assert_eq!(st["sector_size"], ss);
        let data_off = st["offset"].as_u64().unwrap() * 512;
        let dev = w.device(&name);
        // Written through vmvault at plaintext sector 5 (of `ss`), 8 sectors.
        let first = 5u64;
        let count = 8u64;
        let data = pattern((count * ss as u64) as usize, ss);
        write_direct(&dev, first * ss as u64, &data);
        w.vs_ok(&["close", &name]);
        let out = w.path().join(format!("dec-{ss}"));
        run(Command::new("python3")
            .arg(&py)
            .arg("decrypt")
            .arg(&img)
            .arg(&key)
            .arg(data_off.to_string())
            .arg(ss.to_string())
            .arg(first.to_string())
            .arg(count.to_string())
            .arg(&out));
        assert!(
            std::fs::read(&out).unwrap() == data,
            "sector size {ss}: vmvault's ciphertext does not decrypt with Python cryptography"
        );
        // Encrypted by Python, read through vmvault.
        let src = w.path().join(format!("src-{ss}"));
        let data2 = pattern((count * ss as u64) as usize, ss + 1);
        std::fs::write(&src, &data2).unwrap();
        let first2 = 20u64;
        run(Command::new("python3")
            .arg(&py)
            .arg("encrypt")
            .arg(&img)
            .arg(&key)
            .arg(data_off.to_string())
            .arg(ss.to_string())
            .arg(first2.to_string())
            .arg(count.to_string())
            .arg(&src));
        open(&w, &img, &name, &["--readonly"]);
        let st = w.status_json(&name);
        assert_eq!(st["readonly"], true);
        let dev = w.device(&name);
        assert!(
            read_dev(&dev, first2 * ss as u64, data2.len()) == data2,
            "sector size {ss}: Python-encrypted sectors do not read back through vmvault"
        );
        assert!(read_dev(&dev, first * ss as u64, data.len()) == data);
        w.vs_ok(&["close", &name]);
    }
}

#[test]
fn luks1_qemu_io_both_directions() {
    if !require_for("qemu-io compat", &[BASE, &["qemu-img", "qemu-io"]].concat()) {
        return;
    }
    let _g = lock();
    let w = World::new();
    let img = w.path().join("q.luks");
    let secret = std::str::from_utf8(PASS).unwrap();
    let obj = format!("secret,id=sec0,data={secret}");
    run(Command::new("qemu-img")
        .args(["create", "-q", "--object", &obj, "-f", "luks"])
        .args(["-o", "key-secret=sec0,iter-time=10"])
        .arg(&img)
        .arg("16M"));
    let (rc, out, _) = vs(&["isLuks", "--type", "luks1", img.to_str().unwrap()], None);
    assert_eq!(rc, 0, "{out}");
    open(&w, &img, "q1", &["--type", "luks1"]);
    let dev = w.device("q1");
    write_direct(&dev, 0, &vec![0xab; 1 << 20]);
    w.vs_ok(&["close", "q1"]);
    let opts = format!(
        "driver=luks,key-secret=sec0,file.filename={}",
        img.display()
    );
    let qio = |cmd: &str| {
        let o = run_ok(
            Command::new("qemu-io").args(["--object", &obj, "--image-opts", &opts, "-c", cmd]),
            None,
        );
        String::from_utf8_lossy(&o.stdout).into_owned() + &String::from_utf8_lossy(&o.stderr)
    };
    let r = qio("read -P 0xab 0 1M");
    assert!(
        !r.contains("Pattern verification failed") && r.contains("read 1048576/1048576"),
        "qemu-io does not read vmvault's sectors: {r}"
    );
    let r = qio("write -P 0xcd 1M 1M");
    assert!(r.contains("wrote 1048576/1048576"), "{r}");
    open(&w, &img, "q1", &[]);
    let dev = w.device("q1");
    assert!(
        read_dev(&dev, 1 << 20, 1 << 20).iter().all(|&b| b == 0xcd),
        "qemu-io's sectors do not read back through vmvault"
    );
    assert!(read_dev(&dev, 0, 1 << 20).iter().all(|&b| b == 0xab));
    w.vs_ok(&["close", "q1"]);
}

#[test]
fn volume_key_keyring_good_bad_and_keep() {
    if !require_for("--volume-key-keyring", BASE) {
        return;
    }
    let _g = lock();
    let w = World::new();
    let img = format(&w, "l2.img", &["--type", "luks2"], 24);
    let key = hex_decode(&cryptsetup_volume_key(w.path(), &img, PASS));
    assert_eq!(key.len(), 64);
    let tag = std::process::id();
    let imgs = img.display().to_string();
    let open_kr = |desc: &str, extra: &[&str]| {
        let mut a = vec!["open", "--volume-key-keyring", desc];
        a.extend_from_slice(extra);
        a.push(&imgs);
        a.push("kr");
        w.vs(&a, None)
    };

    // Wrong size: 2.
    let d = format!("vmvault-t:{tag}:short");
    let s_short = keyctl_padd("user", &d, &key[..32]);
    let (rc, _, err) = open_kr(&d, &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("has 32 bytes") && err.contains("64 bytes"),
        "{err}"
    );
    // Failing digest: 2.
    let d = format!("vmvault-t:{tag}:bad");
    let mut bad = key.clone();
    bad[7] ^= 1;
    let s_bad = keyctl_padd("user", &d, &bad);
    let (rc, _, err) = open_kr(&d, &[]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("does not match the volume"), "{err}");
    // Not found: 1 (cryptsetup: -ENOENT).
    let (rc, _, err) = open_kr(&format!("vmvault-t:{tag}:absent"), &[]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("not found"), "{err}");
    // A logon key: cannot be read from userspace, 2.
    let d = format!("vmvault-t:{tag}:logon");
    let s_logon = keyctl_padd("logon", &d, &key);
    for spec in [d.clone(), format!("%logon:{d}"), s_logon.to_string()] {
        let (rc, _, err) = open_kr(&spec, &[]);
        assert_eq!(rc, 2, "{spec}: {err}");
        assert!(
            err.contains("logon keys cannot be read from userspace"),
            "{err}"
        );
    }
    // None of these imported anything; the daemon (if it runs) has no volume; the
    // refused keys are left as they were.
    assert!(w.volumes().is_empty(), "{:?}", w.volumes());
    assert!(keyring_exists(s_short) && keyring_exists(s_bad) && keyring_exists(s_logon));
    for s in [s_short, s_bad, s_logon] {
        let _ = Command::new("keyctl")
            .args(["invalidate", &s.to_string()])
            .status();
    }

    // The right key with --keep-keyring-key: opened, key kept, a warning.
    let d = format!("vmvault-t:{tag}:good");
    let s_good = keyctl_padd("user", &d, &key);
    let (rc, _, err) = open_kr(&d, &["--keep-keyring-key"]);
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    assert!(
        err.contains("WARNING") && err.contains("stays in the kernel keyring"),
        "{err}"
    );
    assert!(
        keyring_exists(s_good),
        "--keep-keyring-key must keep the key"
    );
    assert_eq!(w.volumes(), vec!["kr".to_string()]);
    no_staged_keys();
    w.vs_ok(&["close", "kr"]);
    // Without it (by %user:DESC): opened and the key is invalidated.
    let (rc, _, err) = open_kr(&format!("%user:{d}"), &[]);
    assert_eq!(rc, 0, "{err}");
    assert!(
        !keyring_exists(s_good),
        "the keyring key must be invalidated"
    );
    // Same data as a passphrase open sees: write, close, reopen with the passphrase.
    let dev = w.device("kr");
    write_direct(&dev, 4096, &[0x5a; 4096]);
    w.vs_ok(&["close", "kr"]);
    open(&w, &img, "kr", &[]);
    assert!(read_dev(&w.device("kr"), 4096, 4096)
        .iter()
        .all(|&b| b == 0x5a));
    w.vs_ok(&["close", "kr"]);
}

#[test]
fn bad_segments_and_arguments() {
    if !require_for("bad segments", &["cryptsetup"]) {
        return;
    }
    let w = World::new();
    // Integrity (authenticated encryption) is refused with a clear message, exit 1,
    // before any passphrase work or daemon start.
    let img = w.path().join("int.img");
    sparse_image(&img, 24);
    let kf = pass_file(&w);
    // A LUKS2 header whose segment claims integrity: rewrite the JSON.
    run_ok(
        Command::new("cryptsetup")
            .args([
                "luksFormat",
                "--batch-mode",
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
            ])
            .args(["--pbkdf-force-iterations", "1000", "--key-file", &kf])
            .arg(&img),
        None,
    );
    rewrite_luks2_json(
        &img,
        |j| {
            j["segments"]["0"]["integrity"] = serde_json::json!({
                "type": "hmac(sha256)", "journal_encryption": "none", "journal_integrity": "none"
            });
        },
        |t| t,
    );
    let (rc, _, err) = w.vs(
        &["open", "--key-file", &kf, img.to_str().unwrap(), "int"],
        None,
    );
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("dm-integrity"), "{err}");
    // Sizes that do not fit: a fixed segment size past the end.
    rewrite_luks2_json(
        &img,
        |j| {
            j["segments"]["0"]
                .as_object_mut()
                .unwrap()
                .remove("integrity");
            j["segments"]["0"]["size"] = serde_json::json!("1073741824");
        },
        |t| t,
    );
    let (rc, _, err) = w.vs(
        &["open", "--key-file", &kf, img.to_str().unwrap(), "int"],
        None,
    );
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("too small"), "{err}");
    // Bad name.
    let (rc, _, err) = w.vs(
        &["open", "--key-file", &kf, img.to_str().unwrap(), "a/b"],
        None,
    );
    assert_eq!(rc, 1, "{err}");
    // Dynamic size on a device whose data is not a whole number of 4096-byte sectors.
    rewrite_luks2_json(
        &img,
        |j| {
            j["segments"]["0"]["size"] = serde_json::json!("dynamic");
            j["segments"]["0"]["iv_tweak"] = serde_json::json!("8");
        },
        |t| t,
    );
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len((24 << 20) + 512)
        .unwrap();
    let (rc, _, err) = w.vs(
        &["open", "--key-file", &kf, img.to_str().unwrap(), "int"],
        None,
    );
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("not aligned"), "{err}");
    assert!(w.volumes().is_empty());
    // Aligned again: opens, iv_tweak maps to the IV offset, size = device - offset.
    if !require_for("iv_tweak mapping", BASE) {
        return;
    }
    let _g = lock();
    std::fs::OpenOptions::new()
        .write(true)
        .open(&img)
        .unwrap()
        .set_len(24 << 20)
        .unwrap();
    w.vs_ok(&["open", "--key-file", &kf, img.to_str().unwrap(), "tw"]);
    let st = w.status_json("tw");
    assert_eq!(st["iv_offset"], 8, "{st}");
    assert_eq!(st["offset"], 32768, "{st}");
    assert_eq!(st["size"], 24 * 2048 - 32768, "{st}");
    w.vs_ok(&["close", "tw"]);
}

/// Issue 14, NEEDS THE VAULT SIDE (until vault-vm serves the keyslot operations every
/// open here fails with "vault does not support UNLOCK_KEYSLOT (BAD_OP)"): `open` with a
/// passphrase runs the KDF, the AF merge and the digest check in the vault. For LUKS1
/// (PBKDF2) and LUKS2 (Argon2id, so the scratch memslot is used) on the soft and kvm
/// backends: a wrong passphrase exits 2 with cryptsetup's message and opens nothing; the
/// right one opens keyslot 1 (the second keyslot, after keyslot 0 refused it), and what
/// is written through the device is the volume key's ciphertext (checked with the host
/// library's own unlock and the engine).
#[test]
fn in_vault_unlock_luks1_luks2_argon2_wrong_passphrase_is_2() {
    if !require_for("in-vault unlock", &["fuse", "loop", "cryptsetup"]) {
        return;
    }
    let _g = lock();
    let w = World::new();
    let mut backends = vec!["soft"];
    if kvm_usable() {
        backends.push("kvm");
    } else {
        skip("in-vault unlock on kvm: /dev/kvm is not usable");
    }
    let wrong = w.path().join("wrong");
    std::fs::write(&wrong, b"not the passphrase").unwrap();
    let second = w.path().join("second");
    std::fs::write(&second, b"second passphrase").unwrap();
    let argon = [
        "--type",
        "luks2",
        "--pbkdf",
        "argon2id",
        "--pbkdf-memory",
        "32768",
        "--pbkdf-force-iterations",
        "4",
        "--pbkdf-parallel",
        "2",
    ];
    let kf = pass_file(&w);
    for (ty, args) in [("LUKS1", &["--type", "luks1"][..]), ("LUKS2", &argon[..])] {
        let img = w.path().join(format!("{ty}.img"));
        support::luks_format(&img, 24, Path::new(&kf), args);
        // Keyslot 1 with another passphrase, same KDF.
        let mut add = Command::new("cryptsetup");
        add.args(["luksAddKey", "--batch-mode", "--key-slot", "1"]);
        add.args(&args[2..]);
        add.arg("--key-file").arg(&kf).arg(&img).arg(&second);
        run(&mut add);
        for backend in &backends {
            let name = format!("iv-{}-{backend}", ty.to_lowercase());
            let imgs = img.display().to_string();
            let (rc, _, err) = w.vs(
                &[
                    "open",
                    "--backend",
                    backend,
                    "--key-file",
                    wrong.to_str().unwrap(),
                    &imgs,
                    &name,
                ],
                None,
            );
            assert_eq!(rc, 2, "{ty} {backend}: wrong passphrase: {err}");
            assert!(
                err.contains("No key available with this passphrase."),
                "{ty} {backend}: {err}"
            );
            assert!(w.volumes().is_empty(), "{ty} {backend}: opened anyway");
            let out = w.vs_ok(&[
                "open",
                "-v",
                "--backend",
                backend,
                "--key-file",
                second.to_str().unwrap(),
                &imgs,
                &name,
            ]);
            assert!(
                out.contains("Key slot 1 unlocked."),
                "{ty} {backend}: {out}"
            );
            no_staged_keys();
            let st = w.status_json(&name);
            assert_eq!(st["backend"], *backend, "{st}");
            let dev = w.device(&name);
            let data = pattern(8192, 14);
            {
                let mut f = std::fs::OpenOptions::new().write(true).open(&dev).unwrap();
                f.write_all(&data).unwrap();
                f.sync_all().unwrap();
            }
            w.vs_ok(&["close", &name]);
            // The ciphertext on the image, decrypted with the key the host library
            // recovers (as cryptsetup would).
            let (_, hex) = our_volume_key(&img, PASS, None);
            let key = hex_decode(&hex);
            let offset = st["offset"].as_u64().unwrap() * 512;
            let ss = st["sector_size"].as_u64().unwrap() as u32;
            let mut ct = vec![0u8; data.len()];
            let mut f = std::fs::File::open(&img).unwrap();
            f.seek(SeekFrom::Start(offset)).unwrap();
            f.read_exact(&mut ct).unwrap();
            let spec = vault_vm::engine::CipherSpec::parse("aes-xts-plain64").unwrap();
            let c = vault_vm::engine::SectorCipher::new(spec, &key).unwrap();
            c.decrypt(
                &vault_vm::engine::Geometry::new(ss, false, 0).unwrap(),
                0,
                &mut ct,
            )
            .unwrap();
            assert_eq!(
                ct, data,
                "{ty} {backend}: the device wrote other ciphertext"
            );
        }
    }
}
