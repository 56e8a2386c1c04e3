//! `vmvault-generator`: the systemd generator that turns `/etc/vaulttab` (or
//! `$VMVAULT_VAULTTAB`) and the `vmvault.*`/`rd.vmvault.*` kernel command-line options into
//! `vmvault@NAME.service` units. Installed in /usr/lib/systemd/system-generators/; systemd
//! runs it as `vmvault-generator NORMAL-DIR EARLY-DIR LATE-DIR` and it writes into
//! NORMAL-DIR, as systemd-cryptsetup-generator does. Problems go to the kernel log
//! (`/dev/kmsg`, which the journal reads) when systemd runs the generator (it sets
//! `$SYSTEMD_SCOPE`; a generator's stderr goes nowhere then), to stderr otherwise; a bad
//! line never stops the other entries. Exit status 0 unless the output directory is
//! unusable (or the arguments are wrong).

use std::io::Write;
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
                let level = if p.is_error() {
                    Level::Error
                } else {
                    Level::Warning
                };
                log(level, &p.message());
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
            log(Level::Error, &m);
            ExitCode::FAILURE
        }
    }
}

/// Severity of a message, as syslog numbers it for `/dev/kmsg`.
#[derive(Clone, Copy, Debug)]
enum Level {
    /// `LOG_ERR`.
    Error = 3,
    /// `LOG_WARNING`.
    Warning = 4,
}

/// Writes one message: to `/dev/kmsg` when systemd runs us (as systemd's own generators
/// log), else (or when the kernel log cannot be opened) to stderr.
fn log(level: Level, message: &str) {
    let word = match level {
        Level::Error => "error",
        Level::Warning => "warning",
    };
    if std::env::var_os("SYSTEMD_SCOPE").is_some() {
        if let Ok(mut kmsg) = std::fs::OpenOptions::new().write(true).open("/dev/kmsg") {
            // One write per record; the kernel splits nothing and keeps the priority.
            let record = format!("<{}>vmvault-generator: {word}: {message}\n", level as u8);
            if kmsg.write_all(record.as_bytes()).is_ok() {
                return;
            }
        }
    }
    eprintln!("vmvault-generator: {word}: {message}");
}
