//! A small, independent AES key expansion (FIPS-197 §5.2) and the equivalent inverse
//! cipher schedule (FIPS-197 §5.3.5), for the key-residency scanner: it searches memory
//! for these schedules the way findaes-style tools do.
//!
//! Deliberately written from the standard, not shared with `vault-vm`'s engine, so a
//! mistake in the engine's expansion cannot hide itself from the scanner.

/// The AES S-box (FIPS-197 Figure 7).
const SBOX: [u8; 256] = [
    0x63, 0x7c, 0x77, 0x7b, 0xf2, 0x6b, 0x6f, 0xc5, 0x30, 0x01, 0x67, 0x2b, 0xfe, 0xd7, 0xab, 0x76,
    0xca, 0x82, 0xc9, 0x7d, 0xfa, 0x59, 0x47, 0xf0, 0xad, 0xd4, 0xa2, 0xaf, 0x9c, 0xa4, 0x72, 0xc0,
    0xb7, 0xfd, 0x93, 0x26, 0x36, 0x3f, 0xf7, 0xcc, 0x34, 0xa5, 0xe5, 0xf1, 0x71, 0xd8, 0x31, 0x15,
    0x04, 0xc7, 0x23, 0xc3, 0x18, 0x96, 0x05, 0x9a, 0x07, 0x12, 0x80, 0xe2, 0xeb, 0x27, 0xb2, 0x75,
    0x09, 0x83, 0x2c, 0x1a, 0x1b, 0x6e, 0x5a, 0xa0, 0x52, 0x3b, 0xd6, 0xb3, 0x29, 0xe3, 0x2f, 0x84,
    0x53, 0xd1, 0x00, 0xed, 0x20, 0xfc, 0xb1, 0x5b, 0x6a, 0xcb, 0xbe, 0x39, 0x4a, 0x4c, 0x58, 0xcf,
    0xd0, 0xef, 0xaa, 0xfb, 0x43, 0x4d, 0x33, 0x85, 0x45, 0xf9, 0x02, 0x7f, 0x50, 0x3c, 0x9f, 0xa8,
    0x51, 0xa3, 0x40, 0x8f, 0x92, 0x9d, 0x38, 0xf5, 0xbc, 0xb6, 0xda, 0x21, 0x10, 0xff, 0xf3, 0xd2,
    0xcd, 0x0c, 0x13, 0xec, 0x5f, 0x97, 0x44, 0x17, 0xc4, 0xa7, 0x7e, 0x3d, 0x64, 0x5d, 0x19, 0x73,
    0x60, 0x81, 0x4f, 0xdc, 0x22, 0x2a, 0x90, 0x88, 0x46, 0xee, 0xb8, 0x14, 0xde, 0x5e, 0x0b, 0xdb,
    0xe0, 0x32, 0x3a, 0x0a, 0x49, 0x06, 0x24, 0x5c, 0xc2, 0xd3, 0xac, 0x62, 0x91, 0x95, 0xe4, 0x79,
    0xe7, 0xc8, 0x37, 0x6d, 0x8d, 0xd5, 0x4e, 0xa9, 0x6c, 0x56, 0xf4, 0xea, 0x65, 0x7a, 0xae, 0x08,
    0xba, 0x78, 0x25, 0x2e, 0x1c, 0xa6, 0xb4, 0xc6, 0xe8, 0xdd, 0x74, 0x1f, 0x4b, 0xbd, 0x8b, 0x8a,
    0x70, 0x3e, 0xb5, 0x66, 0x48, 0x03, 0xf6, 0x0e, 0x61, 0x35, 0x57, 0xb9, 0x86, 0xc1, 0x1d, 0x9e,
    0xe1, 0xf8, 0x98, 0x11, 0x69, 0xd9, 0x8e, 0x94, 0x9b, 0x1e, 0x87, 0xe9, 0xce, 0x55, 0x28, 0xdf,
    0x8c, 0xa1, 0x89, 0x0d, 0xbf, 0xe6, 0x42, 0x68, 0x41, 0x99, 0x2d, 0x0f, 0xb0, 0x54, 0xbb, 0x16,
];

/// One 16-byte round key, bytes in FIPS-197 order (as `aesenc` takes it from memory).
pub type RoundKey = [u8; 16];

/// Multiplication by `x` in GF(2^8) modulo the AES polynomial.
fn xtime(b: u8) -> u8 {
    (b << 1) ^ if b & 0x80 != 0 { 0x1b } else { 0 }
}

/// Multiplication in GF(2^8) (shift-and-add; used only on schedules, not secret-timing
/// sensitive in a test).
fn gmul(mut a: u8, mut b: u8) -> u8 {
    let mut p = 0;
    while b != 0 {
        if b & 1 != 0 {
            p ^= a;
        }
        a = xtime(a);
        b >>= 1;
    }
    p
}

/// The encryption round keys `w[0..4(Nr+1)]` of FIPS-197 §5.2 as `Nr + 1` round keys.
/// `key` must be 16, 24 or 32 bytes.
///
/// # Panics
/// On any other key length.
pub fn expand_key(key: &[u8]) -> Vec<RoundKey> {
    assert!(
        matches!(key.len(), 16 | 24 | 32),
        "AES key must be 16, 24 or 32 bytes, not {}",
        key.len()
    );
    let nk = key.len() / 4;
    let nr = nk + 6;
    let total = 4 * (nr + 1);
    let mut w: Vec<[u8; 4]> = key
        .chunks_exact(4)
        .map(|c| [c[0], c[1], c[2], c[3]])
        .collect();
    let mut rcon = 1u8;
    for i in nk..total {
        let mut t = w[i - 1];
        if i % nk == 0 {
            t = [
                SBOX[t[1] as usize] ^ rcon,
                SBOX[t[2] as usize],
                SBOX[t[3] as usize],
                SBOX[t[0] as usize],
            ];
            rcon = xtime(rcon);
        } else if nk > 6 && i % nk == 4 {
            t = t.map(|b| SBOX[b as usize]);
        }
        let p = w[i - nk];
        w.push([p[0] ^ t[0], p[1] ^ t[1], p[2] ^ t[2], p[3] ^ t[3]]);
    }
    w.chunks_exact(4)
        .map(|r| {
            let mut k = [0u8; 16];
            for (j, word) in r.iter().enumerate() {
                k[4 * j..4 * j + 4].copy_from_slice(word);
            }
            k
        })
        .collect()
}

/// InvMixColumns of a round key (what `aesimc` computes).
pub fn inv_mix_columns(k: &RoundKey) -> RoundKey {
    let mut out = [0u8; 16];
    for c in 0..4 {
        let s = &k[4 * c..4 * c + 4];
        for r in 0..4 {
            out[4 * c + r] = gmul(s[r], 0x0e)
                ^ gmul(s[(r + 1) % 4], 0x0b)
                ^ gmul(s[(r + 2) % 4], 0x0d)
                ^ gmul(s[(r + 3) % 4], 0x09);
        }
    }
    out
}

/// The equivalent inverse cipher schedule as AES-NI code (OpenSSL's
/// `aesni_set_decrypt_key`, Linux's `aesni_set_key`, vault-vm's engine) and the
/// table-driven C implementations store it: `dk[0] = ek[Nr]`,
/// `dk[i] = InvMixColumns(ek[Nr - i])`, `dk[Nr] = ek[0]`.
pub fn decryption_schedule_reversed(enc: &[RoundKey]) -> Vec<RoundKey> {
    let nr = enc.len() - 1;
    (0..=nr)
        .map(|i| {
            if i == 0 || i == nr {
                enc[nr - i]
            } else {
                inv_mix_columns(&enc[nr - i])
            }
        })
        .collect()
}

/// The equivalent inverse cipher keys kept in encryption order (RustCrypto's AES-NI
/// backend and others that walk the array backwards): `ek[0]`,
/// `InvMixColumns(ek[1..Nr])`, `ek[Nr]`.
pub fn decryption_schedule_forward(enc: &[RoundKey]) -> Vec<RoundKey> {
    let nr = enc.len() - 1;
    enc.iter()
        .enumerate()
        .map(|(i, k)| {
            if i == 0 || i == nr {
                *k
            } else {
                inv_mix_columns(k)
            }
        })
        .collect()
}

/// Round keys with every 32-bit word byte-reversed: the in-memory form of schedules
/// kept as big-endian-loaded `u32` words on a little-endian host (OpenSSL's portable C
/// `AES_set_encrypt_key`, `GETU32`).
pub fn word_swapped(keys: &[RoundKey]) -> Vec<RoundKey> {
    keys.iter()
        .map(|k| {
            let mut o = *k;
            for w in o.chunks_exact_mut(4) {
                w.reverse();
            }
            o
        })
        .collect()
}

/// Concatenates round keys into one byte string.
pub fn flatten(keys: &[RoundKey]) -> Vec<u8> {
    keys.iter().flat_map(|k| k.iter().copied()).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        let s: String = s.chars().filter(|c| !c.is_whitespace()).collect();
        (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap())
            .collect()
    }

    fn word(keys: &[RoundKey], i: usize) -> Vec<u8> {
        keys[i / 4][4 * (i % 4)..4 * (i % 4) + 4].to_vec()
    }

    /// FIPS-197 Appendix A.1: expansion of a 128-bit cipher key.
    #[test]
    fn fips197_a1_aes128() {
        let k = expand_key(&hex("2b7e151628aed2a6abf7158809cf4f3c"));
        assert_eq!(k.len(), 11);
        assert_eq!(word(&k, 4), hex("a0fafe17"));
        assert_eq!(word(&k, 5), hex("88542cb1"));
        assert_eq!(word(&k, 20), hex("d4d1c6f8"));
        assert_eq!(word(&k, 43), hex("b6630ca6"));
        assert_eq!(k[10].to_vec(), hex("d014f9a8c9ee2589e13f0cc8b6630ca6"));
    }

    /// FIPS-197 Appendix A.2: expansion of a 192-bit cipher key.
    #[test]
    fn fips197_a2_aes192() {
        let k = expand_key(&hex("8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b"));
        assert_eq!(k.len(), 13);
        assert_eq!(word(&k, 6), hex("fe0c91f7"));
        assert_eq!(word(&k, 7), hex("2402f5a5"));
        assert_eq!(word(&k, 51), hex("01002202"));
    }

    /// FIPS-197 Appendix A.3: expansion of a 256-bit cipher key.
    #[test]
    fn fips197_a3_aes256() {
        let k = expand_key(&hex(
            "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4",
        ));
        assert_eq!(k.len(), 15);
        assert_eq!(word(&k, 8), hex("9ba35411"));
        assert_eq!(word(&k, 12), hex("a8b09c1a"));
        assert_eq!(word(&k, 59), hex("706c631e"));
    }

    /// FIPS-197 Appendix C.1, equivalent inverse cipher: `round[r].ik_sch`.
    #[test]
    fn fips197_c1_equivalent_inverse_schedule() {
        let enc = expand_key(&hex("000102030405060708090a0b0c0d0e0f"));
        let dec = decryption_schedule_reversed(&enc);
        assert_eq!(dec[0].to_vec(), hex("13111d7fe3944a17f307a78b4d2b30c5"));
        assert_eq!(dec[1].to_vec(), hex("13aa29be9c8faff6f770f58000f7bf03"));
        assert_eq!(dec[10].to_vec(), hex("000102030405060708090a0b0c0d0e0f"));
        let fwd = decryption_schedule_forward(&enc);
        assert_eq!(fwd[9], dec[1]);
        assert_eq!(fwd[0], enc[0]);
    }

    /// InvMixColumns against the MixColumns example column (db 13 53 45 → 8e 4d a1 bc).
    #[test]
    fn inv_mix_columns_known_column() {
        let mut k = [0u8; 16];
        k[..4].copy_from_slice(&hex("8e4da1bc"));
        k[4..8].copy_from_slice(&hex("9fdc589d"));
        let o = inv_mix_columns(&k);
        assert_eq!(o[..4].to_vec(), hex("db135345"));
        assert_eq!(o[4..8].to_vec(), hex("f20a225c"));
    }

    #[test]
    fn word_swap_reverses_each_word() {
        let enc = expand_key(&hex("2b7e151628aed2a6abf7158809cf4f3c"));
        let s = word_swapped(&enc);
        assert_eq!(s[0].to_vec(), hex("16157e2ba6d2ae288815f7ab3c4fcf09"));
        assert_eq!(flatten(&s).len(), 176);
    }
}
