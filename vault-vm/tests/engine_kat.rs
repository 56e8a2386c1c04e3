//! Known-answer tests for the sector cipher engine, run on every backend this CPU has:
//! IEEE 1619-2007 XTS-AES vectors (with data unit sequence numbers), FIPS-197 Appendix C
//! and NIST SP 800-38A ECB/CBC vectors.

use vault_vm::engine::{Backend, CipherSpec, Geometry, SectorCipher};

fn hex(s: &str) -> Vec<u8> {
    let s: Vec<u8> = s.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    s.chunks(2)
        .map(|p| u8::from_str_radix(core::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

fn hex_str(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const BACKENDS: [Backend; 4] = [
    Backend::Soft,
    Backend::AesNi,
    Backend::Vaes256,
    Backend::Vaes512,
];

/// Every cipher this CPU can run for `spec` and `key`, one per backend.
fn ciphers(spec: &str, key: &[u8]) -> Vec<SectorCipher> {
    let spec = CipherSpec::parse(spec).unwrap();
    let v: Vec<SectorCipher> = BACKENDS
        .iter()
        .filter_map(|b| SectorCipher::with_backend(spec, key, *b).unwrap())
        .collect();
    assert!(!v.is_empty());
    v
}

/// Encrypts `pt` placed at the start of a whole-sector buffer and checks the prefix
/// against `ct`, then decrypts back. Valid for XTS, ECB and CBC: all are prefix-stable.
fn check(spec: &str, key: &str, geom: Geometry, sector: u64, pt: &[u8], ct: &[u8]) {
    let key = hex(key);
    let ss = geom.sector_size as usize;
    let len = pt.len().div_ceil(ss) * ss;
    for c in ciphers(spec, &key) {
        let mut buf = vec![0u8; len];
        buf[..pt.len()].copy_from_slice(pt);
        let orig = buf.clone();
        c.encrypt(&geom, sector, &mut buf).unwrap();
        assert_eq!(
            hex_str(&buf[..ct.len()]),
            hex_str(ct),
            "{spec} encrypt on {}",
            c.backend_name()
        );
        c.decrypt(&geom, sector, &mut buf).unwrap();
        assert_eq!(buf, orig, "{spec} decrypt on {}", c.backend_name());
    }
}

fn g512() -> Geometry {
    Geometry::new(512, false, 0).unwrap()
}

const XTS_V4_KEY: &str = "27182818284590452353602874713526 31415926535897932384626433832795";
const XTS_V10_KEY: &str = "2718281828459045235360287471352662497757247093699959574966967627
                           3141592653589793238462643383279502884197169399375105820974944592";

fn pt512() -> Vec<u8> {
    (0..512).map(|i| i as u8).collect()
}

const XTS_V4_CT: &str = "27a7479befa1d476489f308cd4cfa6e2a96e4bbe3208ff25287dd3819616e89c
c78cf7f5e543445f8333d8fa7f56000005279fa5d8b5e4ad40e736ddb4d35412328063fd2aab53e5ea1e0a9f332500a5
df9487d07a5c92cc512c8866c7e860ce93fdf166a24912b422976146ae20ce846bb7dc9ba94a767aaef20c0d61ad0265
5ea92dc4c4e41a8952c651d33174be51a10c421110e6d81588ede82103a252d8a750e8768defffed9122810aaeb99f91
72af82b604dc4b8e51bcb08235a6f4341332e4ca60482a4ba1a03b3e65008fc5da76b70bf1690db4eae29c5f1badd03c
5ccf2a55d705ddcd86d449511ceb7ec30bf12b1fa35b913f9f747a8afd1b130e94bff94effd01a91735ca1726acd0b19
7c4e5b03393697e126826fb6bbde8ecc1e08298516e2c9ed03ff3c1b7860f6de76d4cecd94c8119855ef5297ca67e9f3
e7ff72b1e99785ca0a7e7720c5b36dc6d72cac9574c8cbbc2f801e23e56fd344b07f22154beba0f08ce8891e643ed995
c94d9a69c9f1b5f499027a78572aeebd74d20cc39881c213ee770b1010e4bea718846977ae119f7a023ab58cca0ad752
afe656bb3c17256a9f6e9bf19fdd5a38fc82bbe872c5539edb609ef4f79c203ebb140f2e583cb2ad15b4aa5b655016a8
449277dbd477ef2c8d6c017db738b18deb4a427d1923ce3ff262735779a418f20a282df920147beabe421ee5319d0568";

const XTS_V10_CT: &str = "1c3b3a102f770386e4836c99e370cf9bea00803f5e482357a4ae12d414a3e63b
5d31e276f8fe4a8d66b317f9ac683f44680a86ac35adfc3345befecb4bb188fd5776926c49a3095eb108fd1098baec70
aaa66999a72a82f27d848b21d4a741b0c5cd4d5fff9dac89aeba122961d03a757123e9870f8acf1000020887891429ca
2a3e7a7d7df7b10355165c8b9a6d0a7de8b062c4500dc4cd120c0f7418dae3d0b5781c34803fa75421c790dfe1de1834
f280d7667b327f6c8cd7557e12ac3a0f93ec05c52e0493ef31a12d3d9260f79a289d6a379bc70c50841473d1a8cc81ec
583e9645e07b8d9670655ba5bbcfecc6dc3966380ad8fecb17b6ba02469a020a84e18e8f84252070c13e9f1f289be54f
bc481457778f616015e1327a02b140f1505eb309326d68378f8374595c849d84f4c333ec4423885143cb47bd71c5edae
9be69a2ffeceb1bec9de244fbe15992b11b77c040f12bd8f6a975a44a0f90c29a9abc3d4d893927284c58754cce29452
9f8614dcd2aba991925fedc4ae74ffac6e333b93eb4aff0479da9a410e4450e0dd7ae4c6e2910900575da401fc07059f
645e8b7e9bfdef33943054ff84011493c27b3429eaedb4ed5376441a77ed43851ad77f16f541dfd269d50d6a5f14fb0a
ab1cbb4c1550be97f7ab4066193c4caa773dad38014bd2092fa755c824bb5e54c4f36ffda9fcea70b9c6e693e148c151";

#[test]
fn ieee1619_vector1_zero_key() {
    let ct = hex("917cf69ebd68b2ec9b9fe9a3eadda692cd43d2f59598ed858c02c2652fbf922e");
    check(
        "aes-xts-plain64",
        &"0".repeat(64),
        g512(),
        0,
        &[0u8; 32],
        &ct,
    );
}

#[test]
fn ieee1619_vectors2_3_seq_0x3333333333() {
    // Data unit 0x3333333333 needs the 64-bit IV: plain64, not plain.
    let pt = [0x44u8; 32];
    let k2 = "11111111111111111111111111111111 22222222222222222222222222222222";
    let k3 = "fffefdfcfbfaf9f8f7f6f5f4f3f2f1f0 22222222222222222222222222222222";
    let c2 = hex("c454185e6a16936e39334038acef838bfb186fff7480adc4289382ecd6d394f0");
    let c3 = hex("af85336b597afc1a900b2eb21ec949d292df4c047e0b21532186a5971a227a89");
    check("aes-xts-plain64", k2, g512(), 0x3333333333, &pt, &c2);
    check("capi:xts(aes)-plain64", k3, g512(), 0x3333333333, &pt, &c3);
    // The same data unit through iv_offset.
    let g = Geometry::new(512, false, 0x3333333333).unwrap();
    check("aes-xts-plain64", k2, g, 0, &pt, &c2);
}

#[test]
fn ieee1619_vector4_aes128_512_bytes() {
    check(
        "aes-xts-plain64",
        XTS_V4_KEY,
        g512(),
        0,
        &pt512(),
        &hex(XTS_V4_CT),
    );
    check(
        "aes-xts-plain",
        XTS_V4_KEY,
        g512(),
        0,
        &pt512(),
        &hex(XTS_V4_CT),
    );
}

#[test]
fn ieee1619_vector10_aes256_seq_0xff() {
    let ct = hex(XTS_V10_CT);
    check("aes-xts-plain64", XTS_V10_KEY, g512(), 0xff, &pt512(), &ct);
    check("aes-xts-plain", XTS_V10_KEY, g512(), 0xff, &pt512(), &ct);
    let g = Geometry::new(512, false, 0xff).unwrap();
    check("aes-xts-plain64", XTS_V10_KEY, g, 0, &pt512(), &ct);
    // 4 KiB sectors with iv_large_sectors: sector 0xff * 8 has data unit 0xff.
    let g = Geometry::new(4096, true, 0).unwrap();
    check("aes-xts-plain64", XTS_V10_KEY, g, 0xff * 8, &pt512(), &ct);
    // plain truncates to 32 bits: data unit 2^32 + 0xff gives the same result.
    check(
        "aes-xts-plain",
        XTS_V10_KEY,
        g512(),
        (1 << 32) + 0xff,
        &pt512(),
        &ct,
    );
}

#[test]
fn fips197_appendix_c() {
    let pt = hex("00112233445566778899aabbccddeeff");
    for (key, ct) in [
        (
            "000102030405060708090a0b0c0d0e0f",
            "69c4e0d86a7b0430d8cdb78070b4c55a",
        ),
        (
            "000102030405060708090a0b0c0d0e0f1011121314151617",
            "dda97ca4864cdfe06eaf70a0ec0d7191",
        ),
        (
            "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f",
            "8ea2b7ca516745bfeafc49904b496089",
        ),
    ] {
        check("aes-ecb", key, g512(), 0, &pt, &hex(ct));
    }
}

const SP800_38A_PT: &str = "6bc1bee22e409f96e93d7e117393172a ae2d8a571e03ac9c9eb76fac45af8e51
                            30c81c46a35ce411e5fbc1191a0a52ef f69f2445df4f9b17ad2b417be66c3710";
const K128: &str = "2b7e151628aed2a6abf7158809cf4f3c";
const K192: &str = "8e73b0f7da0e6452c810f32b809079e562f8ead2522c6b7b";
const K256: &str = "603deb1015ca71be2b73aef0857d77811f352c073b6108d72d9810a30914dff4";

#[test]
fn sp800_38a_ecb() {
    let pt = hex(SP800_38A_PT);
    for (key, ct) in [
        (
            K128,
            "3ad77bb40d7a3660a89ecaf32466ef97 f5d3d58503b9699de785895a96fdbaaf
             43b1cd7f598ece23881b00e3ed030688 7b0c785e27e8ad3f8223207104725dd4",
        ),
        (
            K192,
            "bd334f1d6e45f25ff712a214571fa5cc 974104846d0ad3ad7734ecb3ecee4eef
             ef7afd2270e2e60adce0ba2face6444e 9a4b41ba738d6c72fb16691603c18e0e",
        ),
        (
            K256,
            "f3eed1bdb5d2a03c064b5a7e3db181f8 591ccb10d410ed26dc5ba74a31362870
             b6ed21b99ca6f4f9f153e7b1beafed1d 23304b7a39f9f3ff067d8d8f9e24ecc7",
        ),
    ] {
        check("aes-ecb", key, g512(), 0, &pt, &hex(ct));
        let g = Geometry::new(4096, false, 0).unwrap();
        check("capi:ecb(aes)", key, g, 8, &pt, &hex(ct));
    }
}

#[test]
fn sp800_38a_cbc() {
    // The vectors use IV 000102..0f; the engine's plain64 IV of sector s is le64(s).
    // CBC with IV a on P1 equals CBC with IV b on P1 ^ a ^ b, so shift the first block.
    let sector: u64 = 0x0123_4567_89ab_cdef;
    let kat_iv = hex("000102030405060708090a0b0c0d0e0f");
    let mut iv = [0u8; 16];
    iv[..8].copy_from_slice(&sector.to_le_bytes());
    let mut pt = hex(SP800_38A_PT);
    for i in 0..16 {
        pt[i] ^= kat_iv[i] ^ iv[i];
    }
    for (key, ct) in [
        (
            K128,
            "7649abac8119b246cee98e9b12e9197d 5086cb9b507219ee95db113a917678b2
             73bed6b8e3c1743b7116e69e22229516 3ff1caa1681fac09120eca307586e1a7",
        ),
        (
            K192,
            "4f021db243bc633d7178183a9fa071e8 b4d9ada9ad7dedf4e5e738763f69145a
             571b242012fb7ae07fa9baac3df102e0 08b0e27988598881d920a9e64f5615cd",
        ),
        (
            K256,
            "f58c4c04d6e5f1ba779eabfb5f7bfbd6 9cfc4e967edb808d679f777bc6702c7d
             39f23369a9d9bacfa530e26304231461 b2eb05e2c39be9fcda6c19078c6a9d1b",
        ),
    ] {
        check("aes-cbc-plain64", key, g512(), sector, &pt, &hex(ct));
        check("capi:cbc(aes)-plain64", key, g512(), sector, &pt, &hex(ct));
    }
}
