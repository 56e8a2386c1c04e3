//! The VAES + AVX-512 backend (filled in below).

use super::Job;

/// Runs a job on the VAES backend.
///
/// # Safety
/// The CPU must support AES-NI, AVX-512F, VAES and VPCLMULQDQ.
pub(crate) unsafe fn run(job: &Job<'_>, buf: &mut [u8]) {
    // SAFETY: VAES implies the AES-NI path's requirements.
    unsafe { super::ni::run(job, buf) }
}
