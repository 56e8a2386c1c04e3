//! What the scanner looks for: [`Needles`] built from a volume key (its raw bytes and
//! the AES schedules of the keys in it), the word-probe search over a buffer, and the
//! merging of raw matches into reported hits.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::ops::Range;

use super::aes::{self, RoundKey};

/// Raw-key needles: every window of this many key bytes.
const RAW_WINDOW: usize = 16;
/// Schedule needles: this many consecutive round keys.
const SCHEDULE_ROUNDS: usize = 3;
/// Broadcast needles: one round key this many times in a row (a 512-bit register); two
/// copies in a row already count.
const BROADCAST: usize = 4;

/// One byte string searched for, with the windows of it that count as a hit.
#[derive(Clone)]
struct Source {
    label: String,
    bytes: Vec<u8>,
    /// Length of a window that counts as a hit.
    window: usize,
    /// Step between windows (1 for raw bytes, 16 for round keys).
    stride: usize,
    /// How to report a matched range.
    kind: Kind,
}

/// What a [`Source`] is, for reporting.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Raw key bytes: report byte ranges.
    Raw,
    /// A schedule: report round keys.
    Schedule,
    /// One round key repeated: report the number of copies.
    Broadcast,
}

/// What to search for: the windows of the volume key and of its AES schedules.
#[derive(Clone)]
pub struct Needles {
    sources: Vec<Source>,
    /// Probe table: aligned 8-byte word → (source, window start, offset of the word in
    /// the window).
    table: HashMap<u64, Vec<(u32, u32, u8)>>,
    /// Cheap pre-filter over `table` keys (bit `hash(word) % (64 * len)`).
    filter: Vec<u64>,
    max_len: usize,
}

impl fmt::Debug for Source {
    /// Label, length and window; never the bytes (key material).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Source")
            .field("label", &self.label)
            .field("len", &self.bytes.len())
            .field("window", &self.window)
            .field("stride", &self.stride)
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl fmt::Debug for Needles {
    /// The sources (labels and sizes only) and the table size; the probe table holds
    /// words of key material and is not shown.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Needles")
            .field("sources", &self.sources)
            .field("words", &self.table.len())
            .field("max_len", &self.max_len)
            .finish_non_exhaustive()
    }
}

/// Spreads the bits of a probe word for the pre-filter bit index.
fn mix(w: u64) -> u64 {
    w.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(29)
}

impl Needles {
    /// Needles for volume key `key`: its raw bytes, and the schedules of the AES keys in
    /// it: the whole key when it is 16, 24 or 32 bytes long, and each half when it is 32,
    /// 48 or 64 bytes long (XTS). So a 64-byte `aes-xts-plain64` key gives two AES-256
    /// keys, a 32-byte key both one AES-256 key and two AES-128 (XTS) keys.
    ///
    /// # Panics
    /// If the key is shorter than 16 bytes or looks degenerate (fewer than 8 distinct
    /// byte values): such needles would match ordinary memory.
    pub fn for_volume_key(key: &[u8]) -> Needles {
        assert!(key.len() >= RAW_WINDOW, "volume key shorter than 16 bytes");
        let distinct: HashSet<u8> = key.iter().copied().collect();
        assert!(
            distinct.len() >= 8,
            "degenerate test key (too few distinct bytes): needles would match ordinary memory"
        );
        let mut n = Needles::empty();
        n.add_raw(format!("volume key ({} bytes)", key.len()), key);
        let mut aes_keys: Vec<(String, &[u8])> = Vec::new();
        if matches!(key.len(), 16 | 24 | 32) {
            aes_keys.push((format!("AES-{} key = volume key", key.len() * 8), key));
        }
        if matches!(key.len(), 32 | 48 | 64) {
            let h = key.len() / 2;
            for (i, half) in key.chunks_exact(h).enumerate() {
                aes_keys.push((
                    format!(
                        "AES-{} key = volume key bytes {}..{} (XTS {})",
                        h * 8,
                        i * h,
                        (i + 1) * h,
                        if i == 0 { "data key" } else { "tweak key" }
                    ),
                    half,
                ));
            }
        }
        for (label, k) in aes_keys {
            n.add_aes_key(&label, k);
        }
        n.build();
        n
    }

    /// Needles for a secret that is no AES key (a passphrase): any 16-byte window of its
    /// raw bytes, reported under `label`.
    ///
    /// # Panics
    /// As [`Needles::for_volume_key`]: shorter than 16 bytes or degenerate.
    pub fn for_secret(label: &str, bytes: &[u8]) -> Needles {
        assert!(bytes.len() >= RAW_WINDOW, "secret shorter than 16 bytes");
        let distinct: HashSet<u8> = bytes.iter().copied().collect();
        assert!(
            distinct.len() >= 8,
            "degenerate test secret (too few distinct bytes)"
        );
        let mut n = Needles::empty();
        n.add_raw(format!("{label} ({} bytes)", bytes.len()), bytes);
        n.build();
        n
    }

    /// Needles for one AES key (16/24/32 bytes): its raw bytes and schedules.
    pub fn for_aes_key(key: &[u8]) -> Needles {
        let mut n = Needles::empty();
        n.add_raw(format!("AES-{} key", key.len() * 8), key);
        n.add_aes_key(&format!("AES-{} key", key.len() * 8), key);
        n.build();
        n
    }

    fn empty() -> Needles {
        Needles {
            sources: Vec::new(),
            table: HashMap::new(),
            filter: Vec::new(),
            max_len: 0,
        }
    }

    fn add_raw(&mut self, label: String, key: &[u8]) {
        self.sources.push(Source {
            label,
            bytes: key.to_vec(),
            window: RAW_WINDOW.min(key.len()),
            stride: 1,
            kind: Kind::Raw,
        });
    }

    fn add_aes_key(&mut self, label: &str, key: &[u8]) {
        let enc = aes::expand_key(key);
        let rev = aes::decryption_schedule_reversed(&enc);
        let fwd = aes::decryption_schedule_forward(&enc);
        let forms = [
            ("encryption schedule", aes::flatten(&enc)),
            (
                "decryption schedule (aesimc, decryption order)",
                aes::flatten(&rev),
            ),
            (
                "decryption schedule (aesimc, encryption order)",
                aes::flatten(&fwd),
            ),
            (
                "encryption schedule (byte-swapped words)",
                aes::flatten(&aes::word_swapped(&enc)),
            ),
            (
                "decryption schedule (byte-swapped words, decryption order)",
                aes::flatten(&aes::word_swapped(&rev)),
            ),
        ];
        for (form, bytes) in forms {
            self.sources.push(Source {
                label: format!("{label}: {form}"),
                bytes,
                window: 16 * SCHEDULE_ROUNDS,
                stride: 16,
                kind: Kind::Schedule,
            });
        }
        // One round key repeated (SIMD broadcasts spilled to memory: VAES/AVX-512 code
        // keeps `rk[i]` four times in a 512-bit register). Round keys 0 and 1 of AES-256
        // (0 of AES-128/192) are raw key bytes and found as such too.
        let mut seen: HashSet<RoundKey> = HashSet::new();
        for (form, keys) in [("encryption", &enc), ("decryption (aesimc)", &rev)] {
            for (i, rk) in keys.iter().enumerate() {
                if !seen.insert(*rk) {
                    continue;
                }
                let mut bytes = Vec::with_capacity(16 * BROADCAST);
                for _ in 0..BROADCAST {
                    bytes.extend_from_slice(rk);
                }
                self.sources.push(Source {
                    label: format!("{label}: {form} round key {i} repeated (SIMD broadcast)"),
                    bytes,
                    window: 32,
                    stride: 16,
                    kind: Kind::Broadcast,
                });
            }
        }
    }

    fn build(&mut self) {
        let mut table: HashMap<u64, Vec<(u32, u32, u8)>> = HashMap::new();
        for (si, s) in self.sources.iter().enumerate() {
            self.max_len = self.max_len.max(s.bytes.len());
            let mut start = 0;
            while start + s.window <= s.bytes.len() {
                for k in 0..8 {
                    let w = u64::from_ne_bytes(
                        s.bytes[start + k..start + k + 8]
                            .try_into()
                            .expect("8 bytes"),
                    );
                    let e = table.entry(w).or_default();
                    let v = (si as u32, start as u32, k as u8);
                    if !e.contains(&v) {
                        e.push(v);
                    }
                }
                start += s.stride;
            }
        }
        assert!(
            !table.contains_key(&0),
            "a needle has 8 zero bytes in a row: it would match ordinary memory"
        );
        let bits = (table.len() * 16).next_power_of_two().max(1 << 12);
        let mut filter = vec![0u64; bits / 64];
        for &w in table.keys() {
            let h = (mix(w) as usize) & (bits - 1);
            filter[h / 64] |= 1 << (h % 64);
        }
        self.table = table;
        self.filter = filter;
    }

    /// Longest needle in bytes (the overlap kept between chunks).
    pub(super) fn max_len(&self) -> usize {
        self.max_len
    }

    /// Searches `buf`, which starts at address `base` (a multiple of 8 for full
    /// coverage), and returns the matches, extended to the longest matching run inside
    /// `buf`.
    pub(super) fn search(&self, base: u64, buf: &[u8]) -> Vec<RawHit> {
        static ZERO: [u8; 4096] = [0; 4096];
        let mut out = Vec::new();
        if buf.len() < 16 {
            return out;
        }
        let bits = self.filter.len() * 64;
        // First aligned word, then 4 KiB blocks of words. All-zero blocks are skipped
        // (libc's memcmp, fast even in debug builds): no needle has 8 zero bytes in a row
        // (checked in `build`), so no occurrence has its probe word in such a block.
        let mut pos = ((8 - (base % 8)) % 8) as usize;
        while pos + 8 <= buf.len() {
            let block = &buf[pos..(pos + ZERO.len()).min(buf.len())];
            // SAFETY: both pointers are valid for `block.len()` <= 4096 bytes.
            let zero = block.len() == ZERO.len()
                && unsafe { libc::memcmp(block.as_ptr().cast(), ZERO.as_ptr().cast(), ZERO.len()) }
                    == 0;
            if !zero {
                for (j, c) in block.chunks_exact(8).enumerate() {
                    let w = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]);
                    let h = (mix(w) as usize) & (bits - 1);
                    if self.filter[h / 64] & (1 << (h % 64)) != 0 {
                        self.probe(base, buf, pos + 8 * j, w, &mut out);
                    }
                }
            }
            pos += block.len();
        }
        out
    }

    /// Checks the table entries of word `w` found at `buf[pos..]`.
    fn probe(&self, base: u64, buf: &[u8], pos: usize, w: u64, out: &mut Vec<RawHit>) {
        let Some(cands) = self.table.get(&w) else {
            return;
        };
        for &(si, start, k) in cands {
            let s = &self.sources[si as usize];
            let (start, k) = (start as usize, k as usize);
            // Window s.bytes[start..start + window] would sit at buf[p..].
            let Some(p) = pos.checked_sub(k) else {
                continue;
            };
            if p + s.window > buf.len() || buf[p..p + s.window] != s.bytes[start..start + s.window]
            {
                continue;
            }
            // Extend left and right.
            let (mut lo, mut bp) = (start, p);
            while lo > 0 && bp > 0 && s.bytes[lo - 1] == buf[bp - 1] {
                lo -= 1;
                bp -= 1;
            }
            let mut hi = start + s.window;
            let mut be = p + s.window;
            while hi < s.bytes.len() && be < buf.len() && s.bytes[hi] == buf[be] {
                hi += 1;
                be += 1;
            }
            out.push(RawHit {
                source: si as usize,
                origin: (base + bp as u64).wrapping_sub(lo as u64),
                range: lo..hi,
            });
        }
    }

    /// Searches a byte string that is not process memory (a keyring payload, a file):
    /// returns `(offset, what)` for every match.
    pub fn search_bytes(&self, buf: &[u8]) -> Vec<(u64, String)> {
        // Every needle is at least 16 bytes, so every occurrence covers a word at a
        // multiple of 8 from the start of `buf`: one pass finds all.
        let mut acc = Accumulator::default();
        for h in self.search(0, buf) {
            acc.add(h);
        }
        acc.finish(self)
    }
}

/// A match before merging: the needle source would start at `origin` and bytes
/// `range` of it are present.
#[derive(Clone, Debug)]
pub(super) struct RawHit {
    source: usize,
    origin: u64,
    range: Range<usize>,
}

/// Merges raw hits of the same source at the same origin (chunk overlaps, adjacent
/// windows) into maximal ranges.
#[derive(Default)]
pub(super) struct Accumulator {
    m: BTreeMap<(u64, usize), Vec<Range<usize>>>,
}

impl Accumulator {
    pub(super) fn add(&mut self, h: RawHit) {
        let v = self.m.entry((h.origin, h.source)).or_default();
        v.push(h.range);
    }

    /// Returns `(address of the first matching byte, description)` per merged hit.
    pub(super) fn finish(self, n: &Needles) -> Vec<(u64, String)> {
        let mut out = Vec::new();
        // Broadcast runs, merged by address below: source → [start, end) intervals.
        let mut runs: BTreeMap<usize, Vec<Range<u64>>> = BTreeMap::new();
        for ((origin, si), mut ranges) in self.m {
            ranges.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<usize>> = Vec::new();
            for r in ranges {
                match merged.last_mut() {
                    Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            let s = &n.sources[si];
            for r in merged {
                let addr = origin.wrapping_add(r.start as u64);
                let what = match s.kind {
                    Kind::Broadcast => {
                        runs.entry(si)
                            .or_default()
                            .push(addr..addr + r.len() as u64);
                        continue;
                    }
                    Kind::Schedule => format!(
                        "{}, round keys {}..={} ({} bytes)",
                        s.label,
                        r.start.div_ceil(16),
                        (r.end / 16).saturating_sub(1),
                        r.len()
                    ),
                    Kind::Raw if r.len() == s.bytes.len() => {
                        format!("{}: all {} bytes", s.label, r.len())
                    }
                    Kind::Raw => {
                        format!(
                            "{}: bytes {}..{} ({} bytes)",
                            s.label,
                            r.start,
                            r.end,
                            r.len()
                        )
                    }
                };
                out.push((addr, what));
            }
        }
        for (si, mut v) in runs {
            v.sort_by_key(|r| r.start);
            let mut merged: Vec<Range<u64>> = Vec::new();
            for r in v {
                match merged.last_mut() {
                    Some(l) if r.start <= l.end => l.end = l.end.max(r.end),
                    _ => merged.push(r),
                }
            }
            for r in merged {
                let len = r.end - r.start;
                out.push((
                    r.start,
                    format!("{}: {} copies ({len} bytes)", n.sources[si].label, len / 16),
                ));
            }
        }
        out.sort_by_key(|(a, _)| *a);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::super::tests::key64;
    use super::*;

    #[test]
    fn finds_raw_key_halves_and_windows_at_any_alignment() {
        let key = key64();
        let n = Needles::for_volume_key(&key);
        for align in 0..9 {
            let mut buf = vec![0xeeu8; 1000];
            buf[100 + align..164 + align].copy_from_slice(&key);
            let hits = n.search_bytes(&buf);
            let raw: Vec<_> = hits
                .iter()
                .filter(|(_, w)| w.starts_with("volume key"))
                .collect();
            assert_eq!(raw.len(), 1, "{hits:?}");
            assert_eq!(raw[0].0, 100 + align as u64);
            assert!(raw[0].1.contains("all 64 bytes"), "{}", raw[0].1);
        }
        // Second half only, and a 16-byte window at an odd offset.
        let mut buf = vec![0u8; 300];
        buf[8..40].copy_from_slice(&key[32..]);
        buf[203..219].copy_from_slice(&key[7..23]);
        let hits = n.search_bytes(&buf);
        assert!(hits
            .iter()
            .any(|(o, w)| *o == 8 && w.contains("bytes 32..64")));
        assert!(hits
            .iter()
            .any(|(o, w)| *o == 203 && w.contains("bytes 7..23")));
        // 15 bytes are not enough.
        let mut buf = vec![0u8; 100];
        buf[10..25].copy_from_slice(&key[0..15]);
        assert!(n.search_bytes(&buf).is_empty());
    }

    #[test]
    fn finds_every_schedule_form_and_partial_schedules() {
        let key = key64();
        let n = Needles::for_volume_key(&key);
        let enc = aes::expand_key(&key[32..]);
        let forms = [
            ("encryption schedule, round keys 0..=14", aes::flatten(&enc)),
            (
                "decryption schedule (aesimc, decryption order), round keys 0..=14",
                aes::flatten(&aes::decryption_schedule_reversed(&enc)),
            ),
            (
                "decryption schedule (aesimc, encryption order), round keys 0..=14",
                aes::flatten(&aes::decryption_schedule_forward(&enc)),
            ),
            (
                "encryption schedule (byte-swapped words), round keys 0..=14",
                aes::flatten(&aes::word_swapped(&enc)),
            ),
        ];
        for (want, bytes) in forms {
            let mut buf = vec![0x11u8; 4096];
            buf[1005..1005 + 240].copy_from_slice(&bytes);
            let hits = n.search_bytes(&buf);
            assert!(
                hits.iter()
                    .any(|(o, w)| *o == 1005 && w.contains("bytes 32..64") && w.contains(want)),
                "{want}: {hits:?}"
            );
        }
        // Three round keys from the middle are found, two are not.
        let mut buf = vec![0u8; 512];
        buf[64..112].copy_from_slice(&aes::flatten(&enc[5..8]));
        let hits = n.search_bytes(&buf);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert!(hits[0].1.contains("round keys 5..=7"), "{hits:?}");
        let mut buf = vec![0u8; 512];
        buf[64..96].copy_from_slice(&aes::flatten(&enc[5..7]));
        assert!(n.search_bytes(&buf).is_empty());
    }

    #[test]
    fn finds_broadcast_round_keys_merged_into_one_run() {
        let key = key64();
        let n = Needles::for_volume_key(&key);
        let dec = aes::decryption_schedule_reversed(&aes::expand_key(&key[..32]));
        let mut buf = vec![0u8; 1024];
        for i in 0..8 {
            buf[128 + 16 * i..144 + 16 * i].copy_from_slice(&dec[7]);
        }
        let hits = n.search_bytes(&buf);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].0, 128);
        assert!(
            hits[0]
                .1
                .contains("decryption (aesimc) round key 7 repeated")
                && hits[0].1.contains("8 copies"),
            "{hits:?}"
        );
        // A single copy of an inner round key is not a hit.
        let mut buf = vec![0u8; 1024];
        buf[128..144].copy_from_slice(&dec[7]);
        assert!(n.search_bytes(&buf).is_empty());
    }
}
