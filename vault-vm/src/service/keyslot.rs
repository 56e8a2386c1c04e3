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

/// Spins a KDF_JOIN waits for an Argon2 computation to be published (the owner's
/// request is sent at the same time; it publishes after parsing its parameters and
/// computing the first blocks). A spin is one `pause`: 10 to 150 cycles depending on the
/// CPU, so this is about 0.5 to 8 ms.
pub(crate) const KDF_JOIN_WAIT_SPINS: u64 = 200_000;

impl Service<'_> {
    /// KDF_JOIN: helps the Argon2 computation on this vault's job board, if one is
    /// published within [`KDF_JOIN_WAIT_SPINS`]; returns the lane-segments computed.
    /// Touches no slot and no key.
    pub(super) fn kdf_join(&self) -> u64 {
        u64::from(crate::argon2::join(self.job, KDF_JOIN_WAIT_SPINS))
    }

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
                    self.job,
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
            unsafe { s.seal_cipher(self.job, self.window_slice(passphrase), self.scratch) }
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

#[cfg(test)]
mod tests {
    extern crate std;

    use std::boxed::Box;
    use std::vec;
    use std::vec::Vec;

    use super::*;
    use crate::abi::keyslot::{hash, kdf, op as kop, KeyslotParams, PARAMS_LEN};
    use crate::abi::{cipher_id, op, Request, MAX_SLOTS};
    use crate::argon2::Job;
    use crate::engine::CipherSpec;
    use crate::service::{Counters, SlotCell};

    const P: u64 = 0;
    const PASS: u64 = 1024;
    const AREA: u64 = 4096;

    struct Fx {
        slots: Box<[SlotCell; MAX_SLOTS]>,
        job: Job,
        window: Vec<u8>,
        transfer: Vec<u8>,
    }

    impl Fx {
        fn new() -> Fx {
            Fx {
                slots: Box::new([const { SlotCell::EMPTY }; MAX_SLOTS]),
                job: Job::new(),
                window: vec![0u8; 1 << 19],
                transfer: vec![0u8; crate::abi::TRANSFER_SIZE as usize],
            }
        }

        fn run(&mut self, r: &Request) -> Response {
            // SAFETY: buffers of the stated sizes, outliving the service; no scratch
            // (Argon2 requests are refused).
            let svc = unsafe {
                Service::new(
                    &self.slots,
                    &self.job,
                    self.window.as_mut_ptr(),
                    self.window.len() as u64,
                    self.transfer.as_mut_ptr(),
                    core::ptr::null_mut(),
                )
            };
            svc.handle(r, &mut Counters::default())
        }

        fn keyslot(
            &mut self,
            opc: u32,
            slot: u32,
            gen: u32,
            p: &KeyslotParams,
            pass: &[u8],
        ) -> u32 {
            // SAFETY: plain old data of PARAMS_LEN bytes.
            let b = unsafe {
                core::slice::from_raw_parts(
                    (p as *const KeyslotParams).cast::<u8>(),
                    PARAMS_LEN as usize,
                )
            };
            self.window[..b.len()].copy_from_slice(b);
            self.window[PASS as usize..][..pass.len()].copy_from_slice(pass);
            let mut r = Request {
                op: opc,
                slot,
                cipher: xts(),
                key_len: 64,
                generation: gen,
                nsegs: 3,
                ..Request::ZERO
            };
            r.segs[0] = Segment {
                offset: P,
                len: PARAMS_LEN,
            };
            r.segs[1] = Segment {
                offset: PASS,
                len: pass.len() as u64,
            };
            r.segs[2] = Segment {
                offset: AREA,
                len: p.area_len(),
            };
            self.run(&r).status
        }

        fn import(&mut self, slot: u32, gen: u32, key: &[u8; 64]) -> u32 {
            self.transfer[..64].copy_from_slice(key);
            self.run(&Request {
                op: op::IMPORT_KEY,
                slot,
                cipher: xts(),
                key_len: 64,
                generation: gen,
                ..Request::ZERO
            })
            .status
        }

        fn digest(&mut self, slot: u32, gen: u32, p: &KeyslotParams) -> (u32, [u8; 32]) {
            // SAFETY: as in `keyslot`.
            let b = unsafe {
                core::slice::from_raw_parts(
                    (p as *const KeyslotParams).cast::<u8>(),
                    PARAMS_LEN as usize,
                )
            };
            self.window[..b.len()].copy_from_slice(b);
            let mut r = Request {
                op: kop::KEY_DIGEST,
                slot,
                cipher: xts(),
                key_len: 64,
                generation: gen,
                nsegs: 2,
                ..Request::ZERO
            };
            r.segs[0] = Segment {
                offset: P,
                len: PARAMS_LEN,
            };
            r.segs[1] = Segment {
                offset: PASS,
                len: 32,
            };
            let st = self.run(&r).status;
            let mut d = [0u8; 32];
            d.copy_from_slice(&self.window[PASS as usize..][..32]);
            (st, d)
        }
    }

    fn xts() -> u32 {
        cipher_id(CipherSpec::parse("aes-xts-plain64").unwrap())
    }

    fn pbkdf2_params() -> KeyslotParams {
        let mut p = KeyslotParams::ZERO;
        p.kdf = kdf::PBKDF2;
        p.kdf_hash = hash::SHA256;
        p.time = 1000;
        p.salt = [7; 64];
        p.salt_len = 32;
        p.area_cipher = xts();
        p.area_key_len = 64;
        p.af_stripes = 4000;
        p.af_hash = hash::SHA256;
        p.volume_key_len = 64;
        p.digest_hash = hash::SHA256;
        p.digest_iterations = 1000;
        p.digest_len = 32;
        p.digest_salt = [9; 64];
        p.digest_salt_len = 32;
        p
    }

    #[test]
    fn seal_unlock_digest_and_slot_rules() {
        let mut fx = Fx::new();
        let key = [0x42u8; 64];
        assert_eq!(fx.import(1, 5, &key), status::OK);
        let mut p = pbkdf2_params();
        let (st, d) = fx.digest(1, 5, &p);
        assert_eq!(st, status::OK);
        let mut want = [0u8; 32];
        crate::keyslot::hash::Hash::Sha256.pbkdf2(&key, &[9; 32], 1000, &mut want);
        assert_eq!(d, want);
        p.digest[..32].copy_from_slice(&d);
        // SEAL refuses another generation or cipher before any KDF.
        assert_eq!(
            fx.keyslot(kop::SEAL_KEYSLOT, 1, 4, &p, b"pw"),
            status::SLOT_EMPTY
        );
        assert_eq!(
            fx.keyslot(kop::SEAL_KEYSLOT, 2, 5, &p, b"pw"),
            status::SLOT_EMPTY
        );
        assert_eq!(fx.keyslot(kop::SEAL_KEYSLOT, 1, 5, &p, b"pw"), status::OK);
        // UNLOCK: busy slot, wrong passphrase, then the right one.
        assert_eq!(
            fx.keyslot(kop::UNLOCK_KEYSLOT, 1, 6, &p, b"pw"),
            status::SLOT_BUSY
        );
        assert_eq!(
            fx.keyslot(kop::UNLOCK_KEYSLOT, 2, 6, &p, b"px"),
            kst::BAD_PASSPHRASE
        );
        assert_eq!(fx.keyslot(kop::UNLOCK_KEYSLOT, 2, 6, &p, b"pw"), status::OK);
        assert_eq!(fx.digest(2, 6, &p), (status::OK, d));
        // A corrupted area sector is a wrong passphrase, not a crash.
        fx.window[AREA as usize + 700] ^= 1;
        assert_eq!(
            fx.keyslot(kop::UNLOCK_KEYSLOT, 3, 6, &p, b"pw"),
            kst::BAD_PASSPHRASE
        );
        // Argon2 without a scratch region: KDF_LIMIT, nothing installed.
        p.kdf = kdf::ARGON2ID;
        p.kdf_hash = 0;
        p.time = 1;
        p.memory_kib = 64;
        p.lanes = 1;
        p.scratch_len = 64 * 1024;
        assert_eq!(
            fx.keyslot(kop::UNLOCK_KEYSLOT, 3, 6, &p, b"pw"),
            kst::KDF_LIMIT
        );
        assert_eq!(fx.digest(3, 6, &pbkdf2_params()).0, status::SLOT_EMPTY);
    }

    #[test]
    fn generate_installs_wipes_the_page_and_refuses_a_busy_slot() {
        let mut fx = Fx::new();
        let g = |slot| Request {
            op: kop::GENERATE_KEY,
            slot,
            cipher: xts(),
            key_len: 64,
            generation: 3,
            ..Request::ZERO
        };
        fx.transfer[..64].copy_from_slice(&[1; 64]);
        let r = fx.run(&g(4));
        assert_eq!(r.status, status::OK);
        assert_ne!(r.aux[0], 0);
        assert!(fx.transfer.iter().all(|&b| b == 0));
        fx.transfer[..64].copy_from_slice(&[1; 64]);
        assert_eq!(fx.run(&g(4)).status, status::SLOT_BUSY);
        assert!(fx.transfer.iter().all(|&b| b == 0));
        assert_eq!(fx.run(&g(5)).status, status::OK);
        let p = pbkdf2_params();
        assert_ne!(
            fx.digest(4, 3, &p).1,
            fx.digest(5, 3, &p).1,
            "distinct keys"
        );
    }
}
