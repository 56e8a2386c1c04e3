//! `vmvault-generator`: the systemd generator that turns `/etc/vaulttab` (or
//! `$VMVAULT_VAULTTAB`) and the `vmvault.*`/`rd.vmvault.*` kernel command-line options into
//! `vmvault@NAME.service` units. Installed in /usr/lib/systemd/system-generators/; systemd
//! runs it as `vmvault-generator NORMAL-DIR EARLY-DIR LATE-DIR` and it writes into
//! NORMAL-DIR, as systemd-cryptsetup-generator does. Problems go to stderr (the journal);
//! a bad line never stops the other entries. Exit status 0 unless the output directory is
//! unusable (or the arguments are wrong).

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use vmvault_boot::generator::{self, Inputs, INITRD_RELEASE};
use vmvault_boot::vaulttab::{DEFAULT_PATH, PATH_ENV};

fn main() -> ExitCode {
    let args: Vec<PathBuf> = std::env::args_os().skip(1).map(PathBuf::from).collect();
    if !(args.len() == 1 || args.len() == 3) {
        eprintln!("usage: vmvault-generator NORMAL-DIR [EARLY-DIR LATE-DIR]");
        return ExitCode::from(2);
    }
    let vaulttab = std::env::var_os(PATH_ENV)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_PATH), PathBuf::from);
    // As systemd: $SYSTEMD_PROC_CMDLINE replaces /proc/cmdline (tests, containers).
    let cmdline = match std::env::var("SYSTEMD_PROC_CMDLINE") {
        Ok(v) => v,
        Err(_) => std::fs::read_to_string("/proc/cmdline").unwrap_or_default(),
    };
    // As systemd's in_initrd(): $SYSTEMD_IN_INITRD overrides the check.
    let in_initrd = match std::env::var("SYSTEMD_IN_INITRD").ok().as_deref() {
        Some("1" | "yes" | "true" | "on") => true,
        Some("0" | "no" | "false" | "off") => false,
        _ => Path::new(INITRD_RELEASE).exists(),
    };
    let inputs = Inputs {
        vaulttab,
        cmdline,
        in_initrd,
    };
    match generator::run(&inputs, &args[0]) {
        Ok(problems) => {
            for p in problems {
                let level = if p.is_error() { "error" } else { "warning" };
                eprintln!("vmvault-generator: {level}: {}", p.message());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            let mut m = e.to_string();
            let mut src = std::error::Error::source(&e);
            while let Some(s) = src {
                m.push_str(&format!(": {s}"));
                src = s.source();
            }
            eprintln!("vmvault-generator: error: {m}");
            ExitCode::FAILURE
        }
    }
}
