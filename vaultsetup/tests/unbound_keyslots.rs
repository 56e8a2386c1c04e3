//! Issue 11, point 3: LUKS2 keyslots made by `cryptsetup luksAddKey --unbound` hold a
//! key that is not the volume key. Only keyslots bound to the data segment (a digest
//! whose `segments` names it) may open the volume; the others are refused as cryptsetup
//! refuses them: "No usable keyslot is available.", exit 1. Before the fix, the unbound
//! keyslot's passphrase "opened" the volume with the wrong key.
//!
//! The image is made by cryptsetup: slot 0 bound (PASS0), slot 1 unbound (PASSU), both
//! with 512-bit keys, so the unbound key even has the volume key's size (the case that
//! activated the volume with the wrong key). Where the answer is cryptsetup's
//! own, the test runs the installed cryptsetup with the same arguments and compares
//! exit code and message:
//! - `open --test-passphrase` with PASSU: exit 1, "No usable keyslot is available.";
//! - `open --test-passphrase --key-slot 1` with PASSU: exit 0 (cryptsetup documents that
//!   an unbound keyslot's passphrase can be tested when the keyslot is named);
//! - `--key-slot 1` with PASS0, `--key-slot 0` with PASSU: exit 2, "No key available with
//!   this passphrase.".
//!
//! A passphrase that opens no keyslot at all stays "No key available with this
//! passphrase.", exit 2 (cryptsetup >= 2.8; 2.6/2.7 answered with the error of the
//! keyslot tried last, which made a plain typo look like "No usable keyslot" whenever
//! the unbound keyslot came last, the bug fixed upstream by "Fix interactive query retry
//! if LUKS2 unbound keyslot is present").
//!
//! Activation (`open IMG NAME`, with and without `--key-slot 1`) with PASSU must fail
//! the same way and leave no volume behind in vmvaultd.

mod common;

use std::path::Path;
use std::process::Command;

use common::*;

const PASS0: &[u8] = b"bound keyslot passphrase";
const PASSU: &[u8] = b"unbound keyslot passphrase";
const WRONG: &[u8] = b"no keyslot has this passphrase";

const NO_USABLE: &str = "No usable keyslot is available.";
const NO_KEY: &str = "No key available with this passphrase.";

/// A LUKS2 image with bound slot 0 (PASS0) and unbound slot 1 (PASSU).
fn image(dir: &Path) -> std::path::PathBuf {
    let img = luks_format(
        dir,
        "img",
        PASS0,
        &[
            "--type",
            "luks2",
            "--key-size",
            "512",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    add_key(
        dir,
        &img,
        PASS0,
        PASSU,
        1,
        &[
            "--unbound",
            "--key-size",
            "512",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let dump = run(Command::new("cryptsetup").arg("luksDump").arg(&img));
    assert!(dump.contains("1: luks2 (unbound)"), "{dump}");
    img
}

fn key_file(dir: &Path, name: &str, pass: &[u8]) -> String {
    let p = dir.join(name);
    std::fs::write(&p, pass).unwrap();
    p.display().to_string()
}

/// (exit code, last stderr line) of `tool args`.
fn outcome(tool: &mut Command) -> (i32, String) {
    let o = run_with_input(tool, None);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let last = err
        .lines()
        .rfind(|l| !l.trim().is_empty())
        .unwrap_or("")
        .to_string();
    (o.status.code().unwrap_or(-1), last)
}

#[test]
fn test_passphrase_uses_only_bound_keyslots() {
    if !need("cryptsetup", "test_passphrase_uses_only_bound_keyslots") {
        return;
    }
    let d = tmp();
    let img = image(d.path());
    let img_s = img.to_str().unwrap();
    let k0 = key_file(d.path(), "k0", PASS0);
    let ku = key_file(d.path(), "ku", PASSU);
    let kw = key_file(d.path(), "kw", WRONG);

    // (args, expected exit code, expected message or "" for success); cryptsetup is
    // asked the same where its answer is the reference.
    let cases: &[(&[&str], i32, &str, bool)] = &[
        (&["--key-file", &ku], 1, NO_USABLE, true),
        (&["--key-file", &ku, "--key-slot", "1"], 0, "", true),
        (&["--key-file", &ku, "--unbound"], 0, "", true),
        (&["--key-file", &k0, "--key-slot", "1"], 2, NO_KEY, true),
        (&["--key-file", &ku, "--key-slot", "0"], 2, NO_KEY, true),
        (&["--key-file", &k0], 0, "", true),
        (&["--key-file", &k0, "--key-slot", "0"], 0, "", true),
        // cryptsetup 2.6 answers this one with the last keyslot's error (see the top).
        (&["--key-file", &kw], 2, NO_KEY, false),
    ];
    let mut bad = Vec::new();
    for (args, want_rc, want_msg, compare) in cases {
        let mut full = vec!["open", "--test-passphrase"];
        full.extend_from_slice(args);
        full.push(img_s);
        let (rc, last) = outcome(vaultsetup().args(&full));
        let ok = rc == *want_rc && (want_msg.is_empty() || last == *want_msg);
        if !ok {
            bad.push(format!(
                "vaultsetup {full:?}: exit {rc} {last:?}, want exit {want_rc} {want_msg:?}"
            ));
        }
        if *compare {
            let (crc, clast) = outcome(Command::new("cryptsetup").args(&full));
            if crc != *want_rc || (!want_msg.is_empty() && clast != *want_msg) {
                bad.push(format!(
                    "cryptsetup {full:?}: exit {crc} {clast:?} (the expectation {want_rc} {want_msg:?} is wrong?)"
                ));
            }
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));

    // The library answers alike, and never returns the unbound keyslot's key.
    let lib = |pass: &[u8], keyslot: Option<u32>| {
        let opts = vaultsetup::UnlockOptions {
            keyslot,
            ..Default::default()
        };
        vaultsetup::recover_volume_key(&img, pass, &opts)
    };
    for slot in [None, Some(1)] {
        match lib(PASSU, slot) {
            Err(e) => {
                use vaultsetup::HasExitCode;
                assert_eq!(
                    (e.to_string().as_str(), e.exit_code().code()),
                    (NO_USABLE, 1),
                    "unbound passphrase, slot {slot:?}"
                );
            }
            Ok(u) => panic!(
                "unbound passphrase, slot {slot:?}: keyslot {} opened, {} key bytes",
                u.keyslot,
                u.key.len()
            ),
        }
    }
    let want = cryptsetup_volume_key(d.path(), &img, PASS0);
    let (slot, got) = our_volume_key(&img, PASS0, None);
    assert_eq!((slot, got), (0, want));
}

#[test]
fn open_refuses_unbound_keyslot_and_activates_nothing() {
    if !require_for(
        "open_refuses_unbound_keyslot_and_activates_nothing",
        &["cryptsetup", "fuse", "loop"],
    ) {
        return;
    }
    let d = tmp();
    let img = image(d.path());
    let img_s = img.to_str().unwrap();
    let ku = key_file(d.path(), "ku", PASSU);
    let run_dir = d.path().join("run");
    let daemon = start_daemon(&run_dir);
    let run_s = run_dir.to_str().unwrap();
    for (name, extra) in [
        ("unbound-any", &[][..]),
        ("unbound-s1", &["--key-slot", "1"][..]),
    ] {
        let mut args = vec![
            "open",
            "--run-dir",
            run_s,
            "--backend",
            "soft",
            "--key-file",
            &ku,
        ];
        args.extend_from_slice(extra);
        args.extend_from_slice(&[img_s, name]);
        let (rc, last) = outcome(vaultsetup().args(&args).env("VMVAULTD", vmvaultd()));
        if rc == 0 {
            // Activated with the unbound keyslot's key: close it before failing.
            let _ = daemon.client().close(name);
        }
        assert_eq!(
            (rc, last.as_str()),
            (1, NO_USABLE),
            "vaultsetup {args:?}\ndaemon log:\n{}",
            daemon.log()
        );
        assert!(
            daemon.client().status(name).is_err(),
            "{name} is active after a refused open"
        );
        let (rc, _, _) = vs(&["status", "--run-dir", run_s, name], None);
        assert_eq!(rc, 4, "status {name} after a refused open");
    }
    let list = daemon.client().list().map(|v| v.len());
    assert!(matches!(list, Ok(0)), "volumes in vmvaultd: {list:?}");
    daemon.shutdown();
}
