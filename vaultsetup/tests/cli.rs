//! CLI behaviour compared with cryptsetup: luksDump text, JSON dump, isLuks, argument errors.

mod common;
use common::*;

#[test]
fn luks_dump_matches_cryptsetup() {
    if !need("cryptsetup", "luksDump") {
        return;
    }
    let d = tmp();
    let l1 = luks_format(
        d.path(),
        "l1",
        b"pw",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    add_key(
        d.path(),
        &l1,
        b"pw",
        b"pw2",
        3,
        &["--pbkdf-force-iterations", "1000"],
    );
    let mut a = argon("argon2id");
    a.extend(
        [
            "--type",
            "luks2",
            "--label",
            "data",
            "--subsystem",
            "sub",
            "--sector-size",
            "512",
        ]
        .map(String::from),
    );
    let l2 = luks_format(
        d.path(),
        "l2",
        b"pw",
        &a.iter().map(|s| s.as_str()).collect::<Vec<_>>(),
    );
    add_key(
        d.path(),
        &l2,
        b"pw",
        b"pw2",
        5,
        &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
    );
    for img in [&l1, &l2] {
        let p = img.to_str().unwrap();
        let want = run_ok(
            std::process::Command::new("cryptsetup").args(["luksDump", p]),
            None,
        );
        let (rc, out, err) = vs(&["luksDump", p], None);
        assert_eq!(rc, 0, "{err}");
        assert_eq!(out, String::from_utf8_lossy(&want.stdout), "luksDump {p}");
        let (rc, out, _) = vs(&["isLuks", p], None);
        assert_eq!((rc, out.as_str()), (0, ""));
        let (rc, out, _) = vs(&["-v", "isLuks", p], None);
        assert_eq!((rc, out.as_str()), (0, "Command successful.\n"));
    }
    let p = l2.to_str().unwrap();
    let want = run_ok(
        std::process::Command::new("cryptsetup").args(["luksDump", "--dump-json-metadata", p]),
        None,
    );
    let (rc, out, _) = vs(&["luksDump", "--dump-json-metadata", p], None);
    assert_eq!(rc, 0);
    assert_eq!(
        out.trim_end(),
        String::from_utf8_lossy(&want.stdout).trim_end()
    );
    // --type filters.
    assert_eq!(vs(&["isLuks", "--type", "luks1", p], None).0, 1);
    assert_eq!(vs(&["isLuks", "--type", "luks2", p], None).0, 0);
    let (rc, _, err) = vs(
        &["luksDump", "--dump-json-metadata", l1.to_str().unwrap()],
        None,
    );
    assert_eq!(rc, 1, "{err}");
}

#[test]
fn argument_errors_exit_1() {
    assert_eq!(vs(&[], None).0, 1);
    assert_eq!(vs(&["frobnicate"], None).0, 1);
    assert_eq!(vs(&["open", "--test-passphrase"], None).0, 1);
    assert_eq!(
        vs(
            &["open", "--key-slot", "x", "--test-passphrase", "/dev/null"],
            None
        )
        .0,
        1
    );
    let (rc, _, err) = vs(&["open", "/dev/null"], None);
    assert_eq!(rc, 1);
    assert!(
        err.contains("Command requires device and mapped name as arguments."),
        "{err}"
    );
    // Activation reads the header first: /dev/null is refused like by --test-passphrase.
    let (rc, _, err) = vs(&["open", "/dev/null", "name"], None);
    let (rc_test, _, _) = vs(&["open", "--test-passphrase", "/dev/null"], None);
    assert!(rc != 0 && rc == rc_test, "{rc} {err}");
    assert!(err.contains("/dev/null"), "{err}");
    assert_eq!(vs(&["--help"], None).0, 0);
    assert_eq!(vs(&["--version"], None).0, 0);
}

#[test]
fn key_slot_out_of_range_and_empty_input() {
    if !need("cryptsetup", "key slot range") {
        return;
    }
    let d = tmp();
    let img = luks_format(
        d.path(),
        "l1",
        b"pw",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    let p = img.to_str().unwrap();
    let (rc, _, err) = vs(
        &["open", "--test-passphrase", "--key-slot", "8", p],
        Some(b"pw\n"),
    );
    assert_eq!(rc, 1);
    assert!(err.contains("Key slot 8 is invalid"), "{err}");
    let (rc, _, err) = vs(&["open", "--test-passphrase", p], Some(b""));
    assert_eq!(rc, 1);
    assert!(err.contains("Nothing to read on input."), "{err}");
    // The passphrase ends at the first newline; \r is part of it (as in cryptsetup).
    assert_eq!(vs(&["open", "--test-passphrase", p], Some(b"pw\r\n")).0, 2);
    assert_eq!(vs(&["open", "--test-passphrase", p], Some(b"pw")).0, 0);
}
