//! Key residency (issue 6): after a LUKS volume is opened through vmvaultd, its volume
//! key and AES key schedules must be in no keyring and in no memory of vmvaultd (or of a
//! live vaultsetup) outside the vault: the `vmvault-guest` memfd on the kvm backend, the
//! (unreadable) `memfd_secret` pages on the soft backend. After close, the vault's guest
//! memory itself must not hold the key any more.
//!
//! Real everything, as root: the release `vmvaultd` (built here under a file lock),
//! LUKS2 images made by `cryptsetup`, the volume key from `cryptsetup luksDump
//! --dump-volume-key`, the kernel keyring, FUSE + loop, `/dev/kvm`.
//!
//! The test process itself is never scanned: it knows the volume key by construction.
//!
//! Positive controls, so the scanner is known to be able to fail: a child process with
//! planted keys and schedules (heap, stack, a `vmvault-guest` memfd, `memfd_secret`); the
//! vault's guest memory while the volume is open; and vmvaultd's `in-process` backend,
//! which keeps the schedules in the daemon's heap on purpose.
//!
//! Tests needing root/kvm/FUSE/loop/cryptsetup/keyctl fail when `CI` is set and print
//! `SKIPPED: ...` otherwise.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

#[path = "../support/mod.rs"]
mod support;

use support::{
    cargo_build, hex_decode, hex_encode, keyctl_padd, keyring_add, luks_format,
    luks_volume_key_hex, require, run, Daemon, TempDir,
};
use vmvault_proto::protocol::{BackendChoice, OpenRequest};
use vmvault_tests::residency::{
    aes, pids_named, scan_keyrings, scan_mapping, scan_process, Needles, ScanOptions, ScanReport,
    GUEST_MEMFD_PATH, SECRETMEM_PATH,
};

// ------------------------------------------------------------------------------------
// Environment

const NEEDS: &[&str] = &["fuse", "loop", "cryptsetup", "keyctl", "dd"];

// ------------------------------------------------------------------------------------
// Binaries: release vmvaultd (and vaultsetup), built once under a file lock.

struct Bins {
    vmvaultd: PathBuf,
    vaultsetup: PathBuf,
}

/// The target directory: `$CARGO_TARGET_DIR`, else three levels above this test
/// executable (`<target>/<profile>/deps/key_residency-*`).
fn target_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("CARGO_TARGET_DIR") {
        return PathBuf::from(d);
    }
    let exe = std::env::current_exe().expect("current_exe");
    exe.ancestors()
        .nth(3)
        .expect("test executable inside <target>/<profile>/deps")
        .to_path_buf()
}

fn bins() -> &'static Bins {
    static B: OnceLock<Bins> = OnceLock::new();
    B.get_or_init(|| {
        if let (Some(d), Some(s)) = (std::env::var_os("VMVAULTD"), std::env::var_os("VAULTSETUP")) {
            return Bins {
                vmvaultd: d.into(),
                vaultsetup: s.into(),
            };
        }
        let target = target_dir();
        cargo_build(
            &target,
            true,
            &["-p", "dm-vmvault", "-p", "vaultsetup", "--bins"],
        );
        let b = Bins {
            vmvaultd: target.join("release/vmvaultd"),
            vaultsetup: target.join("release/vaultsetup"),
        };
        assert!(b.vmvaultd.is_file(), "{} missing", b.vmvaultd.display());
        assert!(b.vaultsetup.is_file(), "{} missing", b.vaultsetup.display());
        b
    })
}

/// Starts the release vmvaultd on `run_dir` (up within 20 s).
fn start_daemon(run_dir: &Path) -> Daemon {
    Daemon::start_within(&bins().vmvaultd, run_dir, Duration::from_secs(20))
}

// ------------------------------------------------------------------------------------
// LUKS images made by cryptsetup

struct Luks {
    path: PathBuf,
    key: Vec<u8>,
    cipher: String,
    /// Data offset, 512-byte sectors.
    offset: u64,
    sector_size: u32,
}

/// A 96 MiB LUKS2 file (aes-xts-plain64, 512-bit key, 4096-byte sectors, fast PBKDF2);
/// the volume key comes from `cryptsetup luksDump --dump-volume-key`.
fn make_luks(dir: &Path, name: &str) -> Luks {
    let path = dir.join(name);
    let pass = dir.join(format!("{name}.pass"));
    std::fs::write(&pass, format!("residency passphrase {name}")).unwrap();
    luks_format(
        &path,
        96,
        &pass,
        &[
            "--type",
            "luks2",
            "--cipher",
            "aes-xts-plain64",
            "--key-size",
            "512",
            "--sector-size",
            "4096",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let key_hex = luks_volume_key_hex(&path, &pass);
    let key = hex_decode(&key_hex);
    assert_eq!(key.len(), 64, "volume key from luksDump: {key_hex}");
    let info = run(Command::new("cryptsetup").arg("luksDump").arg(&path));
    let field = |name: &str| -> String {
        let seg = info
            .split("Data segments:")
            .nth(1)
            .expect("Data segments in luksDump");
        seg.lines()
            .find_map(|l| l.trim().strip_prefix(name).map(|v| v.trim().to_string()))
            .unwrap_or_else(|| panic!("{name} in luksDump:\n{info}"))
    };
    let offset_bytes: u64 = field("offset:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let sector_size: u32 = field("sector:")
        .split_whitespace()
        .next()
        .unwrap()
        .parse()
        .unwrap();
    Luks {
        path,
        key,
        cipher: field("cipher:"),
        offset: offset_bytes / 512,
        sector_size,
    }
}

/// Opens `luks` as `name` through the daemon's control socket with a keyring key.
fn open_via_keyring(d: &Daemon, luks: &Luks, name: &str, backend: BackendChoice) -> String {
    // Built from JSON so fields added to the protocol later take their defaults.
    let req: OpenRequest = serde_json::from_value(serde_json::json!({
        "name": name,
        "backing": luks.path,
        "cipher": luks.cipher,
        "key_size": luks.key.len() * 8,
        "sector_size": luks.sector_size,
        "offset": luks.offset,
        "iv_offset": 0,
        "iv_large_sectors": false,
        "size": null,
        "backend": backend,
        "frontend": "auto",
        "key_serial": keyring_add(&luks.key),
    }))
    .expect("OpenRequest from JSON");
    let (st, _) = d
        .client()
        .open(req)
        .unwrap_or_else(|e| panic!("open {name}: {e}\n{}", d.log()));
    assert_eq!(st.backend, backend, "{st:?}");
    st.device.display().to_string()
}

/// Runs `vaultsetup VERB --run-dir RUN ARGS...`; panics with its output on failure.
fn vaultsetup(d: &Daemon, verb: &str, args: &[&str]) -> String {
    run(Command::new(&bins().vaultsetup)
        .arg(verb)
        .arg("--run-dir")
        .arg(&d.run_dir)
        .args(args)
        .stdin(Stdio::null()))
}

/// `vaultsetup open` with the passphrase file: the passphrase path (vaultsetup recovers
/// the key and hands the daemon only a keyring key). Returns the plaintext device.
fn open_via_passphrase(d: &Daemon, luks: &Luks, name: &str, backend: &str) -> String {
    let pass = luks.path.with_file_name(format!(
        "{}.pass",
        luks.path.file_name().unwrap().to_str().unwrap()
    ));
    vaultsetup(
        d,
        "open",
        &[
            "--backend",
            backend,
            "--key-file",
            pass.to_str().unwrap(),
            luks.path.to_str().unwrap(),
            name,
        ],
    );
    let st = d.client().status(name).unwrap();
    assert_eq!(st.backend.as_str(), backend, "{st:?}");
    st.device.display().to_string()
}

/// `vaultsetup open --volume-key-keyring DESC` with the volume key placed in the user
/// keyring by `keyctl padd` (as another tool would; `@u`, not `@s`: a test run without a
/// session keyring would give `keyctl` a throw-away one). Returns the plaintext device.
fn open_via_volume_key_keyring(d: &Daemon, luks: &Luks, name: &str, backend: &str) -> String {
    let desc = format!("vmvault-residency:{}:{name}:vk", std::process::id());
    keyctl_padd("user", &desc, &luks.key);
    vaultsetup(
        d,
        "open",
        &[
            "--backend",
            backend,
            "--volume-key-keyring",
            &desc,
            luks.path.to_str().unwrap(),
            name,
        ],
    );
    let st = d.client().status(name).unwrap();
    assert_eq!(st.backend.as_str(), backend, "{st:?}");
    st.device.display().to_string()
}

/// Writes then reads 64 MiB through the device (O_DIRECT and through the page cache).
fn heavy_io(dev: &str) {
    run(Command::new("dd").args([
        "if=/dev/urandom",
        &format!("of={dev}"),
        "bs=1M",
        "count=48",
        "oflag=direct",
        "status=none",
    ]));
    run(Command::new("dd").args([
        "if=/dev/zero",
        &format!("of={dev}"),
        "bs=64k",
        "count=256",
        "seek=768",
        "conv=fsync",
        "status=none",
    ]));
    run(Command::new("dd").args([
        &format!("if={dev}"),
        "of=/dev/null",
        "bs=1M",
        "count=64",
        "iflag=direct",
        "status=none",
    ]));
}

// ------------------------------------------------------------------------------------
// Scans

/// The `--run-dir` argument of the vmvaultd with this pid.
fn daemon_run_dir(pid: u32) -> PathBuf {
    let c = std::fs::read(format!("/proc/{pid}/cmdline")).expect("vmvaultd cmdline");
    let args: Vec<&[u8]> = c.split(|&b| b == 0).collect();
    let i = args
        .iter()
        .position(|a| *a == b"--run-dir")
        .expect("vmvaultd started with --run-dir");
    PathBuf::from(String::from_utf8_lossy(args[i + 1]).into_owned())
}

/// Findings of a test's stages; [`Findings::finish`] fails the test with all of them,
/// so one leak does not hide the stages after it.
#[derive(Default)]
struct Findings(Vec<String>);

impl Findings {
    /// Scans keyrings, vmvaultd (minus `exclude`) and any live vaultsetup process for
    /// `key`; records every hit. Returns vmvaultd's report.
    fn nowhere(
        &mut self,
        stage: &str,
        key: &[u8],
        daemon_pid: u32,
        exclude: &[&str],
    ) -> ScanReport {
        let n = Needles::for_volume_key(key);
        let kr = scan_keyrings(&n);
        eprintln!("[{stage}] {kr}");
        if !kr.is_clean() {
            self.0
                .push(format!("[{stage}] key material in a keyring:\n{kr}"));
        }
        // Also PROT_NONE memory (guard pages, reserved arena space): /proc/PID/mem reads
        // it with FOLL_FORCE.
        let opts = ScanOptions {
            force_unreadable: true,
            ..ScanOptions::excluding(exclude)
        };
        let rep = scan_process(daemon_pid, &n, &opts).expect("scan vmvaultd");
        eprintln!("[{stage}] vmvaultd {rep}");
        assert!(
            rep.mappings_scanned > 10 && rep.bytes_scanned > 1 << 20,
            "[{stage}] implausibly small scan: {rep}"
        );
        if !rep.is_clean() {
            self.0
                .push(format!("[{stage}] key material in vmvaultd:\n{rep}"));
        }
        // vaultsetup exits once the volume is open; scan any of this test's (same run
        // directory) that is still alive.
        let run_dir = format!("{}", daemon_run_dir(daemon_pid).display());
        for pid in pids_named("vaultsetup").into_iter().filter(|p| {
            std::fs::read(format!("/proc/{p}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(&run_dir))
                .unwrap_or(false)
        }) {
            if let Ok(r) = scan_process(pid, &n, &ScanOptions::default()) {
                eprintln!("[{stage}] vaultsetup {r}");
                if !r.is_clean() {
                    self.0
                        .push(format!("[{stage}] key material in vaultsetup:\n{r}"));
                }
            }
        }
        rep
    }

    /// Records a failure.
    fn fail(&mut self, msg: String) {
        self.0.push(msg);
    }

    /// Panics with every finding, if any.
    fn finish(self) {
        assert!(
            self.0.is_empty(),
            "{} finding(s):\n{}",
            self.0.len(),
            self.0.join("\n")
        );
    }
}

// ------------------------------------------------------------------------------------
// Positive control: planted keys in a child process

const PLANT_ENV: &str = "VMVAULT_RESIDENCY_PLANT";

/// Child side of the positive control (runs only when re-executed with `PLANT_ENV`):
/// plants the byte strings it is given, prints READY and waits for stdin to close.
#[test]
#[ignore = "helper process of scanner_finds_planted_keys_in_a_child"]
fn plant_child() {
    let Ok(spec) = std::env::var(PLANT_ENV) else {
        return;
    };
    let parts: Vec<Vec<u8>> = spec.split(',').map(hex_decode).collect();
    let [heap, schedule, mut stack_bytes, mut guest, mut secret]: [Vec<u8>; 5] =
        parts.try_into().expect("bad plant spec");
    // Heap: the raw key and a partial schedule (separate allocations, one copy each).
    let heap = std::hint::black_box(heap);
    let schedule = std::hint::black_box(schedule);
    // Stack of this (test) thread.
    let mut on_stack = [0u8; 16];
    on_stack.copy_from_slice(&stack_bytes);
    let on_stack = std::hint::black_box(on_stack);
    // A memfd named like the vault's guest memory.
    // SAFETY: plain memfd_create/mmap of a fresh descriptor, written only here.
    unsafe {
        let fd = libc::memfd_create(c"vmvault-guest".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        assert_eq!(libc::ftruncate(fd, 65536), 0);
        let p = libc::mmap(
            std::ptr::null_mut(),
            65536,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            fd,
            0,
        );
        assert_ne!(p, libc::MAP_FAILED);
        std::ptr::copy_nonoverlapping(guest.as_ptr(), p.cast::<u8>().add(12345), guest.len());
    }
    // memfd_secret, if the kernel has it.
    // SAFETY: memfd_secret takes one flags argument; mapping as above.
    let secret_ok = unsafe {
        let fd = libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) as i32;
        if fd >= 0 && libc::ftruncate(fd, 4096) == 0 {
            let p = libc::mmap(
                std::ptr::null_mut(),
                4096,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            if p != libc::MAP_FAILED {
                std::ptr::copy_nonoverlapping(secret.as_ptr(), p.cast::<u8>(), secret.len());
                true
            } else {
                false
            }
        } else {
            false
        }
    };
    // Only the planted copies may remain: wipe the decoded ones.
    for v in [&mut stack_bytes, &mut guest, &mut secret] {
        v.fill(0);
        std::hint::black_box(&v);
    }
    println!("READY {}", if secret_ok { "secret" } else { "nosecret" });
    std::io::stdout().flush().unwrap();
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
    std::hint::black_box((&heap, &schedule, &on_stack));
}

/// Deterministic, distinct test keys.
fn test_key(seed: u8) -> Vec<u8> {
    let mut x = 0x9e37_79b9_7f4a_7c15u64 ^ (u64::from(seed) * 0x1000_0000_01b3);
    (0..64)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

#[test]
fn scanner_finds_planted_keys_in_a_child() {
    if !require(&[]) {
        return;
    }
    let (ka, kb, kc, kd, kf, unrelated) = (
        test_key(1),
        test_key(2),
        test_key(3),
        test_key(4),
        test_key(6),
        test_key(7),
    );
    // B: round keys 4..=9 of the tweak key's encryption schedule (no raw bytes).
    let b_enc = aes::expand_key(&kb[32..]);
    let b_partial = aes::flatten(&b_enc[4..10]);
    // C: full aesimc decryption schedule of the data key, in the vault's memfd.
    let c_dec = aes::flatten(&aes::decryption_schedule_reversed(&aes::expand_key(
        &kc[..32],
    )));
    let spec = [
        hex_encode(&ka),
        hex_encode(&b_partial),
        hex_encode(&kd[8..24]),
        hex_encode(&c_dec),
        hex_encode(&kf),
    ]
    .join(",");
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["plant_child", "--exact", "--ignored", "--nocapture"])
        .env(PLANT_ENV, spec)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut out = BufReader::new(child.stdout.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        assert!(out.read_line(&mut line).unwrap() > 0, "child exited early");
        if line.starts_with("READY") {
            break;
        }
    }
    let secret_ok = line.contains("READY secret");
    let pid = child.id();
    let all = ScanOptions::default();

    let r = scan_process(pid, &Needles::for_volume_key(&ka), &all).unwrap();
    eprintln!("A (raw key on the heap): {r}");
    assert!(
        r.hits.iter().any(|h| h.what.contains("all 64 bytes")),
        "{r}"
    );

    let r = scan_process(pid, &Needles::for_volume_key(&kb), &all).unwrap();
    eprintln!("B (partial encryption schedule): {r}");
    assert_eq!(r.hits.len(), 1, "{r}");
    assert!(
        r.hits[0].what.contains("bytes 32..64")
            && r.hits[0]
                .what
                .contains("encryption schedule, round keys 4..=9"),
        "{r}"
    );

    let r = scan_process(pid, &Needles::for_volume_key(&kd), &all).unwrap();
    eprintln!("D (16 key bytes on a stack): {r}");
    assert!(r.hits.iter().any(|h| h.what.contains("bytes 8..24")), "{r}");

    // C sits only in the "vmvault-guest" memfd: found there, not when excluded.
    let nc = Needles::for_volume_key(&kc);
    let r = scan_process(pid, &nc, &all).unwrap();
    eprintln!("C (aesimc schedule in a vmvault-guest memfd): {r}");
    assert!(
        r.hits_in(GUEST_MEMFD_PATH).iter().any(|h| h
            .what
            .contains("decryption schedule (aesimc, decryption order), round keys 0..=14")
            && h.offset_in_mapping() == 12345),
        "{r}"
    );
    let r = scan_process(pid, &nc, &ScanOptions::excluding(&[GUEST_MEMFD_PATH])).unwrap();
    assert!(r.is_clean() && r.excluded.len() == 1, "{r}");
    let r = scan_mapping(pid, GUEST_MEMFD_PATH, &nc).unwrap();
    assert!(!r.is_clean(), "{r}");

    // memfd_secret pages: present but refused by /proc/PID/mem.
    let r = scan_process(pid, &Needles::for_volume_key(&kf), &all).unwrap();
    eprintln!("F (key in memfd_secret): {r}");
    if secret_ok {
        assert!(r.is_clean(), "{r}");
        assert_eq!(r.refused_bytes_in(SECRETMEM_PATH), 4096, "{r}");
        eprintln!("memfd_secret pages are not readable through /proc/PID/mem (as expected)");
    } else {
        eprintln!("memfd_secret unavailable on this kernel: that part not checked");
    }

    // An unrelated key is nowhere.
    let r = scan_process(pid, &Needles::for_volume_key(&unrelated), &all).unwrap();
    assert!(r.is_clean(), "{r}");

    drop(child.stdin.take());
    let _ = child.wait();
}

#[test]
fn keyring_scan_finds_a_planted_key() {
    if !require(&["keyctl"]) {
        return;
    }
    let k = test_key(9);
    let serial = keyring_add(&k);
    let rep = scan_keyrings(&Needles::for_volume_key(&k));
    run(Command::new("keyctl").args(["invalidate", &serial.to_string()]));
    eprintln!("{rep}");
    assert!(
        rep.hits
            .iter()
            .any(|h| h.key.serial == serial && h.what.contains("all 64 bytes")),
        "{rep}"
    );
}

// ------------------------------------------------------------------------------------
// The daemon, for real

/// The in-process backend keeps the schedules in vmvaultd's heap on purpose: the scan of
/// the daemon must find them (the daemon scan can fail).
#[test]
fn daemon_scan_finds_in_process_backend_keys() {
    if !require(NEEDS) {
        return;
    }
    let t = TempDir::new("residency-inproc");
    let luks = make_luks(t.path(), "a.img");
    let d = start_daemon(&t.path().join("run"));
    open_via_keyring(&d, &luks, "inproc", BackendChoice::InProcess);
    let rep = scan_process(
        d.pid(),
        &Needles::for_volume_key(&luks.key),
        &ScanOptions::default(),
    )
    .unwrap();
    eprintln!("in-process backend: {rep}");
    assert!(
        !rep.is_clean(),
        "the in-process backend's keys were not found in vmvaultd:\n{rep}"
    );
    d.client().close("inproc").unwrap();
    d.shutdown();
}

/// kvm: volume A opened by passphrase, volume B by `--volume-key-keyring`; scans after
/// open, after heavy I/O, and after A's close (B keeps the shared vault up, so the
/// guest memory that held A's key is still there to scan).
#[test]
fn kvm_key_only_in_guest_memory() {
    let mut needs = NEEDS.to_vec();
    needs.push("kvm");
    if !require(&needs) {
        return;
    }
    let t = TempDir::new("residency-kvm");
    let a = make_luks(t.path(), "a.img");
    let b = make_luks(t.path(), "b.img");
    let d = start_daemon(&t.path().join("run"));
    let pid = d.pid();
    let ex = &[GUEST_MEMFD_PATH];
    let mut f = Findings::default();

    let dev_a = open_via_passphrase(&d, &a, "resa", "kvm");
    f.nowhere("kvm, A after open (passphrase)", &a.key, pid, ex);
    // Positive control: the vault holds the key in its guest memory.
    let na = Needles::for_volume_key(&a.key);
    let g = scan_mapping(pid, GUEST_MEMFD_PATH, &na).expect("guest memory mapping");
    eprintln!("guest memory while A is open: {g}");
    if g.is_clean() {
        f.fail(format!(
            "key not found in the vault's guest memory while open: the scan cannot see it\n{g}"
        ));
    }
    heavy_io(&dev_a);
    f.nowhere("kvm, A after 64 MiB of I/O", &a.key, pid, ex);

    let dev_b = open_via_volume_key_keyring(&d, &b, "resb", "kvm");
    f.nowhere("kvm, B after open (--volume-key-keyring)", &b.key, pid, ex);
    heavy_io(&dev_b);
    f.nowhere("kvm, B after 64 MiB of I/O", &b.key, pid, ex);
    f.nowhere("kvm, A after I/O on B", &a.key, pid, ex);

    // Close A while B keeps the vault up.
    vaultsetup(&d, "close", &["resa"]);
    let g = scan_mapping(pid, GUEST_MEMFD_PATH, &na).expect("guest memory mapping");
    eprintln!("guest memory after close of A: {g}");
    if !g.is_clean() {
        f.fail(format!("key of a closed volume in guest memory:\n{g}"));
    }
    let gb = scan_mapping(pid, GUEST_MEMFD_PATH, &Needles::for_volume_key(&b.key)).unwrap();
    if gb.is_clean() {
        f.fail(format!("vault not holding B any more?\n{gb}"));
    }
    f.nowhere("kvm, A after close", &a.key, pid, ex);
    vaultsetup(&d, "close", &["resb"]);
    f.nowhere("kvm, B after close", &b.key, pid, ex);
    d.shutdown();
    f.finish();
}

/// Same through the control socket directly, with a keyring key made here (the
/// hand-off without vaultsetup in between).
#[test]
fn kvm_key_only_in_guest_memory_client_keyring() {
    let mut needs = NEEDS.to_vec();
    needs.push("kvm");
    if !require(&needs) {
        return;
    }
    let t = TempDir::new("residency-kvm-client");
    let a = make_luks(t.path(), "a.img");
    let d = start_daemon(&t.path().join("run"));
    let pid = d.pid();
    let dev = open_via_keyring(&d, &a, "resc", BackendChoice::Kvm);
    let mut f = Findings::default();
    f.nowhere("kvm client, after open", &a.key, pid, &[GUEST_MEMFD_PATH]);
    heavy_io(&dev);
    f.nowhere("kvm client, after I/O", &a.key, pid, &[GUEST_MEMFD_PATH]);
    d.client().close("resc").unwrap();
    d.shutdown();
    f.finish();
}

/// soft: nothing readable holds the key; the memfd_secret pages are refused by
/// `/proc/PID/mem` (so "found only in secretmem" means: found nowhere readable).
#[test]
fn soft_key_only_in_secretmem() {
    if !require(NEEDS) {
        return;
    }
    let t = TempDir::new("residency-soft");
    let a = make_luks(t.path(), "a.img");
    let b = make_luks(t.path(), "b.img");
    let d = start_daemon(&t.path().join("run"));
    let pid = d.pid();
    let mut f = Findings::default();
    let dev = open_via_passphrase(&d, &a, "softa", "soft");
    let rep = f.nowhere("soft, A after open (passphrase)", &a.key, pid, &[]);
    if rep.refused_bytes_in(SECRETMEM_PATH) == 0 {
        f.fail(format!(
            "no refused memfd_secret mapping in vmvaultd (soft backend):\n{rep}"
        ));
    }
    eprintln!(
        "soft: {} bytes of {SECRETMEM_PATH} are not readable through /proc/{pid}/mem \
         (the keys' only permitted place; not searchable)",
        rep.refused_bytes_in(SECRETMEM_PATH)
    );
    let dev_b = open_via_volume_key_keyring(&d, &b, "softb", "soft");
    f.nowhere(
        "soft, B after open (--volume-key-keyring)",
        &b.key,
        pid,
        &[],
    );
    heavy_io(&dev);
    heavy_io(&dev_b);
    f.nowhere("soft, A after 64 MiB of I/O", &a.key, pid, &[]);
    f.nowhere("soft, B after 64 MiB of I/O", &b.key, pid, &[]);
    vaultsetup(&d, "close", &["softa"]);
    vaultsetup(&d, "close", &["softb"]);
    f.nowhere("soft, A after close", &a.key, pid, &[]);
    d.shutdown();
    f.finish();
}
// ------------------------------------------------------------------------------------
// vaultsetup's own memory while it opens a volume (issue 11, point 7; issue 14)
//
// vaultsetup runs under ptrace (vmvault_tests::sampler) and its memory is searched at
// EVERY system-call entry of its (main) thread, from its first to its exit, each with
// that thread stopped, and once more at PTRACE_EVENT_EXIT (exit_group has begun, the
// memory is still whole).
//
// Since issue 14 the vault unlocks the keyslots (`open`, `open --test-passphrase`) and
// seals new ones (`luksAddKey`): the volume key never comes to vaultsetup, so it may be
// nowhere in its memory at any stop, not even in a locked SecretBuf. The passphrases
// may be in locked mappings (their SecretBufs: the only memory vaultsetup mlocks) while
// it runs, and nowhere at the exit stop.
//
// With a kvm daemon, vmvaultd is sampled at the same time from another thread (its whole
// memory but the guest memory, where the vault keeps the key), over and over until the
// command has returned: the key must be in none of those samples either.
//
// Positive control: `open --volume-key-keyring` (the key made outside the vault on
// purpose) brings the key into vaultsetup's SecretBuf: the samples must see it there.

use vmvault_tests::sampler::{self, Background, Finding, Secret, Stop, Tracee};

/// A 44-byte passphrase: long enough for 16-byte windows, not an AES key length.
const SAMPLER_PASS: &[u8] = b"Kq7#vR2m!Zp9xT4w$Lb6nY1c&Hd8sJ3f@Ge5uA0oWi^t";
/// The passphrase `luksAddKey` adds (45 bytes).
const SAMPLER_NEW_PASS: &[u8] = b"Wn3$eQ8r!Yt5uI0p#As7dF2g&Hj4kL9z@Xc6vB1nM^qR";

/// How the passphrase reaches vaultsetup.
#[derive(Clone, Copy, Debug)]
enum KeyVia {
    /// `--key-file FIFO`, written once vaultsetup opens it.
    Fifo,
    /// Piped stdin up to a newline (no `--key-file`).
    Stdin,
    /// Key files named in the arguments (regular files); stdin is null.
    Files,
}

/// A cryptsetup-made image for the sampler, with SAMPLER_PASS; returns (path, key).
fn sampler_image(dir: &Path, name: &str, args: &[&str]) -> (PathBuf, Vec<u8>) {
    let path = dir.join(name);
    let pass = dir.join(format!("{name}.pass"));
    std::fs::write(&pass, SAMPLER_PASS).unwrap();
    luks_format(&path, 48, &pass, args);
    let key = hex_decode(&luks_volume_key_hex(&path, &pass));
    (path, key)
}

/// The cryptsetup-made images of the sampler tests: LUKS2 with PBKDF2 and with
/// Argon2id, LUKS1.
const SAMPLER_IMAGES: [(&str, &[&str]); 3] = [
    (
        "luks2-pbkdf2",
        &[
            "--type",
            "luks2",
            "--key-size",
            "512",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "20000",
        ],
    ),
    (
        "luks2-argon2id",
        &[
            "--type",
            "luks2",
            "--key-size",
            "512",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "65536",
            "--pbkdf-parallel",
            "2",
            "--pbkdf-force-iterations",
            "4",
        ],
    ),
    (
        "luks1-sha256",
        &[
            "--type",
            "luks1",
            "--key-size",
            "512",
            "--hash",
            "sha256",
            "--pbkdf-force-iterations",
            "20000",
        ],
    ),
];

/// One sampled run of vaultsetup.
struct SampledRun {
    /// Copies where none may be.
    findings: Vec<Finding>,
    /// Samples taken (system-call entries plus the exit stop).
    samples: usize,
    /// Bytes searched by the largest sample.
    max_bytes: u64,
    /// Copies of the volume key seen in any sample, allowed or not (the control).
    key_seen: usize,
    /// waitpid status, stdout, stderr.
    status: i32,
    out: String,
    err: String,
}

impl SampledRun {
    /// Panics unless vaultsetup exited 0 and the sampling is plausible.
    fn assert_ok(&self, what: &str) {
        assert!(
            libc::WIFEXITED(self.status) && libc::WEXITSTATUS(self.status) == 0,
            "{what} failed (wait status {:#x}): {}{}",
            self.status,
            self.out,
            self.err
        );
        assert!(
            self.samples >= 20 && self.max_bytes > 1 << 20,
            "{what}: implausible sampling: {} samples, {} bytes at most",
            self.samples,
            self.max_bytes
        );
    }

    fn summary(&self, what: &str) -> String {
        format!(
            "{what}: {} samples of vaultsetup (every system-call entry and the exit), up to {} \
             KiB searched each, {} finding(s), volume key seen {} time(s)",
            self.samples,
            self.max_bytes >> 10,
            self.findings.len(),
            self.key_seen
        )
    }
}

/// Runs `vaultsetup args` (with `$VMVAULT_RUN_DIR` = `run_dir`) under the sampler,
/// sampling at every system-call entry and at the exit. `key_may_be_locked`: the volume
/// key may be in a locked mapping while it runs (the keyring control only).
fn sampled_vaultsetup(
    args: &[&str],
    run_dir: &Path,
    via: KeyVia,
    fifo: Option<&Path>,
    key: &[u8],
    key_may_be_locked: bool,
) -> SampledRun {
    // Nothing would make vaultsetup wait for the seize below (with key files not at all,
    // with a FIFO or stdin only from the read of the key on), so its first system calls
    // would go unsampled, a few or a few hundred depending on the scheduler: a shell
    // holds it until the tracer is attached, then execs it (same pid, still traced).
    let mut cmd = Command::new("sh");
    cmd.arg("-c")
        .arg("read -r _ && exec \"$0\" \"$@\"")
        .arg(&bins().vaultsetup)
        .args(args)
        .env("VMVAULT_RUN_DIR", run_dir)
        .env("VMVAULTD", &bins().vmvaultd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("spawn vaultsetup");
    let pid = child.id();
    let tracee = match Tracee::seize(pid) {
        Ok(t) => t,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("cannot ptrace vaultsetup (pid {pid}): {e} (kernel.yama.ptrace_scope?)");
        }
    };
    // Traced now: let the shell exec vaultsetup (`read` takes exactly one line off the
    // pipe, the rest is vaultsetup's stdin).
    let mut stdin = child.stdin.take().unwrap();
    stdin.write_all(b"go\n").unwrap();
    let writer = match via {
        KeyVia::Stdin => {
            let mut line = SAMPLER_PASS.to_vec();
            line.push(b'\n');
            stdin.write_all(&line).unwrap();
            None
        }
        KeyVia::Fifo => {
            let f = fifo.unwrap().to_path_buf();
            Some(std::thread::spawn(move || {
                sampler::write_fifo_when_read(&f, SAMPLER_PASS, Duration::from_secs(60))
            }))
        }
        KeyVia::Files => None,
    };
    drop(stdin);
    let mut run = SampledRun {
        findings: Vec::new(),
        samples: 0,
        max_bytes: 0,
        key_seen: 0,
        status: 0,
        out: String::new(),
        err: String::new(),
    };
    let mut errors: Vec<String> = Vec::new();
    let status = tracee.run(
        std::time::Instant::now() + Duration::from_secs(180),
        200_000,
        |stop| {
            let (stage, running) = match stop {
                Stop::SyscallEntry { nr, args } => {
                    let what = if nr == libc::SYS_add_key {
                        format!(
                            "add_key({:?})",
                            sampler::read_c_string(pid, args[0], 32).unwrap_or_default()
                        )
                    } else {
                        format!("syscall {nr}")
                    };
                    (format!("entry of {what}"), true)
                }
                Stop::Exit => ("exit".to_string(), false),
            };
            let secrets = [
                Secret {
                    name: "volume key".into(),
                    needles: Needles::for_volume_key(key),
                    allowed_locked: running && key_may_be_locked,
                },
                Secret {
                    name: "passphrase".into(),
                    needles: Needles::for_secret("passphrase", SAMPLER_PASS),
                    allowed_locked: running,
                },
                Secret {
                    name: "new passphrase".into(),
                    needles: Needles::for_secret("new passphrase", SAMPLER_NEW_PASS),
                    allowed_locked: running,
                },
            ];
            match sampler::sample(pid, &stage, &secrets) {
                Ok(r) => {
                    run.samples += 1;
                    run.max_bytes = run.max_bytes.max(r.bytes);
                    run.key_seen += r
                        .findings
                        .iter()
                        .chain(&r.allowed)
                        .filter(|f| f.secret == "volume key")
                        .count();
                    run.findings.extend(r.findings);
                }
                Err(e) => errors.push(format!("[{stage}] sample failed: {e}")),
            }
        },
    );
    if let Some(w) = writer {
        if let Err(e) = w.join().unwrap() {
            errors.push(format!("writing the key FIFO: {e}"));
        }
    }
    use std::io::Read;
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut run.out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut run.err);
    }
    run.status = status.unwrap_or_else(|e| panic!("tracing vaultsetup {args:?}: {e}\n{}", run.err));
    assert!(errors.is_empty(), "{}", errors.join("\n"));
    run
}

/// The findings, each place once (the same copy shows up at every later stop) with
/// the first stage that saw it.
fn distinct_findings(all: &[Finding]) -> Vec<String> {
    let mut seen = std::collections::BTreeSet::new();
    all.iter()
        .filter(|f| seen.insert((f.secret.clone(), f.place.clone())))
        .map(|f| f.to_string())
        .collect()
}

/// A FIFO at `dir/name.fifo`.
fn make_fifo(dir: &Path, name: &str) -> PathBuf {
    let fifo = dir.join(format!("{name}.fifo"));
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: mkfifo with a valid C string.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0, "mkfifo");
    fifo
}

/// The positive control: `open --volume-key-keyring` of `img` (the key put in the user
/// keyring here) brings the key into vaultsetup's SecretBuf, and the samples must see
/// it. Returns a failure message when they do not.
fn keyring_control(d: &Daemon, img: &Path, key: &[u8], name: &str, backend: &str) -> Vec<String> {
    let desc = format!("vmvault-sampler:{}:{name}:vk", std::process::id());
    keyctl_padd("user", &desc, key);
    let r = sampled_vaultsetup(
        &[
            "open",
            "--backend",
            backend,
            "--volume-key-keyring",
            &desc,
            img.to_str().unwrap(),
            name,
        ],
        &d.run_dir,
        KeyVia::Files,
        None,
        key,
        true,
    );
    r.assert_ok("open --volume-key-keyring (control)");
    eprintln!(
        "{}",
        r.summary(&format!("{name}: open --volume-key-keyring"))
    );
    let closed = d.client().close(name);
    assert!(closed.is_ok(), "close {name}: {closed:?}\n{}", d.log());
    // This path takes a key made outside the vault on purpose; copies of it outside the
    // SecretBufs are reported (an issue of the keyring path), not failed: the control
    // only has to show that the samples see a key that is there.
    for f in distinct_findings(&r.findings) {
        eprintln!("NOTE (--volume-key-keyring path, key made outside the vault): {f}");
    }
    let mut bad = Vec::new();
    if r.key_seen == 0 {
        bad.push(format!(
            "{name}: positive control failed: the volume key of open --volume-key-keyring was \
             never seen in vaultsetup's memory (the samples cannot see a key there)"
        ));
    }
    bad
}

fn ptrace_usable() -> bool {
    if std::fs::read_to_string("/proc/sys/kernel/yama/ptrace_scope").is_ok_and(|s| s.trim() == "3")
    {
        support::skip("ptrace is disabled (kernel.yama.ptrace_scope = 3): cannot sample");
        return false;
    }
    true
}

/// soft backend: `open` (FIFO key file) and `open --test-passphrase -v` (stdin pipe) of
/// each image, every system call sampled: the volume key is never in vaultsetup, the
/// passphrase only in its SecretBufs; the keyring open is the positive control.
#[test]
fn vaultsetup_memory_holds_no_key_outside_secret_buffers() {
    if !require(&["fuse", "loop", "cryptsetup", "keyctl"]) || !ptrace_usable() {
        return;
    }
    let t = TempDir::new("residency-sampler");
    let d = start_daemon(&t.path().join("run"));
    let run_dir = d.run_dir.clone();
    let mut bad = Vec::new();
    for (name, args) in SAMPLER_IMAGES {
        let (img, key) = sampler_image(t.path(), &format!("{name}.img"), args);
        let fifo = make_fifo(t.path(), name);
        let r = sampled_vaultsetup(
            &[
                "open",
                "--backend",
                "soft",
                "--key-file",
                fifo.to_str().unwrap(),
                img.to_str().unwrap(),
                name,
            ],
            &run_dir,
            KeyVia::Fifo,
            Some(&fifo),
            &key,
            false,
        );
        r.assert_ok(&format!("{name}: open"));
        eprintln!("{}", r.summary(&format!("{name}: open (Fifo)")));
        bad.extend(distinct_findings(&r.findings));
        let closed = d.client().close(name);
        assert!(closed.is_ok(), "close {name}: {closed:?}\n{}", d.log());
        let r = sampled_vaultsetup(
            &[
                "open",
                "--test-passphrase",
                "-v",
                "--backend",
                "soft",
                img.to_str().unwrap(),
            ],
            &run_dir,
            KeyVia::Stdin,
            None,
            &key,
            false,
        );
        r.assert_ok(&format!("{name}: open --test-passphrase"));
        assert!(r.out.contains("Key slot 0 unlocked."), "{}", r.out);
        eprintln!(
            "{}",
            r.summary(&format!("{name}: open --test-passphrase (Stdin)"))
        );
        bad.extend(distinct_findings(&r.findings));
        bad.extend(keyring_control(
            &d,
            &img,
            &key,
            &format!("{name}-vk"),
            "soft",
        ));
    }
    d.shutdown();
    assert!(
        bad.is_empty(),
        "copies of the volume key or a passphrase where none may be, or a failed control, \
         at {} places:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// Runs `args` under the sampler while vmvaultd (`d`, kvm) is sampled from another
/// thread; returns every finding of both (places once) and prints the sample counts.
fn sampled_with_daemon(
    d: &Daemon,
    what: &str,
    args: &[&str],
    via: KeyVia,
    fifo: Option<&Path>,
    key: &[u8],
) -> (SampledRun, Vec<String>) {
    let opts = ScanOptions {
        force_unreadable: true,
        ..ScanOptions::excluding(&[GUEST_MEMFD_PATH])
    };
    let bg = Background::start(d.pid(), Needles::for_volume_key(key), opts);
    let r = sampled_vaultsetup(args, &d.run_dir, via, fifo, key, false);
    let daemon = bg.finish();
    eprintln!("{}", r.summary(what));
    eprintln!(
        "{what}: {} samples of vmvaultd meanwhile (minus {GUEST_MEMFD_PATH}), up to {} KiB \
         each, {} with the key",
        daemon.samples,
        daemon.max_bytes >> 10,
        daemon.hits.len()
    );
    let mut bad = distinct_findings(&r.findings);
    bad.extend(
        daemon
            .hits
            .iter()
            .map(|h| format!("[{what}] vmvaultd: {h}")),
    );
    bad.extend(daemon.errors.iter().map(|e| format!("[{what}] {e}")));
    if daemon.samples < 2 || daemon.max_bytes <= 1 << 20 {
        bad.push(format!(
            "[{what}] implausible sampling of vmvaultd: {} samples, {} bytes at most",
            daemon.samples, daemon.max_bytes
        ));
    }
    (r, bad)
}

/// kvm: `open --backend kvm` of a LUKS2 (PBKDF2, Argon2id) and a LUKS1 image made by
/// cryptsetup, vaultsetup sampled at every system-call entry and vmvaultd (minus the
/// guest memory) sampled in a loop meanwhile: the volume key is in neither, ever.
#[test]
fn kvm_open_key_never_in_vaultsetup_or_vmvaultd() {
    if !require(&["fuse", "loop", "cryptsetup", "keyctl", "kvm"]) || !ptrace_usable() {
        return;
    }
    let t = TempDir::new("residency-sampler-kvm");
    let d = start_daemon(&t.path().join("run"));
    let mut bad = Vec::new();
    for (name, args) in SAMPLER_IMAGES {
        let (img, key) = sampler_image(t.path(), &format!("{name}.img"), args);
        let fifo = make_fifo(t.path(), name);
        let (r, b) = sampled_with_daemon(
            &d,
            &format!("{name}: open --backend kvm"),
            &[
                "open",
                "--backend",
                "kvm",
                "--key-file",
                fifo.to_str().unwrap(),
                img.to_str().unwrap(),
                name,
            ],
            KeyVia::Fifo,
            Some(&fifo),
            &key,
        );
        r.assert_ok(&format!("{name}: open --backend kvm"));
        bad.extend(b);
        // The vault does hold it: the key is where it should be.
        let g = scan_mapping(d.pid(), GUEST_MEMFD_PATH, &Needles::for_volume_key(&key))
            .expect("guest memory mapping");
        if g.is_clean() {
            bad.push(format!(
                "{name}: the key is not in the vault's guest memory while open (control)\n{g}"
            ));
        }
        let closed = d.client().close(name);
        assert!(closed.is_ok(), "close {name}: {closed:?}\n{}", d.log());
    }
    // The control with the same sampler: a key that does come to vaultsetup is seen.
    let (img, key) = sampler_image(t.path(), "control.img", SAMPLER_IMAGES[0].1);
    bad.extend(keyring_control(&d, &img, &key, "control-vk", "kvm"));
    d.shutdown();
    assert!(
        bad.is_empty(),
        "{} finding(s) of the volume key or a passphrase, or a failed control:\n{}",
        bad.len(),
        bad.join("\n")
    );
}

/// kvm: `luksAddKey IMG NEWKEYFILE --key-file OLDKEYFILE` of the same images, sampled
/// the same way: the vault unlocks the old keyslot and seals the new one, so the volume
/// key is in neither process, ever; afterwards the new passphrase opens the image (as
/// cryptsetup checks it).
#[test]
fn kvm_add_key_never_in_vaultsetup_or_vmvaultd() {
    if !require(&["fuse", "loop", "cryptsetup", "keyctl", "kvm"]) || !ptrace_usable() {
        return;
    }
    let t = TempDir::new("residency-sampler-addkey");
    let d = start_daemon(&t.path().join("run"));
    let new_pass = t.path().join("new.pass");
    std::fs::write(&new_pass, SAMPLER_NEW_PASS).unwrap();
    let mut bad = Vec::new();
    for (name, args) in SAMPLER_IMAGES {
        let (img, key) = sampler_image(t.path(), &format!("{name}.img"), args);
        let old_pass = t.path().join(format!("{name}.img.pass"));
        let (r, b) = sampled_with_daemon(
            &d,
            &format!("{name}: luksAddKey"),
            &[
                "luksAddKey",
                "--pbkdf",
                "pbkdf2",
                "--pbkdf-force-iterations",
                "20000",
                img.to_str().unwrap(),
                new_pass.to_str().unwrap(),
                "--key-file",
                old_pass.to_str().unwrap(),
            ],
            KeyVia::Files,
            None,
            &key,
        );
        r.assert_ok(&format!("{name}: luksAddKey"));
        bad.extend(b);
        let o = Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "--key-file"])
            .arg(&new_pass)
            .arg(&img)
            .output()
            .unwrap();
        if !o.status.success() {
            bad.push(format!(
                "{name}: cryptsetup does not open the image with the added passphrase: {}",
                String::from_utf8_lossy(&o.stderr)
            ));
        }
    }
    d.shutdown();
    assert!(
        bad.is_empty(),
        "{} finding(s) of the volume key or a passphrase:\n{}",
        bad.len(),
        bad.join("\n")
    );
}
