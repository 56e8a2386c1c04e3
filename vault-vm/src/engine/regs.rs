//! Clearing the vector registers after the engine ran.
//!
//! The hardware backends keep round keys in xmm/ymm/zmm registers (`load_keys` of `ni`,
//! `vaes256` and `vaes`), and key expansion, key copies and the compiler's own block moves pass key
//! bytes through them too. Nothing in the normal flow of the code overwrites those
//! registers afterwards, and whenever the thread (a vault vCPU, or a `soft` backend
//! worker) leaves the CPU, the kernel saves them in memory: KVM in the vCPU's guest FPU
//! state, the scheduler in the task's FPU state. [`clear_vector_registers`] zeroes them.
//!
//! Remaining window: between the start of a request and the next clear the registers
//! hold key material; a preemption (timer interrupt, host scheduling, a page fault
//! exit) in that stretch makes the host kernel save them for as long as the vCPU or
//! thread is off the CPU. Only encrypted guest register state (SEV-ES/SEV-SNP, TDX)
//! closes that window; with the `kvm` backend on ordinary VMX/SVM/PVM KVM it stays.

use core::arch::asm;

cpufeatures::new!(cpu_avx, "avx");
cpufeatures::new!(cpu_avx512f, "avx512f");

/// Which registers [`clear_vector_registers`] zeroes on this CPU.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VectorState {
    /// SSE only: `pxor` of xmm0–15.
    Sse,
    /// AVX: `vzeroall` (ymm0–15 whole).
    Avx,
    /// AVX-512 with OS zmm state: `vzeroall` (zmm0–15 whole) and EVEX `vpxord` of
    /// zmm16–31.
    Avx512,
}

impl VectorState {
    /// The widest register state this CPU and OS enable (cached `cpuid`/`xgetbv`).
    pub fn detect() -> VectorState {
        if cpu_avx512f::get() {
            VectorState::Avx512
        } else if cpu_avx::get() {
            VectorState::Avx
        } else {
            VectorState::Sse
        }
    }
}

/// Zeroes every vector register that can hold key material: xmm0–15, plus their ymm/zmm
/// upper parts with AVX, plus zmm16–31 with AVX-512. Call it at the end of each batch of
/// requests, before every voluntary exit of a vault vCPU, and after each request served
/// in process (the `soft` backend), so the next context switch saves no key schedule.
///
/// Dispatched at run time on the widest state the CPU and OS enable
/// ([`VectorState::detect`]), not only on the engine backend that ran: glibc's `memcpy`
/// and compiler-generated copies use ymm16–31/zmm registers on AVX-512 machines even
/// when the engine itself ran AES-NI on xmm. Costs a few nanoseconds (one `vzeroall`
/// and 16 zeroing idioms); no memory is touched.
///
/// Opmask registers (k0–7), x87/MMX state and general-purpose registers are not
/// touched: the engine keeps no round key there (a 32-bit key word may pass through a
/// general-purpose register during key expansion).
///
/// # The window that remains
/// Between the start of a request and the next clear, the registers hold key material.
/// A preemption in that stretch (a timer interrupt, host scheduling, a page-fault exit of
/// the vCPU) makes the host kernel save them, in the vCPU's guest FPU state or the
/// task's FPU state, for as long as the vCPU or thread is off the CPU; the next clear
/// does not reach that saved copy until the vCPU runs again. Only encrypted guest
/// register state (SEV-ES/SEV-SNP, TDX) closes that window; on ordinary VMX/SVM/PVM KVM
/// and with the `soft` backend it stays.
#[inline(never)]
pub fn clear_vector_registers() {
    match VectorState::detect() {
        // SAFETY: `detect` reported AVX-512F with the OS saving zmm state (XCR0 bits 5–7),
        // which `vzeroall` (AVX) and EVEX `vpxord` on xmm16–31 need.
        VectorState::Avx512 => unsafe { clear_avx512() },
        // SAFETY: `detect` reported AVX with the OS saving ymm state.
        VectorState::Avx => unsafe { clear_avx() },
        VectorState::Sse => clear_sse(),
    }
}

/// `vzeroall` then zeroing of zmm16–31 (an EVEX write to xmmN zeroes bits 128..511).
///
/// # Safety
/// The CPU must support AVX-512F and the OS must have enabled zmm state.
#[target_feature(enable = "avx,avx512f")]
#[inline(never)]
unsafe fn clear_avx512() {
    // SAFETY: only zeroes registers, all declared clobbered through the C ABI (every
    // vector register is caller-saved in SysV); no memory or stack access, no flags.
    unsafe {
        asm!(
            "vzeroall",
            "vpxord xmm16, xmm16, xmm16",
            "vpxord xmm17, xmm17, xmm17",
            "vpxord xmm18, xmm18, xmm18",
            "vpxord xmm19, xmm19, xmm19",
            "vpxord xmm20, xmm20, xmm20",
            "vpxord xmm21, xmm21, xmm21",
            "vpxord xmm22, xmm22, xmm22",
            "vpxord xmm23, xmm23, xmm23",
            "vpxord xmm24, xmm24, xmm24",
            "vpxord xmm25, xmm25, xmm25",
            "vpxord xmm26, xmm26, xmm26",
            "vpxord xmm27, xmm27, xmm27",
            "vpxord xmm28, xmm28, xmm28",
            "vpxord xmm29, xmm29, xmm29",
            "vpxord xmm30, xmm30, xmm30",
            "vpxord xmm31, xmm31, xmm31",
            clobber_abi("C"),
            options(nomem, nostack, preserves_flags)
        );
    }
}

/// `vzeroall`: ymm0–15 whole.
///
/// # Safety
/// The CPU must support AVX and the OS must have enabled ymm state.
#[target_feature(enable = "avx")]
#[inline(never)]
unsafe fn clear_avx() {
    // SAFETY: only zeroes registers, all declared clobbered through the C ABI; no memory
    // or stack access, no flags.
    unsafe {
        asm!(
            "vzeroall",
            clobber_abi("C"),
            options(nomem, nostack, preserves_flags)
        )
    };
}

/// `pxor` of xmm0–15 (SSE2 is part of x86_64).
#[inline(never)]
fn clear_sse() {
    // SAFETY: only zeroes registers, all declared clobbered through the C ABI; SSE2 is
    // baseline on x86_64; no memory or stack access, no flags.
    unsafe {
        asm!(
            "pxor xmm0, xmm0",
            "pxor xmm1, xmm1",
            "pxor xmm2, xmm2",
            "pxor xmm3, xmm3",
            "pxor xmm4, xmm4",
            "pxor xmm5, xmm5",
            "pxor xmm6, xmm6",
            "pxor xmm7, xmm7",
            "pxor xmm8, xmm8",
            "pxor xmm9, xmm9",
            "pxor xmm10, xmm10",
            "pxor xmm11, xmm11",
            "pxor xmm12, xmm12",
            "pxor xmm13, xmm13",
            "pxor xmm14, xmm14",
            "pxor xmm15, xmm15",
            clobber_abi("C"),
            options(nomem, nostack, preserves_flags)
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each path the CPU can run zeroes the registers it covers: one asm block fills a
    /// few of them with a pattern, calls the clear and stores them back (nothing else
    /// can touch the registers in between).
    #[test]
    fn clears_what_it_covers() {
        let k = [0x5au8; 64];
        let mut out = [0xffu8; 32];
        // SAFETY: reads 16 bytes of `k`, writes 32 of `out`; `clear_sse` only zeroes
        // registers (all declared clobbered) and needs no stack alignment.
        unsafe {
            asm!(
                "movdqu xmm3, [{p}]",
                "movdqu xmm15, [{p}]",
                "call {f}",
                "movdqu [{o}], xmm3",
                "movdqu [{o} + 16], xmm15",
                p = in(reg) k.as_ptr(),
                o = in(reg) out.as_mut_ptr(),
                f = sym clear_sse,
                clobber_abi("C"),
            );
        }
        assert_eq!(out, [0u8; 32], "xmm3/xmm15 after clear_sse");
        // The AVX clear (what a CPU with VAES on ymm but no AVX-512 runs) also runs on an
        // AVX-512 CPU, which has AVX.
        if cpu_avx::get() {
            // SAFETY: AVX with OS ymm state, as cpufeatures reported.
            unsafe { avx_roundtrip(&k) };
        }
        match VectorState::detect() {
            // SAFETY: AVX-512F with OS zmm state, as `detect` reported.
            VectorState::Avx512 => unsafe { avx512_roundtrip(&k) },
            VectorState::Avx | VectorState::Sse => {}
        }
    }

    #[target_feature(enable = "avx")]
    unsafe fn avx_roundtrip(k: &[u8; 64]) {
        let mut out = [0xffu8; 64];
        // SAFETY: reads 32 bytes of `k`, writes 64 of `out`; AVX enabled; `clear_avx`
        // only zeroes registers (declared clobbered), no stack use.
        unsafe {
            asm!(
                "vmovdqu ymm3, [{p}]",
                "vmovdqu ymm15, [{p}]",
                "call {f}",
                "vmovdqu [{o}], ymm3",
                "vmovdqu [{o} + 32], ymm15",
                p = in(reg) k.as_ptr(),
                o = in(reg) out.as_mut_ptr(),
                f = sym clear_avx,
                clobber_abi("C"),
            );
        }
        assert_eq!(out, [0u8; 64], "ymm3/ymm15 after clear_avx");
    }

    #[target_feature(enable = "avx,avx512f")]
    unsafe fn avx512_roundtrip(k: &[u8; 64]) {
        let mut out = [0xffu8; 128];
        // SAFETY: reads 64 bytes of `k`, writes 128 of `out`; AVX-512F enabled;
        // `clear_avx512` only zeroes registers (declared clobbered), no stack use.
        unsafe {
            asm!(
                "vmovdqu64 zmm20, [{p}]",
                "vmovdqu64 zmm7, [{p}]",
                "call {f}",
                "vmovdqu64 [{o}], zmm20",
                "vmovdqu64 [{o} + 64], zmm7",
                p = in(reg) k.as_ptr(),
                o = in(reg) out.as_mut_ptr(),
                f = sym clear_avx512,
                clobber_abi("C"),
            );
        }
        assert_eq!(out, [0u8; 128], "zmm20/zmm7 after clear_avx512");
    }
}
