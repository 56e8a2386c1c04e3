//! `luksFormat DEVICE [KEYFILE]`: cryptsetup 2.6's options, defaults, checks and
//! prompts, up to the point where the vault generates and seals the volume key.
//!
//! Order, as cryptsetup's `action_luksFormat`: options are checked ([`LuksFormatArgs::
//! validate`]), the device is opened exclusively and measured ([`prepare_target`]), the
//! overwrite is confirmed ([`confirm`]), the passphrase is read and verified
//! ([`read_passphrase`]), and the keyslot's PBKDF cost is benchmarked on the host
//! ([`crate::pbkdf_bench::choose_cost`]). Then [`run`] has the vault generate the
//! volume key, seal the first keyslot and compute the digest ([`super::vault_keys`]),
//! and the header writer ([`crate::format::write_new`]) writes the volume: the key never
//! exists in this process or in vmvaultd.

use std::path::{Path, PathBuf};

use clap::Args;
use vmvault_proto::{CipherSpec, KeySize, SectorSize};

use super::activate::{backend_choice, client_fail};
use super::confirm::{overwrite_message, yes_dialog};
use super::newkey::{check_key_slot, parse_size, LuksVersion, OptionError, PbkdfArgs};
use super::vault_keys::{
    connect, new_digest_iterations, random_bytes, DigestSpec, SlotParams, LUKS1_DIGEST_LEN,
    SALT_LEN,
};
use super::{fail, resolve_device, Cli, DeviceType, Failure, Output, VaultArgs};
use crate::exit::ExitCode;
use crate::format::material::DigestParams;
use crate::format::plan::{DeviceGeometry, KdfKind, PlanOptions};
use crate::kdf::Hash;
use crate::keyslot::hash_alg;
use crate::passphrase::{read_new_passphrase, KeyInput};
use crate::pbkdf_bench::{choose_cost, PbkdfCost, PbkdfRequest};
use crate::secret::Passphrase;
use crate::write_checks::{default_data_offset, open_target, optimal_sector_size, Target};

/// cryptsetup's default LUKS cipher.
pub const DEFAULT_CIPHER: &str = "aes-xts-plain64";
/// cryptsetup's default LUKS key size in bits (doubled for XTS when `-s` is not given).
pub const DEFAULT_KEY_BITS: u64 = 256;
/// Longest LUKS2 label or subsystem (48 bytes with the NUL).
pub const MAX_LABEL_LEN: usize = 47;
/// LUKS2 metadata area sizes cryptsetup accepts (`--luks2-metadata-size`).
pub const LUKS2_METADATA_SIZES: [u64; 9] = [
    16 << 10,
    32 << 10,
    64 << 10,
    128 << 10,
    256 << 10,
    512 << 10,
    1 << 20,
    2 << 20,
    4 << 20,
];
/// Largest LUKS2 keyslots area (`--luks2-keyslots-size`): 128 MiB.
pub const LUKS2_MAX_KEYSLOTS_SIZE: u64 = 128 << 20;

/// `luksFormat` arguments (cryptsetup's names).
#[derive(Debug, Args)]
#[command(disable_help_flag = true)]
pub struct LuksFormatArgs {
    /// Print help (cryptsetup's `-?`; `-h` is the hash).
    #[arg(short = '?', long = "help", action = clap::ArgAction::Help)]
    pub help: Option<bool>,
    /// Type of device metadata: luks, luks1, luks2 (luks = luks2).
    #[arg(short = 'M', long = "type", value_enum, default_value = "luks")]
    pub device_type: DeviceType,
    /// The cipher used to encrypt the disk (default aes-xts-plain64).
    #[arg(short = 'c', long = "cipher", value_name = "STRING")]
    pub cipher: Option<String>,
    /// The size of the encryption key, in bits (default 512 for XTS, else 256).
    #[arg(short = 's', long = "key-size", value_name = "BITS")]
    pub key_size: Option<u64>,
    /// Encryption sector size (LUKS2: 512, 1024, 2048 or 4096; default: the device's).
    #[arg(long = "sector-size", value_name = "INT")]
    pub sector_size: Option<u64>,
    /// PBKDF options (and `-h/--hash`, also the header hash).
    #[command(flatten)]
    pub pbkdf: PbkdfArgs,
    /// Set label for the LUKS2 device.
    #[arg(long = "label", value_name = "STRING")]
    pub label: Option<String>,
    /// Set subsystem label for the LUKS2 device.
    #[arg(long = "subsystem", value_name = "STRING")]
    pub subsystem: Option<String>,
    /// UUID for device to use.
    #[arg(long = "uuid", value_name = "STRING")]
    pub uuid: Option<String>,
    /// Read the key from a file (`-` = stdin).
    #[arg(short = 'd', long = "key-file", value_name = "FILE")]
    pub key_file: Option<PathBuf>,
    /// Number of bytes to skip in keyfile.
    #[arg(long = "keyfile-offset", value_name = "bytes", default_value_t = 0)]
    pub keyfile_offset: u64,
    /// Limits the read from keyfile.
    #[arg(short = 'l', long = "keyfile-size", value_name = "bytes")]
    pub keyfile_size: Option<u64>,
    /// Slot number for the new key (default is first free).
    #[arg(short = 'S', long = "key-slot", value_name = "INT")]
    pub key_slot: Option<u32>,
    /// Device or file with separated LUKS header.
    #[arg(long = "header", value_name = "STRING")]
    pub header: Option<PathBuf>,
    /// LUKS2 header metadata area size.
    #[arg(long = "luks2-metadata-size", value_name = "bytes")]
    pub luks2_metadata_size: Option<String>,
    /// LUKS2 header keyslots area size.
    #[arg(long = "luks2-keyslots-size", value_name = "bytes")]
    pub luks2_keyslots_size: Option<String>,
    /// The start offset in the backend device (512-byte sectors).
    #[arg(short = 'o', long = "offset", value_name = "SECTORS")]
    pub offset: Option<u64>,
    /// Align payload at <n> sector boundaries.
    #[arg(long = "align-payload", value_name = "SECTORS")]
    pub align_payload: Option<u64>,
    /// Verifies the passphrase by asking for it twice (the default for a new
    /// passphrase on a terminal unless -q).
    #[arg(short = 'y', long = "verify-passphrase")]
    pub verify_passphrase: bool,
    /// The vault and its daemon.
    #[command(flatten)]
    pub vault: VaultArgs,
    /// The device or image to format (a path, UUID=, LABEL=, ...).
    pub device: PathBuf,
    /// Key file for the new key (as `--key-file`, which wins when both are given).
    pub new_key_file: Option<PathBuf>,
}

/// A LUKS UUID: the canonical `8-4-4-4-12` lowercase hex text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LuksUuid(String);

impl LuksUuid {
    /// Parses a UUID as libuuid's `uuid_parse` does (hex digits in either case).
    pub fn parse(s: &str) -> Result<Self, OptionError> {
        let ok = s.len() == 36
            && s.bytes().enumerate().all(|(i, c)| match i {
                8 | 13 | 18 | 23 => c == b'-',
                _ => c.is_ascii_hexdigit(),
            });
        if !ok {
            return Err(OptionError::Other(format!(
                "Wrong LUKS UUID format provided (--uuid {s})."
            )));
        }
        Ok(Self(s.to_ascii_lowercase()))
    }

    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Where the data starts, as asked on the command line.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataPlacement {
    /// cryptsetup's default ([`default_data_offset`], or 0 with a detached header).
    Default,
    /// `--offset`: exactly here (bytes).
    Offset(u64),
    /// `--align-payload`: aligned to this many bytes.
    Align(u64),
}

/// Everything `luksFormat` was asked for, checked and typed.
#[derive(Clone, Debug)]
pub struct FormatOptions {
    /// LUKS1 or LUKS2.
    pub version: LuksVersion,
    /// The data cipher.
    pub cipher: CipherSpec,
    /// The volume key size (valid for the cipher).
    pub key_size: KeySize,
    /// `--sector-size`; `None`: LUKS1 512, LUKS2 the device's choice (the header
    /// writer decides, as cryptsetup's `device_optimal_encryption_sector_size`).
    pub sector_size: Option<SectorSize>,
    /// Header hash (LUKS1 hash spec, LUKS2 digest and AF hash).
    pub hash: Hash,
    /// The first keyslot's PBKDF.
    pub pbkdf: PbkdfRequest,
    /// LUKS2 label.
    pub label: Option<String>,
    /// LUKS2 subsystem.
    pub subsystem: Option<String>,
    /// `--uuid`, else a random one.
    pub uuid: Option<LuksUuid>,
    /// `-S`: the first keyslot's number, else 0.
    pub key_slot: Option<u32>,
    /// `--header`: the detached header (the device then only holds data).
    pub header: Option<PathBuf>,
    /// `--luks2-metadata-size` in bytes.
    pub metadata_size: Option<u64>,
    /// `--luks2-keyslots-size` in bytes.
    pub keyslots_size: Option<u64>,
    /// `--offset` / `--align-payload`.
    pub data: DataPlacement,
    /// Where the passphrase comes from.
    pub key_input: KeyInput,
}

fn other(s: String) -> OptionError {
    OptionError::Other(s)
}

impl LuksFormatArgs {
    /// The LUKS version `--type` asks for (`luks` is LUKS2, cryptsetup's default).
    pub fn version(&self) -> LuksVersion {
        match self.device_type {
            DeviceType::Luks1 => LuksVersion::Luks1,
            DeviceType::Luks | DeviceType::Luks2 => LuksVersion::Luks2,
        }
    }

    /// Checks every option, as cryptsetup does before touching the device.
    pub fn validate(&self) -> Result<FormatOptions, OptionError> {
        let version = self.version();
        let luks2 = version == LuksVersion::Luks2;
        let cipher_text = self.cipher.as_deref().unwrap_or(DEFAULT_CIPHER);
        let cipher = CipherSpec::parse(cipher_text).map_err(|e| {
            other(format!(
                "Cipher {cipher_text} (--cipher) is not available: {e}."
            ))
        })?;
        let xts = cipher.engine().mode == vault_vm::engine::Mode::Xts;
        let bits = match self.key_size {
            Some(b) => {
                if !b.is_multiple_of(8) {
                    return Err(other(format!(
                        "Key size must be a multiple of 8 bits (--key-size {b})."
                    )));
                }
                b
            }
            None if xts => DEFAULT_KEY_BITS * 2,
            None => DEFAULT_KEY_BITS,
        };
        let key_size = KeySize::from_bits(bits)
            .ok()
            .filter(|k| cipher.key_size_ok(*k))
            .ok_or_else(|| {
                other(format!(
                    "Key size {bits} bits is not valid for cipher {cipher_text} (--key-size: {}).",
                    if xts {
                        "256, 384 or 512 for XTS"
                    } else {
                        "128, 192 or 256"
                    }
                ))
            })?;
        let sector_size = match self.sector_size {
            None => None,
            Some(n) => {
                let s = SectorSize::try_from(n).map_err(|_| {
                    other(format!(
                        "Unsupported encryption sector size (--sector-size {n}: 512, 1024, 2048 or 4096)."
                    ))
                })?;
                if !luks2 && s != SectorSize::B512 {
                    return Err(other(format!(
                        "Unsupported encryption sector size (--sector-size {n}: LUKS1 has only 512-byte sectors)."
                    )));
                }
                Some(s)
            }
        };
        let hash = self.pbkdf.hash()?;
        let pbkdf = self.pbkdf.request(version)?;
        for (opt, v) in [("--label", &self.label), ("--subsystem", &self.subsystem)] {
            if let Some(v) = v {
                if !luks2 {
                    return Err(other(format!(
                        "Option {opt} is allowed only for LUKS2 devices."
                    )));
                }
                if v.len() > MAX_LABEL_LEN {
                    return Err(other(format!(
                        "Option {opt} is longer than {MAX_LABEL_LEN} bytes."
                    )));
                }
            }
        }
        let uuid = self.uuid.as_deref().map(LuksUuid::parse).transpose()?;
        let key_slot = self
            .key_slot
            .map(|s| check_key_slot(s, version, "--key-slot"))
            .transpose()?;
        let metadata_size = self
            .luks2_metadata_size
            .as_deref()
            .map(|t| parse_size(t, "luks2-metadata-size"))
            .transpose()?;
        let keyslots_size = self
            .luks2_keyslots_size
            .as_deref()
            .map(|t| parse_size(t, "luks2-keyslots-size"))
            .transpose()?;
        if !luks2 && (metadata_size.is_some() || keyslots_size.is_some()) {
            return Err(other(
                "Options --luks2-metadata-size and --luks2-keyslots-size are allowed only for LUKS2 devices.".into(),
            ));
        }
        if let Some(m) = metadata_size {
            if !LUKS2_METADATA_SIZES.contains(&m) {
                return Err(other(format!(
                    "Unsupported LUKS2 metadata size options (--luks2-metadata-size {m}: a power of two from 16 KiB to 4 MiB)."
                )));
            }
        }
        if let Some(k) = keyslots_size {
            if k == 0 || !k.is_multiple_of(4096) || k > LUKS2_MAX_KEYSLOTS_SIZE {
                return Err(other(format!(
                    "Unsupported LUKS2 metadata size options (--luks2-keyslots-size {k}: a multiple of 4096 up to 128 MiB)."
                )));
            }
        }
        let data =
            match (self.offset, self.align_payload) {
                (Some(_), Some(_)) => {
                    return Err(other(
                        "Options --align-payload and --offset cannot be combined.".into(),
                    ))
                }
                (Some(o), None) => DataPlacement::Offset(
                    o.checked_mul(512)
                        .ok_or_else(|| other(format!("Offset {o} (--offset) is too large.")))?,
                ),
                (None, Some(0)) | (None, None) => DataPlacement::Default,
                (None, Some(a)) => DataPlacement::Align(a.checked_mul(512).ok_or_else(|| {
                    other(format!("Alignment {a} (--align-payload) is too large."))
                })?),
            };
        let key_input = KeyInput {
            key_file: self.key_file.clone().or_else(|| self.new_key_file.clone()),
            keyfile_offset: self.keyfile_offset,
            keyfile_size: self.keyfile_size,
        };
        Ok(FormatOptions {
            version,
            cipher,
            key_size,
            sector_size,
            hash,
            pbkdf,
            label: self.label.clone(),
            subsystem: self.subsystem.clone(),
            uuid,
            key_slot,
            header: self.header.clone(),
            metadata_size,
            keyslots_size,
            data,
            key_input,
        })
    }
}

impl FormatOptions {
    /// The data offset the header leaves (bytes), for the size check: `--offset` as
    /// given; with a detached header 0; else cryptsetup's default layout, rounded up to
    /// `--align-payload`.
    pub fn data_offset(&self) -> u64 {
        let luks2 = self.version == LuksVersion::Luks2;
        match self.data {
            DataPlacement::Offset(o) => o,
            _ if self.header.is_some() => 0,
            DataPlacement::Default => default_data_offset(
                luks2,
                self.key_size.bytes(),
                self.metadata_size,
                self.keyslots_size,
            ),
            DataPlacement::Align(a) => {
                let d = default_data_offset(
                    luks2,
                    self.key_size.bytes(),
                    self.metadata_size,
                    self.keyslots_size,
                );
                d.div_ceil(a) * a
            }
        }
    }
}

/// The devices a format writes, opened and checked ([`open_target`], size).
#[derive(Debug)]
pub struct FormatTargets {
    /// Where the header goes: `--header`, else the device.
    pub header: Target,
    /// The data device when the header is detached (checked for size, in use).
    pub data: Option<Target>,
    /// The device as resolved (what prompts and messages name).
    pub device: PathBuf,
    /// The encryption sector size: `--sector-size`, else LUKS1 512 and LUKS2
    /// [`optimal_sector_size`] of the data device.
    pub sector_size: SectorSize,
}

/// Resolves and opens the device (and the detached header), exclusively, and checks
/// that the data device holds the header (when not detached) plus one sector.
pub fn prepare_target(
    args: &LuksFormatArgs,
    opts: &FormatOptions,
) -> Result<FormatTargets, Failure> {
    let device = resolve_device(&args.device)?;
    let (header, data) = match &opts.header {
        None => (open_target(&device)?, None),
        Some(h) => (
            open_target(&resolve_device(h)?)?,
            Some(open_target(&device)?),
        ),
    };
    let data_target = data.as_ref().unwrap_or(&header);
    let sector_size = match (opts.sector_size, opts.version) {
        (Some(s), _) => s,
        (None, LuksVersion::Luks1) => SectorSize::B512,
        (None, LuksVersion::Luks2) => optimal_sector_size(data_target, opts.data_offset()),
    };
    data_target.check_size(opts.data_offset(), sector_size.bytes())?;
    Ok(FormatTargets {
        header,
        data,
        device,
        sector_size,
    })
}

/// "Operation aborted." — luksFormat's answer to anything but YES (exit 1). The
/// trailing newline is cryptsetup's (an empty line follows the message).
pub const ABORTED: &str = "Operation aborted.\n";

/// cryptsetup's confirmation: "This will overwrite data on HEADER irrevocably."
pub fn confirm(targets: &FormatTargets, batch_mode: bool) -> Result<(), Failure> {
    yes_dialog(
        &overwrite_message(&targets.header.path),
        batch_mode,
        ABORTED,
        ExitCode::WrongParameters,
    )?;
    Ok(())
}

/// cryptsetup's `verify_passphrase(def)`: `-y` forces verification, `-q` drops it, and
/// non-tty stdin never verifies (with a note when `-y` asked for it).
pub fn verify_wanted(default: bool, verify_flag: bool, batch_mode: bool, out: &mut Output) -> bool {
    let mut v = if verify_flag {
        true
    } else {
        default && !batch_mode
    };
    // SAFETY: isatty only inspects the descriptor.
    if v && unsafe { libc::isatty(libc::STDIN_FILENO) } != 1 {
        if verify_flag {
            out.stderr
                .push("Can't do passphrase verification on non-tty inputs.".into());
        }
        v = false;
    }
    v
}

/// Reads the new passphrase: "Enter passphrase for DEVICE: ", verified on a terminal
/// unless `-q`.
pub fn read_passphrase(
    args: &LuksFormatArgs,
    opts: &FormatOptions,
    device: &Path,
    batch_mode: bool,
    out: &mut Output,
) -> Result<Passphrase, Failure> {
    let verify = verify_wanted(true, args.verify_passphrase, batch_mode, out);
    let prompt = format!("Enter passphrase for {}: ", device.display());
    Ok(read_new_passphrase(&opts.key_input, &prompt, verify)?)
}

/// What a format needs from the host before the vault takes over.
#[derive(Debug)]
pub struct FormatPlan {
    /// The options.
    pub opts: FormatOptions,
    /// The checked, open devices.
    pub targets: FormatTargets,
    /// The first keyslot's passphrase.
    pub passphrase: Passphrase,
    /// The first keyslot's PBKDF cost.
    pub cost: PbkdfCost,
}

/// Everything of `luksFormat` before the vault: options, devices, confirmation,
/// passphrase, PBKDF benchmark.
pub fn prepare(cli: &Cli, args: &LuksFormatArgs, out: &mut Output) -> Result<FormatPlan, Failure> {
    let opts = args.validate()?;
    if args.key_file.is_some() && args.new_key_file.is_some() {
        out.stderr
            .push("Option --key-file takes precedence over specified key file argument.".into());
    }
    let targets = prepare_target(args, &opts)?;
    confirm(&targets, cli.batch_mode)?;
    let passphrase = read_passphrase(args, &opts, &targets.device, cli.batch_mode, out)?;
    let cost = choose_cost(&opts.pbkdf, opts.key_size.bytes())?;
    Ok(FormatPlan {
        opts,
        targets,
        passphrase,
        cost,
    })
}

/// Refuses the layout options the header writer does not place yet (exit 1):
/// `--header`, `--offset`, `--align-payload`, `--luks2-metadata-size`,
/// `--luks2-keyslots-size`.
fn refuse_custom_layout(args: &LuksFormatArgs) -> Result<(), Failure> {
    let given = [
        ("--header", args.header.is_some()),
        ("--offset", args.offset.is_some()),
        (
            "--align-payload",
            args.align_payload.is_some_and(|a| a != 0),
        ),
        ("--luks2-metadata-size", args.luks2_metadata_size.is_some()),
        ("--luks2-keyslots-size", args.luks2_keyslots_size.is_some()),
    ];
    match given.iter().find(|(_, g)| *g) {
        Some((opt, _)) => Err(fail(
            ExitCode::WrongParameters,
            format!("Option {opt} is not supported by vaultsetup luksFormat yet."),
        )),
        None => Ok(()),
    }
}

/// The header plan of `plan` (cryptsetup's layout; the sector size as
/// [`prepare_target`] chose it).
fn volume_plan(plan: &FormatPlan) -> Result<crate::format::VolumePlan, Failure> {
    let o = &plan.opts;
    let luks2 = o.version == LuksVersion::Luks2;
    let opts = PlanOptions {
        version: match o.version {
            LuksVersion::Luks1 => crate::format::LuksVersion::Luks1,
            LuksVersion::Luks2 => crate::format::LuksVersion::Luks2,
        },
        cipher: Some(o.cipher.as_str().to_string()),
        key_bits: Some(o.key_size.bytes() as u32 * 8),
        hash: Some(super::vault_keys::hash_name(o.hash).to_string()),
        pbkdf: Some(match plan.cost {
            PbkdfCost::Pbkdf2 { .. } => KdfKind::Pbkdf2,
            PbkdfCost::Argon2 {
                variant: crate::kdf::Argon2Variant::Argon2i,
                ..
            } => KdfKind::Argon2i,
            PbkdfCost::Argon2 { .. } => KdfKind::Argon2id,
        }),
        uuid: o.uuid.as_ref().map(|u| u.as_str().to_string()),
        label: o.label.clone(),
        subsystem: o.subsystem.clone(),
        sector_size: luks2.then(|| plan.targets.sector_size.bytes()),
    };
    let geometry = DeviceGeometry {
        size: plan.targets.header.size,
        optimal_sector_size: plan.targets.sector_size.bytes(),
    };
    Ok(crate::format::plan(&opts, &geometry)?)
}

/// `luksFormat`: [`prepare`], then through vmvaultd (started on demand): the vault
/// generates the volume key, seals keyslot `-S` (default 0) under the passphrase and
/// computes the digest; the header is written ([`crate::format::write_new`]) unless the
/// device backs an open vmvault volume; the key is dropped from the vault.
pub fn run(cli: &Cli, args: &LuksFormatArgs, out: &mut Output) -> Result<(), Failure> {
    args.validate()?;
    refuse_custom_layout(args)?;
    let plan = prepare(cli, args, out)?;
    let o = &plan.opts;
    let luks2 = o.version == LuksVersion::Luks2;
    let slot = o.key_slot.unwrap_or(0);
    let digest_hash = o.hash;
    let digest = DigestSpec {
        hash: hash_alg(digest_hash),
        iterations: new_digest_iterations(&o.pbkdf, digest_hash, o.key_size.bytes())?,
        salt: vmvault_proto::keyslot::HexBytes::new(&random_bytes(SALT_LEN)?)
            .map_err(|e| fail(ExitCode::WrongParameters, e.to_string()))?,
        digest: vmvault_proto::keyslot::HexBytes::new(&vec![
            0u8;
            if luks2 {
                digest_hash.output_len()
            } else {
                LUKS1_DIGEST_LEN
            }
        ])
        .map_err(|e| fail(ExitCode::WrongParameters, e.to_string()))?,
    };
    let params = SlotParams::new(plan.cost, o.hash, o.cipher.clone(), o.key_size)?;
    let spec = params.spec(&digest)?;
    let vplan = volume_plan(&plan)?;

    let mut client = connect(cli, &args.vault)?;
    let key = client
        .generate_key(
            o.cipher.clone(),
            o.key_size,
            backend_choice(args.vault.backend),
        )
        .map_err(client_fail)?;
    let area = client
        .seal_keyslot(key.handle, spec.clone(), &plan.passphrase)
        .map_err(client_fail)?;
    let value = client.key_digest(key.handle, spec).map_err(client_fail)?;
    let volumes = client.list().map_err(client_fail)?;
    plan.targets.header.check_not_backing(
        volumes
            .iter()
            .map(|v| (v.name.as_str(), v.backing.as_path())),
    )?;
    let digest = DigestParams {
        hash: super::vault_keys::hash_name(digest_hash).to_string(),
        iterations: digest.iterations,
        salt: digest.salt.as_bytes().to_vec(),
        digest: value,
    };
    crate::format::write_new(
        &plan.targets.header.file,
        &vplan,
        &[(slot, params.material(area))],
        &digest,
    )?;
    client.drop_key(key.handle).map_err(client_fail)?;
    if cli.verbose {
        out.stdout.push_str(&format!("Key slot {slot} created.\n"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    fn parse(args: &[&str]) -> Result<FormatOptions, String> {
        let mut v = vec!["vaultsetup", "luksFormat"];
        v.extend_from_slice(args);
        v.push("/dev/null");
        let cli = Cli::try_parse_from(v).map_err(|e| e.to_string())?;
        let super::super::Command::LuksFormat(a) = &cli.command else {
            panic!()
        };
        a.validate().map_err(|e| e.to_string())
    }

    #[test]
    fn defaults() {
        let o = parse(&[]).unwrap();
        assert_eq!(o.version, LuksVersion::Luks2);
        assert_eq!(o.cipher.as_str(), "aes-xts-plain64");
        assert_eq!(o.key_size.bits(), 512);
        assert_eq!(o.hash, Hash::Sha256);
        assert!(matches!(
            o.pbkdf,
            PbkdfRequest::Argon2 {
                iter_time_ms: 2000,
                ..
            }
        ));
        assert_eq!(o.data_offset(), 16 << 20);
        let o = parse(&["--type", "luks1", "-c", "aes-cbc-essiv:sha256"]).unwrap();
        assert_eq!(o.key_size.bits(), 256);
        assert!(matches!(
            o.pbkdf,
            PbkdfRequest::Pbkdf2 {
                iter_time_ms: 2000,
                ..
            }
        ));
        assert_eq!(o.data_offset(), 2 << 20);
        let o = parse(&[
            "-h",
            "sha512",
            "-i",
            "50",
            "--uuid",
            "0123ABCD-0123-4567-89ab-0123456789AB",
        ])
        .unwrap();
        assert_eq!(o.hash, Hash::Sha512);
        assert_eq!(
            o.uuid.unwrap().as_str(),
            "0123abcd-0123-4567-89ab-0123456789ab"
        );
        assert!(matches!(
            o.pbkdf,
            PbkdfRequest::Argon2 {
                iter_time_ms: 50,
                ..
            }
        ));
        let o = parse(&["--offset", "4096", "--header", "/tmp/h"]).unwrap();
        assert_eq!(o.data_offset(), 2 << 20);
        let o = parse(&["--header", "/tmp/h"]).unwrap();
        assert_eq!(o.data_offset(), 0);
    }

    #[test]
    fn refusals_name_the_option() {
        for (args, want) in [
            (&["-s", "257"][..], "--key-size 257"),
            (&["-s", "256", "-c", "aes-cbc-plain64"], "ok"),
            (&["-s", "128"], "--key-size"),
            (&["-s", "512", "-c", "aes-cbc-plain64"], "--key-size"),
            (&["-c", "twofish-xts-plain64"], "--cipher"),
            (&["--sector-size", "8192"], "--sector-size 8192"),
            (&["--sector-size", "1000"], "--sector-size 1000"),
            (&["--type", "luks1", "--sector-size", "4096"], "LUKS1"),
            (&["--type", "luks2", "--sector-size", "4096"], "ok"),
            (
                &["--type", "luks1", "--pbkdf", "argon2id"],
                "--pbkdf argon2id",
            ),
            (&["--type", "luks1", "--label", "x"], "--label"),
            (&["--label", &"x".repeat(48)], "--label"),
            (&["--uuid", "nope"], "--uuid nope"),
            (&["--type", "luks1", "-S", "8"], "--key-slot"),
            (&["-S", "31"], "ok"),
            (&["--luks2-metadata-size", "20k"], "--luks2-metadata-size"),
            (&["--luks2-metadata-size", "64k"], "ok"),
            (&["--luks2-keyslots-size", "5000"], "--luks2-keyslots-size"),
            (
                &["--offset", "1", "--align-payload", "8"],
                "--align-payload and --offset",
            ),
            (
                &["--pbkdf-force-iterations", "3"],
                "--pbkdf-force-iterations",
            ),
        ] {
            match parse(args) {
                Ok(_) => assert_eq!(want, "ok", "{args:?} was accepted"),
                Err(e) => assert!(e.contains(want), "{args:?}: {e}"),
            }
        }
    }
}
