//! Secret buffers: volume keys, passphrases and derived keys.
//!
//! Every secret lives in a [`SecretBuf`]: a buffer of fixed capacity in pages of its
//! own (an anonymous `mmap` rounded up to whole pages, never shared with any other
//! allocation), `mlock`ed (best effort: a failing `mlock` because of `RLIMIT_MEMLOCK`
//! is tolerated, the buffer is still zeroized), excluded from core dumps
//! (`MADV_DONTDUMP`) and from forked children (`MADV_WIPEONFORK`), zeroized and unmapped
//! on drop and never shown by `Debug`.
//!
//! Pages of their own matter for the lock: `mlock`/`munlock` work on whole pages, so
//! two buffers sharing a heap page would unlock each other's page when one is dropped.
//! They also make the buffers recognisable from outside: in `/proc/PID/smaps` every
//! secret buffer is a mapping of its own with the `lo` (locked) and `dd` (don't dump)
//! flags; the memory-sampler test relies on that.
//!
//! [`wipe_stack`] zeroes the stack region below its caller; the unlock paths call it
//! after deriving keys, so copies left on the stack by the KDF, HMAC and hash code
//! (which this crate does not control) do not outlive the unlock.

use core::fmt;
use core::ptr::NonNull;
use zeroize::Zeroize;

/// The system page size (4096 when `sysconf` fails).
fn page_size() -> usize {
    // SAFETY: sysconf has no memory-safety preconditions.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    if p > 0 {
        p as usize
    } else {
        4096
    }
}

/// A fixed-capacity, mlocked, zeroize-on-drop byte buffer in pages of its own.
pub struct SecretBuf {
    /// Start of the mapping (dangling when `map_len == 0`).
    ptr: NonNull<u8>,
    /// Usable capacity in bytes (`<= map_len`).
    cap: usize,
    /// Length of the mapping: `cap` rounded up to whole pages (0 when `cap == 0`).
    map_len: usize,
    len: usize,
    locked: bool,
}

// SAFETY: a SecretBuf owns its mapping exclusively (like a Box<[u8]>); nothing else
// refers to it, so moving it to or sharing `&SecretBuf` with another thread is sound.
unsafe impl Send for SecretBuf {}
// SAFETY: see above; `&SecretBuf` only gives shared read access.
unsafe impl Sync for SecretBuf {}

impl SecretBuf {
    /// A zero-filled buffer of `len` bytes (capacity and length both `len`).
    pub fn zeroed(len: usize) -> Self {
        let mut s = Self::with_capacity(len);
        s.len = len;
        s
    }

    /// An empty buffer able to hold `cap` bytes without reallocating.
    ///
    /// # Panics
    /// Aborts through [`std::alloc::handle_alloc_error`] when the pages cannot be
    /// mapped (out of memory), as a `Vec` allocation would.
    pub fn with_capacity(cap: usize) -> Self {
        if cap == 0 {
            return Self {
                ptr: NonNull::dangling(),
                cap: 0,
                map_len: 0,
                len: 0,
                locked: false,
            };
        }
        let page = page_size();
        let map_len = cap
            .checked_next_multiple_of(page)
            .unwrap_or_else(|| oom(cap));
        // SAFETY: a fresh private anonymous mapping; no existing memory is touched.
        let p = unsafe {
            libc::mmap(
                core::ptr::null_mut(),
                map_len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            oom(map_len);
        }
        // SAFETY: `p` is the start of the `map_len`-byte mapping made above; madvise
        // and mlock only change how the kernel treats these pages (they stay zero).
        let locked = unsafe {
            libc::madvise(p, map_len, libc::MADV_DONTDUMP);
            libc::madvise(p, map_len, libc::MADV_WIPEONFORK);
            libc::mlock(p, map_len) == 0
        };
        Self {
            // mmap never returns NULL for a successful non-fixed mapping.
            ptr: NonNull::new(p.cast()).unwrap_or_else(|| oom(map_len)),
            cap,
            map_len,
            len: 0,
            locked,
        }
    }

    /// A copy of `data` in a new secret buffer.
    pub fn from_slice(data: &[u8]) -> Self {
        let mut s = Self::zeroed(data.len());
        s.as_mut_slice().copy_from_slice(data);
        s
    }

    /// The whole capacity.
    fn full(&self) -> &[u8] {
        // SAFETY: `ptr` is valid for `cap` bytes (a live mapping, or dangling with
        // cap == 0), initialized (anonymous pages are zero-filled) and owned by self.
        unsafe { core::slice::from_raw_parts(self.ptr.as_ptr(), self.cap) }
    }

    /// The whole capacity, mutable.
    fn full_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `full`, and `&mut self` makes the access exclusive.
        unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.cap) }
    }

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        &self.full()[..self.len]
    }

    /// The bytes in use, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.full_mut()[..len]
    }

    /// The unused capacity after the bytes in use (zero-filled), to read into
    /// directly; follow with [`SecretBuf::commit`].
    pub fn spare_mut(&mut self) -> &mut [u8] {
        let len = self.len;
        &mut self.full_mut()[len..]
    }

    /// Marks `n` more bytes of the spare capacity as in use.
    ///
    /// # Panics
    /// If `n` exceeds the spare capacity.
    pub fn commit(&mut self, n: usize) {
        assert!(
            n <= self.cap - self.len,
            "SecretBuf::commit beyond capacity"
        );
        self.len += n;
    }

    /// Number of bytes in use.
    pub fn len(&self) -> usize {
        self.len
    }

    /// True when no bytes are in use.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Capacity in bytes.
    pub fn capacity(&self) -> usize {
        self.cap
    }

    /// Whether `mlock` succeeded for this buffer.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Start address of the buffer's pages (for tests that inspect the mapping, e.g.
    /// its lock state in `/proc/self/smaps`). Not a secret.
    pub fn addr(&self) -> usize {
        self.ptr.as_ptr() as usize
    }

    /// Appends `data`, growing into a new locked buffer (the old one is zeroized) when
    /// the capacity is exceeded.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        if self.len + data.len() > self.cap {
            let new_cap = (self.len + data.len()).max(self.cap * 2).max(64);
            let mut grown = SecretBuf::with_capacity(new_cap);
            grown.full_mut()[..self.len].copy_from_slice(self.as_slice());
            grown.len = self.len;
            core::mem::swap(self, &mut grown);
            // `grown` (the old buffer) is zeroized when dropped here.
        }
        let len = self.len;
        self.full_mut()[len..len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Appends one byte.
    pub fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    /// Shortens the used length to `len` and zeroizes the bytes dropped.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            let old = self.len;
            self.full_mut()[len..old].zeroize();
            self.len = len;
        }
    }

    /// Removes the first `n` bytes (zeroizing the freed tail).
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        let old = self.len;
        self.full_mut().copy_within(n..old, 0);
        let new_len = old - n;
        self.full_mut()[new_len..old].zeroize();
        self.len = new_len;
    }
}

#[cold]
fn oom(bytes: usize) -> ! {
    let layout = std::alloc::Layout::from_size_align(bytes.max(1), 1)
        .unwrap_or_else(|_| std::alloc::Layout::new::<u8>());
    std::alloc::handle_alloc_error(layout)
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        if self.map_len == 0 {
            return;
        }
        // SAFETY: the whole mapping is ours and writable; zeroize writes volatile.
        let all = unsafe { core::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.map_len) };
        all.zeroize();
        // SAFETY: same mapping and length that mmap returned in `with_capacity`; no
        // reference into it outlives `self`. munmap also drops the lock; munlock first
        // only so the order (zero, unlock, unmap) is explicit.
        unsafe {
            if self.locked {
                libc::munlock(self.ptr.as_ptr().cast(), self.map_len);
            }
            libc::munmap(self.ptr.as_ptr().cast(), self.map_len);
        }
    }
}

/// Bytes of stack [`wipe_stack`] zeroes below its caller's frame.
pub const STACK_WIPE_BYTES: usize = 256 * 1024;

/// Zeroes [`STACK_WIPE_BYTES`] of the stack below the caller's frame, with volatile
/// writes, so key and passphrase copies that dead frames of the KDF, HMAC, hash and
/// cipher code left there are gone. Call it right after the work that handled secrets
/// returned, from a frame no deeper than that work's caller (the vault's guest does the
/// same after each key import: `wipe_stack` in `vault-vm/guest/main.rs`).
///
/// Needs `STACK_WIPE_BYTES` of free stack (every thread Rust starts has 2 MiB, the main
/// thread 8 MiB); stack probes turn a too-small stack into a clean stack-overflow abort.
#[inline(never)]
pub fn wipe_stack() {
    let mut area = core::mem::MaybeUninit::<[u64; STACK_WIPE_BYTES / 8]>::uninit();
    let p = area.as_mut_ptr().cast::<u64>();
    for i in 0..STACK_WIPE_BYTES / 8 {
        // SAFETY: `p` points to this frame's own array of STACK_WIPE_BYTES / 8 words.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
    core::hint::black_box(&mut area);
}

impl fmt::Debug for SecretBuf {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SecretBuf([REDACTED; {} bytes])", self.len)
    }
}

macro_rules! secret_newtype {
    ($(#[$m:meta])* $name:ident) => {
        $(#[$m])*
        pub struct $name(SecretBuf);

        impl $name {
            /// Wraps a secret buffer.
            pub fn new(buf: SecretBuf) -> Self {
                Self(buf)
            }
            /// A copy of `data`.
            pub fn from_slice(data: &[u8]) -> Self {
                Self(SecretBuf::from_slice(data))
            }
            /// The secret bytes. Never print them.
            pub fn as_bytes(&self) -> &[u8] {
                self.0.as_slice()
            }
            /// Length in bytes.
            pub fn len(&self) -> usize {
                self.0.len()
            }
            /// True when empty.
            pub fn is_empty(&self) -> bool {
                self.0.is_empty()
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, concat!(stringify!($name), "([REDACTED; {} bytes])"), self.0.len())
            }
        }
    };
}

secret_newtype!(
    /// The volume (master) key of a LUKS device. Zeroized on drop, mlocked, redacted in `Debug`.
    VolumeKey
);
secret_newtype!(
    /// A passphrase or key-file content. Zeroized on drop, mlocked, redacted in `Debug`.
    Passphrase
);

impl VolumeKey {
    /// The key as lowercase hex, for tests that compare it with
    /// `cryptsetup luksDump --dump-volume-key`. The result is itself a secret buffer.
    pub fn to_hex(&self) -> SecretBuf {
        const HEX: &[u8; 16] = b"0123456789abcdef";
        let mut out = SecretBuf::with_capacity(self.len() * 2);
        for &b in self.as_bytes() {
            out.push(HEX[(b >> 4) as usize]);
            out.push(HEX[(b & 15) as usize]);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_redacts() {
        let k = VolumeKey::from_slice(&[0xab; 32]);
        let s = format!("{k:?}");
        assert!(!s.contains("ab") && !s.contains("171"), "{s}");
        assert_eq!(&k.to_hex().as_slice()[..4], b"abab");
    }

    #[test]
    fn grow_truncate_drain() {
        let mut b = SecretBuf::with_capacity(2);
        b.extend_from_slice(b"hello world");
        assert_eq!(b.as_slice(), b"hello world");
        b.drain_front(6);
        assert_eq!(b.as_slice(), b"world");
        b.truncate(3);
        assert_eq!(b.as_slice(), b"wor");
    }

    #[test]
    fn own_pages_grow_and_commit() {
        let b = SecretBuf::from_slice(b"0123456789abcdef");
        assert_eq!(b.addr() % page_size(), 0);
        let mut e = SecretBuf::with_capacity(0);
        e.extend_from_slice(b"grow from empty");
        assert_eq!(e.as_slice(), b"grow from empty");
        let mut r = SecretBuf::with_capacity(8);
        let n = {
            let s = r.spare_mut();
            s[..3].copy_from_slice(b"abc");
            3
        };
        r.commit(n);
        assert_eq!(r.as_slice(), b"abc");
    }

    #[test]
    fn wipe_stack_runs() {
        wipe_stack();
    }
}
