//! Shared memory regions: named memfds (guest RAM, data window) and `memfd_secret`.

use std::ffi::CStr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::ptr;

use crate::error::{HvError, Result};

/// A `MAP_SHARED` mapping of a memfd (named or secret). Zeroed and unmapped on drop.
pub struct SharedMem {
    ptr: *mut u8,
    len: usize,
    _fd: OwnedFd,
}

// SAFETY: the mapping is plain memory owned by this value; concurrent access goes through
// raw pointers whose users synchronize with atomics (rings) or exclusive buffers.
unsafe impl Send for SharedMem {}
// SAFETY: as above.
unsafe impl Sync for SharedMem {}

impl SharedMem {
    /// Creates a memfd called `name` of `len` bytes and maps it.
    pub fn memfd(name: &CStr, len: usize) -> Result<Self> {
        // SAFETY: valid NUL-terminated name; flags are constants.
        let fd = unsafe { libc::memfd_create(name.as_ptr(), libc::MFD_CLOEXEC) };
        if fd < 0 {
            return Err(HvError::os("memfd_create"));
        }
        // SAFETY: fd was just returned by memfd_create and is owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Self::map(fd, len)
    }

    /// Creates a `memfd_secret` region of `len` bytes and maps it.
    pub fn secret(len: usize) -> Result<Self> {
        // SAFETY: memfd_secret(2) takes one flags argument.
        let fd = unsafe { libc::syscall(libc::SYS_memfd_secret, libc::O_CLOEXEC) };
        if fd < 0 {
            return Err(HvError::SecretMemUnavailable(
                std::io::Error::last_os_error(),
            ));
        }
        // SAFETY: fresh descriptor owned by nobody else.
        let fd = unsafe { OwnedFd::from_raw_fd(fd as i32) };
        Self::map(fd, len)
    }

    fn map(fd: OwnedFd, len: usize) -> Result<Self> {
        // SAFETY: ftruncate on an owned descriptor.
        if unsafe { libc::ftruncate(fd.as_raw_fd(), len as libc::off_t) } != 0 {
            return Err(HvError::os("ftruncate of vault memory"));
        }
        // SAFETY: new shared mapping of the whole file; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(HvError::os("mmap of vault memory"));
        }
        let m = SharedMem {
            ptr: p.cast(),
            len,
            _fd: fd,
        };
        // Keep guest memory out of core dumps. Best effort.
        // SAFETY: advice on our own mapping.
        unsafe { libc::madvise(p, len, libc::MADV_DONTDUMP) };
        Ok(m)
    }

    /// Writes every page once so the first guest access does not pay for allocation.
    pub fn touch(&self) {
        for off in (0..self.len).step_by(4096) {
            // SAFETY: off < len, inside the mapping.
            unsafe { ptr::write_volatile(self.ptr.add(off), 0) };
        }
    }

    /// Locks the pages in RAM (no swap). Best effort.
    pub fn lock(&self) {
        // SAFETY: our own mapping.
        unsafe { libc::mlock(self.ptr.cast(), self.len) };
    }

    /// Base address.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Zeroes the whole region.
    pub fn wipe(&self) {
        // SAFETY: the mapping is valid for len bytes.
        unsafe { ptr::write_bytes(self.ptr, 0, self.len) };
        std::sync::atomic::compiler_fence(std::sync::atomic::Ordering::SeqCst);
    }
}

impl Drop for SharedMem {
    fn drop(&mut self) {
        self.wipe();
        // SAFETY: unmapping our own mapping; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}
