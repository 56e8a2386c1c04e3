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
