//! Where a problem is (file:line:column), and the warnings and errors the parser reports.

use std::fmt;
use std::num::ParseIntError;
use std::path::PathBuf;

/// A place in a vaulttab file: `file:line` and, when known, the 1-based column of the field
/// or option at fault. Displays as `file:line:column` (or `file:line`), the form editors and
/// the journal understand.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Location {
    /// The file as given to the parser (not canonicalized).
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// 1-based column (in bytes) of the field or option at fault, if known.
    pub column: Option<usize>,
}

impl fmt::Display for Location {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.file.display(), self.line)?;
        if let Some(c) = self.column {
            write!(f, ":{c}")?;
        }
        Ok(())
    }
}

/// Writes `loc: ` when a location is known, nothing otherwise (options given on a command
/// line have no file).
struct Prefix<'a>(&'a Option<Location>);

impl fmt::Display for Prefix<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            Some(l) => write!(f, "{l}: "),
            None => Ok(()),
        }
    }
}

/// What a [`Warning`] is about. The line it is on is still used, as systemd does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum WarningKind {
    /// An option neither systemd nor vmvault knows; ignored.
    UnknownOption,
    /// An option systemd-cryptsetup knows but vmvault does not implement (TPM2, FIDO2,
    /// PKCS#11 tokens, dm-crypt tuning flags...); ignored, so the volume falls back to the
    /// key file or a passphrase prompt.
    Unsupported,
    /// An option that only matters for plain dm-crypt (`cipher=`, `hash=`, `size=`...);
    /// a LUKS header carries these itself, so systemd ignores them for LUKS and so do we.
    PlainOnly,
}

/// A problem that does not stop the line from being used: an unknown or unsupported
/// option. Displays as `file:line:col: unknown option 'foo', ignoring`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Warning {
    /// Where the option is, when it came from a file.
    pub location: Option<Location>,
    /// The option as written (`foo` or `foo=bar`).
    pub option: String,
    /// Why it is ignored.
    pub kind: WarningKind,
}

impl fmt::Display for Warning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let p = Prefix(&self.location);
        match self.kind {
            WarningKind::UnknownOption => {
                write!(f, "{p}unknown option '{}', ignoring", self.option)
            }
            WarningKind::Unsupported => {
                write!(
                    f,
                    "{p}option '{}' is not supported by vmvault, ignoring",
                    self.option
                )
            }
            WarningKind::PlainOnly => write!(
                f,
                "{p}option '{}' applies to plain dm-crypt only; a LUKS header sets it, ignoring",
                self.option
            ),
        }
    }
}

/// Why a line, field or option was rejected.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ParseErrorKind {
    /// Fewer than 2 or more than 4 whitespace-separated fields.
    #[error("expected 2 to 4 fields (name device [keyfile [options]]), found {0}")]
    FieldCount(usize),
    /// The volume name cannot be a device-mapper name (empty, `.`, `..`, a `/`, a control
    /// character, or longer than 127 bytes).
    #[error("invalid volume name '{0}' (it becomes /dev/mapper/NAME: no '/', no control characters, at most 127 bytes)")]
    InvalidName(String),
    /// The same name appears twice in the table.
    #[error("volume name '{name}' already used on line {first_line}")]
    DuplicateName {
        /// The repeated name.
        name: String,
        /// The line that used it first.
        first_line: usize,
    },
    /// A device field that is empty or a tag (`UUID=`...) without a value.
    #[error("invalid device '{0}' (expected a path, UUID=, PARTUUID=, LABEL= or PARTLABEL=)")]
    InvalidDevice(String),
    /// A key file that is not an absolute path (or `path:DEVICE` with a bad device).
    #[error("invalid key file '{0}' (expected none, -, an absolute path, or PATH:DEVICE)")]
    InvalidKeyFile(String),
    /// An option that needs a value (`tries=`) was given without one, or a flag was given
    /// one (`discard=yes`).
    #[error("option '{0}' needs a value")]
    MissingValue(String),
    /// A flag option given a value.
    #[error("option '{0}' takes no value")]
    UnexpectedValue(String),
    /// A number that does not parse.
    #[error("invalid number '{value}' for option {option}=")]
    InvalidNumber {
        /// The option name.
        option: String,
        /// The value as written.
        value: String,
        /// The integer parser's reason.
        #[source]
        source: ParseIntError,
    },
    /// A time span that does not parse (systemd's syntax: `30`, `30s`, `1min 30s`, `500ms`).
    #[error("invalid time span '{value}' for option {option}=")]
    InvalidTimespan {
        /// The option name.
        option: String,
        /// The value as written.
        value: String,
        /// Why the span is invalid.
        #[source]
        source: TimespanError,
    },
    /// A value outside the allowed set (`backend=foo`).
    #[error("invalid value '{value}' for option {option}= (expected {expected})")]
    InvalidValue {
        /// The option name.
        option: String,
        /// The value as written.
        value: String,
        /// The accepted values.
        expected: &'static str,
    },
    /// `header=` with a value that is not a path or device tag.
    #[error("invalid header '{0}' (expected a path, UUID=, PARTUUID=, LABEL= or PARTLABEL=)")]
    InvalidHeader(String),
    /// `header=PATH:DEVICE` (a header file on another device, which systemd mounts):
    /// not supported; give the header's device or a path on a mounted file system.
    #[error("header '{0}' on another device (PATH:DEVICE) is not supported by vmvault; give the header device itself or a path")]
    HeaderOnDevice(String),
    /// A volume type vmvault cannot open (`plain`, `tcrypt`, `bitlk`...): vmvault opens
    /// LUKS1 and LUKS2 only, and refuses rather than guessing.
    #[error("option '{0}' asks for a non-LUKS volume type; vmvault opens LUKS1/LUKS2 only")]
    UnsupportedType(String),
    /// An option that makes systemd format the device at boot (`swap`, `tmp=`); vmvault
    /// never writes to a device at boot.
    #[error("option '{0}' formats the device at every boot; vmvault does not support it")]
    Formats(String),
}

/// A syntax error in a vaulttab line or an options string, with its location when it came
/// from a file. Displays as `file:line:col: <reason>`; [`std::error::Error::source`] gives
/// the underlying cause (a number's or time span's parse error), if any.
#[derive(Debug)]
pub struct ParseError {
    /// Where the error is (None for an options string given on a command line).
    pub location: Option<Location>,
    /// What is wrong (boxed: the error stays small on the happy path's `Result`).
    pub kind: Box<ParseErrorKind>,
}

impl ParseError {
    /// An error without a location yet.
    pub(crate) fn new(kind: ParseErrorKind) -> Self {
        ParseError {
            location: None,
            kind: Box::new(kind),
        }
    }
}

impl fmt::Display for ParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", Prefix(&self.location), self.kind)
    }
}

impl std::error::Error for ParseError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        std::error::Error::source(&*self.kind)
    }
}

/// Why a time span (`timeout=`, `x-systemd.device-timeout=`) does not parse.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TimespanError {
    /// Empty text.
    #[error("empty time span")]
    Empty,
    /// A part that does not start with a number.
    #[error("expected a number at '{0}'")]
    NotANumber(String),
    /// A unit systemd does not know.
    #[error("unknown time unit '{0}' (use us, ms, s, min, h, d, w)")]
    UnknownUnit(String),
    /// A span too large to represent.
    #[error("time span too large")]
    Overflow,
}

/// Why a vaulttab file cannot be read at all (as opposed to a bad line in it).
#[derive(Debug, thiserror::Error)]
#[error("cannot read {}", path.display())]
pub struct ReadError {
    /// The file.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: std::io::Error,
}

/// Why [`super::DeviceSpec::resolve`] found no device node.
#[derive(Debug, thiserror::Error)]
#[error("device {spec} not found (no {})", node.display())]
pub struct ResolveError {
    /// The device as written (`UUID=...`).
    pub spec: String,
    /// The node that was looked for.
    pub node: PathBuf,
    /// The error from looking it up.
    #[source]
    pub source: std::io::Error,
}
