//! Shared helpers of the integration tests: peers (cryptsetup, qemu-img), images in a
//! temp dir, checksums, running the `vaultsetup` binary.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use sha2::{Digest, Sha256};

#[path = "../../../tests/support/mod.rs"]
pub mod support;

#[allow(unused_imports)]
pub use support::{
    hex_decode, keyctl_padd, keyring_exists, kvm_usable, require_for, run, run_ok, run_with_input,
    skip, sparse_image, Daemon,
};

/// The vmvaultd binary: next to `vaultsetup` (where `cargo test --workspace` builds it),
/// else built with cargo into the same target dir.
pub fn vmvaultd() -> PathBuf {
    support::vmvaultd_next_to(Path::new(env!("CARGO_BIN_EXE_vaultsetup")))
}

/// Starts [`vmvaultd`] on `run_dir` (up within 10 s).
pub fn start_daemon(run_dir: &Path) -> Daemon {
    Daemon::start_within(&vmvaultd(), run_dir, std::time::Duration::from_secs(10))
}

/// True if `tool` is runnable. Missing: panics under `CI`, else prints SKIPPED and returns false.
pub fn need(tool: &str, test: &str) -> bool {
    let ok = Command::new(tool)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok();
    ok || skip(&format!(
        "{test}: `{tool}` is not installed (run .ci/setup: cryptsetup-bin, qemu-utils)"
    ))
}

/// `cryptsetup luksFormat --batch-mode` of a 20 MiB image with the passphrase from a key file.
pub fn luks_format(dir: &Path, name: &str, pass: &[u8], args: &[&str]) -> PathBuf {
    let img = dir.join(name);
    let kf = dir.join(format!("{name}.pass"));
    std::fs::write(&kf, pass).unwrap();
    support::luks_format(&img, 20, &kf, args);
    img
}

/// Fast PBKDF arguments for LUKS2 argon2 variants.
pub fn argon(kind: &str) -> Vec<String> {
    [
        "--pbkdf",
        kind,
        "--pbkdf-memory",
        "32768",
        "--pbkdf-parallel",
        "1",
        "--pbkdf-force-iterations",
        "4",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

/// `luksAddKey --key-slot N`: adds `new` with `old`.
pub fn add_key(dir: &Path, img: &Path, old: &[u8], new: &[u8], slot: u32, extra: &[&str]) {
    let ko = dir.join("old.key");
    let kn = dir.join("new.key");
    std::fs::write(&ko, old).unwrap();
    std::fs::write(&kn, new).unwrap();
    run_ok(
        Command::new("cryptsetup")
            .args(["luksAddKey", "--batch-mode", "--key-slot"])
            .arg(slot.to_string())
            .arg("--key-file")
            .arg(&ko)
            .args(extra)
            .arg(img)
            .arg(&kn),
        None,
    );
}

/// The volume key as cryptsetup reports it (`luksDump --dump-volume-key`), lowercase hex.
pub fn cryptsetup_volume_key(dir: &Path, img: &Path, pass: &[u8]) -> String {
    let kf = dir.join("dump.key");
    std::fs::write(&kf, pass).unwrap();
    support::luks_volume_key_hex(img, &kf)
}

/// Our volume key for `img` as hex, through the library API.
pub fn our_volume_key(img: &Path, pass: &[u8], slot: Option<u32>) -> (u32, String) {
    let opts = vaultsetup::UnlockOptions {
        keyslot: slot,
        ..Default::default()
    };
    let u = vaultsetup::recover_volume_key(img, pass, &opts)
        .unwrap_or_else(|e| panic!("unlock {}: {e}", img.display()));
    let hex = String::from_utf8(u.key.to_hex().as_slice().to_vec()).unwrap();
    (u.keyslot, hex)
}

/// SHA-256 of a file, hex.
pub fn sha256_file(p: &Path) -> String {
    let d = Sha256::digest(std::fs::read(p).unwrap());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// The `vaultsetup` binary.
pub fn vaultsetup() -> Command {
    Command::new(env!("CARGO_BIN_EXE_vaultsetup"))
}

/// Runs `vaultsetup args` with stdin; returns (exit code, stdout, stderr).
///
/// `open --test-passphrase` has the vault test the passphrase, so it may need vmvaultd:
/// such a run gets a private daemon (a [`World`] of its own, through
/// `$VMVAULT_RUN_DIR`), shut down when it returns; never the system's run directory.
pub fn vs(args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
    if args.contains(&"--test-passphrase") {
        return World::new().vs_env(args, stdin);
    }
    let o = run_with_input(vaultsetup().args(args), stdin);
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    )
}

/// A fresh temp dir.
pub fn tmp() -> tempfile::TempDir {
    tempfile::tempdir().unwrap()
}

/// Overwrites `bytes` at `offset` of `img` (test images only).
pub fn patch(img: &Path, offset: u64, bytes: &[u8]) {
    use std::os::unix::fs::FileExt;
    let f = std::fs::OpenOptions::new().write(true).open(img).unwrap();
    f.write_all_at(bytes, offset).unwrap();
}

/// Rewrites the JSON of both LUKS2 header copies with `edit` and fixes their checksums.
/// `text_edit` may further change the serialized text (for values serde would not emit).
pub fn rewrite_luks2_json(
    img: &Path,
    edit: impl Fn(&mut serde_json::Value),
    text_edit: impl Fn(String) -> String,
) {
    let mut data = std::fs::read(img).unwrap();
    let hdr_size = u64::from_be_bytes(data[8..16].try_into().unwrap()) as usize;
    for off in [0, hdr_size] {
        let area = &data[off + 4096..off + hdr_size];
        let end = area.iter().position(|&b| b == 0).unwrap();
        let mut v: serde_json::Value = serde_json::from_slice(&area[..end]).unwrap();
        edit(&mut v);
        let text = text_edit(serde_json::to_string(&v).unwrap());
        assert!(text.len() < hdr_size - 4096, "edited JSON too large");
        let area = &mut data[off + 4096..off + hdr_size];
        area.fill(0);
        area[..text.len()].copy_from_slice(text.as_bytes());
        fix_checksum(&mut data[off..off + hdr_size]);
    }
    std::fs::write(img, &data).unwrap();
}

/// Recomputes the sha256 checksum of one LUKS2 header copy (binary + JSON area).
pub fn fix_checksum(hdr: &mut [u8]) {
    hdr[448..512].fill(0);
    let d = Sha256::digest(&*hdr);
    hdr[448..480].copy_from_slice(&d);
}

/// A private daemon world: temp dir, run dir; on drop, unmounts what the test mounted
/// under the temp dir and shuts the daemon down.
pub struct World {
    /// The temp dir.
    pub dir: tempfile::TempDir,
    /// The daemon's run dir inside it.
    pub run: PathBuf,
}

impl World {
    pub fn new() -> World {
        let dir = tmp();
        let run = dir.path().join("run");
        World { dir, run }
    }
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
    /// The vaultsetup command with `--run-dir` appended to the verb's options.
    pub fn cmd(&self, args: &[&str]) -> Command {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.insert(1, "--run-dir".into());
        full.insert(2, self.run.display().to_string());
        let mut c = vaultsetup();
        c.args(&full).env("VMVAULTD", vmvaultd());
        c
    }
    /// The vaultsetup command with the run dir in `$VMVAULT_RUN_DIR` (so `args` may
    /// start with global options such as `-v`).
    pub fn cmd_env(&self, args: &[&str]) -> Command {
        let mut c = vaultsetup();
        c.args(args)
            .env("VMVAULT_RUN_DIR", &self.run)
            .env("VMVAULTD", vmvaultd());
        c
    }
    /// Runs vaultsetup ([`World::cmd_env`]): exit code, stdout, stderr.
    pub fn vs_env(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        let o = run_with_input(&mut self.cmd_env(args), stdin);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
    /// Runs vaultsetup ([`World::cmd`]): exit code, stdout, stderr.
    pub fn vs(&self, args: &[&str], stdin: Option<&[u8]>) -> (i32, String, String) {
        let o = run_with_input(&mut self.cmd(args), stdin);
        (
            o.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&o.stdout).into_owned(),
            String::from_utf8_lossy(&o.stderr).into_owned(),
        )
    }
    pub fn vs_ok(&self, args: &[&str]) -> String {
        let (rc, out, err) = self.vs(args, None);
        assert_eq!(
            rc,
            0,
            "vaultsetup {args:?} failed: {out}\n{err}\ndaemon log:\n{}",
            self.log()
        );
        out
    }
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("vmvaultd.log")).unwrap_or_default()
    }
    pub fn client(&self) -> Option<vmvault_proto::client::Client> {
        vmvault_proto::client::Client::connect(&self.run).ok()
    }
    pub fn volumes(&self) -> Vec<String> {
        match self.client() {
            Some(mut c) => c
                .list()
                .unwrap()
                .into_iter()
                .map(|v| v.name.to_string())
                .collect(),
            None => Vec::new(),
        }
    }
    pub fn status_json(&self, name: &str) -> serde_json::Value {
        let out = self.vs_ok(&["status", "--json", name]);
        serde_json::from_str(&out).unwrap_or_else(|e| panic!("{e}: {out}"))
    }
    pub fn device(&self, name: &str) -> PathBuf {
        PathBuf::from(self.status_json(name)["device"].as_str().unwrap())
    }
}

impl Drop for World {
    fn drop(&mut self) {
        if let Ok(m) = std::fs::read_to_string("/proc/self/mounts") {
            for mp in m.lines().filter_map(|l| l.split_whitespace().nth(1)) {
                if Path::new(mp).starts_with(self.dir.path())
                    && !mp.starts_with(&*self.run.to_string_lossy())
                {
                    let _ = Command::new("umount").arg("-l").arg(mp).status();
                }
            }
        }
        if let Some(mut c) = self.client() {
            let _ = c.shutdown();
        }
        // Wait for the daemon to go (it removes its socket).
        for _ in 0..100 {
            if !self.run.join("control").exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
    }
}
