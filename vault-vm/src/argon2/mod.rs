//! Argon2 (RFC 9106, version 0x13: Argon2d, Argon2i and Argon2id) whose lanes can be
//! computed by several vCPUs at once.
//!
//! The KDF of LUKS keyslots runs inside the vault. `cryptsetup` (libargon2) computes the
//! lanes of a slice on several threads; a sequential implementation is about `lanes`
//! times slower on as many cores. This module splits the work the same way without
//! threads of its own: the vCPU that serves the keyslot op is the *owner* of a [`Job`]
//! ([`run_owner`]); other vCPUs *join* it ([`join`]) and claim lanes slice by slice.
//! The owner claims lanes too, so a job always completes when nobody joins.
//!
//! No allocation: the Argon2 memory is a caller-given `&mut [Block]` (the vault's scratch
//! memory), at least [`Params::block_count`] blocks long. Everything derived from the
//! password is wiped before [`run_owner`] returns: the memory (by the lanes' workers in
//! a last "wipe" step), `H0` and the temporary blocks.
//!
//! The compression function G has an AVX2 path, an AVX-512VL path (the same 256-bit
//! code with native 64-bit rotates) and a portable one, chosen at run time
//! ([`CompressPath::detect`]).

mod blake2b;
mod compress;
mod fill;
mod job;
mod params;

#[cfg(test)]
mod tests;

pub use compress::CompressPath;
pub use job::{join, run_owner, run_owner_with, Job};
pub use params::{Algorithm, Argon2Error, Inputs, Params};

/// One Argon2 memory block: 1 KiB as 128 little-endian 64-bit words.
///
/// Aligned to 64 bytes so the vector paths load whole cache lines. The contents are
/// password-derived: `Debug` prints nothing of them.
#[derive(Clone)]
#[repr(C, align(64))]
pub struct Block(pub [u64; Block::WORDS]);

impl Block {
    /// Size of a block in bytes.
    pub const SIZE: usize = 1024;
    /// Number of 64-bit words in a block.
    pub const WORDS: usize = Self::SIZE / 8;
    /// The all-zero block.
    pub const ZERO: Block = Block([0; Self::WORDS]);
}

impl core::fmt::Debug for Block {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("Block(..)")
    }
}

impl zeroize::Zeroize for Block {
    fn zeroize(&mut self) {
        self.0.zeroize();
    }
}

/// Computes Argon2 on the calling thread alone (a private [`Job`] nobody joins).
///
/// Same result and errors as [`run_owner`].
pub fn hash(
    params: &Params,
    inputs: &Inputs<'_>,
    memory: &mut [Block],
    out: &mut [u8],
) -> Result<(), Argon2Error> {
    let job = Job::new();
    run_owner_with(&job, params, inputs, memory, out)
}
