//! Format detection: a device is LUKS1, LUKS2 or not LUKS.

use crate::device::{Device, DeviceError};
use crate::exit::{ExitCode, HasExitCode};
use crate::luks1::{Luks1Error, Luks1Header};
use crate::luks2::header::looks_like_luks2;
use crate::luks2::{Luks2Error, Luks2Header};
use crate::util::be16;

/// Errors of reading a volume header.
#[derive(Debug, thiserror::Error)]
pub enum VolumeError {
    /// Device access.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// No LUKS magic.
    #[error("Device {0} is not a valid LUKS device.")]
    NotLuks(String),
    /// LUKS1 header problem.
    #[error(transparent)]
    Luks1(#[from] Luks1Error),
    /// LUKS2 header problem.
    #[error(transparent)]
    Luks2(#[from] Luks2Error),
}

impl HasExitCode for VolumeError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::Device(e) => e.exit_code(),
            Self::NotLuks(_) => ExitCode::WrongParameters,
            Self::Luks1(e) => e.exit_code(),
            Self::Luks2(e) => e.exit_code(),
        }
    }
}

/// A parsed LUKS header of either version.
#[derive(Debug)]
pub enum Volume {
    /// LUKS1.
    Luks1(Luks1Header),
    /// LUKS2.
    Luks2(Luks2Header),
}

impl Volume {
    /// Reads the header(s) of `dev`. A LUKS2 device whose primary header is destroyed is
    /// still found through its secondary header.
    pub fn read(dev: &Device) -> Result<Self, VolumeError> {
        let name = dev.path().display().to_string();
        let mut first = [0u8; 8];
        let have = dev.read_exact_at(0, &mut first).is_ok();
        if have && first[..6] == crate::luks1::MAGIC && be16(&first, 6) == 1 {
            return Ok(Self::Luks1(Luks1Header::read(dev)?));
        }
        if have && looks_like_luks2(&first) {
            return Ok(Self::Luks2(Luks2Header::read(dev)?));
        }
        // No primary magic: a LUKS2 device may still have a valid secondary header.
        match Luks2Header::read(dev) {
            Ok(h) => Ok(Self::Luks2(h)),
            Err(Luks2Error::BothBad { .. }) => Err(VolumeError::NotLuks(name)),
            Err(e) => Err(e.into()),
        }
    }

    /// 1 or 2.
    pub fn version(&self) -> u32 {
        match self {
            Self::Luks1(_) => 1,
            Self::Luks2(_) => 2,
        }
    }

    /// Notes to show on stderr (header fallback etc.).
    pub fn notes(&self) -> &[String] {
        match self {
            Self::Luks1(_) => &[],
            Self::Luks2(h) => &h.notes,
        }
    }
}
