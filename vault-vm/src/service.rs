//! The vault's request handler, shared by the guest image and the in-process `soft`
//! backend: key slots, the self test and the execution of validated requests.
//!
//! The caller hands [`Service::handle`] a *private copy* of a request; the handler
//! validates it with [`crate::abi::validate`] and only then touches slots or the window.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use zeroize::Zeroize;

use crate::abi::{
    self, stats, status, validate, Request, Response, Validated, MAX_KEY_LEN, MAX_SLOTS,
};
use crate::engine::{CipherSpec, Geometry, SectorCipher};

const WRITER: u32 = 1 << 31;
const FULL: u32 = 1 << 30;
const READERS: u32 = FULL - 1;

/// One key slot: a reader/writer spin lock word, the cipher id and the keyed cipher.
///
/// An all-zero `SlotCell` is a valid empty slot, so slot tables can live in zeroed
/// memory (`.bss`, fresh `memfd_secret` pages).
#[repr(C)]
pub struct SlotCell {
    state: AtomicU32,
    cipher: AtomicU32,
    generation: AtomicU32,
    value: UnsafeCell<MaybeUninit<SectorCipher>>,
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
        value: UnsafeCell::new(MaybeUninit::uninit()),
    };

    fn is_full(&self) -> bool {
        let s = self.state.load(Ordering::Acquire);
        s & FULL != 0 && s & WRITER == 0
    }
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
}

/// The request handler over a slot table, a data window and a transfer page.
pub struct Service<'a> {
    slots: &'a [SlotCell; MAX_SLOTS],
    window: *mut u8,
    window_len: u64,
    transfer: *mut u8,
}

// SAFETY: the raw pointers designate shared memory that outlives the service (contract of
// `Service::new`); all slot access goes through the `SlotCell` lock protocol.
unsafe impl Send for Service<'_> {}
// SAFETY: as above.
unsafe impl Sync for Service<'_> {}

impl<'a> Service<'a> {
    /// Builds a handler.
    ///
    /// # Safety
    /// `window` must be valid for reads and writes of `window_len` bytes and `transfer`
    /// for [`abi::TRANSFER_SIZE`] bytes, for as long as the service is used; neither may
    /// overlap `slots`.
    pub unsafe fn new(
        slots: &'a [SlotCell; MAX_SLOTS],
        window: *mut u8,
        window_len: u64,
        transfer: *mut u8,
    ) -> Self {
        Service {
            slots,
            window,
            window_len,
            transfer,
        }
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
        let cell = &self.slots[slot];
        let mut s = cell.state.load(Ordering::Acquire);
        loop {
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
        let r = f(
            cipher,
            cell.cipher.load(Ordering::Relaxed),
            cell.generation.load(Ordering::Relaxed),
        );
        cell.state.fetch_sub(1, Ordering::Release);
        Ok(r)
    }

    fn import(&self, slot: usize, spec: CipherSpec, key_len: usize, generation: u32) -> u32 {
        let cell = &self.slots[slot];
        if cell
            .state
            .compare_exchange(0, WRITER, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            return status::SLOT_BUSY;
        }
        let mut key = [0u8; MAX_KEY_LEN];
        for (i, k) in key.iter_mut().enumerate().take(key_len) {
            // SAFETY: key_len <= MAX_KEY_LEN < TRANSFER_SIZE; transfer page valid (new).
            *k = unsafe { ptr::read_volatile(self.transfer.add(i)) };
        }
        self.wipe_transfer();
        let st = match SectorCipher::new(spec, &key[..key_len]) {
            Ok(c) => {
                // SAFETY: we hold WRITER on an empty slot: nobody else reads or writes it.
                unsafe { (*cell.value.get()).write(c) };
                cell.cipher.store(abi::cipher_id(spec), Ordering::Relaxed);
                cell.generation.store(generation, Ordering::Relaxed);
                cell.state.store(FULL, Ordering::Release);
                status::OK
            }
            Err(_) => {
                cell.state.store(0, Ordering::Release);
                status::BAD_KEY_LEN
            }
        };
        key.zeroize();
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
    fn drop_key(&self, slot: usize, generation: Option<u32>) -> u32 {
        let cell = &self.slots[slot];
        let mut s = cell.state.load(Ordering::Acquire);
        loop {
            if s & FULL == 0 || s & WRITER != 0 {
                return status::SLOT_EMPTY;
            }
            // Stable while FULL without WRITER (only an import, which needs an empty
            // slot, writes it).
            if generation.is_some_and(|g| g != cell.generation.load(Ordering::Relaxed)) {
                return status::SLOT_EMPTY;
            }
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
        // New readers are shut out; wait for the ones in flight.
        while cell.state.load(Ordering::Acquire) & READERS != 0 {
            core::hint::spin_loop();
        }
        // SAFETY: WRITER held, no readers, FULL: the value is initialized and ours.
        unsafe { wipe_slot_value(cell) };
        cell.cipher.store(0, Ordering::Relaxed);
        cell.generation.store(0, Ordering::Relaxed);
        cell.state.store(0, Ordering::Release);
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
    let p = cell.value.get();
    // SAFETY: contract of this function.
    unsafe { (*p).assume_init_drop() };
    let bytes = p.cast::<u8>();
    for i in 0..core::mem::size_of::<MaybeUninit<SectorCipher>>() {
        // SAFETY: within the slot's value; exclusive access.
        unsafe { ptr::write_volatile(bytes.add(i), 0) };
    }
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
