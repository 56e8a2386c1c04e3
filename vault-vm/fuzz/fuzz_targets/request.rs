//! Fuzzes the vault's request decoder/validator and the request handler behind it.
//!
//! Input: 8 bytes of window length, then the raw bytes of a `Request` (zero padded).
//! Checks: `validate` never panics; an accepted request satisfies every invariant the
//! executor relies on; `Service::handle` on a real (heap) window never panics, never
//! writes outside the window and reports bytes only for accepted requests.
#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use vault_vm::abi::{self, status, validate, Request, Validated, MAX_SLOTS};
use vault_vm::engine::CipherSpec;
use vault_vm::service::{Counters, Service, SlotCell};

const WINDOW: usize = 1 << 20;
const GUARD: usize = 4096;

struct Env {
    slots: &'static [SlotCell; MAX_SLOTS],
    mem: &'static mut [u8],
    transfer: &'static mut [u8],
}

fn env() -> &'static std::sync::Mutex<Env> {
    static ENV: OnceLock<std::sync::Mutex<Env>> = OnceLock::new();
    ENV.get_or_init(|| {
        let slots: &'static [SlotCell; MAX_SLOTS] =
            Box::leak(Box::new([SlotCell::EMPTY; MAX_SLOTS]));
        let mem = Box::leak(vec![0xa5u8; WINDOW + 2 * GUARD].into_boxed_slice());
        let transfer = Box::leak(vec![0u8; abi::TRANSFER_SIZE as usize].into_boxed_slice());
        // Slot 0 holds an XTS key, slot 1 a CBC-ESSIV key.
        let e = Env {
            slots,
            mem,
            transfer,
        };
        for (slot, spec, len) in [
            (0u32, "aes-xts-plain64", 64u32),
            (1, "aes-cbc-essiv:sha256", 32),
        ] {
            let spec = CipherSpec::parse(spec).unwrap();
            let svc = service(&e);
            for (i, b) in e.transfer_ptr_slice(len as usize).iter_mut().enumerate() {
                *b = i as u8;
            }
            let req = Request {
                op: abi::op::IMPORT_KEY,
                slot,
                cipher: abi::cipher_id(spec),
                key_len: len,
                ..Request::ZERO
            };
            assert_eq!(
                svc.handle(&req, &mut Counters::default()).status,
                status::OK
            );
        }
        std::sync::Mutex::new(e)
    })
}

impl Env {
    fn transfer_ptr_slice(&self, n: usize) -> &mut [u8] {
        // SAFETY: test harness; the transfer buffer is leaked and only used under the mutex.
        unsafe { std::slice::from_raw_parts_mut(self.transfer.as_ptr().cast_mut(), n) }
    }
}

fn service(e: &Env) -> Service<'static> {
    /// The Argon2 job board (KDF_JOIN finds no computation on it: it answers 0).
    static JOB: vault_vm::argon2::Job = vault_vm::argon2::Job::new();
    // SAFETY: leaked buffers of the stated sizes; the window sits between two guard areas.
    unsafe {
        Service::new(
            e.slots,
            &JOB,
            e.mem.as_ptr().add(GUARD).cast_mut(),
            WINDOW as u64,
            e.transfer.as_ptr().cast_mut(),
            // No scratch: Argon2 keyslot requests are refused (KDF_LIMIT).
            std::ptr::null_mut(),
        )
    }
}

fuzz_target!(|data: &[u8]| {
    let mut raw = [0u8; core::mem::size_of::<Request>()];
    let n = data.len().saturating_sub(8).min(raw.len());
    if data.len() > 8 {
        raw[..n].copy_from_slice(&data[8..8 + n]);
    }
    // SAFETY: Request is plain old data (integers only); any bit pattern is valid.
    let staged: Request = unsafe { core::ptr::read_unaligned(raw.as_ptr().cast()) };
    // The decoder the vault runs on ring memory: head, then the named segments only.
    // SAFETY: `staged` is a live request.
    let req = unsafe { abi::copy_request(&staged) };
    for s in &req.segs[(req.nsegs as usize).min(abi::MAX_SEGMENTS)..] {
        assert_eq!(
            *s,
            abi::Segment::default(),
            "copied a segment nsegs does not name"
        );
    }
    let wlen = data
        .get(..8)
        .map(|b| u64::from_le_bytes(b.try_into().unwrap()))
        .unwrap_or(0);

    // 1. The validator alone, with an arbitrary window length.
    if let Ok(Validated::Crypt {
        geom,
        sector,
        nsegs,
        segs,
        bytes,
        ..
    }) = validate(&req, wlen)
    {
        assert!(nsegs >= 1 && nsegs <= abi::MAX_SEGMENTS);
        let mut sum = 0u64;
        for s in &segs[..nsegs] {
            let end = s
                .offset
                .checked_add(s.len)
                .expect("accepted an overflowing segment");
            assert!(end <= wlen, "accepted a segment outside the window");
            assert!(s.len > 0 && s.len % u64::from(geom.sector_size) == 0);
            sum += s.len;
        }
        assert_eq!(sum, bytes);
        assert!(sector
            .checked_add(bytes / 512)
            .and_then(|x| x.checked_add(geom.iv_offset))
            .is_some());
    }

    // 2. The handler on a real window (IMPORT/DROP excluded: they would change the
    //    fixture's slots).
    if matches!(req.op, abi::op::IMPORT_KEY | abi::op::DROP_KEY) {
        return;
    }
    let e = env().lock().unwrap();
    let svc = service(&e);
    let resp = svc.handle(&req, &mut Counters::default());
    assert_eq!(resp.id, req.id);
    if resp.status != status::OK {
        assert_eq!(resp.bytes, 0);
    }
    assert!(
        e.mem[..GUARD].iter().all(|&b| b == 0xa5),
        "wrote below the window"
    );
    assert!(
        e.mem[GUARD + WINDOW..].iter().all(|&b| b == 0xa5),
        "wrote above the window"
    );
});
