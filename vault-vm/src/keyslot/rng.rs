//! The vault's random generator: RDSEED (RDRAND as the fallback) mixed by SHA-512 with
//! host entropy and a counter, so that neither a broken CPU source nor a broken host
//! source alone makes a generated key predictable.
//!
//! GENERATE_KEY: `key = SHA-512("vmvault key v1" || cpu || host || counter)` truncated
//! to the key length (≤ 64 bytes), with `cpu` 64 bytes from the CPU and `host` the 64
//! bytes of the transfer page. AF stripes for SEAL come from [`Stream`]:
//! `SHA-512("vmvault af v1" || seed || block)` with a 64-byte CPU seed.

use sha2::{Digest, Sha512};
use zeroize::Zeroize;

use crate::abi::keyslot::{entropy_source, HOST_ENTROPY_LEN};

/// Attempts per 64-bit word before RDSEED counts as failed (it may legitimately
/// underflow under load; Intel suggests retrying with a pause).
pub const RDSEED_RETRIES: u32 = 128;
/// Attempts per 64-bit word before RDRAND counts as failed (Intel's guidance: 10).
pub const RDRAND_RETRIES: u32 = 10;
/// Bytes drawn from the CPU per use.
pub const CPU_BYTES: usize = 64;

/// A CPU entropy source: one attempt of RDSEED or RDRAND each. Injectable for tests.
pub trait CpuEntropy {
    /// One RDSEED attempt: `None` when the instruction is missing or reports no data.
    fn rdseed(&mut self) -> Option<u64>;
    /// One RDRAND attempt: `None` when the instruction is missing or reports no data.
    fn rdrand(&mut self) -> Option<u64>;
}

/// The real instructions, if the CPU has them (checked once with CPUID).
#[derive(Clone, Copy, Debug, Default)]
pub struct Hardware;

cpufeatures::new!(has_rdseed, "rdseed");
cpufeatures::new!(has_rdrand, "rdrand");

#[target_feature(enable = "rdseed")]
fn rdseed_step() -> Option<u64> {
    let mut v = 0u64;
    let ok = core::arch::x86_64::_rdseed64_step(&mut v);
    (ok == 1).then_some(v)
}

#[target_feature(enable = "rdrand")]
fn rdrand_step() -> Option<u64> {
    let mut v = 0u64;
    let ok = core::arch::x86_64::_rdrand64_step(&mut v);
    (ok == 1).then_some(v)
}

impl CpuEntropy for Hardware {
    fn rdseed(&mut self) -> Option<u64> {
        if has_rdseed::get() {
            // SAFETY: CPUID reported RDSEED.
            unsafe { rdseed_step() }
        } else {
            None
        }
    }

    fn rdrand(&mut self) -> Option<u64> {
        if has_rdrand::get() {
            // SAFETY: CPUID reported RDRAND.
            unsafe { rdrand_step() }
        } else {
            None
        }
    }
}

/// Fills `out` with CPU entropy: all of it from RDSEED, or (if any word fails after
/// [`RDSEED_RETRIES`]) all of it from RDRAND. Returns the [`entropy_source`] used, or
/// `None` when neither delivered (`out` is then zero).
pub fn cpu_entropy(src: &mut dyn CpuEntropy, out: &mut [u8; CPU_BYTES]) -> Option<u64> {
    type Step = fn(&mut dyn CpuEntropy) -> Option<u64>;
    let tries: [(Step, u32, u64); 2] = [
        (|s| s.rdseed(), RDSEED_RETRIES, entropy_source::RDSEED),
        (|s| s.rdrand(), RDRAND_RETRIES, entropy_source::RDRAND),
    ];
    'source: for (step, retries, name) in tries {
        for w in out.chunks_exact_mut(8) {
            let mut got = None;
            for _ in 0..retries {
                got = step(src);
                if got.is_some() {
                    break;
                }
                core::hint::spin_loop();
            }
            match got {
                Some(v) => w.copy_from_slice(&v.to_le_bytes()),
                None => continue 'source,
            }
        }
        return Some(name);
    }
    out.zeroize();
    None
}

/// Generates a key into `out` (1..=64 bytes): `SHA-512("vmvault key v1" || cpu ||
/// host || counter)` truncated. Returns the CPU [`entropy_source`], or `None` (and
/// `out` untouched) when the CPU delivered nothing.
pub fn generate_key(
    src: &mut dyn CpuEntropy,
    host: &[u8; HOST_ENTROPY_LEN],
    counter: u64,
    out: &mut [u8],
) -> Option<u64> {
    let mut cpu = [0u8; CPU_BYTES];
    let source = cpu_entropy(src, &mut cpu)?;
    let mut h = Sha512::new();
    h.update(b"vmvault key v1");
    h.update(cpu);
    h.update(host);
    h.update(counter.to_le_bytes());
    let mut full = h.finalize();
    let n = out.len().min(full.len());
    out[..n].copy_from_slice(&full[..n]);
    full.as_mut_slice().zeroize();
    cpu.zeroize();
    Some(source)
}

/// A stream of random bytes for AF stripes: SHA-512 in counter mode over a CPU seed.
pub struct Stream {
    seed: [u8; CPU_BYTES],
    block: u64,
}

impl core::fmt::Debug for Stream {
    /// The block counter only; never the seed.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Stream")
            .field("block", &self.block)
            .finish_non_exhaustive()
    }
}

impl Stream {
    /// Seeds a stream from the CPU (mixed with `counter`); `None` without CPU entropy.
    pub fn new(src: &mut dyn CpuEntropy, counter: u64) -> Option<Stream> {
        let mut cpu = [0u8; CPU_BYTES];
        cpu_entropy(src, &mut cpu)?;
        let mut h = Sha512::new();
        h.update(b"vmvault af seed v1");
        h.update(cpu);
        h.update(counter.to_le_bytes());
        let mut s = Stream {
            seed: [0; CPU_BYTES],
            block: 0,
        };
        let mut full = h.finalize();
        s.seed.copy_from_slice(&full);
        full.as_mut_slice().zeroize();
        cpu.zeroize();
        Some(s)
    }

    /// Fills `out` with the next bytes of the stream.
    pub fn fill(&mut self, out: &mut [u8]) {
        for chunk in out.chunks_mut(64) {
            let mut h = Sha512::new();
            h.update(b"vmvault af v1");
            h.update(self.seed);
            h.update(self.block.to_le_bytes());
            self.block += 1;
            let mut full = h.finalize();
            chunk.copy_from_slice(&full[..chunk.len()]);
            full.as_mut_slice().zeroize();
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        self.seed.zeroize();
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::collections::HashSet;

    use super::*;

    /// A scripted CPU: RDSEED and RDRAND either fail always or count up from a value.
    struct Fake {
        seed: Option<u64>,
        rand: Option<u64>,
        seed_calls: u32,
    }

    impl CpuEntropy for Fake {
        fn rdseed(&mut self) -> Option<u64> {
            self.seed_calls += 1;
            self.seed
        }
        fn rdrand(&mut self) -> Option<u64> {
            self.rand
        }
    }

    #[test]
    fn rdseed_failing_falls_back_to_rdrand() {
        let mut f = Fake {
            seed: None,
            rand: Some(5),
            seed_calls: 0,
        };
        let mut out = [0u8; 64];
        assert_eq!(cpu_entropy(&mut f, &mut out), Some(entropy_source::RDRAND));
        assert_eq!(f.seed_calls, RDSEED_RETRIES);
        assert_eq!(&out[..8], &5u64.to_le_bytes());
        let mut f = Fake {
            seed: Some(9),
            rand: None,
            seed_calls: 0,
        };
        assert_eq!(cpu_entropy(&mut f, &mut out), Some(entropy_source::RDSEED));
    }

    #[test]
    fn no_cpu_entropy_is_refused() {
        let mut f = Fake {
            seed: None,
            rand: None,
            seed_calls: 0,
        };
        let mut key = [0x77u8; 32];
        assert_eq!(generate_key(&mut f, &[1; 64], 0, &mut key), None);
        assert_eq!(key, [0x77; 32], "no key written");
        assert!(Stream::new(&mut f, 0).is_none());
    }

    /// A constant CPU source still gives distinct keys for distinct host entropy (and
    /// for distinct counters).
    #[test]
    fn host_entropy_is_mixed_in() {
        let mut f = Fake {
            seed: Some(0),
            rand: None,
            seed_calls: 0,
        };
        let mut seen = HashSet::new();
        for i in 0..256u32 {
            let mut host = [0u8; 64];
            host[(i % 64) as usize] = (i / 64 + 1) as u8;
            let mut key = [0u8; 64];
            generate_key(&mut f, &host, 0, &mut key).unwrap();
            assert!(seen.insert(key));
        }
        let mut a = [0u8; 32];
        let mut b = [0u8; 32];
        generate_key(&mut f, &[3; 64], 1, &mut a).unwrap();
        generate_key(&mut f, &[3; 64], 2, &mut b).unwrap();
        assert_ne!(a, b);
    }

    /// 10,000 keys from the real CPU (RDSEED or RDRAND) with fixed host bytes and a
    /// fixed counter are all distinct: the CPU's share alone varies them.
    #[test]
    fn ten_thousand_distinct_keys() {
        let mut hw = Hardware;
        let mut probe = [0u8; 64];
        if cpu_entropy(&mut hw, &mut probe).is_none() {
            std::println!("SKIPPED: this CPU has neither RDSEED nor RDRAND");
            return;
        }
        let mut seen = HashSet::new();
        for _ in 0..10_000 {
            let mut key = [0u8; 32];
            generate_key(&mut hw, &[0; 64], 0, &mut key).unwrap();
            assert!(seen.insert(key));
        }
    }

    #[test]
    fn stream_is_seeded_and_advances() {
        let mut f = Fake {
            seed: Some(1),
            rand: None,
            seed_calls: 0,
        };
        let mut s1 = Stream::new(&mut f, 0).unwrap();
        let mut s2 = Stream::new(&mut f, 1).unwrap();
        let (mut a, mut b, mut c) = ([0u8; 100], [0u8; 100], [0u8; 100]);
        s1.fill(&mut a);
        s1.fill(&mut b);
        s2.fill(&mut c);
        assert_ne!(a, b);
        assert_ne!(a, c);
    }
}
