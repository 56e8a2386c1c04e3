//! Reading volume keys from the kernel keyring into locked, non-dumpable memory, and
//! the safe keyctl(2)/add_key(2) layer that vaultsetup's side of the key hand-over
//! (`vaultsetup::keyring`) uses too.
//!
//! Vault backends do not use [`read_key`]: vmvault-hv reads the key
//! with `keyctl_read` straight into the vault's transfer page. Only the in-process
//! engine (tests, comparisons) reads keys here.

use zeroize::Zeroize;

use crate::secret::SecretBuf;

const KEYCTL_SETPERM: libc::c_long = 5;
const KEYCTL_DESCRIBE: libc::c_long = 6;
const KEYCTL_LINK: libc::c_long = 8;
const KEYCTL_READ: libc::c_long = 11;
const KEYCTL_SET_TIMEOUT: libc::c_long = 15;
const KEYCTL_INVALIDATE: libc::c_long = 21;
/// `KEY_SPEC_PROCESS_KEYRING`: the calling process's keyring.
pub const KEY_SPEC_PROCESS_KEYRING: i32 = -2;
/// Possessor may view.
pub const KEY_POS_VIEW: u32 = 0x0100_0000;
/// Possessor may read.
pub const KEY_POS_READ: u32 = 0x0200_0000;
/// Possessor may search.
pub const KEY_POS_SEARCH: u32 = 0x0800_0000;
/// Possessor may link.
pub const KEY_POS_LINK: u32 = 0x1000_0000;
/// Possessor may view, read, write, search, link, set attributes.
pub const KEY_POS_ALL: u32 = 0x3f00_0000;
/// The owner (uid) may write: for a keyring, link keys into it.
pub const KEY_USR_WRITE: u32 = 0x0004_0000;

/// Errors reading a key. Messages never contain key bytes.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    /// The serial names no key (or it expired or was revoked).
    #[error("keyring key {0} not found (expired, revoked or never added)")]
    NotFound(i32),
    /// The key exists but cannot be read by the daemon.
    #[error("keyring key {0} is not readable by vmvaultd (a `logon` key, or no read permission for uid 0: grant it with `keyctl setperm {0} 0x3f030000`)")]
    NotReadable(i32),
    /// The key's payload length does not match the requested key size.
    #[error("keyring key {serial} holds {got} bytes, expected {want}")]
    WrongSize {
        /// Key serial.
        serial: i32,
        /// Payload length.
        got: usize,
        /// Expected length.
        want: usize,
    },
    /// Another keyctl failure.
    #[error("keyctl on key {serial}: {source}")]
    Keyctl {
        /// Key serial.
        serial: i32,
        /// The keyctl(2) error.
        source: std::io::Error,
    },
    /// Mapping or locking the secret page failed.
    #[error("cannot allocate locked memory for the key: {0}")]
    Memory(#[source] std::io::Error),
}

fn keyctl(
    op: libc::c_long,
    a: libc::c_long,
    b: libc::c_long,
    c: libc::c_long,
) -> std::io::Result<libc::c_long> {
    // SAFETY: keyctl(2) with integer arguments, or (for DESCRIBE/READ) a pointer/length
    // pair the caller guarantees is a valid writable buffer.
    let r = unsafe { libc::syscall(libc::SYS_keyctl, op, a, b, c) };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// A keyctl operation that fills `buf` (READ, DESCRIBE): returns the full length, which
/// may exceed `buf.len()` (then only `buf` is filled).
fn keyctl_into(op: libc::c_long, serial: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    // The pointer/length pair is `buf`, valid and writable for the call.
    keyctl(
        op,
        serial as libc::c_long,
        buf.as_mut_ptr() as libc::c_long,
        buf.len() as libc::c_long,
    )
    .map(|n| n as usize)
}

/// `KEYCTL_READ` of key `serial` into `buf` (no intermediate copy). Returns the
/// payload's full length, which may exceed `buf.len()` (then only `buf` is filled).
pub fn keyctl_read(serial: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    keyctl_into(KEYCTL_READ, serial, buf)
}

/// `KEYCTL_DESCRIBE` of key `serial` into `buf` (`type;uid;gid;perm;description`, NUL
/// terminated). Returns the full length, which may exceed `buf.len()`.
pub fn keyctl_describe(serial: i32, buf: &mut [u8]) -> std::io::Result<usize> {
    keyctl_into(KEYCTL_DESCRIBE, serial, buf)
}

/// `KEYCTL_SETPERM`.
pub fn keyctl_setperm(serial: i32, perm: u32) -> std::io::Result<()> {
    keyctl(
        KEYCTL_SETPERM,
        serial as libc::c_long,
        perm as libc::c_long,
        0,
    )
    .map(|_| ())
}

/// `KEYCTL_SET_TIMEOUT`, seconds.
pub fn keyctl_set_timeout(serial: i32, timeout_s: u32) -> std::io::Result<()> {
    keyctl(
        KEYCTL_SET_TIMEOUT,
        serial as libc::c_long,
        timeout_s as libc::c_long,
        0,
    )
    .map(|_| ())
}

/// `KEYCTL_LINK`: links `key` into keyring `ring`.
pub fn keyctl_link(key: i32, ring: i32) -> std::io::Result<()> {
    keyctl(KEYCTL_LINK, key as libc::c_long, ring as libc::c_long, 0).map(|_| ())
}

/// `KEYCTL_INVALIDATE`.
pub fn keyctl_invalidate(serial: i32) -> std::io::Result<()> {
    keyctl(KEYCTL_INVALIDATE, serial as libc::c_long, 0, 0).map(|_| ())
}

/// add_key(2): a key of type `ty` (no payload: `payload` empty) in keyring `ring` (a
/// serial or a `KEY_SPEC_*`). The kernel copies the payload. Returns the serial.
pub fn add_key(ty: &str, desc: &str, payload: &[u8], ring: i32) -> std::io::Result<i32> {
    let cstr = |s: &str| {
        std::ffi::CString::new(s)
            .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))
    };
    let ty = cstr(ty)?;
    let desc = cstr(desc)?;
    let (p, n) = if payload.is_empty() {
        (std::ptr::null(), 0)
    } else {
        (payload.as_ptr(), payload.len())
    };
    // SAFETY: add_key(2) with valid C strings and a payload pointer/length pair (or
    // NULL/0); the kernel copies the payload.
    let r = unsafe {
        libc::syscall(
            libc::SYS_add_key,
            ty.as_ptr(),
            desc.as_ptr(),
            p,
            n,
            ring as libc::c_long,
        )
    };
    if r < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(r as i32)
    }
}

/// Whether a keyctl error means "no such key" (never existed, expired or revoked).
pub fn is_not_found(e: &std::io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::ENOKEY | libc::EKEYEXPIRED | libc::EKEYREVOKED | libc::ENOENT)
    )
}

/// Maps a keyctl errno to a [`KeyError`].
pub fn map_err(serial: i32, e: std::io::Error) -> KeyError {
    if is_not_found(&e) {
        return KeyError::NotFound(serial);
    }
    match e.raw_os_error() {
        Some(libc::EACCES) | Some(libc::EOPNOTSUPP) | Some(libc::EPERM) => {
            KeyError::NotReadable(serial)
        }
        _ => KeyError::Keyctl { serial, source: e },
    }
}

/// Reads the payload of key `serial` into `dst`, which must be exactly the expected key
/// size. The payload is read in place (no intermediate copy); on a size mismatch `dst`
/// is zeroed.
pub fn read_key_into(serial: i32, dst: &mut [u8]) -> Result<(), KeyError> {
    let n = keyctl_read(serial, dst).map_err(|e| map_err(serial, e))?;
    if n != dst.len() {
        dst.zeroize();
        return Err(KeyError::WrongSize {
            serial,
            got: n,
            want: dst.len(),
        });
    }
    Ok(())
}

/// Reads key `serial` (exactly `len` bytes, at most 4096) into a fresh, locked
/// [`SecretBuf`]; an unlocked buffer (`RLIMIT_MEMLOCK`) is an error here, since the
/// caller keeps the key.
pub fn read_key(serial: i32, len: usize) -> Result<SecretBuf, KeyError> {
    if len == 0 || len > 4096 {
        return Err(KeyError::WrongSize {
            serial,
            got: 0,
            want: len,
        });
    }
    let mut buf = SecretBuf::zeroed(len);
    if !buf.is_locked() {
        return Err(KeyError::Memory(std::io::Error::new(
            std::io::ErrorKind::OutOfMemory,
            "mlock failed (raise RLIMIT_MEMLOCK)",
        )));
    }
    read_key_into(serial, buf.as_mut_slice())?;
    Ok(buf)
}

/// Invalidates key `serial` (`KEYCTL_INVALIDATE`).
pub fn invalidate(serial: i32) -> Result<(), KeyError> {
    keyctl_invalidate(serial).map_err(|e| map_err(serial, e))
}

/// A per-request keyring in the daemon's process keyring (so the daemon *possesses*
/// whatever is linked into it), writable by its owner uid 0 (so `vaultsetup`, which
/// does not possess it, can `keyctl_link` its possessor-only key into it) and nothing
/// else: no view, read or search for anyone but the daemon. Expires after `timeout_s`.
///
/// This is how a key with possessor-only permissions crosses from vaultsetup to the
/// daemon: linking needs Link on the key (vaultsetup possesses it) and Write on the
/// keyring; reading then needs Read on the key, which the daemon has as a possessor
/// through its process keyring.
pub fn new_request_keyring(desc: &str, timeout_s: u32) -> Result<i32, KeyError> {
    let serial = add_key("keyring", desc, &[], KEY_SPEC_PROCESS_KEYRING)
        .map_err(|source| KeyError::Keyctl { serial: 0, source })?;
    let setup = keyctl_set_timeout(serial, timeout_s)
        .and_then(|_| keyctl_setperm(serial, KEY_POS_ALL | KEY_USR_WRITE));
    if let Err(e) = setup {
        let _ = invalidate(serial);
        return Err(map_err(serial, e));
    }
    Ok(serial)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_key_is_not_found() {
        // Serial 1 is never a valid key serial handed to userspace... use a negative
        // special id that does not exist instead: serial 0x7ffffff0.
        match read_key(0x7fff_fff0, 64) {
            Err(KeyError::NotFound(_))
            | Err(KeyError::NotReadable(_))
            | Err(KeyError::Keyctl { .. }) => {}
            Err(e) => panic!("unexpected {e}"),
            Ok(_) => panic!("read a key that does not exist"),
        }
    }
}
