//! vmvault-hv: runs the vault that holds the volume keys.
//!
//! A [`Vault`] is opened on a backend:
//! - `kvm`: the `no_std` vault guest (built from `vault-vm`, embedded in this crate) runs
//!   in its own VM at CPL3, one thread per vCPU; each vCPU polls a request ring in shared
//!   memory and sleeps (an MMIO exit) when idle. Keys live only in guest memory, a memfd
//!   named `vmvault-guest`.
//! - `soft`: the same request handler and engine in this process, keys in
//!   `memfd_secret` pages. Weaker; [`Vault::protection`] says so.
//!
//! Data moves through the *data window*, shared memory both sides see; requests carry
//! (offset, length) ranges inside it. The vault validates every request on a private
//! copy and answers bad ones with an error status.
//!
//! Configuration is plain data: [`VaultConfig`] says which backend, how many vCPUs, how
//! large a window and who runs the vCPUs ([`RunMode`]); its [`Tuning`] fine-tunes the
//! `kvm` backend's vCPUs (idle spins of a polling vCPU thread and of a submitter running
//! the vCPU, whether submitters assist a waking vCPU thread, CPU pinning
//! ([`CpuPinning`]) and nice value of the vCPU threads). The library reads no
//! environment variable; the `vmvault-hv` tool takes the `VMVAULT_RUN`,
//! `VMVAULT_IDLE_SPINS`, `VMVAULT_CALLER_SPINS`, `VMVAULT_ASSIST`, `VMVAULT_VCPU_CPUS`
//! and `VMVAULT_VCPU_NICE` overrides from its environment (or options) and fills them in.
//!
//! ```no_run
//! use vmvault_hv::{Vault, VaultConfig, BackendKind};
//! use vault_vm::engine::{CipherSpec, Geometry};
//! let vault = Vault::open(&VaultConfig { backend: BackendKind::Auto, vcpus: 1, window_size: 16 << 20, ..Default::default() })?;
//! let slot = vault.import_key(CipherSpec::parse("aes-xts-plain64").unwrap(), &[7u8; 64])?;
//! let mut buf = vault.window().alloc(4096)?;
//! vault.encrypt(slot, &Geometry::new(4096, false, 0).unwrap(), 0, &mut buf)?;
//! vault.drop_key(slot)?;
//! # Ok::<(), vmvault_hv::HvError>(())
//! ```

#![warn(missing_docs)]

mod backend;
mod config;
mod error;
pub mod kvm;
mod layout;
mod memory;
mod ring;
mod soft;
#[cfg(feature = "test-api")]
pub mod test_api;
mod window;

use std::cell::Cell;
use std::marker::PhantomData;
use std::ptr;
use std::sync::atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use vault_vm::abi::{self, op, status, Request, Response, Segment, MAX_SEGMENTS, MAX_SLOTS};
use vault_vm::engine::{CipherSpec, Geometry};

use backend::{Backend, Ticket};
pub use config::{BackendKind, CpuPinning, ParseTuningError, RunMode, Tuning, VaultConfig};
pub use error::{HvError, Result};
pub use window::{Window, WindowBuf, WINDOW_GRANULE};

/// The flat vault guest image (built by `build.rs`).
pub static GUEST_IMAGE: &[u8] = include_bytes!(env!("VAULT_GUEST_IMAGE"));

/// A key slot in the vault: a handle, never the key. It names one import: once the key
/// is dropped the handle stays invalid even if a new key lands in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct SlotId {
    index: u32,
    cipher: u32,
    generation: u32,
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

/// Counters summed over all vCPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VaultStats {
    /// Requests served (including the STATS requests that read these).
    pub requests: u64,
    /// Bytes encrypted or decrypted.
    pub bytes: u64,
    /// Requests refused.
    pub errors: u64,
    /// Key slots in use.
    pub slots_used: u64,
    /// Times a vCPU went to sleep.
    pub sleeps: u64,
}

/// What the self test found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelftestReport {
    /// The AES implementation the engine uses inside the vault (`soft`, `aesni`,
    /// `vaes512`).
    pub engine_backend: &'static str,
}

static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static LANE: Cell<usize> = Cell::new(NEXT_LANE.fetch_add(1, Ordering::Relaxed));
}

/// An open vault. `Send + Sync`: share it between threads (each thread sticks to one
/// vCPU ring, assigned round robin).
pub struct Vault {
    backend: Box<dyn Backend>,
    /// Generation of the key in each slot (`None`: free).
    slots: Mutex<[Option<u32>; MAX_SLOTS]>,
    next_generation: AtomicU32,
    import_lock: Mutex<()>,
    next_id: AtomicU64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.backend())
            .field("vcpus", &self.vcpus())
            .finish()
    }
}

impl Vault {
    /// Opens a vault.
    pub fn open(cfg: &VaultConfig) -> Result<Vault> {
        if cfg.vcpus == 0 || cfg.vcpus > abi::MAX_VCPUS {
            return Err(HvError::Config(format!(
                "vcpus must be 1..={}, not {}",
                abi::MAX_VCPUS,
                cfg.vcpus
            )));
        }
        let window = cfg.window_size.max(1).div_ceil(abi::WINDOW_ALIGN) * abi::WINDOW_ALIGN;
        if window > abi::WINDOW_MAX {
            return Err(HvError::Config(format!(
                "window size {} exceeds {} bytes",
                cfg.window_size,
                abi::WINDOW_MAX
            )));
        }
        let kvm = || kvm::KvmBackend::open(GUEST_IMAGE, cfg.vcpus, window, cfg.run, &cfg.tuning);
        let backend: Box<dyn Backend> = match cfg.backend {
            BackendKind::Kvm => Box::new(kvm()?),
            BackendKind::Soft => Box::new(soft::SoftBackend::open(cfg.vcpus, window)?),
            BackendKind::Auto if kvm::KvmBackend::available() => Box::new(kvm()?),
            BackendKind::Auto => Box::new(soft::SoftBackend::open(cfg.vcpus, window)?),
        };
        Ok(Vault {
            backend,
            slots: Mutex::new([None; MAX_SLOTS]),
            next_generation: AtomicU32::new(1),
            import_lock: Mutex::new(()),
            next_id: AtomicU64::new(1),
        })
    }

    /// The backend in use (never `Auto`).
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// What this backend protects against, in words (print it; never claim more).
    pub fn protection(&self) -> &'static str {
        self.backend.protection()
    }

    /// Number of vCPUs serving requests.
    pub fn vcpus(&self) -> usize {
        self.backend.vcpus()
    }

    /// CPUs the vCPU threads are pinned to (empty when they are not). Threads that
    /// submit many requests do best on the other CPUs.
    pub fn vcpu_cpus(&self) -> Vec<usize> {
        self.backend.vcpu_cpus()
    }

    /// Who runs the vCPUs (never `Auto`; `Caller` for the soft backend).
    pub fn run_mode(&self) -> RunMode {
        self.backend.run_mode()
    }

    /// Size in bytes of the embedded guest image.
    pub fn guest_image_size() -> usize {
        GUEST_IMAGE.len()
    }

    /// The data window; allocate request buffers from it.
    pub fn window(&self) -> &Arc<Window> {
        self.backend.window()
    }

    fn lane() -> usize {
        LANE.with(|l| l.get())
    }

    fn call(&self, req: &mut Request) -> Result<Response> {
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.backend.call(Self::lane(), req)
    }

    /// Like [`Vault::call`] without waiting: the ticket goes to `Backend::complete`.
    fn submit(&self, req: &mut Request) -> Result<Ticket> {
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.backend.submit(Self::lane(), req)
    }

    fn check(resp: Response) -> Result<Response> {
        match resp.status {
            status::OK => Ok(resp),
            status::SELFTEST_FAILED => Err(HvError::SelftestFailed),
            s => Err(HvError::Refused {
                status: s,
                detail: resp.detail,
            }),
        }
    }

    /// Reserves a free slot and a fresh generation for it.
    fn alloc_slot(&self) -> Result<(usize, u32)> {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        let i = slots
            .iter()
            .position(|g| g.is_none())
            .ok_or(HvError::NoFreeSlot(MAX_SLOTS))?;
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed);
        slots[i] = Some(generation);
        Ok((i, generation))
    }

    /// Frees slot `i` if it still holds `generation`.
    fn free_slot(&self, i: usize, generation: u32) {
        let mut slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
        if slots[i] == Some(generation) {
            slots[i] = None;
        }
    }

    fn check_key_len(spec: CipherSpec, len: usize) -> Result<()> {
        if abi::key_len_ok(spec, len) {
            Ok(())
        } else {
            Err(HvError::BadKeyLength(len, spec.to_string()))
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
        let _one_at_a_time = self.import_lock.lock().unwrap_or_else(|e| e.into_inner());
        let (slot, generation) = self.alloc_slot()?;
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
                self.free_slot(slot, generation);
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
            self.free_slot(slot.index as usize, slot.generation);
        }
        r.map(|_| ())
    }

    /// The window range of `buf`, which must belong to this vault's window.
    fn buf_segment(&self, buf: &WindowBuf) -> Result<Segment> {
        if !Arc::ptr_eq(buf.window(), self.window()) {
            return Err(HvError::Config(
                "the buffer belongs to another vault's window".into(),
            ));
        }
        Ok(Segment {
            offset: buf.offset(),
            len: buf.len() as u64,
        })
    }

    /// Encrypts `buf` in place: whole sectors, `sector` in 512-byte units.
    pub fn encrypt(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &mut WindowBuf,
    ) -> Result<()> {
        self.crypt_buf(op::ENCRYPT, slot, geom, sector, buf)
    }

    /// Decrypts `buf` in place: whole sectors, `sector` in 512-byte units.
    pub fn decrypt(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &mut WindowBuf,
    ) -> Result<()> {
        self.crypt_buf(op::DECRYPT, slot, geom, sector, buf)
    }

    /// One ENCRYPT or DECRYPT request over a whole window buffer.
    fn crypt_buf(
        &self,
        op: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &mut WindowBuf,
    ) -> Result<()> {
        let seg = [self.buf_segment(buf)?];
        self.crypt(op, slot, geom, sector, &seg).map(|_| ())
    }

    /// Encrypts window ranges in place (scatter/gather: sectors are consecutive across
    /// segments). Returns the bytes processed.
    ///
    /// # Safety
    /// The vault writes these window ranges while the call runs: no live `WindowBuf`
    /// borrow (`&[u8]`/`&mut [u8]`) may overlap them.
    pub unsafe fn encrypt_segments(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        self.crypt(op::ENCRYPT, slot, geom, sector, segs)
    }

    /// Decrypts window ranges in place; see [`Vault::encrypt_segments`].
    ///
    /// # Safety
    /// As for [`Vault::encrypt_segments`].
    pub unsafe fn decrypt_segments(
        &self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        self.crypt(op::DECRYPT, slot, geom, sector, segs)
    }

    fn crypt(
        &self,
        opcode: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        let mut done = 0u64;
        let mut sector = sector;
        for chunk in segs.chunks(MAX_SEGMENTS) {
            let mut req = Self::crypt_request(opcode, slot, geom, sector, chunk);
            let resp = self.call(&mut req).and_then(Self::check)?;
            done += resp.bytes;
            sector += chunk.iter().map(|s| s.len / 512).sum::<u64>();
        }
        Ok(done)
    }

    /// An ENCRYPT/DECRYPT request for up to [`MAX_SEGMENTS`] segments.
    fn crypt_request(
        opcode: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        segs: &[Segment],
    ) -> Request {
        let mut req = Request {
            op: opcode,
            slot: slot.index,
            cipher: slot.cipher,
            generation: slot.generation,
            sector_size: geom.sector_size,
            flags: if geom.iv_large_sectors {
                abi::FLAG_IV_LARGE_SECTORS
            } else {
                0
            },
            nsegs: segs.len() as u32,
            sector,
            iv_offset: geom.iv_offset,
            ..Request::ZERO
        };
        req.segs[..segs.len()].copy_from_slice(segs);
        req
    }

    /// Starts encrypting `buf` in place and returns at once: the vault works while the
    /// caller prepares the next request (several in flight keep a vCPU busy without a
    /// round trip between them). [`Pending::wait`] gives the result.
    ///
    /// # Safety
    /// The returned [`Pending`] must be waited for or dropped, never leaked
    /// (`mem::forget`): that would end the borrow of `buf` while the vault still writes it.
    pub unsafe fn encrypt_async<'a>(
        &'a self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &'a mut WindowBuf,
    ) -> Result<Pending<'a>> {
        self.crypt_async(op::ENCRYPT, slot, geom, sector, buf)
    }

    /// Starts decrypting `buf` in place; see [`Vault::encrypt_async`].
    ///
    /// # Safety
    /// As for [`Vault::encrypt_async`].
    pub unsafe fn decrypt_async<'a>(
        &'a self,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &'a mut WindowBuf,
    ) -> Result<Pending<'a>> {
        self.crypt_async(op::DECRYPT, slot, geom, sector, buf)
    }

    fn crypt_async<'a>(
        &'a self,
        opcode: u32,
        slot: SlotId,
        geom: &Geometry,
        sector: u64,
        buf: &'a mut WindowBuf,
    ) -> Result<Pending<'a>> {
        let seg = [self.buf_segment(buf)?];
        let mut req = Self::crypt_request(opcode, slot, geom, sector, &seg);
        let ticket = self.submit(&mut req)?;
        Ok(Pending {
            vault: self,
            ticket: Some(ticket),
            _buf: PhantomData,
        })
    }

    /// Runs the known-answer self test on every vCPU.
    pub fn selftest(&self) -> Result<SelftestReport> {
        let mut backend = 0;
        for lane in 0..self.vcpus() {
            let mut req = Request {
                op: op::SELFTEST,
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                ..Request::ZERO
            };
            req.op = op::SELFTEST;
            let resp = Self::check(self.backend.call(lane, &req)?)?;
            backend = resp.aux[0];
        }
        let engine_backend = match backend {
            vault_vm::service::selftest_aux::VAES512 => "vaes512",
            vault_vm::service::selftest_aux::AESNI => "aesni",
            _ => "soft",
        };
        Ok(SelftestReport { engine_backend })
    }

    /// Counters summed over all vCPUs.
    pub fn stats(&self) -> Result<VaultStats> {
        let mut s = VaultStats::default();
        for lane in 0..self.vcpus() {
            let req = Request {
                op: op::STATS,
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                ..Request::ZERO
            };
            let r = Self::check(self.backend.call(lane, &req)?)?;
            s.requests += r.aux[abi::stats::REQUESTS];
            s.bytes += r.bytes;
            s.errors += r.aux[abi::stats::ERRORS];
            s.sleeps += r.aux[abi::stats::SLEEPS];
            s.slots_used = r.aux[abi::stats::SLOTS_USED];
        }
        Ok(s)
    }

    /// Wipes every key slot, stops the vault and zeroes its memory. Idempotent; `Drop`
    /// does it too.
    pub fn shutdown(&self) -> Result<()> {
        let used: Vec<(usize, u32)> = {
            let slots = self.slots.lock().unwrap_or_else(|e| e.into_inner());
            (0..MAX_SLOTS)
                .filter_map(|i| slots[i].map(|g| (i, g)))
                .collect()
        };
        let mut first_err = None;
        for (i, generation) in used {
            let mut req = Request {
                op: op::DROP_KEY,
                slot: i as u32,
                generation,
                ..Request::ZERO
            };
            match self.call(&mut req) {
                Ok(_) | Err(HvError::ShutDown) => self.free_slot(i, generation),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let r = self.backend.shutdown();
        match first_err {
            Some(e) if r.is_ok() => Err(e),
            _ => r,
        }
    }
}

/// A request in flight (from [`Vault::encrypt_async`] or [`Vault::decrypt_async`]); the
/// buffer stays borrowed until it completes. Dropping it waits too.
#[must_use = "a pending request must be waited for"]
pub struct Pending<'a> {
    vault: &'a Vault,
    ticket: Option<Ticket>,
    _buf: PhantomData<&'a mut WindowBuf>,
}

impl Pending<'_> {
    /// Waits for the request and returns its result.
    pub fn wait(mut self) -> Result<()> {
        match self.ticket.take() {
            Some(t) => self
                .vault
                .backend
                .complete(t)
                .and_then(Vault::check)
                .map(|_| ()),
            None => Ok(()),
        }
    }
}

impl Drop for Pending<'_> {
    fn drop(&mut self) {
        if let Some(t) = self.ticket.take() {
            // The vault may still be writing the buffer: never give it back before.
            let _ = self.vault.backend.complete(t);
        }
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

// The front end must be shareable between the daemon's threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Vault>();
};
