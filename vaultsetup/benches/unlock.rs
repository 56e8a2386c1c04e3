//! Unlock time with the same header, in one run: the vault (a `vmvaultd` on the kvm
//! backend: the client's `unlock_keyslot` + `drop_key` for the keyslot
//! `vaultsetup::keyslot::vault_plans` picks, the header parsed beforehand), the CLI process `vaultsetup open
//! --test-passphrase --run-dir ...`, and `cryptsetup open --test-passphrase`. Prints the
//! CPU, the Argon2 compression path, the medians and the ratio vault/cryptsetup per case
//! (target: ≤ 1.1).
//!
//! The CLI column is labelled by the path that ran: `CLI(vault)` when the daemon's CPU
//! time grew by at least a third of the CLI's wall time (the KDF ran in the vault),
//! else `CLI(host)` (the KDF ran in the `vaultsetup` process).
//!
//! Run: `cargo bench -p vaultsetup --bench unlock`. `cargo test --benches` runs a tiny
//! PBKDF2 smoke case. Needs root, /dev/kvm and cryptsetup: without them it prints
//! SKIPPED, or fails when `CI` is set.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use vaultsetup::keyslot::VaultKeyslot;
use vmvault_proto::client::Client;
use vmvault_proto::protocol::BackendChoice;
use vmvault_proto::secret::Passphrase;
use vmvault_proto::CipherSpec;

#[path = "../../tests/support/mod.rs"]
mod support;

const PASS: &[u8] = b"benchmark passphrase";
const ROUNDS: usize = 3;

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

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn format(dir: &Path, name: &str, args: &[&str]) -> PathBuf {
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

/// A `vmvaultd` on its own run directory with its default vault vCPUs (half the CPUs,
/// at least two on a 2-CPU machine); shut down on drop.
struct Daemon {
    child: Child,
    run: PathBuf,
}

impl Daemon {
    fn start(run: &Path) -> Daemon {
        let exe = support::vmvaultd_next_to(Path::new(env!("CARGO_BIN_EXE_vaultsetup")));
        let log = std::fs::File::create(run.with_extension("log")).unwrap();
        let child = Command::new(exe)
            .arg("--run-dir")
            .arg(run)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("spawn vmvaultd");
        let d = Daemon {
            child,
            run: run.to_path_buf(),
        };
        let t0 = Instant::now();
        while !Client::connect(run).is_ok_and(|mut c| c.ping().is_ok()) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "vmvaultd did not come up: {}",
                std::fs::read_to_string(run.with_extension("log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        d
    }

    /// User + system CPU time of the daemon so far (its vCPU threads included).
    fn cpu(&self) -> Duration {
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.child.id())).unwrap();
        // Fields after the command name (which may hold spaces) start at `state`.
        let rest = &stat[stat.rfind(')').unwrap() + 2..];
        let f: Vec<&str> = rest.split_whitespace().collect();
        let ticks: u64 = f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        // SAFETY: sysconf has no preconditions.
        let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
        Duration::from_nanos(ticks * 1_000_000_000 / hz)
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(mut c) = Client::connect(&self.run) {
            let _ = c.shutdown();
        }
        for _ in 0..50 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The keyslot `vault_plans` picks first for `img` (the header is read and parsed
/// here, outside the timed part).
fn candidate(img: &Path) -> VaultKeyslot {
    let dev = vaultsetup::device::Device::open(img).unwrap();
    let vol = vaultsetup::volume::Volume::read(&dev).unwrap();
    let plans =
        vaultsetup::keyslot::vault_plans(&dev, &vol, &Default::default()).expect("vault plans");
    plans
        .bound
        .into_iter()
        .next()
        .expect("a keyslot")
        .expect("a usable keyslot")
}

/// One unlock through the vault: `k` unlocked into a handle and dropped again.
fn vault_unlock(client: &mut Client, k: &VaultKeyslot) {
    let pass = Passphrase::from_slice(PASS);
    let cipher = CipherSpec::parse("aes-xts-plain64").unwrap();
    let h = client
        .unlock_keyslot(
            cipher,
            BackendChoice::Kvm,
            k.candidate.clone(),
            &k.area,
            &pass,
        )
        .expect("vault unlock");
    client.drop_key(h).expect("drop_key");
}

struct Row {
    vault: Duration,
    cli: Duration,
    cli_in_vault: bool,
    cs: Duration,
}

fn bench(d: &Daemon, img: &Path) -> Row {
    let mut input = PASS.to_vec();
    input.push(b'\n');
    let p = img.to_str().unwrap();
    let run = d.run.to_str().unwrap();
    let mut client = Client::connect(&d.run).expect("connect");
    let k = candidate(img);
    let (mut vault, mut cli, mut cs) = (vec![], vec![], vec![]);
    let mut in_vault = 0;
    // Interleave the three so machine noise hits all of them alike.
    for _ in 0..ROUNDS {
        let t = Instant::now();
        vault_unlock(&mut client, &k);
        vault.push(t.elapsed());

        let c0 = d.cpu();
        let t = Instant::now();
        assert!(run_with_stdin(
            Command::new(env!("CARGO_BIN_EXE_vaultsetup")).args([
                "open",
                "--test-passphrase",
                "--run-dir",
                run,
                p
            ]),
            &input
        ));
        let wall = t.elapsed();
        cli.push(wall);
        if (d.cpu() - c0) * 3 >= wall {
            in_vault += 1;
        }

        let t = Instant::now();
        assert!(run_with_stdin(
            Command::new("cryptsetup").args(["open", "--test-passphrase", p]),
            &input
        ));
        cs.push(t.elapsed());
    }
    Row {
        vault: median(vault),
        cli: median(cli),
        cli_in_vault: in_vault * 2 > ROUNDS,
        cs: median(cs),
    }
}

/// Whether the bench can run here: root, /dev/kvm, cryptsetup. Missing: panics under
/// `CI`, else prints SKIPPED.
fn can_run() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() } == 0;
    let kvm = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    let cs = Command::new("cryptsetup").arg("--version").output().is_ok();
    let missing: Vec<&str> = [(root, "root"), (kvm, "/dev/kvm"), (cs, "cryptsetup")]
        .iter()
        .filter(|(ok, _)| !ok)
        .map(|(_, what)| *what)
        .collect();
    if missing.is_empty() {
        return true;
    }
    if std::env::var_os("CI").is_some() {
        panic!("the unlock benchmark needs {}", missing.join(", "));
    }
    println!("SKIPPED: the unlock benchmark needs {}", missing.join(", "));
    false
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, m)| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

fn argon(kind: &str, lanes: &str) -> Vec<String> {
    [
        "--pbkdf",
        kind,
        "--pbkdf-memory",
        "262144",
        "--pbkdf-parallel",
        lanes,
        "--pbkdf-force-iterations",
        "4",
    ]
    .map(String::from)
    .to_vec()
}

fn pbkdf2(hash: &str, iterations: &str) -> Vec<String> {
    [
        "--pbkdf",
        "pbkdf2",
        "--hash",
        hash,
        "--pbkdf-force-iterations",
        iterations,
    ]
    .map(String::from)
    .to_vec()
}

fn main() {
    if !can_run() {
        return;
    }
    // `cargo bench` passes --bench; `cargo test --benches` does a quick smoke run.
    let full = std::env::args().any(|a| a == "--bench");
    let cases: Vec<(&str, Vec<String>)> = if full {
        vec![
            ("pbkdf2-sha256, 1M iterations", pbkdf2("sha256", "1000000")),
            ("pbkdf2-sha512, 1M iterations", pbkdf2("sha512", "1000000")),
            ("argon2i, 256 MiB, t=4, 1 lane", argon("argon2i", "1")),
            ("argon2i, 256 MiB, t=4, 4 lanes", argon("argon2i", "4")),
            ("argon2id, 256 MiB, t=4, 1 lane", argon("argon2id", "1")),
            ("argon2id, 256 MiB, t=4, 4 lanes", argon("argon2id", "4")),
        ]
    } else {
        vec![(
            "pbkdf2-sha256, 1000 iterations (smoke)",
            pbkdf2("sha256", "1000"),
        )]
    };
    let vcpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    let dir = tempfile::tempdir().unwrap();
    let run = dir.path().join("run");
    let daemon = Daemon::start(&run);
    println!("CPU: {} ({vcpus} threads)", cpu_model());
    println!(
        "Argon2 compression path: {:?} (vault_vm::argon2::CompressPath::detect(); the vault \
         sees the host's AVX2/AVX-512 CPUID bits)",
        vault_vm::argon2::CompressPath::detect()
    );
    println!("vault: vmvaultd, kvm backend, default vault vCPUs; medians of {ROUNDS}");
    let imgs: Vec<PathBuf> = cases
        .iter()
        .enumerate()
        .map(|(i, (_, args))| {
            let a: Vec<&str> = args.iter().map(String::as_str).collect();
            format(dir.path(), &format!("img{i}"), &a)
        })
        .collect();
    // The daemon starts its kvm vault on the first request: not part of any case.
    let mut client = Client::connect(&run).unwrap();
    vault_unlock(&mut client, &candidate(&imgs[0]));
    // The fixed cost of the control protocol in the vault column (two requests).
    let ping = median(
        (0..5)
            .map(|_| {
                let t = Instant::now();
                client.ping().unwrap();
                t.elapsed()
            })
            .collect(),
    );
    println!(
        "control round trip (ping): {:.2} ms; the vault column makes two requests",
        ms(ping)
    );
    drop(client);
    println!(
        "{:<34} {:>10} {:>15} {:>12} {:>16}",
        "case", "vault ms", "CLI ms", "cryptsetup", "vault/cryptsetup"
    );
    for ((label, _), img) in cases.iter().zip(&imgs) {
        let r = bench(&daemon, img);
        let ratio = r.vault.as_secs_f64() / r.cs.as_secs_f64();
        println!(
            "{label:<34} {:>10.1} {:>9.1} {:<6} {:>9.1} ms {:>11.3} {}",
            ms(r.vault),
            ms(r.cli),
            if r.cli_in_vault { "(vault)" } else { "(host)" },
            ms(r.cs),
            ratio,
            if ratio <= 1.1 { "ok" } else { "SLOW" },
        );
    }
}
