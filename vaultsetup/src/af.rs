//! LUKS anti-forensic splitter: the merge step (AFmerge of the LUKS1 specification).

use crate::kdf::Hash;
use crate::secret::SecretBuf;

/// Errors of the AF merge.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum AfError {
    /// The split material is not `key_len * stripes` bytes.
    #[error("AF material is {got} bytes, expected key size {key_len} x {stripes} stripes")]
    BadLength {
        /// Length of the split material handed to the merge, in bytes.
        got: usize,
        /// Length of the key to recover, in bytes.
        key_len: usize,
        /// Number of AF stripes the keyslot declares.
        stripes: u32,
    },
    /// Zero stripes or zero key length.
    #[error("AF stripes ({stripes}) and key size ({key_len}) must be non-zero")]
    Empty {
        /// Number of AF stripes the keyslot declares.
        stripes: u32,
        /// Length of the key to recover, in bytes.
        key_len: usize,
    },
}

/// The diffusion function: each `hash`-sized block `i` of `buf` becomes
/// `H(be32(i) || block)` (the last block truncated).
fn diffuse(hash: Hash, buf: &mut [u8]) {
    let dl = hash.output_len();
    let mut tmp = [0u8; 64];
    for (i, block) in buf.chunks_mut(dl).enumerate() {
        let iv = (i as u32).to_be_bytes();
        hash.digest_parts(&[&iv, block], &mut tmp[..dl]);
        let n = block.len();
        block.copy_from_slice(&tmp[..n]);
    }
    zeroize::Zeroize::zeroize(&mut tmp);
}

/// Merges `stripes` AF stripes of `key_len` bytes each into the key.
pub fn merge(
    material: &[u8],
    key_len: usize,
    stripes: u32,
    hash: Hash,
) -> Result<SecretBuf, AfError> {
    if stripes == 0 || key_len == 0 {
        return Err(AfError::Empty { stripes, key_len });
    }
    if Some(material.len()) != key_len.checked_mul(stripes as usize) {
        return Err(AfError::BadLength {
            got: material.len(),
            key_len,
            stripes,
        });
    }
    let mut d = SecretBuf::zeroed(key_len);
    let (body, last) = material.split_at(key_len * (stripes as usize - 1));
    for stripe in body.chunks_exact(key_len) {
        for (a, b) in d.as_mut_slice().iter_mut().zip(stripe) {
            *a ^= b;
        }
        diffuse(hash, d.as_mut_slice());
    }
    for (a, b) in d.as_mut_slice().iter_mut().zip(last) {
        *a ^= b;
    }
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// AFsplit with zero "random" stripes, to test merge as its inverse.
    fn split_zero_random(key: &[u8], stripes: u32, hash: Hash) -> Vec<u8> {
        let n = key.len();
        let mut out = vec![0u8; n * stripes as usize];
        // With all random stripes zero, d stays the diffusion of zeros.
        let mut d = vec![0u8; n];
        for i in 0..stripes as usize - 1 {
            for (j, x) in d.iter_mut().enumerate() {
                *x ^= out[i * n + j];
            }
            diffuse(hash, &mut d);
        }
        for j in 0..n {
            out[(stripes as usize - 1) * n + j] = d[j] ^ key[j];
        }
        out
    }

    #[test]
    fn roundtrip() {
        for hash in [Hash::Sha1, Hash::Sha256, Hash::Sha512] {
            let key: Vec<u8> = (0..64u8).collect();
            let m = split_zero_random(&key, 7, hash);
            assert_eq!(merge(&m, 64, 7, hash).unwrap().as_slice(), &key[..]);
        }
    }

    #[test]
    fn bad_len() {
        assert!(merge(&[0; 10], 4, 3, Hash::Sha1).is_err());
        assert!(merge(&[], 4, 0, Hash::Sha1).is_err());
    }
}
