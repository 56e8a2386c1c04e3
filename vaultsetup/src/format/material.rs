//! What the vault hands the host for a keyslot or digest: parameters and opaque bytes.
//!
//! None of it is secret: the area is AF material already encrypted with the
//! passphrase-derived key (inside the vault), the KDF salt and costs are public header
//! fields, and the digest is a PBKDF2 of the volume key (as stored in every header).

use crate::kdf::Argon2Variant;

/// A keyslot's key derivation parameters (as the vault used them).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KdfParams {
    /// PBKDF2-HMAC with `hash` (LUKS1 keyslots: must be the header's hash).
    Pbkdf2 {
        /// PRF hash name (`sha256`, ...).
        hash: String,
        /// Iteration count.
        iterations: u32,
        /// Salt (32 bytes in both formats as cryptsetup writes them).
        salt: Vec<u8>,
    },
    /// Argon2i / Argon2id (LUKS2 only).
    Argon2 {
        /// Argon2i or Argon2id.
        variant: Argon2Variant,
        /// Time cost.
        time: u32,
        /// Memory cost in KiB.
        memory_kib: u32,
        /// Lanes (`cpus` in the JSON).
        lanes: u32,
        /// Salt (32 bytes).
        salt: Vec<u8>,
    },
}

/// The anti-forensic splitter parameters of a keyslot.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AfParams {
    /// Number of stripes (cryptsetup: 4000).
    pub stripes: u32,
    /// Diffusion hash name (cryptsetup: `sha256`, or the LUKS1 header hash).
    pub hash: String,
}

impl Default for AfParams {
    fn default() -> Self {
        Self {
            stripes: 4000,
            hash: "sha256".into(),
        }
    }
}

/// One keyslot as the vault produced it.
#[derive(Clone, PartialEq, Eq)]
pub struct KeyslotMaterial {
    /// Length of the volume key stored in the slot, bytes.
    pub key_size: u32,
    /// AF splitter parameters.
    pub af: AfParams,
    /// Cipher of the area (LUKS2 `area.encryption`; LUKS1: the header cipher).
    pub area_cipher: String,
    /// Key length of the area cipher, bytes.
    pub area_key_size: u32,
    /// The KDF the passphrase went through.
    pub kdf: KdfParams,
    /// LUKS2 priority (None: normal, written as no `priority` member).
    pub priority: Option<u8>,
    /// Encrypted AF material: at least `key_size * stripes` bytes, at most the area size;
    /// the rest of the area is written as zeros.
    pub area: Vec<u8>,
}

impl core::fmt::Debug for KeyslotMaterial {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("KeyslotMaterial")
            .field("key_size", &self.key_size)
            .field("af", &self.af)
            .field("area_cipher", &self.area_cipher)
            .field("area_key_size", &self.area_key_size)
            .field("kdf", &self.kdf)
            .field("priority", &self.priority)
            .field("area", &format_args!("<{} bytes>", self.area.len()))
            .finish()
    }
}

impl KeyslotMaterial {
    /// `key_size * stripes`: the AF material length the area must hold.
    pub fn material_len(&self) -> u64 {
        self.key_size as u64 * self.af.stripes as u64
    }
}

/// The PBKDF2 digest of the volume key (LUKS2 `digests` object, LUKS1 `mk-digest`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DigestParams {
    /// Hash name (LUKS1: the header hash).
    pub hash: String,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt (32 bytes).
    pub salt: Vec<u8>,
    /// The digest (LUKS2: hash length; LUKS1: 20 bytes).
    pub digest: Vec<u8>,
}
