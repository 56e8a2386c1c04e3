//! `/dev/mapper/NAME` devices left behind by a vmvaultd that died.
//!
//! A dm-linear device over the dead daemon's frontend keeps `NAME` taken (and holds the
//! dead loop or ublk disk open) until someone runs `dmsetup remove NAME`. The daemon
//! removes such devices at start-up, but only its own: device-mapper names are global,
//! and another run directory's daemon may serve live volumes on this host.
//!
//! Ownership is recorded, not guessed: before it creates `/dev/mapper/NAME`, the daemon
//! writes `<run-dir>/dm/NAME` holding the device's uuid, and deletes it after removing
//! the device. The run directory is flocked by one daemon at a time, so at start-up
//! every record there was written by a predecessor of this daemon. A recorded device is
//! removed only when all of these hold:
//! - a dm device `NAME` exists and its uuid is the recorded one (prefix `VMVAULT-`);
//! - its table is one `linear` target over one device;
//! - that device is gone, or it is a loop device whose backing file lies under this run
//!   directory's `mnt/` (our FUSE exports), or a ublk disk of the `vmvault` target whose
//!   server process is gone.
//!
//! Anything else (the name reused by another run directory after a manual
//! `dmsetup remove`, a live server) is left alone and reported. A stale device still
//! held open gets an `error` table and a deferred remove ([`mapper::remove_stale`]).

use std::path::{Path, PathBuf};

use crate::frontend::mapper::{self, StaleRemoval, UUID_PREFIX};

/// The records of `/dev/mapper` names one run directory's daemon created:
/// `<run-dir>/dm/NAME`, each holding the device's dm uuid.
#[derive(Clone, Debug)]
pub struct MapperRecords {
    dir: PathBuf,
}

impl MapperRecords {
    /// The records of `run_dir`.
    pub fn new(run_dir: &Path) -> Self {
        MapperRecords {
            dir: run_dir.join("dm"),
        }
    }

    /// Records that this daemon is about to create dm device `name` with `uuid`.
    pub fn record(&self, name: &str, uuid: &str) -> std::io::Result<()> {
        use std::os::unix::fs::DirBuilderExt;
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(&self.dir)?;
        std::fs::write(self.dir.join(name), format!("{uuid}\n"))
    }

    /// Forgets `name` (its device was removed, or never created).
    pub fn forget(&self, name: &str) {
        let _ = std::fs::remove_file(self.dir.join(name));
    }

    /// `(name, uuid)` of every record.
    pub fn list(&self) -> Vec<(String, String)> {
        let Ok(rd) = std::fs::read_dir(&self.dir) else {
            return Vec::new();
        };
        let mut v: Vec<(String, String)> = rd
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_str()?.to_string();
                let uuid = std::fs::read_to_string(e.path()).ok()?;
                Some((name, uuid.trim().to_string()))
            })
            .collect();
        v.sort();
        v
    }
}

/// What lies under a stale-candidate dm device.
#[derive(Debug, PartialEq, Eq)]
enum Under {
    /// The device no longer exists (or serves nothing).
    Gone,
    /// One of this run directory's volumes (loop over our FUSE export, dead ublk server).
    Ours(String),
    /// Not provably ours: leave the dm device alone.
    Foreign(String),
}

/// `M:m` of a table that is exactly one `linear` target with offset 0.
fn linear_target(table: &[(u64, u64, String, String)]) -> Option<(u32, u32)> {
    let [(0, _, kind, params)] = table else {
        return None;
    };
    if kind != "linear" {
        return None;
    }
    let mut it = params.split_whitespace();
    let (a, b) = it.next()?.split_once(':')?;
    (it.next()? == "0" && it.next().is_none()).then_some(())?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Classifies the block device `(major, minor)` under a recorded dm device.
fn classify(dev: (u32, u32), mnt_root: &Path) -> Under {
    let sys = PathBuf::from(format!("/sys/dev/block/{}:{}", dev.0, dev.1));
    let Ok(target) = std::fs::read_link(&sys) else {
        return Under::Gone;
    };
    let Some(kname) = target.file_name().and_then(|n| n.to_str()) else {
        return Under::Foreign(format!("{}:{}", dev.0, dev.1));
    };
    if let Some(n) = kname.strip_prefix("loop") {
        let bf = format!("/sys/block/loop{n}/loop/backing_file");
        return match std::fs::read_to_string(&bf) {
            // No backing file: detached, serves nothing.
            Err(_) => Under::Gone,
            Ok(f) if Path::new(f.trim()).starts_with(mnt_root) => {
                Under::Ours(format!("/dev/{kname} over {}", f.trim()))
            }
            Ok(f) => Under::Foreign(format!("/dev/{kname} over {}", f.trim())),
        };
    }
    if let Some(n) = kname
        .strip_prefix("ublkb")
        .and_then(|n| n.parse::<i32>().ok())
    {
        return classify_ublk(n);
    }
    Under::Foreign(format!("/dev/{kname}"))
}

#[cfg(feature = "ublk")]
fn classify_ublk(id: i32) -> Under {
    use libublk::ctrl::UblkCtrl;
    if !Path::new(&format!("/sys/class/ublk-char/ublkc{id}")).exists() {
        return Under::Gone;
    }
    let Ok(c) = UblkCtrl::new_simple(id) else {
        return Under::Foreign(format!("/dev/ublkb{id} (no control info)"));
    };
    let pid = c.dev_info().ublksrv_pid;
    let ours = c
        .get_target_type_from_json()
        .is_ok_and(|t| t == crate::frontend::ublk::TARGET_NAME);
    let alive = pid > 0 && Path::new(&format!("/proc/{pid}")).exists();
    if ours && !alive {
        Under::Ours(format!("/dev/ublkb{id} (server pid {pid} gone)"))
    } else {
        Under::Foreign(format!(
            "/dev/ublkb{id} (target {}, server pid {pid} {})",
            if ours { "vmvault" } else { "other" },
            if alive { "alive" } else { "gone" }
        ))
    }
}

#[cfg(not(feature = "ublk"))]
fn classify_ublk(id: i32) -> Under {
    Under::Foreign(format!("/dev/ublkb{id}"))
}

/// Removes the stale `/dev/mapper` devices this run directory's dead predecessor left
/// (see the module documentation). Must run before the loop, FUSE and ublk cleanups:
/// they identify our devices by what the dm device still holds, and a ublk disk held by
/// a dm device cannot be deleted. Returns what was done.
pub fn clean_stale_mappers(records: &MapperRecords, mnt_root: &Path) -> Vec<String> {
    let mut log = Vec::new();
    for (name, uuid) in records.list() {
        let state = match mapper::query(&name) {
            Ok(Some(s)) => s,
            Ok(None) => {
                records.forget(&name);
                continue;
            }
            Err(e) => {
                log.push(format!("stale /dev/mapper/{name}?: {e}"));
                continue;
            }
        };
        let dm_uuid = state.uuid.clone().unwrap_or_default();
        if !uuid.starts_with(UUID_PREFIX) || dm_uuid != uuid {
            log.push(format!(
                "left /dev/mapper/{name} alone: uuid `{dm_uuid}` is not the recorded `{uuid}`"
            ));
            records.forget(&name);
            continue;
        }
        let under = match linear_target(&state.table) {
            Some(dev) => classify(dev, mnt_root),
            None => Under::Foreign(format!("table {:?}", state.table)),
        };
        let what = match under {
            Under::Gone => "its device is gone".to_string(),
            Under::Ours(d) => d,
            Under::Foreign(d) => {
                log.push(format!(
                    "left /dev/mapper/{name} alone: not provably stale ({d})"
                ));
                records.forget(&name);
                continue;
            }
        };
        match mapper::remove_stale(&name) {
            Ok(StaleRemoval::Removed) => {
                records.forget(&name);
                log.push(format!("removed stale /dev/mapper/{name} ({what})"));
            }
            Ok(StaleRemoval::Deferred) => {
                records.forget(&name);
                log.push(format!(
                    "stale /dev/mapper/{name} ({what}) is still open: I/O on it now fails, \
                     removed when its last user closes it"
                ));
            }
            Err(e) => log.push(format!("stale /dev/mapper/{name} ({what}): {e}")),
        }
    }
    log
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(kind: &str, params: &str) -> Vec<(u64, u64, String, String)> {
        vec![(0, 8, kind.into(), params.into())]
    }

    #[test]
    fn linear_target_parses_only_plain_linear() {
        assert_eq!(linear_target(&t("linear", "259:3 0")), Some((259, 3)));
        assert_eq!(linear_target(&t("linear", "7:0 0")), Some((7, 0)));
        assert_eq!(linear_target(&t("linear", "7:0 8")), None);
        assert_eq!(linear_target(&t("crypt", "7:0 0")), None);
        assert_eq!(linear_target(&t("linear", "7:0 0 x")), None);
        let mut two = t("linear", "7:0 0");
        two.push((8, 8, "linear".into(), "7:1 0".into()));
        assert_eq!(linear_target(&two), None);
        assert_eq!(linear_target(&[]), None);
    }

    #[test]
    fn records_round_trip() {
        let d = std::env::temp_dir().join(format!("vmvault-stale-{}", std::process::id()));
        let r = MapperRecords::new(&d);
        assert!(r.list().is_empty());
        let (a, b) = ("vmvault-stale-test-a", "vmvault-stale-test-b");
        r.record(b, "VMVAULT-LUKS2-x-b").unwrap();
        r.record(a, "VMVAULT-a").unwrap();
        assert_eq!(
            r.list(),
            vec![
                (a.to_string(), "VMVAULT-a".to_string()),
                (b.to_string(), "VMVAULT-LUKS2-x-b".to_string())
            ]
        );
        r.forget(a);
        assert_eq!(r.list().len(), 1);
        // A record whose device does not exist is dropped at clean-up.
        let log = clean_stale_mappers(&r, &d.join("mnt"));
        assert!(log.is_empty(), "{log:?}");
        assert!(r.list().is_empty());
        let _ = std::fs::remove_dir_all(&d);
    }
}
