//! AES keys: expanded round keys for the hardware backends (expanded with AES-NI), or the
//! `aes` crate's ciphers for the software backend. All are zeroized on drop.

use core::arch::x86_64::*;

use aes::cipher::KeyInit;
use zeroize::Zeroize;

/// Expanded AES round keys: `enc[0..=nr]` for `aesenc`, `dec[0..=nr]` (the equivalent
/// inverse cipher schedule) for `aesdec`.
///
/// `repr(C, align(16))` puts every round key on a 16-byte boundary: the AES-NI XTS
/// kernel (`ni.rs`) reads round keys straight from here as legacy-SSE memory operands,
/// which must be aligned.
#[repr(C, align(16))]
pub(crate) struct RoundKeys {
    pub(crate) enc: [[u8; 16]; 15],
    pub(crate) dec: [[u8; 16]; 15],
    /// Number of rounds: 10, 12 or 14.
    pub(crate) nr: usize,
}

impl Drop for RoundKeys {
    fn drop(&mut self) {
        self.enc.zeroize();
        self.dec.zeroize();
    }
}

/// Software AES from the `aes` crate (zeroizes itself on drop).
pub(crate) enum SoftAes {
    A128(aes::Aes128),
    A192(aes::Aes192),
    A256(aes::Aes256),
}

/// One AES key in the form its backend needs. (No `Box` for the large variant: the
/// engine has no allocator in the vault guest.)
#[allow(clippy::large_enum_variant)]
pub(crate) enum AesKey {
    Hw(RoundKeys),
    Soft(SoftAes),
}

impl AesKey {
    /// `key` is 16, 24 or 32 bytes (checked by the caller); `hw` picks AES-NI round keys.
    pub(crate) fn new(key: &[u8], hw: bool) -> AesKey {
        if hw {
            // SAFETY: `hw` is only set for backends whose CPU check included AES-NI and SSE2.
            AesKey::Hw(unsafe { expand(key) })
        } else {
            AesKey::Soft(match key.len() {
                16 => SoftAes::A128(aes::Aes128::new(key.into())),
                24 => SoftAes::A192(aes::Aes192::new(key.into())),
                _ => SoftAes::A256(aes::Aes256::new(key.into())),
            })
        }
    }
}

/// `SubWord(w)` and `RotWord(SubWord(w))` of a little-endian-loaded key word, computed by
/// `aeskeygenassist` (constant time, no table lookups).
#[target_feature(enable = "aes,sse2")]
fn sub_words(w: u32) -> (u32, u32) {
    let x = _mm_set1_epi32(w as i32);
    let r = _mm_aeskeygenassist_si128::<0>(x);
    let sub = _mm_cvtsi128_si32(r) as u32;
    let subrot = _mm_cvtsi128_si32(_mm_shuffle_epi32::<0b01>(r)) as u32;
    (sub, subrot)
}

/// FIPS-197 key expansion (any key size), then the inverse schedule with `aesimc`.
#[target_feature(enable = "aes,sse2")]
pub(crate) fn expand(key: &[u8]) -> RoundKeys {
    const RCON: [u32; 10] = [0x01, 0x02, 0x04, 0x08, 0x10, 0x20, 0x40, 0x80, 0x1b, 0x36];
    let nk = key.len() / 4;
    let nr = nk + 6;
    let total = 4 * (nr + 1);
    let mut w = [0u32; 60];
    for (i, c) in key.chunks_exact(4).enumerate() {
        w[i] = u32::from_le_bytes([c[0], c[1], c[2], c[3]]);
    }
    for i in nk..total {
        let mut t = w[i - 1];
        if i % nk == 0 {
            t = sub_words(t).1 ^ RCON[i / nk - 1];
        } else if nk > 6 && i % nk == 4 {
            t = sub_words(t).0;
        }
        w[i] = w[i - nk] ^ t;
    }
    let mut rk = RoundKeys {
        enc: [[0; 16]; 15],
        dec: [[0; 16]; 15],
        nr,
    };
    for r in 0..=nr {
        for j in 0..4 {
            rk.enc[r][4 * j..4 * j + 4].copy_from_slice(&w[4 * r + j].to_le_bytes());
        }
    }
    w.zeroize();
    rk.dec[0] = rk.enc[nr];
    rk.dec[nr] = rk.enc[0];
    for r in 1..nr {
        // SAFETY: `[u8; 16]` is exactly 16 bytes; unaligned load/store intrinsics.
        unsafe {
            let k = _mm_loadu_si128(rk.enc[nr - r].as_ptr().cast());
            _mm_storeu_si128(rk.dec[r].as_mut_ptr().cast(), _mm_aesimc_si128(k));
        }
    }
    rk
}
