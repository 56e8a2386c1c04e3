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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::device::Device;
    use crate::format::material::{AfParams, DigestParams, KdfParams};
    use crate::format::plan::{plan, DeviceGeometry, LuksVersion, PlanOptions};
    use crate::format::steps::new_volume_steps;

    fn material(luks1: bool) -> KeyslotMaterial {
        KeyslotMaterial {
            key_size: 64,
            af: AfParams::default(),
            area_cipher: "aes-xts-plain64".into(),
            area_key_size: 64,
            kdf: KdfParams::Pbkdf2 {
                hash: "sha256".into(),
                iterations: 1000,
                salt: vec![7; 32],
            },
            priority: None,
            area: vec![if luks1 { 1 } else { 2 }; 64 * 4000],
        }
    }

    /// Runs `p` on an in-memory image (wipes write 0xAA).
    fn run(img: &mut [u8], p: &WritePlan) {
        p.check().unwrap();
        for s in &p.steps {
            match s {
                Step::Zero { offset, len } => {
                    img[*offset as usize..(offset + len) as usize].fill(0)
                }
                Step::WipeArea { offset, len, .. } => {
                    img[*offset as usize..(offset + len) as usize].fill(0xAA)
                }
                Step::WriteArea { offset, bytes, .. } | Step::WriteHeader { offset, bytes, .. } => {
                    img[*offset as usize..*offset as usize + bytes.len()].copy_from_slice(bytes)
                }
                Step::Sync => {}
            }
        }
    }

    fn volume(v: LuksVersion) -> Vec<u8> {
        let size = 20u64 << 20;
        let p = plan(
            &PlanOptions {
                version: v,
                ..Default::default()
            },
            &DeviceGeometry {
                size,
                optimal_sector_size: 4096,
            },
        )
        .unwrap();
        let d = DigestParams {
            hash: "sha256".into(),
            iterations: 1000,
            salt: vec![3; 32],
            digest: vec![4; if v == LuksVersion::Luks1 { 20 } else { 32 }],
        };
        let steps = new_volume_steps(&p, &[(0, material(v == LuksVersion::Luks1))], &d).unwrap();
        let mut img = vec![0u8; size as usize];
        run(&mut img, &steps);
        img
    }

    fn read(img: &[u8]) -> Volume {
        Volume::read(&Device::from_bytes(img.to_vec())).unwrap()
    }

    /// The step kinds: A area, S sync, P/Q primary/secondary LUKS2 header, H LUKS1
    /// header, W wipe.
    fn kinds(p: &WritePlan) -> String {
        p.steps
            .iter()
            .map(|s| match s {
                Step::Zero { .. } => 'Z',
                Step::WriteArea { .. } => 'A',
                Step::Sync => 'S',
                Step::WriteHeader {
                    which: HeaderSlot::Luks2(Copy::Primary),
                    ..
                } => 'P',
                Step::WriteHeader {
                    which: HeaderSlot::Luks2(Copy::Secondary),
                    ..
                } => 'Q',
                Step::WriteHeader { .. } => 'H',
                Step::WipeArea { .. } => 'W',
            })
            .collect()
    }

    #[test]
    fn luks2_orders_and_sets() {
        let mut img = volume(LuksVersion::Luks2);
        let vol = read(&img);
        let add = add_keyslot(&vol, Placement::default(), &material(false)).unwrap();
        assert_eq!(kinds(&add.plan), "ASPSQS");
        assert_eq!(
            (add.before.clone(), add.after.clone()),
            (vec![0], vec![0, 1])
        );
        let rm = remove_keyslot(&vol, 0).unwrap();
        assert_eq!(kinds(&rm.plan), "PSQSWS");
        let ch = change_keyslot(&vol, 0, Placement::default(), &material(false)).unwrap();
        assert_eq!(kinds(&ch.plan), "ASPSQSWS");
        assert_eq!(ch.after, vec![1]);
        run(&mut img, &add.plan);
        let Volume::Luks2(h) = read(&img) else {
            panic!("luks2")
        };
        assert_eq!(h.bin.seqid, 2);
        assert_eq!(h.meta.keyslots["1"].area.offset.0, 32768 + 258048);
        assert_eq!(h.meta.digests["0"].keyslots, vec!["0", "1"]);
        // Remove 0 then re-add: the freed (lowest) area is reused.
        let rm = remove_keyslot(&read(&img), 0).unwrap();
        run(&mut img, &rm.plan);
        let Volume::Luks2(h) = read(&img) else {
            panic!("luks2")
        };
        assert_eq!(h.meta.digests["0"].keyslots, vec!["1"]);
        let add = add_keyslot(&read(&img), Placement::default(), &material(false)).unwrap();
        run(&mut img, &add.plan);
        let Volume::Luks2(h) = read(&img) else {
            panic!("luks2")
        };
        assert_eq!(h.meta.keyslots["0"].area.offset.0, 32768);
        // Change with every other id taken keeps the id, in a new area.
        let ch = change_keyslot(
            &read(&img),
            1,
            Placement {
                slot: Some(1),
                area_offset: None,
            },
            &material(false),
        )
        .unwrap();
        assert_eq!(ch.after, vec![0, 1]);
        run(&mut img, &ch.plan);
        let Volume::Luks2(h) = read(&img) else {
            panic!("luks2")
        };
        assert_eq!(h.meta.keyslots["1"].area.offset.0, 32768 + 2 * 258048);
    }

    #[test]
    fn luks2_refuses_bad_areas() {
        let vol = read(&volume(LuksVersion::Luks2));
        for (off, what) in [
            (0, "headers"),
            (32768 + 4096, "keyslot 0"),
            ((16 << 20) - 4096, "data segment"),
        ] {
            let at = Placement {
                slot: Some(3),
                area_offset: Some(off),
            };
            let e = add_keyslot(&vol, at, &material(false)).unwrap_err();
            let msg = e.to_string();
            assert!(
                msg.starts_with("keyslot 3: area") && msg.contains(what),
                "{msg}"
            );
        }
        assert!(matches!(
            add_keyslot(
                &vol,
                Placement {
                    slot: Some(0),
                    area_offset: None
                },
                &material(false)
            ),
            Err(FormatError::SlotInUse(0))
        ));
        assert!(matches!(
            remove_keyslot(&vol, 5),
            Err(FormatError::SlotInactive(5))
        ));
    }

    #[test]
    fn luks1_orders_and_sets() {
        let mut img = volume(LuksVersion::Luks1);
        let vol = read(&img);
        let add = add_keyslot(&vol, Placement::default(), &material(true)).unwrap();
        assert_eq!(kinds(&add.plan), "ASHS");
        assert_eq!(
            remove_keyslot(&vol, 0).map(|e| kinds(&e.plan)).unwrap(),
            "HSWS"
        );
        let ch = change_keyslot(&vol, 0, Placement::default(), &material(true)).unwrap();
        assert_eq!(kinds(&ch.plan), "ASHSWS");
        assert_eq!(ch.after, vec![1]);
        run(&mut img, &add.plan);
        assert_eq!(edit_ids(&img), vec![0, 1]);
        let bad = KeyslotMaterial {
            kdf: KdfParams::Argon2 {
                variant: crate::kdf::Argon2Variant::Argon2id,
                time: 4,
                memory_kib: 32,
                lanes: 1,
                salt: vec![0; 32],
            },
            ..material(true)
        };
        assert!(matches!(
            add_keyslot(&read(&img), Placement::default(), &bad),
            Err(FormatError::BadMaterial { slot: 2, .. })
        ));
    }

    fn edit_ids(img: &[u8]) -> Vec<u32> {
        keyslot_ids(&read(img))
    }

    #[test]
    fn steps_past_the_data_offset_are_refused() {
        let p = WritePlan {
            limit: 4096,
            steps: vec![
                Step::Sync,
                Step::Zero {
                    offset: 4000,
                    len: 97,
                },
            ],
        };
        assert!(matches!(
            p.check(),
            Err(FormatError::StepOutOfBounds { index: 1, .. })
        ));
    }
}
