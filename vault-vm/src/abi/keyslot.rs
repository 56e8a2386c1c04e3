//! Keyslot operations: the part of the contract that lets the vault unlock a LUKS
//! keyslot, seal a new one, compute a volume key's digest and generate a volume key, so
//! that a volume key never exists in host memory.
//!
//! # Requests
//!
//! All use the ordinary [`Request`](super::Request) in a ring entry. `slot` and
//! `generation` name the vault slot the operation installs into (UNLOCK, GENERATE: the
//! slot must be empty) or reads from (SEAL, DIGEST: the slot must hold a key of that
//! generation). `cipher` and `key_len` are, as for IMPORT_KEY, the volume's cipher and
//! key length. `sector`, `iv_offset` and `sector_size` must be zero and `flags` must be
//! zero. Segments are byte ranges of the data window (no sector alignment):
//!
//! | op                           | `segs[0]`          | `segs[1]`        | `segs[2]`               |
//! |------------------------------|--------------------|------------------|-------------------------|
//! | [`op::UNLOCK_KEYSLOT`]       | [`KeyslotParams`]  | passphrase       | encrypted keyslot area  |
//! | [`op::SEAL_KEYSLOT`]         | [`KeyslotParams`]  | passphrase       | area to write (output)  |
//! | [`op::KEY_DIGEST`]           | [`KeyslotParams`]  | digest (output)  | —                       |
//! | [`op::GENERATE_KEY`]         | —                  | —                | —                       |
//! | [`op::KDF_JOIN`]             | —                  | —                | —                       |
//!
//! GENERATE_KEY takes [`HOST_ENTROPY_LEN`] bytes of host entropy (`getrandom`) from the
//! transfer page, mixes them with the CPU's RDSEED (RDRAND as the fallback) and wipes
//! the page; [`Response::aux`](super::Response)`[0]` reports the source
//! ([`entropy_source`]).
//!
//! KDF_JOIN lends the receiving vCPU to the Argon2 computation of an UNLOCK or SEAL
//! running on another vCPU of the same vault: it waits a bounded time (a few
//! milliseconds of spinning) for one to start, computes lanes beside it until it ends
//! and answers OK with [`Response::aux`](super::Response)`[0]` = the lane-segments it
//! computed (0: no computation came, it came with one lane, or it was over). It names
//! no slot and no segment: every field but `op` and `id` must be zero. It never reads
//! or writes a key or a slot, and it touches the scratch memory only for the lanes it
//! claims of a running computation (Argon2 blocks, passphrase-derived only). The host
//! sends it to other rings together with an Argon2 UNLOCK/SEAL of more than one lane,
//! so that their vCPUs run at the same time; the computation completes on the serving
//! vCPU alone when no join comes.
//!
//! The passphrase and the encrypted area are host data (the host read them from the
//! user and the device): the vault may read them in place. Everything derived from
//! them (the KDF output, the decrypted AF stripes, the merged key) stays in vault-private
//! memory and is wiped. SEAL draws the AF stripes from the vault's random generator.
//!
//! # Validation (what the vault refuses)
//!
//! KDF_JOIN: any field but `op` and `id` not zero (the segments included) →
//! `BAD_FLAGS`, except `nsegs` → `TOO_MANY_SEGMENTS`.
//!
//! Other requests: `flags`, `sector`, `iv_offset`, `sector_size`, `reserved2` not zero →
//! `BAD_FLAGS`; `nsegs` not exactly 3 (UNLOCK, SEAL), 2 (DIGEST) or 0 (GENERATE) →
//! `TOO_MANY_SEGMENTS`; an unknown `cipher` → `BAD_CIPHER`; a `key_len` the cipher does
//! not take → `BAD_KEY_LEN`; a segment past the window → `OUT_OF_WINDOW`/`OVERFLOW`
//! (detail: the segment). `segs[0]` must be [`PARAMS_LEN`] long, the passphrase at most
//! [`MAX_PASSPHRASE`], the area exactly [`KeyslotParams::area_len`], the digest output
//! exactly `digest_len` → else [`status::BAD_PARAMS`] with the segment in `detail`.
//!
//! Parameters (copied out of the window first): `reserved` not zero → `BAD_FLAGS`;
//! `volume_key_len` not the request's `key_len`, unknown KDF/hash/area cipher ids, an
//! `area_key_len` the area cipher does not take, `salt_len`/`digest_salt_len` over
//! [`MAX_SALT`], `digest_len` 0 or over [`MAX_DIGEST`], stripes 0 or over
//! [`MAX_STRIPES`], zero iterations or passes, Argon2 lanes 0 or over 16, memory below
//! 8 KiB per lane, an Argon2 salt under 8 bytes, `kdf_hash`/`memory_kib`/`lanes` set for
//! the KDF that does not use them, or a non-zero `scratch_len` for PBKDF2 →
//! [`status::BAD_PARAMS`]. PBKDF2 (keyslot or digest) over 100,000,000 iterations,
//! Argon2 over 1000 passes, `memory_kib * 1024 > scratch_len` or `scratch_len >`
//! [`SCRATCH_MAX`] → [`status::KDF_LIMIT`]. UNLOCK checks every field; SEAL ignores the
//! digest fields; DIGEST reads only `volume_key_len`, `reserved` and the digest fields.
//!
//! Slots: UNLOCK and GENERATE need an empty slot (`SLOT_BUSY`), SEAL and DIGEST a key
//! of the request's generation (`SLOT_EMPTY`) and cipher (`BAD_CIPHER`). UNLOCK answers
//! `SLOT_BUSY` before running the KDF if the slot is taken. No slot lock is held while
//! a KDF runs. GENERATE wipes the transfer page whatever its outcome.
//!
//! # Argon2 scratch memory
//!
//! Argon2's memory is a temporary memslot the host maps at [`SCRATCH_GPA`] for the
//! duration of one request, [`KeyslotParams::scratch_len`] bytes long (at most
//! [`SCRATCH_MAX`]); the host removes and wipes it afterwards. The page tables always
//! cover the whole range with 2 MiB pages; without a memslot behind it an access exits
//! to the host. The vault refuses ([`status::KDF_LIMIT`]) a cost whose memory exceeds
//! `scratch_len`. Argon2 memory holds only passphrase-derived blocks, never key bytes;
//! the vault zeroes the blocks it used before it answers. One keyslot request uses the
//! scratch at a time (the vault serializes Argon2 requests across its vCPUs). Argon2's
//! lanes run on the serving vCPU and on the vCPUs that KDF_JOIN requests lent to it.

use core::mem::{offset_of, size_of};

/// Operation codes of keyslot requests (continuing [`super::op`]).
pub mod op {
    /// Run the keyslot's KDF on the passphrase, decrypt the area, merge the AF stripes,
    /// check the digest; on success install the key in the request's slot.
    pub const UNLOCK_KEYSLOT: u32 = 7;
    /// Split the key in the request's slot into AF stripes, encrypt them with the
    /// KDF output of the passphrase and write the area.
    pub const SEAL_KEYSLOT: u32 = 8;
    /// Write the LUKS digest (PBKDF2 of the key in the slot with the digest parameters).
    pub const KEY_DIGEST: u32 = 9;
    /// Generate a key in the request's slot from RDSEED/RDRAND mixed with host entropy.
    pub const GENERATE_KEY: u32 = 10;
    /// Compute Argon2 lanes of the UNLOCK/SEAL running on another vCPU (no slot, no
    /// segments, every other field zero); `aux[0]`: lane-segments computed.
    pub const KDF_JOIN: u32 = 11;
}

/// Status codes of keyslot requests (continuing [`super::status`]).
pub mod status {
    /// The passphrase does not open this keyslot (the digest does not match).
    pub const BAD_PASSPHRASE: u32 = 15;
    /// The KDF cost is above what the vault accepts, or above the scratch memory.
    pub const KDF_LIMIT: u32 = 16;
    /// A keyslot parameter is out of range or inconsistent (unknown KDF or hash, salt
    /// or digest too long, area length not what key size and stripes give, ...).
    pub const BAD_PARAMS: u32 = 17;
    /// Neither RDSEED nor RDRAND delivered entropy.
    pub const NO_ENTROPY: u32 = 18;

    /// Short name of a keyslot status code, `None` for other codes.
    pub fn name(s: u32) -> Option<&'static str> {
        Some(match s {
            BAD_PASSPHRASE => "BAD_PASSPHRASE",
            KDF_LIMIT => "KDF_LIMIT",
            BAD_PARAMS => "BAD_PARAMS",
            NO_ENTROPY => "NO_ENTROPY",
            _ => return None,
        })
    }
}

/// KDF ids ([`KeyslotParams::kdf`]).
pub mod kdf {
    /// PBKDF2-HMAC with [`KeyslotParams::kdf_hash`](super::KeyslotParams).
    pub const PBKDF2: u32 = 1;
    /// Argon2i, version 0x13.
    pub const ARGON2I: u32 = 2;
    /// Argon2id, version 0x13.
    pub const ARGON2ID: u32 = 3;
}

/// Hash ids (PBKDF2 PRF, AF diffusion, digest).
pub mod hash {
    /// SHA-1.
    pub const SHA1: u32 = 1;
    /// SHA-224.
    pub const SHA224: u32 = 2;
    /// SHA-256.
    pub const SHA256: u32 = 3;
    /// SHA-384.
    pub const SHA384: u32 = 4;
    /// SHA-512.
    pub const SHA512: u32 = 5;
    /// RIPEMD-160.
    pub const RIPEMD160: u32 = 6;
}

/// Values of `Response::aux[0]` after GENERATE_KEY.
pub mod entropy_source {
    /// RDSEED delivered the CPU's share.
    pub const RDSEED: u64 = 1;
    /// RDSEED failed; RDRAND delivered it.
    pub const RDRAND: u64 = 2;
}

/// Bytes of host entropy GENERATE_KEY reads from the transfer page.
pub const HOST_ENTROPY_LEN: usize = 64;
/// Longest salt (KDF or digest).
pub const MAX_SALT: usize = 64;
/// Longest digest.
pub const MAX_DIGEST: usize = 64;
/// Most AF stripes (LUKS uses 4000).
pub const MAX_STRIPES: u32 = 4000;
/// Longest passphrase or key file (cryptsetup's default key-file limit, 8 MiB).
pub const MAX_PASSPHRASE: u64 = 8 << 20;
/// Keyslot areas are encrypted in 512-byte sectors, IVs counted from 0.
pub const AREA_SECTOR: u64 = 512;
/// Guest address of the Argon2 scratch memslot.
pub const SCRATCH_GPA: u64 = 0x20_0000_0000;
/// Largest scratch memslot (cryptsetup's Argon2 maximum, 4 GiB).
pub const SCRATCH_MAX: u64 = 4 << 30;

const _: () = assert!(SCRATCH_GPA >= super::WINDOW_GPA + super::WINDOW_MAX);
const _: () = assert!(SCRATCH_GPA.is_multiple_of(1 << 30));
const _: () = assert!(HOST_ENTROPY_LEN as u64 <= super::TRANSFER_SIZE);

/// Length of a keyslot area: `key_len * stripes` rounded up to [`AREA_SECTOR`].
pub const fn area_len(key_len: u32, stripes: u32) -> u64 {
    let raw = key_len as u64 * stripes as u64;
    raw.div_ceil(AREA_SECTOR) * AREA_SECTOR
}

/// The parameters of one keyslot and of the volume's digest, as the host read them
/// from (or will write them to) the LUKS header. The vault copies this out of the
/// window and validates the copy before it uses any field.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyslotParams {
    /// [`kdf`] id.
    pub kdf: u32,
    /// PBKDF2's PRF [`hash`] id; 0 for Argon2.
    pub kdf_hash: u32,
    /// PBKDF2 iterations, or Argon2 passes (time cost).
    pub time: u32,
    /// Argon2 memory cost in KiB; 0 for PBKDF2.
    pub memory_kib: u32,
    /// Argon2 lanes; 0 for PBKDF2.
    pub lanes: u32,
    /// Bytes of [`KeyslotParams::salt`] in use.
    pub salt_len: u32,
    /// The keyslot's KDF salt.
    pub salt: [u8; MAX_SALT],
    /// Cipher id ([`super::cipher_id`]) of the keyslot area's encryption.
    pub area_cipher: u32,
    /// Key length of the area's encryption = the KDF output length.
    pub area_key_len: u32,
    /// AF stripes (1..=[`MAX_STRIPES`]).
    pub af_stripes: u32,
    /// AF diffusion [`hash`] id.
    pub af_hash: u32,
    /// Volume key length; must equal the request's `key_len`.
    pub volume_key_len: u32,
    /// Digest PBKDF2 [`hash`] id.
    pub digest_hash: u32,
    /// Digest PBKDF2 iterations.
    pub digest_iterations: u32,
    /// Bytes of [`KeyslotParams::digest`] in use (LUKS1: 20; LUKS2: the hash length).
    pub digest_len: u32,
    /// Bytes of [`KeyslotParams::digest_salt`] in use.
    pub digest_salt_len: u32,
    /// Must be zero.
    pub reserved: u32,
    /// The digest's salt.
    pub digest_salt: [u8; MAX_SALT],
    /// UNLOCK: the digest the merged key must have. Otherwise ignored (zero).
    pub digest: [u8; MAX_DIGEST],
    /// Bytes of scratch memory mapped at [`SCRATCH_GPA`] for this request (0 for
    /// PBKDF2).
    pub scratch_len: u64,
}

impl KeyslotParams {
    /// All fields zero.
    pub const ZERO: KeyslotParams = KeyslotParams {
        kdf: 0,
        kdf_hash: 0,
        time: 0,
        memory_kib: 0,
        lanes: 0,
        salt_len: 0,
        salt: [0; MAX_SALT],
        area_cipher: 0,
        area_key_len: 0,
        af_stripes: 0,
        af_hash: 0,
        volume_key_len: 0,
        digest_hash: 0,
        digest_iterations: 0,
        digest_len: 0,
        digest_salt_len: 0,
        reserved: 0,
        digest_salt: [0; MAX_SALT],
        digest: [0; MAX_DIGEST],
        scratch_len: 0,
    };

    /// The area length these parameters give ([`area_len`]).
    pub const fn area_len(&self) -> u64 {
        area_len(self.volume_key_len, self.af_stripes)
    }
}

/// Bytes of a [`KeyslotParams`] in the window (the length `segs[0]` must have).
pub const PARAMS_LEN: u64 = size_of::<KeyslotParams>() as u64;

/// Copies keyslot parameters out of shared memory, reading every byte exactly once
/// (volatile), so the copy is self-consistent whatever the host does meanwhile;
/// validate the copy.
///
/// # Safety
/// `src` must be valid for reads of [`PARAMS_LEN`] bytes (it may be concurrently
/// written; no alignment needed).
pub unsafe fn copy_params(src: *const u8) -> KeyslotParams {
    let mut p = KeyslotParams::ZERO;
    let dst = (&raw mut p).cast::<u8>();
    for i in 0..PARAMS_LEN as usize {
        // SAFETY: `i < PARAMS_LEN`: inside the source (contract of this function) and
        // inside `p`; every bit pattern is valid for its integer and byte-array fields
        // and the struct has no padding (the offset asserts below leave none).
        unsafe { dst.add(i).write(core::ptr::read_volatile(src.add(i))) };
    }
    p
}

impl Default for KeyslotParams {
    fn default() -> Self {
        Self::ZERO
    }
}

const _: () = assert!(offset_of!(KeyslotParams, kdf) == 0);
const _: () = assert!(offset_of!(KeyslotParams, salt_len) == 20);
const _: () = assert!(offset_of!(KeyslotParams, salt) == 24);
const _: () = assert!(offset_of!(KeyslotParams, area_cipher) == 88);
const _: () = assert!(offset_of!(KeyslotParams, reserved) == 124);
const _: () = assert!(offset_of!(KeyslotParams, digest_salt) == 128);
const _: () = assert!(offset_of!(KeyslotParams, digest) == 192);
const _: () = assert!(offset_of!(KeyslotParams, scratch_len) == 256);
const _: () = assert!(size_of::<KeyslotParams>() == 264);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn area_len_rounds_up_to_sectors() {
        assert_eq!(area_len(64, 4000), 256_000);
        assert_eq!(area_len(32, 4000), 128_000);
        assert_eq!(area_len(16, 1), 512);
        assert_eq!(area_len(0, 4000), 0);
    }
}
