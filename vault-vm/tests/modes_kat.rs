//! Known-answer tests of the generic modes on every backend this CPU runs: SP 800-38A
//! (ECB, CBC, CTR), the GCM specification's test cases (including the 60-byte message
//! with additional data, and 8- and 60-byte IVs), RFC 3394 section 4 and RFC 5649.

use vault_vm::engine::generic::{kw, Aes, Ctr, Gcm, GcmKey, ModeError};
use vault_vm::engine::Backend;

fn h(s: &str) -> Vec<u8> {
    let s: String = s.split_whitespace().collect();
    (0..s.len() / 2)
        .map(|i| u8::from_str_radix(&s[2 * i..2 * i + 2], 16).unwrap())
        .collect()
}

/// Every backend this CPU can run, with the key expanded for it.
fn keys(key: &[u8]) -> Vec<Aes> {
    [
        Backend::Soft,
        Backend::AesNi,
        Backend::Vaes256,
        Backend::Vaes512,
    ]
    .into_iter()
    .filter_map(|b| Aes::with_backend(key, b).unwrap())
    .collect()
}

const PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                  30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";
const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const K192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
const K256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";

#[test]
fn sp800_38a_ecb_cbc_ctr() {
    let cases = [
        (
            K128,
            "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf
             43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4",
            "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
            "874d6191b620e3261bef6864990db6ce 9806f66b7970fdff8617187bb9fffdff
             5ae4df3edbd5d35e5b4f09020db03eab 1e031dda2fbe03d1792170a0f3009cee",
        ),
        (
            K192,
            "bd334f1d6e45f25ff712a214571fa5cc 974104846d0ad3ad7734ecb3ecee4eef
             ef7afd2270e2e60adce0ba2face6444e 9a4b41ba738d6c72fb16691603c18e0e",
            "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
             571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
            "1abc932417521ca24f2b0459fe7e6e0b 090339ec0aa6faefd5ccc2c6f4ce8e94
             1e36b26bd1ebc670d1bd1d665620abf7 4f78a7f6d29809585a97daec58c6b050",
        ),
        (
            K256,
            "f3eed1bdb5d2a03c064b5a7e3db181f8 591ccb10d410ed26dc5ba74a31362870
             b6ed21b99ca6f4f9f153e7b1beafed1d 23304b7a39f9f3ff067d8d8f9e24ecc7",
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
            "601ec313775789a5b7a7f504bbf3d228 f443e3ca4d62b59aca84e990cacaf5c5
             2b0930daa23de94ce87017ba2d84988d dfc9c58db67aada613c2dd08457941a6",
        ),
    ];
    let iv: [u8; 16] = h("000102030405060708090a0b0c0d0e0f").try_into().unwrap();
    let ctr0: [u8; 16] = h("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff").try_into().unwrap();
    let pt = h(PT);
    for (key, ecb, cbc, ctr) in cases {
        for aes in keys(&h(key)) {
            let what = format!("{aes:?}");
            let mut b = pt.clone();
            aes.ecb_encrypt(&mut b).unwrap();
            assert_eq!(b, h(ecb), "ECB {what}");
            aes.ecb_decrypt(&mut b).unwrap();
            assert_eq!(b, pt, "ECB decrypt {what}");

            let mut b = pt.clone();
            let mut v = iv;
            aes.cbc_encrypt(&mut v, &mut b[..32]).unwrap();
            aes.cbc_encrypt(&mut v, &mut b[32..]).unwrap();
            assert_eq!(b, h(cbc), "CBC {what}");
            assert_eq!(&v[..], &h(cbc)[48..], "CBC chaining value {what}");
            let mut v = iv;
            aes.cbc_decrypt(&mut v, &mut b[..16]).unwrap();
            aes.cbc_decrypt(&mut v, &mut b[16..]).unwrap();
            assert_eq!(b, pt, "CBC decrypt {what}");

            let mut b = pt.clone();
            let mut c = Ctr::new(&aes, &ctr0, 128).unwrap();
            let (x, y) = b.split_at_mut(21);
            c.apply(x);
            c.apply(y);
            assert_eq!(b, h(ctr), "CTR {what}");
        }
    }
}

/// (key, iv, plaintext, aad, ciphertext, tag) from "The Galois/Counter Mode of Operation".
const GCM: [(&str, &str, &str, &str, &str, &str); 7] = [
    // Test case 2.
    (
        "00000000000000000000000000000000",
        "000000000000000000000000",
        "00000000000000000000000000000000",
        "",
        "0388dace60b6a392f328c2b971b2fe78",
        "ab6e47d42cec13bdf53a67b21257bddf",
    ),
    // Test case 3: 64 bytes, no AAD.
    (
        "feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b391aafd255",
        "",
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091473f5985",
        "4d5c2af327cd64a62cf35abd2ba6fab4",
    ),
    // Test case 4: 60 bytes with 20 bytes of AAD.
    (
        "feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "42831ec2217774244b7221b784d0d49ce3aa212f2c02a4e035c17e2329aca12e21d514b25466931c7d8f6a5aac84aa051ba30b396a0aac973d58e091",
        "5bc94fbc3221a5db94fae95ae7121a47",
    ),
    // Test case 5: 8-byte IV.
    (
        "feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbad",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "61353b4c2806934a777ff51fa22a4755699b2a714fcdc6f83766e5f97b6c742373806900e49f24b22b097544d4896b424989b5e1ebac0f07c23f4598",
        "3612d2e79e3b0785561be14aaca2fccb",
    ),
    // Test case 6: 60-byte IV.
    (
        "feffe9928665731c6d6a8f9467308308",
        "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "8ce24998625615b603a033aca13fb894be9112a5c3a211a8ba262a3cca7e2ca701e4a9a4fba43c90ccdcb281d48c7c6fd62875d2aca417034c34aee5",
        "619cc5aefffe0bfa462af43c1699d050",
    ),
    // Test case 16: AES-256, 60 bytes with AAD.
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "cafebabefacedbaddecaf888",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "522dc1f099567d07f47f37a32a84427d643a8cdcbfe5c0c97598a2bd2555d1aa8cb08e48590dbb3da7b08b1056828838c5f61e6393ba7a0abcc9f662",
        "76fc6ece0f4e1768cddf8853bb2d551b",
    ),
    // Test case 18: AES-256, 60-byte IV.
    (
        "feffe9928665731c6d6a8f9467308308feffe9928665731c6d6a8f9467308308",
        "9313225df88406e555909c5aff5269aa6a7a9538534f7da1e4c303d2a318a728c3c0c95156809539fcf0e2429a6b525416aedbf5a0de6a57a637b39b",
        "d9313225f88406e5a55909c5aff5269a86a7a9531534f7da2e4c303d8a318a721c3c0c95956809532fcf0e2449a6b525b16aedf5aa0de657ba637b39",
        "feedfacedeadbeeffeedfacedeadbeefabaddad2",
        "5a8def2f0c9e53f1f75d7853659e2a20eeb2b22aafde6419a058ab4f6f746bf40fc0c3b780f244452da3ebf1c5d82cdea2418997200ef82e44ae7e3f",
        "a44a8266ee1c8eb0c8b5d4cf5ae9f19a",
    ),
];

#[test]
fn gcm_spec_test_cases() {
    for (i, (key, iv, pt, aad, ct, tag)) in GCM.iter().enumerate() {
        let (iv, pt, aad, ct, tag) = (h(iv), h(pt), h(aad), h(ct), h(tag));
        for aes in keys(&h(key)) {
            let what = format!("case {i} on {aes:?}");
            let gk = GcmKey::new(aes);
            let mut b = pt.clone();
            let mut g = Gcm::new(&gk, &iv, 16).unwrap();
            g.aad(&aad).unwrap();
            g.encrypt_update(&mut b).unwrap();
            assert_eq!(b, ct, "ciphertext {what}");
            assert_eq!(g.finish().as_bytes(), &tag[..], "tag {what}");

            let mut g = Gcm::new(&gk, &iv, 12).unwrap();
            g.aad(&aad).unwrap();
            g.decrypt_update(&mut b).unwrap();
            assert_eq!(b, pt, "plaintext {what}");
            g.verify(&tag[..12]).unwrap();

            let mut bad = tag.clone();
            bad[0] ^= 1;
            let mut g = Gcm::new(&gk, &iv, 16).unwrap();
            g.aad(&aad).unwrap();
            g.decrypt_update(&mut ct.clone()).unwrap();
            assert_eq!(g.verify(&bad), Err(ModeError::TagMismatch), "{what}");
        }
    }
}

#[test]
fn rfc3394_section4() {
    let data128 = h("00112233445566778899AABBCCDDEEFF");
    let data256 = h("00112233445566778899AABBCCDDEEFF000102030405060708090A0B0C0D0E0F");
    let k = |n: usize| (0..n as u8).collect::<Vec<u8>>();
    let cases = [
        (
            k(16),
            &data128,
            "1FA68B0A8112B447 AEF34BD8FB5A7B82 9D3E862371D2CFE5",
        ),
        (
            k(24),
            &data128,
            "96778B25AE6CA435 F92B5B97C050AED2 468AB8A17AD84E5D",
        ),
        (
            k(32),
            &data128,
            "64E8C3F9CE0F5BA2 63E9777905818A2A 93C8191E7D6E8AE7",
        ),
        (
            k(32),
            &data256,
            "28C9F404C4B810F4 CBCCB35CFB87F826 3F5786E2D80ED326 CBC7F0E71A99F43B FB988B9B7A02DD21",
        ),
    ];
    for (kek, data, want) in cases {
        for aes in keys(&kek) {
            let mut out = [0u8; 48];
            let n = kw::wrap(&aes, data, &mut out).unwrap();
            assert_eq!(&out[..n], &h(want)[..], "{aes:?}");
            let mut back = [0u8; 40];
            let m = kw::unwrap(&aes, &out[..n], &mut back).unwrap();
            assert_eq!(&back[..m], &data[..]);
            let mut bad = out;
            bad[n - 1] ^= 0x80;
            assert_eq!(
                kw::unwrap(&aes, &bad[..n], &mut back),
                Err(ModeError::UnwrapFailed)
            );
            assert!(back.iter().all(|&x| x == 0), "output wiped on failure");
        }
    }
}

#[test]
fn rfc5649_section6() {
    let kek = h("5840df6e29b02af1 ab493b705bf16ea1 ae8338f4dcc176a8");
    let cases = [
        (
            "c37b7e6492584340 bed1220780894115 5068f738",
            "138bdeaa9b8fa7fc 61f97742e72248ee 5ae6ae5360d1ae6a 5f54f373fa543b6a",
        ),
        ("466f7250617369", "afbeb0f07dfbf541 9200f2ccb50bb24f"),
    ];
    for (key, want) in cases {
        let (key, want) = (h(key), h(want));
        for aes in keys(&kek) {
            let mut out = [0u8; 40];
            let n = kw::wrap_pad(&aes, &key, &mut out).unwrap();
            assert_eq!(n, kw::wrap_pad_len(key.len()));
            assert_eq!(&out[..n], &want[..], "{aes:?}");
            let mut back = [0u8; 32];
            let m = kw::unwrap_pad(&aes, &want, &mut back).unwrap();
            assert_eq!(&back[..m], &key[..]);
            let mut bad = want.clone();
            bad[3] ^= 4;
            assert_eq!(
                kw::unwrap_pad(&aes, &bad, &mut back),
                Err(ModeError::UnwrapFailed)
            );
        }
    }
}

#[test]
fn argument_checks() {
    assert_eq!(Aes::new(&[0; 20]).unwrap_err(), ModeError::BadKeyLength(20));
    let aes = Aes::new(&[7; 16]).unwrap();
    assert_eq!(
        aes.ecb_encrypt(&mut [0; 17]),
        Err(ModeError::NotWholeBlocks(17))
    );
    assert_eq!(
        aes.cbc_decrypt(&mut [0; 16], &mut [0; 15]),
        Err(ModeError::NotWholeBlocks(15))
    );
    assert_eq!(
        Ctr::new(&aes, &[0; 16], 0).unwrap_err(),
        ModeError::BadCounterBits(0)
    );
    assert_eq!(
        Ctr::new(&aes, &[0; 16], 129).unwrap_err(),
        ModeError::BadCounterBits(129)
    );
    let gk = GcmKey::new(aes);
    assert_eq!(
        Gcm::new(&gk, &[0; 12], 3).unwrap_err(),
        ModeError::BadTagLength(3)
    );
    assert_eq!(Gcm::new(&gk, &[], 16).unwrap_err(), ModeError::EmptyIv);
    let mut g = Gcm::new(&gk, &[0; 12], 16).unwrap();
    g.encrypt_update(&mut [0; 3]).unwrap();
    assert_eq!(g.aad(b"late"), Err(ModeError::AadAfterData));
    let dbg = format!("{gk:?}");
    assert!(
        dbg.contains("GcmKey") && !dbg.contains("pw:") && !dbg.contains(" h:"),
        "{dbg}"
    );
    let aes = gk.aes();
    assert_eq!(
        kw::wrap(aes, &[0; 8], &mut [0; 16]),
        Err(ModeError::BadWrapLength(8))
    );
    assert_eq!(
        kw::wrap(aes, &[0; 16], &mut [0; 16]),
        Err(ModeError::BufferTooSmall(24))
    );
    assert_eq!(
        kw::unwrap_pad(aes, &[0; 12], &mut [0; 16]),
        Err(ModeError::BadWrapLength(12))
    );
}
