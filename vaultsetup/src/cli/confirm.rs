//! cryptsetup's `yesDialog`: the "Are you sure?" question before a destructive write.
//!
//! As in cryptsetup, the question is only asked when stdin is a terminal and
//! `-q/--batch-mode` is not given; otherwise the answer is yes. The text goes to stdout;
//! only the exact answer `YES` (capital letters, then Enter) goes on.

use std::io::{BufRead, Write};

use crate::exit::{ExitCode, HasExitCode};

/// luksFormat's question (`DEVICE` is the header device).
pub fn overwrite_message(device: &std::path::Path) -> String {
    format!(
        "This will overwrite data on {} irrevocably.",
        device.display()
    )
}

/// luksRemoveKey's and luksKillSlot's question when the last keyslot would go.
pub const LAST_KEYSLOT_MESSAGE: &str =
    "This is the last keyslot. Device will become unusable after purging this key.";

/// Why a confirmation did not go on.
#[derive(Debug, thiserror::Error)]
pub enum ConfirmError {
    /// Any answer but `YES`: the verb's own failure message (e.g. "Operation aborted.").
    #[error("{message}")]
    Declined {
        /// cryptsetup's message for this verb.
        message: &'static str,
        /// cryptsetup's exit code for this verb (luksFormat 1, key removal 2).
        code: ExitCode,
    },
    /// The answer could not be read (end of input, a signal).
    #[error("Error reading response from terminal.")]
    Read(#[source] std::io::Error),
}

impl HasExitCode for ConfirmError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Declined { code, .. } => *code,
            Self::Read(_) => ExitCode::WrongParameters,
        }
    }
}

/// Asks `message` on the terminal (stdin/stdout) unless `batch_mode` or stdin is not a
/// terminal; `Declined { fail, code }` for any answer but `YES`.
pub fn yes_dialog(
    message: &str,
    batch_mode: bool,
    fail: &'static str,
    code: ExitCode,
) -> Result<(), ConfirmError> {
    // SAFETY: isatty only inspects the descriptor.
    let tty = unsafe { libc::isatty(libc::STDIN_FILENO) } == 1;
    if batch_mode || !tty {
        return Ok(());
    }
    let stdin = std::io::stdin();
    let mut input = stdin.lock();
    let stdout = std::io::stdout();
    let mut output = stdout.lock();
    ask(message, &mut input, &mut output, fail, code)
}

/// The question and answer of [`yes_dialog`] over any reader and writer.
pub fn ask(
    message: &str,
    input: &mut dyn BufRead,
    output: &mut dyn Write,
    fail: &'static str,
    code: ExitCode,
) -> Result<(), ConfirmError> {
    write!(
        output,
        "\nWARNING!\n========\n{message}\n\nAre you sure? (Type 'yes' in capital letters): "
    )
    .and_then(|()| output.flush())
    .map_err(ConfirmError::Read)?;
    let mut answer = String::new();
    let n = input.read_line(&mut answer).map_err(ConfirmError::Read)?;
    if n == 0 {
        return Err(ConfirmError::Read(std::io::ErrorKind::UnexpectedEof.into()));
    }
    if answer == "YES\n" {
        Ok(())
    } else {
        Err(ConfirmError::Declined {
            message: fail,
            code,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(answer: &[u8]) -> (Result<(), ConfirmError>, String) {
        let mut out = Vec::new();
        let r = ask(
            &overwrite_message(std::path::Path::new("/dev/sdx")),
            &mut &answer[..],
            &mut out,
            "Operation aborted.",
            ExitCode::WrongParameters,
        );
        (r, String::from_utf8(out).unwrap())
    }

    #[test]
    fn only_capital_yes_goes_on() {
        let (r, out) = run(b"YES\n");
        assert!(r.is_ok());
        assert_eq!(
            out,
            "\nWARNING!\n========\nThis will overwrite data on /dev/sdx irrevocably.\n\n\
             Are you sure? (Type 'yes' in capital letters): "
        );
        for no in [&b"yes\n"[..], b"YES", b"YES \n", b"n\n"] {
            let (r, _) = run(no);
            let e = r.unwrap_err();
            assert_eq!(e.to_string(), "Operation aborted.");
            assert_eq!(e.exit_code(), ExitCode::WrongParameters);
        }
        assert!(matches!(run(b"").0, Err(ConfirmError::Read(_))));
    }
}
