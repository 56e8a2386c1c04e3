//! Unit tests of what the public tests cannot reach: the POLYVAL product against RFC 8452,
//! and the portable path run with AES-NI round keys (what a CPU with AES-NI but without
//! PCLMULQDQ or SSSE3 gets) against the vector paths.

extern crate std;

use std::vec::Vec;

use super::*;
use crate::engine::clear_vector_registers;

#[test]
fn polyval_product_matches_rfc8452() {
    if !cpu_xmm::get() {
        return;
    }
    let h = |s: &str| -> u128 { u128::from_str_radix(s, 16).unwrap().swap_bytes() };
    // RFC 8452 appendix A: POLYVAL(H, X1, X2), byte strings read little endian.
    let key = h("25629347589242761d31f826ba4b757b");
    let x1 = h("4f4f95668c83dfb6401762bb2d01a262");
    let x2 = h("d1a24ddd2721d006bbe45f20d3c9f362");
    let want = h("f7a3b47b846119fae5b7866cf5e5b77e");
    // SAFETY: SSE2, SSSE3 and PCLMULQDQ checked above; 16-byte loads and stores.
    let got = unsafe {
        use core::arch::x86_64::*;
        let ld = |v: u128| _mm_loadu_si128(v.to_le_bytes().as_ptr().cast());
        let s = simd::gfmul(ld(x1), ld(key));
        let s = simd::gfmul(_mm_xor_si128(s, ld(x2)), ld(key));
        let mut o = [0u8; 16];
        _mm_storeu_si128(o.as_mut_ptr().cast(), s);
        u128::from_le_bytes(o)
    };
    assert_eq!(got, want);
}

#[test]
fn portable_path_with_hardware_keys_matches_vector_path() {
    if !Backend::AesNi.is_available() || Path::for_backend(Backend::best()) == Path::Portable {
        return;
    }
    let mut seed = 0x1234_5678_9abc_def0u64;
    let mut next = move || {
        seed = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        (seed >> 33) as u8
    };
    for klen in [16, 24, 32] {
        let key: Vec<u8> = (0..klen).map(|_| next()).collect();
        let fast = Aes::new(&key).unwrap();
        let mut slow = Aes::with_backend(&key, Backend::AesNi).unwrap().unwrap();
        slow.path = Path::Portable;
        for len in [0usize, 1, 15, 16, 17, 100, 512, 1000, 4096 + 7] {
            let data: Vec<u8> = (0..len).map(|_| next()).collect();
            let whole = &data[..len / 16 * 16];
            let iv: [u8; 16] = core::array::from_fn(|_| next());
            let run = |aes: &Aes| {
                let mut out = Vec::new();
                let mut b = whole.to_vec();
                aes.ecb_encrypt(&mut b).unwrap();
                out.extend_from_slice(&b);
                let mut v = iv;
                aes.cbc_encrypt(&mut v, &mut b).unwrap();
                let mut v = iv;
                aes.cbc_decrypt(&mut v, &mut b).unwrap();
                out.extend_from_slice(&b);
                let mut b = data.clone();
                Ctr::new(aes, &iv, 20).unwrap().apply(&mut b);
                out.extend_from_slice(&b);
                out
            };
            assert_eq!(run(&fast), run(&slow), "klen {klen} len {len}");
            let gcm = |aes: Aes| {
                let gk = GcmKey::new(aes);
                let mut g = Gcm::new(&gk, &iv[..7], 16).unwrap();
                g.aad(&data[..len / 3]).unwrap();
                let mut b = data.clone();
                g.encrypt_update(&mut b).unwrap();
                (b, g.finish())
            };
            let mut slow2 = Aes::with_backend(&key, Backend::AesNi).unwrap().unwrap();
            slow2.path = Path::Portable;
            assert_eq!(
                gcm(Aes::new(&key).unwrap()),
                gcm(slow2),
                "GCM klen {klen} len {len}"
            );
        }
    }
    clear_vector_registers();
}

/// GCM's 32-bit counter wraps inside a message (possible when J0 comes from a non-96-bit
/// IV): the vector kernels wrap as inc32 does, without a carry into the upper 96 bits.
#[test]
fn gcm_blocks_wrap_the_32_bit_counter_like_the_portable_path() {
    if !Backend::AesNi.is_available() || Path::for_backend(Backend::best()) == Path::Portable {
        return;
    }
    let key = [0x42u8; 32];
    let fast = GcmKey::new(Aes::new(&key).unwrap());
    let mut slow_aes = Aes::with_backend(&key, Backend::AesNi).unwrap().unwrap();
    slow_aes.path = Path::Portable;
    let slow = GcmKey::new(slow_aes);
    for back in [1u32, 5, 17, 40] {
        let mut ctr = [0x9cu8; 16];
        ctr[12..].copy_from_slice(&0u32.wrapping_sub(back).to_be_bytes());
        for enc in [true, false] {
            let data: Vec<u8> = (0..16 * 100).map(|i| (i * 13 + 7) as u8).collect();
            let (mut a, mut b) = (data.clone(), data);
            let (mut acc_a, mut acc_b) = (7u128, 7u128);
            fast.blocks(&ctr, &mut acc_a, &mut a, enc);
            slow.blocks(&ctr, &mut acc_b, &mut b, enc);
            assert!(a == b, "data, {back} blocks before the wrap, enc {enc}");
            assert_eq!(
                acc_a, acc_b,
                "GHASH, {back} blocks before the wrap, enc {enc}"
            );
        }
    }
    clear_vector_registers();
}

#[test]
fn gcm_suspend_resume_continues_the_message() {
    let key = [7u8; 32];
    let gk = GcmKey::new(Aes::new(&key).unwrap());
    let iv = [3u8; 12];
    let aad: Vec<u8> = (0..37u8).collect();
    let data: Vec<u8> = (0..200u32).map(|i| (i * 31) as u8).collect();
    let mut whole = data.clone();
    let mut g = Gcm::new(&gk, &iv, 16).unwrap();
    g.aad(&aad).unwrap();
    g.encrypt_update(&mut whole).unwrap();
    let tag = g.finish();
    let mut parts = data.clone();
    let mut g = Gcm::new(&gk, &iv, 16).unwrap();
    g.aad(&aad[..5]).unwrap();
    let mut s = g.suspend();
    let mut g = Gcm::resume(&gk, s);
    g.aad(&aad[5..]).unwrap();
    s = g.suspend();
    for (a, b) in [(0usize, 7usize), (7, 40), (40, 41), (41, 200)] {
        let mut g = Gcm::resume(&gk, s);
        g.encrypt_update(&mut parts[a..b]).unwrap();
        s = g.suspend();
    }
    assert_eq!(s.data_len(), 200);
    assert_eq!(s.tag_len(), 16);
    assert_eq!(Gcm::resume(&gk, s).finish(), tag);
    assert_eq!(parts, whole);
    clear_vector_registers();
}
