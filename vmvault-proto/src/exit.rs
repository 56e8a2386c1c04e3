//! Process exit codes, the same as cryptsetup's: what `vaultsetup` exits with, and the
//! `code` of a refusal on the control protocol (one enum for both).

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

/// Compares with a process exit status, as scripts and tests see it.
impl PartialEq<i32> for ExitCode {
    fn eq(&self, n: &i32) -> bool {
        self.code() == *n
    }
}

impl TryFrom<i32> for ExitCode {
    type Error = i32;
    /// The exit code with this number, or the number back when there is none.
    fn try_from(n: i32) -> Result<Self, i32> {
        Ok(match n {
            0 => Self::Success,
            1 => Self::WrongParameters,
            2 => Self::NoPermission,
            3 => Self::OutOfMemory,
            4 => Self::WrongDevice,
            5 => Self::Busy,
            n => return Err(n),
        })
    }
}

impl serde::Serialize for ExitCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i32(self.code())
    }
}

impl<'de> serde::Deserialize<'de> for ExitCode {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i32::deserialize(d)?;
        ExitCode::try_from(n).map_err(|n| {
            serde::de::Error::custom(format!("exit code {n} is not one of cryptsetup's (0-5)"))
        })
    }
}

/// Errors that map onto a cryptsetup exit code.
pub trait HasExitCode {
    /// The exit code the CLI uses for this error.
    fn exit_code(&self) -> ExitCode;
}
