//! LUKS2 serializers: the JSON metadata (json-c's plain layout, cryptsetup's member
//! order) and the two binary header copies with their SHA-256 checksums.

use serde_json::{json, Map, Value};

use super::material::{DigestParams, KdfParams, KeyslotMaterial};
use super::plan::{KdfKind, Luks2Plan};
use super::{base64_encode, random, FormatError};
use crate::kdf::{Argon2Variant, Hash};
use crate::luks2::header::{Copy, BIN_SIZE, MAGIC_PRIMARY, MAGIC_SECONDARY};

/// The identity fields of a header copy, common to both copies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HeaderIdentity {
    /// Header copy size (binary + JSON area), bytes.
    pub hdr_size: u64,
    /// Label (≤ 47 bytes).
    pub label: String,
    /// Subsystem (≤ 47 bytes).
    pub subsystem: String,
    /// UUID text.
    pub uuid: String,
}

/// The `kdf` object of a keyslot, members in cryptsetup's order.
pub fn kdf_json(kdf: &KdfParams) -> Value {
    match kdf {
        KdfParams::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => json!({"type": "pbkdf2", "hash": hash, "iterations": iterations,
                    "salt": base64_encode(salt)}),
        KdfParams::Argon2 {
            variant,
            time,
            memory_kib,
            lanes,
            salt,
        } => json!({
            "type": match variant { Argon2Variant::Argon2i => "argon2i", Argon2Variant::Argon2id => "argon2id" },
            "time": time, "memory": memory_kib, "cpus": lanes, "salt": base64_encode(salt)}),
    }
}

/// A `luks2` keyslot object for `m` with its area at `[offset, +size)`.
pub fn keyslot_json(m: &KeyslotMaterial, offset: u64, size: u64) -> Value {
    let mut ks = json!({
        "type": "luks2",
        "key_size": m.key_size,
        "af": {"type": "luks1", "stripes": m.af.stripes, "hash": m.af.hash},
        "area": {"type": "raw", "offset": offset.to_string(), "size": size.to_string(),
                 "encryption": m.area_cipher, "key_size": m.area_key_size},
        "kdf": kdf_json(&m.kdf),
    });
    if let (Some(p), Value::Object(o)) = (m.priority, &mut ks) {
        if p != 1 {
            o.insert("priority".into(), json!(p));
        }
    }
    ks
}

/// A `pbkdf2` digest object binding `keyslots` to segment 0.
pub fn digest_json(d: &DigestParams, keyslots: &[u32]) -> Value {
    let ids: Vec<String> = keyslots.iter().map(u32::to_string).collect();
    json!({"type": "pbkdf2", "keyslots": ids, "segments": ["0"], "hash": d.hash,
           "iterations": d.iterations, "salt": base64_encode(&d.salt),
           "digest": base64_encode(&d.digest)})
}

/// Checks that `m` fits a keyslot `slot` of a volume with `key_size`-byte keys and an
/// area of `area_size` bytes.
pub fn check_material(
    slot: u32,
    m: &KeyslotMaterial,
    key_size: u32,
    area_size: u64,
) -> Result<(), FormatError> {
    let bad = |why: String| Err(FormatError::BadMaterial { slot, why });
    if m.key_size != key_size {
        return bad(format!(
            "key size {} bytes differs from the volume key size {key_size}",
            m.key_size
        ));
    }
    if m.af.stripes == 0 || m.af.stripes > 65_536 {
        return bad(format!("AF stripes {} outside 1..=65536", m.af.stripes));
    }
    if Hash::from_name(&m.af.hash).is_err() {
        return bad(format!("AF hash {:?} is not supported", m.af.hash));
    }
    if m.area_key_size == 0 || m.area_key_size > 512 {
        return bad(format!("area key size {} outside 1..=512", m.area_key_size));
    }
    let need = m.material_len();
    if (m.area.len() as u64) < need || m.area.len() as u64 > area_size {
        return bad(format!(
            "area bytes are {} long, expected {need}..={area_size}",
            m.area.len()
        ));
    }
    let salt = match &m.kdf {
        KdfParams::Pbkdf2 {
            hash,
            iterations,
            salt,
        } => {
            if Hash::from_name(hash).is_err() || *iterations == 0 {
                return bad(format!("pbkdf2 {hash:?} with {iterations} iterations"));
            }
            salt
        }
        KdfParams::Argon2 {
            time,
            memory_kib,
            lanes,
            salt,
            ..
        } => {
            if *time == 0 || *lanes == 0 || *memory_kib < 8 * lanes {
                return bad(format!(
                    "argon2 costs time {time}, memory {memory_kib} KiB, {lanes} lanes"
                ));
            }
            salt
        }
    };
    if salt.is_empty() || salt.len() > 64 {
        return bad(format!("KDF salt of {} bytes", salt.len()));
    }
    Ok(())
}

/// Checks a digest for a LUKS2 header.
pub fn check_digest(d: &DigestParams) -> Result<(), FormatError> {
    let Ok(h) = Hash::from_name(&d.hash) else {
        return Err(FormatError::BadDigest(format!(
            "hash {:?} unsupported",
            d.hash
        )));
    };
    if d.iterations == 0
        || d.salt.is_empty()
        || d.salt.len() > 64
        || d.digest.len() != h.output_len()
    {
        return Err(FormatError::BadDigest(format!(
            "{} iterations, {}-byte salt, {}-byte digest ({} expected)",
            d.iterations,
            d.salt.len(),
            d.digest.len(),
            h.output_len()
        )));
    }
    Ok(())
}

/// The JSON metadata of a new volume: `keyslots` (id, material, area offset) all bound
/// to segment 0 through digest 0.
pub fn new_metadata(
    plan: &Luks2Plan,
    keyslots: &[(u32, &KeyslotMaterial, u64)],
    digest: &DigestParams,
) -> Value {
    let mut ks = Map::new();
    for (id, m, off) in keyslots {
        ks.insert(id.to_string(), keyslot_json(m, *off, plan.area_size()));
    }
    let ids: Vec<u32> = keyslots.iter().map(|k| k.0).collect();
    json!({
        "keyslots": ks,
        "tokens": {},
        "segments": {"0": {"type": "crypt", "offset": plan.data_offset.to_string(),
            "size": "dynamic", "iv_tweak": "0", "encryption": plan.cipher,
            "sector_size": plan.sector_size}},
        "digests": {"0": digest_json(digest, &ids)},
        "config": {"json_size": (plan.hdr_size - BIN_SIZE as u64).to_string(),
                   "keyslots_size": plan.keyslots_size.to_string()},
    })
}

/// The KDF kind a plan asks for, as JSON type names (for messages and the vault).
pub fn kdf_kind_name(k: KdfKind) -> &'static str {
    match k {
        KdfKind::Pbkdf2 => "pbkdf2",
        KdfKind::Argon2i => "argon2i",
        KdfKind::Argon2id => "argon2id",
    }
}

fn put_str(buf: &mut [u8], s: &str) {
    buf[..s.len()].copy_from_slice(s.as_bytes());
}

/// One header copy (`hdr_size` bytes): binary header with a fresh random salt, JSON
/// NUL-padded, SHA-256 checksum over both with the checksum field zeroed.
pub fn header_copy(
    id: &HeaderIdentity,
    seqid: u64,
    copy: Copy,
    json: &Value,
) -> Result<Vec<u8>, FormatError> {
    let text = serde_json::to_string(json).map_err(FormatError::Json)?;
    let json_size = id.hdr_size - BIN_SIZE as u64;
    if text.len() as u64 >= json_size {
        return Err(FormatError::JsonTooBig {
            len: text.len(),
            max: json_size,
        });
    }
    if id.label.len() > 47 || id.subsystem.len() > 47 || id.uuid.len() > 39 {
        return Err(FormatError::BadOption(
            "label/subsystem over 47 bytes or UUID over 39".into(),
        ));
    }
    // hdr_size is one of the allowed sizes (≤ 4 MiB): it fits usize.
    let mut b = vec![0u8; id.hdr_size as usize];
    let (magic, offset) = match copy {
        Copy::Primary => (MAGIC_PRIMARY, 0),
        Copy::Secondary => (MAGIC_SECONDARY, id.hdr_size),
    };
    b[..6].copy_from_slice(&magic);
    b[6..8].copy_from_slice(&2u16.to_be_bytes());
    b[8..16].copy_from_slice(&id.hdr_size.to_be_bytes());
    b[16..24].copy_from_slice(&seqid.to_be_bytes());
    put_str(&mut b[24..72], &id.label);
    put_str(&mut b[72..104], "sha256");
    random::fill(&mut b[104..168])?;
    put_str(&mut b[168..208], &id.uuid);
    put_str(&mut b[208..256], &id.subsystem);
    b[256..264].copy_from_slice(&offset.to_be_bytes());
    b[BIN_SIZE..BIN_SIZE + text.len()].copy_from_slice(text.as_bytes());
    let mut sum = [0u8; 32];
    Hash::Sha256.digest_parts(&[&b], &mut sum);
    b[448..480].copy_from_slice(&sum);
    Ok(b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::luks2::Luks2Header;

    #[test]
    fn both_copies_parse_with_the_existing_reader() {
        let id = HeaderIdentity {
            hdr_size: 0x4000,
            label: "L".into(),
            subsystem: "S".into(),
            uuid: "078b1994-7470-4d46-8394-fba6b45bc9b7".into(),
        };
        let json = json!({"keyslots": {}, "tokens": {}, "segments": {}, "digests": {},
            "config": {"json_size": "12288", "keyslots_size": "16744448"}});
        let mut img = header_copy(&id, 7, Copy::Primary, &json).unwrap();
        img.extend(header_copy(&id, 7, Copy::Secondary, &json).unwrap());
        img.resize(17 << 20, 0);
        let h = Luks2Header::read(&Device::from_bytes(img)).unwrap();
        assert_eq!(h.bin.seqid, 7);
        assert_eq!(h.bin.label, "L");
        assert_eq!(h.bin.subsystem, "S");
        assert!(h.notes.is_empty(), "{:?}", h.notes);
    }

    #[test]
    fn json_too_big_is_refused() {
        let id = HeaderIdentity {
            hdr_size: 0x4000,
            label: String::new(),
            subsystem: String::new(),
            uuid: String::new(),
        };
        let json = json!({"x": "y".repeat(12288)});
        assert!(matches!(
            header_copy(&id, 1, Copy::Primary, &json),
            Err(FormatError::JsonTooBig { .. })
        ));
    }
}
