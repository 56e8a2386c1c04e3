//! The kernel keyring on vaultsetup's side: staging a recovered volume key as a
//! possessor-only `user` key for the daemon, and finding a key named by
//! `--volume-key-keyring`.
//!
//! Hand-over (issue 6): vaultsetup adds the key to a private keyring in its own process
//! keyring, with a 30 s expiry and the permissions `possessor: view, read, search, link`
//! and nothing for user, group or other. vmvaultd does not possess vaultsetup's
//! keyrings, so it could not read such a key by serial alone. Instead the daemon makes a
//! request keyring in *its* process keyring, writable (link target) by uid 0 only, and
//! vaultsetup links the key into it: linking needs Link on the key (the possessor has
//! it) and Write on the keyring. The daemon then possesses the key through its own
//! process keyring and reads it (possessor Read) straight into the vault's transfer
//! page. Verified on this machine's kernel (6.18) in `tests/keyring.rs`.

use std::ffi::CString;

use vmvault_proto::keyring::{
    add_key, is_not_found as not_found, keyctl_describe, keyctl_link, keyctl_read,
    keyctl_set_timeout, keyctl_setperm, KEY_SPEC_PROCESS_KEYRING,
};
pub use vmvault_proto::keyring::{
    keyctl_invalidate as invalidate, KEY_POS_ALL, KEY_POS_LINK, KEY_POS_READ, KEY_POS_SEARCH,
    KEY_POS_VIEW,
};

use crate::secret::SecretBuf;

/// Permissions of the staged volume key: possessor view/read/search/link; no write or
/// setattr (nobody can change it, its expiry or its permissions), nothing for others.
pub const STAGED_KEY_PERM: u32 = KEY_POS_VIEW | KEY_POS_READ | KEY_POS_SEARCH | KEY_POS_LINK;
/// Expiry of the staged key, seconds.
pub const STAGED_KEY_TIMEOUT_S: u32 = 30;

/// Keyring errors. Messages never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyringError {
    /// A keyctl/add_key call failed.
    #[error("{what}: {source}")]
    Sys {
        /// The operation.
        what: String,
        /// The error keyctl(2) or add_key(2) returned.
        source: std::io::Error,
    },
    /// `--volume-key-keyring`: no such key.
    #[error("Volume key {0:?} not found in the keyrings of this process (thread, process, session, user).")]
    NotFound(String),
    /// `--volume-key-keyring` names a `logon` key.
    #[error("Key {0:?} is a logon key: logon keys cannot be read from userspace, so vaultsetup cannot move it into the vault. Add the volume key as a `user` key instead.")]
    Logon(String),
    /// `--volume-key-keyring` names a key of another type.
    #[error("Key {desc:?} has type {ty:?}; a `user` key is required.")]
    WrongType {
        /// The description the key was looked up by.
        desc: String,
        /// Its type.
        ty: String,
    },
    /// The key exists but this process may not read it.
    #[error("Key {0:?} is not readable by this process (no read permission).")]
    NotReadable(String),
}

fn sys(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> KeyringError {
    let what = what.into();
    move |source| KeyringError::Sys { what, source }
}

fn cstr(s: &str) -> std::io::Result<CString> {
    CString::new(s).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
}

/// Whether `serial` names a live key this process can see.
pub fn exists(serial: i32) -> bool {
    describe(serial).is_ok()
}

/// `(type, uid, gid, perm, description)` of a key.
pub fn describe(serial: i32) -> std::io::Result<(String, u32, u32, u32, String)> {
    let mut buf = vec![0u8; 4096];
    let n = keyctl_describe(serial, &mut buf)?;
    let s = String::from_utf8_lossy(&buf[..n.min(buf.len())]);
    let s = s.trim_end_matches('\0');
    let mut it = s.splitn(5, ';');
    let ty = it.next().unwrap_or("").to_string();
    let uid = it.next().and_then(|x| x.parse().ok()).unwrap_or(u32::MAX);
    let gid = it.next().and_then(|x| x.parse().ok()).unwrap_or(u32::MAX);
    let perm = it
        .next()
        .and_then(|x| u32::from_str_radix(x, 16).ok())
        .unwrap_or(0);
    let desc = it.next().unwrap_or("").to_string();
    Ok((ty, uid, gid, perm, desc))
}

/// A volume key staged for the daemon: a `user` key with [`STAGED_KEY_PERM`] in a
/// private keyring of this process. Dropping it invalidates both (the daemon normally
/// has invalidated the key already).
#[derive(Debug)]
pub struct StagedKey {
    ring: i32,
    key: i32,
}

impl StagedKey {
    /// Stages `key` (the recovered volume key; the kernel copies it).
    pub fn new(key: &[u8]) -> Result<StagedKey, KeyringError> {
        let pid = std::process::id();
        let ring = add_key(
            "keyring",
            &format!("vaultsetup:{pid}"),
            &[],
            KEY_SPEC_PROCESS_KEYRING,
        )
        .map_err(sys("add_key(keyring) in the process keyring"))?;
        let mut staged = StagedKey { ring, key: 0 };
        keyctl_setperm(ring, KEY_POS_ALL).map_err(sys("keyctl_setperm(private keyring)"))?;
        staged.key = add_key("user", &format!("vaultsetup:vk:{pid}"), key, ring)
            .map_err(sys("add_key(user) for the volume key"))?;
        // Timeout first: once setattr is dropped nobody can change it.
        keyctl_set_timeout(staged.key, STAGED_KEY_TIMEOUT_S)
            .map_err(sys("keyctl_set_timeout(volume key)"))?;
        keyctl_setperm(staged.key, STAGED_KEY_PERM).map_err(sys("keyctl_setperm(volume key)"))?;
        Ok(staged)
    }

    /// The key's serial (all the daemon gets).
    pub fn serial(&self) -> i32 {
        self.key
    }

    /// Links the key into the daemon's request keyring `ring`.
    pub fn link_into(&self, ring: i32) -> Result<(), KeyringError> {
        keyctl_link(self.key, ring).map_err(sys(format!(
            "keyctl_link(volume key → vmvaultd key ring {ring})"
        )))
    }
}

impl Drop for StagedKey {
    fn drop(&mut self) {
        if self.key != 0 {
            let _ = invalidate(self.key);
        }
        let _ = invalidate(self.ring);
    }
}

fn request_key(ty: &str, desc: &str) -> std::io::Result<i32> {
    let t = cstr(ty)?;
    let d = cstr(desc)?;
    // SAFETY: request_key(2) with valid C strings, no callout (so no upcall), and no
    // destination keyring.
    let r = unsafe {
        libc::syscall(
            libc::SYS_request_key,
            t.as_ptr(),
            d.as_ptr(),
            std::ptr::null::<libc::c_char>(),
            0 as libc::c_long,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Finds the key named by `--volume-key-keyring`, as cryptsetup and keyctl do: a numeric
/// serial, `%TYPE:DESC`, or a plain description of a `user` key, searched in this
/// process's thread, process, session (and through it the user) keyrings. Only `user`
/// keys qualify; a `logon` key gets [`KeyringError::Logon`].
pub fn find_user_key(spec: &str) -> Result<i32, KeyringError> {
    let (serial, label) = if !spec.is_empty() && spec.bytes().all(|b| b.is_ascii_digit()) {
        let s: i32 = spec
            .parse()
            .map_err(|_| KeyringError::NotFound(spec.to_string()))?;
        (s, spec.to_string())
    } else {
        let (ty, desc) = match spec.strip_prefix('%').and_then(|r| r.split_once(':')) {
            Some(("", d)) => ("user", d),
            Some((t, d)) => (t, d),
            None => ("user", spec),
        };
        if desc.is_empty() {
            return Err(KeyringError::NotFound(spec.to_string()));
        }
        match request_key(ty, desc) {
            Ok(s) => (s, desc.to_string()),
            Err(e) if not_found(&e) => {
                // Say why when a logon key of that name exists.
                if ty == "user" && request_key("logon", desc).is_ok() {
                    return Err(KeyringError::Logon(desc.to_string()));
                }
                return Err(KeyringError::NotFound(spec.to_string()));
            }
            Err(e) if e.raw_os_error() == Some(libc::EACCES) => {
                return Err(KeyringError::NotReadable(desc.to_string()))
            }
            Err(e) => return Err(sys(format!("request_key({ty}, {desc:?})"))(e)),
        }
    };
    match describe(serial) {
        Ok((ty, ..)) if ty == "user" => Ok(serial),
        Ok((ty, ..)) if ty == "logon" => Err(KeyringError::Logon(label)),
        Ok((ty, ..)) => Err(KeyringError::WrongType { desc: label, ty }),
        Err(e) if not_found(&e) => Err(KeyringError::NotFound(spec.to_string())),
        Err(e) if e.raw_os_error() == Some(libc::EACCES) => Err(KeyringError::NotReadable(label)),
        Err(e) => Err(sys(format!("keyctl_describe({serial})"))(e)),
    }
}

/// Reads `user` key `serial` into a locked, zeroizing buffer. A payload longer than
/// `max` bytes is reported by its length without being read whole.
pub fn read_key(serial: i32, label: &str, max: usize) -> Result<(SecretBuf, usize), KeyringError> {
    let mut buf = SecretBuf::zeroed(max);
    let n = keyctl_read(serial, buf.as_mut_slice()).map_err(|e| match e.raw_os_error() {
        Some(libc::EOPNOTSUPP) => KeyringError::Logon(label.to_string()),
        Some(libc::EACCES) => KeyringError::NotReadable(label.to_string()),
        _ if not_found(&e) => KeyringError::NotFound(label.to_string()),
        _ => sys(format!("keyctl_read({serial})"))(e),
    })?;
    if n <= max {
        buf.truncate(n);
    }
    Ok((buf, n))
}
