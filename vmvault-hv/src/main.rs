//! `vmvault-hv --selftest [--backend kvm|soft|auto] [--vcpus N]`: opens a vault, runs the
//! self test and prints backend, vCPUs, guest image size and protection level.

use std::process::ExitCode;

use vmvault_hv::{BackendKind, Vault, VaultConfig};

fn usage() -> ExitCode {
    eprintln!("usage: vmvault-hv --selftest [--backend kvm|soft|auto] [--vcpus N]");
    ExitCode::from(1)
}

fn main() -> ExitCode {
    let mut args = std::env::args().skip(1);
    let mut cfg = VaultConfig::default();
    let mut selftest = false;
    while let Some(a) = args.next() {
        match a.as_str() {
            "--selftest" => selftest = true,
            "--backend" => match args.next().map(|s| s.parse::<BackendKind>()) {
                Some(Ok(b)) => cfg.backend = b,
                _ => return usage(),
            },
            "--vcpus" => match args.next().and_then(|s| s.parse().ok()) {
                Some(n) => cfg.vcpus = n,
                None => return usage(),
            },
            _ => return usage(),
        }
    }
    if !selftest {
        return usage();
    }
    let t = std::time::Instant::now();
    let vault = match Vault::open(&cfg) {
        Ok(v) => v,
        Err(e) => {
            eprintln!("vmvault-hv: cannot open the vault: {e}");
            return ExitCode::from(1);
        }
    };
    let opened = t.elapsed();
    let report = match vault.selftest() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("vmvault-hv: self test failed: {e}");
            return ExitCode::from(1);
        }
    };
    println!("selftest: ok");
    println!("backend: {}", vault.backend().name());
    println!("vcpus: {}", vault.vcpus());
    println!("guest image size: {} bytes", Vault::guest_image_size());
    println!("engine in vault: {}", report.engine_backend);
    println!("window: {} bytes", vault.window().len());
    println!("open time: {:.1} ms", opened.as_secs_f64() * 1e3);
    println!("protection: {}", vault.protection());
    if let Err(e) = vault.shutdown() {
        eprintln!("vmvault-hv: shutdown: {e}");
        return ExitCode::from(1);
    }
    ExitCode::SUCCESS
}
