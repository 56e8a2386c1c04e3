//! The process memory scanner: reads the mappings of a process through `/proc/PID/mem`
//! and searches them for [`Needles`], recording pages the kernel refuses.

use std::fmt;
use std::fs::File;
use std::ops::Range;
use std::os::unix::fs::FileExt;

use super::needles::{Accumulator, Needles};
use super::procfs::{read_maps, thread_stack_pointers, Mapping};

const PAGE: u64 = 4096;

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
    /// Exact `/proc/PID/maps` paths not to read (e.g. [`GUEST_MEMFD_PATH`](super::GUEST_MEMFD_PATH)).
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

/// Scans only the mappings of `pid` whose path is `path` (e.g. [`GUEST_MEMFD_PATH`](super::GUEST_MEMFD_PATH)).
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

#[cfg(test)]
mod tests {
    use super::super::tests::key64;
    use super::*;

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
