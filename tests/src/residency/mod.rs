//! Key-residency scanner: where does a volume key (or its AES key schedule) live?
//!
//! Given the volume key, [`Needles`] lists what to look for:
//! - the raw key bytes: any 16-byte window of it, so the whole key, each XTS half and
//!   partial copies are all found (a hit is extended to the longest matching run);
//! - for every AES key in it (the whole key if it is 16/24/32 bytes, each half for XTS),
//!   the expanded schedules, findaes-style: any 3 consecutive round keys of
//!   - the encryption schedule (FIPS-197 byte order, as AES-NI code stores it),
//!   - the equivalent inverse cipher schedule in decryption order (`aesimc` form:
//!     OpenSSL/Linux AES-NI, vault-vm's engine, table-driven C code),
//!   - the same `aesimc` keys in encryption order (RustCrypto's AES-NI backend),
//!   - the encryption and reversed decryption schedules with byte-swapped 32-bit words
//!     (portable C code keeping big-endian-loaded `u32`s);
//! - any single round key stored twice or more in a row (a SIMD broadcast spilled to the
//!   stack: VAES code keeps each round key 4 times in a 512-bit register).
//!
//! Not detected: bitsliced/fixsliced software schedules (e.g. the `aes` crate's soft
//! backend) and keys that are only ever in registers — no findaes-style tool sees those.
//!
//! Where it looks:
//! - [`scan_process`]: every readable mapping of `/proc/PID/maps`, read through
//!   `/proc/PID/mem` (root or ptrace access needed). Pages the kernel refuses (`EIO`:
//!   `memfd_secret` pages, `VM_IO` mappings, ...) are recorded as unreadable, page by
//!   page, and never silently dropped. Mappings named in [`ScanOptions::exclude`] are
//!   listed but not read.
//! - [`scan_mapping`]: one named mapping only (e.g. the vault's guest memory).
//! - [`scan_keyrings`]: `/proc/keys` plus the keyrings `@t @p @s @u @us` of the calling
//!   process, walked recursively; payloads are read where the kernel allows it.
//!
//! Search cost is one table probe per aligned 8-byte word of memory: every needle is at
//! least 16 bytes long, so each occurrence covers an 8-aligned word at one of 8 known
//! offsets into the needle.

pub mod aes;
mod keyrings;
mod memory;
mod needles;
mod procfs;

pub use keyrings::{proc_keys_serials, scan_keyrings, KeyEntry, KeyHit, KeyringReport};
pub use memory::{scan_mapping, scan_process, Hit, ScanOptions, ScanReport};
pub use needles::Needles;
pub use procfs::{
    parse_maps, pids_named, read_maps, thread_stack_pointers, Mapping, GUEST_MEMFD_PATH,
    SECRETMEM_PATH,
};

#[cfg(test)]
mod tests {
    /// A 64-byte test volume key with many distinct byte values.
    pub(super) fn key64() -> Vec<u8> {
        (0..64u32)
            .map(|i| (i.wrapping_mul(0x9d) ^ 0x5a) as u8)
            .collect()
    }
}
