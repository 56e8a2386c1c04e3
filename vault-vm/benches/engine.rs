//! Engine throughput vs OpenSSL's EVP in the same run, on one core.
//!
//! `cargo bench -p vault-vm --bench engine` (env `ENGINE_BENCH_MS` sets the time per
//! measurement, default 150 ms; each case is measured in 3 alternating rounds and the
//! best round counts). OpenSSL runs per sector with the same plain64 IV scheme: the key
//! is set once, only the IV is re-set for each sector, as dm-crypt-like users do.

use std::hint::black_box;
use std::time::{Duration, Instant};

use openssl::cipher::Cipher;
use openssl::cipher_ctx::CipherCtx;
use vault_vm::engine::{cpu_features, Backend, CipherSpec, Geometry, Mode, SectorCipher};

const BUF: usize = 1 << 20;

fn budget() -> Duration {
    let ms = std::env::var("ENGINE_BENCH_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(150);
    Duration::from_millis(ms)
}

/// Runs `f` over a 1 MiB buffer repeatedly for the time budget; returns GB/s.
fn measure(mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0x5au8; BUF];
    f(&mut buf); // warm up
    let budget = budget();
    let start = Instant::now();
    let mut bytes = 0u64;
    while start.elapsed() < budget {
        f(black_box(&mut buf));
        bytes += BUF as u64;
    }
    bytes as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn engine_run(c: &SectorCipher, ss: u32, enc: bool) -> impl FnMut(&mut [u8]) + '_ {
    let geom = Geometry::new(ss, false, 0).unwrap();
    move |buf: &mut [u8]| {
        if enc {
            c.encrypt(&geom, 2048, buf).unwrap();
        } else {
            c.decrypt(&geom, 2048, buf).unwrap();
        }
    }
}

fn openssl_xts(key: &[u8], ss: usize) -> impl FnMut(&mut [u8]) {
    let cipher = if key.len() == 64 {
        Cipher::aes_256_xts()
    } else {
        Cipher::aes_128_xts()
    };
    let mut ctx = CipherCtx::new().unwrap();
    ctx.encrypt_init(Some(cipher), Some(key), Some(&[0u8; 16]))
        .unwrap();
    move |buf: &mut [u8]| {
        let per = (ss / 512) as u64;
        for (i, sec) in buf.chunks_exact_mut(ss).enumerate() {
            let mut iv = [0u8; 16];
            iv[..8].copy_from_slice(&(2048 + i as u64 * per).to_le_bytes());
            ctx.encrypt_init(None, None, Some(&iv)).unwrap();
            ctx.cipher_update_inplace(sec, ss).unwrap();
        }
    }
}

fn main() {
    let f = cpu_features();
    let key64: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let xts = CipherSpec::parse("aes-xts-plain64").unwrap();
    println!(
        "engine benchmark: 1 MiB buffers, one core; CPU: aesni={} vaes256={} vaes512={}; default path {}",
        f.aesni,
        f.vaes256,
        f.vaes512,
        Backend::best().name()
    );
    println!(
        "{:<30} {:<8} {:>10} {:>10} {:>7}",
        "case (encrypt)", "path", "engine", "openssl", "ratio"
    );
    // Every hardware path this CPU runs, widest first; the default one is marked `*`.
    let paths: Vec<Backend> = [Backend::Vaes512, Backend::Vaes256, Backend::AesNi]
        .into_iter()
        .filter(|b| b.is_available())
        .collect();
    for (klen, name) in [(64, "AES-256-XTS"), (32, "AES-128-XTS")] {
        for ss in [4096u32, 512] {
            let key = &key64[..klen];
            let ciphers: Vec<SectorCipher> = paths
                .iter()
                .map(|b| SectorCipher::with_backend(xts, key, *b).unwrap().unwrap())
                .collect();
            // Check each path agrees with OpenSSL before timing them.
            let mut want = vec![7u8; 64 * 1024];
            openssl_xts(key, ss as usize)(&mut want);
            for c in &ciphers {
                let mut a = vec![7u8; 64 * 1024];
                engine_run(c, ss, true)(&mut a);
                assert!(
                    a == want,
                    "engine ({}) and OpenSSL disagree",
                    c.backend_name()
                );
            }
            let mut best_e = vec![0f64; ciphers.len()];
            let mut best_o = 0f64;
            for _ in 0..3 {
                best_o = best_o.max(measure(openssl_xts(key, ss as usize)));
                for (c, e) in ciphers.iter().zip(best_e.iter_mut()) {
                    *e = e.max(measure(engine_run(c, ss, true)));
                }
            }
            for (c, e) in ciphers.iter().zip(best_e) {
                let mark = if c.backend() == Backend::best() {
                    "*"
                } else {
                    ""
                };
                println!(
                    "{:<30} {:<8} {:>5.2} GB/s {:>5.2} GB/s {:>6.2}x",
                    format!("{name} {ss}-byte sectors"),
                    format!("{}{mark}", c.backend_name()),
                    e,
                    best_o,
                    e / best_o,
                );
            }
        }
    }
    println!("for information (4096-byte sectors unless said):");
    let c = SectorCipher::with_backend(xts, &key64, Backend::Soft)
        .unwrap()
        .expect("the soft backend runs everywhere");
    let e = measure(engine_run(&c, 4096, true));
    println!(
        "  {:<44} {e:>6.2} GB/s encrypt",
        "AES-256-XTS on backend soft"
    );
    let whole = measure(openssl_xts(&key64, BUF));
    println!(
        "  {:<44} {whole:>6.2} GB/s encrypt",
        "OpenSSL AES-256-XTS, 1 MiB data units"
    );
    for (spec, klen) in [
        ("aes-xts-plain64", 64),
        ("aes-cbc-essiv:sha256", 32),
        ("aes-cbc-plain64", 16),
        ("aes-ecb", 32),
    ] {
        let spec_p = CipherSpec::parse(spec).unwrap();
        for b in &paths {
            let c = SectorCipher::with_backend(spec_p, &key64[..klen], *b)
                .unwrap()
                .unwrap();
            let e = measure(engine_run(&c, 4096, true));
            let d = measure(engine_run(&c, 4096, false));
            let bits = if spec_p.mode == Mode::Xts {
                klen * 4
            } else {
                klen * 8
            };
            let label = format!("{spec} ({bits}-bit key) on {}", b.name());
            println!("  {label:<44} {e:>6.2} GB/s encrypt {d:>6.2} GB/s decrypt");
        }
    }
}
