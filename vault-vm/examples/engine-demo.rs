//! The sector cipher engine's self-test and a short (about 2 s) throughput run.
//!
//! `cargo run --release -p vault-vm --example engine-demo`

use std::time::{Duration, Instant};

use vault_vm::engine::{cpu_features, Backend, CipherSpec, Geometry, SectorCipher};

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

/// One known answer: `pt` at the start of the buffer encrypts to `ct` (prefix), and back.
struct Kat {
    name: &'static str,
    spec: &'static str,
    key: String,
    sector_size: u32,
    sector: u64,
    pt: Vec<u8>,
    ct: &'static str,
}

fn kats() -> Vec<Kat> {
    // First 32 bytes of IEEE 1619 vector 10 (AES-256, data unit 0xff, pt 00 01 02 ...).
    let xts_key = "2718281828459045235360287471352662497757247093699959574966967627\
                   3141592653589793238462643383279502884197169399375105820974944592";
    let pt512: Vec<u8> = (0..512).map(|i| i as u8).collect();
    // SP 800-38A F.2.1 shifted to the engine's plain64 IV of sector 0 (IV 00..00):
    // first block 6bc1... ^ 000102..0f.
    let mut cbc_pt = hex("6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51");
    for (i, b) in cbc_pt[..16].iter_mut().enumerate() {
        *b ^= i as u8;
    }
    vec![
        Kat {
            name: "IEEE 1619 vector 10",
            spec: "aes-xts-plain64",
            key: xts_key.into(),
            sector_size: 512,
            sector: 0xff,
            pt: pt512.clone(),
            ct: "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
        },
        Kat {
            name: "IEEE 1619 vector 10, 4K iv_large",
            spec: "capi:xts(aes)-plain64",
            key: xts_key.into(),
            sector_size: 4096,
            sector: 0xff * 8,
            pt: pt512,
            ct: "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b",
        },
        Kat {
            name: "SP 800-38A F.2.1",
            spec: "aes-cbc-plain64",
            key: "2b7e151628aed2a6abf7158809cf4f3c".into(),
            sector_size: 512,
            sector: 0,
            pt: cbc_pt,
            ct: "7649abac8119b246cee98e9b12e9197d5086cb9b507219ee95db113a917678b2",
        },
        Kat {
            // Computed with Python `cryptography` (tests/engine_ref.py).
            name: "ESSIV, key 00..1f, sector 5",
            spec: "aes-cbc-essiv:sha256",
            key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
            sector_size: 512,
            sector: 5,
            pt: vec![0; 32],
            ct: "23ea97de2d3ccc80488df151f75e983437f315941316c98ff6d1a153c48932ba",
        },
        Kat {
            name: "FIPS-197 C.3",
            spec: "aes-ecb",
            key: "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f".into(),
            sector_size: 512,
            sector: 0,
            pt: hex("00112233445566778899aabbccddeeff"),
            ct: "8ea2b7ca516745bfeafc49904b496089",
        },
    ]
}

fn self_test() -> bool {
    let mut ok = true;
    for k in kats() {
        let spec = CipherSpec::parse(k.spec).unwrap();
        let large = k.name.contains("iv_large");
        let geom = Geometry::new(k.sector_size, large, 0).unwrap();
        for backend in [
            Backend::Soft,
            Backend::AesNi,
            Backend::Vaes256,
            Backend::Vaes512,
        ] {
            let Some(c) = SectorCipher::with_backend(spec, &hex(&k.key), backend).unwrap() else {
                continue;
            };
            let mut buf = vec![0u8; k.sector_size as usize];
            buf[..k.pt.len()].copy_from_slice(&k.pt);
            let orig = buf.clone();
            c.encrypt(&geom, k.sector, &mut buf).unwrap();
            let enc_ok = buf[..k.ct.len() / 2] == hex(k.ct)[..];
            c.decrypt(&geom, k.sector, &mut buf).unwrap();
            let dec_ok = buf == orig;
            let verdict = if enc_ok && dec_ok { "OK" } else { "FAIL" };
            println!(
                "  {:<22} {:<34} {:<8} {verdict}",
                k.spec,
                k.name,
                backend.name()
            );
            ok &= enc_ok && dec_ok;
        }
    }
    ok
}

/// GB/s of `f` over a 1 MiB buffer for about `ms` milliseconds.
fn rate(ms: u64, mut f: impl FnMut(&mut [u8])) -> f64 {
    let mut buf = vec![0xa5u8; 1 << 20];
    f(&mut buf);
    let start = Instant::now();
    let mut n = 0u64;
    while start.elapsed() < Duration::from_millis(ms) {
        f(std::hint::black_box(&mut buf));
        n += buf.len() as u64;
    }
    n as f64 / start.elapsed().as_secs_f64() / 1e9
}

fn main() {
    let f = cpu_features();
    println!("vmvault sector cipher engine");
    println!(
        "CPU: AES-NI {}, VAES+AVX-512 {}; path in use: {}",
        if f.aesni { "yes" } else { "no" },
        if f.vaes512 { "yes" } else { "no" },
        Backend::best().name()
    );
    println!("self-test (known answers, every backend this CPU has):");
    if !self_test() {
        println!("self-test: FAILED");
        std::process::exit(1);
    }
    println!("self-test: OK");

    println!("throughput, one core, 1 MiB buffers of 4096-byte sectors:");
    let key: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(29).wrapping_add(3))
        .collect();
    let g = Geometry::new(4096, false, 0).unwrap();
    let xts = CipherSpec::parse("aes-xts-plain64").unwrap();
    for backend in [
        Backend::Vaes512,
        Backend::Vaes256,
        Backend::AesNi,
        Backend::Soft,
    ] {
        let Some(c) = SectorCipher::with_backend(xts, &key, backend).unwrap() else {
            continue;
        };
        let e = rate(250, |b| c.encrypt(&g, 0, b).unwrap());
        let d = rate(250, |b| c.decrypt(&g, 0, b).unwrap());
        println!(
            "  aes-xts-plain64 256-bit   {:<8} {e:>6.2} GB/s encrypt {d:>6.2} GB/s decrypt",
            backend.name()
        );
    }
    for (spec, klen) in [("aes-cbc-essiv:sha256", 32), ("aes-ecb", 32)] {
        let c = SectorCipher::new(CipherSpec::parse(spec).unwrap(), &key[..klen]).unwrap();
        let e = rate(200, |b| c.encrypt(&g, 0, b).unwrap());
        let d = rate(200, |b| c.decrypt(&g, 0, b).unwrap());
        println!(
            "  {spec:<20} {}-bit {:<8} {e:>6.2} GB/s encrypt {d:>6.2} GB/s decrypt",
            klen * 8,
            c.backend_name()
        );
    }
    if f.aesni {
        println!("(soft = the `aes` crate's path, which itself uses AES-NI on this CPU;");
        println!(" its constant-time fixslice AES runs only where AES-NI is missing)");
    }
    println!("(OpenSSL comparison: cargo bench -p vault-vm --bench engine)");
}
