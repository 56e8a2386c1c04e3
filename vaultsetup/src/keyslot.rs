//! Keyslot unlock: KDF → keyslot-area decryption (through `vault_vm::engine`) → AF merge
//! → digest check, for LUKS1 and LUKS2.

use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};

use crate::af::{self, AfError};
use crate::device::{Device, DeviceError};
use crate::exit::{ExitCode, HasExitCode};
use crate::kdf::{Argon2Variant, Hash, Kdf, KdfError, KdfLimits};
use crate::luks1::Luks1Header;
use crate::luks2::json::{parse_id, KdfJson};
use crate::luks2::Luks2Header;
use crate::secret::{Passphrase, SecretBuf, VolumeKey};
use crate::util::base64_decode;
use crate::volume::Volume;

/// Errors of unlocking.
#[derive(Debug, thiserror::Error)]
pub enum UnlockError {
    /// No keyslot opened with this passphrase.
    #[error("No key available with this passphrase.")]
    NoKey,
    /// The requested keyslot is not active.
    #[error("Keyslot {0} is not active.")]
    SlotInactive(u32),
    /// The requested keyslot number does not exist in this format.
    #[error("Key slot {slot} is invalid (this LUKS version has slots 0..={max}).")]
    SlotOutOfRange {
        /// The keyslot number asked for.
        slot: u32,
        /// The highest keyslot number this LUKS version has.
        max: u32,
    },
    /// The volume has no active keyslots at all.
    #[error("Device has no active keyslots.")]
    NoActiveSlots,
    /// No keyslot that may open the data segment fits: the requested keyslot (or the
    /// one the passphrase opens) is a LUKS2 keyslot not bound to the data segment
    /// (`cryptsetup luksAddKey --unbound`), whose key is not the volume key.
    /// cryptsetup's message and exit code (1).
    #[error("No usable keyslot is available.")]
    NoUsableKeyslot,
    /// The keyslot's area is not fully on the device.
    #[error("Keyslot {slot} area [{offset}, +{len}) is cut short: the device has only {size} bytes (truncated image?).")]
    AreaCutShort {
        /// The keyslot whose area is cut short.
        slot: u32,
        /// Byte offset of the keyslot area on the device.
        offset: u64,
        /// Bytes of key material the area must hold (rounded up to whole sectors).
        len: u64,
        /// Size of the device in bytes.
        size: u64,
    },
    /// KDF refused or failed.
    #[error("Keyslot {slot}: {source}")]
    Kdf {
        /// The keyslot whose KDF was refused or failed.
        slot: u32,
        /// Why the KDF refused its parameters or failed.
        #[source]
        source: KdfError,
    },
    /// The volume-key digest's PBKDF2 cost is refused.
    #[error("Volume key digest: {0}")]
    DigestKdf(#[source] KdfError),
    /// The keyslot cipher is not supported by the engine.
    #[error("Keyslot {slot}: cipher {spec:?} with a {key_bits}-bit key is not usable: {source}")]
    Cipher {
        /// The keyslot whose area cipher was refused.
        slot: u32,
        /// The keyslot area's cipher spec as the header names it.
        spec: String,
        /// Key size in bits.
        key_bits: usize,
        /// Why the engine refused the spec, key or geometry.
        #[source]
        source: vault_vm::engine::EngineError,
    },
    /// AF merge failed.
    #[error("Keyslot {slot}: {source}")]
    Af {
        /// The keyslot whose split key material could not be merged.
        slot: u32,
        /// Why the AF merge failed.
        #[source]
        source: AfError,
    },
    /// Something about the slot/digest is unsupported or malformed.
    #[error("Keyslot {slot}: {why}")]
    Unsupported {
        /// The keyslot (or, for a digest, the keyslot being checked against it).
        slot: u32,
        /// What is unsupported or malformed, in words.
        why: String,
    },
    /// A LUKS2 requirement we do not implement.
    #[error(
        "LUKS2 requirement {0:?} is not supported by vaultsetup (finish it with cryptsetup first)."
    )]
    Requirement(String),
    /// Reading the keyslot area or the header from the device failed.
    #[error(transparent)]
    Device(#[from] DeviceError),
    /// The keyslot's area lies outside the keyslots area of the header (it would
    /// overlap the header or the data).
    #[error("Keyslot {slot} area [{offset}, +{len}) is outside the keyslots area [{start}, {end}): refusing it (corrupted or hostile header?).")]
    AreaOutOfRange {
        /// The keyslot.
        slot: u32,
        /// Byte offset of its area.
        offset: u64,
        /// Bytes of key material.
        len: u64,
        /// Start of the keyslots area (end of the header).
        start: u64,
        /// End of the keyslots area (start of the data, or of what follows).
        end: u64,
    },
}

impl HasExitCode for UnlockError {
    fn exit_code(&self) -> ExitCode {
        match self {
            Self::NoKey => ExitCode::NoPermission,
            Self::Kdf { source, .. } => source.exit_code(),
            Self::DigestKdf(e) => e.exit_code(),
            Self::Device(e) => e.exit_code(),
            _ => ExitCode::WrongParameters,
        }
    }
}

/// Options of an unlock.
#[derive(Clone, Debug, Default)]
pub struct UnlockOptions {
    /// Try only this keyslot.
    pub keyslot: Option<u32>,
    /// KDF cost limits.
    pub limits: KdfLimits,
    /// Also open LUKS2 keyslots that are not bound to the data segment, checked against
    /// their own digest. Their key is *not* the volume key: only for testing such a
    /// keyslot's passphrase (`open --test-passphrase --key-slot N` or `--unbound`, as
    /// cryptsetup allows), never for activation.
    pub allow_unbound: bool,
}

/// A successfully unlocked volume key.
#[derive(Debug)]
pub struct Unlocked {
    /// The keyslot that opened.
    pub keyslot: u32,
    /// The volume key.
    pub key: VolumeKey,
}

/// Everything needed to open one keyslot, format independent.
#[derive(Debug)]
struct SlotPlan {
    slot: u32,
    kdf: Kdf,
    area_offset: u64,
    area_cipher: String,
    area_key_len: usize,
    key_len: usize,
    stripes: u32,
    af_hash: Hash,
}

/// Result of trying one slot: Ok(Some) opened, Ok(None) wrong passphrase.
fn try_slot(
    dev: &Device,
    plan: &SlotPlan,
    pass: &[u8],
    limits: &KdfLimits,
    check: &dyn Fn(&[u8]) -> Result<bool, UnlockError>,
) -> Result<Option<VolumeKey>, UnlockError> {
    let slot = plan.slot;
    let material_len =
        plan.key_len
            .checked_mul(plan.stripes as usize)
            .ok_or(UnlockError::Unsupported {
                slot,
                why: "key size x stripes overflows".into(),
            })?;
    let read_len = material_len.div_ceil(512) * 512;
    match plan.area_offset.checked_add(read_len as u64) {
        Some(end) if end <= dev.size() => {}
        _ => {
            return Err(UnlockError::AreaCutShort {
                slot,
                offset: plan.area_offset,
                len: read_len as u64,
                size: dev.size(),
            })
        }
    }
    // Validate the cipher before spending KDF time.
    let spec = CipherSpec::parse(&plan.area_cipher).map_err(|source| UnlockError::Cipher {
        slot,
        spec: plan.area_cipher.clone(),
        key_bits: plan.area_key_len * 8,
        source,
    })?;
    plan.kdf
        .check(limits)
        .map_err(|source| UnlockError::Kdf { slot, source })?;
    let mut area = SecretBuf::zeroed(read_len);
    dev.read_exact_at(plan.area_offset, area.as_mut_slice())?;
    let derived = plan
        .kdf
        .derive(pass, plan.area_key_len, limits)
        .map_err(|source| UnlockError::Kdf { slot, source })?;
    let cipher_err = |source: vault_vm::engine::EngineError| UnlockError::Cipher {
        slot,
        spec: plan.area_cipher.clone(),
        key_bits: plan.area_key_len * 8,
        source,
    };
    let cipher = SectorCipher::new(spec, derived.as_slice()).map_err(cipher_err)?;
    drop(derived);
    let geom = Geometry::new(512, false, 0).map_err(cipher_err)?;
    cipher
        .decrypt(&geom, 0, area.as_mut_slice())
        .map_err(cipher_err)?;
    drop(cipher);
    let key = af::merge(
        &area.as_slice()[..material_len],
        plan.key_len,
        plan.stripes,
        plan.af_hash,
    )
    .map_err(|source| UnlockError::Af { slot, source })?;
    drop(area);
    if check(key.as_slice())? {
        Ok(Some(VolumeKey::new(key)))
    } else {
        Ok(None)
    }
}

fn ct_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Checks a candidate volume key of a keyslot against the volume's digest.
type DigestCheck<'a> = dyn Fn(u32, &[u8]) -> Result<bool, UnlockError> + 'a;

/// Tries the plans in order; the first that opens wins. When none opens and some slot
/// failed for a reason other than a wrong passphrase, that (first) error is returned.
fn run_plans(
    dev: &Device,
    plans: Vec<Result<SlotPlan, UnlockError>>,
    pass: &[u8],
    limits: &KdfLimits,
    check: &DigestCheck<'_>,
) -> Result<Unlocked, UnlockError> {
    if plans.is_empty() {
        return Err(UnlockError::NoActiveSlots);
    }
    let mut first_err = None;
    for plan in plans {
        let r = plan.and_then(|p| {
            try_slot(dev, &p, pass, limits, &|k| check(p.slot, k)).map(|o| (p.slot, o))
        });
        match r {
            Ok((slot, Some(key))) => return Ok(Unlocked { keyslot: slot, key }),
            Ok((_, None)) => {}
            Err(e) => {
                if first_err.is_none() {
                    first_err = Some(e);
                }
            }
        }
    }
    Err(first_err.unwrap_or(UnlockError::NoKey))
}

fn luks1_plans(
    h: &Luks1Header,
    keyslot: Option<u32>,
) -> Result<Vec<Result<SlotPlan, UnlockError>>, UnlockError> {
    let slots: Vec<usize> = match keyslot {
        Some(s) if s as usize >= crate::luks1::NUM_KEYSLOTS => {
            return Err(UnlockError::SlotOutOfRange { slot: s, max: 7 })
        }
        Some(s) if !h.keyslots[s as usize].active => return Err(UnlockError::SlotInactive(s)),
        Some(s) => vec![s as usize],
        None => (0..crate::luks1::NUM_KEYSLOTS)
            .filter(|&i| h.keyslots[i].active)
            .collect(),
    };
    Ok(slots
        .into_iter()
        .map(|i| {
            let (off, _) = h.area(i);
            Ok(SlotPlan {
                slot: i as u32,
                kdf: h.kdf(i),
                area_offset: off,
                area_cipher: h.cipher_spec(),
                area_key_len: h.key_bytes as usize,
                key_len: h.key_bytes as usize,
                stripes: h.keyslots[i].stripes,
                af_hash: h.hash,
            })
        })
        .collect())
}

fn b64(slot: u32, what: &str, s: &str) -> Result<Vec<u8>, UnlockError> {
    base64_decode(s).ok_or_else(|| UnlockError::Unsupported {
        slot,
        why: format!("{what} is not valid base64"),
    })
}

fn luks2_plan(h: &Luks2Header, id: &str) -> Result<SlotPlan, UnlockError> {
    let slot = parse_id(id).unwrap_or(u32::MAX);
    let ks = &h.meta.keyslots[id];
    let unsupported = |why: String| UnlockError::Unsupported { slot, why };
    if ks.kind != "luks2" {
        return Err(unsupported(format!(
            "keyslot type {:?} cannot be opened",
            ks.kind
        )));
    }
    let af = ks.af.as_ref().ok_or_else(|| unsupported("no af".into()))?;
    if af.kind != "luks1" {
        return Err(unsupported(format!(
            "AF type {:?} is not supported",
            af.kind
        )));
    }
    let af_hash = Hash::from_name(&af.hash).map_err(|source| UnlockError::Kdf { slot, source })?;
    let kdf = match ks
        .kdf
        .as_ref()
        .ok_or_else(|| unsupported("no kdf".into()))?
    {
        KdfJson::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => Kdf::Pbkdf2 {
            hash: Hash::from_name(hash).map_err(|source| UnlockError::Kdf { slot, source })?,
            iterations: *iterations,
            salt: b64(slot, "kdf salt", salt)?,
        },
        KdfJson::Argon2i {
            time,
            memory,
            cpus,
            salt,
        }
        | KdfJson::Argon2id {
            time,
            memory,
            cpus,
            salt,
        } => Kdf::Argon2 {
            variant: if matches!(ks.kdf, Some(KdfJson::Argon2i { .. })) {
                Argon2Variant::Argon2i
            } else {
                Argon2Variant::Argon2id
            },
            time: *time,
            memory_kib: *memory,
            lanes: *cpus,
            salt: b64(slot, "kdf salt", salt)?,
        },
        KdfJson::Other => return Err(unsupported("unknown KDF type".into())),
    };
    Ok(SlotPlan {
        slot,
        kdf,
        area_offset: ks.area.offset.0,
        area_cipher: ks.area.encryption.clone().unwrap_or_default(),
        area_key_len: ks.area.key_size.unwrap_or(0) as usize,
        key_len: ks.key_size as usize,
        stripes: af.stripes,
        af_hash,
    })
}

/// Id of the LUKS2 data segment: the lowest-numbered segment (the only one, for the
/// volumes vaultsetup activates).
fn luks2_data_segment(h: &Luks2Header) -> Option<&str> {
    h.meta.segments.keys().next().map(String::as_str)
}

/// Whether keyslot `id` is bound to segment `seg`: some digest lists both.
fn luks2_bound(h: &Luks2Header, id: &str, seg: Option<&str>) -> bool {
    let Some(seg) = seg else {
        return false;
    };
    h.meta
        .digests
        .values()
        .any(|d| d.keyslots.iter().any(|k| k == id) && d.segments.iter().any(|s| s == seg))
}

/// Keyslots to try on a LUKS2 volume, as cryptsetup picks them.
struct Luks2Plans {
    /// Keyslots bound to the data segment (or, with `allow_unbound`, any keyslot), in
    /// the order to try them; each is checked against its digest.
    plans: Vec<Result<SlotPlan, UnlockError>>,
    /// Keyslots not bound to the data segment, not tried for the volume key: only to
    /// tell "No usable keyslot" from a wrong passphrase when no bound keyslot opens.
    unbound: Vec<Result<SlotPlan, UnlockError>>,
}

fn luks2_plans(
    h: &Luks2Header,
    keyslot: Option<u32>,
    allow_unbound: bool,
) -> Result<Luks2Plans, UnlockError> {
    if let Some(r) = h.meta.mandatory_requirements().first() {
        return Err(UnlockError::Requirement(r.clone()));
    }
    let seg = luks2_data_segment(h);
    let mut ids: Vec<(u32, u8, &String)> = h
        .meta
        .keyslots
        .iter()
        .filter_map(|(id, ks)| parse_id(id).map(|n| (n, ks.priority.unwrap_or(1), id)))
        .collect();
    match keyslot {
        Some(s) if s > crate::luks2::json::MAX_ID => {
            return Err(UnlockError::SlotOutOfRange {
                slot: s,
                max: crate::luks2::json::MAX_ID,
            })
        }
        Some(s) => {
            ids.retain(|&(n, _, _)| n == s);
            let Some(&(_, _, id)) = ids.first() else {
                return Err(UnlockError::SlotInactive(s));
            };
            // cryptsetup refuses a named keyslot that cannot open the data segment
            // before any KDF work (LUKS2_keyslot_for_segment → -ENOENT).
            if !allow_unbound && !luks2_bound(h, id, seg) {
                return Err(UnlockError::NoUsableKeyslot);
            }
        }
        None => {
            ids.retain(|&(_, p, _)| p != 0);
            // High priority first, then normal; by id within a priority.
            ids.sort_by_key(|&(n, p, _)| (core::cmp::Reverse(p), n));
        }
    }
    let (bound, unbound): (Vec<_>, Vec<_>) = ids
        .into_iter()
        .partition(|&(_, _, id)| allow_unbound || luks2_bound(h, id, seg));
    let plans: Vec<_> = bound
        .into_iter()
        .map(|(_, _, id)| luks2_plan(h, id))
        .collect();
    let unbound: Vec<_> = unbound
        .into_iter()
        .map(|(_, _, id)| luks2_plan(h, id))
        .collect();
    if plans.is_empty() && !unbound.is_empty() {
        return Err(UnlockError::NoUsableKeyslot);
    }
    Ok(Luks2Plans { plans, unbound })
}

/// Checks `key`, recovered from keyslot `slot`, against the digest of that keyslot; with
/// `segment`, only a digest that also covers that segment counts.
fn luks2_check(
    h: &Luks2Header,
    slot: u32,
    key: &[u8],
    limits: &KdfLimits,
    segment: Option<&str>,
) -> Result<bool, UnlockError> {
    let d = luks2_digest(h, slot, segment)?;
    let kdf = Kdf::Pbkdf2 {
        hash: d.hash,
        iterations: d.iterations,
        salt: d.salt,
    };
    let calc = kdf
        .derive(key, d.value.len(), limits)
        .map_err(|source| UnlockError::Kdf { slot, source })?;
    Ok(ct_eq(calc.as_slice(), &d.value))
}

/// Recovers the volume key of `vol` (read from `dev`) with `passphrase`.
///
/// LUKS2: only keyslots bound to the data segment (a digest lists both) are tried,
/// unless `opts.allow_unbound`. When none of them opens and the passphrase opens an
/// unbound keyslot instead, the answer is [`UnlockError::NoUsableKeyslot`] (exit 1, as
/// cryptsetup answers for such a keyslot) rather than a wrong passphrase; a named
/// unbound keyslot (`opts.keyslot`) is refused before any KDF work.
///
/// Afterwards the stack region the KDF, HMAC, hash and cipher code used is zeroed
/// ([`crate::secret::wipe_stack`]): the key is then only in the returned buffer.
pub fn unlock(
    dev: &Device,
    vol: &Volume,
    passphrase: &Passphrase,
    opts: &UnlockOptions,
) -> Result<Unlocked, UnlockError> {
    let r = unlock_inner(dev, vol, passphrase, opts);
    crate::secret::wipe_stack();
    r
}

#[inline(never)]
fn unlock_inner(
    dev: &Device,
    vol: &Volume,
    passphrase: &Passphrase,
    opts: &UnlockOptions,
) -> Result<Unlocked, UnlockError> {
    let pass = passphrase.as_bytes();
    let limits = opts.limits;
    match vol {
        Volume::Luks1(h) => {
            let plans = luks1_plans(h, opts.keyslot)?;
            // The digest iteration count is checked before any keyslot work.
            let digest_kdf = Kdf::Pbkdf2 {
                hash: h.hash,
                iterations: h.mk_digest_iter,
                salt: h.mk_digest_salt.to_vec(),
            };
            digest_kdf.check(&limits).map_err(UnlockError::DigestKdf)?;
            run_plans(dev, plans, pass, &limits, &|slot, key| {
                let calc = digest_kdf
                    .derive(key, 20, &limits)
                    .map_err(|source| UnlockError::Kdf { slot, source })?;
                Ok(ct_eq(calc.as_slice(), &h.mk_digest))
            })
        }
        Volume::Luks2(h) => {
            let Luks2Plans { plans, unbound } = luks2_plans(h, opts.keyslot, opts.allow_unbound)?;
            let seg = if opts.allow_unbound {
                None
            } else {
                luks2_data_segment(h)
            };
            let r = run_plans(dev, plans, pass, &limits, &|slot, key| {
                luks2_check(h, slot, key, &limits, seg)
            });
            match r {
                Err(UnlockError::NoKey) if !unbound.is_empty() => {
                    // Does the passphrase open an unbound keyslot? Then say that no
                    // keyslot usable for the volume fits it; its key is dropped unused.
                    let own = run_plans(dev, unbound, pass, &limits, &|slot, key| {
                        luks2_check(h, slot, key, &limits, None)
                    });
                    match own {
                        Ok(_) => Err(UnlockError::NoUsableKeyslot),
                        Err(_) => Err(UnlockError::NoKey),
                    }
                }
                r => r,
            }
        }
    }
}

// ---------------------------------------------------------------------------------
// In-vault unlock: the keyslots as typed parameters plus their encrypted areas, for the
// daemon to unlock in the vault. This process runs no KDF, AF merge or digest.
// ---------------------------------------------------------------------------------

use vmvault_proto::keyslot::{HashAlg, HexBytes, KdfSpec, KeyslotCandidate, KeyslotSpec};
use vmvault_proto::types::KeySize;

/// One keyslot for the vault: its typed parameters and its encrypted area as read from
/// the device (ciphertext only; not a secret of this process).
pub struct VaultKeyslot {
    /// Parameters and area length, for the protocol.
    pub candidate: KeyslotCandidate,
    /// The encrypted area.
    pub area: Vec<u8>,
}

impl std::fmt::Debug for VaultKeyslot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultKeyslot")
            .field("keyslot", &self.candidate.keyslot)
            .field("area_len", &self.area.len())
            .finish_non_exhaustive()
    }
}

/// The keyslots to send, as cryptsetup picks them (see [`unlock`]).
#[derive(Debug)]
pub struct VaultPlans {
    /// Keyslots that may open the data segment, in the order to try them; a keyslot
    /// that cannot be sent (unsupported parameters, area out of range, KDF cost above
    /// the limits) is the error it gives.
    pub bound: Vec<Result<VaultKeyslot, UnlockError>>,
    /// LUKS2 keyslots not bound to the data segment, each with its own digest: tried
    /// only to tell "No usable keyslot" from a wrong passphrase.
    pub unbound: Vec<Result<VaultKeyslot, UnlockError>>,
}

pub(crate) fn hash_alg(h: Hash) -> HashAlg {
    match h {
        Hash::Sha1 => HashAlg::Sha1,
        Hash::Sha224 => HashAlg::Sha224,
        Hash::Sha256 => HashAlg::Sha256,
        Hash::Sha384 => HashAlg::Sha384,
        Hash::Sha512 => HashAlg::Sha512,
        Hash::Ripemd160 => HashAlg::Ripemd160,
    }
}

/// A volume's digest as the vault checks it: PBKDF2 hash, iterations, salt, value.
#[derive(Debug)]
struct DigestPlan {
    hash: Hash,
    iterations: u32,
    salt: Vec<u8>,
    value: Vec<u8>,
}

/// The range keyslot areas must lie in: after the header, before the data (or the end
/// of the keyslots area).
fn keyslots_range(vol: &Volume) -> (u64, u64) {
    match vol {
        // The LUKS1 header is 592 bytes; key material starts after it and ends before
        // the payload (when the payload is on this device).
        Volume::Luks1(h) => (
            crate::luks1::PHDR_SIZE as u64,
            match h.payload_offset {
                0 => u64::MAX,
                p => u64::from(p) * 512,
            },
        ),
        Volume::Luks2(h) => {
            let start = 2 * h.bin.hdr_size;
            (start, start.saturating_add(h.meta.config.keyslots_size.0))
        }
    }
}

/// Reads `plan`'s area from `dev` (after the range and size checks) and types its
/// parameters with `digest`.
fn vault_keyslot(
    dev: &Device,
    vol: &Volume,
    plan: &SlotPlan,
    digest: &DigestPlan,
    limits: &KdfLimits,
) -> Result<VaultKeyslot, UnlockError> {
    let slot = plan.slot;
    let unsupported = |why: String| UnlockError::Unsupported { slot, why };
    let key_size = KeySize::from_bytes(plan.key_len)
        .map_err(|e| unsupported(format!("volume key size: {e}")))?;
    let area_key_size = KeySize::from_bytes(plan.area_key_len)
        .map_err(|e| unsupported(format!("area key size: {e}")))?;
    let cipher_err = |source| UnlockError::Cipher {
        slot,
        spec: plan.area_cipher.clone(),
        key_bits: plan.area_key_len * 8,
        source,
    };
    CipherSpec::parse(&plan.area_cipher).map_err(cipher_err)?;
    let area_cipher = vmvault_proto::CipherSpec::parse(&plan.area_cipher)
        .map_err(|_| cipher_err(vault_vm::engine::EngineError::UnsupportedSpec))?;
    plan.kdf
        .check(limits)
        .map_err(|source| UnlockError::Kdf { slot, source })?;
    // The digest's PBKDF2 runs in the vault too: its cost is refused here as the host
    // unlock refuses it (a LUKS1 digest was checked once for all keyslots already).
    Kdf::Pbkdf2 {
        hash: digest.hash,
        iterations: digest.iterations,
        salt: digest.salt.clone(),
    }
    .check(limits)
    .map_err(|source| UnlockError::Kdf { slot, source })?;
    let (kdf, salt) = match &plan.kdf {
        Kdf::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => (
            KdfSpec::Pbkdf2 {
                hash: hash_alg(*hash),
                iterations: *iterations,
            },
            salt,
        ),
        Kdf::Argon2 {
            variant,
            time,
            memory_kib,
            lanes,
            salt,
        } => (
            match variant {
                Argon2Variant::Argon2i => KdfSpec::Argon2i {
                    time: *time,
                    memory_kib: *memory_kib,
                    lanes: *lanes,
                },
                Argon2Variant::Argon2id => KdfSpec::Argon2id {
                    time: *time,
                    memory_kib: *memory_kib,
                    lanes: *lanes,
                },
            },
            salt,
        ),
    };
    let hex =
        |what: &str, b: &[u8]| HexBytes::new(b).map_err(|e| unsupported(format!("{what}: {e}")));
    let spec = KeyslotSpec {
        kdf,
        salt: hex("kdf salt", salt)?,
        area_cipher,
        area_key_size,
        stripes: plan.stripes,
        af_hash: hash_alg(plan.af_hash),
        volume_key_size: key_size,
        digest_hash: hash_alg(digest.hash),
        digest_iterations: digest.iterations,
        digest_salt: hex("digest salt", &digest.salt)?,
        digest: hex("digest", &digest.value)?,
    };
    // Everything the vault would refuse is refused here, before any device read.
    spec.to_params().map_err(|e| unsupported(e.to_string()))?;
    let len = spec.area_len();
    let (start, end) = keyslots_range(vol);
    let area_end = plan.area_offset.checked_add(len);
    if plan.area_offset < start || area_end.is_none_or(|e| e > end) {
        return Err(UnlockError::AreaOutOfRange {
            slot,
            offset: plan.area_offset,
            len,
            start,
            end,
        });
    }
    if area_end.is_none_or(|e| e > dev.size()) {
        return Err(UnlockError::AreaCutShort {
            slot,
            offset: plan.area_offset,
            len,
            size: dev.size(),
        });
    }
    let mut area = vec![0u8; len as usize];
    dev.read_exact_at(plan.area_offset, &mut area)?;
    Ok(VaultKeyslot {
        candidate: KeyslotCandidate {
            keyslot: slot,
            spec,
            area_len: len,
        },
        area,
    })
}

/// The digest of LUKS2 keyslot `slot` (with `segment`: only one that also covers that
/// segment).
fn luks2_digest(
    h: &Luks2Header,
    slot: u32,
    segment: Option<&str>,
) -> Result<DigestPlan, UnlockError> {
    let id = slot.to_string();
    let unsupported = |why: String| UnlockError::Unsupported { slot, why };
    let Some(d) = h.meta.digests.values().find(|d| {
        d.keyslots.contains(&id) && segment.is_none_or(|s| d.segments.iter().any(|x| x == s))
    }) else {
        return Err(unsupported(match segment {
            Some(s) => format!("no digest binds this keyslot to data segment {s}"),
            None => "no digest is assigned to this keyslot".into(),
        }));
    };
    if d.kind != "pbkdf2" {
        return Err(unsupported(format!(
            "digest type {:?} is not supported",
            d.kind
        )));
    }
    let (Some(hash), Some(iterations), Some(salt), Some(digest)) =
        (&d.hash, d.iterations, &d.salt, &d.digest)
    else {
        return Err(unsupported(
            "digest is missing hash, iterations, salt or digest".into(),
        ));
    };
    let value = b64(slot, "digest", digest)?;
    if value.is_empty() || value.len() > 64 {
        return Err(unsupported(format!(
            "digest length {} outside 1..=64",
            value.len()
        )));
    }
    Ok(DigestPlan {
        hash: Hash::from_name(hash).map_err(|source| UnlockError::Kdf { slot, source })?,
        iterations,
        salt: b64(slot, "digest salt", salt)?,
        value,
    })
}

/// The keyslots of `vol` (read from `dev`) for the vault to unlock, picked and ordered
/// as [`unlock`] tries them, with their areas read from the device (bounds checked).
/// KDF costs are checked against `opts.limits` here; the KDF itself runs in the vault.
pub fn vault_plans(
    dev: &Device,
    vol: &Volume,
    opts: &UnlockOptions,
) -> Result<VaultPlans, UnlockError> {
    let limits = opts.limits;
    match vol {
        Volume::Luks1(h) => {
            let plans = luks1_plans(h, opts.keyslot)?;
            let digest = DigestPlan {
                hash: h.hash,
                iterations: h.mk_digest_iter,
                salt: h.mk_digest_salt.to_vec(),
                value: h.mk_digest.to_vec(),
            };
            Kdf::Pbkdf2 {
                hash: digest.hash,
                iterations: digest.iterations,
                salt: digest.salt.clone(),
            }
            .check(&limits)
            .map_err(UnlockError::DigestKdf)?;
            if plans.is_empty() {
                return Err(UnlockError::NoActiveSlots);
            }
            let bound = plans
                .into_iter()
                .map(|p| p.and_then(|p| vault_keyslot(dev, vol, &p, &digest, &limits)))
                .collect();
            Ok(VaultPlans {
                bound,
                unbound: Vec::new(),
            })
        }
        Volume::Luks2(h) => {
            let Luks2Plans { plans, unbound } = luks2_plans(h, opts.keyslot, opts.allow_unbound)?;
            if plans.is_empty() && unbound.is_empty() {
                return Err(UnlockError::NoActiveSlots);
            }
            let seg = if opts.allow_unbound {
                None
            } else {
                luks2_data_segment(h)
            };
            let build = |p: Result<SlotPlan, UnlockError>, seg: Option<&str>| {
                p.and_then(|p| {
                    let d = luks2_digest(h, p.slot, seg)?;
                    vault_keyslot(dev, vol, &p, &d, &limits)
                })
            };
            Ok(VaultPlans {
                bound: plans.into_iter().map(|p| build(p, seg)).collect(),
                unbound: unbound.into_iter().map(|p| build(p, None)).collect(),
            })
        }
    }
}
