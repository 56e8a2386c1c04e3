//! The keyslot steps over checked parameters: unlock (KDF, area decryption sector by
//! sector, streaming AF merge, digest check), seal (KDF, streaming AF split, area
//! encryption) and the digest.
//!
//! Key-derived bytes (the KDF output, decrypted sectors, the AF state) live only in
//! locals of these functions and are wiped before they return; the window sees
//! encrypted area sectors and digests only, the scratch only Argon2's blocks.

use zeroize::Zeroize;

use super::af::{Merge, Split};
use super::hash::Hash;
use super::kdf::{Kdf, MAX_PBKDF2_ITERATIONS};
use crate::abi::keyslot::{status, KeyslotParams, AREA_SECTOR, MAX_DIGEST, MAX_SALT, MAX_STRIPES};
use crate::abi::{cipher_from_id, key_len_ok, status as base, MAX_KEY_LEN};
use crate::argon2::Job;
use crate::engine::{CipherSpec, Geometry, SectorCipher};

const SECTOR: usize = AREA_SECTOR as usize;

/// The digest fields of a [`KeyslotParams`], checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DigestSpec {
    /// PBKDF2 hash.
    pub hash: Hash,
    /// PBKDF2 iterations (1..=[`MAX_PBKDF2_ITERATIONS`]).
    pub iterations: u32,
    /// Digest length (1..=64).
    pub len: usize,
    salt: [u8; MAX_SALT],
    salt_len: usize,
    /// UNLOCK: the expected digest (first `len` bytes).
    expect: [u8; MAX_DIGEST],
}

/// The KDF, area and AF fields of a [`KeyslotParams`], checked.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SlotSpec {
    /// The KDF.
    pub kdf: Kdf,
    salt: [u8; MAX_SALT],
    salt_len: usize,
    /// The area's cipher.
    pub area_spec: CipherSpec,
    /// The area's key length (= KDF output length).
    pub area_key_len: usize,
    /// AF stripes (1..=[`MAX_STRIPES`]).
    pub stripes: u32,
    /// AF hash.
    pub af_hash: Hash,
    /// Volume key length.
    pub key_len: usize,
    /// Area length in bytes ([`KeyslotParams::area_len`]).
    pub area_len: u64,
    /// Scratch bytes mapped for this request.
    pub scratch_len: u64,
}

fn hash(v: u32) -> Result<Hash, u32> {
    Hash::from_id(v).ok_or(status::BAD_PARAMS)
}

impl DigestSpec {
    /// Checks the digest fields.
    pub fn check(p: &KeyslotParams) -> Result<DigestSpec, u32> {
        let hash = hash(p.digest_hash)?;
        let len = p.digest_len as usize;
        let salt_len = p.digest_salt_len as usize;
        if p.digest_iterations == 0 || len == 0 || len > MAX_DIGEST || salt_len > MAX_SALT {
            return Err(status::BAD_PARAMS);
        }
        if p.digest_iterations > MAX_PBKDF2_ITERATIONS {
            return Err(status::KDF_LIMIT);
        }
        Ok(DigestSpec {
            hash,
            iterations: p.digest_iterations,
            len,
            salt: p.digest_salt,
            salt_len,
            expect: p.digest,
        })
    }

    /// Writes the digest of `key` into `out` (`len` bytes).
    pub fn compute(&self, key: &[u8], out: &mut [u8]) {
        self.hash
            .pbkdf2(key, &self.salt[..self.salt_len], self.iterations, out);
    }

    /// Whether `key` has the expected digest (compared in constant time).
    pub fn matches(&self, key: &[u8]) -> bool {
        let mut d = [0u8; MAX_DIGEST];
        self.compute(key, &mut d[..self.len]);
        let mut diff = 0u8;
        for (a, b) in d[..self.len].iter().zip(&self.expect[..self.len]) {
            diff |= a ^ b;
        }
        d.zeroize();
        core::hint::black_box(diff) == 0
    }
}

impl SlotSpec {
    /// Checks the KDF, area and AF fields for a volume key of `key_len` bytes.
    pub fn check(p: &KeyslotParams, key_len: usize) -> Result<SlotSpec, u32> {
        let kdf = Kdf::from_params(
            p.kdf,
            p.kdf_hash,
            p.time,
            p.memory_kib,
            p.lanes,
            p.scratch_len,
        )?;
        let salt_len = p.salt_len as usize;
        if salt_len > MAX_SALT || (matches!(kdf, Kdf::Argon2 { .. }) && salt_len < 8) {
            return Err(status::BAD_PARAMS);
        }
        if matches!(kdf, Kdf::Pbkdf2 { .. }) && p.scratch_len != 0 {
            return Err(status::BAD_PARAMS);
        }
        let area_spec = cipher_from_id(p.area_cipher).ok_or(status::BAD_PARAMS)?;
        let area_key_len = p.area_key_len as usize;
        if !key_len_ok(area_spec, area_key_len) {
            return Err(status::BAD_PARAMS);
        }
        if p.af_stripes == 0 || p.af_stripes > MAX_STRIPES {
            return Err(status::BAD_PARAMS);
        }
        let af_hash = hash(p.af_hash)?;
        if p.volume_key_len as usize != key_len || key_len == 0 || key_len > MAX_KEY_LEN {
            return Err(status::BAD_PARAMS);
        }
        Ok(SlotSpec {
            kdf,
            salt: p.salt,
            salt_len,
            area_spec,
            area_key_len,
            stripes: p.af_stripes,
            af_hash,
            key_len,
            area_len: p.area_len(),
            scratch_len: p.scratch_len,
        })
    }

    /// Runs the KDF on `passphrase` and keys the area cipher with its output (which is
    /// wiped; the cipher wipes its own copy when dropped).
    ///
    /// # Safety
    /// As [`Kdf::derive`] for `job`, `scratch` and `self.scratch_len`.
    unsafe fn area_cipher(
        &self,
        job: &Job,
        passphrase: &[u8],
        scratch: *mut u8,
    ) -> Result<SectorCipher, u32> {
        let mut k = [0u8; MAX_KEY_LEN];
        let out = &mut k[..self.area_key_len];
        // SAFETY: contract of this function.
        let r = unsafe {
            self.kdf.derive(
                job,
                passphrase,
                &self.salt[..self.salt_len],
                scratch,
                self.scratch_len,
                out,
            )
        };
        let c =
            r.and_then(|()| SectorCipher::new(self.area_spec, out).map_err(|_| status::BAD_PARAMS));
        k.zeroize();
        c
    }

    /// UNLOCK: derives the area key, decrypts `area` (`area_len` bytes) one sector at a
    /// time into a private buffer and merges the stripes. Returns the merge holding the
    /// key if it has the expected digest, else [`status::BAD_PASSPHRASE`].
    ///
    /// # Safety
    /// `area` must be valid for reads of `area_len` bytes (it may change meanwhile: it
    /// is host data, read once per byte); `job` and `scratch` as for [`Kdf::derive`].
    pub unsafe fn unlock(
        &self,
        job: &Job,
        digest: &DigestSpec,
        passphrase: &[u8],
        area: *const u8,
        scratch: *mut u8,
    ) -> Result<Merge, u32> {
        // SAFETY: contract of this function.
        let cipher = unsafe { self.area_cipher(job, passphrase, scratch) }?;
        let geom = Geometry::new(SECTOR as u32, false, 0).map_err(|_| base::ENGINE_ERROR)?;
        let mut merge = Merge::new(self.key_len, self.stripes, self.af_hash);
        let mut buf = [0u8; SECTOR];
        let mut r = Ok(());
        for s in 0..self.area_len / AREA_SECTOR {
            // SAFETY: `s * 512 + 512 <= area_len` bytes at `area` (contract); `buf` is
            // private and does not overlap the window.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    area.add(s as usize * SECTOR),
                    buf.as_mut_ptr(),
                    SECTOR,
                )
            };
            if cipher.decrypt(&geom, s, &mut buf).is_err() {
                r = Err(base::ENGINE_ERROR);
                break;
            }
            merge.feed(&buf);
        }
        buf.zeroize();
        r?;
        match merge.key() {
            Some(key) if digest.matches(key) => Ok(merge),
            _ => Err(status::BAD_PASSPHRASE),
        }
    }

    /// SEAL, first half: derives the area key from `passphrase` (the long part; run it
    /// before taking any slot lock).
    ///
    /// # Safety
    /// As [`Kdf::derive`] for `job` and `scratch`.
    pub unsafe fn seal_cipher(
        &self,
        job: &Job,
        passphrase: &[u8],
        scratch: *mut u8,
    ) -> Result<SectorCipher, u32> {
        // SAFETY: contract of this function.
        unsafe { self.area_cipher(job, passphrase, scratch) }
    }

    /// SEAL, second half: splits `key` into stripes drawn from `random`, encrypts them
    /// with `cipher` one sector at a time and writes the area to `area_out`.
    ///
    /// # Safety
    /// `area_out` must be valid for writes of `area_len` bytes.
    pub unsafe fn seal_write(
        &self,
        cipher: &SectorCipher,
        key: &[u8],
        random: &mut dyn FnMut(&mut [u8]),
        area_out: *mut u8,
    ) -> Result<(), u32> {
        if key.len() != self.key_len {
            return Err(status::BAD_PARAMS);
        }
        let geom = Geometry::new(SECTOR as u32, false, 0).map_err(|_| base::ENGINE_ERROR)?;
        let mut split = Split::new(key, self.stripes, self.af_hash);
        let mut buf = [0u8; SECTOR];
        let mut r = Ok(());
        for s in 0..self.area_len / AREA_SECTOR {
            split.produce(random, &mut buf);
            if cipher.encrypt(&geom, s, &mut buf).is_err() {
                r = Err(base::ENGINE_ERROR);
                break;
            }
            // SAFETY: within `area_len` bytes at `area_out` (contract of this
            // function); `buf` is private.
            unsafe {
                core::ptr::copy_nonoverlapping(
                    buf.as_ptr(),
                    area_out.add(s as usize * SECTOR),
                    SECTOR,
                )
            };
        }
        buf.zeroize();
        r
    }
}
