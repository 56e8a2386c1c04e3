//! The possessor-only key hand-over (issue 6) on the real kernel keyring, at the
//! protocol level: vmvaultd cannot read a staged key by serial alone, can after
//! vaultsetup links it into the daemon's `prepare_key` keyring, and invalidates both;
//! the request keyring is opaque to non-possessors and dies with its connection.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{require_for, start_daemon};
use vaultsetup::keyring::{self, StagedKey, STAGED_KEY_PERM};
use vmvault_proto::protocol::{BackendChoice, KeyRingReply, OpenRequest, Request, Response};
use vmvault_proto::{CipherSpec, KeySize, SectorSize, Sectors, VolumeName};

fn req(name: &str, img: &Path, serial: i32, ring: Option<i32>) -> OpenRequest {
    OpenRequest {
        name: VolumeName::new(name).unwrap(),
        backing: img.to_path_buf(),
        cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
        key_size: KeySize::from_bits(512).unwrap(),
        sector_size: SectorSize::B512,
        offset: Sectors(0),
        iv_offset: Sectors(0),
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
    if !require_for("keyring hand-over", &["fuse", "loop"]) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    std::fs::File::create(&img)
        .unwrap()
        .set_len(8 << 20)
        .unwrap();
    let d = start_daemon(&dir.path().join("run"));
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
        .map(|(st, _)| st)
        .unwrap_err();
    assert_eq!(e.exit_code().code(), 2, "{e}");
    assert!(keyring::exists(staged.serial()));

    // A ring named on another connection is refused.
    let mut c = d.client();
    let ring = c.prepare_key().unwrap();
    let e = d
        .client()
        .open(req("h", &img, staged.serial(), Some(ring)))
        .map(|(st, _)| st)
        .unwrap_err();
    assert_eq!(e.exit_code().code(), 1, "{e}");
    // The request keyring is opaque to us (no view), but we may link into it.
    assert!(keyring::describe(ring).is_err());
    staged.link_into(ring).unwrap();
    let (st, _) = c.open(req("h", &img, staged.serial(), Some(ring))).unwrap();
    assert_eq!(st.name.as_str(), "h");
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
    let r = c
        .call_raw::<KeyRingReply>(&Request::PrepareKey {}, None)
        .unwrap();
    assert!(matches!(r, Response::Ok { .. }), "{r:?}");
    c.close("h").unwrap();
    drop(c);
}
