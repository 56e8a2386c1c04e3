//! The BLAKE2b parts of Argon2: the pre-hash H0 and the variable-length hash H'
//! (RFC 9106 § 3.2 and § 3.3).

use blake2::digest::block_api::{UpdateCore, VariableOutputCore};
use blake2::digest::block_buffer::LazyBuffer;
use blake2::{Blake2b512, Blake2bVarCore, Digest};
use zeroize::Zeroize;

use super::params::{Inputs, Params};

/// Length of H0 in bytes.
pub(crate) const H0_LEN: usize = 64;

/// H0 = BLAKE2b-512(p ‖ T ‖ m ‖ t ‖ v ‖ y ‖ len(P) ‖ P ‖ len(S) ‖ S ‖ len(K) ‖ K ‖ len(X) ‖ X).
pub(crate) fn h0(params: &Params, inputs: &Inputs<'_>, out_len: u32) -> [u8; H0_LEN] {
    let mut d = Blake2b512::new();
    d.update(params.lanes.to_le_bytes());
    d.update(out_len.to_le_bytes());
    d.update(params.m_cost.to_le_bytes());
    d.update(params.t_cost.to_le_bytes());
    d.update(0x13u32.to_le_bytes());
    d.update((params.algorithm as u32).to_le_bytes());
    // Lengths were checked to fit u32 (`Inputs::check`).
    for s in [inputs.password, inputs.salt, inputs.secret, inputs.ad] {
        d.update((s.len() as u32).to_le_bytes());
        d.update(s);
    }
    let mut digest = d.finalize();
    let mut h = [0u8; H0_LEN];
    h.copy_from_slice(&digest);
    digest.zeroize();
    h
}

/// BLAKE2b with an output of `out.len()` ≤ 64 bytes over the concatenated `inputs`.
fn blake2b_var(inputs: &[&[u8]], out: &mut [u8]) {
    let mut core = Blake2bVarCore::new(out.len()).expect("BLAKE2b output length 1..=64");
    let mut buf = LazyBuffer::default();
    for input in inputs {
        buf.digest_blocks(input, |blocks| core.update_blocks(blocks));
    }
    let mut full = Default::default();
    core.finalize_variable_core(&mut buf, &mut full);
    out.copy_from_slice(&full[..out.len()]);
    full.zeroize();
}

/// H'(inputs), RFC 9106 § 3.3: BLAKE2b of `len(out) ‖ inputs` for outputs up to 64
/// bytes, else a chain of BLAKE2b-512 of which 32 bytes each are taken.
/// `out` is 1 ..= 2^32 − 1 bytes long (checked by the caller).
pub(crate) fn h_prime(inputs: &[&[u8]], out: &mut [u8]) {
    let len = (out.len() as u32).to_le_bytes();
    if out.len() <= 64 {
        let mut all: [&[u8]; 5] = [&[]; 5];
        all[0] = &len;
        all[1..=inputs.len()].copy_from_slice(inputs);
        blake2b_var(&all[..=inputs.len()], out);
        return;
    }
    let mut d = Blake2b512::new();
    d.update(len);
    for input in inputs {
        d.update(input);
    }
    let mut v = d.finalize();
    let (first, mut rest) = out.split_at_mut(32);
    first.copy_from_slice(&v[..32]);
    while rest.len() > 64 {
        let (chunk, tail) = rest.split_at_mut(32);
        let next = Blake2b512::digest(v);
        v.zeroize();
        v = next;
        chunk.copy_from_slice(&v[..32]);
        rest = tail;
    }
    blake2b_var(&[&v], rest);
    v.zeroize();
}
