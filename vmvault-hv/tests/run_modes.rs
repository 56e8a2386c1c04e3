//! Both ways of running a kvm vCPU (a polling vCPU thread, or the submitting thread
//! itself) give the engine's output, with several submitting threads racing for the
//! vCPUs and sleeps in between (so vCPUs go to sleep and are woken or run by callers).

mod common;

use std::time::Duration;

use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vmvault_hv::{BackendKind, CpuPinning, RunMode, Tuning, Vault, VaultConfig};

/// AES-256-XTS on 4 KiB sectors with a random key, and the engine as the reference;
/// `None` (after the probe's message, a failure in CI) without a usable /dev/kvm.
fn fixture() -> Option<(CipherSpec, Vec<u8>, SectorCipher, Geometry)> {
    common::open(BackendKind::Kvm, 1)?;
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let key = common::random_bytes(64);
    let engine = SectorCipher::new(spec, &key).unwrap();
    Some((spec, key, engine, Geometry::new(4096, false, 0).unwrap()))
}

#[test]
fn thread_and_caller_modes_match_the_engine() {
    let Some((spec, key, engine, geom)) = fixture() else {
        return;
    };
    for run in [RunMode::Thread, RunMode::Caller] {
        for vcpus in [1, 2] {
            let vault = Vault::open(&VaultConfig {
                backend: BackendKind::Kvm,
                vcpus,
                window_size: 8 << 20,
                run,
                ..Default::default()
            })
            .unwrap();
            assert_eq!(vault.run_mode(), run);
            let slot = vault.import_key(spec, &key).unwrap();
            std::thread::scope(|s| {
                for t in 0..4u64 {
                    let (vault, engine) = (&vault, &engine);
                    s.spawn(move || {
                        for i in 0..150u64 {
                            let len = 4096 * (1 + ((i * 7 + t) % 16) as usize);
                            let data = common::random_bytes(len);
                            let mut buf = vault.window().alloc(len).unwrap();
                            buf.copy_from_slice(&data);
                            let sector = (t * 1000 + i) * 8;
                            vault.encrypt(slot, &geom, sector, &mut buf).unwrap();
                            let mut want = data.clone();
                            engine.encrypt(&geom, sector, &mut want).unwrap();
                            assert!(buf[..] == want[..], "{run:?} {vcpus} vCPUs: encrypt");
                            vault.decrypt(slot, &geom, sector, &mut buf).unwrap();
                            assert!(buf[..] == data[..], "{run:?} {vcpus} vCPUs: decrypt");
                            if i % 25 == 0 {
                                // Long enough for the vCPU to go to sleep.
                                std::thread::sleep(Duration::from_millis(3));
                            }
                        }
                    });
                }
            });
            let st = vault.stats().unwrap();
            assert!(st.sleeps > 0, "{run:?}: the vCPUs never slept: {st:?}");
            vault.drop_key(slot).unwrap();
            vault.shutdown().unwrap();
        }
    }
}

/// Several requests in flight from one thread (`encrypt_async`/`decrypt_async`), waited
/// for in and out of order and dropped without `wait`, give the engine's output on every
/// run mode and on the soft backend; a refused request fails only its own `wait`.
#[test]
fn pipelined_requests_match_the_engine() {
    let Some((spec, key, engine, geom)) = fixture() else {
        return;
    };
    let configs = [
        (BackendKind::Kvm, RunMode::Thread),
        (BackendKind::Kvm, RunMode::Caller),
        (BackendKind::Soft, RunMode::Auto),
    ];
    for (backend, run) in configs {
        let vault = Vault::open(&VaultConfig {
            backend,
            vcpus: 1,
            window_size: 8 << 20,
            run,
            ..Default::default()
        })
        .unwrap();
        let slot = vault.import_key(spec, &key).unwrap();
        for round in 0..40u64 {
            let n = 1 + (round % 6) as usize;
            let data: Vec<Vec<u8>> = (0..n)
                .map(|k| common::random_bytes(4096 * (1 + (round as usize + k) % 5)))
                .collect();
            let mut bufs: Vec<_> = data
                .iter()
                .map(|d| {
                    let mut b = vault.window().alloc(d.len()).unwrap();
                    b.copy_from_slice(d);
                    b
                })
                .collect();
            let sector = |k: usize| (round * 100 + k as u64) * 8;
            {
                let mut pending: Vec<_> = bufs
                    .iter_mut()
                    .enumerate()
                    .map(|(k, b)| {
                        // SAFETY: every Pending is waited for or dropped below.
                        unsafe { vault.encrypt_async(slot, &geom, sector(k), b) }.unwrap()
                    })
                    .collect();
                if round % 3 == 0 {
                    drop(pending); // waits for each
                } else {
                    if round % 2 == 0 {
                        pending.reverse();
                    }
                    for p in pending {
                        p.wait().unwrap();
                    }
                }
            }
            for (k, b) in bufs.iter().enumerate() {
                let mut want = data[k].clone();
                engine.encrypt(&geom, sector(k), &mut want).unwrap();
                assert!(
                    b[..] == want[..],
                    "{backend:?} {run:?}: pipelined encrypt {k}"
                );
            }
            {
                let pending: Vec<_> = bufs
                    .iter_mut()
                    .enumerate()
                    .map(|(k, b)| {
                        // SAFETY: every Pending is waited for below.
                        unsafe { vault.decrypt_async(slot, &geom, sector(k), b) }.unwrap()
                    })
                    .collect();
                for p in pending {
                    p.wait().unwrap();
                }
            }
            for (k, b) in bufs.iter().enumerate() {
                assert!(
                    b[..] == data[k][..],
                    "{backend:?} {run:?}: pipelined decrypt {k}"
                );
            }
            if round % 10 == 0 {
                std::thread::sleep(Duration::from_millis(3)); // let the vCPU sleep
            }
        }
        // A refused request (dropped key) fails its own wait, and the vault serves on.
        let mut buf = vault.window().alloc(4096).unwrap();
        let other = vault.import_key(spec, &key).unwrap();
        vault.drop_key(other).unwrap();
        // SAFETY: waited for at once.
        let p = unsafe { vault.encrypt_async(other, &geom, 0, &mut buf) }.unwrap();
        assert!(
            p.wait().is_err(),
            "{backend:?} {run:?}: a dropped slot was used"
        );
        vault.encrypt(slot, &geom, 0, &mut buf).unwrap();
        vault.drop_key(slot).unwrap();
        vault.shutdown().unwrap();
    }
}

/// A vault opened with non-default [`Tuning`] (short idle spins, no assist, the vCPU
/// pinned to CPU 0, a caller budget of 400 spins) serves requests like the engine, and
/// pins where it was told (thread mode) or not at all (caller mode, `none`).
#[test]
fn tuning_is_applied() {
    let Some((spec, key, engine, geom)) = fixture() else {
        return;
    };
    let cases = [
        (RunMode::Thread, CpuPinning::Cpus(vec![0]), vec![0]),
        (RunMode::Thread, CpuPinning::None, vec![]),
        (RunMode::Caller, CpuPinning::Cpus(vec![0]), vec![]),
    ];
    for (run, vcpu_cpus, pinned) in cases {
        let tuning = Tuning {
            idle_spins: 50,
            caller_spins: 400,
            assist: false,
            vcpu_cpus: vcpu_cpus.clone(),
            vcpu_nice: Some(0),
        };
        let vault = Vault::open(&VaultConfig {
            backend: BackendKind::Kvm,
            vcpus: 1,
            window_size: 2 << 20,
            run,
            tuning,
        })
        .unwrap();
        assert_eq!(vault.run_mode(), run);
        assert_eq!(vault.vcpu_cpus(), pinned, "{run:?} {vcpu_cpus:?}");
        let slot = vault.import_key(spec, &key).unwrap();
        let mut buf = vault.window().alloc(4096).unwrap();
        for i in 0..50u64 {
            let data = common::random_bytes(4096);
            buf.copy_from_slice(&data);
            vault.encrypt(slot, &geom, i * 8, &mut buf).unwrap();
            let mut want = data.clone();
            engine.encrypt(&geom, i * 8, &mut want).unwrap();
            assert!(buf[..] == want[..], "{run:?} {vcpu_cpus:?}: encrypt");
            if i % 10 == 0 {
                std::thread::sleep(Duration::from_millis(2));
            }
        }
        vault.shutdown().unwrap();
    }
}
