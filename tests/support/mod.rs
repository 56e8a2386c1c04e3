//! Support shared by the integration tests of dm-vmvault, vaultsetup and vmvault-tests:
//! requirements with the CI-skip rule, temp dirs, running commands, the kernel keyring,
//! LUKS images made by cryptsetup, building workspace binaries, a vmvaultd process.
//!
//! Not a module of the `vmvault-tests` library: the test files include it with
//! `#[path = ".../tests/support/mod.rs"] mod support;`, so it compiles inside each test
//! crate and may use `dm_vmvault` (which every including crate has) without the library
//! depending on dm-vmvault (dm-vmvault's own tests would then see two copies of it).
#![allow(dead_code)]

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

// ------------------------------------------------------------------------------------
// Requirements

/// Reports a missing requirement: with `CI` set, panics (CI must run every test); else
/// prints `SKIPPED: {what}` and returns false.
pub fn skip(what: &str) -> bool {
    let msg = format!("SKIPPED: {what}");
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: this test must run)");
    }
    eprintln!("{msg}");
    false
}

/// True when running as root and everything in `what` is there: `fuse`, `loop`, `kvm`
/// (`/dev/kvm` opens read/write), `python3-cryptography` (importable), else a tool on
/// `PATH`. Otherwise [`skip`]s (SKIPPED, or a panic under `CI`).
pub fn require(what: &[&str]) -> bool {
    require_labelled(None, what)
}

/// [`require`], naming `test` in the message.
pub fn require_for(test: &str, what: &[&str]) -> bool {
    require_labelled(Some(test), what)
}

fn require_labelled(test: Option<&str>, what: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for w in what {
        let ok = match *w {
            "fuse" => Path::new("/dev/fuse").exists(),
            "loop" => Path::new("/dev/loop-control").exists(),
            "kvm" => kvm_usable(),
            "python3-cryptography" => Command::new("python3")
                .args(["-c", "import cryptography"])
                .stderr(Stdio::null())
                .status()
                .map(|s| s.success())
                .unwrap_or(false),
            tool => which(tool),
        };
        if !ok {
            missing.push((*w).to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    match test {
        Some(t) => skip(&format!("{t}: missing {}", missing.join(", "))),
        None => skip(&format!("missing {}", missing.join(", "))),
    }
}

/// Whether `/dev/kvm` opens read/write.
pub fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

/// Whether `tool` is a file in a `PATH` directory.
pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

// ------------------------------------------------------------------------------------
// Files and commands

/// A temporary directory `vmvault-{tag}-PID-N`, lazily unmounting anything mounted
/// below it and removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        use std::sync::atomic::{AtomicU32, Ordering};
        static N: AtomicU32 = AtomicU32::new(0);
        let p = std::env::temp_dir().join(format!(
            "vmvault-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        TempDir(p)
    }
    pub fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        // Unmount anything left mounted below us before removing.
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            let mut mps: Vec<&str> = m
                .lines()
                .filter_map(|l| l.split_whitespace().nth(1))
                .filter(|mp| Path::new(mp).starts_with(&self.0))
                .collect();
            mps.sort_by_key(|m| std::cmp::Reverse(m.len()));
            for mp in mps {
                let _ = Command::new("umount").arg("-l").arg(mp).status();
            }
        }
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Runs a command with `stdin` (else /dev/null) piped in; returns its output, whatever
/// its exit status.
pub fn run_with_input(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    cmd.stdin(if stdin.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    if let Some(data) = stdin {
        let mut si = child.stdin.take().unwrap();
        let _ = si.write_all(data);
    }
    child.wait_with_output().unwrap()
}

/// [`run_with_input`], panicking with the command's output unless it succeeds.
pub fn run_ok(cmd: &mut Command, stdin: Option<&[u8]>) -> Output {
    let out = run_with_input(cmd, stdin);
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

/// Runs a command (stdin /dev/null), panicking with its output on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    String::from_utf8_lossy(&run_ok(cmd, None).stdout).into_owned()
}

/// Creates a sparse file of `mib` MiB.
pub fn sparse_image(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

/// Lowercase hex.
pub fn hex_encode(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Bytes of the hex digits in `s` (anything else, such as whitespace, is skipped).
pub fn hex_decode(s: &str) -> Vec<u8> {
    let s: String = s.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

// ------------------------------------------------------------------------------------
// The kernel keyring (through keyctl(1), as another tool would)

/// `keyctl padd TY DESC @u` with `payload` on stdin; returns the serial. The key is
/// invalidated when the test process exits (see [`forget_test_keys_at_exit`]), whatever
/// the test did with it, so test runs leave nothing in root's user keyring.
pub fn keyctl_padd(ty: &str, desc: &str, payload: &[u8]) -> i32 {
    let out = run_ok(
        Command::new("keyctl").args(["padd", ty, desc, "@u"]),
        Some(payload),
    );
    let serial = String::from_utf8_lossy(&out.stdout)
        .trim()
        .parse()
        .expect("serial from keyctl padd");
    forget_test_keys_at_exit(serial);
    serial
}

/// Serials of the keys this test process added, invalidated at exit.
static TEST_KEYS: std::sync::Mutex<Vec<i32>> = std::sync::Mutex::new(Vec::new());

extern "C" fn invalidate_test_keys() {
    const KEYCTL_INVALIDATE: libc::c_long = 21;
    let keys = std::mem::take(&mut *TEST_KEYS.lock().unwrap_or_else(|e| e.into_inner()));
    for serial in keys {
        // SAFETY: keyctl(KEYCTL_INVALIDATE, serial) takes no pointers; a key that is
        // already gone gives an error, which is fine.
        unsafe { libc::syscall(libc::SYS_keyctl, KEYCTL_INVALIDATE, serial) };
    }
}

/// Invalidates the key `serial` when this process exits (`atexit`: the test harness
/// exits through `exit(3)`, after passing and failing tests alike).
pub fn forget_test_keys_at_exit(serial: i32) {
    static REGISTER: std::sync::Once = std::sync::Once::new();
    // SAFETY: `invalidate_test_keys` is a plain `extern "C" fn()` that stays valid for
    // the life of the process.
    REGISTER.call_once(|| assert_eq!(unsafe { libc::atexit(invalidate_test_keys) }, 0));
    TEST_KEYS
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .push(serial);
}

/// Places `key` in the user keyring of uid 0 as a `user` key readable by uid 0 (the
/// hand-off vmvaultd accepts by serial); returns its serial.
pub fn keyring_add(key: &[u8]) -> i32 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let desc = format!(
        "vmvault-test:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let serial = keyctl_padd("user", &desc, key);
    run(Command::new("keyctl").args(["setperm", &serial.to_string(), "0x3f030000"]));
    serial
}

/// Whether the key still exists (and is visible to us).
pub fn keyring_exists(serial: i32) -> bool {
    Command::new("keyctl")
        .args(["describe", &serial.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

// ------------------------------------------------------------------------------------
// LUKS images made by cryptsetup

/// A sparse `mib` MiB file at `img`, formatted by `cryptsetup luksFormat --batch-mode`
/// with `args` and the passphrase in `key_file`.
pub fn luks_format(img: &Path, mib: u64, key_file: &Path, args: &[&str]) {
    sparse_image(img, mib);
    run(Command::new("cryptsetup")
        .args(["luksFormat", "--batch-mode"])
        .args(args)
        .arg("--key-file")
        .arg(key_file)
        .arg(img));
}

/// The volume key of `img` as cryptsetup reports it (`luksDump --dump-volume-key` with
/// the passphrase in `key_file`), lowercase hex.
pub fn luks_volume_key_hex(img: &Path, key_file: &Path) -> String {
    let text = run(Command::new("cryptsetup")
        .args([
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
        ])
        .arg(key_file)
        .arg(img));
    let mut hex = String::new();
    let mut on = false;
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("MK dump:") {
            on = true;
            hex.push_str(rest);
        } else if on && line.starts_with(char::is_whitespace) {
            hex.push_str(line);
        } else if on {
            break;
        }
    }
    let hex: String = hex.split_whitespace().collect();
    assert!(!hex.is_empty(), "no MK dump in cryptsetup output:\n{text}");
    hex
}

// ------------------------------------------------------------------------------------
// Workspace binaries

/// `cargo build [--release] --target-dir TARGET ARGS` in this workspace, holding an
/// exclusive lock on `TARGET/.vmvault-tests-build.lock` (test threads and processes
/// building at once would fight over cargo's own lock, or race a half-written binary).
pub fn cargo_build(target: &Path, release: bool, args: &[&str]) {
    std::fs::create_dir_all(target).unwrap();
    let lock = std::fs::File::create(target.join(".vmvault-tests-build.lock")).unwrap();
    // SAFETY: flock on a descriptor we own; released when `lock` is dropped.
    assert_eq!(unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) }, 0);
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace)
        .arg("build")
        .args(args)
        .arg("--target-dir")
        .arg(target);
    if release {
        cmd.arg("--release");
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cargo:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    drop(lock);
}

/// The `vmvaultd` next to `sibling` (a binary in `<target>/<profile>/`, where `cargo
/// test --workspace` builds both), built there with [`cargo_build`] when missing.
pub fn vmvaultd_next_to(sibling: &Path) -> PathBuf {
    let dir = sibling.parent().unwrap();
    let cand = dir.join("vmvaultd");
    if !cand.is_file() {
        let release = dir.file_name().unwrap() == "release";
        cargo_build(
            dir.parent().unwrap(),
            release,
            &["-q", "-p", "dm-vmvault", "--bin", "vmvaultd"],
        );
        assert!(cand.is_file(), "vmvaultd not at {}", cand.display());
    }
    cand
}

// ------------------------------------------------------------------------------------
// vmvaultd

/// A vmvaultd instance on its own run directory, output appended to
/// `<run_dir>.log`; asked to shut down (then killed) on drop.
pub struct Daemon {
    pub child: Child,
    pub run_dir: PathBuf,
}

impl Daemon {
    /// Starts `vmvaultd` and waits up to `timeout` for it to answer a ping.
    pub fn start_within(vmvaultd: &Path, run_dir: &Path, timeout: Duration) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(vmvaultd)
            .arg("--run-dir")
            .arg(run_dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vmvaultd");
        let d = Daemon {
            child,
            run_dir: run_dir.to_path_buf(),
        };
        let t0 = Instant::now();
        loop {
            if let Ok(mut c) = vmvault_proto::client::Client::connect(run_dir) {
                if c.ping().is_ok() {
                    return d;
                }
            }
            assert!(
                t0.elapsed() < timeout,
                "vmvaultd did not come up; log: {}",
                d.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    pub fn client(&self) -> vmvault_proto::client::Client {
        vmvault_proto::client::Client::connect(&self.run_dir).unwrap()
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run_dir.with_extension("log")).unwrap_or_default()
    }

    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub fn shutdown(mut self) {
        let r = self.client().shutdown();
        assert!(r.is_ok(), "shutdown: {r:?}");
        let _ = self.child.wait();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            if let Ok(mut c) = vmvault_proto::client::Client::connect(&self.run_dir) {
                let _ = c.shutdown();
            }
            std::thread::sleep(Duration::from_millis(100));
            self.kill();
        }
    }
}
