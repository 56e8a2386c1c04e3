//! Throughput of the generic modes against OpenSSL's EVP in the same run, on one core:
//! AES-256-GCM encryption and decryption, AES-256-CTR, AES-256-CBC encryption and decryption at 64 B,
//! 4 KiB, 64 KiB and 1 MiB messages, on every hardware backend this CPU runs (the
//! default one marked `*`), with the engine/OpenSSL ratio.
//!
//! `cargo bench -p vault-vm --bench modes` (env `MODES_BENCH_MS` sets the time per
//! measurement, default 150 ms; each case is measured in 3 alternating rounds and the best
//! round counts). The last lines time the GCM key setup (AES key expansion, H and its
//! powers) against OpenSSL's keyed context setup. Without `--bench` (as `cargo test --benches` runs it) it is a smoke run:
//! the default backend, two sizes, a few milliseconds.
//!
//! Both sides key once and set up each message anew: the engine builds a `Gcm`/`Ctr` on
//! the prepared key (a `GcmKey` holds H and its powers, as OpenSSL's context holds its
//! table), OpenSSL re-initializes the context with only a new IV. Both work in place.

use std::hint::black_box;
use std::time::{Duration, Instant};

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use vault_vm::engine::generic::{Aes, Ctr, Gcm, GcmKey};
use vault_vm::engine::{clear_vector_registers, Backend};

/// Runs `f` for about `budget` and returns the bytes per second.
fn measure(budget: Duration, bytes: usize, mut f: impl FnMut()) -> f64 {
    f();
    let start = Instant::now();
    let mut n = 0u64;
    loop {
        for _ in 0..8 {
            f();
        }
        n += 8;
        let t = start.elapsed();
        if t >= budget {
            return (n as f64 * bytes as f64) / t.as_secs_f64();
        }
    }
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, v)| v.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into())
}

#[derive(Clone, Copy, PartialEq)]
enum Case {
    Gcm,
    GcmDec,
    Ctr,
    CbcEnc,
    CbcDec,
}

impl Case {
    fn name(self) -> &'static str {
        match self {
            Case::Gcm => "AES-256-GCM enc",
            Case::GcmDec => "AES-256-GCM dec",
            Case::Ctr => "AES-256-CTR",
            Case::CbcEnc => "AES-256-CBC enc",
            Case::CbcDec => "AES-256-CBC dec",
        }
    }
}

/// One message through the engine.
fn engine_op(case: Case, gk: &GcmKey, iv: &[u8; 16], buf: &mut [u8]) -> [u8; 16] {
    match case {
        Case::Gcm => {
            let mut g = Gcm::new(gk, &iv[..12], 16).unwrap();
            g.encrypt_update(buf).unwrap();
            let mut t = [0u8; 16];
            t.copy_from_slice(g.finish().as_bytes());
            t
        }
        Case::GcmDec => {
            // The tag is not checked (the buffer is not a real ciphertext): the work is
            // the same as for a good tag.
            let mut g = Gcm::new(gk, &iv[..12], 16).unwrap();
            g.decrypt_update(buf).unwrap();
            let _ = black_box(g.verify(&[0; 16]));
            [0; 16]
        }
        Case::Ctr => {
            let mut c = Ctr::new(gk.aes(), iv, 128).unwrap();
            c.apply(buf);
            [0; 16]
        }
        Case::CbcEnc => {
            let mut v = *iv;
            gk.aes().cbc_encrypt(&mut v, buf).unwrap();
            v
        }
        Case::CbcDec => {
            let mut v = *iv;
            gk.aes().cbc_decrypt(&mut v, buf).unwrap();
            v
        }
    }
}

/// One message through OpenSSL on a context keyed beforehand.
fn openssl_op(
    case: Case,
    ctx: &mut CipherCtx,
    scratch: &mut Vec<u8>,
    iv: &[u8; 16],
    buf: &mut [u8],
) -> [u8; 16] {
    let n = buf.len();
    let mut t = [0u8; 16];
    match case {
        Case::Gcm => {
            ctx.encrypt_init(None, None, Some(&iv[..12])).unwrap();
            ctx.cipher_update_inplace(buf, n).unwrap();
            ctx.cipher_final(&mut []).unwrap();
            ctx.tag(&mut t).unwrap();
        }
        Case::GcmDec => {
            ctx.decrypt_init(None, None, Some(&iv[..12])).unwrap();
            ctx.cipher_update_inplace(buf, n).unwrap();
            ctx.set_tag(&[0; 16]).unwrap();
            let _ = black_box(ctx.cipher_final(&mut []));
        }
        Case::Ctr => {
            ctx.encrypt_init(None, None, Some(iv)).unwrap();
            ctx.cipher_update_inplace(buf, n).unwrap();
        }
        Case::CbcEnc | Case::CbcDec => {
            // The crate's in-place call wants a block of slack for block modes: out of
            // place into a scratch buffer, then copied back (the copy is timed too).
            if case == Case::CbcEnc {
                ctx.encrypt_init(None, None, Some(iv)).unwrap();
            } else {
                ctx.decrypt_init(None, None, Some(iv)).unwrap();
            }
            let mut out = std::mem::take(scratch);
            out.resize(n + 16, 0);
            let m = ctx.cipher_update(buf, Some(&mut out)).unwrap();
            buf[..m].copy_from_slice(&out[..m]);
            *scratch = out;
        }
    }
    t
}

fn openssl_ctx(case: Case, key: &[u8]) -> CipherCtx {
    let mut c = CipherCtx::new().unwrap();
    let t = match case {
        Case::Gcm | Case::GcmDec => Cipher::aes_256_gcm(),
        Case::Ctr => Cipher::aes_256_ctr(),
        Case::CbcEnc | Case::CbcDec => Cipher::aes_256_cbc(),
    };
    if matches!(case, Case::CbcDec | Case::GcmDec) {
        c.decrypt_init(Some(t), Some(key), None).unwrap();
    } else {
        c.encrypt_init(Some(t), Some(key), None).unwrap();
    }
    c.set_padding(false);
    c
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    let budget = if full {
        Duration::from_millis(
            std::env::var("MODES_BENCH_MS")
                .ok()
                .and_then(|s| s.parse().ok())
                .unwrap_or(150),
        )
    } else {
        Duration::from_millis(2)
    };
    let sizes: &[usize] = if full {
        &[64, 4096, 64 << 10, 1 << 20]
    } else {
        &[64, 4096]
    };
    let best = Backend::best();
    let backends: Vec<Backend> = if full {
        [Backend::Vaes512, Backend::Vaes256, Backend::AesNi]
            .into_iter()
            .filter(|b| b.is_available())
            .collect()
    } else {
        vec![best]
    };
    let key: Vec<u8> = (0..32u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let iv: [u8; 16] = core::array::from_fn(|i| (i as u8).wrapping_mul(91) ^ 0x5c);
    println!(
        "modes benchmark{}: one core; CPU: {}; default backend {}",
        if full {
            ""
        } else {
            " (smoke run; `cargo bench` for numbers)"
        },
        cpu_model(),
        best.name()
    );
    println!(
        "{:<16} {:>8} {:<9} {:<5} {:>9} {:>9} {:>6}",
        "case", "bytes", "backend", "path", "GB/s", "openssl", "ratio"
    );
    // Words on the command line (`cargo bench --bench modes -- GCM`) pick cases.
    let filters: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    for case in [
        Case::Gcm,
        Case::GcmDec,
        Case::Ctr,
        Case::CbcEnc,
        Case::CbcDec,
    ] {
        if !filters.is_empty() && !filters.iter().any(|f| case.name().contains(f.as_str())) {
            continue;
        }
        for &size in sizes {
            let keys: Vec<GcmKey> = backends
                .iter()
                .map(|b| GcmKey::new(Aes::with_backend(&key, *b).unwrap().unwrap()))
                .collect();
            let mut ctx = openssl_ctx(case, &key);
            let mut scratch = Vec::new();
            let data: Vec<u8> = (0..size).map(|i| (i * 7 + 3) as u8).collect();
            // Check each backend against OpenSSL before timing.
            let mut want = data.clone();
            let want_tag = openssl_op(case, &mut ctx, &mut scratch, &iv, &mut want);
            for gk in &keys {
                let mut got = data.clone();
                let tag = engine_op(case, gk, &iv, &mut got);
                assert!(
                    got == want,
                    "{} {size}: engine and OpenSSL disagree",
                    case.name()
                );
                if case == Case::Gcm {
                    assert_eq!(tag, want_tag, "GCM tag");
                }
            }
            let mut buf = data.clone();
            let mut best_o = 0f64;
            let mut best_e = vec![0f64; keys.len()];
            for _ in 0..if full { 3 } else { 1 } {
                best_o = best_o.max(measure(budget, size, || {
                    black_box(openssl_op(
                        case,
                        &mut ctx,
                        &mut scratch,
                        &iv,
                        black_box(&mut buf),
                    ));
                }));
                for (gk, e) in keys.iter().zip(best_e.iter_mut()) {
                    *e = e.max(measure(budget, size, || {
                        black_box(engine_op(case, gk, &iv, black_box(&mut buf)));
                    }));
                }
            }
            for (gk, e) in keys.iter().zip(best_e.iter()) {
                let b = gk.aes().backend();
                println!(
                    "{:<16} {:>8} {:<9} {:<5} {:>9.2} {:>9.2} {:>5.2}x",
                    case.name(),
                    size,
                    format!("{}{}", b.name(), if b == best { "*" } else { "" }),
                    gk.aes().path().name(),
                    e / 1e9,
                    best_o / 1e9,
                    e / best_o
                );
            }
        }
    }
    // Key setup: AES expansion plus H and its powers (what C_EncryptInit costs when the
    // PKCS#11 layer does not keep a `GcmKey` per key object), against OpenSSL's keyed
    // GCM context setup.
    if filters.is_empty() || filters.iter().any(|f| "setup".contains(f.as_str())) {
        let mut ctx = CipherCtx::new().unwrap();
        let o = measure(budget, 1, || {
            ctx.encrypt_init(Some(Cipher::aes_256_gcm()), Some(&key), Some(&iv[..12]))
                .unwrap();
        });
        for b in &backends {
            let e = measure(budget, 1, || {
                let gk = GcmKey::new(Aes::with_backend(black_box(&key), *b).unwrap().unwrap());
                black_box(&gk);
            });
            let path = Aes::with_backend(&key, *b).unwrap().unwrap().path();
            println!(
                "{:<16} {:>8} {:<9} {:<5} {:>7.0}ns {:>7.0}ns {:>5.2}x",
                "GCM key setup",
                "-",
                b.name(),
                path.name(),
                1e9 / e,
                1e9 / o,
                e / o
            );
        }
    }
    clear_vector_registers();
}
