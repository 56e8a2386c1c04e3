//! The request validator: a pure function from a *copied* request to a checked one.
//!
//! The vault calls it on its private copy of a request, never on ring memory, so a host
//! that rewrites the ring while the vault works cannot change what was checked.

use super::{
    cipher_from_id, key_len_ok, op, status, Request, Segment, FLAG_IV_LARGE_SECTORS, KNOWN_FLAGS,
    MAX_SEGMENTS, MAX_SLOTS,
};
use crate::engine::{CipherSpec, Geometry};

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
}
