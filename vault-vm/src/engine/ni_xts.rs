//! The AES-NI XTS kernel: 8 blocks in flight per pass, written in inline assembly so that
//! register use is fixed rather than left to the compiler.
//!
//! - **Blocks.** xmm0–7 carry the 8 blocks of a pass (128 bytes).
//! - **Round keys.** They are never copied to the stack: xmm9 holds round key 0 and
//!   xmm10–15 the 6 round keys before the last; the others (rounds 1..NR-6 and the last
//!   one) are read as memory operands straight from the schedule in [`RoundKeys`] (which
//!   is 16-byte aligned for that). xmm8 is the scratch register of the last round, where
//!   the output tweak is folded into the last round key.
//! - **Tweaks.** The next pass's 8 tweaks are computed in general-purpose registers (one
//!   multiplication by x in GF(2^128) per block: `add`/`adc` and a conditional 0x87),
//!   interleaved with the AES rounds of the current pass, so they never wait on the AES
//!   units and leave the vector ports to them. They go to a 256-byte, 16-byte aligned
//!   buffer on the stack that holds this pass's tweaks and the next pass's (swapped each
//!   pass). Tweaks are encrypted sector numbers, not key material; the buffer is not
//!   wiped.
//!
//! Legacy SSE encoding (no VEX): the backend runs on any CPU with AES-NI and SSE2. After
//! the kernel the vector registers hold key material like those of every other backend;
//! [`super::clear_vector_registers`] clears them.

use core::arch::asm;
use core::arch::x86_64::*;

use super::keys::RoundKeys;

// The kernel's memory operands on round keys need 16-byte alignment of both schedules.
const _: () = {
    assert!(core::mem::align_of::<RoundKeys>() >= 16);
    assert!(core::mem::offset_of!(RoundKeys, enc) % 16 == 0);
    assert!(core::mem::offset_of!(RoundKeys, dec) % 16 == 0);
};

/// This pass's 8 tweaks (`[0..8]`) and the next pass's (`[8..16]`), as (low, high) 64-bit
/// halves; the kernel swaps the two halves' roles every pass.
#[repr(C, align(16))]
struct Tweaks([[u64; 2]; 16]);

/// `(lo, hi) · x` in GF(2^128), XTS convention (little-endian, reduction by 0x87).
#[inline(always)]
fn double(lo: u64, hi: u64) -> (u64, u64) {
    let carry = (hi >> 63).wrapping_neg() & 0x87;
    ((lo << 1) ^ carry, (hi << 1) | (lo >> 63))
}

/// `op xmm0..xmm7, key`: one round of the 8 blocks.
macro_rules! aes8 {
    ($op:literal, $key:expr) => {
        concat!(
            $op, " xmm0, ", $key, "\n", $op, " xmm1, ", $key, "\n", $op, " xmm2, ", $key, "\n",
            $op, " xmm3, ", $key, "\n", $op, " xmm4, ", $key, "\n", $op, " xmm5, ", $key, "\n",
            $op, " xmm6, ", $key, "\n", $op, " xmm7, ", $key, "\n",
        )
    };
}

/// Round key `$off / 16` as a memory operand of the schedule.
macro_rules! mk {
    ($off:literal) => {
        concat!("xmmword ptr [{rk} + ", $off, "]")
    };
}

/// One tweak step: `(lo, hi) <- (lo, hi) · x`, stored as next-pass tweak `$off / 16`.
macro_rules! tstep {
    ($off:literal) => {
        concat!(
            "mov {c}, {hi}\n",
            "sar {c}, 63\n",
            "and {c:e}, 0x87\n",
            "add {lo}, {lo}\n",
            "adc {hi}, {hi}\n",
            "xor {lo}, {c}\n",
            "mov qword ptr [{nxt} + ",
            $off,
            "], {lo}\n",
            "mov qword ptr [{nxt} + ",
            $off,
            " + 8], {hi}\n",
        )
    };
}

/// Block `$off / 16` of the pass: load, XOR its tweak and round key 0 (xmm9).
macro_rules! input {
    ($x:literal, $off:literal) => {
        concat!(
            "movdqu ",
            $x,
            ", xmmword ptr [{p} + ",
            $off,
            "]\n",
            "pxor ",
            $x,
            ", xmmword ptr [{cur} + ",
            $off,
            "]\n",
            "pxor ",
            $x,
            ", xmm9\n",
        )
    };
}

/// Last round of block `$off / 16` with its tweak folded into the last round key (the
/// last round XORs its key last), then the store.
macro_rules! output {
    ($last:literal, $lastoff:literal, $x:literal, $off:literal) => {
        concat!(
            "movdqa xmm8, xmmword ptr [{cur} + ",
            $off,
            "]\n",
            "pxor xmm8, ",
            mk!($lastoff),
            "\n",
            $last,
            " ",
            $x,
            ", xmm8\n",
            "movdqu xmmword ptr [{p} + ",
            $off,
            "], ",
            $x,
            "\n",
        )
    };
}

/// Rounds 1..NR-1 of a pass, with the 8 tweak steps of the next pass after rounds 1..8.
/// Rounds NR-6..NR-1 take their keys from xmm10–15, the earlier ones from memory.
macro_rules! rounds {
    (14, $op:literal) => {
        concat!(
            aes8!($op, mk!(16)),
            tstep!(0),
            aes8!($op, mk!(32)),
            tstep!(16),
            aes8!($op, mk!(48)),
            tstep!(32),
            aes8!($op, mk!(64)),
            tstep!(48),
            aes8!($op, mk!(80)),
            tstep!(64),
            aes8!($op, mk!(96)),
            tstep!(80),
            aes8!($op, mk!(112)),
            tstep!(96),
            aes8!($op, "xmm10"),
            tstep!(112),
            aes8!($op, "xmm11"),
            aes8!($op, "xmm12"),
            aes8!($op, "xmm13"),
            aes8!($op, "xmm14"),
            aes8!($op, "xmm15"),
        )
    };
    (12, $op:literal) => {
        concat!(
            aes8!($op, mk!(16)),
            tstep!(0),
            aes8!($op, mk!(32)),
            tstep!(16),
            aes8!($op, mk!(48)),
            tstep!(32),
            aes8!($op, mk!(64)),
            tstep!(48),
            aes8!($op, mk!(80)),
            tstep!(64),
            aes8!($op, "xmm10"),
            tstep!(80),
            aes8!($op, "xmm11"),
            tstep!(96),
            aes8!($op, "xmm12"),
            tstep!(112),
            aes8!($op, "xmm13"),
            aes8!($op, "xmm14"),
            aes8!($op, "xmm15"),
        )
    };
    (10, $op:literal) => {
        concat!(
            aes8!($op, mk!(16)),
            tstep!(0),
            aes8!($op, mk!(32)),
            tstep!(16),
            aes8!($op, mk!(48)),
            tstep!(32),
            aes8!($op, "xmm10"),
            tstep!(48),
            aes8!($op, "xmm11"),
            tstep!(64),
            aes8!($op, "xmm12"),
            tstep!(80),
            aes8!($op, "xmm13"),
            tstep!(96),
            aes8!($op, "xmm14"),
            tstep!(112),
            aes8!($op, "xmm15"),
        )
    };
}

/// Loads round key 0 into xmm9 and round keys NR-6..NR-1 into xmm10–15.
macro_rules! load_keys {
    ($k0:literal, $k1:literal, $k2:literal, $k3:literal, $k4:literal, $k5:literal) => {
        concat!(
            "movdqa xmm9, xmmword ptr [{rk}]\n",
            "movdqa xmm10, ",
            mk!($k0),
            "\n",
            "movdqa xmm11, ",
            mk!($k1),
            "\n",
            "movdqa xmm12, ",
            mk!($k2),
            "\n",
            "movdqa xmm13, ",
            mk!($k3),
            "\n",
            "movdqa xmm14, ",
            mk!($k4),
            "\n",
            "movdqa xmm15, ",
            mk!($k5),
            "\n",
        )
    };
}

/// The whole kernel for one round count and direction: `n` passes of 128 bytes at `p`.
macro_rules! xts_asm {
    ($nr:tt, $op:literal, $last:literal, $lastoff:literal, [$($k:literal),*],
     $rk:expr, $p:ident, $cur:ident, $nxt:ident, $n:ident, $lo:ident, $hi:ident) => {
        asm!(
            load_keys!($($k),*),
            "2:",
            input!("xmm0", 0), input!("xmm1", 16), input!("xmm2", 32), input!("xmm3", 48),
            input!("xmm4", 64), input!("xmm5", 80), input!("xmm6", 96), input!("xmm7", 112),
            rounds!($nr, $op),
            output!($last, $lastoff, "xmm0", 0),
            output!($last, $lastoff, "xmm1", 16),
            output!($last, $lastoff, "xmm2", 32),
            output!($last, $lastoff, "xmm3", 48),
            output!($last, $lastoff, "xmm4", 64),
            output!($last, $lastoff, "xmm5", 80),
            output!($last, $lastoff, "xmm6", 96),
            output!($last, $lastoff, "xmm7", 112),
            "add {p}, 128",
            "xchg {cur}, {nxt}",
            "dec {n}",
            "jnz 2b",
            rk = in(reg) $rk,
            p = inout(reg) $p => _,
            cur = inout(reg) $cur => _,
            nxt = inout(reg) $nxt => _,
            n = inout(reg) $n => _,
            lo = inout(reg) $lo => _,
            hi = inout(reg) $hi => _,
            c = out(reg) _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        )
    };
}

/// XTS-encrypts (`enc`) or -decrypts one sector in place with initial tweak `t` (the
/// encrypted IV), with the data key `rk` of `NR` rounds: its forward schedule for
/// encryption, its inverse one for decryption.
///
/// # Panics
/// If the sector is not a non-zero multiple of 128 bytes (every sector size is).
#[target_feature(enable = "aes,sse2")]
#[inline]
pub(crate) fn xts_sector<const NR: usize>(rk: &RoundKeys, t: __m128i, sec: &mut [u8], enc: bool) {
    assert!(sec.len() >= 128 && sec.len().is_multiple_of(128));
    assert_eq!(rk.nr, NR);
    let sched: *const [u8; 16] = if enc {
        rk.enc.as_ptr()
    } else {
        rk.dec.as_ptr()
    };
    // This pass's tweaks: t · x^j for j = 0..8; (lo, hi) ends on the last of them.
    let mut tw = Tweaks([[0; 2]; 16]);
    let mut lo = _mm_cvtsi128_si64(t) as u64;
    let mut hi = _mm_cvtsi128_si64(_mm_unpackhi_epi64(t, t)) as u64;
    for (j, slot) in tw.0[..8].iter_mut().enumerate() {
        if j > 0 {
            (lo, hi) = double(lo, hi);
        }
        *slot = [lo, hi];
    }
    let p = sec.as_mut_ptr();
    let n = sec.len() / 128;
    let cur = tw.0.as_mut_ptr();
    // SAFETY: `cur + 8` is the second half of the same 16-entry array.
    let nxt = unsafe { cur.add(8) };
    // SAFETY: the CPU has AES-NI and SSE2 (target features of this function, which only
    // feature-checked callers reach). The kernel reads and writes `n * 128 = sec.len()`
    // bytes from `p` (unaligned moves), reads round keys 0..=NR of `sched` (in bounds:
    // NR ≤ 14, 15 entries; 16-byte aligned, as legacy-SSE memory operands need, since
    // `RoundKeys` is `align(16)` and each key is 16 bytes), and reads/writes the two
    // 8-entry halves of `tw` (16-byte aligned) through `cur`/`nxt`. It writes only the
    // registers it declares (xmm0–15, the GPR operands, flags) and does not touch the
    // stack below `rsp`.
    unsafe {
        match (NR, enc) {
            (10, true) => xts_asm!(
                10,
                "aesenc",
                "aesenclast",
                160,
                [64, 80, 96, 112, 128, 144],
                sched,
                p,
                cur,
                nxt,
                n,
                lo,
                hi
            ),
            (10, false) => xts_asm!(
                10,
                "aesdec",
                "aesdeclast",
                160,
                [64, 80, 96, 112, 128, 144],
                sched,
                p,
                cur,
                nxt,
                n,
                lo,
                hi
            ),
            (12, true) => xts_asm!(
                12,
                "aesenc",
                "aesenclast",
                192,
                [96, 112, 128, 144, 160, 176],
                sched,
                p,
                cur,
                nxt,
                n,
                lo,
                hi
            ),
            (12, false) => xts_asm!(
                12,
                "aesdec",
                "aesdeclast",
                192,
                [96, 112, 128, 144, 160, 176],
                sched,
                p,
                cur,
                nxt,
                n,
                lo,
                hi
            ),
            (_, true) => xts_asm!(
                14,
                "aesenc",
                "aesenclast",
                224,
                [128, 144, 160, 176, 192, 208],
                sched,
                p,
                cur,
                nxt,
                n,
                lo,
                hi
            ),
            (_, false) => xts_asm!(
                14,
                "aesdec",
                "aesdeclast",
                224,
                [128, 144, 160, 176, 192, 208],
                sched,
                p,
                cur,
                nxt,
                n,
                lo,
                hi
            ),
        }
    }
}
