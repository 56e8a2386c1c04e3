//! The control protocol of `vmvaultd`: one JSON object per line over the Unix stream
//! socket `<run-dir>/control`, each request answered by one response line.
//!
//! ```text
//! → {"cmd":"hello","version":2}
//! ← {"result":"ok","reply":{"version":2,"pid":4242}}
//! → {"cmd":"prepare_key"}
//! ← {"result":"ok","reply":{"key_ring":987654321}}
//!   (the client links its possessor-only key into that keyring, then sends
//!    `open` with "key_serial" and "key_ring")
//! → {"cmd":"open","name":"vol","backing":"/img","cipher":"aes-xts-plain64","key_size":512,
//!    "sector_size":4096,"offset":32768,"iv_offset":0,"iv_large_sectors":false,"size":null,
//!    "backend":"auto","frontend":"auto","key_serial":123456789,"key_ring":987654321}
//! ← {"result":"ok","reply":{"name":"vol","device":"/dev/mapper/vol",...}}
//! → {"cmd":"open_fd",...}   + SCM_RIGHTS: one descriptor
//!   (the same fields as `open`; the backing device is the descriptor sent as ancillary
//!    data with the line, `backing` only names it)
//! → {"cmd":"close","name":"vol"}
//! ← {"result":"ok","reply":{}}
//! → {"cmd":"switch_root","path":"/root"}
//! ← {"result":"ok","reply":{}}
//!   (the daemon chroots into `path`: the initramfs hand-over, see [`Request::SwitchRoot`])
//! ← {"result":"error","code":5,"error":"Device vol already exists."}
//! → {"cmd":"open_unlock","name":"vol",...,"keyslots":[{"keyslot":0,"spec":{...},
//!    "area_len":256000}],"passphrase_len":12}
//!   <256000 area bytes><12 passphrase bytes>
//! ← {"result":"ok","reply":{"keyslot":0,"volume":{"name":"vol",...}}}
//!   (the vault unlocks the keyslots in order; the host never holds the volume key)
//! ```
//!
//! Requests that carry keyslot areas or a passphrase ([`Request::OpenUnlock`],
//! [`Request::OpenFdUnlock`], [`Request::UnlockKeyslot`], [`Request::SealKeyslot`]) are
//! followed by a binary payload whose lengths the line names (see
//! [`crate::keyslot`]); [`Request::SealKeyslot`]'s reply line is followed by the area.
//! Key handles ([`Request::GenerateKey`], [`Request::UnlockKeyslot`]) belong to the
//! connection: the daemon drops their keys on [`Request::DropKey`] or when it closes.
//!
//! Strict by design:
//! - The first request on a connection is [`Request::Hello`] with [`VERSION`]; another
//!   version, or any other request first, is refused and the connection closed. A change
//!   to any request or reply bumps [`VERSION`].
//! - Every request and reply refuses unknown fields, and the mapping's geometry
//!   (`sector_size`, `offset`, `iv_offset`, `iv_large_sectors`, `size`) has no default:
//!   a misspelt or missing field is an error, never a mapping with the wrong geometry.
//! - Each command has one reply type ([`Request`] names it); a refusal carries an
//!   [`ExitCode`].
//!
//! A request line is at most [`MAX_LINE`] bytes; a longer one is refused and the
//! connection closed.

use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize};

pub use crate::exit::ExitCode;
use crate::keyslot::{HexBytes, KeyslotCandidate, KeyslotSpec};
use crate::types::{CipherSpec, KeySize, SectorSize, Sectors, VolumeName};

/// The protocol version this build speaks. Client and daemon must agree exactly.
///
/// History: 1 the first typed protocol; 2 adds [`Request::SwitchRoot`]; 3 adds the
/// in-vault keyslot commands ([`Request::OpenUnlock`], [`Request::OpenFdUnlock`],
/// [`Request::GenerateKey`], [`Request::UnlockKeyslot`], [`Request::SealKeyslot`],
/// [`Request::KeyDigest`], [`Request::DropKey`]).
pub const VERSION: u32 = 3;

/// Longest request line the daemon reads (bytes, without the newline).
pub const MAX_LINE: usize = 64 * 1024;

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
}

/// The frontend a volume got (what `status` reports).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum FrontendKind {
    /// A FUSE file attached to a loop device.
    #[serde(rename = "fuse+loop")]
    FuseLoop,
    /// A ublk block device.
    #[serde(rename = "ublk")]
    Ublk,
}

impl FrontendKind {
    /// The name `status` prints.
    pub fn as_str(self) -> &'static str {
        match self {
            FrontendKind::FuseLoop => "fuse+loop",
            FrontendKind::Ublk => "ublk",
        }
    }
}

/// A field that must be present, even when its value may be `null`.
fn required<'de, D: Deserializer<'de>, T: Deserialize<'de>>(d: D) -> Result<T, D::Error> {
    T::deserialize(d)
}

/// Parameters of `open` and `open_fd`.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenRequest {
    /// Volume name (`/dev/mapper/NAME` where device-mapper exists).
    pub name: VolumeName,
    /// Backing file or block device holding the ciphertext.
    pub backing: PathBuf,
    /// dm-crypt cipher specification, e.g. `aes-xts-plain64`.
    pub cipher: CipherSpec,
    /// Key size (bits on the wire: 512 for AES-256-XTS).
    pub key_size: KeySize,
    /// Encryption sector size.
    pub sector_size: SectorSize,
    /// Start of the encrypted data on the backing device.
    pub offset: Sectors,
    /// IV offset.
    pub iv_offset: Sectors,
    /// IVs count sector-size units instead of 512-byte units.
    pub iv_large_sectors: bool,
    /// Device length; `null` means to the end of the backing device. Must be present.
    #[serde(deserialize_with = "required")]
    pub size: Option<Sectors>,
    /// Read-only mapping.
    #[serde(default)]
    pub readonly: bool,
    /// Pass discards to the backing file.
    #[serde(default)]
    pub allow_discards: bool,
    /// Crypt backend.
    pub backend: BackendChoice,
    /// Which frontend gives the kernel the block device (`auto`: ublk where it works).
    pub frontend: FrontendChoice,
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
}

/// Parameters of `open_unlock` and `open_fd_unlock`: the mapping as for `open`, and
/// instead of a keyring key the keyslots to try and the passphrase's length (areas and
/// passphrase follow the line, see [`crate::keyslot`]).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenUnlockRequest {
    /// Volume name.
    pub name: VolumeName,
    /// Backing file or block device holding the ciphertext.
    pub backing: PathBuf,
    /// dm-crypt cipher specification of the data.
    pub cipher: CipherSpec,
    /// Key size (bits on the wire).
    pub key_size: KeySize,
    /// Encryption sector size.
    pub sector_size: SectorSize,
    /// Start of the encrypted data on the backing device.
    pub offset: Sectors,
    /// IV offset.
    pub iv_offset: Sectors,
    /// IVs count sector-size units instead of 512-byte units.
    pub iv_large_sectors: bool,
    /// Device length; `null` means to the end of the backing device. Must be present.
    #[serde(deserialize_with = "required")]
    pub size: Option<Sectors>,
    /// Read-only mapping.
    #[serde(default)]
    pub readonly: bool,
    /// Pass discards to the backing file.
    #[serde(default)]
    pub allow_discards: bool,
    /// Crypt backend (a vault: `in-process` is refused, it would need the key).
    pub backend: BackendChoice,
    /// Frontend.
    pub frontend: FrontendChoice,
    /// What the client opened (e.g. `LUKS2`); informational.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_type: Option<String>,
    /// The volume's uuid, for the device-mapper uuid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub volume_uuid: Option<String>,
    /// The keyslots to try, in order; the first that opens keys the volume.
    pub keyslots: Vec<KeyslotCandidate>,
    /// Bytes of passphrase after the areas.
    pub passphrase_len: u64,
}

impl OpenUnlockRequest {
    /// The mapping as an [`OpenRequest`] whose key fields are unused (`key_serial` 0,
    /// `keep_key`: nothing in the keyring to invalidate).
    pub fn mapping(&self) -> OpenRequest {
        OpenRequest {
            name: self.name.clone(),
            backing: self.backing.clone(),
            cipher: self.cipher.clone(),
            key_size: self.key_size,
            sector_size: self.sector_size,
            offset: self.offset,
            iv_offset: self.iv_offset,
            iv_large_sectors: self.iv_large_sectors,
            size: self.size,
            readonly: self.readonly,
            allow_discards: self.allow_discards,
            backend: self.backend,
            frontend: self.frontend,
            key_serial: 0,
            keep_key: true,
            key_ring: None,
            volume_type: self.volume_type.clone(),
            volume_uuid: self.volume_uuid.clone(),
        }
    }
}

/// A request line. The doc of each variant names its reply type.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "snake_case", deny_unknown_fields)]
// Commands without parameters are empty struct variants, not unit variants: serde
// ignores unknown fields after a unit variant's tag, and they must be refused.
pub enum Request {
    /// The first request on every connection: the client's protocol version.
    /// Reply: [`HelloReply`].
    Hello {
        /// The client's [`VERSION`].
        version: u32,
    },
    /// Open a volume; the daemon opens `backing` itself. Reply: [`VolumeStatus`].
    Open(OpenRequest),
    /// Open a volume on the backing descriptor sent with this line (`SCM_RIGHTS`, exactly
    /// one): the file the client checked, with no path resolved again. It must be a
    /// regular file or a block device, open read-write unless `readonly`.
    /// Reply: [`VolumeStatus`].
    OpenFd(OpenRequest),
    /// Create a per-request keyring that the daemon possesses and the client may link
    /// a key into. It lives until the `open` that names it, the end of the connection,
    /// or 60 s, whichever comes first. Reply: [`KeyRingReply`].
    PrepareKey {},
    /// Close a volume. Reply: [`Done`].
    Close {
        /// Volume name.
        name: VolumeName,
    },
    /// Status of one volume. Reply: [`VolumeStatus`].
    Status {
        /// Volume name.
        name: VolumeName,
    },
    /// Status of every volume. Reply: [`ListReply`].
    List {},
    /// Liveness check. Reply: [`PingReply`].
    Ping {},
    /// Close every volume and exit; refused while a volume is in use. Reply: [`Done`].
    Shutdown {},
    /// The initramfs hand-over: the daemon makes `path` (an absolute path to a
    /// directory, the real root mounted by the initramfs) its root directory
    /// (`chroot(path)` then `chdir("/")`, for every thread) and keeps serving its
    /// volumes. Sent before the initramfs moves `/run`, `/dev`, `/proc` and `/sys` into
    /// the new root, so that after the switch the daemon's paths name the real root's
    /// mounts. Reply: [`Done`].
    SwitchRoot {
        /// The new root directory, absolute.
        path: PathBuf,
    },
    /// Open a volume whose key the vault unlocks from a keyslot: the daemon opens
    /// `backing` itself; the keyslot areas and the passphrase follow the line. Wrong
    /// passphrase for every keyslot: refusal with code 2. Reply: [`UnlockedVolume`].
    OpenUnlock(OpenUnlockRequest),
    /// [`Request::OpenUnlock`] on the backing descriptor sent with the line (as
    /// [`Request::OpenFd`]). Reply: [`UnlockedVolume`].
    OpenFdUnlock(OpenUnlockRequest),
    /// Generate a volume key in the vault (RDSEED/RDRAND mixed with host entropy); the
    /// key stays there under a handle of this connection. Reply: [`GeneratedKey`].
    GenerateKey {
        /// The cipher the key is for.
        cipher: CipherSpec,
        /// Its size.
        key_size: KeySize,
        /// Which vault (`in-process` is refused).
        backend: BackendChoice,
    },
    /// Unlock one keyslot into a handle of this connection (area and passphrase follow
    /// the line). Reply: [`KeyHandle`].
    UnlockKeyslot {
        /// The cipher the key is for (the volume's).
        cipher: CipherSpec,
        /// Which vault (`in-process` is refused).
        backend: BackendChoice,
        /// The keyslot.
        keyslot: KeyslotCandidate,
        /// Bytes of passphrase after the area.
        passphrase_len: u64,
    },
    /// Seal the key of `handle` under a passphrase (which follows the line) with the
    /// parameters of `keyslot`; the reply line is followed by the area. Reply:
    /// [`AreaReply`].
    SealKeyslot {
        /// A handle of this connection.
        handle: u64,
        /// The new keyslot's parameters.
        keyslot: KeyslotSpec,
        /// Bytes of passphrase after the line.
        passphrase_len: u64,
    },
    /// The LUKS digest of the key of `handle` with the digest parameters of `keyslot`.
    /// Reply: [`DigestReply`].
    KeyDigest {
        /// A handle of this connection.
        handle: u64,
        /// The digest parameters (`digest` gives only the length).
        keyslot: KeyslotSpec,
    },
    /// Drop the key of `handle` from the vault. Reply: [`Done`].
    DropKey {
        /// A handle of this connection.
        handle: u64,
    },
}

/// What `status` reports about a volume (the fields `vaultsetup status --json` prints).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VolumeStatus {
    /// Volume name.
    pub name: VolumeName,
    /// The plaintext block device (`/dev/mapper/NAME` or the frontend's device).
    pub device: PathBuf,
    /// The frontend's block device under it: `/dev/loopN` (`fuse+loop`) or
    /// `/dev/ublkbN` (`ublk`). The name predates the ublk frontend.
    pub loop_device: PathBuf,
    /// Backing file or device.
    pub backing: PathBuf,
    /// Cipher specification.
    pub cipher: CipherSpec,
    /// Key size (bits on the wire).
    pub key_size: KeySize,
    /// Encryption sector size.
    pub sector_size: SectorSize,
    /// Data offset on the backing device.
    pub offset: Sectors,
    /// IV offset.
    pub iv_offset: Sectors,
    /// IVs in sector-size units.
    pub iv_large_sectors: bool,
    /// Device size.
    pub size: Sectors,
    /// Read-only mapping.
    pub readonly: bool,
    /// Discards passed down.
    pub allow_discards: bool,
    /// Crypt backend in use (`kvm`, `soft`, `in-process`).
    pub backend: BackendChoice,
    /// Protection level in words (DESIGN.md §1).
    pub protection: String,
    /// Frontend (`fuse+loop` or `ublk`).
    pub frontend: FrontendKind,
    /// Whether the loop device does direct I/O on the FUSE file (false for `ublk`).
    pub direct_io: bool,
    /// The target table line (a vault slot reference, never a key).
    pub table: String,
    /// Pid of vmvaultd.
    pub daemon_pid: u32,
    /// What the client said it opened (e.g. `LUKS2`), if it said.
    pub volume_type: Option<String>,
}

/// Reply to [`Request::OpenUnlock`] and [`Request::OpenFdUnlock`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnlockedVolume {
    /// The LUKS keyslot that opened.
    pub keyslot: u32,
    /// The volume.
    pub volume: VolumeStatus,
}

/// Where the CPU's share of a generated key came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntropyKind {
    /// RDSEED.
    Rdseed,
    /// RDRAND (RDSEED failed).
    Rdrand,
}

/// Reply to [`Request::GenerateKey`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneratedKey {
    /// The key's handle on this connection.
    pub handle: u64,
    /// The CPU's entropy source.
    pub entropy: EntropyKind,
}

/// Reply to [`Request::UnlockKeyslot`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyHandle {
    /// The key's handle on this connection.
    pub handle: u64,
}

/// Reply to [`Request::SealKeyslot`]; `area_len` bytes of area follow the line.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AreaReply {
    /// Bytes of area after the line.
    pub area_len: u64,
}

/// Reply to [`Request::KeyDigest`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DigestReply {
    /// The digest.
    pub digest: HexBytes,
}

/// Reply to [`Request::Hello`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HelloReply {
    /// The daemon's [`VERSION`] (equal to the client's, or the hello was refused).
    pub version: u32,
    /// The daemon's pid.
    pub pid: u32,
}

/// Reply to [`Request::PrepareKey`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeyRingReply {
    /// Serial of the request keyring.
    pub key_ring: i32,
}

/// Reply to [`Request::List`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListReply {
    /// Every open volume.
    pub volumes: Vec<VolumeStatus>,
}

/// Reply to [`Request::Ping`].
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PingReply {
    /// The daemon's pid.
    pub pid: u32,
}

/// Reply to requests that only succeed or fail ([`Request::Close`],
/// [`Request::Shutdown`], [`Request::SwitchRoot`]): `{}`.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Done {}

/// A response line: the command's reply, or a refusal with the exit code the client
/// should use (cryptsetup's: 1 bad arguments, 2 no permission or bad key, 3 out of
/// memory, 4 wrong device, 5 busy or exists).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "result", rename_all = "snake_case", deny_unknown_fields)]
pub enum Response<T> {
    /// The request succeeded.
    Ok {
        /// The command's reply.
        reply: T,
        /// Non-fatal warnings (e.g. the keyring key could not be invalidated).
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        warnings: Vec<String>,
    },
    /// The request was refused.
    Error {
        /// Exit code for the client.
        code: ExitCode,
        /// What went wrong, for the user.
        error: String,
    },
}

impl<T> Response<T> {
    /// A success without warnings.
    pub fn ok(reply: T) -> Self {
        Response::Ok {
            reply,
            warnings: Vec::new(),
        }
    }

    /// A refusal.
    pub fn err(code: ExitCode, msg: impl Into<String>) -> Self {
        Response::Error {
            code,
            error: msg.into(),
        }
    }
}

/// The refusal line for a request that did not parse, or came at the wrong time; it
/// has no reply type.
pub fn refusal(code: ExitCode, msg: impl Into<String>) -> Response<Done> {
    Response::err(code, msg)
}

#[cfg(test)]
mod tests {
    use super::*;

    const OPEN: &str = r#"{"cmd":"open","name":"v","backing":"/img","cipher":"aes-xts-plain64","key_size":512,"sector_size":4096,"offset":32768,"iv_offset":0,"iv_large_sectors":false,"size":null,"backend":"auto","frontend":"ublk","key_serial":42}"#;

    fn parse(line: &str) -> Result<Request, String> {
        serde_json::from_str(line).map_err(|e| e.to_string())
    }

    #[test]
    fn open_request_round_trip() {
        let r = parse(OPEN).unwrap();
        let Request::Open(o) = &r else { panic!() };
        assert_eq!(o.sector_size, SectorSize::B4096);
        assert_eq!(o.offset, Sectors(32768));
        assert_eq!(o.key_size.bytes(), 64);
        assert_eq!(o.frontend, FrontendChoice::Ublk);
        assert!(!o.keep_key && !o.readonly && o.size.is_none());
        let again = parse(&serde_json::to_string(&r).unwrap()).unwrap();
        assert_eq!(again, r);
        assert_eq!(
            parse(r#"{"cmd":"close","name":"v"}"#).unwrap(),
            Request::Close {
                name: VolumeName::new("v").unwrap()
            }
        );
        let b: BackendChoice = serde_json::from_str(r#""in-process""#).unwrap();
        assert_eq!(b, BackendChoice::InProcess);
    }

    #[test]
    fn unknown_fields_are_refused() {
        let e = parse(&OPEN.replace(r#""offset""#, r#""ofset""#)).unwrap_err();
        assert!(e.contains("ofset"), "{e}");
        let e = parse(&OPEN.replace('}', r#","extra":1}"#)).unwrap_err();
        assert!(e.contains("unknown field `extra`"), "{e}");
        let e = parse(r#"{"cmd":"close","name":"v","force":true}"#).unwrap_err();
        assert!(e.contains("unknown field `force`"), "{e}");
        let e = parse(r#"{"cmd":"ping","x":1}"#).unwrap_err();
        assert!(e.contains("unknown field"), "{e}");
        let e = parse(r#"{"cmd":"switch_root","path":"/root","force":1}"#).unwrap_err();
        assert!(e.contains("unknown field `force`"), "{e}");
        let e = parse(r#"{"cmd":"switch_root"}"#).unwrap_err();
        assert!(e.contains("missing field `path`"), "{e}");
    }

    #[test]
    fn switch_root_shape() {
        let r = Request::SwitchRoot {
            path: PathBuf::from("/root"),
        };
        let s = serde_json::to_string(&r).unwrap();
        assert_eq!(s, r#"{"cmd":"switch_root","path":"/root"}"#);
        assert_eq!(parse(&s).unwrap(), r);
        assert_eq!(VERSION, 3);
    }

    #[test]
    fn geometry_has_no_defaults() {
        for field in [
            r#""sector_size":4096,"#,
            r#""offset":32768,"#,
            r#""iv_offset":0,"#,
            r#""iv_large_sectors":false,"#,
            r#""size":null,"#,
        ] {
            let e = parse(&OPEN.replace(field, "")).unwrap_err();
            let name = field.split('"').nth(1).unwrap();
            assert!(
                e.contains(&format!("missing field `{name}`")),
                "{name}: {e}"
            );
        }
        let e = parse(&OPEN.replace(r#""sector_size":4096"#, r#""sector_size":4095"#)).unwrap_err();
        assert!(e.contains("sector size 4095"), "{e}");
        let e = parse(&OPEN.replace(r#""name":"v""#, r#""name":"../v""#)).unwrap_err();
        assert!(e.contains("invalid volume name"), "{e}");
    }

    #[test]
    fn keyslot_commands_round_trip_and_are_strict() {
        use crate::keyslot::tests::{argon, spec};
        let cand = KeyslotCandidate {
            keyslot: 3,
            spec: spec(argon()),
            area_len: 256_000,
        };
        let open = OPEN
            .replace(r#""cmd":"open""#, r#""cmd":"open_unlock""#)
            .replace(r#","key_serial":42}"#, "");
        let line = format!(
            r#"{open},"keyslots":[{}],"passphrase_len":5}}"#,
            serde_json::to_string(&cand).unwrap()
        );
        let Request::OpenUnlock(o) = parse(&line).unwrap() else {
            panic!()
        };
        assert_eq!(o.keyslots, vec![cand.clone()]);
        assert_eq!(o.passphrase_len, 5);
        let m = o.mapping();
        assert!(m.keep_key && m.key_ring.is_none() && m.key_serial == 0);
        assert_eq!(m.name.as_str(), "v");
        // A keyring key has no place in it; nor has an unknown field.
        assert!(parse(&line.replace(
            r#""passphrase_len":5"#,
            r#""passphrase_len":5,"key_serial":1"#
        ))
        .is_err());
        assert!(parse(&line.replace(r#","passphrase_len":5"#, "")).is_err());
        let fd = line.replace(r#""cmd":"open_unlock""#, r#""cmd":"open_fd_unlock""#);
        assert!(matches!(parse(&fd).unwrap(), Request::OpenFdUnlock(_)));

        for r in [
            Request::GenerateKey {
                cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
                key_size: KeySize::from_bits(512).unwrap(),
                backend: BackendChoice::Soft,
            },
            Request::UnlockKeyslot {
                cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
                backend: BackendChoice::Auto,
                keyslot: cand.clone(),
                passphrase_len: 9,
            },
            Request::SealKeyslot {
                handle: 7,
                keyslot: cand.spec.clone(),
                passphrase_len: 9,
            },
            Request::KeyDigest {
                handle: 7,
                keyslot: cand.spec.clone(),
            },
            Request::DropKey { handle: 7 },
        ] {
            let s = serde_json::to_string(&r).unwrap();
            assert_eq!(parse(&s).unwrap(), r, "{s}");
            let extra = format!("{},\"x\":1}}", &s[..s.len() - 1]);
            assert!(parse(&extra).is_err(), "{extra}");
        }
        assert_eq!(
            serde_json::to_string(&Request::DropKey { handle: 7 }).unwrap(),
            r#"{"cmd":"drop_key","handle":7}"#
        );
        let g: Response<GeneratedKey> =
            serde_json::from_str(r#"{"result":"ok","reply":{"handle":1,"entropy":"rdseed"}}"#)
                .unwrap();
        assert_eq!(
            g,
            Response::ok(GeneratedKey {
                handle: 1,
                entropy: EntropyKind::Rdseed
            })
        );
        let d: Response<DigestReply> =
            serde_json::from_str(r#"{"result":"ok","reply":{"digest":"00ff"}}"#).unwrap();
        let Response::Ok { reply, .. } = d else {
            panic!()
        };
        assert_eq!(reply.digest.as_bytes(), &[0, 0xff]);
    }

    /// Truncated or byte-flipped keyslot command lines never panic the parser, and
    /// whatever parses has payload lengths that are either accepted or refused by
    /// `Payload::check`, never taken unchecked.
    #[test]
    fn mangled_keyslot_lines_never_panic() {
        use crate::keyslot::tests::{argon, spec};
        use crate::keyslot::Payload;
        let cand = KeyslotCandidate {
            keyslot: 1,
            spec: spec(argon()),
            area_len: 256_000,
        };
        let reqs = [
            Request::UnlockKeyslot {
                cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
                backend: BackendChoice::Kvm,
                keyslot: cand.clone(),
                passphrase_len: 3,
            },
            Request::SealKeyslot {
                handle: 1,
                keyslot: cand.spec.clone(),
                passphrase_len: 3,
            },
        ];
        let mut parsed = 0;
        for r in &reqs {
            let line = serde_json::to_string(r).unwrap();
            let b = line.as_bytes();
            for i in 0..b.len() {
                let _ = parse(std::str::from_utf8(&b[..i]).unwrap_or(""));
                for sub in [b'"', b'9', b'}', b'-', b'x'] {
                    let mut m = b.to_vec();
                    m[i] = sub;
                    if let Ok(Request::UnlockKeyslot {
                        keyslot,
                        passphrase_len,
                        ..
                    }) = parse(&String::from_utf8_lossy(&m))
                    {
                        parsed += 1;
                        let ok =
                            Payload::check(std::slice::from_ref(&keyslot), passphrase_len, false);
                        if let Ok(p) = ok {
                            assert_eq!(p.areas, vec![keyslot.spec.area_len()]);
                            assert!(p.passphrase <= crate::keyslot::MAX_PASSPHRASE);
                        }
                    }
                }
            }
        }
        assert!(parsed > 0);
    }

    #[test]
    fn response_shapes() {
        let s = serde_json::to_string(&refusal(ExitCode::Busy, "busy")).unwrap();
        assert_eq!(s, r#"{"result":"error","code":5,"error":"busy"}"#);
        let s = serde_json::to_string(&Response::ok(Done {})).unwrap();
        assert_eq!(s, r#"{"result":"ok","reply":{}}"#);
        let r: Response<PingReply> =
            serde_json::from_str(r#"{"result":"ok","reply":{"pid":7}}"#).unwrap();
        assert_eq!(r, Response::ok(PingReply { pid: 7 }));
        // The reply of another command does not pass for this one.
        assert!(serde_json::from_str::<Response<PingReply>>(
            r#"{"result":"ok","reply":{"key_ring":7}}"#
        )
        .is_err());
        assert!(serde_json::from_str::<Response<Done>>(
            r#"{"result":"error","code":9,"error":"x"}"#
        )
        .is_err());
    }
}
