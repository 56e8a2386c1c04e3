//! Generic AES operations for the PKCS#11 token: keys of the generic kinds (created in
//! the vault, leaving it only wrapped), operation contexts for ECB, CBC, CTR and GCM,
//! XTS over data units and AES key wrap. The contract is `vault_vm::abi::generic`.
//!
//! Data goes through a window buffer that is wiped when the call returns (it held the
//! client's plaintext). GCM decryption returns plaintext from [`Vault::generic_update`]
//! before the tag is checked: the caller must hold it back until
//! [`Vault::gcm_decrypt_final`] succeeds and wipe it otherwise.

use std::ptr;

use vault_vm::abi::generic::{
    self as g, kind, mech, op, InitParams, WrapParams, FLAG_DECRYPT, FLAG_EXTRACTABLE, MAX_GCM_IV,
};
use vault_vm::abi::keyslot::{entropy_source, HOST_ENTROPY_LEN};
use vault_vm::abi::{self, Request, Response, Segment};
use zeroize::Zeroize;

use crate::error::{HvError, Result};
use crate::keyslot::EntropySource;
use crate::window::WindowBuf;
use crate::Vault;

/// Kind of a generic key.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// AES-128/192/256 (16, 24 or 32 bytes): ECB, CBC, CTR, GCM, key wrap.
    Aes,
    /// XTS (32 or 64 bytes: data key, then tweak key).
    Xts,
}

impl KeyKind {
    fn id(self) -> u32 {
        match self {
            KeyKind::Aes => kind::AES,
            KeyKind::Xts => kind::XTS,
        }
    }

    /// Whether a key of `len` bytes fits this kind.
    pub fn key_len_ok(self, len: usize) -> bool {
        g::kind_key_len_ok(self.id(), len) == Some(true)
    }
}

/// A generic key in the vault: a handle, never the key. Like a `SlotId` it names one
/// key: once dropped it stays invalid even if a new key lands in the same slot.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct GenericKey {
    index: u32,
    generation: u32,
    kind: KeyKind,
}

impl GenericKey {
    /// Slot index inside the vault.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Generation of the key in its slot.
    pub fn generation(self) -> u32 {
        self.generation
    }

    /// Kind of the key.
    pub fn kind(self) -> KeyKind {
        self.kind
    }

    /// A handle from raw parts (tests of the vault's refusals: a handle naming a slot
    /// that holds another kind of key).
    #[cfg(feature = "test-api")]
    pub fn from_raw_for_tests(index: u32, generation: u32, kind: KeyKind) -> GenericKey {
        GenericKey {
            index,
            generation,
            kind,
        }
    }
}

/// Direction of an operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Direction {
    /// Encrypt.
    Encrypt,
    /// Decrypt.
    Decrypt,
}

/// A mechanism and its parameters for [`Vault::generic_init`]. CBC_PAD is `Cbc` (the
/// caller pads and unpads).
#[derive(Clone, Copy, Debug)]
pub enum Mechanism<'a> {
    /// ECB over whole blocks.
    Ecb,
    /// CBC over whole blocks with this IV, chaining across updates.
    Cbc {
        /// The IV.
        iv: [u8; 16],
    },
    /// CTR (`CK_AES_CTR_PARAMS`).
    Ctr {
        /// The first counter block.
        counter_block: [u8; 16],
        /// Width of the counter (low bits of the block), 1..=128.
        counter_bits: u32,
    },
    /// GCM (`CK_GCM_PARAMS`).
    Gcm {
        /// The IV, 1..=256 bytes.
        iv: &'a [u8],
        /// Additional authenticated data.
        aad: &'a [u8],
        /// Tag length in bits: 32..=128, a multiple of 8.
        tag_bits: u32,
    },
}

/// A key wrap mechanism.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WrapMechanism {
    /// RFC 3394 (`CKM_AES_KEY_WRAP`).
    Kw,
    /// RFC 5649 (`CKM_AES_KEY_WRAP_KWP`).
    Kwp,
}

impl WrapMechanism {
    fn id(self) -> u32 {
        match self {
            WrapMechanism::Kw => mech::KW,
            WrapMechanism::Kwp => mech::KWP,
        }
    }
}

/// An operation context in the vault (index, generation, and what the host needs to
/// know to end it).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ContextId {
    index: u32,
    generation: u32,
    /// GCM: tag bytes; 0 for other mechanisms.
    tag_len: u32,
    decrypt: bool,
}

impl ContextId {
    /// Context index in the vault's table.
    pub fn index(self) -> u32 {
        self.index
    }

    /// Generation the vault gave the context.
    pub fn generation(self) -> u32 {
        self.generation
    }
}

/// A window buffer wiped before it goes back to the window.
struct Wiped(WindowBuf);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The bytes of a plain-data parameter block.
fn block_bytes<T: Copy>(p: &T) -> &[u8] {
    // SAFETY: `InitParams` and `WrapParams` (the only callers) are `#[repr(C)]` integers
    // and byte arrays without padding (offset asserts in the ABI), so all bytes are
    // initialized; the slice borrows `p`.
    unsafe { std::slice::from_raw_parts(ptr::from_ref(p).cast::<u8>(), size_of::<T>()) }
}

fn seg(b: &WindowBuf) -> Segment {
    Segment {
        offset: b.offset(),
        len: b.len() as u64,
    }
}

/// Largest piece of data one UPDATE or XTS request carries (a multiple of every block
/// and data unit size).
const CHUNK: usize = 1 << 20;

impl Vault {
    /// A generic request with these segments; maps generic statuses to their errors.
    fn call_generic(&self, mut req: Request, segs: &[Segment]) -> Result<Response> {
        req.nsegs = segs.len() as u32;
        req.segs[..segs.len()].copy_from_slice(segs);
        let resp = self.call(&mut req)?;
        match resp.status {
            g::status::TAG_MISMATCH => Err(HvError::TagMismatch),
            g::status::UNWRAP_FAILED => Err(HvError::UnwrapFailed),
            g::status::NOT_EXTRACTABLE => Err(HvError::NotExtractable),
            g::status::BAD_OWNER => Err(HvError::ContextOwner),
            g::status::BAD_CONTEXT => Err(HvError::ContextGone),
            g::status::NO_CONTEXT => Err(HvError::NoFreeContext(g::MAX_CONTEXTS)),
            g::status::KEY_KIND => Err(HvError::KeyKind),
            abi::status::BAD_OP => Err(HvError::Unsupported("generic operations")),
            _ => Vault::check(resp),
        }
    }

    fn window_with(&self, bytes: &[u8]) -> Result<Wiped> {
        let mut b = Wiped(self.window().alloc(bytes.len())?);
        b.0.copy_from_slice(bytes);
        Ok(b)
    }

    /// Fills a fresh slot through the transfer page (IMPORT or GENERATE).
    fn new_generic_key(
        &self,
        opcode: u32,
        kind: KeyKind,
        key_len: usize,
        extractable: bool,
        page_bytes: &[u8],
    ) -> Result<(GenericKey, Response)> {
        if !kind.key_len_ok(key_len) {
            return Err(HvError::Config(format!(
                "a {key_len}-byte key does not fit a generic {kind:?} key"
            )));
        }
        let _one_at_a_time = self.slots.transfer_lock();
        let (slot, generation) = self.slots.alloc()?;
        let page = self.backend.transfer();
        for (i, b) in page_bytes.iter().enumerate() {
            // SAFETY: page_bytes is at most 64 bytes < TRANSFER_SIZE.
            unsafe { ptr::write_volatile(page.add(i), *b) };
        }
        let req = Request {
            op: opcode,
            slot: slot as u32,
            generation,
            cipher: kind.id(),
            key_len: key_len as u32,
            flags: if extractable { FLAG_EXTRACTABLE } else { 0 },
            ..Request::ZERO
        };
        let r = self.call_generic(req, &[]);
        for i in 0..abi::TRANSFER_SIZE as usize {
            // SAFETY: the transfer page is TRANSFER_SIZE bytes.
            unsafe { ptr::write_volatile(page.add(i), 0) };
        }
        match r {
            Ok(resp) => Ok((
                GenericKey {
                    index: slot as u32,
                    generation,
                    kind,
                },
                resp,
            )),
            Err(e) => {
                self.slots.free(slot, generation);
                Err(e)
            }
        }
    }

    /// Imports a generic key (through the one-shot transfer page). `extractable` keys
    /// may later be wrapped ([`Vault::wrap_key`]).
    pub fn generic_import_key(
        &self,
        kind: KeyKind,
        key: &[u8],
        extractable: bool,
    ) -> Result<GenericKey> {
        self.new_generic_key(op::IMPORT, kind, key.len(), extractable, key)
            .map(|(k, _)| k)
    }

    /// Generates a generic key of `key_len` bytes in the vault (RDSEED/RDRAND mixed with
    /// this process's `getrandom`); the key never exists outside the vault.
    pub fn generic_generate_key(
        &self,
        kind: KeyKind,
        key_len: usize,
        extractable: bool,
    ) -> Result<(GenericKey, EntropySource)> {
        let mut host = [0u8; HOST_ENTROPY_LEN];
        // SAFETY: getrandom writes at most host.len() bytes into it.
        let n = unsafe { libc::getrandom(host.as_mut_ptr().cast(), host.len(), 0) };
        if n != host.len() as isize {
            return Err(HvError::os("getrandom"));
        }
        let r = self.new_generic_key(op::GENERATE, kind, key_len, extractable, &host);
        host.zeroize();
        let (k, resp) = r?;
        let src = if resp.aux[0] == entropy_source::RDSEED {
            EntropySource::Rdseed
        } else {
            EntropySource::Rdrand
        };
        Ok((k, src))
    }

    /// Wipes a generic key and every operation context that uses it.
    pub fn generic_drop_key(&self, key: GenericKey) -> Result<()> {
        let mut req = Request {
            op: abi::op::DROP_KEY,
            slot: key.index,
            generation: key.generation,
            ..Request::ZERO
        };
        let r = self.call(&mut req).and_then(Vault::check);
        if r.is_ok()
            || matches!(
                r,
                Err(HvError::Refused {
                    status: abi::status::SLOT_EMPTY,
                    ..
                })
            )
        {
            self.slots.free(key.index as usize, key.generation);
        }
        r.map(|_| ())
    }

    /// Starts an operation on an AES key; `owner` (the daemon's client uid and session)
    /// must be repeated by every later call on the context.
    pub fn generic_init(
        &self,
        key: GenericKey,
        mechanism: &Mechanism<'_>,
        dir: Direction,
        owner: u64,
    ) -> Result<ContextId> {
        let mut p = InitParams::ZERO;
        let mut aad: &[u8] = &[];
        let m = match *mechanism {
            Mechanism::Ecb => mech::ECB,
            Mechanism::Cbc { iv } => {
                p.iv_len = 16;
                p.iv[..16].copy_from_slice(&iv);
                mech::CBC
            }
            Mechanism::Ctr {
                counter_block,
                counter_bits,
            } => {
                p.iv_len = 16;
                p.iv[..16].copy_from_slice(&counter_block);
                p.counter_bits = counter_bits;
                mech::CTR
            }
            Mechanism::Gcm {
                iv,
                aad: a,
                tag_bits,
            } => {
                if iv.len() > MAX_GCM_IV {
                    return Err(HvError::Config(format!(
                        "a GCM IV of {} bytes (at most {MAX_GCM_IV})",
                        iv.len()
                    )));
                }
                p.iv_len = iv.len() as u32;
                p.iv[..iv.len()].copy_from_slice(iv);
                p.tag_bits = tag_bits;
                aad = a;
                mech::GCM
            }
        };
        let params = self.window_with(block_bytes(&p))?;
        let mut segs = vec![seg(&params.0)];
        let aad_buf = if matches!(mechanism, Mechanism::Gcm { .. }) {
            let b = self.window_with(aad)?;
            segs.push(seg(&b.0));
            Some(b)
        } else {
            None
        };
        let decrypt = dir == Direction::Decrypt;
        let req = Request {
            op: op::INIT,
            slot: key.index,
            generation: key.generation,
            cipher: m,
            flags: if decrypt { FLAG_DECRYPT } else { 0 },
            sector: owner,
            ..Request::ZERO
        };
        let resp = self.call_generic(req, &segs)?;
        drop(aad_buf);
        Ok(ContextId {
            index: resp.aux[0] as u32,
            generation: resp.aux[1] as u32,
            tag_len: p.tag_bits / 8,
            decrypt,
        })
    }

    fn context_request(opcode: u32, ctx: ContextId, owner: u64) -> Request {
        Request {
            op: opcode,
            slot: ctx.index,
            generation: ctx.generation,
            sector: owner,
            ..Request::ZERO
        }
    }

    /// Encrypts or decrypts `data` in place, continuing the context (ECB and CBC: whole
    /// blocks; CTR and GCM: any length). The data goes through a window buffer that is
    /// wiped afterwards.
    pub fn generic_update(&self, ctx: ContextId, owner: u64, data: &mut [u8]) -> Result<()> {
        for part in data.chunks_mut(CHUNK) {
            let mut b = self.window_with(part)?;
            // SAFETY: `b` is a window buffer of this vault, not borrowed elsewhere.
            unsafe { self.generic_update_segments(ctx, owner, &[seg(&b.0)])? };
            part.copy_from_slice(&b.0);
            b.0.zeroize();
        }
        Ok(())
    }

    /// [`Vault::generic_update`] on window ranges in place (zero copy), up to
    /// `vault_vm::abi::MAX_SEGMENTS` of them, processed in order. Returns the bytes
    /// processed.
    ///
    /// # Safety
    /// The vault writes these ranges while the call runs: no live `WindowBuf` borrow may
    /// overlap them.
    pub unsafe fn generic_update_segments(
        &self,
        ctx: ContextId,
        owner: u64,
        segs: &[Segment],
    ) -> Result<u64> {
        if segs.is_empty() || segs.len() > abi::MAX_SEGMENTS {
            return Err(HvError::Config(format!(
                "{} segments (1..={} per update)",
                segs.len(),
                abi::MAX_SEGMENTS
            )));
        }
        let req = Self::context_request(op::UPDATE, ctx, owner);
        Ok(self.call_generic(req, segs)?.bytes)
    }

    /// Ends an ECB, CBC or CTR context.
    pub fn generic_final(&self, ctx: ContextId, owner: u64) -> Result<()> {
        let req = Self::context_request(op::FINAL, ctx, owner);
        self.call_generic(req, &[]).map(|_| ())
    }

    /// Ends a GCM encryption: the tag.
    pub fn gcm_encrypt_final(&self, ctx: ContextId, owner: u64) -> Result<Vec<u8>> {
        let out = Wiped(self.window().alloc(ctx.tag_len as usize)?);
        let req = Self::context_request(op::FINAL, ctx, owner);
        self.call_generic(req, &[seg(&out.0)])?;
        Ok(out.0.to_vec())
    }

    /// Ends a GCM decryption: `Ok` when `tag` verifies, [`HvError::TagMismatch`] when
    /// not (the context ends either way; wipe the plaintext then).
    pub fn gcm_decrypt_final(&self, ctx: ContextId, owner: u64, tag: &[u8]) -> Result<()> {
        debug_assert!(ctx.decrypt);
        let t = self.window_with(tag)?;
        let req = Self::context_request(op::FINAL, ctx, owner);
        self.call_generic(req, &[seg(&t.0)]).map(|_| ())
    }

    /// Frees a context without finishing it.
    pub fn generic_abort(&self, ctx: ContextId, owner: u64) -> Result<()> {
        let req = Self::context_request(op::ABORT, ctx, owner);
        self.call_generic(req, &[]).map(|_| ())
    }

    /// XTS (IEEE 1619) of `data` in place with an XTS key: data units of `unit_size`
    /// (512, 1024, 2048 or 4096) bytes, the first with tweak `data_unit`, the next ones
    /// counting up.
    pub fn generic_xts(
        &self,
        key: GenericKey,
        dir: Direction,
        data_unit: u64,
        unit_size: u32,
        data: &mut [u8],
    ) -> Result<()> {
        let mut unit = data_unit;
        for part in data.chunks_mut(CHUNK) {
            let mut b = self.window_with(part)?;
            let req = Request {
                op: op::XTS,
                slot: key.index,
                generation: key.generation,
                flags: if dir == Direction::Decrypt {
                    FLAG_DECRYPT
                } else {
                    0
                },
                sector_size: unit_size,
                sector: unit,
                ..Request::ZERO
            };
            self.call_generic(req, &[seg(&b.0)])?;
            part.copy_from_slice(&b.0);
            b.0.zeroize();
            unit = unit.wrapping_add((CHUNK / unit_size.max(1) as usize) as u64);
        }
        Ok(())
    }

    /// Wraps the extractable generic key `target` with the AES key `wrapping`.
    pub fn wrap_key(
        &self,
        wrapping: GenericKey,
        target: GenericKey,
        mechanism: WrapMechanism,
    ) -> Result<Vec<u8>> {
        let p = WrapParams {
            target_slot: target.index,
            target_generation: target.generation,
            kind: 0,
            reserved: 0,
        };
        let params = self.window_with(block_bytes(&p))?;
        let out = self.window().alloc(g::MAX_WRAPPED)?;
        let req = Request {
            op: op::WRAP_KEY,
            slot: wrapping.index,
            generation: wrapping.generation,
            cipher: mechanism.id(),
            ..Request::ZERO
        };
        let resp = self.call_generic(req, &[seg(&params.0), seg(&out)])?;
        Ok(out[..resp.bytes as usize].to_vec())
    }

    /// Unwraps `wrapped` with the AES key `wrapping` into a new generic key of `kind`.
    /// A failed integrity check is [`HvError::UnwrapFailed`] (nothing is installed).
    pub fn unwrap_key(
        &self,
        wrapping: GenericKey,
        mechanism: WrapMechanism,
        wrapped: &[u8],
        kind: KeyKind,
        extractable: bool,
    ) -> Result<GenericKey> {
        let (slot, generation) = self.slots.alloc()?;
        let p = WrapParams {
            target_slot: slot as u32,
            target_generation: generation,
            kind: kind.id(),
            reserved: 0,
        };
        let r = (|| {
            let params = self.window_with(block_bytes(&p))?;
            let input = self.window_with(wrapped)?;
            let req = Request {
                op: op::UNWRAP_KEY,
                slot: wrapping.index,
                generation: wrapping.generation,
                cipher: mechanism.id(),
                flags: if extractable { FLAG_EXTRACTABLE } else { 0 },
                ..Request::ZERO
            };
            self.call_generic(req, &[seg(&params.0), seg(&input.0)])
        })();
        match r {
            Ok(_) => Ok(GenericKey {
                index: slot as u32,
                generation,
                kind,
            }),
            Err(e) => {
                self.slots.free(slot, generation);
                Err(e)
            }
        }
    }
}
