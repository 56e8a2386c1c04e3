//! Engine throughput vs OpenSSL's EVP in the same run, on one core.
//!
//! `cargo bench -p vault-vm --bench engine` (env `ENGINE_BENCH_MS` sets the time per
//! measurement, default 150 ms; each case is measured in 3 alternating rounds and the
//! best round counts). OpenSSL runs per sector with the same plain64 IV scheme: the key
//! is set once, only the IV is re-set for each sector, as dm-crypt-like users do.
//!
//! Each engine row also gives the fraction of the AES-round throughput limit of its path:
//! `rounds × blocks / (cycles × AES blocks-rounds the core retires per cycle)`. Cycles are
//! TSC cycles counted with `rdtsc` over the timed loop (the TSC ticks at a fixed rate, not
//! the core clock: with turbo above the TSC rate the fraction can exceed 1; the bench
//! prints a measured aesenc rate per TSC cycle to show by how much). Blocks are the data
//! blocks only (the per-sector tweak encryption is not counted). The per-cycle AES rate
//! comes from the table in [`aes_rate`], by CPU vendor, family and model.

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

/// One timed run: bytes processed, wall time and TSC cycles over the same loop.
#[derive(Clone, Copy, Debug, Default)]
struct Sample {
    bytes: f64,
    secs: f64,
    tsc: f64,
}

impl Sample {
    fn gbs(&self) -> f64 {
        self.bytes / self.secs / 1e9
    }

    /// The faster of two samples (an empty one counts as slowest).
    fn best(self, other: Sample) -> Sample {
        if self.secs == 0.0 || other.gbs() > self.gbs() {
            other
        } else {
            self
        }
    }
}

/// Reads the time-stamp counter.
fn tsc() -> u64 {
    // SAFETY: `rdtsc` exists on every x86-64 CPU and has no memory effects.
    unsafe { core::arch::x86_64::_rdtsc() }
}

/// Runs `f` over a 1 MiB buffer repeatedly for the time budget.
fn measure(mut f: impl FnMut(&mut [u8])) -> Sample {
    let mut buf = vec![0x5au8; BUF];
    f(&mut buf); // warm up
    let budget = budget();
    let start = Instant::now();
    let t0 = tsc();
    let mut bytes = 0u64;
    while start.elapsed() < budget {
        f(black_box(&mut buf));
        bytes += BUF as u64;
    }
    let t1 = tsc();
    Sample {
        bytes: bytes as f64,
        secs: start.elapsed().as_secs_f64(),
        tsc: (t1 - t0) as f64,
    }
}

/// AES block-rounds a core retires per cycle on one path (one `aesenc` on xmm is one
/// block-round; on ymm two, on zmm four), with the row of the table it came from.
///
/// Figures are reciprocal throughputs of `aesenc`/`vaesenc` from uops.info and the
/// vendors' optimization manuals:
///
/// | CPU (family/model)                                      | xmm | ymm     | zmm     |
/// |---------------------------------------------------------|-----|---------|---------|
/// | Intel Sandy Bridge .. Skylake/Cascade Lake (6/2A..A6)   | 1   | —       | —       |
/// | Intel Ice Lake and later big cores (6/6A, 7D, 8F, CF..) | 2   | 2 × 2   | 1 × 4   |
/// | AMD Zen 1/2 (17h)                                       | 2   | —       | —       |
/// | AMD Zen 3 (19h, models 00–0F, 20–5F)                    | 2   | 2 × 2   | —       |
/// | AMD Zen 4 (19h, other models), Zen 5 (1Ah, as Zen 4)    | 2   | 2 × 2   | 1 × 4   |
/// | anything else: one instruction per cycle at each width   | 1   | 1 × 2   | 1 × 4   |
fn aes_rate(path: Backend) -> (f64, &'static str) {
    use core::arch::x86_64::__cpuid;
    // `cpuid` leaves 0 (vendor) and 1 (family, model) exist on every x86-64 CPU.
    let (l0, l1) = (__cpuid(0), __cpuid(1));
    let mut vendor = [0u8; 12];
    vendor[..4].copy_from_slice(&l0.ebx.to_le_bytes());
    vendor[4..8].copy_from_slice(&l0.edx.to_le_bytes());
    vendor[8..].copy_from_slice(&l0.ecx.to_le_bytes());
    let base_family = (l1.eax >> 8) & 0xf;
    let family = if base_family == 0xf {
        base_family + ((l1.eax >> 20) & 0xff)
    } else {
        base_family
    };
    let model = ((l1.eax >> 4) & 0xf) | (((l1.eax >> 16) & 0xf) << 4);
    // (xmm, ymm, zmm) AES instructions per cycle, and the row.
    let (per_cycle, row): ((f64, f64, f64), &'static str) = match (&vendor, family, model) {
        (b"GenuineIntel", 6, 0x2a | 0x2d | 0x3a | 0x3e | 0x3c | 0x3f | 0x45 | 0x46)
        | (b"GenuineIntel", 6, 0x3d | 0x47 | 0x4f | 0x56 | 0x4e | 0x5e | 0x55 | 0x8e)
        | (b"GenuineIntel", 6, 0x9e | 0xa5 | 0xa6 | 0x66) => (
            (1.0, 0.0, 0.0),
            "Intel Sandy Bridge..Skylake/Cascade Lake: aesenc xmm 1/cycle",
        ),
        (b"GenuineIntel", 6, 0x6a | 0x6c | 0x7d | 0x7e | 0x8c | 0x8d | 0xa7 | 0x97 | 0x9a)
        | (b"GenuineIntel", 6, 0xb7 | 0xba | 0xbf | 0x8f | 0xcf | 0xaa | 0xac | 0xad | 0xae)
        | (b"GenuineIntel", 6, 0xc5 | 0xc6 | 0xbd) => (
            (2.0, 2.0, 1.0),
            "Intel Ice Lake and later big cores: aesenc xmm 2/cycle, vaesenc ymm 2/cycle, zmm 1/cycle",
        ),
        (b"AuthenticAMD", 0x17, _) => ((2.0, 0.0, 0.0), "AMD Zen 1/2: aesenc xmm 2/cycle"),
        (b"AuthenticAMD", 0x19, 0x00..=0x0f | 0x20..=0x5f) => (
            (2.0, 2.0, 0.0),
            "AMD Zen 3: aesenc xmm 2/cycle, vaesenc ymm 2/cycle",
        ),
        (b"AuthenticAMD", 0x19 | 0x1a, _) => (
            (2.0, 2.0, 1.0),
            "AMD Zen 4 (Zen 5 assumed alike): aesenc xmm 2/cycle, vaesenc ymm 2/cycle, zmm 1/cycle",
        ),
        _ => (
            (1.0, 1.0, 1.0),
            "unknown CPU: assumed 1 AES instruction/cycle at each width",
        ),
    };
    let rate = match path {
        Backend::AesNi | Backend::Soft => per_cycle.0,
        Backend::Vaes256 => 2.0 * per_cycle.1,
        Backend::Vaes512 => 4.0 * per_cycle.2,
    };
    (rate, row)
}

/// Independent `aesenc` xmm instructions retired per TSC cycle (12 chains, no memory):
/// the measured ceiling of the aesni path, to compare with the table's per-core-cycle rate.
#[target_feature(enable = "aes,sse2")]
fn aesenc_per_tsc() -> f64 {
    use core::arch::x86_64::*;
    const ITERS: u64 = 2_000_000;
    let k = _mm_set1_epi32(0x5a5a_1234);
    let mut x = [_mm_setzero_si128(); 12];
    for (i, v) in x.iter_mut().enumerate() {
        *v = _mm_set1_epi32(i as i32);
    }
    let t0 = tsc();
    for _ in 0..ITERS {
        for v in x.iter_mut() {
            *v = _mm_aesenc_si128(*v, k);
        }
    }
    let t1 = tsc();
    black_box(x);
    (ITERS * 12) as f64 / (t1 - t0) as f64
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
    // SAFETY: the CPU has AES-NI (checked) and every x86-64 CPU has SSE2.
    let calib = f
        .aesni
        .then(|| unsafe { aesenc_per_tsc() }.max(unsafe { aesenc_per_tsc() }));
    let (_, row) = aes_rate(Backend::AesNi);
    println!("AES-round limit: {row}");
    println!(
        "{:<30} {:<8} {:>10} {:>10} {:>7} {:>9}",
        "case (encrypt)", "path", "engine", "openssl", "ratio", "AES-limit"
    );
    // Every hardware path this CPU runs, widest first; the default one is marked `*`.
    let paths: Vec<Backend> = [Backend::Vaes512, Backend::Vaes256, Backend::AesNi]
        .into_iter()
        .filter(|b| b.is_available())
        .collect();
    // TSC cycles and seconds over every timed engine loop, for the TSC rate estimate.
    let mut tsc_total = (0f64, 0f64);
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
            let mut best_e = vec![Sample::default(); ciphers.len()];
            let mut best_o = 0f64;
            for _ in 0..3 {
                best_o = best_o.max(measure(openssl_xts(key, ss as usize)).gbs());
                for (c, e) in ciphers.iter().zip(best_e.iter_mut()) {
                    let s = measure(engine_run(c, ss, true));
                    tsc_total.0 += s.tsc;
                    tsc_total.1 += s.secs;
                    *e = e.best(s);
                }
            }
            // AES rounds per block: 10 (AES-128), 14 (AES-256).
            let rounds = if klen == 64 { 14.0 } else { 10.0 };
            for (c, e) in ciphers.iter().zip(best_e) {
                let mark = if c.backend() == Backend::best() {
                    "*"
                } else {
                    ""
                };
                let (rate, _) = aes_rate(c.backend());
                let limit = rounds * (e.bytes / 16.0) / (e.tsc * rate);
                println!(
                    "{:<30} {:<8} {:>5.2} GB/s {:>5.2} GB/s {:>6.2}x {:>9.2}",
                    format!("{name} {ss}-byte sectors"),
                    format!("{}{mark}", c.backend_name()),
                    e.gbs(),
                    best_o,
                    e.gbs() / best_o,
                    limit,
                );
            }
        }
    }
    println!(
        "AES-limit: rounds x blocks / (TSC cycles x AES block-rounds per cycle of the path: {})",
        paths
            .iter()
            .map(|b| format!("{} {}", b.name(), aes_rate(*b).0))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  cycles are TSC cycles (rdtsc over the timed loop); TSC rate estimate {:.3} GHz",
        tsc_total.0 / tsc_total.1 / 1e9
    );
    if let Some(c) = calib {
        println!(
            "  measured: {c:.2} independent aesenc xmm per TSC cycle (table: {} per core cycle), \
             so the core runs at about {:.2}x the TSC rate and the fraction can exceed 1",
            aes_rate(Backend::AesNi).0,
            c / aes_rate(Backend::AesNi).0
        );
    }
    println!("for information (4096-byte sectors unless said):");
    let c = SectorCipher::with_backend(xts, &key64, Backend::Soft)
        .unwrap()
        .expect("the soft backend runs everywhere");
    let e = measure(engine_run(&c, 4096, true)).gbs();
    println!(
        "  {:<44} {e:>6.2} GB/s encrypt",
        "AES-256-XTS on backend soft"
    );
    let whole = measure(openssl_xts(&key64, BUF)).gbs();
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
            let e = measure(engine_run(&c, 4096, true)).gbs();
            let d = measure(engine_run(&c, 4096, false)).gbs();
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
