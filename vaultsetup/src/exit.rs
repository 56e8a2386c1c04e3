//! Process exit codes, the same as cryptsetup's.

/// cryptsetup's exit codes (see `cryptsetup(8)`, "RETURN CODES").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ExitCode {
    /// The command succeeded.
    Success = 0,
    /// Wrong parameters (also: not a LUKS device, corrupted metadata, I/O error).
    WrongParameters = 1,
    /// No permission, or bad passphrase.
    NoPermission = 2,
    /// Out of memory (also: a KDF memory cost above the allowed limit).
    OutOfMemory = 3,
    /// Wrong device specified (missing or unreadable).
    WrongDevice = 4,
    /// Device already exists or is busy.
    Busy = 5,
}

impl ExitCode {
    /// The numeric process exit status.
    pub fn code(self) -> i32 {
        self as i32
    }

    /// cryptsetup's `-v` failure wording, e.g. "no permission or bad passphrase".
    pub fn describe(self) -> &'static str {
        match self {
            Self::Success => "success",
            Self::WrongParameters => "wrong or missing parameters",
            Self::NoPermission => "no permission or bad passphrase",
            Self::OutOfMemory => "out of memory",
            Self::WrongDevice => "wrong device or file specified",
            Self::Busy => "device already exists or device is busy",
        }
    }
}

/// Errors that map onto a cryptsetup exit code.
pub trait HasExitCode {
    /// The exit code the CLI uses for this error.
    fn exit_code(&self) -> ExitCode;
}
