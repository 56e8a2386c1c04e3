//! The vmvault vault: the host/vault ABI, the sector cipher engine and the guest image.
//!
//! This crate is `no_std` so the same engine runs inside the vault guest and in the
//! in-process `soft` backend.
#![no_std]
#![deny(missing_docs)]

#[cfg(feature = "std")]
extern crate std;

pub mod abi;
pub mod argon2;
pub mod engine;
pub mod keyslot;
pub mod service;
