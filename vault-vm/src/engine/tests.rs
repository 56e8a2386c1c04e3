//! Unit tests: spec parsing, geometry and argument checks, and every backend against the
//! others (soft vs AES-NI vs VAES) on random data, including XTS with 2 × 192-bit keys.

extern crate std;

use std::format;
use std::string::ToString;
use std::vec;
use std::vec::Vec;

use super::*;

const ALL_SPECS: [&str; 6] = [
    "aes-xts-plain64",
    "aes-xts-plain",
    "aes-cbc-essiv:sha256",
    "aes-cbc-plain64",
    "aes-cbc-plain",
    "aes-ecb",
];

#[test]
fn parse_and_display_round_trip() {
    for s in ALL_SPECS {
        let spec = CipherSpec::parse(s).unwrap();
        assert_eq!(spec.to_string(), s);
    }
    let capi = [
        ("capi:xts(aes)-plain64", "aes-xts-plain64"),
        ("capi:xts(aes)-plain", "aes-xts-plain"),
        ("capi:cbc(aes)-essiv:sha256", "aes-cbc-essiv:sha256"),
        ("capi:cbc(aes)-plain64", "aes-cbc-plain64"),
        ("capi:cbc(aes)-plain", "aes-cbc-plain"),
        ("capi:ecb(aes)", "aes-ecb"),
        ("aes-ecb-null", "aes-ecb"),
    ];
    for (a, b) in capi {
        assert_eq!(
            CipherSpec::parse(a).unwrap(),
            CipherSpec::parse(b).unwrap(),
            "{a}"
        );
    }
    let x = CipherSpec::parse("aes-xts-plain64").unwrap();
    assert_eq!((x.mode, x.iv), (Mode::Xts, IvMode::Plain64));
}

#[test]
fn parse_rejects_unsupported() {
    for s in [
        "",
        "aes",
        "aes-xts",
        "aes-xts-essiv:sha256",
        "aes-xts-benbi",
        "aes-cbc",
        "aes-cbc-essiv:sha1",
        "aes-cbc-lmk",
        "aes-ecb-plain64",
        "aes-ctr-plain64",
        "twofish-xts-plain64",
        "serpent-cbc-plain",
        "AES-XTS-PLAIN64",
        "capi:xts(aes)",
        "capi:xts(twofish)-plain64",
        "capi:essiv(cbc(aes),sha256)-essiv:sha256",
        "capi:ecb(aes)-plain64",
        "aes-xts-plain64 ",
    ] {
        assert_eq!(
            CipherSpec::parse(s),
            Err(EngineError::UnsupportedSpec),
            "{s:?}"
        );
    }
}

#[test]
fn key_lengths() {
    let xts = CipherSpec::parse("aes-xts-plain64").unwrap();
    let cbc = CipherSpec::parse("aes-cbc-plain64").unwrap();
    for n in [32, 48, 64] {
        assert_eq!(SectorCipher::new(xts, &vec![1; n]).unwrap().key_len(), n);
    }
    for n in [0, 16, 24, 31, 33, 65] {
        assert_eq!(
            SectorCipher::new(xts, &vec![1; n]).unwrap_err(),
            EngineError::BadKeyLength(n)
        );
    }
    for n in [16, 24, 32] {
        assert!(SectorCipher::new(cbc, &vec![1; n]).is_ok());
    }
    for n in [0, 15, 48, 64] {
        assert_eq!(
            SectorCipher::new(cbc, &vec![1; n]).unwrap_err(),
            EngineError::BadKeyLength(n)
        );
    }
}

#[test]
fn geometry_and_buffer_checks() {
    assert_eq!(
        Geometry::new(256, false, 0),
        Err(EngineError::BadSectorSize(256))
    );
    assert_eq!(
        Geometry::new(8192, false, 0),
        Err(EngineError::BadSectorSize(8192))
    );
    assert_eq!(
        Geometry::new(4096, false, 4),
        Err(EngineError::MisalignedSector(4))
    );
    assert!(Geometry::new(4096, true, 16).is_ok());
    let c = SectorCipher::new(CipherSpec::parse("aes-xts-plain64").unwrap(), &[7; 64]).unwrap();
    let g = Geometry::new(4096, false, 0).unwrap();
    let mut buf = vec![0u8; 4096 + 512];
    assert_eq!(
        c.encrypt(&g, 0, &mut buf),
        Err(EngineError::BadLength(4608))
    );
    assert_eq!(
        c.decrypt(&g, 3, &mut buf[..4096]),
        Err(EngineError::MisalignedSector(3))
    );
    assert_eq!(c.encrypt(&g, 8, &mut []), Ok(()));
    let bad = Geometry {
        sector_size: 100,
        iv_large_sectors: false,
        iv_offset: 0,
    };
    assert_eq!(
        c.encrypt(&bad, 0, &mut buf),
        Err(EngineError::BadSectorSize(100))
    );
}

#[test]
fn debug_shows_no_key() {
    let key: Vec<u8> = (0xa0..0xe0).collect();
    let c = SectorCipher::new(CipherSpec::parse("aes-xts-plain64").unwrap(), &key).unwrap();
    let d = format!("{c:?}");
    assert!(d.contains("aes-xts-plain64") && d.contains("512"), "{d}");
    for w in key.windows(2) {
        assert!(!d.contains(&format!("{:02x}{:02x}", w[0], w[1])), "{d}");
        assert!(!d.contains(&format!("{}, {}", w[0], w[1])), "{d}");
    }
}

#[test]
fn errors_display() {
    assert!(EngineError::UnsupportedSpec
        .to_string()
        .contains("aes-xts-plain64"));
    assert_eq!(
        EngineError::BadKeyLength(48).to_string(),
        "key length of 384 bits does not fit the cipher"
    );
}

fn pseudo_random(seed: u64, n: usize) -> Vec<u8> {
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Every backend this CPU has gives the same bytes as the soft backend, both directions,
/// for every spec, key size, sector size, IV flavour and buffer length 1..=20 sectors.
#[test]
fn backends_agree() {
    let backends: Vec<Backend> = [Backend::AesNi, Backend::Vaes256, Backend::Vaes512]
        .into_iter()
        .filter(|b| b.is_available())
        .collect();
    std::println!("hardware backends here: {backends:?}");
    let mut seed = 1;
    for s in ALL_SPECS {
        let spec = CipherSpec::parse(s).unwrap();
        let klens: &[usize] = if spec.mode == Mode::Xts {
            &[32, 48, 64]
        } else {
            &[16, 24, 32]
        };
        for &klen in klens {
            for ss in [512u32, 1024, 2048, 4096] {
                for (large, off) in [(false, 0u64), (true, 8 * 77), (false, u64::MAX - 7)] {
                    seed += 1;
                    let key = pseudo_random(seed, klen);
                    let geom = Geometry::new(ss, large, off).unwrap();
                    let soft = SectorCipher::with_backend(spec, &key, Backend::Soft)
                        .unwrap()
                        .unwrap();
                    let hw: Vec<SectorCipher> = backends
                        .iter()
                        .map(|b| SectorCipher::with_backend(spec, &key, *b).unwrap().unwrap())
                        .collect();
                    for nsec in [1usize, 2, 7, 8, 9, 12, 17, 40] {
                        let data = pseudo_random(seed * 31 + nsec as u64, nsec * ss as usize);
                        let sector = (seed * 1000) & !7;
                        let mut want_e = data.clone();
                        soft.encrypt(&geom, sector, &mut want_e).unwrap();
                        let mut want_d = data.clone();
                        soft.decrypt(&geom, sector, &mut want_d).unwrap();
                        assert_ne!(want_e, data);
                        let mut back = want_e.clone();
                        soft.decrypt(&geom, sector, &mut back).unwrap();
                        assert_eq!(back, data, "{s} soft round trip");
                        for c in &hw {
                            let mut e = data.clone();
                            c.encrypt(&geom, sector, &mut e).unwrap();
                            assert!(
                                e == want_e,
                                "{s} k{klen} ss{ss} n{nsec} enc on {}",
                                c.backend_name()
                            );
                            let mut d = data.clone();
                            c.decrypt(&geom, sector, &mut d).unwrap();
                            assert!(
                                d == want_d,
                                "{s} k{klen} ss{ss} n{nsec} dec on {}",
                                c.backend_name()
                            );
                        }
                    }
                }
            }
        }
    }
}

#[test]
fn best_backend_is_available() {
    assert!(Backend::best().is_available());
    let f = cpu_features();
    assert_eq!(f.aesni, Backend::AesNi.is_available());
    assert_eq!(f.vaes256, Backend::Vaes256.is_available());
    assert_eq!(f.vaes512, Backend::Vaes512.is_available());
    // A CPU that runs the 512-bit path runs the 256-bit one (VAES on ymm needs only AVX2
    // on top); the order of `best` keeps the 512-bit path first.
    if f.vaes512 {
        assert!(f.vaes256, "VAES with AVX-512 but not with AVX2");
        assert_eq!(Backend::best(), Backend::Vaes512);
    } else if f.vaes256 {
        assert_eq!(Backend::best(), Backend::Vaes256);
    }
    let c = SectorCipher::new(CipherSpec::parse("aes-ecb").unwrap(), &[0; 16]).unwrap();
    assert_eq!(c.backend(), Backend::best());
}
