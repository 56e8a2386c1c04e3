//! Execution of the keyslot requests (UNLOCK_KEYSLOT, SEAL_KEYSLOT, KEY_DIGEST,
//! GENERATE_KEY) over the slot table.
//!
//! Slot locks are held only while a key is read or installed, never during a KDF: the
//! KDF output and the merged key wait in this vCPU's private stack (wiped afterwards),
//! and the slot is taken afterwards (UNLOCK refuses a busy slot before and after the
//! KDF; SEAL and DIGEST check the slot before and again under the read lock).

use core::sync::atomic::{AtomicBool, Ordering};

use zeroize::Zeroize;

use super::Service;
use crate::abi::keyslot::{self, copy_params, status as kst, HOST_ENTROPY_LEN};
use crate::abi::{check_keyslot_params, status, Response, Segment, Validated, MAX_KEY_LEN};
use crate::keyslot::area::SlotSpec;
use crate::keyslot::hash::MAX_OUTPUT;
use crate::keyslot::rng::{self, Hardware, Stream};

/// One keyslot request uses the scratch region at a time (it is one memslot for the
/// whole vault; the host maps it per request). Taken only by Argon2 requests.
static SCRATCH_BUSY: AtomicBool = AtomicBool::new(false);

/// Holds [`SCRATCH_BUSY`] while alive.
struct ScratchGuard;

impl ScratchGuard {
    fn take() -> ScratchGuard {
        while SCRATCH_BUSY
            .compare_exchange_weak(false, true, Ordering::Acquire, Ordering::Relaxed)
            .is_err()
        {
            core::hint::spin_loop();
        }
        ScratchGuard
    }
}

impl Drop for ScratchGuard {
    fn drop(&mut self) {
        SCRATCH_BUSY.store(false, Ordering::Release);
    }
}

impl Service<'_> {
    /// A window segment as a slice (host data: it may change while read).
    ///
    /// # Safety
    /// `seg` passed [`crate::abi::validate`] against this service's window.
    unsafe fn window_slice(&self, seg: Segment) -> &[u8] {
        // SAFETY: offset + len <= window_len (validated, no overflow); the window is
        // valid for that many bytes (contract of `new`).
        unsafe {
            core::slice::from_raw_parts(self.window.add(seg.offset as usize), seg.len as usize)
        }
    }

    fn next_draw(&self) -> u64 {
        self.draws.fetch_add(1, Ordering::Relaxed)
    }

    /// Runs a validated keyslot request.
    pub(super) fn keyslot(&self, v: Validated, resp: &mut Response) {
        let r = match v {
            Validated::GenerateKey {
                slot,
                spec,
                key_len,
                generation,
            } => self.generate(slot, spec, key_len, generation, resp),
            Validated::Keyslot { params, .. } | Validated::KeyDigest { params, .. } => {
                // SAFETY: `validate` checked params .. params + PARAMS_LEN inside the
                // window.
                let p = unsafe { copy_params(self.window.add(params as usize)) };
                match check_keyslot_params(&v, &p) {
                    Err(e) => Err(e),
                    Ok(c) => match (v, c.slot) {
                        (Validated::KeyDigest { .. }, _) => self.digest(&v, &c),
                        (Validated::Keyslot { seal: false, .. }, Some(s)) => {
                            self.unlock(&v, &s, &c)
                        }
                        (Validated::Keyslot { seal: true, .. }, Some(s)) => self.seal(&v, &s),
                        _ => Err((status::BAD_OP, 0)),
                    },
                }
            }
            _ => Err((status::BAD_OP, 0)),
        };
        if let Err((st, detail)) = r {
            resp.status = st;
            resp.detail = detail;
        }
    }

    fn generate(
        &self,
        slot: usize,
        spec: crate::engine::CipherSpec,
        key_len: usize,
        generation: u32,
        resp: &mut Response,
    ) -> Result<(), (u32, u32)> {
        let mut host = [0u8; HOST_ENTROPY_LEN];
        for (i, h) in host.iter_mut().enumerate() {
            // SAFETY: HOST_ENTROPY_LEN <= TRANSFER_SIZE; transfer page valid (new).
            *h = unsafe { core::ptr::read_volatile(self.transfer.add(i)) };
        }
        self.wipe_transfer();
        let draw = self.next_draw();
        let mut source = 0;
        let st = self.install(
            slot,
            spec,
            key_len,
            generation,
            |key| match rng::generate_key(&mut Hardware, &host, draw, key) {
                Some(s) => {
                    source = s;
                    status::OK
                }
                None => kst::NO_ENTROPY,
            },
        );
        host.zeroize();
        resp.aux[0] = source;
        if st == status::OK {
            Ok(())
        } else {
            Err((st, 0))
        }
    }

    fn slot_is_empty(&self, slot: usize) -> bool {
        self.slots[slot].state.load(Ordering::Acquire) == 0
    }

    /// Checks that `slot` holds a key of `generation`, `cipher` and `key_len`.
    fn slot_matches(
        &self,
        slot: usize,
        cipher: u32,
        key_len: usize,
        generation: u32,
    ) -> Result<(), (u32, u32)> {
        self.with_slot_key(slot, |_, key, id, gen| {
            check_key(key, id, gen, cipher, key_len, generation)
        })
        .map_err(|st| (st, 0))?
    }

    fn unlock(
        &self,
        v: &Validated,
        s: &SlotSpec,
        c: &crate::abi::CheckedParams,
    ) -> Result<(), (u32, u32)> {
        let Validated::Keyslot {
            slot,
            spec,
            key_len,
            generation,
            passphrase,
            area,
            ..
        } = *v
        else {
            return Err((status::BAD_OP, 0));
        };
        let Some(digest) = c.digest.as_ref() else {
            return Err((status::BAD_OP, 0));
        };
        if !self.slot_is_empty(slot) {
            return Err((status::SLOT_BUSY, 0));
        }
        let merged = {
            let _scratch = (s.kdf.scratch_needed() > 0).then(ScratchGuard::take);
            // SAFETY: the passphrase and area segments were validated against the
            // window; the scratch is valid for `scratch_len` bytes while this request
            // runs and held exclusively (contract of `new`, the guard).
            unsafe {
                s.unlock(
                    digest,
                    self.window_slice(passphrase),
                    self.window.add(area.offset as usize),
                    self.scratch,
                )
            }
        }
        .map_err(|st| (st, 0))?;
        let Some(k) = merged.key() else {
            return Err((kst::BAD_PASSPHRASE, 0));
        };
        let st = self.install(slot, spec, key_len, generation, |key| {
            key.copy_from_slice(k);
            status::OK
        });
        if st == status::OK {
            Ok(())
        } else {
            Err((st, 0))
        }
    }

    fn seal(&self, v: &Validated, s: &SlotSpec) -> Result<(), (u32, u32)> {
        let Validated::Keyslot {
            slot,
            cipher,
            key_len,
            generation,
            passphrase,
            area,
            ..
        } = *v
        else {
            return Err((status::BAD_OP, 0));
        };
        // Refuse a wrong slot before the long KDF, and check again under the lock.
        self.slot_matches(slot, cipher, key_len, generation)?;
        let area_cipher = {
            let _scratch = (s.kdf.scratch_needed() > 0).then(ScratchGuard::take);
            // SAFETY: as in `unlock`.
            unsafe { s.seal_cipher(self.window_slice(passphrase), self.scratch) }
        }
        .map_err(|st| (st, 0))?;
        let mut stream =
            Stream::new(&mut Hardware, self.next_draw()).ok_or((kst::NO_ENTROPY, 0))?;
        let area_out = {
            // SAFETY: validated segment inside the window (contract of `new`).
            unsafe { self.window.add(area.offset as usize) }
        };
        self.with_slot_key(slot, |_, key, id, gen| {
            check_key(key, id, gen, cipher, key_len, generation)?;
            // SAFETY: the area segment (area_len bytes, checked against the
            // parameters) lies in the window.
            unsafe { s.seal_write(&area_cipher, key, &mut |b| stream.fill(b), area_out) }
                .map_err(|st| (st, 0))
        })
        .map_err(|st| (st, 0))?
    }

    fn digest(&self, v: &Validated, c: &crate::abi::CheckedParams) -> Result<(), (u32, u32)> {
        let Validated::KeyDigest {
            slot,
            cipher,
            key_len,
            generation,
            digest,
            ..
        } = *v
        else {
            return Err((status::BAD_OP, 0));
        };
        let Some(d) = c.digest.as_ref() else {
            return Err((status::BAD_OP, 0));
        };
        // The digest's PBKDF2 can take a while: copy the key out under the read lock
        // (into this vCPU's private stack, wiped below) rather than hold the lock.
        let mut key = [0u8; MAX_KEY_LEN];
        let r = self
            .with_slot_key(slot, |_, k, id, gen| {
                check_key(k, id, gen, cipher, key_len, generation)?;
                key[..key_len].copy_from_slice(k);
                Ok(())
            })
            .map_err(|st| (st, 0))
            .and_then(|r| r);
        let mut out = [0u8; MAX_OUTPUT];
        if r.is_ok() {
            d.compute(&key[..key_len], &mut out[..d.len]);
            // SAFETY: the digest segment (d.len bytes, checked) lies in the window.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    out.as_ptr(),
                    self.window.add(digest.offset as usize),
                    d.len,
                )
            };
        }
        key.zeroize();
        out.zeroize();
        r
    }
}

/// The slot's key is of `generation` (else SLOT_EMPTY), `cipher` (else BAD_CIPHER) and
/// `key_len` bytes (else BAD_KEY_LEN).
fn check_key(
    key: &[u8],
    id: u32,
    gen: u32,
    cipher: u32,
    key_len: usize,
    generation: u32,
) -> Result<(), (u32, u32)> {
    if gen != generation {
        return Err((status::SLOT_EMPTY, 0));
    }
    if id != cipher {
        return Err((status::BAD_CIPHER, 0));
    }
    if key.len() != key_len {
        return Err((status::BAD_KEY_LEN, 0));
    }
    Ok(())
}

const _: () = assert!(keyslot::MAX_DIGEST <= MAX_OUTPUT);
