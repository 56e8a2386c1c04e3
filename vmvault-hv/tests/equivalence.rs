//! The vault's output equals the in-process engine's for every cipher mode, key size and
//! sector size, with 1 and 2 vCPUs and several submitting threads.

mod common;

use vault_vm::abi::Segment;
use vault_vm::engine::{CipherSpec, Geometry, Mode, SectorCipher};
use vmvault_hv::{BackendKind, Vault};

const SPECS: [&str; 6] = [
    "aes-xts-plain64",
    "aes-xts-plain",
    "aes-cbc-essiv:sha256",
    "aes-cbc-plain64",
    "aes-cbc-plain",
    "aes-ecb",
];

fn cases() -> Vec<(CipherSpec, usize, u32, bool)> {
    let mut v = Vec::new();
    for s in SPECS {
        let spec = CipherSpec::parse(s).unwrap();
        let keys: &[usize] = if spec.mode == Mode::Xts {
            &[32, 48, 64]
        } else {
            &[16, 24, 32]
        };
        for &k in keys {
            for ss in [512u32, 1024, 2048, 4096] {
                for large in [false, true] {
                    if ss == 512 && large {
                        continue;
                    }
                    v.push((spec, k, ss, large));
                }
            }
        }
    }
    v
}

fn check_case(vault: &Vault, (spec, klen, ss, large): (CipherSpec, usize, u32, bool), salt: u64) {
    let key = common::random_bytes(klen);
    let units = u64::from(ss / 512);
    let geom = Geometry::new(ss, large, 8 * units).unwrap();
    let sector = (salt % 1000 + (1 << 33)) * units; // above 2^32: exercises plain vs plain64
    let sectors = 7usize;
    let plain = common::random_bytes(sectors * ss as usize);
    let engine = SectorCipher::new(spec, &key).unwrap();
    let mut want = plain.clone();
    engine.encrypt(&geom, sector, &mut want).unwrap();

    let slot = vault.import_key(spec, &key).unwrap();
    let what = format!("{spec} key {klen} sector {ss} large {large}");
    // One buffer.
    let mut buf = vault.window().alloc(plain.len()).unwrap();
    buf.copy_from_slice(&plain);
    vault.encrypt(slot, &geom, sector, &mut buf).unwrap();
    assert!(buf[..] == want[..], "encrypt mismatch: {what}");
    vault.decrypt(slot, &geom, sector, &mut buf).unwrap();
    assert!(buf[..] == plain[..], "decrypt mismatch: {what}");
    // The same data split over three segments (scatter/gather), in reverse window order.
    let mut a = vault.window().alloc(2 * ss as usize).unwrap();
    let mut b = vault.window().alloc(4 * ss as usize).unwrap();
    let mut c = vault.window().alloc(ss as usize).unwrap();
    let s = ss as usize;
    c.copy_from_slice(&plain[..s]);
    a.copy_from_slice(&plain[s..3 * s]);
    b.copy_from_slice(&plain[3 * s..]);
    let segs = [
        Segment {
            offset: c.offset(),
            len: c.len() as u64,
        },
        Segment {
            offset: a.offset(),
            len: a.len() as u64,
        },
        Segment {
            offset: b.offset(),
            len: b.len() as u64,
        },
    ];
    // SAFETY: a, b and c are not borrowed during the call.
    let n = unsafe { vault.encrypt_segments(slot, &geom, sector, &segs) }.unwrap();
    assert_eq!(n, plain.len() as u64);
    let joined: Vec<u8> = [&c[..], &a[..], &b[..]].concat();
    assert!(joined == want, "segmented encrypt mismatch: {what}");
    vault.drop_key(slot).unwrap();
}

fn run(backend: BackendKind, vcpus: usize, threads: usize) {
    let Some(vault) = common::open(backend, vcpus) else {
        return;
    };
    let cases = cases();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (vault, cases) = (&vault, &cases);
            s.spawn(move || {
                for (i, case) in cases.iter().enumerate().filter(|(i, _)| i % threads == t) {
                    check_case(vault, *case, i as u64);
                }
            });
        }
    });
    let st = vault.stats().unwrap();
    assert_eq!(st.slots_used, 0);
    assert_eq!(st.errors, 0);
    assert!(st.bytes > 0);
    vault.shutdown().unwrap();
}

#[test]
fn kvm_one_vcpu_four_threads() {
    run(BackendKind::Kvm, 1, 4);
}

#[test]
fn kvm_two_vcpus_four_threads() {
    run(BackendKind::Kvm, 2, 4);
}

#[test]
fn soft_two_lanes_three_threads() {
    run(BackendKind::Soft, 2, 3);
}

#[test]
fn case_count() {
    // 2 XTS + 3 CBC + 1 ECB specs, 3 key sizes, 7 sector-size/IV-unit combinations.
    assert_eq!(cases().len(), 6 * 3 * 7);
}
