//! Keyslot operations: the vault unlocks a LUKS keyslot, seals a new one, computes a
//! key's digest and generates keys, so that a volume key never exists in this process.
//!
//! The [`KeyslotParams`], the passphrase and the keyslot area go into the data window
//! (each in its own buffer); the window buffer that held the passphrase is wiped as soon
//! as the request is answered, whatever the answer. Argon2's memory is a temporary
//! scratch mapping the backend provides for the duration of the request.

use std::ptr;

use vault_vm::abi::keyslot::{self, entropy_source, HOST_ENTROPY_LEN, MAX_DIGEST};
use vault_vm::abi::{self, status, Request, Response, Segment};
use vault_vm::engine::CipherSpec;
use zeroize::Zeroize;

pub use vault_vm::abi::keyslot::KeyslotParams;

use crate::error::{HvError, Result};
use crate::keys::SlotId;
use crate::window::WindowBuf;
use crate::Vault;

/// Where the CPU's share of a generated key's entropy came from (the host's
/// `getrandom` share is always mixed in).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EntropySource {
    /// RDSEED delivered it.
    Rdseed,
    /// RDSEED failed; RDRAND delivered it.
    Rdrand,
}

impl std::fmt::Display for EntropySource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            EntropySource::Rdseed => "RDSEED",
            EntropySource::Rdrand => "RDRAND",
        })
    }
}

// `KeyslotParams` has no padding: its bytes are exactly its fields.
// 16 `u32`s, two salts, the digest and `scratch_len`.
const _: () =
    assert!(size_of::<KeyslotParams>() == 16 * 4 + 2 * keyslot::MAX_SALT + MAX_DIGEST + 8);

/// The bytes of `p` as the vault reads them from the window.
pub(crate) fn params_bytes(p: &KeyslotParams) -> &[u8] {
    // SAFETY: `KeyslotParams` is `#[repr(C)]` plain data (integers and byte arrays)
    // without padding (the size checks above and in the ABI), so all of its
    // `size_of` bytes are initialized; the slice borrows `p`.
    unsafe { std::slice::from_raw_parts(ptr::from_ref(p).cast::<u8>(), size_of::<KeyslotParams>()) }
}

/// Name of a keyslot operation (for [`HvError::Unsupported`]).
fn op_name(opcode: u32) -> &'static str {
    match opcode {
        keyslot::op::UNLOCK_KEYSLOT => "UNLOCK_KEYSLOT",
        keyslot::op::SEAL_KEYSLOT => "SEAL_KEYSLOT",
        keyslot::op::KEY_DIGEST => "KEY_DIGEST",
        keyslot::op::GENERATE_KEY => "GENERATE_KEY",
        keyslot::op::KDF_JOIN => "KDF_JOIN",
        _ => "an unknown operation",
    }
}

/// The answer to a keyslot request, with BAD_PASSPHRASE and BAD_OP as their own errors.
pub(crate) fn check_keyslot(opcode: u32, resp: Response) -> Result<Response> {
    match resp.status {
        keyslot::status::BAD_PASSPHRASE => Err(HvError::BadPassphrase),
        status::BAD_OP => Err(HvError::Unsupported(op_name(opcode))),
        _ => Vault::check(resp),
    }
}

/// A window buffer zeroed before it goes back to the window (it held a passphrase).
struct Wiped(WindowBuf);

impl Drop for Wiped {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// The window range of a buffer.
fn seg(b: &WindowBuf) -> Segment {
    Segment {
        offset: b.offset(),
        len: b.len() as u64,
    }
}

/// A keyslot request on vault slot `slot` (generation `generation`) with `segs`.
pub(crate) fn keyslot_request(
    opcode: u32,
    slot: u32,
    generation: u32,
    cipher: u32,
    key_len: u32,
    segs: &[Segment],
) -> Request {
    let mut req = Request {
        op: opcode,
        slot,
        generation,
        cipher,
        key_len,
        nsegs: segs.len() as u32,
        ..Request::ZERO
    };
    req.segs[..segs.len()].copy_from_slice(segs);
    req
}

/// Host-side checks of keyslot parameters (the vault checks everything again).
fn check_params(p: &KeyslotParams) -> Result<()> {
    if p.salt_len as usize > keyslot::MAX_SALT || p.digest_salt_len as usize > keyslot::MAX_SALT {
        return Err(HvError::BadKeyslot("salt longer than 64 bytes"));
    }
    if p.digest_len == 0 || p.digest_len as usize > MAX_DIGEST {
        return Err(HvError::BadKeyslot("digest length not 1..=64 bytes"));
    }
    if p.af_stripes == 0 || p.af_stripes > keyslot::MAX_STRIPES {
        return Err(HvError::BadKeyslot("AF stripes not 1..=4000"));
    }
    if p.scratch_len > keyslot::SCRATCH_MAX {
        return Err(HvError::ScratchTooLarge {
            requested: p.scratch_len,
            limit: crate::scratch::scratch_limit(),
        });
    }
    Ok(())
}

/// The lanes of an Argon2 KDF (0 for PBKDF2: nothing to run in parallel).
fn argon2_lanes(p: &KeyslotParams) -> u32 {
    match p.kdf {
        keyslot::kdf::ARGON2I | keyslot::kdf::ARGON2ID => p.lanes,
        _ => 0,
    }
}

fn check_passphrase(passphrase: &[u8]) -> Result<()> {
    if passphrase.len() as u64 > keyslot::MAX_PASSPHRASE {
        return Err(HvError::BadKeyslot("passphrase longer than 8 MiB"));
    }
    Ok(())
}

impl Vault {
    /// A window buffer holding `bytes`.
    fn window_copy(&self, bytes: &[u8]) -> Result<WindowBuf> {
        let mut b = self.window().alloc(bytes.len())?;
        b.copy_from_slice(bytes);
        Ok(b)
    }

    /// Sends a keyslot request with the scratch memory `scratch_len` asks for. An
    /// Argon2 KDF of `kdf_lanes` > 1 lanes gets KDF_JOIN requests on up to
    /// `kdf_lanes - 1` other vCPUs, so its lanes run in parallel.
    fn call_keyslot(
        &self,
        req: &mut Request,
        scratch_len: u64,
        kdf_lanes: u32,
    ) -> Result<Response> {
        req.id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let vcpus = self.vcpus();
        let lane = Self::lane() % vcpus;
        let helpers = if scratch_len > 0 {
            (kdf_lanes as usize).min(vcpus).saturating_sub(1)
        } else {
            0
        };
        let joins: Vec<(usize, Request)> = (1..=helpers)
            .map(|k| {
                let j = Request {
                    op: keyslot::op::KDF_JOIN,
                    id: self
                        .next_id
                        .fetch_add(1, std::sync::atomic::Ordering::Relaxed),
                    ..Request::ZERO
                };
                ((lane + k) % vcpus, j)
            })
            .collect();
        let (resp, segments) = self.backend.call_keyslot(lane, req, scratch_len, &joins)?;
        self.kdf_joined
            .fetch_add(segments, std::sync::atomic::Ordering::Relaxed);
        check_keyslot(req.op, resp)
    }

    /// Argon2 lane-segments (one lane's part of one slice of one pass) that vCPUs
    /// lent by KDF_JOIN computed beside the vCPU serving an UNLOCK or SEAL, since the
    /// vault was opened. Stays 0 with one vCPU, one-lane KDFs or PBKDF2.
    pub fn kdf_joined_segments(&self) -> u64 {
        self.kdf_joined.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Runs `f` with a freshly reserved slot; frees the reservation when `f` fails.
    fn with_new_slot(
        &self,
        spec: CipherSpec,
        f: impl FnOnce(u32, u32) -> Result<Response>,
    ) -> Result<(SlotId, Response)> {
        let (slot, generation) = self.slots.alloc()?;
        match f(slot as u32, generation) {
            Ok(resp) => Ok((
                SlotId {
                    index: slot as u32,
                    cipher: abi::cipher_id(spec),
                    generation,
                },
                resp,
            )),
            Err(e) => {
                self.slots.free(slot, generation);
                Err(e)
            }
        }
    }

    /// Unlocks a LUKS keyslot inside the vault: it runs the KDF on `passphrase`,
    /// decrypts `area` (the keyslot's encrypted key material as read from the device),
    /// merges the AF stripes and checks the digest in `params`; on success the key is in
    /// a new slot, for cipher `spec`. A passphrase that does not open this keyslot gives
    /// [`HvError::BadPassphrase`]. `params.scratch_len` bytes of Argon2 memory are
    /// mapped for the request.
    pub fn unlock_keyslot(
        &self,
        spec: CipherSpec,
        params: &KeyslotParams,
        passphrase: &[u8],
        area: &[u8],
    ) -> Result<SlotId> {
        Self::check_key_len(spec, params.volume_key_len as usize)?;
        check_params(params)?;
        check_passphrase(passphrase)?;
        if area.len() as u64 != params.area_len() {
            return Err(HvError::BadKeyslot(
                "keyslot area length is not what key size and AF stripes give",
            ));
        }
        let pbuf = self.window_copy(params_bytes(params))?;
        let pass = Wiped(self.window_copy(passphrase)?);
        let abuf = self.window_copy(area)?;
        let segs = [seg(&pbuf), seg(&pass.0), seg(&abuf)];
        let r = self.with_new_slot(spec, |slot, generation| {
            let mut req = keyslot_request(
                keyslot::op::UNLOCK_KEYSLOT,
                slot,
                generation,
                abi::cipher_id(spec),
                params.volume_key_len,
                &segs,
            );
            self.call_keyslot(&mut req, params.scratch_len, argon2_lanes(params))
        });
        drop(pass);
        r.map(|(id, _)| id)
    }

    /// Seals the key in `key` under `passphrase`: the vault splits it into AF stripes,
    /// encrypts them with the KDF output and returns the keyslot area to write
    /// (`params.area_len()` bytes; ciphertext only).
    pub fn seal_keyslot(
        &self,
        key: SlotId,
        params: &KeyslotParams,
        passphrase: &[u8],
    ) -> Result<Vec<u8>> {
        Self::check_key_len(key.spec(), params.volume_key_len as usize)?;
        check_params(params)?;
        check_passphrase(passphrase)?;
        let area_len = usize::try_from(params.area_len())
            .map_err(|_| HvError::BadKeyslot("keyslot area too large"))?;
        let pbuf = self.window_copy(params_bytes(params))?;
        let pass = Wiped(self.window_copy(passphrase)?);
        let abuf = self.window().alloc(area_len)?;
        let segs = [seg(&pbuf), seg(&pass.0), seg(&abuf)];
        let mut req = keyslot_request(
            keyslot::op::SEAL_KEYSLOT,
            key.index,
            key.generation,
            key.cipher,
            params.volume_key_len,
            &segs,
        );
        let r = self.call_keyslot(&mut req, params.scratch_len, argon2_lanes(params));
        drop(pass);
        r?;
        Ok(abuf.to_vec())
    }

    /// The LUKS digest of the key in `key` (PBKDF2 with the digest parameters of
    /// `params`; `params.digest_len` bytes).
    pub fn key_digest(&self, key: SlotId, params: &KeyslotParams) -> Result<Vec<u8>> {
        Self::check_key_len(key.spec(), params.volume_key_len as usize)?;
        check_params(params)?;
        let pbuf = self.window_copy(params_bytes(params))?;
        let dbuf = self.window().alloc(params.digest_len as usize)?;
        let segs = [seg(&pbuf), seg(&dbuf)];
        let mut req = keyslot_request(
            keyslot::op::KEY_DIGEST,
            key.index,
            key.generation,
            key.cipher,
            params.volume_key_len,
            &segs,
        );
        // The digest is PBKDF2 only: no scratch memory.
        self.call_keyslot(&mut req, 0, 0)?;
        Ok(dbuf.to_vec())
    }

    /// Generates a `key_len`-byte key for `spec` in a new slot, from the CPU's RDSEED
    /// (RDRAND as the fallback) mixed with [`HOST_ENTROPY_LEN`] bytes of `getrandom`
    /// placed in the transfer page (wiped afterwards).
    pub fn generate_key(
        &self,
        spec: CipherSpec,
        key_len: usize,
    ) -> Result<(SlotId, EntropySource)> {
        Self::check_key_len(spec, key_len)?;
        let _transfer = self.slots.transfer_lock();
        let page = self.backend.transfer();
        let wipe = || {
            for i in 0..abi::TRANSFER_SIZE as usize {
                // SAFETY: the transfer page is TRANSFER_SIZE bytes.
                unsafe { ptr::write_volatile(page.add(i), 0) };
            }
        };
        let r = fill_host_entropy(page).and_then(|()| {
            self.with_new_slot(spec, |slot, generation| {
                let mut req = keyslot_request(
                    keyslot::op::GENERATE_KEY,
                    slot,
                    generation,
                    abi::cipher_id(spec),
                    key_len as u32,
                    &[],
                );
                self.call_keyslot(&mut req, 0, 0)
            })
        });
        // The vault wiped the page; make sure of it whatever happened.
        wipe();
        let (id, resp) = r?;
        let source = match resp.aux[0] {
            entropy_source::RDSEED => EntropySource::Rdseed,
            entropy_source::RDRAND => EntropySource::Rdrand,
            _ => {
                let _ = self.drop_key(id);
                return Err(HvError::BadKeyslot(
                    "the vault reported an unknown entropy source",
                ));
            }
        };
        Ok((id, source))
    }
}

/// Writes [`HOST_ENTROPY_LEN`] bytes from `getrandom` into the transfer page.
fn fill_host_entropy(page: *mut u8) -> Result<()> {
    let mut done = 0;
    while done < HOST_ENTROPY_LEN {
        // SAFETY: writes at most HOST_ENTROPY_LEN - done bytes at page + done, inside the
        // TRANSFER_SIZE-byte page (HOST_ENTROPY_LEN <= TRANSFER_SIZE, checked by the ABI).
        let n = unsafe { libc::getrandom(page.add(done).cast(), HOST_ENTROPY_LEN - done, 0) };
        if n < 0 {
            let err = std::io::Error::last_os_error();
            if err.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(HvError::Os {
                what: "getrandom for the host share of a generated key",
                err,
            });
        }
        done += n as usize;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::mem::offset_of;

    fn sample() -> KeyslotParams {
        let mut p = KeyslotParams {
            kdf: keyslot::kdf::ARGON2ID,
            time: 4,
            memory_kib: 1024,
            lanes: 2,
            salt_len: 32,
            area_cipher: abi::cipher_id(CipherSpec::parse("aes-xts-plain64").unwrap()),
            area_key_len: 64,
            af_stripes: 4000,
            af_hash: keyslot::hash::SHA256,
            volume_key_len: 64,
            digest_hash: keyslot::hash::SHA256,
            digest_iterations: 1000,
            digest_len: 32,
            digest_salt_len: 32,
            scratch_len: 1 << 20,
            ..KeyslotParams::ZERO
        };
        p.salt[..32].fill(0x11);
        p.digest_salt[..32].fill(0x22);
        p.digest[..32].fill(0x33);
        p
    }

    #[test]
    fn params_encode_field_by_field_little_endian() {
        let p = sample();
        let b = params_bytes(&p);
        assert_eq!(b.len(), 264);
        let word = |off: usize| u32::from_le_bytes(b[off..off + 4].try_into().unwrap());
        assert_eq!(word(offset_of!(KeyslotParams, kdf)), keyslot::kdf::ARGON2ID);
        assert_eq!(word(offset_of!(KeyslotParams, time)), 4);
        assert_eq!(word(offset_of!(KeyslotParams, memory_kib)), 1024);
        assert_eq!(word(offset_of!(KeyslotParams, af_stripes)), 4000);
        assert_eq!(word(offset_of!(KeyslotParams, digest_len)), 32);
        assert_eq!(&b[24..56], &[0x11; 32]);
        assert_eq!(&b[56..88], &[0; 32]);
        assert_eq!(&b[128..160], &[0x22; 32]);
        assert_eq!(&b[192..224], &[0x33; 32]);
        assert_eq!(u64::from_le_bytes(b[256..264].try_into().unwrap()), 1 << 20);
    }

    #[test]
    fn requests_carry_slot_and_segments_and_nothing_else() {
        let segs = [
            Segment {
                offset: 0,
                len: 264,
            },
            Segment {
                offset: 4096,
                len: 7,
            },
            Segment {
                offset: 8192,
                len: 256_000,
            },
        ];
        let r = keyslot_request(keyslot::op::UNLOCK_KEYSLOT, 3, 9, 2, 64, &segs);
        assert_eq!(
            (r.op, r.slot, r.generation, r.cipher, r.key_len),
            (7, 3, 9, 2, 64)
        );
        assert_eq!(r.nsegs, 3);
        assert_eq!(&r.segs[..3], &segs);
        assert_eq!(
            (r.sector, r.iv_offset, r.sector_size, r.flags),
            (0, 0, 0, 0)
        );
        let g = keyslot_request(keyslot::op::GENERATE_KEY, 1, 2, 2, 64, &[]);
        assert_eq!(g.nsegs, 0);
    }

    #[test]
    fn statuses_map_to_typed_errors() {
        let resp = |status| Response {
            status,
            ..Response::default()
        };
        assert!(matches!(
            check_keyslot(
                keyslot::op::UNLOCK_KEYSLOT,
                resp(keyslot::status::BAD_PASSPHRASE)
            ),
            Err(HvError::BadPassphrase)
        ));
        let e = check_keyslot(keyslot::op::UNLOCK_KEYSLOT, resp(status::BAD_OP)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "vault does not support UNLOCK_KEYSLOT (BAD_OP)"
        );
        let e =
            check_keyslot(keyslot::op::SEAL_KEYSLOT, resp(keyslot::status::KDF_LIMIT)).unwrap_err();
        assert_eq!(
            e.to_string(),
            "the vault refused the request: KDF_LIMIT (segment 0)"
        );
        assert!(check_keyslot(keyslot::op::KEY_DIGEST, resp(status::OK)).is_ok());
        // The passphrase error says nothing about the passphrase.
        assert_eq!(
            HvError::BadPassphrase.to_string(),
            "no key available with this passphrase"
        );
    }

    #[test]
    fn host_checks_come_before_the_vault() {
        let mut p = sample();
        p.salt_len = 65;
        assert!(check_params(&p).is_err());
        let mut p = sample();
        p.digest_len = 0;
        assert!(check_params(&p).is_err());
        let mut p = sample();
        p.af_stripes = 4001;
        assert!(check_params(&p).is_err());
        let mut p = sample();
        p.scratch_len = keyslot::SCRATCH_MAX + 1;
        assert!(matches!(
            check_params(&p),
            Err(HvError::ScratchTooLarge { .. })
        ));
        assert!(check_params(&sample()).is_ok());
        assert!(check_passphrase(&vec![0; (keyslot::MAX_PASSPHRASE + 1) as usize]).is_err());
    }

    #[test]
    fn host_entropy_fills_the_share() {
        let mut page = vec![0u8; abi::TRANSFER_SIZE as usize];
        fill_host_entropy(page.as_mut_ptr()).unwrap();
        assert!(page[..HOST_ENTROPY_LEN].iter().any(|&b| b != 0));
        assert!(page[HOST_ENTROPY_LEN..].iter().all(|&b| b == 0));
    }
}
