//! Reading volume keys from the kernel keyring into locked, non-dumpable memory, and
//! the safe keyctl(2)/add_key(2) layer that vaultsetup's side of the key hand-over
//! (`vaultsetup::keyring`) uses too.
//!
//! Vault backends do not use this module's [`SecretPage`]: vmvault-hv reads the key
//! with `keyctl_read` straight into the vault's transfer page. Only the in-process
//! engine (tests, comparisons) reads keys here.

use zeroize::Zeroize;

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

/// One anonymous page, locked in RAM, excluded from core dumps, zeroed and unmapped on
/// drop. Holds at most 4096 bytes.
pub struct SecretPage {
    ptr: *mut u8,
    len: usize,
}

impl std::fmt::Debug for SecretPage {
    /// Never the bytes: only how many there are.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SecretPage({} bytes, redacted)", self.len)
    }
}

// SAFETY: SecretPage uniquely owns its mapping.
unsafe impl Send for SecretPage {}

impl SecretPage {
    const SIZE: usize = 4096;

    /// Maps and locks a zeroed page.
    pub fn new() -> Result<Self, KeyError> {
        // SAFETY: anonymous private mapping; no existing memory is affected.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                Self::SIZE,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(KeyError::Memory(std::io::Error::last_os_error()));
        }
        let page = SecretPage {
            ptr: p.cast(),
            len: 0,
        };
        // SAFETY: p is our fresh mapping of SIZE bytes.
        if unsafe { libc::mlock(p, Self::SIZE) } != 0 {
            return Err(KeyError::Memory(std::io::Error::last_os_error()));
        }
        // SAFETY: p is our mapping; these advices only change dump and fork behaviour.
        unsafe { libc::madvise(p, Self::SIZE, libc::MADV_DONTDUMP) };
        // SAFETY: as above.
        unsafe { libc::madvise(p, Self::SIZE, libc::MADV_WIPEONFORK) };
        Ok(page)
    }

    /// The key bytes.
    pub fn bytes(&self) -> &[u8] {
        // SAFETY: ptr maps SIZE bytes; len <= SIZE.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }

    fn whole_mut(&mut self) -> &mut [u8] {
        // SAFETY: ptr maps SIZE writable bytes owned by self.
        unsafe { std::slice::from_raw_parts_mut(self.ptr, Self::SIZE) }
    }
}

impl Drop for SecretPage {
    fn drop(&mut self) {
        self.whole_mut().zeroize();
        // SAFETY: unmapping the mapping created in `new`, not used afterwards.
        unsafe { libc::munmap(self.ptr.cast(), Self::SIZE) };
    }
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

/// Reads key `serial` (exactly `len` bytes) into a fresh [`SecretPage`].
pub fn read_key(serial: i32, len: usize) -> Result<SecretPage, KeyError> {
    if len == 0 || len > SecretPage::SIZE {
        return Err(KeyError::WrongSize {
            serial,
            got: 0,
            want: len,
        });
    }
    let mut page = SecretPage::new()?;
    read_key_into(serial, &mut page.whole_mut()[..len])?;
    page.len = len;
    Ok(page)
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
