//! The backend trait: what a vault implementation must provide.

use vault_vm::abi::{Request, Response};

use crate::error::Result;
use crate::window::Window;
use crate::{BackendKind, RunMode};
use std::sync::Arc;

/// A request in flight.
#[derive(Debug)]
pub(crate) enum Ticket {
    /// Already served (in-process backends).
    Done(Response),
    /// Waiting in entry `entry` of ring `ring`; `bytes` of data.
    Ring {
        ring: usize,
        entry: usize,
        bytes: u64,
    },
}

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
    fn call(&self, lane: usize, req: &Request) -> Result<Response>;
    /// Sends a keyslot request (UNLOCK_KEYSLOT, SEAL_KEYSLOT, KEY_DIGEST, GENERATE_KEY)
    /// like [`Backend::call`], with `scratch_len` bytes of Argon2 scratch memory behind
    /// `abi::keyslot::SCRATCH_GPA` while it runs (none for 0); the memory is wiped and
    /// unmapped afterwards. One keyslot request at a time; a length above
    /// [`crate::scratch::scratch_limit`] is refused before anything is mapped.
    ///
    /// `joins` are KDF_JOIN requests (with their lanes) to run on other vCPUs at the same
    /// time, each from its own thread ([`with_joins`]), all answered before the scratch
    /// goes away. Returns the keyslot request's response and the lane-segments the
    /// joins computed.
    fn call_keyslot(
        &self,
        lane: usize,
        req: &Request,
        scratch_len: u64,
        joins: &[(usize, Request)],
    ) -> Result<(Response, u64)>;
    /// Test builds: like [`Backend::call`], with `racer` called in a loop from another
    /// thread on the request in shared memory while the vault serves it.
    #[cfg(feature = "test-api")]
    fn call_racing(
        &self,
        lane: usize,
        req: &Request,
        racer: crate::test_api::Racer<'_>,
    ) -> Result<Response>;
    /// Sends a request to server `lane % vcpus()` without waiting; the ticket must be
    /// passed to [`Backend::complete`]. In-process backends serve it at once.
    fn submit(&self, lane: usize, req: &Request) -> Result<Ticket> {
        self.call(lane, req).map(Ticket::Done)
    }
    /// Waits for a submitted request and returns its response.
    fn complete(&self, ticket: Ticket) -> Result<Response> {
        match ticket {
            Ticket::Done(resp) => Ok(resp),
            Ticket::Ring { .. } => unreachable!("a ring ticket from a backend without rings"),
        }
    }
    /// Stops the servers and wipes vault memory. Idempotent.
    fn shutdown(&self) -> Result<()>;
    /// Test builds: vCPU `vcpu`'s register state as the hypervisor saved it.
    #[cfg(feature = "test-api")]
    fn vcpu_xsave(&self, _vcpu: usize) -> Result<crate::test_api::XsaveDump> {
        Err(crate::HvError::Config(
            "this backend has no vCPU register state".into(),
        ))
    }
}

/// Runs `owner` (the keyslot request) on this thread while every request of `joins`
/// (KDF_JOIN, on another lane each) goes through `call` on a thread of its own, so the
/// vCPUs serving them run at the same time as the owner's: in caller mode the joining
/// thread runs its ring's vCPU itself, in thread mode it wakes that vCPU's thread.
/// Waits for all of them. The owner never waits for a join (its Argon2 completes alone),
/// and a join waits a bounded time for the owner's computation, so this always returns.
///
/// Returns the owner's result and the lane-segments the joins computed (their
/// `aux[0]`); a failed join only adds nothing (the owner's answer is what counts).
pub(crate) fn with_joins(
    joins: &[(usize, Request)],
    call: impl Fn(usize, &Request) -> Result<Response> + Sync,
    owner: impl FnOnce() -> Result<Response>,
) -> Result<(Response, u64)> {
    if joins.is_empty() {
        return owner().map(|r| (r, 0));
    }
    std::thread::scope(|s| {
        let call = &call;
        let helpers: Vec<_> = joins
            .iter()
            .map(|(lane, req)| {
                std::thread::Builder::new()
                    .name("vault-kdf-join".into())
                    .spawn_scoped(s, move || call(*lane, req))
            })
            .collect();
        let r = owner();
        let mut segments = 0;
        for h in helpers.into_iter().flatten() {
            if let Ok(Ok(resp)) = h.join() {
                if resp.status == vault_vm::abi::status::OK {
                    segments += resp.aux[0];
                }
            }
        }
        r.map(|resp| (resp, segments))
    })
}
