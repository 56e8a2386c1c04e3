//! Random bytes from the kernel (`getrandom(2)`): header salts, UUIDs, area wipes.

use super::FormatError;

/// Fills `buf` from `getrandom(2)` (blocking until the pool is initialized).
pub(crate) fn fill(buf: &mut [u8]) -> Result<(), FormatError> {
    let mut done = 0;
    while done < buf.len() {
        let rest = &mut buf[done..];
        // SAFETY: `rest` is a valid, writable buffer of `rest.len()` bytes for the call.
        let n = unsafe { libc::getrandom(rest.as_mut_ptr().cast(), rest.len(), 0) };
        if n < 0 {
            let e = std::io::Error::last_os_error();
            if e.kind() == std::io::ErrorKind::Interrupted {
                continue;
            }
            return Err(FormatError::Random(e));
        }
        done += n as usize;
    }
    Ok(())
}

/// A random version-4 UUID in its text form.
pub(crate) fn uuid_v4() -> Result<String, FormatError> {
    let mut b = [0u8; 16];
    fill(&mut b)?;
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    Ok(format!(
        "{}-{}-{}-{}-{}",
        &h[..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..]
    ))
}
