//! The control protocol of `vmvaultd`: one JSON object per line over the Unix stream
//! socket `<run-dir>/control`, a request answered by one response line.
//!
//! ```text
//! → {"cmd":"open","name":"vol","backing":"/img","cipher":"aes-xts-plain64","key_size":512,
//!    "sector_size":4096,"offset":32768,"key_serial":123456789,"backend":"auto"}
//! ← {"ok":true,"status":{"name":"vol","device":"/dev/loop3",...}}
//! → {"cmd":"prepare_key"}
//! ← {"ok":true,"key_ring":987654321}
//!   (the client links its possessor-only key into that keyring, then sends
//!    `open` with "key_serial" and "key_ring")
//! → {"cmd":"open_fd","name":"vol","backing":"/img",...}   + SCM_RIGHTS: one descriptor
//!   (the same fields as `open`; the backing device is the descriptor sent as ancillary
//!    data with the line, `backing` only names it)
//! → {"cmd":"close","name":"vol"}
//! ← {"ok":true}
//! ← {"ok":false,"code":5,"error":"Device vol already exists."}
//! ```
//!
//! A request line is at most [`MAX_LINE`] bytes; a longer one is answered with an error
//! (code 1) and the connection is closed.
//!
//! `code` is the exit code `vaultsetup` should use, as cryptsetup's: 1 bad arguments,
//! 2 no permission or bad key, 3 out of memory, 4 wrong device, 5 busy or exists.

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Longest request line the daemon reads (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

/// Exit codes carried in error responses (cryptsetup's).
pub mod code {
    /// Wrong parameters.
    pub const BAD_ARGS: i32 = 1;
    /// No permission, or a bad/missing key.
    pub const PERMISSION: i32 = 2;
    /// Out of memory.
    pub const NO_MEMORY: i32 = 3;
    /// Wrong device specified (backing problems, missing kernel features).
    pub const DEVICE: i32 = 4;
    /// Device already exists or is busy.
    pub const BUSY: i32 = 5;
}

/// Which crypt backend a volume uses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum BackendChoice {
    /// The vault VM under KVM.
    Kvm,
    /// The vault's software backend (keys in `memfd_secret`).
    Soft,
    /// `kvm` when `/dev/kvm` works, else `soft`.
    #[default]
    Auto,
    /// The engine in the daemon's own heap: tests and comparisons only, never chosen by `auto`.
    InProcess,
}

impl BackendChoice {
    /// Name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            BackendChoice::Kvm => "kvm",
            BackendChoice::Soft => "soft",
            BackendChoice::Auto => "auto",
            BackendChoice::InProcess => "in-process",
        }
    }
}

/// Which frontend gives the kernel the plaintext block device.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FrontendChoice {
    /// The plaintext as a file in a FUSE mount, attached to a loop device.
    Fuse,
    /// A ublk block device served by vmvaultd through io_uring.
    Ublk,
    /// `ublk` where `/dev/ublk-control` exists (and the daemon was built with it), else
    /// `fuse`.
    #[default]
    Auto,
}

impl FrontendChoice {
    /// Name as on the command line.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendChoice::Fuse => "fuse",
            FrontendChoice::Ublk => "ublk",
            FrontendChoice::Auto => "auto",
        }
    }

    fn is_auto(&self) -> bool {
        *self == FrontendChoice::Auto
    }
}

fn default_sector_size() -> u32 {
    512
}

/// Parameters of `open`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct OpenRequest {
    /// Volume name (`/dev/mapper/NAME` where device-mapper exists).
    pub name: String,
    /// Backing file or block device holding the ciphertext.
    pub backing: PathBuf,
    /// dm-crypt cipher specification, e.g. `aes-xts-plain64`.
    pub cipher: String,
    /// Key size in bits (512 for AES-256-XTS).
    pub key_size: u32,
    /// Encryption sector size in bytes.
    #[serde(default = "default_sector_size")]
    pub sector_size: u32,
    /// Start of the encrypted data on the backing device (512-byte sectors).
    #[serde(default)]
    pub offset: u64,
    /// IV offset (512-byte sectors).
    #[serde(default)]
    pub iv_offset: u64,
    /// IVs in sector-size units.
    #[serde(default)]
    pub iv_large_sectors: bool,
    /// Device length in 512-byte sectors; default: to the end of the backing device.
    #[serde(default)]
    pub size: Option<u64>,
    /// Read-only mapping.
    #[serde(default)]
    pub readonly: bool,
    /// Pass discards to the backing file.
    #[serde(default)]
    pub allow_discards: bool,
    /// Crypt backend.
    #[serde(default)]
    pub backend: BackendChoice,
    /// Serial of a kernel keyring `user` key holding the volume key; the daemon must be
    /// able to read it (possessor, or user-read for uid 0).
    pub key_serial: i32,
    /// Keep the keyring key after import (default: invalidate it).
    #[serde(default)]
    pub keep_key: bool,
    /// The request keyring from `prepare_key` that the client linked `key_serial` into;
    /// the daemon invalidates it after the import, whatever the outcome.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ring: Option<i32>,
    /// What the client opened, for `status` (e.g. `LUKS2`); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// The volume's uuid (the LUKS header's), for the device-mapper uuid
    /// `VMVAULT-<type>-<uuid>-NAME` that udev rules see.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_uuid: Option<String>,
    /// Frontend; absent means `auto` (older clients).
    #[serde(default, skip_serializing_if = "FrontendChoice::is_auto")]
    pub frontend: FrontendChoice,
}

/// A request line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case")]
pub enum Request {
    /// Open a volume; the daemon opens `backing` itself.
    Open(OpenRequest),
    /// Open a volume on the backing descriptor sent with this line (`SCM_RIGHTS`, exactly
    /// one): the file the client checked, with no path resolved again. It must be a
    /// regular file or a block device, open read-write unless `readonly`.
    OpenFd(OpenRequest),
    /// Create a per-request keyring that the daemon possesses and the client may link
    /// a key into (answered with `key_ring`). It lives until the `open` that names it,
    /// the end of the connection, or 60 s, whichever comes first.
    PrepareKey,
    /// Close a volume.
    Close {
        /// Volume name.
        name: String,
    },
    /// Status of one volume.
    Status {
        /// Volume name.
        name: String,
    },
    /// Status of every volume.
    List,
    /// Liveness check; answers with the daemon's pid.
    Ping,
    /// Close every volume and exit. Refused while a volume is in use.
    Shutdown,
}

/// What `status` reports about a volume (the fields `vaultsetup status --json` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeStatus {
    /// Volume name.
    pub name: String,
    /// The plaintext block device (`/dev/mapper/NAME` or the loop device).
    pub device: String,
    /// The frontend's block device under it: `/dev/loopN` (`fuse+loop`) or
    /// `/dev/ublkbN` (`ublk`). The name predates the ublk frontend.
    pub loop_device: String,
    /// Backing file or device.
    pub backing: String,
    /// Cipher specification.
    pub cipher: String,
    /// Key size in bits.
    pub key_size: u32,
    /// Encryption sector size in bytes.
    pub sector_size: u32,
    /// Data offset on the backing device (512-byte sectors).
    pub offset: u64,
    /// IV offset (512-byte sectors).
    pub iv_offset: u64,
    /// IVs in sector-size units.
    pub iv_large_sectors: bool,
    /// Device size (512-byte sectors).
    pub size: u64,
    /// Read-only mapping.
    pub readonly: bool,
    /// Discards passed down.
    pub allow_discards: bool,
    /// Crypt backend in use (`kvm`, `soft`, `in-process`).
    pub backend: String,
    /// Protection level in words (DESIGN.md §1).
    pub protection: String,
    /// Frontend (`fuse+loop` or `ublk`).
    pub frontend: String,
    /// Whether the loop device does direct I/O on the FUSE file (false for `ublk`).
    pub direct_io: bool,
    /// The target table line (a vault slot reference, never a key).
    pub table: String,
    /// Pid of vmvaultd.
    pub daemon_pid: u32,
    /// What the client said it opened (e.g. `LUKS2`), if it said.
    #[serde(default)]
    pub volume_type: Option<String>,
}

/// A response line.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Response {
    /// Whether the request succeeded.
    pub ok: bool,
    /// Exit code for the caller when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<i32>,
    /// Error message when `ok` is false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Non-fatal warnings (e.g. the keyring key could not be invalidated).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// Status of the volume (`open`, `status`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub status: Option<VolumeStatus>,
    /// Every volume (`list`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volumes: Option<Vec<VolumeStatus>>,
    /// Serial of the request keyring (`prepare_key`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_ring: Option<i32>,
    /// Daemon pid (`ping`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
}

impl Response {
    /// A bare success.
    pub fn ok() -> Self {
        Response {
            ok: true,
            ..Default::default()
        }
    }

    /// A failure with an exit code.
    pub fn err(code: i32, msg: impl Into<String>) -> Self {
        Response {
            ok: false,
            code: Some(code),
            error: Some(msg.into()),
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn open_request_defaults_and_round_trip() {
        let line = r#"{"cmd":"open","name":"v","backing":"/img","cipher":"aes-xts-plain64","key_size":512,"key_serial":42}"#;
        let r: Request = serde_json::from_str(line).unwrap();
        let Request::Open(o) = &r else { panic!() };
        assert_eq!(o.sector_size, 512);
        assert_eq!(o.backend, BackendChoice::Auto);
        assert!(!o.keep_key && !o.readonly);
        let again: Request = serde_json::from_str(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        let c: Request = serde_json::from_str(r#"{"cmd":"close","name":"v"}"#).unwrap();
        assert_eq!(c, Request::Close { name: "v".into() });
        let b: BackendChoice = serde_json::from_str(r#""in-process""#).unwrap();
        assert_eq!(b, BackendChoice::InProcess);
        // frontend: optional, absent = auto, and auto is not sent (older daemons).
        assert_eq!(o.frontend, FrontendChoice::Auto);
        assert!(!serde_json::to_string(&r).unwrap().contains("frontend"));
        let u: Request =
            serde_json::from_str(&line.replace("}", r#","frontend":"ublk"}"#)).unwrap();
        let Request::Open(u) = u else { panic!() };
        assert_eq!(u.frontend, FrontendChoice::Ublk);
    }

    #[test]
    fn error_response_shape() {
        let s = serde_json::to_string(&Response::err(code::BUSY, "busy")).unwrap();
        assert_eq!(s, r#"{"ok":false,"code":5,"error":"busy"}"#);
        assert_eq!(
            serde_json::to_string(&Response::ok()).unwrap(),
            r#"{"ok":true}"#
        );
    }
}
