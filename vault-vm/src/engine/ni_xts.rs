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
//!   pass). During the last pass of a sector the steps start over from the next sector's
//!   tweak (stored divided by x, so that the first step gives it back): one call runs a
//!   whole group of up to 8 sectors with no restart between them. Tweaks are encrypted
//!   sector numbers, not key material; the buffers are not wiped.
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

/// `(lo, hi) · x^-1` in GF(2^128), XTS convention: the inverse of [`double`] (add the
/// modulus x^128 + x^7 + x^2 + x + 1 when the value is odd, then shift right).
#[inline(always)]
fn halve(lo: u64, hi: u64) -> (u64, u64) {
    let odd = lo & 1;
    let lo = lo ^ (odd.wrapping_neg() & 0x87);
    ((lo >> 1) | (hi << 63), (hi >> 1) | (odd << 63))
}

/// The 128-bit value of a tweak register as (low, high) 64-bit halves.
#[target_feature(enable = "aes,sse2")]
#[inline]
fn halves(t: __m128i) -> (u64, u64) {
    (
        _mm_cvtsi128_si64(t) as u64,
        _mm_cvtsi128_si64(_mm_unpackhi_epi64(t, t)) as u64,
    )
}

/// `op xmm0..xmm7, key`: one round of the 8 blocks.
#[rustfmt::skip]
macro_rules! aes8 {
    ($op:literal, $key:expr) => {
        concat!(
            $op, " xmm0, ", $key, "\n", $op, " xmm1, ", $key, "\n",
            $op, " xmm2, ", $key, "\n", $op, " xmm3, ", $key, "\n",
            $op, " xmm4, ", $key, "\n", $op, " xmm5, ", $key, "\n",
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
#[rustfmt::skip]
macro_rules! tstep {
    ($off:literal) => {
        concat!(
            "mov {c}, {hi}\n",
            "sar {c}, 63\n",
            "and {c:e}, 0x87\n",
            "add {lo}, {lo}\n",
            "adc {hi}, {hi}\n",
            "xor {lo}, {c}\n",
            "mov qword ptr [{nxt} + ", $off, "], {lo}\n",
            "mov qword ptr [{nxt} + ", $off, " + 8], {hi}\n",
        )
    };
}

/// Block `$off / 16` of the pass: load, XOR its tweak and round key 0 (xmm9).
#[rustfmt::skip]
macro_rules! input {
    ($x:literal, $off:literal) => {
        concat!(
            "movdqu ", $x, ", xmmword ptr [{p} + ", $off, "]\n",
            "pxor ", $x, ", xmmword ptr [{cur} + ", $off, "]\n",
            "pxor ", $x, ", xmm9\n",
        )
    };
}

/// Last round of block `$off / 16` with its tweak folded into the last round key (the
/// last round XORs its key last), then the store.
#[rustfmt::skip]
macro_rules! output {
    ($last:literal, $lastoff:literal, $x:literal, $off:literal) => {
        concat!(
            "movdqa xmm8, xmmword ptr [{cur} + ", $off, "]\n",
            "pxor xmm8, ", mk!($lastoff), "\n",
            $last, " ", $x, ", xmm8\n",
            "movdqu xmmword ptr [{p} + ", $off, "], ", $x, "\n",
        )
    };
}

/// Rounds 1..NR-1 of a pass, with the 8 tweak steps of the next pass after rounds 1..8.
/// Rounds NR-6..NR-1 take their keys from xmm10–15, the earlier ones from memory.
#[rustfmt::skip]
macro_rules! rounds {
    (14, $op:literal) => {
        concat!(
            aes8!($op, mk!(16)), tstep!(0),
            aes8!($op, mk!(32)), tstep!(16),
            aes8!($op, mk!(48)), tstep!(32),
            aes8!($op, mk!(64)), tstep!(48),
            aes8!($op, mk!(80)), tstep!(64),
            aes8!($op, mk!(96)), tstep!(80),
            aes8!($op, mk!(112)), tstep!(96),
            aes8!($op, "xmm10"), tstep!(112),
            aes8!($op, "xmm11"),
            aes8!($op, "xmm12"),
            aes8!($op, "xmm13"),
            aes8!($op, "xmm14"),
            aes8!($op, "xmm15"),
        )
    };
    (12, $op:literal) => {
        concat!(
            aes8!($op, mk!(16)), tstep!(0),
            aes8!($op, mk!(32)), tstep!(16),
            aes8!($op, mk!(48)), tstep!(32),
            aes8!($op, mk!(64)), tstep!(48),
            aes8!($op, mk!(80)), tstep!(64),
            aes8!($op, "xmm10"), tstep!(80),
            aes8!($op, "xmm11"), tstep!(96),
            aes8!($op, "xmm12"), tstep!(112),
            aes8!($op, "xmm13"),
            aes8!($op, "xmm14"),
            aes8!($op, "xmm15"),
        )
    };
    (10, $op:literal) => {
        concat!(
            aes8!($op, mk!(16)), tstep!(0),
            aes8!($op, mk!(32)), tstep!(16),
            aes8!($op, mk!(48)), tstep!(32),
            aes8!($op, "xmm10"), tstep!(48),
            aes8!($op, "xmm11"), tstep!(64),
            aes8!($op, "xmm12"), tstep!(80),
            aes8!($op, "xmm13"), tstep!(96),
            aes8!($op, "xmm14"), tstep!(112),
            aes8!($op, "xmm15"),
        )
    };
}

/// Loads round key 0 into xmm9 and round keys NR-6..NR-1 into xmm10–15.
#[rustfmt::skip]
macro_rules! load_keys {
    ($k0:literal, $k1:literal, $k2:literal, $k3:literal, $k4:literal, $k5:literal) => {
        concat!(
            "movdqa xmm9, xmmword ptr [{rk}]\n",
            "movdqa xmm10, ", mk!($k0), "\n",
            "movdqa xmm11, ", mk!($k1), "\n",
            "movdqa xmm12, ", mk!($k2), "\n",
            "movdqa xmm13, ", mk!($k3), "\n",
            "movdqa xmm14, ", mk!($k4), "\n",
            "movdqa xmm15, ", mk!($k5), "\n",
        )
    };
}

/// The whole kernel for one round count and direction: `n` sectors of `pps` passes of
/// 128 bytes at `p`. At the start of a sector's last pass, `(lo, hi)` is reloaded from
/// `[ivp]` (the next sector's tweak divided by x) and `ivp` advances.
macro_rules! xts_asm {
    ($nr:tt, $op:literal, $last:literal, $lastoff:literal, [$($k:literal),*],
     $rk:expr, $p:ident, $cur:ident, $nxt:ident, $n:ident, $pps:ident, $ivp:ident,
     $lo:ident, $hi:ident) => {
        asm!(
            load_keys!($($k),*),
            "4:",
            "mov {m}, {pps}",
            "2:",
            "cmp {m}, 1",
            "jne 3f",
            "mov {lo}, qword ptr [{ivp}]",
            "mov {hi}, qword ptr [{ivp} + 8]",
            "add {ivp}, 16",
            "3:",
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
            "dec {m}",
            "jnz 2b",
            "dec {n}",
            "jnz 4b",
            rk = in(reg) $rk,
            pps = in(reg) $pps,
            p = inout(reg) $p => _,
            cur = inout(reg) $cur => _,
            nxt = inout(reg) $nxt => _,
            n = inout(reg) $n => _,
            ivp = inout(reg) $ivp => _,
            lo = inout(reg) $lo => _,
            hi = inout(reg) $hi => _,
            m = out(reg) _,
            c = out(reg) _,
            out("xmm0") _, out("xmm1") _, out("xmm2") _, out("xmm3") _,
            out("xmm4") _, out("xmm5") _, out("xmm6") _, out("xmm7") _,
            out("xmm8") _, out("xmm9") _, out("xmm10") _, out("xmm11") _,
            out("xmm12") _, out("xmm13") _, out("xmm14") _, out("xmm15") _,
            options(nostack),
        )
    };
}

/// XTS-encrypts (`enc`) or -decrypts a group of up to 8 sectors of `ss` bytes in place;
/// `tw[s]` is the initial tweak (the encrypted IV) of sector `s`. `rk` is the data key of
/// `NR` rounds: its forward schedule for encryption, its inverse one for decryption.
///
/// # Panics
/// If `group` is not 1 to 8 sectors, or `ss` not a multiple of 128 (every sector size is).
#[target_feature(enable = "aes,sse2")]
#[inline]
pub(crate) fn xts_group<const NR: usize>(
    rk: &RoundKeys,
    tw: &[__m128i; 8],
    group: &mut [u8],
    ss: usize,
    enc: bool,
) {
    assert!(ss >= 128 && ss.is_multiple_of(128));
    let n = group.len() / ss;
    assert!((1..=8).contains(&n) && group.len() == n * ss);
    assert_eq!(rk.nr, NR);
    let sched: *const [u8; 16] = if enc {
        rk.enc.as_ptr()
    } else {
        rk.dec.as_ptr()
    };
    // The first pass's tweaks: t · x^j for j = 0..8 of sector 0.
    let mut cur_next = Tweaks([[0; 2]; 16]);
    let (mut lo, mut hi) = halves(tw[0]);
    for (j, slot) in cur_next.0[..8].iter_mut().enumerate() {
        if j > 0 {
            (lo, hi) = double(lo, hi);
        }
        *slot = [lo, hi];
    }
    // Sectors 1..n: their tweaks divided by x; the entry after the last is never used.
    let mut restart = [[0u64; 2]; 8];
    for (r, t) in restart.iter_mut().zip(&tw[1..n]) {
        let (l, h) = halves(*t);
        let (l, h) = halve(l, h);
        *r = [l, h];
    }
    let p = group.as_mut_ptr();
    let pps = ss / 128;
    let cur = cur_next.0.as_mut_ptr();
    // SAFETY: `cur + 8` is the second half of the same 16-entry array.
    let nxt = unsafe { cur.add(8) };
    let ivp = restart.as_ptr();
    // SAFETY: the CPU has AES-NI and SSE2 (target features of this function, which only
    // feature-checked callers reach). The kernel reads and writes `n * pps * 128 =
    // group.len()` bytes from `p` (unaligned moves); reads round keys 0..=NR of `sched`
    // (in bounds: NR ≤ 14, 15 entries; 16-byte aligned, as legacy-SSE memory operands
    // need, since `RoundKeys` is `align(16)` and each key is 16 bytes); reads and writes
    // the two 8-entry halves of `cur_next` (16-byte aligned) through `cur`/`nxt`; reads
    // `restart[0..n]` (n ≤ 8 entries) through `ivp`. It writes only the registers it
    // declares (xmm0–15, the GPR operands, flags) and pushes nothing.
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
                pps,
                ivp,
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
                pps,
                ivp,
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
                pps,
                ivp,
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
                pps,
                ivp,
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
                pps,
                ivp,
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
                pps,
                ivp,
                lo,
                hi
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{double, halve};

    #[test]
    fn halve_undoes_double() {
        let mut x = (0x0123_4567_89ab_cdefu64, 0xfedc_ba98_7654_3210u64);
        for _ in 0..300 {
            assert_eq!(halve(double(x.0, x.1).0, double(x.0, x.1).1), x);
            assert_eq!(double(halve(x.0, x.1).0, halve(x.0, x.1).1), x);
            x = double(x.0, x.1);
        }
        assert_eq!(halve(1, 0), (0x43, 1 << 63));
    }
}
