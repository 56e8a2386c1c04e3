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
use vault_vm::engine::{cpu_features, Backend, CipherSpec, Geometry, SectorCipher};

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
        "engine benchmark: 1 MiB buffers, one core; CPU: aesni={} vaes512={}",
        f.aesni, f.vaes512
    );
    println!(
        "{:<28} {:>10} {:>10} {:>7}",
        "case (encrypt)", "engine", "openssl", "ratio"
    );
    for (klen, name) in [(64, "AES-256-XTS"), (32, "AES-128-XTS")] {
        for ss in [4096u32, 512] {
            let key = &key64[..klen];
            let c = SectorCipher::new(xts, key).unwrap();
            // Check the two agree before timing them.
            let mut a = vec![7u8; 64 * 1024];
            let mut b = a.clone();
            engine_run(&c, ss, true)(&mut a);
            openssl_xts(key, ss as usize)(&mut b);
            assert!(a == b, "engine and OpenSSL disagree");
            let (mut best_e, mut best_o) = (0f64, 0f64);
            for _ in 0..3 {
                best_e = best_e.max(measure(engine_run(&c, ss, true)));
                best_o = best_o.max(measure(openssl_xts(key, ss as usize)));
            }
            println!(
                "{:<28} {:>6.2} GB/s {:>5.2} GB/s {:>6.2}x   [{}]",
                format!("{name} {ss}-byte sectors"),
                best_e,
                best_o,
                best_e / best_o,
                c.backend_name()
            );
        }
    }
    println!("for information (4096-byte sectors unless said):");
    for backend in [Backend::AesNi, Backend::Soft] {
        if let Some(c) = SectorCipher::with_backend(xts, &key64, backend).unwrap() {
            let e = measure(engine_run(&c, 4096, true));
            println!(
                "  {:<36} {e:>6.2} GB/s encrypt",
                format!("AES-256-XTS on backend {}", c.backend_name())
            );
        }
    }
    let whole = measure(openssl_xts(&key64, BUF));
    println!(
        "  {:<36} {whole:>6.2} GB/s encrypt",
        "OpenSSL AES-256-XTS, 1 MiB data units"
    );
    let c = SectorCipher::new(xts, &key64).unwrap();
    println!(
        "  {:<36} {:>6.2} GB/s",
        "AES-256-XTS decrypt",
        measure(engine_run(&c, 4096, false))
    );
    for (spec, klen) in [
        ("aes-cbc-essiv:sha256", 32),
        ("aes-cbc-plain64", 16),
        ("aes-ecb", 32),
    ] {
        let c = SectorCipher::new(CipherSpec::parse(spec).unwrap(), &key64[..klen]).unwrap();
        let e = measure(engine_run(&c, 4096, true));
        let d = measure(engine_run(&c, 4096, false));
        let label = format!("{spec} ({}-bit key)", klen * 8);
        println!("  {label:<36} {e:>6.2} GB/s encrypt {d:>6.2} GB/s decrypt");
    }
}
