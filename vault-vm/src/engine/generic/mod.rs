//! Generic (non-sector) AES modes for the PKCS#11 crypto service: ECB and CBC over whole
//! blocks with a caller IV, CTR with PKCS#11 counter widths, GCM (NIST SP 800-38D) and
//! AES Key Wrap (RFC 3394, RFC 5649). AES-128/192/256 everywhere.
//!
//! ```ignore
//! let aes = Aes::new(&key)?;                          // 16, 24 or 32 bytes; Backend::best()
//! aes.cbc_encrypt(&mut iv, &mut buf)?;                // iv becomes the chaining value
//! let mut ctr = Ctr::new(&aes, &counter_block, 32)?;  // CK_AES_CTR_PARAMS
//! ctr.apply(&mut part1); ctr.apply(&mut part2);       // any lengths
//! let gk = GcmKey::new(aes);                          // takes the key; H and its powers
//! let mut g = Gcm::new(&gk, &iv, 16)?;                // tag length in bytes, 4..=16
//! g.aad(&aad)?; g.encrypt_update(&mut buf)?; let tag = g.finish();
//! let n = kw::wrap_pad(&aes, &key_to_wrap, &mut out)?; // RFC 5649
//! ```
//!
//! PKCS#11 mechanisms and what serves them here:
//!
//! | mechanism | API |
//! |---|---|
//! | `CKM_AES_ECB` | [`Aes::ecb_encrypt`], [`Aes::ecb_decrypt`] |
//! | `CKM_AES_CBC` | [`Aes::cbc_encrypt`], [`Aes::cbc_decrypt`] (the IV is the chaining value) |
//! | `CKM_AES_CBC_PAD` | the CBC calls; the PKCS#11 layer adds and checks the PKCS#7 padding |
//! | `CKM_AES_CTR` | [`Ctr`]: `cb` is the counter block, `ulCounterBits` the counter width |
//! | `CKM_AES_GCM` | [`GcmKey`] + [`Gcm`]: `pIv`, `pAAD`, `ulTagBits / 8` |
//! | `CKM_AES_XTS` | not here: [`super::SectorCipher`] (XTS over whole data units) |
//! | `CKM_AES_KEY_WRAP` | [`kw::wrap`], [`kw::unwrap`] ([`kw::wrap_iv`] for a given IV) |
//! | `CKM_AES_KEY_WRAP_KWP` | [`kw::wrap_pad`], [`kw::unwrap_pad`] ([`kw::wrap_pad_aiv`]) |
//!
//! Paths ([`Path`], chosen from the key's [`Backend`] and the CPU): `zmm` (VAES +
//! VPCLMULQDQ on AVX-512, 32 blocks in flight), `ymm` (VAES + VPCLMULQDQ on AVX2, 16
//! blocks), `xmm` (AES-NI + PCLMULQDQ, 8 blocks) and `portable` (the `soft` backend's
//! `aes` crate and a constant-time bitwise GHASH; also used by a hardware key when the CPU
//! lacks SSSE3 or PCLMULQDQ). The vector kernels are in `simd.rs`: one source for the
//! three widths. CBC encryption is serial (AES-NI on xmm); CBC decryption, ECB, CTR and
//! GCM run a whole pass of blocks in flight, GCM with one GHASH reduction per pass.
//!
//! Key hygiene follows the sector engine's: round keys ([`Aes`]), the GHASH key and its
//! powers ([`GcmKey`]), pending keystream bytes ([`Ctr`], [`Gcm`]) are zeroized on drop,
//! stack copies of round keys are overwritten before a kernel returns, nothing allocates,
//! and `Debug` prints no key bytes. The vector registers keep key material after a call:
//! callers clear them with [`super::clear_vector_registers`] as for the sector engine.

use core::fmt;

use aes::cipher::{BlockDecrypt, BlockEncrypt};
use zeroize::Zeroize;

use super::keys::{AesKey, RoundKeys, SoftAes};
use super::Backend;

mod ctr;
mod gcm;
pub mod kw;
mod simd;

pub use ctr::Ctr;
pub use gcm::{Gcm, GcmKey, GcmState, Tag};

/// Errors of the generic modes. Messages never contain key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ModeError {
    /// The key is not 16, 24 or 32 bytes.
    BadKeyLength(usize),
    /// The buffer is not a whole number of 16-byte blocks (ECB, CBC).
    NotWholeBlocks(usize),
    /// CTR counter width outside 1..=128 bits.
    BadCounterBits(u32),
    /// GCM tag length outside 4..=16 bytes.
    BadTagLength(usize),
    /// GCM IV of length zero.
    EmptyIv,
    /// GCM additional data given after the first data update.
    AadAfterData,
    /// GCM message or additional data longer than SP 800-38D allows.
    TooLong,
    /// The GCM tag does not match (the plaintext must not be released).
    TagMismatch,
    /// Key wrap input length not allowed (RFC 3394: a multiple of 8, at least 16;
    /// RFC 5649: at least 1; unwrap: a multiple of 8, at least 16 (24 for RFC 3394)).
    BadWrapLength(usize),
    /// The output buffer is too small; `0` is the bytes needed.
    BufferTooSmall(usize),
    /// Key unwrap integrity check failed (wrong key, corrupted or forged input).
    UnwrapFailed,
}

impl fmt::Display for ModeError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::BadKeyLength(n) => write!(f, "AES key of {} bits (need 128, 192 or 256)", n * 8),
            Self::NotWholeBlocks(n) => write!(f, "{n} bytes is not a whole number of AES blocks"),
            Self::BadCounterBits(n) => write!(f, "counter width of {n} bits (need 1 to 128)"),
            Self::BadTagLength(n) => write!(f, "GCM tag of {n} bytes (need 4 to 16)"),
            Self::EmptyIv => f.write_str("GCM IV is empty"),
            Self::AadAfterData => f.write_str("GCM additional data after the data"),
            Self::TooLong => f.write_str("GCM message or additional data too long"),
            Self::TagMismatch => f.write_str("GCM tag mismatch"),
            Self::BadWrapLength(n) => write!(f, "key wrap input of {n} bytes is not allowed"),
            Self::BufferTooSmall(n) => write!(f, "output buffer too small ({n} bytes needed)"),
            Self::UnwrapFailed => f.write_str("key unwrap integrity check failed"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for ModeError {}

/// The code path a key runs on (see the module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Path {
    /// `aes` crate block cipher, bitwise constant-time GHASH, one block at a time.
    Portable,
    /// AES-NI + PCLMULQDQ + SSSE3 on xmm registers.
    Xmm,
    /// VAES + VPCLMULQDQ on ymm registers (AVX2).
    Ymm,
    /// VAES + VPCLMULQDQ on zmm registers (AVX-512F + AVX-512BW).
    Zmm,
}

cpufeatures::new!(cpu_xmm, "aes", "sse2", "ssse3", "pclmulqdq");
cpufeatures::new!(cpu_ymm, "aes", "sse2", "ssse3", "pclmulqdq", "avx", "avx2");
cpufeatures::new!(
    cpu_zmm,
    "aes",
    "sse2",
    "ssse3",
    "pclmulqdq",
    "avx",
    "avx2",
    "avx512f",
    "avx512bw",
    "vaes",
    "vpclmulqdq"
);

impl Path {
    /// The widest path a backend may run on this CPU (a backend never gets a wider path
    /// than its own registers).
    pub fn for_backend(b: Backend) -> Path {
        let xmm = || {
            if cpu_xmm::get() {
                Path::Xmm
            } else {
                Path::Portable
            }
        };
        let ymm = || {
            if cpu_ymm::get() && super::vaes256_available() {
                Path::Ymm
            } else {
                xmm()
            }
        };
        match b {
            Backend::Soft => Path::Portable,
            Backend::AesNi => xmm(),
            Backend::Vaes256 => ymm(),
            Backend::Vaes512 if cpu_zmm::get() => Path::Zmm,
            Backend::Vaes512 => ymm(),
        }
    }

    /// A short name: `portable`, `xmm`, `ymm` or `zmm`.
    pub fn name(self) -> &'static str {
        match self {
            Path::Portable => "portable",
            Path::Xmm => "xmm",
            Path::Ymm => "ymm",
            Path::Zmm => "zmm",
        }
    }

    /// Bytes of a `len`-byte buffer the path's own kernels take: whole passes for the
    /// wide paths, whose short remainder runs on the xmm kernels (a 32-block pass for
    /// a few blocks would waste most of its work), all of it for the others.
    fn head(self, len: usize) -> usize {
        match self {
            Path::Zmm | Path::Ymm => len - len % (16 * self.pass()),
            Path::Xmm | Path::Portable => 0,
        }
    }

    /// Blocks per GHASH reduction (0 for the portable path, which reduces every block).
    fn pass(self) -> usize {
        match self {
            Path::Portable => 0,
            Path::Xmm => simd::xmm::P,
            Path::Ymm => simd::ymm::P,
            Path::Zmm => simd::zmm::P,
        }
    }
}

/// An AES key (128, 192 or 256 bits) for the generic modes. Round keys are zeroized on
/// drop and never shown by `Debug`.
pub struct Aes {
    key: AesKey,
    key_len: usize,
    backend: Backend,
    path: Path,
}

impl fmt::Debug for Aes {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Aes")
            .field("key_bits", &(self.key_len * 8))
            .field("backend", &self.backend.name())
            .field("path", &self.path.name())
            .finish_non_exhaustive()
    }
}

impl Aes {
    /// Expands `key` (16, 24 or 32 bytes) for the fastest backend this CPU has.
    pub fn new(key: &[u8]) -> Result<Aes, ModeError> {
        Self::build(key, Backend::best())
    }

    /// Like [`Aes::new`] with a chosen backend; `Ok(None)` when this CPU cannot run it.
    /// Meant for tests and benchmarks.
    pub fn with_backend(key: &[u8], backend: Backend) -> Result<Option<Aes>, ModeError> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(ModeError::BadKeyLength(key.len()));
        }
        if !backend.is_available() {
            return Ok(None);
        }
        Self::build(key, backend).map(Some)
    }

    fn build(key: &[u8], backend: Backend) -> Result<Aes, ModeError> {
        if !matches!(key.len(), 16 | 24 | 32) {
            return Err(ModeError::BadKeyLength(key.len()));
        }
        Ok(Aes {
            key: AesKey::new(key, backend != Backend::Soft),
            key_len: key.len(),
            backend,
            path: Path::for_backend(backend),
        })
    }

    /// The backend the key was expanded for.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// The code path the modes run on.
    pub fn path(&self) -> Path {
        self.path
    }

    /// Key length in bytes.
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// Encrypts one block in place.
    pub fn encrypt_block(&self, b: &mut [u8; 16]) {
        self.portable(b, true);
    }

    /// Decrypts one block in place.
    pub fn decrypt_block(&self, b: &mut [u8; 16]) {
        self.portable(b, false);
    }

    /// ECB encryption of `buf` (whole blocks) in place.
    pub fn ecb_encrypt(&self, buf: &mut [u8]) -> Result<(), ModeError> {
        self.ecb(buf, true)
    }

    /// ECB decryption of `buf` (whole blocks) in place.
    pub fn ecb_decrypt(&self, buf: &mut [u8]) -> Result<(), ModeError> {
        self.ecb(buf, false)
    }

    /// CBC encryption of `buf` (whole blocks) in place; `iv` is the chaining value in
    /// and out (the last ciphertext block), so consecutive calls continue one message.
    /// Serial: each block needs the one before.
    pub fn cbc_encrypt(&self, iv: &mut [u8; 16], buf: &mut [u8]) -> Result<(), ModeError> {
        whole(buf)?;
        match &self.key {
            // SAFETY: hardware keys exist only for backends whose CPU check included
            // AES-NI and SSE2.
            AesKey::Hw(k) => unsafe { cbc_enc_ni(k, iv, buf) },
            AesKey::Soft(_) => {
                for b in buf.chunks_exact_mut(16) {
                    for (x, v) in b.iter_mut().zip(iv.iter()) {
                        *x ^= v;
                    }
                    self.portable(b, true);
                    iv.copy_from_slice(b);
                }
            }
        }
        Ok(())
    }

    /// CBC decryption of `buf` (whole blocks) in place, a pass of blocks in flight; `iv`
    /// is the chaining value in and out (the last ciphertext block).
    pub fn cbc_decrypt(&self, iv: &mut [u8; 16], buf: &mut [u8]) -> Result<(), ModeError> {
        whole(buf)?;
        if buf.is_empty() {
            return Ok(());
        }
        match (self.path, &self.key) {
            (Path::Zmm | Path::Ymm | Path::Xmm, AesKey::Hw(k)) => {
                let (head, tail) = buf.split_at_mut(self.path.head(buf.len()));
                // SAFETY: `Path::for_backend` chose the path after checking the CPU
                // features of its width (which include the xmm kernels' features).
                unsafe {
                    match self.path {
                        Path::Zmm if !head.is_empty() => simd::zmm::cbc_dec(k, iv, head),
                        Path::Ymm if !head.is_empty() => simd::ymm::cbc_dec(k, iv, head),
                        _ => {}
                    }
                    if !tail.is_empty() {
                        simd::xmm::cbc_dec(k, iv, tail);
                    }
                }
            }
            _ => {
                let mut ct = [0u8; 16];
                for b in buf.chunks_exact_mut(16) {
                    ct.copy_from_slice(b);
                    self.portable(b, false);
                    for (x, v) in b.iter_mut().zip(iv.iter()) {
                        *x ^= v;
                    }
                    *iv = ct;
                }
            }
        }
        Ok(())
    }

    fn ecb(&self, buf: &mut [u8], enc: bool) -> Result<(), ModeError> {
        whole(buf)?;
        match (self.path, &self.key) {
            (Path::Zmm | Path::Ymm | Path::Xmm, AesKey::Hw(k)) => {
                let (head, tail) = buf.split_at_mut(self.path.head(buf.len()));
                // SAFETY: `Path::for_backend` chose the path after checking the CPU
                // features of its width (which include the xmm kernels' features).
                unsafe {
                    match self.path {
                        Path::Zmm => simd::zmm::ecb(k, head, enc),
                        Path::Ymm => simd::ymm::ecb(k, head, enc),
                        _ => {}
                    }
                    simd::xmm::ecb(k, tail, enc);
                }
            }
            _ => {
                for b in buf.chunks_exact_mut(16) {
                    self.portable(b, enc);
                }
            }
        }
        Ok(())
    }

    /// One block through the portable path (or AES-NI one block at a time).
    fn portable(&self, b: &mut [u8], enc: bool) {
        match &self.key {
            // SAFETY: hardware keys exist only for backends whose CPU check included
            // AES-NI and SSE2; `b` is one block.
            AesKey::Hw(k) => unsafe { ni_block(k, b, enc) },
            AesKey::Soft(s) => {
                let blk = aes::Block::from_mut_slice(b);
                match (s, enc) {
                    (SoftAes::A128(c), true) => c.encrypt_block(blk),
                    (SoftAes::A192(c), true) => c.encrypt_block(blk),
                    (SoftAes::A256(c), true) => c.encrypt_block(blk),
                    (SoftAes::A128(c), false) => c.decrypt_block(blk),
                    (SoftAes::A192(c), false) => c.decrypt_block(blk),
                    (SoftAes::A256(c), false) => c.decrypt_block(blk),
                }
            }
        }
    }

    /// CTR with a 32-bit counter (low 32 bits of `ctr`, big endian, wrapping within
    /// them) over whole blocks, in place.
    fn ctr32(&self, ctr: &[u8; 16], buf: &mut [u8]) {
        match (self.path, &self.key) {
            (Path::Zmm | Path::Ymm | Path::Xmm, AesKey::Hw(k)) => {
                let (head, tail) = buf.split_at_mut(self.path.head(buf.len()));
                let next = inc32(ctr, (head.len() / 16) as u32);
                // SAFETY: `Path::for_backend` chose the path after checking the CPU
                // features of its width (which include the xmm kernels' features).
                unsafe {
                    match self.path {
                        Path::Zmm => simd::zmm::ctr32(k, ctr, head),
                        Path::Ymm => simd::ymm::ctr32(k, ctr, head),
                        _ => {}
                    }
                    simd::xmm::ctr32(k, &next, tail);
                }
            }
            _ => {
                let mut c = *ctr;
                let mut ks = [0u8; 16];
                for b in buf.chunks_exact_mut(16) {
                    ks = c;
                    self.portable(&mut ks, true);
                    for (x, k) in b.iter_mut().zip(ks.iter()) {
                        *x ^= k;
                    }
                    c = inc32(&c, 1);
                }
                ks.zeroize();
            }
        }
    }
}

/// `Ok` when `buf` is whole blocks.
fn whole(buf: &[u8]) -> Result<(), ModeError> {
    if buf.len().is_multiple_of(16) {
        Ok(())
    } else {
        Err(ModeError::NotWholeBlocks(buf.len()))
    }
}

/// `a == b` in time independent of the bytes (no early exit); unequal lengths are
/// unequal.
pub(crate) fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let mut d = 0u8;
    for (x, y) in a.iter().zip(b.iter()) {
        d |= x ^ y;
    }
    // The barrier keeps the compiler from turning the loop into an early-exit compare.
    core::hint::black_box(d) == 0
}

/// Adds `n` to the low 32 bits of a counter block (big endian), wrapping within them
/// (SP 800-38D's inc32, applied `n` times).
pub(crate) fn inc32(b: &[u8; 16], n: u32) -> [u8; 16] {
    let mut o = *b;
    let lo = u32::from_be_bytes([b[12], b[13], b[14], b[15]]).wrapping_add(n);
    o[12..].copy_from_slice(&lo.to_be_bytes());
    o
}

/// One block with AES-NI; each round key is loaded where its round runs.
///
/// # Safety
/// The CPU must support AES-NI and SSE2; `b` is 16 bytes.
#[target_feature(enable = "aes,sse2")]
unsafe fn ni_block(k: &RoundKeys, b: &mut [u8], enc: bool) {
    use core::arch::x86_64::*;
    let sched = if enc { &k.enc } else { &k.dec };
    let key = |r: usize| {
        // SAFETY: `sched[r]` is 16 readable bytes; unaligned load.
        unsafe { _mm_loadu_si128(sched[r].as_ptr().cast()) }
    };
    debug_assert_eq!(b.len(), 16);
    // SAFETY: `b` is 16 bytes (caller); unaligned load and store.
    unsafe {
        let mut x = _mm_xor_si128(_mm_loadu_si128(b.as_ptr().cast()), key(0));
        for r in 1..k.nr {
            x = if enc {
                _mm_aesenc_si128(x, key(r))
            } else {
                _mm_aesdec_si128(x, key(r))
            };
        }
        x = if enc {
            _mm_aesenclast_si128(x, key(k.nr))
        } else {
            _mm_aesdeclast_si128(x, key(k.nr))
        };
        _mm_storeu_si128(b.as_mut_ptr().cast(), x);
    }
}

/// Serial CBC encryption with AES-NI (round keys in registers for the whole buffer).
///
/// # Safety
/// The CPU must support AES-NI and SSE2.
#[target_feature(enable = "aes,sse2")]
unsafe fn cbc_enc_ni(k: &RoundKeys, iv: &mut [u8; 16], buf: &mut [u8]) {
    match k.nr {
        10 => cbc_enc_ni_nr::<10>(k, iv, buf),
        12 => cbc_enc_ni_nr::<12>(k, iv, buf),
        _ => cbc_enc_ni_nr::<14>(k, iv, buf),
    }
}

#[target_feature(enable = "aes,sse2")]
#[inline]
fn cbc_enc_ni_nr<const NR: usize>(k: &RoundKeys, iv: &mut [u8; 16], buf: &mut [u8]) {
    use core::arch::x86_64::*;
    let mut rk = super::ni::load_keys(&k.enc);
    // SAFETY: 16-byte array and 16-byte chunks of `buf`; unaligned loads and stores.
    unsafe {
        let mut x = _mm_loadu_si128(iv.as_ptr().cast());
        for b in buf.chunks_exact_mut(16) {
            x = _mm_xor_si128(x, _mm_xor_si128(_mm_loadu_si128(b.as_ptr().cast()), rk[0]));
            for key in &rk[1..NR] {
                x = _mm_aesenc_si128(x, *key);
            }
            x = _mm_aesenclast_si128(x, rk[NR]);
            _mm_storeu_si128(b.as_mut_ptr().cast(), x);
        }
        _mm_storeu_si128(iv.as_mut_ptr().cast(), x);
    }
    super::ni::wipe(&mut rk);
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<Aes>();
    send_sync::<GcmKey>();
};

#[cfg(test)]
mod tests;
