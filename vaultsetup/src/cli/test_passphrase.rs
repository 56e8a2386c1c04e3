//! `open --test-passphrase DEVICE`: the vault tries the passphrase on the keyslots
//! (`unlock_keyslot`, then `drop_key` at once); nothing is activated and neither the KDF
//! output nor the volume key ever exists in this process or in vmvaultd.
//!
//! The keyslots are picked and ordered as for `open` ([`vault_plans`]); errors of the
//! header come after the passphrase was read, a wrong passphrase is "No key available
//! with this passphrase." (exit 2), and a passphrase that opens only a keyslot not bound
//! to the data segment is "No usable keyslot is available." (exit 1), as cryptsetup
//! answers. vmvaultd is started on demand as for `open`; without one (and without the
//! rights to start one) the command fails with the client's message: there is no
//! fallback that would unlock on the host.

use vmvault_proto::client::{connect_or_spawn, Client};
use vmvault_proto::protocol::BackendChoice;
use vmvault_proto::types::KeySize;
use vmvault_proto::CipherSpec;

use super::activate::{backend_choice, client_fail, is_no_key};
use super::{fail, read_volume, resolve_device, Cli, Failure, OpenArgs, Output};
use crate::exit::ExitCode;
use crate::keyslot::{vault_plans, UnlockError, UnlockOptions, VaultKeyslot};
use crate::passphrase::{read_passphrase, KeyInput};
use crate::secret::Passphrase;

/// Ciphers a tested key may be held for in the vault, in order of preference: the key
/// is dropped right after the unlock, so only its length has to fit.
const HANDLE_CIPHERS: [&str; 2] = ["aes-xts-plain64", "aes-cbc-essiv:sha256"];

/// A cipher the vault accepts for a key of `size`.
fn handle_cipher(size: KeySize) -> Option<CipherSpec> {
    HANDLE_CIPHERS
        .iter()
        .filter_map(|s| CipherSpec::parse(s).ok())
        .find(|c| c.key_size_ok(size))
}

/// Whether `pass` opens keyslot `k` in the vault. The key handle it gives is dropped
/// at once (and with the connection, should that fail).
fn opens(
    client: &mut Client,
    backend: BackendChoice,
    k: &VaultKeyslot,
    pass: &Passphrase,
) -> Result<bool, Failure> {
    let size = k.candidate.spec.volume_key_size;
    let Some(cipher) = handle_cipher(size) else {
        return Err(UnlockError::Unsupported {
            slot: k.candidate.keyslot,
            why: format!("a {size} key cannot be held in the vault to test it"),
        }
        .into());
    };
    match client.unlock_keyslot(cipher, backend, k.candidate.clone(), &k.area, pass) {
        Ok(h) => {
            let _ = client.drop_key(h);
            Ok(true)
        }
        Err(e) if is_no_key(&e) => Ok(false),
        Err(e) => Err(client_fail(e)),
    }
}

/// `open --test-passphrase`.
pub fn run(cli: &Cli, a: &OpenArgs, out: &mut Output) -> Result<(), Failure> {
    // The keyslots are in the detached header when there is one.
    let hdr = match &a.header {
        Some(h) => resolve_device(h)?,
        None => resolve_device(&a.device)?,
    };
    let (dev, vol) = read_volume(&hdr, out)?;
    if !a.device_type.accepts(vol.version()) {
        return Err(fail(
            ExitCode::WrongParameters,
            format!("Device {} is not a valid LUKS device.", hdr.display()),
        ));
    }
    // As cryptsetup: testing the passphrase of one named keyslot (or with --unbound)
    // may open a keyslot not bound to the data segment.
    let opts = UnlockOptions {
        keyslot: a.key.key_slot,
        allow_unbound: a.unbound || a.key.key_slot.is_some(),
        ..Default::default()
    };
    let plans = vault_plans(&dev, &vol, &opts);
    drop(dev);
    let input = KeyInput {
        key_file: a.key.key_file.clone(),
        keyfile_offset: a.key.keyfile_offset,
        keyfile_size: a.key.keyfile_size,
    };
    let prompt = format!("Enter passphrase for {}: ", a.device.display());
    let ask = || read_passphrase(&input, &prompt);
    let plans = match plans {
        Ok(p) => p,
        Err(e) => {
            ask()?;
            return Err(e.into());
        }
    };
    // Nothing to send: the header's error (after the prompt, as before), no daemon.
    if !plans.bound.iter().any(Result::is_ok) {
        ask()?;
        let e = plans.bound.into_iter().find_map(Result::err);
        return Err(e.unwrap_or(UnlockError::NoActiveSlots).into());
    }
    let mut client = connect_or_spawn(&a.daemon.dir(), &cli.spawn).map_err(client_fail)?;
    let pass = ask()?;
    let backend = backend_choice(a.backend);
    // The first keyslot that opens wins; otherwise the first error (in keyslot order)
    // that was not a wrong passphrase.
    let mut first_err: Option<Failure> = None;
    for k in plans.bound {
        let r = k.map_err(Failure::from).and_then(|k| {
            opens(&mut client, backend, &k, &pass).map(|ok| ok.then_some(k.candidate.keyslot))
        });
        match r {
            Ok(Some(slot)) => {
                if cli.verbose {
                    out.stdout.push_str(&format!("Key slot {slot} unlocked.\n"));
                }
                return Ok(());
            }
            Ok(None) => {}
            Err(f) => {
                first_err.get_or_insert(f);
            }
        }
    }
    if let Some(f) = first_err {
        return Err(f);
    }
    // Does the passphrase open a keyslot not bound to the data segment? Then no usable
    // keyslot fits it (cryptsetup's answer, exit 1).
    for k in plans.unbound.iter().flatten() {
        if opens(&mut client, backend, k, &pass).unwrap_or(false) {
            return Err(UnlockError::NoUsableKeyslot.into());
        }
    }
    Err(UnlockError::NoKey.into())
}
