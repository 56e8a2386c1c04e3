//! Execution of the generic requests ([`crate::abi::generic`]): generic keys, operation
//! contexts (ECB, CBC, CTR, GCM), XTS over data units and AES key wrap.
//!
//! Contexts live in a [`ContextTable`] in vault-private memory. Each [`ContextCell`] has
//! a lock word (free / in use / busy with a request) and a generation the vault bumps at
//! every INIT. A context names its key by slot and the slot's install counter (epoch):
//! the key is read under the slot's read lock at every request, so a dropped or replaced
//! key is never used by an old context, and DROP_KEY wipes the key's contexts.

use core::cell::UnsafeCell;
use core::mem::MaybeUninit;
use core::ptr;
use core::sync::atomic::{AtomicU32, Ordering};

use zeroize::Zeroize;

use super::{Counters, KeyKind, Service, SlotView, SLOT_EXTRACTABLE};
use crate::abi::generic::{
    self, check_init_params, check_wrap_params, copy_block, kind, kind_key_len_ok, mech, op,
    status as gst, GenericRequest, InitParams, WrapParams, MAX_CONTEXTS, MAX_WRAPPED,
};
use crate::abi::keyslot::{status as kst, HOST_ENTROPY_LEN};
use crate::abi::{status, Response, Segment, MAX_KEY_LEN, MAX_SEGMENTS};
use crate::engine::generic::{kw, Aes, Ctr, Gcm, GcmState, ModeError};
use crate::engine::Geometry;
use crate::keyslot::rng::{self, Hardware};

/// Largest GCM message (SP 800-38D: 2^39 - 256 bits).
const GCM_MAX_DATA: u64 = (1 << 36) - 32;

/// Lock word: the cell holds a context.
const USED: u32 = 1;
/// Lock word: a request is working on the context.
const BUSY: u32 = 2;

/// The streaming state of one mechanism.
enum Body {
    Ecb,
    /// The chaining value.
    Cbc([u8; 16]),
    /// The first counter block, the width and the bytes done.
    Ctr {
        start: [u8; 16],
        bits: u32,
        done: u64,
    },
    /// `None` only while a request has it out.
    Gcm(Option<GcmState>),
}

/// One context: whose it is, its key, its mechanism state.
struct CtxState {
    owner: u64,
    slot: usize,
    /// The key's install counter at INIT.
    epoch: u64,
    decrypt: bool,
    body: Body,
}

impl Drop for CtxState {
    fn drop(&mut self) {
        if let Body::Cbc(iv) = &mut self.body {
            iv.zeroize();
        }
        // A GCM state wipes itself.
    }
}

/// One operation context cell. All zero is a free cell.
pub struct ContextCell {
    lock: AtomicU32,
    generation: AtomicU32,
    state: UnsafeCell<MaybeUninit<CtxState>>,
}

impl ContextCell {
    /// A free cell.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const FREE: ContextCell = ContextCell {
        lock: AtomicU32::new(0),
        generation: AtomicU32::new(0),
        state: UnsafeCell::new(MaybeUninit::uninit()),
    };
}

impl core::fmt::Debug for ContextCell {
    /// The lock word and generation; never the state.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ContextCell")
            .field("lock", &self.lock.load(Ordering::Relaxed))
            .field("generation", &self.generation.load(Ordering::Relaxed))
            .finish_non_exhaustive()
    }
}

/// The vault's operation contexts ([`MAX_CONTEXTS`] cells). An all-zero table is valid
/// and empty, so it can live in `.bss` or fresh secret pages.
pub struct ContextTable {
    cells: [ContextCell; MAX_CONTEXTS],
}

// SAFETY: a cell's state is only touched by the holder of its BUSY bit (taken with a
// compare-exchange); the lock word and generation are atomics.
unsafe impl Sync for ContextTable {}

impl ContextTable {
    /// An empty table.
    #[allow(clippy::declare_interior_mutable_const)]
    pub const EMPTY: ContextTable = ContextTable {
        cells: [ContextCell::FREE; MAX_CONTEXTS],
    };

    /// Contexts in use.
    pub fn used(&self) -> usize {
        self.cells
            .iter()
            .filter(|c| c.lock.load(Ordering::Relaxed) & USED != 0)
            .count()
    }
}

impl core::fmt::Debug for ContextTable {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("ContextTable")
            .field("used", &self.used())
            .finish_non_exhaustive()
    }
}

/// A context held BUSY by one request; let go with [`Held::release`] or
/// [`Held::free`].
struct Held<'t> {
    cell: &'t ContextCell,
}

impl Held<'_> {
    fn state(&mut self) -> &mut CtxState {
        // SAFETY: USED|BUSY held by us: the state is initialized and ours alone.
        unsafe { (*self.cell.state.get()).assume_init_mut() }
    }

    /// Lets the context go, alive.
    fn release(self) {
        self.cell.lock.store(USED, Ordering::Release);
    }

    /// Wipes and frees the context.
    fn free(self) {
        let p = self.cell.state.get();
        // SAFETY: USED|BUSY held: initialized, exclusive.
        unsafe { (*p).assume_init_drop() };
        let bytes = p.cast::<u8>();
        for i in 0..core::mem::size_of::<MaybeUninit<CtxState>>() {
            // SAFETY: within the cell's state; exclusive.
            unsafe { ptr::write_volatile(bytes.add(i), 0) };
        }
        self.cell.lock.store(0, Ordering::Release);
    }
}

impl ContextTable {
    /// Takes a free cell, fills it and returns (index, generation).
    fn alloc(&self, state: CtxState) -> Result<(usize, u32), u32> {
        for (i, cell) in self.cells.iter().enumerate() {
            if cell
                .lock
                .compare_exchange(0, USED | BUSY, Ordering::Acquire, Ordering::Relaxed)
                .is_ok()
            {
                let mut g = cell.generation.load(Ordering::Relaxed).wrapping_add(1);
                if g == 0 {
                    g = 1;
                }
                cell.generation.store(g, Ordering::Relaxed);
                // SAFETY: we hold BUSY on a free cell: nobody else touches the state.
                unsafe { (*cell.state.get()).write(state) };
                cell.lock.store(USED, Ordering::Release);
                return Ok((i, g));
            }
        }
        drop(state);
        Err(gst::NO_CONTEXT)
    }

    /// Takes context `i` for one request if it is alive, of `generation` and `owner`.
    fn hold(&self, i: usize, generation: u32, owner: u64) -> Result<Held<'_>, u32> {
        let cell = &self.cells[i];
        if let Err(now) =
            cell.lock
                .compare_exchange(USED, USED | BUSY, Ordering::Acquire, Ordering::Relaxed)
        {
            return Err(if now & USED == 0 {
                gst::BAD_CONTEXT
            } else {
                gst::CONTEXT_BUSY
            });
        }
        let mut h = Held { cell };
        if cell.generation.load(Ordering::Relaxed) != generation {
            h.release();
            return Err(gst::BAD_CONTEXT);
        }
        if h.state().owner != owner {
            h.release();
            return Err(gst::BAD_OWNER);
        }
        Ok(h)
    }

    /// Wipes every context of the key `(slot, epoch)` (waits for requests on them).
    fn kill(&self, slot: usize, epoch: u64) {
        for cell in &self.cells {
            loop {
                let l = cell.lock.load(Ordering::Acquire);
                if l & USED == 0 {
                    break;
                }
                if l & BUSY != 0 {
                    core::hint::spin_loop();
                    continue;
                }
                if cell
                    .lock
                    .compare_exchange(USED, USED | BUSY, Ordering::Acquire, Ordering::Relaxed)
                    .is_err()
                {
                    continue;
                }
                let mut h = Held { cell };
                let s = h.state();
                if s.slot == slot && s.epoch == epoch {
                    h.free();
                } else {
                    h.release();
                }
                break;
            }
        }
    }
}

/// A slot that holds a generic key of `want` kind and `generation`.
fn generic_key(v: &SlotView<'_>, want: u32, generation: u32) -> Result<(), u32> {
    if v.generation != generation {
        return Err(status::SLOT_EMPTY);
    }
    if v.id != want {
        return Err(gst::KEY_KIND);
    }
    Ok(())
}

/// The AES key of a generic AES slot.
fn aes_of<'s>(v: &SlotView<'s>) -> Result<&'s crate::engine::generic::GcmKey, u32> {
    v.gcm.ok_or(gst::KEY_KIND)
}

/// A status for an engine error of the generic modes.
fn mode_status(e: ModeError) -> u32 {
    match e {
        ModeError::NotWholeBlocks(_) | ModeError::TooLong | ModeError::BadWrapLength(_) => {
            gst::DATA_LEN
        }
        ModeError::TagMismatch => gst::TAG_MISMATCH,
        ModeError::UnwrapFailed => gst::UNWRAP_FAILED,
        ModeError::BufferTooSmall(_) => gst::BUFFER_TOO_SMALL,
        ModeError::BadTagLength(_) | ModeError::BadCounterBits(_) => gst::BAD_MECH_PARAM,
        ModeError::EmptyIv => gst::BAD_IV,
        ModeError::AadAfterData => gst::BAD_MECH_PARAM,
        ModeError::BadKeyLength(_) => status::BAD_KEY_LEN,
    }
}

/// Counter values a CTR context may still use: `2^bits`, as a block count.
fn ctr_blocks_allowed(bits: u32) -> u128 {
    if bits >= 127 {
        u128::MAX
    } else {
        1u128 << bits
    }
}

/// The counter block `n` blocks after `start` (adding within the low `bits`).
fn ctr_at(start: &[u8; 16], bits: u32, n: u64) -> [u8; 16] {
    let mask = if bits >= 128 {
        u128::MAX
    } else {
        (1u128 << bits) - 1
    };
    let c = u128::from_be_bytes(*start);
    let low = (c & mask).wrapping_add(u128::from(n)) & mask;
    ((c & !mask) | low).to_be_bytes()
}

impl Service<'_> {
    /// A window segment as a mutable slice.
    ///
    /// # Safety
    /// `seg` passed validation against this service's window, and no other slice of
    /// it is alive.
    #[allow(clippy::mut_from_ref)]
    unsafe fn window_mut(&self, seg: Segment) -> &mut [u8] {
        // SAFETY: offset + len <= window_len (validated); the window is valid for that
        // many bytes (contract of `new`).
        unsafe {
            core::slice::from_raw_parts_mut(self.window.add(seg.offset as usize), seg.len as usize)
        }
    }

    /// Wipes the contexts of the key `(slot, epoch)` (DROP_KEY).
    pub(super) fn kill_contexts(&self, slot: usize, epoch: u64) {
        if let Some(t) = self.contexts {
            t.kill(slot, epoch);
        }
    }

    /// Runs a validated generic request.
    pub(super) fn generic(&self, g: GenericRequest, counters: &mut Counters, resp: &mut Response) {
        let r = match g {
            GenericRequest::NewKey {
                generate,
                slot,
                generation,
                kind,
                key_len,
                extractable,
            } => self.new_key(generate, slot, generation, kind, key_len, extractable, resp),
            GenericRequest::Init { .. } => self.init(&g, resp),
            GenericRequest::Context {
                op,
                ctx,
                generation,
                owner,
                nsegs,
                segs,
            } => self.context_op(op, ctx, generation, owner, &segs[..nsegs], resp),
            GenericRequest::Xts { .. } => self.xts(&g, resp),
            GenericRequest::Wrap { .. } => self.wrap(&g, resp),
        };
        if let Err((st, detail)) = r {
            resp.status = st;
            resp.detail = detail;
        } else if matches!(
            g,
            GenericRequest::Context { .. } | GenericRequest::Xts { .. }
        ) {
            counters.bytes += resp.bytes;
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn new_key(
        &self,
        generate: bool,
        slot: usize,
        generation: u32,
        kind_id: u32,
        key_len: usize,
        extractable: bool,
        resp: &mut Response,
    ) -> Result<(), (u32, u32)> {
        let k = if kind_id == kind::AES {
            KeyKind::GenericAes
        } else {
            KeyKind::GenericXts
        };
        let flags = if extractable { SLOT_EXTRACTABLE } else { 0 };
        let st =
            if generate {
                let mut host = [0u8; HOST_ENTROPY_LEN];
                for (i, h) in host.iter_mut().enumerate() {
                    // SAFETY: HOST_ENTROPY_LEN <= TRANSFER_SIZE; transfer page valid (new).
                    *h = unsafe { core::ptr::read_volatile(self.transfer.add(i)) };
                }
                self.wipe_transfer();
                let draw = self.draws.fetch_add(1, Ordering::Relaxed);
                let mut source = 0;
                let st = self.install_kind(slot, k, key_len, generation, flags, |key| {
                    match rng::generate_key(&mut Hardware, &host, draw, key) {
                        Some(s) => {
                            source = s;
                            status::OK
                        }
                        None => kst::NO_ENTROPY,
                    }
                });
                host.zeroize();
                resp.aux[0] = source;
                st
            } else {
                let st = self.import_kind(slot, k, key_len, generation, flags);
                // Refused before the copy (a full slot): the page still holds the key.
                self.wipe_transfer();
                st
            };
        if st == status::OK {
            Ok(())
        } else {
            Err((st, 0))
        }
    }

    fn init(&self, g: &GenericRequest, resp: &mut Response) -> Result<(), (u32, u32)> {
        let GenericRequest::Init {
            slot,
            generation,
            mech: m,
            decrypt,
            owner,
            params,
            aad,
        } = *g
        else {
            return Err((status::BAD_OP, 0));
        };
        let table = self.contexts.ok_or((status::BAD_OP, 0))?;
        // SAFETY: validation checked params .. params + INIT_PARAMS_LEN in the window;
        // `InitParams` is plain data without padding.
        let p: InitParams = unsafe { copy_block(self.window.add(params as usize)) };
        let c = check_init_params(m, &p)?;
        let state = self
            .with_slot_view(slot, |v| -> Result<CtxState, u32> {
                generic_key(v, kind::AES, generation)?;
                let gk = aes_of(v)?;
                let body = match m {
                    mech::ECB => Body::Ecb,
                    mech::CBC => {
                        let mut iv = [0u8; 16];
                        iv.copy_from_slice(&p.iv[..16]);
                        Body::Cbc(iv)
                    }
                    mech::CTR => {
                        let mut start = [0u8; 16];
                        start.copy_from_slice(&p.iv[..16]);
                        Body::Ctr {
                            start,
                            bits: c.counter_bits,
                            done: 0,
                        }
                    }
                    _ => {
                        let mut gcm =
                            Gcm::new(gk, &p.iv[..c.iv_len], c.tag_len).map_err(mode_status)?;
                        if aad.len > 0 {
                            // SAFETY: validated inside the window; host data read in
                            // place (it is the client's own input).
                            let a = unsafe { self.window_mut(aad) };
                            gcm.aad(a).map_err(mode_status)?;
                        }
                        Body::Gcm(Some(gcm.suspend()))
                    }
                };
                Ok(CtxState {
                    owner,
                    slot,
                    epoch: v.epoch,
                    decrypt,
                    body,
                })
            })
            .map_err(|s| (s, 0))?
            .map_err(|s| (s, 0))?;
        let (i, gen) = table.alloc(state).map_err(|s| (s, 0))?;
        resp.aux[0] = i as u64;
        resp.aux[1] = u64::from(gen);
        Ok(())
    }

    fn context_op(
        &self,
        opc: u32,
        ctx: usize,
        generation: u32,
        owner: u64,
        segs: &[Segment],
        resp: &mut Response,
    ) -> Result<(), (u32, u32)> {
        let table = self.contexts.ok_or((status::BAD_OP, 0))?;
        let mut h = table.hold(ctx, generation, owner).map_err(|s| (s, 0))?;
        if opc == op::ABORT {
            h.free();
            return Ok(());
        }
        let (slot, epoch) = {
            let s = h.state();
            (s.slot, s.epoch)
        };
        // The key, under its read lock for the whole request.
        let r = self.with_slot_view(slot, |v| {
            if v.epoch != epoch {
                return Err((gst::BAD_CONTEXT, 0));
            }
            let gk = aes_of(v).map_err(|s| (s, 0))?;
            if opc == op::UPDATE {
                self.update(h.state(), gk.aes(), gk, segs, resp)
                    .map(|()| false)
            } else {
                self.finish(h.state(), gk, segs, resp)
            }
        });
        match r {
            // The slot is empty or being dropped: DROP_KEY wipes the context.
            Err(st) => {
                h.release();
                Err((st, 0))
            }
            // The key in the slot is another one: this context is dead.
            Ok(Err((gst::BAD_CONTEXT, d))) => {
                h.free();
                Err((gst::BAD_CONTEXT, d))
            }
            // FINAL ends the context whatever the tag check said (not when it was
            // refused before it looked at the state: `keep`).
            Ok(Err((st, d))) if opc == op::FINAL && st != gst::DATA_LEN => {
                h.free();
                Err((st, d))
            }
            Ok(Err(e)) => {
                h.release();
                Err(e)
            }
            Ok(Ok(done)) => {
                if done {
                    h.free();
                } else {
                    h.release();
                }
                Ok(())
            }
        }
    }

    /// UPDATE: the data segments in order, in place.
    fn update(
        &self,
        s: &mut CtxState,
        aes: &Aes,
        gk: &crate::engine::generic::GcmKey,
        segs: &[Segment],
        resp: &mut Response,
    ) -> Result<(), (u32, u32)> {
        let total: u64 = segs.iter().map(|x| x.len).sum();
        // Checks that need no work first, so a refused UPDATE changes nothing.
        match &s.body {
            Body::Ecb | Body::Cbc(_) => {
                if let Some(i) = segs.iter().position(|x| !x.len.is_multiple_of(16)) {
                    return Err((gst::DATA_LEN, i as u32));
                }
            }
            Body::Ctr { bits, done, .. } => {
                let end = u128::from(*done) + u128::from(total);
                if end.div_ceil(16) > ctr_blocks_allowed(*bits) {
                    return Err((gst::DATA_LEN, 0));
                }
            }
            Body::Gcm(g) => {
                let done = g.as_ref().map_or(0, |g| g.data_len());
                if done.saturating_add(total) > GCM_MAX_DATA {
                    return Err((gst::DATA_LEN, 0));
                }
            }
        }
        let decrypt = s.decrypt;
        match &mut s.body {
            Body::Ecb => {
                for seg in segs {
                    // SAFETY: validated, and one segment at a time.
                    let buf = unsafe { self.window_mut(*seg) };
                    let r = if decrypt {
                        aes.ecb_decrypt(buf)
                    } else {
                        aes.ecb_encrypt(buf)
                    };
                    r.map_err(|e| (mode_status(e), 0))?;
                }
            }
            Body::Cbc(iv) => {
                for seg in segs {
                    // SAFETY: as above.
                    let buf = unsafe { self.window_mut(*seg) };
                    let r = if decrypt {
                        aes.cbc_decrypt(iv, buf)
                    } else {
                        aes.cbc_encrypt(iv, buf)
                    };
                    r.map_err(|e| (mode_status(e), 0))?;
                }
            }
            Body::Ctr { start, bits, done } => {
                let at = ctr_at(start, *bits, *done / 16);
                let mut ctr = Ctr::new(aes, &at, *bits).map_err(|e| (mode_status(e), 0))?;
                // Regenerate the partial block's keystream instead of keeping it.
                let skip = (*done % 16) as usize;
                let mut dummy = [0u8; 16];
                ctr.apply(&mut dummy[..skip]);
                dummy.zeroize();
                for seg in segs {
                    // SAFETY: as above.
                    ctr.apply(unsafe { self.window_mut(*seg) });
                }
                *done += total;
            }
            Body::Gcm(state) => {
                let st = state.take().ok_or((status::ENGINE_ERROR, 0))?;
                let mut g = Gcm::resume(gk, st);
                let mut r = Ok(());
                for seg in segs {
                    // SAFETY: as above.
                    let buf = unsafe { self.window_mut(*seg) };
                    r = if decrypt {
                        g.decrypt_update(buf)
                    } else {
                        g.encrypt_update(buf)
                    };
                    if r.is_err() {
                        break;
                    }
                }
                *state = Some(g.suspend());
                r.map_err(|e| (mode_status(e), 0))?;
            }
        }
        resp.bytes = total;
        Ok(())
    }

    /// FINAL: `Ok(true)` when the context is done (always, unless refused before
    /// touching the state).
    fn finish(
        &self,
        s: &mut CtxState,
        gk: &crate::engine::generic::GcmKey,
        segs: &[Segment],
        resp: &mut Response,
    ) -> Result<bool, (u32, u32)> {
        let decrypt = s.decrypt;
        let Body::Gcm(state) = &mut s.body else {
            if !segs.is_empty() {
                return Err((gst::DATA_LEN, 0));
            }
            return Ok(true);
        };
        let tag_len = state.as_ref().map_or(0, |g| g.tag_len());
        if segs.len() != 1 || segs[0].len != tag_len as u64 {
            return Err((gst::DATA_LEN, 0));
        }
        let st = state.take().ok_or((status::ENGINE_ERROR, 0))?;
        let g = Gcm::resume(gk, st);
        // SAFETY: validated; the only slice of the window alive.
        let out = unsafe { self.window_mut(segs[0]) };
        if decrypt {
            let mut tag = [0u8; 16];
            tag[..tag_len].copy_from_slice(out);
            g.verify(&tag[..tag_len]).map_err(|e| (mode_status(e), 0))?;
        } else {
            out.copy_from_slice(g.finish().as_bytes());
            resp.bytes = tag_len as u64;
        }
        Ok(true)
    }

    fn xts(&self, g: &GenericRequest, resp: &mut Response) -> Result<(), (u32, u32)> {
        let GenericRequest::Xts {
            slot,
            generation,
            decrypt,
            unit,
            first,
            nsegs,
            segs,
            bytes,
        } = *g
        else {
            return Err((status::BAD_OP, 0));
        };
        // Tweak of unit i = first + i: IVs count data units (iv_large_sectors).
        let geom = Geometry::new(unit, true, 0).map_err(|_| (status::BAD_SECTOR_SIZE, 0))?;
        let per = u64::from(unit / 512);
        self.with_slot_view(slot, |v| {
            generic_key(v, kind::XTS, generation).map_err(|s| (s, 0))?;
            let mut sector = first * per;
            for (i, seg) in segs[..nsegs.min(MAX_SEGMENTS)].iter().enumerate() {
                // SAFETY: validated, one segment at a time.
                let buf = unsafe { self.window_mut(*seg) };
                let r = if decrypt {
                    v.cipher.decrypt(&geom, sector, buf)
                } else {
                    v.cipher.encrypt(&geom, sector, buf)
                };
                r.map_err(|_| (status::ENGINE_ERROR, i as u32))?;
                sector += seg.len / 512;
            }
            Ok::<(), (u32, u32)>(())
        })
        .map_err(|s| (s, 0))??;
        resp.bytes = bytes;
        Ok(())
    }

    fn wrap(&self, g: &GenericRequest, resp: &mut Response) -> Result<(), (u32, u32)> {
        let GenericRequest::Wrap {
            unwrap,
            slot,
            generation,
            mech: m,
            extractable,
            params,
            data,
        } = *g
        else {
            return Err((status::BAD_OP, 0));
        };
        // SAFETY: validation checked params .. params + WRAP_PARAMS_LEN in the window;
        // `WrapParams` is plain data without padding.
        let p: WrapParams = unsafe { copy_block(self.window.add(params as usize)) };
        let target = check_wrap_params(unwrap, &p)?;
        if unwrap {
            return self.unwrap(slot, generation, m, extractable, &p, target, data);
        }
        let mut out = [0u8; MAX_WRAPPED];
        let n = self
            .with_slot_view(slot, |w| -> Result<usize, (u32, u32)> {
                generic_key(w, kind::AES, generation).map_err(|s| (s, 0))?;
                let aes = aes_of(w).map_err(|s| (s, 0))?.aes();
                self.with_slot_view(target, |t| -> Result<usize, (u32, u32)> {
                    if t.generation != p.target_generation {
                        return Err((status::SLOT_EMPTY, 0));
                    }
                    if t.id != kind::AES && t.id != kind::XTS {
                        return Err((gst::KEY_KIND, 0));
                    }
                    if t.flags & SLOT_EXTRACTABLE == 0 {
                        return Err((gst::NOT_EXTRACTABLE, 0));
                    }
                    let r = if m == mech::KW {
                        kw::wrap(aes, t.key, &mut out)
                    } else {
                        kw::wrap_pad(aes, t.key, &mut out)
                    };
                    r.map_err(|e| (mode_status(e), 0))
                })
                .map_err(|s| (s, 0))?
            })
            .map_err(|s| (s, 0))??;
        if data.len < n as u64 {
            resp.aux[0] = n as u64;
            return Err((gst::BUFFER_TOO_SMALL, 1));
        }
        // SAFETY: validated; the only slice of the window alive.
        let dst = unsafe { self.window_mut(data) };
        dst[..n].copy_from_slice(&out[..n]);
        resp.bytes = n as u64;
        Ok(())
    }

    #[allow(clippy::too_many_arguments)]
    fn unwrap(
        &self,
        slot: usize,
        generation: u32,
        m: u32,
        extractable: bool,
        p: &WrapParams,
        target: usize,
        data: Segment,
    ) -> Result<(), (u32, u32)> {
        let len = data.len as usize;
        let len_ok = if m == mech::KW {
            (24..=MAX_KEY_LEN + 8).contains(&len)
        } else {
            (16..=MAX_WRAPPED).contains(&len)
        };
        if !len_ok || !len.is_multiple_of(8) {
            return Err((gst::DATA_LEN, 1));
        }
        let mut input = [0u8; MAX_WRAPPED];
        for (i, b) in input[..len].iter_mut().enumerate() {
            // SAFETY: validated: data.offset + len inside the window.
            *b = unsafe { ptr::read_volatile(self.window.add(data.offset as usize + i)) };
        }
        let mut key = [0u8; MAX_WRAPPED];
        let r = self
            .with_slot_view(slot, |w| -> Result<usize, u32> {
                generic_key(w, kind::AES, generation)?;
                let aes = aes_of(w)?.aes();
                let r = if m == mech::KW {
                    kw::unwrap(aes, &input[..len], &mut key)
                } else {
                    kw::unwrap_pad(aes, &input[..len], &mut key)
                };
                r.map_err(mode_status)
            })
            .and_then(|r| r);
        let st = match r {
            Err(st) => st,
            Ok(n) if kind_key_len_ok(p.kind, n) != Some(true) => status::BAD_KEY_LEN,
            Ok(n) => {
                let k = if p.kind == kind::AES {
                    KeyKind::GenericAes
                } else {
                    KeyKind::GenericXts
                };
                let flags = if extractable { SLOT_EXTRACTABLE } else { 0 };
                self.install_kind(target, k, n, p.target_generation, flags, |dst| {
                    dst.copy_from_slice(&key[..n]);
                    status::OK
                })
            }
        };
        key.zeroize();
        if st == status::OK {
            Ok(())
        } else {
            Err((st, 0))
        }
    }
}

const _: () = assert!(generic::MAX_WRAPPED >= MAX_KEY_LEN + 16);

#[cfg(test)]
mod tests;
