//! The data window: the I/O buffer arena shared with the vault. Requests name
//! (offset, length) ranges in it, never host pointers.

use std::ops::{Deref, DerefMut};
use std::sync::{Arc, Mutex};

use crate::error::{HvError, Result};
use crate::memory::SharedMem;

/// Allocation granule of [`Window::alloc`].
pub const WINDOW_GRANULE: u64 = 4096;

/// The data window: shared memory plus a simple first-fit allocator.
pub struct Window {
    mem: SharedMem,
    /// Free ranges (offset, len), sorted by offset, coalesced.
    free: Mutex<Vec<(u64, u64)>>,
}

/// Size and free space only: the window holds volume data, which a log must not show.
impl std::fmt::Debug for Window {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        f.debug_struct("Window")
            .field("len", &self.len())
            .field("free_bytes", &free.iter().map(|&(_, l)| l).sum::<u64>())
            .field("free_ranges", &free.len())
            .finish_non_exhaustive()
    }
}

impl Window {
    pub(crate) fn new(mem: SharedMem) -> Arc<Self> {
        let len = mem.len() as u64;
        Arc::new(Window {
            mem,
            free: Mutex::new(vec![(0, len)]),
        })
    }

    /// Size of the window in bytes.
    pub fn len(&self) -> u64 {
        self.mem.len() as u64
    }

    /// Whether the window is empty (never, for an open vault).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Host address of the window start (the vault sees it at `abi::WINDOW_GPA`).
    pub fn base_ptr(&self) -> *mut u8 {
        self.mem.ptr()
    }

    pub(crate) fn wipe(&self) {
        self.mem.wipe();
    }

    /// Allocates a zeroed buffer of `len` bytes (4 KiB aligned) inside the window.
    pub fn alloc(self: &Arc<Self>, len: usize) -> Result<WindowBuf> {
        let want = (len as u64).max(1).div_ceil(WINDOW_GRANULE) * WINDOW_GRANULE;
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let pos = free
            .iter()
            .position(|&(_, l)| l >= want)
            .ok_or(HvError::WindowFull(len, self.len()))?;
        let (off, l) = free[pos];
        if l == want {
            free.remove(pos);
        } else {
            free[pos] = (off + want, l - want);
        }
        drop(free);
        let buf = WindowBuf {
            window: Arc::clone(self),
            offset: off,
            len,
            reserved: want,
        };
        // SAFETY: the range is ours alone now and inside the mapping.
        unsafe { std::ptr::write_bytes(self.mem.ptr().add(off as usize), 0, len) };
        Ok(buf)
    }

    fn release(&self, off: u64, len: u64) {
        let mut free = self.free.lock().unwrap_or_else(|e| e.into_inner());
        let pos = free.partition_point(|&(o, _)| o < off);
        free.insert(pos, (off, len));
        // Coalesce with the neighbours.
        if pos + 1 < free.len() && free[pos].0 + free[pos].1 == free[pos + 1].0 {
            free[pos].1 += free[pos + 1].1;
            free.remove(pos + 1);
        }
        if pos > 0 && free[pos - 1].0 + free[pos - 1].1 == free[pos].0 {
            free[pos - 1].1 += free[pos].1;
            free.remove(pos);
        }
    }
}

/// A buffer inside the data window. Dereferences to its bytes; returned to the window
/// on drop.
pub struct WindowBuf {
    window: Arc<Window>,
    offset: u64,
    len: usize,
    reserved: u64,
}

impl WindowBuf {
    /// Offset of the buffer inside the window (what requests carry).
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// The window this buffer belongs to.
    pub fn window(&self) -> &Arc<Window> {
        &self.window
    }
}

impl Deref for WindowBuf {
    type Target = [u8];
    fn deref(&self) -> &[u8] {
        // SAFETY: [offset, offset+len) is inside the mapping and reserved for this buffer;
        // the vault only writes it while a request borrows the buffer mutably.
        unsafe {
            std::slice::from_raw_parts(self.window.mem.ptr().add(self.offset as usize), self.len)
        }
    }
}

impl DerefMut for WindowBuf {
    fn deref_mut(&mut self) -> &mut [u8] {
        // SAFETY: as in `deref`, and `&mut self` makes the access exclusive.
        unsafe {
            std::slice::from_raw_parts_mut(
                self.window.mem.ptr().add(self.offset as usize),
                self.len,
            )
        }
    }
}

impl Drop for WindowBuf {
    fn drop(&mut self) {
        self.window.release(self.offset, self.reserved);
    }
}

impl std::fmt::Debug for WindowBuf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("WindowBuf")
            .field("offset", &self.offset)
            .field("len", &self.len)
            .finish()
    }
}
