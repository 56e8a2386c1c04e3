//! The AES-NI backend: 128-bit registers, 8 independent blocks in flight per pass. XTS
//! runs the assembly kernel of [`ni_xts`]; ECB and CBC the intrinsics here.
//!
//! Every function here is compiled with `#[target_feature(enable = "aes,sse2")]`, so the
//! helpers inline into each other and into [`run`]; code without those features calls
//! only [`run`] (unsafe), after checking them (`Backend::AesNi.is_available()`).

use core::arch::x86_64::*;

use super::keys::RoundKeys;
use super::{ni_xts, Job, Mode};

/// Loads the round keys of a schedule into registers (or the stack; the compiler decides).
#[target_feature(enable = "aes,sse2")]
#[inline]
pub(crate) fn load_keys(k: &[[u8; 16]; 15]) -> [__m128i; 15] {
    let mut r = [_mm_setzero_si128(); 15];
    for (d, s) in r.iter_mut().zip(k.iter()) {
        // SAFETY: `s` is 16 readable bytes; unaligned load.
        *d = unsafe { _mm_loadu_si128(s.as_ptr().cast()) };
    }
    r
}

/// Encrypts up to 8 blocks with a schedule of run-time round count (IV/tweak encryption).
/// Each round key is loaded from the schedule right where its round runs and is dead after
/// it: with one key and at most 8 blocks live, nothing needs a stack copy.
#[target_feature(enable = "aes,sse2")]
#[inline]
fn encrypt_rt(k: &RoundKeys, b: &mut [__m128i; 8], n: usize) {
    let key = |r: usize| {
        // SAFETY: `k.enc[r]` is 16 readable bytes; unaligned load.
        unsafe { _mm_loadu_si128(k.enc[r].as_ptr().cast()) }
    };
    let k0 = key(0);
    for x in b[..n].iter_mut() {
        *x = _mm_xor_si128(*x, k0);
    }
    for r in 1..k.nr {
        let kr = key(r);
        for x in b[..n].iter_mut() {
            *x = _mm_aesenc_si128(*x, kr);
        }
    }
    let kl = key(k.nr);
    for x in b[..n].iter_mut() {
        *x = _mm_aesenclast_si128(*x, kl);
    }
}

/// The IVs of sectors `first..first + n` (n ≤ 8) of the job: plain, or encrypted with the
/// aux key (XTS tweak key, ESSIV key).
#[target_feature(enable = "aes,sse2")]
#[inline]
pub(crate) fn ivs(job: &Job<'_>, aux: Option<&RoundKeys>, first: usize, n: usize) -> [__m128i; 8] {
    let mut b = [_mm_setzero_si128(); 8];
    for (j, x) in b[..n].iter_mut().enumerate() {
        let iv = job.iv.block(first + j);
        // SAFETY: `iv` is a 16-byte array; unaligned load.
        *x = unsafe { _mm_loadu_si128(iv.as_ptr().cast()) };
    }
    if let Some(k) = aux {
        encrypt_rt(k, &mut b, n);
    }
    b
}

/// Runs a job on the AES-NI backend.
///
/// # Safety
/// The CPU must support AES-NI and SSE2; the job's keys must be hardware round keys.
#[target_feature(enable = "aes,sse2")]
pub(crate) unsafe fn run(job: &Job<'_>, buf: &mut [u8]) {
    match job.hw_keys().0.nr {
        10 => run_nr::<10>(job, buf),
        12 => run_nr::<12>(job, buf),
        _ => run_nr::<14>(job, buf),
    }
}

#[target_feature(enable = "aes,sse2")]
#[inline]
fn run_nr<const NR: usize>(job: &Job<'_>, buf: &mut [u8]) {
    let (k, aux) = job.hw_keys();
    // SAFETY: every pointer handed to the helpers comes from a chunk of `buf` of the
    // length they access (ECB: 128 bytes; CBC: `w` sectors from sector `s < n`).
    unsafe {
        if job.spec.mode == Mode::Xts {
            // The XTS kernel reads the round keys from the schedule itself (no copies).
            for (g, group) in buf.chunks_mut(8 * job.ss).enumerate() {
                let n = group.len() / job.ss;
                let tw = ivs(job, aux, g * 8, n);
                ni_xts::xts_group::<NR>(k, &tw, group, job.ss, job.enc);
            }
            return;
        }
        // Decryption (ECB, CBC) runs the inverse schedule, encryption the forward one.
        let mut rk = load_keys(if job.enc { &k.enc } else { &k.dec });
        match job.spec.mode {
            Mode::Ecb => {
                for c in buf.chunks_exact_mut(128) {
                    ecb8::<NR>(&rk, c.as_mut_ptr(), job.enc);
                }
            }
            Mode::Xts => unreachable!("XTS ran above"),
            Mode::Cbc if job.enc => {
                for (g, group) in buf.chunks_mut(8 * job.ss).enumerate() {
                    let n = group.len() / job.ss;
                    let iv = ivs(job, aux, g * 8, n);
                    // As many sectors side by side as there are (8, 4, 2, 1).
                    let mut s = 0;
                    while s < n {
                        let p = group.as_mut_ptr().add(s * job.ss);
                        let w = match n - s {
                            8.. => 8,
                            4..=7 => 4,
                            2..=3 => 2,
                            _ => 1,
                        };
                        match w {
                            8 => cbc_enc_lanes::<NR, 8>(&rk, p, job.ss, &iv[s..]),
                            4 => cbc_enc_lanes::<NR, 4>(&rk, p, job.ss, &iv[s..]),
                            2 => cbc_enc_lanes::<NR, 2>(&rk, p, job.ss, &iv[s..]),
                            _ => cbc_enc_lanes::<NR, 1>(&rk, p, job.ss, &iv[s..]),
                        }
                        s += w;
                    }
                }
            }
            Mode::Cbc => {
                for (g, group) in buf.chunks_mut(8 * job.ss).enumerate() {
                    let n = group.len() / job.ss;
                    let iv = ivs(job, aux, g * 8, n);
                    for (s, sec) in group.chunks_exact_mut(job.ss).enumerate() {
                        cbc_dec_sector::<NR>(&rk, iv[s], sec);
                    }
                }
            }
        }
        wipe(&mut rk);
    }
}

/// Encrypts or decrypts 8 blocks in ECB at `p`.
///
/// # Safety
/// `p` points to 128 writable bytes.
#[target_feature(enable = "aes,sse2")]
#[inline]
unsafe fn ecb8<const NR: usize>(rk: &[__m128i; 15], p: *mut u8, enc: bool) {
    // SAFETY: `p` points to 128 writable bytes (caller).
    unsafe {
        let mut b = [_mm_setzero_si128(); 8];
        for (j, x) in b.iter_mut().enumerate() {
            *x = _mm_xor_si128(_mm_loadu_si128(p.add(16 * j).cast()), rk[0]);
        }
        if enc {
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = _mm_aesenc_si128(*x, *key);
                }
            }
            for x in b.iter_mut() {
                *x = _mm_aesenclast_si128(*x, rk[NR]);
            }
        } else {
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = _mm_aesdec_si128(*x, *key);
                }
            }
            for x in b.iter_mut() {
                *x = _mm_aesdeclast_si128(*x, rk[NR]);
            }
        }
        for (j, x) in b.iter().enumerate() {
            _mm_storeu_si128(p.add(16 * j).cast(), *x);
        }
    }
}

/// CBC-decrypts one sector (a multiple of 8 blocks) with IV `iv`, 8 blocks per pass.
#[target_feature(enable = "aes,sse2")]
#[inline]
fn cbc_dec_sector<const NR: usize>(rk: &[__m128i; 15], iv: __m128i, sec: &mut [u8]) {
    // SAFETY: loads and stores stay inside the 128-byte chunk `c` of `sec`.
    unsafe {
        let mut prev = iv;
        for c in sec.chunks_exact_mut(128) {
            let p = c.as_mut_ptr();
            let mut ct = [_mm_setzero_si128(); 8];
            let mut b = [_mm_setzero_si128(); 8];
            for j in 0..8 {
                ct[j] = _mm_loadu_si128(p.add(16 * j).cast());
                b[j] = _mm_xor_si128(ct[j], rk[0]);
            }
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = _mm_aesdec_si128(*x, *key);
                }
            }
            for j in 0..8 {
                let chain = if j == 0 { prev } else { ct[j - 1] };
                b[j] = _mm_aesdeclast_si128(b[j], _mm_xor_si128(rk[NR], chain));
                _mm_storeu_si128(p.add(16 * j).cast(), b[j]);
            }
            prev = ct[7];
        }
    }
}

/// CBC-encrypts `W` consecutive sectors of `ss` bytes at `p` as `W` interleaved chains.
///
/// # Safety
/// `p` points to `W * ss` writable bytes; `ss` is a multiple of 16.
#[target_feature(enable = "aes,sse2")]
#[inline]
unsafe fn cbc_enc_lanes<const NR: usize, const W: usize>(
    rk: &[__m128i; 15],
    p: *mut u8,
    ss: usize,
    iv: &[__m128i],
) {
    // SAFETY: `p` points to `W * ss` writable bytes (caller); every access is at
    // `l * ss + off` with `l < W` and `off + 16 <= ss`.
    unsafe {
        let mut x = [_mm_setzero_si128(); W];
        x.copy_from_slice(&iv[..W]);
        for off in (0..ss).step_by(16) {
            for (l, v) in x.iter_mut().enumerate() {
                let m = _mm_loadu_si128(p.add(l * ss + off).cast());
                *v = _mm_xor_si128(*v, _mm_xor_si128(m, rk[0]));
            }
            for key in &rk[1..NR] {
                for v in x.iter_mut() {
                    *v = _mm_aesenc_si128(*v, *key);
                }
            }
            for (l, v) in x.iter_mut().enumerate() {
                *v = _mm_aesenclast_si128(*v, rk[NR]);
                _mm_storeu_si128(p.add(l * ss + off).cast(), *v);
            }
        }
    }
}

/// Overwrites stack copies of round keys (best effort: volatile, so not optimized out).
#[target_feature(enable = "aes,sse2")]
#[inline]
pub(crate) fn wipe(keys: &mut [__m128i]) {
    for k in keys.iter_mut() {
        // SAFETY: `k` is a valid, aligned, exclusive reference.
        unsafe { core::ptr::write_volatile(k, _mm_setzero_si128()) };
    }
}
