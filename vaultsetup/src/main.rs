//! `vaultsetup`: the cryptsetup-shaped command line of vmvault.

use std::io::Write;
use std::process::exit;

use clap::Parser;
use vaultsetup::cli::{run, Cli};
use vaultsetup::exit::ExitCode;

/// No core dumps and no ptrace by other users' processes: keys must not leak that way.
fn harden() {
    // SAFETY: prctl(PR_SET_DUMPABLE, 0) takes integer arguments only.
    unsafe {
        libc::prctl(libc::PR_SET_DUMPABLE, 0, 0, 0, 0);
    }
    let zero = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: `zero` is a valid rlimit that lives across the call.
    unsafe {
        libc::setrlimit(libc::RLIMIT_CORE, &zero);
    }
}

fn main() {
    harden();
    let mut cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let code = match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => 0,
                _ => ExitCode::WrongParameters.code(),
            };
            let _ = e.print();
            exit(code);
        }
    };
    // vmvaultd to start if none runs: $VMVAULTD, else next to this program, else $PATH.
    cli.spawn = vmvault_proto::client::SpawnConfig {
        program: std::env::var_os("VMVAULTD").map(std::path::PathBuf::from),
        search_path: std::env::var_os("PATH"),
        initrd: vmvault_proto::client::in_initramfs(std::path::Path::new("/")),
    };
    cli.vaulttab_source = std::env::var(vmvault_boot::generator::SOURCE_ENV)
        .ok()
        .filter(|s| !s.is_empty());
    let mut notes = Vec::new();
    let r = run(&cli, &mut notes);
    for n in &notes {
        eprintln!("{n}");
    }
    match r {
        Ok(out) => {
            let mut so = std::io::stdout().lock();
            let _ = so.write_all(out.stdout.as_bytes());
            if cli.verbose {
                let _ = writeln!(so, "Command successful.");
            }
            let _ = so.flush();
            exit(0);
        }
        Err(f) => {
            if !f.stdout.is_empty() {
                let mut so = std::io::stdout().lock();
                let _ = so.write_all(f.stdout.as_bytes());
                let _ = so.flush();
            }
            if !f.message.is_empty() {
                eprintln!("{}", f.message);
            }
            if cli.verbose {
                eprintln!(
                    "Command failed with code -{} ({}).",
                    f.code.code(),
                    f.code.describe()
                );
            }
            exit(f.code.code());
        }
    }
}
