//! The device and key-file fields: `DeviceSpec` (a path or a `UUID=`/`PARTUUID=`/`LABEL=`/
//! `PARTLABEL=` tag) and `KeySpec` (`none`, a path, or `PATH:DEVICE`).

use std::fmt;
use std::path::{Path, PathBuf};

use super::error::{ParseErrorKind, ResolveError};

/// A block device (or, for `header=`, a file) as crypttab writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DeviceSpec {
    /// A path such as `/dev/sda2` or `/dev/disk/by-id/...`.
    Path(PathBuf),
    /// `UUID=...`: the filesystem (LUKS header) UUID, udev's `ID_FS_UUID`.
    Uuid(String),
    /// `PARTUUID=...`: the GPT partition UUID, udev's `ID_PART_ENTRY_UUID`.
    PartUuid(String),
    /// `LABEL=...`: the filesystem (LUKS2 header) label, udev's `ID_FS_LABEL`.
    Label(String),
    /// `PARTLABEL=...`: the GPT partition name, udev's `ID_PART_ENTRY_NAME`.
    PartLabel(String),
}

/// Removes one pair of surrounding quotes, as systemd's `unquote(value, "\"'")` does for
/// tags (`LABEL="my disk"` cannot be written in crypttab, whitespace splits it, but
/// `LABEL="data"` can).
fn unquote(v: &str) -> &str {
    for q in ['"', '\''] {
        if v.len() >= 2 && v.starts_with(q) && v.ends_with(q) {
            return &v[1..v.len() - 1];
        }
    }
    v
}

impl DeviceSpec {
    /// Parses a device field. Tags are recognized by their prefix (case-sensitive, as in
    /// systemd); anything else is a path. An empty value or an empty tag is an error.
    pub fn parse(s: &str) -> Result<DeviceSpec, ParseErrorKind> {
        let bad = || ParseErrorKind::InvalidDevice(s.to_string());
        let tag = |rest: &str| -> Result<String, ParseErrorKind> {
            let v = unquote(rest);
            if v.is_empty() {
                Err(bad())
            } else {
                Ok(v.to_string())
            }
        };
        if s.is_empty() {
            return Err(bad());
        }
        Ok(if let Some(r) = s.strip_prefix("UUID=") {
            DeviceSpec::Uuid(tag(r)?)
        } else if let Some(r) = s.strip_prefix("PARTUUID=") {
            DeviceSpec::PartUuid(tag(r)?)
        } else if let Some(r) = s.strip_prefix("LABEL=") {
            DeviceSpec::Label(tag(r)?)
        } else if let Some(r) = s.strip_prefix("PARTLABEL=") {
            DeviceSpec::PartLabel(tag(r)?)
        } else {
            DeviceSpec::Path(PathBuf::from(s))
        })
    }

    /// The device node this spec names, without looking at the file system: a path as is,
    /// a tag as udev's symlink (`/dev/disk/by-uuid/...`, `by-partuuid`, `by-label`,
    /// `by-partlabel`), the value encoded as udev encodes it (`/` becomes `\x2f`), like
    /// systemd's `fstab_node_to_udev_node`.
    pub fn udev_node(&self) -> PathBuf {
        let (by, v) = match self {
            DeviceSpec::Path(p) => return p.clone(),
            DeviceSpec::Uuid(v) => ("uuid", v),
            DeviceSpec::PartUuid(v) => ("partuuid", v),
            DeviceSpec::Label(v) => ("label", v),
            DeviceSpec::PartLabel(v) => ("partlabel", v),
        };
        PathBuf::from(format!("/dev/disk/by-{by}/{}", encode_devnode_name(v)))
    }

    /// The device node, checked to exist: `UUID=...` → `/dev/disk/by-uuid/...` and so on.
    /// The error names the spec as written and the node looked for.
    pub fn resolve(&self) -> Result<PathBuf, ResolveError> {
        let node = self.udev_node();
        match std::fs::metadata(&node) {
            Ok(_) => Ok(node),
            Err(source) => Err(ResolveError {
                spec: self.to_string(),
                node,
                source,
            }),
        }
    }

    /// Whether a block device with these udev properties is this device. `props` looks up
    /// a property (`ID_FS_UUID`, `ID_PART_ENTRY_UUID`, `ID_FS_LABEL`, `ID_PART_ENTRY_NAME`,
    /// `DEVNAME`, `DEVLINKS`). UUIDs compare case-insensitively; a path matches `DEVNAME`
    /// or any of the space-separated `DEVLINKS`.
    pub fn matches(&self, props: &dyn Fn(&str) -> Option<String>) -> bool {
        match self {
            DeviceSpec::Uuid(v) => props("ID_FS_UUID").is_some_and(|p| p.eq_ignore_ascii_case(v)),
            DeviceSpec::PartUuid(v) => {
                props("ID_PART_ENTRY_UUID").is_some_and(|p| p.eq_ignore_ascii_case(v))
            }
            DeviceSpec::Label(v) => props("ID_FS_LABEL").is_some_and(|p| &p == v),
            DeviceSpec::PartLabel(v) => props("ID_PART_ENTRY_NAME").is_some_and(|p| &p == v),
            DeviceSpec::Path(p) => {
                let want = p.as_os_str();
                props("DEVNAME").is_some_and(|d| Path::new(&d).as_os_str() == want)
                    || props("DEVLINKS").is_some_and(|l| {
                        l.split_ascii_whitespace()
                            .any(|x| Path::new(x).as_os_str() == want)
                    })
            }
        }
    }
}

impl fmt::Display for DeviceSpec {
    /// The spec as crypttab writes it (`UUID=...` or the path), so it can be passed on to
    /// `vaultsetup attach` unchanged.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            DeviceSpec::Path(p) => write!(f, "{}", p.display()),
            DeviceSpec::Uuid(v) => write!(f, "UUID={v}"),
            DeviceSpec::PartUuid(v) => write!(f, "PARTUUID={v}"),
            DeviceSpec::Label(v) => write!(f, "LABEL={v}"),
            DeviceSpec::PartLabel(v) => write!(f, "PARTLABEL={v}"),
        }
    }
}

/// udev's `encode_devnode_name`: bytes outside `[A-Za-z0-9#+-.:=@_]` (and outside valid
/// multi-byte UTF-8) become `\xHH`, so a label with `/` or space names one symlink.
pub fn encode_devnode_name(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for ch in s.chars() {
        if ch.is_ascii_alphanumeric() || "#+-.:=@_".contains(ch) || !ch.is_ascii() {
            out.push(ch);
        } else {
            out.push_str(&format!("\\x{:02x}", ch as u32));
        }
    }
    out
}

/// The key-file field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySpec {
    /// `none`, `-`, or the field missing: ask for a passphrase.
    Ask,
    /// A key file on the root file system (or in the initramfs).
    Path(PathBuf),
    /// `PATH:DEVICE`: a key file on another device, which `vaultsetup attach` mounts
    /// read-only in a private directory (systemd's convention).
    PathOnDevice {
        /// The key file's path inside that file system.
        path: PathBuf,
        /// The device holding it.
        device: DeviceSpec,
    },
}

impl KeySpec {
    /// Parses a key-file field: `none`, `-` or empty ask; `PATH:DEVICE` names a key file on
    /// a device when the part after the last `:` is a device (`UUID=`... or an absolute
    /// path), as systemd's `split_locationspec` decides; anything else is a path, which
    /// must be absolute.
    pub fn parse(s: &str) -> Result<KeySpec, ParseErrorKind> {
        if matches!(s, "" | "-" | "none") {
            return Ok(KeySpec::Ask);
        }
        let bad = || ParseErrorKind::InvalidKeyFile(s.to_string());
        if let Some((path, dev)) = s.rsplit_once(':') {
            if let Ok(device) = DeviceSpec::parse(dev) {
                if device.udev_node().is_absolute() {
                    if !path.starts_with('/') {
                        return Err(bad());
                    }
                    return Ok(KeySpec::PathOnDevice {
                        path: PathBuf::from(path),
                        device,
                    });
                }
            }
        }
        if !s.starts_with('/') {
            return Err(bad());
        }
        Ok(KeySpec::Path(PathBuf::from(s)))
    }
}

impl fmt::Display for KeySpec {
    /// The field as crypttab writes it (`none` for [`KeySpec::Ask`]).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KeySpec::Ask => f.write_str("none"),
            KeySpec::Path(p) => write!(f, "{}", p.display()),
            KeySpec::PathOnDevice { path, device } => write!(f, "{}:{device}", path.display()),
        }
    }
}
