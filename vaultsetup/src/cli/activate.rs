//! `open DEVICE NAME`, `close NAME` and `status NAME` through vmvaultd.
//!
//! `open`: read the header, work out the segment's dm-crypt parameters, ask vmvaultd
//! (started on demand) whether NAME is free, then key the volume:
//! - passphrase or key file: read the keyslots to try (typed parameters and their
//!   encrypted areas, bounds checked) and send them with the passphrase (from its locked
//!   buffer) in `open_fd_unlock`; the vault runs the KDF, the AF merge and the digest
//!   check, so the volume key never exists in this process or the daemon's;
//! - `--volume-key-keyring`: the key (checked against the LUKS digest) is staged as a
//!   possessor-only keyring key, linked into a request keyring of the daemon and sent
//!   as `open_fd` with its serial; the daemon reads it straight into the vault's
//!   transfer page and invalidates it.

use vmvault_proto::client::{connect_or_spawn, Client, ClientError};
use vmvault_proto::protocol::{
    BackendChoice, FrontendChoice, FrontendKind, OpenRequest, OpenUnlockRequest, VolumeStatus,
};
use vmvault_proto::VolumeName;

use std::path::PathBuf;

use super::{
    fail, read_volume, BackendArg, Cli, CloseArgs, DeviceType, Failure, FrontendArg, OpenArgs,
    Output, StatusArgs,
};
use crate::activation::{verify_volume_key, CryptParams, KeyCheck};
use crate::device::Device;
use crate::exit::{ExitCode, HasExitCode};
use crate::keyring::{self, KeyringError, StagedKey};
use crate::keyslot::{vault_plans, UnlockError, UnlockOptions, VaultKeyslot};
use crate::passphrase::{is_interactive, read_passphrase_timed, KeyInput};
use crate::secret::Passphrase;
use crate::secret::VolumeKey;
use crate::volume::Volume;

impl HasExitCode for KeyringError {
    fn exit_code(&self) -> ExitCode {
        match self {
            // cryptsetup: a missing key is -ENOENT/-EINVAL, exit 1.
            KeyringError::NotFound(_) | KeyringError::WrongType { .. } => ExitCode::WrongParameters,
            // The key exists but cannot be read: no permission.
            KeyringError::Logon(_) | KeyringError::NotReadable(_) => ExitCode::NoPermission,
            KeyringError::Sys { source, .. } => match source.raw_os_error() {
                Some(libc::ENOMEM) | Some(libc::EDQUOT) => ExitCode::OutOfMemory,
                _ => ExitCode::NoPermission,
            },
        }
    }
}

pub(crate) fn client_fail(e: ClientError) -> Failure {
    fail(e.exit_code(), e.to_string())
}

pub(crate) fn backend_choice(b: BackendArg) -> BackendChoice {
    match b {
        BackendArg::Kvm => BackendChoice::Kvm,
        BackendArg::Soft => BackendChoice::Soft,
        BackendArg::Auto => BackendChoice::Auto,
    }
}

pub(crate) fn frontend_choice(f: FrontendArg) -> FrontendChoice {
    match f {
        FrontendArg::Fuse => FrontendChoice::Fuse,
        FrontendArg::Ublk => FrontendChoice::Ublk,
        FrontendArg::Auto => FrontendChoice::Auto,
    }
}

/// Reads and checks the `--volume-key-keyring` key. Returns the key and its serial.
fn key_from_keyring(spec: &str, vol: &Volume) -> Result<(VolumeKey, i32), Failure> {
    let serial = keyring::find_user_key(spec)?;
    let (buf, len) = keyring::read_key(serial, spec, 1024)?;
    let check = if len > buf.len() {
        KeyCheck::WrongSize { want: 0 }
    } else {
        verify_volume_key(vol, buf.as_slice(), &Default::default())?
    };
    match check {
        KeyCheck::Match => Ok((VolumeKey::new(buf), serial)),
        KeyCheck::WrongSize { .. } => {
            let want = match vol {
                Volume::Luks1(h) => h.key_bytes as usize,
                Volume::Luks2(_) => {
                    // Reported from the digest's key size.
                    match verify_volume_key(vol, &[], &Default::default()) {
                        Ok(KeyCheck::WrongSize { want }) => want,
                        _ => 0,
                    }
                }
            };
            Err(fail(
                ExitCode::NoPermission,
                format!(
                    "Volume key in keyring key {spec:?} has {len} bytes, but this device's volume key has {want} bytes."
                ),
            ))
        }
        KeyCheck::Mismatch => Err(fail(
            ExitCode::NoPermission,
            format!("Volume key in keyring key {spec:?} does not match the volume."),
        )),
    }
}

/// What [`activate`] opens, however the command line said it.
#[derive(Debug)]
pub(crate) struct Activation<'a> {
    /// Mapping name.
    pub name: VolumeName,
    /// The data device (tags already resolved), as named to the user.
    pub device: PathBuf,
    /// A detached header (`--header`, `header=`): header and keyslots come from it, the
    /// data from `device` at the header's data offset.
    pub header: Option<PathBuf>,
    /// Accepted LUKS versions.
    pub device_type: DeviceType,
    /// Read-only mapping.
    pub readonly: bool,
    /// Pass discards.
    pub allow_discards: bool,
    /// Vault backend.
    pub backend: BackendChoice,
    /// Frontend.
    pub frontend: FrontendChoice,
    /// vmvaultd's run directory.
    pub run_dir: PathBuf,
    /// `Key slot N unlocked.` and the device line on stdout.
    pub verbose: bool,
    /// How to start vmvaultd.
    pub spawn: &'a vmvault_proto::client::SpawnConfig,
    /// An active NAME on the same device is success (`attach`), not "already exists".
    pub accept_active_same: bool,
}

/// Asks for a passphrase; the argument is the attempt (1, 2, ...).
pub(crate) type AskFn<'a> = dyn FnMut(u32) -> Result<Passphrase, Failure> + 'a;

/// Where the volume key of [`activate`] comes from.
pub(crate) enum KeySource<'a> {
    /// `--volume-key-keyring`: a user key holding the volume key.
    Keyring {
        /// The key as named.
        spec: &'a str,
        /// `--keep-keyring-key`.
        keep: bool,
    },
    /// A passphrase or key file unlocking a keyslot.
    Passphrase {
        /// Reads one passphrase.
        ask: &'a mut AskFn<'a>,
        /// Attempts when the passphrase is wrong (0 = until right); only with `retry`.
        tries: u32,
        /// Whether a wrong passphrase is asked for again (a prompt, not a key file).
        retry: bool,
        /// Only this keyslot.
        key_slot: Option<u32>,
    },
}

impl std::fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Keyring { spec, keep } => f
                .debug_struct("Keyring")
                .field("spec", spec)
                .field("keep", keep)
                .finish(),
            KeySource::Passphrase {
                tries,
                retry,
                key_slot,
                ..
            } => f
                .debug_struct("Passphrase")
                .field("tries", tries)
                .field("retry", retry)
                .field("key_slot", key_slot)
                .finish_non_exhaustive(),
        }
    }
}

/// Whether two open files are the same device or file.
fn same_file(a: &std::fs::File, b: &std::path::Path) -> bool {
    use std::os::unix::fs::{FileTypeExt, MetadataExt};
    match (a.metadata(), std::fs::metadata(b)) {
        (Ok(x), Ok(y)) if x.file_type().is_block_device() && y.file_type().is_block_device() => {
            x.rdev() == y.rdev()
        }
        (Ok(x), Ok(y)) => x.dev() == y.dev() && x.ino() == y.ino(),
        _ => false,
    }
}

/// Whether two paths name the same device or file.
pub(crate) fn same_device(a: &std::path::Path, b: &std::path::Path) -> bool {
    std::fs::File::open(a).is_ok_and(|f| same_file(&f, b))
}

/// `open DEVICE NAME`.
pub fn open(cli: &Cli, a: &OpenArgs, out: &mut Output) -> Result<(), Failure> {
    let Some(name) = a.name.as_deref() else {
        return Err(fail(
            ExitCode::WrongParameters,
            "Command requires device and mapped name as arguments.",
        ));
    };
    let name = VolumeName::new(name).map_err(|e| fail(ExitCode::WrongParameters, e.to_string()))?;
    let device = super::resolve_device(&a.device)?;
    let header = a.header.as_deref().map(super::resolve_device).transpose()?;
    let act = Activation {
        name,
        device,
        header,
        device_type: a.device_type,
        readonly: a.readonly,
        allow_discards: a.allow_discards,
        backend: backend_choice(a.backend),
        frontend: frontend_choice(a.frontend),
        run_dir: a.daemon.dir(),
        verbose: cli.verbose,
        spawn: &cli.spawn,
        accept_active_same: false,
    };
    let input = KeyInput {
        key_file: a.key.key_file.clone(),
        keyfile_offset: a.key.keyfile_offset,
        keyfile_size: a.key.keyfile_size,
    };
    let prompt = format!("Enter passphrase for {}: ", a.device.display());
    let timeout = (a.timeout != 0).then(|| std::time::Duration::from_secs(a.timeout));
    let mut ask = |_attempt: u32| -> Result<Passphrase, Failure> {
        Ok(read_passphrase_timed(&input, &prompt, timeout)?)
    };
    let key = match &a.volume_key_keyring {
        Some(spec) => KeySource::Keyring {
            spec,
            keep: a.keep_keyring_key,
        },
        None => KeySource::Passphrase {
            ask: &mut ask,
            tries: a.tries,
            retry: is_interactive(&input),
            key_slot: a.key.key_slot,
        },
    };
    activate(&act, key, out)
}

/// Opens `act` through vmvaultd with the key from `key`: the common part of `open` and
/// `attach`.
pub(crate) fn activate(
    act: &Activation<'_>,
    key: KeySource<'_>,
    out: &mut Output,
) -> Result<(), Failure> {
    let name = &act.name;
    // The backing device as vmvaultd will use it: opened once, here, with the mode the
    // mapping needs, and handed over as a descriptor. The header must come from the same
    // file (unless detached), so a path swapped meanwhile (a symlink to another disk) is
    // refused, and one swapped later changes nothing.
    let header_path = act.header.as_ref().unwrap_or(&act.device);
    let (dev, vol) = read_volume(header_path, out)?;
    let backing_file = open_backing(&act.device, act.readonly)?;
    let data_dev = match &act.header {
        None => None,
        Some(_) => Some(Device::open(&act.device)?),
    };
    if !data_dev
        .as_ref()
        .unwrap_or(&dev)
        .is_same_file(&backing_file)
    {
        return Err(fail(
            ExitCode::WrongDevice,
            format!(
                "Device {} changed while it was being opened; refusing it.",
                act.device.display()
            ),
        ));
    }
    if !act.device_type.accepts(vol.version()) {
        return Err(fail(
            ExitCode::WrongParameters,
            format!(
                "Device {} is not a valid LUKS device.",
                header_path.display()
            ),
        ));
    }
    let params = CryptParams::from_volume(&vol, data_dev.as_ref().unwrap_or(&dev))?;
    drop(data_dev);
    // For display only (the daemon uses the descriptor): where the open file is.
    let backing = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&backing_file)
    ))
    .ok()
    .filter(|p| p.is_absolute())
    .unwrap_or_else(|| act.device.clone());
    let mut client = connect_or_spawn(&act.run_dir, act.spawn).map_err(client_fail)?;
    // Like cryptsetup: an active NAME is refused before asking for a passphrase
    // (`attach`: success when it is this device, as systemd-cryptsetup).
    if let Ok(st) = client.status(name.as_str()) {
        if act.accept_active_same && same_file(&backing_file, &st.backing) {
            out.stderr.push(format!("Volume {name} already active."));
            return Ok(());
        }
        return Err(fail(
            ExitCode::Busy,
            format!("Device {name} already exists."),
        ));
    }

    let (spec, keep) = match key {
        KeySource::Keyring { spec, keep } => (spec, keep),
        KeySource::Passphrase {
            ask,
            tries,
            retry,
            key_slot,
        } => {
            let opts = UnlockOptions {
                keyslot: key_slot,
                ..Default::default()
            };
            let plans = vault_plans(&dev, &vol, &opts);
            drop(dev);
            let req = OpenUnlockRequest {
                name: name.clone(),
                backing,
                cipher: params.cipher.clone(),
                key_size: params.key,
                sector_size: params.sector_size,
                offset: params.offset,
                iv_offset: params.iv_offset,
                iv_large_sectors: params.iv_large_sectors,
                size: Some(params.size),
                readonly: act.readonly,
                allow_discards: act.allow_discards,
                backend: act.backend,
                frontend: act.frontend,
                volume_type: Some(format!("LUKS{}", vol.version())),
                volume_uuid: Some(volume_uuid(&vol)),
                keyslots: Vec::new(),
                passphrase_len: 0,
            };
            let ask = VaultAsk { ask, tries, retry };
            let (keyslot, st, warnings) =
                open_in_vault(&mut client, req, plans, ask, &backing_file, &params.cipher)?;
            if act.verbose {
                out.stdout
                    .push_str(&format!("Key slot {keyslot} unlocked.\n"));
            }
            push_warnings(&warnings, out);
            verbose_opened(act, &st, out);
            return Ok(());
        }
    };
    // `--volume-key-keyring`: the key already exists outside the vault; hand it over.
    let (key, serial) = key_from_keyring(spec, &vol)?;
    drop(dev);
    if key.len() != params.key.bytes() {
        return Err(fail(
            ExitCode::WrongParameters,
            format!(
                "Volume key has {} bytes but the data segment needs {}.",
                key.len(),
                params.key.bytes()
            ),
        ));
    }
    // Stage the key in the keyring, then forget our copy (zeroized on drop).
    let staged = StagedKey::new(key.as_bytes())?;
    drop(key);
    let ring = client.prepare_key().map_err(client_fail)?;
    staged.link_into(ring)?;
    let req = OpenRequest {
        name: name.clone(),
        backing,
        cipher: params.cipher.clone(),
        key_size: params.key,
        sector_size: params.sector_size,
        offset: params.offset,
        iv_offset: params.iv_offset,
        iv_large_sectors: params.iv_large_sectors,
        size: Some(params.size),
        readonly: act.readonly,
        allow_discards: act.allow_discards,
        backend: act.backend,
        key_serial: staged.serial(),
        keep_key: false,
        key_ring: Some(ring),
        volume_type: Some(format!("LUKS{}", vol.version())),
        volume_uuid: Some(volume_uuid(&vol)),
        frontend: act.frontend,
    };
    let resp = client.open_fd(req, std::os::fd::AsFd::as_fd(&backing_file));
    drop(staged);
    let (st, warnings) = resp.map_err(client_fail)?;
    push_warnings(&warnings, out);
    if keep {
        out.stderr.push(format!(
            "WARNING: the volume key stays in the kernel keyring (key {serial}, {spec:?}) as --keep-keyring-key asked: it is outside the vault until you invalidate it (keyctl invalidate {serial})."
        ));
    } else if let Err(e) = keyring::invalidate(serial) {
        out.stderr.push(format!(
            "WARNING: could not invalidate keyring key {serial} ({spec:?}): {e}; the volume key is still in the keyring."
        ));
    }
    verbose_opened(act, &st, out);
    Ok(())
}

/// The volume's uuid from its header.
fn volume_uuid(vol: &Volume) -> String {
    match vol {
        Volume::Luks1(h) => h.uuid.clone(),
        Volume::Luks2(h) => h.bin.uuid.clone(),
    }
}

/// The daemon's warnings.
fn push_warnings(warnings: &[String], out: &mut Output) {
    for w in warnings {
        out.stderr.push(format!("WARNING: {w}"));
    }
}

/// With `-v`, the device line.
fn verbose_opened(act: &Activation<'_>, st: &VolumeStatus, out: &mut Output) {
    if act.verbose {
        out.stdout.push_str(&format!(
            "Device {} is {} ({} backend).\n",
            act.name,
            st.device.display(),
            st.backend.as_str()
        ));
    }
}

/// How [`open_in_vault`] asks for passphrases.
struct VaultAsk<'a> {
    ask: &'a mut AskFn<'a>,
    /// Attempts when the passphrase is wrong (0 = until right); only with `retry`.
    tries: u32,
    /// Whether a wrong passphrase is asked for again.
    retry: bool,
}

/// The daemon's refusal for a passphrase that opens no keyslot.
pub(crate) fn is_no_key(e: &ClientError) -> bool {
    matches!(e, ClientError::Remote { code: ExitCode::NoPermission, message }
        if *message == UnlockError::NoKey.to_string())
}

/// Opens the volume with keys the vault unlocks: asks for the passphrase, sends it
/// with the keyslots of `plans` in `open_fd_unlock`; a wrong passphrase is asked for
/// again as with the host unlock (same message, same exit code 2 at the end). Returns
/// the keyslot that opened, the status and the daemon's warnings.
fn open_in_vault(
    client: &mut Client,
    mut req: OpenUnlockRequest,
    plans: Result<crate::keyslot::VaultPlans, UnlockError>,
    ask: VaultAsk<'_>,
    backing_file: &std::fs::File,
    cipher: &vmvault_proto::CipherSpec,
) -> Result<(u32, VolumeStatus, Vec<String>), Failure> {
    let VaultAsk { ask, tries, retry } = ask;
    let mut attempt = 0u32;
    // Errors of the header come after the first prompt, as they did.
    let (bound, unbound) = match plans {
        Ok(p) => (p.bound, p.unbound),
        Err(e) => {
            ask(1)?;
            return Err(e.into());
        }
    };
    let mut first_err = None;
    let mut areas = Vec::new();
    for k in bound {
        match k {
            Ok(VaultKeyslot { candidate, area }) => {
                req.keyslots.push(candidate);
                areas.push(area);
            }
            Err(e) => {
                first_err.get_or_insert(e);
            }
        }
    }
    let unbound: Vec<VaultKeyslot> = unbound.into_iter().filter_map(Result::ok).collect();
    let area_refs: Vec<&[u8]> = areas.iter().map(Vec::as_slice).collect();
    loop {
        attempt += 1;
        let pass = ask(attempt)?;
        if req.keyslots.is_empty() {
            return Err(first_err.unwrap_or(UnlockError::NoActiveSlots).into());
        }
        let r = client.open_unlock(
            req.clone(),
            &area_refs,
            &pass,
            Some(std::os::fd::AsFd::as_fd(backing_file)),
        );
        let e = match r {
            Ok((u, warnings)) => return Ok((u.keyslot, u.volume, warnings)),
            Err(e) if is_no_key(&e) => e,
            Err(e) => return Err(client_fail(e)),
        };
        drop(e);
        if let Some(e) = first_err.take() {
            return Err(e.into());
        }
        // Does the passphrase open a keyslot not bound to the data segment? Then no
        // usable keyslot fits it (cryptsetup's answer, exit 1); its key is dropped.
        for k in &unbound {
            if !cipher.key_size_ok(k.candidate.spec.volume_key_size) {
                continue;
            }
            if let Ok(h) = client.unlock_keyslot(
                cipher.clone(),
                req.backend,
                k.candidate.clone(),
                &k.area,
                &pass,
            ) {
                let _ = client.drop_key(h);
                return Err(UnlockError::NoUsableKeyslot.into());
            }
        }
        drop(pass);
        let e = UnlockError::NoKey;
        let last = !retry || (tries != 0 && attempt >= tries);
        if !last {
            // Before the next prompt, as cryptsetup prints it.
            eprintln!("{e}");
            continue;
        }
        return Err(e.into());
    }
}

/// Opens the backing device for the daemon: read-write unless `readonly`, close-on-exec.
fn open_backing(path: &std::path::Path, readonly: bool) -> Result<std::fs::File, Failure> {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .write(!readonly)
        .custom_flags(libc::O_CLOEXEC)
        .open(path)
        .map_err(|e| {
            fail(
                ExitCode::WrongDevice,
                format!(
                    "Cannot open device {} for {} access: {e}",
                    path.display(),
                    if readonly { "read-only" } else { "read-write" }
                ),
            )
        })
}

fn connect_existing(run_dir: &std::path::Path) -> Option<Client> {
    let mut c = Client::connect(run_dir).ok()?;
    c.ping().ok()?;
    Some(c)
}

/// `close NAME`.
pub fn close(a: &CloseArgs, _out: &mut Output) -> Result<(), Failure> {
    let not_active = || {
        fail(
            ExitCode::WrongDevice,
            format!("Device {} is not active.", a.name),
        )
    };
    // A name the daemon could not hold is not active.
    if VolumeName::new(&a.name).is_err() {
        return Err(not_active());
    }
    let Some(mut c) = connect_existing(&a.daemon.dir()) else {
        return Err(not_active());
    };
    c.close(&a.name).map_err(client_fail)
}

fn human_status(st: &VolumeStatus) -> String {
    let mut s = format!("{} is active.\n", st.device.display());
    let ty = st.volume_type.as_deref().unwrap_or("n/a");
    s += &format!("  type:    {ty}\n");
    s += &format!("  cipher:  {}\n", st.cipher);
    s += &format!("  keysize: {}\n", st.key_size);
    s += &format!(
        "  key location: vault ({} backend, key slot in the vault; never in the keyring or dm table)\n",
        st.backend.as_str()
    );
    s += &format!("  protection: {}\n", st.protection);
    s += &format!("  device:  {}\n", st.backing.display());
    if st.loop_device != st.device {
        let label = match st.frontend {
            FrontendKind::Ublk => "ublk",
            FrontendKind::FuseLoop => "loop",
        };
        s += &format!("  {label}:    {}\n", st.loop_device.display());
    }
    s += &format!("  sector size:  {}\n", st.sector_size);
    s += &format!("  offset:  {} sectors\n", st.offset);
    s += &format!("  size:    {} sectors\n", st.size);
    s += &format!(
        "  mode:    {}\n",
        if st.readonly {
            "readonly"
        } else {
            "read/write"
        }
    );
    if st.allow_discards {
        s += "  flags:   discards\n";
    }
    s += &format!(
        "  daemon:  vmvaultd pid {} ({})\n",
        st.daemon_pid,
        st.frontend.as_str()
    );
    s
}

/// `status NAME` / `status --json NAME`.
pub fn status(a: &StatusArgs, out: &mut Output) -> Result<(), Failure> {
    let st = connect_existing(&a.daemon.dir()).and_then(|mut c| c.status(&a.name).ok());
    match st {
        Some(st) => {
            if a.json {
                out.stdout = serde_json::to_string_pretty(&st)
                    .map_err(|e| fail(ExitCode::WrongParameters, e.to_string()))?;
                out.stdout.push('\n');
            } else {
                out.stdout = human_status(&st);
            }
            Ok(())
        }
        None => {
            // cryptsetup prints this on stdout and exits 4.
            let mut f = fail(ExitCode::WrongDevice, "");
            f.stdout = format!("/dev/mapper/{} is inactive.\n", a.name);
            Err(f)
        }
    }
}
