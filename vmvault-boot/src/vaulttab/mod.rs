//! `/etc/vaulttab`: crypttab(5)'s syntax, vmvault's volumes.
//!
//! Each non-empty line that does not start with `#` (after leading whitespace) has 2 to 4
//! whitespace-separated fields: `name device [keyfile [options]]`. There is no quoting and
//! `\` is not special (except `\,` inside the options field, as systemd-cryptsetup reads
//! it); a `#` later on a line is not a comment. As in systemd, an unknown option gives a
//! [`Warning`] and the line is still used; a syntax error gives a [`ParseError`] that names
//! `file:line:column`, and the other lines are still used.

mod device;
mod error;
mod options;
mod timespan;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

pub use device::{encode_devnode_name, DeviceSpec, KeySpec};
pub use error::{
    Location, ParseError, ParseErrorKind, ReadError, ResolveError, TimespanError, Warning,
    WarningKind,
};
pub use options::{Backend, Frontend, Options, DEFAULT_TRIES};
pub use timespan::parse_timespan;

/// Where the table is unless `VMVAULT_VAULTTAB` says otherwise.
pub const DEFAULT_PATH: &str = "/etc/vaulttab";

/// The environment variable that overrides [`DEFAULT_PATH`] (like `SYSTEMD_CRYPTTAB`).
/// The library never reads it; the binaries do.
pub const PATH_ENV: &str = "VMVAULT_VAULTTAB";

/// One volume of the table.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Where the line is.
    pub location: Location,
    /// The volume name: `/dev/mapper/NAME`.
    pub name: String,
    /// The backing device (or a path to it).
    pub device: DeviceSpec,
    /// The key-file field.
    pub key: KeySpec,
    /// The parsed options.
    pub options: Options,
    /// The options field as written (`none` when missing), passed on to
    /// `vaultsetup attach` unchanged, as systemd passes it to systemd-cryptsetup.
    pub options_text: String,
    /// The device field as written.
    pub device_text: String,
    /// The key-file field as written (`none` when missing).
    pub key_text: String,
}

/// A parsed table: the entries that parsed, the warnings on them, and the lines that did
/// not parse (which are skipped; the rest are used).
#[derive(Debug, Default)]
pub struct Vaulttab {
    /// The file the table came from.
    pub path: PathBuf,
    /// Valid entries in file order.
    pub entries: Vec<Entry>,
    /// Unknown or unsupported options (their lines are in `entries`).
    pub warnings: Vec<Warning>,
    /// Lines that were skipped because of a syntax error.
    pub errors: Vec<ParseError>,
}

/// Whether `name` can be a device-mapper name and a file name: not empty, not `.` or
/// `..`, no `/`, no control characters, at most 127 bytes (DM_NAME_LEN - 1).
pub fn name_is_valid(name: &str) -> bool {
    !name.is_empty()
        && name != "."
        && name != ".."
        && name.len() <= 127
        && !name.chars().any(|c| c == '/' || c.is_control())
}

/// Splits a line at whitespace the way `sscanf("%ms")` does, with each field's 0-based
/// byte offset.
fn fields(line: &str) -> Vec<(usize, &str)> {
    let mut out = Vec::new();
    let mut start = None;
    for (i, c) in line.char_indices() {
        let ws = matches!(c, ' ' | '\t' | '\n' | '\r' | '\x0b' | '\x0c');
        match (ws, start) {
            (true, Some(s)) => {
                out.push((s, &line[s..i]));
                start = None;
            }
            (false, None) => start = Some(i),
            _ => {}
        }
    }
    if let Some(s) = start {
        out.push((s, &line[s..]));
    }
    out
}

impl Vaulttab {
    /// Reads and parses a table file. Only an unreadable file is an error; bad lines are
    /// in [`Vaulttab::errors`]. A missing file is an error too: callers that treat it as
    /// an empty table check [`std::io::ErrorKind::NotFound`] on the source.
    pub fn read(path: &Path) -> Result<Vaulttab, ReadError> {
        let text = std::fs::read(path).map_err(|source| ReadError {
            path: path.to_path_buf(),
            source,
        })?;
        Ok(Self::parse(path, &String::from_utf8_lossy(&text)))
    }

    /// Parses table text; `path` is only used in locations.
    pub fn parse(path: &Path, text: &str) -> Vaulttab {
        let mut t = Vaulttab {
            path: path.to_path_buf(),
            ..Default::default()
        };
        let mut seen: HashMap<String, usize> = HashMap::new();
        for (i, line) in text.lines().enumerate() {
            let at = |column: Option<usize>| Location {
                file: path.to_path_buf(),
                line: i + 1,
                column,
            };
            match parse_line(line) {
                Ok(None) => {}
                Ok(Some((mut e, warnings))) => {
                    e.location = at(None);
                    t.warnings.extend(warnings.into_iter().map(|(col, mut w)| {
                        w.location = Some(at(Some(col)));
                        w
                    }));
                    if let Some(&first_line) = seen.get(&e.name) {
                        let mut err = ParseError::new(ParseErrorKind::DuplicateName {
                            name: e.name,
                            first_line,
                        });
                        err.location = Some(at(Some(1 + line.len() - line.trim_start().len())));
                        t.errors.push(err);
                        continue;
                    }
                    seen.insert(e.name.clone(), i + 1);
                    t.entries.push(e);
                }
                Err((col, kind)) => {
                    let mut err = ParseError::new(kind);
                    err.location = Some(at(Some(col)));
                    t.errors.push(err);
                }
            }
        }
        t
    }

    /// The entry with this volume name.
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.entries.iter().find(|e| e.name == name)
    }
}

/// A parsed line: the entry (location not yet set) and its warnings with 1-based columns.
type LineResult = Result<Option<(Entry, Vec<(usize, Warning)>)>, (usize, ParseErrorKind)>;

/// Parses one line. Ok(None) for blank lines and comments; errors carry a 1-based column.
fn parse_line(line: &str) -> LineResult {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with('#') {
        return Ok(None);
    }
    let f = fields(line);
    if f.len() < 2 || f.len() > 4 {
        let col = f.get(4).map_or(f[0].0, |x| x.0);
        return Err((col + 1, ParseErrorKind::FieldCount(f.len())));
    }
    let (name_col, name) = f[0];
    if !name_is_valid(name) {
        return Err((name_col + 1, ParseErrorKind::InvalidName(name.to_string())));
    }
    let (dev_col, dev) = f[1];
    let device = DeviceSpec::parse(dev).map_err(|k| (dev_col + 1, k))?;
    let (key_text, key) = match f.get(2) {
        Some(&(col, k)) => (k, KeySpec::parse(k).map_err(|e| (col + 1, e))?),
        None => ("none", KeySpec::Ask),
    };
    let (options_text, options, warnings) = match f.get(3) {
        Some(&(col, o)) => {
            let (opts, w) =
                Options::parse_with_offsets(o).map_err(|(off, k)| (col + off + 1, k))?;
            let w = w.into_iter().map(|(off, w)| (col + off + 1, w)).collect();
            (o, opts, w)
        }
        None => ("none", Options::default(), Vec::new()),
    };
    Ok(Some((
        Entry {
            location: Location {
                file: PathBuf::new(),
                line: 0,
                column: None,
            },
            name: name.to_string(),
            device,
            key,
            options,
            options_text: options_text.to_string(),
            device_text: dev.to_string(),
            key_text: key_text.to_string(),
        },
        warnings,
    )))
}
