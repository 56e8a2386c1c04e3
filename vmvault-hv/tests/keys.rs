//! Key life cycle: import, use, drop, re-import; after a drop or a shutdown no key byte
//! (nor a round key of the schedule) is left in the `vmvault-guest` memory.

mod common;

use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vmvault_hv::{BackendKind, HvError};

/// Tests in this file run one at a time, so no other vault maps or unmaps guest memory
/// while one scans.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

fn scan(needles: &[Vec<u8>]) -> usize {
    let maps = common::read_memfd_mappings("vmvault-guest");
    assert!(
        !maps.is_empty(),
        "no vmvault-guest mapping found in /proc/self/maps"
    );
    if std::env::var_os("SCAN_DEBUG").is_some() {
        for m in &maps {
            for n in needles {
                if let Some(p) = m.windows(n.len()).position(|w| w == &n[..]) {
                    eprintln!("key material at guest address {p:#x}");
                }
            }
        }
    }
    needles
        .iter()
        .filter(|n| maps.iter().any(|m| common::contains(m, n)))
        .count()
}

/// The raw key halves and every 16-byte round key of both AES schedules.
fn needles(key: &[u8]) -> Vec<Vec<u8>> {
    let mut v: Vec<Vec<u8>> = key.chunks(16).map(|c| c.to_vec()).collect();
    for half in key.chunks(key.len() / 2) {
        v.extend(common::aes_round_keys(half).iter().map(|r| r.to_vec()));
    }
    v
}

#[test]
fn import_use_drop_reimport_and_scan() {
    let _serial = serial();
    let Some(vault) = common::open(BackendKind::Kvm, 2) else {
        return;
    };
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let key = common::random_bytes(64);
    let geom = Geometry::new(4096, false, 0).unwrap();
    let engine = SectorCipher::new(spec, &key).unwrap();
    let plain = common::random_bytes(64 * 1024);
    let mut want = plain.clone();
    engine.encrypt(&geom, 80, &mut want).unwrap();
    let n = needles(&key);

    for round in 0..3 {
        let slot = vault.import_key(spec, &key).unwrap();
        // Positive control: the live key schedule is in guest memory and the scan sees it.
        assert!(
            scan(&n) > 0,
            "round {round}: the scan does not see the live key schedule"
        );
        let mut buf = vault.window().alloc(plain.len()).unwrap();
        buf.copy_from_slice(&plain);
        vault.encrypt(slot, &geom, 80, &mut buf).unwrap();
        assert!(buf[..] == want[..]);
        vault.drop_key(slot).unwrap();
        // Using a dropped slot is refused.
        let e = vault.decrypt(slot, &geom, 80, &mut buf).unwrap_err();
        assert!(
            matches!(
                e,
                HvError::Refused {
                    status: vault_vm::abi::status::SLOT_EMPTY,
                    ..
                }
            ),
            "{e}"
        );
        assert_eq!(
            scan(&n),
            0,
            "round {round}: key material left in vault memory after drop"
        );
    }
    // Keys left in slots at shutdown are wiped too.
    let a = vault.import_key(spec, &key).unwrap();
    let key2 = common::random_bytes(32);
    let b = vault
        .import_key(CipherSpec::parse("aes-cbc-essiv:sha256").unwrap(), &key2)
        .unwrap();
    assert_ne!(a.index(), b.index());
    assert_eq!(vault.stats().unwrap().slots_used, 2);
    vault.shutdown().unwrap();
    let mut n2 = n.clone();
    n2.extend(needles(&key2));
    assert_eq!(
        scan(&n2),
        0,
        "key material left in vault memory after shutdown"
    );
    assert!(matches!(vault.selftest(), Err(HvError::ShutDown)));
}

#[test]
fn bad_key_lengths_and_slot_exhaustion() {
    let _serial = serial();
    let Some(vault) = common::open(BackendKind::Kvm, 1) else {
        return;
    };
    let xts = CipherSpec::parse("aes-xts-plain64").unwrap();
    assert!(matches!(
        vault.import_key(xts, &[1u8; 16]),
        Err(HvError::BadKeyLength(16, _))
    ));
    let mut slots = Vec::new();
    loop {
        match vault.import_key(xts, &common::random_bytes(32)) {
            Ok(s) => slots.push(s),
            Err(HvError::NoFreeSlot(n)) => {
                assert_eq!(n, slots.len());
                break;
            }
            Err(e) => panic!("{e}"),
        }
    }
    for s in slots {
        vault.drop_key(s).unwrap();
    }
    assert_eq!(vault.stats().unwrap().slots_used, 0);
}

#[test]
fn import_from_kernel_keyring() {
    let _serial = serial();
    let Some(vault) = common::open(BackendKind::Kvm, 1) else {
        return;
    };
    let key = common::random_bytes(64);
    // add_key("user", desc, key, len, KEY_SPEC_PROCESS_KEYRING)
    // SAFETY: the type and description are NUL-terminated C strings and `key` is a live
    // buffer of `key.len()` bytes; the kernel only reads them.
    let serial = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            c"user".as_ptr(),
            c"vmvault-hv-test".as_ptr(),
            key.as_ptr(),
            key.len(),
            -2i32, // KEY_SPEC_PROCESS_KEYRING
        )
    };
    if serial < 0 {
        let err = std::io::Error::last_os_error();
        if std::env::var_os("CI").is_some() {
            panic!("add_key failed: {err}");
        }
        println!("SKIPPED: add_key failed: {err}");
        return;
    }
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    assert!(matches!(
        vault.import_key_from_keyring(spec, serial as i32, 32),
        Err(HvError::KeyringLength {
            got: 64,
            want: 32,
            ..
        })
    ));
    let slot = vault
        .import_key_from_keyring(spec, serial as i32, 64)
        .unwrap();
    let geom = Geometry::new(512, false, 0).unwrap();
    let plain = common::random_bytes(4096);
    let mut want = plain.clone();
    SectorCipher::new(spec, &key)
        .unwrap()
        .encrypt(&geom, 0, &mut want)
        .unwrap();
    let mut buf = vault.window().alloc(4096).unwrap();
    buf.copy_from_slice(&plain);
    vault.encrypt(slot, &geom, 0, &mut buf).unwrap();
    assert!(buf[..] == want[..]);
    // The transfer page is clean again.
    // SAFETY: the transfer page is a live mapping of at least 4096 bytes for as long as
    // the vault is open, and no import runs while it is read.
    let page = unsafe { std::slice::from_raw_parts(vault.transfer_page(), 4096) };
    assert!(page.iter().all(|&b| b == 0));
    assert!(vault
        .import_key_from_keyring(spec, 0x7fff_fff0, 64)
        .is_err());
    // KEYCTL_INVALIDATE
    // SAFETY: keyctl with an integer serial; no memory is passed.
    unsafe { libc::syscall(libc::SYS_keyctl, 21, serial) };
    vault.drop_key(slot).unwrap();
}

#[test]
fn soft_backend_life_cycle() {
    let _serial = serial();
    let Some(vault) = common::open(BackendKind::Soft, 1) else {
        return;
    };
    assert!(vault.protection().starts_with("soft"));
    let spec = CipherSpec::parse("aes-cbc-plain64").unwrap();
    let key = common::random_bytes(32);
    for _ in 0..3 {
        let slot = vault.import_key(spec, &key).unwrap();
        let mut buf = vault.window().alloc(8192).unwrap();
        let geom = Geometry::new(4096, true, 0).unwrap();
        vault.encrypt(slot, &geom, 8, &mut buf).unwrap();
        vault.decrypt(slot, &geom, 8, &mut buf).unwrap();
        assert!(buf.iter().all(|&b| b == 0));
        vault.drop_key(slot).unwrap();
    }
    vault.shutdown().unwrap();
}

#[test]
fn drop_races_with_use() {
    let _serial = serial();
    let Some(vault) = common::open(BackendKind::Kvm, 2) else {
        return;
    };
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let geom = Geometry::new(512, false, 0).unwrap();
    for round in 0..20 {
        let key = common::random_bytes(32);
        let engine = SectorCipher::new(spec, &key).unwrap();
        let slot = vault.import_key(spec, &key).unwrap();
        let (served, refused) = std::thread::scope(|s| {
            let users: Vec<_> = (0..3)
                .map(|t| {
                    let (vault, engine) = (&vault, &engine);
                    s.spawn(move || {
                        let mut buf = vault.window().alloc(8192).unwrap();
                        let (mut ok, mut empty) = (0, 0);
                        for i in 0..200u64 {
                            let plain = [(t * 7 + i as usize) as u8; 8192];
                            buf.copy_from_slice(&plain);
                            match vault.encrypt(slot, &geom, i * 16, &mut buf) {
                                Ok(()) => {
                                    let mut want = plain;
                                    engine.encrypt(&geom, i * 16, &mut want).unwrap();
                                    assert!(buf[..] == want[..], "wrong output while a drop raced");
                                    ok += 1;
                                }
                                Err(HvError::Refused {
                                    status: vault_vm::abi::status::SLOT_EMPTY,
                                    ..
                                }) => {
                                    empty += 1;
                                }
                                Err(e) => panic!("{e}"),
                            }
                        }
                        (ok, empty)
                    })
                })
                .collect();
            std::thread::sleep(std::time::Duration::from_micros(200 + 50 * round));
            vault.drop_key(slot).unwrap();
            users
                .into_iter()
                .map(|u| u.join().unwrap())
                .fold((0, 0), |a, b| (a.0 + b.0, a.1 + b.1))
        });
        assert_eq!(served + refused, 600);
        // Once dropped, it stays refused.
        let mut buf = vault.window().alloc(512).unwrap();
        assert!(vault.encrypt(slot, &geom, 0, &mut buf).is_err());
    }
    assert_eq!(vault.stats().unwrap().slots_used, 0);
}

#[test]
fn stale_handle_never_reaches_a_newer_key() {
    let _serial = serial();
    let Some(vault) = common::open(BackendKind::Kvm, 1) else {
        return;
    };
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let geom = Geometry::new(512, false, 0).unwrap();
    let old = vault.import_key(spec, &common::random_bytes(32)).unwrap();
    vault.drop_key(old).unwrap();
    let new = vault.import_key(spec, &common::random_bytes(32)).unwrap();
    assert_eq!(old.index(), new.index(), "the slot is reused");
    let mut buf = vault.window().alloc(512).unwrap();
    let e = vault.encrypt(old, &geom, 0, &mut buf).unwrap_err();
    assert!(
        matches!(
            e,
            HvError::Refused {
                status: vault_vm::abi::status::SLOT_EMPTY,
                ..
            }
        ),
        "{e}"
    );
    assert!(vault.drop_key(old).is_err());
    vault.encrypt(new, &geom, 0, &mut buf).unwrap();
    assert_eq!(vault.stats().unwrap().slots_used, 1);
    vault.drop_key(new).unwrap();
}
