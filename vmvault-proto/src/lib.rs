//! vmvault-proto: the host-side contract of vmvault.
//!
//! Everything a program needs to talk to `vmvaultd`, and nothing of the daemon itself:
//! - [`protocol`]: the typed, versioned control protocol (one reply type per command,
//!   unknown fields refused, no defaults for the mapping's geometry);
//! - [`client`]: a connection that checks its peer and says hello, and starting the
//!   daemon on demand;
//! - [`types`]: the mapping's domain values (cipher spec, sector size, key size,
//!   512-byte sectors, volume names), parsed once;
//! - [`exit`]: cryptsetup's exit codes, one enum for the CLI and the protocol;
//! - [`keyring`]: the keyctl(2)/add_key(2) layer of the key hand-over;
//! - [`keyslot`]: typed LUKS keyslot parameters and the binary payload (keyslot areas,
//!   passphrase) of the in-vault unlock commands;
//! - [`secret`]: the one secret-buffer type (locked, undumpable, zeroized pages of its
//!   own) and its newtypes for passphrases and keys;
//! - [`sock`]: the control socket's path, `SO_PEERCRED` and `SCM_RIGHTS`.
//!
//! `vaultsetup` (and later the boot-time tools and the PKCS#11 module) depend on this
//! crate and not on `dm-vmvault`, so they link none of kvm-ioctls, fuser, libublk,
//! devicemapper or the vault guest.

pub mod client;
pub mod exit;
pub mod keyring;
pub mod keyslot;
pub mod protocol;
pub mod secret;
pub mod sock;
pub mod types;

pub use exit::{ExitCode, HasExitCode};
pub use types::{Bytes, CipherSpec, KeySize, SectorSize, Sectors, TypeError, VolumeName};
