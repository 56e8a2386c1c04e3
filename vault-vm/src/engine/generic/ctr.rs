//! CTR mode with PKCS#11's counter parameters (`CK_AES_CTR_PARAMS`): a 16-byte counter
//! block whose low `counter_bits` bits (big endian) are the counter, wrapping within those
//! bits; the bits above stay as they are. Streaming: a partial keystream block is kept
//! between calls, so a message may be cut anywhere.

use core::fmt;

use zeroize::Zeroize;

use super::{Aes, ModeError};

/// A CTR stream over a borrowed key. Encryption and decryption are the same operation
/// ([`Ctr::apply`]). The pending keystream bytes are zeroized on drop.
pub struct Ctr<'k> {
    aes: &'k Aes,
    /// The counter block of the next keystream block.
    ctr: [u8; 16],
    /// Mask of the counter bits within the block (as a big-endian integer).
    mask: u128,
    bits: u32,
    /// Keystream of the current partial block; bytes `used..16` are still unused.
    ks: [u8; 16],
    used: usize,
}

impl fmt::Debug for Ctr<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Ctr")
            .field("aes", self.aes)
            .field("counter_bits", &self.bits)
            .finish_non_exhaustive()
    }
}

impl Drop for Ctr<'_> {
    fn drop(&mut self) {
        self.ks.zeroize();
    }
}

impl<'k> Ctr<'k> {
    /// Starts a stream at `counter_block` with a counter of `counter_bits` (1..=128) bits.
    pub fn new(
        aes: &'k Aes,
        counter_block: &[u8; 16],
        counter_bits: u32,
    ) -> Result<Self, ModeError> {
        if !(1..=128).contains(&counter_bits) {
            return Err(ModeError::BadCounterBits(counter_bits));
        }
        let mask = if counter_bits == 128 {
            u128::MAX
        } else {
            (1u128 << counter_bits) - 1
        };
        Ok(Ctr {
            aes,
            ctr: *counter_block,
            mask,
            bits: counter_bits,
            ks: [0; 16],
            used: 16,
        })
    }

    /// The counter block of the next keystream block (after a partial block, the one
    /// after it).
    pub fn counter_block(&self) -> [u8; 16] {
        self.ctr
    }

    /// Encrypts or decrypts `buf` in place, continuing the stream.
    pub fn apply(&mut self, buf: &mut [u8]) {
        let mut i = 0;
        if self.used < 16 {
            let n = (16 - self.used).min(buf.len());
            for (x, k) in buf[..n].iter_mut().zip(&self.ks[self.used..]) {
                *x ^= k;
            }
            self.used += n;
            i = n;
        }
        let mut blocks = (buf.len() - i) / 16;
        while blocks > 0 {
            // Blocks before the low 32 bits (or the whole counter, when narrower) wrap:
            // the kernels count in 32 bits, the carry above them is added here.
            let c = u128::from_be_bytes(self.ctr);
            let low = c & self.mask;
            let room = if self.bits >= 32 {
                (1u128 << 32) - (c & 0xffff_ffff)
            } else {
                self.mask + 1 - low
            };
            let n = (blocks as u128).min(room) as usize;
            self.aes.ctr32(&self.ctr, &mut buf[i..i + 16 * n]);
            self.advance(n as u128);
            i += 16 * n;
            blocks -= n;
        }
        if i < buf.len() {
            self.ks = self.ctr;
            self.aes.encrypt_block(&mut self.ks);
            self.advance(1);
            let t = buf.len() - i;
            for (x, k) in buf[i..].iter_mut().zip(self.ks.iter()) {
                *x ^= k;
            }
            self.used = t;
        }
    }

    fn advance(&mut self, n: u128) {
        let c = u128::from_be_bytes(self.ctr);
        let low = (c & self.mask).wrapping_add(n) & self.mask;
        self.ctr = ((c & !self.mask) | low).to_be_bytes();
    }
}
