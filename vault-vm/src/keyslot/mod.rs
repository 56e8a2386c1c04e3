//! The keyslot operations' cryptography, pure and allocation-free: the LUKS hashes
//! and PBKDF2 ([`hash`]), the KDFs over the scratch memory ([`kdf`]), the streaming AF
//! split and merge ([`af`]), the vault's random generator ([`rng`]) and the keyslot
//! area and digest steps ([`area`]) that [`crate::service`] runs for UNLOCK_KEYSLOT,
//! SEAL_KEYSLOT, KEY_DIGEST and GENERATE_KEY.

pub mod af;
pub mod area;
pub mod hash;
pub mod kdf;
pub mod rng;
