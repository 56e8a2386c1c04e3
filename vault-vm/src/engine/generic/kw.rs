//! AES Key Wrap (RFC 3394, `CKM_AES_KEY_WRAP`) and Key Wrap with Padding (RFC 5649,
//! `CKM_AES_KEY_WRAP_KWP`). Output buffers are the caller's; nothing allocates. Unwrap
//! checks the integrity value in constant time and zeroes the output when it fails.

use zeroize::Zeroize;

use super::{ct_eq, Aes, ModeError};

/// RFC 3394's default initial value.
pub const DEFAULT_IV: [u8; 8] = [0xa6; 8];
/// RFC 5649's alternative initial value (the first half; the message length follows).
pub const KWP_AIV: [u8; 4] = [0xa6, 0x59, 0x59, 0xa6];

/// Length of the RFC 5649 wrapping of `n` bytes: `n` padded to 8, plus 8.
pub fn wrap_pad_len(n: usize) -> usize {
    n.div_ceil(8) * 8 + 8
}

/// RFC 3394 wrap of `input` (a multiple of 8 bytes, at least 16) with the default IV
/// into `out` (at least `input.len() + 8` bytes); returns the bytes written.
pub fn wrap(aes: &Aes, input: &[u8], out: &mut [u8]) -> Result<usize, ModeError> {
    wrap_iv(aes, &DEFAULT_IV, input, out)
}

/// RFC 3394 wrap with an explicit initial value (PKCS#11's optional 8-byte IV).
pub fn wrap_iv(aes: &Aes, iv: &[u8; 8], input: &[u8], out: &mut [u8]) -> Result<usize, ModeError> {
    if input.len() < 16 || !input.len().is_multiple_of(8) {
        return Err(ModeError::BadWrapLength(input.len()));
    }
    let need = input.len() + 8;
    if out.len() < need {
        return Err(ModeError::BufferTooSmall(need));
    }
    out[8..need].copy_from_slice(input);
    out[..8].copy_from_slice(iv);
    w(aes, &mut out[..need]);
    Ok(need)
}

/// RFC 3394 unwrap of `input` (a multiple of 8 bytes, at least 24) with the default IV
/// into `out` (at least `input.len() - 8` bytes); returns the bytes written.
pub fn unwrap(aes: &Aes, input: &[u8], out: &mut [u8]) -> Result<usize, ModeError> {
    unwrap_iv(aes, &DEFAULT_IV, input, out)
}

/// RFC 3394 unwrap with an explicit initial value.
pub fn unwrap_iv(
    aes: &Aes,
    iv: &[u8; 8],
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, ModeError> {
    if input.len() < 24 || !input.len().is_multiple_of(8) {
        return Err(ModeError::BadWrapLength(input.len()));
    }
    let need = input.len() - 8;
    if out.len() < need {
        return Err(ModeError::BufferTooSmall(need));
    }
    let mut a = [0u8; 8];
    a.copy_from_slice(&input[..8]);
    out[..need].copy_from_slice(&input[8..]);
    w_inv(aes, &mut a, &mut out[..need]);
    let ok = ct_eq(&a, iv);
    a.zeroize();
    if ok {
        Ok(need)
    } else {
        out[..need].zeroize();
        Err(ModeError::UnwrapFailed)
    }
}

/// RFC 5649 wrap of `input` (at least 1 byte) into `out` (at least
/// [`wrap_pad_len`]`(input.len())` bytes); returns the bytes written.
pub fn wrap_pad(aes: &Aes, input: &[u8], out: &mut [u8]) -> Result<usize, ModeError> {
    wrap_pad_aiv(aes, &KWP_AIV, input, out)
}

/// RFC 5649 wrap with an explicit 4-byte initial value (PKCS#11's optional IV).
pub fn wrap_pad_aiv(
    aes: &Aes,
    aiv: &[u8; 4],
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, ModeError> {
    if input.is_empty() || input.len() > u32::MAX as usize {
        return Err(ModeError::BadWrapLength(input.len()));
    }
    let need = wrap_pad_len(input.len());
    if out.len() < need {
        return Err(ModeError::BufferTooSmall(need));
    }
    let out = &mut out[..need];
    out.fill(0);
    out[..4].copy_from_slice(aiv);
    out[4..8].copy_from_slice(&(input.len() as u32).to_be_bytes());
    out[8..8 + input.len()].copy_from_slice(input);
    if need == 16 {
        let mut b: [u8; 16] = out[..16].try_into().expect("16 bytes");
        aes.encrypt_block(&mut b);
        out.copy_from_slice(&b);
        b.zeroize();
    } else {
        w(aes, out);
    }
    Ok(need)
}

/// RFC 5649 unwrap of `input` (a multiple of 8 bytes, at least 16) into `out` (at least
/// `input.len() - 8` bytes, the padded length); returns the unwrapped length.
pub fn unwrap_pad(aes: &Aes, input: &[u8], out: &mut [u8]) -> Result<usize, ModeError> {
    unwrap_pad_aiv(aes, &KWP_AIV, input, out)
}

/// RFC 5649 unwrap with an explicit 4-byte initial value.
pub fn unwrap_pad_aiv(
    aes: &Aes,
    aiv: &[u8; 4],
    input: &[u8],
    out: &mut [u8],
) -> Result<usize, ModeError> {
    if input.len() < 16 || !input.len().is_multiple_of(8) {
        return Err(ModeError::BadWrapLength(input.len()));
    }
    let padded = input.len() - 8;
    if out.len() < padded {
        return Err(ModeError::BufferTooSmall(padded));
    }
    let mut a = [0u8; 8];
    if padded == 8 {
        let mut b: [u8; 16] = input.try_into().expect("16 bytes");
        aes.decrypt_block(&mut b);
        a.copy_from_slice(&b[..8]);
        out[..8].copy_from_slice(&b[8..]);
        b.zeroize();
    } else {
        a.copy_from_slice(&input[..8]);
        out[..padded].copy_from_slice(&input[8..]);
        w_inv(aes, &mut a, &mut out[..padded]);
    }
    // Every check runs whatever the others found (no early exit on secret data).
    let mli = u32::from_be_bytes([a[4], a[5], a[6], a[7]]) as usize;
    let mut ok = ct_eq(&a[..4], aiv);
    ok &= mli > padded.saturating_sub(8) && mli <= padded;
    let mut pad = 0u8;
    for (i, x) in out[padded - 8..padded].iter().enumerate() {
        // Bytes at or past the message length must be zero.
        let past = ((padded - 8 + i) >= mli) as u8;
        pad |= x & past.wrapping_neg();
    }
    ok &= core::hint::black_box(pad) == 0;
    a.zeroize();
    if ok {
        Ok(mli)
    } else {
        out[..padded].zeroize();
        Err(ModeError::UnwrapFailed)
    }
}

/// RFC 3394's W over `buf` = A | R1 .. Rn (n ≥ 2), in place.
fn w(aes: &Aes, buf: &mut [u8]) {
    let n = buf.len() / 8 - 1;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(&buf[..8]);
    for j in 0..6 {
        for i in 1..=n {
            b[8..].copy_from_slice(&buf[8 * i..8 * i + 8]);
            aes.encrypt_block(&mut b);
            let t = (n * j + i) as u64;
            for (x, y) in b[..8].iter_mut().zip(t.to_be_bytes()) {
                *x ^= y;
            }
            buf[8 * i..8 * i + 8].copy_from_slice(&b[8..]);
        }
    }
    buf[..8].copy_from_slice(&b[..8]);
    b.zeroize();
}

/// RFC 3394's W⁻¹: `a` is the first ciphertext block in and the recovered initial value
/// out; `r` holds R1 .. Rn (n ≥ 2) and is unwrapped in place.
fn w_inv(aes: &Aes, a: &mut [u8; 8], r: &mut [u8]) {
    let n = r.len() / 8;
    let mut b = [0u8; 16];
    b[..8].copy_from_slice(a);
    for j in (0..6).rev() {
        for i in (1..=n).rev() {
            let t = (n * j + i) as u64;
            for (x, y) in b[..8].iter_mut().zip(t.to_be_bytes()) {
                *x ^= y;
            }
            b[8..].copy_from_slice(&r[8 * (i - 1)..8 * i]);
            aes.decrypt_block(&mut b);
            r[8 * (i - 1)..8 * i].copy_from_slice(&b[8..]);
        }
    }
    a.copy_from_slice(&b[..8]);
    b.zeroize();
}
