//! The vector kernels of the generic modes, written once ([`kernels!`]) and instantiated
//! for three register widths: `zmm` (VAES + VPCLMULQDQ on AVX-512, 4 blocks a register),
//! `ymm` (VAES + VPCLMULQDQ on AVX2, 2 blocks) and `xmm` (AES-NI + PCLMULQDQ, 1 block).
//! Each instantiation runs `R` registers in flight per pass (`P = R * L` blocks).
//!
//! GHASH runs in the POLYVAL domain (RFC 8452, appendix A): blocks are byte-reversed, H
//! is `mulX(ByteReverse(H))`, and the product of two elements is Gueron's Montgomery
//! multiplication, so no bit reflection is needed. A pass multiplies its `P` blocks by
//! `H^P .. H^1` and reduces once (aggregated reduction).
//!
//! Every kernel is compiled with its width's `#[target_feature]` set; code without those
//! features calls only the `unsafe` entry points, after checking them (`Path::detect`).

use core::arch::x86_64::*;

/// Entries of the table of H powers: `pw[MAXP - i] = H^i` for `i` in `1..=MAXP`, zero from
/// `MAXP` on (tails of fewer than `P` blocks read past `H^1` into the zeros).
pub(super) const PW_LEN: usize = 2 * MAXP;
/// The largest pass (zmm: 8 registers × 4 blocks).
pub(super) const MAXP: usize = 32;

/// Montgomery reduction of a 256-bit carry-less product given as `lo`, `mid` (the cross
/// terms, straddling the middle) and `hi`: returns `(hi:lo) · x^-128 mod P(x)` with
/// POLYVAL's `P(x) = x^128 + x^127 + x^126 + x^121 + 1`.
#[target_feature(enable = "sse2,ssse3,pclmulqdq")]
#[inline]
pub(super) fn reduce(lo: __m128i, mid: __m128i, hi: __m128i) -> __m128i {
    let lo = _mm_xor_si128(lo, _mm_slli_si128::<8>(mid));
    let hi = _mm_xor_si128(hi, _mm_srli_si128::<8>(mid));
    let poly = _mm_set_epi64x(0xc200_0000_0000_0000_u64 as i64, 1);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<78>(lo), t);
    let t = _mm_clmulepi64_si128::<0x10>(lo, poly);
    let lo = _mm_xor_si128(_mm_shuffle_epi32::<78>(lo), t);
    _mm_xor_si128(hi, lo)
}

/// POLYVAL's product `a · b · x^-128`.
#[target_feature(enable = "sse2,ssse3,pclmulqdq")]
#[inline]
pub(super) fn gfmul(a: __m128i, b: __m128i) -> __m128i {
    let lo = _mm_clmulepi64_si128::<0x00>(a, b);
    let hi = _mm_clmulepi64_si128::<0x11>(a, b);
    let mid = _mm_xor_si128(
        _mm_clmulepi64_si128::<0x01>(a, b),
        _mm_clmulepi64_si128::<0x10>(a, b),
    );
    reduce(lo, mid, hi)
}

/// Fills `pw` with `H^n .. H^1` at `pw[MAXP - n..MAXP]` (POLYVAL domain), `n` ≤ MAXP.
///
/// # Safety
/// The CPU must support SSE2, SSSE3 and PCLMULQDQ.
#[target_feature(enable = "sse2,ssse3,pclmulqdq")]
pub(super) unsafe fn powers(h: u128, pw: &mut [[u8; 16]; PW_LEN], n: usize) {
    let hb = h.to_le_bytes();
    // SAFETY: 16-byte arrays; unaligned loads and stores.
    unsafe {
        let h1 = _mm_loadu_si128(hb.as_ptr().cast());
        // H^1..H^4 in a chain, then four independent chains H^i = H^(i-4) · H^4.
        let mut x = h1;
        let mut h4 = h1;
        for i in 1..=n.min(4) {
            _mm_storeu_si128(pw[MAXP - i].as_mut_ptr().cast(), x);
            h4 = x;
            x = gfmul(x, h1);
        }
        for i in 5..=n {
            let y = _mm_loadu_si128(pw[MAXP - (i - 4)].as_ptr().cast());
            _mm_storeu_si128(pw[MAXP - i].as_mut_ptr().cast(), gfmul(y, h4));
        }
    }
}

/// Generates a width's kernels from its helpers (`V`, `L`, `R`, `bc`, `ld`, `st`, `vx`,
/// `enc`, `encl`, `dec`, `decl`, `rev`, `add32`, `clm`, `fold`, `lane_idx`, `step`,
/// `lane0`, `chain0`, `top`), all compiled with `$feat`.
macro_rules! kernels {
    ($feat:literal) => {
        /// Blocks per pass.
        pub(in crate::engine) const P: usize = R * L;
        /// Bytes per register.
        const B: usize = 16 * L;

        /// Broadcasts the round keys to every lane.
        #[target_feature(enable = $feat)]
        #[inline]
        fn load_keys(k: &[[u8; 16]; 15]) -> [V; 15] {
            let mut r = [bc(_mm_setzero_si128()); 15];
            for (d, s) in r.iter_mut().zip(k.iter()) {
                // SAFETY: `s` is 16 readable bytes; unaligned load.
                *d = bc(unsafe { _mm_loadu_si128(s.as_ptr().cast()) });
            }
            r
        }

        /// Overwrites stack copies of round keys (volatile, so not optimized out).
        #[target_feature(enable = $feat)]
        #[inline]
        fn wipe(keys: &mut [V]) {
            for k in keys.iter_mut() {
                // SAFETY: `k` is a valid, aligned, exclusive reference.
                unsafe { core::ptr::write_volatile(k, bc(_mm_setzero_si128())) };
            }
        }

        /// A zeroed pass-sized scratch buffer, laid out as registers (aligned, and
        /// wiped by [`wipe`] with a few vector stores).
        #[target_feature(enable = $feat)]
        #[inline]
        fn scratch() -> [V; R] {
            [bc(_mm_setzero_si128()); R]
        }

        /// The bytes of a scratch buffer.
        fn scratch_bytes(s: &mut [V; R]) -> &mut [u8] {
            // SAFETY: `[V; R]` is `P * 16` bytes of plain integer data, any byte pattern
            // valid; the slice borrows `s` exclusively.
            unsafe { core::slice::from_raw_parts_mut(s.as_mut_ptr().cast(), P * 16) }
        }

        /// Runs `body` over the whole passes of `buf` and over its tail (fewer than `P`
        /// blocks) copied into a zero-padded pass-sized buffer; `buf` is whole blocks.
        #[target_feature(enable = $feat)]
        #[inline]
        fn passes(buf: &mut [u8], mut body: impl FnMut(*mut u8)) {
            let mut chunks = buf.chunks_exact_mut(P * 16);
            for c in &mut chunks {
                body(c.as_mut_ptr());
            }
            let rest = chunks.into_remainder();
            if !rest.is_empty() {
                let mut s = scratch();
                let tmp = scratch_bytes(&mut s);
                tmp[..rest.len()].copy_from_slice(rest);
                body(tmp.as_mut_ptr());
                rest.copy_from_slice(&tmp[..rest.len()]);
                wipe(&mut s);
            }
        }

        /// The counter blocks of a pass, XORed with round key 0; advances `base`.
        #[target_feature(enable = $feat)]
        #[inline]
        fn ctr_regs(base: &mut V, rk0: V) -> [V; R] {
            let mut b = [rk0; R];
            for (j, x) in b.iter_mut().enumerate() {
                *x = vx(rev(add32(*base, step((j * L) as i32))), rk0);
            }
            *base = add32(*base, step(P as i32));
            b
        }

        /// CTR over one pass at `p` (P blocks): keystream XOR data, in place.
        ///
        /// # Safety
        /// `p` points to `P * 16` writable bytes.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn ctr_pass<const NR: usize>(rk: &[V; 15], base: &mut V, p: *mut u8) {
            let mut b = ctr_regs(base, rk[0]);
            for key in &rk[1..NR] {
                for x in b.iter_mut() {
                    *x = enc(*x, *key);
                }
            }
            for (j, x) in b.iter().enumerate() {
                // SAFETY: `j * B + B <= P * 16` bytes at `p` (caller).
                unsafe {
                    let d = ld(p.add(j * B));
                    // The last round XORs its key last: fold the data into it.
                    st(p.add(j * B), encl(*x, vx(rk[NR], d)));
                }
            }
        }

        /// One GCM pass: CTR over the `P` blocks at `p` and, woven into its rounds (one
        /// register's multiplications per round), GHASH of the pass at `g` with the powers
        /// at `pw`. `g` may be `p` itself (decryption): every load precedes the stores.
        ///
        /// # Safety
        /// `p` points to `P * 16` writable bytes, `g` (if any) and `pw` to `P * 16`
        /// readable bytes.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn gcm_pass<const NR: usize>(
            rk: &[V; 15],
            base: &mut V,
            p: *mut u8,
            g: Option<*const u8>,
            pw: *const u8,
            acc: &mut __m128i,
        ) {
            let mut b = ctr_regs(base, rk[0]);
            let z = bc(_mm_setzero_si128());
            let (mut lo, mut mi, mut hi) = (z, z, z);
            for r in 1..NR {
                for x in b.iter_mut() {
                    *x = enc(*x, rk[r]);
                }
                let j = r - 1;
                if let (Some(g), true) = (g, j < R) {
                    // SAFETY: within the `P * 16` bytes at `g` and at `pw` (caller).
                    let (mut d, h) = unsafe { (rev(ld(g.add(j * B))), ld(pw.add(j * B))) };
                    if j == 0 {
                        d = vx(d, lane0(*acc));
                    }
                    lo = vx(lo, clm::<0x00>(d, h));
                    hi = vx(hi, clm::<0x11>(d, h));
                    mi = vx(mi, vx(clm::<0x01>(d, h), clm::<0x10>(d, h)));
                }
            }
            // GHASH covers all R registers only if the rounds outnumber them.
            const { assert!(R < 10) };
            for (j, x) in b.iter().enumerate() {
                // SAFETY: `j * B + B <= P * 16` bytes at `p` (caller).
                unsafe {
                    let d = ld(p.add(j * B));
                    st(p.add(j * B), encl(*x, vx(rk[NR], d)));
                }
            }
            if g.is_some() {
                *acc = super::reduce(fold(lo), fold(mi), fold(hi));
            }
        }

        /// GHASH of one pass of blocks at `p` (any count up to `P`, the rest of the pass
        /// zero) with the powers starting at `pw`: `acc = (acc ^ X1)·H^n ^ ... ^ Xn·H`.
        ///
        /// # Safety
        /// `p` points to `P * 16` readable bytes, `pw` to `P * 16` readable bytes.
        #[target_feature(enable = $feat)]
        #[inline]
        unsafe fn ghash_pass(pw: *const u8, acc: &mut __m128i, p: *const u8) {
            let z = bc(_mm_setzero_si128());
            let (mut lo, mut mi, mut hi) = (z, z, z);
            for j in 0..R {
                // SAFETY: within the `P * 16` bytes at `p` and at `pw` (caller).
                let (mut d, h) = unsafe { (rev(ld(p.add(j * B))), ld(pw.add(j * B))) };
                if j == 0 {
                    d = vx(d, lane0(*acc));
                }
                lo = vx(lo, clm::<0x00>(d, h));
                hi = vx(hi, clm::<0x11>(d, h));
                mi = vx(mi, vx(clm::<0x01>(d, h), clm::<0x10>(d, h)));
            }
            *acc = super::reduce(fold(lo), fold(mi), fold(hi));
        }

        /// The byte-reversed counter block with each lane's offset added.
        #[target_feature(enable = $feat)]
        #[inline]
        fn counter_base(ctr: &[u8; 16]) -> V {
            // SAFETY: 16-byte array; unaligned load.
            let c = unsafe { _mm_loadu_si128(ctr.as_ptr().cast()) };
            add32(bc(rev128(c)), lane_idx())
        }

        /// Byte reversal of one block.
        #[target_feature(enable = $feat)]
        #[inline]
        fn rev128(x: __m128i) -> __m128i {
            _mm_shuffle_epi8(
                x,
                _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
            )
        }

        /// CTR with a 32-bit counter (the low 32 bits of `ctr`, big endian, wrapping
        /// within them) over `buf` (whole blocks), in place.
        ///
        /// # Safety
        /// The CPU must support this width's features; `k` holds `nr` 10, 12 or 14.
        #[target_feature(enable = $feat)]
        pub(in crate::engine) unsafe fn ctr32(k: &RoundKeys, ctr: &[u8; 16], buf: &mut [u8]) {
            match k.nr {
                10 => ctr32_nr::<10>(k, ctr, buf),
                12 => ctr32_nr::<12>(k, ctr, buf),
                _ => ctr32_nr::<14>(k, ctr, buf),
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn ctr32_nr<const NR: usize>(k: &RoundKeys, ctr: &[u8; 16], buf: &mut [u8]) {
            let mut rk = load_keys(&k.enc);
            let mut base = counter_base(ctr);
            // SAFETY: `passes` hands pass-sized buffers.
            passes(buf, |p| unsafe { ctr_pass::<NR>(&rk, &mut base, p) });
            wipe(&mut rk);
        }

        /// ECB over `buf` (whole blocks), in place.
        ///
        /// # Safety
        /// The CPU must support this width's features.
        #[target_feature(enable = $feat)]
        pub(in crate::engine) unsafe fn ecb(k: &RoundKeys, buf: &mut [u8], encrypt: bool) {
            match (k.nr, encrypt) {
                (10, true) => ecb_nr::<10, true>(k, buf),
                (12, true) => ecb_nr::<12, true>(k, buf),
                (_, true) => ecb_nr::<14, true>(k, buf),
                (10, false) => ecb_nr::<10, false>(k, buf),
                (12, false) => ecb_nr::<12, false>(k, buf),
                (_, false) => ecb_nr::<14, false>(k, buf),
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn ecb_nr<const NR: usize, const ENC: bool>(k: &RoundKeys, buf: &mut [u8]) {
            let mut rk = load_keys(if ENC { &k.enc } else { &k.dec });
            passes(buf, |p| {
                // SAFETY: `p` points to `P * 16` bytes (`passes`).
                unsafe {
                    let mut b = [rk[0]; R];
                    for (j, x) in b.iter_mut().enumerate() {
                        *x = vx(ld(p.add(j * B)), rk[0]);
                    }
                    for key in &rk[1..NR] {
                        for x in b.iter_mut() {
                            *x = if ENC { enc(*x, *key) } else { dec(*x, *key) };
                        }
                    }
                    for (j, x) in b.iter().enumerate() {
                        let y = if ENC {
                            encl(*x, rk[NR])
                        } else {
                            decl(*x, rk[NR])
                        };
                        st(p.add(j * B), y);
                    }
                }
            });
            wipe(&mut rk);
        }

        /// CBC decryption of `buf` (whole blocks, at least one) in place, `P` blocks in
        /// flight; `iv` becomes the last ciphertext block.
        ///
        /// # Safety
        /// The CPU must support this width's features.
        #[target_feature(enable = $feat)]
        pub(in crate::engine) unsafe fn cbc_dec(k: &RoundKeys, iv: &mut [u8; 16], buf: &mut [u8]) {
            match k.nr {
                10 => cbc_dec_nr::<10>(k, iv, buf),
                12 => cbc_dec_nr::<12>(k, iv, buf),
                _ => cbc_dec_nr::<14>(k, iv, buf),
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn cbc_dec_nr<const NR: usize>(k: &RoundKeys, iv: &mut [u8; 16], buf: &mut [u8]) {
            let mut last = [0u8; 16];
            last.copy_from_slice(&buf[buf.len() - 16..]);
            let mut rk = load_keys(&k.dec);
            // SAFETY: 16-byte array; unaligned load.
            let mut prev = unsafe { _mm_loadu_si128(iv.as_ptr().cast()) };
            passes(buf, |p| {
                // SAFETY: `p` points to `P * 16` bytes (`passes`); every load happens
                // before the first store of the pass.
                unsafe {
                    let mut ct = [rk[0]; R];
                    let mut chain = [rk[0]; R];
                    for j in 0..R {
                        ct[j] = ld(p.add(j * B));
                        chain[j] = if j == 0 {
                            chain0(prev, ct[0])
                        } else {
                            ld(p.add(j * B - 16))
                        };
                    }
                    let mut b = [rk[0]; R];
                    for (x, c) in b.iter_mut().zip(ct.iter()) {
                        *x = vx(*c, rk[0]);
                    }
                    for key in &rk[1..NR] {
                        for x in b.iter_mut() {
                            *x = dec(*x, *key);
                        }
                    }
                    for j in 0..R {
                        st(p.add(j * B), decl(b[j], vx(rk[NR], chain[j])));
                    }
                    prev = top(ct[R - 1]);
                }
            });
            wipe(&mut rk);
            *iv = last;
        }

        /// GHASH of `data` (whole blocks) into `acc` (POLYVAL-domain state).
        ///
        /// # Safety
        /// The CPU must support this width's features.
        #[target_feature(enable = $feat)]
        pub(in crate::engine) unsafe fn ghash(
            pw: &[[u8; 16]; super::PW_LEN],
            acc: &mut u128,
            data: &[u8],
        ) {
            let mut a = acc_load(*acc);
            let mut chunks = data.chunks_exact(P * 16);
            for c in &mut chunks {
                // SAFETY: `c` is a pass; `pw[MAXP - P..]` has `2 * MAXP - (MAXP - P)` ≥ P
                // entries.
                unsafe { ghash_pass(pw[super::MAXP - P].as_ptr(), &mut a, c.as_ptr()) };
            }
            let rest = chunks.remainder();
            if !rest.is_empty() {
                let m = rest.len() / 16;
                let mut s = scratch();
                let tmp = scratch_bytes(&mut s);
                tmp[..rest.len()].copy_from_slice(rest);
                // SAFETY: `tmp` is a pass; `pw[MAXP - m..]` has ≥ MAXP ≥ P entries.
                unsafe { ghash_pass(pw[super::MAXP - m].as_ptr(), &mut a, tmp.as_ptr()) };
            }
            *acc = acc_store(a);
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn acc_load(a: u128) -> __m128i {
            let b = a.to_le_bytes();
            // SAFETY: 16-byte array; unaligned load.
            unsafe { _mm_loadu_si128(b.as_ptr().cast()) }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn acc_store(a: __m128i) -> u128 {
            let mut b = [0u8; 16];
            // SAFETY: 16-byte array; unaligned store.
            unsafe { _mm_storeu_si128(b.as_mut_ptr().cast(), a) };
            u128::from_le_bytes(b)
        }

        /// GCM over `buf` (whole blocks) in place: CTR from `ctr` (32-bit counter) and
        /// GHASH of the ciphertext into `acc`, one reduction per pass.
        ///
        /// # Safety
        /// The CPU must support this width's features.
        #[target_feature(enable = $feat)]
        pub(in crate::engine) unsafe fn gcm(
            k: &RoundKeys,
            pw: &[[u8; 16]; super::PW_LEN],
            ctr: &[u8; 16],
            acc: &mut u128,
            buf: &mut [u8],
            encrypt: bool,
        ) {
            match (k.nr, encrypt) {
                (10, true) => gcm_nr::<10, true>(k, pw, ctr, acc, buf),
                (12, true) => gcm_nr::<12, true>(k, pw, ctr, acc, buf),
                (_, true) => gcm_nr::<14, true>(k, pw, ctr, acc, buf),
                (10, false) => gcm_nr::<10, false>(k, pw, ctr, acc, buf),
                (12, false) => gcm_nr::<12, false>(k, pw, ctr, acc, buf),
                (_, false) => gcm_nr::<14, false>(k, pw, ctr, acc, buf),
            }
        }

        #[target_feature(enable = $feat)]
        #[inline]
        fn gcm_nr<const NR: usize, const ENC: bool>(
            k: &RoundKeys,
            pw: &[[u8; 16]; super::PW_LEN],
            ctr: &[u8; 16],
            acc: &mut u128,
            buf: &mut [u8],
        ) {
            let mut rk = load_keys(&k.enc);
            let mut base = counter_base(ctr);
            let mut a = acc_load(*acc);
            let full = pw[super::MAXP - P].as_ptr();
            let passes = buf.len() / (P * 16);
            let start = buf.as_mut_ptr();
            // Encryption hashes each pass's ciphertext while the next pass runs its
            // rounds; decryption hashes the pass it decrypts (its loads come first).
            let mut pending: Option<*const u8> = None;
            for i in 0..passes {
                // SAFETY: pass `i` lies inside `buf`; the previous pass too; `pw` from
                // `MAXP - P` has ≥ P entries.
                unsafe {
                    let p = start.add(i * P * 16);
                    let g = if ENC { pending } else { Some(p.cast_const()) };
                    gcm_pass::<NR>(&rk, &mut base, p, g, full, &mut a);
                    pending = Some(p.cast_const());
                }
            }
            if let (true, Some(q)) = (ENC, pending) {
                // SAFETY: `q` is the last pass of `buf`.
                unsafe { ghash_pass(full, &mut a, q) };
            }
            let rest = &mut buf[passes * P * 16..];
            if !rest.is_empty() {
                let n = rest.len();
                let pm = pw[super::MAXP - n / 16].as_ptr();
                let mut s = scratch();
                let tmp = scratch_bytes(&mut s);
                tmp[..n].copy_from_slice(rest);
                // SAFETY: `tmp` is a pass; `pw` from `MAXP - m` has ≥ MAXP entries. The
                // GHASH input is the ciphertext with the rest of the pass zero.
                unsafe {
                    if ENC {
                        ctr_pass::<NR>(&rk, &mut base, tmp.as_mut_ptr());
                        tmp[n..].fill(0);
                        ghash_pass(pm, &mut a, tmp.as_ptr());
                    } else {
                        ghash_pass(pm, &mut a, tmp.as_ptr());
                        ctr_pass::<NR>(&rk, &mut base, tmp.as_mut_ptr());
                    }
                }
                rest.copy_from_slice(&tmp[..n]);
                wipe(&mut s);
            }
            *acc = acc_store(a);
            wipe(&mut rk);
        }
    };
}

/// AES-NI + PCLMULQDQ on xmm registers: 8 blocks in flight.
pub(super) mod xmm {
    use core::arch::x86_64::*;

    use crate::engine::keys::RoundKeys;

    type V = __m128i;
    const L: usize = 1;
    const R: usize = 8;

    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn bc(x: __m128i) -> V {
        x
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    unsafe fn ld(p: *const u8) -> V {
        // SAFETY: 16 readable bytes at `p` (caller).
        unsafe { _mm_loadu_si128(p.cast()) }
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    unsafe fn st(p: *mut u8, x: V) {
        // SAFETY: 16 writable bytes at `p` (caller).
        unsafe { _mm_storeu_si128(p.cast(), x) }
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn vx(a: V, b: V) -> V {
        _mm_xor_si128(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn enc(a: V, k: V) -> V {
        _mm_aesenc_si128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn encl(a: V, k: V) -> V {
        _mm_aesenclast_si128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn dec(a: V, k: V) -> V {
        _mm_aesdec_si128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn decl(a: V, k: V) -> V {
        _mm_aesdeclast_si128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn rev(x: V) -> V {
        _mm_shuffle_epi8(
            x,
            _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15),
        )
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn add32(a: V, b: V) -> V {
        _mm_add_epi32(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn clm<const I: i32>(a: V, b: V) -> V {
        _mm_clmulepi64_si128::<I>(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn fold(x: V) -> __m128i {
        x
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn lane_idx() -> V {
        _mm_setzero_si128()
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn step(n: i32) -> V {
        _mm_set_epi32(0, 0, 0, n)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn lane0(x: __m128i) -> V {
        x
    }
    /// The chaining blocks of the first register of a pass: the block before it.
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn chain0(prev: __m128i, _ct0: V) -> V {
        prev
    }
    /// The last block of a register.
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq")]
    #[inline]
    fn top(x: V) -> __m128i {
        x
    }

    kernels!("aes,sse2,ssse3,pclmulqdq");
}

/// VAES + VPCLMULQDQ on ymm registers (2 blocks each): 16 blocks in flight.
pub(super) mod ymm {
    use core::arch::x86_64::*;

    use crate::engine::keys::RoundKeys;

    type V = __m256i;
    const L: usize = 2;
    const R: usize = 8;

    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn bc(x: __m128i) -> V {
        _mm256_broadcastsi128_si256(x)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    unsafe fn ld(p: *const u8) -> V {
        // SAFETY: 32 readable bytes at `p` (caller).
        unsafe { _mm256_loadu_si256(p.cast()) }
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    unsafe fn st(p: *mut u8, x: V) {
        // SAFETY: 32 writable bytes at `p` (caller).
        unsafe { _mm256_storeu_si256(p.cast(), x) }
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn vx(a: V, b: V) -> V {
        _mm256_xor_si256(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn enc(a: V, k: V) -> V {
        _mm256_aesenc_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn encl(a: V, k: V) -> V {
        _mm256_aesenclast_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn dec(a: V, k: V) -> V {
        _mm256_aesdec_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn decl(a: V, k: V) -> V {
        _mm256_aesdeclast_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn rev(x: V) -> V {
        let m = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        _mm256_shuffle_epi8(x, _mm256_broadcastsi128_si256(m))
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn add32(a: V, b: V) -> V {
        _mm256_add_epi32(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn clm<const I: i32>(a: V, b: V) -> V {
        _mm256_clmulepi64_epi128::<I>(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn fold(x: V) -> __m128i {
        _mm_xor_si128(_mm256_castsi256_si128(x), _mm256_extracti128_si256::<1>(x))
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn lane_idx() -> V {
        _mm256_set_epi32(0, 0, 0, 1, 0, 0, 0, 0)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn step(n: i32) -> V {
        _mm256_set_epi32(0, 0, 0, n, 0, 0, 0, n)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn lane0(x: __m128i) -> V {
        _mm256_zextsi128_si256(x)
    }
    /// The chaining blocks of the first register of a pass: `prev`, then the register's
    /// lane 0.
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn chain0(prev: __m128i, ct0: V) -> V {
        _mm256_inserti128_si256::<1>(_mm256_castsi128_si256(prev), _mm256_castsi256_si128(ct0))
    }
    /// The last block of a register.
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq")]
    #[inline]
    fn top(x: V) -> __m128i {
        _mm256_extracti128_si256::<1>(x)
    }

    kernels!("aes,sse2,ssse3,pclmulqdq,avx,avx2,vaes,vpclmulqdq");
}

/// VAES + VPCLMULQDQ on zmm registers (4 blocks each): 32 blocks in flight.
pub(super) mod zmm {
    use core::arch::x86_64::*;

    use crate::engine::keys::RoundKeys;

    type V = __m512i;
    const L: usize = 4;
    const R: usize = 8;

    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn bc(x: __m128i) -> V {
        _mm512_broadcast_i32x4(x)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    unsafe fn ld(p: *const u8) -> V {
        // SAFETY: 64 readable bytes at `p` (caller).
        unsafe { _mm512_loadu_si512(p.cast()) }
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    unsafe fn st(p: *mut u8, x: V) {
        // SAFETY: 64 writable bytes at `p` (caller).
        unsafe { _mm512_storeu_si512(p.cast(), x) }
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn vx(a: V, b: V) -> V {
        _mm512_xor_si512(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn enc(a: V, k: V) -> V {
        _mm512_aesenc_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn encl(a: V, k: V) -> V {
        _mm512_aesenclast_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn dec(a: V, k: V) -> V {
        _mm512_aesdec_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn decl(a: V, k: V) -> V {
        _mm512_aesdeclast_epi128(a, k)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn rev(x: V) -> V {
        let m = _mm_set_epi8(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
        _mm512_shuffle_epi8(x, _mm512_broadcast_i32x4(m))
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn add32(a: V, b: V) -> V {
        _mm512_add_epi32(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn clm<const I: i32>(a: V, b: V) -> V {
        _mm512_clmulepi64_epi128::<I>(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn fold(x: V) -> __m128i {
        let a = _mm_xor_si128(_mm512_castsi512_si128(x), _mm512_extracti32x4_epi32::<1>(x));
        let b = _mm_xor_si128(
            _mm512_extracti32x4_epi32::<2>(x),
            _mm512_extracti32x4_epi32::<3>(x),
        );
        _mm_xor_si128(a, b)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn lane_idx() -> V {
        _mm512_set_epi32(0, 0, 0, 3, 0, 0, 0, 2, 0, 0, 0, 1, 0, 0, 0, 0)
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn step(n: i32) -> V {
        _mm512_broadcast_i32x4(_mm_set_epi32(0, 0, 0, n))
    }
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn lane0(x: __m128i) -> V {
        _mm512_zextsi128_si512(x)
    }
    /// The chaining blocks of the first register of a pass: `prev`, then the register's
    /// lanes 0..2.
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn chain0(prev: __m128i, ct0: V) -> V {
        let before = _mm512_inserti32x4::<3>(_mm512_setzero_si512(), prev);
        _mm512_alignr_epi64::<6>(ct0, before)
    }
    /// The last block of a register.
    #[target_feature(enable = "aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq")]
    #[inline]
    fn top(x: V) -> __m128i {
        _mm512_extracti32x4_epi32::<3>(x)
    }

    kernels!("aes,sse2,ssse3,pclmulqdq,avx,avx2,avx512f,avx512bw,vaes,vpclmulqdq");
}
