//! `open DEVICE NAME`, `close NAME` and `status NAME` through vmvaultd.
//!
//! `open`: read the header, work out the segment's dm-crypt parameters, ask vmvaultd
//! (started on demand) whether NAME is free, recover the volume key (passphrase/key file,
//! or `--volume-key-keyring` checked against the LUKS digest), stage it as a
//! possessor-only keyring key, link it into a request keyring of the daemon and send
//! `open` with its serial. The daemon reads the key straight into the vault's transfer
//! page and invalidates it; this process zeroizes its copy before talking to the daemon.

use vmvault_proto::client::{connect_or_spawn, Client, ClientError};
use vmvault_proto::protocol::{
    BackendChoice, FrontendChoice, FrontendKind, OpenRequest, VolumeStatus,
};
use vmvault_proto::VolumeName;

use super::{
    fail, read_volume, unlock_with_passphrase, BackendArg, Cli, CloseArgs, Failure, FrontendArg,
    OpenArgs, Output, StatusArgs,
};
use crate::activation::{verify_volume_key, CryptParams, KeyCheck};
use crate::exit::{ExitCode, HasExitCode};
use crate::keyring::{self, KeyringError, StagedKey};
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

fn client_fail(e: ClientError) -> Failure {
    fail(e.exit_code(), e.to_string())
}

fn backend_choice(b: BackendArg) -> BackendChoice {
    match b {
        BackendArg::Kvm => BackendChoice::Kvm,
        BackendArg::Soft => BackendChoice::Soft,
        BackendArg::Auto => BackendChoice::Auto,
    }
}

fn frontend_choice(f: FrontendArg) -> FrontendChoice {
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

/// `open DEVICE NAME`.
pub fn open(cli: &Cli, a: &OpenArgs, out: &mut Output) -> Result<(), Failure> {
    let Some(name) = a.name.as_deref() else {
        return Err(fail(
            ExitCode::WrongParameters,
            "Command requires device and mapped name as arguments.",
        ));
    };
    let name = VolumeName::new(name).map_err(|e| fail(ExitCode::WrongParameters, e.to_string()))?;
    // The backing device as vmvaultd will use it: opened once, here, with the mode the
    // mapping needs, and handed over as a descriptor. The header must come from the same
    // file, so a path swapped meanwhile (a symlink to another disk) is refused, and one
    // swapped later changes nothing.
    let (dev, vol) = read_volume(&a.device, out)?;
    let backing_file = open_backing(&a.device, a.readonly)?;
    if !dev.is_same_file(&backing_file) {
        return Err(fail(
            ExitCode::WrongDevice,
            format!(
                "Device {} changed while it was being opened; refusing it.",
                a.device.display()
            ),
        ));
    }
    if !a.device_type.accepts(vol.version()) {
        return Err(fail(
            ExitCode::WrongParameters,
            format!("Device {} is not a valid LUKS device.", a.device.display()),
        ));
    }
    let params = CryptParams::from_volume(&vol, &dev)?;
    // For display only (the daemon uses the descriptor): where the open file is.
    let backing = std::fs::read_link(format!(
        "/proc/self/fd/{}",
        std::os::fd::AsRawFd::as_raw_fd(&backing_file)
    ))
    .ok()
    .filter(|p| p.is_absolute())
    .unwrap_or_else(|| a.device.clone());
    let run_dir = a.daemon.dir();
    let mut client = connect_or_spawn(&run_dir, &cli.spawn).map_err(client_fail)?;
    // Like cryptsetup: an active NAME is refused before asking for a passphrase.
    if client.status(name.as_str()).is_ok() {
        return Err(fail(
            ExitCode::Busy,
            format!("Device {name} already exists."),
        ));
    }

    let (key, original) = match &a.volume_key_keyring {
        Some(spec) => {
            let (k, serial) = key_from_keyring(spec, &vol)?;
            (k, Some(serial))
        }
        None => {
            let unlocked =
                unlock_with_passphrase(&dev, &vol, &a.device, &a.key, false, cli.verbose, out)?;
            (unlocked.key, None)
        }
    };
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
        readonly: a.readonly,
        allow_discards: a.allow_discards,
        backend: backend_choice(a.backend),
        key_serial: staged.serial(),
        keep_key: false,
        key_ring: Some(ring),
        volume_type: Some(format!("LUKS{}", vol.version())),
        volume_uuid: Some(match &vol {
            Volume::Luks1(h) => h.uuid.clone(),
            Volume::Luks2(h) => h.bin.uuid.clone(),
        }),
        frontend: frontend_choice(a.frontend),
    };
    let resp = client.open_fd(req, std::os::fd::AsFd::as_fd(&backing_file));
    drop(staged);
    let (st, warnings) = resp.map_err(client_fail)?;
    for w in &warnings {
        out.stderr.push(format!("WARNING: {w}"));
    }
    if let (Some(serial), Some(spec)) = (original, &a.volume_key_keyring) {
        if a.keep_keyring_key {
            out.stderr.push(format!(
                "WARNING: the volume key stays in the kernel keyring (key {serial}, {spec:?}) as --keep-keyring-key asked: it is outside the vault until you invalidate it (keyctl invalidate {serial})."
            ));
        } else if let Err(e) = keyring::invalidate(serial) {
            out.stderr.push(format!(
                "WARNING: could not invalidate keyring key {serial} ({spec:?}): {e}; the volume key is still in the keyring."
            ));
        }
    }
    if cli.verbose {
        out.stdout.push_str(&format!(
            "Device {name} is {} ({} backend).\n",
            st.device.display(),
            st.backend.as_str()
        ));
    }
    Ok(())
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
