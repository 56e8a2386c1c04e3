//! Unit tests of the generic requests: every mechanism against the engine used
//! directly, and every refusal of the service (kinds, contexts, owners, wrap rules).

extern crate std;

use std::boxed::Box;
use std::vec;
use std::vec::Vec;

use super::*;
use crate::abi::generic::{FLAG_DECRYPT, FLAG_EXTRACTABLE, INIT_PARAMS_LEN, WRAP_PARAMS_LEN};
use crate::abi::{self, Request, MAX_SLOTS};
use crate::engine::generic::GcmKey;
use crate::engine::{CipherSpec, SectorCipher};
use crate::service::SlotCell;

const PARAMS: u64 = 0;
const AAD: u64 = 4096;
const DATA: u64 = 8192;
const OUT: u64 = 16384;

struct Fx {
    slots: Box<[SlotCell; MAX_SLOTS]>,
    contexts: Box<ContextTable>,
    job: Box<crate::argon2::Job>,
    window: Vec<u8>,
    transfer: Vec<u8>,
}

fn key(n: usize, seed: u8) -> Vec<u8> {
    (0..n)
        .map(|i| (i as u8).wrapping_mul(29).wrapping_add(seed))
        .collect()
}

fn seg(offset: u64, len: usize) -> Segment {
    Segment {
        offset,
        len: len as u64,
    }
}

impl Fx {
    fn new() -> Fx {
        Fx {
            slots: Box::new([const { SlotCell::EMPTY }; MAX_SLOTS]),
            contexts: Box::new(ContextTable::EMPTY),
            job: Box::new(crate::argon2::Job::new()),
            window: vec![0u8; 1 << 16],
            transfer: vec![0u8; abi::TRANSFER_SIZE as usize],
        }
    }

    fn run_with(&mut self, r: &Request, contexts: bool) -> Response {
        // SAFETY: buffers of the stated sizes, outliving the service; no scratch.
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
        let svc = if contexts {
            svc.with_contexts(&self.contexts)
        } else {
            svc
        };
        svc.handle(r, &mut Counters::default())
    }

    fn run(&mut self, r: &Request) -> Response {
        self.run_with(r, true)
    }

    fn import(&mut self, slot: u32, gen: u32, kind_id: u32, k: &[u8], flags: u32) -> u32 {
        self.transfer[..k.len()].copy_from_slice(k);
        let st = self
            .run(&Request {
                op: op::IMPORT,
                slot,
                generation: gen,
                cipher: kind_id,
                key_len: k.len() as u32,
                flags,
                ..Request::ZERO
            })
            .status;
        assert!(self.transfer.iter().all(|&b| b == 0), "transfer page wiped");
        st
    }

    fn put(&mut self, at: u64, b: &[u8]) {
        self.window[at as usize..][..b.len()].copy_from_slice(b);
    }

    fn get(&self, at: u64, n: usize) -> Vec<u8> {
        self.window[at as usize..][..n].to_vec()
    }

    /// INIT: (status, ctx, generation).
    #[allow(clippy::too_many_arguments)]
    fn init(
        &mut self,
        slot: u32,
        gen: u32,
        m: u32,
        decrypt: bool,
        owner: u64,
        iv: &[u8],
        counter_bits: u32,
        tag_bits: u32,
        aad: Option<&[u8]>,
    ) -> (u32, u32, u32) {
        let mut p = InitParams {
            iv_len: iv.len() as u32,
            counter_bits,
            tag_bits,
            ..InitParams::ZERO
        };
        p.iv[..iv.len()].copy_from_slice(iv);
        // SAFETY: plain data of INIT_PARAMS_LEN bytes.
        let b = unsafe {
            core::slice::from_raw_parts((&raw const p).cast::<u8>(), INIT_PARAMS_LEN as usize)
        };
        let b = b.to_vec();
        self.put(PARAMS, &b);
        let mut r = Request {
            op: op::INIT,
            slot,
            generation: gen,
            cipher: m,
            flags: if decrypt { FLAG_DECRYPT } else { 0 },
            sector: owner,
            nsegs: 1,
            ..Request::ZERO
        };
        r.segs[0] = seg(PARAMS, INIT_PARAMS_LEN as usize);
        if let Some(a) = aad {
            self.put(AAD, a);
            r.nsegs = 2;
            r.segs[1] = seg(AAD, a.len());
        }
        let resp = self.run(&r);
        (resp.status, resp.aux[0] as u32, resp.aux[1] as u32)
    }

    fn ctx_req(&self, opc: u32, ctx: u32, gen: u32, owner: u64, segs: &[Segment]) -> Request {
        let mut r = Request {
            op: opc,
            slot: ctx,
            generation: gen,
            sector: owner,
            nsegs: segs.len() as u32,
            ..Request::ZERO
        };
        r.segs[..segs.len()].copy_from_slice(segs);
        r
    }

    /// UPDATE over `data` (copied to DATA) split at `cuts`; returns (status, output).
    fn update(
        &mut self,
        ctx: (u32, u32),
        owner: u64,
        data: &[u8],
        cuts: &[usize],
    ) -> (u32, Vec<u8>) {
        self.put(DATA, data);
        let mut segs = Vec::new();
        let mut a = 0;
        for &c in cuts.iter().chain([data.len()].iter()) {
            segs.push(seg(DATA + a as u64, c - a));
            a = c;
        }
        let r = self.ctx_req(op::UPDATE, ctx.0, ctx.1, owner, &segs);
        let st = self.run(&r).status;
        (st, self.get(DATA, data.len()))
    }

    fn final_(&mut self, ctx: (u32, u32), owner: u64, tag: Option<&[u8]>) -> u32 {
        let segs: Vec<Segment> = match tag {
            Some(t) => {
                self.put(OUT, t);
                vec![seg(OUT, t.len())]
            }
            None => vec![],
        };
        let r = self.ctx_req(op::FINAL, ctx.0, ctx.1, owner, &segs);
        self.run(&r).status
    }

    #[allow(clippy::too_many_arguments)]
    fn wrap_req(
        &mut self,
        unwrap: bool,
        slot: u32,
        gen: u32,
        m: u32,
        p: WrapParams,
        data: Segment,
        flags: u32,
    ) -> Response {
        // SAFETY: plain data of WRAP_PARAMS_LEN bytes.
        let b = unsafe {
            core::slice::from_raw_parts((&raw const p).cast::<u8>(), WRAP_PARAMS_LEN as usize)
        }
        .to_vec();
        self.put(PARAMS, &b);
        let mut r = Request {
            op: if unwrap { op::UNWRAP_KEY } else { op::WRAP_KEY },
            slot,
            generation: gen,
            cipher: m,
            flags,
            nsegs: 2,
            ..Request::ZERO
        };
        r.segs[0] = seg(PARAMS, WRAP_PARAMS_LEN as usize);
        r.segs[1] = data;
        self.run(&r)
    }
}

#[test]
fn ecb_cbc_ctr_gcm_match_the_engine() {
    let mut fx = Fx::new();
    let k = key(32, 1);
    assert_eq!(fx.import(0, 7, kind::AES, &k, 0), status::OK);
    let aes = Aes::new(&k).unwrap();
    let data = key(160, 9);
    // ECB in two parts.
    let (st, ctx, gen) = fx.init(0, 7, mech::ECB, false, 5, &[], 0, 0, None);
    assert_eq!(st, status::OK);
    let (st, out) = fx.update((ctx, gen), 5, &data, &[48]);
    assert_eq!(st, status::OK);
    let mut want = data.clone();
    aes.ecb_encrypt(&mut want).unwrap();
    assert_eq!(out, want);
    assert_eq!(fx.final_((ctx, gen), 5, None), status::OK);
    assert_eq!(fx.contexts.used(), 0);
    // CBC in three updates.
    let iv = [4u8; 16];
    let (st, ctx, gen) = fx.init(0, 7, mech::CBC, false, 5, &iv, 0, 0, None);
    assert_eq!(st, status::OK);
    let mut out = Vec::new();
    for part in [&data[..32], &data[32..128], &data[128..]] {
        let (st, o) = fx.update((ctx, gen), 5, part, &[]);
        assert_eq!(st, status::OK);
        out.extend(o);
    }
    assert_eq!(fx.final_((ctx, gen), 5, None), status::OK);
    let mut want = data.clone();
    aes.cbc_encrypt(&mut iv.clone(), &mut want).unwrap();
    assert_eq!(out, want);
    // CBC decrypt back.
    let (_, ctx, gen) = fx.init(0, 7, mech::CBC, true, 5, &iv, 0, 0, None);
    let (st, back) = fx.update((ctx, gen), 5, &want, &[16, 64]);
    assert_eq!((st, back), (status::OK, data.clone()));
    assert_eq!(fx.final_((ctx, gen), 5, None), status::OK);
    // CTR with odd splits and a 32-bit counter that wraps.
    let mut cb = [0xabu8; 16];
    cb[12..].copy_from_slice(&0xffff_fffeu32.to_be_bytes());
    let (st, ctx, gen) = fx.init(0, 7, mech::CTR, false, 5, &cb, 32, 0, None);
    assert_eq!(st, status::OK);
    let mut out = Vec::new();
    for part in [&data[..5], &data[5..6], &data[6..77], &data[77..]] {
        let (st, o) = fx.update((ctx, gen), 5, part, &[]);
        assert_eq!(st, status::OK);
        out.extend(o);
    }
    let mut want = data.clone();
    Ctr::new(&aes, &cb, 32).unwrap().apply(&mut want);
    assert_eq!(out, want);
    assert_eq!(fx.final_((ctx, gen), 5, None), status::OK);
    // GCM with AAD, split, then decrypt and verify.
    let gk = GcmKey::new(Aes::new(&k).unwrap());
    let aad = key(45, 3);
    let iv = key(12, 77);
    let (st, ctx, gen) = fx.init(0, 7, mech::GCM, false, 5, &iv, 0, 128, Some(&aad));
    assert_eq!(st, status::OK);
    let (st, ct) = fx.update((ctx, gen), 5, &data, &[7, 100]);
    assert_eq!(st, status::OK);
    assert_eq!(fx.final_((ctx, gen), 5, Some(&[0u8; 16])), status::OK);
    let tag = fx.get(OUT, 16);
    let mut g = Gcm::new(&gk, &iv, 16).unwrap();
    g.aad(&aad).unwrap();
    let mut want = data.clone();
    g.encrypt_update(&mut want).unwrap();
    assert_eq!(ct, want);
    assert_eq!(tag, g.finish().as_bytes());
    let (_, ctx, gen) = fx.init(0, 7, mech::GCM, true, 5, &iv, 0, 128, Some(&aad));
    let (st, pt) = fx.update((ctx, gen), 5, &ct, &[33]);
    assert_eq!((st, pt), (status::OK, data.clone()));
    assert_eq!(fx.final_((ctx, gen), 5, Some(&tag)), status::OK);
    assert_eq!(fx.contexts.used(), 0);
}

#[test]
fn gcm_tag_rules() {
    let mut fx = Fx::new();
    assert_eq!(fx.import(1, 1, kind::AES, &key(16, 2), 0), status::OK);
    let iv = [1u8; 12];
    let (_, ctx, gen) = fx.init(1, 1, mech::GCM, false, 9, &iv, 0, 96, None);
    fx.update((ctx, gen), 9, b"hello", &[]);
    // A tag segment of the wrong length is refused before the state is touched.
    assert_eq!(fx.final_((ctx, gen), 9, Some(&[0u8; 16])), gst::DATA_LEN);
    assert_eq!(fx.final_((ctx, gen), 9, None), gst::DATA_LEN);
    assert_eq!(fx.final_((ctx, gen), 9, Some(&[0u8; 12])), status::OK);
    let mut tag = fx.get(OUT, 12);
    let ct = fx.get(DATA, 5);
    tag[3] ^= 1;
    let (_, ctx, gen) = fx.init(1, 1, mech::GCM, true, 9, &iv, 0, 96, None);
    fx.update((ctx, gen), 9, &ct, &[]);
    assert_eq!(fx.final_((ctx, gen), 9, Some(&tag)), gst::TAG_MISMATCH);
    // A failed verification ends the context.
    assert_eq!(fx.contexts.used(), 0);
    assert_eq!(fx.final_((ctx, gen), 9, Some(&tag)), gst::BAD_CONTEXT);
}

#[test]
fn key_kinds_are_kept_apart() {
    let mut fx = Fx::new();
    let xts = CipherSpec::parse("aes-xts-plain64").unwrap();
    let ecb = CipherSpec::parse("aes-ecb").unwrap();
    // A LUKS (sector) key: generic ops refuse it.
    fx.transfer[..32].copy_from_slice(&key(32, 5));
    let r = fx.run(&Request {
        op: abi::op::IMPORT_KEY,
        slot: 0,
        generation: 1,
        cipher: abi::cipher_id(ecb),
        key_len: 32,
        ..Request::ZERO
    });
    assert_eq!(r.status, status::OK);
    assert_eq!(
        fx.init(0, 1, mech::ECB, false, 1, &[], 0, 0, None).0,
        gst::KEY_KIND
    );
    // A generic AES key: sector requests refuse it (its id is no sector cipher).
    assert_eq!(
        fx.import(1, 1, kind::AES, &key(32, 5), FLAG_EXTRACTABLE),
        status::OK
    );
    let mut r = Request {
        op: abi::op::ENCRYPT,
        slot: 1,
        generation: 1,
        cipher: kind::AES,
        sector_size: 512,
        nsegs: 1,
        ..Request::ZERO
    };
    r.segs[0] = seg(DATA, 512);
    assert_eq!(fx.run(&r).status, status::BAD_CIPHER);
    r.cipher = abi::cipher_id(ecb);
    assert_eq!(fx.run(&r).status, status::BAD_CIPHER);
    // XTS: only XTS keys; INIT: only AES keys.
    assert_eq!(fx.import(2, 1, kind::XTS, &key(64, 6), 0), status::OK);
    assert_eq!(
        fx.init(2, 1, mech::CBC, false, 1, &[0; 16], 0, 0, None).0,
        gst::KEY_KIND
    );
    let mut x = Request {
        op: op::XTS,
        slot: 1,
        generation: 1,
        sector_size: 512,
        sector: 3,
        nsegs: 1,
        ..Request::ZERO
    };
    x.segs[0] = seg(DATA, 1024);
    assert_eq!(fx.run(&x).status, gst::KEY_KIND);
    x.slot = 0;
    assert_eq!(fx.run(&x).status, gst::KEY_KIND);
    // XTS on the XTS key: units 3 and 4 with consecutive tweaks, as the sector engine
    // gives for data unit numbers with 512-byte sectors.
    x.slot = 2;
    let data = key(1024, 8);
    fx.put(DATA, &data);
    assert_eq!(fx.run(&x).status, status::OK);
    let mut want = data.clone();
    let c = SectorCipher::new(xts, &key(64, 6)).unwrap();
    c.encrypt(&Geometry::new(512, false, 0).unwrap(), 3, &mut want)
        .unwrap();
    assert_eq!(fx.get(DATA, 1024), want);
    x.flags = FLAG_DECRYPT;
    assert_eq!(fx.run(&x).status, status::OK);
    assert_eq!(fx.get(DATA, 1024), data);
    // Wrong generation.
    x.generation = 2;
    assert_eq!(fx.run(&x).status, status::SLOT_EMPTY);
    // SEAL/DIGEST-style access by cipher id is refused too: the slot's id is a kind.
    assert_eq!(fx.import(3, 1, kind::AES, &key(24, 1), 0), status::OK);
    // A refused import wipes the transfer page too (checked by `import`).
    assert_eq!(
        fx.import(3, 2, kind::AES, &key(24, 1), 0),
        status::SLOT_BUSY
    );
}

#[test]
fn contexts_have_owners_generations_and_die_with_their_key() {
    let mut fx = Fx::new();
    assert_eq!(fx.import(4, 10, kind::AES, &key(16, 3), 0), status::OK);
    let (st, ctx, gen) = fx.init(4, 10, mech::CTR, false, 0x1111, &[0; 16], 128, 0, None);
    assert_eq!(st, status::OK);
    // Another owner can neither drive nor end nor abort it; it stays usable.
    assert_eq!(fx.update((ctx, gen), 0x2222, b"abc", &[]).0, gst::BAD_OWNER);
    assert_eq!(fx.final_((ctx, gen), 0x2222, None), gst::BAD_OWNER);
    let r = fx.ctx_req(op::ABORT, ctx, gen, 0x2222, &[]);
    assert_eq!(fx.run(&r).status, gst::BAD_OWNER);
    assert_eq!(fx.update((ctx, gen), 0x1111, b"abc", &[]).0, status::OK);
    // Wrong generation, out of range, free cell.
    assert_eq!(
        fx.update((ctx, gen + 1), 0x1111, b"abc", &[]).0,
        gst::BAD_CONTEXT
    );
    assert_eq!(
        fx.update((ctx + 1, gen), 0x1111, b"abc", &[]).0,
        gst::BAD_CONTEXT
    );
    assert_eq!(
        fx.update((MAX_CONTEXTS as u32, gen), 0x1111, b"abc", &[]).0,
        gst::BAD_CONTEXT
    );
    // Busy: a request holds it.
    let lock = |fx: &Fx, v| {
        fx.contexts.cells[ctx as usize]
            .lock
            .store(v, Ordering::Relaxed)
    };
    lock(&fx, USED | BUSY);
    assert_eq!(
        fx.update((ctx, gen), 0x1111, b"abc", &[]).0,
        gst::CONTEXT_BUSY
    );
    lock(&fx, USED);
    // Dropping the key wipes its contexts (not the others').
    assert_eq!(fx.import(5, 1, kind::AES, &key(16, 4), 0), status::OK);
    let (_, other, ogen) = fx.init(5, 1, mech::ECB, false, 1, &[], 0, 0, None);
    assert_eq!(fx.contexts.used(), 2);
    let d = fx.run(&Request {
        op: abi::op::DROP_KEY,
        slot: 4,
        generation: 10,
        ..Request::ZERO
    });
    assert_eq!(d.status, status::OK);
    assert_eq!(fx.contexts.used(), 1);
    assert_eq!(
        fx.update((ctx, gen), 0x1111, b"abc", &[]).0,
        gst::BAD_CONTEXT
    );
    assert_eq!(fx.update((other, ogen), 1, &[0; 16], &[]).0, status::OK);
    // A key re-imported into the slot with the same generation is not the old
    // context's key (the epoch differs), even if the context survived somehow.
    assert_eq!(fx.import(4, 10, kind::AES, &key(16, 3), 0), status::OK);
    let (_, c2, g2) = fx.init(4, 10, mech::ECB, false, 1, &[], 0, 0, None);
    let cell = &fx.contexts.cells[c2 as usize];
    // SAFETY: the cell holds a context and no request runs (test-only edit).
    unsafe { (*cell.state.get()).assume_init_mut().epoch -= 1 };
    assert_eq!(fx.update((c2, g2), 1, &[0; 16], &[]).0, gst::BAD_CONTEXT);
    assert_eq!(fx.contexts.used(), 1);
}

#[test]
fn data_length_rules_and_table_limits() {
    let mut fx = Fx::new();
    assert_eq!(fx.import(0, 1, kind::AES, &key(32, 3), 0), status::OK);
    let (_, ctx, gen) = fx.init(0, 1, mech::CBC, false, 1, &[0; 16], 0, 0, None);
    let data = key(48, 1);
    let (st, out) = fx.update((ctx, gen), 1, &data, &[16, 30]);
    assert_eq!(st, gst::DATA_LEN);
    assert_eq!(out, data, "a refused UPDATE changes nothing");
    let r = fx.ctx_req(
        op::UPDATE,
        ctx,
        gen,
        1,
        &[seg(DATA, 16), seg(DATA + 16, 17)],
    );
    let resp = fx.run(&r);
    assert_eq!((resp.status, resp.detail), (gst::DATA_LEN, 1));
    assert_eq!(fx.final_((ctx, gen), 1, Some(&[0; 16])), gst::DATA_LEN);
    // CTR never reuses a counter value: 4 bits are 16 blocks.
    let (_, ctx, gen) = fx.init(0, 1, mech::CTR, false, 1, &[0; 16], 4, 0, None);
    assert_eq!(fx.update((ctx, gen), 1, &[0; 250], &[]).0, status::OK);
    assert_eq!(fx.update((ctx, gen), 1, &[0; 7], &[]).0, gst::DATA_LEN);
    assert_eq!(fx.update((ctx, gen), 1, &[0; 6], &[]).0, status::OK);
    // Parameter refusals at INIT.
    assert_eq!(
        fx.init(0, 1, mech::CBC, false, 1, &[0; 12], 0, 0, None).0,
        gst::BAD_IV
    );
    assert_eq!(
        fx.init(0, 1, mech::GCM, false, 1, &[0; 12], 0, 20, None).0,
        gst::BAD_MECH_PARAM
    );
    assert_eq!(
        fx.init(0, 1, mech::CTR, false, 1, &[0; 16], 0, 0, None).0,
        gst::BAD_MECH_PARAM
    );
    assert_eq!(
        fx.init(0, 2, mech::ECB, false, 1, &[], 0, 0, None).0,
        status::SLOT_EMPTY
    );
    assert_eq!(
        fx.init(9, 1, mech::ECB, false, 1, &[], 0, 0, None).0,
        status::SLOT_EMPTY
    );
    // The table fills up.
    let mut n = fx.contexts.used();
    while n < MAX_CONTEXTS {
        assert_eq!(
            fx.init(0, 1, mech::ECB, false, 1, &[], 0, 0, None).0,
            status::OK
        );
        n += 1;
    }
    assert_eq!(
        fx.init(0, 1, mech::ECB, false, 1, &[], 0, 0, None).0,
        gst::NO_CONTEXT
    );
    // Without a context table the context ops are unknown.
    let mut r = Request {
        op: op::ABORT,
        ..Request::ZERO
    };
    assert_eq!(fx.run_with(&r, false).status, status::BAD_OP);
    r.sector = 1;
    r.generation = 1; // cell 0: the first CBC context, still alive
    assert_eq!(fx.run(&r).status, status::OK);
    assert_eq!(fx.contexts.used(), MAX_CONTEXTS - 1);
}

#[test]
fn wrap_and_unwrap() {
    let mut fx = Fx::new();
    let kek = key(32, 40);
    let target = key(64, 41);
    assert_eq!(fx.import(0, 1, kind::AES, &kek, 0), status::OK);
    assert_eq!(
        fx.import(1, 1, kind::XTS, &target, FLAG_EXTRACTABLE),
        status::OK
    );
    assert_eq!(fx.import(2, 1, kind::AES, &key(16, 1), 0), status::OK);
    let wp = |slot, generation, kind| WrapParams {
        target_slot: slot,
        target_generation: generation,
        kind,
        reserved: 0,
    };
    let aes = Aes::new(&kek).unwrap();
    for (m, n) in [(mech::KW, 72usize), (mech::KWP, 72)] {
        let r = fx.wrap_req(false, 0, 1, m, wp(1, 1, 0), seg(OUT, 100), 0);
        assert_eq!((r.status, r.bytes), (status::OK, n as u64));
        let got = fx.get(OUT, n);
        let mut want = [0u8; 80];
        let w = if m == mech::KW {
            kw::wrap(&aes, &target, &mut want).unwrap()
        } else {
            kw::wrap_pad(&aes, &target, &mut want).unwrap()
        };
        assert_eq!(got, want[..w]);
        // Unwrap into slot 3 as an extractable XTS key, wrap again: same bytes.
        let r = fx.wrap_req(
            true,
            0,
            1,
            m,
            wp(3, 5, kind::XTS),
            seg(OUT, n),
            FLAG_EXTRACTABLE,
        );
        assert_eq!(r.status, status::OK);
        let r = fx.wrap_req(false, 0, 1, m, wp(3, 5, 0), seg(OUT + 512, 100), 0);
        assert_eq!(r.status, status::OK);
        assert_eq!(fx.get(OUT + 512, n), got);
        let d = fx.run(&Request {
            op: abi::op::DROP_KEY,
            slot: 3,
            generation: 5,
            ..Request::ZERO
        });
        assert_eq!(d.status, status::OK);
        // Tampered: UNWRAP_FAILED, the target stays empty.
        fx.window[OUT as usize + 20] ^= 1;
        let r = fx.wrap_req(true, 0, 1, m, wp(3, 5, kind::XTS), seg(OUT, n), 0);
        assert_eq!(r.status, gst::UNWRAP_FAILED);
        assert_eq!(fx.slots[3].state.load(Ordering::Relaxed), 0);
    }
    // Non-extractable keys never leave; the output must be large enough.
    let r = fx.wrap_req(false, 0, 1, mech::KW, wp(2, 1, 0), seg(OUT, 100), 0);
    assert_eq!(r.status, gst::NOT_EXTRACTABLE);
    let r = fx.wrap_req(false, 0, 1, mech::KW, wp(1, 1, 0), seg(OUT, 71), 0);
    assert_eq!((r.status, r.aux[0]), (gst::BUFFER_TOO_SMALL, 72));
    let r = fx.wrap_req(false, 0, 1, mech::KW, wp(1, 2, 0), seg(OUT, 100), 0);
    assert_eq!(r.status, status::SLOT_EMPTY);
    // Only AES keys wrap.
    let r = fx.wrap_req(false, 1, 1, mech::KW, wp(1, 1, 0), seg(OUT, 100), 0);
    assert_eq!(r.status, gst::KEY_KIND);
    // A LUKS key is never wrapped.
    fx.transfer[..32].copy_from_slice(&key(32, 7));
    let r = fx.run(&Request {
        op: abi::op::IMPORT_KEY,
        slot: 5,
        generation: 1,
        cipher: abi::cipher_id(CipherSpec::parse("aes-xts-plain64").unwrap()),
        key_len: 32,
        ..Request::ZERO
    });
    assert_eq!(r.status, status::OK);
    let r = fx.wrap_req(false, 0, 1, mech::KWP, wp(5, 1, 0), seg(OUT, 100), 0);
    assert_eq!(r.status, gst::KEY_KIND);
    // Unwrap into a full slot, of a bad length, or to a length the kind refuses.
    let r = fx.wrap_req(false, 0, 1, mech::KW, wp(1, 1, 0), seg(OUT, 100), 0);
    assert_eq!(r.status, status::OK);
    let r = fx.wrap_req(true, 0, 1, mech::KW, wp(2, 1, kind::XTS), seg(OUT, 72), 0);
    assert_eq!(r.status, status::SLOT_BUSY);
    let r = fx.wrap_req(true, 0, 1, mech::KW, wp(6, 1, kind::AES), seg(OUT, 72), 0);
    assert_eq!(r.status, status::BAD_KEY_LEN);
    assert_eq!(fx.slots[6].state.load(Ordering::Relaxed), 0);
    let r = fx.wrap_req(true, 0, 1, mech::KW, wp(6, 1, kind::AES), seg(OUT, 70), 0);
    assert_eq!(r.status, gst::DATA_LEN);
    let r = fx.wrap_req(true, 0, 1, mech::KW, wp(6, 1, kind::AES), seg(OUT, 96), 0);
    assert_eq!(r.status, gst::DATA_LEN);
}

#[test]
fn generate_makes_a_working_generic_key() {
    let mut fx = Fx::new();
    fx.transfer[..64].copy_from_slice(&[0x5a; 64]);
    let r = fx.run(&Request {
        op: op::GENERATE,
        slot: 0,
        generation: 3,
        cipher: kind::AES,
        key_len: 32,
        ..Request::ZERO
    });
    if r.status == crate::abi::keyslot::status::NO_ENTROPY {
        return; // no RDSEED/RDRAND on this CPU
    }
    assert_eq!(r.status, status::OK);
    assert!(fx.transfer.iter().all(|&b| b == 0));
    assert_eq!(
        fx.init(0, 3, mech::ECB, false, 1, &[], 0, 0, None).0,
        status::OK
    );
    // Not extractable unless asked.
    let w = WrapParams {
        target_slot: 0,
        target_generation: 3,
        kind: 0,
        reserved: 0,
    };
    let r = fx.wrap_req(false, 0, 3, mech::KW, w, seg(OUT, 100), 0);
    assert_eq!(r.status, gst::NOT_EXTRACTABLE);
}
