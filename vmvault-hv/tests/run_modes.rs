//! Both ways of running a kvm vCPU (a polling vCPU thread, or the submitting thread
//! itself) give the engine's output, with several submitting threads racing for the
//! vCPUs and sleeps in between (so vCPUs go to sleep and are woken or run by callers).

mod common;

use std::time::Duration;

use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vmvault_hv::{BackendKind, RunMode, Vault, VaultConfig};

#[test]
fn thread_and_caller_modes_match_the_engine() {
    // Probe /dev/kvm the way the other tests do (fails in CI without it).
    if common::open(BackendKind::Kvm, 1).is_none() {
        return;
    }
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let key = common::random_bytes(64);
    let engine = SectorCipher::new(spec, &key).unwrap();
    let geom = Geometry::new(4096, false, 0).unwrap();
    for run in [RunMode::Thread, RunMode::Caller] {
        for vcpus in [1, 2] {
            let vault = Vault::open(&VaultConfig {
                backend: BackendKind::Kvm,
                vcpus,
                window_size: 8 << 20,
                run,
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
