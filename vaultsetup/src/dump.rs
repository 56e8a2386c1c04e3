//! `luksDump` output, laid out like cryptsetup's.

use std::fmt::Write as _;

use crate::luks1::Luks1Header;
use crate::luks2::json::{parse_id, KdfJson, SegmentSize};
use crate::luks2::Luks2Header;
use crate::util::{base64_decode, hex_lines};
use crate::volume::Volume;

/// The human-readable dump of `vol` (`device` is the name shown for LUKS1).
pub fn human(vol: &Volume, device: &str) -> String {
    match vol {
        Volume::Luks1(h) => luks1(h, device),
        Volume::Luks2(h) => luks2(h),
    }
}

/// cryptsetup's `--dump-json-metadata` text for a LUKS2 volume.
pub fn json(h: &Luks2Header) -> String {
    crate::luks2::json::to_jsonc_pretty(&h.raw)
}

fn luks1(h: &Luks1Header, device: &str) -> String {
    let mut s = String::new();
    let _ = writeln!(s, "LUKS header information for {device}\n");
    let _ = writeln!(s, "Version:       \t1");
    let _ = writeln!(s, "Cipher name:   \t{}", h.cipher_name);
    let _ = writeln!(s, "Cipher mode:   \t{}", h.cipher_mode);
    let _ = writeln!(s, "Hash spec:     \t{}", h.hash_spec);
    let _ = writeln!(s, "Payload offset:\t{}", h.payload_offset);
    let _ = writeln!(s, "MK bits:       \t{}", h.key_bytes * 8);
    let _ = writeln!(s, "MK digest:     \t{}", hex_lines(&h.mk_digest, 20, ""));
    let _ = writeln!(
        s,
        "MK salt:       \t{}",
        hex_lines(&h.mk_digest_salt, 16, "               \t")
    );
    let _ = writeln!(s, "MK iterations: \t{}", h.mk_digest_iter);
    let _ = writeln!(s, "UUID:          \t{}\n", h.uuid);
    for (i, ks) in h.keyslots.iter().enumerate() {
        if ks.active {
            let _ = writeln!(s, "Key Slot {i}: ENABLED");
            let _ = writeln!(s, "\tIterations:         \t{}", ks.iterations);
            let _ = writeln!(
                s,
                "\tSalt:               \t{}",
                hex_lines(&ks.salt, 16, "\t                      \t")
            );
            let _ = writeln!(s, "\tKey material offset:\t{}", ks.key_material_offset);
            let _ = writeln!(s, "\tAF stripes:            \t{}", ks.stripes);
        } else {
            let _ = writeln!(s, "Key Slot {i}: DISABLED");
        }
    }
    s
}

fn b64_hex(v: &str) -> String {
    match base64_decode(v) {
        Some(b) => hex_lines(&b, 16, "\t            "),
        None => format!("(invalid base64 {v:?})"),
    }
}

fn sorted<T>(m: &std::collections::BTreeMap<String, T>) -> Vec<(&String, &T)> {
    let mut v: Vec<_> = m.iter().collect();
    v.sort_by_key(|(k, _)| parse_id(k).unwrap_or(u32::MAX));
    v
}

fn luks2(h: &Luks2Header) -> String {
    let mut s = String::new();
    let m = &h.meta;
    let b = &h.bin;
    let or = |v: &str, d: &str| {
        if v.is_empty() {
            d.to_string()
        } else {
            v.to_string()
        }
    };
    let _ = writeln!(s, "LUKS header information");
    let _ = writeln!(s, "Version:       \t2");
    let _ = writeln!(s, "Epoch:         \t{}", b.seqid);
    let _ = writeln!(s, "Metadata area: \t{} [bytes]", b.hdr_size);
    let _ = writeln!(s, "Keyslots area: \t{} [bytes]", m.config.keyslots_size.0);
    let _ = writeln!(s, "UUID:          \t{}", b.uuid);
    let _ = writeln!(s, "Label:         \t{}", or(&b.label, "(no label)"));
    let _ = writeln!(s, "Subsystem:     \t{}", or(&b.subsystem, "(no subsystem)"));
    let flags = m.config.flags.clone().unwrap_or_default().join(" ");
    let _ = writeln!(s, "Flags:       \t{}", or(&flags, "(no flags)"));
    let req = m.mandatory_requirements().join(" ");
    if !req.is_empty() {
        let _ = writeln!(s, "Requirements:\t{req}");
    }
    let _ = writeln!(s, "\nData segments:");
    for (id, seg) in sorted(&m.segments) {
        let _ = writeln!(s, "  {id}: {}", seg.kind);
        let _ = writeln!(s, "\toffset: {} [bytes]", seg.offset.0);
        match seg.size {
            SegmentSize::Dynamic => {
                let _ = writeln!(s, "\tlength: (whole device)");
            }
            SegmentSize::Bytes(n) => {
                let _ = writeln!(s, "\tlength: {n} [bytes]");
            }
        }
        if let Some(e) = &seg.encryption {
            let _ = writeln!(s, "\tcipher: {e}");
        }
        if let Some(ss) = seg.sector_size {
            let _ = writeln!(s, "\tsector: {ss} [bytes]");
        }
        if let Some(f) = &seg.flags {
            let _ = writeln!(s, "\tflags : {}", f.join(" "));
        }
    }
    let _ = writeln!(s, "\nKeyslots:");
    for (id, ks) in sorted(&m.keyslots) {
        let _ = writeln!(s, "  {id}: {}", ks.kind);
        let _ = writeln!(s, "\tKey:        {} bits", ks.key_size * 8);
        let prio = match ks.priority.unwrap_or(1) {
            0 => "ignored",
            1 => "normal",
            _ => "preferred",
        };
        let _ = writeln!(s, "\tPriority:   {prio}");
        if let Some(e) = &ks.area.encryption {
            let _ = writeln!(s, "\tCipher:     {e}");
        }
        if let Some(k) = ks.area.key_size {
            let _ = writeln!(s, "\tCipher key: {} bits", k * 8);
        }
        match &ks.kdf {
            Some(KdfJson::Pbkdf2 {
                hash,
                iterations,
                salt,
            }) => {
                let _ = writeln!(s, "\tPBKDF:      pbkdf2");
                let _ = writeln!(s, "\tHash:       {hash}");
                let _ = writeln!(s, "\tIterations: {iterations}");
                let _ = writeln!(s, "\tSalt:       {}", b64_hex(salt));
            }
            Some(
                k @ (KdfJson::Argon2i {
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
                }),
            ) => {
                let name = if matches!(k, KdfJson::Argon2i { .. }) {
                    "argon2i"
                } else {
                    "argon2id"
                };
                let _ = writeln!(s, "\tPBKDF:      {name}");
                let _ = writeln!(s, "\tTime cost:  {time}");
                let _ = writeln!(s, "\tMemory:     {memory}");
                let _ = writeln!(s, "\tThreads:    {cpus}");
                let _ = writeln!(s, "\tSalt:       {}", b64_hex(salt));
            }
            Some(KdfJson::Other) => {
                let _ = writeln!(s, "\tPBKDF:      (unknown)");
            }
            None => {}
        }
        if let Some(af) = &ks.af {
            let _ = writeln!(s, "\tAF stripes: {}", af.stripes);
            let _ = writeln!(s, "\tAF hash:    {}", af.hash);
        }
        let _ = writeln!(s, "\tArea offset:{} [bytes]", ks.area.offset.0);
        let _ = writeln!(s, "\tArea length:{} [bytes]", ks.area.size.0);
        for (did, d) in sorted(&m.digests) {
            if d.keyslots.contains(id) {
                let _ = writeln!(s, "\tDigest ID:  {did}");
            }
        }
    }
    let _ = writeln!(s, "Tokens:");
    for (id, t) in sorted(&m.tokens) {
        let _ = writeln!(s, "  {id}: {}", t.kind);
        for k in &t.keyslots {
            let _ = writeln!(s, "\tKeyslot:    {k}");
        }
    }
    let _ = writeln!(s, "Digests:");
    for (id, d) in sorted(&m.digests) {
        let _ = writeln!(s, "  {id}: {}", d.kind);
        if let Some(hh) = &d.hash {
            let _ = writeln!(s, "\tHash:       {hh}");
        }
        if let Some(it) = d.iterations {
            let _ = writeln!(s, "\tIterations: {it}");
        }
        if let Some(salt) = &d.salt {
            let _ = writeln!(s, "\tSalt:       {}", b64_hex(salt));
        }
        if let Some(dg) = &d.digest {
            let _ = writeln!(s, "\tDigest:     {}", b64_hex(dg));
        }
    }
    s
}
