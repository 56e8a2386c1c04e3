//! Choosing and keying the crypt backend of a volume.

use std::sync::Arc;

use vault_vm::engine::{CipherSpec, Geometry};

use vmvault_hv::BackendKind;

use crate::crypt::{Crypt, CryptError, EngineCrypt};
use crate::vault::{VaultError, VaultPool};
use vmvault_proto::keyring::{self, KeyError};
use vmvault_proto::protocol::BackendChoice;

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
}

impl From<VaultError> for BackendError {
    fn from(e: VaultError) -> Self {
        match e {
            VaultError::Key(k) => BackendError::Key(k),
            VaultError::Hv(h) => BackendError::Vault(h),
        }
    }
}

/// A keyed crypt backend plus the vault slot holding the key (0 for in-process).
pub struct Keyed {
    /// The backend.
    pub crypt: Arc<dyn Crypt>,
    /// Slot number for the table's key reference.
    pub slot: u32,
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

/// Keys a backend for one volume from keyring key `serial` (`key_len` bytes).
///
/// `auto` prefers the vault (kvm, else soft). The in-process engine is used only when
/// asked for by name.
pub fn key_backend(
    vaults: &VaultPool,
    choice: BackendChoice,
    spec: CipherSpec,
    geom: Geometry,
    serial: i32,
    key_len: usize,
) -> Result<Keyed, BackendError> {
    match choice {
        BackendChoice::InProcess => {
            let key = keyring::read_key(serial, key_len)?;
            let crypt = EngineCrypt::new(spec, key.as_slice(), geom)?;
            Ok(Keyed {
                crypt: Arc::new(crypt),
                slot: 0,
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
            })
        }
    }
}
