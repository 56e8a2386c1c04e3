//! The `vaultsetup` command line: cryptsetup's verbs, options and exit codes.
//!
//! `open DEVICE NAME`, `close` and `status` talk to vmvaultd (see [`activate`]);
//! `attach`, `detach` and `switch-root` are the boot verbs (see [`boot`]).

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

pub mod activate;
pub mod boot;
pub mod confirm;
pub mod format;
pub mod keyslots;
pub mod newkey;
pub mod test_passphrase;
pub mod vault_keys;

use crate::device::Device;
use crate::exit::{ExitCode, HasExitCode};
use crate::volume::{Volume, VolumeError};

/// vaultsetup: open LUKS1/LUKS2 volumes with the volume key kept in the vmvault vault VM.
#[derive(Debug, Parser)]
#[command(name = "vaultsetup", version, about, disable_help_subcommand = true)]
pub struct Cli {
    /// Show more detailed messages.
    #[arg(short, long, global = true)]
    pub verbose: bool,
    /// Do not ask for confirmation.
    #[arg(short = 'q', long = "batch-mode", global = true)]
    pub batch_mode: bool,
    /// The action.
    #[command(subcommand)]
    pub command: Command,
    /// How to start vmvaultd when none runs; `main` fills it from `$VMVAULTD` and
    /// `$PATH` (the library reads no environment).
    #[arg(skip)]
    pub spawn: vmvault_proto::client::SpawnConfig,
    /// The vaulttab line an `attach` comes from (`FILE:LINE`, from
    /// `$VMVAULT_VAULTTAB_SOURCE`, which the generated units set): put in front of the
    /// attach's warnings and errors.
    #[arg(skip)]
    pub vaulttab_source: Option<String>,
}

/// Actions, named as cryptsetup names them.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Open a LUKS device as NAME through the vault (or only test the passphrase).
    #[command(name = "open", visible_alias = "luksOpen")]
    Open(OpenArgs),
    /// Close (deactivate) NAME; its key slot in the vault is wiped.
    #[command(name = "close", visible_aliases = ["luksClose", "remove"])]
    Close(CloseArgs),
    /// Show the status of NAME; exit 4 when inactive.
    #[command(name = "status")]
    Status(StatusArgs),
    /// Dump the LUKS header.
    #[command(name = "luksDump")]
    LuksDump(DumpArgs),
    /// Exit 0 if DEVICE is a LUKS device, 1 otherwise.
    #[command(name = "isLuks")]
    IsLuks(IsLuksArgs),
    /// Open NAME as systemd-cryptsetup attaches it, from the vaulttab fields NAME, DEVICE,
    /// KEYFILE and OPTIONS (the last two optional; what the vmvault@.service units run).
    #[command(name = "attach")]
    Attach(boot::AttachArgs),
    /// Close NAME as systemd-cryptsetup detaches it (an inactive NAME is success).
    #[command(name = "detach")]
    Detach(boot::DetachArgs),
    /// Tell the running vmvaultd to make NEWROOT its root (the initramfs hand-over,
    /// before /run, /dev, /proc and /sys move into NEWROOT).
    #[command(name = "switch-root")]
    SwitchRoot(boot::SwitchRootArgs),
    /// Format DEVICE as LUKS1/LUKS2 with a new volume key born in the vault.
    #[command(name = "luksFormat")]
    LuksFormat(format::LuksFormatArgs),
    /// Add a keyslot (a new passphrase or key file) to DEVICE.
    #[command(name = "luksAddKey")]
    LuksAddKey(keyslots::LuksAddKeyArgs),
    /// Change the passphrase of a keyslot of DEVICE.
    #[command(name = "luksChangeKey")]
    LuksChangeKey(keyslots::LuksChangeKeyArgs),
    /// Remove the keyslot a passphrase opens from DEVICE.
    #[command(name = "luksRemoveKey")]
    LuksRemoveKey(keyslots::LuksRemoveKeyArgs),
    /// Wipe keyslot SLOT of DEVICE.
    #[command(name = "luksKillSlot")]
    LuksKillSlot(keyslots::LuksKillSlotArgs),
}

/// Device type (`--type`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum DeviceType {
    /// Any LUKS version.
    Luks,
    /// LUKS1 only.
    Luks1,
    /// LUKS2 only.
    Luks2,
}

impl DeviceType {
    pub(crate) fn accepts(self, v: u32) -> bool {
        match self {
            Self::Luks => true,
            Self::Luks1 => v == 1,
            Self::Luks2 => v == 2,
        }
    }
}

/// Passphrase options shared by commands that unlock.
#[derive(Debug, Args, Clone)]
pub struct KeyArgs {
    /// Read the key from a file (`-` = stdin, read whole, binary).
    #[arg(short = 'd', long = "key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Number of bytes to skip in the key file.
    #[arg(long = "keyfile-offset", value_name = "BYTES", default_value_t = 0)]
    pub keyfile_offset: u64,
    /// Number of bytes to read from the key file (0 = whole file).
    #[arg(short = 'l', long = "keyfile-size", value_name = "BYTES")]
    pub keyfile_size: Option<u64>,
    /// Use only this keyslot.
    #[arg(short = 'S', long = "key-slot", value_name = "NUM")]
    pub key_slot: Option<u32>,
}

/// Vault backend (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum BackendArg {
    /// The vault VM under KVM.
    Kvm,
    /// No virtualization: keys in memfd_secret pages of vmvaultd.
    Soft,
    /// kvm when /dev/kvm works, else soft.
    Auto,
}

/// Frontend of the plaintext block device (`--frontend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, ValueEnum)]
pub enum FrontendArg {
    /// The plaintext as a file in a FUSE mount, attached to a loop device.
    Fuse,
    /// A ublk block device (needs ublk_drv, /dev/ublk-control).
    Ublk,
    /// ublk where /dev/ublk-control exists, else fuse.
    Auto,
}

/// Where vmvaultd runs.
#[derive(Debug, Args, Clone)]
pub struct DaemonArgs {
    /// Run directory of vmvaultd (control socket); default $VMVAULT_RUN_DIR, else /run/vmvault.
    #[arg(
        long = "run-dir",
        value_name = "DIR",
        env = "VMVAULT_RUN_DIR",
        hide_env = true
    )]
    pub run_dir: Option<PathBuf>,
}

impl DaemonArgs {
    /// The run directory in effect.
    pub fn dir(&self) -> PathBuf {
        self.run_dir
            .clone()
            .unwrap_or_else(|| PathBuf::from(vmvault_proto::sock::DEFAULT_RUN_DIR))
    }
}

/// The vault that generates, unlocks and seals volume keys for `luksFormat` and the
/// keyslot verbs.
#[derive(Debug, Args, Clone)]
pub struct VaultArgs {
    /// Vault backend.
    #[arg(long = "backend", value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
}

/// `open` arguments.
#[derive(Debug, Args)]
pub struct OpenArgs {
    /// Only check the passphrase; do not activate.
    #[arg(long = "test-passphrase")]
    pub test_passphrase: bool,
    /// With --test-passphrase: also test the passphrase against LUKS2 keyslots that are
    /// not bound to the data segment (`luksAddKey --unbound`).
    #[arg(long = "unbound", requires = "test_passphrase")]
    pub unbound: bool,
    /// Device type.
    #[arg(short = 'M', long = "type", value_enum, default_value = "luks")]
    pub device_type: DeviceType,
    /// Key options.
    #[command(flatten)]
    pub key: KeyArgs,
    /// Read-only mapping.
    #[arg(short = 'r', long = "readonly")]
    pub readonly: bool,
    /// Pass discards (TRIM) to the backing device.
    #[arg(long = "allow-discards")]
    pub allow_discards: bool,
    /// How often a passphrase typed on a terminal is asked for (0 = until it is right).
    #[arg(short = 'T', long = "tries", value_name = "N", default_value_t = 3)]
    pub tries: u32,
    /// Seconds to wait for a passphrase typed on a terminal (0 = no limit).
    #[arg(
        short = 't',
        long = "timeout",
        value_name = "SECS",
        default_value_t = 0
    )]
    pub timeout: u64,
    /// Detached LUKS header (path, UUID=, LABEL=, ...): the header and keyslots come
    /// from it, the data from DEVICE at the header's data offset.
    #[arg(long = "header", value_name = "PATH")]
    pub header: Option<PathBuf>,
    /// Vault backend.
    #[arg(long = "backend", value_enum, default_value = "auto")]
    pub backend: BackendArg,
    /// Block device frontend.
    #[arg(long = "frontend", value_enum, default_value = "auto")]
    pub frontend: FrontendArg,
    /// Use the volume key in this `user` key (description, %user:DESC, or serial) instead of a passphrase.
    #[arg(long = "volume-key-keyring", value_name = "DESC")]
    pub volume_key_keyring: Option<String>,
    /// Keep the --volume-key-keyring key after moving it into the vault.
    #[arg(long = "keep-keyring-key", requires = "volume_key_keyring")]
    pub keep_keyring_key: bool,
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// The LUKS device or image (a path, UUID=, PARTUUID=, LABEL= or PARTLABEL=).
    pub device: PathBuf,
    /// Mapping name.
    pub name: Option<String>,
}

/// `close` arguments.
#[derive(Debug, Args)]
pub struct CloseArgs {
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Mapping name.
    pub name: String,
}

/// `status` arguments.
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// Print the status as one JSON object.
    #[arg(long = "json")]
    pub json: bool,
    /// Daemon options.
    #[command(flatten)]
    pub daemon: DaemonArgs,
    /// Mapping name.
    pub name: String,
}

/// `luksDump` arguments.
#[derive(Debug, Args)]
pub struct DumpArgs {
    /// Print the LUKS2 JSON metadata.
    #[arg(long = "dump-json-metadata")]
    pub dump_json_metadata: bool,
    /// The LUKS device or image.
    pub device: PathBuf,
}

/// `isLuks` arguments.
#[derive(Debug, Args)]
pub struct IsLuksArgs {
    /// Device type.
    #[arg(short = 'M', long = "type", value_enum, default_value = "luks")]
    pub device_type: DeviceType,
    /// The device or image.
    pub device: PathBuf,
}

/// A failure with its exit code and message.
#[derive(Debug)]
pub struct Failure {
    /// Exit code.
    pub code: ExitCode,
    /// Message for stderr (may be empty).
    pub message: String,
    /// Text for stdout even though the command failed (e.g. "... is inactive.").
    pub stdout: String,
}

impl<E: HasExitCode + std::fmt::Display> From<E> for Failure {
    fn from(e: E) -> Self {
        Failure {
            code: e.exit_code(),
            message: e.to_string(),
            stdout: String::new(),
        }
    }
}

pub(crate) fn fail(code: ExitCode, message: impl Into<String>) -> Failure {
    Failure {
        code,
        message: message.into(),
        stdout: String::new(),
    }
}

/// Output of a successful command.
#[derive(Debug, Default)]
pub struct Output {
    /// Text for stdout.
    pub stdout: String,
    /// Notes for stderr.
    pub stderr: Vec<String>,
}

/// A device as named on the command line: a path as it is; `UUID=`, `PARTUUID=`,
/// `LABEL=`, `PARTLABEL=` through `/dev/disk/by-*` (exit 4 when no such device exists).
pub(crate) fn resolve_device(name: &std::path::Path) -> Result<PathBuf, Failure> {
    use vmvault_boot::vaulttab::DeviceSpec;
    let Some(text) = name.to_str() else {
        return Ok(name.to_path_buf());
    };
    match DeviceSpec::parse(text) {
        Ok(DeviceSpec::Path(_)) | Err(_) => Ok(name.to_path_buf()),
        Ok(spec) => spec.resolve().map_err(|e| {
            fail(
                ExitCode::WrongDevice,
                format!(
                    "Device {} does not exist or access denied (no {}).",
                    e.spec,
                    e.node.display()
                ),
            )
        }),
    }
}

pub(crate) fn read_volume(path: &PathBuf, out: &mut Output) -> Result<(Device, Volume), Failure> {
    let dev = Device::open(path)?;
    let vol = Volume::read(&dev)?;
    out.stderr.extend(vol.notes().iter().cloned());
    Ok((dev, vol))
}

/// Runs a parsed command line. Notes produced before a failure are printed by the caller
/// from `notes`.
pub fn run(cli: &Cli, notes: &mut Vec<String>) -> Result<Output, Failure> {
    let mut out = Output::default();
    let r = run_inner(cli, &mut out);
    notes.append(&mut out.stderr);
    r.map(|()| out)
}

fn run_inner(cli: &Cli, out: &mut Output) -> Result<(), Failure> {
    match &cli.command {
        Command::IsLuks(a) => {
            let dev = Device::open(&a.device)?;
            match Volume::read(&dev) {
                Ok(v) if a.device_type.accepts(v.version()) => {
                    out.stderr.extend(v.notes().iter().cloned());
                    Ok(())
                }
                Ok(_) | Err(VolumeError::NotLuks(_)) => Err(fail(
                    ExitCode::WrongParameters,
                    format!("Device {} is not a valid LUKS device.", a.device.display()),
                )),
                Err(e) => Err(e.into()),
            }
        }
        Command::LuksDump(a) => {
            let (_, vol) = read_volume(&a.device, out)?;
            if a.dump_json_metadata {
                match &vol {
                    Volume::Luks2(h) => {
                        out.stdout = crate::dump::json(h);
                        out.stdout.push('\n');
                    }
                    Volume::Luks1(_) => {
                        return Err(fail(
                            ExitCode::WrongParameters,
                            "Dump operation is not supported for this device type.",
                        ))
                    }
                }
            } else {
                out.stdout = crate::dump::human(&vol, &a.device.display().to_string());
            }
            Ok(())
        }
        Command::Close(a) => activate::close(a, out),
        Command::Attach(a) => boot::attach(cli, a, out),
        Command::Detach(a) => boot::detach(a, out),
        Command::SwitchRoot(a) => boot::switch_root(a, out),
        Command::Status(a) => activate::status(a, out),
        Command::LuksFormat(a) => format::run(cli, a, out),
        Command::LuksAddKey(a) => keyslots::run_add_key(cli, a, out),
        Command::LuksChangeKey(a) => keyslots::run_change_key(cli, a, out),
        Command::LuksRemoveKey(a) => keyslots::run_remove_key(cli, a, out),
        Command::LuksKillSlot(a) => keyslots::run_kill_slot(cli, a, out),
        Command::Open(a) if a.test_passphrase => test_passphrase::run(cli, a, out),
        Command::Open(a) => activate::open(cli, a, out),
    }
}
