//! `vmvault-udev`: the udev side of /etc/vaulttab (installed as /usr/lib/vmvault/vmvault-udev).
//!
//! - `vmvault-udev DEVNAME`, run by `IMPORT{program}` in 60-vmvault-vaulttab.rules: reads
//!   the device's udev properties from the environment (`ID_FS_UUID`, `ID_PART_ENTRY_UUID`,
//!   `ID_FS_LABEL`, `ID_PART_ENTRY_NAME`, `DEVLINKS`; `DEVNAME` defaults to the argument) and
//!   prints `VMVAULT_TAB_NAME=...` and `VMVAULT_TAB_UNIT=vmvault@....service` when a vaulttab
//!   entry that is not `noauto` names the device; nothing otherwise.
//! - `vmvault-udev --attach DEVNAME`, for initramfs images without systemd: starts
//!   `vaultsetup attach NAME DEVNAME KEYFILE OPTIONS` in its own session, detached (double
//!   fork; output appended to /run/vmvault/attach-NAME.log) and returns at once, for entries
//!   with a key file only (udev cannot prompt), and only if /dev/mapper/NAME does not exist.
//!
//! `VMVAULT_VAULTTAB` overrides the table's path; `VMVAULT_VAULTSETUP` the vaultsetup
//! binary; `VMVAULT_RUN_DIR` the log directory (/run/vmvault).
//! Always exits 0 when the arguments are right: udev must not log a failed rule for
//! devices that are not in the table.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitCode, Stdio};

use vmvault_boot::generator::{filter_options, VAULTSETUP};
use vmvault_boot::udev::{can_attach_unattended, find_entry, import_lines};
use vmvault_boot::vaulttab::{Entry, Vaulttab, DEFAULT_PATH, PATH_ENV};

fn env_path(var: &str, default: &str) -> PathBuf {
    std::env::var_os(var)
        .filter(|v| !v.is_empty())
        .map_or_else(|| PathBuf::from(default), PathBuf::from)
}

fn chain(e: &dyn std::error::Error) -> String {
    let mut m = e.to_string();
    let mut src = e.source();
    while let Some(s) = src {
        m.push_str(&format!(": {s}"));
        src = s.source();
    }
    m
}

/// Starts `vaultsetup attach` for `e` on `devname`, detached from udev.
fn attach(e: &Entry, devname: &str) -> Result<(), std::io::Error> {
    let run_dir = env_path("VMVAULT_RUN_DIR", "/run/vmvault");
    std::fs::create_dir_all(&run_dir)?;
    let log = run_dir.join(format!("attach-{}.log", e.name));
    let out = OpenOptions::new().create(true).append(true).open(&log)?;
    let err = out.try_clone()?;
    let mut cmd = Command::new(env_path("VMVAULT_VAULTSETUP", VAULTSETUP));
    cmd.arg("attach")
        .arg(&e.name)
        .arg(devname)
        .arg(&e.key_text)
        .arg(filter_options(&e.options_text))
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err)
        .current_dir("/");
    // SAFETY: the closure runs in the forked child before exec and calls only
    // async-signal-safe functions (setsid, fork, _exit); it touches no Rust state.
    unsafe {
        cmd.pre_exec(|| {
            // A session of its own (udev kills its process group on timeout)...
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // ...and a second fork, so that the process that execs is not a session
            // leader (it can never acquire a controlling terminal) and its parent exits
            // at once: the spawn below returns as soon as the grandchild has exec'd.
            match libc::fork() {
                -1 => Err(std::io::Error::last_os_error()),
                0 => Ok(()),
                _ => libc::_exit(0),
            }
        });
    }
    let mut child = cmd.spawn()?;
    // Reaps the intermediate process, which exited right after the second fork.
    child.wait()?;
    eprintln!(
        "vmvault-udev: attaching {} on {devname} (log: {})",
        e.name,
        log.display()
    );
    Ok(())
}

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let (attach_mode, devname) = match args.as_slice() {
        [d] if !d.starts_with('-') => (false, d.clone()),
        [flag, d] if flag == "--attach" => (true, d.clone()),
        _ => {
            eprintln!("usage: vmvault-udev [--attach] DEVNAME");
            return ExitCode::from(2);
        }
    };
    let path = env_path(PATH_ENV, DEFAULT_PATH);
    let tab = match Vaulttab::read(&path) {
        Ok(t) => t,
        Err(e) if e.source.kind() == std::io::ErrorKind::NotFound => return ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmvault-udev: {}", chain(&e));
            return ExitCode::SUCCESS;
        }
    };
    for e in &tab.errors {
        eprintln!("vmvault-udev: {}, ignoring line", chain(e));
    }
    let props = |k: &str| -> Option<String> {
        match std::env::var(k) {
            Ok(v) => Some(v),
            Err(_) if k == "DEVNAME" => Some(devname.clone()),
            Err(_) => None,
        }
    };
    let Some(entry) = find_entry(&tab, &props) else {
        return ExitCode::SUCCESS;
    };
    if !attach_mode {
        print!("{}", import_lines(entry));
        return ExitCode::SUCCESS;
    }
    if !can_attach_unattended(entry) {
        eprintln!(
            "vmvault-udev: {}: {} needs a passphrase; not attaching from udev",
            entry.location, entry.name
        );
        return ExitCode::SUCCESS;
    }
    if Path::new("/dev/mapper").join(&entry.name).exists() {
        return ExitCode::SUCCESS;
    }
    if let Err(err) = attach(entry, &devname) {
        eprintln!(
            "vmvault-udev: cannot start vaultsetup attach {}: {err}",
            entry.name
        );
    }
    ExitCode::SUCCESS
}
