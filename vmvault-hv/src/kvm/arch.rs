//! The x86-64 machine state a vault vCPU starts in, as typed flag words: 64-bit mode with
//! paging at CPL3 (flat user code and data segments, no GDT or IDT in guest memory),
//! SSE/AVX state enabled, interrupts flagged on. Flag words of the architecture come
//! from the `x86_64` crate; the CPUID feature bits passed through to the guest are ours
//! ([`CpuidLeaf1Ecx`], [`CpuidLeaf7Ebx`], [`CpuidLeaf7Ecx`]).

use kvm_bindings::kvm_segment;
use x86_64::registers::control::{Cr0Flags, Cr4Flags};
use x86_64::registers::model_specific::EferFlags;
use x86_64::registers::rflags::RFlags;
use x86_64::registers::segmentation::SegmentSelector;
use x86_64::registers::xcontrol::XCr0Flags;
use x86_64::structures::gdt::DescriptorFlags;
use x86_64::PrivilegeLevel;

/// CR0: protected mode, paging, and the x87/SSE bits (`MP`, `ET`, `NE`) long mode with
/// SSE needs.
pub(super) const CR0: Cr0Flags = Cr0Flags::PROTECTED_MODE_ENABLE
    .union(Cr0Flags::MONITOR_COPROCESSOR)
    .union(Cr0Flags::EXTENSION_TYPE)
    .union(Cr0Flags::NUMERIC_ERROR)
    .union(Cr0Flags::PAGING);

/// CR4: PAE (required by long mode), `FXSAVE`/SSE and SSE exceptions, and `XSAVE` (for
/// AVX; dropped when the vCPU model lacks it).
pub(super) const CR4: Cr4Flags = Cr4Flags::PHYSICAL_ADDRESS_EXTENSION
    .union(Cr4Flags::OSFXSR)
    .union(Cr4Flags::OSXMMEXCPT_ENABLE)
    .union(Cr4Flags::OSXSAVE);

/// EFER: long mode enabled and active, and no-execute pages enabled (the Argon2 scratch
/// range is mapped non-executable).
pub(super) const EFER: EferFlags = EferFlags::LONG_MODE_ENABLE
    .union(EferFlags::LONG_MODE_ACTIVE)
    .union(EferFlags::NO_EXECUTE_ENABLE);

/// Bit 1 of RFLAGS, reserved, always 1 (no named flag in `x86_64`'s [`RFlags`]).
const RFLAGS_RESERVED_1: RFlags = RFlags::from_bits_retain(1 << 1);

/// RFLAGS at the guest's entry: the interrupt flag (no interrupt is ever injected) and
/// the always-set reserved bit.
pub(super) const RFLAGS: RFlags = RFlags::INTERRUPT_FLAG.union(RFLAGS_RESERVED_1);

/// XCR0 state components the guest may use, where the host has them: x87, SSE, AVX and
/// the three AVX-512 components.
pub(super) const XCR0_GUEST: XCr0Flags = XCr0Flags::X87
    .union(XCr0Flags::SSE)
    .union(XCr0Flags::AVX)
    .union(XCr0Flags::OPMASK)
    .union(XCr0Flags::ZMM_HI256)
    .union(XCr0Flags::HI16_ZMM);

/// Selector of the 64-bit user code segment (GDT index 6, RPL 3, as Linux lays it out).
pub(super) const CODE_SELECTOR: SegmentSelector = SegmentSelector::new(6, PrivilegeLevel::Ring3);
/// Selector of the user data segment (GDT index 5, RPL 3).
pub(super) const DATA_SELECTOR: SegmentSelector = SegmentSelector::new(5, PrivilegeLevel::Ring3);

/// The hidden part of a segment register as KVM takes it, for a flat segment described
/// by descriptor `flags` (base 0; a 4 GiB limit when `flags` has the full limit with
/// page granularity).
pub(super) fn segment(selector: SegmentSelector, flags: DescriptorFlags) -> kvm_segment {
    let bits = flags.bits();
    let field = |shift: u32, width: u32| ((bits >> shift) & ((1 << width) - 1)) as u8;
    let raw_limit = (bits & 0xffff) | ((bits >> 48) & 0xf) << 16;
    let g = field(55, 1);
    kvm_segment {
        base: 0,
        limit: if g == 1 {
            ((raw_limit << 12) | 0xfff) as u32
        } else {
            raw_limit as u32
        },
        selector: selector.0,
        type_: field(40, 4),
        present: field(47, 1),
        dpl: field(45, 2),
        db: field(54, 1),
        s: field(44, 1),
        l: field(53, 1),
        g,
        avl: field(52, 1),
        unusable: 0,
        padding: 0,
    }
}

/// The code segment register: flat 64-bit user code.
pub(super) fn code_segment() -> kvm_segment {
    segment(CODE_SELECTOR, DescriptorFlags::USER_CODE64)
}

/// The data segment registers (`ds`, `es`, `fs`, `gs`, `ss`): flat user data.
pub(super) fn data_segment() -> kvm_segment {
    segment(DATA_SELECTOR, DescriptorFlags::USER_DATA)
}

bitflags::bitflags! {
    /// CPUID leaf 1, ECX: the features the engine uses that are passed through from the
    /// host.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct CpuidLeaf1Ecx: u32 {
        /// Carry-less multiplication (`PCLMULQDQ`).
        const PCLMULQDQ = 1 << 1;
        /// Supplemental SSE3.
        const SSSE3 = 1 << 9;
        /// SSE4.1.
        const SSE4_1 = 1 << 19;
        /// SSE4.2.
        const SSE4_2 = 1 << 20;
        /// AES-NI.
        const AES = 1 << 25;
        /// `XSAVE`/`XRSTOR` and XCR0.
        const XSAVE = 1 << 26;
        /// AVX.
        const AVX = 1 << 28;
    }

    /// CPUID leaf 7 subleaf 0, EBX: the AVX2/AVX-512 features passed through.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct CpuidLeaf7Ebx: u32 {
        /// AVX2.
        const AVX2 = 1 << 5;
        /// AVX-512 Foundation.
        const AVX512F = 1 << 16;
        /// AVX-512 doubleword and quadword instructions.
        const AVX512DQ = 1 << 17;
        /// AVX-512 byte and word instructions.
        const AVX512BW = 1 << 30;
        /// AVX-512 vector length extensions.
        const AVX512VL = 1 << 31;
    }

    /// CPUID leaf 7 subleaf 0, ECX: the vector AES features passed through.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub(super) struct CpuidLeaf7Ecx: u32 {
        /// Vector AES (`VAES`).
        const VAES = 1 << 9;
        /// Vector carry-less multiplication (`VPCLMULQDQ`).
        const VPCLMULQDQ = 1 << 10;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The typed values are bit for bit what the hand-written constants were.
    #[test]
    fn typed_values_equal_the_old_constants() {
        assert_eq!(CR0.bits(), 0x8000_0033);
        assert_eq!(CR4.bits(), (1 << 5) | (1 << 9) | (1 << 10) | (1 << 18));
        assert_eq!(CR4.difference(Cr4Flags::OSXSAVE).bits(), 0x620);
        assert_eq!(EFER.bits(), 0xd00);
        assert_eq!(RFLAGS.bits(), 0x202);
        assert_eq!(XCR0_GUEST.bits(), 0xe7);
        assert_eq!(CODE_SELECTOR.0, 0x33);
        assert_eq!(DATA_SELECTOR.0, 0x2b);
        assert_eq!(
            CpuidLeaf1Ecx::all().bits(),
            (1 << 1) | (1 << 9) | (1 << 19) | (1 << 20) | (1 << 25) | (1 << 26) | (1 << 28)
        );
        assert_eq!(
            CpuidLeaf7Ebx::all().bits(),
            (1 << 5) | (1 << 16) | (1 << 17) | (1 << 30) | (1 << 31)
        );
        assert_eq!(CpuidLeaf7Ecx::all().bits(), (1 << 9) | (1 << 10));
    }

    /// The old hand-built segment: flat, 4 GiB limit, DPL 3, present, S=1, G=1.
    fn old_segment(selector: u16, type_: u8, l: u8, db: u8) -> kvm_segment {
        kvm_segment {
            base: 0,
            limit: 0xffff_ffff,
            selector,
            type_,
            present: 1,
            dpl: 3,
            db,
            s: 1,
            l,
            g: 1,
            avl: 0,
            unusable: 0,
            padding: 0,
        }
    }

    #[test]
    fn segments_equal_the_old_ones() {
        assert_eq!(code_segment(), old_segment(0x33, 11, 1, 0));
        assert_eq!(data_segment(), old_segment(0x2b, 3, 0, 1));
    }
}
