//! Keyslot-set edits of an existing header (LUKS2 and LUKS1): add, remove (kill),
//! change (luksChangeKey). Each returns an [`Edit`]: the ordered [`WritePlan`] and the
//! keyslot sets before and after, so a crash anywhere leaves one of the two.

use serde_json::Value;

use super::material::KeyslotMaterial;
use super::steps::{padded, push_luks2_headers, HeaderSlot, Step, WritePlan};
use super::{align_up, luks1, luks2, FormatError};
use crate::luks1::{Luks1Header, NUM_KEYSLOTS};
use crate::luks2::header::{Copy, BIN_SIZE};
use crate::luks2::json::{parse_id, Metadata, MAX_ID};
use crate::luks2::Luks2Header;
use crate::volume::Volume;

/// A planned keyslot-set edit.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Edit {
    /// The writes, in their crash-safe order.
    pub plan: WritePlan,
    /// Active keyslot ids before.
    pub before: Vec<u32>,
    /// Active keyslot ids after.
    pub after: Vec<u32>,
}

/// Where a new keyslot goes; `None` chooses as cryptsetup does (lowest free id, lowest
/// free area).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Placement {
    /// Keyslot id.
    pub slot: Option<u32>,
    /// LUKS2 area byte offset (checked: inside the keyslots area, no overlap).
    pub area_offset: Option<u64>,
}

/// Active keyslot ids of `vol`, ascending.
pub fn keyslot_ids(vol: &Volume) -> Vec<u32> {
    match vol {
        Volume::Luks1(h) => (0..NUM_KEYSLOTS as u32)
            .filter(|&i| h.keyslots[i as usize].active)
            .collect(),
        Volume::Luks2(h) => {
            let mut v: Vec<u32> = h.meta.keyslots.keys().filter_map(|k| parse_id(k)).collect();
            v.sort_unstable();
            v
        }
    }
}

/// Adds a keyslot holding `m` (from the vault) at `at`.
pub fn add_keyslot(vol: &Volume, at: Placement, m: &KeyslotMaterial) -> Result<Edit, FormatError> {
    match vol {
        Volume::Luks2(h) => luks2_edit(h, None, Some((at, m))),
        Volume::Luks1(h) => luks1_edit(h, None, Some((at.slot, m))),
    }
}

/// Removes (kills) keyslot `slot`: header first (and its digest/token references), then
/// its area is wiped.
pub fn remove_keyslot(vol: &Volume, slot: u32) -> Result<Edit, FormatError> {
    match vol {
        Volume::Luks2(h) => luks2_edit(h, Some(slot), None),
        Volume::Luks1(h) => luks1_edit(h, Some(slot), None),
    }
}

/// Replaces keyslot `old` by a new keyslot holding `m` (luksChangeKey): the new area is
/// written first, one header write names the new keyslot and drops the old, then the old
/// area is wiped. The new id is `at.slot`, else the lowest free id; LUKS2 falls back to
/// reusing `old`'s id (in a new area); LUKS1 refuses when no slot is free (in place would
/// not be crash-safe).
pub fn change_keyslot(
    vol: &Volume,
    old: u32,
    at: Placement,
    m: &KeyslotMaterial,
) -> Result<Edit, FormatError> {
    match vol {
        Volume::Luks2(h) => luks2_edit(h, Some(old), Some((at, m))),
        Volume::Luks1(h) => luks1_edit(h, Some(old), Some((at.slot, m))),
    }
}

// ---- LUKS2 ----

struct Layout {
    /// Keyslots area start (end of the secondary header).
    start: u64,
    /// Keyslots area end, clipped to the data offset.
    end: u64,
    /// Data offset.
    data: u64,
}

fn luks2_layout(h: &Luks2Header) -> Result<Layout, FormatError> {
    let data = h
        .meta
        .segments
        .values()
        .map(|s| s.offset.0)
        .min()
        .ok_or_else(|| FormatError::Unsupported("no data segment".into()))?;
    let start = 2 * h.bin.hdr_size;
    if data < start {
        return Err(FormatError::Unsupported(
            "detached header (data segment at offset 0)".into(),
        ));
    }
    let end = (start + h.meta.config.keyslots_size.0).min(data);
    Ok(Layout { start, end, data })
}

fn check_area(
    slot: u32,
    offset: u64,
    len: u64,
    lay: &Layout,
    used: &[(u32, u64, u64)],
) -> Result<(), FormatError> {
    let refuse = |why: String| {
        Err(FormatError::AreaRefused {
            slot,
            offset,
            len,
            why,
        })
    };
    if offset < lay.start {
        return refuse(format!("overlaps the LUKS2 headers (end at {})", lay.start));
    }
    if offset.checked_add(len).is_none_or(|e| e > lay.end) {
        return refuse(if lay.end == lay.data {
            format!("overlaps the data segment at {}", lay.data)
        } else {
            format!("ends past the keyslots area (end at {})", lay.end)
        });
    }
    if !offset.is_multiple_of(4096) {
        return refuse("is not 4096-byte aligned".into());
    }
    for &(other, o, l) in used {
        if offset < o + l && o < offset + len {
            return refuse(format!("overlaps keyslot {other}'s area [{o}, +{l})"));
        }
    }
    Ok(())
}

fn allocate(
    slot: u32,
    len: u64,
    lay: &Layout,
    used: &[(u32, u64, u64)],
) -> Result<u64, FormatError> {
    let mut cand = lay.start;
    let mut sorted: Vec<_> = used.to_vec();
    sorted.sort_by_key(|u| u.1);
    for &(_, o, l) in &sorted {
        if cand + len <= o {
            break;
        }
        cand = cand.max(align_up(o + l, 4096));
    }
    if cand + len > lay.end {
        return Err(FormatError::NoSpace { slot, len });
    }
    Ok(cand)
}

fn obj<'a>(
    v: &'a mut Value,
    key: &str,
) -> Result<&'a mut serde_json::Map<String, Value>, FormatError> {
    v.get_mut(key)
        .and_then(Value::as_object_mut)
        .ok_or_else(|| FormatError::Unsupported(format!("JSON has no {key} object")))
}

/// Replaces `old` by `new` (or drops it when `new` is None) in every `keyslots` list of
/// the objects under `section`.
fn relink(v: &mut Value, section: &str, old: &str, new: Option<&str>) -> Result<(), FormatError> {
    for (_, d) in obj(v, section)?.iter_mut() {
        if let Some(list) = d.get_mut("keyslots").and_then(Value::as_array_mut) {
            let had = list.iter().any(|x| x.as_str() == Some(old));
            list.retain(|x| x.as_str() != Some(old));
            if let (true, Some(n)) = (had, new) {
                if !list.iter().any(|x| x.as_str() == Some(n)) {
                    list.push(Value::String(n.into()));
                }
            }
        }
    }
    Ok(())
}

fn luks2_edit(
    h: &Luks2Header,
    drop: Option<u32>,
    add: Option<(Placement, &KeyslotMaterial)>,
) -> Result<Edit, FormatError> {
    if let Some(r) = h.meta.mandatory_requirements().first() {
        return Err(FormatError::Unsupported(format!(
            "mandatory requirement {r}"
        )));
    }
    let lay = luks2_layout(h)?;
    let before = keyslot_ids(&Volume::Luks2(Luks2Header {
        bin: h.bin.clone(),
        meta: h.meta.clone(),
        raw: Value::Null,
        notes: Vec::new(),
    }));
    let mut used: Vec<(u32, u64, u64)> = h
        .meta
        .keyslots
        .iter()
        .filter_map(|(k, ks)| parse_id(k).map(|n| (n, ks.area.offset.0, ks.area.size.0)))
        .collect();
    let mut raw = h.raw.clone();
    let mut steps = Vec::new();
    let mut wipe = None;
    if let Some(old) = drop {
        if old > MAX_ID {
            return Err(FormatError::SlotOutOfRange {
                slot: old,
                max: MAX_ID,
            });
        }
        let Some(&(_, o, l)) = used.iter().find(|u| u.0 == old) else {
            return Err(FormatError::SlotInactive(old));
        };
        obj(&mut raw, "keyslots")?.shift_remove(&old.to_string());
        wipe = Some((old, o, l));
    }
    let mut after = before.clone();
    if let Some(old) = drop {
        after.retain(|&i| i != old);
    }
    if let Some((at, m)) = add {
        // The digest the new keyslot joins: the one bound to the data segment.
        let seg = h.meta.segments.keys().next().cloned().unwrap_or_default();
        let (dig_id, dig) = h
            .meta
            .digests
            .iter()
            .find(|(_, d)| d.segments.contains(&seg))
            .ok_or(FormatError::NoDigest)?;
        let id = match at.slot {
            Some(s) if s > MAX_ID => {
                return Err(FormatError::SlotOutOfRange {
                    slot: s,
                    max: MAX_ID,
                })
            }
            Some(s) if after.contains(&s) => return Err(FormatError::SlotInUse(s)),
            Some(s) => s,
            None => match (0..=MAX_ID).find(|i| !before.contains(i)) {
                Some(s) => s,
                None => drop.ok_or(FormatError::NoFreeSlot)?,
            },
        };
        let key_size = dig
            .keyslots
            .iter()
            .filter_map(|k| h.meta.keyslots.get(k))
            .map(|ks| ks.key_size)
            .next()
            .unwrap_or(m.key_size);
        let len = align_up(m.material_len(), 4096);
        luks2::check_material(id, m, key_size, len)?;
        let offset = match at.area_offset {
            Some(o) => o,
            None => allocate(id, len, &lay, &used)?,
        };
        check_area(id, offset, len, &lay, &used)?;
        used.push((id, offset, len));
        obj(&mut raw, "keyslots")?.insert(id.to_string(), luks2::keyslot_json(m, offset, len));
        let (old_s, id_s) = (drop.map(|d| d.to_string()), id.to_string());
        if let Some(old_s) = &old_s {
            relink(&mut raw, "tokens", old_s, Some(&id_s))?;
            relink(&mut raw, "digests", old_s, None)?;
        }
        if let Some(d) = obj(&mut raw, "digests")?.get_mut(dig_id) {
            if let Some(list) = d.get_mut("keyslots").and_then(Value::as_array_mut) {
                if !list.iter().any(|x| x.as_str() == Some(&id_s)) {
                    list.push(Value::String(id_s.clone()));
                }
            }
        }
        steps.push(Step::WriteArea {
            keyslot: id,
            offset,
            bytes: padded(m, len),
        });
        steps.push(Step::Sync);
        after.push(id);
        after.sort_unstable();
    } else if let Some(old) = drop {
        let s = old.to_string();
        relink(&mut raw, "tokens", &s, None)?;
        relink(&mut raw, "digests", &s, None)?;
    }
    // The reader must accept what is written.
    let text = serde_json::to_string(&raw).map_err(FormatError::Json)?;
    let meta = Metadata::parse(&text).map_err(FormatError::Json)?;
    meta.validate(h.bin.hdr_size)
        .map_err(|e| FormatError::Unsupported(format!("edited metadata would be invalid: {e}")))?;
    let ident = luks2::HeaderIdentity {
        hdr_size: h.bin.hdr_size,
        label: h.bin.label.clone(),
        subsystem: h.bin.subsystem.clone(),
        uuid: h.bin.uuid.clone(),
    };
    let seqid = h.bin.seqid + 1;
    let primary = luks2::header_copy(&ident, seqid, Copy::Primary, &raw)?;
    let secondary = luks2::header_copy(&ident, seqid, Copy::Secondary, &raw)?;
    debug_assert_eq!(primary.len() as u64, h.bin.hdr_size.max(BIN_SIZE as u64));
    push_luks2_headers(&mut steps, h.bin.hdr_size, primary, secondary);
    if let Some((slot, offset, len)) = wipe {
        steps.push(Step::WipeArea {
            keyslot: slot,
            offset,
            len,
        });
        steps.push(Step::Sync);
    }
    Ok(Edit {
        plan: WritePlan {
            limit: lay.data,
            steps,
        },
        before,
        after,
    })
}

// ---- LUKS1 ----

fn luks1_check_area(h: &Luks1Header, slot: u32) -> Result<(), FormatError> {
    let (offset, len) = h.area(slot as usize);
    let refuse = |why: String| {
        Err(FormatError::AreaRefused {
            slot,
            offset,
            len,
            why,
        })
    };
    if offset < 4096 {
        return refuse("overlaps the LUKS1 header sector".into());
    }
    let data = h.payload_offset as u64 * 512;
    if offset + len > data {
        return refuse(format!("overlaps the data segment at {data}"));
    }
    for i in 0..NUM_KEYSLOTS {
        if i as u32 != slot && h.keyslots[i].active {
            let (o, l) = h.area(i);
            if offset < o + l && o < offset + len {
                return refuse(format!("overlaps keyslot {i}'s area [{o}, +{l})"));
            }
        }
    }
    Ok(())
}

fn luks1_edit(
    h: &Luks1Header,
    drop: Option<u32>,
    add: Option<(Option<u32>, &KeyslotMaterial)>,
) -> Result<Edit, FormatError> {
    let max = NUM_KEYSLOTS as u32 - 1;
    let before = keyslot_ids(&Volume::Luks1(h.clone()));
    let mut new = h.clone();
    let mut steps = Vec::new();
    if let Some(old) = drop {
        if old > max {
            return Err(FormatError::SlotOutOfRange { slot: old, max });
        }
        if !h.keyslots[old as usize].active {
            return Err(FormatError::SlotInactive(old));
        }
        let ks = &mut new.keyslots[old as usize];
        ks.active = false;
        ks.iterations = 0;
        ks.salt = [0; 32];
    }
    if let Some((slot, m)) = add {
        let id = match slot {
            Some(s) if s > max => return Err(FormatError::SlotOutOfRange { slot: s, max }),
            Some(s) if h.keyslots[s as usize].active => return Err(FormatError::SlotInUse(s)),
            Some(s) => s,
            None => (0..=max)
                .find(|&i| !h.keyslots[i as usize].active)
                .ok_or(FormatError::NoFreeSlot)?,
        };
        let off = h.keyslots[id as usize].key_material_offset;
        new.keyslots[id as usize] = luks1::slot_entry(h, id, m, off)?;
        luks1_check_area(&new, id)?;
        let (offset, len) = new.area(id as usize);
        steps.push(Step::WriteArea {
            keyslot: id,
            offset,
            bytes: padded(m, len),
        });
        steps.push(Step::Sync);
    }
    steps.push(Step::WriteHeader {
        which: HeaderSlot::Luks1,
        offset: 0,
        bytes: luks1::phdr(&new).to_vec(),
    });
    steps.push(Step::Sync);
    if let Some(old) = drop {
        let (offset, len) = h.area(old as usize);
        steps.push(Step::WipeArea {
            keyslot: old,
            offset,
            len,
        });
        steps.push(Step::Sync);
    }
    Ok(Edit {
        plan: WritePlan {
            limit: h.payload_offset as u64 * 512,
            steps,
        },
        before,
        after: keyslot_ids(&Volume::Luks1(new)),
    })
}
