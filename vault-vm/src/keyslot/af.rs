//! LUKS anti-forensic split and merge (cryptsetup's `AF_split`/`AF_merge`), streaming:
//! the area passes through in pieces of any size (one decrypted 512-byte sector at a
//! time) and only the running diffusion state, one key long, is kept.
//!
//! With stripes `s_0 .. s_{n-1}` of the key length, `d_0 = 0`,
//! `d_{i+1} = diffuse(d_i ^ s_i)` for `i < n - 1` and `key = d_{n-1} ^ s_{n-1}`;
//! `diffuse` replaces each hash-sized block `b_j` of its input by `H(be32(j) || b_j)`
//! (the last block truncated).

use zeroize::Zeroize;

use super::hash::{Hash, MAX_OUTPUT};
use crate::abi::MAX_KEY_LEN;

fn diffuse(hash: Hash, buf: &mut [u8]) {
    let dl = hash.output_len();
    let mut tmp = [0u8; MAX_OUTPUT];
    for (i, block) in buf.chunks_mut(dl).enumerate() {
        let iv = (i as u32).to_be_bytes();
        hash.digest_parts(&[&iv, block], &mut tmp[..dl]);
        let n = block.len();
        block.copy_from_slice(&tmp[..n]);
    }
    tmp.zeroize();
}

/// Running state shared by [`Merge`] and [`Split`].
struct State {
    d: [u8; MAX_KEY_LEN],
    key_len: usize,
    stripes: u32,
    hash: Hash,
    /// Bytes of AF material passed so far.
    pos: u64,
}

impl State {
    fn new(key_len: usize, stripes: u32, hash: Hash) -> State {
        assert!(
            (1..=MAX_KEY_LEN).contains(&key_len) && stripes >= 1,
            "AF key length {key_len} or stripes {stripes} out of range"
        );
        State {
            d: [0; MAX_KEY_LEN],
            key_len,
            stripes,
            hash,
            pos: 0,
        }
    }

    fn total(&self) -> u64 {
        self.key_len as u64 * u64::from(self.stripes)
    }

    /// Where the next byte goes: `(index in the key, in the last stripe)`, or `None`
    /// past the material (area padding).
    fn at(&self) -> Option<(usize, bool)> {
        if self.pos >= self.total() {
            return None;
        }
        let stripe = self.pos / self.key_len as u64;
        let j = (self.pos % self.key_len as u64) as usize;
        Some((j, stripe + 1 == u64::from(self.stripes)))
    }

    /// Advances past byte `j` of a stripe; diffuses after every stripe but the last.
    fn step(&mut self, j: usize, last: bool) {
        self.pos += 1;
        if j + 1 == self.key_len && !last {
            diffuse(self.hash, &mut self.d[..self.key_len]);
        }
    }
}

impl Drop for State {
    fn drop(&mut self) {
        self.d.zeroize();
    }
}

/// AF merge over the decrypted area, fed in pieces.
pub struct Merge(State);

impl core::fmt::Debug for Merge {
    /// Progress only; never the diffusion state.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Merge")
            .field("key_len", &self.0.key_len)
            .field("stripes", &self.0.stripes)
            .field("pos", &self.0.pos)
            .finish_non_exhaustive()
    }
}

impl Merge {
    /// A merge of `stripes` stripes of `key_len` (1..=64) bytes.
    pub fn new(key_len: usize, stripes: u32, hash: Hash) -> Merge {
        Merge(State::new(key_len, stripes, hash))
    }

    /// Folds the next `data` of the area in; bytes past `key_len * stripes` (the
    /// area's padding) are ignored.
    pub fn feed(&mut self, data: &[u8]) {
        let s = &mut self.0;
        for &b in data {
            let Some((j, last)) = s.at() else { return };
            s.d[j] ^= b;
            s.step(j, last);
        }
    }

    /// The merged key once all material was fed, else `None`. The key stays in this
    /// value, which wipes it when dropped.
    pub fn key(&self) -> Option<&[u8]> {
        (self.0.pos == self.0.total()).then(|| &self.0.d[..self.0.key_len])
    }
}

/// AF split of a key into the area, produced in pieces.
pub struct Split<'k> {
    st: State,
    key: &'k [u8],
}

impl core::fmt::Debug for Split<'_> {
    /// Progress only; never the key or the diffusion state.
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Split")
            .field("key_len", &self.st.key_len)
            .field("stripes", &self.st.stripes)
            .field("pos", &self.st.pos)
            .finish_non_exhaustive()
    }
}

impl<'k> Split<'k> {
    /// A split of `key` (1..=64 bytes) into `stripes` stripes.
    pub fn new(key: &'k [u8], stripes: u32, hash: Hash) -> Split<'k> {
        Split {
            st: State::new(key.len(), stripes, hash),
            key,
        }
    }

    /// Writes the next `out.len()` bytes of AF material: random stripes from `random`
    /// (called once per piece with `out` to fill), then the last stripe, then zero
    /// padding.
    pub fn produce(&mut self, random: &mut dyn FnMut(&mut [u8]), out: &mut [u8]) {
        random(out);
        let s = &mut self.st;
        for b in out.iter_mut() {
            match s.at() {
                None => *b = 0,
                Some((j, false)) => {
                    s.d[j] ^= *b;
                    s.step(j, false);
                }
                Some((j, true)) => {
                    *b = s.d[j] ^ self.key[j];
                    s.step(j, true);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    extern crate std;

    use std::vec::Vec;

    use super::*;

    /// cryptsetup's whole-buffer AF_merge, as the reference.
    fn merge_whole(m: &[u8], key_len: usize, stripes: u32, hash: Hash) -> Vec<u8> {
        let mut d = std::vec![0u8; key_len];
        for i in 0..stripes as usize - 1 {
            for j in 0..key_len {
                d[j] ^= m[i * key_len + j];
            }
            diffuse(hash, &mut d);
        }
        let last = (stripes as usize - 1) * key_len;
        (0..key_len).map(|j| d[j] ^ m[last + j]).collect()
    }

    fn lcg(seed: &mut u64) -> impl FnMut(&mut [u8]) + '_ {
        move |out: &mut [u8]| {
            for b in out {
                *seed = seed
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                *b = (*seed >> 56) as u8;
            }
        }
    }

    #[test]
    fn split_then_merge_in_odd_pieces() {
        for hash in [
            Hash::Sha1,
            Hash::Sha256,
            Hash::Sha512,
            Hash::Ripemd160,
            Hash::Sha224,
        ] {
            for (key_len, stripes) in [(64usize, 4000u32), (48, 7), (32, 1), (16, 2), (20, 3)] {
                let key: Vec<u8> = (0..key_len as u8).map(|i| i.wrapping_mul(29)).collect();
                let area = (key_len as u64 * stripes as u64).div_ceil(512) * 512;
                let mut m = std::vec![0xa5u8; area as usize];
                let mut seed = 7u64;
                let mut rnd = lcg(&mut seed);
                let mut sp = Split::new(&key, stripes, hash);
                for piece in m.chunks_mut(333) {
                    sp.produce(&mut rnd, piece);
                }
                let total = key_len * stripes as usize;
                assert!(m[total..].iter().all(|&b| b == 0), "padding is zero");
                assert_eq!(merge_whole(&m, key_len, stripes, hash), key);
                let mut mg = Merge::new(key_len, stripes, hash);
                for piece in m.chunks(512) {
                    mg.feed(piece);
                }
                assert_eq!(mg.key().unwrap(), &key[..], "{hash:?} {key_len}x{stripes}");
            }
        }
    }
}
