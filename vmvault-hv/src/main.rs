//! `vmvault-hv --selftest [--backend kvm|soft|auto] [--vcpus N]`: opens a vault, runs the
//! self test and prints backend, vCPUs, guest image size and protection level.
//!
//! The vault's run mode and tuning come from options or, as before, from the environment
//! (`VMVAULT_RUN`, `VMVAULT_IDLE_SPINS`, `VMVAULT_CALLER_SPINS`, `VMVAULT_ASSIST`,
//! `VMVAULT_VCPU_CPUS`, `VMVAULT_VCPU_NICE`); the library itself reads none.

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::Parser;
use vmvault_hv::{BackendKind, CpuPinning, RunMode, Tuning, Vault, VaultConfig};

const USAGE: &str = "usage: vmvault-hv --selftest [--backend kvm|soft|auto] [--vcpus N]";

fn usage() -> ExitCode {
    eprintln!("{USAGE}");
    ExitCode::from(1)
}

/// Opens a vault, runs its self test and prints what it found.
#[derive(Debug, Parser)]
#[command(name = "vmvault-hv", override_usage = &USAGE[7..], args_override_self = true)]
struct Cli {
    /// Run the self test (required: the tool does nothing else).
    #[arg(long)]
    selftest: bool,
    /// Backend: kvm (the vault VM), soft (in-process, memfd_secret) or auto.
    #[arg(long, value_name = "kvm|soft|auto", default_value = "auto")]
    backend: BackendKind,
    /// vCPUs serving requests.
    #[arg(long, value_name = "N", default_value_t = 1)]
    vcpus: usize,
    /// Who runs a sleeping vCPU: a vCPU thread, the submitting thread, or auto (caller
    /// when the vCPUs would take half the CPUs or more).
    #[arg(
        long,
        env = "VMVAULT_RUN",
        value_name = "auto|thread|caller",
        default_value = "auto"
    )]
    run: RunMode,
    /// Base idle spin of a vCPU thread before it sleeps, in ring scans.
    #[arg(long, env = "VMVAULT_IDLE_SPINS", value_name = "N", default_value_t = Tuning::DEFAULT_IDLE_SPINS)]
    idle_spins: u32,
    /// Idle spin of the guest when a submitting thread runs the vCPU.
    #[arg(long, env = "VMVAULT_CALLER_SPINS", value_name = "N", default_value_t = Tuning::DEFAULT_CALLER_SPINS)]
    caller_spins: u32,
    /// Thread mode: 0 keeps a submitter that finds the vCPU asleep from serving the ring
    /// itself while the vCPU thread is woken; anything else allows it.
    #[arg(long, env = "VMVAULT_ASSIST", value_name = "0|1", value_parser = parse_assist, default_value = "1", action = clap::ArgAction::Set)]
    assist: bool,
    /// CPUs of the vCPU threads (vCPU i on the i-th listed), or none for no pinning;
    /// default: the highest CPUs, in thread mode, when CPUs outnumber vCPUs.
    #[arg(long, env = "VMVAULT_VCPU_CPUS", value_name = "3,2|none")]
    vcpu_cpus: Option<CpuPinning>,
    /// Nice value of the vCPU threads (below 0 needs CAP_SYS_NICE).
    #[arg(
        long,
        env = "VMVAULT_VCPU_NICE",
        value_name = "N",
        allow_negative_numbers = true
    )]
    vcpu_nice: Option<i32>,
}

/// `VMVAULT_ASSIST`: only `0` turns assisting off.
fn parse_assist(s: &str) -> Result<bool, std::convert::Infallible> {
    Ok(s != "0")
}

impl Cli {
    fn config(&self) -> VaultConfig {
        VaultConfig {
            backend: self.backend,
            vcpus: self.vcpus,
            run: self.run,
            tuning: Tuning {
                idle_spins: self.idle_spins,
                caller_spins: self.caller_spins,
                assist: self.assist,
                vcpu_cpus: self.vcpu_cpus.clone().unwrap_or_default(),
                vcpu_nice: self.vcpu_nice,
            },
            ..VaultConfig::default()
        }
    }
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            // A bad value names what was wrong; anything else gets the usage line alone.
            if matches!(
                e.kind(),
                ErrorKind::InvalidValue | ErrorKind::ValueValidation
            ) {
                if let Some(line) = e.to_string().lines().next() {
                    eprintln!("vmvault-hv: {}", line.trim_start_matches("error: "));
                }
            }
            return usage();
        }
    };
    if !cli.selftest {
        return usage();
    }
    let cfg = cli.config();
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_consistent() {
        Cli::command().debug_assert();
    }
}
