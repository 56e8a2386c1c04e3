//! Randomized cross-checks of the engine against an independent implementation: Python
//! `cryptography` (OpenSSL underneath) driven by `tests/engine_ref.py`, which derives the
//! dm-crypt IVs on its own. Covers every mode × key size × sector size × IV mode ×
//! `iv_large_sectors` × (zero, non-zero) `iv_offset`, both directions, on every backend
//! this CPU can run.
//!
//! If Python or `cryptography` is missing the test fails when `CI` is set and is skipped
//! (with a message) otherwise. Seed: env `ENGINE_SEED`, else time-based (printed).
//!
//! A second test needs no Python: every hardware backend against the `soft` backend on
//! random keys, sectors and lengths of 512- and 4096-byte sectors, every mode.

use std::io::Write;
use std::process::{Command, Stdio};

use vault_vm::engine::{Backend, CipherSpec, Geometry, SectorCipher};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

struct Case {
    spec: &'static str,
    key: Vec<u8>,
    geom: Geometry,
    sector: u64,
    data: Vec<u8>,
}

fn python_ready() -> bool {
    Command::new("python3")
        .args(["-c", "import cryptography"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map(|s| s.success())
        .unwrap_or(false)
}

/// The seed of a randomized test: env `ENGINE_SEED`, else the clock (printed either way).
fn seed() -> u64 {
    let seed = std::env::var("ENGINE_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("ENGINE_SEED={seed}");
    seed
}

/// Every hardware backend this CPU runs (AES-NI, VAES-256, VAES-512) gives the soft
/// backend's bytes, both directions, on random specs, keys, start sectors, IV offsets
/// and lengths (1..=40 sectors, across the 8-sector IV groups and the 12-sector CBC
/// interleave) of 512- and 4096-byte sectors.
#[test]
fn hardware_backends_match_soft_on_random_input() {
    const SPECS: [(&str, &[usize]); 6] = [
        ("aes-xts-plain64", &[32, 48, 64]),
        ("aes-xts-plain", &[32, 48, 64]),
        ("aes-cbc-essiv:sha256", &[16, 24, 32]),
        ("aes-cbc-plain64", &[16, 24, 32]),
        ("aes-cbc-plain", &[16, 24, 32]),
        ("aes-ecb", &[16, 24, 32]),
    ];
    let hw: Vec<Backend> = [Backend::AesNi, Backend::Vaes256, Backend::Vaes512]
        .into_iter()
        .filter(|b| b.is_available())
        .collect();
    println!("hardware backends here: {hw:?}");
    let seed = seed();
    let mut rng = Rng(seed);
    let mut runs = 0;
    for round in 0..300 {
        let (spec, klens) = SPECS[round % SPECS.len()];
        let spec_p = CipherSpec::parse(spec).unwrap();
        let klen = klens[rng.below(klens.len() as u64) as usize];
        let key = rng.bytes(klen);
        let ss = if rng.below(2) == 0 { 512u32 } else { 4096 };
        let per = u64::from(ss / 512);
        let large = rng.below(2) == 0;
        let iv_offset = rng.next() & !(per - 1);
        let sector = rng.next() & !(per - 1);
        let nsec = 1 + rng.below(40) as usize;
        let geom = Geometry::new(ss, large, iv_offset).unwrap();
        let data = rng.bytes(nsec * ss as usize);
        let soft = SectorCipher::with_backend(spec_p, &key, Backend::Soft)
            .unwrap()
            .unwrap();
        let mut want_e = data.clone();
        soft.encrypt(&geom, sector, &mut want_e).unwrap();
        let mut want_d = data.clone();
        soft.decrypt(&geom, sector, &mut want_d).unwrap();
        for b in &hw {
            let c = SectorCipher::with_backend(spec_p, &key, *b)
                .unwrap()
                .unwrap();
            let what = format!(
                "{spec} key={}B ss={ss} large={large} iv_offset={iv_offset} sector={sector} \
                 sectors={nsec} on {} (seed {seed})",
                key.len(),
                b.name()
            );
            let mut e = data.clone();
            c.encrypt(&geom, sector, &mut e).unwrap();
            assert!(e == want_e, "encrypt mismatch: {what}");
            let mut d = data.clone();
            c.decrypt(&geom, sector, &mut d).unwrap();
            assert!(d == want_d, "decrypt mismatch: {what}");
            runs += 1;
        }
    }
    println!("{runs} backend runs against soft, both directions: OK");
}

#[test]
fn crosscheck_against_python_cryptography() {
    if !python_ready() {
        let msg = "python3 with the `cryptography` package is needed for the engine \
                   cross-check (pip install cryptography; .ci/setup installs it)";
        if std::env::var_os("CI").is_some() {
            panic!("{msg}");
        }
        println!("SKIPPED: {msg}");
        return;
    }
    let seed = seed();
    let mut rng = Rng(seed);

    // (spec, key sizes). OpenSSL/cryptography have no XTS with 2 × 192-bit keys; the
    // script builds that one from AES-ECB (dm-crypt accepts 48-byte XTS keys).
    let specs: [(&str, &[usize]); 9] = [
        ("aes-xts-plain64", &[32, 48, 64]),
        ("aes-xts-plain", &[32, 48, 64]),
        ("capi:xts(aes)-plain64", &[32, 64]),
        ("aes-cbc-essiv:sha256", &[16, 24, 32]),
        ("aes-cbc-plain64", &[16, 24, 32]),
        ("aes-cbc-plain", &[16, 24, 32]),
        ("capi:cbc(aes)-plain", &[16, 32]),
        ("aes-ecb", &[16, 24, 32]),
        ("capi:ecb(aes)", &[16]),
    ];
    let mut cases = Vec::new();
    for (spec, key_sizes) in specs {
        for &klen in key_sizes {
            for ss in [512u32, 1024, 2048, 4096] {
                for large in [false, true] {
                    for nonzero_offset in [false, true] {
                        let per = u64::from(ss / 512);
                        let iv_offset = if nonzero_offset {
                            // Small, around 2^32, or near the top of u64 (wraps).
                            match rng.below(3) {
                                0 => (1 + rng.below(1000)) * per,
                                1 => ((1u64 << 32) - rng.below(64) * per) & !(per - 1),
                                _ => (u64::MAX - rng.below(64) * per) & !(per - 1),
                            }
                        } else {
                            0
                        };
                        let sector = match rng.below(3) {
                            0 => rng.below(4096) * per,
                            1 => ((1u64 << 32) - rng.below(32) * per) & !(per - 1),
                            _ => rng.next() & !(per - 1),
                        };
                        let nsec = 1 + rng.below(19) as usize;
                        cases.push(Case {
                            spec,
                            key: rng.bytes(klen),
                            geom: Geometry::new(ss, large, iv_offset).unwrap(),
                            sector,
                            data: rng.bytes(nsec * ss as usize),
                        });
                    }
                }
            }
        }
    }

    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/engine_ref.py");
    let mut child = Command::new("python3")
        .arg(script)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("run python3");
    let mut input = String::new();
    for c in &cases {
        input += &format!(
            "{} {} {} {} {} {} {}\n",
            c.spec,
            hex(&c.key),
            c.geom.sector_size,
            u8::from(c.geom.iv_large_sectors),
            c.geom.iv_offset,
            c.sector,
            hex(&c.data)
        );
    }
    let mut stdin = child.stdin.take().unwrap();
    let writer = std::thread::spawn(move || stdin.write_all(input.as_bytes()));
    let out = child.wait_with_output().expect("python3 output");
    writer.join().unwrap().unwrap();
    assert!(out.status.success(), "engine_ref.py failed");
    let out = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines.len(), cases.len());

    let mut runs = 0;
    for (c, line) in cases.iter().zip(lines) {
        let (want_enc, want_dec) = line.split_once(' ').unwrap();
        let spec = CipherSpec::parse(c.spec).unwrap();
        for backend in [
            Backend::Soft,
            Backend::AesNi,
            Backend::Vaes256,
            Backend::Vaes512,
        ] {
            let Some(cipher) = SectorCipher::with_backend(spec, &c.key, backend).unwrap() else {
                continue;
            };
            let what = format!(
                "{} key={}B ss={} large={} iv_offset={} sector={} sectors={} on {}",
                c.spec,
                c.key.len(),
                c.geom.sector_size,
                c.geom.iv_large_sectors,
                c.geom.iv_offset,
                c.sector,
                c.data.len() / c.geom.sector_size as usize,
                backend.name()
            );
            let mut buf = c.data.clone();
            cipher.encrypt(&c.geom, c.sector, &mut buf).unwrap();
            assert!(
                hex(&buf) == want_enc,
                "encrypt mismatch: {what} (seed {seed})"
            );
            let mut buf = c.data.clone();
            cipher.decrypt(&c.geom, c.sector, &mut buf).unwrap();
            assert!(
                hex(&buf) == want_dec,
                "decrypt mismatch: {what} (seed {seed})"
            );
            runs += 1;
        }
    }
    println!(
        "{} cases, {runs} backend runs, both directions: OK",
        cases.len()
    );
}
