//! The request validator: a pure function from a *copied* request to a checked one.
//!
//! The vault calls it on its private copy of a request, never on ring memory, so a host
//! that rewrites the ring while the vault works cannot change what was checked.

use super::keyslot::{self, KeyslotParams, MAX_PASSPHRASE, PARAMS_LEN};
use super::{
    cipher_from_id, key_len_ok, op, status, Request, Segment, FLAG_IV_LARGE_SECTORS, KNOWN_FLAGS,
    MAX_SEGMENTS, MAX_SLOTS,
};
use crate::engine::{CipherSpec, Geometry};
use crate::keyslot::area::{DigestSpec, SlotSpec};

/// A request that passed validation: every index is in range, every segment lies
/// inside the window and is a whole number of sectors, and no sector arithmetic
/// overflows.
#[derive(Clone, Copy, Debug)]
#[allow(clippy::large_enum_variant)] // a stack value in a no_std guest: no Box
pub enum Validated {
    /// Import the key in the transfer page into `slot`.
    ImportKey {
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Cipher of the key.
        spec: CipherSpec,
        /// Key length in bytes (valid for `spec`).
        key_len: usize,
        /// Generation to tag the slot with.
        generation: u32,
    },
    /// Wipe `slot`.
    DropKey {
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Generation the slot must hold.
        generation: u32,
    },
    /// Encrypt or decrypt segments in place.
    Crypt {
        /// Encrypt (else decrypt).
        encrypt: bool,
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Cipher id the host expects the slot to hold.
        cipher: u32,
        /// Generation the slot must hold.
        generation: u32,
        /// Sector geometry.
        geom: Geometry,
        /// First sector (512-byte units).
        sector: u64,
        /// Number of valid segments (1..=[`MAX_SEGMENTS`]).
        nsegs: usize,
        /// Segments; each in the window, non-empty and sector aligned in length.
        segs: [Segment; MAX_SEGMENTS],
        /// Total bytes over all segments.
        bytes: u64,
    },
    /// UNLOCK_KEYSLOT or SEAL_KEYSLOT (segments checked to lie in the window; the
    /// parameters at `params` are copied and checked with [`check_keyslot_params`]
    /// before use).
    Keyslot {
        /// SEAL (else UNLOCK).
        seal: bool,
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// The volume's cipher.
        spec: CipherSpec,
        /// Its cipher id (SEAL: must be the slot's).
        cipher: u32,
        /// Volume key length (valid for `spec`).
        key_len: usize,
        /// UNLOCK: generation to tag the slot with; SEAL: generation it must hold.
        generation: u32,
        /// Window offset of the [`KeyslotParams`] ([`PARAMS_LEN`] bytes).
        params: u64,
        /// The passphrase (at most [`MAX_PASSPHRASE`] bytes).
        passphrase: Segment,
        /// The keyslot area (input for UNLOCK, output for SEAL); its length is checked
        /// against the parameters in [`check_keyslot_params`].
        area: Segment,
    },
    /// KEY_DIGEST: write the digest of the key in `slot`.
    KeyDigest {
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Cipher id the slot must hold.
        cipher: u32,
        /// Volume key length (valid for the cipher).
        key_len: usize,
        /// Generation the slot must hold.
        generation: u32,
        /// Window offset of the [`KeyslotParams`].
        params: u64,
        /// Output; its length must be the parameters' `digest_len`.
        digest: Segment,
    },
    /// GENERATE_KEY into the empty `slot`.
    GenerateKey {
        /// Slot index (< [`MAX_SLOTS`]).
        slot: usize,
        /// Cipher of the key.
        spec: CipherSpec,
        /// Key length (valid for `spec`).
        key_len: usize,
        /// Generation to tag the slot with.
        generation: u32,
    },
    /// KDF_JOIN: help the Argon2 computation of another vCPU.
    KdfJoin,
    /// A generic operation (PKCS#11 token keys, contexts, XTS, key wrap).
    Generic(super::generic::GenericRequest),
    /// Run the self test.
    Selftest,
    /// Report counters.
    Stats,
}

/// A validation failure: a [`status`] code and, for segment errors, the segment index.
pub type Refusal = (u32, u32);

fn check_slot(slot: u32) -> Result<usize, Refusal> {
    if (slot as usize) < MAX_SLOTS {
        Ok(slot as usize)
    } else {
        Err((status::BAD_SLOT, 0))
    }
}

/// Validates a request against a data window of `window_len` bytes.
///
/// Pure and total: it never panics, whatever the request holds.
pub fn validate(req: &Request, window_len: u64) -> Result<Validated, Refusal> {
    // Generic ops have flags of their own and their own field rules.
    if super::generic::op::is_generic(req.op) {
        return super::generic::validate_generic(req, window_len).map(Validated::Generic);
    }
    if req.reserved2 != 0 || req.flags & !KNOWN_FLAGS != 0 {
        return Err((status::BAD_FLAGS, 0));
    }
    match req.op {
        op::IMPORT_KEY => {
            let slot = check_slot(req.slot)?;
            let spec = cipher_from_id(req.cipher).ok_or((status::BAD_CIPHER, 0))?;
            let key_len = req.key_len as usize;
            if !key_len_ok(spec, key_len) {
                return Err((status::BAD_KEY_LEN, 0));
            }
            Ok(Validated::ImportKey {
                slot,
                spec,
                key_len,
                generation: req.generation,
            })
        }
        op::DROP_KEY => Ok(Validated::DropKey {
            slot: check_slot(req.slot)?,
            generation: req.generation,
        }),
        op::SELFTEST => Ok(Validated::Selftest),
        op::STATS => Ok(Validated::Stats),
        op::ENCRYPT | op::DECRYPT => validate_crypt(req, window_len),
        keyslot::op::UNLOCK_KEYSLOT
        | keyslot::op::SEAL_KEYSLOT
        | keyslot::op::KEY_DIGEST
        | keyslot::op::GENERATE_KEY => validate_keyslot(req, window_len),
        keyslot::op::KDF_JOIN => validate_kdf_join(req),
        _ => Err((status::BAD_OP, 0)),
    }
}

/// KDF_JOIN names nothing: every field but `op` and `id` must be zero.
fn validate_kdf_join(req: &Request) -> Result<Validated, Refusal> {
    if req.nsegs != 0 {
        return Err((status::TOO_MANY_SEGMENTS, 0));
    }
    let fields = [
        u64::from(req.slot),
        u64::from(req.cipher),
        u64::from(req.sector_size),
        u64::from(req.flags),
        u64::from(req.key_len),
        u64::from(req.generation),
        req.sector,
        req.iv_offset,
    ];
    if fields.iter().any(|&f| f != 0) || req.segs.iter().any(|s| s.offset != 0 || s.len != 0) {
        return Err((status::BAD_FLAGS, 0));
    }
    Ok(Validated::KdfJoin)
}

/// Checks segment `i` of `req` against the window (no alignment rule).
fn window_seg(req: &Request, i: usize, window_len: u64) -> Result<Segment, Refusal> {
    let s = req.segs[i];
    let end = s
        .offset
        .checked_add(s.len)
        .ok_or((status::OVERFLOW, i as u32))?;
    if end > window_len {
        return Err((status::OUT_OF_WINDOW, i as u32));
    }
    Ok(s)
}

fn validate_keyslot(req: &Request, window_len: u64) -> Result<Validated, Refusal> {
    if req.flags != 0 || req.sector != 0 || req.iv_offset != 0 || req.sector_size != 0 {
        return Err((status::BAD_FLAGS, 0));
    }
    let slot = check_slot(req.slot)?;
    let spec = cipher_from_id(req.cipher).ok_or((status::BAD_CIPHER, 0))?;
    let key_len = req.key_len as usize;
    if !key_len_ok(spec, key_len) {
        return Err((status::BAD_KEY_LEN, 0));
    }
    let want = match req.op {
        keyslot::op::GENERATE_KEY => 0,
        keyslot::op::KEY_DIGEST => 2,
        _ => 3,
    };
    if req.nsegs != want {
        return Err((status::TOO_MANY_SEGMENTS, 0));
    }
    if req.op == keyslot::op::GENERATE_KEY {
        return Ok(Validated::GenerateKey {
            slot,
            spec,
            key_len,
            generation: req.generation,
        });
    }
    let params = window_seg(req, 0, window_len)?;
    if params.len != PARAMS_LEN {
        return Err((keyslot::status::BAD_PARAMS, 0));
    }
    let second = window_seg(req, 1, window_len)?;
    if req.op == keyslot::op::KEY_DIGEST {
        return Ok(Validated::KeyDigest {
            slot,
            cipher: req.cipher,
            key_len,
            generation: req.generation,
            params: params.offset,
            digest: second,
        });
    }
    if second.len > MAX_PASSPHRASE {
        return Err((keyslot::status::BAD_PARAMS, 1));
    }
    let area = window_seg(req, 2, window_len)?;
    Ok(Validated::Keyslot {
        seal: req.op == keyslot::op::SEAL_KEYSLOT,
        slot,
        spec,
        cipher: req.cipher,
        key_len,
        generation: req.generation,
        params: params.offset,
        passphrase: second,
        area,
    })
}

/// Checked keyslot parameters: the KDF/area/AF part (UNLOCK, SEAL) and the digest part
/// (UNLOCK, DIGEST).
#[derive(Clone, Copy, Debug)]
pub struct CheckedParams {
    /// KDF, area and AF (`None` for KEY_DIGEST).
    pub slot: Option<SlotSpec>,
    /// Digest (`None` for SEAL).
    pub digest: Option<DigestSpec>,
}

/// Checks the *copied* parameters of a validated keyslot request ([`Validated::Keyslot`]
/// or [`Validated::KeyDigest`]): reserved zero, the volume key length equal to the
/// request's, known ids and lengths in range, the area (or digest) segment as long as
/// the parameters say. Refusals are [`keyslot::status::BAD_PARAMS`] (detail: the
/// segment at fault), [`keyslot::status::KDF_LIMIT`] or [`status::BAD_FLAGS`].
pub fn check_keyslot_params(v: &Validated, p: &KeyslotParams) -> Result<CheckedParams, Refusal> {
    if p.reserved != 0 {
        return Err((status::BAD_FLAGS, 0));
    }
    match *v {
        Validated::Keyslot {
            seal,
            key_len,
            area,
            ..
        } => {
            let slot = SlotSpec::check(p, key_len).map_err(|s| (s, 0))?;
            if area.len != slot.area_len {
                return Err((keyslot::status::BAD_PARAMS, 2));
            }
            let digest = if seal {
                None
            } else {
                Some(DigestSpec::check(p).map_err(|s| (s, 0))?)
            };
            Ok(CheckedParams {
                slot: Some(slot),
                digest,
            })
        }
        Validated::KeyDigest {
            key_len, digest, ..
        } => {
            if p.volume_key_len as usize != key_len {
                return Err((keyslot::status::BAD_PARAMS, 0));
            }
            let d = DigestSpec::check(p).map_err(|s| (s, 0))?;
            if digest.len != d.len as u64 {
                return Err((keyslot::status::BAD_PARAMS, 1));
            }
            Ok(CheckedParams {
                slot: None,
                digest: Some(d),
            })
        }
        _ => Err((status::BAD_OP, 0)),
    }
}

fn validate_crypt(req: &Request, window_len: u64) -> Result<Validated, Refusal> {
    let slot = check_slot(req.slot)?;
    if cipher_from_id(req.cipher).is_none() {
        return Err((status::BAD_CIPHER, 0));
    }
    let ss = req.sector_size;
    if !matches!(ss, 512 | 1024 | 2048 | 4096) {
        return Err((status::BAD_SECTOR_SIZE, 0));
    }
    let nsegs = req.nsegs as usize;
    if nsegs == 0 || nsegs > MAX_SEGMENTS {
        return Err((status::TOO_MANY_SEGMENTS, 0));
    }
    let units = u64::from(ss / 512);
    if !req.sector.is_multiple_of(units) || !req.iv_offset.is_multiple_of(units) {
        return Err((status::MISALIGNED, 0));
    }
    let geom = Geometry::new(ss, req.flags & FLAG_IV_LARGE_SECTORS != 0, req.iv_offset)
        .map_err(|_| (status::MISALIGNED, 0))?;
    let mut segs = [Segment::default(); MAX_SEGMENTS];
    let mut bytes: u64 = 0;
    for (i, (dst, src)) in segs.iter_mut().zip(req.segs.iter()).take(nsegs).enumerate() {
        let i = i as u32;
        let end = src
            .offset
            .checked_add(src.len)
            .ok_or((status::OVERFLOW, i))?;
        if end > window_len {
            return Err((status::OUT_OF_WINDOW, i));
        }
        if src.len == 0 || !src.len.is_multiple_of(u64::from(ss)) {
            return Err((status::MISALIGNED, i));
        }
        bytes = bytes.checked_add(src.len).ok_or((status::OVERFLOW, i))?;
        *dst = *src;
    }
    // The last sector touched, and the last IV sector, must be representable.
    (bytes / 512)
        .checked_add(req.sector)
        .and_then(|s| s.checked_add(req.iv_offset))
        .ok_or((status::OVERFLOW, 0))?;
    Ok(Validated::Crypt {
        encrypt: req.op == op::ENCRYPT,
        slot,
        cipher: req.cipher,
        generation: req.generation,
        geom,
        sector: req.sector,
        nsegs,
        segs,
        bytes,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::abi::cipher_id;

    fn crypt(segs: &[(u64, u64)]) -> Request {
        let mut r = Request::ZERO;
        r.op = op::ENCRYPT;
        r.cipher = cipher_id(CipherSpec::parse("aes-xts-plain64").unwrap());
        r.sector_size = 4096;
        r.nsegs = segs.len() as u32;
        for (d, s) in r.segs.iter_mut().zip(segs) {
            *d = Segment {
                offset: s.0,
                len: s.1,
            };
        }
        r
    }

    fn st(r: &Request) -> u32 {
        match validate(r, 1 << 20) {
            Ok(_) => status::OK,
            Err((s, _)) => s,
        }
    }

    #[test]
    fn accepts_good_requests() {
        assert_eq!(st(&crypt(&[(0, 4096), (8192, 8192)])), status::OK);
        assert_eq!(st(&crypt(&[((1 << 20) - 4096, 4096)])), status::OK);
    }

    #[test]
    fn refuses_bad_requests() {
        assert_eq!(
            st(&crypt(&[((1 << 20) - 4096, 8192)])),
            status::OUT_OF_WINDOW
        );
        assert_eq!(st(&crypt(&[(u64::MAX - 100, 4096)])), status::OVERFLOW);
        assert_eq!(st(&crypt(&[(0, 4000)])), status::MISALIGNED);
        assert_eq!(st(&crypt(&[(0, 0)])), status::MISALIGNED);
        assert_eq!(st(&crypt(&[])), status::TOO_MANY_SEGMENTS);
        let mut r = crypt(&[(0, 4096)]);
        r.nsegs = MAX_SEGMENTS as u32 + 1;
        assert_eq!(st(&r), status::TOO_MANY_SEGMENTS);
        let mut r = crypt(&[(0, 4096)]);
        r.slot = MAX_SLOTS as u32;
        assert_eq!(st(&r), status::BAD_SLOT);
        let mut r = crypt(&[(0, 4096)]);
        r.sector = 3;
        assert_eq!(st(&r), status::MISALIGNED);
        let mut r = crypt(&[(0, 4096)]);
        r.sector = u64::MAX - 7;
        assert_eq!(st(&r), status::OVERFLOW);
        let mut r = crypt(&[(0, 4096)]);
        r.sector_size = 513;
        assert_eq!(st(&r), status::BAD_SECTOR_SIZE);
        let mut r = crypt(&[(0, 4096)]);
        r.cipher = 0x77;
        assert_eq!(st(&r), status::BAD_CIPHER);
        let mut r = crypt(&[(0, 4096)]);
        r.op = 99;
        assert_eq!(st(&r), status::BAD_OP);
        let mut r = crypt(&[(0, 4096)]);
        r.flags = 0x80;
        assert_eq!(st(&r), status::BAD_FLAGS);
        let mut r = Request::ZERO;
        r.op = op::IMPORT_KEY;
        r.cipher = cipher_id(CipherSpec::parse("aes-xts-plain64").unwrap());
        r.key_len = 16;
        assert_eq!(st(&r), status::BAD_KEY_LEN);
    }

    mod keyslot_requests {
        use super::super::*;
        use crate::abi::keyslot::{hash, kdf, op as kop, status as kst, KeyslotParams};
        use crate::abi::{cipher_id, Segment};

        const WIN: u64 = 1 << 20;

        fn xts() -> u32 {
            cipher_id(CipherSpec::parse("aes-xts-plain64").unwrap())
        }

        fn params() -> KeyslotParams {
            let mut p = KeyslotParams::ZERO;
            p.kdf = kdf::PBKDF2;
            p.kdf_hash = hash::SHA256;
            p.time = 1000;
            p.salt_len = 32;
            p.area_cipher = xts();
            p.area_key_len = 64;
            p.af_stripes = 4000;
            p.af_hash = hash::SHA256;
            p.volume_key_len = 64;
            p.digest_hash = hash::SHA256;
            p.digest_iterations = 1000;
            p.digest_len = 32;
            p.digest_salt_len = 32;
            p
        }

        fn req(op: u32) -> Request {
            let mut r = Request::ZERO;
            r.op = op;
            r.cipher = xts();
            r.key_len = 64;
            r.nsegs = 3;
            r.segs[0] = Segment {
                offset: 0,
                len: PARAMS_LEN,
            };
            r.segs[1] = Segment {
                offset: 4096,
                len: 10,
            };
            r.segs[2] = Segment {
                offset: 8192,
                len: 256_000,
            };
            r
        }

        /// KDF_JOIN passes only with every field but `op` and `id` zero.
        #[test]
        fn kdf_join_names_nothing() {
            let mut j = Request::ZERO;
            j.op = kop::KDF_JOIN;
            j.id = 77;
            assert!(matches!(validate(&j, WIN), Ok(Validated::KdfJoin)));
            type Poke = fn(&mut Request);
            let cases: [(Poke, u32); 11] = [
                (|r| r.slot = 1, status::BAD_FLAGS),
                (|r| r.cipher = 1, status::BAD_FLAGS),
                (|r| r.sector_size = 512, status::BAD_FLAGS),
                (|r| r.flags = 1, status::BAD_FLAGS),
                (|r| r.key_len = 64, status::BAD_FLAGS),
                (|r| r.generation = 1, status::BAD_FLAGS),
                (|r| r.sector = 1, status::BAD_FLAGS),
                (|r| r.iv_offset = 1, status::BAD_FLAGS),
                (|r| r.reserved2 = 1, status::BAD_FLAGS),
                (|r| r.segs[3].len = 1, status::BAD_FLAGS),
                (|r| r.nsegs = 1, status::TOO_MANY_SEGMENTS),
            ];
            for (i, (poke, want)) in cases.into_iter().enumerate() {
                let mut r = j;
                poke(&mut r);
                assert_eq!(validate(&r, WIN).map(|_| ()), Err((want, 0)), "case {i}");
            }
        }

        /// Status of validating `r` and, if that passes, checking `p`.
        fn st(r: &Request, p: &KeyslotParams) -> Refusal {
            match validate(r, WIN) {
                Err(e) => e,
                Ok(Validated::GenerateKey { .. }) => (status::OK, 0),
                Ok(v) => match check_keyslot_params(&v, p) {
                    Ok(_) => (status::OK, 0),
                    Err(e) => e,
                },
            }
        }

        #[test]
        fn accepts_good_keyslot_requests() {
            let p = params();
            assert_eq!(st(&req(kop::UNLOCK_KEYSLOT), &p), (status::OK, 0));
            assert_eq!(st(&req(kop::SEAL_KEYSLOT), &p), (status::OK, 0));
            let mut d = req(kop::KEY_DIGEST);
            d.nsegs = 2;
            d.segs[1].len = 32;
            assert_eq!(st(&d, &p), (status::OK, 0));
            let mut g = req(kop::GENERATE_KEY);
            g.nsegs = 0;
            assert_eq!(st(&g, &p), (status::OK, 0));
            let mut a = p;
            a.kdf = kdf::ARGON2ID;
            a.kdf_hash = 0;
            a.time = 4;
            a.memory_kib = 1024;
            a.lanes = 4;
            a.scratch_len = 1 << 20;
            assert_eq!(st(&req(kop::UNLOCK_KEYSLOT), &a), (status::OK, 0));
        }

        #[test]
        fn refuses_bad_segments_and_request_fields() {
            let p = params();
            let u = || req(kop::UNLOCK_KEYSLOT);
            let mut r = u();
            r.segs[2].offset = WIN - 1000;
            assert_eq!(st(&r, &p), (status::OUT_OF_WINDOW, 2));
            let mut r = u();
            r.segs[1].offset = u64::MAX - 2;
            assert_eq!(st(&r, &p), (status::OVERFLOW, 1));
            let mut r = u();
            r.segs[0].len = PARAMS_LEN - 1;
            assert_eq!(st(&r, &p), (kst::BAD_PARAMS, 0));
            let mut r = u();
            r.segs[1].len = MAX_PASSPHRASE + 1;
            r.segs[1].offset = 0;
            assert_eq!(validate(&r, 64 << 20).unwrap_err(), (kst::BAD_PARAMS, 1));
            let mut r = u();
            r.segs[2].len = 256_512;
            assert_eq!(st(&r, &p), (kst::BAD_PARAMS, 2));
            let mut r = u();
            r.nsegs = 2;
            assert_eq!(st(&r, &p).0, status::TOO_MANY_SEGMENTS);
            let mut r = req(kop::GENERATE_KEY);
            assert_eq!(st(&r, &p).0, status::TOO_MANY_SEGMENTS);
            r.nsegs = 0;
            r.key_len = 16;
            assert_eq!(st(&r, &p).0, status::BAD_KEY_LEN);
            for f in [
                |r: &mut Request| r.flags = FLAG_IV_LARGE_SECTORS,
                |r: &mut Request| r.sector = 1,
                |r: &mut Request| r.iv_offset = 8,
                |r: &mut Request| r.sector_size = 512,
                |r: &mut Request| r.reserved2 = 1,
            ] {
                let mut r = u();
                f(&mut r);
                assert_eq!(st(&r, &p).0, status::BAD_FLAGS);
            }
            let mut r = u();
            r.slot = MAX_SLOTS as u32;
            assert_eq!(st(&r, &p).0, status::BAD_SLOT);
            let mut r = u();
            r.cipher = 0x0301;
            assert_eq!(st(&r, &p).0, status::BAD_CIPHER);
            let mut r = u();
            r.key_len = 16;
            assert_eq!(st(&r, &p).0, status::BAD_KEY_LEN);
            let mut d = req(kop::KEY_DIGEST);
            d.nsegs = 2;
            d.segs[1].len = 20;
            assert_eq!(st(&d, &p), (kst::BAD_PARAMS, 1));
        }

        #[test]
        fn refuses_bad_params() {
            let u = req(kop::UNLOCK_KEYSLOT);
            type Case = (fn(&mut KeyslotParams), u32);
            let cases: [Case; 24] = [
                (|p| p.reserved = 1, status::BAD_FLAGS),
                (|p| p.kdf = 0, kst::BAD_PARAMS),
                (|p| p.kdf = 4, kst::BAD_PARAMS),
                (|p| p.kdf_hash = 7, kst::BAD_PARAMS),
                (|p| p.time = 0, kst::BAD_PARAMS),
                (|p| p.time = u32::MAX, kst::KDF_LIMIT),
                (|p| p.salt_len = 65, kst::BAD_PARAMS),
                (|p| p.scratch_len = 4096, kst::BAD_PARAMS),
                (|p| p.area_cipher = 0x77, kst::BAD_PARAMS),
                (|p| p.area_key_len = 16, kst::BAD_PARAMS),
                (|p| p.af_stripes = 0, kst::BAD_PARAMS),
                (|p| p.af_stripes = 4001, kst::BAD_PARAMS),
                (|p| p.af_hash = 0, kst::BAD_PARAMS),
                (|p| p.volume_key_len = 32, kst::BAD_PARAMS),
                (|p| p.digest_hash = 99, kst::BAD_PARAMS),
                (|p| p.digest_iterations = 0, kst::BAD_PARAMS),
                (|p| p.digest_len = 0, kst::BAD_PARAMS),
                (|p| p.digest_len = 65, kst::BAD_PARAMS),
                (|p| p.digest_salt_len = 65, kst::BAD_PARAMS),
                (
                    |p| {
                        p.kdf = kdf::ARGON2I;
                        p.kdf_hash = 0;
                        p.memory_kib = 1024;
                        p.lanes = 0;
                        p.scratch_len = 1 << 20;
                    },
                    kst::BAD_PARAMS,
                ),
                (
                    |p| {
                        p.kdf = kdf::ARGON2I;
                        p.kdf_hash = 0;
                        p.memory_kib = 1024;
                        p.lanes = 17;
                        p.scratch_len = 1 << 20;
                    },
                    kst::BAD_PARAMS,
                ),
                (
                    |p| {
                        p.kdf = kdf::ARGON2ID;
                        p.kdf_hash = 0;
                        p.memory_kib = 2048;
                        p.lanes = 1;
                        p.scratch_len = 1 << 20;
                    },
                    kst::KDF_LIMIT,
                ),
                (
                    |p| {
                        p.kdf = kdf::ARGON2ID;
                        p.kdf_hash = 0;
                        p.memory_kib = 1024;
                        p.lanes = 1;
                        p.scratch_len = keyslot::SCRATCH_MAX + 1;
                    },
                    kst::KDF_LIMIT,
                ),
                (
                    |p| {
                        p.kdf = kdf::ARGON2ID;
                        p.kdf_hash = 0;
                        p.memory_kib = 1024;
                        p.lanes = 1;
                        p.scratch_len = 1 << 20;
                        p.salt_len = 4;
                    },
                    kst::BAD_PARAMS,
                ),
            ];
            for (i, (f, want)) in cases.iter().enumerate() {
                let mut p = params();
                f(&mut p);
                assert_eq!(st(&u, &p).0, *want, "case {i}");
            }
            // SEAL ignores the digest fields; DIGEST ignores the KDF and area fields.
            let mut p = params();
            p.digest_hash = 0;
            assert_eq!(st(&req(kop::SEAL_KEYSLOT), &p).0, status::OK);
            let mut p = params();
            p.kdf = 0;
            let mut d = req(kop::KEY_DIGEST);
            d.nsegs = 2;
            d.segs[1].len = 32;
            assert_eq!(st(&d, &p).0, status::OK);
            p.volume_key_len = 32;
            assert_eq!(st(&d, &p).0, kst::BAD_PARAMS);
        }

        #[test]
        fn copy_params_round_trips() {
            let mut p = params();
            p.salt[3] = 9;
            p.digest[63] = 7;
            p.scratch_len = 0x1234_5678_9abc;
            let bytes = (&raw const p).cast::<u8>();
            // SAFETY: `p` is PARAMS_LEN bytes.
            let c = unsafe { keyslot::copy_params(bytes) };
            assert_eq!(c, p);
        }
    }
}
