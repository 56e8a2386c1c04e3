//! Choosing and keying the crypt backend of a volume.

use std::sync::Arc;

use vault_vm::engine::{CipherSpec, Geometry};

use vmvault_hv::BackendKind;

use crate::crypt::{Crypt, CryptError, EngineCrypt};
use crate::vault::{VaultError, VaultPool};
use vmvault_proto::keyring::{self, KeyError};
use vmvault_proto::protocol::BackendChoice;

/// One keyslot the vault may unlock: its parameters and its encrypted area as read
/// from the device (ciphertext only).
pub struct UnlockCandidate {
    /// The LUKS keyslot number.
    pub keyslot: u32,
    /// The vault's parameter block.
    pub params: vmvault_hv::KeyslotParams,
    /// The encrypted area.
    pub area: Vec<u8>,
}

/// Shows the keyslot number only.
impl std::fmt::Debug for UnlockCandidate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnlockCandidate")
            .field("keyslot", &self.keyslot)
            .field("area_len", &self.area.len())
            .finish_non_exhaustive()
    }
}

/// Where a volume's key comes from.
pub enum KeySource<'a> {
    /// A kernel keyring `user` key (the old hand-over: the key passed through the
    /// client).
    Keyring {
        /// Its serial.
        serial: i32,
    },
    /// Keyslots the vault unlocks with a passphrase; the first that opens keys the
    /// volume.
    Unlock {
        /// The keyslots, in the order to try them.
        keyslots: &'a [UnlockCandidate],
        /// The passphrase (a locked, zeroized buffer).
        passphrase: &'a vmvault_proto::secret::Passphrase,
    },
}

/// Names the source, never the passphrase.
impl std::fmt::Debug for KeySource<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            KeySource::Keyring { serial } => write!(f, "Keyring({serial})"),
            KeySource::Unlock { keyslots, .. } => {
                write!(
                    f,
                    "Unlock({} keyslot(s), passphrase redacted)",
                    keyslots.len()
                )
            }
        }
    }
}

/// Errors creating a volume's crypt backend.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// Reading the key from the keyring failed.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The backend refused the key or geometry.
    #[error(transparent)]
    Crypt(#[from] CryptError),
    /// The vault could not be started or refused the key.
    #[error("vault: {0}")]
    Vault(#[source] vmvault_hv::HvError),
    /// The passphrase opens none of the keyslots (cryptsetup's message).
    #[error("No key available with this passphrase.")]
    NoKey,
    /// Keyslots can only be unlocked in a vault, not by the in-process engine.
    #[error("the in-process backend cannot unlock keyslots (the key would be in the daemon's heap); use kvm or soft")]
    InProcessUnlock,
}

impl From<VaultError> for BackendError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Key(k) => BackendError::Key(k),
            VaultError::Hv(h) => BackendError::Vault(h),
            VaultError::NoKey => BackendError::NoKey,
        }
    }
}

/// A keyed crypt backend plus the vault slot holding the key (0 for in-process).
pub struct Keyed {
    /// The backend.
    pub crypt: Arc<dyn Crypt>,
    /// Slot number for the table's key reference.
    pub slot: u32,
    /// The LUKS keyslot that opened (keys from [`KeySource::Unlock`]).
    pub keyslot: Option<u32>,
}

/// Shows the slot only: the backend holds the key.
impl std::fmt::Debug for Keyed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Keyed")
            .field("backend", &self.crypt.backend())
            .field("slot", &self.slot)
            .finish_non_exhaustive()
    }
}

/// The vault kind a backend choice names (`None`: the in-process engine).
pub fn vault_kind(choice: BackendChoice) -> Option<BackendKind> {
    match choice {
        BackendChoice::InProcess => None,
        BackendChoice::Kvm => Some(BackendKind::Kvm),
        BackendChoice::Soft => Some(BackendKind::Soft),
        BackendChoice::Auto => Some(BackendKind::Auto),
    }
}

/// Keys a backend for one volume from `key` (`key_len` bytes).
///
/// `auto` prefers the vault (kvm, else soft). The in-process engine is used only when
/// asked for by name, and only with a keyring key.
pub fn key_backend(
    vaults: &VaultPool,
    choice: BackendChoice,
    spec: CipherSpec,
    geom: Geometry,
    key: &KeySource<'_>,
    key_len: usize,
) -> Result<Keyed, BackendError> {
    let serial = match key {
        KeySource::Keyring { serial } => *serial,
        KeySource::Unlock {
            keyslots,
            passphrase,
        } => {
            let kind = vault_kind(choice).ok_or(BackendError::InProcessUnlock)?;
            let (vc, keyslot) = vaults.unlock(kind, spec, geom, keyslots, passphrase)?;
            let slot = vc.slot();
            return Ok(Keyed {
                crypt: Arc::new(vc),
                slot,
                keyslot: Some(keyslot),
            });
        }
    };
    match choice {
        BackendChoice::InProcess => {
            let key = keyring::read_key(serial, key_len)?;
            let crypt = EngineCrypt::new(spec, key.as_slice(), geom)?;
            Ok(Keyed {
                crypt: Arc::new(crypt),
                slot: 0,
                keyslot: None,
            })
        }
        BackendChoice::Kvm | BackendChoice::Soft | BackendChoice::Auto => {
            let kind = match choice {
                BackendChoice::Kvm => BackendKind::Kvm,
                BackendChoice::Soft => BackendKind::Soft,
                _ => BackendKind::Auto,
            };
            let vc = vaults.import(kind, spec, geom, serial, key_len)?;
            let slot = vc.slot();
            Ok(Keyed {
                crypt: Arc::new(vc),
                slot,
                keyslot: None,
            })
        }
    }
}
