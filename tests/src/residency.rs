//! Key-residency scanner: where does a volume key (or its AES key schedule) live?
//!
//! Given the volume key, [`Needles`] lists what to look for:
//! - the raw key bytes: any 16-byte window of it, so the whole key, each XTS half and
//!   partial copies are all found (a hit is extended to the longest matching run);
//! - for every AES key in it (the whole key if it is 16/24/32 bytes, each half for XTS),
//!   the expanded schedules, findaes-style: any 3 consecutive round keys of
//!   - the encryption schedule (FIPS-197 byte order, as AES-NI code stores it),
//!   - the equivalent inverse cipher schedule in decryption order (`aesimc` form:
//!     OpenSSL/Linux AES-NI, vault-vm's engine, table-driven C code),
//!   - the same `aesimc` keys in encryption order (RustCrypto's AES-NI backend),
//!   - the encryption and reversed decryption schedules with byte-swapped 32-bit words
//!     (portable C code keeping big-endian-loaded `u32`s);
//! - any single round key stored twice or more in a row (a SIMD broadcast spilled to the
//!   stack: VAES code keeps each round key 4 times in a 512-bit register).
//!
//! Not detected: bitsliced/fixsliced software schedules (e.g. the `aes` crate's soft
//! backend) and keys that are only ever in registers — no findaes-style tool sees those.
//!
//! Where it looks:
//! - [`scan_process`]: every readable mapping of `/proc/PID/maps`, read through
//!   `/proc/PID/mem` (root or ptrace access needed). Pages the kernel refuses (`EIO`:
//!   `memfd_secret` pages, `VM_IO` mappings, ...) are recorded as unreadable, page by
//!   page, and never silently dropped. Mappings named in [`ScanOptions::exclude`] are
//!   listed but not read.
//! - [`scan_mapping`]: one named mapping only (e.g. the vault's guest memory).
//! - [`scan_keyrings`]: `/proc/keys` plus the keyrings `@t @p @s @u @us` of the calling
//!   process, walked recursively; payloads are read where the kernel allows it.
//!
//! Search cost is one table probe per aligned 8-byte word of memory: every needle is at
//! least 16 bytes long, so each occurrence covers an 8-aligned word at one of 8 known
//! offsets into the needle.

#[path = "residency_aes.rs"]
pub mod aes;

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use aes::RoundKey;

/// Path of the kvm backend's guest memory in `/proc/PID/maps` (a deleted memfd).
pub const GUEST_MEMFD_PATH: &str = "/memfd:vmvault-guest (deleted)";
/// Path of a `memfd_secret` mapping in `/proc/PID/maps`.
pub const SECRETMEM_PATH: &str = "/secretmem (deleted)";

const PAGE: u64 = 4096;
/// Raw-key needles: every window of this many key bytes.
const RAW_WINDOW: usize = 16;
/// Schedule needles: this many consecutive round keys.
const SCHEDULE_ROUNDS: usize = 3;
/// Broadcast needles: one round key this many times in a row (a 512-bit register); two
/// copies in a row already count.
const BROADCAST: usize = 4;

/// One byte string searched for, with the windows of it that count as a hit.
#[derive(Clone, Debug)]
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
#[derive(Clone, Debug)]
pub struct Needles {
    sources: Vec<Source>,
    /// Probe table: aligned 8-byte word → (source, window start, offset of the word in
    /// the window).
    table: HashMap<u64, Vec<(u32, u32, u8)>>,
    /// Cheap pre-filter over `table` keys (bit `hash(word) % (64 * len)`).
    filter: Vec<u64>,
    max_len: usize,
}

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
    fn max_len(&self) -> usize {
        self.max_len
    }

    /// Searches `buf`, which starts at address `base` (a multiple of 8 for full
    /// coverage), and returns the matches, extended to the longest matching run inside
    /// `buf`.
    fn search(&self, base: u64, buf: &[u8]) -> Vec<RawHit> {
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
struct RawHit {
    source: usize,
    origin: u64,
    range: Range<usize>,
}

/// Merges raw hits of the same source at the same origin (chunk overlaps, adjacent
/// windows) into maximal ranges.
#[derive(Default)]
struct Accumulator {
    m: BTreeMap<(u64, usize), Vec<Range<usize>>>,
}

impl Accumulator {
    fn add(&mut self, h: RawHit) {
        let v = self.m.entry((h.origin, h.source)).or_default();
        v.push(h.range);
    }

    /// Returns `(address of the first matching byte, description)` per merged hit.
    fn finish(self, n: &Needles) -> Vec<(u64, String)> {
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

/// One line of `/proc/PID/maps`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Mapping {
    /// Start address.
    pub start: u64,
    /// End address (exclusive).
    pub end: u64,
    /// Permissions, e.g. `rw-p`.
    pub perms: String,
    /// Offset into the mapped file.
    pub offset: u64,
    /// Path or pseudo-path (`[heap]`, `/memfd:vmvault-guest (deleted)`), empty for
    /// anonymous memory.
    pub path: String,
}

impl Mapping {
    /// Whether the mapping has read permission.
    pub fn readable(&self) -> bool {
        self.perms.starts_with('r')
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.end - self.start
    }

    /// Whether the mapping is empty.
    pub fn is_empty(&self) -> bool {
        self.end == self.start
    }
}

impl fmt::Display for Mapping {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:x}-{:x} {} {:x} {}",
            self.start,
            self.end,
            self.perms,
            self.offset,
            if self.path.is_empty() {
                "[anon]"
            } else {
                &self.path
            }
        )
    }
}

/// Parses the text of `/proc/PID/maps`.
pub fn parse_maps(text: &str) -> Vec<Mapping> {
    let mut v = Vec::new();
    for line in text.lines() {
        // start-end perms offset dev inode [path]
        let mut it = line.splitn(6, ' ');
        let (Some(range), Some(perms), Some(off), Some(_dev), Some(_inode)) =
            (it.next(), it.next(), it.next(), it.next(), it.next())
        else {
            continue;
        };
        let path = it.next().unwrap_or("").trim_start().to_string();
        let Some((s, e)) = range.split_once('-') else {
            continue;
        };
        let (Ok(start), Ok(end), Ok(offset)) = (
            u64::from_str_radix(s, 16),
            u64::from_str_radix(e, 16),
            u64::from_str_radix(off, 16),
        ) else {
            continue;
        };
        v.push(Mapping {
            start,
            end,
            perms: perms.to_string(),
            offset,
            path,
        });
    }
    v
}

/// Reads and parses `/proc/PID/maps`.
pub fn read_maps(pid: u32) -> std::io::Result<Vec<Mapping>> {
    Ok(parse_maps(&std::fs::read_to_string(format!(
        "/proc/{pid}/maps"
    ))?))
}

/// A place where key material was found.
#[derive(Clone, Debug)]
pub struct Hit {
    /// Process.
    pub pid: u32,
    /// The mapping it is in.
    pub mapping: Mapping,
    /// Address of the first matching byte.
    pub addr: u64,
    /// What matched (which key, which form, which bytes or round keys).
    pub what: String,
    /// The threads whose stack pointer lies in this mapping (`TID (comm)`), if any:
    /// the mapping is their stack.
    pub stack_of: Vec<String>,
}

impl Hit {
    /// Offset of the hit inside its mapping.
    pub fn offset_in_mapping(&self) -> u64 {
        self.addr - self.mapping.start
    }
}

impl fmt::Display for Hit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "pid {} at {:#x} (mapping {}{}, offset {:#x} in mapping, file offset {:#x}): {}",
            self.pid,
            self.addr,
            self.mapping,
            if self.stack_of.is_empty() {
                String::new()
            } else {
                format!(" = stack of thread {}", self.stack_of.join(", "))
            },
            self.offset_in_mapping(),
            self.mapping.offset + self.offset_in_mapping(),
            self.what
        )
    }
}

/// Which mappings to leave out, and how to read.
#[derive(Clone, Debug, Default)]
pub struct ScanOptions {
    /// Exact `/proc/PID/maps` paths not to read (e.g. [`GUEST_MEMFD_PATH`]).
    pub exclude: Vec<String>,
    /// Also try mappings without read permission (`/proc/PID/mem` reads them with
    /// `FOLL_FORCE` where the kernel allows it, e.g. `PROT_NONE` memory).
    pub force_unreadable: bool,
}

impl ScanOptions {
    /// Options excluding the mappings with these paths.
    pub fn excluding(paths: &[&str]) -> Self {
        ScanOptions {
            exclude: paths.iter().map(|s| s.to_string()).collect(),
            force_unreadable: false,
        }
    }
}

/// The result of scanning one process.
#[derive(Clone, Debug, Default)]
pub struct ScanReport {
    /// Process.
    pub pid: u32,
    /// Where key material was found.
    pub hits: Vec<Hit>,
    /// Mappings not read because they matched [`ScanOptions::exclude`].
    pub excluded: Vec<Mapping>,
    /// Mappings without read permission, not read (unless forced).
    pub not_readable: Vec<Mapping>,
    /// Readable mappings with pages `/proc/PID/mem` refused (address ranges).
    pub refused: Vec<(Mapping, Vec<Range<u64>>)>,
    /// Bytes actually read and searched.
    pub bytes_scanned: u64,
    /// Mappings read.
    pub mappings_scanned: usize,
}

impl ScanReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.hits.is_empty()
    }

    /// Hits inside mappings with this path.
    pub fn hits_in(&self, path: &str) -> Vec<&Hit> {
        self.hits
            .iter()
            .filter(|h| h.mapping.path == path)
            .collect()
    }

    /// Total bytes refused in mappings with this path.
    pub fn refused_bytes_in(&self, path: &str) -> u64 {
        self.refused
            .iter()
            .filter(|(m, _)| m.path == path)
            .flat_map(|(_, r)| r.iter())
            .map(|r| r.end - r.start)
            .sum()
    }
}

impl fmt::Display for ScanReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "pid {}: {} mappings, {} MiB searched, {} hit(s)",
            self.pid,
            self.mappings_scanned,
            self.bytes_scanned >> 20,
            self.hits.len()
        )?;
        // Hits grouped by mapping, at most PER_MAPPING lines each.
        const PER_MAPPING: usize = 12;
        let mut i = 0;
        while i < self.hits.len() {
            let m = &self.hits[i].mapping;
            let group: Vec<&Hit> = self.hits[i..]
                .iter()
                .take_while(|h| h.mapping == *m)
                .collect();
            let stack = &group[0].stack_of;
            writeln!(
                f,
                "  {} hit(s) in {m}{}:",
                group.len(),
                if stack.is_empty() {
                    String::new()
                } else {
                    format!(" = stack of thread {}", stack.join(", "))
                }
            )?;
            for h in group.iter().take(PER_MAPPING) {
                writeln!(
                    f,
                    "    HIT at {:#x} (+{:#x}): {}",
                    h.addr,
                    h.offset_in_mapping(),
                    h.what
                )?;
            }
            if group.len() > PER_MAPPING {
                writeln!(f, "    ... and {} more", group.len() - PER_MAPPING)?;
            }
            i += group.len();
        }
        for m in &self.excluded {
            writeln!(f, "  excluded (not read): {m}")?;
        }
        for (m, r) in &self.refused {
            let n: u64 = r.iter().map(|r| r.end - r.start).sum();
            writeln!(
                f,
                "  unreadable through /proc/{}/mem: {} of {} bytes of {m}",
                self.pid,
                n,
                m.len()
            )?;
        }
        let mut np: Vec<String> = self
            .not_readable
            .iter()
            .filter(|m| !m.path.is_empty())
            .map(|m| m.path.clone())
            .collect();
        np.dedup();
        let anon = self
            .not_readable
            .iter()
            .filter(|m| m.path.is_empty())
            .count();
        writeln!(
            f,
            "  no read permission (not read): {anon} anonymous mapping(s){}{}",
            if np.is_empty() { "" } else { ", " },
            np.join(", ")
        )
    }
}

/// Reads `[start, end)` of `mem` in chunks and calls `f(addr, bytes)` on runs of
/// readable memory, each run overlapping the previous one of the same contiguous
/// stretch by `overlap` bytes; returns the refused page ranges.
fn read_runs(
    mem: &File,
    start: u64,
    end: u64,
    overlap: usize,
    mut f: impl FnMut(u64, &[u8]),
) -> Vec<Range<u64>> {
    const CHUNK: usize = 4 << 20;
    let mut refused: Vec<Range<u64>> = Vec::new();
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK + overlap);
    let mut run_addr = start;
    let mut tmp = vec![0u8; CHUNK];
    let mut pos = start;
    let flush = |buf: &mut Vec<u8>, run_addr: u64, f: &mut dyn FnMut(u64, &[u8])| {
        if !buf.is_empty() {
            f(run_addr, buf);
        }
        buf.clear();
    };
    while pos < end {
        let want = ((end - pos) as usize).min(CHUNK);
        match mem.read_at(&mut tmp[..want], pos) {
            Ok(n) if n > 0 => {
                buf.extend_from_slice(&tmp[..n]);
                pos += n as u64;
                if buf.len() >= CHUNK {
                    f(run_addr, &buf);
                    let keep = overlap.min(buf.len());
                    let cut = buf.len() - keep;
                    run_addr += cut as u64;
                    buf.drain(..cut);
                }
            }
            _ => {
                // Refused (EIO) or nothing: give up on this page, start a new run.
                flush(&mut buf, run_addr, &mut f);
                let next = ((pos / PAGE) + 1) * PAGE;
                let next = next.min(end);
                match refused.last_mut() {
                    Some(r) if r.end == pos => r.end = next,
                    _ => refused.push(pos..next),
                }
                pos = next;
                run_addr = pos;
            }
        }
    }
    flush(&mut buf, run_addr, &mut f);
    refused
}

/// The threads of `pid` as `(tid, comm, stack pointer)`, from
/// `/proc/PID/task/TID/syscall` (threads running at that instant have no stack pointer
/// there and are left out).
pub fn thread_stack_pointers(pid: u32) -> Vec<(u32, String, u64)> {
    let Ok(rd) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return Vec::new();
    };
    let mut v = Vec::new();
    for e in rd.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|t| t.parse::<u32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm"))
            .map(|c| c.trim_end().to_string())
            .unwrap_or_default();
        let Ok(sc) = std::fs::read_to_string(e.path().join("syscall")) else {
            continue;
        };
        // "nr a1 .. a6 sp pc" or "-1 sp pc" or "running".
        let f: Vec<&str> = sc.split_whitespace().collect();
        if f.len() >= 3 {
            if let Ok(sp) = u64::from_str_radix(f[f.len() - 2].trim_start_matches("0x"), 16) {
                v.push((tid, comm, sp));
            }
        }
    }
    v.sort_unstable();
    v
}

/// Scans the memory of `pid` for `needles`, mapping by mapping.
pub fn scan_process(
    pid: u32,
    needles: &Needles,
    opts: &ScanOptions,
) -> std::io::Result<ScanReport> {
    let maps = read_maps(pid)?;
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let threads = thread_stack_pointers(pid);
    let mut rep = ScanReport {
        pid,
        ..Default::default()
    };
    for m in maps {
        if opts.exclude.contains(&m.path) {
            rep.excluded.push(m);
            continue;
        }
        if !m.readable() && !opts.force_unreadable {
            rep.not_readable.push(m);
            continue;
        }
        // [vsyscall] lives above the range pread offsets can name.
        if m.start >= 1 << 63 {
            rep.not_readable.push(m);
            continue;
        }
        scan_one(pid, &mem, &m, needles, &threads, &mut rep);
    }
    Ok(rep)
}

fn scan_one(
    pid: u32,
    mem: &File,
    m: &Mapping,
    needles: &Needles,
    threads: &[(u32, String, u64)],
    rep: &mut ScanReport,
) {
    let overlap = needles.max_len().div_ceil(8) * 8;
    let mut acc = Accumulator::default();
    let mut scanned = 0u64;
    let refused = read_runs(mem, m.start, m.end, overlap, |addr, bytes| {
        scanned += bytes.len() as u64;
        for h in needles.search(addr, bytes) {
            acc.add(h);
        }
    });
    rep.bytes_scanned += scanned;
    rep.mappings_scanned += 1;
    if !refused.is_empty() {
        rep.refused.push((m.clone(), refused));
    }
    let stack_of: Vec<String> = threads
        .iter()
        .filter(|(_, _, sp)| (m.start..m.end).contains(sp))
        .map(|(tid, comm, _)| format!("{tid} ({comm})"))
        .collect();
    for (addr, what) in acc.finish(needles) {
        rep.hits.push(Hit {
            pid,
            mapping: m.clone(),
            addr,
            what,
            stack_of: stack_of.clone(),
        });
    }
}

/// Scans only the mappings of `pid` whose path is `path` (e.g. [`GUEST_MEMFD_PATH`]).
/// Errors with `NotFound` if there is no such mapping.
pub fn scan_mapping(pid: u32, path: &str, needles: &Needles) -> std::io::Result<ScanReport> {
    let maps = read_maps(pid)?;
    let mem = File::open(format!("/proc/{pid}/mem"))?;
    let mut rep = ScanReport {
        pid,
        ..Default::default()
    };
    for m in maps.iter().filter(|m| m.path == path) {
        scan_one(pid, &mem, m, needles, &[], &mut rep);
    }
    if rep.mappings_scanned == 0 {
        return Err(std::io::Error::new(
            std::io::ErrorKind::NotFound,
            format!("pid {pid} has no mapping {path}"),
        ));
    }
    Ok(rep)
}

/// Pids of processes whose `comm` is `name` (e.g. `vaultsetup`).
pub fn pids_named(name: &str) -> Vec<u32> {
    let Ok(rd) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut v: Vec<u32> = rd
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .filter(|pid: &u32| {
            std::fs::read_to_string(format!("/proc/{pid}/comm"))
                .map(|c| c.trim_end() == name)
                .unwrap_or(false)
        })
        .collect();
    v.sort_unstable();
    v
}

// ---------------------------------------------------------------------------------
// Keyrings

const KEYCTL_GET_KEYRING_ID: libc::c_long = 0;
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_READ: libc::c_long = 11;

/// The special keyrings walked by [`scan_keyrings`].
const SPECIAL_KEYRINGS: [(&str, i32); 5] =
    [("@t", -1), ("@p", -2), ("@s", -3), ("@u", -4), ("@us", -5)];

fn keyctl(op: libc::c_long, a: libc::c_long, b: libc::c_long, c: libc::c_long) -> i64 {
    // SAFETY: keyctl(2) with integer arguments, or for DESCRIBE/READ a pointer/length pair
    // the callers below guarantee describes a valid writable buffer (or NULL/0).
    unsafe { libc::syscall(libc::SYS_keyctl, op, a, b, c) }
}

/// `KEYCTL_DESCRIBE`: `type;uid;gid;perm;description`.
fn describe(serial: i32) -> Option<String> {
    let mut buf = vec![0u8; 4096];
    let n = keyctl(
        KEYCTL_DESCRIBE,
        serial as libc::c_long,
        buf.as_mut_ptr() as libc::c_long,
        buf.len() as libc::c_long,
    );
    if n <= 0 {
        return None;
    }
    buf.truncate((n as usize).min(buf.len()));
    while buf.last() == Some(&0) {
        buf.pop();
    }
    Some(String::from_utf8_lossy(&buf).into_owned())
}

/// `KEYCTL_READ` of the whole payload, or the errno.
fn read_payload(serial: i32) -> Result<Vec<u8>, std::io::Error> {
    let n = keyctl(KEYCTL_READ, serial as libc::c_long, 0, 0);
    if n < 0 {
        return Err(std::io::Error::last_os_error());
    }
    let mut buf = vec![0u8; n as usize + 16];
    let m = keyctl(
        KEYCTL_READ,
        serial as libc::c_long,
        buf.as_mut_ptr() as libc::c_long,
        buf.len() as libc::c_long,
    );
    if m < 0 {
        return Err(std::io::Error::last_os_error());
    }
    buf.truncate((m as usize).min(buf.len()));
    Ok(buf)
}

/// One key seen by [`scan_keyrings`].
#[derive(Clone, Debug)]
pub struct KeyEntry {
    /// Serial.
    pub serial: i32,
    /// Key type (`user`, `logon`, `keyring`, ...).
    pub key_type: String,
    /// Description.
    pub description: String,
    /// How it was found (`/proc/keys`, `@s`, `@u > ...`).
    pub found_via: String,
    /// Payload length, when it could be read.
    pub payload_len: Option<usize>,
    /// Why the payload could not be read (`logon` keys are never readable from
    /// userspace; others may lack read permission).
    pub unreadable: Option<String>,
}

/// A key payload that contains key material.
#[derive(Clone, Debug)]
pub struct KeyHit {
    /// The key.
    pub key: KeyEntry,
    /// Offset in the payload.
    pub offset: u64,
    /// What matched.
    pub what: String,
}

impl fmt::Display for KeyHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "key {} ({} \"{}\", via {}) payload offset {}: {}",
            self.key.serial,
            self.key.key_type,
            self.key.description,
            self.key.found_via,
            self.offset,
            self.what
        )
    }
}

/// The result of [`scan_keyrings`].
#[derive(Clone, Debug, Default)]
pub struct KeyringReport {
    /// Every key seen (in `/proc/keys` or in a walked keyring).
    pub keys: Vec<KeyEntry>,
    /// Payloads holding key material.
    pub hits: Vec<KeyHit>,
}

impl KeyringReport {
    /// Whether nothing was found.
    pub fn is_clean(&self) -> bool {
        self.hits.is_empty()
    }
}

impl fmt::Display for KeyringReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let read = self.keys.iter().filter(|k| k.payload_len.is_some()).count();
        writeln!(
            f,
            "keyrings: {} keys seen, {} payloads read, {} hit(s)",
            self.keys.len(),
            read,
            self.hits.len()
        )?;
        for h in &self.hits {
            writeln!(f, "  HIT {h}")?;
        }
        for k in self.keys.iter().filter(|k| k.unreadable.is_some()) {
            writeln!(
                f,
                "  not readable: key {} ({} \"{}\"): {}",
                k.serial,
                k.key_type,
                k.description,
                k.unreadable.as_deref().unwrap_or("")
            )?;
        }
        Ok(())
    }
}

/// Serials listed in `/proc/keys` (keys this process may view).
pub fn proc_keys_serials() -> std::io::Result<Vec<i32>> {
    let text = std::fs::read_to_string("/proc/keys")?;
    Ok(text
        .lines()
        .filter_map(|l| i32::from_str_radix(l.split_whitespace().next()?, 16).ok())
        .collect())
}

/// Lists `/proc/keys` and walks this process's keyrings (`@t @p @s @u @us`, recursively);
/// reads every payload the kernel lets it read and searches it for `needles`.
pub fn scan_keyrings(needles: &Needles) -> KeyringReport {
    let mut rep = KeyringReport::default();
    let mut seen: HashSet<i32> = HashSet::new();
    let mut todo: Vec<(i32, String)> = proc_keys_serials()
        .unwrap_or_default()
        .into_iter()
        .map(|s| (s, "/proc/keys".to_string()))
        .collect();
    for (name, id) in SPECIAL_KEYRINGS {
        let r = keyctl(KEYCTL_GET_KEYRING_ID, id as libc::c_long, 0, 0);
        if r > 0 {
            todo.push((r as i32, name.to_string()));
        }
    }
    while let Some((serial, via)) = todo.pop() {
        if !seen.insert(serial) {
            continue;
        }
        let desc = describe(serial);
        let (key_type, description) = match &desc {
            Some(d) => {
                let mut it = d.splitn(5, ';');
                let t = it.next().unwrap_or("").to_string();
                let description = it.nth(3).unwrap_or("").to_string();
                (t, description)
            }
            None => ("?".to_string(), "(cannot describe)".to_string()),
        };
        let mut entry = KeyEntry {
            serial,
            key_type: key_type.clone(),
            description,
            found_via: via.clone(),
            payload_len: None,
            unreadable: None,
        };
        match read_payload(serial) {
            Ok(p) => {
                entry.payload_len = Some(p.len());
                if key_type == "keyring" {
                    for c in p.chunks_exact(4) {
                        let child = i32::from_ne_bytes([c[0], c[1], c[2], c[3]]);
                        todo.push((child, format!("{via} > {serial}")));
                    }
                }
                for (offset, what) in needles.search_bytes(&p) {
                    rep.hits.push(KeyHit {
                        key: entry.clone(),
                        offset,
                        what,
                    });
                }
            }
            Err(e) => {
                entry.unreadable = Some(if key_type == "logon" {
                    format!("logon key: payload never readable from userspace ({e})")
                } else {
                    e.to_string()
                });
            }
        }
        rep.keys.push(entry);
    }
    rep.keys.sort_by_key(|k| k.serial);
    rep
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key64() -> Vec<u8> {
        (0..64u32)
            .map(|i| (i.wrapping_mul(0x9d) ^ 0x5a) as u8)
            .collect()
    }

    #[test]
    fn parses_maps_lines() {
        let m = parse_maps(
            "7f0000000000-7f0000800000 rw-s 00000000 00:01 1234                       /memfd:vmvault-guest (deleted)\n\
             55d0c0000000-55d0c0021000 rw-p 00000000 00:00 0                          [heap]\n\
             7ffd00000000-7ffd00001000 r--p 00000000 00:00 0 \n\
             ffffffffff600000-ffffffffff601000 --xp 00000000 00:00 0                  [vsyscall]\n",
        );
        assert_eq!(m.len(), 4);
        assert_eq!(m[0].path, GUEST_MEMFD_PATH);
        assert_eq!(m[0].len(), 0x80_0000);
        assert_eq!(m[1].path, "[heap]");
        assert!(m[2].path.is_empty() && m[2].readable());
        assert!(!m[3].readable());
    }

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

    #[test]
    fn chunk_overlap_and_refused_pages_in_read_runs() {
        // read_runs over a real file: a needle straddling the 4 MiB chunk boundary.
        let key = key64();
        let n = Needles::for_volume_key(&key);
        let path = std::env::temp_dir().join(format!("residency-runs-{}", std::process::id()));
        let mut data = vec![0u8; (4 << 20) + 8192];
        let at = (4 << 20) - 30;
        data[at..at + 64].copy_from_slice(&key);
        std::fs::write(&path, &data).unwrap();
        let f = File::open(&path).unwrap();
        let mut acc = Accumulator::default();
        let refused = read_runs(&f, 0, data.len() as u64, 256, |a, b| {
            for h in n.search(a, b) {
                acc.add(h);
            }
        });
        std::fs::remove_file(&path).unwrap();
        assert!(refused.is_empty());
        let hits = acc.finish(&n);
        assert_eq!(hits.len(), 1, "{hits:?}");
        assert_eq!(hits[0].0, at as u64);
        assert!(hits[0].1.contains("all 64 bytes"));
    }
}
