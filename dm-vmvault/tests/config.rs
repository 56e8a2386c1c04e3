//! vmvaultd's configuration file: malformed files are refused at start-up (exit 1,
//! `file:line:column` and the key), a good one is read, and options override it.

mod common;

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use common::TempDir;

/// Runs vmvaultd with `args` (no `VMVAULT_RUN_DIR` from the test's environment).
fn vmvaultd(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
        .args(args)
        .env_remove("VMVAULT_RUN_DIR")
        .output()
        .expect("run vmvaultd")
}

/// Writes `text` as `<dir>/vmvaultd.toml`; returns its path as a string.
fn config(dir: &Path, text: &str) -> String {
    let p = dir.join("vmvaultd.toml");
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn unknown_key_is_refused_with_its_line() {
    let t = TempDir::new("cfg-unknown");
    let p = config(t.path(), "# vmvaultd\nthreads = 4\nbogus_key = 1\n");
    let o = vmvaultd(&["--config", &p, "--check-config"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("vmvaultd.toml:3:"), "{err}");
    assert!(err.contains("bogus_key"), "{err}");
}

#[test]
fn wrong_type_is_refused_with_its_line() {
    let t = TempDir::new("cfg-type");
    let p = config(t.path(), "threads = 4\n\nvcpus = \"two\"\n");
    let o = vmvaultd(&["--config", &p, "--check-config"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(err.contains("vmvaultd.toml:3:"), "{err}");
    assert!(err.contains("vcpus"), "{err}");
    // Bad TOML too, and a bad size.
    let p = config(t.path(), "threads = 4\nmlock = = true\n");
    let o = vmvaultd(&["--config", &p, "--check-config"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("vmvaultd.toml:2:"), "{}", stderr(&o));
    let p = config(t.path(), "window_size = \"12Q\"\n");
    let o = vmvaultd(&["--config", &p, "--check-config"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("vmvaultd.toml:1:"), "{}", stderr(&o));
    assert!(stderr(&o).contains("window_size"), "{}", stderr(&o));
}

#[test]
fn missing_explicit_config_is_an_error() {
    let t = TempDir::new("cfg-missing");
    let p = t.path().join("nope.toml").display().to_string();
    let o = vmvaultd(&["--config", &p, "--check-config"]);
    assert_eq!(o.status.code(), Some(1), "{}", stderr(&o));
    assert!(stderr(&o).contains("nope.toml"), "{}", stderr(&o));
    // Bad options keep exit code 1.
    assert_eq!(vmvaultd(&["--fuse-threads", "0"]).status.code(), Some(1));
    assert_eq!(vmvaultd(&["--no-such-option"]).status.code(), Some(1));
}

#[test]
fn good_file_is_read_and_options_override_it() {
    let t = TempDir::new("cfg-good");
    let p = config(
        t.path(),
        "run_dir = \"/tmp/vmvault-cfg-x\"\nthreads = 4\nvcpus = 3\nwindow_size = \"66M\"\nmlock = false\n",
    );
    let o = vmvaultd(&["--config", &p, "--check-config"]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "run_dir = \"/tmp/vmvault-cfg-x\"",
        "threads = 4",
        "vcpus = 3",
        &format!("window_size = {}", 66u64 << 20),
        "mlock = false",
    ] {
        assert!(out.lines().any(|l| l == want), "{want} in {out}");
    }
    let o = vmvaultd(&[
        "--config",
        &p,
        "--check-config",
        "--run-dir",
        "/tmp/other",
        "--fuse-threads",
        "2",
        "--vault-vcpus",
        "1",
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in ["run_dir = \"/tmp/other\"", "threads = 2", "vcpus = 1"] {
        assert!(out.lines().any(|l| l == want), "{want} in {out}");
    }
    // VMVAULT_RUN_DIR overrides the file too.
    let o = Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
        .args(["--config", &p, "--check-config"])
        .env("VMVAULT_RUN_DIR", "/tmp/from-env")
        .output()
        .unwrap();
    assert!(String::from_utf8_lossy(&o.stdout).contains("run_dir = \"/tmp/from-env\""));
}

#[test]
fn daemon_starts_on_the_files_run_dir() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("skipped: needs root");
        return;
    }
    let t = TempDir::new("cfg-start");
    let run = t.path().join("run");
    let p = config(
        t.path(),
        &format!("run_dir = \"{}\"\nthreads = 2\nvcpus = 1\n", run.display()),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
        .args(["--config", &p])
        .env_remove("VMVAULT_RUN_DIR")
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let mut c = loop {
        if let Ok(mut c) = vmvault_proto::client::Client::connect(&run) {
            if c.ping().is_ok() {
                break c;
            }
        }
        if let Ok(Some(st)) = child.try_wait() {
            panic!("vmvaultd exited: {st}");
        }
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "no answer within 10 s"
        );
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(c.ping().unwrap(), child.id());
    c.shutdown().unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("serving"), "{err}");
}

#[test]
fn vault_tuning_comes_from_the_file_then_the_environment_then_options() {
    let t = TempDir::new("cfg-tuning");
    let p = config(
        t.path(),
        "run = \"thread\"\nidle_spins = 100\nassist = false\nvcpu_cpus = \"none\"\n",
    );
    // The environment (the variables vmvault-hv used to read itself) overrides the file.
    let o = Command::new(env!("CARGO_BIN_EXE_vmvaultd"))
        .args(["--config", &p, "--check-config", "--caller-spins", "7"])
        .env_remove("VMVAULT_RUN_DIR")
        .env("VMVAULT_RUN", "caller")
        .env("VMVAULT_VCPU_NICE", "-3")
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    for want in [
        "run = \"caller\"",
        "idle_spins = 100",
        "caller_spins = 7",
        "assist = false",
        "vcpu_cpus = \"none\"",
        "vcpu_nice = -3",
    ] {
        assert!(out.lines().any(|l| l == want), "no `{want}` in:\n{out}");
    }
    // What --check-config prints is itself a valid configuration file.
    let again = config(t.path(), &out);
    let o2 = vmvaultd(&["--config", &again, "--check-config"]);
    assert!(o2.status.success(), "{}", stderr(&o2));
    assert_eq!(String::from_utf8_lossy(&o2.stdout), out);
    // A bad value names the key and its line.
    let bad = config(t.path(), "threads = 2\nvcpu_cpus = \"1,x\"\n");
    let o3 = vmvaultd(&["--config", &bad, "--check-config"]);
    assert_eq!(o3.status.code(), Some(1));
    assert!(stderr(&o3).contains("vmvaultd.toml:2:"), "{}", stderr(&o3));
    assert!(stderr(&o3).contains("`vcpu_cpus`"), "{}", stderr(&o3));
}
