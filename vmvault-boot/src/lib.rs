//! The boot layer of vmvault: everything between `/etc/vaulttab` and `vaultsetup attach`.
//!
//! - [`vaulttab`]: the parser for `/etc/vaulttab`, which has exactly crypttab(5)'s syntax
//!   (`name device keyfile options`), with typed devices, key files and options. `vaultsetup
//!   attach` parses its OPTIONS argument with [`vaulttab::Options::parse`].
//! - [`generator`]: the systemd generator (`vmvault-generator`) that turns each entry into a
//!   `vmvault@NAME.service` unit wired like systemd-cryptsetup-generator wires
//!   `systemd-cryptsetup@NAME.service`.
//! - [`udev`]: matching a block device's udev properties against the table, for the hotplug
//!   rule and busybox initramfs images (`vmvault-udev`).
//!
//! The library reads no environment variables; the binaries do (`VMVAULT_VAULTTAB`,
//! `SYSTEMD_PROC_CMDLINE`), and pass paths and text in.

#[doc(hidden)]
pub mod fuzzing;
pub mod generator;
pub mod udev;
pub mod vaulttab;
