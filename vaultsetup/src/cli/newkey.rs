//! Options of the verbs that make keyslots (`luksFormat`, `luksAddKey`,
//! `luksChangeKey`): the PBKDF options with cryptsetup 2.6's defaults and limits, the
//! key slot number, and the LUKS version; each checked once into a typed value.

use clap::Args;

use crate::exit::{ExitCode, HasExitCode};
use crate::kdf::{Hash, KdfError};
use crate::pbkdf_bench::{
    adjusted_phys_memory_kib, online_cpus, PbkdfKind, PbkdfRequest, ARGON2_MAX_MEMORY_KIB,
    ARGON2_MAX_PARALLEL, ARGON2_MIN_MEMORY_KIB, ARGON2_MIN_TIME, DEFAULT_ITER_TIME_MS,
    DEFAULT_LUKS2_MEMORY_KIB, DEFAULT_LUKS2_PARALLEL, PBKDF2_MIN_ITERATIONS,
};

/// The LUKS version a header has or gets.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LuksVersion {
    /// LUKS1: 8 keyslots, PBKDF2 only, 512-byte sectors.
    Luks1,
    /// LUKS2: 32 keyslots.
    Luks2,
}

impl LuksVersion {
    /// Number of keyslots (LUKS1 8, LUKS2 32).
    pub fn keyslots(self) -> u32 {
        match self {
            Self::Luks1 => 8,
            Self::Luks2 => 32,
        }
    }

    /// From the header's version number.
    pub fn from_number(v: u32) -> Option<Self> {
        match v {
            1 => Some(Self::Luks1),
            2 => Some(Self::Luks2),
            _ => None,
        }
    }
}

/// Refusals of new-key options; every message names the option.
#[derive(Debug, thiserror::Error)]
pub enum OptionError {
    /// `--pbkdf argon2*` with LUKS1.
    #[error("Requested PBKDF type is not supported for LUKS1 (--pbkdf {0}).")]
    PbkdfNotForLuks1(&'static str),
    /// `-h/--hash` names no supported hash.
    #[error("Requested hash {name} is not supported (--hash).")]
    Hash {
        /// The name given.
        name: String,
        /// The KDF layer's refusal.
        #[source]
        source: KdfError,
    },
    /// `--pbkdf-force-iterations` below the KDF's minimum.
    #[error("Forced iteration count is too low for {kdf} (minimum is {min}) (--pbkdf-force-iterations {given}).")]
    ForcedIterationsTooLow {
        /// The KDF.
        kdf: &'static str,
        /// Its minimum.
        min: u32,
        /// The value given.
        given: u32,
    },
    /// `--pbkdf-memory` below Argon2's minimum with forced iterations.
    #[error("Forced memory cost is too low for {kdf} (minimum is {min} kilobytes) (--pbkdf-memory {given}).")]
    MemoryTooLow {
        /// The KDF.
        kdf: &'static str,
        /// The minimum in KiB.
        min: u32,
        /// The value given.
        given: u32,
    },
    /// `--pbkdf-memory` above 4 GiB.
    #[error("Requested maximum PBKDF memory cost is too high (maximum is {max} kilobytes) (--pbkdf-memory {given}).")]
    MemoryTooHigh {
        /// The maximum in KiB.
        max: u32,
        /// The value given.
        given: u32,
    },
    /// `-S/--key-slot` (or `--new-key-slot`, the SLOT of luksKillSlot) out of range.
    #[error("Key slot {slot} is invalid, please select between 0 and {max} ({option}).")]
    KeySlot {
        /// The number given.
        slot: u32,
        /// The highest slot of the LUKS version.
        max: u32,
        /// The option that gave it.
        option: &'static str,
    },
    /// A size option that does not parse (`--luks2-metadata-size 12q`).
    #[error("Invalid size specification in parameter --{0}.")]
    Size(&'static str),
    /// Anything else about one option: the sentence says which.
    #[error("{0}")]
    Other(String),
}

impl HasExitCode for OptionError {
    fn exit_code(&self) -> ExitCode {
        ExitCode::WrongParameters
    }
}

/// The PBKDF options of a new keyslot.
#[derive(Debug, Args, Clone, Default)]
pub struct PbkdfArgs {
    /// PBKDF algorithm (for LUKS2): argon2i, argon2id, pbkdf2.
    #[arg(long = "pbkdf", value_enum, value_name = "STRING")]
    pub pbkdf: Option<PbkdfKind>,
    /// PBKDF memory cost limit (argon2, in KiB).
    #[arg(long = "pbkdf-memory", value_name = "kilobytes")]
    pub pbkdf_memory: Option<u32>,
    /// PBKDF parallel cost (argon2 threads).
    #[arg(long = "pbkdf-parallel", value_name = "threads")]
    pub pbkdf_parallel: Option<u32>,
    /// PBKDF iteration time for LUKS (in ms).
    #[arg(short = 'i', long = "iter-time", value_name = "msecs")]
    pub iter_time: Option<u32>,
    /// PBKDF iterations cost (forced, disables benchmark).
    #[arg(long = "pbkdf-force-iterations", value_name = "LONG")]
    pub pbkdf_force_iterations: Option<u32>,
    /// The hash used to create the encryption key from the passphrase (and, for
    /// luksFormat, the LUKS header hash).
    #[arg(short = 'h', long = "hash", value_name = "STRING")]
    pub hash: Option<String>,
}

/// cryptsetup's default hash (LUKS header, PBKDF2).
pub const DEFAULT_HASH: Hash = Hash::Sha256;

impl PbkdfArgs {
    /// The hash given with `-h`, or sha256.
    pub fn hash(&self) -> Result<Hash, OptionError> {
        match &self.hash {
            None => Ok(DEFAULT_HASH),
            Some(n) => Hash::from_name(n).map_err(|source| OptionError::Hash {
                name: n.clone(),
                source,
            }),
        }
    }

    /// The PBKDF of a new keyslot in a `version` header, as cryptsetup's
    /// `set_pbkdf_params` + `verify_pbkdf_params` + `init_pbkdf_type` build it:
    /// defaults for what is not given (a 0 is "not given"), refusals naming the option,
    /// then the memory capped at half the RAM and the lanes at 4 and the online CPUs.
    pub fn request(&self, version: LuksVersion) -> Result<PbkdfRequest, OptionError> {
        self.request_on(version, adjusted_phys_memory_kib(), online_cpus())
    }

    /// [`PbkdfArgs::request`] on a machine with `memory_cap_kib` and `cpus`.
    pub fn request_on(
        &self,
        version: LuksVersion,
        memory_cap_kib: u32,
        cpus: u32,
    ) -> Result<PbkdfRequest, OptionError> {
        let kind = self.pbkdf.unwrap_or(match version {
            LuksVersion::Luks1 => PbkdfKind::Pbkdf2,
            LuksVersion::Luks2 => PbkdfKind::Argon2id,
        });
        let hash = self.hash()?;
        let iter_time_ms = self
            .iter_time
            .filter(|&t| t != 0)
            .unwrap_or(DEFAULT_ITER_TIME_MS);
        let forced = self.pbkdf_force_iterations;
        let Some(variant) = kind.argon2() else {
            // The CLI passes no memory or threads for pbkdf2: they are ignored.
            if let Some(given) = forced.filter(|&i| i < PBKDF2_MIN_ITERATIONS) {
                return Err(OptionError::ForcedIterationsTooLow {
                    kdf: kind.name(),
                    min: PBKDF2_MIN_ITERATIONS,
                    given,
                });
            }
            return Ok(PbkdfRequest::Pbkdf2 {
                hash,
                iter_time_ms,
                forced_iterations: forced,
            });
        };
        if version == LuksVersion::Luks1 {
            return Err(OptionError::PbkdfNotForLuks1(kind.name()));
        }
        let memory = self
            .pbkdf_memory
            .filter(|&m| m != 0)
            .unwrap_or(DEFAULT_LUKS2_MEMORY_KIB);
        if let Some(given) = forced.filter(|&t| t < ARGON2_MIN_TIME) {
            return Err(OptionError::ForcedIterationsTooLow {
                kdf: kind.name(),
                min: ARGON2_MIN_TIME,
                given,
            });
        }
        if forced.is_some() && memory < ARGON2_MIN_MEMORY_KIB {
            return Err(OptionError::MemoryTooLow {
                kdf: kind.name(),
                min: ARGON2_MIN_MEMORY_KIB,
                given: memory,
            });
        }
        if memory > ARGON2_MAX_MEMORY_KIB {
            return Err(OptionError::MemoryTooHigh {
                max: ARGON2_MAX_MEMORY_KIB,
                given: memory,
            });
        }
        let lanes = self
            .pbkdf_parallel
            .filter(|&p| p != 0)
            .unwrap_or(DEFAULT_LUKS2_PARALLEL)
            .min(ARGON2_MAX_PARALLEL)
            .min(cpus.max(1));
        // Argon2 itself needs 8 KiB per lane.
        let max_memory_kib = memory.min(memory_cap_kib).max(8 * lanes);
        Ok(PbkdfRequest::Argon2 {
            variant,
            iter_time_ms,
            max_memory_kib,
            lanes,
            forced_time: forced,
        })
    }
}

/// Checks a key slot number against the LUKS version.
pub fn check_key_slot(
    slot: u32,
    version: LuksVersion,
    option: &'static str,
) -> Result<u32, OptionError> {
    let max = version.keyslots() - 1;
    if slot > max {
        return Err(OptionError::KeySlot { slot, max, option });
    }
    Ok(slot)
}

/// Parses a size as cryptsetup's `tools_string_to_size`: a number with an optional
/// unit (`K`/`KiB` = 1024, `KB` = 1000, likewise M, G, T, P, E; case-insensitive `k`).
pub fn parse_size(text: &str, option: &'static str) -> Result<u64, OptionError> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (num, unit) = text.split_at(digits);
    let n: u64 = num.parse().map_err(|_| OptionError::Size(option))?;
    let unit = unit.to_ascii_uppercase();
    let (letter, rest) = match unit.chars().next() {
        None => return Ok(n),
        Some(c) => (c, &unit[1..]),
    };
    let power = match letter {
        'K' => 1,
        'M' => 2,
        'G' => 3,
        'T' => 4,
        'P' => 5,
        'E' => 6,
        _ => return Err(OptionError::Size(option)),
    };
    let base: u64 = match rest {
        "" | "IB" => 1024,
        "B" => 1000,
        _ => return Err(OptionError::Size(option)),
    };
    base.checked_pow(power)
        .and_then(|m| n.checked_mul(m))
        .ok_or(OptionError::Size(option))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::kdf::Argon2Variant;

    #[test]
    fn defaults_are_cryptsetup_26() {
        let a = PbkdfArgs::default();
        assert_eq!(
            a.request_on(LuksVersion::Luks2, 8 << 20, 16).unwrap(),
            PbkdfRequest::Argon2 {
                variant: Argon2Variant::Argon2id,
                iter_time_ms: 2000,
                max_memory_kib: 1 << 20,
                lanes: 4,
                forced_time: None
            }
        );
        // Half of 1 GiB of RAM, 2 CPUs.
        assert_eq!(
            a.request_on(LuksVersion::Luks2, 512 << 10, 2).unwrap(),
            PbkdfRequest::Argon2 {
                variant: Argon2Variant::Argon2id,
                iter_time_ms: 2000,
                max_memory_kib: 512 << 10,
                lanes: 2,
                forced_time: None
            }
        );
        assert_eq!(
            a.request_on(LuksVersion::Luks1, 8 << 20, 16).unwrap(),
            PbkdfRequest::Pbkdf2 {
                hash: Hash::Sha256,
                iter_time_ms: 2000,
                forced_iterations: None
            }
        );
    }

    #[test]
    fn refusals_name_the_option() {
        let mut a = PbkdfArgs {
            pbkdf: Some(PbkdfKind::Argon2i),
            ..Default::default()
        };
        let e = a.request_on(LuksVersion::Luks1, 1 << 20, 4).unwrap_err();
        assert!(e.to_string().contains("--pbkdf argon2i"), "{e}");
        a.pbkdf_force_iterations = Some(3);
        let e = a.request_on(LuksVersion::Luks2, 1 << 20, 4).unwrap_err();
        assert_eq!(
            e.to_string(),
            "Forced iteration count is too low for argon2i (minimum is 4) (--pbkdf-force-iterations 3)."
        );
        a.pbkdf_force_iterations = Some(4);
        a.pbkdf_memory = Some(31);
        let e = a.request_on(LuksVersion::Luks2, 1 << 20, 4).unwrap_err();
        assert!(e.to_string().contains("--pbkdf-memory 31"), "{e}");
        a.pbkdf_memory = Some(ARGON2_MAX_MEMORY_KIB + 1);
        let e = a.request_on(LuksVersion::Luks2, 1 << 20, 4).unwrap_err();
        assert!(e.to_string().contains("maximum is 4194304"), "{e}");
        let p = PbkdfArgs {
            pbkdf: Some(PbkdfKind::Pbkdf2),
            pbkdf_force_iterations: Some(999),
            ..Default::default()
        };
        let e = p.request_on(LuksVersion::Luks2, 1 << 20, 4).unwrap_err();
        assert!(e.to_string().contains("minimum is 1000"), "{e}");
        let h = PbkdfArgs {
            hash: Some("md5".into()),
            ..Default::default()
        };
        assert!(h.hash().unwrap_err().to_string().contains("--hash"));
        let e = check_key_slot(8, LuksVersion::Luks1, "--key-slot").unwrap_err();
        assert_eq!(
            e.to_string(),
            "Key slot 8 is invalid, please select between 0 and 7 (--key-slot)."
        );
        assert_eq!(check_key_slot(31, LuksVersion::Luks2, "-S").unwrap(), 31);
    }

    #[test]
    fn forced_argon2_keeps_the_given_memory() {
        let a = PbkdfArgs {
            pbkdf: Some(PbkdfKind::Argon2id),
            pbkdf_memory: Some(32768),
            pbkdf_parallel: Some(1),
            pbkdf_force_iterations: Some(4),
            ..Default::default()
        };
        assert_eq!(
            a.request_on(LuksVersion::Luks2, 1 << 20, 4).unwrap(),
            PbkdfRequest::Argon2 {
                variant: Argon2Variant::Argon2id,
                iter_time_ms: 2000,
                max_memory_kib: 32768,
                lanes: 1,
                forced_time: Some(4)
            }
        );
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("4096", "x").unwrap(), 4096);
        assert_eq!(parse_size("16k", "x").unwrap(), 16384);
        assert_eq!(parse_size("16KiB", "x").unwrap(), 16384);
        assert_eq!(parse_size("1MB", "x").unwrap(), 1_000_000);
        assert_eq!(parse_size("2M", "x").unwrap(), 2 << 20);
        for bad in ["", "k", "12q", "1Mx", "99999999999E"] {
            assert!(parse_size(bad, "luks2-metadata-size").is_err(), "{bad}");
        }
        assert_eq!(
            parse_size("x", "luks2-metadata-size")
                .unwrap_err()
                .to_string(),
            "Invalid size specification in parameter --luks2-metadata-size."
        );
    }
}
