//! The `kvm` backend: the vault guest runs in its own VM (kvm-ioctls), one thread per
//! vCPU, with guest RAM in a memfd named `vmvault-guest`.
//!
//! Register state: whenever a vCPU leaves guest mode, KVM keeps its registers in host
//! kernel memory (the vCPU's guest FPU area; `KVM_GET_XSAVE2` reads it). The guest clears
//! its vector registers at the end of each batch of requests and before every exit, so
//! no round key is there while the vCPU sleeps. A preemption in the middle of a batch
//! (timer interrupt, host scheduling) still saves round keys until the vCPU runs again;
//! only encrypted guest register state (SEV-ES/SEV-SNP) closes that window.

mod arch;
mod vcpu;

use std::ffi::CStr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vault_vm::abi::{self, Request, Response};

use crate::backend::{with_joins, Backend, Ticket};
use crate::config::{BackendKind, RunMode, Tuning};
use crate::error::{HvError, Result, VaultFailure};
use crate::layout;
use crate::memory::SharedMem;
use crate::ring::{request_bytes, Alone, Beside, RingClient, WaitMode};
use crate::scratch::{scratch_size, Scratch};
use crate::window::Window;

/// Name of the guest RAM memfd (scanners look for `/memfd:vmvault-guest`).
pub const GUEST_MEMFD_NAME: &CStr = c"vmvault-guest";
/// Name of the data window memfd.
pub const WINDOW_MEMFD_NAME: &CStr = c"vmvault-window";

/// Memslot ids: guest RAM, the data window, and the Argon2 scratch memory of a keyslot
/// request (present only while one runs).
const GUEST_MEMSLOT: u32 = 0;
const WINDOW_MEMSLOT: u32 = 1;
const SCRATCH_MEMSLOT: u32 = 2;

/// Idle spins of a vCPU before it sleeps (each spin scans the ring once and pauses,
/// about 25 ns here: 4000 spins are about 100 µs): [`Tuning::DEFAULT_IDLE_SPINS`]; set
/// [`Tuning::idle_spins`] for another.
pub const DEFAULT_IDLE_SPINS: u64 = Tuning::DEFAULT_IDLE_SPINS as u64;

/// Default idle spins of the guest when a submitting thread runs the vCPU itself: one
/// empty scan of the ring, then exit ([`Tuning::DEFAULT_CALLER_SPINS`]; see
/// [`Tuning::caller_spins`]).
pub const DEFAULT_CALLER_SPINS: u64 = Tuning::DEFAULT_CALLER_SPINS as u64;

/// Resolves [`RunMode::Auto`]: caller mode when the vCPUs would take half the CPUs this
/// process may use or more (each polling vCPU keeps a CPU busy; on small machines the
/// submitters need them), thread mode otherwise. Other modes are returned as they are.
pub fn resolve_run_mode(mode: RunMode, vcpus: usize) -> RunMode {
    match mode {
        RunMode::Auto if vcpu::allowed_cpus().len() < 2 * vcpus + 2 => RunMode::Caller,
        RunMode::Auto => RunMode::Thread,
        m => m,
    }
}

/// One vCPU: its fd (whoever holds the lock is the only thread in `KVM_RUN`) and its
/// idle budgets.
pub(crate) struct Runner {
    pub fd: Mutex<VcpuFd>,
    /// Set when the vCPU stopped or failed: nobody runs it again.
    pub over: AtomicBool,
    /// The vCPU thread is awake and waiting for `fd` to run the vCPU.
    pub thread_coming: AtomicBool,
    pub idle_spins: u32,
    pub caller_spins: u32,
}

/// State shared by the front end and the vCPU threads.
pub(crate) struct Shared {
    pub guest: SharedMem,
    pub rings: Vec<RingClient>,
    pub runners: Vec<Runner>,
    pub caller_runs: bool,
    /// Thread mode: a submitter that finds the vCPU asleep also serves the ring itself
    /// until the vCPU thread takes over ([`Tuning::assist`]).
    pub assist: bool,
    /// Nice value of the vCPU threads ([`Tuning::vcpu_nice`]).
    pub vcpu_nice: Option<i32>,
    pub failed: AtomicBool,
    pub failure: Mutex<Option<VaultFailure>>,
    pub ready: Mutex<usize>,
    pub ready_cv: Condvar,
}

impl Shared {
    pub fn fail(&self, why: VaultFailure) {
        let mut f = self.failure.lock().unwrap_or_else(|e| e.into_inner());
        if f.is_none() {
            *f = Some(why);
        }
        self.failed.store(true, Ordering::SeqCst);
        self.ready_cv.notify_all();
    }
}

/// The kvm backend.
pub(crate) struct KvmBackend {
    // Declared first so the VM goes away before the memory behind its memslots.
    _vm: VmFd,
    _kvm: Kvm,
    shared: Arc<Shared>,
    window: Arc<Window>,
    threads: Mutex<Vec<JoinHandle<()>>>,
    vcpus: usize,
    cpus: Option<Vec<usize>>,
    stopped: AtomicBool,
    /// One keyslot request (and scratch memslot) at a time.
    keyslot_lock: Mutex<()>,
}

impl KvmBackend {
    /// Whether `/dev/kvm` can be opened and will create a VM.
    pub fn available() -> bool {
        Kvm::new().and_then(|k| k.create_vm()).is_ok()
    }

    pub fn open(
        image: &[u8],
        vcpus: usize,
        window_len: u64,
        mode: RunMode,
        tuning: &Tuning,
    ) -> Result<Self> {
        let header = layout::parse_image(image)?;
        let kvm = Kvm::new().map_err(HvError::KvmUnavailable)?;
        let vm = kvm.create_vm().map_err(|err| HvError::Kvm {
            what: "KVM_CREATE_VM",
            err,
        })?;

        let guest = SharedMem::memfd(GUEST_MEMFD_NAME, abi::GUEST_RAM_SIZE as usize)?;
        guest.lock();
        guest.touch();
        {
            // SAFETY: the mapping is GUEST_RAM_SIZE bytes, exclusively ours until the vCPUs
            // start.
            let mem = unsafe { std::slice::from_raw_parts_mut(guest.ptr(), guest.len()) };
            layout::build(mem, image, &header, vcpus, window_len)?;
        }
        let wmem = SharedMem::memfd(WINDOW_MEMFD_NAME, window_len as usize)?;
        wmem.touch();
        let window = Window::new(wmem);

        for (slot, gpa, len, host) in [
            (GUEST_MEMSLOT, 0u64, abi::GUEST_RAM_SIZE, guest.ptr()),
            (
                WINDOW_MEMSLOT,
                abi::WINDOW_GPA,
                window_len,
                window.base_ptr(),
            ),
        ] {
            let region = kvm_userspace_memory_region {
                slot,
                flags: 0,
                guest_phys_addr: gpa,
                memory_size: len,
                userspace_addr: host as u64,
            };
            // SAFETY: the host range is a live mapping of `len` bytes. The backend owns it
            // and the VM, and `KvmBackend::_vm` is declared first so the VM is dropped
            // before the memory; on an early error return no vCPU has run and none will.
            unsafe { vm.set_user_memory_region(region) }.map_err(|err| HvError::Kvm {
                what: "KVM_SET_USER_MEMORY_REGION",
                err,
            })?;
        }

        let boot = vcpu::Boot {
            entry: header.entry,
            vcpus,
            window_len,
            idle_spins: u64::from(tuning.idle_spins),
            flags: boot_flags(),
        };
        let clamp = |n: u64| n.clamp(1, abi::MAX_IDLE_SPINS) as u32;
        let mut runners = Vec::new();
        for i in 0..vcpus {
            runners.push(Runner {
                fd: Mutex::new(vcpu::setup(&kvm, &vm, i, &boot)?),
                over: AtomicBool::new(false),
                thread_coming: AtomicBool::new(false),
                idle_spins: clamp(u64::from(tuning.idle_spins)),
                caller_spins: clamp(u64::from(tuning.caller_spins)),
            });
        }
        let mode = resolve_run_mode(mode, vcpus);
        let rings = (0..vcpus)
            // SAFETY: ring i lies inside guest RAM, which `Shared` owns for as long as
            // the clients live.
            .map(|i| unsafe { RingClient::new(guest.ptr().add(abi::ring_gpa(i) as usize).cast()) })
            .collect();
        let shared = Arc::new(Shared {
            guest,
            rings,
            runners,
            caller_runs: mode == RunMode::Caller,
            assist: tuning.assist,
            vcpu_nice: tuning.vcpu_nice,
            failed: AtomicBool::new(false),
            failure: Mutex::new(None),
            ready: Mutex::new(0),
            ready_cv: Condvar::new(),
        });

        let mut threads = Vec::new();
        // Caller mode: the vCPUs run on the submitting threads; nothing to pin.
        let cpus = match mode {
            RunMode::Thread => vcpu::pin_plan(vcpus, &tuning.vcpu_cpus),
            _ => None,
        };
        let mut err = None;
        for i in 0..vcpus {
            let sh = Arc::clone(&shared);
            let cpu = cpus.as_ref().map(|c| c[i]);
            let t = std::thread::Builder::new()
                .name(format!("vault-vcpu{i}"))
                .spawn(move || vcpu::run(i, cpu, sh))
                .map_err(|err| HvError::Os {
                    what: "spawning a vCPU thread",
                    err,
                });
            match t {
                Ok(t) => threads.push(t),
                Err(e) => {
                    err = Some(e);
                    break;
                }
            }
        }
        let backend = KvmBackend {
            _vm: vm,
            _kvm: kvm,
            shared,
            window,
            threads: Mutex::new(threads),
            vcpus,
            cpus,
            stopped: AtomicBool::new(false),
            keyslot_lock: Mutex::new(()),
        };
        if let Some(e) = err {
            let _ = backend.shutdown();
            return Err(e);
        }
        // Wait for every vCPU to report READY.
        let deadline = Instant::now() + Duration::from_secs(20);
        let mut ready = backend
            .shared
            .ready
            .lock()
            .unwrap_or_else(|e| e.into_inner());
        while *ready < vcpus && !backend.shared.failed.load(Ordering::SeqCst) {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                backend.shared.fail(VaultFailure::StartTimeout);
                break;
            }
            ready = backend
                .shared
                .ready_cv
                .wait_timeout(ready, left)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(ready);
        if backend.shared.failed.load(Ordering::SeqCst) {
            let why = backend.failure();
            let _ = backend.shutdown();
            return Err(HvError::VaultFailed(why));
        }
        Ok(backend)
    }

    /// The recorded cause of the vault's failure.
    fn failure(&self) -> VaultFailure {
        self.shared
            .failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
            .unwrap_or(VaultFailure::Unknown)
    }
}

impl Backend for KvmBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Kvm
    }

    fn protection(&self) -> &'static str {
        "kvm: the volume keys live only in the memory of the vault VM (memfd \"vmvault-guest\"), \
         never in the kernel crypto layer, the keyring or a process heap; this guards against \
         key-schedule scans of kernel slab, keyring and heaps, crash dumps that skip guest \
         memory and leaks through dm tables or /proc/keys, but not against root or the host \
         kernel reading guest RAM (no SEV-SNP/TDX memory encryption)"
    }

    fn vcpus(&self) -> usize {
        self.vcpus
    }

    fn window(&self) -> &Arc<Window> {
        &self.window
    }

    fn vcpu_cpus(&self) -> Vec<usize> {
        self.cpus.clone().unwrap_or_default()
    }

    fn run_mode(&self) -> RunMode {
        if self.shared.caller_runs {
            RunMode::Caller
        } else {
            RunMode::Thread
        }
    }

    fn transfer(&self) -> *mut u8 {
        // SAFETY: TRANSFER_GPA is inside guest RAM.
        unsafe { self.shared.guest.ptr().add(abi::TRANSFER_GPA as usize) }
    }

    fn call(&self, lane: usize, req: &Request) -> Result<Response> {
        let ticket = self.submit(lane, req)?;
        self.wait(ticket, Alone)
    }

    #[cfg(feature = "test-api")]
    fn call_racing(
        &self,
        lane: usize,
        req: &Request,
        racer: crate::test_api::Racer<'_>,
    ) -> Result<Response> {
        let ticket = self.submit(lane, req)?;
        self.wait(ticket, crate::test_api::Racing(racer))
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
        if len == 0 {
            return self.call(lane, req).map(|r| (r, 0));
        }
        let scratch = Scratch::anonymous(len)?;
        self.scratch_memslot(Some(&scratch))?;
        // The joins are answered before the memslot goes (`with_joins` waits for them).
        let r = with_joins(joins, |l, j| self.call(l, j), || self.call(lane, req));
        if let Err(e) = self.scratch_memslot(None) {
            // The VM may still reach the memory: wipe it but never unmap it, and stop
            // the vault (its address space is no longer what this backend says).
            scratch.discard();
            std::mem::forget(scratch);
            let _ = self.shutdown();
            return Err(e);
        }
        // Wiped (pages discarded) and unmapped.
        drop(scratch);
        r
    }

    fn submit(&self, lane: usize, req: &Request) -> Result<Ticket> {
        if self.stopped.load(Ordering::SeqCst) {
            return Err(HvError::ShutDown);
        }
        if self.shared.failed.load(Ordering::SeqCst) {
            return Err(HvError::VaultFailed(self.failure()));
        }
        let i = lane % self.vcpus;
        let ring = &self.shared.rings[i];
        let entry = ring
            .submit(req, &self.shared.failed)
            .map_err(|e| self.vault_error(e))?;
        if !self.shared.caller_runs && ring.vcpu_sleeping() {
            // The vCPU thread resumes polling while this thread goes on.
            ring.wake.notify();
        }
        Ok(Ticket::Ring {
            ring: i,
            entry,
            bytes: request_bytes(req),
        })
    }

    fn complete(&self, ticket: Ticket) -> Result<Response> {
        self.wait(ticket, Alone)
    }

    #[cfg(feature = "test-api")]
    fn vcpu_xsave(&self, vcpu: usize) -> Result<crate::test_api::XsaveDump> {
        self.xsave(vcpu)
    }

    fn shutdown(&self) -> Result<()> {
        if self.stopped.swap(true, Ordering::SeqCst) {
            return Ok(());
        }
        for r in &self.shared.rings {
            r.ring().header.stop.store(1, Ordering::SeqCst);
            r.wake.notify();
        }
        let threads = std::mem::take(&mut *self.threads.lock().unwrap_or_else(|e| e.into_inner()));
        let start = Instant::now();
        let mut stuck = 0;
        for t in threads {
            // A polling or sleeping vCPU sees `stop` and exits cleanly within
            // microseconds; a stuck one is kicked out of KVM_RUN with a signal.
            while !t.is_finished() && start.elapsed() < Duration::from_secs(5) {
                if start.elapsed() > Duration::from_millis(500) {
                    vcpu::kick(&t);
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            if t.is_finished() {
                let _ = t.join();
            } else {
                stuck += 1;
            }
        }
        // The guest wiped its slots and stack on the way out; wipe all of guest RAM and
        // the window anyway (no vCPU runs any more).
        self.shared.fail(VaultFailure::ShutDown);
        self.shared.guest.wipe();
        self.window.wipe();
        if stuck > 0 {
            return Err(HvError::VaultFailed(VaultFailure::ThreadsStuck(stuck)));
        }
        Ok(())
    }
}

/// Boot flags of the guest: none, except in test builds told to keep the vector
/// registers (the positive control of the register residency test) or to clear them
/// only at the end of each batch.
fn boot_flags() -> u64 {
    #[allow(unused_mut)]
    let mut flags = 0;
    #[cfg(feature = "test-api")]
    {
        if crate::test_api::keep_vector_registers() {
            flags |= abi::BOOT_KEEP_VECTOR_REGS;
        }
        if crate::test_api::skip_exit_clear() {
            flags |= abi::BOOT_NO_EXIT_CLEAR;
        }
    }
    flags
}

#[cfg(feature = "test-api")]
impl KvmBackend {
    /// vCPU `i`'s register state as KVM holds it (test builds). Takes the runner lock,
    /// so it waits until the vCPU is out of `KVM_RUN`.
    fn xsave(&self, i: usize) -> Result<crate::test_api::XsaveDump> {
        use kvm_bindings::{kvm_xsave, Xsave};
        use kvm_ioctls::Cap;
        let runner = self
            .shared
            .runners
            .get(i)
            .ok_or_else(|| HvError::Config(format!("no vCPU {i}")))?;
        let fd = runner.fd.lock().unwrap_or_else(|e| e.into_inner());
        let size = self._vm.check_extension_int(Cap::Xsave2);
        let region =
            |x: &kvm_xsave| -> Vec<u8> { x.region.iter().flat_map(|w| w.to_ne_bytes()).collect() };
        if size > 0 {
            let extra = (size as usize).saturating_sub(std::mem::size_of::<kvm_xsave>());
            let mut x = Xsave::new(extra.div_ceil(4)).map_err(|e| {
                HvError::Config(format!(
                    "allocating a {size}-byte KVM_GET_XSAVE2 area: {e:?}"
                ))
            })?;
            // SAFETY: `x` has room for the `size` bytes KVM_CAP_XSAVE2 reported, and no
            // XSTATE feature is enabled dynamically in between.
            unsafe { fd.get_xsave2(&mut x) }.map_err(|err| HvError::Kvm {
                what: "KVM_GET_XSAVE2",
                err,
            })?;
            let mut bytes = region(&x.as_fam_struct_ref().xsave);
            bytes.extend(x.as_slice().iter().flat_map(|w| w.to_ne_bytes()));
            bytes.truncate(size as usize);
            return Ok(crate::test_api::XsaveDump {
                bytes,
                via: "KVM_GET_XSAVE2",
            });
        }
        let x = fd.get_xsave().map_err(|err| HvError::Kvm {
            what: "KVM_GET_XSAVE",
            err,
        })?;
        Ok(crate::test_api::XsaveDump {
            bytes: region(&x),
            via: "KVM_GET_XSAVE",
        })
    }
}

impl KvmBackend {
    /// Puts `scratch` behind `abi::keyslot::SCRATCH_GPA` (`Some`), or removes the
    /// scratch memslot (`None`: size 0).
    fn scratch_memslot(&self, scratch: Option<&Scratch>) -> Result<()> {
        let region = kvm_userspace_memory_region {
            slot: SCRATCH_MEMSLOT,
            flags: 0,
            guest_phys_addr: abi::keyslot::SCRATCH_GPA,
            memory_size: scratch.map_or(0, Scratch::len),
            userspace_addr: scratch.map_or(0, |s| s.ptr() as u64),
        };
        // SAFETY: adding: the host range is a live mapping of `memory_size` bytes, which
        // `call_keyslot` keeps until the memslot is removed again (or leaks when removal
        // fails). Removing: size 0 deletes the memslot and touches no memory.
        unsafe { self._vm.set_user_memory_region(region) }.map_err(|err| HvError::Kvm {
            what: "KVM_SET_USER_MEMORY_REGION",
            err,
        })
    }

    /// Waits for `ticket` (with `beside` running beside the wait: in test builds, a racer
    /// may rewrite the request).
    fn wait(&self, ticket: Ticket, beside: impl Beside) -> Result<Response> {
        let (i, entry, bytes) = match ticket {
            Ticket::Ring { ring, entry, bytes } => (ring, entry, bytes),
            Ticket::Done(resp) => return Ok(resp),
        };
        let ring = &self.shared.rings[i];
        let failed = &self.shared.failed;
        let r = if self.shared.caller_runs {
            let run = || vcpu::run_on_caller(i, &self.shared);
            ring.complete(entry, bytes, failed, beside, WaitMode::Caller { run: &run })
        } else {
            let wake = || {
                // The vCPU thread resumes polling; until it is scheduled, serve the ring
                // from here (a cross-CPU wake-up costs ~100 µs on this host).
                ring.wake.notify();
                if self.shared.assist {
                    vcpu::run_on_caller(i, &self.shared);
                }
            };
            ring.complete(entry, bytes, failed, beside, WaitMode::Poll { wake: &wake })
        };
        r.map_err(|e| self.vault_error(e))
    }

    /// A failed vault's error carries the recorded cause.
    fn vault_error(&self, e: HvError) -> HvError {
        match e {
            HvError::VaultFailed(_) => HvError::VaultFailed(self.failure()),
            e => e,
        }
    }
}

impl Drop for KvmBackend {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}
