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
        /// What is wrong with each copy.
        #[source]
        source: BothBad,
    },
    /// The JSON metadata is not JSON, or not LUKS2's schema.
    #[error("LUKS2 JSON metadata of the {copy} header is invalid: {source}{}", also(*other_bad))]
    JsonSyntax {
        /// Which copy.
        copy: header::Copy,
        /// The other copy is invalid too.
        other_bad: bool,
        /// The parser's error (line, column, what it expected).
        #[source]
        source: serde_json::Error,
    },
    /// The JSON metadata parses but breaks a rule of LUKS2 (overlapping areas, unknown
    /// references, values out of range).
    #[error("LUKS2 JSON metadata of the {copy} header is invalid: {why}{}", also(*other_bad))]
    Json {
        /// Which copy.
        copy: header::Copy,
        /// The other copy is invalid too.
        other_bad: bool,
        /// Which rule it breaks.
        why: String,
    },
}

fn also(other_bad: bool) -> &'static str {
    if other_bad {
        " (and the other copy is invalid too)"
    } else {
        ""
    }
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
    let syntax = |source| Luks2Error::JsonSyntax {
        copy: b.copy,
        other_bad: false,
        source,
    };
    let meta = Metadata::parse(&b.json).map_err(syntax)?;
    meta.validate(b.hdr_size).map_err(|e| Luks2Error::Json {
        copy: b.copy,
        other_bad: false,
        why: e.0,
    })?;
    let raw = serde_json::from_str(&b.json).map_err(syntax)?;
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
                let (meta, raw) = match parse_json(&other) {
                    Ok(parsed) => parsed,
                    Err(_) => return Err(first.with_other_bad()),
                };
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
    /// The same error, saying that the other header copy is invalid too.
    fn with_other_bad(mut self) -> Self {
        match &mut self {
            Self::Json { other_bad, .. } | Self::JsonSyntax { other_bad, .. } => *other_bad = true,
            Self::BothBad { .. } => {}
        }
        self
    }
}

/// Re-exported so callers can match header problems.
pub type Problem = HeaderProblem;
