//! The `Crypt` abstraction: who encrypts sectors, and where I/O buffers live.
//!
//! Two implementations: [`EngineCrypt`] runs the sector engine in this process (tests of
//! the I/O engine, and the fallback while no vault exists), and
//! [`crate::vault::VaultCrypt`] sends requests to the vault, with buffers allocated in the
//! vault's data window so that backing I/O, encryption and FUSE replies share one buffer.

use std::alloc::{self, Layout};
use std::any::Any;
use std::ops::Range;
use std::ptr::NonNull;
use std::sync::Mutex;

use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};

/// Largest buffer handed to one encrypt/decrypt request (the I/O engine splits bigger ones).
pub const MAX_CRYPT_REQUEST: usize = 256 * 1024;

/// Errors of a [`Crypt`] implementation. Messages never contain key material.
#[derive(Debug, thiserror::Error)]
pub enum CryptError {
    /// The sector engine refused the request or the key.
    #[error("sector engine: {0}")]
    Engine(#[from] vault_vm::engine::EngineError),
    /// A buffer could not be allocated.
    #[error("cannot allocate a {0}-byte I/O buffer")]
    Alloc(usize),
    /// A buffer from another `Crypt` was passed in.
    #[error("buffer does not belong to this crypt backend")]
    ForeignBuffer,
    /// The range is outside the buffer.
    #[error("range {0:?} is outside the buffer")]
    Range(Range<usize>),
    /// The vault failed the request (it stopped, refused the slot, or a window
    /// allocation failed).
    #[error("vault: {0}")]
    Vault(#[source] vmvault_hv::HvError),
}

/// An I/O buffer owned by a [`Crypt`] implementation.
pub trait IoBuf: Send {
    /// The buffer's bytes.
    fn bytes(&self) -> &[u8];
    /// The buffer's bytes, writable.
    fn bytes_mut(&mut self) -> &mut [u8];
    /// For implementations to recognise their own buffers.
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// Something that encrypts and decrypts whole sectors of one mapping in place.
///
/// The geometry (sector size, IV rules) and the key are fixed at construction.
///
/// I/O buffers are pooled by the implementation: [`Crypt::take_buf`] lends one,
/// [`Crypt::give_buf`] returns it. Buffers of the vault come from its data window, which
/// every volume of the vault shares; when the volume has used up its share,
/// `take_buf` *waits* for a buffer to come back (backpressure), it never fails for want
/// of room. That wait always ends as long as no caller holds a buffer while it waits
/// for another (of any mapping): take one, use it, give it back, then take the next.
/// Every holder then finishes its request without waiting for buffers and gives its
/// buffer back, so waits form no cycle.
pub trait Crypt: Send + Sync {
    /// Lends an I/O buffer of at least `len` bytes (at most [`crate::io::IO_BUF_LEN`]),
    /// aligned to at least 4096 bytes; may wait (see the trait documentation). Its bytes
    /// are whatever the last user left: overwrite before use. Give it back with
    /// [`Crypt::give_buf`], and hold no other lent buffer while calling this.
    fn take_buf(&self, len: usize) -> Result<Box<dyn IoBuf>, CryptError>;
    /// Returns a buffer lent by [`Crypt::take_buf`] of this same `Crypt`.
    fn give_buf(&self, buf: Box<dyn IoBuf>);
    /// Encrypts `buf[range]` in place; `sector` (512-byte units) is that of `range.start`.
    fn encrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError>;
    /// Decrypts `buf[range]` in place; `sector` (512-byte units) is that of `range.start`.
    fn decrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError>;
    /// The geometry in use.
    fn geometry(&self) -> Geometry;
    /// Backend name as `vaultsetup status` prints it (`kvm`, `soft`, `in-process`).
    fn backend(&self) -> vmvault_proto::protocol::BackendChoice;
    /// Human-readable protection level (DESIGN.md §1).
    fn protection(&self) -> String;
    /// Largest range one encrypt/decrypt call should carry.
    fn max_request(&self) -> usize {
        MAX_CRYPT_REQUEST
    }
}

/// A heap buffer aligned to 4096 bytes (suitable for `O_DIRECT`).
pub struct AlignedBuf {
    ptr: NonNull<u8>,
    len: usize,
}

// SAFETY: AlignedBuf uniquely owns its allocation; moving it between threads is fine.
unsafe impl Send for AlignedBuf {}

impl AlignedBuf {
    /// Allocates `len` zeroed bytes aligned to 4096.
    pub fn new(len: usize) -> Result<Self, CryptError> {
        let layout =
            Layout::from_size_align(len.max(1), 4096).map_err(|_| CryptError::Alloc(len))?;
        // SAFETY: the layout has a non-zero size.
        let p = unsafe { alloc::alloc_zeroed(layout) };
        let ptr = NonNull::new(p).ok_or(CryptError::Alloc(len))?;
        Ok(AlignedBuf { ptr, len })
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(self.bytes_mut());
        let layout =
            Layout::from_size_align(self.len.max(1), 4096).expect("layout was valid at allocation");
        // SAFETY: allocated in `new` with this same layout and not freed since.
        unsafe { alloc::dealloc(self.ptr.as_ptr(), layout) };
    }
}

impl IoBuf for AlignedBuf {
    fn bytes(&self) -> &[u8] {
        // SAFETY: ptr points to `len` initialised bytes owned by self.
        unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, and &mut self gives exclusive access.
        unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) }
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Shows the length only: the bytes may be plaintext.
impl std::fmt::Debug for AlignedBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AlignedBuf")
            .field("len", &self.len)
            .finish_non_exhaustive()
    }
}

/// Idle buffers an [`EngineCrypt`] keeps for reuse.
const ENGINE_IDLE_BUFS: usize = 16;

/// The sector engine run in this process (no vault). The key schedule lives in this
/// process's heap: for tests and for comparison only. Its I/O buffers are heap
/// buffers, so lending one never waits; up to 16 idle ones are kept for reuse.
pub struct EngineCrypt {
    cipher: SectorCipher,
    geom: Geometry,
    idle: Mutex<Vec<Box<dyn IoBuf>>>,
}

/// Shows the geometry, never the key schedule.
impl std::fmt::Debug for EngineCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EngineCrypt")
            .field("geom", &self.geom)
            .finish_non_exhaustive()
    }
}

impl EngineCrypt {
    /// Keys the in-process engine.
    pub fn new(spec: CipherSpec, key: &[u8], geom: Geometry) -> Result<Self, CryptError> {
        Ok(EngineCrypt {
            cipher: SectorCipher::new(spec, key)?,
            geom,
            idle: Mutex::new(Vec::new()),
        })
    }

    fn slice<'a>(buf: &'a mut dyn IoBuf, range: &Range<usize>) -> Result<&'a mut [u8], CryptError> {
        buf.bytes_mut()
            .get_mut(range.clone())
            .ok_or_else(|| CryptError::Range(range.clone()))
    }
}

impl Crypt for EngineCrypt {
    fn take_buf(&self, len: usize) -> Result<Box<dyn IoBuf>, CryptError> {
        let want = len.max(crate::io::IO_BUF_LEN);
        let idle = self.idle.lock().unwrap_or_else(|e| e.into_inner()).pop();
        match idle {
            Some(b) if b.bytes().len() >= len => Ok(b),
            _ => Ok(Box::new(AlignedBuf::new(want)?)),
        }
    }

    fn give_buf(&self, buf: Box<dyn IoBuf>) {
        let mut idle = self.idle.lock().unwrap_or_else(|e| e.into_inner());
        if idle.len() < ENGINE_IDLE_BUFS {
            idle.push(buf);
        }
    }

    fn encrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError> {
        let s = Self::slice(buf, &range)?;
        Ok(self.cipher.encrypt(&self.geom, sector, s)?)
    }

    fn decrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError> {
        let s = Self::slice(buf, &range)?;
        Ok(self.cipher.decrypt(&self.geom, sector, s)?)
    }

    fn geometry(&self) -> Geometry {
        self.geom
    }

    fn backend(&self) -> vmvault_proto::protocol::BackendChoice {
        vmvault_proto::protocol::BackendChoice::InProcess
    }

    fn protection(&self) -> String {
        "none: key schedule in the daemon's heap (in-process engine, testing only)".into()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_round_trip_and_range_check() {
        let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
        let c = EngineCrypt::new(spec, &[7u8; 64], Geometry::new(512, false, 0).unwrap()).unwrap();
        let mut b = c.take_buf(4096).unwrap();
        assert_eq!(b.bytes().as_ptr() as usize % 4096, 0);
        b.bytes_mut().fill(0x5a);
        c.encrypt(b.as_mut(), 512..2048, 1).unwrap();
        assert_ne!(&b.bytes()[512..1024], &[0x5a; 512][..]);
        assert_eq!(&b.bytes()[..512], &[0x5a; 512][..]);
        c.decrypt(b.as_mut(), 512..2048, 1).unwrap();
        assert!(b.bytes().iter().all(|&x| x == 0x5a));
        let past = b.bytes().len() + 4096;
        assert!(matches!(
            c.encrypt(b.as_mut(), 0..past, 0),
            Err(CryptError::Range(_))
        ));
        c.give_buf(b);
    }
}
