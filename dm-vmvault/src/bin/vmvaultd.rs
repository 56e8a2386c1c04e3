//! `vmvaultd`: the vmvault daemon. One per host (per run directory).
//!
//! ```text
//! vmvaultd [--run-dir DIR] [--fuse-threads N] [--vault-vcpus N] [--no-mlock]
//! ```
//!
//! The run directory defaults to `$VMVAULT_RUN_DIR`, else `/run/vmvault`. Control
//! socket: `<run-dir>/control` (root only, JSON lines; see `vmvault_proto::protocol`). The
//! run directory must be a directory (not a symlink) owned by root that group and others
//! cannot write; it is created with mode 0700 when missing.
//!
//! SIGTERM (or SIGINT): no new volumes; idle volumes are closed at once, volumes in use
//! are closed as soon as they are released (the log says what each one waits for), then
//! the vaults' memory is wiped and the daemon exits 0.

use std::path::PathBuf;
use std::process::ExitCode;

use dm_vmvault::daemon::{self, DaemonConfig};

fn usage() -> ExitCode {
    eprintln!("usage: vmvaultd [--run-dir DIR] [--fuse-threads N] [--vault-vcpus N] [--no-mlock]");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let mut cfg = DaemonConfig {
        run_dir: daemon::default_run_dir(),
        // As many as fio-style queues keep in flight (16): requests that wait for the
        // vault then share one KVM_RUN episode (random 4K: 8 threads ~2.3 requests per
        // episode, 16 threads ~3.5, ~1.2x the throughput).
        fuse_threads: 16,
        mlock: true,
        // Each vCPU polls its ring before sleeping: leave cores for FUSE and backing I/O.
        vault_vcpus: (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--run-dir" => match args.next() {
                Some(d) => cfg.run_dir = PathBuf::from(d),
                None => return usage(),
            },
            "--fuse-threads" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => cfg.fuse_threads = n,
                _ => return usage(),
            },
            "--no-mlock" => cfg.mlock = false,
            "--vault-vcpus" => match args.next().and_then(|n| n.parse().ok()) {
                Some(n) if n > 0 => cfg.vault_vcpus = n,
                _ => return usage(),
            },
            "-h" | "--help" => {
                usage();
                return ExitCode::SUCCESS;
            }
            _ => return usage(),
        }
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("vmvaultd: must run as root");
        return ExitCode::from(2);
    }
    match daemon::run(cfg) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmvaultd: {e}");
            match e {
                daemon::DaemonError::Host(daemon::host::HostError::AlreadyRunning { .. }) => {
                    ExitCode::from(5)
                }
                _ => ExitCode::from(4),
            }
        }
    }
}
