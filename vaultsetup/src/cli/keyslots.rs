//! `luksAddKey`, `luksChangeKey`, `luksRemoveKey`, `luksKillSlot`: cryptsetup 2.6's
//! options, prompts and confirmations, and the keyslot edits through the vault.
//!
//! The passphrase check is a [`KeyCheck`] the caller passes: [`run_add_key`] and friends
//! pass [`super::vault_keys::Unlocker::check`], which unlocks the keyslot in the vault
//! and keeps the key there under a handle; the vault then seals new keyslots from that
//! handle and the header writer ([`crate::format::edit`]) writes them. The volume key
//! never comes to this process.

use std::path::{Path, PathBuf};

use clap::Args;

use super::activate::client_fail;
use super::confirm::{yes_dialog, LAST_KEYSLOT_MESSAGE};
use super::format::verify_wanted;
use super::newkey::{check_key_slot, LuksVersion, OptionError, PbkdfArgs};
use super::vault_keys::{DigestSpec, SlotParams, Unlocker};
use super::{fail, read_volume, resolve_device, Cli, Failure, Output, VaultArgs};
use crate::exit::ExitCode;
use crate::format::edit::Placement;
use crate::format::{add_keyslot, change_keyslot, remove_keyslot};
use crate::kdf::Hash;
use crate::passphrase::{read_new_passphrase, read_passphrase, KeyInput, PassphraseError};
use crate::pbkdf_bench::{choose_cost, PbkdfCost};
use crate::secret::Passphrase;
use crate::volume::Volume;

/// Which keyslots a passphrase check may open.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct SlotQuery {
    /// Only this keyslot (`-S`, or luksKillSlot's last slot).
    pub only: Option<u32>,
    /// Any keyslot but this one (luksKillSlot: "any remaining passphrase").
    pub except: Option<u32>,
}

/// Checks a passphrase against the header's keyslots (in the vault): the keyslot it
/// opens, or a failure (exit 2 "No key available with this passphrase.").
pub type KeyCheck<'a> = dyn FnMut(&Passphrase, SlotQuery) -> Result<u32, Failure> + 'a;

/// The existing key of a device (`-d`, offsets).
#[derive(Debug, Args, Clone, Default)]
pub struct ExistingKeyArgs {
    /// Read the key from a file (`-` = stdin).
    #[arg(short = 'd', long = "key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Number of bytes to skip in keyfile.
    #[arg(long = "keyfile-offset", value_name = "bytes", default_value_t = 0)]
    pub keyfile_offset: u64,
    /// Limits the read from keyfile.
    #[arg(short = 'l', long = "keyfile-size", value_name = "bytes")]
    pub keyfile_size: Option<u64>,
}

impl ExistingKeyArgs {
    fn input(&self) -> KeyInput {
        KeyInput {
            key_file: self.key_file.clone(),
            keyfile_offset: self.keyfile_offset,
            keyfile_size: self.keyfile_size,
        }
    }
}

/// `luksAddKey DEVICE [NEWKEYFILE]` arguments.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct LuksAddKeyArgs {
    /// Print help (cryptsetup's `-?`; `-h` is the hash).
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The existing key.
    #[command(flatten)]
    pub key: ExistingKeyArgs,
    /// Read the key for a new slot from a file.
    #[arg(long = "new-keyfile", value_name = "STRING")]
    pub new_keyfile: Option<PathBuf>,
    /// Number of bytes to skip in newly added keyfile.
    #[arg(long = "new-keyfile-offset", value_name = "bytes", default_value_t = 0)]
    pub new_keyfile_offset: u64,
    /// Limits the read from newly added keyfile.
    #[arg(long = "new-keyfile-size", value_name = "bytes")]
    pub new_keyfile_size: Option<u64>,
    /// Slot number for new key (default is first free); with --new-key-slot, the
    /// keyslot the existing key must open.
    #[arg(short = 'S', long = "key-slot", value_name = "INT")]
    pub key_slot: Option<u32>,
    /// Slot number for new key (default is first free).
    #[arg(long = "new-key-slot", value_name = "INT")]
    pub new_key_slot: Option<u32>,
    /// PBKDF options of the new keyslot.
    #[command(flatten)]
    pub pbkdf: PbkdfArgs,
    /// Device or file with separated LUKS header.
    #[arg(long = "header", value_name = "STRING")]
    pub header: Option<PathBuf>,
    /// Verifies the passphrase by asking for it twice.
    #[arg(short = 'y', long = "verify-passphrase")]
    pub verify_passphrase: bool,
    /// The vault and its daemon.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The LUKS device.
    pub device: PathBuf,
    /// Key file for the new key.
    pub new_key_file: Option<PathBuf>,
}

/// `luksChangeKey DEVICE [NEWKEYFILE]` arguments.
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct LuksChangeKeyArgs {
    /// Print help (cryptsetup's `-?`; `-h` is the hash).
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// The key to change.
    #[command(flatten)]
    pub key: ExistingKeyArgs,
    /// Number of bytes to skip in the new keyfile.
    #[arg(long = "new-keyfile-offset", value_name = "bytes", default_value_t = 0)]
    pub new_keyfile_offset: u64,
    /// Limits the read from the new keyfile.
    #[arg(long = "new-keyfile-size", value_name = "bytes")]
    pub new_keyfile_size: Option<u64>,
    /// The keyslot whose passphrase changes.
    #[arg(short = 'S', long = "key-slot", value_name = "INT")]
    pub key_slot: Option<u32>,
    /// PBKDF options of the new keyslot.
    #[command(flatten)]
    pub pbkdf: PbkdfArgs,
    /// Device or file with separated LUKS header.
    #[arg(long = "header", value_name = "STRING")]
    pub header: Option<PathBuf>,
    /// Verifies the passphrase by asking for it twice.
    #[arg(short = 'y', long = "verify-passphrase")]
    pub verify_passphrase: bool,
    /// The vault and its daemon.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The LUKS device.
    pub device: PathBuf,
    /// Key file for the new key.
    pub new_key_file: Option<PathBuf>,
}

/// `luksRemoveKey DEVICE [KEYFILE]` arguments.
#[derive(Debug, Args)]
pub struct LuksRemoveKeyArgs {
    /// The key to remove.
    #[command(flatten)]
    pub key: ExistingKeyArgs,
    /// Device or file with separated LUKS header.
    #[arg(long = "header", value_name = "STRING")]
    pub header: Option<PathBuf>,
    /// The vault and its daemon.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The LUKS device.
    pub device: PathBuf,
    /// Key file with the key to remove (as --key-file, which wins).
    pub key_file: Option<PathBuf>,
}

/// `luksKillSlot DEVICE SLOT` arguments.
#[derive(Debug, Args)]
pub struct LuksKillSlotArgs {
    /// A remaining key.
    #[command(flatten)]
    pub key: ExistingKeyArgs,
    /// Device or file with separated LUKS header.
    #[arg(long = "header", value_name = "STRING")]
    pub header: Option<PathBuf>,
    /// The vault and its daemon.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The LUKS device.
    pub device: PathBuf,
    /// The keyslot to wipe.
    pub slot: u32,
}

/// A keyslot's state, as cryptsetup's `crypt_keyslot_status`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SlotState {
    /// Unused.
    Inactive,
    /// In use, and another keyslot opens the data too.
    Active,
    /// The only keyslot that opens the data.
    ActiveLast,
    /// LUKS2: in use but bound to no data segment.
    Unbound,
}

/// The state of `slot` in `vol` (`Inactive` past the last keyslot).
pub fn slot_state(vol: &Volume, slot: u32) -> SlotState {
    let (mine, bound_total) = match vol {
        Volume::Luks1(h) => {
            let active = |s: &crate::luks1::Luks1Keyslot| s.active;
            let n = h.keyslots.iter().filter(|s| active(s)).count();
            match h.keyslots.get(slot as usize) {
                Some(s) if s.active => (Some(true), n),
                _ => (None, n),
            }
        }
        Volume::Luks2(h) => {
            let bound = |id: &str| {
                h.meta
                    .digests
                    .values()
                    .any(|d| !d.segments.is_empty() && d.keyslots.iter().any(|k| k == id))
            };
            let n = h.meta.keyslots.keys().filter(|k| bound(k)).count();
            let id = slot.to_string();
            match h.meta.keyslots.get(&id) {
                Some(_) => (Some(bound(&id)), n),
                None => (None, n),
            }
        }
    };
    match mine {
        None => SlotState::Inactive,
        Some(false) => SlotState::Unbound,
        Some(true) if bound_total == 1 => SlotState::ActiveLast,
        Some(true) => SlotState::Active,
    }
}

/// The volume key length in bytes (LUKS1 header; LUKS2 the keyslots' key size).
pub fn volume_key_bytes(vol: &Volume) -> usize {
    match vol {
        Volume::Luks1(h) => h.key_bytes as usize,
        Volume::Luks2(h) => h
            .meta
            .keyslots
            .values()
            .map(|k| k.key_size as usize)
            .max()
            .unwrap_or(64),
    }
}

fn version_of(vol: &Volume) -> LuksVersion {
    LuksVersion::from_number(vol.version()).unwrap_or(LuksVersion::Luks2)
}

/// Reads the header (from `--header` when given) read-only.
pub fn read_header(
    device: &Path,
    header: Option<&Path>,
    out: &mut Output,
) -> Result<(crate::device::Device, Volume), Failure> {
    let p = match header {
        Some(h) => resolve_device(h)?,
        None => resolve_device(device)?,
    };
    read_volume(&p, out)
}

/// The keyslots of a `luksAddKey`: the one the existing key must open and the new one.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AddKeySlots {
    /// `-S` when `--new-key-slot` is given.
    pub unlock: Option<u32>,
    /// The new keyslot: `--new-key-slot`, else `-S`, else the first free.
    pub new: u32,
}

/// cryptsetup 2.6's reading of `-S` and `--new-key-slot`, checked against the header:
/// the new keyslot must be free ("Key slot N is full, please select another one.").
pub fn add_key_slots(args: &LuksAddKeyArgs, vol: &Volume) -> Result<AddKeySlots, Failure> {
    let version = version_of(vol);
    let (unlock, new) = match args.new_key_slot {
        Some(n) => (
            args.key_slot
                .map(|s| check_key_slot(s, version, "--key-slot"))
                .transpose()?,
            Some(check_key_slot(n, version, "--new-key-slot")?),
        ),
        None => (
            None,
            args.key_slot
                .map(|s| check_key_slot(s, version, "--key-slot"))
                .transpose()?,
        ),
    };
    let new = match new {
        Some(n) if slot_state(vol, n) != SlotState::Inactive => {
            return Err(fail(
                ExitCode::WrongParameters,
                format!("Key slot {n} is full, please select another one."),
            ))
        }
        Some(n) => n,
        None => (0..version.keyslots())
            .find(|&s| slot_state(vol, s) == SlotState::Inactive)
            .ok_or_else(|| fail(ExitCode::WrongParameters, "All key slots full."))?,
    };
    Ok(AddKeySlots { unlock, new })
}

/// Refuses two keys read from stdin (`-d -` and `-` for the new key).
fn one_stdin(existing: &KeyInput, new: Option<&Path>) -> Result<(), Failure> {
    let dash = Path::new("-");
    if existing.key_file.as_deref() == Some(dash) && new == Some(dash) {
        return Err(fail(
            ExitCode::WrongParameters,
            "Only one --key-file argument is allowed.",
        ));
    }
    Ok(())
}

/// The passphrases of a new keyslot: the existing one (checked by `check` before the
/// new one is asked for, as cryptsetup does), the keyslot it opened, the new one.
#[derive(Debug)]
pub struct NewKeyPassphrases {
    /// The existing passphrase.
    pub existing: Passphrase,
    /// The keyslot it opened.
    pub opened: u32,
    /// The new passphrase.
    pub new: Passphrase,
}

#[allow(clippy::too_many_arguments)]
fn read_old_then_new(
    existing: &KeyInput,
    old_prompt: &str,
    query: SlotQuery,
    new: &KeyInput,
    new_prompt: &str,
    verify: bool,
    check: &mut KeyCheck<'_>,
    verbose: bool,
    out: &mut Output,
) -> Result<NewKeyPassphrases, Failure> {
    one_stdin(existing, new.key_file.as_deref())?;
    let old = read_passphrase(existing, old_prompt)?;
    let opened = check(&old, query)?;
    if verbose {
        out.stdout
            .push_str(&format!("Key slot {opened} unlocked.\n"));
    }
    let new = read_new_passphrase(new, new_prompt, verify)?;
    Ok(NewKeyPassphrases {
        existing: old,
        opened,
        new,
    })
}

/// What `luksAddKey` needs before the vault seals the new keyslot.
#[derive(Debug)]
pub struct AddKeyPlan {
    /// The keyslots.
    pub slots: AddKeySlots,
    /// The passphrases.
    pub passphrases: NewKeyPassphrases,
    /// The new keyslot's PBKDF cost.
    pub cost: PbkdfCost,
}

/// Everything of `luksAddKey` on the host: header, keyslots, "Enter any existing
/// passphrase: " (checked by `check`), "Enter new passphrase for key slot: " (verified
/// on a terminal unless -q), the PBKDF benchmark.
pub fn prepare_add_key(
    cli: &Cli,
    args: &LuksAddKeyArgs,
    check: &mut KeyCheck<'_>,
    out: &mut Output,
) -> Result<AddKeyPlan, Failure> {
    let (_dev, vol) = read_header(&args.device, args.header.as_deref(), out)?;
    let slots = add_key_slots(args, &vol)?;
    let request = args.pbkdf.request(version_of(&vol))?;
    if args.new_keyfile.is_some() && args.new_key_file.is_some() {
        return Err(OptionError::Other(
            "Options --new-keyfile and the NEWKEYFILE argument cannot be combined.".into(),
        )
        .into());
    }
    let new = KeyInput {
        key_file: args
            .new_keyfile
            .clone()
            .or_else(|| args.new_key_file.clone()),
        keyfile_offset: args.new_keyfile_offset,
        keyfile_size: args.new_keyfile_size,
    };
    let verify = verify_wanted(true, args.verify_passphrase, cli.batch_mode, out);
    let passphrases = read_old_then_new(
        &args.key.input(),
        "Enter any existing passphrase: ",
        SlotQuery {
            only: slots.unlock,
            except: None,
        },
        &new,
        "Enter new passphrase for key slot: ",
        verify,
        check,
        cli.verbose,
        out,
    )?;
    let cost = choose_cost(&request, volume_key_bytes(&vol))?;
    Ok(AddKeyPlan {
        slots,
        passphrases,
        cost,
    })
}

/// Seals the key [`Unlocker::check`] unlocked under `pass` as a new keyslot of cost
/// `cost` (LUKS1: PBKDF2 and AF with the header hash; LUKS2: AF with `hash`), in the
/// volume's cipher; returns the keyslot for the header writer. The key stays unlocked.
fn seal_new(
    u: &mut Unlocker<'_>,
    cost: PbkdfCost,
    hash: Hash,
    pass: &Passphrase,
) -> Result<crate::format::KeyslotMaterial, Failure> {
    let target = u.target()?;
    let (cipher, key) = crate::activation::volume_cipher(&target.vol)?;
    let (cost, af_hash) = match &target.vol {
        Volume::Luks1(h) => match cost {
            PbkdfCost::Pbkdf2 { iterations, .. } => (
                PbkdfCost::Pbkdf2 {
                    hash: h.hash,
                    iterations,
                },
                h.hash,
            ),
            other => (other, h.hash),
        },
        Volume::Luks2(_) => (cost, hash),
    };
    let Some(unlocked) = u.unlocked.as_ref() else {
        return Err(fail(
            ExitCode::WrongParameters,
            "No keyslot was unlocked in the vault.",
        ));
    };
    let handle = unlocked.handle;
    let params = SlotParams::new(cost, af_hash, cipher, key)?;
    let spec = params.spec(&DigestSpec::of(&unlocked.spec))?;
    let area = u
        .client()?
        .seal_keyslot(handle, spec, pass)
        .map_err(client_fail)?;
    Ok(params.material(area))
}

/// `luksAddKey`: the existing passphrase unlocks a keyslot in the vault, the vault seals
/// the same key under the new passphrase, the header writer adds the keyslot, the key
/// is dropped from the vault.
pub fn run_add_key(cli: &Cli, args: &LuksAddKeyArgs, out: &mut Output) -> Result<(), Failure> {
    let mut u = Unlocker::new(cli, &args.vault, &args.device, args.header.as_deref());
    let plan = {
        let mut check = |p: &Passphrase, q: SlotQuery| u.check(p, q);
        prepare_add_key(cli, args, &mut check, out)?
    };
    let hash = args.pbkdf.hash()?;
    let m = seal_new(&mut u, plan.cost, hash, &plan.passphrases.new)?;
    drop(plan.passphrases);
    let target = u.target()?;
    let at = Placement {
        slot: Some(plan.slots.new),
        area_offset: None,
    };
    let edit = add_keyslot(&target.vol, at, &m)?;
    edit.plan.apply(&target.file)?;
    u.drop_key()?;
    if cli.verbose {
        out.stdout
            .push_str(&format!("Key slot {} created.\n", plan.slots.new));
    }
    Ok(())
}

/// What `luksChangeKey` needs before the vault reseals the keyslot.
#[derive(Debug)]
pub struct ChangeKeyPlan {
    /// The passphrases (`opened` is the keyslot that changes).
    pub passphrases: NewKeyPassphrases,
    /// The new keyslot's PBKDF cost.
    pub cost: PbkdfCost,
}

/// Everything of `luksChangeKey` on the host: "Enter passphrase to be changed: "
/// (checked by `check`, against `-S` only when given), "Enter new passphrase: ".
pub fn prepare_change_key(
    cli: &Cli,
    args: &LuksChangeKeyArgs,
    check: &mut KeyCheck<'_>,
    out: &mut Output,
) -> Result<ChangeKeyPlan, Failure> {
    let (_dev, vol) = read_header(&args.device, args.header.as_deref(), out)?;
    let version = version_of(&vol);
    let only = args
        .key_slot
        .map(|s| check_key_slot(s, version, "--key-slot"))
        .transpose()?;
    let request = args.pbkdf.request(version)?;
    let new = KeyInput {
        key_file: args.new_key_file.clone(),
        keyfile_offset: args.new_keyfile_offset,
        keyfile_size: args.new_keyfile_size,
    };
    let verify = verify_wanted(true, args.verify_passphrase, cli.batch_mode, out);
    let passphrases = read_old_then_new(
        &args.key.input(),
        "Enter passphrase to be changed: ",
        SlotQuery { only, except: None },
        &new,
        "Enter new passphrase: ",
        verify,
        check,
        cli.verbose,
        out,
    )?;
    let cost = choose_cost(&request, volume_key_bytes(&vol))?;
    Ok(ChangeKeyPlan { passphrases, cost })
}

/// `luksChangeKey`: the passphrase unlocks its keyslot in the vault, the vault seals
/// the key under the new passphrase, the header writer replaces the keyslot (new area
/// first, then the header, then the old area is wiped); the key is dropped.
pub fn run_change_key(
    cli: &Cli,
    args: &LuksChangeKeyArgs,
    out: &mut Output,
) -> Result<(), Failure> {
    let mut u = Unlocker::new(cli, &args.vault, &args.device, args.header.as_deref());
    let plan = {
        let mut check = |p: &Passphrase, q: SlotQuery| u.check(p, q);
        prepare_change_key(cli, args, &mut check, out)?
    };
    let hash = args.pbkdf.hash()?;
    let m = seal_new(&mut u, plan.cost, hash, &plan.passphrases.new)?;
    let old = plan.passphrases.opened;
    drop(plan.passphrases);
    let target = u.target()?;
    // -S keeps the keyslot number (LUKS2, as cryptsetup); else the lowest free one.
    let at = Placement {
        slot: match &target.vol {
            Volume::Luks2(_) => args.key_slot,
            Volume::Luks1(_) => None,
        },
        area_offset: None,
    };
    let edit = change_keyslot(&target.vol, old, at, &m)?;
    edit.plan.apply(&target.file)?;
    u.drop_key()?;
    if cli.verbose {
        let new = edit
            .after
            .iter()
            .find(|s| !edit.before.contains(s))
            .copied()
            .unwrap_or(old);
        out.stdout.push_str(&format!("Key slot {new} created.\n"));
    }
    Ok(())
}

/// luksRemoveKey's and luksKillSlot's answer to anything but YES (exit 2), with
/// cryptsetup's trailing newline.
pub const NOT_WIPED: &str = "Operation aborted, the keyslot was NOT wiped.\n";

fn confirm_last(batch_mode: bool) -> Result<(), Failure> {
    yes_dialog(
        LAST_KEYSLOT_MESSAGE,
        batch_mode,
        NOT_WIPED,
        ExitCode::NoPermission,
    )?;
    Ok(())
}

/// `luksRemoveKey` on the host: "Enter passphrase to be deleted: ", checked by `check`;
/// the last-keyslot confirmation (unless -q). Returns the keyslot to wipe.
pub fn prepare_remove_key(
    cli: &Cli,
    args: &LuksRemoveKeyArgs,
    check: &mut KeyCheck<'_>,
    out: &mut Output,
) -> Result<u32, Failure> {
    let (_dev, vol) = read_header(&args.device, args.header.as_deref(), out)?;
    let mut input = args.key.input();
    if input.key_file.is_none() {
        input.key_file = args.key_file.clone();
    } else if args.key_file.is_some() {
        out.stderr
            .push("Option --key-file takes precedence over specified key file argument.".into());
    }
    let pass = read_passphrase(&input, "Enter passphrase to be deleted: ")?;
    let slot = check(&pass, SlotQuery::default())?;
    if cli.verbose {
        out.stdout
            .push_str(&format!("Key slot {slot} selected for deletion.\n"));
    }
    if slot_state(&vol, slot) == SlotState::ActiveLast && !cli.batch_mode {
        confirm_last(cli.batch_mode)?;
    }
    Ok(slot)
}

/// Wipes keyslot `slot` of the header `u` opened (opening it now if no check did).
fn wipe(u: &mut Unlocker<'_>, slot: u32) -> Result<(), Failure> {
    u.drop_key()?;
    let target = u.target()?;
    let edit = remove_keyslot(&target.vol, slot)?;
    edit.plan.apply(&target.file)?;
    Ok(())
}

/// `luksRemoveKey`: the passphrase unlocks a keyslot in the vault (the key is dropped
/// at once); that keyslot is wiped.
pub fn run_remove_key(
    cli: &Cli,
    args: &LuksRemoveKeyArgs,
    out: &mut Output,
) -> Result<(), Failure> {
    let mut u = Unlocker::new(cli, &args.vault, &args.device, args.header.as_deref());
    let slot = {
        let mut check = |p: &Passphrase, q: SlotQuery| u.check(p, q);
        prepare_remove_key(cli, args, &mut check, out)?
    };
    wipe(&mut u, slot)
}

/// `luksKillSlot` on the host, as cryptsetup's `action_luksKillSlot`/`verify_keyslot`:
/// the slot must be in use; unless `-q` on a terminal without a key file, the
/// last-keyslot confirmation (terminal only) and "Enter any remaining passphrase: ",
/// which must open the slot itself when it is the last, else another keyslot. An empty
/// input on stdin skips the check, as cryptsetup ignores a failed read there.
pub fn prepare_kill_slot(
    cli: &Cli,
    args: &LuksKillSlotArgs,
    check: &mut KeyCheck<'_>,
    out: &mut Output,
) -> Result<u32, Failure> {
    let (_dev, vol) = read_header(&args.device, args.header.as_deref(), out)?;
    let slot = check_key_slot(args.slot, version_of(&vol), "SLOT")?;
    let state = slot_state(&vol, slot);
    if state == SlotState::Inactive {
        return Err(fail(
            ExitCode::WrongParameters,
            format!("Keyslot {slot} is not active."),
        ));
    }
    if cli.verbose {
        out.stdout
            .push_str(&format!("Key slot {slot} selected for deletion.\n"));
    }
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    let input = args.key.input();
    if !cli.batch_mode || input.key_file.is_some() || !tty {
        let last = state == SlotState::ActiveLast;
        if last && !cli.batch_mode && input.key_file.is_none() {
            confirm_last(cli.batch_mode)?;
        }
        let query = if last {
            SlotQuery {
                only: Some(slot),
                except: None,
            }
        } else {
            SlotQuery {
                only: None,
                except: Some(slot),
            }
        };
        let stdin = input
            .key_file
            .as_deref()
            .is_none_or(|p| p == Path::new("-"));
        match read_passphrase(&input, "Enter any remaining passphrase: ") {
            Err(PassphraseError::Empty) if stdin => {}
            Err(e) => return Err(e.into()),
            Ok(pass) => {
                check(&pass, query)?;
            }
        }
    }
    Ok(slot)
}

/// `luksKillSlot`: unless skipped, "any remaining passphrase" must unlock another
/// keyslot in the vault (the key is dropped at once); then keyslot SLOT is wiped.
pub fn run_kill_slot(cli: &Cli, args: &LuksKillSlotArgs, out: &mut Output) -> Result<(), Failure> {
    let mut u = Unlocker::new(cli, &args.vault, &args.device, args.header.as_deref());
    let slot = {
        let mut check = |p: &Passphrase, q: SlotQuery| u.check(p, q);
        prepare_kill_slot(cli, args, &mut check, out)?
    };
    wipe(&mut u, slot)
}
