//! Unlock time with the same header: vaultsetup (library call and CLI process) vs
//! `cryptsetup open --test-passphrase`, side by side in one run. Prints the medians and
//! the ratio (target: ratio ≤ 1.0, i.e. no slower than cryptsetup).
//!
//! Run: `cargo bench -p vaultsetup --bench unlock` (needs cryptsetup).

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const PASS: &[u8] = b"benchmark passphrase";
const ROUNDS: usize = 5;

fn run_with_stdin(cmd: &mut Command, input: &[u8]) -> bool {
    let mut c = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn");
    c.stdin.take().unwrap().write_all(input).unwrap();
    c.wait().unwrap().success()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn format(dir: &Path, name: &str, args: &[&str]) -> std::path::PathBuf {
    let img = dir.join(name);
    std::fs::File::create(&img)
        .unwrap()
        .set_len(20 << 20)
        .unwrap();
    let kf = dir.join("pass");
    std::fs::write(&kf, PASS).unwrap();
    let ok = Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--batch-mode",
            "--type",
            "luks2",
            "--key-file",
        ])
        .arg(&kf)
        .args(args)
        .arg(&img)
        .stderr(Stdio::null())
        .status()
        .unwrap()
        .success();
    assert!(ok, "luksFormat {name}");
    img
}

fn bench(label: &str, img: &Path) {
    let mut input = PASS.to_vec();
    input.push(b'\n');
    let p = img.to_str().unwrap();
    let (mut lib, mut cli, mut cs) = (vec![], vec![], vec![]);
    // Interleave the three so machine noise hits all of them alike.
    for _ in 0..ROUNDS {
        let t = Instant::now();
        let u = vaultsetup::recover_volume_key(img, PASS, &Default::default()).expect("unlock");
        lib.push(t.elapsed());
        drop(u);
        let t = Instant::now();
        assert!(run_with_stdin(
            Command::new(env!("CARGO_BIN_EXE_vaultsetup")).args(["open", "--test-passphrase", p]),
            &input
        ));
        cli.push(t.elapsed());
        let t = Instant::now();
        assert!(run_with_stdin(
            Command::new("cryptsetup").args(["open", "--test-passphrase", p]),
            &input
        ));
        cs.push(t.elapsed());
    }
    let (lib, cli, cs) = (median(lib), median(cli), median(cs));
    println!(
        "{label:<44} vaultsetup lib {:>8.1} ms | vaultsetup CLI {:>8.1} ms | cryptsetup {:>8.1} ms | ratio CLI/cryptsetup {:.3} (lib {:.3})",
        lib.as_secs_f64() * 1e3,
        cli.as_secs_f64() * 1e3,
        cs.as_secs_f64() * 1e3,
        cli.as_secs_f64() / cs.as_secs_f64(),
        lib.as_secs_f64() / cs.as_secs_f64(),
    );
}

fn main() {
    if Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("cryptsetup is required for the unlock benchmark");
        }
        println!("SKIPPED: cryptsetup not installed");
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` does a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let d = tempfile::tempdir().unwrap();
    let cases: Vec<(&str, Vec<&str>)> = if full {
        vec![
            (
                "pbkdf2-sha256, 1M iterations",
                vec![
                    "--pbkdf",
                    "pbkdf2",
                    "--hash",
                    "sha256",
                    "--pbkdf-force-iterations",
                    "1000000",
                ],
            ),
            (
                "pbkdf2-sha512, 1M iterations",
                vec![
                    "--pbkdf",
                    "pbkdf2",
                    "--hash",
                    "sha512",
                    "--pbkdf-force-iterations",
                    "1000000",
                ],
            ),
            (
                "argon2id, 256 MiB, t=4, 2 lanes",
                vec![
                    "--pbkdf",
                    "argon2id",
                    "--pbkdf-memory",
                    "262144",
                    "--pbkdf-parallel",
                    "2",
                    "--pbkdf-force-iterations",
                    "4",
                ],
            ),
            (
                "argon2i, 128 MiB, t=4, 1 lane",
                vec![
                    "--pbkdf",
                    "argon2i",
                    "--pbkdf-memory",
                    "131072",
                    "--pbkdf-parallel",
                    "1",
                    "--pbkdf-force-iterations",
                    "4",
                ],
            ),
        ]
    } else {
        vec![(
            "pbkdf2-sha256, 1000 iterations (smoke)",
            vec!["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"],
        )]
    };
    for (i, (label, args)) in cases.iter().enumerate() {
        let img = format(d.path(), &format!("img{i}"), args);
        bench(label, &img);
    }
}
