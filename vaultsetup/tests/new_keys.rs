//! The front half of luksFormat / luksAddKey / luksChangeKey / luksRemoveKey /
//! luksKillSlot: options, prompts on piped stdin, device checks, the PBKDF benchmark.
//! Tests that reach the vault step run with a private vmvaultd (root, kvm) and check
//! that the verbs then do their work; the end-to-end checks against cryptsetup are in
//! tests/vault_keys.rs.

mod common;
use common::*;

use clap::Parser;
use vaultsetup::cli::{keyslots, Cli, Command, Output};
use vaultsetup::kdf::Hash;
use vaultsetup::pbkdf_bench::{pbkdf2_iterations_per_second, BenchTuning, PbkdfCost};

const FAST: &[&str] = &["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];

fn zero_image(dir: &std::path::Path, name: &str, mib: usize) -> std::path::PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, vec![0u8; mib << 20]).unwrap();
    p
}

#[test]
fn luks_format_reads_a_piped_passphrase_without_questions() {
    let d = tmp();
    let img = zero_image(d.path(), "img", 20);
    let p = img.to_str().unwrap();
    let mut args = vec!["luksFormat"];
    args.extend_from_slice(FAST);
    args.push(p);
    if !require_for(
        "luks_format_reads_a_piped_passphrase_without_questions",
        &["kvm", "cryptsetup"],
    ) {
        return;
    }
    let w = World::new();
    let (rc, out, err) = w.vs(&args, Some(b"secret\n"));
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    // Non-tty stdin: no confirmation, no prompt, no verification (as cryptsetup).
    assert!(!out.contains("Are you sure"), "{out}");
    assert!(!err.contains("Verify"), "{err}");
    assert!(run_with_input(
        std::process::Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "-d", "-"])
            .arg(&img),
        Some(b"secret")
    )
    .status
    .success());
    // -y on a pipe: cryptsetup's note, then the same.
    let mut args = vec!["luksFormat", "-y", "--type", "luks1"];
    args.extend_from_slice(FAST);
    args.push(p);
    let (rc, _, err) = w.vs(&args, Some(b"secret\n"));
    assert_eq!(rc, 0, "{err}");
    assert!(
        err.contains("Can't do passphrase verification on non-tty inputs."),
        "{err}"
    );
    // Nothing on stdin at all.
    let (rc, _, err) = vs(&args, Some(b""));
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("Nothing to read on input."), "{err}");
}

#[test]
fn luks_format_checks_the_device() {
    let d = tmp();
    let small = zero_image(d.path(), "small", 4);
    let mut args = vec!["luksFormat", "-q"];
    args.extend_from_slice(FAST);
    args.push(small.to_str().unwrap());
    let (rc, _, err) = vs(&args, Some(b"pw\n"));
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("is too small: 4194304 bytes"), "{err}");
    // LUKS1's 2 MiB header fits.
    if require_for("luks_format_checks_the_device (LUKS1 on 4 MiB)", &["kvm"]) {
        let w = World::new();
        let mut args = vec!["luksFormat", "-q", "--type", "luks1"];
        args.extend_from_slice(FAST);
        args.push(small.to_str().unwrap());
        let (rc, _, err) = w.vs(&args, Some(b"pw\n"));
        assert_eq!(rc, 0, "{err}");
    }
    let missing = d.path().join("missing");
    let (rc, _, err) = vs(
        &["luksFormat", "-q", missing.to_str().unwrap()],
        Some(b"pw\n"),
    );
    assert_eq!(rc, 4, "{err}");
    assert!(err.contains("does not exist or access denied"), "{err}");
}

#[test]
fn luks_format_refuses_bad_options_with_exit_1() {
    let d = tmp();
    let img = zero_image(d.path(), "img", 1);
    let p = img.to_str().unwrap();
    for (args, want) in [
        (&["-s", "100"][..], "--key-size"),
        (&["--sector-size", "3000"], "--sector-size 3000"),
        (&["--pbkdf", "argon2id", "--type", "luks1"], "LUKS1"),
        (&["--pbkdf-memory", "5000000"], "--pbkdf-memory"),
        (&["--uuid", "x"], "--uuid"),
        (&["--pbkdf", "scrypt"], "scrypt"),
    ] {
        let mut v = vec!["luksFormat"];
        v.extend_from_slice(args);
        v.push(p);
        let (rc, _, err) = vs(&v, Some(b"pw\n"));
        assert_eq!(rc, 1, "{args:?}: {err}");
        assert!(err.contains(want), "{args:?}: {err}");
    }
}

#[test]
fn key_verbs_read_headers_and_prompts() {
    if !need("cryptsetup", "key_verbs_read_headers_and_prompts") {
        return;
    }
    let d = tmp();
    let img = luks_format(
        d.path(),
        "l2",
        b"pw",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let p = img.to_str().unwrap();
    let before = sha256_file(&img);
    let (rc, _, err) = vs(&["luksAddKey", "-S", "0", p], Some(b"pw\nnew\n"));
    assert_eq!(rc, 1);
    assert!(
        err.contains("Key slot 0 is full, please select another one."),
        "{err}"
    );
    let (rc, _, err) = vs(&["luksAddKey", "--new-key-slot", "32", p], None);
    assert_eq!(rc, 1);
    assert!(err.contains("(--new-key-slot)"), "{err}");
    let (rc, _, err) = vs(&["luksAddKey", "-d", "-", p, "-"], None);
    assert_eq!(rc, 1);
    assert!(
        err.contains("Only one --key-file argument is allowed."),
        "{err}"
    );
    let (rc, _, err) = vs(&["luksKillSlot", p, "5"], Some(b"pw\n"));
    assert_eq!(rc, 1);
    assert!(err.contains("Keyslot 5 is not active."), "{err}");
    let (rc, _, err) = vs(&["luksKillSlot", p, "32"], Some(b"pw\n"));
    assert_eq!(rc, 1);
    assert!(err.contains("Key slot 32 is invalid"), "{err}");
    assert_eq!(sha256_file(&img), before, "refusals write nothing");
    if !require_for("key_verbs_read_headers_and_prompts (vault part)", &["kvm"]) {
        return;
    }
    // Past the checks, through the vault: the existing passphrase from the pipe, then
    // the new one.
    let w = World::new();
    let (rc, _, err) = w.vs(&["luksAddKey", p], Some(b"pw\nnew\n"));
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    // -S names a keyslot the passphrase does not open: nothing changes.
    let before = sha256_file(&img);
    let (rc, _, err) = w.vs(&["luksChangeKey", "-S", "3", p], Some(b"pw\nnew\n"));
    assert_ne!(rc, 0, "{err}");
    assert_eq!(sha256_file(&img), before);
    let (rc, _, err) = w.vs(&["luksRemoveKey", p], Some(b"new\n"));
    assert_eq!(rc, 0, "{err}");
    // The last keyslot: no question on a pipe, the passphrase must open it.
    let (rc, _, err) = w.vs(&["luksKillSlot", p, "0"], Some(b"pw\n"));
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = vs(&["luksKillSlot", p, "0"], Some(b"pw\n"));
    assert_eq!(rc, 1);
    assert!(err.contains("Keyslot 0 is not active."), "{err}");
}

fn parse(args: &[&str]) -> Cli {
    let mut v = vec!["vaultsetup"];
    v.extend_from_slice(args);
    Cli::try_parse_from(v).unwrap()
}

#[test]
fn add_key_checks_the_old_key_before_reading_the_new_one() {
    if !need(
        "cryptsetup",
        "add_key_checks_the_old_key_before_reading_the_new_one",
    ) {
        return;
    }
    let d = tmp();
    let img = luks_format(
        d.path(),
        "l1",
        b"pw",
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    let old = d.path().join("old");
    let new = d.path().join("new");
    std::fs::write(&old, b"pw").unwrap();
    std::fs::write(&new, b"xxnew-keyyy").unwrap();
    let cli = parse(&[
        "luksAddKey",
        "--pbkdf-force-iterations",
        "2000",
        "-d",
        old.to_str().unwrap(),
        "--new-keyfile-offset",
        "2",
        "--new-keyfile-size",
        "7",
        "--new-key-slot",
        "4",
        "-S",
        "0",
        img.to_str().unwrap(),
        new.to_str().unwrap(),
    ]);
    let Command::LuksAddKey(a) = &cli.command else {
        panic!()
    };
    let mut out = Output::default();
    let mut seen = Vec::new();
    let mut check = |p: &vaultsetup::Passphrase, q: keyslots::SlotQuery| {
        seen.push((p.as_bytes().to_vec(), q));
        Ok(0)
    };
    let plan = keyslots::prepare_add_key(&cli, a, &mut check, &mut out).unwrap();
    assert_eq!(
        seen,
        [(
            b"pw".to_vec(),
            keyslots::SlotQuery {
                only: Some(0),
                except: None
            }
        )]
    );
    assert_eq!(plan.slots.new, 4);
    assert_eq!(plan.passphrases.new.as_bytes(), b"new-key");
    assert_eq!(
        plan.cost,
        PbkdfCost::Pbkdf2 {
            hash: Hash::Sha256,
            iterations: 2000
        }
    );
    // A refused old key stops before the new one is read.
    let mut no = |_: &vaultsetup::Passphrase, _| {
        Err(vaultsetup::cli::Failure {
            code: vaultsetup::ExitCode::NoPermission,
            message: "No key available with this passphrase.".into(),
            stdout: String::new(),
        })
    };
    let e = keyslots::prepare_add_key(&cli, a, &mut no, &mut out).unwrap_err();
    assert_eq!(e.code, vaultsetup::ExitCode::NoPermission);
}

/// The PBKDF2 rate our benchmark measures is within an order of magnitude of
/// `cryptsetup benchmark -h sha256` (ours is RustCrypto, theirs OpenSSL).
#[test]
fn pbkdf2_rate_is_the_order_of_cryptsetups() {
    if !need("cryptsetup", "pbkdf2_rate_is_the_order_of_cryptsetups") {
        return;
    }
    let o = std::process::Command::new("cryptsetup")
        .args(["benchmark", "-h", "sha256"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&o.stdout);
    let theirs: u64 = text
        .lines()
        .find_map(|l| {
            let mut w = l.split_whitespace();
            (w.next()? == "PBKDF2-sha256").then(|| w.next()?.parse().ok())?
        })
        .unwrap_or_else(|| panic!("no PBKDF2-sha256 line in {text:?}"));
    let ours =
        u64::from(pbkdf2_iterations_per_second(Hash::Sha256, 32, &BenchTuning::default()).unwrap());
    assert!(
        ours * 10 >= theirs && ours <= theirs * 10,
        "ours {ours}/s, cryptsetup {theirs}/s"
    );
}

/// Runs `prog args` under `script` (a pseudo-terminal), typing `lines` one by one;
/// returns (exit code, transcript with CRs dropped).
fn on_tty(prog: &str, args: &[&str], lines: &[&str]) -> (i32, String) {
    use std::io::Write;
    let cmd = std::iter::once(prog)
        .chain(args.iter().copied())
        .collect::<Vec<_>>()
        .join(" ");
    let mut child = std::process::Command::new("script")
        .args(["-qec", &cmd, "/dev/null"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    for l in lines {
        std::thread::sleep(std::time::Duration::from_millis(700));
        let _ = writeln!(stdin, "{l}");
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    drop(stdin);
    let o = child.wait_with_output().unwrap();
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).replace('\r', ""),
    )
}

/// On a terminal, luksFormat asks and prompts exactly as cryptsetup 2.6 does.
#[test]
fn luks_format_on_a_tty_matches_cryptsetup() {
    if !need("script", "luks_format_on_a_tty_matches_cryptsetup")
        || !need("cryptsetup", "luks_format_on_a_tty_matches_cryptsetup")
    {
        return;
    }
    let d = tmp();
    let img = zero_image(d.path(), "img", 20);
    let p = img.to_str().unwrap();
    let ours = env!("CARGO_BIN_EXE_vaultsetup");
    let args = [
        "luksFormat",
        "--pbkdf-force-iterations",
        "4",
        "--pbkdf-memory",
        "32",
        p,
    ];
    for lines in [&["no"][..], &["YES", "a", "b"]] {
        let want = on_tty("cryptsetup", &args, lines);
        let got = on_tty(ours, &args, lines);
        assert_eq!(got, want, "answers {lines:?}");
    }
    assert!(std::fs::read(&img).unwrap().iter().all(|&b| b == 0));
    if !require_for(
        "luks_format_on_a_tty_matches_cryptsetup (vault part)",
        &["kvm"],
    ) {
        return;
    }
    let w = World::new();
    let run_dir = w.run.display().to_string();
    let mut vargs = vec!["luksFormat", "--run-dir", &run_dir];
    vargs.extend_from_slice(&args[1..]);
    // YES and the same passphrase twice: formatted, silently (as cryptsetup).
    let (rc, t) = on_tty(ours, &vargs, &["YES", "a", "a"]);
    assert_eq!(rc, 0, "{t}");
    assert!(t.ends_with("Verify passphrase: \n"), "{t}");
    // -q: no question and no verification.
    let mut q = vec!["-q"];
    q.extend_from_slice(&vargs);
    let (rc, t) = on_tty(ours, &q, &["b"]);
    assert_eq!(rc, 0, "{t}");
    assert_eq!(t, format!("Enter passphrase for {p}: \n"));
    assert!(run_with_input(
        std::process::Command::new("cryptsetup")
            .args(["open", "--test-passphrase", "-d", "-"])
            .arg(&img),
        Some(b"b")
    )
    .status
    .success());
}

/// luksKillSlot of the last keyslot on a terminal: the same warning and abort as
/// cryptsetup (exit 2, nothing wiped); with YES, the same passphrase prompt.
#[test]
fn kill_last_slot_on_a_tty_matches_cryptsetup() {
    if !need("script", "kill_last_slot_on_a_tty_matches_cryptsetup")
        || !need("cryptsetup", "kill_last_slot_on_a_tty_matches_cryptsetup")
    {
        return;
    }
    let d = tmp();
    let img = luks_format(
        d.path(),
        "l2",
        b"pw",
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let p = img.to_str().unwrap();
    let before = sha256_file(&img);
    let ours = env!("CARGO_BIN_EXE_vaultsetup");
    let args = ["luksKillSlot", p, "0"];
    let want = on_tty("cryptsetup", &args, &["no"]);
    assert_eq!(want.0, 2, "{}", want.1);
    assert_eq!(on_tty(ours, &args, &["no"]), want);
    assert_eq!(sha256_file(&img), before);
    if !require_for(
        "kill_last_slot_on_a_tty_matches_cryptsetup (vault part)",
        &["kvm"],
    ) {
        return;
    }
    // YES, then a wrong passphrase: both refuse it alike (exit 2), nothing is wiped.
    let w = World::new();
    let run_dir = w.run.display().to_string();
    let vargs = ["luksKillSlot", "--run-dir", &run_dir, p, "0"];
    let theirs = on_tty("cryptsetup", &args, &["YES", "wrong"]);
    let ours_out = on_tty(ours, &vargs, &["YES", "wrong"]);
    assert_eq!(ours_out, theirs);
    assert_eq!(sha256_file(&img), before);
}
