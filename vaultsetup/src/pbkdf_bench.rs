//! The PBKDF cost of a new keyslot, chosen as cryptsetup 2.6 chooses it: the defaults
//! and limits of `lib/utils_pbkdf.c` and the benchmark of
//! `lib/crypto_backend/pbkdf_check.c` (`crypt_pbkdf_perf`).
//!
//! - PBKDF2: iterations run (CPU time, `getrusage`) from 2^15 upwards until one run takes
//!   more than 500 ms; the rate found is scaled to 1000 ms, then to `--iter-time`, and
//!   never goes below 1000 iterations.
//! - Argon2: the lanes are fixed; starting at time 4 and 64 MiB (or the memory limit if
//!   lower), memory then time grow until a run (wall clock) takes 250 ms; the estimate
//!   is then scaled to `--iter-time` (time first when decreasing, memory first when
//!   increasing) and measured again until it falls within 95–110 % of the target.
//!
//! The benchmark runs the KDF of [`crate::kdf`] on the host with a fixed dummy password
//! and salt (cryptsetup's `"foobarfo"`): no secret is involved. Its result is a typed
//! [`PbkdfCost`] that the keyslot writer turns into a [`Kdf`] with a fresh salt.

use std::time::{Duration, Instant};

use crate::exit::{ExitCode, HasExitCode};
use crate::kdf::{Argon2Variant, Hash, Kdf, KdfError, KdfLimits};

/// Minimum PBKDF2 iterations (NIST SP 800-132; cryptsetup's `min_iterations`).
pub const PBKDF2_MIN_ITERATIONS: u32 = 1000;
/// Minimum Argon2 time cost (cryptsetup's `min_iterations` for argon2).
pub const ARGON2_MIN_TIME: u32 = 4;
/// Minimum Argon2 memory cost in KiB (cryptsetup's hard `min_memory`).
pub const ARGON2_MIN_MEMORY_KIB: u32 = 32;
/// Memory the Argon2 benchmark starts from, in KiB (`min_bench_memory`, 64 MiB).
pub const ARGON2_MIN_BENCH_MEMORY_KIB: u32 = 64 * 1024;
/// Maximum Argon2 memory cost in KiB (4 GiB).
pub const ARGON2_MAX_MEMORY_KIB: u32 = 4 * 1024 * 1024;
/// Maximum Argon2 lanes (`max_parallel`).
pub const ARGON2_MAX_PARALLEL: u32 = 4;
/// Default iteration time for LUKS1 and LUKS2, in ms.
pub const DEFAULT_ITER_TIME_MS: u32 = 2000;
/// Default LUKS2 Argon2 memory cost in KiB (1 GiB), before the half-RAM cap.
pub const DEFAULT_LUKS2_MEMORY_KIB: u32 = 1024 * 1024;
/// Default LUKS2 Argon2 lanes, before the online-CPU cap.
pub const DEFAULT_LUKS2_PARALLEL: u32 = 4;
/// Time the LUKS volume key digest's PBKDF2 is given, in ms (`LUKS_MKD_ITERATIONS_MS`).
pub const DIGEST_ITER_TIME_MS: u32 = 125;

/// The password the benchmark derives from (cryptsetup's).
const BENCH_PASSWORD: &[u8] = b"foobarfo";
/// The PBKDF2 benchmark salt (cryptsetup passes 16 bytes of this string).
const BENCH_SALT_PBKDF2: &[u8] = b"01234567890abcde";
/// The Argon2 benchmark salt (32 bytes).
const BENCH_SALT_ARGON2: &[u8] = b"0123456789abcdef0123456789abcdef";

/// A PBKDF algorithm (`--pbkdf`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, clap::ValueEnum)]
pub enum PbkdfKind {
    /// PBKDF2-HMAC (LUKS1's only one).
    Pbkdf2,
    /// Argon2i.
    Argon2i,
    /// Argon2id (LUKS2's default).
    Argon2id,
}

impl PbkdfKind {
    /// The name cryptsetup and the LUKS2 JSON use.
    pub fn name(self) -> &'static str {
        match self {
            Self::Pbkdf2 => "pbkdf2",
            Self::Argon2i => "argon2i",
            Self::Argon2id => "argon2id",
        }
    }

    /// The Argon2 variant, `None` for PBKDF2.
    pub fn argon2(self) -> Option<Argon2Variant> {
        match self {
            Self::Pbkdf2 => None,
            Self::Argon2i => Some(Argon2Variant::Argon2i),
            Self::Argon2id => Some(Argon2Variant::Argon2id),
        }
    }
}

/// What a new keyslot's PBKDF must be: validated options, costs still to benchmark
/// unless `forced_iterations` is set.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbkdfRequest {
    /// PBKDF2-HMAC with `hash`.
    Pbkdf2 {
        /// The PRF hash.
        hash: Hash,
        /// Target unlock time in ms (`--iter-time`).
        iter_time_ms: u32,
        /// `--pbkdf-force-iterations`: no benchmark.
        forced_iterations: Option<u32>,
    },
    /// Argon2.
    Argon2 {
        /// Argon2i or Argon2id.
        variant: Argon2Variant,
        /// Target unlock time in ms (`--iter-time`).
        iter_time_ms: u32,
        /// Memory limit in KiB (`--pbkdf-memory`, capped at half the RAM).
        max_memory_kib: u32,
        /// Lanes (`--pbkdf-parallel`, capped at 4 and the online CPUs).
        lanes: u32,
        /// `--pbkdf-force-iterations` (the time cost): no benchmark; memory is then
        /// `max_memory_kib`.
        forced_time: Option<u32>,
    },
}

/// The PBKDF cost of a keyslot, as the benchmark (or `--pbkdf-force-iterations`) chose it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PbkdfCost {
    /// PBKDF2-HMAC.
    Pbkdf2 {
        /// The PRF hash.
        hash: Hash,
        /// Iteration count.
        iterations: u32,
    },
    /// Argon2.
    Argon2 {
        /// Argon2i or Argon2id.
        variant: Argon2Variant,
        /// Time cost (passes).
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Lanes.
        lanes: u32,
    },
}

impl PbkdfCost {
    /// The keyslot KDF with this cost and `salt`.
    pub fn kdf(&self, salt: Vec<u8>) -> Kdf {
        match *self {
            Self::Pbkdf2 { hash, iterations } => Kdf::Pbkdf2 {
                hash,
                iterations,
                salt,
            },
            Self::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
            } => Kdf::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
                salt,
            },
        }
    }
}

/// Errors of the benchmark.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The KDF itself failed (out of memory for Argon2, for instance).
    #[error(transparent)]
    Kdf(#[from] KdfError),
    /// PBKDF2 was too fast or too slow to measure within cryptsetup's ten steps, or the
    /// iteration count would exceed 32 bits.
    #[error("Not compatible PBKDF2 options (using hash algorithm {0:?}).")]
    Pbkdf2(Hash),
    /// The Argon2 search was given a memory limit below its start.
    #[error("Not compatible PBKDF options.")]
    Argon2,
}

impl HasExitCode for BenchError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Kdf(e) => e.exit_code(),
            _ => ExitCode::WrongParameters,
        }
    }
}

/// The benchmark's thresholds; [`Default`] is cryptsetup's. Tests lower them.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BenchTuning {
    /// PBKDF2: runs grow until one takes more than this (cryptsetup: 500 ms).
    pub pbkdf2_measure_ms: u64,
    /// Argon2 phase 1: parameters grow until a run takes at least this (250 ms).
    pub argon2_min_ms: u64,
    /// Argon2 phase 1: below this a run is "too fast" and a cost grows 16-fold (10 ms).
    pub argon2_min_ms_fast: u64,
    /// Argon2 starting memory in KiB (64 MiB, or the limit if lower).
    pub argon2_start_memory_kib: u32,
}

impl Default for BenchTuning {
    fn default() -> Self {
        Self {
            pbkdf2_measure_ms: 500,
            argon2_min_ms: 250,
            argon2_min_ms_fast: 10,
            argon2_start_memory_kib: ARGON2_MIN_BENCH_MEMORY_KIB,
        }
    }
}

/// Chooses the cost of `req` for a key of `key_len` bytes: the forced cost as it is, or
/// cryptsetup's benchmark with [`BenchTuning::default`].
pub fn choose_cost(req: &PbkdfRequest, key_len: usize) -> Result<PbkdfCost, BenchError> {
    choose_cost_tuned(req, key_len, &BenchTuning::default())
}

/// [`choose_cost`] with other benchmark thresholds.
pub fn choose_cost_tuned(
    req: &PbkdfRequest,
    key_len: usize,
    tuning: &BenchTuning,
) -> Result<PbkdfCost, BenchError> {
    match *req {
        PbkdfRequest::Pbkdf2 {
            hash,
            forced_iterations: Some(iterations),
            ..
        } => Ok(PbkdfCost::Pbkdf2 { hash, iterations }),
        PbkdfRequest::Pbkdf2 {
            hash, iter_time_ms, ..
        } => {
            let per_sec = pbkdf2_iterations_per_second(hash, key_len, tuning)?;
            Ok(PbkdfCost::Pbkdf2 {
                hash,
                iterations: pbkdf2_iterations_for(per_sec, iter_time_ms, hash)?,
            })
        }
        PbkdfRequest::Argon2 {
            variant,
            max_memory_kib,
            lanes,
            forced_time: Some(time),
            ..
        } => Ok(PbkdfCost::Argon2 {
            variant,
            time,
            memory_kib: max_memory_kib,
            lanes,
        }),
        PbkdfRequest::Argon2 {
            variant,
            iter_time_ms,
            max_memory_kib,
            lanes,
            ..
        } => {
            let limits = KdfLimits::default();
            let mut run = |time: u32, memory_kib: u32| -> Result<u64, BenchError> {
                let kdf = Kdf::Argon2 {
                    variant,
                    time,
                    memory_kib,
                    lanes,
                    salt: BENCH_SALT_ARGON2.to_vec(),
                };
                // Wall clock: Argon2 runs its lanes on several threads.
                let start = Instant::now();
                kdf.derive(BENCH_PASSWORD, key_len, &limits)?;
                Ok(start.elapsed().as_millis() as u64)
            };
            let (time, memory_kib) = argon2_search(&mut run, iter_time_ms, max_memory_kib, tuning)?;
            Ok(PbkdfCost::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
            })
        }
    }
}

/// PBKDF2 iterations for `iter_time_ms` from a rate in iterations per second, at least
/// [`PBKDF2_MIN_ITERATIONS`] (cryptsetup's `crypt_benchmark_pbkdf_internal`).
pub fn pbkdf2_iterations_for(
    per_sec: u32,
    iter_time_ms: u32,
    hash: Hash,
) -> Result<u32, BenchError> {
    let it = f64::from(per_sec) * f64::from(iter_time_ms) / 1000.0;
    if it > f64::from(u32::MAX) {
        return Err(BenchError::Pbkdf2(hash));
    }
    Ok((it as u32).max(PBKDF2_MIN_ITERATIONS))
}

/// The PBKDF2 iterations of the LUKS volume key digest, from the benchmark's rate:
/// 125 ms worth, at least 1000 (`LUKS_MKD_ITERATIONS_MS`, `LUKS_MKD_ITERATIONS_MIN`).
pub fn digest_iterations(per_sec: u32, hash: Hash) -> Result<u32, BenchError> {
    pbkdf2_iterations_for(per_sec, DIGEST_ITER_TIME_MS, hash)
}

/// CPU time (user, plus system when no user time shows) of this process.
fn cpu_time() -> Duration {
    // SAFETY: rusage is plain data; getrusage fills it.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: RUSAGE_SELF and a valid out-pointer.
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// PBKDF2-HMAC-`hash` iterations per second for a `key_len`-byte output: cryptsetup's
/// `crypt_pbkdf_check` with a 1000 ms target (the rate).
pub fn pbkdf2_iterations_per_second(
    hash: Hash,
    key_len: usize,
    tuning: &BenchTuning,
) -> Result<u32, BenchError> {
    let mut out = vec![0u8; key_len.max(1)];
    pbkdf2_rate_search(
        &mut |iterations| {
            let start = cpu_time();
            hash.pbkdf2(BENCH_PASSWORD, BENCH_SALT_PBKDF2, iterations, &mut out);
            Ok((cpu_time() - start).as_millis() as u64)
        },
        hash,
        tuning,
    )
}

/// The search of `crypt_pbkdf_check` over a measuring function (`run(iterations)` → ms):
/// 2^15 iterations, grown 16/8/4/2-fold by how fast the last run was, until one takes
/// more than `tuning.pbkdf2_measure_ms`; at most ten steps.
fn pbkdf2_rate_search(
    run: &mut dyn FnMut(u32) -> Result<u64, BenchError>,
    hash: Hash,
    tuning: &BenchTuning,
) -> Result<u32, BenchError> {
    let mut iterations: u32 = 1 << 15;
    let mut per_sec = 0u32;
    let m = tuning.pbkdf2_measure_ms;
    for _step in 0..=10 {
        let ms = run(iterations)?;
        if ms > 0 {
            let r = f64::from(iterations) * 1000.0 / ms as f64;
            if r > f64::from(u32::MAX) {
                return Err(BenchError::Pbkdf2(hash));
            }
            per_sec = r as u32;
        }
        if ms > m {
            return Ok(per_sec);
        }
        let shift = if ms <= m / 8 {
            4
        } else if ms <= m / 4 {
            3
        } else if ms <= m / 2 {
            2
        } else {
            1
        };
        iterations = iterations
            .checked_mul(1 << shift)
            .ok_or(BenchError::Pbkdf2(hash))?;
    }
    Err(BenchError::Pbkdf2(hash))
}

/// Whether [`next_argon2_params`] has reached its final answer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    Continue,
    Final,
}

/// cryptsetup's `next_argon2_params`: scales (time, memory) measured at `ms` towards
/// `target_ms`: when too slow, time down first, then memory; when too fast, memory up
/// first, then time.
fn next_argon2_params(
    t_cost: &mut u32,
    m_cost: &mut u32,
    min_t: u32,
    min_m: u32,
    max_m: u32,
    ms: u64,
    target_ms: u32,
) -> Step {
    let (old_t, old_m) = (*t_cost, *m_cost);
    let ms = ms.max(1);
    let target = u64::from(target_ms);
    if ms > target {
        let new_t = (u64::from(*t_cost) * target / ms) as u32;
        if new_t < min_t {
            let m = u64::from(*t_cost) * u64::from(*m_cost) * target / (u64::from(min_t) * ms);
            *t_cost = min_t;
            *m_cost = m.min(u64::from(u32::MAX)) as u32;
            if *m_cost < min_m {
                *m_cost = min_m;
                return Step::Final;
            }
        } else {
            *t_cost = new_t;
        }
    } else {
        let new_m = u64::from(*m_cost) * target / ms;
        if new_m > u64::from(max_m) {
            let t = u64::from(*t_cost) * u64::from(*m_cost) * target / (u64::from(max_m) * ms);
            *t_cost = t.min(u64::from(u32::MAX)) as u32;
            *m_cost = max_m;
            if *t_cost <= min_t {
                *t_cost = min_t;
                return Step::Final;
            }
        } else if new_m < u64::from(min_m) {
            *m_cost = min_m;
            return Step::Final;
        } else {
            *m_cost = new_m as u32;
        }
    }
    if old_t == *t_cost && old_m == *m_cost {
        Step::Final
    } else {
        Step::Continue
    }
}

/// cryptsetup's `crypt_argon2_check` over a measuring function (`run(time, memory)` →
/// ms): returns (time, memory KiB).
fn argon2_search(
    run: &mut dyn FnMut(u32, u32) -> Result<u64, BenchError>,
    target_ms: u32,
    max_m: u32,
    tuning: &BenchTuning,
) -> Result<(u32, u32), BenchError> {
    let min_t = ARGON2_MIN_TIME;
    let min_m = tuning.argon2_start_memory_kib.min(max_m);
    if max_m < min_m || min_m == 0 {
        return Err(BenchError::Argon2);
    }
    let atleast = u64::from(target_ms) * 95 / 100;
    let atmost = u64::from(target_ms) * 110 / 100;
    // measure_argon2: the fastest of `samples` runs, stopping early below `floor`.
    let mut measure = |t: u32, m: u32, samples: usize, floor: u64| -> Result<u64, BenchError> {
        let mut best = u64::MAX;
        for _ in 0..samples {
            let ms = run(t, m)?;
            if ms < floor {
                return Ok(ms);
            }
            best = best.min(ms);
        }
        Ok(best)
    };
    let (mut t, mut m) = (min_t, min_m);
    // 1. Small parameters that take at least argon2_min_ms.
    let mut ms;
    loop {
        ms = measure(t, m, 3, tuning.argon2_min_ms)?;
        if ms >= tuning.argon2_min_ms {
            break;
        }
        if m == max_m {
            if ms < tuning.argon2_min_ms_fast {
                t = t.saturating_mul(16);
            } else {
                let new = (u64::from(t) * tuning.argon2_min_ms / ms) as u32;
                if new == t {
                    break;
                }
                t = new;
            }
        } else {
            if ms < tuning.argon2_min_ms_fast {
                m = m.saturating_mul(16);
            } else {
                let new = (u64::from(m) * tuning.argon2_min_ms / ms.max(1)) as u32;
                if new == m {
                    break;
                }
                m = new;
            }
            m = m.min(max_m);
        }
    }
    // 2./3. Estimate the target and measure again until within 95–110 %.
    loop {
        if next_argon2_params(&mut t, &mut m, min_t, min_m, max_m, ms, target_ms) == Step::Final {
            return Ok((t, m));
        }
        ms = measure(t, m, 1, atleast)?;
        if (atleast..=atmost).contains(&ms) {
            return Ok((t, m));
        }
    }
}

/// Online CPUs (`sysconf(_SC_NPROCESSORS_ONLN)`, at least 1).
pub fn online_cpus() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let n = unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) };
    if n <= 0 {
        1
    } else {
        n.min(i64::from(u32::MAX) as libc::c_long) as u32
    }
}

/// cryptsetup 2.6's memory cap: half the physical memory, or the 1 GiB default when
/// the physical memory reads below 128 MiB or above 4 TiB (bogus values).
pub fn adjusted_phys_memory_kib() -> u32 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let pages = unsafe { libc::sysconf(libc::_SC_PHYS_PAGES) };
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if pages <= 0 || page <= 0 {
        return DEFAULT_LUKS2_MEMORY_KIB;
    }
    let kib = (pages as u64).saturating_mul(page as u64) / 1024;
    if kib < 128 * 1024 || kib > u64::from(u32::MAX) {
        return DEFAULT_LUKS2_MEMORY_KIB;
    }
    (kib / 2) as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A model machine: Argon2 takes `t * m / k` ms.
    fn model(k: u64) -> impl FnMut(u32, u32) -> Result<u64, BenchError> {
        move |t, m| Ok(u64::from(t) * u64::from(m) / k)
    }

    #[test]
    fn argon2_search_reaches_the_target_on_a_model() {
        // 4 passes over 64 MiB take 100 ms: 2000 ms wants 1 GiB at time 5.
        let k = 4 * 65536 / 100;
        let (t, m) = argon2_search(&mut model(k), 2000, 1 << 20, &BenchTuning::default()).unwrap();
        let ms = u64::from(t) * u64::from(m) / k;
        assert!((1900..=2200).contains(&ms), "t={t} m={m} ms={ms}");
        assert_eq!(m, 1 << 20, "memory grows to the limit first");
        assert!(t >= ARGON2_MIN_TIME);
    }

    #[test]
    fn argon2_search_stops_at_the_floor_for_a_short_target() {
        // As cryptsetup: neither time below 4 nor memory below the 64 MiB start, even
        // when that is slower than the target.
        let k = 4 * 65536 / 100;
        let r = argon2_search(&mut model(k), 50, 1 << 20, &BenchTuning::default()).unwrap();
        assert_eq!(r, (ARGON2_MIN_TIME, ARGON2_MIN_BENCH_MEMORY_KIB));
        // A memory limit below 64 MiB is the floor instead.
        let r = argon2_search(&mut model(k), 50, 16 * 1024, &BenchTuning::default()).unwrap();
        assert_eq!(r.1, 16 * 1024);
        // A lower floor (tests' tuning) lets memory go down to the target.
        let tuning = BenchTuning {
            argon2_start_memory_kib: 1024,
            ..Default::default()
        };
        let (t, m) = argon2_search(&mut model(k), 50, 1 << 20, &tuning).unwrap();
        let ms = u64::from(t) * u64::from(m) / k;
        assert!((47..=55).contains(&ms), "t={t} m={m} ms={ms}");
    }

    #[test]
    fn argon2_search_respects_the_memory_cap() {
        let k = 4 * 65536 / 100;
        let (t, m) =
            argon2_search(&mut model(k), 2000, 128 * 1024, &BenchTuning::default()).unwrap();
        assert_eq!(m, 128 * 1024);
        assert!(t > ARGON2_MIN_TIME, "time makes up for the memory cap: {t}");
    }

    #[test]
    fn pbkdf2_rate_on_a_model() {
        // 1 M iterations per second.
        let mut run = |i: u32| Ok(u64::from(i) / 1000);
        let r = pbkdf2_rate_search(&mut run, Hash::Sha256, &BenchTuning::default()).unwrap();
        assert!((990_000..=1_010_000).contains(&r), "{r}");
        assert_eq!(pbkdf2_iterations_for(r, 2000, Hash::Sha256).unwrap(), r * 2);
        assert_eq!(
            pbkdf2_iterations_for(100, 2000, Hash::Sha256).unwrap(),
            1000
        );
        // A machine too fast to measure in ten steps is refused.
        let mut never = |_: u32| Ok(0);
        assert!(pbkdf2_rate_search(&mut never, Hash::Sha1, &BenchTuning::default()).is_err());
    }

    #[test]
    fn forced_costs_skip_the_benchmark() {
        let c = choose_cost(
            &PbkdfRequest::Argon2 {
                variant: Argon2Variant::Argon2id,
                iter_time_ms: 2000,
                max_memory_kib: 32768,
                lanes: 1,
                forced_time: Some(4),
            },
            64,
        )
        .unwrap();
        assert_eq!(
            c,
            PbkdfCost::Argon2 {
                variant: Argon2Variant::Argon2id,
                time: 4,
                memory_kib: 32768,
                lanes: 1
            }
        );
    }

    fn small() -> BenchTuning {
        BenchTuning {
            pbkdf2_measure_ms: 50,
            argon2_min_ms: 20,
            argon2_min_ms_fast: 2,
            argon2_start_memory_kib: 1024,
        }
    }

    #[test]
    fn real_pbkdf2_benchmark_small_target() {
        let c = choose_cost_tuned(
            &PbkdfRequest::Pbkdf2 {
                hash: Hash::Sha256,
                iter_time_ms: 50,
                forced_iterations: None,
            },
            32,
            &small(),
        )
        .unwrap();
        let PbkdfCost::Pbkdf2 { iterations, .. } = c else {
            panic!("{c:?}")
        };
        assert!(iterations >= PBKDF2_MIN_ITERATIONS);
        // 50 ms of our PBKDF2 takes about 50 ms.
        let start = cpu_time();
        let mut out = [0u8; 32];
        Hash::Sha256.pbkdf2(b"x", b"salt", iterations, &mut out);
        let took = (cpu_time() - start).as_millis();
        assert!(
            (10..=250).contains(&took),
            "{iterations} iterations took {took} ms"
        );
    }

    #[test]
    fn real_argon2_benchmark_small_target() {
        let c = choose_cost_tuned(
            &PbkdfRequest::Argon2 {
                variant: Argon2Variant::Argon2id,
                iter_time_ms: 50,
                max_memory_kib: 64 * 1024,
                lanes: 1,
                forced_time: None,
            },
            64,
            &small(),
        )
        .unwrap();
        let PbkdfCost::Argon2 {
            time, memory_kib, ..
        } = c
        else {
            panic!("{c:?}")
        };
        assert!(time >= ARGON2_MIN_TIME);
        assert!((1024..=64 * 1024).contains(&memory_kib), "{c:?}");
    }
}
