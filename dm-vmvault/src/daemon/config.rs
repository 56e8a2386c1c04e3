//! The `vmvaultd` configuration file (TOML, default [`DEFAULT_CONFIG_PATH`]).
//!
//! ```toml
//! run_dir = "/run/vmvault"   # control socket, pid file, FUSE mounts
//! threads = 16               # FUSE serving (I/O) threads per volume
//! vcpus = 2                  # vCPUs of each vault
//! window_size = "66M"        # data window of each vault: bytes, or K/M/G suffixed
//! mlock = true               # mlockall the daemon
//!
//! # The vaults' vCPUs (vmvault_hv::Tuning; the defaults suit most machines)
//! run = "auto"               # who runs a sleeping vCPU: auto, thread, caller
//! idle_spins = 4000          # ring scans before a vCPU thread sleeps
//! caller_spins = 1           # ring scans before a submitter that runs the vCPU exits
//! assist = true              # a submitter may serve the ring while the vCPU wakes
//! vcpu_cpus = "3,2"          # pin vCPU i to the i-th CPU, or "none"
//! vcpu_nice = -10            # CPU weight of the vCPU threads (needs CAP_SYS_NICE)
//! ```
//!
//! Every key is optional; unknown keys are refused. Command-line options override the
//! file. Errors name the file, the line and column, and the key.

use std::num::NonZeroUsize;
use std::path::{Path, PathBuf};

use serde::Deserialize;

/// Where `vmvaultd` looks for its configuration file when `--config` is not given (a
/// missing file there is no error).
pub const DEFAULT_CONFIG_PATH: &str = "/etc/vmvault/vmvaultd.toml";

/// The settings a configuration file may hold; `None` when the file does not set one.
#[derive(Clone, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct FileConfig {
    /// Run directory (control socket, pid file, FUSE mounts).
    pub run_dir: Option<PathBuf>,
    /// FUSE serving (I/O) threads per volume.
    pub threads: Option<NonZeroUsize>,
    /// vCPUs of each vault.
    pub vcpus: Option<NonZeroUsize>,
    /// Data window size of each vault, in bytes (see [`crate::vault::check_window_size`]).
    #[serde(default, deserialize_with = "window_size")]
    pub window_size: Option<u64>,
    /// Whether to `mlockall` the daemon.
    pub mlock: Option<bool>,
    /// Who runs a sleeping vCPU (`auto`, `thread`, `caller`).
    #[serde(default, deserialize_with = "from_str")]
    pub run: Option<vmvault_hv::RunMode>,
    /// Base idle spin of a vCPU thread before it sleeps (ring scans).
    pub idle_spins: Option<u32>,
    /// Idle spin of a submitting thread that runs the vCPU (ring scans).
    pub caller_spins: Option<u32>,
    /// Whether a submitter that finds the vCPU asleep may serve the ring meanwhile.
    pub assist: Option<bool>,
    /// vCPU pinning: `"none"` or a CPU list such as `"3,2"`.
    #[serde(default, deserialize_with = "from_str")]
    pub vcpu_cpus: Option<vmvault_hv::CpuPinning>,
    /// CPU weight (nice) of the vCPU threads.
    pub vcpu_nice: Option<i32>,
}

/// A string key parsed with the type's `FromStr` (its error names what is allowed).
fn from_str<'de, D, T>(d: D) -> Result<Option<T>, D::Error>
where
    D: serde::Deserializer<'de>,
    T: std::str::FromStr,
    T::Err: std::fmt::Display,
{
    let s = String::deserialize(d)?;
    s.parse().map(Some).map_err(serde::de::Error::custom)
}

/// Errors reading a configuration file.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// Why it could not be read.
        #[source]
        source: std::io::Error,
    },
    /// The file is not valid TOML, or a key is unknown or has a bad value.
    #[error("{path}:{line}:{column}: {}{message}", key.as_deref().map(|k| format!("key `{k}`: ")).unwrap_or_default())]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// 1-based line of the error.
        line: usize,
        /// 1-based column (in characters) of the error.
        column: usize,
        /// The key on that line, when the error is about one.
        key: Option<String>,
        /// What is wrong, as the TOML parser says it.
        message: String,
        /// The parser's error.
        #[source]
        source: Box<toml::de::Error>,
    },
}

/// 1-based line and column (in characters) of byte offset `at` in `text`.
pub fn line_column(text: &str, at: usize) -> (usize, usize) {
    let mut at = at.min(text.len());
    while !text.is_char_boundary(at) {
        at -= 1;
    }
    let before = &text[..at];
    let line = before.matches('\n').count() + 1;
    let start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[start..].chars().count() + 1)
}

/// The key assigned on the line holding byte `at` (`key = value`), if any.
fn key_at(text: &str, at: usize) -> Option<String> {
    let at = at.min(text.len());
    let start = text[..at].rfind('\n').map_or(0, |i| i + 1);
    let end = text[at..].find('\n').map_or(text.len(), |i| at + i);
    let (key, _) = text[start..end].split_once('=')?;
    let key = key.trim().trim_matches('"');
    (!key.is_empty() && !key.starts_with('#')).then(|| key.to_string())
}

impl FileConfig {
    /// Parses `text`, the contents of `path` (named in errors).
    pub fn parse(path: &Path, text: &str) -> Result<FileConfig, ConfigError> {
        toml::from_str(text).map_err(|e| {
            let at = e.span().map_or(0, |s| s.start);
            let (line, column) = line_column(text, at);
            ConfigError::Parse {
                path: path.to_path_buf(),
                line,
                column,
                key: e.span().and_then(|_| key_at(text, at)),
                message: e.message().trim_end().to_string(),
                source: Box::new(e),
            }
        })
    }

    /// Reads `path`. With `must_exist` false a missing file is an empty configuration
    /// (the default path); otherwise it is an error.
    pub fn load(path: &Path, must_exist: bool) -> Result<FileConfig, ConfigError> {
        match std::fs::read_to_string(path) {
            Ok(text) => Self::parse(path, &text),
            Err(e) if !must_exist && e.kind() == std::io::ErrorKind::NotFound => {
                Ok(FileConfig::default())
            }
            Err(source) => Err(ConfigError::Read {
                path: path.to_path_buf(),
                source,
            }),
        }
    }
}

/// Parses a size: a byte count, or a number with a `K`, `M`, `G` suffix (powers of
/// 1024; `KiB`, `MiB`, `GiB` too).
pub fn parse_size(s: &str) -> Option<u64> {
    let s = s.trim();
    let digits = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (n, unit) = s.split_at(digits);
    let n: u64 = n.parse().ok()?;
    let shift = match unit.trim() {
        "" | "B" => 0,
        "K" | "KiB" => 10,
        "M" | "MiB" => 20,
        "G" | "GiB" => 30,
        _ => return None,
    };
    n.checked_mul(1 << shift)
}

/// `window_size`: an integer (bytes) or a size string, checked for what a vault accepts.
fn window_size<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<u64>, D::Error> {
    use serde::de::Error;
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Size {
        Bytes(u64),
        Text(String),
    }
    let n = match Size::deserialize(d).map_err(|_| {
        D::Error::custom("expected a size in bytes (integer) or a string like \"64M\"")
    })? {
        Size::Bytes(n) => n,
        Size::Text(s) => parse_size(&s).ok_or_else(|| {
            D::Error::custom(format!(
                "invalid size \"{s}\" (use bytes, or a number with K, M or G)"
            ))
        })?,
    };
    crate::vault::check_window_size(n)
        .map(Some)
        .map_err(D::Error::custom)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<FileConfig, ConfigError> {
        FileConfig::parse(Path::new("/etc/vmvault/vmvaultd.toml"), text)
    }

    #[test]
    fn good_file() {
        let c = parse("# c\nrun_dir = \"/tmp/x\"\nthreads = 4\nvcpus = 2\nwindow_size = \"66M\"\nmlock = false\n")
            .unwrap();
        assert_eq!(c.run_dir.as_deref(), Some(Path::new("/tmp/x")));
        assert_eq!(c.threads.map(|n| n.get()), Some(4));
        assert_eq!(c.vcpus.map(|n| n.get()), Some(2));
        assert_eq!(c.window_size, Some(66 << 20));
        assert_eq!(c.mlock, Some(false));
        assert_eq!(parse("").unwrap(), FileConfig::default());
        let c = parse("run = \"caller\"\nidle_spins = 100\nassist = false\nvcpu_cpus = \"1,0\"\nvcpu_nice = -5\n")
            .unwrap();
        assert_eq!(c.run, Some(vmvault_hv::RunMode::Caller));
        assert_eq!(c.idle_spins, Some(100));
        assert_eq!(c.assist, Some(false));
        assert_eq!(c.vcpu_cpus, Some(vmvault_hv::CpuPinning::Cpus(vec![1, 0])));
        assert_eq!(c.vcpu_nice, Some(-5));
        let e = parse("\nrun = \"sometimes\"\n").unwrap_err().to_string();
        assert!(e.contains(":2:") && e.contains("`run`"), "{e}");
    }

    #[test]
    fn errors_name_line_column_and_key() {
        let e = parse("threads = 4\n\nbogus = 1\n").unwrap_err().to_string();
        assert!(
            e.starts_with("/etc/vmvault/vmvaultd.toml:3:1: key `bogus`: "),
            "{e}"
        );
        let e = parse("threads = 4\nvcpus = \"two\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/etc/vmvault/vmvaultd.toml:2:"), "{e}");
        assert!(e.contains("`vcpus`"), "{e}");
        let e = parse("threads = 0\n").unwrap_err().to_string();
        assert!(e.contains(":1:") && e.contains("`threads`"), "{e}");
        let e = parse("window_size = \"3X\"\n").unwrap_err().to_string();
        assert!(e.contains("`window_size`") && e.contains("3X"), "{e}");
        let e = parse("window_size = \"64M\"\n").unwrap_err().to_string();
        assert!(e.contains("below the minimum"), "{e}");
        let e = parse("threads = = 4\n").unwrap_err().to_string();
        assert!(e.starts_with("/etc/vmvault/vmvaultd.toml:1:"), "{e}");
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("64M"), Some(64 << 20));
        assert_eq!(parse_size("2GiB"), Some(2 << 30));
        assert_eq!(parse_size("4096"), Some(4096));
        assert_eq!(parse_size("4 K"), Some(4096));
        assert_eq!(parse_size("M"), None);
        assert_eq!(parse_size("1T"), None);
        assert_eq!(line_column("ab\ncd", 4), (2, 2));
    }
}
