//! Secret buffers: volume keys, passphrases and derived keys.
//!
//! Every secret lives in a [`SecretBuf`]: a heap buffer of fixed capacity that is
//! `mlock`ed (best effort: a failing `mlock` because of `RLIMIT_MEMLOCK` is tolerated,
//! the buffer is still zeroized), zeroized on drop and never shown by `Debug`.

use core::fmt;
use zeroize::Zeroize;

/// A fixed-capacity, mlocked, zeroize-on-drop byte buffer.
pub struct SecretBuf {
    buf: Box<[u8]>,
    len: usize,
    locked: bool,
}

impl SecretBuf {
    /// A zero-filled buffer of `len` bytes (capacity and length both `len`).
    pub fn zeroed(len: usize) -> Self {
        let mut s = Self::with_capacity(len);
        s.len = len;
        s
    }

    /// An empty buffer able to hold `cap` bytes without reallocating.
    pub fn with_capacity(cap: usize) -> Self {
        let buf = vec![0u8; cap].into_boxed_slice();
        let locked = if cap > 0 {
            // SAFETY: `buf` is a live allocation of exactly `cap` bytes; mlock only pins
            // the pages and neither reads nor writes them.
            unsafe { libc::mlock(buf.as_ptr().cast(), cap) == 0 }
        } else {
            false
        };
        Self {
            buf,
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

    /// The bytes in use.
    pub fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The bytes in use, mutable.
    pub fn as_mut_slice(&mut self) -> &mut [u8] {
        &mut self.buf[..self.len]
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
        self.buf.len()
    }

    /// Whether `mlock` succeeded for this buffer.
    pub fn is_locked(&self) -> bool {
        self.locked
    }

    /// Appends `data`, growing into a new locked buffer (the old one is zeroized) when
    /// the capacity is exceeded.
    pub fn extend_from_slice(&mut self, data: &[u8]) {
        if self.len + data.len() > self.buf.len() {
            let new_cap = (self.len + data.len()).max(self.buf.len() * 2).max(64);
            let mut grown = SecretBuf::with_capacity(new_cap);
            grown.buf[..self.len].copy_from_slice(self.as_slice());
            grown.len = self.len;
            core::mem::swap(self, &mut grown);
            // `grown` (the old buffer) is zeroized when dropped here.
        }
        self.buf[self.len..self.len + data.len()].copy_from_slice(data);
        self.len += data.len();
    }

    /// Appends one byte.
    pub fn push(&mut self, b: u8) {
        self.extend_from_slice(&[b]);
    }

    /// Shortens the used length to `len` and zeroizes the bytes dropped.
    pub fn truncate(&mut self, len: usize) {
        if len < self.len {
            self.buf[len..self.len].zeroize();
            self.len = len;
        }
    }

    /// Removes the first `n` bytes (zeroizing the freed tail).
    pub fn drain_front(&mut self, n: usize) {
        let n = n.min(self.len);
        self.buf.copy_within(n..self.len, 0);
        let new_len = self.len - n;
        self.buf[new_len..self.len].zeroize();
        self.len = new_len;
    }
}

impl Drop for SecretBuf {
    fn drop(&mut self) {
        self.buf.zeroize();
        if self.locked {
            // SAFETY: same allocation and length that were passed to mlock in
            // `with_capacity`; munlock does not access the memory.
            unsafe {
                libc::munlock(self.buf.as_ptr().cast(), self.buf.len());
            }
        }
    }
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
}
