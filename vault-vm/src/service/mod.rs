//! The vault's request handler, shared by the guest image and the in-process `soft`
//! backend: key slots, the self test and the execution of validated requests.
//!
//! The caller hands [`Service::handle`] a *private copy* of a request; the handler
//! validates it with [`crate::abi::validate`] and only then touches slots or the window.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicU64, Ordering};

use zeroize::Zeroize;

use crate::abi::{
    self, stats, status, validate, Request, Response, Validated, MAX_KEY_LEN, MAX_SLOTS,
};
use crate::argon2::Job;
use crate::engine::generic::{Aes, GcmKey};
use crate::engine::{CipherSpec, Geometry, IvMode, Mode, SectorCipher};

mod generic;
mod keyslot;

pub use generic::{ContextCell, ContextTable};

const WRITER: u32 = 1 << 31;
const FULL: u32 = 1 << 30;
const READERS: u32 = FULL - 1;

/// One key slot: a reader/writer spin lock word, the cipher id, the keyed cipher and the
/// raw key (for SEAL_KEYSLOT and KEY_DIGEST, which need the key itself). A generic AES
/// key ([`abi::generic::kind::AES`]) also has its [`GcmKey`] (AES round keys, H and its
/// powers) for the generic modes.
///
/// An all-zero `SlotCell` is a valid empty slot, so slot tables can live in zeroed
/// memory (`.bss`, fresh `memfd_secret` pages).
#[repr(C)]
pub struct SlotCell {
    state: AtomicU32,
    cipher: AtomicU32,
    generation: AtomicU32,
    /// `SLOT_*` flags of the key (written under WRITER, zero when empty).
    flags: AtomicU32,
    /// Installs so far (vault-private, never reset): names one key of this slot whatever
    /// generation the host gave it, so operation contexts notice a replaced key.
    epoch: AtomicU64,
    value: UnsafeCell<MaybeUninit<SectorCipher>>,
    /// The key the cipher was keyed with (its first `key_len()` bytes), under the same
    /// lock as `value`; zero when the slot is empty.
    key: UnsafeCell<[u8; MAX_KEY_LEN]>,
    /// Initialized iff `cipher` is [`abi::generic::kind::AES`]; same lock as `value`.
    gcm: UnsafeCell<MaybeUninit<GcmKey>>,
}

/// Slot flag: the key may leave the vault wrapped (generic keys created with
/// [`abi::generic::FLAG_EXTRACTABLE`]; never a sector key).
const SLOT_EXTRACTABLE: u32 = 1;

/// What a slot is filled with: a sector cipher, or a generic kind.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum KeyKind {
    /// A dm-crypt sector cipher (LUKS volume key).
    Sector(CipherSpec),
    /// [`abi::generic::kind::AES`].
    GenericAes,
    /// [`abi::generic::kind::XTS`].
    GenericXts,
}

impl KeyKind {
    /// The cipher id the slot records.
    fn id(self) -> u32 {
        match self {
            KeyKind::Sector(spec) => abi::cipher_id(spec),
            KeyKind::GenericAes => abi::generic::kind::AES,
            KeyKind::GenericXts => abi::generic::kind::XTS,
        }
    }

    /// The sector cipher the slot's `value` holds (a generic AES key keeps an ECB one so
    /// that every full slot has a keyed `value`; sector requests never reach it, its id
    /// is no sector cipher's).
    fn spec(self) -> CipherSpec {
        match self {
            KeyKind::Sector(spec) => spec,
            KeyKind::GenericAes => CipherSpec {
                mode: Mode::Ecb,
                iv: IvMode::Null,
            },
            KeyKind::GenericXts => CipherSpec {
                mode: Mode::Xts,
                iv: IvMode::Plain64,
            },
        }
    }
}

// SAFETY: `value` is only written by the holder of the WRITER bit (no readers present)
// and only read by readers counted in `state`; the lock protocol serializes access.
unsafe impl Sync for SlotCell {}

impl SlotCell {
    /// An empty slot.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const EMPTY: SlotCell = SlotCell {
        state: AtomicU32::new(0),
        cipher: AtomicU32::new(0),
        generation: AtomicU32::new(0),
        flags: AtomicU32::new(0),
        epoch: AtomicU64::new(0),
        value: UnsafeCell::new(MaybeUninit::uninit()),
        key: UnsafeCell::new([0; MAX_KEY_LEN]),
        gcm: UnsafeCell::new(MaybeUninit::uninit()),
    };

    fn is_full(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        s & FULL != 0 && s & WRITER == 0
    }
}

impl core::fmt::Debug for SlotCell {
    /// The lock word, cipher id and generation; never the keyed cipher.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("SlotCell")
            .field("state", &self.state.load(Ordering::Relaxed))
            .field("cipher", &self.cipher.load(Ordering::Relaxed))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// What a slot holds, seen under its read lock ([`Service::with_slot_view`]).
struct SlotView<'s> {
    cipher: &'s SectorCipher,
    key: &'s [u8],
    /// Cipher id (a sector cipher's or a generic kind).
    id: u32,
    generation: u32,
    /// `SLOT_*` flags.
    flags: u32,
    /// Install counter of the slot.
    epoch: u64,
    /// The GCM key of a generic AES key.
    gcm: Option<&'s GcmKey>,
}

/// Per-vCPU counters reported by STATS.
#[derive(Clone, Copy, Debug, Default)]
pub struct Counters {
    /// Requests served.
    pub requests: u64,
    /// Bytes encrypted or decrypted.
    pub bytes: u64,
    /// Requests refused.
    pub errors: u64,
    /// Sleep exits.
    pub sleeps: u64,
}

/// Which engine backend the self test saw (reported in `aux[0]` of a SELFTEST response).
pub mod selftest_aux {
    /// Software AES.
    pub const SOFT: u64 = 0;
    /// AES-NI.
    pub const AESNI: u64 = 1;
    /// VAES with AVX-512.
    pub const VAES512: u64 = 2;
    /// VAES with AVX2 (256-bit registers).
    pub const VAES256: u64 = 3;
}

/// The request handler over a slot table, a data window, a transfer page, the Argon2
/// scratch region and the vault's Argon2 job board.
pub struct Service<'a> {
    slots: &'a [SlotCell; MAX_SLOTS],
    /// The Argon2 job board shared by every vCPU (every service) of this vault: UNLOCK
    /// and SEAL own it while their KDF runs, KDF_JOIN helps.
    job: &'a Job,
    window: *mut u8,
    window_len: u64,
    transfer: *mut u8,
    scratch: *mut u8,
    /// Mixed into every random draw of this service (GENERATE_KEY, SEAL's stripes).
    draws: AtomicU64,
    /// Operation contexts of the generic modes (`None`: generic context ops answer
    /// BAD_OP).
    contexts: Option<&'a ContextTable>,
}

// SAFETY: the raw pointers designate shared memory that outlives the service (contract of
// `Service::new`); all slot access goes through the `SlotCell` lock protocol.
unsafe impl Send for Service<'_> {}
// SAFETY: as above.
unsafe impl Sync for Service<'_> {}

impl core::fmt::Debug for Service<'_> {
    /// The window size and the number of occupied slots; no key material.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Service")
            .field("window_len", &self.window_len)
            .field("slots_used", &self.slots_used())
            .finish_non_exhaustive()
    }
}

impl<'a> Service<'a> {
    /// Builds a handler.
    ///
    /// # Safety
    /// `window` must be valid for reads and writes of `window_len` bytes and `transfer`
    /// for [`abi::TRANSFER_SIZE`] bytes, for as long as the service is used; neither may
    /// overlap `slots`. `scratch` (64-byte aligned; the vault guest passes
    /// [`abi::keyslot::SCRATCH_GPA`]) must be valid for reads and writes of the
    /// `scratch_len` bytes that each Argon2 keyslot request names while that request
    /// runs, must not overlap the slots, the window or the transfer page, and is used by
    /// one keyslot request at a time (all services of a process share one lock for it).
    ///
    /// `job` is the vault's Argon2 job board: the services of all vCPUs of one vault
    /// must share it (KDF_JOIN helps the computation published there), and services of
    /// different vaults must not (a join would lend one vault's vCPU to another).
    pub unsafe fn new(
        slots: &'a [SlotCell; MAX_SLOTS],
        job: &'a Job,
        window: *mut u8,
        window_len: u64,
        transfer: *mut u8,
        scratch: *mut u8,
    ) -> Self {
        Service {
            slots,
            job,
            window,
            window_len,
            transfer,
            scratch,
            draws: AtomicU64::new(0),
            contexts: None,
        }
    }

    /// Gives the service the vault's table of generic operation contexts (one table
    /// shared by every service of a vault; in vault-private memory). Without it the
    /// context operations (INIT, UPDATE, FINAL, ABORT) answer BAD_OP.
    pub fn with_contexts(mut self, contexts: &'a ContextTable) -> Self {
        self.contexts = Some(contexts);
        self
    }

    /// Number of occupied slots.
    pub fn slots_used(&self) -> u64 {
        self.slots.iter().filter(|s| s.is_full()).count() as u64
    }

    /// Validates and executes a request (a private copy, never ring memory).
    pub fn handle(&self, req: &Request, counters: &mut Counters) -> Response {
        let mut resp = Response {
            id: req.id,
            ..Response::default()
        };
        counters.requests += 1;
        match validate(req, self.window_len) {
            Err((st, detail)) => {
                resp.status = st;
                resp.detail = detail;
            }
            Ok(v) => self.execute(v, counters, &mut resp),
        }
        if resp.status != status::OK {
            counters.errors += 1;
        }
        resp
    }

    fn execute(&self, v: Validated, counters: &mut Counters, resp: &mut Response) {
        match v {
            Validated::ImportKey {
                slot,
                spec,
                key_len,
                generation,
            } => {
                resp.status = self.import(slot, spec, key_len, generation);
            }
            Validated::DropKey { slot, generation } => {
                resp.status = self.drop_key(slot, Some(generation))
            }
            Validated::Keyslot { .. }
            | Validated::KeyDigest { .. }
            | Validated::GenerateKey { .. } => self.keyslot(v, resp),
            Validated::KdfJoin => resp.aux[0] = self.kdf_join(),
            Validated::Generic(g) => self.generic(g, counters, resp),
            Validated::Selftest => {
                let (st, backend) = selftest();
                resp.status = st;
                resp.aux[0] = backend;
            }
            Validated::Stats => {
                resp.aux[stats::REQUESTS] = counters.requests;
                resp.bytes = counters.bytes;
                resp.aux[stats::ERRORS] = counters.errors;
                resp.aux[stats::SLOTS_USED] = self.slots_used();
                resp.aux[stats::SLEEPS] = counters.sleeps;
            }
            Validated::Crypt {
                encrypt,
                slot,
                cipher,
                generation,
                geom,
                sector,
                nsegs,
                segs,
                bytes,
            } => {
                let r = self.with_slot(slot, |c, id, gen| {
                    if gen != generation {
                        return status::SLOT_EMPTY;
                    }
                    if id != cipher {
                        return status::BAD_CIPHER;
                    }
                    let mut s = sector;
                    for seg in &segs[..nsegs] {
                        // SAFETY: `validate` checked offset + len <= window_len without
                        // overflow; the window is valid for that many bytes (contract of
                        // `new`).
                        let buf = unsafe {
                            core::slice::from_raw_parts_mut(
                                self.window.add(seg.offset as usize),
                                seg.len as usize,
                            )
                        };
                        let r = if encrypt {
                            c.encrypt(&geom, s, buf)
                        } else {
                            c.decrypt(&geom, s, buf)
                        };
                        if r.is_err() {
                            return status::ENGINE_ERROR;
                        }
                        s += seg.len / 512;
                    }
                    status::OK
                });
                resp.status = match r {
                    Ok(st) => st,
                    Err(st) => st,
                };
                if resp.status == status::OK {
                    resp.bytes = bytes;
                    counters.bytes += bytes;
                }
            }
        }
    }

    /// Runs `f` on the cipher in `slot` under a read lock.
    fn with_slot<R>(
        &self,
        slot: usize,
        f: impl FnOnce(&SectorCipher, u32, u32) -> R,
    ) -> Result<R, u32> {
        self.with_slot_key(slot, |c, _, id, gen| f(c, id, gen))
    }

    /// Runs `f` on the cipher and the raw key in `slot` under a read lock (`f` gets the
    /// cipher, the key, the cipher id and the generation).
    fn with_slot_key<R>(
        &self,
        slot: usize,
        f: impl FnOnce(&SectorCipher, &[u8], u32, u32) -> R,
    ) -> Result<R, u32> {
        self.with_slot_view(slot, |v| f(v.cipher, v.key, v.id, v.generation))
    }

    /// Runs `f` on everything `slot` holds under a read lock.
    fn with_slot_view<R>(&self, slot: usize, f: impl FnOnce(&SlotView<'_>) -> R) -> Result<R, u32> {
        let cell = &self.slots[slot];
        let mut s = cell.state.load(Ordering::Acquire);
        loop {
            // FULL with WRITER: a drop is wiping the slot (a drop that names another
            // generation takes WRITER only when it lost the race described in
            // `drop_key`, and lets go at once).
            if s & FULL == 0 || s & WRITER != 0 {
                return Err(status::SLOT_EMPTY);
            }
            if s & READERS == READERS {
                core::hint::spin_loop();
                s = cell.state.load(Ordering::Acquire);
                continue;
            }
            match cell
                .state
                .compare_exchange_weak(s, s + 1, Ordering::Acquire, Ordering::Acquire)
            {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // SAFETY: FULL was set and we hold a read lock: `value` is initialized and no
        // writer can touch it until the count drops.
        let cipher = unsafe { (*cell.value.get()).assume_init_ref() };
        // SAFETY: as above; `key` is written only under WRITER.
        let key = unsafe { &(&*cell.key.get())[..cipher.key_len()] };
        let id = cell.cipher.load(Ordering::Relaxed);
        let gcm = if id == abi::generic::kind::AES {
            // SAFETY: as above; `gcm` is initialized for generic AES keys.
            Some(unsafe { (*cell.gcm.get()).assume_init_ref() })
        } else {
            None
        };
        let view = SlotView {
            cipher,
            key,
            id,
            generation: cell.generation.load(Ordering::Relaxed),
            flags: cell.flags.load(Ordering::Relaxed),
            epoch: cell.epoch.load(Ordering::Relaxed),
            gcm,
        };
        let r = f(&view);
        cell.state.fetch_sub(1, Ordering::Release);
        Ok(r)
    }

    fn import(&self, slot: usize, spec: CipherSpec, key_len: usize, generation: u32) -> u32 {
        self.import_kind(slot, KeyKind::Sector(spec), key_len, generation, 0)
    }

    /// Copies a key of `kind` from the transfer page into the empty `slot` and wipes the
    /// page.
    fn import_kind(
        &self,
        slot: usize,
        kind: KeyKind,
        key_len: usize,
        generation: u32,
        flags: u32,
    ) -> u32 {
        self.install_kind(slot, kind, key_len, generation, flags, |key| {
            for (i, k) in key.iter_mut().enumerate() {
                // SAFETY: key_len <= MAX_KEY_LEN < TRANSFER_SIZE; transfer page valid (new).
                *k = unsafe { ptr::read_volatile(self.transfer.add(i)) };
            }
            self.wipe_transfer();
            status::OK
        })
    }

    /// Fills the empty `slot` with a key of `key_len` bytes for `spec`: takes the write
    /// lock (else [`status::SLOT_BUSY`]), lets `fill` write the key straight into the
    /// slot's storage, keys the cipher and publishes the slot as `generation`. If `fill`
    /// returns an error status (or the cipher refuses the key) the slot is wiped and
    /// left empty.
    fn install(
        &self,
        slot: usize,
        spec: CipherSpec,
        key_len: usize,
        generation: u32,
        fill: impl FnOnce(&mut [u8]) -> u32,
    ) -> u32 {
        self.install_kind(slot, KeyKind::Sector(spec), key_len, generation, 0, fill)
    }

    /// [`Service::install`] for any [`KeyKind`], with the slot's `SLOT_*` flags. A
    /// generic AES key gets its [`GcmKey`] too.
    fn install_kind(
        &self,
        slot: usize,
        kind: KeyKind,
        key_len: usize,
        generation: u32,
        flags: u32,
        fill: impl FnOnce(&mut [u8]) -> u32,
    ) -> u32 {
        let cell = &self.slots[slot];
        if key_len > MAX_KEY_LEN
            || cell
                .state
                .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
                .is_err()
        {
            return status::SLOT_BUSY;
        }
        // SAFETY: we hold WRITER on an empty slot: nobody else reads or writes it.
        let key = unsafe { &mut *cell.key.get() };
        let mut st = fill(&mut key[..key_len]);
        if st == status::OK {
            let gcm = match kind {
                KeyKind::GenericAes => match Aes::new(&key[..key_len]) {
                    Ok(a) => Some(GcmKey::new(a)),
                    Err(_) => None,
                },
                _ => None,
            };
            match SectorCipher::new(kind.spec(), &key[..key_len]) {
                Ok(c) if gcm.is_some() || kind != KeyKind::GenericAes => {
                    // SAFETY: as above.
                    unsafe { (*cell.value.get()).write(c) };
                    if let Some(g) = gcm {
                        // SAFETY: as above.
                        unsafe { (*cell.gcm.get()).write(g) };
                    }
                    cell.cipher.store(kind.id(), Ordering::Relaxed);
                    cell.generation.store(generation, Ordering::Relaxed);
                    cell.flags.store(flags, Ordering::Relaxed);
                    cell.epoch.fetch_add(1, Ordering::Relaxed);
                    cell.state.store(FULL, Ordering::Release);
                    return status::OK;
                }
                _ => st = status::BAD_KEY_LEN,
            }
        }
        key.zeroize();
        cell.state.store(0, Ordering::Release);
        st
    }

    /// Zeroes the transfer page.
    pub fn wipe_transfer(&self) {
        for i in 0..abi::TRANSFER_SIZE as usize {
            // SAFETY: the transfer page is valid for TRANSFER_SIZE bytes (contract of new).
            unsafe { ptr::write_volatile(self.transfer.add(i), 0) };
        }
    }

    /// Wipes `slot` if it holds a key of `generation` (any generation for `None`).
    ///
    /// The write lock is taken first and the generation compared under it: compared
    /// before, another drop and an import could replace the key between the comparison
    /// and the lock (the state word looks the same: FULL, no readers), and the stale
    /// drop would wipe the new key (ABA).
    fn drop_key(&self, slot: usize, generation: Option<u32>) -> u32 {
        let cell = &self.slots[slot];
        let mut s = cell.state.load(Ordering::Acquire);
        loop {
            // Empty, an import in progress (which a drop must not disturb), or another
            // drop holding the slot (the host sends one drop per key; a second one is
            // refused, as before).
            if s & FULL == 0 || s & WRITER != 0 {
                return status::SLOT_EMPTY;
            }
            // Cheap refusal of a drop that names another key, without taking WRITER
            // (which would fail requests on the live key meanwhile). Not enough alone:
            // the slot can be dropped and refilled before the swap below succeeds on an
            // equal state word (ABA), so the generation is checked again under WRITER.
            if generation.is_some_and(|g| g != cell.generation.load(Ordering::Relaxed)) {
                return status::SLOT_EMPTY;
            }
            #[cfg(test)]
            hook::before_drop_lock(self, slot);
            match cell.state.compare_exchange_weak(
                s,
                s | WRITER,
                Ordering::Acquire,
                Ordering::Acquire,
            ) {
                Ok(_) => break,
                Err(now) => s = now,
            }
        }
        // WRITER held on a FULL slot: nobody else writes `generation` now.
        if generation.is_some_and(|g| g != cell.generation.load(Ordering::Relaxed)) {
            // Not the key this drop names (it was dropped and refilled meanwhile): let
            // go. Readers in flight keep their count.
            cell.state.fetch_and(!WRITER, Ordering::Release);
            return status::SLOT_EMPTY;
        }
        // New readers are shut out; wait for the ones in flight.
        while cell.state.load(Ordering::Acquire) & READERS != 0 {
            core::hint::spin_loop();
        }
        let epoch = cell.epoch.load(Ordering::Relaxed);
        // SAFETY: WRITER held, no readers, FULL: the value is initialized and ours.
        unsafe { wipe_slot_value(cell) };
        cell.cipher.store(0, Ordering::Relaxed);
        cell.generation.store(0, Ordering::Relaxed);
        cell.flags.store(0, Ordering::Relaxed);
        cell.state.store(0, Ordering::Release);
        // The key's operation contexts die with it (a new key in this slot has another
        // epoch, so none of its contexts is touched).
        self.kill_contexts(slot, epoch);
        status::OK
    }

    /// Drops and wipes every slot (shutdown). Waits for in-flight users.
    pub fn drop_all(&self) {
        for slot in 0..MAX_SLOTS {
            let _ = self.drop_key(slot, None);
        }
    }
}

/// Drops the cipher in a slot (the engine zeroizes its keys) and zeroes the bytes.
///
/// # Safety
/// The slot must hold an initialized value and the caller must own it exclusively.
unsafe fn wipe_slot_value(cell: &SlotCell) {
    if cell.cipher.load(Ordering::Relaxed) == abi::generic::kind::AES {
        let g = cell.gcm.get();
        // SAFETY: contract of this function; `gcm` is initialized for generic AES keys.
        unsafe { (*g).assume_init_drop() };
        let bytes = g.cast::<u8>();
        for i in 0..core::mem::size_of::<MaybeUninit<GcmKey>>() {
            // SAFETY: within the slot's GCM key; exclusive access.
            unsafe { ptr::write_volatile(bytes.add(i), 0) };
        }
    }
    let p = cell.value.get();
    // SAFETY: contract of this function.
    unsafe { (*p).assume_init_drop() };
    let bytes = p.cast::<u8>();
    for i in 0..core::mem::size_of::<MaybeUninit<SectorCipher>>() {
        // SAFETY: within the slot's value; exclusive access.
        unsafe { ptr::write_volatile(bytes.add(i), 0) };
    }
    // SAFETY: exclusive access (contract of this function).
    unsafe { (*cell.key.get()).zeroize() };
}

/// Known-answer self test of the engine. Returns a status and the backend it used.
pub fn selftest() -> (u32, u64) {
    let mut buf = [0u8; 512];
    let mut ok = true;
    // FIPS-197 C.1 (AES-128) and C.3 (AES-256) through ECB.
    let pt: [u8; 16] = [
        0x00, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66, 0x77, 0x88, 0x99, 0xaa, 0xbb, 0xcc, 0xdd, 0xee,
        0xff,
    ];
    let mut key = [0u8; 64];
    for (i, k) in key.iter_mut().enumerate() {
        *k = i as u8;
    }
    let kats: [(usize, [u8; 16]); 2] = [
        (
            16,
            [
                0x69, 0xc4, 0xe0, 0xd8, 0x6a, 0x7b, 0x04, 0x30, 0xd8, 0xcd, 0xb7, 0x80, 0x70, 0xb4,
                0xc5, 0x5a,
            ],
        ),
        (
            32,
            [
                0x8e, 0xa2, 0xb7, 0xca, 0x51, 0x67, 0x45, 0xbf, 0xea, 0xfc, 0x49, 0x90, 0x4b, 0x49,
                0x60, 0x89,
            ],
        ),
    ];
    let ecb = CipherSpec {
        mode: crate::engine::Mode::Ecb,
        iv: crate::engine::IvMode::Null,
    };
    let Ok(geom) = Geometry::new(512, false, 0) else {
        return (status::SELFTEST_FAILED, 0);
    };
    for (klen, ct) in kats {
        let Ok(c) = SectorCipher::new(ecb, &key[..klen]) else {
            return (status::SELFTEST_FAILED, 0);
        };
        for chunk in buf.chunks_exact_mut(16) {
            chunk.copy_from_slice(&pt);
        }
        ok &= c.encrypt(&geom, 0, &mut buf).is_ok();
        ok &= buf.chunks_exact(16).all(|b| b == ct);
        ok &= c.decrypt(&geom, 0, &mut buf).is_ok();
        ok &= buf.chunks_exact(16).all(|b| b == pt);
    }
    // IEEE 1619 XTS-AES-128 vector 1: zero keys, data unit 0, zero plaintext.
    let xts_ct: [u8; 32] = [
        0x91, 0x7c, 0xf6, 0x9e, 0xbd, 0x68, 0xb2, 0xec, 0x9b, 0x9f, 0xe9, 0xa3, 0xea, 0xdd, 0xa6,
        0x92, 0xcd, 0x43, 0xd2, 0xf5, 0x95, 0x98, 0xed, 0x85, 0x8c, 0x02, 0xc2, 0x65, 0x2f, 0xbf,
        0x92, 0x2e,
    ];
    let xts = CipherSpec {
        mode: crate::engine::Mode::Xts,
        iv: crate::engine::IvMode::Plain64,
    };
    let Ok(c) = SectorCipher::new(xts, &[0u8; 32]) else {
        return (status::SELFTEST_FAILED, 0);
    };
    buf = [0u8; 512];
    ok &= c.encrypt(&geom, 0, &mut buf).is_ok();
    ok &= buf[..32] == xts_ct;
    ok &= c.decrypt(&geom, 0, &mut buf).is_ok();
    ok &= buf.iter().all(|&b| b == 0);
    let backend = match c.backend_name() {
        "vaes512" => selftest_aux::VAES512,
        "vaes256" => selftest_aux::VAES256,
        "aesni" => selftest_aux::AESNI,
        _ => selftest_aux::SOFT,
    };
    key.zeroize();
    (
        if ok {
            status::OK
        } else {
            status::SELFTEST_FAILED
        },
        backend,
    )
}

/// Test-only interleaving hook of [`Service::drop_key`].
#[cfg(test)]
mod hook {
    extern crate std;

    use std::boxed::Box;
    use std::cell::RefCell;

    use super::Service;

    /// What runs between a drop's read of the state word and its compare-exchange.
    pub(super) type BeforeDropLock = Box<dyn FnOnce(&Service<'_>, usize)>;

    std::thread_local! {
        static BEFORE_DROP_LOCK: RefCell<Option<BeforeDropLock>> = const { RefCell::new(None) };
    }

    /// Arms the hook for the next drop on this thread (it runs once).
    pub(super) fn arm(f: BeforeDropLock) {
        BEFORE_DROP_LOCK.with(|h| *h.borrow_mut() = Some(f));
    }

    /// Runs the armed hook, if any (disarming it first, so the hook may itself drop).
    pub(super) fn before_drop_lock(svc: &Service<'_>, slot: usize) {
        if let Some(f) = BEFORE_DROP_LOCK.with(|h| h.borrow_mut().take()) {
            f(svc, slot);
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::boxed::Box;
    use std::vec;

    use super::*;
    use crate::engine::{IvMode, Mode};

    const XTS: CipherSpec = CipherSpec {
        mode: Mode::Xts,
        iv: IvMode::Plain64,
    };

    struct Fixture {
        slots: Box<[SlotCell; MAX_SLOTS]>,
        job: Job,
        window: vec::Vec<u8>,
        transfer: vec::Vec<u8>,
    }

    impl Fixture {
        fn new() -> Fixture {
            Fixture {
                slots: Box::new([SlotCell::EMPTY; MAX_SLOTS]),
                job: Job::new(),
                window: vec![0u8; 4096],
                transfer: vec![0u8; abi::TRANSFER_SIZE as usize],
            }
        }

        fn service(&mut self) -> Service<'_> {
            // SAFETY: the window and transfer vectors have the stated sizes, outlive the
            // service (borrowed from `self`) and do not overlap the slots.
            unsafe {
                Service::new(
                    &self.slots,
                    &self.job,
                    self.window.as_mut_ptr(),
                    self.window.len() as u64,
                    self.transfer.as_mut_ptr(),
                    core::ptr::null_mut(),
                )
            }
        }
    }

    /// Places `key` in the transfer page and imports it into `slot` as `generation`.
    fn import(svc: &Service<'_>, slot: usize, key: &[u8], generation: u32) -> u32 {
        for (i, b) in key.iter().enumerate() {
            // SAFETY: key.len() <= MAX_KEY_LEN < TRANSFER_SIZE bytes of the transfer page.
            unsafe { ptr::write_volatile(svc.transfer.add(i), *b) };
        }
        svc.import(slot, XTS, key.len(), generation)
    }

    /// Encrypts one zero sector with the key in `slot` if it is of `generation`.
    fn probe(svc: &Service<'_>, slot: usize, generation: u32) -> Result<[u8; 16], u32> {
        let geom = Geometry::new(512, false, 0).expect("geometry");
        svc.with_slot(slot, |c, _, gen| {
            if gen != generation {
                return Err(status::SLOT_EMPTY);
            }
            let mut buf = [0u8; 512];
            c.encrypt(&geom, 0, &mut buf)
                .map_err(|_| status::ENGINE_ERROR)?;
            let mut head = [0u8; 16];
            head.copy_from_slice(&buf[..16]);
            Ok(head)
        })?
    }

    /// Issue 11, point 8: a stale drop (generation 5) is delayed between its look at the
    /// slot and taking the write lock; meanwhile generation 5 is dropped and generation 6
    /// imported into the same slot. The stale drop must leave generation 6 alone.
    #[test]
    fn stale_drop_does_not_wipe_a_reimported_key() {
        let mut fx = Fixture::new();
        let svc = fx.service();
        let slot = 3;
        let key_a = [0x11u8; 32];
        let mut key_b = [0u8; 32];
        for (i, b) in key_b.iter_mut().enumerate() {
            *b = (i as u8).wrapping_mul(37).wrapping_add(5);
        }
        assert_eq!(import(&svc, slot, &key_a, 5), status::OK);
        hook::arm(Box::new(move |svc: &Service<'_>, s: usize| {
            assert_eq!(
                svc.drop_key(s, Some(5)),
                status::OK,
                "the timely drop of gen 5"
            );
            assert_eq!(import(svc, s, &key_b, 6), status::OK, "re-import as gen 6");
        }));
        let before = probe(&svc, slot, 5).expect("generation 5 is in the slot");
        let st = svc.drop_key(slot, Some(5));
        let after = probe(&svc, slot, 6);
        assert!(
            after.is_ok(),
            "the stale drop of generation 5 (status {st}) wiped generation 6, the key \
             imported meanwhile into slot {slot} (probe: {after:?})"
        );
        assert_eq!(
            st,
            status::SLOT_EMPTY,
            "the stale drop must report SLOT_EMPTY"
        );
        assert_ne!(after, Ok(before), "slot 3 holds key B, not key A");
        assert_eq!(svc.slots_used(), 1);
        // The right generation still drops it.
        assert_eq!(svc.drop_key(slot, Some(6)), status::OK);
        assert_eq!(svc.slots_used(), 0);
    }

    /// Stale drops (wrong generation) racing with requests on the key in the slot never
    /// make a request fail: while a stale drop holds the write lock for its check,
    /// readers wait for it to let go instead of answering SLOT_EMPTY.
    #[test]
    fn stale_drops_never_fail_requests_on_the_live_key() {
        let mut fx = Fixture::new();
        let svc = fx.service();
        assert_eq!(import(&svc, 1, &[0x33u8; 32], 4), status::OK);
        let stop = core::sync::atomic::AtomicBool::new(false);
        /// Stops the dropping thread however the checks end (a failed assertion too).
        struct Stop<'a>(&'a core::sync::atomic::AtomicBool);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.store(true, Ordering::Relaxed);
            }
        }
        std::thread::scope(|s| {
            s.spawn(|| {
                for _ in 0..50_000_000 {
                    if stop.load(Ordering::Relaxed) {
                        break;
                    }
                    assert_eq!(svc.drop_key(1, Some(3)), status::SLOT_EMPTY);
                }
            });
            let _stop = Stop(&stop);
            for i in 0..20_000 {
                assert!(
                    probe(&svc, 1, 4).is_ok(),
                    "request {i} failed on the live key"
                );
            }
        });
        assert_eq!(svc.drop_key(1, Some(4)), status::OK);
    }

    /// A drop that names the wrong generation lets the slot go: the key stays usable
    /// and a drop with the right generation wipes it.
    #[test]
    fn drop_with_wrong_generation_keeps_the_key() {
        let mut fx = Fixture::new();
        let svc = fx.service();
        assert_eq!(import(&svc, 0, &[0x22u8; 64], 9), status::OK);
        assert_eq!(svc.drop_key(0, Some(8)), status::SLOT_EMPTY);
        assert!(probe(&svc, 0, 9).is_ok());
        assert_eq!(svc.drop_key(0, Some(9)), status::OK);
        assert_eq!(probe(&svc, 0, 9), Err(status::SLOT_EMPTY));
        assert_eq!(svc.drop_key(0, None), status::SLOT_EMPTY);
    }
}
