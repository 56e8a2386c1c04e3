//! The hashes of LUKS keyslots (PBKDF2 PRF, AF diffusion, digest), by [`abi`] id.
//!
//! [`abi`]: crate::abi::keyslot::hash

use sha2::Digest;
use zeroize::Zeroize;

use crate::abi::keyslot::hash as id;

/// A hash a keyslot names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Hash {
    /// SHA-1.
    Sha1,
    /// SHA-224.
    Sha224,
    /// SHA-256.
    Sha256,
    /// SHA-384.
    Sha384,
    /// SHA-512.
    Sha512,
    /// RIPEMD-160.
    Ripemd160,
}

/// Longest output of any [`Hash`](enum@Hash).
pub const MAX_OUTPUT: usize = 64;

impl Hash {
    /// The hash with ABI id `v` ([`crate::abi::keyslot::hash`]), `None` if unknown.
    pub const fn from_id(v: u32) -> Option<Hash> {
        Some(match v {
            id::SHA1 => Hash::Sha1,
            id::SHA224 => Hash::Sha224,
            id::SHA256 => Hash::Sha256,
            id::SHA384 => Hash::Sha384,
            id::SHA512 => Hash::Sha512,
            id::RIPEMD160 => Hash::Ripemd160,
            _ => return None,
        })
    }

    /// Output length in bytes.
    pub const fn output_len(self) -> usize {
        match self {
            Hash::Sha1 | Hash::Ripemd160 => 20,
            Hash::Sha224 => 28,
            Hash::Sha256 => 32,
            Hash::Sha384 => 48,
            Hash::Sha512 => 64,
        }
    }

    /// `out[..n] = H(parts[0] || parts[1] || ...)` truncated to `n = min(out.len(),
    /// output_len)`. The full digest is wiped from the stack before returning.
    pub fn digest_parts(self, parts: &[&[u8]], out: &mut [u8]) {
        fn run<D: Digest>(parts: &[&[u8]], out: &mut [u8]) {
            let mut h = D::new();
            for p in parts {
                h.update(p);
            }
            let mut full = h.finalize();
            let n = out.len().min(full.len());
            out[..n].copy_from_slice(&full[..n]);
            full.as_mut_slice().zeroize();
        }
        match self {
            Hash::Sha1 => run::<sha1::Sha1>(parts, out),
            Hash::Sha224 => run::<sha2::Sha224>(parts, out),
            Hash::Sha256 => run::<sha2::Sha256>(parts, out),
            Hash::Sha384 => run::<sha2::Sha384>(parts, out),
            Hash::Sha512 => run::<sha2::Sha512>(parts, out),
            Hash::Ripemd160 => run::<ripemd::Ripemd160>(parts, out),
        }
    }

    /// PBKDF2-HMAC with this hash as the PRF: fills `out` from `password` and `salt`
    /// with `rounds` iterations (`rounds` ≥ 1; the caller checks).
    pub fn pbkdf2(self, password: &[u8], salt: &[u8], rounds: u32, out: &mut [u8]) {
        use pbkdf2::pbkdf2_hmac;
        match self {
            Hash::Sha1 => pbkdf2_hmac::<sha1::Sha1>(password, salt, rounds, out),
            Hash::Sha224 => pbkdf2_hmac::<sha2::Sha224>(password, salt, rounds, out),
            Hash::Sha256 => pbkdf2_hmac::<sha2::Sha256>(password, salt, rounds, out),
            Hash::Sha384 => pbkdf2_hmac::<sha2::Sha384>(password, salt, rounds, out),
            Hash::Sha512 => pbkdf2_hmac::<sha2::Sha512>(password, salt, rounds, out),
            Hash::Ripemd160 => pbkdf2_hmac::<ripemd::Ripemd160>(password, salt, rounds, out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> [u8; 64] {
        let mut o = [0u8; 64];
        for (i, c) in s.as_bytes().chunks(2).enumerate() {
            o[i] = u8::from_str_radix(core::str::from_utf8(c).unwrap(), 16).unwrap();
        }
        o
    }

    fn kat(h: Hash, pw: &[u8], salt: &[u8], c: u32, want: &str) {
        let n = want.len() / 2;
        let mut out = [0u8; 64];
        h.pbkdf2(pw, salt, c, &mut out[..n]);
        assert_eq!(out[..n], hex(want)[..n], "{h:?} c={c}");
    }

    /// RFC 6070 (PBKDF2-HMAC-SHA1).
    #[test]
    fn pbkdf2_sha1_rfc6070() {
        let h = Hash::Sha1;
        kat(
            h,
            b"password",
            b"salt",
            1,
            "0c60c80f961f0e71f3a9b524af6012062fe037a6",
        );
        kat(
            h,
            b"password",
            b"salt",
            2,
            "ea6c014dc72d6f8ccd1ed92ace1d41f0d8de8957",
        );
        kat(
            h,
            b"password",
            b"salt",
            4096,
            "4b007901b765489abead49d926f721d065a429c1",
        );
        kat(
            h,
            b"passwordPASSWORDpassword",
            b"saltSALTsaltSALTsaltSALTsaltSALTsalt",
            4096,
            "3d2eec4fe41c849b80c8d83662c0e44a8b291a964cf2f07038",
        );
        kat(
            h,
            b"pass\0word",
            b"sa\0lt",
            4096,
            "56fa6aa75548099dcc37d7f03425e0c3",
        );
    }

    /// PBKDF2-HMAC-SHA256/512 (the vectors of RFC 7914 §11 and the widely used
    /// SHA-512 set).
    #[test]
    fn pbkdf2_sha2() {
        kat(
            Hash::Sha256,
            b"passwd",
            b"salt",
            1,
            "55ac046e56e3089fec1691c22544b605f94185216dde0465e68b9d57c20dacbc\
             49ca9cccf179b645991664b39d77ef317c71b845b1e30bd509112041d3a19783",
        );
        kat(
            Hash::Sha256,
            b"password",
            b"salt",
            4096,
            "c5e478d59288c841aa530db6845c4c8d962893a001ce4e11a4963873aa98134a",
        );
        kat(
            Hash::Sha512,
            b"password",
            b"salt",
            1,
            "867f70cf1ade02cff3752599a3a53dc4af34c7a669815ae5d513554e1c8cf252\
             c02d470a285a0501bad999bfe943c08f050235d7d68b1da55e63f73b60a57fce",
        );
        kat(
            Hash::Sha512,
            b"password",
            b"salt",
            4096,
            "d197b1b33db0143e018b12f3d1d1479e6cdebdcc97c5c0f87f6902e072f457b5\
             143f30602641b3d55cd335988cb36b84376060ecd532e039b742a239434af2d5",
        );
    }

    #[test]
    fn ids_and_lengths() {
        for (v, n) in [(1, 20), (2, 28), (3, 32), (4, 48), (5, 64), (6, 20)] {
            assert_eq!(Hash::from_id(v).unwrap().output_len(), n);
        }
        assert_eq!(Hash::from_id(0), None);
        assert_eq!(Hash::from_id(7), None);
        // RIPEMD-160("abc") and SHA-224("abc").
        let mut o = [0u8; 28];
        Hash::Ripemd160.digest_parts(&[b"a", b"bc"], &mut o[..20]);
        assert_eq!(
            o[..20],
            hex("8eb208f7e05d987a9b044a8e98c6b087f15a0bfc")[..20]
        );
        Hash::Sha224.digest_parts(&[b"abc"], &mut o);
        assert_eq!(
            o[..],
            hex("23097d223405d8228642a477bda255b32aadbce4bda0b3f7e36c9da7")[..28]
        );
    }
}
