//! The possessor-only key hand-over (issue 6) on the real kernel keyring, at the
//! protocol level: vmvaultd cannot read a staged key by serial alone, can after
//! vaultsetup links it into the daemon's `prepare_key` keyring, and invalidates both;
//! the request keyring is opaque to non-possessors and dies with its connection.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use dm_vmvault::client::Client;
use dm_vmvault::protocol::{BackendChoice, OpenRequest, Request};
use vaultsetup::keyring::{self, StagedKey, STAGED_KEY_PERM};

fn ready() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let ok = root && Path::new("/dev/fuse").exists() && Path::new("/dev/loop-control").exists();
    if !ok {
        let msg = "SKIPPED: keyring hand-over needs root, /dev/fuse and loop devices";
        if std::env::var_os("CI").is_some() {
            panic!("{msg} (CI is set)");
        }
        eprintln!("{msg}");
    }
    ok
}

fn vmvaultd() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_BIN_EXE_vaultsetup"))
        .parent()
        .unwrap()
        .to_path_buf();
    let cand = dir.join("vmvaultd");
    if !cand.is_file() {
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.args(["build", "-q", "-p", "dm-vmvault", "--bin", "vmvaultd"])
            .arg("--target-dir")
            .arg(dir.parent().unwrap())
            .current_dir(env!("CARGO_MANIFEST_DIR"));
        if dir.file_name().unwrap() == "release" {
            cmd.arg("--release");
        }
        assert!(cmd.status().unwrap().success(), "building vmvaultd failed");
    }
    cand
}

struct Daemon {
    child: Child,
    run: PathBuf,
}

impl Daemon {
    fn start(run: &Path) -> Daemon {
        let child = Command::new(vmvaultd())
            .arg("--run-dir")
            .arg(run)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        while Client::connect(run).and_then(|mut c| c.ping()).is_err() {
            assert!(Instant::now() < deadline, "vmvaultd did not start");
            std::thread::sleep(Duration::from_millis(20));
        }
        Daemon {
            child,
            run: run.to_path_buf(),
        }
    }
    fn client(&self) -> Client {
        Client::connect(&self.run).unwrap()
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.client().shutdown();
        let _ = self.child.wait();
    }
}

fn req(name: &str, img: &Path, serial: i32, ring: Option<i32>) -> OpenRequest {
    OpenRequest {
        name: name.into(),
        backing: img.to_path_buf(),
        cipher: "aes-xts-plain64".into(),
        key_size: 512,
        sector_size: 512,
        offset: 0,
        iv_offset: 0,
        iv_large_sectors: false,
        size: None,
        readonly: false,
        allow_discards: false,
        backend: BackendChoice::Auto,
        key_serial: serial,
        keep_key: false,
        key_ring: ring,
        volume_type: None,
        volume_uuid: None,
        frontend: Default::default(),
    }
}

#[test]
fn possessor_only_key_reaches_the_vault_only_through_the_request_keyring() {
    if !ready() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let d = Daemon::start(&dir.path().join("run"));
    let key: Vec<u8> = (0..64u8).map(|i| i.wrapping_mul(29) ^ 0x5c).collect();

    let staged = StagedKey::new(&key).unwrap();
    let (ty, uid, _, perm, _) = keyring::describe(staged.serial()).unwrap();
    assert_eq!(ty, "user");
    assert_eq!(uid, 0);
    assert_eq!(perm, STAGED_KEY_PERM, "perm {perm:08x}");
    assert_eq!(perm & 0x00ff_ffff, 0, "no user/group/other bits");

    // By serial alone the daemon cannot read it (it does not possess our keyrings).
    let e = d
        .client()
        .open(req("h", &img, staged.serial(), None))
        .unwrap_err();
    assert_eq!(e.exit_code(), 2, "{e}");
    assert!(keyring::exists(staged.serial()));

    // A ring named on another connection is refused.
    let mut c = d.client();
    let ring = c.prepare_key().unwrap();
    let e = d
        .client()
        .open(req("h", &img, staged.serial(), Some(ring)))
        .unwrap_err();
    assert_eq!(e.exit_code(), 1, "{e}");
    // The request keyring is opaque to us (no view), but we may link into it.
    assert!(keyring::describe(ring).is_err());
    staged.link_into(ring).unwrap();
    let st = c.open(req("h", &img, staged.serial(), Some(ring))).unwrap();
    assert_eq!(st.name, "h");
    // The key and the request keyring are gone.
    assert!(!keyring::exists(staged.serial()), "key not invalidated");
    let again = StagedKey::new(&key).unwrap();
    assert!(
        again.link_into(ring).is_err(),
        "request keyring still accepts links after open"
    );

    // A ring prepared on a connection that ends is invalidated with it.
    let ring2 = {
        let mut c2 = d.client();
        c2.prepare_key().unwrap()
    };
    let deadline = Instant::now() + Duration::from_secs(5);
    while again.link_into(ring2).is_ok() {
        assert!(
            Instant::now() < deadline,
            "request keyring outlived its connection"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    // Raw protocol shape.
    let r = c.call_raw(&Request::PrepareKey).unwrap();
    assert!(r.ok && r.key_ring.is_some());
    c.close("h").unwrap();
    drop(c);
}
