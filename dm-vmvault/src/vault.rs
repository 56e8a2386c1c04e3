//! The vault as a [`Crypt`]: keys in vault slots, I/O buffers in the vault's data window
//! (backing I/O, encryption and FUSE replies share one buffer; no copy to or from the
//! vault).
//!
//! One vault per backend kind is shared by every volume of the daemon ([`VaultPool`]);
//! it shuts down (wiping every slot) when its last volume closes.

use std::any::Any;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, Weak};

use vault_vm::abi::Segment;
use vault_vm::engine::{CipherSpec, Geometry};
use vmvault_hv::{BackendKind, HvError, SlotId, Vault, VaultConfig, WindowBuf};

use crate::crypt::{Crypt, CryptError, IoBuf};
use crate::keyring::KeyError;

/// Data window size of a daemon's vault.
pub const WINDOW_SIZE: u64 = 64 << 20;

struct VaultBuf(WindowBuf);

impl IoBuf for VaultBuf {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn hv(e: HvError) -> CryptError {
    CryptError::Vault(e.to_string())
}

/// A volume's key slot in a shared vault.
pub struct VaultCrypt {
    vault: Arc<Vault>,
    slot: SlotId,
    geom: Geometry,
}

impl VaultCrypt {
    /// The slot index (for the table's `:<bytes>:vault:<slot>`).
    pub fn slot(&self) -> u32 {
        self.slot.index()
    }

    fn run(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
        enc: bool,
    ) -> Result<(), CryptError> {
        let vb = buf
            .as_any_mut()
            .downcast_mut::<VaultBuf>()
            .ok_or(CryptError::ForeignBuffer)?;
        if range.start > range.end || range.end > vb.0.len() {
            return Err(CryptError::Range(range));
        }
        if !Arc::ptr_eq(vb.0.window(), self.vault.window()) {
            return Err(CryptError::ForeignBuffer);
        }
        let seg = [Segment {
            offset: vb.0.offset() + range.start as u64,
            len: range.len() as u64,
        }];
        // SAFETY: `buf` is borrowed mutably for the whole call, so no other borrow of
        // this window range is live while the vault writes it; the range lies inside
        // the buffer (checked above), which lies inside this vault's window.
        let r = unsafe {
            if enc {
                self.vault
                    .encrypt_segments(self.slot, &self.geom, sector, &seg)
            } else {
                self.vault
                    .decrypt_segments(self.slot, &self.geom, sector, &seg)
            }
        };
        r.map(|_| ()).map_err(hv)
    }
}

impl Drop for VaultCrypt {
    fn drop(&mut self) {
        let _ = self.vault.drop_key(self.slot);
    }
}

impl Crypt for VaultCrypt {
    fn alloc(&self, len: usize) -> Result<Box<dyn IoBuf>, CryptError> {
        let b = self.vault.window().alloc(len).map_err(hv)?;
        Ok(Box::new(VaultBuf(b)))
    }

    fn encrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError> {
        self.run(buf, range, sector, true)
    }

    fn decrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError> {
        self.run(buf, range, sector, false)
    }

    fn geometry(&self) -> Geometry {
        self.geom
    }

    /// A whole pooled buffer in one vault request: one ring round trip (and, when the
    /// vCPU runs on the calling thread, one VM exit) per FUSE request.
    fn max_request(&self) -> usize {
        crate::io::MAX_IO
    }

    fn backend(&self) -> String {
        self.vault.backend().name().to_string()
    }

    fn protection(&self) -> String {
        self.vault.protection().to_string()
    }
}

/// Errors opening a vault or importing a key.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The keyring key could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The vault failed or refused.
    #[error("vault: {0}")]
    Hv(HvError),
}

/// The daemon's vaults, one per backend kind, alive while a volume uses them.
pub struct VaultPool {
    vcpus: usize,
    vaults: Mutex<HashMap<&'static str, Weak<Vault>>>,
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl VaultPool {
    /// A pool whose vaults run `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        VaultPool {
            vcpus: vcpus.max(1),
            vaults: Mutex::new(HashMap::new()),
        }
    }

    /// The vault for `kind` (`Auto` = kvm when `/dev/kvm` opens, else soft), started if
    /// none is running.
    pub fn get(&self, kind: BackendKind) -> Result<Arc<Vault>, VaultError> {
        let kind = match kind {
            BackendKind::Auto if kvm_usable() => BackendKind::Kvm,
            BackendKind::Auto => BackendKind::Soft,
            k => k,
        };
        let mut m = self.vaults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(v) = m.get(kind.name()).and_then(Weak::upgrade) {
            return Ok(v);
        }
        let v = Arc::new(
            Vault::open(&VaultConfig {
                backend: kind,
                vcpus: self.vcpus,
                window_size: WINDOW_SIZE,
                ..Default::default()
            })
            .map_err(VaultError::Hv)?,
        );
        m.insert(kind.name(), Arc::downgrade(&v));
        Ok(v)
    }

    /// Imports keyring key `serial` (`key_len` bytes) into a vault slot: `keyctl_read`
    /// goes straight into the vault's transfer page.
    pub fn import(
        &self,
        kind: BackendKind,
        spec: CipherSpec,
        geom: Geometry,
        serial: i32,
        key_len: usize,
    ) -> Result<VaultCrypt, VaultError> {
        let vault = self.get(kind)?;
        let slot = vault
            .import_key_from_keyring(spec, serial, key_len)
            .map_err(|e| match e {
                HvError::Keyring { serial, err } => {
                    VaultError::Key(crate::keyring::map_err(serial, err))
                }
                HvError::KeyringLength { serial, got, want } => {
                    VaultError::Key(KeyError::WrongSize { serial, got, want })
                }
                other => VaultError::Hv(other),
            })?;
        Ok(VaultCrypt { vault, slot, geom })
    }
}
