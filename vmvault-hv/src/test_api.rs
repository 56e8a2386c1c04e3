//! Test-only hooks (feature `test-api`; this crate's own tests enable it through a
//! dev-dependency on itself). Nothing here exists in a normal build.
//!
//! - [`set_keep_vector_registers`]: the positive control of the register residency
//!   test. While set, the `soft` backend does not clear the vector registers after a
//!   request, and a `kvm` vault opened meanwhile boots its guest with
//!   [`vault_vm::abi::BOOT_KEEP_VECTOR_REGS`] (the test image honours it).
//! - [`set_skip_exit_clear`]: a `kvm` guest that clears only at the end of each batch.
//! - [`crate::Vault::vcpu_xsave`]: a vCPU's register state as KVM saved it.

use std::sync::atomic::{AtomicBool, Ordering};

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
