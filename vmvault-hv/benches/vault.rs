//! Vault benchmark (harness = false). Prints, in one run:
//! - AES-256-XTS through the vault with 1 and 2 vCPUs next to the in-process engine with
//!   1 and 2 threads, at 64 KiB, 256 KiB and 1 MiB per request, three ways:
//!   * per request: the median time of one request (submitting thread to completion)
//!     versus the median time of the same work in the engine; robust to the preemption
//!     by other processes that a shared 2-core machine suffers;
//!   * sustained: wall-clock bytes per second with three submitting threads per vCPU,
//!     measured in slices alternating with the engine so outside load hits both alike
//!     (also per CPU-second of the vCPU threads);
//!   * pipelined: one thread per vCPU keeps three requests in flight
//!     (`Vault::encrypt_async`), so the vCPU never waits for a round trip: what a vCPU
//!     delivers when it is fed, versus the engine's sustained figure;
//! - the round-trip latency of one 4 KiB request (and after the vCPU went to sleep), in
//!   thread mode and in caller mode (`RunMode`);
//! - the guest image size.
//!
//! `cargo bench -p vmvault-hv --bench vault`. Env: `VAULT_BENCH_SECS` (time per figure,
//! default 3), `VAULT_BENCH_BACKEND=soft`, `VAULT_BENCH_SUBMIT_CPUS=0` (pin the
//! submitting threads; pair with `VMVAULT_VCPU_CPUS=1` to give the vCPU its own core),
//! `VAULT_BENCH_VCPUS=1` (vCPU counts to measure, default `1,2`),
//! `VAULT_BENCH_RUN=caller` (run mode of the throughput part; default thread: dedicated
//! polling vCPUs, what "per vCPU" means). The vault's own tuning variables
//! (`VMVAULT_IDLE_SPINS`, `VMVAULT_CALLER_SPINS`, `VMVAULT_ASSIST=0`,
//! `VMVAULT_VCPU_CPUS=3,2|none`, `VMVAULT_VCPU_NICE`, as for the `vmvault-hv` tool) are
//! read here and passed in [`Tuning`]; `VMVAULT_RUN=thread|caller` picks the mode of
//! `VAULT_BENCH_RUN=auto`.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vmvault_hv::{BackendKind, RunMode, SlotId, Tuning, Vault, VaultConfig, WindowBuf};

/// The vault tuning from the `VMVAULT_*` variables (the library reads none itself);
/// unset or unparsable ones keep their default.
fn tuning() -> Tuning {
    fn var<T: std::str::FromStr>(name: &str) -> Option<T> {
        std::env::var(name).ok().and_then(|v| v.parse().ok())
    }
    let d = Tuning::default();
    Tuning {
        idle_spins: var("VMVAULT_IDLE_SPINS").unwrap_or(d.idle_spins),
        caller_spins: var("VMVAULT_CALLER_SPINS").unwrap_or(d.caller_spins),
        assist: std::env::var("VMVAULT_ASSIST").map_or(d.assist, |v| v != "0"),
        vcpu_cpus: var("VMVAULT_VCPU_CPUS").unwrap_or(d.vcpu_cpus),
        vcpu_nice: var("VMVAULT_VCPU_NICE").or(d.vcpu_nice),
    }
}

fn secs() -> Duration {
    let s: f64 = std::env::var("VAULT_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    Duration::from_secs_f64(s)
}

/// Keeps a submitting thread off the CPUs the vCPUs are pinned to (as a deployment
/// would), or on `VAULT_BENCH_SUBMIT_CPUS`.
fn pin_submitter(vault: &Vault) {
    let cpus: Vec<usize> = match std::env::var("VAULT_BENCH_SUBMIT_CPUS") {
        Ok(c) => c.split(',').filter_map(|c| c.trim().parse().ok()).collect(),
        Err(_) => {
            let pinned = vault.vcpu_cpus();
            if pinned.is_empty() {
                return;
            }
            let n = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
            (0..n).filter(|c| !pinned.contains(c)).collect()
        }
    };
    if cpus.is_empty() {
        return;
    }
    // SAFETY: a zeroed cpu_set_t is empty; sets the affinity of this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        for c in cpus {
            libc::CPU_SET(c, &mut set);
        }
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// Runs `f` on `threads` threads for `dur`; returns (bytes, seconds, per-request times).
fn run(
    threads: usize,
    dur: Duration,
    f: impl Fn(&AtomicBool, &mut Vec<f64>) -> u64 + Sync,
) -> (u64, f64, Vec<f64>) {
    let stop = AtomicBool::new(false);
    let total = AtomicU64::new(0);
    let times = Mutex::new(Vec::new());
    let t0 = Instant::now();
    std::thread::scope(|s| {
        for _ in 0..threads {
            let (stop, total, f, times) = (&stop, &total, &f, &times);
            s.spawn(move || {
                let mut mine = Vec::new();
                total.fetch_add(f(stop, &mut mine), Ordering::Relaxed);
                times.lock().unwrap().extend(mine);
            });
        }
        std::thread::sleep(dur);
        stop.store(true, Ordering::Relaxed);
    });
    (
        total.load(Ordering::Relaxed),
        t0.elapsed().as_secs_f64(),
        times.into_inner().unwrap(),
    )
}

/// CPU time (seconds) the vCPU threads (`vault-vcpu*`) of this process have run.
fn vcpu_cpu_time() -> f64 {
    let mut ns = 0u64;
    for t in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(t.path().join("comm")).unwrap_or_default();
        if comm.starts_with("vault-vcpu") {
            let st = std::fs::read_to_string(t.path().join("schedstat")).unwrap_or_default();
            ns += st
                .split_whitespace()
                .next()
                .and_then(|x| x.parse().ok())
                .unwrap_or(0);
        }
    }
    ns as f64 / 1e9
}

/// CPU time of the calling thread in seconds.
fn thread_cpu_time() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: writes the timespec we pass.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU nanoseconds used by engine threads (summed by `engine_loop`).
static ENGINE_CPU_NS: AtomicU64 = AtomicU64::new(0);

fn median(v: &mut [f64]) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

struct Ctx<'a> {
    engine: &'a SectorCipher,
    geom: Geometry,
    vault: &'a Vault,
    slot: SlotId,
}

impl Ctx<'_> {
    fn engine_loop(&self, req: usize, stop: &AtomicBool, times: &mut Vec<f64>) -> u64 {
        let cpu0 = thread_cpu_time();
        let mut buf = vec![0x5au8; req];
        let (mut n, mut sector) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            self.engine.encrypt(&self.geom, sector, &mut buf).unwrap();
            times.push(t.elapsed().as_secs_f64());
            sector += (req / 512) as u64;
            n += req as u64;
        }
        ENGINE_CPU_NS.fetch_add(((thread_cpu_time() - cpu0) * 1e9) as u64, Ordering::Relaxed);
        n
    }

    fn vault_loop(&self, req: usize, stop: &AtomicBool, times: &mut Vec<f64>) -> u64 {
        pin_submitter(self.vault);
        let mut buf = self.vault.window().alloc(req).unwrap();
        let (mut n, mut sector) = (0u64, 0u64);
        while !stop.load(Ordering::Relaxed) {
            let t = Instant::now();
            self.vault
                .encrypt(self.slot, &self.geom, sector, &mut buf)
                .unwrap();
            times.push(t.elapsed().as_secs_f64());
            sector += (req / 512) as u64;
            n += req as u64;
        }
        n
    }

    /// One thread keeping `PIPELINE_DEPTH` requests in flight (`encrypt_async`): the vCPU
    /// finds the next request waiting when it finishes one, with no round trip between.
    fn vault_pipelined(&self, req: usize, stop: &AtomicBool) -> u64 {
        pin_submitter(self.vault);
        let mut bufs: Vec<WindowBuf> = (0..PIPELINE_DEPTH)
            .map(|_| self.vault.window().alloc(req).unwrap())
            .collect();
        let ptrs: Vec<*mut WindowBuf> = bufs.iter_mut().map(|b| b as *mut WindowBuf).collect();
        let step = (req / 512) as u64;
        let (mut n, mut sector) = (0u64, 0u64);
        let mut queue = VecDeque::new();
        let submit = |k: usize, sector: u64| {
            let buf: *mut WindowBuf = ptrs[k];
            // SAFETY: buffer k is in at most one request at a time (it is resubmitted only
            // after the request at the front of the queue, its previous one, completed), and
            // every Pending is waited for below.
            unsafe {
                self.vault
                    .encrypt_async(self.slot, &self.geom, sector, &mut *buf)
                    .unwrap()
            }
        };
        for k in 0..PIPELINE_DEPTH {
            queue.push_back(submit(k, sector));
            sector += step;
        }
        let mut k = 0;
        while !stop.load(Ordering::Relaxed) {
            queue.pop_front().unwrap().wait().unwrap();
            n += req as u64;
            queue.push_back(submit(k % PIPELINE_DEPTH, sector));
            k += 1;
            sector += step;
        }
        for p in queue {
            p.wait().unwrap();
            n += req as u64;
        }
        n
    }
}

/// Requests one pipelining thread keeps in flight.
const PIPELINE_DEPTH: usize = 3;

fn main() {
    let backend = match std::env::var("VAULT_BENCH_BACKEND").as_deref() {
        Ok("soft") => BackendKind::Soft,
        _ => BackendKind::Kvm,
    };
    if backend == BackendKind::Kvm && std::fs::File::open("/dev/kvm").is_err() {
        if std::env::var_os("CI").is_some() {
            panic!("/dev/kvm is not usable and CI is set");
        }
        println!("SKIPPED: /dev/kvm is not usable here");
        return;
    }
    let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
    let key: Vec<u8> = (0..64u8)
        .map(|i| i.wrapping_mul(37).wrapping_add(11))
        .collect();
    let geom = Geometry::new(4096, false, 0).unwrap();
    let engine = SectorCipher::new(spec, &key).unwrap();
    println!(
        "vault benchmark: AES-256-XTS, 4 KiB sectors, backend {}",
        backend.name()
    );
    println!("guest image size: {} bytes", Vault::guest_image_size());
    println!("engine backend: {}", engine.backend_name());

    let rounds = 4;
    let slice = secs() / (rounds * 2);
    let vcpu_counts: Vec<usize> = std::env::var("VAULT_BENCH_VCPUS")
        .ok()
        .map(|v| v.split(',').filter_map(|n| n.trim().parse().ok()).collect())
        .unwrap_or_else(|| vec![1, 2]);
    for vcpus in vcpu_counts {
        let mode = match std::env::var("VAULT_BENCH_RUN").as_deref() {
            Ok("caller") => RunMode::Caller,
            // `auto` follows `VMVAULT_RUN` when it names a mode (the library reads no
            // environment), else the vault's own choice.
            Ok("auto") => match std::env::var("VMVAULT_RUN").as_deref() {
                Ok("thread") => RunMode::Thread,
                Ok("caller") => RunMode::Caller,
                _ => RunMode::Auto,
            },
            _ => RunMode::Thread,
        };
        let vault = Vault::open(&VaultConfig {
            backend,
            vcpus,
            window_size: 64 << 20,
            run: mode,
            tuning: tuning(),
        })
        .unwrap();
        let slot = vault.import_key(spec, &key).unwrap();
        println!(
            "-- {vcpus} vCPU(s) (vault: in-guest engine {}, run mode {:?}, vCPUs pinned to {:?})",
            vault.selftest().unwrap().engine_backend,
            vault.run_mode(),
            vault.vcpu_cpus()
        );
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        if cpus < 2 * vcpus {
            println!(
                "   note: {cpus} CPUs for {vcpus} vCPUs plus their submitting threads: every vCPU \
                 shares its CPU with submitters (each preemption is a VM exit), so these are not \
                 per-vCPU figures; measuring them needs at least {} CPUs",
                2 * vcpus
            );
        }
        let ctx = Ctx {
            engine: &engine,
            geom,
            vault: &vault,
            slot,
        };
        for req in [64 * 1024usize, 256 * 1024, 1024 * 1024] {
            // Per request: one submitting thread per vCPU vs one engine thread per vCPU.
            let (mut et, mut vt) = (Vec::new(), Vec::new());
            let (mut v1b, mut v1s) = (0u64, 0f64);
            for _ in 0..rounds {
                et.extend(run(vcpus, slice / 2, |s, t| ctx.engine_loop(req, s, t)).2);
                let (b, s, t) = run(vcpus, slice / 2, |s, t| ctx.vault_loop(req, s, t));
                vt.extend(t);
                (v1b, v1s) = (v1b + b, v1s + s);
            }
            let v1_sus = v1b as f64 / v1s / 1e9;
            let (em, vm) = (median(&mut et), median(&mut vt));
            let (e_gbs, v_gbs) = (req as f64 / em / 1e9, req as f64 / vm / 1e9);
            // Sustained: three submitting threads per vCPU.
            let (mut eb, mut es, mut vb, mut vs) = (0u64, 0f64, 0u64, 0f64);
            let (mut e_cpu, mut v_cpu) = (0f64, 0f64);
            let (mut pb, mut ps) = (0u64, 0f64);
            for _ in 0..rounds {
                let (b, s, _) = run(vcpus, slice, |s, _| ctx.vault_pipelined(req, s));
                (pb, ps) = (pb + b, ps + s);
                let c0 = ENGINE_CPU_NS.load(Ordering::Relaxed);
                let (b, s, _) = run(vcpus, slice, |s, t| ctx.engine_loop(req, s, t));
                (eb, es) = (eb + b, es + s);
                e_cpu += (ENGINE_CPU_NS.load(Ordering::Relaxed) - c0) as f64 / 1e9;
                let c0 = vcpu_cpu_time();
                let (b, s, _) = run(3 * vcpus, slice, |s, t| ctx.vault_loop(req, s, t));
                (vb, vs) = (vb + b, vs + s);
                v_cpu += vcpu_cpu_time() - c0;
            }
            let (e_sus, v_sus) = (eb as f64 / es / 1e9, vb as f64 / vs / 1e9);
            let p_sus = pb as f64 / ps / 1e9;
            // Per CPU-second actually given to the vCPU threads / engine threads: what a
            // vCPU delivers when it runs, whatever else the machine is doing.
            let (e_cpu_gbs, v_cpu_gbs) = (eb as f64 / e_cpu / 1e9, vb as f64 / v_cpu / 1e9);
            println!(
                "xts-256 {:>4} KiB  per request: vault {v_gbs:6.2} GB/s/vCPU  engine {e_gbs:6.2} GB/s/thread  ratio {:.3}   \
                 sustained: vault {v_sus:6.2} GB/s (1 submitter/vCPU: {v1_sus:5.2})  engine {e_sus:6.2} GB/s ({vcpus} thr)  ratio {:.3}   \
                 per CPU-second: vault {v_cpu_gbs:6.2} GB/s (vCPU threads on CPU {:.0}%)  engine {e_cpu_gbs:6.2} GB/s  ratio {:.3}   \
                 pipelined ({PIPELINE_DEPTH} in flight per thread, 1 thread/vCPU): vault {p_sus:6.2} GB/s  ratio {:.3}",
                req / 1024,
                v_gbs / e_gbs,
                v_sus / e_sus,
                100.0 * v_cpu / vs / vcpus as f64,
                v_cpu_gbs / e_cpu_gbs,
                p_sus / e_sus
            );
        }
        println!("   vault stats: {:?}", vault.stats().unwrap());
        vault.drop_key(slot).unwrap();
    }

    // Round-trip latency of one 4 KiB request (1 vCPU, one submitting thread), with a
    // polling vCPU thread and with the vCPU run on the submitting thread.
    let mut local = vec![0u8; 4096];
    let t = Instant::now();
    for _ in 0..10_000 {
        engine.encrypt(&geom, 0, &mut local).unwrap();
    }
    let eng_us = t.elapsed().as_secs_f64() * 1e6 / 10_000.0;
    for mode in [RunMode::Thread, RunMode::Caller] {
        std::thread::scope(|s| {
            s.spawn(|| latency(backend, mode, spec, &key, &geom, eng_us));
        });
    }
    println!("guest image size: {} bytes", Vault::guest_image_size());
}

fn latency(
    backend: BackendKind,
    run: RunMode,
    spec: CipherSpec,
    key: &[u8],
    geom: &Geometry,
    eng_us: f64,
) {
    let vault = Vault::open(&VaultConfig {
        backend,
        vcpus: 1,
        window_size: 8 << 20,
        run,
        tuning: tuning(),
    })
    .unwrap();
    let slot = vault.import_key(spec, key).unwrap();
    let mut buf = vault.window().alloc(4096).unwrap();
    pin_submitter(&vault);
    println!(
        "-- latency, run mode {:?} (vCPU pinned to {:?}, submitter kept off it)",
        vault.run_mode(),
        vault.vcpu_cpus()
    );
    let mut lat = Vec::new();
    let deadline = Instant::now() + secs() / 2;
    while Instant::now() < deadline {
        let t = Instant::now();
        vault.encrypt(slot, geom, 0, &mut buf).unwrap();
        lat.push(t.elapsed().as_secs_f64() * 1e6);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let pct = |p: f64| lat[((lat.len() - 1) as f64 * p) as usize];
    println!(
        "4 KiB round trip: median {:.2} µs, p99 {:.2} µs, min {:.2} µs ({} requests; the engine alone takes {:.2} µs)",
        pct(0.5),
        pct(0.99),
        lat[0],
        lat.len(),
        eng_us
    );
    let mut wake = Vec::new();
    for _ in 0..20 {
        std::thread::sleep(Duration::from_millis(10));
        let t = Instant::now();
        vault.encrypt(slot, geom, 0, &mut buf).unwrap();
        wake.push(t.elapsed().as_secs_f64() * 1e6);
    }
    println!(
        "4 KiB round trip to a sleeping vCPU: median {:.1} µs",
        median(&mut wake)
    );
}
