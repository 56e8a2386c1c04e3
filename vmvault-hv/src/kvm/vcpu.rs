//! vCPU set-up (CPL3 long mode, no GDT/IDT) and the per-vCPU `KVM_RUN` loop.

use std::os::unix::thread::JoinHandleExt;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Once};
use std::thread::JoinHandle;

use kvm_bindings::{kvm_regs, CpuId, KVM_MAX_CPUID_ENTRIES};
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vault_vm::abi;

use x86_64::registers::control::Cr4Flags;

use super::arch::{self, CpuidLeaf1Ecx, CpuidLeaf7Ebx, CpuidLeaf7Ecx};
use super::Shared;
use crate::config::CpuPinning;
use crate::error::{HvError, Result, VaultFailure};

/// Boot parameters shared by all vCPUs.
pub(super) struct Boot {
    pub entry: u64,
    pub vcpus: usize,
    pub window_len: u64,
    pub idle_spins: u64,
    /// `vault_vm::abi::BOOT_*` flags (test builds only set any).
    pub flags: u64,
}

/// Signal used to kick a stuck vCPU thread out of `KVM_RUN` at shutdown.
fn kick_signal() -> i32 {
    libc::SIGRTMIN() + 3
}

extern "C" fn on_kick(_: i32) {}

/// Interrupts `KVM_RUN` in a vCPU thread (it returns `EINTR`).
pub(super) fn kick(t: &JoinHandle<()>) {
    static INSTALL: Once = Once::new();
    INSTALL.call_once(|| {
        // SAFETY: installs an async-signal-safe no-op handler without SA_RESTART.
        unsafe {
            let mut sa: libc::sigaction = std::mem::zeroed();
            sa.sa_sigaction = on_kick as *const () as usize;
            libc::sigemptyset(&mut sa.sa_mask);
            libc::sigaction(kick_signal(), &sa, std::ptr::null_mut());
        }
    });
    // SAFETY: the thread has not been joined (we hold its handle), so its pthread_t is valid.
    unsafe { libc::pthread_kill(t.as_pthread_t(), kick_signal()) };
}

/// The CPUID the vault sees: what KVM supports, plus the host's AES/AVX/AVX-512/VAES
/// bits (PVM's KVM_GET_SUPPORTED_CPUID hides them although the vCPU runs them natively),
/// so the engine's detection picks the fast paths.
fn guest_cpuid(kvm: &Kvm) -> Result<CpuId> {
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .map_err(|err| HvError::Kvm {
            what: "KVM_GET_SUPPORTED_CPUID",
            err,
        })?;
    use std::arch::x86_64::__cpuid_count;
    let l1 = __cpuid_count(1, 0);
    let l7 = __cpuid_count(7, 0);
    let l1_ecx = CpuidLeaf1Ecx::all().bits();
    let l7_ebx = CpuidLeaf7Ebx::all().bits();
    let l7_ecx = CpuidLeaf7Ecx::all().bits();
    for e in cpuid.as_mut_slice() {
        match (e.function, e.index) {
            (1, _) => e.ecx |= l1.ecx & l1_ecx,
            (7, 0) => {
                e.ebx |= l7.ebx & l7_ebx;
                e.ecx |= l7.ecx & l7_ecx;
            }
            _ => {}
        }
    }
    Ok(cpuid)
}

/// Creates vCPU `i` in 64-bit mode at CPL3, ready to enter the guest's `_start`.
pub(super) fn setup(kvm: &Kvm, vm: &VmFd, i: usize, boot: &Boot) -> Result<VcpuFd> {
    let fd = vm.create_vcpu(i as u64).map_err(|err| HvError::Kvm {
        what: "KVM_CREATE_VCPU",
        err,
    })?;
    fd.set_cpuid2(&guest_cpuid(kvm)?)
        .map_err(|err| HvError::Kvm {
            what: "KVM_SET_CPUID2",
            err,
        })?;
    let mut s = fd.get_sregs().map_err(|err| HvError::Kvm {
        what: "KVM_GET_SREGS",
        err,
    })?;
    s.cs = arch::code_segment();
    let data = arch::data_segment();
    (s.ds, s.es, s.fs, s.gs, s.ss) = (data, data, data, data, data);
    s.cr0 = arch::CR0.bits();
    s.cr3 = abi::PAGE_TABLES_GPA;
    s.cr4 = arch::CR4.bits();
    s.efer = arch::EFER.bits();
    if fd.set_sregs(&s).is_err() {
        // Without XSAVE in the vCPU model, run without OSXSAVE: the engine then sees no
        // AVX and uses AES-NI on xmm registers.
        s.cr4 &= !Cr4Flags::OSXSAVE.bits();
        fd.set_sregs(&s).map_err(|err| HvError::Kvm {
            what: "KVM_SET_SREGS",
            err,
        })?;
    }
    // Enable x87/SSE/AVX/AVX-512 state in XCR0 as the host has it (best effort: PVM
    // already runs the guest with the host's XCR0).
    if let Ok(mut xcrs) = fd.get_xcrs() {
        // SAFETY: xgetbv(0) is valid when the OS enabled XSAVE, which x86_64 Linux does.
        let host_xcr0 = unsafe { std::arch::x86_64::_xgetbv(0) };
        xcrs.nr_xcrs = 1;
        xcrs.xcrs[0].xcr = 0;
        xcrs.xcrs[0].value = host_xcr0 & arch::XCR0_GUEST.bits();
        let _ = fd.set_xcrs(&xcrs);
    }
    let regs = kvm_regs {
        rip: boot.entry,
        rsp: abi::stack_top(i) - 8,
        rflags: arch::RFLAGS.bits(),
        rdi: i as u64,
        rsi: boot.vcpus as u64,
        rdx: boot.window_len,
        rcx: boot.idle_spins,
        r8: boot.flags,
        ..Default::default()
    };
    fd.set_regs(&regs).map_err(|err| HvError::Kvm {
        what: "KVM_SET_REGS",
        err,
    })?;
    Ok(fd)
}

/// The CPUs this process may run on.
pub(super) fn allowed_cpus() -> Vec<usize> {
    // SAFETY: a zeroed cpu_set_t is valid; sched_getaffinity fills it for this thread.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) != 0 {
            return Vec::new();
        }
        (0..libc::CPU_SETSIZE as usize)
            .filter(|&c| libc::CPU_ISSET(c, &set))
            .collect()
    }
}

/// The CPU each vCPU is pinned to (`None`: not pinned), as [`CpuPinning`] says. By
/// default, when there are more CPUs than vCPUs, vCPU `i` takes the `i`-th CPU from the
/// top of the allowed set, so the scheduler keeps the submitting threads on the others:
/// a vCPU woken by a submitter would otherwise be placed on the submitter's CPU, and its
/// idle polling would then keep the submitter from seeing its completion.
pub(super) fn pin_plan(vcpus: usize, pinning: &CpuPinning) -> Option<Vec<usize>> {
    let cpus: Vec<usize> = match pinning {
        CpuPinning::None => return None,
        CpuPinning::Cpus(cpus) => cpus.clone(),
        CpuPinning::Default => {
            let allowed = allowed_cpus();
            if allowed.len() <= vcpus {
                return None;
            }
            allowed.into_iter().rev().collect()
        }
    };
    if cpus.is_empty() {
        return None;
    }
    Some((0..vcpus).map(|i| cpus[i % cpus.len()]).collect())
}

fn pin(cpu: usize) {
    // SAFETY: a zeroed cpu_set_t is empty; sets the affinity of this thread only.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set);
    }
}

/// How a vCPU's `KVM_RUN` episode ended.
pub(super) enum Episode {
    /// The guest found no work and exited to sleep.
    Sleep,
    /// The vCPU stopped for good (shutdown) or failed; nobody may run it again.
    Over,
}

/// Runs vCPU `i` (the caller holds its runner lock) until the guest sleeps or stops.
pub(super) fn drive(fd: &mut VcpuFd, i: usize, sh: &Shared) -> Episode {
    let runner = &sh.runners[i];
    let ring = &sh.rings[i];
    if runner.over.load(Ordering::SeqCst) || sh.failed.load(Ordering::SeqCst) {
        return Episode::Over;
    }
    ring.ring().header.sleeping.store(0, Ordering::SeqCst);
    let over = |why: Option<VaultFailure>| {
        runner.over.store(true, Ordering::SeqCst);
        if let Some(why) = why {
            sh.fail(why);
        }
        Episode::Over
    };
    loop {
        let exit = match fd.run() {
            Ok(exit) => exit,
            Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {
                if ring.ring().header.stop.load(Ordering::SeqCst) != 0 {
                    return over(None); // kicked at shutdown: the guest did not stop by itself
                }
                continue;
            }
            Err(err) => return over(Some(VaultFailure::Run { vcpu: i, err })),
        };
        match exit {
            VcpuExit::MmioWrite(addr, data) if addr == abi::DOORBELL_GPA => {
                let code = u32::from(data.first().copied().unwrap_or(0));
                match code {
                    abi::EXIT_SLEEP => return Episode::Sleep,
                    abi::EXIT_READY => {
                        *sh.ready.lock().unwrap_or_else(|e| e.into_inner()) += 1;
                        sh.ready_cv.notify_all();
                    }
                    abi::EXIT_STOPPED => return over(None),
                    abi::EXIT_PANIC => return over(Some(VaultFailure::GuestPanic(i))),
                    code => return over(Some(VaultFailure::UnknownDoorbell { code, vcpu: i })),
                }
            }
            VcpuExit::MmioWrite(addr, _) | VcpuExit::MmioRead(addr, _) => {
                return over(Some(VaultFailure::Unbacked { vcpu: i, addr }));
            }
            VcpuExit::Intr => {}
            VcpuExit::Shutdown => {
                return over(Some(VaultFailure::Fault(i)));
            }
            VcpuExit::InternalError => {
                return over(Some(VaultFailure::InternalError(i)));
            }
            other => {
                return over(Some(VaultFailure::UnexpectedExit {
                    vcpu: i,
                    exit: format!("{other:?}"),
                }))
            }
        }
    }
}

/// Most requests a submitting thread serves in one `KVM_RUN` before it gets its thread
/// back (its own request is among the first: the ring holds 16).
const CALLER_EPISODE_MAX: u32 = 32;

/// Runs a sleeping vCPU `i` on the calling (submitting) thread, unless another thread
/// runs it: no hand-off to another thread, no wake-up of an idle CPU. The guest serves
/// the ring until it has been idle for the caller budget, then exits. In caller mode the
/// thread then runs further episodes while requests wait (submitted meanwhile by threads
/// that found the vCPU taken: they sleep on the ring's `done` channel), and reports the
/// end of each episode to them. Returns whether this thread ran the vCPU.
pub(super) fn run_on_caller(i: usize, sh: &Shared) -> bool {
    let runner = &sh.runners[i];
    let ring = &sh.rings[i];
    let mut ran = false;
    {
        let mut fd = match runner.fd.try_lock() {
            Ok(fd) => fd,
            // A thread that panicked while running the vCPU: the fd itself is fine.
            Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => return false, // somebody else runs it
        };
        // The lock holder is the only thread in KVM_RUN: re-check under it that the
        // guest is out and work is waiting. In thread mode, leave the vCPU to its own
        // thread once that thread is awake and about to run it (assisting then would
        // only add VM exits).
        let h = &ring.ring().header;
        while ring.vcpu_sleeping()
            && ring.has_work()
            && (sh.caller_runs || !runner.thread_coming.load(Ordering::SeqCst))
        {
            h.idle_spins.store(runner.caller_spins, Ordering::Relaxed);
            h.episode_max.store(CALLER_EPISODE_MAX, Ordering::Relaxed);
            let episode = drive(&mut fd, i, sh);
            ran = true;
            ring.done.bump();
            if matches!(episode, Episode::Over) || !sh.caller_runs {
                break;
            }
        }
    }
    if ran {
        // Waiters that found the vCPU taken retry now that it is free.
        ring.done.bump();
    }
    ran
}

/// The thread of vCPU `i`: boots it, then runs it whenever it sleeps with work waiting
/// (thread mode: submitters notify it; caller mode: submitters run the vCPU themselves
/// and this thread is only a safety net, plus start-up and shutdown). In thread mode
/// the idle spin adapts: it doubles (up to 16× the base) while wake-ups follow a sleep
/// closely, and falls back to the base after long quiet periods.
pub(super) fn run(i: usize, cpu: Option<usize>, sh: Arc<Shared>) {
    let ring = &sh.rings[i];
    let runner = &sh.runners[i];
    // Optional CPU weight for the vCPU threads (`Tuning::vcpu_nice`, below 0 needs
    // CAP_SYS_NICE). Off by default: a vCPU woken by a submitting thread tends to land on
    // that thread's CPU, and a heavier vCPU would then starve the thread waiting for it.
    if let Some(nice) = sh.vcpu_nice {
        // SAFETY: gettid/setpriority on this thread only.
        unsafe { libc::setpriority(libc::PRIO_PROCESS, libc::gettid() as libc::id_t, nice) };
    }
    if let Some(cpu) = cpu {
        pin(cpu);
    }
    let base = if sh.caller_runs {
        runner.caller_spins
    } else {
        runner.idle_spins
    };
    let max = (base.saturating_mul(16)).min(abi::MAX_IDLE_SPINS as u32);
    let mut budget = base;
    let mut first = true;
    loop {
        {
            runner.thread_coming.store(true, Ordering::SeqCst);
            let mut fd = runner.fd.lock().unwrap_or_else(|e| e.into_inner());
            runner.thread_coming.store(false, Ordering::SeqCst);
            // Thread mode: woken by a submitter, run and poll (even if a submitter has
            // meanwhile served the ring itself: more requests tend to follow).
            if first || ring.header_stop() || !sh.caller_runs {
                first = false;
                let h = &ring.ring().header;
                h.idle_spins.store(budget, Ordering::Relaxed);
                h.episode_max.store(0, Ordering::Relaxed);
                if let Episode::Over = drive(&mut fd, i, &sh) {
                    return;
                }
            }
        }
        if runner.over.load(Ordering::SeqCst) {
            return;
        }
        let t0 = std::time::Instant::now();
        ring.wake.wait_until(|| {
            ring.header_stop()
                || runner.over.load(Ordering::SeqCst)
                || (!sh.caller_runs && (ring.wake.take() || ring.has_work()))
        });
        let slept = t0.elapsed();
        budget = if sh.caller_runs {
            base
        } else if slept < std::time::Duration::from_millis(2) {
            (budget.saturating_mul(2)).min(max)
        } else if slept > std::time::Duration::from_millis(50) {
            base
        } else {
            (budget / 2).max(base)
        };
    }
}
