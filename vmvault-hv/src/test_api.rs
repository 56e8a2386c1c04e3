//! Test-only hooks (feature `test-api`; this crate's own tests enable it through a
//! dev-dependency on itself). Nothing here exists in a normal build.
//!
//! - [`set_keep_vector_registers`]: the positive control of the register residency
//!   test. While set, the `soft` backend does not clear the vector registers after a
//!   request, and a `kvm` vault opened meanwhile boots its guest with
//!   [`vault_vm::abi::BOOT_KEEP_VECTOR_REGS`] (the test image honours it).
//! - [`set_skip_exit_clear`]: a `kvm` guest that clears only at the end of each batch.
//! - [`crate::Vault::vcpu_xsave`]: a vCPU's register state as KVM saved it.
//! - [`crate::Vault::submit_raw`], [`crate::Vault::submit_raw_racing`] (with a
//!   [`Racer`]) and [`crate::Vault::transfer_page`]: raw requests and the key transfer
//!   page, for the hostile-request and key-residency tests.

use std::sync::atomic::{AtomicBool, Ordering};

use vault_vm::abi::{Request, Response};

use crate::error::Result;
use crate::ring::Beside;
use crate::Vault;

/// Called repeatedly (from another thread) while a request is in flight, with the
/// request in shared memory: the tests rewrite it under the vault's feet.
pub type Racer<'a> = &'a (dyn Fn(*mut Request) + Sync);

impl Vault {
    /// Sends a raw request to vCPU `lane % vcpus()` and returns the raw response, with
    /// no checks on the host side. For the hostile-request tests.
    ///
    /// # Safety
    /// The vault may write any window range named by the request; no live `WindowBuf`
    /// borrow may overlap them. Raw IMPORT_KEY/DROP_KEY bypass the slot bookkeeping.
    pub unsafe fn submit_raw(&self, lane: usize, req: &Request) -> Result<Response> {
        self.backend.call(lane, req)
    }

    /// Like [`Vault::submit_raw`], with `racer` called in a loop from another thread on
    /// the request *in shared memory* while the vault serves it.
    ///
    /// # Safety
    /// As for [`Vault::submit_raw`], for every request the racer can produce.
    pub unsafe fn submit_raw_racing(
        &self,
        lane: usize,
        req: &Request,
        racer: Racer<'_>,
    ) -> Result<Response> {
        self.backend.call_racing(lane, req, racer)
    }

    /// The key transfer page (`abi::TRANSFER_SIZE` bytes), for the tests that check it
    /// is wiped.
    pub fn transfer_page(&self) -> *mut u8 {
        self.backend.transfer()
    }

    /// The register state of vCPU `vcpu` as KVM keeps it while the vCPU is out of guest
    /// mode (`KVM_GET_XSAVE2`, else `KVM_GET_XSAVE`). Waits until whoever runs the vCPU
    /// lets go of it (the vCPU sleeps). Only the `kvm` backend has one.
    pub fn vcpu_xsave(&self, vcpu: usize) -> Result<XsaveDump> {
        self.backend.vcpu_xsave(vcpu)
    }
}

/// A [`Racer`] running beside a wait for a response: started before the wait, stopped
/// once it returns.
#[derive(Clone, Copy)]
pub(crate) struct Racing<'a>(pub Racer<'a>);

impl Beside for Racing<'_> {
    fn wait<T>(self, req: *mut Request, wait: impl FnOnce() -> T) -> T {
        let stop = AtomicBool::new(false);
        let p = req as usize;
        let racer = self.0;
        std::thread::scope(|s| {
            s.spawn(|| {
                while !stop.load(Ordering::Relaxed) {
                    racer(p as *mut Request);
                }
            });
            let r = wait();
            stop.store(true, Ordering::Relaxed);
            r
        })
    }
}

static KEEP_VECTOR_REGS: AtomicBool = AtomicBool::new(false);

/// Turns the clearing of vector registers off (`true`) or back on. The `soft` backend
/// reads it at every request, the `kvm` backend when a vault opens.
pub fn set_keep_vector_registers(keep: bool) {
    KEEP_VECTOR_REGS.store(keep, Ordering::SeqCst);
}

/// Whether the vector registers are to be kept (see [`set_keep_vector_registers`]).
pub fn keep_vector_registers() -> bool {
    KEEP_VECTOR_REGS.load(Ordering::SeqCst)
}

static NO_EXIT_CLEAR: AtomicBool = AtomicBool::new(false);

/// A `kvm` vault opened while this is set boots its guest with
/// [`vault_vm::abi::BOOT_NO_EXIT_CLEAR`]: the guest clears its vector registers at the
/// end of each batch only, not before each exit (to test the end-of-batch clear alone).
pub fn set_skip_exit_clear(skip: bool) {
    NO_EXIT_CLEAR.store(skip, Ordering::SeqCst);
}

/// Whether the guest is to skip the clear before exits (see [`set_skip_exit_clear`]).
pub fn skip_exit_clear() -> bool {
    NO_EXIT_CLEAR.load(Ordering::SeqCst)
}

/// A vCPU's extended register state in the standard (non-compacted) XSAVE layout.
#[derive(Clone)]
pub struct XsaveDump {
    /// The XSAVE area: legacy region (512 bytes), header (64), then each enabled
    /// component at its CPUID leaf 0xD offset.
    pub bytes: Vec<u8>,
    /// The ioctl that read it: `KVM_GET_XSAVE2` or `KVM_GET_XSAVE`.
    pub via: &'static str,
}

impl std::fmt::Debug for XsaveDump {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XsaveDump")
            .field("len", &self.bytes.len())
            .field("via", &self.via)
            .finish_non_exhaustive()
    }
}

/// Clears the vector registers after a request unless a test asked to keep them.
pub(crate) fn clear_vector_registers() {
    if !keep_vector_registers() {
        vault_vm::engine::clear_vector_registers();
    }
}
