//! Round keys in saved register state: parse an XSAVE area (the standard, non-compacted
//! layout that `KVM_GET_XSAVE`/`KVM_GET_XSAVE2` and `PTRACE_GETREGSET NT_X86_XSTATE`
//! return) into xmm/ymm/zmm registers and search it for AES round keys.
//!
//! Two searches, both over the same area:
//! - [`scan_registers`]: every 16-byte lane of every vector register (zmm0–31 rebuilt
//!   from the legacy, AVX, ZMM_Hi256 and Hi16_ZMM components) against every single round
//!   key of the encryption schedule and of the equivalent inverse (`aesimc`) schedule.
//!   Registers hold round keys one per lane (AES-NI) or broadcast to 4 lanes (VAES), so a
//!   single round key is the needle here, not the 3-round runs of a memory scan.
//! - [`scan_area`]: the key-residency scanner's own needles
//!   ([`crate::residency::Needles::for_volume_key`]) over the raw bytes of the area.

use std::collections::HashMap;
use std::fmt;

use crate::residency::aes::{decryption_schedule_reversed, expand_key, RoundKey};
use crate::residency::Needles;

/// XSAVE state components that hold vector registers.
const LEGACY_XMM_OFFSET: usize = 160;
const HEADER_OFFSET: usize = 512;
/// Component numbers (XCR0 / XSTATE_BV bits).
const YMM_HI128: u32 = 2;
const ZMM_HI256: u32 = 6;
const HI16_ZMM: u32 = 7;

/// Offset of XSAVE state component `n` in the standard layout (CPUID leaf 0xD, sub-leaf
/// `n`, `ebx`), or `None` if this CPU has no such component.
fn component_offset(n: u32) -> Option<usize> {
    // cpuid exists on every x86_64 CPU (a safe intrinsic); leaf 0xD exists when XSAVE
    // does, and an unsupported sub-leaf returns zeros.
    let r = std::arch::x86_64::__cpuid_count(0xd, n);
    (r.eax != 0 && r.ebx != 0).then_some(r.ebx as usize)
}

/// One vector register rebuilt from an XSAVE area: `bytes` is 16, 32 or 64 bytes long
/// (as wide as the components present on this CPU).
#[derive(Clone)]
pub struct Register {
    /// `zmm0`..`zmm31` (or `xmm`/`ymm` when the wider state does not exist here).
    pub name: String,
    /// Little-endian register contents.
    pub bytes: Vec<u8>,
}

impl std::fmt::Debug for Register {
    /// The name and width only: the contents may be key material.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Register")
            .field("name", &self.name)
            .field(
                "bytes",
                &format_args!("<{} bytes redacted>", self.bytes.len()),
            )
            .finish()
    }
}

/// The vector registers saved in `area`. Components whose XSTATE_BV bit is clear are in
/// their initial state (zero), whatever the area holds for them.
///
/// # Panics
/// If `area` is shorter than the legacy region and header (576 bytes).
pub fn registers(area: &[u8]) -> Vec<Register> {
    assert!(
        area.len() >= HEADER_OFFSET + 64,
        "XSAVE area of {} bytes is too short",
        area.len()
    );
    let xstate_bv = u64::from_le_bytes(
        area[HEADER_OFFSET..HEADER_OFFSET + 8]
            .try_into()
            .expect("8 bytes"),
    );
    // Bytes `len` at `off` of component `c`, or zeros when it is in its initial state or
    // not in the area.
    let part = |c: u32, off: usize, len: usize| -> Option<Vec<u8>> {
        let base = component_offset(c)?;
        if xstate_bv & (1 << c) == 0 || base + off + len > area.len() {
            return Some(vec![0; len]);
        }
        Some(area[base + off..base + off + len].to_vec())
    };
    let sse_live = xstate_bv & 2 != 0;
    let mut out = Vec::new();
    for i in 0..16 {
        let mut bytes = if sse_live {
            area[LEGACY_XMM_OFFSET + 16 * i..LEGACY_XMM_OFFSET + 16 * i + 16].to_vec()
        } else {
            vec![0; 16]
        };
        let mut name = format!("xmm{i}");
        if let Some(hi) = part(YMM_HI128, 16 * i, 16) {
            bytes.extend(hi);
            name = format!("ymm{i}");
            if let Some(hi) = part(ZMM_HI256, 32 * i, 32) {
                bytes.extend(hi);
                name = format!("zmm{i}");
            }
        }
        out.push(Register { name, bytes });
    }
    for i in 0..16 {
        if let Some(bytes) = part(HI16_ZMM, 64 * i, 64) {
            out.push(Register {
                name: format!("zmm{}", i + 16),
                bytes,
            });
        }
    }
    out
}

/// A round key found in a register lane.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RegisterHit {
    /// Register name (`zmm7`).
    pub register: String,
    /// 16-byte lane of the register (0..4).
    pub lane: usize,
    /// Which round key it is.
    pub what: String,
}

impl fmt::Display for RegisterHit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} lane {}: {}", self.register, self.lane, self.what)
    }
}

/// Every single round key of the AES keys in volume key `key` (the whole key if it is
/// 16/24/32 bytes, each half if it is 32/48/64 bytes: XTS), encryption and `aesimc`
/// decryption schedules, with a label each.
pub fn round_keys(key: &[u8]) -> HashMap<RoundKey, String> {
    let mut aes_keys: Vec<(String, &[u8])> = Vec::new();
    if matches!(key.len(), 16 | 24 | 32) {
        aes_keys.push((format!("AES-{}", key.len() * 8), key));
    }
    if matches!(key.len(), 32 | 48 | 64) {
        let h = key.len() / 2;
        for (i, half) in key.chunks_exact(h).enumerate() {
            let role = if i == 0 { "data" } else { "tweak" };
            aes_keys.push((format!("AES-{} XTS {role} key", h * 8), half));
        }
    }
    let mut out = HashMap::new();
    for (label, k) in aes_keys {
        let enc = expand_key(k);
        let dec = decryption_schedule_reversed(&enc);
        for (i, rk) in enc.iter().enumerate() {
            out.entry(*rk)
                .or_insert_with(|| format!("{label}: encryption round key {i}"));
        }
        for (i, rk) in dec.iter().enumerate() {
            out.entry(*rk)
                .or_insert_with(|| format!("{label}: decryption (aesimc) round key {i}"));
        }
    }
    out
}

/// Every register lane of `area` that holds a round key of `key` (see [`round_keys`]).
pub fn scan_registers(area: &[u8], key: &[u8]) -> Vec<RegisterHit> {
    let keys = round_keys(key);
    let mut hits = Vec::new();
    for r in registers(area) {
        for (lane, c) in r.bytes.chunks_exact(16).enumerate() {
            let lane_bytes: RoundKey = c.try_into().expect("16 bytes");
            if let Some(what) = keys.get(&lane_bytes) {
                hits.push(RegisterHit {
                    register: r.name.clone(),
                    lane,
                    what: what.clone(),
                });
            }
        }
    }
    hits
}

/// The residency scanner's needles for volume key `key` over the raw XSAVE area:
/// `(offset in the area, what)`.
pub fn scan_area(area: &[u8], key: &[u8]) -> Vec<(u64, String)> {
    Needles::for_volume_key(key).search_bytes(area)
}

/// Both searches at once, as one report.
#[derive(Clone, Debug)]
pub struct XstateReport {
    /// Round keys found in register lanes.
    pub registers: Vec<RegisterHit>,
    /// Hits of the residency scanner's needles in the raw area.
    pub area: Vec<(u64, String)>,
}

impl XstateReport {
    /// Scans `area` for key material of volume key `key`.
    pub fn scan(area: &[u8], key: &[u8]) -> XstateReport {
        XstateReport {
            registers: scan_registers(area, key),
            area: scan_area(area, key),
        }
    }

    /// No key material found by either search.
    pub fn is_clean(&self) -> bool {
        self.registers.is_empty() && self.area.is_empty()
    }
}

impl fmt::Display for XstateReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.is_clean() {
            return f.write_str("no round key in the saved registers");
        }
        writeln!(
            f,
            "{} register lane(s) hold round keys:",
            self.registers.len()
        )?;
        for h in &self.registers {
            writeln!(f, "  {h}")?;
        }
        writeln!(
            f,
            "{} residency-scanner hit(s) in the area:",
            self.area.len()
        )?;
        for (off, what) in &self.area {
            writeln!(f, "  +{off:#x}: {what}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A synthetic XSAVE area with a round key broadcast in zmm17 and another in the
    /// upper half of ymm3: both found, with register names; a cleared area is clean.
    #[test]
    fn finds_round_keys_in_synthetic_area() {
        let (Some(ymm), Some(hi16)) = (component_offset(YMM_HI128), component_offset(HI16_ZMM))
        else {
            println!("SKIPPED: this CPU has no AVX-512 state components");
            return;
        };
        let key: Vec<u8> = (0..64u8)
            .map(|i| i.wrapping_mul(29).wrapping_add(3))
            .collect();
        let enc = expand_key(&key[..32]);
        let size = hi16 + 1024;
        let mut area = vec![0u8; size];
        assert!(XstateReport::scan(&area, &key).is_clean());
        area[HEADER_OFFSET..HEADER_OFFSET + 8].copy_from_slice(&0xe7u64.to_le_bytes());
        for l in 0..4 {
            area[hi16 + 64 + 16 * l..hi16 + 64 + 16 * l + 16].copy_from_slice(&enc[5]);
        }
        area[ymm + 48..ymm + 64].copy_from_slice(&enc[9]);
        let r = XstateReport::scan(&area, &key);
        assert!(r
            .registers
            .iter()
            .any(|h| h.register == "zmm17" && h.lane == 3));
        assert!(r
            .registers
            .iter()
            .any(|h| h.register.ends_with('3') && h.lane == 1));
        assert!(!r.area.is_empty(), "the broadcast needle sees zmm17: {r}");
        // XSTATE_BV clear: the same bytes are stale, not register contents.
        area[HEADER_OFFSET..HEADER_OFFSET + 8].copy_from_slice(&0u64.to_le_bytes());
        assert!(scan_registers(&area, &key).is_empty());
    }
}
