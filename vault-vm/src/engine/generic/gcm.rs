//! GCM (NIST SP 800-38D): 96-bit IVs directly, other lengths through GHASH, additional
//! data of any length, tags of 4 to 16 bytes, streaming in both directions.
//!
//! Decryption yields plaintext before the tag is checked ([`Gcm::decrypt_update`] works
//! in place as the data comes). The caller must keep that plaintext to itself until
//! [`Gcm::verify`] succeeds and wipe it when it fails: the PKCS#11 layer buffers the
//! output of `C_DecryptUpdate` and releases it only from `C_DecryptFinal` after a good
//! tag (PKCS#11 v3 defines AES-GCM decryption so).

use core::fmt;

use zeroize::Zeroize;

use super::simd::{self, PW_LEN};
use super::{ct_eq, inc32, Aes, AesKey, ModeError, Path};

/// Largest plaintext of one GCM message: 2^39 − 256 bits.
const MAX_DATA: u64 = (1 << 36) - 32;
/// Largest additional data: 2^64 − 1 bits, rounded down to whole bytes.
const MAX_AAD: u64 = (1 << 61) - 1;

/// A GCM key: the AES key and the GHASH key H = E_K(0^128) with the powers the key's
/// path multiplies by. Build it once per key; every [`Gcm`] borrows it. H and its
/// powers are zeroized on drop.
pub struct GcmKey {
    aes: Aes,
    /// H as a big-endian integer (the portable GHASH).
    h: u128,
    /// `pw[MAXP - i] = H^i` (POLYVAL domain) for the vector paths, zeros elsewhere.
    pw: [[u8; 16]; PW_LEN],
}

impl fmt::Debug for GcmKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcmKey")
            .field("aes", &self.aes)
            .finish_non_exhaustive()
    }
}

impl Drop for GcmKey {
    fn drop(&mut self) {
        self.h.zeroize();
        // One 16-byte volatile store per power (`zeroize` would store byte by byte).
        for e in self.pw.iter_mut() {
            // SAFETY: `e` is a valid, exclusive reference to a 16-byte array.
            unsafe { core::ptr::write_volatile(e, [0u8; 16]) };
        }
        core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    }
}

impl GcmKey {
    /// Derives H from `aes` (which it takes over) and its powers for the key's path.
    pub fn new(aes: Aes) -> GcmKey {
        let mut hb = [0u8; 16];
        aes.encrypt_block(&mut hb);
        let h = u128::from_be_bytes(hb);
        hb.zeroize();
        let mut k = GcmKey {
            aes,
            h,
            pw: [[0; 16]; PW_LEN],
        };
        let n = k.aes.path.pass();
        if n > 0 {
            // POLYVAL's H is mulX(ByteReverse(H)); ByteReverse(H) read little endian is
            // H read big endian.
            let h1 = (h << 1) ^ ((h >> 127) * 0xc200_0000_0000_0000_0000_0000_0000_0001);
            // SAFETY: every vector path includes SSE2, SSSE3 and PCLMULQDQ, checked by
            // `Path::for_backend`.
            unsafe { simd::powers(h1, &mut k.pw, n) };
        }
        k
    }

    /// The AES key.
    pub fn aes(&self) -> &Aes {
        &self.aes
    }

    /// GHASH of whole blocks into `acc` (the GHASH state as a big-endian integer).
    fn ghash(&self, acc: &mut u128, data: &[u8]) {
        let path = self.aes.path;
        match path {
            Path::Zmm | Path::Ymm | Path::Xmm => {
                let (head, tail) = data.split_at(path.head(data.len()));
                // SAFETY: `Path::for_backend` chose the path after checking the CPU
                // features of its width (which include the xmm kernels' features); the
                // power table has the xmm pass's powers too.
                unsafe {
                    match path {
                        Path::Zmm => simd::zmm::ghash(&self.pw, acc, head),
                        Path::Ymm => simd::ymm::ghash(&self.pw, acc, head),
                        _ => {}
                    }
                    simd::xmm::ghash(&self.pw, acc, tail);
                }
            }
            Path::Portable => {
                for b in data.chunks_exact(16) {
                    let x = u128::from_be_bytes(b.try_into().expect("16-byte chunk"));
                    *acc = gmul(*acc ^ x, self.h);
                }
            }
        }
    }

    /// CTR (32-bit counter from `ctr`) and GHASH of the ciphertext over whole blocks.
    pub(super) fn blocks(&self, ctr: &[u8; 16], acc: &mut u128, buf: &mut [u8], enc: bool) {
        let path = self.aes.path;
        match (path, &self.aes.key) {
            (Path::Zmm | Path::Ymm | Path::Xmm, AesKey::Hw(k)) => {
                let (head, tail) = buf.split_at_mut(path.head(buf.len()));
                let next = inc32(ctr, (head.len() / 16) as u32);
                let pw = &self.pw;
                // SAFETY: `Path::for_backend` chose the path after checking the CPU
                // features of its width (which include the xmm kernels' features); the
                // power table has the xmm pass's powers too.
                unsafe {
                    match path {
                        Path::Zmm => simd::zmm::gcm(k, pw, ctr, acc, head, enc),
                        Path::Ymm => simd::ymm::gcm(k, pw, ctr, acc, head, enc),
                        _ => {}
                    }
                    simd::xmm::gcm(k, pw, &next, acc, tail, enc);
                }
            }
            _ => {
                if !enc {
                    self.ghash(acc, buf);
                }
                self.aes.ctr32(ctr, buf);
                if enc {
                    self.ghash(acc, buf);
                }
            }
        }
    }
}

/// GHASH multiplication `x · y` in GF(2^128) (SP 800-38D algorithm 1, blocks as
/// big-endian integers), constant time: 128 masked steps, no table, no branch on data.
fn gmul(x: u128, y: u128) -> u128 {
    let mut z = 0u128;
    let mut v = y;
    for i in 0..128 {
        let bit = (x >> (127 - i)) & 1;
        z ^= v & 0u128.wrapping_sub(bit);
        let lsb = v & 1;
        v = (v >> 1) ^ ((0xe1u128 << 120) & 0u128.wrapping_sub(lsb));
    }
    z
}

/// A GCM tag: the first `len` bytes of `bytes`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tag {
    bytes: [u8; 16],
    len: usize,
}

impl Tag {
    /// The tag bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

impl AsRef<[u8]> for Tag {
    fn as_ref(&self) -> &[u8] {
        self.as_bytes()
    }
}

/// One GCM encryption or decryption over a borrowed [`GcmKey`]: [`Gcm::aad`] (any number
/// of calls, any lengths), then `encrypt_update`/`decrypt_update` (any lengths), then
/// [`Gcm::finish`] (encryption) or [`Gcm::verify`] (decryption). Pending keystream and
/// the GHASH state are zeroized on drop.
pub struct Gcm<'k> {
    key: &'k GcmKey,
    /// E_K(J0), XORed into the tag.
    ek_j0: [u8; 16],
    /// Counter block of the next keystream block.
    ctr: [u8; 16],
    /// GHASH state (big-endian integer).
    acc: u128,
    aad_len: u64,
    data_len: u64,
    /// Pending GHASH input of a partial block: additional data, or ciphertext.
    part: [u8; 16],
    /// Bytes in `part` while additional data comes.
    part_len: usize,
    /// Keystream of the current partial data block.
    ks: [u8; 16],
    in_data: bool,
    tag_len: usize,
}

impl fmt::Debug for Gcm<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Gcm")
            .field("key", self.key)
            .field("tag_len", &self.tag_len)
            .field("aad_len", &self.aad_len)
            .field("data_len", &self.data_len)
            .finish_non_exhaustive()
    }
}

impl Drop for Gcm<'_> {
    fn drop(&mut self) {
        self.ek_j0.zeroize();
        self.acc.zeroize();
        self.part.zeroize();
        self.ks.zeroize();
    }
}

/// A [`Gcm`] message in progress without its key ([`Gcm::suspend`]): lets a caller keep
/// many messages between calls (the vault's operation contexts) without borrowing the
/// [`GcmKey`]. Holds E_K(J0), the GHASH state and pending keystream: zeroized on drop,
/// never shown by `Debug`.
pub struct GcmState {
    ek_j0: [u8; 16],
    ctr: [u8; 16],
    acc: u128,
    aad_len: u64,
    data_len: u64,
    part: [u8; 16],
    part_len: usize,
    ks: [u8; 16],
    in_data: bool,
    tag_len: usize,
}

impl fmt::Debug for GcmState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GcmState")
            .field("tag_len", &self.tag_len)
            .field("aad_len", &self.aad_len)
            .field("data_len", &self.data_len)
            .finish_non_exhaustive()
    }
}

impl Drop for GcmState {
    fn drop(&mut self) {
        self.ek_j0.zeroize();
        self.acc.zeroize();
        self.part.zeroize();
        self.ks.zeroize();
    }
}

impl GcmState {
    /// Tag length in bytes of the suspended message.
    pub fn tag_len(&self) -> usize {
        self.tag_len
    }

    /// Bytes of data (not additional data) processed so far.
    pub fn data_len(&self) -> u64 {
        self.data_len
    }
}

impl<'k> Gcm<'k> {
    /// Starts a message with `iv` (any non-empty length; 12 bytes is the fast, standard
    /// case) and a tag of `tag_len` bytes (4..=16; PKCS#11 `ulTagBits / 8`).
    pub fn new(key: &'k GcmKey, iv: &[u8], tag_len: usize) -> Result<Self, ModeError> {
        if !(4..=16).contains(&tag_len) {
            return Err(ModeError::BadTagLength(tag_len));
        }
        if iv.is_empty() {
            return Err(ModeError::EmptyIv);
        }
        if iv.len() as u64 > MAX_AAD {
            return Err(ModeError::TooLong);
        }
        let mut j0 = [0u8; 16];
        if iv.len() == 12 {
            j0[..12].copy_from_slice(iv);
            j0[15] = 1;
        } else {
            let mut acc = 0u128;
            let whole = iv.len() / 16 * 16;
            key.ghash(&mut acc, &iv[..whole]);
            if whole < iv.len() {
                let mut b = [0u8; 16];
                b[..iv.len() - whole].copy_from_slice(&iv[whole..]);
                key.ghash(&mut acc, &b);
            }
            let mut b = [0u8; 16];
            b[8..].copy_from_slice(&(iv.len() as u64 * 8).to_be_bytes());
            key.ghash(&mut acc, &b);
            j0 = acc.to_be_bytes();
        }
        let ctr = inc32(&j0, 1);
        let mut ek_j0 = j0;
        key.aes.encrypt_block(&mut ek_j0);
        Ok(Gcm {
            key,
            ek_j0,
            ctr,
            acc: 0,
            aad_len: 0,
            data_len: 0,
            part: [0; 16],
            part_len: 0,
            ks: [0; 16],
            in_data: false,
            tag_len,
        })
    }

    /// Detaches the message from its key; [`Gcm::resume`] continues it.
    pub fn suspend(self) -> GcmState {
        GcmState {
            ek_j0: self.ek_j0,
            ctr: self.ctr,
            acc: self.acc,
            aad_len: self.aad_len,
            data_len: self.data_len,
            part: self.part,
            part_len: self.part_len,
            ks: self.ks,
            in_data: self.in_data,
            tag_len: self.tag_len,
        }
        // `self` drops here and wipes its copies.
    }

    /// Continues a suspended message. `key` must be the key the message started with
    /// (another key gives wrong output and a wrong tag, nothing worse).
    pub fn resume(key: &'k GcmKey, s: GcmState) -> Self {
        Gcm {
            key,
            ek_j0: s.ek_j0,
            ctr: s.ctr,
            acc: s.acc,
            aad_len: s.aad_len,
            data_len: s.data_len,
            part: s.part,
            part_len: s.part_len,
            ks: s.ks,
            in_data: s.in_data,
            tag_len: s.tag_len,
        }
        // `s` drops here and wipes its copies.
    }

    /// Adds additional authenticated data; only before the first data update.
    pub fn aad(&mut self, mut aad: &[u8]) -> Result<(), ModeError> {
        if self.in_data {
            return Err(ModeError::AadAfterData);
        }
        if self.aad_len.saturating_add(aad.len() as u64) > MAX_AAD {
            return Err(ModeError::TooLong);
        }
        self.aad_len += aad.len() as u64;
        if self.part_len > 0 {
            let n = (16 - self.part_len).min(aad.len());
            self.part[self.part_len..self.part_len + n].copy_from_slice(&aad[..n]);
            self.part_len += n;
            aad = &aad[n..];
            if self.part_len < 16 {
                return Ok(());
            }
            let part = self.part;
            self.key.ghash(&mut self.acc, &part);
            self.part = [0; 16];
            self.part_len = 0;
        }
        let whole = aad.len() / 16 * 16;
        self.key.ghash(&mut self.acc, &aad[..whole]);
        let t = aad.len() - whole;
        self.part[..t].copy_from_slice(&aad[whole..]);
        self.part_len = t;
        Ok(())
    }

    /// Encrypts `buf` in place, continuing the message.
    pub fn encrypt_update(&mut self, buf: &mut [u8]) -> Result<(), ModeError> {
        self.update(buf, true)
    }

    /// Decrypts `buf` in place, continuing the message. The plaintext is not
    /// authenticated until [`Gcm::verify`] succeeds: do not release it before.
    pub fn decrypt_update(&mut self, buf: &mut [u8]) -> Result<(), ModeError> {
        self.update(buf, false)
    }

    /// Ends an encryption: the tag of `tag_len` bytes.
    pub fn finish(mut self) -> Tag {
        let full = self.full_tag();
        let mut bytes = [0u8; 16];
        bytes[..self.tag_len].copy_from_slice(&full[..self.tag_len]);
        Tag {
            bytes,
            len: self.tag_len,
        }
    }

    /// Ends a decryption: `Ok` when `tag` (exactly `tag_len` bytes) matches, compared in
    /// constant time; [`ModeError::TagMismatch`] otherwise (also for a wrong length).
    pub fn verify(mut self, tag: &[u8]) -> Result<(), ModeError> {
        let mut full = self.full_tag();
        let ok = tag.len() == self.tag_len && ct_eq(&full[..self.tag_len], tag);
        full.zeroize();
        if ok {
            Ok(())
        } else {
            Err(ModeError::TagMismatch)
        }
    }

    /// Pads and hashes pending additional data once the data starts.
    fn start_data(&mut self) {
        if !self.in_data {
            if self.part_len > 0 {
                let part = self.part;
                self.key.ghash(&mut self.acc, &part);
                self.part = [0; 16];
                self.part_len = 0;
            }
            self.in_data = true;
        }
    }

    fn update(&mut self, buf: &mut [u8], enc: bool) -> Result<(), ModeError> {
        let total = self.data_len.saturating_add(buf.len() as u64);
        if total > MAX_DATA {
            return Err(ModeError::TooLong);
        }
        self.start_data();
        let r = (self.data_len % 16) as usize;
        let mut i = 0;
        if r != 0 {
            let n = (16 - r).min(buf.len());
            for (k, x) in buf[..n].iter_mut().enumerate() {
                let input = *x;
                *x = input ^ self.ks[r + k];
                self.part[r + k] = if enc { *x } else { input };
            }
            i = n;
            if r + n == 16 {
                let part = self.part;
                self.key.ghash(&mut self.acc, &part);
                self.part = [0; 16];
            }
        }
        let whole = (buf.len() - i) / 16 * 16;
        if whole > 0 {
            self.key
                .blocks(&self.ctr, &mut self.acc, &mut buf[i..i + whole], enc);
            self.ctr = inc32(&self.ctr, (whole / 16) as u32);
            i += whole;
        }
        if i < buf.len() {
            self.ks = self.ctr;
            self.key.aes.encrypt_block(&mut self.ks);
            self.ctr = inc32(&self.ctr, 1);
            for (k, x) in buf[i..].iter_mut().enumerate() {
                let input = *x;
                *x = input ^ self.ks[k];
                self.part[k] = if enc { *x } else { input };
            }
        }
        self.data_len = total;
        Ok(())
    }

    /// GHASH of the lengths block, XORed with E_K(J0).
    fn full_tag(&mut self) -> [u8; 16] {
        self.start_data();
        if !self.data_len.is_multiple_of(16) {
            let part = self.part;
            self.key.ghash(&mut self.acc, &part);
        }
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&(self.aad_len * 8).to_be_bytes());
        b[8..].copy_from_slice(&(self.data_len * 8).to_be_bytes());
        self.key.ghash(&mut self.acc, &b);
        let mut t = self.acc.to_be_bytes();
        for (x, e) in t.iter_mut().zip(self.ek_j0.iter()) {
            *x ^= e;
        }
        t
    }
}
