//! Generic AES operations: the part of the contract the PKCS#11 token (issue 15) is built
//! on. Keys of two *generic kinds* ([`kind::AES`], [`kind::XTS`]) are created in the vault
//! (imported, generated or unwrapped) and serve ECB, CBC, CTR and GCM through
//! *operation contexts* that live in vault-private memory, XTS over whole data units,
//! and AES key wrap (RFC 3394 / RFC 5649) of other generic keys.
//!
//! # Key kinds keep LUKS keys and token keys apart
//!
//! A generic key's slot holds the kind id as its cipher id. Kind ids decode to no sector
//! cipher ([`super::cipher_from_id`] is `None`), so ENCRYPT/DECRYPT, SEAL and DIGEST
//! refuse generic keys (`BAD_CIPHER`), and every generic operation refuses a slot that
//! holds a sector (LUKS volume) key ([`status::KEY_KIND`]). Only the generic ops create
//! generic keys, so only they can set the *extractable* slot flag
//! ([`FLAG_EXTRACTABLE`]); a LUKS key is never extractable and never wrapped.
//!
//! # Requests
//!
//! All use the ordinary [`Request`](super::Request). `sector_size`, `iv_offset` and
//! `reserved2` must be zero (XTS: `sector_size` is the data unit size), and so must every
//! field a row leaves empty; `flags` takes only the bits the row names.
//!
//! | op                    | `slot`/`generation`  | `cipher`     | `key_len` | `flags`      | `sector`        | segments                                      |
//! |-----------------------|----------------------|--------------|-----------|--------------|-----------------|-----------------------------------------------|
//! | [`op::IMPORT`]        | empty slot / tag     | [`kind`]     | key bytes | EXTRACTABLE  | —               | none (key in the transfer page)               |
//! | [`op::GENERATE`]      | empty slot / tag     | [`kind`]     | key bytes | EXTRACTABLE  | —               | none (host entropy in the transfer page)      |
//! | [`op::INIT`]          | key (AES)            | [`mech`]     | —         | DECRYPT      | owner           | `[0]` [`InitParams`], `[1]` AAD (GCM, opt.)   |
//! | [`op::UPDATE`]        | context              | —            | —         | —            | owner           | 1..=32 data segments, in place, in order      |
//! | [`op::FINAL`]         | context              | —            | —         | —            | owner           | GCM: `[0]` tag (encrypt: out, decrypt: in)    |
//! | [`op::ABORT`]         | context              | —            | —         | —            | owner           | none                                          |
//! | [`op::XTS`]           | key (XTS)            | —            | —         | DECRYPT      | first data unit | 1..=32 segments of whole data units, in place |
//! | [`op::WRAP_KEY`]      | wrapping key (AES)   | KW or KWP    | —         | —            | —               | `[0]` [`WrapParams`], `[1]` output            |
//! | [`op::UNWRAP_KEY`]    | wrapping key (AES)   | KW or KWP    | —         | EXTRACTABLE  | —               | `[0]` [`WrapParams`], `[1]` wrapped key       |
//!
//! Responses: INIT puts the context index in `aux[0]` and its generation in `aux[1]`
//! (the vault chooses both); UPDATE and XTS report the bytes processed in `bytes`; FINAL
//! of a GCM encryption the tag bytes written; WRAP_KEY the wrapped length (and, refused
//! with [`status::BUFFER_TOO_SMALL`], the length needed in `aux[0]`); GENERATE the entropy
//! source in `aux[0]` (as GENERATE_KEY).
//!
//! # Operation contexts
//!
//! INIT takes a free context of the vault's table ([`MAX_CONTEXTS`]) and returns its index
//! and a fresh generation; UPDATE, FINAL and ABORT name both and repeat INIT's *owner*
//! tag (the daemon puts the client's uid and session there): a wrong generation, a free
//! context or a context whose key is gone gives [`status::BAD_CONTEXT`], a wrong owner
//! [`status::BAD_OWNER`] (the context is left as it is), a context another request is
//! using [`status::CONTEXT_BUSY`]. FINAL and ABORT free the context; so does a FINAL whose
//! tag does not verify. A FINAL refused before it looked at the state (bad tag segment
//! length: [`status::DATA_LEN`]) leaves the context alive.
//!
//! Context state (CBC chaining value, CTR position, GCM state: E_K(J0), GHASH
//! accumulator, pending keystream) never leaves the vault. Contexts die with their key:
//! DROP_KEY wipes every context of the key, and a context notices a key replaced in its
//! slot (the slot's vault-private install counter), whatever generation the host reused.
//!
//! Per mechanism:
//! - ECB, CBC: every data segment a multiple of 16 bytes ([`status::DATA_LEN`], detail:
//!   the segment). CBC_PAD is CBC: the PKCS#11 layer adds and checks the padding and
//!   buffers partial blocks (plaintext is the client's own data).
//! - CTR: any lengths; the counter is the low `counter_bits` of the counter block and may
//!   wrap inside them, but one context never uses more than `2^counter_bits` counter
//!   values (the keystream would repeat): [`status::DATA_LEN`].
//! - GCM: AAD (segment 1 of INIT) is read in place; data of any length. Decryption
//!   decrypts in place during UPDATE: the PKCS#11 layer must hold that plaintext back
//!   until FINAL verifies the tag and wipe it on [`status::TAG_MISMATCH`].
//!
//! XTS: IEEE 1619 over data units of `sector_size` (512, 1024, 2048 or 4096) bytes; unit
//! `i` of the request has the tweak `sector + i` (64-bit little endian in an otherwise
//! zero block). PKCS#11 tweaks with a non-zero high half and other unit sizes are for the
//! PKCS#11 layer to refuse.
//!
//! WRAP_KEY wraps the *raw key* of the target slot (a generic key marked extractable; an
//! XTS key is both halves) with the wrapping key. UNWRAP_KEY unwraps into the target slot
//! (which must be empty) a key of the [`WrapParams::kind`]; an integrity failure gives
//! [`status::UNWRAP_FAILED`] and leaves the target empty.
//!
//! # Validation (what the vault refuses)
//!
//! Request fields: unknown flags, or a field the row leaves empty not zero →
//! `BAD_FLAGS`; slot ≥ [`super::MAX_SLOTS`] → `BAD_SLOT`; context ≥ [`MAX_CONTEXTS`] →
//! [`status::BAD_CONTEXT`]; unknown kind → `BAD_CIPHER`; key length not 16/24/32 (AES) or
//! 32/64 (XTS) → `BAD_KEY_LEN`; unknown mechanism or one the op does not take →
//! [`status::BAD_MECHANISM`]; wrong segment count → `TOO_MANY_SEGMENTS`; a segment outside
//! the window → `OUT_OF_WINDOW`/`OVERFLOW` (detail: the segment); a parameter segment not
//! exactly [`INIT_PARAMS_LEN`]/[`WRAP_PARAMS_LEN`] long → [`status::BAD_MECH_PARAM`]; XTS
//! data unit size → `BAD_SECTOR_SIZE`, segments empty or not whole units →
//! [`status::DATA_LEN`], the last tweak past `u64::MAX` → `OVERFLOW`.
//!
//! Parameters (copied out of the window first): `reserved` not zero → `BAD_FLAGS`; IV
//! length not 0 (ECB), 16 (CBC, CTR) or 1..=[`MAX_GCM_IV`] (GCM) → [`status::BAD_IV`];
//! `counter_bits` not 1..=128 for CTR, `tag_bits` not 32..=128 in steps of 8 for GCM, or
//! either set for another mechanism, or an AAD segment for a mechanism other than GCM →
//! [`status::BAD_MECH_PARAM`]. Wrap: target slot out of range → `BAD_SLOT`; WRAP_KEY with a
//! non-zero `kind`, UNWRAP_KEY with an unknown one → `BAD_CIPHER`.
//!
//! Keys: an empty slot or another generation → `SLOT_EMPTY`; a slot of the wrong kind
//! (a sector key anywhere, an XTS key for INIT or wrapping, an AES key for XTS) →
//! [`status::KEY_KIND`]; WRAP_KEY of a key not marked extractable →
//! [`status::NOT_EXTRACTABLE`]; IMPORT, GENERATE, UNWRAP into a full slot → `SLOT_BUSY`;
//! wrapped input of a length KW/KWP cannot produce, or an unwrapped key of a length
//! the kind does not take → [`status::DATA_LEN`]/`BAD_KEY_LEN`.

use core::mem::{offset_of, size_of};

use super::validate::Refusal;
use super::{status as st, Request, Segment, MAX_KEY_LEN, MAX_SEGMENTS, MAX_SLOTS};

/// Operation codes of generic requests (continuing [`super::op`], from 20).
pub mod op {
    /// Copy a generic key from the transfer page into an empty slot.
    pub const IMPORT: u32 = 20;
    /// Generate a generic key (RDSEED/RDRAND mixed with host entropy) in an empty slot.
    pub const GENERATE: u32 = 21;
    /// Start an ECB/CBC/CTR/GCM operation: a new context.
    pub const INIT: u32 = 22;
    /// Encrypt or decrypt data segments in place, continuing a context.
    pub const UPDATE: u32 = 23;
    /// End a context (GCM: write or verify the tag).
    pub const FINAL: u32 = 24;
    /// Free a context without finishing it.
    pub const ABORT: u32 = 25;
    /// XTS over whole data units in place (no context).
    pub const XTS: u32 = 26;
    /// Wrap an extractable generic key with an AES key.
    pub const WRAP_KEY: u32 = 27;
    /// Unwrap a generic key into an empty slot.
    pub const UNWRAP_KEY: u32 = 28;

    /// Whether `op` is one of the generic operations.
    pub const fn is_generic(op: u32) -> bool {
        op >= IMPORT && op <= UNWRAP_KEY
    }
}

/// Status codes of generic requests (continuing [`super::status`], from 30).
pub mod status {
    /// Unknown mechanism, or one this operation does not take.
    pub const BAD_MECHANISM: u32 = 30;
    /// The slot holds a key of another kind (a LUKS sector key, or AES vs XTS).
    pub const KEY_KIND: u32 = 31;
    /// No live context of this index and generation (finished, aborted, key dropped).
    pub const BAD_CONTEXT: u32 = 32;
    /// The owner tag is not the one the context was created with.
    pub const BAD_OWNER: u32 = 33;
    /// Another request is using the context right now.
    pub const CONTEXT_BUSY: u32 = 34;
    /// Every context is in use.
    pub const NO_CONTEXT: u32 = 35;
    /// GCM tag mismatch (the context is freed; wipe the plaintext).
    pub const TAG_MISMATCH: u32 = 36;
    /// Key unwrap integrity check failed (the target slot stays empty).
    pub const UNWRAP_FAILED: u32 = 37;
    /// WRAP_KEY of a key not marked extractable.
    pub const NOT_EXTRACTABLE: u32 = 38;
    /// IV length wrong for the mechanism.
    pub const BAD_IV: u32 = 39;
    /// A mechanism parameter is out of range (counter bits, tag bits, AAD, parameter
    /// block length).
    pub const BAD_MECH_PARAM: u32 = 40;
    /// A data length the mechanism does not take (not whole blocks or data units, GCM
    /// or CTR limits, wrong tag or wrapped-key length).
    pub const DATA_LEN: u32 = 41;
    /// The output segment is too small (`aux[0]`: bytes needed).
    pub const BUFFER_TOO_SMALL: u32 = 42;

    /// Short name of a generic status code, `None` for other codes.
    pub fn name(s: u32) -> Option<&'static str> {
        Some(match s {
            BAD_MECHANISM => "BAD_MECHANISM",
            KEY_KIND => "KEY_KIND",
            BAD_CONTEXT => "BAD_CONTEXT",
            BAD_OWNER => "BAD_OWNER",
            CONTEXT_BUSY => "CONTEXT_BUSY",
            NO_CONTEXT => "NO_CONTEXT",
            TAG_MISMATCH => "TAG_MISMATCH",
            UNWRAP_FAILED => "UNWRAP_FAILED",
            NOT_EXTRACTABLE => "NOT_EXTRACTABLE",
            BAD_IV => "BAD_IV",
            BAD_MECH_PARAM => "BAD_MECH_PARAM",
            DATA_LEN => "DATA_LEN",
            BUFFER_TOO_SMALL => "BUFFER_TOO_SMALL",
            _ => return None,
        })
    }
}

/// Generic key kinds: the cipher id a generic key's slot holds. No sector cipher decodes
/// from them (mode byte 0x40/0x41), so sector requests can never name them.
pub mod kind {
    /// An AES key (16, 24 or 32 bytes) for ECB, CBC, CTR, GCM and key wrap.
    pub const AES: u32 = 0x0001_0040;
    /// An XTS key (32 or 64 bytes: data key, then tweak key).
    pub const XTS: u32 = 0x0001_0041;
}

/// Mechanisms (`Request::cipher` of INIT, WRAP_KEY, UNWRAP_KEY). PKCS#11:
/// `CKM_AES_ECB` → ECB, `CKM_AES_CBC` and `CKM_AES_CBC_PAD` → CBC, `CKM_AES_CTR` → CTR,
/// `CKM_AES_GCM` → GCM, `CKM_AES_KEY_WRAP` → KW, `CKM_AES_KEY_WRAP_KWP` → KWP;
/// `CKM_AES_XTS` is [`op::XTS`].
pub mod mech {
    /// ECB over whole blocks.
    pub const ECB: u32 = 1;
    /// CBC over whole blocks, chaining across updates.
    pub const CBC: u32 = 2;
    /// CTR with a counter of `counter_bits`.
    pub const CTR: u32 = 3;
    /// GCM with AAD and a tag of `tag_bits`.
    pub const GCM: u32 = 4;
    /// RFC 3394 key wrap (default IV).
    pub const KW: u32 = 5;
    /// RFC 5649 key wrap with padding (default AIV).
    pub const KWP: u32 = 6;
}

/// Request flag: decrypt (INIT, XTS); encryption without it.
pub const FLAG_DECRYPT: u32 = 1;
/// Request flag: the new key may be wrapped (IMPORT, GENERATE, UNWRAP_KEY).
pub const FLAG_EXTRACTABLE: u32 = 2;

/// Number of operation contexts in the vault.
pub const MAX_CONTEXTS: usize = 256;
/// Longest GCM IV (PKCS#11 allows any length; 12 bytes is the standard one).
pub const MAX_GCM_IV: usize = 256;
/// Longest wrapped key UNWRAP_KEY reads: the longest key plus KWP's padding and block.
pub const MAX_WRAPPED: usize = MAX_KEY_LEN + 16;

/// Parameters of INIT (`segs[0]`), copied out of the window before use.
#[repr(C)]
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct InitParams {
    /// Bytes of [`InitParams::iv`] in use: 0 (ECB), 16 (CBC IV, CTR counter block),
    /// 1..=[`MAX_GCM_IV`] (GCM).
    pub iv_len: u32,
    /// CTR: counter width in bits (1..=128); 0 otherwise.
    pub counter_bits: u32,
    /// GCM: tag length in bits (32..=128, a multiple of 8); 0 otherwise.
    pub tag_bits: u32,
    /// Must be zero.
    pub reserved: u32,
    /// The IV or counter block.
    pub iv: [u8; MAX_GCM_IV],
}

impl InitParams {
    /// All fields zero.
    pub const ZERO: InitParams = InitParams {
        iv_len: 0,
        counter_bits: 0,
        tag_bits: 0,
        reserved: 0,
        iv: [0; MAX_GCM_IV],
    };
}

impl Default for InitParams {
    fn default() -> Self {
        Self::ZERO
    }
}

impl core::fmt::Debug for InitParams {
    /// The lengths only (an IV is not secret, but there is no need to print 256 bytes).
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("InitParams")
            .field("iv_len", &self.iv_len)
            .field("counter_bits", &self.counter_bits)
            .field("tag_bits", &self.tag_bits)
            .finish_non_exhaustive()
    }
}

/// Bytes of an [`InitParams`] in the window.
pub const INIT_PARAMS_LEN: u64 = size_of::<InitParams>() as u64;

const _: () = assert!(offset_of!(InitParams, iv_len) == 0);
const _: () = assert!(offset_of!(InitParams, counter_bits) == 4);
const _: () = assert!(offset_of!(InitParams, tag_bits) == 8);
const _: () = assert!(offset_of!(InitParams, reserved) == 12);
const _: () = assert!(offset_of!(InitParams, iv) == 16);
const _: () = assert!(size_of::<InitParams>() == 16 + MAX_GCM_IV);

/// Parameters of WRAP_KEY and UNWRAP_KEY (`segs[0]`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WrapParams {
    /// WRAP_KEY: the slot of the key to wrap; UNWRAP_KEY: the empty slot to fill.
    pub target_slot: u32,
    /// Its generation (UNWRAP_KEY: the one to tag the slot with).
    pub target_generation: u32,
    /// UNWRAP_KEY: the [`kind`] of the unwrapped key; WRAP_KEY: 0.
    pub kind: u32,
    /// Must be zero.
    pub reserved: u32,
}

/// Bytes of a [`WrapParams`] in the window.
pub const WRAP_PARAMS_LEN: u64 = size_of::<WrapParams>() as u64;

const _: () = assert!(offset_of!(WrapParams, target_slot) == 0);
const _: () = assert!(offset_of!(WrapParams, target_generation) == 4);
const _: () = assert!(offset_of!(WrapParams, kind) == 8);
const _: () = assert!(offset_of!(WrapParams, reserved) == 12);
const _: () = assert!(size_of::<WrapParams>() == 16);

/// Copies a parameter block out of shared memory, every byte read exactly once
/// (volatile), so the copy is self-consistent whatever the host does meanwhile.
///
/// # Safety
/// `src` must be valid for reads of `size_of::<T>()` bytes (no alignment needed; it may
/// be concurrently written); `T` must be plain data without padding for which every bit
/// pattern is valid ([`InitParams`], [`WrapParams`]).
pub unsafe fn copy_block<T: Copy + Default>(src: *const u8) -> T {
    let mut p = T::default();
    let dst = (&raw mut p).cast::<u8>();
    for i in 0..size_of::<T>() {
        // SAFETY: `i < size_of::<T>()`: inside the source (contract of this function) and
        // inside `p`; any byte pattern is a valid `T` (contract).
        unsafe { dst.add(i).write(core::ptr::read_volatile(src.add(i))) };
    }
    p
}

/// Whether a key of `len` bytes fits generic `kind`; `None` for an unknown kind.
pub const fn kind_key_len_ok(kind: u32, len: usize) -> Option<bool> {
    match kind {
        kind::AES => Some(matches!(len, 16 | 24 | 32)),
        kind::XTS => Some(matches!(len, 32 | 64)),
        _ => None,
    }
}

/// A validated generic request (request fields only; parameter blocks are copied and
/// checked by [`check_init_params`] and [`check_wrap_params`] before use).
#[derive(Clone, Copy, Debug)]
pub enum GenericRequest {
    /// IMPORT or GENERATE into the empty `slot`.
    NewKey {
        /// GENERATE (else IMPORT).
        generate: bool,
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Generation to tag the slot with.
        generation: u32,
        /// [`kind`] of the key.
        kind: u32,
        /// Key length (valid for `kind`).
        key_len: usize,
        /// The key may be wrapped.
        extractable: bool,
    },
    /// INIT on the key in `slot`.
    Init {
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Generation the slot must hold.
        generation: u32,
        /// [`mech::ECB`], [`mech::CBC`], [`mech::CTR`] or [`mech::GCM`].
        mech: u32,
        /// Decrypt (else encrypt).
        decrypt: bool,
        /// Owner tag.
        owner: u64,
        /// Window offset of the [`InitParams`].
        params: u64,
        /// GCM additional data (empty when absent).
        aad: Segment,
    },
    /// UPDATE, FINAL or ABORT on a context.
    Context {
        /// [`op::UPDATE`], [`op::FINAL`] or [`op::ABORT`].
        op: u32,
        /// Context index (< [`MAX_CONTEXTS`]).
        ctx: usize,
        /// Context generation.
        generation: u32,
        /// Owner tag.
        owner: u64,
        /// Segments in use (UPDATE 1..=32, FINAL 0..=1, ABORT 0).
        nsegs: usize,
        /// The segments, each inside the window.
        segs: [Segment; MAX_SEGMENTS],
    },
    /// XTS over whole data units.
    Xts {
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Generation the slot must hold.
        generation: u32,
        /// Decrypt (else encrypt).
        decrypt: bool,
        /// Data unit size (512, 1024, 2048 or 4096).
        unit: u32,
        /// Tweak (data unit number) of the first unit.
        first: u64,
        /// Segments in use (1..=32).
        nsegs: usize,
        /// The segments: inside the window, non-empty, whole units.
        segs: [Segment; MAX_SEGMENTS],
        /// Total bytes.
        bytes: u64,
    },
    /// WRAP_KEY or UNWRAP_KEY.
    Wrap {
        /// UNWRAP_KEY (else WRAP_KEY).
        unwrap: bool,
        /// Wrapping key slot (< [`MAX_SLOTS`]).
        slot: usize,
        /// Its generation.
        generation: u32,
        /// [`mech::KW`] or [`mech::KWP`].
        mech: u32,
        /// UNWRAP_KEY: the new key may be wrapped.
        extractable: bool,
        /// Window offset of the [`WrapParams`].
        params: u64,
        /// WRAP_KEY: output; UNWRAP_KEY: the wrapped key.
        data: Segment,
    },
}

fn key_slot(slot: u32) -> Result<usize, Refusal> {
    if (slot as usize) < MAX_SLOTS {
        Ok(slot as usize)
    } else {
        Err((st::BAD_SLOT, 0))
    }
}

fn window_seg(req: &Request, i: usize, window_len: u64) -> Result<Segment, Refusal> {
    let s = req.segs[i];
    let end = s
        .offset
        .checked_add(s.len)
        .ok_or((st::OVERFLOW, i as u32))?;
    if end > window_len {
        return Err((st::OUT_OF_WINDOW, i as u32));
    }
    Ok(s)
}

/// Checks the request fields a row of the table leaves empty, the flags and the segment
/// count.
fn shape(
    req: &Request,
    flags: u32,
    cipher_used: bool,
    key_len_used: bool,
    sector_used: bool,
    nsegs: core::ops::RangeInclusive<u32>,
) -> Result<(), Refusal> {
    if req.flags & !flags != 0
        || req.reserved2 != 0
        || req.iv_offset != 0
        || (req.op != op::XTS && req.sector_size != 0)
        || (!cipher_used && req.cipher != 0)
        || (!key_len_used && req.key_len != 0)
        || (!sector_used && req.sector != 0)
    {
        return Err((st::BAD_FLAGS, 0));
    }
    if !nsegs.contains(&req.nsegs) {
        return Err((st::TOO_MANY_SEGMENTS, 0));
    }
    Ok(())
}

/// Validates a generic request (`req.op` is one of [`op`]) against a data window of
/// `window_len` bytes. Pure and total.
pub fn validate_generic(req: &Request, window_len: u64) -> Result<GenericRequest, Refusal> {
    match req.op {
        op::IMPORT | op::GENERATE => {
            shape(req, FLAG_EXTRACTABLE, true, true, false, 0..=0)?;
            let slot = key_slot(req.slot)?;
            let key_len = req.key_len as usize;
            match kind_key_len_ok(req.cipher, key_len) {
                None => return Err((st::BAD_CIPHER, 0)),
                Some(false) => return Err((st::BAD_KEY_LEN, 0)),
                Some(true) => {}
            }
            Ok(GenericRequest::NewKey {
                generate: req.op == op::GENERATE,
                slot,
                generation: req.generation,
                kind: req.cipher,
                key_len,
                extractable: req.flags & FLAG_EXTRACTABLE != 0,
            })
        }
        op::INIT => {
            shape(req, FLAG_DECRYPT, true, false, true, 1..=2)?;
            let slot = key_slot(req.slot)?;
            let mech = req.cipher;
            if !matches!(mech, mech::ECB | mech::CBC | mech::CTR | mech::GCM) {
                return Err((status::BAD_MECHANISM, 0));
            }
            let params = window_seg(req, 0, window_len)?;
            if params.len != INIT_PARAMS_LEN {
                return Err((status::BAD_MECH_PARAM, 0));
            }
            let aad = if req.nsegs == 2 {
                if mech != mech::GCM {
                    return Err((status::BAD_MECH_PARAM, 1));
                }
                window_seg(req, 1, window_len)?
            } else {
                Segment::default()
            };
            Ok(GenericRequest::Init {
                slot,
                generation: req.generation,
                mech,
                decrypt: req.flags & FLAG_DECRYPT != 0,
                owner: req.sector,
                params: params.offset,
                aad,
            })
        }
        op::UPDATE | op::FINAL | op::ABORT => {
            let n = match req.op {
                op::UPDATE => 1..=MAX_SEGMENTS as u32,
                op::FINAL => 0..=1,
                _ => 0..=0,
            };
            shape(req, 0, false, false, true, n)?;
            if req.slot as usize >= MAX_CONTEXTS {
                return Err((status::BAD_CONTEXT, 0));
            }
            let nsegs = req.nsegs as usize;
            let mut segs = [Segment::default(); MAX_SEGMENTS];
            for (i, s) in segs.iter_mut().enumerate().take(nsegs) {
                *s = window_seg(req, i, window_len)?;
            }
            Ok(GenericRequest::Context {
                op: req.op,
                ctx: req.slot as usize,
                generation: req.generation,
                owner: req.sector,
                nsegs,
                segs,
            })
        }
        op::XTS => {
            shape(
                req,
                FLAG_DECRYPT,
                false,
                false,
                true,
                1..=MAX_SEGMENTS as u32,
            )?;
            let slot = key_slot(req.slot)?;
            let unit = req.sector_size;
            if !matches!(unit, 512 | 1024 | 2048 | 4096) {
                return Err((st::BAD_SECTOR_SIZE, 0));
            }
            let nsegs = req.nsegs as usize;
            let mut segs = [Segment::default(); MAX_SEGMENTS];
            let mut bytes = 0u64;
            for (i, s) in segs.iter_mut().enumerate().take(nsegs) {
                *s = window_seg(req, i, window_len)?;
                if s.len == 0 || !s.len.is_multiple_of(u64::from(unit)) {
                    return Err((status::DATA_LEN, i as u32));
                }
                bytes = bytes.checked_add(s.len).ok_or((st::OVERFLOW, i as u32))?;
            }
            // The engine counts 512-byte sectors: the first unit's sector and the last
            // unit's tweak must be representable.
            let per = u64::from(unit / 512);
            req.sector
                .checked_mul(per)
                .and_then(|s| s.checked_add(bytes / 512))
                .ok_or((st::OVERFLOW, 0))?;
            Ok(GenericRequest::Xts {
                slot,
                generation: req.generation,
                decrypt: req.flags & FLAG_DECRYPT != 0,
                unit,
                first: req.sector,
                nsegs,
                segs,
                bytes,
            })
        }
        op::WRAP_KEY | op::UNWRAP_KEY => {
            let unwrap = req.op == op::UNWRAP_KEY;
            let flags = if unwrap { FLAG_EXTRACTABLE } else { 0 };
            shape(req, flags, true, false, false, 2..=2)?;
            let slot = key_slot(req.slot)?;
            if !matches!(req.cipher, mech::KW | mech::KWP) {
                return Err((status::BAD_MECHANISM, 0));
            }
            let params = window_seg(req, 0, window_len)?;
            if params.len != WRAP_PARAMS_LEN {
                return Err((status::BAD_MECH_PARAM, 0));
            }
            let data = window_seg(req, 1, window_len)?;
            Ok(GenericRequest::Wrap {
                unwrap,
                slot,
                generation: req.generation,
                mech: req.cipher,
                extractable: req.flags & FLAG_EXTRACTABLE != 0,
                params: params.offset,
                data,
            })
        }
        _ => Err((st::BAD_OP, 0)),
    }
}

/// What INIT's checked parameters give.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CheckedInit {
    /// IV bytes in use.
    pub iv_len: usize,
    /// CTR counter width.
    pub counter_bits: u32,
    /// GCM tag length in bytes.
    pub tag_len: usize,
}

/// Checks INIT's *copied* parameters for mechanism `mech`.
pub fn check_init_params(mech: u32, p: &InitParams) -> Result<CheckedInit, Refusal> {
    if p.reserved != 0 {
        return Err((st::BAD_FLAGS, 0));
    }
    let iv_len = p.iv_len as usize;
    let iv_ok = match mech {
        mech::ECB => iv_len == 0,
        mech::CBC | mech::CTR => iv_len == 16,
        mech::GCM => (1..=MAX_GCM_IV).contains(&iv_len),
        _ => return Err((status::BAD_MECHANISM, 0)),
    };
    if !iv_ok {
        return Err((status::BAD_IV, 0));
    }
    let bits_ok = match mech {
        mech::CTR => (1..=128).contains(&p.counter_bits) && p.tag_bits == 0,
        mech::GCM => {
            p.counter_bits == 0 && (32..=128).contains(&p.tag_bits) && p.tag_bits.is_multiple_of(8)
        }
        _ => p.counter_bits == 0 && p.tag_bits == 0,
    };
    if !bits_ok {
        return Err((status::BAD_MECH_PARAM, 0));
    }
    Ok(CheckedInit {
        iv_len,
        counter_bits: p.counter_bits,
        tag_len: (p.tag_bits / 8) as usize,
    })
}

/// Checks WRAP_KEY's or UNWRAP_KEY's *copied* parameters: the target slot index (and,
/// for UNWRAP_KEY, the kind).
pub fn check_wrap_params(unwrap: bool, p: &WrapParams) -> Result<usize, Refusal> {
    if p.reserved != 0 {
        return Err((st::BAD_FLAGS, 0));
    }
    let slot = key_slot(p.target_slot)?;
    let kind_ok = if unwrap {
        kind_key_len_ok(p.kind, 0).is_some()
    } else {
        p.kind == 0
    };
    if !kind_ok {
        return Err((st::BAD_CIPHER, 0));
    }
    Ok(slot)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::{cipher_from_id, validate, Validated};

    const WIN: u64 = 1 << 20;

    fn req(op: u32) -> Request {
        Request {
            op,
            ..Request::ZERO
        }
    }

    fn init(mech: u32) -> Request {
        let mut r = req(op::INIT);
        r.cipher = mech;
        r.sector = 0xfeed;
        r.nsegs = 1;
        r.segs[0] = Segment {
            offset: 0,
            len: INIT_PARAMS_LEN,
        };
        r
    }

    fn st(r: &Request) -> Refusal {
        match validate(r, WIN) {
            Ok(Validated::Generic(_)) => (st::OK, 0),
            Ok(_) => panic!("a generic op validated as another"),
            Err(e) => e,
        }
    }

    #[test]
    fn kinds_are_no_sector_cipher() {
        assert_eq!(cipher_from_id(kind::AES), None);
        assert_eq!(cipher_from_id(kind::XTS), None);
        assert!(op::is_generic(op::IMPORT) && op::is_generic(op::UNWRAP_KEY));
        assert!(!op::is_generic(19) && !op::is_generic(29));
        for s in 30..=42 {
            assert!(status::name(s).is_some(), "{s}");
        }
        assert_eq!(status::name(29), None);
    }

    #[test]
    fn new_key_requests() {
        let mut r = req(op::IMPORT);
        r.cipher = kind::AES;
        r.key_len = 32;
        r.flags = FLAG_EXTRACTABLE;
        assert_eq!(st(&r), (st::OK, 0));
        r.op = op::GENERATE;
        assert_eq!(st(&r), (st::OK, 0));
        let mut b = r;
        b.key_len = 48;
        assert_eq!(st(&b).0, st::BAD_KEY_LEN);
        b.cipher = kind::XTS;
        assert_eq!(st(&b).0, st::BAD_KEY_LEN);
        b.key_len = 64;
        assert_eq!(st(&b).0, st::OK);
        let mut b = r;
        b.cipher = 0x0201; // a sector cipher id: not a generic kind
        assert_eq!(st(&b).0, st::BAD_CIPHER);
        let mut b = r;
        b.flags = FLAG_DECRYPT;
        assert_eq!(st(&b).0, st::BAD_FLAGS);
        let mut b = r;
        b.sector = 1;
        assert_eq!(st(&b).0, st::BAD_FLAGS);
        let mut b = r;
        b.nsegs = 1;
        assert_eq!(st(&b).0, st::TOO_MANY_SEGMENTS);
        let mut b = r;
        b.slot = MAX_SLOTS as u32;
        assert_eq!(st(&b).0, st::BAD_SLOT);
    }

    #[test]
    fn init_requests() {
        for m in [mech::ECB, mech::CBC, mech::CTR, mech::GCM] {
            assert_eq!(st(&init(m)), (st::OK, 0));
        }
        for m in [0, mech::KW, mech::KWP, 99] {
            assert_eq!(st(&init(m)).0, status::BAD_MECHANISM, "{m}");
        }
        let mut r = init(mech::GCM);
        r.nsegs = 2;
        r.segs[1] = Segment {
            offset: 4096,
            len: 100,
        };
        assert_eq!(st(&r), (st::OK, 0));
        r.segs[1].offset = WIN - 10;
        assert_eq!(st(&r), (st::OUT_OF_WINDOW, 1));
        r.segs[1].offset = u64::MAX;
        assert_eq!(st(&r), (st::OVERFLOW, 1));
        let mut r = init(mech::CBC);
        r.nsegs = 2;
        assert_eq!(st(&r), (status::BAD_MECH_PARAM, 1));
        let mut r = init(mech::CBC);
        r.segs[0].len -= 1;
        assert_eq!(st(&r), (status::BAD_MECH_PARAM, 0));
        let mut r = init(mech::CBC);
        r.nsegs = 0;
        assert_eq!(st(&r).0, st::TOO_MANY_SEGMENTS);
        let mut r = init(mech::CBC);
        r.nsegs = 3;
        assert_eq!(st(&r).0, st::TOO_MANY_SEGMENTS);
        let mut r = init(mech::CBC);
        r.key_len = 1;
        assert_eq!(st(&r).0, st::BAD_FLAGS);
        let mut r = init(mech::CBC);
        r.flags = FLAG_EXTRACTABLE;
        assert_eq!(st(&r).0, st::BAD_FLAGS);
        let mut r = init(mech::CBC);
        r.sector_size = 512;
        assert_eq!(st(&r).0, st::BAD_FLAGS);
        let mut r = init(mech::CBC);
        r.reserved2 = 1;
        assert_eq!(st(&r).0, st::BAD_FLAGS);
        let mut r = init(mech::CBC);
        r.slot = 64;
        assert_eq!(st(&r).0, st::BAD_SLOT);
    }

    #[test]
    fn context_requests() {
        let mut r = req(op::UPDATE);
        r.slot = 5;
        r.sector = 9;
        r.nsegs = 2;
        r.segs[1] = Segment {
            offset: 100,
            len: 17,
        };
        assert_eq!(st(&r), (st::OK, 0));
        r.segs[1].len = WIN;
        assert_eq!(st(&r), (st::OUT_OF_WINDOW, 1));
        let mut b = r;
        b.nsegs = 0;
        assert_eq!(st(&b).0, st::TOO_MANY_SEGMENTS);
        let mut b = r;
        b.nsegs = 33;
        assert_eq!(st(&b).0, st::TOO_MANY_SEGMENTS);
        let mut b = req(op::UPDATE);
        b.nsegs = 1;
        b.slot = MAX_CONTEXTS as u32;
        assert_eq!(st(&b).0, status::BAD_CONTEXT);
        b.slot = 0;
        b.cipher = 1;
        assert_eq!(st(&b).0, st::BAD_FLAGS);
        let mut f = req(op::FINAL);
        assert_eq!(st(&f).0, st::OK);
        f.nsegs = 1;
        assert_eq!(st(&f).0, st::OK);
        f.nsegs = 2;
        assert_eq!(st(&f).0, st::TOO_MANY_SEGMENTS);
        let mut a = req(op::ABORT);
        assert_eq!(st(&a).0, st::OK);
        a.nsegs = 1;
        assert_eq!(st(&a).0, st::TOO_MANY_SEGMENTS);
        a.nsegs = 0;
        a.flags = FLAG_DECRYPT;
        assert_eq!(st(&a).0, st::BAD_FLAGS);
    }

    #[test]
    fn xts_requests() {
        let mut r = req(op::XTS);
        r.sector_size = 4096;
        r.sector = 7;
        r.nsegs = 1;
        r.segs[0].len = 8192;
        assert_eq!(st(&r), (st::OK, 0));
        let mut b = r;
        b.sector_size = 256;
        assert_eq!(st(&b).0, st::BAD_SECTOR_SIZE);
        let mut b = r;
        b.segs[0].len = 4000;
        assert_eq!(st(&b), (status::DATA_LEN, 0));
        let mut b = r;
        b.segs[0].len = 0;
        assert_eq!(st(&b), (status::DATA_LEN, 0));
        let mut b = r;
        b.sector = u64::MAX / 8;
        assert_eq!(st(&b).0, st::OVERFLOW);
        let mut b = r;
        b.cipher = mech::ECB;
        assert_eq!(st(&b).0, st::BAD_FLAGS);
        let mut b = r;
        b.flags = FLAG_EXTRACTABLE;
        assert_eq!(st(&b).0, st::BAD_FLAGS);
    }

    #[test]
    fn wrap_requests() {
        let mut r = req(op::WRAP_KEY);
        r.cipher = mech::KW;
        r.nsegs = 2;
        r.segs[0].len = WRAP_PARAMS_LEN;
        r.segs[1] = Segment {
            offset: 64,
            len: 72,
        };
        assert_eq!(st(&r), (st::OK, 0));
        let mut b = r;
        b.flags = FLAG_EXTRACTABLE;
        assert_eq!(st(&b).0, st::BAD_FLAGS);
        b.op = op::UNWRAP_KEY;
        assert_eq!(st(&b).0, st::OK);
        let mut b = r;
        b.cipher = mech::GCM;
        assert_eq!(st(&b).0, status::BAD_MECHANISM);
        let mut b = r;
        b.segs[0].len = 8;
        assert_eq!(st(&b), (status::BAD_MECH_PARAM, 0));
        let mut b = r;
        b.nsegs = 1;
        assert_eq!(st(&b).0, st::TOO_MANY_SEGMENTS);
        let mut b = r;
        b.segs[1].offset = WIN;
        assert_eq!(st(&b), (st::OUT_OF_WINDOW, 1));
    }

    #[test]
    fn init_params() {
        let p = |iv_len, counter_bits, tag_bits| InitParams {
            iv_len,
            counter_bits,
            tag_bits,
            ..InitParams::ZERO
        };
        let ok = |m, q: InitParams| check_init_params(m, &q).map_err(|e| e.0);
        assert!(ok(mech::ECB, p(0, 0, 0)).is_ok());
        assert_eq!(ok(mech::ECB, p(16, 0, 0)), Err(status::BAD_IV));
        assert!(ok(mech::CBC, p(16, 0, 0)).is_ok());
        assert_eq!(ok(mech::CBC, p(12, 0, 0)), Err(status::BAD_IV));
        assert_eq!(ok(mech::CBC, p(16, 32, 0)), Err(status::BAD_MECH_PARAM));
        assert!(ok(mech::CTR, p(16, 128, 0)).is_ok());
        assert_eq!(ok(mech::CTR, p(16, 0, 0)), Err(status::BAD_MECH_PARAM));
        assert_eq!(ok(mech::CTR, p(16, 129, 0)), Err(status::BAD_MECH_PARAM));
        assert_eq!(ok(mech::CTR, p(16, 32, 128)), Err(status::BAD_MECH_PARAM));
        assert_eq!(
            ok(mech::GCM, p(12, 0, 96)),
            Ok(CheckedInit {
                iv_len: 12,
                counter_bits: 0,
                tag_len: 12
            })
        );
        assert!(ok(mech::GCM, p(256, 0, 128)).is_ok());
        assert_eq!(ok(mech::GCM, p(0, 0, 128)), Err(status::BAD_IV));
        assert_eq!(ok(mech::GCM, p(257, 0, 128)), Err(status::BAD_IV));
        assert_eq!(ok(mech::GCM, p(12, 0, 24)), Err(status::BAD_MECH_PARAM));
        assert_eq!(ok(mech::GCM, p(12, 0, 100)), Err(status::BAD_MECH_PARAM));
        assert_eq!(ok(mech::GCM, p(12, 0, 136)), Err(status::BAD_MECH_PARAM));
        assert_eq!(ok(mech::GCM, p(12, 32, 128)), Err(status::BAD_MECH_PARAM));
        let mut q = p(16, 0, 0);
        q.reserved = 1;
        assert_eq!(ok(mech::CBC, q), Err(st::BAD_FLAGS));
        assert_eq!(ok(mech::KW, p(0, 0, 0)), Err(status::BAD_MECHANISM));
    }

    #[test]
    fn wrap_params() {
        let w = |target_slot, kind, reserved| WrapParams {
            target_slot,
            target_generation: 3,
            kind,
            reserved,
        };
        assert_eq!(check_wrap_params(false, &w(4, 0, 0)), Ok(4));
        assert_eq!(check_wrap_params(true, &w(4, kind::XTS, 0)), Ok(4));
        assert_eq!(
            check_wrap_params(false, &w(4, kind::AES, 0)),
            Err((st::BAD_CIPHER, 0))
        );
        assert_eq!(
            check_wrap_params(true, &w(4, 0x0201, 0)),
            Err((st::BAD_CIPHER, 0))
        );
        assert_eq!(
            check_wrap_params(true, &w(64, kind::AES, 0)),
            Err((st::BAD_SLOT, 0))
        );
        assert_eq!(
            check_wrap_params(true, &w(1, kind::AES, 1)),
            Err((st::BAD_FLAGS, 0))
        );
    }

    #[test]
    fn copy_block_round_trips() {
        let mut p = InitParams {
            iv_len: 12,
            tag_bits: 128,
            ..InitParams::ZERO
        };
        p.iv[255] = 9;
        // SAFETY: `p` is INIT_PARAMS_LEN bytes of plain data.
        let c: InitParams = unsafe { copy_block((&raw const p).cast()) };
        assert!(c == p);
        let w = WrapParams {
            target_slot: 1,
            target_generation: 2,
            kind: kind::AES,
            reserved: 0,
        };
        // SAFETY: as above.
        let c: WrapParams = unsafe { copy_block((&raw const w).cast()) };
        assert_eq!(c, w);
    }
}
