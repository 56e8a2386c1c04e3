//! LUKS2 JSON metadata (serde model) and its validation.
//!
//! 64-bit values are JSON strings in LUKS2 ("offset": "32768"); small integers are JSON
//! numbers. Unknown object members are ignored, unknown types are kept as `Other` so a
//! header written by a newer cryptsetup still parses.

use std::collections::BTreeMap;

use serde::{Deserialize, Deserializer};

/// A u64 stored as a decimal JSON string.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct U64Str(pub u64);

impl<'de> Deserialize<'de> for U64Str {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!(
                "expected a decimal u64 string, got {s:?}"
            )));
        }
        s.parse()
            .map(U64Str)
            .map_err(|_| serde::de::Error::custom(format!("u64 out of range: {s:?}")))
    }
}

/// The whole metadata object.
#[derive(Clone, Debug, Deserialize)]
pub struct Metadata {
    /// Keyslots by id ("0".."31").
    pub keyslots: BTreeMap<String, Keyslot>,
    /// Tokens by id.
    pub tokens: BTreeMap<String, Token>,
    /// Segments by id.
    pub segments: BTreeMap<String, Segment>,
    /// Digests by id.
    pub digests: BTreeMap<String, Digest>,
    /// Header sizes and persistent flags (`config`).
    pub config: Config,
}

/// A keyslot object.
#[derive(Clone, Debug, Deserialize)]
pub struct Keyslot {
    /// "luks2" or "reencrypt".
    #[serde(rename = "type")]
    pub kind: String,
    /// Size of the key stored in the slot, bytes.
    pub key_size: u32,
    /// Anti-forensic splitter.
    pub af: Option<Af>,
    /// Binary area.
    pub area: Area,
    /// The keyslot's key derivation (absent for keyslots of other types).
    pub kdf: Option<KdfJson>,
    /// Priority: 0 ignore, 1 normal, 2 high.
    pub priority: Option<u8>,
}

/// AF object.
#[derive(Clone, Debug, Deserialize)]
pub struct Af {
    /// "luks1".
    #[serde(rename = "type")]
    pub kind: String,
    /// Anti-forensic stripes of the area (4000 for LUKS2).
    pub stripes: u32,
    /// Hash of the anti-forensic diffusion (`sha256`, ...).
    pub hash: String,
}

/// Keyslot area object.
#[derive(Clone, Debug, Deserialize)]
pub struct Area {
    /// "raw" (or reencryption types).
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset on the device.
    pub offset: U64Str,
    /// Byte length.
    pub size: U64Str,
    /// Cipher spec for "raw".
    pub encryption: Option<String>,
    /// Cipher key size for "raw".
    pub key_size: Option<u32>,
}

/// KDF object.
#[derive(Clone, Debug, Deserialize)]
#[serde(tag = "type")]
pub enum KdfJson {
    /// PBKDF2.
    #[serde(rename = "pbkdf2")]
    Pbkdf2 {
        /// PBKDF2's hash (`sha256`, ...).
        hash: String,
        /// PBKDF2 iterations.
        iterations: u32,
        /// Base64 salt.
        salt: String,
    },
    /// Argon2i.
    #[serde(rename = "argon2i")]
    Argon2i {
        /// Time cost.
        time: u32,
        /// Memory KiB.
        memory: u32,
        /// Argon2 lanes (`cpus` in the JSON).
        cpus: u32,
        /// Base64 salt.
        salt: String,
    },
    /// Argon2id.
    #[serde(rename = "argon2id")]
    Argon2id {
        /// Time cost.
        time: u32,
        /// Memory KiB.
        memory: u32,
        /// Argon2 lanes (`cpus` in the JSON).
        cpus: u32,
        /// Base64 salt.
        salt: String,
    },
    /// Anything else.
    #[serde(other)]
    Other,
}

/// Token object (opaque beyond type and keyslots).
#[derive(Clone, Debug, Deserialize)]
pub struct Token {
    /// Token type.
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslot ids.
    pub keyslots: Vec<String>,
}

/// A segment's size: a number of bytes or "dynamic".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SegmentSize {
    /// Up to the end of the device.
    Dynamic,
    /// Fixed size in bytes.
    Bytes(u64),
}

impl<'de> Deserialize<'de> for SegmentSize {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        if s == "dynamic" {
            return Ok(Self::Dynamic);
        }
        if s.is_empty() || s.len() > 20 || !s.bytes().all(|b| b.is_ascii_digit()) {
            return Err(serde::de::Error::custom(format!(
                "segment size must be \"dynamic\" or a decimal string, got {s:?}"
            )));
        }
        s.parse()
            .map(Self::Bytes)
            .map_err(|_| serde::de::Error::custom("segment size out of range"))
    }
}

/// Segment object.
#[derive(Clone, Debug, Deserialize)]
pub struct Segment {
    /// "crypt" or "linear".
    #[serde(rename = "type")]
    pub kind: String,
    /// Byte offset.
    pub offset: U64Str,
    /// Length of the segment: bytes, or `dynamic` (to the end of the device).
    pub size: SegmentSize,
    /// IV tweak (crypt).
    pub iv_tweak: Option<U64Str>,
    /// Cipher spec (crypt).
    pub encryption: Option<String>,
    /// Sector size (crypt).
    pub sector_size: Option<u32>,
    /// Integrity object, if any (kept opaque).
    pub integrity: Option<serde_json::Value>,
    /// Segment flags (e.g. reencryption markers).
    pub flags: Option<Vec<String>>,
}

/// Digest object.
#[derive(Clone, Debug, Deserialize)]
pub struct Digest {
    /// "pbkdf2".
    #[serde(rename = "type")]
    pub kind: String,
    /// Keyslot ids.
    pub keyslots: Vec<String>,
    /// Segment ids.
    pub segments: Vec<String>,
    /// The digest's hash (pbkdf2 digests).
    pub hash: Option<String>,
    /// The digest's PBKDF2 iterations.
    pub iterations: Option<u32>,
    /// Base64 salt.
    pub salt: Option<String>,
    /// Base64 digest.
    pub digest: Option<String>,
}

/// Config object.
#[derive(Clone, Debug, Deserialize)]
pub struct Config {
    /// JSON area size.
    pub json_size: U64Str,
    /// Keyslots area size.
    pub keyslots_size: U64Str,
    /// Persistent flags.
    pub flags: Option<Vec<String>>,
    /// Features a reader must support to use the volume (`mandatory`).
    pub requirements: Option<Requirements>,
}

/// Requirements object.
#[derive(Clone, Debug, Deserialize)]
pub struct Requirements {
    /// Mandatory requirements.
    pub mandatory: Option<Vec<String>>,
}

/// Largest id of keyslots, tokens, segments and digests (cryptsetup: 32 keyslots).
pub const MAX_ID: u32 = 31;
/// Most array entries accepted in `keyslots`/`segments` lists and flags.
pub const MAX_LIST: usize = 64;

/// Parses an object id ("0".."31").
pub fn parse_id(s: &str) -> Option<u32> {
    if s.is_empty() || s.len() > 2 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok().filter(|&n| n <= MAX_ID)
}

/// A structural problem found by [`Metadata::validate`].
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub String);

impl Metadata {
    /// Parses JSON text (already bounded by the JSON area size).
    pub fn parse(json: &str) -> Result<Self, serde_json::Error> {
        serde_json::from_str(json)
    }

    /// Checks ids, sizes and ranges the way cryptsetup's validation does, for a header of
    /// `hdr_size` bytes. Bounds every size so later arithmetic cannot overflow.
    pub fn validate(&self, hdr_size: u64) -> Result<(), Invalid> {
        let bad = |s: String| Err(Invalid(s));
        if self.config.json_size.0 != hdr_size - 4096 {
            return bad(format!(
                "config.json_size {} does not match the header's JSON area ({} bytes)",
                self.config.json_size.0,
                hdr_size - 4096
            ));
        }
        let meta_end = 2 * hdr_size;
        let ks_end = match meta_end.checked_add(self.config.keyslots_size.0) {
            Some(e) if self.config.keyslots_size.0.is_multiple_of(4096) => e,
            _ => {
                return bad(format!(
                    "config.keyslots_size {} is not a multiple of 4096 or overflows",
                    self.config.keyslots_size.0
                ))
            }
        };
        for (what, ids) in [
            ("keyslot", self.keyslots.keys().collect::<Vec<_>>()),
            ("token", self.tokens.keys().collect()),
            ("segment", self.segments.keys().collect()),
            ("digest", self.digests.keys().collect()),
        ] {
            for id in ids {
                if parse_id(id).is_none() {
                    return bad(format!("{what} id {id:?} is not a number 0..={MAX_ID}"));
                }
            }
        }
        for (id, ks) in &self.keyslots {
            if ks.key_size == 0 || ks.key_size > 512 {
                return bad(format!(
                    "keyslot {id}: key_size {} outside 1..=512",
                    ks.key_size
                ));
            }
            let a = &ks.area;
            let end = a.offset.0.checked_add(a.size.0);
            if a.offset.0 < meta_end || end.is_none_or(|e| e > ks_end) {
                return bad(format!(
                    "keyslot {id}: area [{}, +{}) is outside the keyslots area [{meta_end}, {ks_end})",
                    a.offset.0, a.size.0
                ));
            }
            if ks.kind == "luks2" {
                let Some(af) = &ks.af else {
                    return bad(format!("keyslot {id}: missing af object"));
                };
                if af.stripes == 0 || af.stripes > 65_536 {
                    return bad(format!(
                        "keyslot {id}: af.stripes {} outside 1..=65536",
                        af.stripes
                    ));
                }
                let need = (ks.key_size as u64 * af.stripes as u64).div_ceil(512) * 512;
                if need > a.size.0 {
                    return bad(format!(
                        "keyslot {id}: area size {} is smaller than key_size x stripes ({need})",
                        a.size.0
                    ));
                }
                if a.kind != "raw" {
                    return bad(format!("keyslot {id}: area type {:?} is not raw", a.kind));
                }
                match a.key_size {
                    Some(k) if k > 0 && k <= 512 => {}
                    _ => {
                        return bad(format!(
                            "keyslot {id}: area.key_size missing or outside 1..=512"
                        ))
                    }
                }
                if a.encryption.is_none() {
                    return bad(format!("keyslot {id}: area.encryption missing"));
                }
                if ks.kdf.is_none() {
                    return bad(format!("keyslot {id}: kdf missing"));
                }
            }
        }
        // No two keyslot areas may overlap (cryptsetup's interval check).
        let areas: Vec<(&String, u64, u64)> = self
            .keyslots
            .iter()
            .map(|(id, ks)| (id, ks.area.offset.0, ks.area.offset.0 + ks.area.size.0))
            .collect();
        for (i, &(a, a0, a1)) in areas.iter().enumerate() {
            for &(b, b0, b1) in &areas[i + 1..] {
                if a0 < b1 && b0 < a1 {
                    return bad(format!(
                        "keyslot {b}: area [{b0}, +{}) overlaps keyslot {a}'s area [{a0}, +{})",
                        b1 - b0,
                        a1 - a0
                    ));
                }
            }
        }
        for (id, d) in &self.digests {
            if d.keyslots.len() > MAX_LIST || d.segments.len() > MAX_LIST {
                return bad(format!("digest {id}: too many keyslots/segments"));
            }
            for k in d.keyslots.iter().chain(d.segments.iter()) {
                if parse_id(k).is_none() {
                    return bad(format!("digest {id}: reference {k:?} is not an id"));
                }
            }
            for k in &d.keyslots {
                if !self.keyslots.contains_key(k) {
                    return bad(format!("digest {id}: keyslot {k} does not exist"));
                }
            }
        }
        for (id, t) in &self.tokens {
            if t.keyslots.len() > MAX_LIST {
                return bad(format!("token {id}: too many keyslots"));
            }
        }
        for (id, s) in &self.segments {
            if s.kind == "crypt" {
                match s.sector_size {
                    Some(512 | 1024 | 2048 | 4096) => {}
                    other => {
                        return bad(format!(
                            "segment {id}: sector_size {other:?} is not 512..4096"
                        ))
                    }
                }
                if s.encryption.is_none() {
                    return bad(format!("segment {id}: encryption missing"));
                }
            }
        }
        Ok(())
    }

    /// Mandatory requirements listed in the config.
    pub fn mandatory_requirements(&self) -> &[String] {
        self.config
            .requirements
            .as_ref()
            .and_then(|r| r.mandatory.as_deref())
            .unwrap_or(&[])
    }
}

/// Prints a JSON value the way json-c's `JSON_C_TO_STRING_PRETTY` does (cryptsetup's
/// `--dump-json-metadata` layout): two-space indent, `"key":value`.
pub fn to_jsonc_pretty(v: &serde_json::Value) -> String {
    fn go(v: &serde_json::Value, depth: usize, out: &mut String) {
        use serde_json::Value;
        let ind = |d: usize| "  ".repeat(d);
        match v {
            Value::Object(m) => {
                out.push_str("{\n");
                let n = m.len();
                for (i, (k, val)) in m.iter().enumerate() {
                    out.push_str(&ind(depth + 1));
                    out.push_str(&serde_json::to_string(k).unwrap_or_default());
                    out.push(':');
                    go(val, depth + 1, out);
                    if i + 1 < n {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&ind(depth));
                out.push('}');
            }
            Value::Array(a) => {
                out.push_str("[\n");
                let n = a.len();
                for (i, val) in a.iter().enumerate() {
                    out.push_str(&ind(depth + 1));
                    go(val, depth + 1, out);
                    if i + 1 < n {
                        out.push(',');
                    }
                    out.push('\n');
                }
                out.push_str(&ind(depth));
                out.push(']');
            }
            other => out.push_str(&serde_json::to_string(other).unwrap_or_default()),
        }
    }
    let mut s = String::new();
    go(v, 0, &mut s);
    s
}
