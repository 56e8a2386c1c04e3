//! The `vmvault` target table: dm-crypt's line syntax, with the key replaced by a vault
//! slot reference.
//!
//! ```text
//! <start> <len> vmvault <cipher> :<keybytes>:vault:<slot> <iv_offset> <dev> <offset> [<#opts> <opt>...]
//! ```
//!
//! `start`, `len`, `iv_offset` and `offset` are in 512-byte sectors, as in dm-crypt. The
//! optional arguments are dm-crypt's: `allow_discards`, `same_cpu_crypt`,
//! `submit_from_crypt_cpus`, `no_read_workqueue`, `no_write_workqueue`, `high_priority`,
//! `sector_size:<bytes>` and `iv_large_sectors`. A table never carries key material: a
//! hexadecimal key, or a key reference of any type other than `vault`, is rejected.

use std::fmt;
use std::str::FromStr;

use vmvault_proto::{CipherSpec, KeySize, SectorSize, Sectors};

/// The target type name in a table line.
pub const TARGET_NAME: &str = "vmvault";

/// Errors from parsing or validating a table line. Messages never contain key bytes.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum TableError {
    /// The line has fewer fields than a `vmvault` target needs.
    #[error("table line has {0} fields; expected `<start> <len> vmvault <cipher> :<keybytes>:vault:<slot> <iv_offset> <dev> <offset> [<#opts> <opts>...]`")]
    TooFewFields(usize),
    /// The target type is not `vmvault`.
    #[error("target type `{0}` is not `vmvault`")]
    WrongTarget(String),
    /// A numeric field did not parse.
    #[error("field `{field}`: `{value}` is not a valid number")]
    BadNumber {
        /// Which field.
        field: &'static str,
        /// The offending text.
        value: String,
    },
    /// The cipher specification is not supported by the vault engine.
    #[error("cipher `{0}` is not supported by the vault engine")]
    BadCipher(String),
    /// The key field is a literal key: tables never carry keys.
    #[error("the key field must be a vault slot reference `:<keybytes>:vault:<slot>`; tables never carry key material")]
    LiteralKey,
    /// The key field is malformed or references something other than a vault slot.
    #[error("bad key reference: {0}")]
    BadKeyRef(String),
    /// The key size does not fit the cipher.
    #[error("a {bytes}-byte key does not fit cipher `{cipher}`")]
    KeySizeMismatch {
        /// Key size in bytes.
        bytes: u32,
        /// Cipher text.
        cipher: String,
    },
    /// The device field is empty or contains whitespace.
    #[error("bad device field `{0}`")]
    BadDevice(String),
    /// The optional-argument count does not match the arguments present.
    #[error("optional argument count {count} does not match the {present} arguments present")]
    OptCount {
        /// The declared count.
        count: usize,
        /// How many arguments follow.
        present: usize,
    },
    /// An optional argument is unknown or unsupported.
    #[error("unsupported optional argument `{0}`")]
    BadOption(String),
    /// The sector size is not 512, 1024, 2048 or 4096.
    #[error("sector size {0} is not 512, 1024, 2048 or 4096")]
    BadSectorSize(u64),
    /// Length or offsets are not multiples of the sector size, or the length is zero.
    #[error("{0}")]
    Misaligned(String),
}

/// A reference to a key held in a vault slot: `:<keybytes>:vault:<slot>`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct KeyRef {
    /// Key size (64 bytes for AES-256-XTS).
    pub key: KeySize,
    /// Vault slot number.
    pub slot: u32,
}

impl fmt::Display for KeyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, ":{}:vault:{}", self.key.bytes(), self.slot)
    }
}

impl FromStr for KeyRef {
    type Err = TableError;

    fn from_str(s: &str) -> Result<Self, TableError> {
        let Some(rest) = s.strip_prefix(':') else {
            return Err(TableError::LiteralKey);
        };
        let parts: Vec<&str> = rest.splitn(3, ':').collect();
        if parts.len() != 3 {
            return Err(TableError::BadKeyRef(
                "expected `:<keybytes>:vault:<slot>`".into(),
            ));
        }
        let key_bytes: usize = parts[0].parse().map_err(|_| {
            TableError::BadKeyRef(format!("key size `{}` is not a number", parts[0]))
        })?;
        if parts[1] != "vault" {
            return Err(TableError::BadKeyRef(format!(
                "key type `{}` is not `vault` (keyring and literal keys are refused)",
                parts[1]
            )));
        }
        let slot: u32 = parts[2]
            .parse()
            .map_err(|_| TableError::BadKeyRef(format!("slot `{}` is not a number", parts[2])))?;
        let key = KeySize::from_bytes(key_bytes)
            .map_err(|_| TableError::BadKeyRef(format!("key size {key_bytes}")))?;
        Ok(KeyRef { key, slot })
    }
}

/// dm-crypt's optional target arguments.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TargetOptions {
    /// Pass discards down to the backing device.
    pub allow_discards: bool,
    /// Accepted for dm-crypt compatibility (no effect: the vault schedules its vCPUs).
    pub same_cpu_crypt: bool,
    /// Accepted for dm-crypt compatibility (no effect).
    pub submit_from_crypt_cpus: bool,
    /// Accepted for dm-crypt compatibility (no effect).
    pub no_read_workqueue: bool,
    /// Accepted for dm-crypt compatibility (no effect).
    pub no_write_workqueue: bool,
    /// Accepted for dm-crypt compatibility (no effect).
    pub high_priority: bool,
    /// Encryption sector size (512 bytes unless `sector_size:N` is given).
    pub sector_size: SectorSize,
    /// IVs count `sector_size` units rather than 512-byte units.
    pub iv_large_sectors: bool,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            allow_discards: false,
            same_cpu_crypt: false,
            submit_from_crypt_cpus: false,
            no_read_workqueue: false,
            no_write_workqueue: false,
            high_priority: false,
            sector_size: SectorSize::B512,
            iv_large_sectors: false,
        }
    }
}

impl TargetOptions {
    /// The optional arguments in canonical order (empty when all are defaults).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        let flags = [
            (self.allow_discards, "allow_discards"),
            (self.same_cpu_crypt, "same_cpu_crypt"),
            (self.submit_from_crypt_cpus, "submit_from_crypt_cpus"),
            (self.no_read_workqueue, "no_read_workqueue"),
            (self.no_write_workqueue, "no_write_workqueue"),
            (self.high_priority, "high_priority"),
        ];
        for (on, name) in flags {
            if on {
                v.push(name.to_string());
            }
        }
        if self.sector_size != SectorSize::B512 {
            v.push(format!("sector_size:{}", self.sector_size));
        }
        if self.iv_large_sectors {
            v.push("iv_large_sectors".into());
        }
        v
    }

    fn apply(&mut self, arg: &str) -> Result<(), TableError> {
        match arg {
            "allow_discards" => self.allow_discards = true,
            "same_cpu_crypt" => self.same_cpu_crypt = true,
            "submit_from_crypt_cpus" => self.submit_from_crypt_cpus = true,
            "no_read_workqueue" => self.no_read_workqueue = true,
            "no_write_workqueue" => self.no_write_workqueue = true,
            "high_priority" => self.high_priority = true,
            "iv_large_sectors" => self.iv_large_sectors = true,
            _ => {
                if let Some(n) = arg.strip_prefix("sector_size:") {
                    let n: u64 = n.parse().map_err(|_| TableError::BadNumber {
                        field: "sector_size",
                        value: n.to_string(),
                    })?;
                    self.sector_size =
                        SectorSize::try_from(n).map_err(|_| TableError::BadSectorSize(n))?;
                } else {
                    return Err(TableError::BadOption(arg.to_string()));
                }
            }
        }
        Ok(())
    }
}

/// One `vmvault` target line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Table {
    /// First sector of the mapping.
    pub start: Sectors,
    /// Length of the mapping.
    pub len: Sectors,
    /// Cipher specification as written (`aes-xts-plain64`, `capi:xts(aes)-plain64`, ...).
    pub cipher: CipherSpec,
    /// The vault slot holding the key.
    pub key: KeyRef,
    /// Added to the sector number before IV derivation.
    pub iv_offset: Sectors,
    /// Backing device: a path or `major:minor`.
    pub device: String,
    /// Start of the encrypted data on the backing device.
    pub offset: Sectors,
    /// Optional arguments.
    pub options: TargetOptions,
}

fn num(field: &'static str, s: &str) -> Result<u64, TableError> {
    s.parse().map_err(|_| TableError::BadNumber {
        field,
        value: s.to_string(),
    })
}

impl Table {
    /// Checks the line's internal consistency: key size fits the cipher, alignment.
    pub fn validate(&self) -> Result<(), TableError> {
        if !self.cipher.key_size_ok(self.key.key) {
            return Err(TableError::KeySizeMismatch {
                bytes: self.key.key.bytes() as u32,
                cipher: self.cipher.to_string(),
            });
        }
        if self.device.is_empty() || self.device.chars().any(char::is_whitespace) {
            return Err(TableError::BadDevice(self.device.clone()));
        }
        let ss = self.options.sector_size;
        if self.len == Sectors(0) {
            return Err(TableError::Misaligned("length is zero".into()));
        }
        if !ss.divides(self.len) {
            return Err(TableError::Misaligned(format!(
                "length {} is not a multiple of the {ss}-byte sector size",
                self.len
            )));
        }
        if !ss.divides(self.iv_offset) {
            return Err(TableError::Misaligned(format!(
                "iv_offset {} is not a multiple of the {ss}-byte sector size",
                self.iv_offset
            )));
        }
        Ok(())
    }
}

impl FromStr for Table {
    type Err = TableError;

    fn from_str(line: &str) -> Result<Self, TableError> {
        let f: Vec<&str> = line.split_whitespace().collect();
        if f.len() < 8 {
            return Err(TableError::TooFewFields(f.len()));
        }
        if f[2] != TARGET_NAME {
            return Err(TableError::WrongTarget(f[2].to_string()));
        }
        let mut options = TargetOptions::default();
        if f.len() > 8 {
            let count = num("#opts", f[8])? as usize;
            let present = f.len() - 9;
            if count != present {
                return Err(TableError::OptCount { count, present });
            }
            for a in &f[9..] {
                options.apply(a)?;
            }
        }
        let t = Table {
            start: Sectors(num("start", f[0])?),
            len: Sectors(num("len", f[1])?),
            cipher: CipherSpec::parse(f[3]).map_err(|_| TableError::BadCipher(f[3].to_string()))?,
            key: f[4].parse()?,
            iv_offset: Sectors(num("iv_offset", f[5])?),
            device: f[6].to_string(),
            offset: Sectors(num("offset", f[7])?),
            options,
        };
        t.validate()?;
        Ok(t)
    }
}

impl fmt::Display for Table {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} {} {} {} {} {} {} {}",
            self.start,
            self.len,
            TARGET_NAME,
            self.cipher,
            self.key,
            self.iv_offset,
            self.device,
            self.offset
        )?;
        let args = self.options.to_args();
        if !args.is_empty() {
            write!(f, " {}", args.len())?;
            for a in args {
                write!(f, " {a}")?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASIC: &str = "0 2048 vmvault aes-xts-plain64 :64:vault:3 0 /dev/loop0 4096";

    #[test]
    fn parse_basic() {
        let t: Table = BASIC.parse().unwrap();
        assert_eq!(t.start, Sectors(0));
        assert_eq!(t.len, Sectors(2048));
        assert_eq!(t.cipher.as_str(), "aes-xts-plain64");
        assert_eq!(
            t.key,
            KeyRef {
                key: KeySize::from_bytes(64).unwrap(),
                slot: 3
            }
        );
        assert_eq!(t.device, "/dev/loop0");
        assert_eq!(t.offset, Sectors(4096));
        assert_eq!(t.options, TargetOptions::default());
        assert_eq!(t.to_string(), BASIC);
    }

    #[test]
    fn round_trip_with_options() {
        let line = "0 8192 vmvault capi:xts(aes)-plain64 :32:vault:0 0 7:3 32768 \
                    4 allow_discards same_cpu_crypt sector_size:4096 iv_large_sectors";
        let t: Table = line.parse().unwrap();
        assert!(t.options.allow_discards && t.options.same_cpu_crypt);
        assert_eq!(t.options.sector_size, SectorSize::B4096);
        assert!(t.options.iv_large_sectors);
        let again: Table = t.to_string().parse().unwrap();
        assert_eq!(again, t);
        assert_eq!(
            t.to_string(),
            line.split_whitespace().collect::<Vec<_>>().join(" ")
        );
    }

    #[test]
    fn every_flag_round_trips() {
        let line =
            "16 1024 vmvault aes-cbc-essiv:sha256 :32:vault:9 8 /dev/sdb 0 7 allow_discards \
                    same_cpu_crypt submit_from_crypt_cpus no_read_workqueue no_write_workqueue \
                    high_priority sector_size:1024";
        let t: Table = line.parse().unwrap();
        assert_eq!(t.to_string().parse::<Table>().unwrap(), t);
        assert_eq!(t.options.to_args().len(), 7);
    }

    #[test]
    fn literal_key_refused() {
        let line = format!(
            "0 8 vmvault aes-xts-plain64 {} 0 /dev/loop0 0",
            "ab".repeat(64)
        );
        assert_eq!(line.parse::<Table>().unwrap_err(), TableError::LiteralKey);
        let e = line.parse::<Table>().unwrap_err().to_string();
        assert!(!e.contains("abab"), "error must not echo key material: {e}");
    }

    #[test]
    fn keyring_key_refused() {
        let e = "0 8 vmvault aes-xts-plain64 :64:logon:cryptsetup:x 0 /dev/loop0 0"
            .parse::<Table>()
            .unwrap_err();
        assert!(matches!(e, TableError::BadKeyRef(_)), "{e}");
    }

    #[test]
    fn errors_are_specific() {
        assert_eq!(
            "0 8 crypt aes-xts-plain64 :64:vault:0 0 /dev/x 0"
                .parse::<Table>()
                .unwrap_err(),
            TableError::WrongTarget("crypt".into())
        );
        assert_eq!(
            "0 8 vmvault aes".parse::<Table>().unwrap_err(),
            TableError::TooFewFields(4)
        );
        assert!(matches!(
            "0 8 vmvault twofish-xts-plain64 :64:vault:0 0 /dev/x 0".parse::<Table>(),
            Err(TableError::BadCipher(_))
        ));
        assert!(matches!(
            "0 8 vmvault aes-xts-plain64 :20:vault:0 0 /dev/x 0".parse::<Table>(),
            Err(TableError::KeySizeMismatch { bytes: 20, .. })
        ));
        assert_eq!(
            "0 8 vmvault aes-xts-plain64 :64:vault:0 0 /dev/x 0 2 allow_discards"
                .parse::<Table>()
                .unwrap_err(),
            TableError::OptCount {
                count: 2,
                present: 1
            }
        );
        assert_eq!(
            "0 8 vmvault aes-xts-plain64 :64:vault:0 0 /dev/x 0 1 integrity:28:aead"
                .parse::<Table>()
                .unwrap_err(),
            TableError::BadOption("integrity:28:aead".into())
        );
        assert_eq!(
            "0 8 vmvault aes-xts-plain64 :64:vault:0 0 /dev/x 0 1 sector_size:3000"
                .parse::<Table>()
                .unwrap_err(),
            TableError::BadSectorSize(3000)
        );
        assert!(matches!(
            "0 9 vmvault aes-xts-plain64 :64:vault:0 0 /dev/x 0 1 sector_size:4096"
                .parse::<Table>(),
            Err(TableError::Misaligned(_))
        ));
        assert!(matches!(
            "0 x vmvault aes-xts-plain64 :64:vault:0 0 /dev/x 0".parse::<Table>(),
            Err(TableError::BadNumber { field: "len", .. })
        ));
        assert!(matches!(
            "0 8 vmvault aes-xts-plain64 :64:vault:s 0 /dev/x 0".parse::<Table>(),
            Err(TableError::BadKeyRef(_))
        ));
    }
}
