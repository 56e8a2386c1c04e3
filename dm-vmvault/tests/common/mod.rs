//! Helpers shared by the integration tests (real FUSE, loop devices, ext4, keyring);
//! the generic ones come from the workspace's shared test support.
#![allow(dead_code)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

#[path = "../../../tests/support/mod.rs"]
mod support;

#[allow(unused_imports)] // each test file uses some of them
pub use support::{keyring_add, keyring_exists, require, run, sparse_image, Daemon, TempDir};

/// Starts this crate's `vmvaultd` on `run_dir` (up within 10 s).
pub fn start_daemon(run_dir: &Path) -> Daemon {
    Daemon::start_within(
        Path::new(env!("CARGO_BIN_EXE_vmvaultd")),
        run_dir,
        Duration::from_secs(10),
    )
}

/// A deterministic key of `n` bytes.
pub fn test_key(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(17).wrapping_add(seed))
        .collect()
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

/// The backend the daemon tests use by default: `VMVAULT_TEST_BACKEND`, else `auto`.
pub fn test_backend() -> vmvault_proto::protocol::BackendChoice {
    match std::env::var("VMVAULT_TEST_BACKEND").as_deref() {
        Ok("kvm") => vmvault_proto::protocol::BackendChoice::Kvm,
        Ok("soft") => vmvault_proto::protocol::BackendChoice::Soft,
        Ok("in-process") => vmvault_proto::protocol::BackendChoice::InProcess,
        _ => vmvault_proto::protocol::BackendChoice::Auto,
    }
}

/// The vault backends every end-to-end test covers: kvm (required in CI) and soft.
pub fn vault_backends() -> Vec<vmvault_proto::protocol::BackendChoice> {
    let mut v = Vec::new();
    if require(&["kvm"]) {
        v.push(vmvault_proto::protocol::BackendChoice::Kvm);
    }
    v.push(vmvault_proto::protocol::BackendChoice::Soft);
    v
}

/// An open request with the tests' defaults (AES-256-XTS, offset 2048 sectors).
pub fn open_req(
    name: &str,
    backing: &Path,
    key: &[u8],
    ss: u32,
) -> vmvault_proto::protocol::OpenRequest {
    vmvault_proto::protocol::OpenRequest {
        name: vmvault_proto::VolumeName::new(name).unwrap(),
        backing: backing.to_path_buf(),
        cipher: vmvault_proto::CipherSpec::parse("aes-xts-plain64").unwrap(),
        key_size: vmvault_proto::KeySize::from_bytes(key.len()).unwrap(),
        sector_size: vmvault_proto::SectorSize::try_from(ss).unwrap(),
        offset: vmvault_proto::Sectors(2048),
        iv_offset: vmvault_proto::Sectors(0),
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
