//! The backend trait: what a vault implementation must provide.

use vault_vm::abi::{Request, Response};

use crate::error::Result;
use crate::ring::Racer;
use crate::window::Window;
use crate::{BackendKind, RunMode};
use std::sync::Arc;

/// A vault implementation (`kvm` or `soft`). Cloud-hypervisor's `hypervisor` crate is the
/// pattern: the `Vault` front end is backend-agnostic.
pub(crate) trait Backend: Send + Sync {
    /// Which backend this is.
    fn kind(&self) -> BackendKind;
    /// Honest description of the protection it gives.
    fn protection(&self) -> &'static str;
    /// Number of vCPUs (parallel request servers).
    fn vcpus(&self) -> usize;
    /// The data window.
    fn window(&self) -> &Arc<Window>;
    /// CPUs the vCPU threads are pinned to (empty: not pinned).
    fn vcpu_cpus(&self) -> Vec<usize> {
        Vec::new()
    }
    /// Who runs the vCPUs ([`RunMode::Caller`] for in-process backends).
    fn run_mode(&self) -> RunMode {
        RunMode::Caller
    }
    /// The key transfer page (`abi::TRANSFER_SIZE` bytes).
    fn transfer(&self) -> *mut u8;
    /// Sends a request to server `lane % vcpus()` and waits for the response.
    fn call(&self, lane: usize, req: &Request, racer: Option<Racer<'_>>) -> Result<Response>;
    /// Stops the servers and wipes vault memory. Idempotent.
    fn shutdown(&self) -> Result<()>;
}
