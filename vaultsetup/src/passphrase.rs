//! Passphrase and key-file input, as cryptsetup reads them.
//!
//! - `--key-file FILE` (`-` = stdin): the whole file (after `--keyfile-offset`), or
//!   exactly `--keyfile-size` bytes; no newline processing.
//! - No key file, stdin not a terminal: stdin up to the first newline.
//! - No key file, stdin a terminal: a prompt on `/dev/tty` with echo turned off.
//!
//! Everything read lands in mlocked, zeroize-on-drop [`SecretBuf`]s, straight from
//! `read(2)`: no buffered reader in between (std's stdin keeps an 8 KiB buffer on the
//! heap that is never wiped, so stdin is read through [`FdReader`] on descriptor 0).

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::exit::{ExitCode, HasExitCode};
use crate::secret::{Passphrase, SecretBuf};

/// cryptsetup's default maximum key-file size (8 MiB).
pub const DEFAULT_KEYFILE_SIZE_MAX: u64 = 8 * 1024 * 1024;
/// cryptsetup's maximum interactive passphrase length.
pub const MAX_INTERACTIVE: usize = 512;

/// Errors of passphrase input.
#[derive(Debug, thiserror::Error)]
pub enum PassphraseError {
    /// Key file cannot be opened.
    #[error("Failed to open key file {path}: {source}")]
    Open {
        /// The key file as given on the command line.
        path: String,
        /// Why it could not be opened.
        #[source]
        source: std::io::Error,
    },
    /// Read failure.
    #[error("Error reading passphrase: {0}")]
    Read(#[source] std::io::Error),
    /// Key file larger than the maximum.
    #[error("Maximum keyfile size exceeded ({0} bytes); use --keyfile-size.")]
    TooLarge(u64),
    /// Key file shorter than `--keyfile-size` (or than the offset).
    #[error("Cannot read requested amount of data (wanted {wanted} bytes after offset {offset}, got {got}).")]
    Short {
        /// Requested size.
        wanted: u64,
        /// `--keyfile-offset`: bytes skipped at the start of the key file.
        offset: u64,
        /// Bytes available.
        got: u64,
    },
    /// Nothing at all was read.
    #[error("Nothing to read on input.")]
    Empty,
    /// Interactive passphrase too long.
    #[error("Passphrase is longer than {MAX_INTERACTIVE} characters.")]
    TooLong,
    /// No terminal for the prompt.
    #[error("Cannot open the terminal for a passphrase prompt: {0}")]
    NoTty(#[source] std::io::Error),
    /// Nobody answered the prompt within `--timeout` / `timeout=`.
    #[error("Timed out waiting for the passphrase ({} s).", .0.as_secs_f64())]
    Timeout(std::time::Duration),
    /// The passphrase agent (`systemd-ask-password`, `plymouth`) could not be started.
    #[error("Cannot ask for the passphrase with {program}: {source}")]
    AgentSpawn {
        /// The agent program.
        program: String,
        /// Why it did not start.
        #[source]
        source: std::io::Error,
    },
    /// The passphrase typed again at "Verify passphrase: " differs (exit 2).
    #[error("Passphrases do not match.")]
    Mismatch,
    /// The passphrase agent gave no passphrase (cancelled, timed out, failed).
    #[error("{program} gave no passphrase{}.", status.map(|s| format!(" ({s})")).unwrap_or_default())]
    Agent {
        /// The agent program.
        program: String,
        /// How it exited.
        status: Option<std::process::ExitStatus>,
    },
}

impl HasExitCode for PassphraseError {
    fn exit_code(&self) -> ExitCode {
        match self {
            // cryptsetup: -EPERM.
            Self::Mismatch => ExitCode::NoPermission,
            _ => ExitCode::WrongParameters,
        }
    }
}

/// Where the passphrase comes from.
#[derive(Clone, Debug, Default)]
pub struct KeyInput {
    /// `--key-file` (`-` = stdin).
    pub key_file: Option<PathBuf>,
    /// `--keyfile-offset`.
    pub keyfile_offset: u64,
    /// `--keyfile-size` (0 or `None` = whole file).
    pub keyfile_size: Option<u64>,
}

/// Reads a key from `r`: skips `offset` bytes, then reads exactly `size` bytes if given
/// or until EOF (at most [`DEFAULT_KEYFILE_SIZE_MAX`]); with `stop_eol`, stops at (and
/// drops) the first newline.
pub fn read_key_from<R: Read>(
    mut r: R,
    offset: u64,
    size: Option<u64>,
    stop_eol: bool,
) -> Result<Passphrase, PassphraseError> {
    let mut chunk = SecretBuf::zeroed(4096);
    let mut skipped = 0u64;
    while skipped < offset {
        let want = (offset - skipped).min(chunk.len() as u64) as usize;
        let n = read_some(&mut r, &mut chunk.as_mut_slice()[..want])?;
        if n == 0 {
            return Err(PassphraseError::Short {
                wanted: size.unwrap_or(0),
                offset,
                got: 0,
            });
        }
        skipped += n as u64;
    }
    let limit = size.unwrap_or(DEFAULT_KEYFILE_SIZE_MAX);
    let mut out = SecretBuf::with_capacity(if stop_eol { 256 } else { 4096 });
    let mut total_read = 0u64;
    loop {
        if out.len() as u64 >= limit {
            if size.is_none() && !stop_eol {
                // Whole-file mode: probe for more data beyond the maximum.
                let n = read_some(&mut r, &mut chunk.as_mut_slice()[..1])?;
                if n > 0 {
                    return Err(PassphraseError::TooLarge(DEFAULT_KEYFILE_SIZE_MAX));
                }
            }
            break;
        }
        let want = if stop_eol {
            1
        } else {
            (limit - out.len() as u64).min(chunk.len() as u64) as usize
        };
        let n = read_some(&mut r, &mut chunk.as_mut_slice()[..want])?;
        if n == 0 {
            break;
        }
        total_read += n as u64;
        if stop_eol && chunk.as_slice()[0] == b'\n' {
            break;
        }
        out.extend_from_slice(&chunk.as_slice()[..n]);
    }
    if let Some(s) = size {
        if (out.len() as u64) < s && !stop_eol {
            return Err(PassphraseError::Short {
                wanted: s,
                offset,
                got: out.len() as u64,
            });
        }
    }
    if total_read == 0 {
        return Err(PassphraseError::Empty);
    }
    Ok(Passphrase::new(out))
}

/// Unbuffered reads from a raw descriptor: every `read` is one `read(2)` into the
/// caller's buffer, so no copy of the data stays anywhere else in this process.
#[derive(Debug)]
pub struct FdReader(pub std::os::fd::RawFd);

impl Read for FdReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes; read(2) writes at most
        // that many. An invalid descriptor only makes read fail with EBADF.
        let n = unsafe { libc::read(self.0, buf.as_mut_ptr().cast(), buf.len()) };
        if n < 0 {
            Err(std::io::Error::last_os_error())
        } else {
            Ok(n as usize)
        }
    }
}

fn read_some<R: Read>(r: &mut R, buf: &mut [u8]) -> Result<usize, PassphraseError> {
    loop {
        match r.read(buf) {
            Ok(n) => return Ok(n),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(PassphraseError::Read(e)),
        }
    }
}

/// Reads a key file (`-` = stdin, binary, no newline processing).
pub fn read_key_file(
    path: &Path,
    offset: u64,
    size: Option<u64>,
) -> Result<Passphrase, PassphraseError> {
    if path == Path::new("-") {
        return read_key_from(FdReader(libc::STDIN_FILENO), offset, size, false);
    }
    let f = File::open(path).map_err(|source| PassphraseError::Open {
        path: path.display().to_string(),
        source,
    })?;
    read_key_from(f, offset, size, false)
}

/// Reads the passphrase as cryptsetup does for `input`; `prompt` is shown on a terminal.
pub fn read_passphrase(input: &KeyInput, prompt: &str) -> Result<Passphrase, PassphraseError> {
    read_passphrase_timed(input, prompt, None)
}

/// Whether [`read_passphrase`] would prompt on the terminal for `input` (no key file and
/// stdin is a terminal): only such a passphrase is asked for again after a wrong one.
pub fn is_interactive(input: &KeyInput) -> bool {
    // SAFETY: isatty only inspects the descriptor.
    input.key_file.is_none() && unsafe { libc::isatty(libc::STDIN_FILENO) } == 1
}

/// [`read_passphrase`] with a time limit for the terminal prompt (cryptsetup's
/// `--timeout`); `None` waits forever. Key files and pipes are not timed.
pub fn read_passphrase_timed(
    input: &KeyInput,
    prompt: &str,
    timeout: Option<std::time::Duration>,
) -> Result<Passphrase, PassphraseError> {
    let size = input.keyfile_size.filter(|&s| s != 0);
    if let Some(p) = &input.key_file {
        return read_key_file(p, input.keyfile_offset, size);
    }
    // SAFETY: isatty only inspects the descriptor.
    let is_tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    if !is_tty {
        return read_key_from(
            FdReader(libc::STDIN_FILENO),
            input.keyfile_offset,
            size,
            true,
        );
    }
    read_tty(prompt, timeout)
}

/// cryptsetup's second prompt when a new passphrase is verified.
pub const VERIFY_PROMPT: &str = "Verify passphrase: ";

/// Reads a new passphrase (`luksFormat`, `luksAddKey`, `luksChangeKey`) as cryptsetup's
/// `tools_get_key` does with `verify`: from a key file or a pipe as
/// [`read_passphrase`] reads it (never verified: cryptsetup cannot verify non-tty
/// input); on a terminal, `prompt` then [`VERIFY_PROMPT`], and
/// [`PassphraseError::Mismatch`] when the two differ. With `verify` false it is
/// [`read_passphrase`].
pub fn read_new_passphrase(
    input: &KeyInput,
    prompt: &str,
    verify: bool,
) -> Result<Passphrase, PassphraseError> {
    let first = read_passphrase(input, prompt)?;
    if !verify || !is_interactive(input) {
        return Ok(first);
    }
    let again = read_tty(VERIFY_PROMPT, None)?;
    if !secrets_equal(first.as_bytes(), again.as_bytes()) {
        return Err(PassphraseError::Mismatch);
    }
    Ok(first)
}

/// Compares two secrets in time that depends on their lengths only.
fn secrets_equal(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Restores the terminal attributes when dropped.
struct EchoGuard {
    fd: i32,
    saved: libc::termios,
}

impl Drop for EchoGuard {
    fn drop(&mut self) {
        // SAFETY: `fd` is open for the guard's lifetime and `saved` came from tcgetattr.
        unsafe {
            libc::tcsetattr(self.fd, libc::TCSAFLUSH, &self.saved);
        }
    }
}

/// Reads from a descriptor, each `read(2)` waiting at most until `deadline` (`poll`);
/// past it, reads fail with `TimedOut`.
struct TimedFdReader {
    fd: std::os::fd::RawFd,
    deadline: Option<std::time::Instant>,
}

impl Read for TimedFdReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if let Some(d) = self.deadline {
            let left = d.saturating_duration_since(std::time::Instant::now());
            let mut p = libc::pollfd {
                fd: self.fd,
                events: libc::POLLIN,
                revents: 0,
            };
            let ms = left.as_millis().min(i32::MAX as u128) as i32;
            // SAFETY: one pollfd that lives across the call.
            let n = unsafe { libc::poll(&mut p, 1, ms) };
            if n < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if n == 0 {
                return Err(std::io::ErrorKind::TimedOut.into());
            }
        }
        FdReader(self.fd).read(buf)
    }
}

/// Prompts on `/dev/tty` with echo off and reads one line, within `timeout` if given.
fn read_tty(
    prompt: &str,
    timeout: Option<std::time::Duration>,
) -> Result<Passphrase, PassphraseError> {
    let mut tty = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/tty")
        .or_else(|_| {
            std::fs::OpenOptions::new()
                .read(true)
                .write(true)
                .open("/dev/console")
        })
        .map_err(PassphraseError::NoTty)?;
    let fd = tty.as_raw_fd();
    // SAFETY: termios is plain data; tcgetattr fills it for an open descriptor.
    let mut saved: libc::termios = unsafe { core::mem::zeroed() };
    // SAFETY: `fd` is an open terminal descriptor and `saved` is a valid out-pointer.
    if unsafe { libc::tcgetattr(fd, &mut saved) } != 0 {
        return Err(PassphraseError::NoTty(std::io::Error::last_os_error()));
    }
    let mut noecho = saved;
    noecho.c_lflag &= !(libc::ECHO | libc::ECHONL);
    noecho.c_lflag |= libc::ICANON;
    // Echo off (flushing what was typed before) first, then the prompt: whatever is
    // typed once the prompt shows is kept.
    let guard = EchoGuard { fd, saved };
    // SAFETY: as above; `noecho` is a valid termios.
    unsafe {
        libc::tcsetattr(fd, libc::TCSAFLUSH, &noecho);
    }
    tty.write_all(prompt.as_bytes())
        .map_err(PassphraseError::Read)?;
    tty.flush().map_err(PassphraseError::Read)?;
    let reader = TimedFdReader {
        fd,
        deadline: timeout.map(|t| std::time::Instant::now() + t),
    };
    let r = read_key_from(reader, 0, Some(MAX_INTERACTIVE as u64 + 1), true);
    drop(guard);
    let _ = tty.write_all(b"\n");
    let p = match (r, timeout) {
        (Err(PassphraseError::Read(e)), Some(t)) if e.kind() == std::io::ErrorKind::TimedOut => {
            return Err(PassphraseError::Timeout(t))
        }
        (r, _) => r?,
    };
    if p.len() > MAX_INTERACTIVE {
        return Err(PassphraseError::TooLong);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eol_and_sizes() {
        let p = read_key_from(&b"secret\nrest"[..], 0, None, true).unwrap();
        assert_eq!(p.as_bytes(), b"secret");
        let p = read_key_from(&b"secret\nrest"[..], 0, None, false).unwrap();
        assert_eq!(p.as_bytes(), b"secret\nrest");
        let p = read_key_from(&b"0123456789"[..], 2, Some(3), false).unwrap();
        assert_eq!(p.as_bytes(), b"234");
        assert!(matches!(
            read_key_from(&b"0123"[..], 2, Some(3), false),
            Err(PassphraseError::Short { .. })
        ));
        assert!(matches!(
            read_key_from(&b""[..], 0, None, true),
            Err(PassphraseError::Empty)
        ));
        assert!(secrets_equal(b"ab", b"ab"));
        assert!(!secrets_equal(b"ab", b"ac"));
        assert!(!secrets_equal(b"ab", b"abc"));
        let p = read_key_from(&b"\n"[..], 0, None, true).unwrap();
        assert!(p.is_empty());
        let big = vec![7u8; DEFAULT_KEYFILE_SIZE_MAX as usize + 1];
        assert!(matches!(
            read_key_from(&big[..], 0, None, false),
            Err(PassphraseError::TooLarge(_))
        ));
    }
}
