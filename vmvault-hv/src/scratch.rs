//! The Argon2 scratch memory of one keyslot request: host memory mapped for the
//! duration of the request (at `abi::keyslot::SCRATCH_GPA` in the `kvm` vault, passed to
//! the in-process service by the `soft` backend), then wiped and unmapped.

use std::ptr;

use vault_vm::abi::{self, keyslot::SCRATCH_MAX};

use crate::error::{HvError, Result};

/// Granule of the scratch mapping (the guest maps the range with 2 MiB pages).
pub(crate) const SCRATCH_ALIGN: u64 = abi::WINDOW_ALIGN;

/// The largest scratch length this host accepts: [`SCRATCH_MAX`] or half the physical
/// memory, whichever is smaller.
pub fn scratch_limit() -> u64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    let (pages, size) = unsafe {
        (
            libc::sysconf(libc::_SC_PHYS_PAGES),
            libc::sysconf(libc::_SC_PAGESIZE),
        )
    };
    let phys = if pages > 0 && size > 0 {
        (pages as u64).saturating_mul(size as u64)
    } else {
        0
    };
    SCRATCH_MAX.min(phys / 2)
}

/// Checks a requested scratch length against [`scratch_limit`] and rounds it up to
/// [`SCRATCH_ALIGN`]. Nothing is mapped yet.
pub(crate) fn scratch_size(requested: u64) -> Result<u64> {
    let limit = scratch_limit();
    if requested > limit {
        return Err(HvError::ScratchTooLarge { requested, limit });
    }
    Ok(requested.div_ceil(SCRATCH_ALIGN) * SCRATCH_ALIGN)
}

/// How a [`Scratch`] mapping was made (decides how it is wiped).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    /// Private anonymous memory: `MADV_DONTNEED` discards the pages (the kernel hands
    /// out zeroed pages next time), then `munmap`.
    Anonymous,
}

/// A scratch mapping; wiped and unmapped on drop.
#[derive(Debug)]
pub(crate) struct Scratch {
    ptr: *mut u8,
    len: usize,
    kind: Kind,
}

// SAFETY: plain memory owned by this value; the vault (or the in-process service) uses
// it only while the keyslot request that owns it runs.
unsafe impl Send for Scratch {}

impl Scratch {
    /// Anonymous memory of `len` bytes (a multiple of [`SCRATCH_ALIGN`]), aligned to
    /// 2 MiB, backed by transparent huge pages where the kernel has them and faulted
    /// in before the vault runs: Argon2 touches every page, and a vault VM that faults
    /// on each 4 KiB page (a VM exit each, more under nested virtualization) spends
    /// seconds on 256 MiB. Huge pages let KVM map the memslot with 2 MiB entries.
    pub fn anonymous(len: u64) -> Result<Self> {
        let len = len as usize;
        const HUGE: usize = 2 << 20;
        // Over-allocate by one huge page to align the start, then trim the ends. Mapped
        // without access first: in a process under `mlockall(MCL_FUTURE)` (the daemon)
        // an accessible mapping is faulted in at once, in 4 KiB pages, before the
        // huge-page advice below could apply; `mprotect` faults it in after it.
        let map_len = len + HUGE;
        // SAFETY: a fresh private anonymous mapping; the kernel picks the address.
        let p = unsafe {
            libc::mmap(
                ptr::null_mut(),
                map_len,
                libc::PROT_NONE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
                -1,
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(HvError::os("mmap of the Argon2 scratch memory"));
        }
        let start = (p as usize).next_multiple_of(HUGE);
        let head = start - p as usize;
        let tail = map_len - head - len;
        // SAFETY: unmapping the unaligned head and the tail of our own mapping.
        unsafe {
            if head > 0 {
                libc::munmap(p, head);
            }
            if tail > 0 {
                libc::munmap((start + len) as *mut libc::c_void, tail);
            }
        }
        let p = start as *mut libc::c_void;
        // Best effort each: out of core dumps, huge pages, faulted in now (a kernel
        // without MADV_POPULATE_WRITE leaves the faults to the vault).
        // SAFETY: advice on our own mapping of `len` bytes.
        unsafe {
            libc::madvise(p, len, libc::MADV_DONTDUMP);
            libc::madvise(p, len, libc::MADV_HUGEPAGE);
        }
        // SAFETY: our own mapping of `len` bytes.
        if unsafe { libc::mprotect(p, len, libc::PROT_READ | libc::PROT_WRITE) } != 0 {
            let e = HvError::os("mprotect of the Argon2 scratch memory");
            // SAFETY: our own mapping, unused.
            unsafe { libc::munmap(p, len) };
            return Err(e);
        }
        // SAFETY: as above.
        if unsafe { libc::madvise(p, len, libc::MADV_POPULATE_WRITE) } != 0 {
            let e = std::io::Error::last_os_error();
            // EINVAL: a kernel before 5.14, the vault faults the pages in itself. Any
            // other failure (ENOMEM, EFAULT) would end in the OOM killer or a SIGBUS
            // in the middle of Argon2: refuse now.
            if e.raw_os_error() != Some(libc::EINVAL) {
                // SAFETY: our own mapping, unused.
                unsafe { libc::munmap(p, len) };
                return Err(HvError::Os {
                    what: "faulting in the Argon2 scratch memory",
                    err: e,
                });
            }
        }
        Ok(Scratch {
            ptr: p.cast(),
            len,
            kind: Kind::Anonymous,
        })
    }

    /// Scratch memory for the in-process (`soft`) service: anonymous memory as for the
    /// kvm backend, locked in RAM when the limits allow it. Not `memfd_secret`: Argon2's
    /// blocks derive from the passphrase only (never from a key), and a secret-memory
    /// mapping that cannot be faulted in ends in a `SIGBUS` in the middle of Argon2
    /// (seen in the VM tier with an 8 MiB `RLIMIT_MEMLOCK`), where anonymous memory
    /// gives an error before the vault runs.
    pub fn for_process(len: u64) -> Result<Self> {
        let s = Self::anonymous(len)?;
        // Best effort: no swap for passphrase-derived blocks.
        // SAFETY: our own mapping.
        unsafe { libc::mlock(s.ptr.cast(), s.len) };
        Ok(s)
    }

    /// Host address of the scratch memory.
    pub fn ptr(&self) -> *mut u8 {
        self.ptr
    }

    /// Length in bytes.
    pub fn len(&self) -> u64 {
        self.len as u64
    }
}

impl Scratch {
    /// Wipes the contents without unmapping (what `Drop` does before `munmap`).
    pub fn discard(&self) {
        match self.kind {
            Kind::Anonymous => {
                // SAFETY: our own private anonymous mapping; the pages are discarded
                // (freed and later handed out zeroed), which is the wipe.
                unsafe { libc::madvise(self.ptr.cast(), self.len, libc::MADV_DONTNEED) };
            }
        }
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        self.discard();
        // SAFETY: unmapping our own mapping; nothing refers to it any more.
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_round_up_and_the_cap_is_checked_before_mapping() {
        assert_eq!(scratch_size(0).unwrap(), 0);
        assert_eq!(scratch_size(1).unwrap(), SCRATCH_ALIGN);
        assert_eq!(scratch_size(SCRATCH_ALIGN).unwrap(), SCRATCH_ALIGN);
        assert_eq!(scratch_size(SCRATCH_ALIGN + 1).unwrap(), 2 * SCRATCH_ALIGN);
        let limit = scratch_limit();
        assert!(limit <= SCRATCH_MAX && limit > 0);
        match scratch_size(limit + 1) {
            Err(HvError::ScratchTooLarge {
                requested,
                limit: l,
            }) => {
                assert_eq!((requested, l), (limit + 1, limit));
            }
            other => panic!("expected ScratchTooLarge, got {other:?}"),
        }
        assert!(scratch_size(SCRATCH_MAX + 1).is_err());
        assert!(scratch_size(u64::MAX).is_err());
    }

    #[test]
    fn mappings_are_usable_and_wiped() {
        for s in [
            Scratch::anonymous(2 * SCRATCH_ALIGN).unwrap(),
            Scratch::for_process(SCRATCH_ALIGN).unwrap(),
        ] {
            assert_eq!(s.len() % SCRATCH_ALIGN, 0);
            // SAFETY: inside our own mapping.
            unsafe {
                s.ptr().write_volatile(0xa5);
                s.ptr().add(s.len() as usize - 1).write_volatile(0x5a);
                assert_eq!(s.ptr().read_volatile(), 0xa5);
            }
            drop(s);
        }
    }
}
