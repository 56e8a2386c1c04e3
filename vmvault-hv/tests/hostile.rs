//! Hostile requests: every malformed request gets the right status, the request changed
//! under the vault's feet is handled, and the vault keeps serving correct requests.

mod common;

use std::sync::atomic::{AtomicU64, Ordering};

use vault_vm::abi::{self, op, status, Request, Response, Segment, MAX_SEGMENTS, MAX_SLOTS};
use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vmvault_hv::{BackendKind, SlotId, Vault, WindowBuf};

struct Fixture {
    vault: Vault,
    slot: SlotId,
    key: Vec<u8>,
    buf: WindowBuf,
    canary: WindowBuf,
    canary_bytes: Vec<u8>,
}

fn fixture(backend: BackendKind, vcpus: usize) -> Option<Fixture> {
    let vault = common::open(backend, vcpus)?;
    let key = common::random_bytes(64);
    let slot = vault.import_key(spec(), &key).unwrap();
    let buf = vault.window().alloc(16384).unwrap();
    let mut canary = vault.window().alloc(16384).unwrap();
    let canary_bytes = common::random_bytes(16384);
    canary.copy_from_slice(&canary_bytes);
    Some(Fixture {
        vault,
        slot,
        key,
        buf,
        canary,
        canary_bytes,
    })
}

fn spec() -> CipherSpec {
    CipherSpec::parse("aes-xts-plain64").unwrap()
}

impl Fixture {
    fn good(&self) -> Request {
        let mut r = Request {
            op: op::ENCRYPT,
            slot: self.slot.index(),
            cipher: abi::cipher_id(spec()),
            generation: self.slot.generation(),
            sector_size: 4096,
            nsegs: 1,
            sector: 8,
            ..Request::ZERO
        };
        r.segs[0] = Segment {
            offset: self.buf.offset(),
            len: 4096,
        };
        r
    }

    fn raw(&self, lane: usize, r: &Request) -> Response {
        // SAFETY: no WindowBuf is borrowed during the call.
        unsafe { self.vault.submit_raw(lane, r) }.unwrap()
    }

    /// A correct request still gives the engine's answer on every vCPU, and nothing
    /// outside the request's range (the canary) changed.
    fn assert_healthy(&mut self) {
        let engine = SectorCipher::new(spec(), &self.key).unwrap();
        let geom = Geometry::new(4096, false, 0).unwrap();
        for lane in 0..self.vault.vcpus() {
            let plain = common::random_bytes(4096);
            self.buf[..4096].copy_from_slice(&plain);
            let resp = self.raw(lane, &self.good());
            assert_eq!(
                resp.status,
                status::OK,
                "good request refused: {}",
                status::name(resp.status)
            );
            assert_eq!(resp.bytes, 4096);
            let mut want = plain.clone();
            engine.encrypt(&geom, 8, &mut want).unwrap();
            assert!(
                self.buf[..4096] == want[..],
                "vault output differs from the engine after hostile input"
            );
        }
        assert!(
            self.canary[..] == self.canary_bytes[..],
            "the vault wrote outside the request's range"
        );
        self.vault.selftest().unwrap();
    }
}

fn expect(f: &mut Fixture, what: &str, want: u32, mutate: impl Fn(&mut Request)) {
    for lane in 0..f.vault.vcpus() {
        let mut r = f.good();
        r.id = 0xdead_0000 + lane as u64;
        mutate(&mut r);
        let resp = f.raw(lane, &r);
        assert_eq!(
            resp.status,
            want,
            "{what}: got {} want {}",
            status::name(resp.status),
            status::name(want)
        );
        assert_eq!(resp.id, r.id, "{what}: response id");
        assert_eq!(resp.bytes, 0, "{what}: bytes done on a refused request");
    }
    f.assert_healthy();
}

fn hostile_suite(backend: BackendKind, vcpus: usize) {
    let Some(mut f) = fixture(backend, vcpus) else {
        return;
    };
    let wlen = f.vault.window().len();
    let off = f.buf.offset();
    let empty_slot = MAX_SLOTS as u32 - 1;

    // Window bounds.
    expect(
        &mut f,
        "segment past the window end",
        status::OUT_OF_WINDOW,
        |r| {
            r.segs[0] = Segment {
                offset: wlen - 4096,
                len: 8192,
            }
        },
    );
    expect(
        &mut f,
        "segment starting at the window end",
        status::OUT_OF_WINDOW,
        |r| {
            r.segs[0] = Segment {
                offset: wlen,
                len: 4096,
            }
        },
    );
    expect(
        &mut f,
        "second segment out of the window",
        status::OUT_OF_WINDOW,
        |r| {
            r.nsegs = 2;
            r.segs[1] = Segment {
                offset: 1 << 40,
                len: 4096,
            };
        },
    );
    // Overflow.
    expect(&mut f, "offset + len overflows", status::OVERFLOW, |r| {
        r.segs[0] = Segment {
            offset: u64::MAX - 4095,
            len: 8192,
        }
    });
    expect(&mut f, "len = u64::MAX", status::OVERFLOW, |r| {
        r.segs[0] = Segment {
            offset: off + 4096,
            len: u64::MAX,
        }
    });
    expect(&mut f, "sector overflows", status::OVERFLOW, |r| {
        r.sector = u64::MAX - 7
    });
    expect(
        &mut f,
        "sector + iv_offset overflows",
        status::OVERFLOW,
        |r| {
            r.sector = 1 << 63;
            r.iv_offset = 1 << 63;
        },
    );
    // Alignment.
    expect(
        &mut f,
        "length not a whole sector",
        status::MISALIGNED,
        |r| r.segs[0].len = 4000,
    );
    expect(&mut f, "zero length", status::MISALIGNED, |r| {
        r.segs[0].len = 0
    });
    expect(
        &mut f,
        "first sector not sector aligned",
        status::MISALIGNED,
        |r| r.sector = 9,
    );
    expect(
        &mut f,
        "iv offset not sector aligned",
        status::MISALIGNED,
        |r| r.iv_offset = 1,
    );
    // Slots.
    expect(&mut f, "slot out of range", status::BAD_SLOT, |r| {
        r.slot = MAX_SLOTS as u32
    });
    expect(&mut f, "slot u32::MAX", status::BAD_SLOT, |r| {
        r.slot = u32::MAX
    });
    expect(&mut f, "empty slot", status::SLOT_EMPTY, |r| {
        r.slot = empty_slot
    });
    expect(
        &mut f,
        "cipher differs from the slot's",
        status::BAD_CIPHER,
        |r| r.cipher = abi::cipher_id(CipherSpec::parse("aes-cbc-plain64").unwrap()),
    );
    // Segment count.
    expect(&mut f, "no segments", status::TOO_MANY_SEGMENTS, |r| {
        r.nsegs = 0
    });
    expect(
        &mut f,
        "too many segments",
        status::TOO_MANY_SEGMENTS,
        |r| r.nsegs = MAX_SEGMENTS as u32 + 1,
    );
    expect(&mut f, "nsegs u32::MAX", status::TOO_MANY_SEGMENTS, |r| {
        r.nsegs = u32::MAX
    });
    // Other fields.
    expect(&mut f, "op 0", status::BAD_OP, |r| r.op = 0);
    expect(&mut f, "op 99", status::BAD_OP, |r| r.op = 99);
    expect(&mut f, "unknown cipher", status::BAD_CIPHER, |r| {
        r.cipher = 0x9999
    });
    expect(&mut f, "sector size 0", status::BAD_SECTOR_SIZE, |r| {
        r.sector_size = 0
    });
    expect(&mut f, "sector size 513", status::BAD_SECTOR_SIZE, |r| {
        r.sector_size = 513
    });
    expect(&mut f, "sector size 8192", status::BAD_SECTOR_SIZE, |r| {
        r.sector_size = 8192
    });
    expect(&mut f, "unknown flag", status::BAD_FLAGS, |r| {
        r.flags = 1 << 7
    });
    expect(&mut f, "stale generation", status::SLOT_EMPTY, |r| {
        r.generation ^= 1
    });
    expect(&mut f, "reserved field", status::BAD_FLAGS, |r| {
        r.reserved2 = 1
    });
    // Key operations.
    let busy = f.slot.index();
    expect(&mut f, "import into a used slot", status::SLOT_BUSY, |r| {
        *r = Request {
            op: op::IMPORT_KEY,
            slot: busy,
            cipher: r.cipher,
            key_len: 64,
            id: r.id,
            ..Request::ZERO
        }
    });
    expect(
        &mut f,
        "import with a bad key length",
        status::BAD_KEY_LEN,
        |r| {
            *r = Request {
                op: op::IMPORT_KEY,
                slot: empty_slot,
                cipher: r.cipher,
                key_len: 17,
                id: r.id,
                ..Request::ZERO
            }
        },
    );
    expect(
        &mut f,
        "import with key_len u32::MAX",
        status::BAD_KEY_LEN,
        |r| {
            *r = Request {
                op: op::IMPORT_KEY,
                slot: empty_slot,
                cipher: r.cipher,
                key_len: u32::MAX,
                id: r.id,
                ..Request::ZERO
            }
        },
    );
    expect(&mut f, "drop an empty slot", status::SLOT_EMPTY, |r| {
        *r = Request {
            op: op::DROP_KEY,
            slot: empty_slot,
            id: r.id,
            ..Request::ZERO
        }
    });
    let st = f.vault.stats().unwrap();
    assert!(
        st.errors >= 30 * f.vault.vcpus() as u64,
        "errors counted: {}",
        st.errors
    );
    assert_eq!(st.slots_used, 1);
}

/// A thread rewrites the request in shared memory while the vault serves it.
fn race_suite(backend: BackendKind, vcpus: usize, rounds: usize) {
    let Some(mut f) = fixture(backend, vcpus) else {
        return;
    };
    let wlen = f.vault.window().len();
    let flips = AtomicU64::new(0);
    let racer = |p: *mut Request| {
        let n = flips.fetch_add(1, Ordering::Relaxed);
        // SAFETY: `p` is the ring entry's request in shared memory; racing volatile
        // writes are what this test is about (the vault must copy, then validate).
        unsafe {
            match n % 8 {
                0 => std::ptr::write_volatile(&raw mut (*p).segs[0].len, u64::MAX),
                1 => std::ptr::write_volatile(&raw mut (*p).segs[0].offset, wlen + (n << 12)),
                2 => std::ptr::write_volatile(&raw mut (*p).nsegs, 1 << 20),
                3 => std::ptr::write_volatile(&raw mut (*p).slot, 1 << 30),
                4 => std::ptr::write_volatile(&raw mut (*p).sector_size, 3),
                5 => std::ptr::write_volatile(&raw mut (*p).segs[0].len, 4096),
                6 => std::ptr::write_volatile(&raw mut (*p).op, 1000),
                _ => std::ptr::write_volatile(&raw mut (*p).segs[0].offset, u64::MAX - 4095),
            }
        }
    };
    let (mut ok, mut refused) = (0, 0);
    for i in 0..rounds {
        let r = f.good();
        // SAFETY: no WindowBuf is borrowed during the call.
        let resp = unsafe { f.vault.submit_raw_racing(i, &r, &racer) }.unwrap();
        match resp.status {
            status::OK => ok += 1,
            status::OUT_OF_WINDOW
            | status::OVERFLOW
            | status::TOO_MANY_SEGMENTS
            | status::BAD_SLOT
            | status::BAD_SECTOR_SIZE
            | status::MISALIGNED
            | status::BAD_OP => refused += 1,
            s => panic!("unexpected status {} under a racing host", status::name(s)),
        }
        // The guest copy is consistent: a request it accepted did exactly one sector.
        if resp.status == status::OK {
            assert_eq!(resp.bytes, 4096);
        }
    }
    println!(
        "racing requests: {ok} served, {refused} refused, {} flips",
        flips.load(Ordering::Relaxed)
    );
    f.assert_healthy();
}

/// Random garbage requests: the vault must answer each and never fault.
fn garbage_suite(backend: BackendKind, vcpus: usize, n: usize) {
    let Some(mut f) = fixture(backend, vcpus) else {
        return;
    };
    let wlen = f.vault.window().len();
    let bytes = common::random_bytes(n * 64);
    let mut words = bytes
        .chunks_exact(8)
        .map(|c| u64::from_le_bytes(c.try_into().unwrap()));
    let mut next = move || words.next().unwrap_or(7);
    let (canary_lo, canary_hi) = (f.canary.offset(), f.canary.offset() + f.canary.len() as u64);
    let mut served = 0;
    for i in 0..n {
        let mut r = f.good();
        let pick = next();
        match pick % 6 {
            0 => r.op = (next() % 8) as u32,
            1 => r.slot = (next() % 70) as u32,
            2 => r.sector_size = [0, 512, 1024, 2048, 4096, 4097, 1 << 31][(next() % 7) as usize],
            3 => r.nsegs = (next() % 40) as u32,
            4 => r.cipher = (next() % 0x500) as u32,
            _ => r.flags = (next() % 4) as u32,
        }
        for s in r.segs.iter_mut().skip(1) {
            let w = next();
            *s = Segment {
                offset: w % (wlen * 2),
                len: (next() % 5) * 1024,
            };
        }
        // Never aim valid segments at the canary: it must stay intact.
        let hits_canary = r.segs[..(r.nsegs as usize).min(MAX_SEGMENTS)]
            .iter()
            .any(|s| s.offset < canary_hi && s.offset.saturating_add(s.len) > canary_lo);
        if hits_canary || r.op == op::IMPORT_KEY || r.op == op::DROP_KEY {
            continue;
        }
        let resp = f.raw(i, &r);
        if resp.status == status::OK {
            served += 1;
        }
    }
    println!("garbage requests: {served} of {n} accepted");
    f.assert_healthy();
}

#[test]
fn kvm_hostile_requests_one_vcpu() {
    hostile_suite(BackendKind::Kvm, 1);
}

#[test]
fn kvm_hostile_requests_two_vcpus() {
    hostile_suite(BackendKind::Kvm, 2);
}

#[test]
fn soft_hostile_requests() {
    hostile_suite(BackendKind::Soft, 1);
}

#[test]
fn kvm_request_rewritten_while_the_vault_reads_it() {
    race_suite(BackendKind::Kvm, 2, 3000);
}

#[test]
fn soft_request_rewritten_while_being_read() {
    race_suite(BackendKind::Soft, 1, 300);
}

#[test]
fn kvm_garbage_requests() {
    garbage_suite(BackendKind::Kvm, 2, 5000);
}
