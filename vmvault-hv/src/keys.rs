//! Key slots: the handles ([`SlotId`]), the host's slot table and key import and drop.

use std::ptr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;

use vault_vm::abi::{self, op, status, Request, MAX_SLOTS};
use vault_vm::engine::CipherSpec;

use crate::error::{HvError, Result};
use crate::Vault;

/// A key slot in the vault: a handle, never the key. It names one import: once the key
/// is dropped the handle stays invalid even if a new key lands in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    pub(crate) index: u32,
    pub(crate) cipher: u32,
    pub(crate) generation: u32,
}

impl SlotId {
    /// Slot index inside the vault.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Generation of the import this handle names (what raw requests carry in
    /// `Request::generation`).
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// The cipher the key was imported for.
    pub fn spec(self) -> CipherSpec {
        abi::cipher_from_id(self.cipher).expect("slot ids hold valid cipher ids")
    }
}

/// The host's view of the vault's key slots: which hold a key, of which import.
#[derive(Debug)]
pub(crate) struct Slots {
    /// Generation of the key in each slot (`None`: free).
    table: Mutex<[Option<u32>; MAX_SLOTS]>,
    next_generation: AtomicU32,
    /// One import at a time: there is one transfer page.
    import_lock: Mutex<()>,
}

impl Slots {
    pub fn new() -> Self {
        Slots {
            table: Mutex::new([None; MAX_SLOTS]),
            next_generation: AtomicU32::new(1),
            import_lock: Mutex::new(()),
        }
    }

    /// Reserves a free slot and a fresh generation for it.
    pub(crate) fn alloc(&self) -> Result<(usize, u32)> {
        let mut slots = self.table.lock().unwrap_or_else(|e| e.into_inner());
        let i = slots
            .iter()
            .position(|g| g.is_none())
            .ok_or(HvError::NoFreeSlot(MAX_SLOTS))?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        slots[i] = Some(generation);
        Ok((i, generation))
    }

    /// Takes the transfer page (one import or key generation at a time).
    pub(crate) fn transfer_lock(&self) -> std::sync::MutexGuard<'_, ()> {
        self.import_lock.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Frees slot `i` if it still holds `generation`.
    pub fn free(&self, i: usize, generation: u32) {
        let mut slots = self.table.lock().unwrap_or_else(|e| e.into_inner());
        if slots[i] == Some(generation) {
            slots[i] = None;
        }
    }

    /// The slots in use, with their generations.
    pub fn used(&self) -> Vec<(usize, u32)> {
        let slots = self.table.lock().unwrap_or_else(|e| e.into_inner());
        (0..MAX_SLOTS)
            .filter_map(|i| slots[i].map(|g| (i, g)))
            .collect()
    }
}

impl Vault {
    pub(crate) fn check_key_len(spec: CipherSpec, len: usize) -> Result<()> {
        if abi::key_len_ok(spec, len) {
            Ok(())
        } else {
            Err(HvError::BadKeyLength(len, spec))
        }
    }

    /// Imports `key` into a free slot. The key is copied into the one-shot transfer page,
    /// which the vault zeroes after copying it into private memory.
    pub fn import_key(&self, spec: CipherSpec, key: &[u8]) -> Result<SlotId> {
        Self::check_key_len(spec, key.len())?;
        self.import_with(spec, key.len(), |page| {
            for (i, b) in key.iter().enumerate() {
                // SAFETY: i < key.len() <= MAX_KEY_LEN < TRANSFER_SIZE.
                unsafe { ptr::write_volatile(page.add(i), *b) };
            }
            Ok(())
        })
    }

    /// Imports a key straight from the kernel keyring (`keyctl_read` into the transfer
    /// page; the key never touches this process's heap or stack).
    pub fn import_key_from_keyring(
        &self,
        spec: CipherSpec,
        serial: i32,
        key_len: usize,
    ) -> Result<SlotId> {
        Self::check_key_len(spec, key_len)?;
        self.import_with(spec, key_len, |page| {
            const KEYCTL_READ: libc::c_long = 11;
            // SAFETY: keyctl(KEYCTL_READ) writes at most TRANSFER_SIZE bytes into the page.
            let n = unsafe {
                libc::syscall(
                    libc::SYS_keyctl,
                    KEYCTL_READ,
                    serial as libc::c_long,
                    page,
                    abi::TRANSFER_SIZE as usize,
                )
            };
            if n < 0 {
                return Err(HvError::Keyring {
                    serial,
                    err: std::io::Error::last_os_error(),
                });
            }
            if n as usize != key_len {
                return Err(HvError::KeyringLength {
                    serial,
                    got: n as usize,
                    want: key_len,
                });
            }
            Ok(())
        })
    }

    fn import_with(
        &self,
        spec: CipherSpec,
        key_len: usize,
        fill: impl FnOnce(*mut u8) -> Result<()>,
    ) -> Result<SlotId> {
        let _one_at_a_time = self
            .slots
            .import_lock
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let (slot, generation) = self.slots.alloc()?;
        let page = self.backend.transfer();
        let wipe = || {
            for i in 0..abi::TRANSFER_SIZE as usize {
                // SAFETY: the transfer page is TRANSFER_SIZE bytes.
                unsafe { ptr::write_volatile(page.add(i), 0) };
            }
        };
        let result = fill(page).and_then(|()| {
            let mut req = Request {
                op: op::IMPORT_KEY,
                slot: slot as u32,
                cipher: abi::cipher_id(spec),
                key_len: key_len as u32,
                generation,
                ..Request::ZERO
            };
            self.call(&mut req).and_then(Self::check)
        });
        // The vault zeroed the page; make sure of it whatever happened.
        wipe();
        match result {
            Ok(_) => Ok(SlotId {
                index: slot as u32,
                cipher: abi::cipher_id(spec),
                generation,
            }),
            Err(e) => {
                self.slots.free(slot, generation);
                Err(e)
            }
        }
    }

    /// Wipes a key slot in the vault.
    pub fn drop_key(&self, slot: SlotId) -> Result<()> {
        let mut req = Request {
            op: op::DROP_KEY,
            slot: slot.index,
            generation: slot.generation,
            ..Request::ZERO
        };
        let r = self.call(&mut req).and_then(Self::check);
        if r.is_ok()
            || matches!(
                r,
                Err(HvError::Refused {
                    status: status::SLOT_EMPTY,
                    ..
                })
            )
        {
            self.slots.free(slot.index as usize, slot.generation);
        }
        r.map(|_| ())
    }
}
