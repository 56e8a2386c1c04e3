//! The VAES + AVX2 backend: 256-bit registers of 2 AES blocks, several registers in
//! flight (`XW` for XTS, `W` for ECB and CBC decryption), for CPUs with VAES and
//! VPCLMULQDQ but no AVX-512 (or with AVX-512 disabled). XTS tweaks are advanced 2
//! lanes at a time with VPCLMULQDQ. CBC encryption is serial per sector: `CBC_SECTORS`
//! sectors run side by side, two per register, and the AES-NI backend's interleave
//! takes the rest.
//!
//! Every function here is compiled with
//! `#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]`, so the helpers
//! (and the AES-NI backend's, whose features are a subset) inline into each other and
//! into [`run`]; code without those features calls only [`run`] (unsafe), after checking
//! them (`Backend::Vaes256.is_available()`).

use core::arch::x86_64::*;

use super::{ni, Job, Mode};

/// ymm registers (of 2 blocks) in flight per ECB and CBC-decryption pass: 8 × 2 × 16 =
/// 256 bytes, which divides every sector size.
const W: usize = 8;
/// Bytes per ECB and CBC-decryption pass.
const PASS: usize = W * 32;
/// ymm registers in flight per XTS pass (8 blocks, 128 bytes). XTS also keeps a tweak
/// register per data register, and AVX2 has only 16 ymm registers: 4 + 4 leaves room
/// for round keys, where 8 + 8 spills. On an AVX-512 Xeon 4 measured 3–15% faster than 8
/// at 512- and 4096-byte sectors; ECB and CBC decryption are faster with 8.
const XW: usize = 4;
/// Bytes per XTS pass.
const XPASS: usize = XW * 32;

/// Sectors CBC-encrypted side by side: 2 lanes × 6 registers.
const CBC_SECTORS: usize = 12;

/// Broadcasts each round key to the 2 lanes of a ymm register.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn load_keys(k: &[[u8; 16]; 15]) -> [__m256i; 15] {
    let mut r = [_mm256_setzero_si256(); 15];
    for (d, s) in r.iter_mut().zip(k.iter()) {
        // SAFETY: `s` is 16 readable bytes; unaligned load.
        *d = _mm256_broadcastsi128_si256(unsafe { _mm_loadu_si128(s.as_ptr().cast()) });
    }
    r
}

/// `a ^ b ^ c`.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn xor3(a: __m256i, b: __m256i, c: __m256i) -> __m256i {
    _mm256_xor_si256(_mm256_xor_si256(a, b), c)
}

/// Multiplies each of the 2 tweaks in `t` by x^(2·XW) (the blocks of one XTS pass) in
/// GF(2^128), XTS convention: per lane
/// `(lo, hi) -> (lo << K ^ clmul(hi >> (64 - K), 0x87), hi << K ^ lo >> (64 - K))`
/// with K = 2·XW ≤ 56, so the reduction fits the low half.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn mul_x_pass(t: __m256i) -> __m256i {
    const K: i32 = 2 * XW as i32;
    let poly = _mm256_set_epi64x(0, 0x87, 0, 0x87);
    let carry = _mm256_srli_epi64::<{ 64 - K }>(t);
    let red = _mm256_clmulepi64_epi128::<0x01>(carry, poly);
    let cross = _mm256_unpacklo_epi64(_mm256_setzero_si256(), carry);
    xor3(_mm256_slli_epi64::<K>(t), red, cross)
}

/// The tweaks of blocks `2j, 2j + 1` of a sector whose first tweak is `t`:
/// lane `i` gets `t · x^(2j + i)`, computed from `t` directly (no serial chain).
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn first_tweaks(t: __m128i, j: i64) -> __m256i {
    // Variable shifts by 64 give 0, which makes lane 0 of j = 0 (k = 0) come out as `t`.
    let k = 2 * j;
    let t = _mm256_broadcastsi128_si256(t);
    let left = _mm256_set_epi64x(k + 1, k + 1, k, k);
    let right = _mm256_sub_epi64(_mm256_set1_epi64x(64), left);
    let poly = _mm256_set_epi64x(0, 0x87, 0, 0x87);
    let carry = _mm256_srlv_epi64(t, right);
    let red = _mm256_clmulepi64_epi128::<0x01>(carry, poly);
    let cross = _mm256_unpacklo_epi64(_mm256_setzero_si256(), carry);
    xor3(_mm256_sllv_epi64(t, left), red, cross)
}

/// Runs a job on the VAES-256 backend.
///
/// # Safety
/// The CPU must support AES-NI, SSE2, AVX, AVX2, VAES and VPCLMULQDQ (with OS ymm
/// state); the job's keys must be hardware round keys.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
pub(crate) unsafe fn run(job: &Job<'_>, buf: &mut [u8]) {
    match job.hw_keys().0.nr {
        10 => run_nr::<10>(job, buf),
        12 => run_nr::<12>(job, buf),
        _ => run_nr::<14>(job, buf),
    }
}

#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn run_nr<const NR: usize>(job: &Job<'_>, buf: &mut [u8]) {
    let (k, aux) = job.hw_keys();
    // SAFETY: every pointer handed to the helpers comes from a chunk of `buf` of the
    // length they access; `ni::run` needs the features enabled here, and gets the same
    // job (hardware keys) on the tail of `buf`.
    unsafe {
        // Decryption (ECB, XTS, CBC) runs the inverse schedule, encryption the forward one.
        let mut rk = load_keys(if job.enc { &k.enc } else { &k.dec });
        match job.spec.mode {
            Mode::Ecb => {
                for c in buf.chunks_exact_mut(PASS) {
                    ecb_pass::<NR>(&rk, c.as_mut_ptr(), job.enc);
                }
            }
            Mode::Xts => {
                for (g, group) in buf.chunks_mut(8 * job.ss).enumerate() {
                    let n = group.len() / job.ss;
                    let tw = ni::ivs(job, aux, g * 8, n);
                    for (s, sec) in group.chunks_exact_mut(job.ss).enumerate() {
                        if job.enc {
                            xts_sector::<NR, true>(&rk, tw[s], sec);
                        } else {
                            xts_sector::<NR, false>(&rk, tw[s], sec);
                        }
                    }
                }
            }
            Mode::Cbc if job.enc => {
                // Serial within a sector: interleave CBC_SECTORS sectors, one per lane.
                let full = buf.len() / job.ss / CBC_SECTORS * CBC_SECTORS;
                let (head, tail) = buf.split_at_mut(full * job.ss);
                for (g, group) in head.chunks_exact_mut(CBC_SECTORS * job.ss).enumerate() {
                    let mut iv = [_mm_setzero_si128(); CBC_SECTORS];
                    for (q, ivq) in iv.chunks_mut(8).enumerate() {
                        ivq.copy_from_slice(
                            &ni::ivs(job, aux, g * CBC_SECTORS + q * 8, ivq.len())[..ivq.len()],
                        );
                    }
                    cbc_enc_lanes::<NR>(&rk, group.as_mut_ptr(), job.ss, &iv);
                }
                if !tail.is_empty() {
                    // Fewer than CBC_SECTORS sectors left: the AES-NI interleave.
                    let rest = Job {
                        iv: job.iv.skip(full),
                        ..*job
                    };
                    ni::run(&rest, tail);
                }
            }
            Mode::Cbc => {
                for (g, group) in buf.chunks_mut(8 * job.ss).enumerate() {
                    let n = group.len() / job.ss;
                    let iv = ni::ivs(job, aux, g * 8, n);
                    for (s, sec) in group.chunks_exact_mut(job.ss).enumerate() {
                        cbc_dec_sector::<NR>(&rk, iv[s], sec);
                    }
                }
            }
        }
        wipe(&mut rk);
    }
}

/// One ECB pass of `PASS` bytes at `p`.
///
/// # Safety
/// `p` points to `PASS` writable bytes.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
unsafe fn ecb_pass<const NR: usize>(rk: &[__m256i; 15], p: *mut u8, enc: bool) {
    // SAFETY: `p` points to `PASS` writable bytes (caller).
    unsafe {
        let mut b = [_mm256_setzero_si256(); W];
        for (j, x) in b.iter_mut().enumerate() {
            *x = _mm256_xor_si256(_mm256_loadu_si256(p.add(32 * j).cast()), rk[0]);
        }
        if enc {
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = _mm256_aesenc_epi128(*x, *key);
                }
            }
            for x in b.iter_mut() {
                *x = _mm256_aesenclast_epi128(*x, rk[NR]);
            }
        } else {
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = _mm256_aesdec_epi128(*x, *key);
                }
            }
            for x in b.iter_mut() {
                *x = _mm256_aesdeclast_epi128(*x, rk[NR]);
            }
        }
        for (j, x) in b.iter().enumerate() {
            _mm256_storeu_si256(p.add(32 * j).cast(), *x);
        }
    }
}

/// XTS over one sector (a multiple of `XPASS` bytes) with initial tweak `t`.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn xts_sector<const NR: usize, const ENC: bool>(rk: &[__m256i; 15], t: __m128i, sec: &mut [u8]) {
    // SAFETY: loads and stores stay inside the `XPASS`-byte chunk `c` of `sec`.
    unsafe {
        // Register j of a pass holds the tweaks of blocks 2j, 2j + 1 (t · x^(2j + lane)).
        let mut tw = [_mm256_setzero_si256(); XW];
        for (j, x) in tw.iter_mut().enumerate() {
            *x = first_tweaks(t, j as i64);
        }
        for c in sec.chunks_exact_mut(XPASS) {
            let p = c.as_mut_ptr();
            let mut b = [_mm256_setzero_si256(); XW];
            for j in 0..XW {
                b[j] = xor3(_mm256_loadu_si256(p.add(32 * j).cast()), tw[j], rk[0]);
            }
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = if ENC {
                        _mm256_aesenc_epi128(*x, *key)
                    } else {
                        _mm256_aesdec_epi128(*x, *key)
                    };
                }
            }
            for j in 0..XW {
                // The last round XORs its key last: fold the output tweak into it.
                let last = _mm256_xor_si256(rk[NR], tw[j]);
                b[j] = if ENC {
                    _mm256_aesenclast_epi128(b[j], last)
                } else {
                    _mm256_aesdeclast_epi128(b[j], last)
                };
                _mm256_storeu_si256(p.add(32 * j).cast(), b[j]);
                tw[j] = mul_x_pass(tw[j]);
            }
        }
    }
}

/// CBC-decrypts one sector (a multiple of `PASS` bytes) with IV `iv`.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
fn cbc_dec_sector<const NR: usize>(rk: &[__m256i; 15], iv: __m128i, sec: &mut [u8]) {
    // SAFETY: loads and stores stay inside the `PASS`-byte chunk `c` of `sec`.
    unsafe {
        // Lane 1 of `prev` is the ciphertext block before the pass (the IV at first).
        let mut prev = _mm256_inserti128_si256::<1>(_mm256_setzero_si256(), iv);
        for c in sec.chunks_exact_mut(PASS) {
            let p = c.as_mut_ptr();
            let mut ct = [_mm256_setzero_si256(); W];
            let mut b = [_mm256_setzero_si256(); W];
            for j in 0..W {
                ct[j] = _mm256_loadu_si256(p.add(32 * j).cast());
                b[j] = _mm256_xor_si256(ct[j], rk[0]);
            }
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = _mm256_aesdec_epi128(*x, *key);
                }
            }
            for j in 0..W {
                // Chain blocks: lane 1 of the register before, then lane 0 of this one.
                let before = if j == 0 { prev } else { ct[j - 1] };
                let chain = _mm256_permute2x128_si256::<0x21>(before, ct[j]);
                b[j] = _mm256_aesdeclast_epi128(b[j], _mm256_xor_si256(rk[NR], chain));
                _mm256_storeu_si256(p.add(32 * j).cast(), b[j]);
            }
            prev = ct[W - 1];
        }
    }
}

/// CBC-encrypts `CBC_SECTORS` consecutive sectors of `ss` bytes at `p` as interleaved
/// chains: lane `l` of register `r` carries sector `2r + l`.
///
/// # Safety
/// `p` points to `CBC_SECTORS * ss` writable bytes; `ss` is a multiple of 16.
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
unsafe fn cbc_enc_lanes<const NR: usize>(
    rk: &[__m256i; 15],
    p: *mut u8,
    ss: usize,
    iv: &[__m128i; CBC_SECTORS],
) {
    const R: usize = CBC_SECTORS / 2;
    // SAFETY: `p` points to `CBC_SECTORS * ss` writable bytes (caller); every access is at
    // `s * ss + off` with `s < CBC_SECTORS` and `off + 16 <= ss`.
    unsafe {
        let mut x = [_mm256_setzero_si256(); R];
        for (r, v) in x.iter_mut().enumerate() {
            *v = _mm256_set_m128i(iv[2 * r + 1], iv[2 * r]);
        }
        for off in (0..ss).step_by(16) {
            for (r, v) in x.iter_mut().enumerate() {
                let at = |l: usize| _mm_loadu_si128(p.add((2 * r + l) * ss + off).cast());
                *v = xor3(*v, _mm256_set_m128i(at(1), at(0)), rk[0]);
            }
            for key in &rk[1..NR] {
                for v in x.iter_mut() {
                    *v = _mm256_aesenc_epi128(*v, *key);
                }
            }
            for (r, v) in x.iter_mut().enumerate() {
                *v = _mm256_aesenclast_epi128(*v, rk[NR]);
                let at = |l: usize| p.add((2 * r + l) * ss + off).cast::<__m128i>();
                _mm_storeu_si128(at(0), _mm256_castsi256_si128(*v));
                _mm_storeu_si128(at(1), _mm256_extracti128_si256::<1>(*v));
            }
        }
    }
}

/// Overwrites stack copies of round keys (best effort: volatile, so not optimized out).
#[target_feature(enable = "aes,sse2,avx,avx2,vaes,vpclmulqdq")]
#[inline]
pub(crate) fn wipe(keys: &mut [__m256i]) {
    for k in keys.iter_mut() {
        // SAFETY: `k` is a valid, aligned, exclusive reference.
        unsafe { core::ptr::write_volatile(k, _mm256_setzero_si256()) };
    }
}
