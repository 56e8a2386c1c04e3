//! Readers of `/proc`: the mappings of a process (`/proc/PID/maps`), the stack pointers
//! of its threads, and the pids of processes by name.

use std::fmt;

/// Path of the kvm backend's guest memory in `/proc/PID/maps` (a deleted memfd).
pub const GUEST_MEMFD_PATH: &str = "/memfd:vmvault-guest (deleted)";
/// Path of a `memfd_secret` mapping in `/proc/PID/maps`.
pub const SECRETMEM_PATH: &str = "/secretmem (deleted)";

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

#[cfg(test)]
mod tests {
    use super::*;

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
}
