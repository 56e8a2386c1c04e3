//! Argon2id time of the vault's Argon2 core against RustCrypto's `argon2` and libargon2
//! (the library cryptsetup links; loaded with `dlopen` when present), in the same run.
//!
//! `cargo bench -p vault-vm --bench argon2` measures argon2id with `ARGON2_BENCH_MIB`
//! MiB (default 256) and t = 4, for 1 and 4 lanes: this core on 1 thread, this core as
//! owner plus 1 joining thread, RustCrypto on 1 thread, and libargon2's
//! `argon2id_hash_raw` with threads = lanes (it allocates, faults in and wipes its memory
//! on every call; the others reuse a faulted-in buffer, as the vault's scratch memory
//! is). Best of 3 runs each; the machine's other load shows as noise. Without `--bench` (as `cargo test --benches`
//! runs it) it does a tiny smoke run only.

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

/// `argon2id_hash_raw` of libargon2 (t, m KiB, parallelism, pwd, pwdlen, salt, saltlen,
/// hash, hashlen) -> 0 on success.
type Argon2idHashRaw =
    unsafe extern "C" fn(u32, u32, u32, *const u8, usize, *const u8, usize, *mut u8, usize) -> i32;

unsafe extern "C" {
    fn dlopen(filename: *const std::ffi::c_char, flag: i32) -> *mut std::ffi::c_void;
    fn dlsym(
        handle: *mut std::ffi::c_void,
        symbol: *const std::ffi::c_char,
    ) -> *mut std::ffi::c_void;
}

/// libargon2 (the library cryptsetup links, Debian's `libargon2.so.1`), if present.
fn libargon2() -> Option<Argon2idHashRaw> {
    const RTLD_NOW: i32 = 2;
    // SAFETY: a NUL-terminated name; dlopen has no other preconditions.
    let h = unsafe { dlopen(c"libargon2.so.1".as_ptr(), RTLD_NOW) };
    if h.is_null() {
        return None;
    }
    // SAFETY: a valid handle and a NUL-terminated symbol name.
    let f = unsafe { dlsym(h, c"argon2id_hash_raw".as_ptr()) };
    if f.is_null() {
        return None;
    }
    // SAFETY: `argon2id_hash_raw` has this C signature (argon2.h).
    Some(unsafe { std::mem::transmute::<*mut std::ffi::c_void, Argon2idHashRaw>(f) })
}

/// Best time of libargon2 with threads = lanes (as cryptsetup runs it on enough CPUs).
fn libargon2_ms(f: Argon2idHashRaw, params: &Params, runs: usize, want: &[u8; 32]) -> f64 {
    let mut out = [0u8; 32];
    let ms = best_ms(runs, || {
        // SAFETY: valid pointers and lengths for the inputs and the 32-byte output.
        let rc = unsafe {
            f(
                params.t_cost,
                params.m_cost,
                params.lanes,
                PASSWORD.as_ptr(),
                PASSWORD.len(),
                SALT.as_ptr(),
                SALT.len(),
                out.as_mut_ptr(),
                out.len(),
            )
        };
        assert_eq!(rc, 0, "libargon2 failed");
    });
    assert_eq!(&out, want, "libargon2 agrees");
    ms
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
    match libargon2() {
        Some(f) => {
            let ms = libargon2_ms(f, params, runs, &want);
            println!(
                "  libargon2 (cryptsetup's), {lanes} thr {ms:8.1} ms  (vault 2 threads / libargon2: {:.2})",
                two / ms
            );
        }
        None => println!("  libargon2 (cryptsetup's)         not found"),
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
