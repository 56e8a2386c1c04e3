//! The recovered volume key equals `cryptsetup luksDump --dump-volume-key` for every
//! format, cipher, hash, KDF, key size and sector size cryptsetup offers here.

mod common;
use common::*;

const PASS: &[u8] = b"correct horse battery staple";

fn check(name: &str, args: &[&str]) {
    if !need("cryptsetup", name) {
        return;
    }
    let d = tmp();
    let img = luks_format(d.path(), "img", PASS, args);
    let before = sha256_file(&img);
    let want = cryptsetup_volume_key(d.path(), &img, PASS);
    let (slot, got) = our_volume_key(&img, PASS, None);
    assert_eq!(slot, 0);
    assert_eq!(got, want, "{name}: volume key differs from cryptsetup's");
    // Through the CLI as well, passphrase on piped stdin (up to the newline).
    let mut input = PASS.to_vec();
    input.extend_from_slice(b"\ntrailing garbage");
    let (rc, out, err) = vs(
        &["-v", "open", "--test-passphrase", img.to_str().unwrap()],
        Some(&input),
    );
    assert_eq!(rc, 0, "{name}: {out}{err}");
    assert!(out.contains("Key slot 0 unlocked."), "{out}");
    assert_eq!(sha256_file(&img), before, "{name}: image changed");
}

const PB1: &[&str] = &["--pbkdf-force-iterations", "1000"];

fn with(base: &[&str], extra: &[&str]) -> Vec<String> {
    base.iter().chain(extra).map(|s| s.to_string()).collect()
}

fn check_owned(name: &str, args: Vec<String>) {
    let v: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    check(name, &v);
}

#[test]
fn luks1_xts_256() {
    check_owned(
        "luks1 xts 256",
        with(
            PB1,
            &[
                "--type",
                "luks1",
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "256",
                "--hash",
                "sha256",
            ],
        ),
    );
}

#[test]
fn luks1_xts_512() {
    check_owned(
        "luks1 xts 512",
        with(
            PB1,
            &[
                "--type",
                "luks1",
                "--cipher",
                "aes-xts-plain64",
                "--key-size",
                "512",
            ],
        ),
    );
}

#[test]
fn luks1_cbc_essiv() {
    check_owned(
        "luks1 cbc-essiv",
        with(
            PB1,
            &[
                "--type",
                "luks1",
                "--cipher",
                "aes-cbc-essiv:sha256",
                "--key-size",
                "256",
            ],
        ),
    );
}

#[test]
fn luks1_sha1() {
    check_owned(
        "luks1 sha1",
        with(PB1, &["--type", "luks1", "--hash", "sha1"]),
    );
}

#[test]
fn luks1_sha512_cbc_plain64_128() {
    check_owned(
        "luks1 sha512 cbc-plain64 128",
        with(
            PB1,
            &[
                "--type",
                "luks1",
                "--hash",
                "sha512",
                "--cipher",
                "aes-cbc-plain64",
                "--key-size",
                "128",
            ],
        ),
    );
}

#[test]
fn luks1_ripemd160() {
    check_owned(
        "luks1 ripemd160",
        with(PB1, &["--type", "luks1", "--hash", "ripemd160"]),
    );
}

#[test]
fn luks2_pbkdf2_sha256() {
    check_owned(
        "luks2 pbkdf2 sha256",
        with(
            PB1,
            &["--type", "luks2", "--pbkdf", "pbkdf2", "--hash", "sha256"],
        ),
    );
}

#[test]
fn luks2_pbkdf2_sha512_256bit() {
    check_owned(
        "luks2 pbkdf2 sha512",
        with(
            PB1,
            &[
                "--type",
                "luks2",
                "--pbkdf",
                "pbkdf2",
                "--hash",
                "sha512",
                "--key-size",
                "256",
            ],
        ),
    );
}

#[test]
fn luks2_pbkdf2_sha1() {
    check_owned(
        "luks2 pbkdf2 sha1",
        with(
            PB1,
            &["--type", "luks2", "--pbkdf", "pbkdf2", "--hash", "sha1"],
        ),
    );
}

#[test]
fn luks2_argon2i_512_sector512() {
    let mut a = argon("argon2i");
    a.extend(
        [
            "--type",
            "luks2",
            "--key-size",
            "512",
            "--sector-size",
            "512",
        ]
        .map(String::from),
    );
    check_owned("luks2 argon2i 512-bit sector 512", a);
}

#[test]
fn luks2_argon2id_256_sector4096() {
    let mut a = argon("argon2id");
    a.extend(
        [
            "--type",
            "luks2",
            "--key-size",
            "256",
            "--sector-size",
            "4096",
        ]
        .map(String::from),
    );
    check_owned("luks2 argon2id 256-bit sector 4096", a);
}

#[test]
fn luks2_argon2id_two_lanes_cbc_essiv() {
    check_owned(
        "luks2 argon2id 2 lanes cbc-essiv",
        [
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-parallel",
            "2",
            "--pbkdf-force-iterations",
            "4",
            "--cipher",
            "aes-cbc-essiv:sha256",
            "--key-size",
            "256",
        ]
        .map(String::from)
        .to_vec(),
    );
}

/// Passphrase in keyslot 0, another in keyslot 5; `--key-slot` restricts the search.
fn two_slots(version: &str) {
    let name = format!("{version} keyslots 0 and 5");
    if !need("cryptsetup", &name) {
        return;
    }
    let d = tmp();
    let mut args = vec!["--type", version];
    let ar = argon("argon2id");
    if version == "luks2" {
        args.extend(ar.iter().map(|s| s.as_str()));
    } else {
        args.extend(PB1);
    }
    let img = luks_format(d.path(), "img", PASS, &args);
    let extra: Vec<&str> = if version == "luks2" {
        ar.iter().map(|s| s.as_str()).collect()
    } else {
        PB1.to_vec()
    };
    add_key(d.path(), &img, PASS, b"second one", 5, &extra);
    let before = sha256_file(&img);
    let want = cryptsetup_volume_key(d.path(), &img, b"second one");
    assert_eq!(want, cryptsetup_volume_key(d.path(), &img, PASS));
    assert_eq!(our_volume_key(&img, PASS, None), (0, want.clone()));
    assert_eq!(our_volume_key(&img, b"second one", None), (5, want.clone()));
    assert_eq!(
        our_volume_key(&img, b"second one", Some(5)),
        (5, want.clone())
    );
    let p = img.to_str().unwrap();
    // --key-slot 0 with the slot-5 passphrase fails with 2, like cryptsetup.
    let (rc, _, err) = vs(
        &["open", "--test-passphrase", "--key-slot", "0", p],
        Some(b"second one\n"),
    );
    assert_eq!(rc, 2, "{err}");
    assert!(
        err.contains("No key available with this passphrase."),
        "{err}"
    );
    let (rc, out, err) = vs(
        &["-v", "open", "--test-passphrase", "-S", "5", p],
        Some(b"second one\n"),
    );
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("Key slot 5 unlocked."), "{out}");
    // An inactive slot is a parameter error.
    let (rc, _, err) = vs(
        &["open", "--test-passphrase", "--key-slot", "3", p],
        Some(b"second one\n"),
    );
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("Keyslot 3 is not active."), "{err}");
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn luks1_keyslot_5() {
    two_slots("luks1");
}

#[test]
fn luks2_keyslot_5() {
    two_slots("luks2");
}

/// A binary key file (all 256 byte values, NULs and newlines included), with
/// `--keyfile-offset`/`--keyfile-size` and `--key-file -`.
#[test]
fn luks2_binary_key_file() {
    if !need("cryptsetup", "binary key file") {
        return;
    }
    let d = tmp();
    let key: Vec<u8> = (0..=255u8).chain(0..=255u8).collect();
    let img = luks_format(
        d.path(),
        "img",
        &key,
        &with(PB1, &["--type", "luks2", "--pbkdf", "pbkdf2"])
            .iter()
            .map(|s| s.as_str())
            .collect::<Vec<_>>(),
    );
    let want = cryptsetup_volume_key(d.path(), &img, &key);
    assert_eq!(our_volume_key(&img, &key, None).1, want);
    let p = img.to_str().unwrap();
    let kf = d.path().join("bin.key");
    std::fs::write(&kf, &key).unwrap();
    let k = kf.to_str().unwrap();
    let (rc, _, err) = vs(&["open", "--test-passphrase", "--key-file", k, p], None);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = vs(
        &["open", "--test-passphrase", "--key-file", "-", p],
        Some(&key),
    );
    assert_eq!(rc, 0, "{err}");
    // Embedded in a larger file: offset 100, size 512. Without sizing the tail is part
    // of the key: wrong key (2). Asking for more than the file holds: 1.
    let mut padded = vec![0xee; 100];
    padded.extend_from_slice(&key);
    padded.extend_from_slice(b"tail");
    let pf = d.path().join("padded.key");
    std::fs::write(&pf, &padded).unwrap();
    let pk = pf.to_str().unwrap();
    let cases: [(&[&str], i32, Option<&str>); 3] = [
        (
            &["--keyfile-offset", "100", "--keyfile-size", "512"],
            0,
            None,
        ),
        (&["--keyfile-offset", "100"], 2, None),
        (
            &["--keyfile-size", "100000"],
            1,
            Some("Cannot read requested amount of data"),
        ),
    ];
    for (sizing, want_rc, want_err) in cases {
        let mut args = vec!["open", "--test-passphrase", "-d", pk];
        args.extend_from_slice(sizing);
        args.push(p);
        let (rc, _, err) = vs(&args, None);
        assert_eq!(rc, want_rc, "{sizing:?}: {err}");
        if let Some(m) = want_err {
            assert!(err.contains(m), "{err}");
        }
    }
}
