//! LUKS1 serializer: the 592-byte phdr from a [`Luks1Header`], and the header of a new
//! volume from a plan, the vault's keyslot material and digest.

use super::material::{DigestParams, KdfParams, KeyslotMaterial};
use super::plan::Luks1Plan;
use super::FormatError;
use crate::kdf::Hash;
use crate::luks1::{
    Luks1Header, Luks1Keyslot, KEY_DISABLED, KEY_ENABLED, MAGIC, NUM_KEYSLOTS, PHDR_SIZE,
};

fn put_str(buf: &mut [u8], s: &str) {
    let n = s.len().min(buf.len().saturating_sub(1));
    buf[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// The on-disk phdr of `h` (big-endian fields, NUL-padded strings, disabled slots with
/// their offsets and stripes kept as cryptsetup keeps them).
pub fn phdr(h: &Luks1Header) -> [u8; PHDR_SIZE] {
    let mut b = [0u8; PHDR_SIZE];
    b[..6].copy_from_slice(&MAGIC);
    b[6..8].copy_from_slice(&1u16.to_be_bytes());
    put_str(&mut b[8..40], &h.cipher_name);
    put_str(&mut b[40..72], &h.cipher_mode);
    put_str(&mut b[72..104], &h.hash_spec);
    b[104..108].copy_from_slice(&h.payload_offset.to_be_bytes());
    b[108..112].copy_from_slice(&h.key_bytes.to_be_bytes());
    b[112..132].copy_from_slice(&h.mk_digest);
    b[132..164].copy_from_slice(&h.mk_digest_salt);
    b[164..168].copy_from_slice(&h.mk_digest_iter.to_be_bytes());
    put_str(&mut b[168..208], &h.uuid);
    for (i, ks) in h.keyslots.iter().enumerate() {
        let o = 208 + i * 48;
        let state = if ks.active { KEY_ENABLED } else { KEY_DISABLED };
        b[o..o + 4].copy_from_slice(&state.to_be_bytes());
        b[o + 4..o + 8].copy_from_slice(&ks.iterations.to_be_bytes());
        b[o + 8..o + 40].copy_from_slice(&ks.salt);
        b[o + 40..o + 44].copy_from_slice(&ks.key_material_offset.to_be_bytes());
        b[o + 44..o + 48].copy_from_slice(&ks.stripes.to_be_bytes());
    }
    b
}

/// Bytes of a keyslot's key material area (`key_bytes * stripes`, sector aligned).
pub fn area_len(key_bytes: u32, stripes: u32) -> u64 {
    (key_bytes as u64 * stripes as u64).div_ceil(512) * 512
}

/// Checks `m` for keyslot `slot` of header `h` and returns its enabled keyslot entry at
/// `key_material_offset` (sectors).
pub fn slot_entry(
    h: &Luks1Header,
    slot: u32,
    m: &KeyslotMaterial,
    key_material_offset: u32,
) -> Result<Luks1Keyslot, FormatError> {
    let bad = |why: String| Err(FormatError::BadMaterial { slot, why });
    if m.key_size != h.key_bytes {
        return bad(format!(
            "key size {} bytes differs from the volume key size {}",
            m.key_size, h.key_bytes
        ));
    }
    if m.area_cipher != h.cipher_spec() || m.area_key_size != h.key_bytes {
        return bad(format!(
            "area cipher {} ({} bytes) must be the volume cipher {} ({} bytes) in LUKS1",
            m.area_cipher,
            m.area_key_size,
            h.cipher_spec(),
            h.key_bytes
        ));
    }
    if m.af.hash != h.hash_spec || m.af.stripes == 0 || m.af.stripes > crate::luks1::MAX_STRIPES {
        return bad(format!(
            "AF {} stripes of {} (LUKS1 needs the header hash {})",
            m.af.stripes, m.af.hash, h.hash_spec
        ));
    }
    let len = area_len(m.key_size, m.af.stripes);
    if (m.area.len() as u64) < m.material_len() || m.area.len() as u64 > len {
        return bad(format!(
            "area bytes are {} long, expected {}..={len}",
            m.area.len(),
            m.material_len()
        ));
    }
    let KdfParams::Pbkdf2 {
        hash,
        iterations,
        salt,
    } = &m.kdf
    else {
        return bad("LUKS1 keyslots use pbkdf2 only".into());
    };
    if *hash != h.hash_spec || *iterations == 0 || salt.len() != 32 {
        return bad(format!(
            "pbkdf2 {hash} ({iterations} iterations, {}-byte salt); LUKS1 needs {} and a 32-byte salt",
            salt.len(),
            h.hash_spec
        ));
    }
    let mut s = [0u8; 32];
    s.copy_from_slice(salt);
    Ok(Luks1Keyslot {
        active: true,
        iterations: *iterations,
        salt: s,
        key_material_offset,
        stripes: m.af.stripes,
    })
}

/// The header of a new LUKS1 volume with `keyslots` (id, material) enabled.
pub fn new_header(
    plan: &Luks1Plan,
    keyslots: &[(u32, &KeyslotMaterial)],
    digest: &DigestParams,
) -> Result<Luks1Header, FormatError> {
    let hash = Hash::from_name(&plan.hash)
        .map_err(|_| FormatError::BadOption(format!("hash {:?} unsupported", plan.hash)))?;
    if digest.hash != plan.hash
        || digest.digest.len() != 20
        || digest.salt.len() != 32
        || digest.iterations == 0
    {
        return Err(FormatError::BadDigest(format!(
            "LUKS1 needs a {} digest of 20 bytes with a 32-byte salt; got {} ({} bytes, {}-byte salt, {} iterations)",
            plan.hash,
            digest.hash,
            digest.digest.len(),
            digest.salt.len(),
            digest.iterations
        )));
    }
    let mut mk_digest = [0u8; 20];
    mk_digest.copy_from_slice(&digest.digest);
    let mut mk_digest_salt = [0u8; 32];
    mk_digest_salt.copy_from_slice(&digest.salt);
    let mut h = Luks1Header {
        cipher_name: plan.cipher_name.clone(),
        cipher_mode: plan.cipher_mode.clone(),
        hash_spec: plan.hash.clone(),
        hash,
        payload_offset: plan.payload_offset,
        key_bytes: plan.key_bytes,
        mk_digest,
        mk_digest_salt,
        mk_digest_iter: digest.iterations,
        uuid: plan.uuid.clone(),
        keyslots: core::array::from_fn(|i| Luks1Keyslot {
            active: false,
            iterations: 0,
            salt: [0; 32],
            key_material_offset: plan.key_material_offsets[i],
            stripes: plan.stripes,
        }),
    };
    for (slot, m) in keyslots {
        let i = *slot as usize;
        if i >= NUM_KEYSLOTS {
            return Err(FormatError::SlotOutOfRange {
                slot: *slot,
                max: NUM_KEYSLOTS as u32 - 1,
            });
        }
        if h.keyslots[i].active {
            return Err(FormatError::SlotInUse(*slot));
        }
        h.keyslots[i] = slot_entry(&h, *slot, m, plan.key_material_offsets[i])?;
    }
    Ok(h)
}
