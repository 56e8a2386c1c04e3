//! The Argon2 compression function G (RFC 9106 § 3.5) with the BlaMka round.
//!
//! `G(X, Y)`: R = X ⊕ Y; P is applied to the 8 rows of R (16 words each), then to the
//! 8 columns (2 adjacent words of each row); the result is Q ⊕ R (⊕ the old block in
//! passes after the first).
//!
//! The vector paths keep the block as 32 × 256-bit registers, register `4r + m` holding
//! words `16r + 4m .. 16r + 4m + 4` of row `r`. Rows: one row is 4 registers
//! (a, b, c, d of the 4 × 4 BLAKE2 matrix), diagonalised with cross-lane permutes.
//! Columns: columns `2m` and `2m + 1` are the low and high 128-bit halves of registers
//! `m, 4 + m, …, 28 + m`; their diagonal step needs only in-lane `vpalignr`.

use super::Block;

/// Which implementation of G runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompressPath {
    /// 64-bit scalar code (any CPU).
    Portable,
    /// 256-bit AVX2.
    Avx2,
    /// The AVX2 code with AVX-512VL rotates (`vprorq`).
    Avx512,
}

#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpu_avx2, "avx2");
#[cfg(target_arch = "x86_64")]
cpufeatures::new!(cpu_avx512vl, "avx2", "avx512f", "avx512vl");

impl CompressPath {
    /// The fastest path this CPU (and its OS-enabled register state) runs. Cached.
    pub fn detect() -> CompressPath {
        #[cfg(target_arch = "x86_64")]
        {
            if cpu_avx512vl::get() {
                return CompressPath::Avx512;
            }
            if cpu_avx2::get() {
                return CompressPath::Avx2;
            }
        }
        CompressPath::Portable
    }

    /// Whether this CPU runs the path.
    pub fn available(self) -> bool {
        match self {
            CompressPath::Portable => true,
            #[cfg(target_arch = "x86_64")]
            CompressPath::Avx2 => cpu_avx2::get(),
            #[cfg(target_arch = "x86_64")]
            CompressPath::Avx512 => cpu_avx512vl::get(),
            #[cfg(not(target_arch = "x86_64"))]
            _ => false,
        }
    }

    /// `*dst = G(*x, *y)`, or `*dst ^= G(*x, *y)` when `xor`.
    ///
    /// # Safety
    /// The three pointers are valid, aligned blocks; `x` and `y` are not written by
    /// anyone during the call (`dst` may be `x` or `y`: both are read before `dst` is
    /// written); nobody else reads or writes `dst` during the call; the CPU runs `self`
    /// ([`CompressPath::available`]).
    #[inline]
    pub(crate) unsafe fn compress(
        self,
        dst: *mut Block,
        x: *const Block,
        y: *const Block,
        xor: bool,
    ) {
        match self {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked AVX2; the pointer contract is the caller's.
            CompressPath::Avx2 => unsafe { avx2::compress(dst, x, y, xor) },
            #[cfg(target_arch = "x86_64")]
            // SAFETY: the caller checked AVX-512VL; the pointer contract is the caller's.
            CompressPath::Avx512 => unsafe { avx512::compress(dst, x, y, xor) },
            // SAFETY: the pointer contract is the caller's.
            _ => unsafe { portable(dst, x, y, xor) },
        }
    }
}

/// fBlaMka(x, y) = x + y + 2 · lo32(x) · lo32(y), mod 2^64.
#[inline(always)]
fn blamka(x: u64, y: u64) -> u64 {
    let m = (x & 0xFFFF_FFFF).wrapping_mul(y & 0xFFFF_FFFF);
    x.wrapping_add(y).wrapping_add(m.wrapping_mul(2))
}

/// The BlaMka G of P on four words of `v`.
#[inline(always)]
fn g(v: &mut [u64; 16], a: usize, b: usize, c: usize, d: usize) {
    v[a] = blamka(v[a], v[b]);
    v[d] = (v[d] ^ v[a]).rotate_right(32);
    v[c] = blamka(v[c], v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(24);
    v[a] = blamka(v[a], v[b]);
    v[d] = (v[d] ^ v[a]).rotate_right(16);
    v[c] = blamka(v[c], v[d]);
    v[b] = (v[b] ^ v[c]).rotate_right(63);
}

/// The permutation P on 16 words (a BLAKE2b round without message words).
#[inline(always)]
fn permute(v: &mut [u64; 16]) {
    g(v, 0, 4, 8, 12);
    g(v, 1, 5, 9, 13);
    g(v, 2, 6, 10, 14);
    g(v, 3, 7, 11, 15);
    g(v, 0, 5, 10, 15);
    g(v, 1, 6, 11, 12);
    g(v, 2, 7, 8, 13);
    g(v, 3, 4, 9, 14);
}

/// Portable G (the reference formulation).
///
/// # Safety
/// As [`CompressPath::compress`].
unsafe fn portable(dst: *mut Block, x: *const Block, y: *const Block, xor: bool) {
    let mut r = [0u64; Block::WORDS];
    {
        // SAFETY: valid blocks nobody writes during the call (caller's contract); the
        // references end before `dst` is written.
        let (x, y) = unsafe { (&*x, &*y) };
        for ((r, a), b) in r.iter_mut().zip(x.0.iter()).zip(y.0.iter()) {
            *r = a ^ b;
        }
    }
    let mut q = r;
    let mut v = [0u64; 16];
    for row in 0..8 {
        v.copy_from_slice(&q[16 * row..16 * row + 16]);
        permute(&mut v);
        q[16 * row..16 * row + 16].copy_from_slice(&v);
    }
    for col in 0..8 {
        for k in 0..8 {
            v[2 * k] = q[16 * k + 2 * col];
            v[2 * k + 1] = q[16 * k + 2 * col + 1];
        }
        permute(&mut v);
        for k in 0..8 {
            q[16 * k + 2 * col] = v[2 * k];
            q[16 * k + 2 * col + 1] = v[2 * k + 1];
        }
    }
    // SAFETY: `dst` is a valid block nobody else touches during the call.
    let dst = unsafe { &mut *dst };
    for i in 0..Block::WORDS {
        let o = q[i] ^ r[i];
        dst.0[i] = if xor { dst.0[i] ^ o } else { o };
    }
}

/// The 256-bit G, instantiated for AVX2 and for AVX-512VL (rotates differ).
#[cfg(target_arch = "x86_64")]
macro_rules! vector_compress {
    ($name:ident, $features:literal, $doc:literal, $rot32:path, $rot24:path, $rot16:path, $rot63:path) => {
        #[doc = $doc]
        mod $name {
            use core::arch::x86_64::*;

            use super::Block;

            /// fBlaMka on 4 lanes.
            #[inline]
            #[target_feature(enable = $features)]
            fn fb(x: __m256i, y: __m256i) -> __m256i {
                let m = _mm256_mul_epu32(x, y);
                _mm256_add_epi64(_mm256_add_epi64(x, y), _mm256_add_epi64(m, m))
            }

            /// The first half of G on 4 columns of a BLAKE2 matrix.
            #[inline]
            #[target_feature(enable = $features)]
            fn g1(a: &mut __m256i, b: &mut __m256i, c: &mut __m256i, d: &mut __m256i) {
                *a = fb(*a, *b);
                *d = $rot32(_mm256_xor_si256(*d, *a));
                *c = fb(*c, *d);
                *b = $rot24(_mm256_xor_si256(*b, *c));
            }

            /// The second half of G.
            #[inline]
            #[target_feature(enable = $features)]
            fn g2(a: &mut __m256i, b: &mut __m256i, c: &mut __m256i, d: &mut __m256i) {
                *a = fb(*a, *b);
                *d = $rot16(_mm256_xor_si256(*d, *a));
                *c = fb(*c, *d);
                *b = $rot63(_mm256_xor_si256(*b, *c));
            }

            /// P on one row held as 4 registers.
            #[inline]
            #[target_feature(enable = $features)]
            fn row(q: &mut [__m256i; 32], r: usize) {
                let (mut a, mut b, mut c, mut d) =
                    (q[4 * r], q[4 * r + 1], q[4 * r + 2], q[4 * r + 3]);
                g1(&mut a, &mut b, &mut c, &mut d);
                g2(&mut a, &mut b, &mut c, &mut d);
                // Diagonals: b ← (b1 b2 b3 b0), c ← (c2 c3 c0 c1), d ← (d3 d0 d1 d2).
                b = _mm256_permute4x64_epi64(b, 0b00_11_10_01);
                c = _mm256_permute4x64_epi64(c, 0b01_00_11_10);
                d = _mm256_permute4x64_epi64(d, 0b10_01_00_11);
                g1(&mut a, &mut b, &mut c, &mut d);
                g2(&mut a, &mut b, &mut c, &mut d);
                b = _mm256_permute4x64_epi64(b, 0b10_01_00_11);
                c = _mm256_permute4x64_epi64(c, 0b01_00_11_10);
                d = _mm256_permute4x64_epi64(d, 0b00_11_10_01);
                q[4 * r] = a;
                q[4 * r + 1] = b;
                q[4 * r + 2] = c;
                q[4 * r + 3] = d;
            }

            /// P on columns 2m and 2m + 1 (the two 128-bit halves of registers
            /// m, 4 + m, …, 28 + m; rows 0, 2, 4, 6 are a0 b0 c0 d0 and rows 1, 3,
            /// 5, 7 are a1 b1 c1 d1 of the column matrices).
            #[inline]
            #[target_feature(enable = $features)]
            fn columns(q: &mut [__m256i; 32], m: usize) {
                let (mut a0, mut a1) = (q[m], q[4 + m]);
                let (mut b0, mut b1) = (q[8 + m], q[12 + m]);
                let (mut c0, mut c1) = (q[16 + m], q[20 + m]);
                let (mut d0, mut d1) = (q[24 + m], q[28 + m]);
                g1(&mut a0, &mut b0, &mut c0, &mut d0);
                g1(&mut a1, &mut b1, &mut c1, &mut d1);
                g2(&mut a0, &mut b0, &mut c0, &mut d0);
                g2(&mut a1, &mut b1, &mut c1, &mut d1);
                // Diagonals (per 128-bit half): (a0, [b0.1 b1.0], c1, [d1.1 d0.0]) and
                // (a1, [b1.1 b0.0], c0, [d0.1 d1.0]).
                let (mut e0, mut e1) =
                    (_mm256_alignr_epi8(b1, b0, 8), _mm256_alignr_epi8(b0, b1, 8));
                let (mut f0, mut f1) =
                    (_mm256_alignr_epi8(d0, d1, 8), _mm256_alignr_epi8(d1, d0, 8));
                g1(&mut a0, &mut e0, &mut c1, &mut f0);
                g1(&mut a1, &mut e1, &mut c0, &mut f1);
                g2(&mut a0, &mut e0, &mut c1, &mut f0);
                g2(&mut a1, &mut e1, &mut c0, &mut f1);
                b0 = _mm256_alignr_epi8(e0, e1, 8);
                b1 = _mm256_alignr_epi8(e1, e0, 8);
                d0 = _mm256_alignr_epi8(f1, f0, 8);
                d1 = _mm256_alignr_epi8(f0, f1, 8);
                q[m] = a0;
                q[4 + m] = a1;
                q[8 + m] = b0;
                q[12 + m] = b1;
                q[16 + m] = c0;
                q[20 + m] = c1;
                q[24 + m] = d0;
                q[28 + m] = d1;
            }

            /// G with 256-bit vectors.
            ///
            /// # Safety
            /// As `CompressPath::compress`, and the CPU has the target features.
            #[target_feature(enable = $features)]
            pub(super) unsafe fn compress(
                dst: *mut Block,
                x: *const Block,
                y: *const Block,
                xor: bool,
            ) {
                let (xp, yp, dp) = (
                    x.cast::<__m256i>(),
                    y.cast::<__m256i>(),
                    dst.cast::<__m256i>(),
                );
                let mut r = [_mm256_setzero_si256(); 32];
                for (i, ri) in r.iter_mut().enumerate() {
                    // SAFETY: `x` and `y` are valid 64-byte aligned blocks of 32 vectors.
                    *ri = unsafe {
                        _mm256_xor_si256(_mm256_load_si256(xp.add(i)), _mm256_load_si256(yp.add(i)))
                    };
                }
                let mut q = r;
                for rr in 0..8 {
                    row(&mut q, rr);
                }
                for m in 0..4 {
                    columns(&mut q, m);
                }
                for i in 0..32 {
                    let mut o = _mm256_xor_si256(q[i], r[i]);
                    if xor {
                        // SAFETY: `dst` is a valid aligned block only this call touches.
                        o = _mm256_xor_si256(o, unsafe { _mm256_load_si256(dp.add(i)) });
                    }
                    // SAFETY: as above.
                    unsafe { _mm256_store_si256(dp.add(i), o) };
                }
            }
        }
    };
}

/// AVX2 rotates: 32 by dword shuffle, 24 and 16 by byte shuffle, 63 by add/shift.
#[cfg(target_arch = "x86_64")]
mod rot_avx2 {
    use core::arch::x86_64::*;

    /// Rotate each 64-bit lane right by 32.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn r32(x: __m256i) -> __m256i {
        _mm256_shuffle_epi32(x, 0b10_11_00_01)
    }

    /// Rotate each 64-bit lane right by 24.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn r24(x: __m256i) -> __m256i {
        let k = _mm256_setr_epi8(
            3, 4, 5, 6, 7, 0, 1, 2, 11, 12, 13, 14, 15, 8, 9, 10, 3, 4, 5, 6, 7, 0, 1, 2, 11, 12,
            13, 14, 15, 8, 9, 10,
        );
        _mm256_shuffle_epi8(x, k)
    }

    /// Rotate each 64-bit lane right by 16.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn r16(x: __m256i) -> __m256i {
        let k = _mm256_setr_epi8(
            2, 3, 4, 5, 6, 7, 0, 1, 10, 11, 12, 13, 14, 15, 8, 9, 2, 3, 4, 5, 6, 7, 0, 1, 10, 11,
            12, 13, 14, 15, 8, 9,
        );
        _mm256_shuffle_epi8(x, k)
    }

    /// Rotate each 64-bit lane right by 63.
    #[inline]
    #[target_feature(enable = "avx2")]
    pub(super) fn r63(x: __m256i) -> __m256i {
        _mm256_xor_si256(_mm256_srli_epi64(x, 63), _mm256_add_epi64(x, x))
    }
}

/// AVX-512VL rotates (`vprorq`).
#[cfg(target_arch = "x86_64")]
mod rot_avx512 {
    use core::arch::x86_64::*;

    /// Rotate each 64-bit lane right by 32.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn r32(x: __m256i) -> __m256i {
        _mm256_shuffle_epi32(x, 0b10_11_00_01)
    }

    /// Rotate each 64-bit lane right by 24.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn r24(x: __m256i) -> __m256i {
        _mm256_ror_epi64(x, 24)
    }

    /// Rotate each 64-bit lane right by 16.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn r16(x: __m256i) -> __m256i {
        _mm256_ror_epi64(x, 16)
    }

    /// Rotate each 64-bit lane right by 63.
    #[inline]
    #[target_feature(enable = "avx2,avx512f,avx512vl")]
    pub(super) fn r63(x: __m256i) -> __m256i {
        _mm256_ror_epi64(x, 63)
    }
}

#[cfg(target_arch = "x86_64")]
vector_compress!(
    avx2,
    "avx2",
    "G on AVX2.",
    super::rot_avx2::r32,
    super::rot_avx2::r24,
    super::rot_avx2::r16,
    super::rot_avx2::r63
);

#[cfg(target_arch = "x86_64")]
vector_compress!(
    avx512,
    "avx2,avx512f,avx512vl",
    "G on AVX2 registers with AVX-512VL rotates.",
    super::rot_avx512::r32,
    super::rot_avx512::r24,
    super::rot_avx512::r16,
    super::rot_avx512::r63
);
