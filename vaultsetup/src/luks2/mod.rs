//! LUKS2: binary headers ([`header`]) and JSON metadata ([`json`]).

pub mod header;
pub mod json;

use crate::device::Device;
use crate::exit::{ExitCode, HasExitCode};
use header::{BinHeader, BothBad, HeaderProblem};
use json::Metadata;

/// Errors of LUKS2 parsing.
#[derive(Debug, thiserror::Error)]
pub enum Luks2Error {
    /// Neither header copy is usable.
    #[error("Device {device} is not a valid LUKS device: {source}")]
    BothBad {
        /// Device name.
        device: String,
        /// Details.
        #[source]
        source: BothBad,
    },
    /// The JSON metadata does not parse.
    #[error("LUKS2 JSON metadata of the {copy} header is invalid: {why}")]
    Json {
        /// Which copy.
        copy: header::Copy,
        /// Details.
        why: String,
    },
}

impl HasExitCode for Luks2Error {
    fn exit_code(&self) -> ExitCode {
        ExitCode::WrongParameters
    }
}

/// A parsed LUKS2 volume header.
#[derive(Debug)]
pub struct Luks2Header {
    /// The binary header in use.
    pub bin: BinHeader,
    /// The typed metadata.
    pub meta: Metadata,
    /// The metadata as a generic value (member order preserved) for dumping.
    pub raw: serde_json::Value,
    /// Notes for stderr (fallback to the secondary header, disagreements).
    pub notes: Vec<String>,
}

fn parse_json(b: &BinHeader) -> Result<(Metadata, serde_json::Value), Luks2Error> {
    let err = |why: String| Luks2Error::Json { copy: b.copy, why };
    let meta = Metadata::parse(&b.json).map_err(|e| err(e.to_string()))?;
    meta.validate(b.hdr_size).map_err(|e| err(e.0))?;
    let raw = serde_json::from_str(&b.json).map_err(|e| err(e.to_string()))?;
    Ok((meta, raw))
}

impl Luks2Header {
    /// Reads both binary headers, chooses one, and parses and validates its JSON; when
    /// the chosen copy's JSON is invalid and the other copy's is valid, uses the other.
    pub fn read(dev: &Device) -> Result<Self, Luks2Error> {
        let pair = header::read_pair(dev).map_err(|source| Luks2Error::BothBad {
            device: dev.path().display().to_string(),
            source,
        })?;
        let mut notes = pair.notes();
        match parse_json(&pair.chosen) {
            Ok((meta, raw)) => Ok(Self {
                bin: pair.chosen,
                meta,
                raw,
                notes,
            }),
            Err(first) => {
                let Some(other) = pair.other else {
                    return Err(first);
                };
                let (meta, raw) = parse_json(&other).map_err(|_| first.clone_msg())?;
                notes.push(format!(
                    "{first}; using the {} header instead. Run `cryptsetup repair`.",
                    other.copy
                ));
                Ok(Self {
                    bin: other,
                    meta,
                    raw,
                    notes,
                })
            }
        }
    }
}

impl Luks2Error {
    fn clone_msg(&self) -> Self {
        match self {
            Self::Json { copy, why } => Self::Json {
                copy: *copy,
                why: format!("{why} (and the other copy is invalid too)"),
            },
            Self::BothBad { device, source } => Self::BothBad {
                device: device.clone(),
                source: source.clone(),
            },
        }
    }
}

/// Re-exported so callers can match header problems.
pub type Problem = HeaderProblem;
