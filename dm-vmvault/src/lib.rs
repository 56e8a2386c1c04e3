//! dm-vmvault: the `vmvault` target.
//!
//! A dm-crypt-style table whose key is a vault slot ([`table`]), the I/O engine that maps
//! plaintext requests onto encrypted backing I/O ([`io`]) through a [`crypt::Crypt`] (the
//! vault, or the in-process engine for tests), the frontends that give the kernel a
//! block device ([`frontend`]), and the daemon `vmvaultd` ([`daemon`]), which serves
//! the control protocol of `vmvault-proto`.
#![deny(missing_docs)]

pub mod backend;
pub mod crypt;
pub mod daemon;
pub mod frontend;
pub mod io;
pub mod locks;
pub mod table;
pub mod vault;
