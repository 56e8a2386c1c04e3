//! vaultsetup: read the LUKS1/LUKS2 volumes cryptsetup makes and recover their volume
//! key from a passphrase or key file — without ever opening the device for writing.
//!
//! Layers: [`device`] (read-only access) → [`luks1`] / [`luks2`] (headers, JSON) →
//! [`volume`] (detection) → [`keyslot`] (KDF from [`kdf`], area decryption through
//! `vault_vm::engine`, AF merge from [`af`], digest check). [`passphrase`] reads keys as
//! cryptsetup does; [`cli`] is the command line; [`exit`] has cryptsetup's exit codes.
#![deny(missing_docs)]

pub mod activation;
pub mod af;
pub mod askpass;
pub mod cli;
pub mod device;
pub mod dump;
pub mod format;
pub use vmvault_proto::exit;
pub mod kdf;
pub mod keyring;
pub mod keyslot;
pub mod luks1;
pub mod luks2;
pub mod passphrase;
pub mod pbkdf_bench;
pub use vmvault_proto::secret;
pub mod util;
pub mod volume;
pub mod write_checks;

use std::path::Path;

pub use exit::{ExitCode, HasExitCode};
pub use keyslot::{UnlockError, UnlockOptions, Unlocked};
pub use secret::{Passphrase, SecretBuf, VolumeKey};
pub use volume::{Volume, VolumeError};

/// Any error of the library's one-call API.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Device access.
    #[error(transparent)]
    Device(#[from] device::DeviceError),
    /// Header reading.
    #[error(transparent)]
    Volume(#[from] VolumeError),
    /// No keyslot opened with the passphrase, or the key it gave failed the digest.
    #[error(transparent)]
    Unlock(#[from] UnlockError),
}

impl HasExitCode for Error {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Device(e) => e.exit_code(),
            Self::Volume(e) => e.exit_code(),
            Self::Unlock(e) => e.exit_code(),
        }
    }
}

/// Opens `path` read-only, reads its LUKS header and recovers the volume key with
/// `passphrase` (trying `opts.keyslot` only, if set).
pub fn recover_volume_key(
    path: impl AsRef<Path>,
    passphrase: &[u8],
    opts: &UnlockOptions,
) -> Result<Unlocked, Error> {
    let dev = device::Device::open(path)?;
    let vol = Volume::read(&dev)?;
    let pass = Passphrase::from_slice(passphrase);
    Ok(keyslot::unlock(&dev, &vol, &pass, opts)?)
}

/// Parses header bytes (as from the start of a device) without any device: LUKS1
/// header, or LUKS2 binary headers plus JSON. Used by the fuzz target and robustness
/// tests; it must never panic.
pub fn parse_header_bytes(bytes: &[u8]) -> Result<Volume, Error> {
    let dev = device::Device::from_bytes(bytes.to_vec());
    Ok(Volume::read(&dev)?)
}
