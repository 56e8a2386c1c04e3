//! The host/vault contract: request and response layouts, status codes, the ring
//! protocol and the guest memory map.
//!
//! Everything the host and the vault guest exchange is defined here and nowhere else.
//! All shared types are `#[repr(C)]` with compile-time size and offset checks, so the
//! layout cannot drift between the two sides.
//!
//! # Ring protocol
//!
//! Each vCPU owns one [`Ring`] in shared memory. An entry moves through
//! [`ENTRY_FREE`] → [`ENTRY_CLAIMED`] (host thread owns it) → [`ENTRY_SUBMITTED`]
//! (request written, handed to the vault) → [`ENTRY_DONE`] (response written by the
//! vault) → [`ENTRY_FREE`] (host thread read the response). The vault copies the
//! request out of the entry *before* it looks at any field, then validates the copy
//! ([`validate`]); nothing the host changes afterwards can affect the request.
//!
//! A vCPU with no work spins for a while, then sets [`RingHeader::sleeping`], checks
//! the ring once more and exits to the host with an MMIO write of [`EXIT_SLEEP`] to
//! [`DOORBELL_GPA`]. The host re-enters `KVM_RUN` when a request is submitted to a
//! ring whose `sleeping` word is set (from the vCPU's own thread, or from the submitting
//! thread itself). The length of the idle spin is the host's [`RingHeader::idle_spins`]
//! hint, clamped by the vault.

pub mod generic;
pub mod keyslot;
mod validate;

pub use validate::{check_keyslot_params, validate, CheckedParams, Validated};

use core::mem::{offset_of, size_of};
use core::sync::atomic::{AtomicU32, AtomicU64};

use crate::engine::{CipherSpec, IvMode, Mode};

// ---------------------------------------------------------------------------------
// Memory map (guest physical == guest virtual, identity mapped)
// ---------------------------------------------------------------------------------

/// Page size of the guest page tables (4 KiB pages below [`WINDOW_GPA`]).
pub const PAGE_SIZE: u64 = 0x1000;
/// Guest physical address of the PML4; the page tables occupy
/// [`PAGE_TABLES_GPA`]`..`[`PAGE_TABLES_END`] and are not mapped into the guest.
pub const PAGE_TABLES_GPA: u64 = 0x1000;
/// End of the page-table area.
pub const PAGE_TABLES_END: u64 = 0x10_0000;
/// Where the guest image is loaded and linked (code, rodata, data, bss).
/// Private to the vault: key slots live in its `.bss`.
pub const IMAGE_GPA: u64 = 0x10_0000;
/// Largest image including `.bss`.
pub const IMAGE_MAX: u64 = 0x30_0000;
/// Base of the per-vCPU stacks (private). vCPU `i` owns
/// `STACKS_GPA + i * STACK_STRIDE .. + STACK_STRIDE`; the lowest page of each stride is an
/// unmapped guard page.
pub const STACKS_GPA: u64 = 0x40_0000;
/// Distance between two vCPU stacks, guard page included.
pub const STACK_STRIDE: u64 = 0x2_0000;
/// Largest number of vCPUs (and rings).
pub const MAX_VCPUS: usize = 8;
/// Start of the host-shared area: the key transfer page followed by the rings.
pub const SHARED_GPA: u64 = 0x60_0000;
/// The one-shot key transfer page (shared; the vault zeroes it after each import).
pub const TRANSFER_GPA: u64 = SHARED_GPA;
/// Size of the transfer page.
pub const TRANSFER_SIZE: u64 = PAGE_SIZE;
/// First ring; ring `i` is at `RINGS_GPA + i * RING_STRIDE`.
pub const RINGS_GPA: u64 = SHARED_GPA + 0x1_0000;
/// Distance between two rings.
pub const RING_STRIDE: u64 = 0x8000;
/// End of the shared area.
pub const SHARED_END: u64 = RINGS_GPA + MAX_VCPUS as u64 * RING_STRIDE;
/// Size of the guest RAM memslot (the `vmvault-guest` memfd).
pub const GUEST_RAM_SIZE: u64 = 0x80_0000;
/// MMIO doorbell: a guest physical address with no memslot behind it. A 4-byte write
/// here exits to the host; the value is one of the `EXIT_*` codes, the vCPU index in
/// bits 8..16.
pub const DOORBELL_GPA: u64 = 0x100_0000;
/// Guest address of the data window (a second memslot: the host's I/O buffer arena).
pub const WINDOW_GPA: u64 = 0x1_0000_0000;
/// Largest data window (mapped with 2 MiB pages).
pub const WINDOW_MAX: u64 = 64 << 30;
/// Granule of the window size (the window is mapped with 2 MiB pages).
pub const WINDOW_ALIGN: u64 = 2 << 20;

/// Exit code: the vCPU found no work and sleeps until the host re-enters it.
pub const EXIT_SLEEP: u32 = 1;
/// Exit code: the vCPU saw [`RingHeader::stop`] and stopped for good.
pub const EXIT_STOPPED: u32 = 2;
/// Exit code: the guest hit a panic (a bug); the vault is unusable.
pub const EXIT_PANIC: u32 = 3;
/// Exit code: the vCPU finished start-up (sent once, before the first poll).
pub const EXIT_READY: u32 = 4;

/// Boot flag (in `r8` at the guest's entry): keep the vector registers as they are
/// instead of clearing them after each batch and before each exit. Honoured only by a
/// guest image built with vault-vm's `test-api` feature, for the positive control of the
/// register residency test; a normal image ignores every boot flag.
pub const BOOT_KEEP_VECTOR_REGS: u64 = 1;
/// Boot flag (test builds only, like [`BOOT_KEEP_VECTOR_REGS`]): skip the clear before
/// each exit but keep the one at the end of each batch, so a test can check that the
/// end-of-batch clear alone leaves no round key for an exit while the vCPU idles.
pub const BOOT_NO_EXIT_CLEAR: u64 = 2;

/// Magic number at the start of the guest image header.
pub const IMAGE_MAGIC: u64 = 0x3176_5456_4c41_5656; // "VVALTVv1"

/// Header at the start of the flat guest image (written by the linker script).
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct ImageHeader {
    /// [`IMAGE_MAGIC`].
    pub magic: u64,
    /// Entry point (guest virtual address).
    pub entry: u64,
    /// End of the image in memory, `.bss` included (guest virtual address).
    pub end: u64,
    /// ABI version the image was built for ([`ABI_VERSION`]).
    pub abi_version: u64,
    /// End of code and read-only data (page aligned); mapped without write access.
    pub text_end: u64,
}

const _: () = assert!(size_of::<ImageHeader>() == 40);

/// Version of this ABI; the host refuses an image built for another one.
pub const ABI_VERSION: u64 = 1;

/// Top of the stack of vCPU `i` (exclusive).
pub const fn stack_top(i: usize) -> u64 {
    STACKS_GPA + (i as u64 + 1) * STACK_STRIDE
}

/// Lowest usable stack address of vCPU `i` (above its guard page).
pub const fn stack_bottom(i: usize) -> u64 {
    STACKS_GPA + i as u64 * STACK_STRIDE + PAGE_SIZE
}

/// Guest address of ring `i`.
pub const fn ring_gpa(i: usize) -> u64 {
    RINGS_GPA + i as u64 * RING_STRIDE
}

const _: () = assert!(IMAGE_GPA + IMAGE_MAX <= STACKS_GPA);
const _: () = assert!(STACKS_GPA + MAX_VCPUS as u64 * STACK_STRIDE <= SHARED_GPA);
const _: () = assert!(SHARED_END <= GUEST_RAM_SIZE);
const _: () = assert!(DOORBELL_GPA >= GUEST_RAM_SIZE && DOORBELL_GPA < WINDOW_GPA);
const _: () = assert!(TRANSFER_GPA + TRANSFER_SIZE <= RINGS_GPA);
const _: () = assert!(size_of::<Ring>() as u64 <= RING_STRIDE);

// ---------------------------------------------------------------------------------
// Requests and responses
// ---------------------------------------------------------------------------------

/// Operation codes ([`Request::op`]).
pub mod op {
    /// Copy a key from the transfer page into a slot and expand it.
    pub const IMPORT_KEY: u32 = 1;
    /// Wipe a slot.
    pub const DROP_KEY: u32 = 2;
    /// Encrypt the request's segments in place.
    pub const ENCRYPT: u32 = 3;
    /// Decrypt the request's segments in place.
    pub const DECRYPT: u32 = 4;
    /// Run the known-answer self test inside the vault.
    pub const SELFTEST: u32 = 5;
    /// Report this vCPU's counters in [`super::Response::aux`].
    pub const STATS: u32 = 6;
}

/// Status codes ([`Response::status`]).
pub mod status {
    /// Success.
    pub const OK: u32 = 0;
    /// Unknown operation code.
    pub const BAD_OP: u32 = 1;
    /// Slot index out of range.
    pub const BAD_SLOT: u32 = 2;
    /// The slot holds no key (of the request's generation).
    pub const SLOT_EMPTY: u32 = 3;
    /// IMPORT_KEY into a slot that already holds a key.
    pub const SLOT_BUSY: u32 = 4;
    /// A segment reaches outside the data window.
    pub const OUT_OF_WINDOW: u32 = 5;
    /// An offset, length or sector computation overflows.
    pub const OVERFLOW: u32 = 6;
    /// A segment length is zero or not a whole number of sectors, or the first sector or
    /// IV offset is not aligned to the sector size.
    pub const MISALIGNED: u32 = 7;
    /// Zero segments or more than [`super::MAX_SEGMENTS`].
    pub const TOO_MANY_SEGMENTS: u32 = 8;
    /// Unknown cipher id, or not the cipher the slot was imported with.
    pub const BAD_CIPHER: u32 = 9;
    /// Key length does not fit the cipher.
    pub const BAD_KEY_LEN: u32 = 10;
    /// Sector size is not 512, 1024, 2048 or 4096.
    pub const BAD_SECTOR_SIZE: u32 = 11;
    /// The known-answer self test failed.
    pub const SELFTEST_FAILED: u32 = 12;
    /// Reserved fields or flags were not zero.
    pub const BAD_FLAGS: u32 = 13;
    /// The engine refused the request (should not happen after validation).
    pub const ENGINE_ERROR: u32 = 14;

    /// Short name of a status code.
    pub fn name(s: u32) -> &'static str {
        match s {
            OK => "OK",
            BAD_OP => "BAD_OP",
            BAD_SLOT => "BAD_SLOT",
            SLOT_EMPTY => "SLOT_EMPTY",
            SLOT_BUSY => "SLOT_BUSY",
            OUT_OF_WINDOW => "OUT_OF_WINDOW",
            OVERFLOW => "OVERFLOW",
            MISALIGNED => "MISALIGNED",
            TOO_MANY_SEGMENTS => "TOO_MANY_SEGMENTS",
            BAD_CIPHER => "BAD_CIPHER",
            BAD_KEY_LEN => "BAD_KEY_LEN",
            BAD_SECTOR_SIZE => "BAD_SECTOR_SIZE",
            SELFTEST_FAILED => "SELFTEST_FAILED",
            BAD_FLAGS => "BAD_FLAGS",
            ENGINE_ERROR => "ENGINE_ERROR",
            _ => "UNKNOWN",
        }
    }
}

/// Request flag: IVs count sector-size units (dm-crypt `iv_large_sectors`).
pub const FLAG_IV_LARGE_SECTORS: u32 = 1;
/// All flags this ABI version knows.
pub const KNOWN_FLAGS: u32 = FLAG_IV_LARGE_SECTORS;

/// Number of key slots in the vault.
pub const MAX_SLOTS: usize = 64;
/// Largest number of segments in one request.
pub const MAX_SEGMENTS: usize = 32;
/// Largest key (XTS with two AES-256 keys).
pub const MAX_KEY_LEN: usize = 64;

/// One (offset, length) piece of the data window. Offsets are relative to the window.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Segment {
    /// Byte offset inside the data window.
    pub offset: u64,
    /// Length in bytes; a whole number of sectors.
    pub len: u64,
}

/// A request as it sits in a ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug)]
pub struct Request {
    /// Operation ([`op`]).
    pub op: u32,
    /// Key slot index.
    pub slot: u32,
    /// Cipher id ([`cipher_id`]); for ENCRYPT/DECRYPT it must match the slot's.
    pub cipher: u32,
    /// Sector size in bytes.
    pub sector_size: u32,
    /// `FLAG_*` bits.
    pub flags: u32,
    /// Number of valid entries in [`Request::segs`].
    pub nsegs: u32,
    /// IMPORT_KEY: key length in bytes (the key is in the transfer page).
    pub key_len: u32,
    /// Slot generation. IMPORT_KEY tags the slot with it; ENCRYPT, DECRYPT and DROP_KEY
    /// must name the same generation, so a stale handle can never reach a newer key
    /// imported into the same slot (it gets SLOT_EMPTY).
    pub generation: u32,
    /// Request id, echoed in the response.
    pub id: u64,
    /// First sector (512-byte units) of the first segment.
    pub sector: u64,
    /// IV offset (512-byte units), added to the sector before deriving the IV.
    pub iv_offset: u64,
    /// Must be zero.
    pub reserved2: u64,
    /// Segments, processed in order; sectors are consecutive across segments.
    pub segs: [Segment; MAX_SEGMENTS],
}

impl Request {
    /// An all-zero request (op 0 is invalid).
    pub const ZERO: Request = Request {
        op: 0,
        slot: 0,
        cipher: 0,
        sector_size: 0,
        flags: 0,
        nsegs: 0,
        key_len: 0,
        generation: 0,
        id: 0,
        sector: 0,
        iv_offset: 0,
        reserved2: 0,
        segs: [Segment { offset: 0, len: 0 }; MAX_SEGMENTS],
    };
}

/// Size of the fixed part of a [`Request`] (everything before the segments).
pub const REQUEST_HEAD: usize = 64;

/// Copies a request out of shared memory: the fixed part, then only the segments the
/// copied `nsegs` names (the rest stay zero). Every byte is read exactly once, so the
/// copy is self-consistent whatever the other side does meanwhile; validate the copy.
///
/// # Safety
/// `src` must be valid for reads of a whole `Request` (it may be concurrently written).
pub unsafe fn copy_request(src: *const Request) -> Request {
    let mut head = [0u64; REQUEST_HEAD / 8];
    for (i, w) in head.iter_mut().enumerate() {
        // SAFETY: within the request (contract of this function).
        *w = unsafe { core::ptr::read_volatile(src.cast::<u64>().add(i)) };
    }
    let mut req = Request::ZERO;
    // SAFETY: `Request` starts with exactly REQUEST_HEAD bytes of integer fields (asserted
    // below); any bit pattern is valid for them.
    unsafe {
        core::ptr::copy_nonoverlapping(
            head.as_ptr().cast::<u8>(),
            (&raw mut req).cast::<u8>(),
            REQUEST_HEAD,
        )
    };
    let n = (req.nsegs as usize).min(MAX_SEGMENTS);
    for i in 0..n {
        // SAFETY: i < MAX_SEGMENTS, inside the request.
        req.segs[i] = unsafe { core::ptr::read_volatile(&raw const (*src).segs[i]) };
    }
    req
}

/// Writes a request into shared memory: the fixed part and the `nsegs` segments in use
/// (the counterpart of [`copy_request`]; the vault never reads the others).
///
/// # Safety
/// `dst` must be valid for writes of a whole `Request`.
pub unsafe fn write_request(dst: *mut Request, req: &Request) {
    let n = (req.nsegs as usize).min(MAX_SEGMENTS);
    // SAFETY: the head and n segments are inside `*dst` (contract of this function).
    unsafe {
        core::ptr::copy_nonoverlapping(
            (req as *const Request).cast::<u8>(),
            dst.cast::<u8>(),
            REQUEST_HEAD + n * size_of::<Segment>(),
        )
    };
}

impl Default for Request {
    fn default() -> Self {
        Self::ZERO
    }
}

const _: () = assert!(size_of::<Segment>() == 16);
const _: () = assert!(offset_of!(Request, op) == 0);
const _: () = assert!(offset_of!(Request, slot) == 4);
const _: () = assert!(offset_of!(Request, cipher) == 8);
const _: () = assert!(offset_of!(Request, sector_size) == 12);
const _: () = assert!(offset_of!(Request, flags) == 16);
const _: () = assert!(offset_of!(Request, nsegs) == 20);
const _: () = assert!(offset_of!(Request, key_len) == 24);
const _: () = assert!(offset_of!(Request, generation) == 28);
const _: () = assert!(offset_of!(Request, id) == 32);
const _: () = assert!(offset_of!(Request, sector) == 40);
const _: () = assert!(offset_of!(Request, iv_offset) == 48);
const _: () = assert!(offset_of!(Request, reserved2) == 56);
const _: () = assert!(offset_of!(Request, segs) == 64);
const _: () = assert!(size_of::<Request>() == 64 + 16 * MAX_SEGMENTS);
const _: () = assert!(offset_of!(Request, segs) == REQUEST_HEAD);

/// A response as the vault writes it into a ring entry.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Response {
    /// [`status`] code.
    pub status: u32,
    /// Index of the offending segment for segment errors, else 0.
    pub detail: u32,
    /// Id of the request this answers.
    pub id: u64,
    /// Bytes encrypted or decrypted (STATS: this vCPU's byte counter).
    pub bytes: u64,
    /// Operation-specific values (STATS: see [`stats`]; SELFTEST: the engine backend).
    pub aux: [u64; 4],
}

const _: () = assert!(offset_of!(Response, status) == 0);
const _: () = assert!(offset_of!(Response, detail) == 4);
const _: () = assert!(offset_of!(Response, id) == 8);
const _: () = assert!(offset_of!(Response, bytes) == 16);
const _: () = assert!(offset_of!(Response, aux) == 24);
const _: () = assert!(size_of::<Response>() == 56);

/// Indexes of [`Response::aux`] for a STATS response (counters of the answering vCPU,
/// except `SLOTS_USED` which is vault-wide; its byte counter is in [`Response::bytes`]).
pub mod stats {
    /// Requests served by this vCPU.
    pub const REQUESTS: usize = 0;
    /// Requests refused with an error status.
    pub const ERRORS: usize = 1;
    /// Key slots in use (vault-wide).
    pub const SLOTS_USED: usize = 2;
    /// Times this vCPU went to sleep.
    pub const SLEEPS: usize = 3;
}

// ---------------------------------------------------------------------------------
// Rings
// ---------------------------------------------------------------------------------

/// Entry state: free for any host thread to claim.
pub const ENTRY_FREE: u32 = 0;
/// Entry state: claimed by a host thread that is writing a request (vault ignores it).
pub const ENTRY_CLAIMED: u32 = 1;
/// Entry state: request ready for the vault.
pub const ENTRY_SUBMITTED: u32 = 2;
/// Entry state: response ready for the host (the vault leaves a request SUBMITTED while
/// it works on it, so the state line moves between the CPUs only twice per request).
pub const ENTRY_DONE: u32 = 4;

/// Largest idle spin count the vault accepts in [`RingHeader::idle_spins`] (about 25 ms
/// of polling at ~25 ns per spin).
pub const MAX_IDLE_SPINS: u64 = 1 << 20;

/// Entries per ring.
pub const RING_ENTRIES: usize = 16;

/// Ring header: counters and flags, each on its own cache line.
#[repr(C, align(64))]
pub struct RingHeader {
    /// Requests submitted by the host (host writes, informational).
    pub head: AtomicU64,
    _pad0: [u8; 56],
    /// Requests completed by the vault (vault writes, informational).
    pub tail: AtomicU64,
    _pad1: [u8; 56],
    /// 1 while the vCPU is (about to be) outside the guest waiting for work. Set by the
    /// vault before its sleep exit, cleared by the host before it re-enters the vCPU.
    pub sleeping: AtomicU32,
    /// Idle spins before the next sleep exit (host writes, the vault reads it every time
    /// it idles; 0 = the boot value). The host shortens it when a submitting thread runs
    /// the vCPU itself and lengthens it while requests keep arriving; the vault clamps
    /// it to [`MAX_IDLE_SPINS`].
    pub idle_spins: AtomicU32,
    /// Most requests to serve before the next sleep exit even if more are waiting (host
    /// writes; 0 = no limit). A submitting thread that runs the vCPU itself sets it so
    /// that it is not kept in the guest indefinitely serving other threads' requests.
    pub episode_max: AtomicU32,
    _pad2: [u8; 52],
    /// Non-zero: the vCPU must stop (host writes).
    pub stop: AtomicU32,
    _pad3: [u8; 60],
}

/// One ring entry: the state word and the response share the first cache line (the
/// host polls it and then reads the response without another transfer), then the
/// request.
#[repr(C, align(64))]
pub struct RingEntry {
    /// `ENTRY_*` state.
    pub state: AtomicU32,
    _pad: u32,
    /// The response (vault writes it before it sets `DONE`).
    pub resp: Response,
    /// The request (host writes it while `CLAIMED`).
    pub req: Request,
}

/// A ring: header plus [`RING_ENTRIES`] entries.
#[repr(C)]
pub struct Ring {
    /// Counters and flags.
    pub header: RingHeader,
    /// Entries.
    pub entries: [RingEntry; RING_ENTRIES],
}

impl core::fmt::Debug for RingHeader {
    /// The counters and flags as loaded now (relaxed), without the padding.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let r = core::sync::atomic::Ordering::Relaxed;
        f.debug_struct("RingHeader")
            .field("head", &self.head.load(r))
            .field("tail", &self.tail.load(r))
            .field("sleeping", &self.sleeping.load(r))
            .field("idle_spins", &self.idle_spins.load(r))
            .field("episode_max", &self.episode_max.load(r))
            .field("stop", &self.stop.load(r))
            .finish()
    }
}

impl core::fmt::Debug for RingEntry {
    /// Only the state word: the request and response are plain memory the other side may
    /// be writing, so they are not read here (copy them out with [`copy_request`]).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("RingEntry")
            .field(
                "state",
                &self.state.load(core::sync::atomic::Ordering::Relaxed),
            )
            .finish_non_exhaustive()
    }
}

impl core::fmt::Debug for Ring {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Ring")
            .field("header", &self.header)
            .field("entries", &self.entries)
            .finish()
    }
}

const _: () = assert!(size_of::<RingHeader>() == 256);
const _: () = assert!(offset_of!(RingHeader, tail) == 64);
const _: () = assert!(offset_of!(RingHeader, sleeping) == 128);
const _: () = assert!(offset_of!(RingHeader, idle_spins) == 132);
const _: () = assert!(offset_of!(RingHeader, episode_max) == 136);
const _: () = assert!(offset_of!(RingHeader, stop) == 192);
const _: () = assert!(offset_of!(RingEntry, resp) == 8);
const _: () = assert!(offset_of!(RingEntry, req) == 64);
const _: () = assert!(size_of::<RingEntry>() == 64 + size_of::<Request>());
const _: () = assert!(offset_of!(Ring, entries) == 256);

// ---------------------------------------------------------------------------------
// Cipher ids
// ---------------------------------------------------------------------------------

/// Encodes a cipher spec for [`Request::cipher`]: mode in bits 0..8, IV mode in 8..16.
pub const fn cipher_id(spec: CipherSpec) -> u32 {
    (spec.mode as u32) | ((spec.iv as u32) << 8)
}

/// Decodes [`Request::cipher`]; `None` for unknown or unsupported combinations.
pub const fn cipher_from_id(id: u32) -> Option<CipherSpec> {
    let mode = match id & 0xff {
        1 => Mode::Xts,
        2 => Mode::Cbc,
        3 => Mode::Ecb,
        _ => return None,
    };
    let iv = match id >> 8 {
        0 => IvMode::Null,
        1 => IvMode::Plain,
        2 => IvMode::Plain64,
        3 => IvMode::EssivSha256,
        _ => return None,
    };
    let ok = matches!(
        (mode, iv),
        (Mode::Xts, IvMode::Plain | IvMode::Plain64)
            | (
                Mode::Cbc,
                IvMode::Plain | IvMode::Plain64 | IvMode::EssivSha256
            )
            | (Mode::Ecb, IvMode::Null)
    );
    if ok {
        Some(CipherSpec { mode, iv })
    } else {
        None
    }
}

/// Valid key lengths for a cipher (mirrors the engine's rule).
pub const fn key_len_ok(spec: CipherSpec, len: usize) -> bool {
    match spec.mode {
        Mode::Xts => matches!(len, 32 | 48 | 64),
        Mode::Cbc | Mode::Ecb => matches!(len, 16 | 24 | 32),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn copy_request_takes_head_and_named_segments_only() {
        let mut src = Request {
            op: op::ENCRYPT,
            nsegs: 2,
            id: 9,
            sector: 77,
            ..Request::ZERO
        };
        for (i, s) in src.segs.iter_mut().enumerate() {
            *s = Segment {
                offset: i as u64,
                len: 512,
            };
        }
        // SAFETY: a live request.
        let c = unsafe { copy_request(&src) };
        assert_eq!((c.op, c.nsegs, c.id, c.sector), (op::ENCRYPT, 2, 9, 77));
        assert_eq!(
            c.segs[1],
            Segment {
                offset: 1,
                len: 512
            }
        );
        assert_eq!(c.segs[2], Segment::default());
        src.nsegs = u32::MAX;
        // SAFETY: as above.
        let c = unsafe { copy_request(&src) };
        assert_eq!(c.nsegs, u32::MAX);
        assert_eq!(c.segs[MAX_SEGMENTS - 1].offset, MAX_SEGMENTS as u64 - 1);
        let mut dst = Request::ZERO;
        let mut one = src;
        one.nsegs = 1;
        // SAFETY: a live request.
        unsafe { write_request(&mut dst, &one) };
        assert_eq!((dst.nsegs, dst.segs[0].len, dst.segs[1].len), (1, 512, 0));
    }

    #[test]
    fn cipher_ids_round_trip() {
        for s in [
            "aes-xts-plain64",
            "aes-xts-plain",
            "aes-cbc-essiv:sha256",
            "aes-cbc-plain64",
            "aes-cbc-plain",
            "aes-ecb",
        ] {
            let spec = CipherSpec::parse(s).unwrap();
            assert_eq!(cipher_from_id(cipher_id(spec)), Some(spec), "{s}");
        }
        assert_eq!(cipher_from_id(0), None);
        assert_eq!(cipher_from_id(0x0301), None); // xts-essiv
        assert_eq!(cipher_from_id(0x0003 | 0x100), None); // ecb-plain
        assert_eq!(cipher_from_id(0xffff_ffff), None);
    }
}
