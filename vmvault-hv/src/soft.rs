//! The `soft` backend: the same request handler and engine, in this process, with the
//! key slots and the transfer page in `memfd_secret` pages (not in the kernel's direct
//! map). Weaker than `kvm`: a compromised daemon can read its own secret pages.
//!
//! The engine runs on the submitting thread (a FUSE worker of the daemon), so its vector
//! registers hold round keys after a request; the kernel would save them in the task's
//! FPU state at the next context switch. Each request therefore ends with
//! `vault_vm::engine::clear_vector_registers`. A preemption in the middle of a request
//! still saves them until the thread runs again (no hardware closes that for a process).

use std::ffi::CStr;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use vault_vm::abi::{self, keyslot, op, status, Request, Response, MAX_SLOTS};
use vault_vm::argon2::Job;
use vault_vm::service::{ContextTable, Counters, Service, SlotCell};

use crate::backend::{with_joins, Backend};
use crate::error::{HvError, Result};
use crate::memory::SharedMem;
use crate::ring::{Alone, Beside};
use crate::scratch::{scratch_size, Scratch};
use crate::window::Window;
use crate::BackendKind;

/// Name of the soft backend's data window memfd.
const WINDOW_MEMFD_NAME: &CStr = c"vmvault-window";

/// The soft backend.
pub(crate) struct SoftBackend {
    slots: SharedMem,
    /// The generic operation contexts (secret pages too: they hold GCM and CTR state).
    contexts: SharedMem,
    transfer: SharedMem,
    window: Arc<Window>,
    lanes: Vec<Mutex<Counters>>,
    stopped: AtomicBool,
    /// One keyslot request (and scratch mapping) at a time.
    keyslot_lock: Mutex<()>,
    /// This vault's Argon2 job board, shared by the services of all its lanes (the
    /// threads serving a keyslot request and its KDF_JOINs); never shared with another
    /// vault of the process. Atomics only, no password-derived bytes.
    job: Job,
}

impl SoftBackend {
    pub fn open(vcpus: usize, window_len: u64) -> Result<Self> {
        let bytes = (std::mem::size_of::<[SlotCell; MAX_SLOTS]>()).div_ceil(4096) * 4096;
        let slots = SharedMem::secret(bytes)?;
        let cbytes = std::mem::size_of::<ContextTable>().div_ceil(4096) * 4096;
        let contexts = SharedMem::secret(cbytes)?;
        let transfer = SharedMem::secret(abi::TRANSFER_SIZE as usize)?;
        slots.touch();
        contexts.touch();
        transfer.touch();
        let wmem = SharedMem::memfd(WINDOW_MEMFD_NAME, window_len as usize)?;
        wmem.touch();
        Ok(SoftBackend {
            slots,
            contexts,
            transfer,
            window: Window::new(wmem),
            lanes: (0..vcpus)
                .map(|_| Mutex::new(Counters::default()))
                .collect(),
            stopped: AtomicBool::new(false),
            keyslot_lock: Mutex::new(()),
            job: Job::new(),
        })
    }

    /// The in-process service; `scratch` is the Argon2 scratch memory of the keyslot
    /// request being served (null when there is none).
    fn service(&self, scratch: *mut u8) -> Service<'_> {
        // SAFETY: the secret mappings are page aligned, at least as large as the slot
        // table and the context table and zero-initialized, which are valid empty tables;
        // they live as long as `self`. Window and transfer page are live mappings of the stated sizes and do not
        // overlap the slots. `scratch` is null or a live mapping of the request's
        // `scratch_len` bytes (see `call_keyslot`), distinct from all of them.
        unsafe {
            let slots = &*self.slots.ptr().cast::<[SlotCell; MAX_SLOTS]>();
            let contexts = &*self.contexts.ptr().cast::<ContextTable>();
            Service::new(
                slots,
                &self.job,
                self.window.base_ptr(),
                self.window.len(),
                self.transfer.ptr(),
                scratch,
            )
            .with_contexts(contexts)
        }
    }
}

/// Zeroes this thread's vector registers after the engine ran on it (a window remains:
/// a preemption in the middle of a request saves them in the task's FPU state until the
/// thread runs again; see `vault_vm::engine::clear_vector_registers`).
#[inline(always)]
fn clear_vector_registers() {
    #[cfg(feature = "test-api")]
    crate::test_api::clear_vector_registers();
    #[cfg(not(feature = "test-api"))]
    vault_vm::engine::clear_vector_registers();
}

/// Overwrites a stretch of this thread's stack below the caller: key copies left by key
/// expansion, and round keys the engine spilled while it encrypted or decrypted (the
/// soft backend runs the engine on the caller's thread, e.g. a FUSE worker).
#[inline(never)]
fn burn_stack<const N: usize>() {
    let mut scratch = [0u8; N];
    // SAFETY: writing our own local array.
    unsafe { ptr::write_bytes(scratch.as_mut_ptr(), 0, scratch.len()) };
    std::hint::black_box(&mut scratch);
}

impl Backend for SoftBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Soft
    }

    fn protection(&self) -> &'static str {
        "soft: no virtualization; the volume keys live in memfd_secret pages of this process \
         (removed from the kernel direct map), which guards against kernel memory disclosure \
         but not against a compromised daemon or root attaching to it"
    }

    fn vcpus(&self) -> usize {
        self.lanes.len()
    }

    fn window(&self) -> &Arc<Window> {
        &self.window
    }

    fn transfer(&self) -> *mut u8 {
        self.transfer.ptr()
    }

    fn call(&self, lane: usize, req: &Request) -> Result<Response> {
        self.serve(lane, req, Alone, ptr::null_mut())
    }

    fn call_keyslot(
        &self,
        lane: usize,
        req: &Request,
        scratch_len: u64,
        joins: &[(usize, Request)],
    ) -> Result<(Response, u64)> {
        let len = scratch_size(scratch_len)?;
        let _one_at_a_time = self.keyslot_lock.lock().unwrap_or_else(|e| e.into_inner());
        let scratch = if len > 0 {
            Some(Scratch::for_process(len)?)
        } else {
            None
        };
        let p = scratch.as_ref().map_or(ptr::null_mut(), Scratch::ptr);
        // The joins reach the scratch only through the job board, while the owner's
        // computation runs; `with_joins` returns after all of them.
        let joins = if p.is_null() { &[][..] } else { joins };
        let r = with_joins(
            joins,
            |l, j| self.serve(l, j, Alone, ptr::null_mut()),
            || self.serve(lane, req, Alone, p),
        );
        // Wiped and unmapped.
        drop(scratch);
        r
    }

    #[cfg(feature = "test-api")]
    fn call_racing(
        &self,
        lane: usize,
        req: &Request,
        racer: crate::test_api::Racer<'_>,
    ) -> Result<Response> {
        self.serve(lane, req, crate::test_api::Racing(racer), ptr::null_mut())
    }

    fn shutdown(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        self.service(ptr::null_mut()).drop_all();
        clear_vector_registers();
        self.service(ptr::null_mut()).wipe_transfer();
        self.slots.wipe();
        self.contexts.wipe();
        self.window.wipe();
        burn_stack::<{ 32 * 1024 }>();
        Ok(())
    }
}

impl SoftBackend {
    /// Serves `req` on this thread (with `beside` running while the request is copied).
    /// `scratch`: the keyslot request's Argon2 memory, or null.
    fn serve(
        &self,
        lane: usize,
        req: &Request,
        beside: impl Beside,
        scratch: *mut u8,
    ) -> Result<Response> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(HvError::ShutDown);
        }
        // Same discipline as the guest: stage the request in memory the caller could race
        // on, copy it, then hand the private copy to the handler.
        let mut staged = Box::new(*req);
        let p = ptr::addr_of_mut!(*staged);
        // SAFETY: `staged` is live; a volatile copy of plain data.
        let copy: Request = beside.wait(p, || unsafe { abi::copy_request(p) });
        drop(staged);
        let mut counters = self.lanes[lane % self.lanes.len()]
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        let resp = self.service(scratch).handle(&copy, &mut counters);
        drop(counters);
        // The engine ran on this thread: no round key may stay in its vector registers,
        // which the kernel saves in the task's FPU state at the next context switch.
        clear_vector_registers();
        if matches!(
            copy.op,
            keyslot::op::UNLOCK_KEYSLOT
                | keyslot::op::SEAL_KEYSLOT
                | keyslot::op::KEY_DIGEST
                | keyslot::op::GENERATE_KEY
                | keyslot::op::KDF_JOIN
        ) {
            // Key copies, KDF output and AF stripes (a join: Argon2 blocks) may have
            // passed through the stack.
            burn_stack::<{ 64 * 1024 }>();
        } else if matches!(copy.op, op::IMPORT_KEY | op::DROP_KEY)
            || abi::generic::op::is_generic(copy.op)
        {
            // Generic ops copy keys (import, wrap) and GCM state through the stack.
            burn_stack::<{ 32 * 1024 }>();
        } else {
            burn_stack::<{ 16 * 1024 }>();
        }
        debug_assert!(resp.status != status::OK || resp.id == req.id);
        Ok(resp)
    }
}

impl Drop for SoftBackend {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
