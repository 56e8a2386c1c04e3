//! The boot verbs: `attach` and `detach` (systemd-cryptsetup's interface, what the
//! generated `vmvault@NAME.service` units run) and `switch-root` (the initramfs
//! hand-over of vmvaultd).
//!
//! `attach NAME DEVICE [KEYFILE [OPTIONS]]`: the fields of a vaulttab line. DEVICE is a
//! path or `UUID=`/`PARTUUID=`/`LABEL=`/`PARTLABEL=`; KEYFILE `-`, `none` or empty asks
//! for a passphrase (systemd-ask-password under systemd, Plymouth, else the terminal;
//! see [`crate::askpass`]), a path is read as a key file, `PATH:DEVICE` reads PATH on
//! DEVICE mounted read-only in a private mount namespace. OPTIONS are vaulttab(5)'s,
//! parsed by `vmvault_boot::vaulttab::Options`; unknown ones are warnings.

use std::path::{Path, PathBuf};
use std::time::Duration;

use clap::Args;
use vmvault_boot::vaulttab::{Backend, Frontend, KeySpec, Options};
use vmvault_proto::client::Client;
use vmvault_proto::protocol::{BackendChoice, FrontendChoice};
use vmvault_proto::VolumeName;

use super::activate::{activate, Activation, KeySource};
use super::{fail, resolve_device, Cli, DaemonArgs, DeviceType, Failure, Output};
use crate::askpass::{self, Agent, Environment};
use crate::exit::ExitCode;
use crate::passphrase::{is_interactive, read_key_file, read_passphrase_timed, KeyInput};
use crate::secret::Passphrase;

/// `attach` arguments (systemd-cryptsetup's order).
#[derive(Debug, Args)]
pub struct AttachArgs {
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Mapping name.
    pub name: String,
    /// The LUKS device: a path, UUID=, PARTUUID=, LABEL= or PARTLABEL=.
    pub device: String,
    /// Key file: `-`, `none` or empty to ask; a path; PATH:DEVICE for a key file on
    /// another device.
    pub keyfile: Option<String>,
    /// Comma-separated vaulttab options (`-`, `none` or empty: none).
    pub options: Option<String>,
}

/// `detach` arguments.
#[derive(Debug, Args)]
pub struct DetachArgs {
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Mapping name.
    pub name: String,
}

/// `switch-root` arguments.
#[derive(Debug, Args)]
pub struct SwitchRootArgs {
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The real root, mounted (initramfs-tools: ${rootmnt}).
    pub new_root: PathBuf,
}

fn backend(b: Backend) -> BackendChoice {
    match b {
        Backend::Auto => BackendChoice::Auto,
        Backend::Kvm => BackendChoice::Kvm,
        Backend::Soft => BackendChoice::Soft,
    }
}

fn frontend(f: Frontend) -> FrontendChoice {
    match f {
        Frontend::Auto => FrontendChoice::Auto,
        Frontend::Fuse => FrontendChoice::Fuse,
        Frontend::Ublk => FrontendChoice::Ublk,
    }
}

/// `attach NAME DEVICE [KEYFILE [OPTIONS]]`.
pub fn attach(cli: &Cli, a: &AttachArgs, out: &mut Output) -> Result<(), Failure> {
    attach_entry(cli, a, out).map_err(|mut f| {
        if let Some(src) = &cli.vaulttab_source {
            if !f.message.is_empty() {
                f.message = format!("{src}: {}", f.message);
            }
        }
        f
    })
}

/// [`attach`] without the vaulttab location in front of the error.
fn attach_entry(cli: &Cli, a: &AttachArgs, out: &mut Output) -> Result<(), Failure> {
    let bad = |m: String| fail(ExitCode::WrongParameters, m);
    let name = VolumeName::new(&a.name).map_err(|e| bad(e.to_string()))?;
    let (opts, warnings) = Options::parse(a.options.as_deref().unwrap_or("")).map_err(|e| {
        bad(format!(
            "Failed to parse options {:?}: {e}",
            a.options.as_deref().unwrap_or("")
        ))
    })?;
    // Printed now: the attach goes on, and a prompt may come next.
    for w in &warnings {
        match &cli.vaulttab_source {
            Some(src) => eprintln!("WARNING: {src}: {w}"),
            None => eprintln!("WARNING: {w}"),
        }
    }
    let key_spec =
        KeySpec::parse(a.keyfile.as_deref().unwrap_or("")).map_err(|e| bad(e.to_string()))?;
    let device = resolve_device(Path::new(&a.device))?;
    let header = opts
        .header
        .as_ref()
        .map(|h| resolve_device(Path::new(&h.to_string())))
        .transpose()?;
    let run_dir = a.daemon.dir();
    let act = Activation {
        name,
        device,
        header,
        device_type: DeviceType::Luks,
        readonly: opts.readonly,
        allow_discards: opts.discard,
        backend: backend(opts.backend),
        frontend: frontend(opts.frontend),
        run_dir,
        verbose: cli.verbose,
        spawn: &cli.spawn,
        accept_active_same: true,
    };
    // Already active on this device: success before any key is read (as
    // systemd-cryptsetup, which looks before reading its key file). No daemon is started
    // here, and no thread: a key file on another device needs a single-threaded process.
    if let Some(mut c) = connect_existing(&act.run_dir) {
        if let Ok(st) = c.status(act.name.as_str()) {
            if super::activate::same_device(&act.device, &st.backing) {
                out.stderr
                    .push(format!("Volume {} already active.", act.name));
                return Ok(());
            }
            return Err(fail(
                ExitCode::Busy,
                format!("Device {} already exists.", act.name),
            ));
        }
    }
    let offset = opts.keyfile_offset.unwrap_or(0);
    let size = opts.keyfile_size.filter(|&s| s != 0);
    let timeout = opts.timeout.filter(|t| !t.is_zero());
    // A key file is read before anything else happens (and before any thread starts:
    // a key file on another device is read in a private mount namespace).
    let key_file: Option<Passphrase> = match &key_spec {
        KeySpec::Ask => None,
        KeySpec::Path(p) => Some(read_key_file(p, offset, size)?),
        KeySpec::PathOnDevice { path, device } => {
            let dev = resolve_device(Path::new(&device.to_string()))?;
            Some(keydev::read_key_on_device(&dev, path, offset, size)?)
        }
    };
    let mut key_file = key_file;
    let retry_prompt;
    let agent = if key_file.is_some() {
        retry_prompt = false;
        Agent::Tty
    } else {
        let agent = Environment::probe().agent();
        retry_prompt = match agent {
            Agent::Systemd | Agent::Plymouth => true,
            Agent::Tty => is_interactive(&KeyInput::default()),
        };
        agent
    };
    let vol_name = a.name.clone();
    let tty_input = KeyInput {
        key_file: None,
        keyfile_offset: 0,
        keyfile_size: None,
    };
    let tty_prompt = format!("{} ", askpass::prompt_for(&vol_name));
    let mut ask = move |_attempt: u32| -> Result<Passphrase, Failure> {
        if let Some(k) = key_file.take() {
            return Ok(k);
        }
        Ok(ask_once(
            agent,
            &vol_name,
            &tty_input,
            &tty_prompt,
            timeout,
        )?)
    };
    let key = KeySource::Passphrase {
        ask: &mut ask,
        tries: opts.tries_or_default(),
        retry: retry_prompt,
        key_slot: opts.key_slot,
    };
    activate(&act, key, out)
}

/// One passphrase from `agent`.
fn ask_once(
    agent: Agent,
    name: &str,
    tty_input: &KeyInput,
    tty_prompt: &str,
    timeout: Option<Duration>,
) -> Result<Passphrase, crate::passphrase::PassphraseError> {
    match agent {
        Agent::Systemd => askpass::read_from_program(askpass::systemd_command(
            &askpass::program(agent),
            name,
            timeout,
        )),
        Agent::Plymouth => {
            askpass::read_from_program(askpass::plymouth_command(&askpass::program(agent), name))
        }
        Agent::Tty => read_passphrase_timed(tty_input, tty_prompt, timeout),
    }
}

fn connect_existing(run_dir: &Path) -> Option<Client> {
    let mut c = Client::connect(run_dir).ok()?;
    c.ping().ok()?;
    Some(c)
}

/// `detach NAME`: close it; an inactive NAME is success ("already inactive"), as
/// systemd-cryptsetup says.
pub fn detach(a: &DetachArgs, out: &mut Output) -> Result<(), Failure> {
    let inactive = |out: &mut Output| {
        out.stderr
            .push(format!("Volume {} already inactive.", a.name));
        Ok(())
    };
    if VolumeName::new(&a.name).is_err() {
        return inactive(out);
    }
    let Some(mut c) = connect_existing(&a.daemon.dir()) else {
        return inactive(out);
    };
    if c.status(&a.name).is_err() {
        return inactive(out);
    }
    c.close(&a.name)
        .map_err(|e| fail(e.exit_code(), e.to_string()))
}

/// `switch-root NEWROOT`.
pub fn switch_root(a: &SwitchRootArgs, _out: &mut Output) -> Result<(), Failure> {
    let run_dir = a.daemon.dir();
    let mut c = Client::connect(&run_dir).map_err(|e| fail(e.exit_code(), e.to_string()))?;
    c.switch_root(&a.new_root)
        .map_err(|e| fail(e.exit_code(), e.to_string()))
}

/// A key file on another device (`PATH:DEVICE`), read with that device mounted
/// read-only in a private directory of a private mount namespace: nobody else sees the
/// mount, and it goes away with this process at the latest.
mod keydev {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use crate::cli::{fail, Failure};
    use crate::exit::ExitCode;
    use crate::passphrase::read_key_file;
    use crate::secret::Passphrase;

    /// Removes the mount point (and unmounts it) when dropped.
    struct MountDir {
        dir: PathBuf,
        mounted: bool,
    }

    impl Drop for MountDir {
        fn drop(&mut self) {
            if self.mounted {
                let _ = Command::new("umount").arg(&self.dir).status();
            }
            let _ = std::fs::remove_dir(&self.dir);
        }
    }

    fn private_namespace() -> Result<(), Failure> {
        let err = |what: &str| {
            fail(
                ExitCode::WrongParameters,
                format!(
                    "Cannot read a key file on another device: {what}: {}",
                    std::io::Error::last_os_error()
                ),
            )
        };
        // SAFETY: unshare takes flags only; this process has no other thread yet.
        if unsafe { libc::unshare(libc::CLONE_NEWNS) } != 0 {
            return Err(err("unshare(CLONE_NEWNS)"));
        }
        // SAFETY: NUL-terminated literals; remounting / as private (recursively) only
        // changes propagation in this new namespace.
        let r = unsafe {
            libc::mount(
                c"none".as_ptr(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if r != 0 {
            return Err(err("make / private"));
        }
        Ok(())
    }

    /// Reads `path` on `device` (skipping `offset` bytes, `size` bytes if given).
    pub fn read_key_on_device(
        device: &Path,
        path: &Path,
        offset: u64,
        size: Option<u64>,
    ) -> Result<Passphrase, Failure> {
        private_namespace()?;
        let base = if Path::new("/run").is_dir() {
            PathBuf::from("/run")
        } else {
            std::env::temp_dir()
        };
        let dir = base.join(format!("vaultsetup-keydev.{}", std::process::id()));
        {
            use std::os::unix::fs::DirBuilderExt;
            std::fs::DirBuilder::new()
                .mode(0o700)
                .create(&dir)
                .map_err(|e| {
                    fail(
                        ExitCode::WrongParameters,
                        format!("Cannot create {}: {e}", dir.display()),
                    )
                })?;
        }
        let mut m = MountDir {
            dir: dir.clone(),
            mounted: false,
        };
        let st = Command::new("mount")
            .args(["-o", "ro,nosuid,nodev,noexec"])
            .arg(device)
            .arg(&dir)
            .status()
            .map_err(|e| {
                fail(
                    ExitCode::WrongDevice,
                    format!("Cannot run mount for key device {}: {e}", device.display()),
                )
            })?;
        if !st.success() {
            return Err(fail(
                ExitCode::WrongDevice,
                format!(
                    "Cannot mount key device {} read-only ({st}).",
                    device.display()
                ),
            ));
        }
        m.mounted = true;
        let rel = path.strip_prefix("/").unwrap_or(path);
        let key = read_key_file(&dir.join(rel), offset, size).map_err(|e| {
            fail(
                ExitCode::WrongParameters,
                format!("{e} (key file {} on {})", path.display(), device.display()),
            )
        })?;
        drop(m);
        Ok(key)
    }
}
