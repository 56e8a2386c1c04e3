//! The keyring scanner: lists `/proc/keys`, walks the calling process's keyrings and
//! searches every payload it may read for [`Needles`].

use std::collections::HashSet;
use std::fmt;

use super::needles::Needles;

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
