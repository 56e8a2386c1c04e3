//! Helpers shared by the integration tests (real FUSE, loop devices, ext4, keyring).
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::Command;

/// Returns false (after printing SKIPPED) when something the test needs is missing; with
/// `CI` set, panics instead so CI fails loudly.
pub fn require(what: &[&str]) -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for w in what {
        let ok = match *w {
            "fuse" => Path::new("/dev/fuse").exists(),
            "loop" => Path::new("/dev/loop-control").exists(),
            "kvm" => Path::new("/dev/kvm").exists(),
            tool => which(tool),
        };
        if !ok {
            missing.push((*w).to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!("SKIPPED: missing {}", missing.join(", "));
    if std::env::var_os("CI").is_some() {
        panic!("{msg} (CI is set: this test must run)");
    }
    eprintln!("{msg}");
    false
}

pub fn which(tool: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(tool).is_file()))
        .unwrap_or(false)
}

/// A temporary directory removed on drop.
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

/// Runs a command, panicking with its output on failure; returns stdout.
pub fn run(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\n{}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A deterministic key of `n` bytes.
pub fn test_key(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect()
}

/// Creates a sparse file of `mib` MiB.
pub fn sparse_image(path: &Path, mib: u64) {
    let f = std::fs::File::create(path).unwrap();
    f.set_len(mib << 20).unwrap();
}

/// mkfs.ext4 (quiet, no lazy init so the image is complete right away).
pub fn mkfs_ext4(dev: &Path) {
    run(Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=0,lazy_journal_init=0"])
        .arg(dev));
}

pub fn mount(dev: &Path, mp: &Path) {
    std::fs::create_dir_all(mp).unwrap();
    run(Command::new("mount").arg(dev).arg(mp));
}

pub fn umount(mp: &Path) {
    run(Command::new("umount").arg(mp));
}

pub fn fsck_clean(dev: &Path) {
    run(Command::new("fsck.ext4").arg("-fn").arg(dev));
}

/// Places `key` in the kernel keyring (user keyring of uid 0) as a `user` key readable
/// by uid 0; returns its serial.
pub fn keyring_add(key: &[u8]) -> i32 {
    use std::io::Write;
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let desc = format!(
        "vmvault-test:{}:{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    );
    let mut child = Command::new("keyctl")
        .args(["padd", "user", &desc, "@u"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("keyctl");
    child.stdin.take().unwrap().write_all(key).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "keyctl padd failed");
    let serial: i32 = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap();
    run(Command::new("keyctl").args(["setperm", &serial.to_string(), "0x3f030000"]));
    serial
}

/// Whether the key still exists.
pub fn keyring_exists(serial: i32) -> bool {
    Command::new("keyctl")
        .args(["describe", &serial.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// A vmvaultd instance on its own run directory, killed (and its volumes left to the
/// next instance's cleanup) on drop.
pub struct Daemon {
    pub child: std::process::Child,
    pub run_dir: PathBuf,
}

impl Daemon {
    pub fn start(run_dir: &Path) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(run_dir.with_extension("log"))
            .unwrap();
        let child = Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
            .arg("--run-dir")
            .arg(run_dir)
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vmvaultd");
        let d = Daemon {
            child,
            run_dir: run_dir.to_path_buf(),
        };
        let t0 = std::time::Instant::now();
        loop {
            if let Ok(mut c) = dm_vmvault::client::Client::connect(run_dir) {
                if c.ping().is_ok() {
                    return d;
                }
            }
            assert!(
                t0.elapsed().as_secs() < 10,
                "vmvaultd did not come up; log: {}",
                d.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }

    pub fn client(&self) -> dm_vmvault::client::Client {
        dm_vmvault::client::Client::connect(&self.run_dir).unwrap()
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
            if let Ok(mut c) = dm_vmvault::client::Client::connect(&self.run_dir) {
                let _ = c.shutdown();
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
            self.kill();
        }
    }
}

/// The backend the daemon tests use by default: `VMVAULT_TEST_BACKEND`, else `auto`.
pub fn test_backend() -> dm_vmvault::protocol::BackendChoice {
    match std::env::var("VMVAULT_TEST_BACKEND").as_deref() {
        Ok("kvm") => dm_vmvault::protocol::BackendChoice::Kvm,
        Ok("soft") => dm_vmvault::protocol::BackendChoice::Soft,
        Ok("in-process") => dm_vmvault::protocol::BackendChoice::InProcess,
        _ => dm_vmvault::protocol::BackendChoice::Auto,
    }
}

/// The vault backends every end-to-end test covers: kvm (required in CI) and soft.
pub fn vault_backends() -> Vec<dm_vmvault::protocol::BackendChoice> {
    let mut v = Vec::new();
    if require(&["kvm"]) {
        v.push(dm_vmvault::protocol::BackendChoice::Kvm);
    }
    v.push(dm_vmvault::protocol::BackendChoice::Soft);
    v
}

/// An open request with the tests' defaults (AES-256-XTS, offset 2048 sectors).
pub fn open_req(
    name: &str,
    backing: &Path,
    key: &[u8],
    ss: u32,
) -> dm_vmvault::protocol::OpenRequest {
    dm_vmvault::protocol::OpenRequest {
        name: name.into(),
        backing: backing.to_path_buf(),
        cipher: "aes-xts-plain64".into(),
        key_size: key.len() as u32 * 8,
        sector_size: ss,
        offset: 2048,
        iv_offset: 0,
        iv_large_sectors: false,
        size: None,
        readonly: false,
        allow_discards: false,
        backend: test_backend(),
        key_serial: keyring_add(key),
        keep_key: false,
        key_ring: None,
        volume_type: None,
        volume_uuid: None,
        frontend: Default::default(),
    }
}
