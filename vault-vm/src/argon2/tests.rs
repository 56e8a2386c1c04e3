//! Known answers (RFC 9106), equality with RustCrypto's `argon2` over random parameters,
//! every compression path against the portable one, and the job board with helpers on
//! other threads (late, early, absent) against the sequential result.

extern crate std;

use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};
use std::vec;
use std::vec::Vec;

use super::*;

/// xorshift64*: reproducible test randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }

    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
}

fn memory_for(params: &Params) -> Vec<Block> {
    vec![Block::ZERO; params.block_count()]
}

fn rfc(algorithm: Algorithm, expected: [u8; 32]) {
    let params = Params {
        algorithm,
        t_cost: 3,
        m_cost: 32,
        lanes: 4,
    };
    let inputs = Inputs {
        password: &[0x01; 32],
        salt: &[0x02; 16],
        secret: &[0x03; 8],
        ad: &[0x04; 12],
    };
    let mut mem = memory_for(&params);
    let mut out = [0u8; 32];
    hash(&params, &inputs, &mut mem, &mut out).unwrap();
    assert_eq!(out, expected, "{algorithm:?}");
    assert!(
        mem.iter().all(|b| b.0.iter().all(|&w| w == 0)),
        "memory wiped"
    );
}

#[test]
fn argon2_rfc9106_argon2d() {
    rfc(
        Algorithm::Argon2d,
        [
            0x51, 0x2b, 0x39, 0x1b, 0x6f, 0x11, 0x62, 0x97, 0x53, 0x71, 0xd3, 0x09, 0x19, 0x73,
            0x42, 0x94, 0xf8, 0x68, 0xe3, 0xbe, 0x39, 0x84, 0xf3, 0xc1, 0xa1, 0x3a, 0x4d, 0xb9,
            0xfa, 0xbe, 0x4a, 0xcb,
        ],
    );
}

#[test]
fn argon2_rfc9106_argon2i() {
    rfc(
        Algorithm::Argon2i,
        [
            0xc8, 0x14, 0xd9, 0xd1, 0xdc, 0x7f, 0x37, 0xaa, 0x13, 0xf0, 0xd7, 0x7f, 0x24, 0x94,
            0xbd, 0xa1, 0xc8, 0xde, 0x6b, 0x01, 0x6d, 0xd3, 0x88, 0xd2, 0x99, 0x52, 0xa4, 0xc4,
            0x67, 0x2b, 0x6c, 0xe8,
        ],
    );
}

#[test]
fn argon2_rfc9106_argon2id() {
    rfc(
        Algorithm::Argon2id,
        [
            0x0d, 0x64, 0x0d, 0xf5, 0x8d, 0x78, 0x76, 0x6c, 0x08, 0xc0, 0x37, 0xa3, 0x4a, 0x8b,
            0x53, 0xc9, 0xd0, 0x1e, 0xf0, 0x45, 0x2d, 0x75, 0xb6, 0x5e, 0xb5, 0x25, 0x20, 0xe9,
            0x6b, 0x01, 0xe6, 0x59,
        ],
    );
}

/// RustCrypto's result for the same parameters.
fn reference(params: &Params, password: &[u8], salt: &[u8], out_len: usize) -> Vec<u8> {
    let alg = match params.algorithm {
        Algorithm::Argon2d => ::argon2::Algorithm::Argon2d,
        Algorithm::Argon2i => ::argon2::Algorithm::Argon2i,
        Algorithm::Argon2id => ::argon2::Algorithm::Argon2id,
    };
    let p =
        ::argon2::Params::new(params.m_cost, params.t_cost, params.lanes, Some(out_len)).unwrap();
    let ctx = ::argon2::Argon2::new(alg, ::argon2::Version::V0x13, p);
    let mut out = vec![0u8; out_len];
    ctx.hash_password_into(password, salt, &mut out).unwrap();
    out
}

/// A random small parameter set with its inputs.
fn random_case(rng: &mut Rng) -> (Params, Vec<u8>, Vec<u8>, usize) {
    let algorithm = match rng.below(3) {
        0 => Algorithm::Argon2i,
        1 => Algorithm::Argon2id,
        _ => Algorithm::Argon2d,
    };
    let lanes = 1 + rng.below(8) as u32;
    // Not always a multiple of 4 × lanes: m' rounds down.
    let m_cost = 8 * lanes + rng.below(300) as u32;
    let t_cost = 1 + rng.below(4) as u32;
    let password = {
        let n = rng.below(80) as usize;
        rng.bytes(n)
    };
    let salt = {
        let n = 8 + rng.below(40) as usize;
        rng.bytes(n)
    };
    let out_len = [4, 16, 32, 33, 63, 64, 65, 96, 100, 128, 500][rng.below(11) as usize];
    let params = Params {
        algorithm,
        t_cost,
        m_cost,
        lanes,
    };
    (params, password, salt, out_len)
}

#[test]
fn argon2_matches_rustcrypto_on_random_parameters() {
    let mut rng = Rng(0x1234_5678_9abc_def1);
    for _ in 0..60 {
        let (params, password, salt, out_len) = random_case(&mut rng);
        let mut mem = memory_for(&params);
        let mut out = vec![0u8; out_len];
        hash(&params, &Inputs::new(&password, &salt), &mut mem, &mut out).unwrap();
        assert_eq!(
            out,
            reference(&params, &password, &salt, out_len),
            "{params:?} out {out_len}"
        );
    }
}

#[test]
fn argon2_compress_paths_agree() {
    let mut rng = Rng(99);
    let paths = [
        CompressPath::Portable,
        CompressPath::Avx2,
        CompressPath::Avx512,
    ];
    for _ in 0..200 {
        let mut x = Block::ZERO;
        let mut y = Block::ZERO;
        let mut d = Block::ZERO;
        for i in 0..Block::WORDS {
            x.0[i] = rng.next();
            y.0[i] = rng.next();
            d.0[i] = rng.next();
        }
        for xor in [false, true] {
            let mut want = d.clone();
            // SAFETY: local blocks; the portable path runs anywhere.
            unsafe { CompressPath::Portable.compress(&mut want, &x, &y, xor) };
            for path in paths.into_iter().filter(|p| p.available()) {
                let mut got = d.clone();
                // SAFETY: local blocks; the path is available.
                unsafe { path.compress(&mut got, &x, &y, xor) };
                assert_eq!(got.0, want.0, "{path:?} xor {xor}");
                // dst aliasing y (address blocks do this).
                let mut a = y.clone();
                let ap: *mut Block = &mut a;
                // SAFETY: `dst` may alias `y` (contract); local blocks.
                unsafe { path.compress(ap, &x, ap, false) };
                let mut want2 = Block::ZERO;
                // SAFETY: local blocks.
                unsafe { CompressPath::Portable.compress(&mut want2, &x, &y, false) };
                assert_eq!(a.0, want2.0, "{path:?} aliasing");
            }
        }
    }
}

#[test]
fn argon2_refuses_bad_arguments() {
    let ok = Params {
        algorithm: Algorithm::Argon2id,
        t_cost: 1,
        m_cost: 64,
        lanes: 2,
    };
    let mut mem = memory_for(&ok);
    let mut out = [0u8; 32];
    let inputs = Inputs::new(b"pw", b"saltsalt");
    let cases = [
        (Params { t_cost: 0, ..ok }, Argon2Error::TimeCost),
        (Params { lanes: 0, ..ok }, Argon2Error::Lanes),
        (Params { m_cost: 15, ..ok }, Argon2Error::MemoryCost),
        (Params { m_cost: 128, ..ok }, Argon2Error::MemoryTooSmall),
    ];
    for (p, e) in cases {
        assert_eq!(hash(&p, &inputs, &mut mem, &mut out), Err(e));
    }
    assert_eq!(
        hash(&ok, &Inputs::new(b"pw", b"short"), &mut mem, &mut out),
        Err(Argon2Error::SaltTooShort)
    );
    assert_eq!(
        hash(&ok, &inputs, &mut mem, &mut out[..3]),
        Err(Argon2Error::OutputLength)
    );
}

#[test]
fn argon2_join_without_job_returns_zero_promptly() {
    let job = Job::new();
    let t = Instant::now();
    assert_eq!(join(&job, 0), 0);
    assert_eq!(join(&job, 10_000), 0);
    assert!(t.elapsed() < Duration::from_millis(500));
    assert!(!job.is_published());
}

/// Owner on this thread, `helpers` joiners on others, each starting after a random
/// delay (some after the job ended); the tag must equal the sequential one.
fn parallel_case(rng: &mut Rng, job: &Job, helpers: usize) -> u32 {
    let (params, password, salt, out_len) = random_case(rng);
    let mut want_mem = memory_for(&params);
    let mut want = vec![0u8; out_len];
    hash(
        &params,
        &Inputs::new(&password, &salt),
        &mut want_mem,
        &mut want,
    )
    .unwrap();

    let delays: Vec<u64> = (0..helpers).map(|_| rng.below(400)).collect();
    let mut mem = memory_for(&params);
    let mut out = vec![0u8; out_len];
    let helped = thread::scope(|s| {
        let handles: Vec<_> = delays
            .iter()
            .map(|&d| {
                s.spawn(move || {
                    thread::sleep(Duration::from_micros(d));
                    join(job, 200_000)
                })
            })
            .collect();
        if rng.below(2) == 0 {
            thread::sleep(Duration::from_micros(rng.below(200)));
        }
        run_owner(job, &params, &password, &salt, &mut mem, &mut out).unwrap();
        handles.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
    });
    assert_eq!(out, want, "{params:?} helpers {helpers}");
    assert!(
        mem.iter().all(|b| b.0.iter().all(|&w| w == 0)),
        "memory wiped"
    );
    assert!(!job.is_published());
    helped
}

#[test]
fn argon2_parallel_equals_sequential() {
    static JOB: Job = Job::new();
    let mut rng = Rng(0xdead_beef_0bad_cafe);
    let mut helped = 0;
    for i in 0..120 {
        helped += parallel_case(&mut rng, &JOB, i % 4);
    }
    // Some helpers must actually have worked, or the test shows nothing.
    assert!(helped > 0);
}

#[test]
fn argon2_parallel_larger_memory_with_helpers() {
    let job = std::boxed::Box::new(Job::new());
    let params = Params {
        algorithm: Algorithm::Argon2id,
        t_cost: 2,
        m_cost: 32768,
        lanes: 4,
    };
    let want = reference(&params, b"passphrase", b"saltsaltsalt", 32);
    let mut total = 0;
    for helpers in 0..=3 {
        let mut mem = memory_for(&params);
        let mut out = [0u8; 32];
        let ready = std::sync::atomic::AtomicUsize::new(0);
        let helped = thread::scope(|s| {
            let hs: Vec<_> = (0..helpers)
                .map(|_| {
                    s.spawn(|| {
                        ready.fetch_add(1, Ordering::SeqCst);
                        join(&job, 1 << 34)
                    })
                })
                .collect();
            while ready.load(Ordering::SeqCst) < helpers {
                thread::yield_now();
            }
            run_owner(
                &job,
                &params,
                b"passphrase",
                b"saltsaltsalt",
                &mut mem,
                &mut out,
            )
            .unwrap();
            hs.into_iter().map(|h| h.join().unwrap()).sum::<u32>()
        });
        assert_eq!(out[..], want[..], "helpers {helpers}");
        total += helped;
    }
    assert!(
        total > 0,
        "helpers waiting before publication must get work"
    );
}

#[test]
fn argon2_helpers_looping_across_many_jobs() {
    static JOB: Job = Job::new();
    let stop = AtomicBool::new(false);
    let mut rng = Rng(7);
    thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0u64;
                    while !stop.load(Ordering::Relaxed) {
                        n += u64::from(join(&JOB, 1000));
                    }
                    n
                })
            })
            .collect();
        for _ in 0..80 {
            let (params, password, salt, out_len) = random_case(&mut rng);
            let mut mem = memory_for(&params);
            let mut out = vec![0u8; out_len];
            run_owner(&JOB, &params, &password, &salt, &mut mem, &mut out).unwrap();
            assert_eq!(out, reference(&params, &password, &salt, out_len));
        }
        stop.store(true, Ordering::Relaxed);
        for h in hs {
            h.join().unwrap();
        }
    });
}

#[test]
fn argon2_busy_job_is_refused() {
    let job = Job::new();
    let params = Params {
        algorithm: Algorithm::Argon2i,
        t_cost: 3,
        m_cost: 16384,
        lanes: 1,
    };
    let started = AtomicBool::new(false);
    thread::scope(|s| {
        let h = s.spawn(|| {
            let mut mem = memory_for(&params);
            let mut out = [0u8; 32];
            started.store(true, Ordering::SeqCst);
            run_owner(&job, &params, b"pw", b"saltsalt", &mut mem, &mut out)
        });
        while !started.load(Ordering::SeqCst) {
            thread::yield_now();
        }
        // Wait until published, then a second owner is refused.
        while !job.is_published() && !h.is_finished() {
            thread::yield_now();
        }
        if job.is_published() {
            let mut mem = memory_for(&params);
            let mut out = [0u8; 32];
            assert_eq!(
                run_owner(&job, &params, b"pw", b"saltsalt", &mut mem, &mut out),
                Err(Argon2Error::JobBusy)
            );
        }
        h.join().unwrap().unwrap();
    });
}
