//! The vault guest: a `no_std`, `no_main` image that runs at CPL3 in the vault VM.
//!
//! Every vCPU enters [`_start`] with its index, the vCPU count, the data window length,
//! the idle spin count and boot flags in `rdi`, `rsi`, `rdx`, `rcx`, `r8`. It polls its
//! own ring in shared memory, serves requests through [`vault_vm::service::Service`] and
//! exits to the host (an MMIO write to the doorbell) only to sleep. Key slots live in
//! this image's `.bss`, which is private to the vault. There is no IDT: a fault would end
//! the VM, so every request is validated on a private copy before anything is touched.
//!
//! Vector registers: the engine leaves round keys in xmm/zmm registers, and KVM saves
//! the guest's registers in host kernel memory whenever the vCPU leaves guest mode. So
//! the vCPU clears them ([`vault_vm::engine::clear_vector_registers`]) when a batch of
//! requests ends (the first empty scan of the ring after serving) and before every exit
//! to the host. A preemption in the middle of a batch still makes KVM save them until
//! the vCPU runs again; only SEV-ES/SEV-SNP (encrypted guest register state) closes that.
#![no_std]
#![no_main]

use core::arch::asm;
use core::ptr;
use core::sync::atomic::Ordering;

use vault_vm::abi::{
    self, op, Request, Ring, RingEntry, ENTRY_DONE, ENTRY_SUBMITTED, RING_ENTRIES,
};
use vault_vm::argon2::{CompressPath, Job};
use vault_vm::service::{ContextTable, Counters, Service, SlotCell};

/// The key slots. `.bss` of the image: vault-private memory.
static SLOTS: [SlotCell; abi::MAX_SLOTS] = [SlotCell::EMPTY; abi::MAX_SLOTS];

/// The Argon2 job board every vCPU shares (UNLOCK/SEAL own it, KDF_JOIN helps). `.bss`
/// too: only atomics and the scratch address, never a password-derived byte.
static JOB: Job = Job::new();
/// The operation contexts of the generic modes (`.bss`: vault-private), shared by all
/// vCPUs.
static CONTEXTS: ContextTable = ContextTable::EMPTY;

/// Test builds only: the host asked to keep the vector registers (positive control of
/// the register residency test, [`abi::BOOT_KEEP_VECTOR_REGS`]).
#[cfg(feature = "test-api")]
static KEEP_VECTOR_REGS: core::sync::atomic::AtomicBool =
    core::sync::atomic::AtomicBool::new(false);

/// Test builds only: skip the clear before exits ([`abi::BOOT_NO_EXIT_CLEAR`]).
#[cfg(feature = "test-api")]
static NO_EXIT_CLEAR: core::sync::atomic::AtomicBool = core::sync::atomic::AtomicBool::new(false);

/// Zeroes the vector registers that may hold round keys (unless a test build was told
/// to keep them).
#[inline(always)]
fn clear_vector_registers() {
    #[cfg(feature = "test-api")]
    if KEEP_VECTOR_REGS.load(Ordering::Relaxed) {
        return;
    }
    vault_vm::engine::clear_vector_registers();
}

/// Exits to the host with `code` (the vCPU index in bits 8..16). Clears the vector
/// registers first: KVM saves them in host memory at every exit.
#[inline(always)]
fn doorbell(vcpu: usize, code: u32) {
    #[cfg(feature = "test-api")]
    let clear = !NO_EXIT_CLEAR.load(Ordering::Relaxed);
    #[cfg(not(feature = "test-api"))]
    let clear = true;
    if clear {
        clear_vector_registers();
    }
    // SAFETY: DOORBELL_GPA is mapped by the host's page tables but has no memslot: the
    // write exits to the host and never faults.
    unsafe { ptr::write_volatile(abi::DOORBELL_GPA as *mut u32, code | ((vcpu as u32) << 8)) };
}

/// Zeroes this vCPU's stack from `bottom` up to the caller's frame (key copies left
/// below it by an import or a drop). Naked, so it has no frame of its own: everything
/// below the return address is dead.
#[unsafe(naked)]
extern "C" fn wipe_stack_below_caller(bottom: u64) {
    core::arch::naked_asm!(
        "mov rcx, rsp",
        "sub rcx, rdi",
        "xor eax, eax",
        "cld",
        "rep stosb",
        "ret"
    )
}

fn wipe_stack(vcpu: usize) {
    wipe_stack_below_caller(abi::stack_bottom(vcpu));
}

/// How much of the stack below `serve`'s frame the end of a batch wipes. The deepest
/// engine call of a request is far shallower: in the release image `serve_one` takes
/// about 6 KiB, `vaes::run` 2.3 KiB, `vaes256::run` 1.6 KiB, `ni::run` 1.2 KiB, and key
/// import (`SectorCipher::new` 3 KiB, `AesKey::new` 4.x KiB, `expand` 0.7 KiB), which
/// gets a whole-stack wipe anyway, reaches about 15 KiB.
const BATCH_WIPE_DEPTH: u64 = 32 * 1024;
// The guest stack (above its guard page) holds the batch wipe with room to spare.
const _: () = assert!(abi::STACK_STRIDE - abi::PAGE_SIZE >= 2 * BATCH_WIPE_DEPTH);

/// Zeroes at most `depth` bytes of this vCPU's stack below the caller's frame, never
/// below `bottom`. Naked, like [`wipe_stack_below_caller`].
#[unsafe(naked)]
extern "C" fn wipe_stack_depth_below_caller(bottom: u64, depth: u64) {
    core::arch::naked_asm!(
        "mov rcx, rsp",
        "sub rcx, rdi",
        "cmp rcx, rsi",
        "cmova rcx, rsi",
        "mov rdi, rsp",
        "sub rdi, rcx",
        "xor eax, eax",
        "cld",
        "rep stosb",
        "ret"
    )
}

/// End of a batch: zeroes the stack the requests just served used. The engine spills
/// round keys (e.g. a zmm broadcast of round key 0) to the stack; left there, a later
/// import copies them into its slot as the padding of its `SectorCipher`, where they
/// outlive the drop of the key they came from.
fn wipe_batch_stack(vcpu: usize) {
    wipe_stack_depth_below_caller(abi::stack_bottom(vcpu), BATCH_WIPE_DEPTH);
}

fn any_submitted(ring: &Ring) -> bool {
    ring.header.stop.load(Ordering::SeqCst) != 0
        || ring
            .entries
            .iter()
            .any(|e| e.state.load(Ordering::SeqCst) == ENTRY_SUBMITTED)
}

/// Entry point of every vCPU.
///
/// # Safety
/// Only the host calls this, with the registers described in the module docs and `rsp`
/// at the top of this vCPU's stack.
#[no_mangle]
#[link_section = ".text.entry"]
pub unsafe extern "C" fn _start(
    vcpu: u64,
    nvcpus: u64,
    window_len: u64,
    idle_spins: u64,
    flags: u64,
) -> ! {
    #[cfg(feature = "test-api")]
    {
        KEEP_VECTOR_REGS.store(flags & abi::BOOT_KEEP_VECTOR_REGS != 0, Ordering::Relaxed);
        NO_EXIT_CLEAR.store(flags & abi::BOOT_NO_EXIT_CLEAR != 0, Ordering::Relaxed);
    }
    #[cfg(not(feature = "test-api"))]
    let _ = flags;
    let vcpu = vcpu as usize;
    if vcpu >= abi::MAX_VCPUS || nvcpus as usize > abi::MAX_VCPUS || window_len > abi::WINDOW_MAX {
        loop {
            doorbell(0, abi::EXIT_PANIC);
        }
    }
    // CPU detection runs cpuid (an exit each): do it once, now.
    let _ = vault_vm::engine::cpu_features();
    let _ = CompressPath::detect();
    // SAFETY: the window and transfer page are mapped by the host at these addresses
    // with these sizes (checked above) and do not overlap the image. The scratch range
    // is mapped by the page tables; the host puts a memslot of the request's
    // `scratch_len` behind it for each Argon2 keyslot request (an access beyond it exits
    // to the host, it never reaches vault-private memory).
    let svc = unsafe {
        Service::new(
            &SLOTS,
            &JOB,
            abi::WINDOW_GPA as *mut u8,
            window_len,
            abi::TRANSFER_GPA as *mut u8,
            abi::keyslot::SCRATCH_GPA as *mut u8,
        )
        .with_contexts(&CONTEXTS)
    };
    // SAFETY: ring `vcpu` is mapped shared memory laid out as `Ring`; all fields the host
    // may change concurrently are atomics or read with volatile copies.
    let ring = unsafe { &*(abi::ring_gpa(vcpu) as *const Ring) };
    doorbell(vcpu, abi::EXIT_READY);
    serve(vcpu, &svc, ring, idle_spins.clamp(1, abi::MAX_IDLE_SPINS))
}

fn serve(vcpu: usize, svc: &Service<'_>, ring: &Ring, idle_spins: u64) -> ! {
    let mut counters = Counters::default();
    let mut next = 0usize;
    let mut idle = 0u64;
    let mut episode = 0u64;
    // Requests were served since the vector registers were last cleared.
    let mut dirty = false;
    loop {
        if ring.header.stop.load(Ordering::Relaxed) != 0 {
            wipe_stack(vcpu);
            loop {
                doorbell(vcpu, abi::EXIT_STOPPED);
            }
        }
        let mut served = false;
        for k in 0..RING_ENTRIES {
            let i = (next + k) % RING_ENTRIES;
            let e = &ring.entries[i];
            if e.state.load(Ordering::Acquire) != ENTRY_SUBMITTED {
                continue;
            }
            // SAFETY: `e.req` is a whole request in mapped shared memory; a volatile read
            // of its first word (only a hint: serve_one validates its own copy).
            let peek = unsafe { ptr::read_volatile(ptr::addr_of!(e.req.op)) };
            if peek == op::IMPORT_KEY {
                // The new slot's value is built on the stack and copied whole, padding
                // included: no spill of an earlier request may be under it.
                wipe_stack(vcpu);
            }
            let opcode = serve_one(svc, e, &mut counters);
            ring.header.tail.fetch_add(1, Ordering::Relaxed);
            if matches!(opcode, op::IMPORT_KEY | op::DROP_KEY) {
                // serve_one's frame (below ours) held the key and its expansion.
                wipe_stack(vcpu);
            }
            next = (i + 1) % RING_ENTRIES;
            served = true;
            break;
        }
        if served {
            dirty = true;
            idle = 0;
            episode += 1;
            let max = ring.header.episode_max.load(Ordering::Relaxed);
            if max == 0 || episode < u64::from(max) {
                continue;
            }
            // Served enough for whoever runs this vCPU: exit now (other threads' requests
            // stay SUBMITTED; their submitters see `sleeping` and run the vCPU again).
            episode = 0;
            ring.header.sleeping.store(1, Ordering::SeqCst);
            counters.sleeps += 1;
            doorbell(vcpu, abi::EXIT_SLEEP);
            ring.header.sleeping.store(0, Ordering::SeqCst);
            continue;
        }
        if dirty {
            // End of a batch: no round key stays in a register while the vCPU idles
            // (a timer interrupt or preemption now would save them in host memory).
            clear_vector_registers();
            wipe_batch_stack(vcpu);
            dirty = false;
        }
        core::hint::spin_loop();
        idle += 1;
        // The host's hint (any value is safe: clamped), else the boot value.
        let hint = u64::from(ring.header.idle_spins.load(Ordering::Relaxed));
        let budget = if hint == 0 {
            idle_spins
        } else {
            hint.min(abi::MAX_IDLE_SPINS)
        };
        if idle >= budget {
            idle = 0;
            ring.header.sleeping.store(1, Ordering::SeqCst);
            if any_submitted(ring) {
                ring.header.sleeping.store(0, Ordering::SeqCst);
                continue;
            }
            counters.sleeps += 1;
            episode = 0;
            doorbell(vcpu, abi::EXIT_SLEEP);
            ring.header.sleeping.store(0, Ordering::SeqCst);
        }
    }
}

/// Serves one submitted entry; returns its operation code. Never inlined, so every
/// temporary of the request lives below `serve`'s frame and `wipe_stack` reaches it.
#[inline(never)]
fn serve_one(svc: &Service<'_>, e: &RingEntry, counters: &mut Counters) -> u32 {
    // Copy first, then validate the copy (the host may still be writing).
    // SAFETY: `e.req` is a whole request in mapped shared memory.
    let req: Request = unsafe { abi::copy_request(&e.req) };
    let resp = svc.handle(&req, counters);
    // SAFETY: as above; the response area belongs to the vault while SUBMITTED.
    unsafe { ptr::write_volatile(ptr::addr_of!(e.resp).cast_mut(), resp) };
    e.state.store(ENTRY_DONE, Ordering::Release);
    req.op
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    loop {
        doorbell(0, abi::EXIT_PANIC);
    }
}

// The freestanding image has no libc: the memory primitives the compiler calls.

/// `memcpy`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: C contract of memcpy.
    unsafe {
        asm!("rep movsb", inout("rdi") dst => _, inout("rsi") src => _, inout("rcx") n => _,
             options(nostack, preserves_flags));
    }
    dst
}

/// `memmove`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn memmove(dst: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dst as usize).wrapping_sub(src as usize) >= n {
        // SAFETY: no harmful overlap for a forward copy.
        unsafe { memcpy(dst, src, n) }
    } else {
        // SAFETY: backward copy with the direction flag set, then cleared.
        unsafe {
            asm!("std", "rep movsb", "cld",
                 inout("rdi") dst.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
                 inout("rcx") n => _, options(nostack));
        }
        dst
    }
}

/// `memset`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn memset(dst: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: C contract of memset.
    unsafe {
        asm!("rep stosb", inout("rdi") dst => _, inout("rcx") n => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dst
}

/// `memcmp`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    let mut i = 0;
    while i < n {
        // SAFETY: i < n, within both buffers (C contract).
        let (x, y) = unsafe { (ptr::read_volatile(a.add(i)), ptr::read_volatile(b.add(i))) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
        i += 1;
    }
    0
}

/// `bcmp`.
///
/// # Safety
/// C semantics.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract.
    unsafe { memcmp(a, b, n) }
}
