//! Argon2id throughput of the vault's Argon2 core against RustCrypto's `argon2` and the
//! Debian `argon2` CLI (libargon2, the library cryptsetup uses), in the same run.
//!
//! `cargo bench -p vault-vm --bench argon2` measures argon2id with `ARGON2_BENCH_MIB`
//! MiB (default 256) and t = 4, for 1 and 4 lanes: this core on 1 thread, this core as
//! owner plus 1 joining thread, RustCrypto on 1 thread, and `argon2` CLI if installed
//! (wall time of the process, which allocates and wipes its memory; its `-p` runs that
//! many threads). Best of 3 runs each. Without `--bench` (as `cargo test --benches`
//! runs it) it does a tiny smoke run only.

use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::Instant;

use vault_vm::argon2::{
    hash, join, run_owner, Algorithm, Block, CompressPath, Inputs, Job, Params,
};

const PASSWORD: &[u8] = b"pass";
const SALT: &[u8] = b"saltsalt";

/// The job board the owner publishes and the helper thread joins.
static JOB: Job = Job::new();

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|m| m.trim().to_string())
        })
        .unwrap_or_else(|| "unknown".into())
}

/// Best wall time of `runs` calls, in ms.
fn best_ms(runs: usize, mut f: impl FnMut()) -> f64 {
    (0..runs)
        .map(|_| {
            let t = Instant::now();
            f();
            t.elapsed().as_secs_f64() * 1e3
        })
        .fold(f64::INFINITY, f64::min)
}

/// Time of `echo -n pass | argon2 saltsalt -id -t T -m log2(KiB) -p L -l 32`, or None.
fn cli_ms(params: &Params, runs: usize) -> Option<(f64, String)> {
    let log2 = params.m_cost.trailing_zeros();
    if !params.m_cost.is_power_of_two() {
        return None;
    }
    let mut best = f64::INFINITY;
    let mut own = String::new();
    for _ in 0..runs {
        let t = Instant::now();
        let mut child = Command::new("argon2")
            .args(["saltsalt", "-id", "-t"])
            .arg(params.t_cost.to_string())
            .arg("-m")
            .arg(log2.to_string())
            .arg("-p")
            .arg(params.lanes.to_string())
            .args(["-l", "32"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .ok()?;
        {
            use std::io::Write;
            child.stdin.take()?.write_all(PASSWORD).ok()?;
        }
        let out = child.wait_with_output().ok()?;
        let ms = t.elapsed().as_secs_f64() * 1e3;
        if !out.status.success() {
            return None;
        }
        if ms < best {
            best = ms;
            own = String::from_utf8_lossy(&out.stdout)
                .lines()
                .find(|l| l.ends_with("seconds"))
                .unwrap_or("")
                .trim()
                .to_string();
        }
    }
    Some((best, own))
}

fn bench(params: &Params, runs: usize) {
    let inputs = Inputs::new(PASSWORD, SALT);
    let mut mem = vec![Block::ZERO; params.block_count()];
    let mut out = [0u8; 32];
    let mut want = [0u8; 32];
    hash(params, &inputs, &mut mem, &mut want).unwrap(); // warm-up, pages faulted in

    let one = best_ms(runs, || hash(params, &inputs, &mut mem, &mut out).unwrap());
    assert_eq!(out, want);

    let stop = AtomicBool::new(false);
    let (two, helped) = thread::scope(|s| {
        let helper = s.spawn(|| {
            let mut n = 0u64;
            while !stop.load(Ordering::Relaxed) {
                n += u64::from(join(&JOB, 1 << 16));
            }
            n
        });
        let ms = best_ms(runs, || {
            run_owner(&JOB, params, PASSWORD, SALT, &mut mem, &mut out).unwrap()
        });
        stop.store(true, Ordering::Relaxed);
        (ms, helper.join().unwrap())
    });
    assert_eq!(out, want);

    let rc_params =
        argon2::Params::new(params.m_cost, params.t_cost, params.lanes, Some(32)).unwrap();
    let rc = argon2::Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        rc_params,
    );
    let mut rc_mem = vec![argon2::Block::new(); params.block_count()];
    let mut rc_out = [0u8; 32];
    rc.hash_password_into_with_memory(PASSWORD, SALT, &mut rc_out, &mut rc_mem)
        .unwrap();
    let rcms = best_ms(runs, || {
        rc.hash_password_into_with_memory(PASSWORD, SALT, &mut rc_out, &mut rc_mem)
            .unwrap()
    });
    assert_eq!(rc_out, want, "RustCrypto agrees");

    let mib = params.m_cost / 1024;
    let t = params.t_cost;
    let lanes = params.lanes;
    println!("argon2id {mib} MiB t={t} lanes={lanes}:");
    println!("  vault core, 1 thread            {one:8.1} ms");
    println!(
        "  vault core, owner + 1 joiner    {two:8.1} ms  ({:.2}x; joiner did {helped} lane-segments)",
        one / two
    );
    println!("  RustCrypto argon2 0.6, 1 thread {rcms:8.1} ms");
    match cli_ms(params, runs) {
        Some((ms, own)) => println!(
            "  argon2 CLI (libargon2), {lanes} thr  {ms:8.1} ms  (process wall time; CLI says: {own})"
        ),
        None => println!("  argon2 CLI (libargon2)          not installed"),
    }
}

fn main() {
    let full = std::env::args().any(|a| a == "--bench");
    println!(
        "CPU: {} ({} threads available)",
        cpu_model(),
        thread::available_parallelism().map_or(0, |n| n.get())
    );
    println!("compression path: {:?}", CompressPath::detect());
    if !full {
        // `cargo test --benches`: a smoke run only.
        let p = Params {
            algorithm: Algorithm::Argon2id,
            t_cost: 1,
            m_cost: 256,
            lanes: 2,
        };
        bench(&p, 1);
        return;
    }
    let mib: u32 = std::env::var("ARGON2_BENCH_MIB")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(256);
    for lanes in [1, 4] {
        let p = Params {
            algorithm: Algorithm::Argon2id,
            t_cost: 4,
            m_cost: mib * 1024,
            lanes,
        };
        bench(&p, 3);
    }
}
