//! Who still uses a block device: the checks `close` makes before it tears anything down.
//!
//! The kernel keeps an open count for every block device, but exposes it only for
//! device-mapper devices (`DM_DEV_STATUS` → `open_count`, what cryptsetup checks before
//! it answers "Device NAME is still in use."). A bare loop or ublk disk has none in
//! sysfs or an ioctl, so for those the users are found the way `fuser`/`lsof` and
//! `blockdev` users would see them, each check covering one kind of user:
//!
//! - **exclusive claims** (`O_EXCL` open fails with `EBUSY`): a mounted filesystem in any
//!   mount namespace, swap, md/dm/bcache stacked on it, `mkfs` and other exclusive
//!   openers;
//! - **sysfs holders** (`/sys/dev/block/MAJ:MIN/holders`): stacked kernel devices
//!   (dm, md), our own `/dev/mapper` device excepted;
//! - **mounts** (`/proc/self/mountinfo` device numbers): filesystems mounted on it in our
//!   mount namespace (also caught by the claim, named here for the log);
//! - **process descriptors** (`/proc/PID/fd/*`, `statx` with `AT_STATX_DONT_SYNC` so a
//!   hung network or FUSE mount never blocks us): plain opens such as
//!   `exec 3</dev/loopN`, which neither a claim nor a holder reveals;
//! - **loop devices backed by it** (`/sys/block/loop*/loop/backing_file`).
//!
//! In-kernel non-exclusive openers outside these (rare) are not visible; for the
//! fuse+loop frontend the detach itself is a second, atomic check (see
//! [`crate::frontend::loopdev::LoopDevice::detach`]).

use std::os::unix::ffi::OsStrExt;
use std::path::Path;

/// A block device's `(major, minor)`.
pub type DevT = (u32, u32);

fn parse_devt(s: &str) -> Option<DevT> {
    let (a, b) = s.trim().split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Holders of `dev` in sysfs other than those in `ours`, as `NAME (MAJ:MIN)`.
pub fn holders(dev: DevT, ours: &[DevT]) -> Vec<String> {
    let dir = format!("/sys/dev/block/{}:{}/holders", dev.0, dev.1);
    let Ok(rd) = std::fs::read_dir(dir) else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let d = std::fs::read_to_string(format!("/sys/class/block/{name}/dev"))
                .ok()
                .and_then(|s| parse_devt(&s));
            match d {
                Some(d) if ours.contains(&d) => None,
                Some(d) => Some(format!("holder {name} ({}:{})", d.0, d.1)),
                None => Some(format!("holder {name}")),
            }
        })
        .collect()
}

/// Mount points (in our mount namespace) of filesystems on `dev`.
pub fn mounts(dev: DevT) -> Vec<String> {
    let Ok(mi) = std::fs::read_to_string("/proc/self/mountinfo") else {
        return Vec::new();
    };
    mi.lines()
        .filter_map(|l| {
            let mut f = l.split(' ');
            let d = parse_devt(f.nth(2)?)?;
            let mp = f.nth(1)?;
            (d == dev).then(|| format!("mounted on {mp}"))
        })
        .collect()
}

/// Whether an `O_EXCL` open of the block device `path` fails with `EBUSY` (someone
/// holds an exclusive claim: a mount, swap, a stacked device, an exclusive opener).
pub fn claimed(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    matches!(
        std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_EXCL | libc::O_CLOEXEC | libc::O_NONBLOCK)
            .open(path),
        Err(e) if e.raw_os_error() == Some(libc::EBUSY)
    )
}

/// `(S_ISBLK, rdev)` of `path` without syncing attributes (no round trip to a network or
/// FUSE server), or `None`.
fn stat_rdev_nosync(path: &Path) -> Option<DevT> {
    let c = std::ffi::CString::new(path.as_os_str().as_bytes()).ok()?;
    // SAFETY: an all-zero statx is a valid value of this plain C struct.
    let mut st: libc::statx = unsafe { std::mem::zeroed() };
    // SAFETY: `c` is a valid NUL-terminated path and `st` a writable statx buffer.
    let r = unsafe {
        libc::statx(
            libc::AT_FDCWD,
            c.as_ptr(),
            libc::AT_STATX_DONT_SYNC,
            libc::STATX_TYPE,
            &mut st,
        )
    };
    if r != 0 || u32::from(st.stx_mode) & libc::S_IFMT != libc::S_IFBLK {
        return None;
    }
    Some((st.stx_rdev_major, st.stx_rdev_minor))
}

/// Processes other than this one with a descriptor open on the block device `dev`, as
/// `pid N (comm)`.
pub fn processes(dev: DevT) -> Vec<String> {
    let me = std::process::id();
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        if pid == me {
            continue;
        }
        let Ok(fds) = std::fs::read_dir(p.path().join("fd")) else {
            continue;
        };
        let holds = fds.flatten().any(|fd| {
            // Only links to paths can be block devices (not socket:[..], pipe:[..],
            // anon_inode:..): skip the others without a stat.
            let Ok(target) = std::fs::read_link(fd.path()) else {
                return false;
            };
            target.as_os_str().as_bytes().first() == Some(&b'/')
                && stat_rdev_nosync(&fd.path()) == Some(dev)
        });
        if holds {
            let comm = std::fs::read_to_string(p.path().join("comm")).unwrap_or_default();
            out.push(format!("pid {pid} ({})", comm.trim()));
        }
    }
    out
}

/// Loop devices whose backing file is the block device `dev`, as `/dev/loopN`.
pub fn loops_backed_by(dev: DevT) -> Vec<String> {
    let Ok(rd) = std::fs::read_dir("/sys/block") else {
        return Vec::new();
    };
    rd.flatten()
        .filter_map(|e| {
            let name = e.file_name().to_str()?.to_string();
            name.starts_with("loop").then_some(())?;
            let bf = std::fs::read_to_string(e.path().join("loop/backing_file")).ok()?;
            let bf = bf.trim_end_matches('\n');
            (stat_rdev_nosync(Path::new(bf)) == Some(dev))
                .then(|| format!("/dev/{name} (loop over it)"))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn devt_parses() {
        assert_eq!(parse_devt("7:3\n"), Some((7, 3)));
        assert_eq!(parse_devt("x"), None);
    }

    #[test]
    fn mounts_of_an_unused_device_are_none() {
        assert!(mounts((4095, 1_048_575)).is_empty());
        assert!(processes((4095, 1_048_575)).is_empty());
    }
}
