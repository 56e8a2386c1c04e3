//! The generic modes against OpenSSL's EVP on random keys, IVs, lengths and split points,
//! on every backend this CPU runs (each forced with `Aes::with_backend`): ECB, CBC
//! (multi-part through the chaining value), CTR (128-bit counters against OpenSSL, and
//! narrow counters wrapping at 8, 16, 32 and 64 bits against counter blocks built here
//! and encrypted with OpenSSL's ECB), GCM (any IV length, split additional data and
//! data, every tag length, tampered tags) and both key wraps.
//!
//! The seed comes from env `MODES_SEED`, else the clock; it is printed.

use openssl::cipher::{Cipher, CipherRef};
use openssl::cipher_ctx::CipherCtx;
use vault_vm::engine::generic::{kw, Aes, Ctr, Gcm, GcmKey, ModeError};
use vault_vm::engine::{clear_vector_registers, Backend};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // splitmix64
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn bytes(&mut self, n: usize) -> Vec<u8> {
        (0..n).map(|_| self.next() as u8).collect()
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    /// A length: mostly small, sometimes several passes, now and then large.
    fn len(&mut self) -> usize {
        match self.below(10) {
            0..=5 => self.below(300) as usize,
            6..=8 => self.below(5000) as usize,
            _ => self.below(70_000) as usize,
        }
    }
    /// Cuts `n` into up to 4 parts at random points.
    fn splits(&mut self, n: usize) -> Vec<usize> {
        let mut cuts: Vec<usize> = (0..self.below(4))
            .map(|_| self.below(n as u64 + 1) as usize)
            .collect();
        cuts.push(0);
        cuts.push(n);
        cuts.sort();
        cuts
    }
}

fn seed() -> u64 {
    let seed = std::env::var("MODES_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
        });
    println!("MODES_SEED={seed}");
    seed
}

const BACKENDS: [Backend; 4] = [
    Backend::Soft,
    Backend::AesNi,
    Backend::Vaes256,
    Backend::Vaes512,
];

fn cipher(mode: &str, klen: usize) -> &'static CipherRef {
    match (mode, klen) {
        ("ecb", 16) => Cipher::aes_128_ecb(),
        ("ecb", 24) => Cipher::aes_192_ecb(),
        ("ecb", _) => Cipher::aes_256_ecb(),
        ("cbc", 16) => Cipher::aes_128_cbc(),
        ("cbc", 24) => Cipher::aes_192_cbc(),
        ("cbc", _) => Cipher::aes_256_cbc(),
        ("ctr", 16) => Cipher::aes_128_ctr(),
        ("ctr", 24) => Cipher::aes_192_ctr(),
        ("ctr", _) => Cipher::aes_256_ctr(),
        ("gcm", 16) => Cipher::aes_128_gcm(),
        ("gcm", 24) => Cipher::aes_192_gcm(),
        ("gcm", _) => Cipher::aes_256_gcm(),
        ("kw", 16) => Cipher::aes_128_wrap(),
        ("kw", 24) => Cipher::aes_192_wrap(),
        ("kw", _) => Cipher::aes_256_wrap(),
        ("kwp", 16) => Cipher::aes_128_wrap_pad(),
        ("kwp", 24) => Cipher::aes_192_wrap_pad(),
        (_, _) => Cipher::aes_256_wrap_pad(),
    }
}

/// OpenSSL one-shot without padding.
fn ossl(mode: &str, key: &[u8], iv: Option<&[u8]>, data: &[u8], enc: bool) -> Vec<u8> {
    let mut c = CipherCtx::new().unwrap();
    let t = cipher(mode, key.len());
    if enc {
        c.encrypt_init(Some(t), Some(key), iv).unwrap();
    } else {
        c.decrypt_init(Some(t), Some(key), iv).unwrap();
    }
    c.set_padding(false);
    let mut out = Vec::new();
    c.cipher_update_vec(data, &mut out).unwrap();
    c.cipher_final_vec(&mut out).unwrap();
    out
}

fn keylen(rng: &mut Rng) -> usize {
    [16, 24, 32][rng.below(3) as usize]
}

#[test]
fn ecb_cbc_match_openssl() {
    let mut rng = Rng(seed());
    for round in 0..200 {
        let key_len = keylen(&mut rng);
        let key = rng.bytes(key_len);
        let data_len = rng.len() / 16 * 16;
        let data = rng.bytes(data_len);
        let iv: [u8; 16] = rng.bytes(16).try_into().unwrap();
        let want_ecb = ossl("ecb", &key, None, &data, true);
        let want_cbc = ossl("cbc", &key, Some(&iv), &data, true);
        let want_cbc_d = ossl("cbc", &key, Some(&iv), &data, false);
        let cuts: Vec<usize> = rng.splits(data.len() / 16).iter().map(|c| c * 16).collect();
        for b in BACKENDS {
            let Some(aes) = Aes::with_backend(&key, b).unwrap() else {
                continue;
            };
            let what = format!("round {round} len {} {aes:?} cuts {cuts:?}", data.len());
            let mut x = data.clone();
            aes.ecb_encrypt(&mut x).unwrap();
            assert!(x == want_ecb, "ECB encrypt {what}");
            aes.ecb_decrypt(&mut x).unwrap();
            assert!(x == data, "ECB decrypt {what}");
            let (mut x, mut y) = (data.clone(), data.clone());
            let (mut ve, mut vd) = (iv, iv);
            for w in cuts.windows(2) {
                aes.cbc_encrypt(&mut ve, &mut x[w[0]..w[1]]).unwrap();
                aes.cbc_decrypt(&mut vd, &mut y[w[0]..w[1]]).unwrap();
            }
            assert!(x == want_cbc, "CBC encrypt {what}");
            assert!(y == want_cbc_d, "CBC decrypt {what}");
            if !data.is_empty() {
                assert_eq!(&ve[..], &want_cbc[data.len() - 16..], "CBC chaining {what}");
                assert_eq!(
                    &vd[..],
                    &data[data.len() - 16..],
                    "CBC decrypt chaining {what}"
                );
            }
        }
    }
    clear_vector_registers();
}

/// The keystream of `n` blocks from `ctr` with a `bits`-bit counter, built here and
/// encrypted with OpenSSL's ECB.
fn ctr_reference(key: &[u8], ctr: &[u8; 16], bits: u32, data: &[u8]) -> Vec<u8> {
    let mask = if bits == 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let c0 = u128::from_be_bytes(*ctr);
    let n = data.len().div_ceil(16);
    let mut blocks = Vec::with_capacity(16 * n);
    for i in 0..n as u128 {
        let low = (c0 & mask).wrapping_add(i) & mask;
        blocks.extend_from_slice(&((c0 & !mask) | low).to_be_bytes());
    }
    let ks = ossl("ecb", key, None, &blocks, true);
    data.iter().zip(ks).map(|(d, k)| d ^ k).collect()
}

#[test]
fn ctr_matches_openssl_and_wraps_within_its_bits() {
    let mut rng = Rng(seed());
    for round in 0..300 {
        let key_len = keylen(&mut rng);
        let key = rng.bytes(key_len);
        let data_len = rng.len();
        let data = rng.bytes(data_len);
        let mut ctr: [u8; 16] = rng.bytes(16).try_into().unwrap();
        let bits = [8, 16, 32, 64, 128, 1 + rng.below(128) as u32][rng.below(6) as usize];
        // Put the counter a few blocks before its wrap (at `bits` and at 32 bits) often.
        if rng.below(2) == 0 {
            let c = u128::from_be_bytes(ctr);
            let back = rng.below(40) as u128;
            let mask = if bits == 128 {
                u128::MAX
            } else {
                (1u128 << bits) - 1
            };
            let low = if bits > 32 && rng.below(2) == 0 {
                ((c & mask) | 0xffff_ffff).wrapping_sub(back) & mask
            } else {
                mask.wrapping_sub(back) & mask
            };
            ctr = ((c & !mask) | low).to_be_bytes();
        }
        let want = if bits == 128 {
            ossl("ctr", &key, Some(&ctr), &data, true)
        } else {
            ctr_reference(&key, &ctr, bits, &data)
        };
        if bits == 128 {
            assert_eq!(want, ctr_reference(&key, &ctr, 128, &data), "reference");
        }
        let cuts = rng.splits(data.len());
        for b in BACKENDS {
            let Some(aes) = Aes::with_backend(&key, b).unwrap() else {
                continue;
            };
            let mut c = Ctr::new(&aes, &ctr, bits).unwrap();
            let mut x = data.clone();
            for w in cuts.windows(2) {
                c.apply(&mut x[w[0]..w[1]]);
            }
            assert!(
                x == want,
                "CTR round {round} bits {bits} ctr {ctr:02x?} len {} cuts {cuts:?} {aes:?}",
                data.len()
            );
        }
    }
    clear_vector_registers();
}

/// OpenSSL GCM encryption: ciphertext and a `tag_len`-byte tag.
fn ossl_gcm(key: &[u8], iv: &[u8], aad: &[u8], data: &[u8], tag_len: usize) -> (Vec<u8>, Vec<u8>) {
    let mut c = CipherCtx::new().unwrap();
    c.encrypt_init(Some(cipher("gcm", key.len())), None, None)
        .unwrap();
    c.set_iv_length(iv.len()).unwrap();
    c.encrypt_init(None, Some(key), Some(iv)).unwrap();
    c.cipher_update(aad, None).unwrap();
    let mut out = Vec::new();
    c.cipher_update_vec(data, &mut out).unwrap();
    c.cipher_final_vec(&mut out).unwrap();
    let mut tag = vec![0u8; tag_len];
    c.tag(&mut tag).unwrap();
    (out, tag)
}

#[test]
fn gcm_matches_openssl() {
    let mut rng = Rng(seed());
    for round in 0..300 {
        let key_len = keylen(&mut rng);
        let key = rng.bytes(key_len);
        let iv_len = if rng.below(3) == 0 {
            1 + rng.below(80) as usize
        } else {
            12
        };
        let iv = rng.bytes(iv_len);
        let aad_len = if rng.below(3) == 0 {
            0
        } else {
            rng.below(600) as usize
        };
        let aad = rng.bytes(aad_len);
        let data_len = rng.len();
        let data = rng.bytes(data_len);
        let tag_len = 4 + rng.below(13) as usize;
        let (want, want_tag) = ossl_gcm(&key, &iv, &aad, &data, tag_len);
        let acuts = rng.splits(aad.len());
        let cuts = rng.splits(data.len());
        for b in BACKENDS {
            let Some(aes) = Aes::with_backend(&key, b).unwrap() else {
                continue;
            };
            let what = format!(
                "round {round} key {}B iv {iv_len}B aad {}B {acuts:?} data {}B {cuts:?} tag {tag_len} on {aes:?}",
                key.len(),
                aad.len(),
                data.len()
            );
            let gk = GcmKey::new(aes);
            let mut g = Gcm::new(&gk, &iv, tag_len).unwrap();
            for w in acuts.windows(2) {
                g.aad(&aad[w[0]..w[1]]).unwrap();
            }
            let mut x = data.clone();
            for w in cuts.windows(2) {
                g.encrypt_update(&mut x[w[0]..w[1]]).unwrap();
            }
            assert!(x == want, "ciphertext {what}");
            assert_eq!(g.finish().as_bytes(), &want_tag[..], "tag {what}");

            let decrypt = |tag: &[u8]| {
                let mut g = Gcm::new(&gk, &iv, tag_len).unwrap();
                for w in acuts.windows(2) {
                    g.aad(&aad[w[0]..w[1]]).unwrap();
                }
                let mut y = want.clone();
                for w in cuts.windows(2) {
                    g.decrypt_update(&mut y[w[0]..w[1]]).unwrap();
                }
                (y, g.verify(tag))
            };
            let (y, ok) = decrypt(&want_tag);
            assert!(y == data, "plaintext {what}");
            assert_eq!(ok, Ok(()), "verify {what}");
            let mut bad = want_tag.clone();
            let at = rng.below(tag_len as u64) as usize;
            bad[at] ^= 1 << rng.below(8);
            assert_eq!(
                decrypt(&bad).1,
                Err(ModeError::TagMismatch),
                "tampered tag {what}"
            );
            assert_eq!(
                decrypt(&want_tag[..tag_len - 1]).1,
                Err(ModeError::TagMismatch),
                "short tag {what}"
            );
        }
    }
    clear_vector_registers();
}

#[test]
fn key_wrap_matches_openssl() {
    let mut rng = Rng(seed());
    for round in 0..200 {
        let kek_len = keylen(&mut rng);
        let kek = rng.bytes(kek_len);
        let kw_data_len = 8 * (2 + rng.below(40) as usize);
        let kw_data = rng.bytes(kw_data_len);
        let kwp_data_len = 1 + rng.below(300) as usize;
        let kwp_data = rng.bytes(kwp_data_len);
        let want_kw = ossl("kw", &kek, None, &kw_data, true);
        let want_kwp = ossl("kwp", &kek, None, &kwp_data, true);
        for b in BACKENDS {
            let Some(aes) = Aes::with_backend(&kek, b).unwrap() else {
                continue;
            };
            let what = format!("round {round} {aes:?}");
            let mut out = vec![0u8; 400];
            let n = kw::wrap(&aes, &kw_data, &mut out).unwrap();
            assert_eq!(&out[..n], &want_kw[..], "KW {what}");
            let mut back = vec![0u8; 400];
            let m = kw::unwrap(&aes, &want_kw, &mut back).unwrap();
            assert_eq!(&back[..m], &kw_data[..], "KW unwrap {what}");
            let n = kw::wrap_pad(&aes, &kwp_data, &mut out).unwrap();
            assert_eq!(&out[..n], &want_kwp[..], "KWP {what}");
            let m = kw::unwrap_pad(&aes, &want_kwp, &mut back).unwrap();
            assert_eq!(&back[..m], &kwp_data[..], "KWP unwrap {what}");
            let mut bad = want_kwp.clone();
            let at = rng.below(bad.len() as u64) as usize;
            bad[at] ^= 1 << rng.below(8);
            assert_eq!(
                kw::unwrap_pad(&aes, &bad, &mut back),
                Err(ModeError::UnwrapFailed),
                "{what}"
            );
        }
    }
    clear_vector_registers();
}
