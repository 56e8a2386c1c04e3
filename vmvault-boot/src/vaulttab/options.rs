//! The options field (`luks,discard,tries=5,...`), parsed as systemd-cryptsetup parses it:
//! comma-separated, `\,` escapes a comma, unknown options warn and are ignored.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use super::device::DeviceSpec;
use super::error::{ParseError, ParseErrorKind, Warning, WarningKind};
use super::timespan::parse_timespan;

/// Options and warnings each with its option's byte offset, or the error with the
/// offending option's byte offset.
pub(crate) type OffsetResult = Result<(Options, Vec<(usize, Warning)>), (usize, ParseErrorKind)>;

/// How many passphrase tries `vaultsetup attach` gives when `tries=` is not set
/// (systemd-cryptsetup's default).
pub const DEFAULT_TRIES: u32 = 3;

/// vmvault's `backend=`: where the volume key lives.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Backend {
    /// The daemon's choice: kvm when /dev/kvm works, soft otherwise.
    #[default]
    Auto,
    /// The vault VM under KVM.
    Kvm,
    /// The software fallback (memfd_secret pages in the daemon).
    Soft,
}

/// vmvault's `frontend=`: how the volume is presented to the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Frontend {
    /// The daemon's choice.
    #[default]
    Auto,
    /// A FUSE file behind a loop device.
    Fuse,
    /// A ublk block device.
    Ublk,
}

impl Backend {
    /// The option value (`auto`, `kvm`, `soft`).
    pub fn as_str(self) -> &'static str {
        match self {
            Backend::Auto => "auto",
            Backend::Kvm => "kvm",
            Backend::Soft => "soft",
        }
    }
}

impl Frontend {
    /// The option value (`auto`, `fuse`, `ublk`).
    pub fn as_str(self) -> &'static str {
        match self {
            Frontend::Auto => "auto",
            Frontend::Fuse => "fuse",
            Frontend::Ublk => "ublk",
        }
    }
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl fmt::Display for Frontend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The options of one entry. Fields left at their default were not given.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Options {
    /// `luks`: the volume must be LUKS (vmvault opens only LUKS anyway; accepted for
    /// crypttab compatibility).
    pub luks: bool,
    /// `discard`: pass discards (TRIM) down to the device.
    pub discard: bool,
    /// `readonly` / `read-only`: open read-only.
    pub readonly: bool,
    /// `tries=N`: passphrase attempts; None when not given (then [`DEFAULT_TRIES`]);
    /// `Some(0)` means ask forever. See [`Options::tries_or_default`].
    pub tries: Option<u32>,
    /// `timeout=`: how long to wait for a passphrase; None when not given or 0 (no limit).
    pub timeout: Option<Duration>,
    /// `keyfile-offset=`: bytes to skip at the start of the key file.
    pub keyfile_offset: Option<u64>,
    /// `keyfile-size=`: bytes to read from the key file.
    pub keyfile_size: Option<u64>,
    /// `key-slot=`: try only this key slot.
    pub key_slot: Option<u32>,
    /// `header=`: a detached LUKS header (a file or a device).
    pub header: Option<DeviceSpec>,
    /// `nofail`: the boot does not fail (and does not wait) when this volume fails.
    pub nofail: bool,
    /// `noauto`: not attached at boot, only on request.
    pub noauto: bool,
    /// `_netdev`: needs the network; ordered under `remote-cryptsetup.target`.
    pub netdev: bool,
    /// `x-initrd.attach`: attached in the initrd and kept until the end of shutdown
    /// (no `Conflicts=umount.target`).
    pub initrd_attach: bool,
    /// `x-systemd.device-timeout=`: how long systemd waits for the device (and key device).
    pub device_timeout: Option<Duration>,
    /// `backend=kvm|soft|auto` (vmvault's own).
    pub backend: Backend,
    /// `frontend=fuse|ublk|auto` (vmvault's own).
    pub frontend: Frontend,
}

/// systemd-cryptsetup options vmvault knows of but does not implement; they are ignored
/// with a warning (names given without `=value`; a trailing `=` means it takes a value).
const UNSUPPORTED: &[&str] = &[
    "same-cpu-crypt",
    "submit-from-crypt-cpus",
    "no-read-workqueue",
    "no-write-workqueue",
    "verify",
    "silent",
    "keyfile-erase",
    "keyfile-timeout=",
    "try-empty-password",
    "try-empty-password=",
    "password-echo=",
    "headless",
    "headless=",
    "pkcs11-uri=",
    "fido2-device=",
    "fido2-cid=",
    "fido2-rp=",
    "tpm2-device=",
    "tpm2-pcrs=",
    "tpm2-pin=",
    "tpm2-signature=",
    "tpm2-public-key=",
    "tpm2-public-key-pcrs=",
    "tpm2-measure-pcr=",
    "tpm2-measure-bank=",
    "token-timeout=",
    "link-volume-key=",
    "integrity",
    "sector-size=",
    "x-systemd.after=",
    "x-systemd.before=",
    "x-systemd.wants=",
    "x-systemd.requires=",
    "x-systemd.wanted-by=",
    "x-systemd.required-by=",
    "x-systemd.requires-mounts-for=",
    "x-systemd.automount",
    "noearly",
    "initramfs",
    "keyscript=",
    "check",
    "check=",
    "checkargs=",
];

/// Options that only make sense for plain dm-crypt; a LUKS header carries them.
const PLAIN_ONLY: &[&str] = &["cipher=", "hash=", "size=", "offset=", "skip="];

/// Options that select a volume type vmvault cannot open.
const OTHER_TYPES: &[&str] = &[
    "plain",
    "tcrypt",
    "tcrypt-hidden",
    "tcrypt-system",
    "tcrypt-veracrypt",
    "veracrypt-pim=",
    "bitlk",
    "fvault2",
    "loopaes",
];

/// Options with which systemd formats the device at boot.
const FORMATS: &[&str] = &["swap", "tmp", "tmp="];

/// Splits an options string at unescaped commas (`\,` is a literal comma), skipping empty
/// items. Each item comes with its byte offset in `text`.
fn split_options(text: &str) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut start = 0;
    let mut chars = text.char_indices().peekable();
    while let Some((i, c)) = chars.next() {
        match c {
            '\\' if chars.peek().is_some_and(|&(_, n)| n == ',') => {
                cur.push(',');
                chars.next();
            }
            ',' => {
                if !cur.is_empty() {
                    out.push((start, std::mem::take(&mut cur)));
                }
                start = i + 1;
            }
            _ => cur.push(c),
        }
    }
    if !cur.is_empty() {
        out.push((start, cur));
    }
    out
}

fn number<T: FromStr<Err = std::num::ParseIntError>>(
    option: &str,
    value: &str,
) -> Result<T, ParseErrorKind> {
    value
        .parse()
        .map_err(|source| ParseErrorKind::InvalidNumber {
            option: option.to_string(),
            value: value.to_string(),
            source,
        })
}

fn span(option: &str, value: &str) -> Result<Duration, ParseErrorKind> {
    parse_timespan(value).map_err(|source| ParseErrorKind::InvalidTimespan {
        option: option.to_string(),
        value: value.to_string(),
        source,
    })
}

impl Options {
    /// Parses an options field. `none`, `-` and the empty string mean no options (as
    /// systemd-cryptsetup's `argv[5]`). Unknown options and options vmvault does not
    /// implement come back as warnings (without a location: [`super::Vaulttab`] adds the
    /// file and line); a bad value or a non-LUKS type is an error.
    pub fn parse(text: &str) -> Result<(Options, Vec<Warning>), ParseError> {
        let (o, w) = Self::parse_with_offsets(text).map_err(|(_, kind)| ParseError::new(kind))?;
        Ok((o, w.into_iter().map(|(_, w)| w).collect()))
    }

    /// The parser proper: options, and warnings each with the byte offset of its option.
    pub(crate) fn parse_with_offsets(text: &str) -> OffsetResult {
        let mut o = Options::default();
        let mut warnings = Vec::new();
        if matches!(text, "" | "-" | "none") {
            return Ok((o, warnings));
        }
        for (off, word) in split_options(text) {
            let r = o.apply(&word);
            match r {
                Ok(None) => {}
                Ok(Some(kind)) => warnings.push((
                    off,
                    Warning {
                        location: None,
                        option: word,
                        kind,
                    },
                )),
                Err(kind) => return Err((off, kind)),
            }
        }
        Ok((o, warnings))
    }

    /// Applies one option; Ok(Some(kind)) when it is ignored with a warning.
    fn apply(&mut self, word: &str) -> Result<Option<WarningKind>, ParseErrorKind> {
        let (key, value) = match word.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (word, None),
        };
        let flag = |v: Option<&str>| -> Result<bool, ParseErrorKind> {
            match v {
                None => Ok(true),
                Some(_) => Err(ParseErrorKind::UnexpectedValue(key.to_string())),
            }
        };
        let need = || value.ok_or_else(|| ParseErrorKind::MissingValue(key.to_string()));
        match key {
            "luks" => self.luks = flag(value)?,
            "discard" => self.discard = flag(value)?,
            "readonly" | "read-only" => self.readonly = flag(value)?,
            "nofail" => self.nofail = flag(value)?,
            "noauto" => self.noauto = flag(value)?,
            "_netdev" => self.netdev = flag(value)?,
            "x-initrd.attach" => self.initrd_attach = flag(value)?,
            "tries" => self.tries = Some(number(key, need()?)?),
            "timeout" => {
                let d = span(key, need()?)?;
                self.timeout = (!d.is_zero() && d != Duration::MAX).then_some(d);
            }
            "keyfile-offset" => self.keyfile_offset = Some(number(key, need()?)?),
            "keyfile-size" => {
                let n: u64 = number(key, need()?)?;
                self.keyfile_size = (n != 0).then_some(n);
            }
            "key-slot" | "keyslot" => self.key_slot = Some(number(key, need()?)?),
            "header" => {
                let v = need()?;
                let on_device = v.rsplit_once(':').is_some_and(|(_, d)| {
                    DeviceSpec::parse(d).is_ok_and(|d| d.udev_node().is_absolute())
                });
                if on_device {
                    return Err(ParseErrorKind::HeaderOnDevice(v.to_string()));
                }
                self.header = Some(
                    DeviceSpec::parse(v)
                        .map_err(|_| ParseErrorKind::InvalidHeader(v.to_string()))?,
                );
            }
            "x-systemd.device-timeout" => {
                self.device_timeout = Some(span(key, need()?)?);
            }
            "backend" => {
                let v = need()?;
                self.backend = match v {
                    "auto" => Backend::Auto,
                    "kvm" => Backend::Kvm,
                    "soft" => Backend::Soft,
                    _ => {
                        return Err(ParseErrorKind::InvalidValue {
                            option: key.to_string(),
                            value: v.to_string(),
                            expected: "kvm, soft or auto",
                        })
                    }
                };
            }
            "frontend" => {
                let v = need()?;
                self.frontend = match v {
                    "auto" => Frontend::Auto,
                    "fuse" => Frontend::Fuse,
                    "ublk" => Frontend::Ublk,
                    _ => {
                        return Err(ParseErrorKind::InvalidValue {
                            option: key.to_string(),
                            value: v.to_string(),
                            expected: "fuse, ublk or auto",
                        })
                    }
                };
            }
            _ => return Self::classify_other(key, value.is_some(), word),
        }
        Ok(None)
    }

    /// Options we do not implement: an error for other volume types and formatting
    /// options, a warning for the rest.
    fn classify_other(
        key: &str,
        has_value: bool,
        word: &str,
    ) -> Result<Option<WarningKind>, ParseErrorKind> {
        let named = |list: &[&str]| {
            list.iter().any(|o| match o.strip_suffix('=') {
                Some(k) => k == key && has_value,
                None => *o == key && !has_value,
            })
        };
        if named(OTHER_TYPES) {
            return Err(ParseErrorKind::UnsupportedType(word.to_string()));
        }
        if named(FORMATS) {
            return Err(ParseErrorKind::Formats(word.to_string()));
        }
        if named(PLAIN_ONLY) {
            return Ok(Some(WarningKind::PlainOnly));
        }
        if named(UNSUPPORTED) || key.starts_with("x-systemd.") {
            return Ok(Some(WarningKind::Unsupported));
        }
        Ok(Some(WarningKind::UnknownOption))
    }

    /// The number of passphrase tries to give: `tries=` or [`DEFAULT_TRIES`]; 0 means
    /// ask forever.
    pub fn tries_or_default(&self) -> u32 {
        self.tries.unwrap_or(DEFAULT_TRIES)
    }
}
