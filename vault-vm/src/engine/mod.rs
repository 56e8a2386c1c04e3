//! The sector cipher engine: dm-crypt's AES modes over whole sectors, in place.
//!
//! API CONTRACT (other crates code against this; keep the signatures stable):
//!
//! ```ignore
//! let spec = CipherSpec::parse("aes-xts-plain64")?;          // or "capi:xts(aes)-plain64"
//! let cipher = SectorCipher::new(spec, &key)?;               // key: 32/64 bytes for XTS, 16/24/32 otherwise
//! let geom = Geometry::new(4096, false, 0)?;                 // sector size, iv_large_sectors, iv_offset
//! cipher.encrypt(&geom, sector, &mut buf)?;                  // sector: 512-byte units, like a dm bio sector
//! cipher.decrypt(&geom, sector, &mut buf)?;
//! ```
//!
//! IV rule (dm-crypt's): `s = sector + iv_offset` (512-byte units); the IV sector of the
//! i-th sector in `buf` is `s + i * (sector_size / 512)`, or, with `iv_large_sectors`,
//! `s / (sector_size / 512) + i`. `plain` keeps the low 32 bits of that number, `plain64`
//! all 64, both little endian in an otherwise zero 16-byte block; `essiv:sha256` encrypts
//! that block with AES-256 keyed by SHA-256(volume key). XTS uses the IV as its tweak
//! (first key half for data, second for the tweak), CBC as its IV; ECB has none.
//!
//! Supported specs: `aes-xts-plain64`, `aes-xts-plain`, `aes-cbc-essiv:sha256`,
//! `aes-cbc-plain64`, `aes-cbc-plain`, `aes-ecb` and their `capi:` forms
//! (`capi:xts(aes)-plain64`, `capi:cbc(aes)-essiv:sha256`, `capi:ecb(aes)`, ...).
//!
//! Backends ([`Backend`], chosen once per [`SectorCipher::new`] from a cached
//! `cpuid`/`xgetbv` probe, no OS calls): `vaes512` (VAES + VPCLMULQDQ + AVX-512F, 32
//! blocks in flight, tweaks computed 4 lanes at a time with carry-less multiplies),
//! `vaes256` (VAES + VPCLMULQDQ on AVX2's 256-bit registers, 16 blocks in flight, for
//! CPUs without AVX-512), `aesni` (8 blocks in flight), and `soft` (the `aes` crate: constant-time fixslice
//! software AES where AES-NI is missing). CBC encryption is serial within a sector, so
//! the hardware backends run several sectors of a buffer side by side. Nothing allocates.
//!
//! Key material (round keys, tweak and ESSIV keys, the SHA-256 salt) is zeroized on drop
//! and the per-call stack copies of round keys are overwritten before returning.
//!
//! Registers: the round keys live in xmm/ymm/zmm registers while a call runs and stay there
//! afterwards. Callers clear them with [`clear_vector_registers`] at the end of each
//! batch of requests and before the thread leaves the CPU on purpose (the vault guest
//! before every exit, the `soft` backend after each request), so that the kernel does not
//! save a key schedule with the thread's or vCPU's register state. A preemption in the
//! middle of a batch still saves them for a moment; only encrypted guest register state
//! (SEV-ES/SEV-SNP) closes that window (see [`clear_vector_registers`]).

use core::fmt;

mod keys;
mod ni;
mod ni_xts;
mod regs;
mod soft;
mod vaes;
mod vaes256;

pub mod generic;

pub use regs::{clear_vector_registers, VectorState};

use keys::{AesKey, RoundKeys};

/// Block cipher mode of a [`CipherSpec`].
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum Mode {
    /// XTS (IEEE 1619); the key is two AES keys.
    Xts = 1,
    /// CBC over each sector.
    Cbc = 2,
    /// ECB (no IV).
    Ecb = 3,
}

/// IV generator of a [`CipherSpec`], named as dm-crypt names them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u32)]
pub enum IvMode {
    /// No IV (ECB only).
    Null = 0,
    /// Low 32 bits of the sector number, little endian.
    Plain = 1,
    /// 64-bit sector number, little endian.
    Plain64 = 2,
    /// ESSIV with SHA-256: the sector number encrypted with AES keyed by SHA-256(key).
    EssivSha256 = 3,
}

/// A parsed dm-crypt cipher specification such as `aes-xts-plain64`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct CipherSpec {
    /// Block cipher mode.
    pub mode: Mode,
    /// IV generator.
    pub iv: IvMode,
}

/// Errors of the engine. Messages never contain key material.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EngineError {
    /// The cipher specification is not one the engine supports.
    UnsupportedSpec,
    /// The key length does not fit the cipher mode.
    BadKeyLength(usize),
    /// The sector size is not 512, 1024, 2048 or 4096.
    BadSectorSize(u32),
    /// The buffer is not a whole number of sectors.
    BadLength(usize),
    /// The start sector is not aligned to the sector size.
    MisalignedSector(u64),
}

impl fmt::Display for EngineError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::UnsupportedSpec => f.write_str(
                "unsupported cipher specification (supported: aes-xts-plain64, aes-xts-plain, \
                 aes-cbc-essiv:sha256, aes-cbc-plain64, aes-cbc-plain, aes-ecb, capi:xts(aes)-plain64)",
            ),
            Self::BadKeyLength(n) => write!(f, "key length of {} bits does not fit the cipher", n * 8),
            Self::BadSectorSize(n) => write!(f, "sector size {n} is not 512, 1024, 2048 or 4096"),
            Self::BadLength(n) => write!(f, "buffer of {n} bytes is not a whole number of sectors"),
            Self::MisalignedSector(s) => write!(f, "sector {s} is not aligned to the sector size"),
        }
    }
}

/// Sector geometry of a mapping.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    /// Sector size in bytes: 512, 1024, 2048 or 4096.
    pub sector_size: u32,
    /// IVs count sector-size units instead of 512-byte units.
    pub iv_large_sectors: bool,
    /// Added to the sector (512-byte units) before the IV is derived.
    pub iv_offset: u64,
}

impl Geometry {
    /// Checks and builds a geometry. `iv_offset` must be aligned to the sector size
    /// (dm-crypt rejects a misaligned one too).
    pub fn new(
        sector_size: u32,
        iv_large_sectors: bool,
        iv_offset: u64,
    ) -> Result<Self, EngineError> {
        let g = Geometry {
            sector_size,
            iv_large_sectors,
            iv_offset,
        };
        g.check()?;
        if iv_offset & (u64::from(sector_size / 512) - 1) != 0 {
            return Err(EngineError::MisalignedSector(iv_offset));
        }
        Ok(g)
    }

    fn check(&self) -> Result<(), EngineError> {
        match self.sector_size {
            512 | 1024 | 2048 | 4096 => Ok(()),
            n => Err(EngineError::BadSectorSize(n)),
        }
    }

    /// `log2(sector_size / 512)`.
    fn shift(&self) -> u32 {
        (self.sector_size / 512).trailing_zeros()
    }
}

impl CipherSpec {
    /// Parses a dm-crypt cipher specification: `aes-xts-plain64`, `aes-xts-plain`,
    /// `aes-cbc-essiv:sha256`, `aes-cbc-plain64`, `aes-cbc-plain`, `aes-ecb`, or the kernel
    /// crypto API forms `capi:xts(aes)-plain64`, `capi:xts(aes)-plain`,
    /// `capi:cbc(aes)-essiv:sha256`, `capi:cbc(aes)-plain64`, `capi:cbc(aes)-plain`,
    /// `capi:ecb(aes)`. Anything else is [`EngineError::UnsupportedSpec`].
    pub fn parse(s: &str) -> Result<CipherSpec, EngineError> {
        let (mode, iv) = if let Some(rest) = s.strip_prefix("capi:") {
            let (chain, iv) = match rest.split_once(")-") {
                Some((c, iv)) => (c, Some(iv)),
                None => (
                    rest.strip_suffix(')').ok_or(EngineError::UnsupportedSpec)?,
                    None,
                ),
            };
            let mode = match chain {
                "xts(aes" => Mode::Xts,
                "cbc(aes" => Mode::Cbc,
                "ecb(aes" => Mode::Ecb,
                _ => return Err(EngineError::UnsupportedSpec),
            };
            (mode, iv)
        } else {
            let rest = s.strip_prefix("aes-").ok_or(EngineError::UnsupportedSpec)?;
            let (mode, iv) = match rest.split_once('-') {
                Some((m, iv)) => (m, Some(iv)),
                None => (rest, None),
            };
            let mode = match mode {
                "xts" => Mode::Xts,
                "cbc" => Mode::Cbc,
                "ecb" => Mode::Ecb,
                _ => return Err(EngineError::UnsupportedSpec),
            };
            (mode, iv)
        };
        let iv = match (mode, iv) {
            (Mode::Ecb, None | Some("null")) => IvMode::Null,
            (Mode::Xts | Mode::Cbc, Some("plain64")) => IvMode::Plain64,
            (Mode::Xts | Mode::Cbc, Some("plain")) => IvMode::Plain,
            (Mode::Cbc, Some("essiv:sha256")) => IvMode::EssivSha256,
            _ => return Err(EngineError::UnsupportedSpec),
        };
        Ok(CipherSpec { mode, iv })
    }

    /// Whether `key_len` bytes is a valid key for this spec.
    pub fn key_len_ok(&self, key_len: usize) -> bool {
        match self.mode {
            Mode::Xts => matches!(key_len, 32 | 48 | 64),
            Mode::Cbc | Mode::Ecb => matches!(key_len, 16 | 24 | 32),
        }
    }
}

impl fmt::Display for CipherSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mode = match self.mode {
            Mode::Xts => "xts",
            Mode::Cbc => "cbc",
            Mode::Ecb => "ecb",
        };
        match self.iv {
            IvMode::Null => write!(f, "aes-{mode}"),
            IvMode::Plain => write!(f, "aes-{mode}-plain"),
            IvMode::Plain64 => write!(f, "aes-{mode}-plain64"),
            IvMode::EssivSha256 => write!(f, "aes-{mode}-essiv:sha256"),
        }
    }
}

#[cfg(feature = "std")]
impl std::error::Error for EngineError {}

/// An implementation of the AES rounds the engine can run on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Backend {
    /// The `aes` crate: constant-time fixslice software AES where AES-NI is missing
    /// (the crate itself still uses AES-NI when the CPU has it).
    Soft,
    /// AES-NI on 128-bit registers, 8 blocks in flight.
    AesNi,
    /// VAES + VPCLMULQDQ + AVX-512F on 512-bit registers, 16 blocks in flight.
    Vaes512,
    /// VAES + VPCLMULQDQ + AVX2 on 256-bit registers, 16 blocks in flight (CPUs with
    /// VAES but no AVX-512, such as AMD Zen 3).
    Vaes256,
}

cpufeatures::new!(cpu_aesni, "aes", "sse2");
cpufeatures::new!(cpu_vaes512, "aes", "sse2", "avx512f", "vaes", "vpclmulqdq");
// cpufeatures 0.2 ties "vaes" and "vpclmulqdq" to OS zmm state, which a CPU without
// AVX-512 never has: the two CPUID bits are read directly (see `vaes256_available`).
cpufeatures::new!(cpu_avx2_aes, "aes", "sse2", "avx", "avx2");

/// VAES and VPCLMULQDQ (CPUID leaf 7, subleaf 0, ECX bits 9 and 10) with AES-NI, AVX2
/// and OS-enabled ymm state (the `avx2` check of cpufeatures runs `xgetbv`). Cached.
fn vaes256_available() -> bool {
    use core::sync::atomic::{AtomicU8, Ordering};
    static CACHE: AtomicU8 = AtomicU8::new(0);
    match CACHE.load(Ordering::Relaxed) {
        1 => return false,
        2 => return true,
        _ => {}
    }
    let yes = cpu_avx2_aes::get() && {
        let bits = (1 << 9) | (1 << 10);
        core::arch::x86_64::__cpuid_count(7, 0).ecx & bits == bits
    };
    CACHE.store(if yes { 2 } else { 1 }, Ordering::Relaxed);
    yes
}

impl Backend {
    /// Whether this CPU (and its OS-enabled register state) can run the backend.
    /// Detection runs `cpuid`/`xgetbv` once and caches the answer.
    pub fn is_available(self) -> bool {
        match self {
            Backend::Soft => true,
            Backend::AesNi => cpu_aesni::get(),
            Backend::Vaes512 => cpu_vaes512::get(),
            Backend::Vaes256 => vaes256_available(),
        }
    }

    /// The fastest backend this CPU can run.
    pub fn best() -> Backend {
        if Backend::Vaes512.is_available() {
            Backend::Vaes512
        } else if Backend::Vaes256.is_available() {
            Backend::Vaes256
        } else if Backend::AesNi.is_available() {
            Backend::AesNi
        } else {
            Backend::Soft
        }
    }

    /// A short name: `soft`, `aesni`, `vaes256` or `vaes512`.
    pub fn name(self) -> &'static str {
        match self {
            Backend::Soft => "soft",
            Backend::AesNi => "aesni",
            Backend::Vaes512 => "vaes512",
            Backend::Vaes256 => "vaes256",
        }
    }
}

/// The CPU features the engine cares about, as detected on this machine.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CpuFeatures {
    /// AES-NI (and SSE2).
    pub aesni: bool,
    /// VAES, VPCLMULQDQ and AVX-512F with the OS saving zmm state.
    pub vaes512: bool,
    /// VAES, VPCLMULQDQ and AVX2 with the OS saving ymm state.
    pub vaes256: bool,
}

/// Reports the CPU features the engine detected (cached after the first call).
pub fn cpu_features() -> CpuFeatures {
    CpuFeatures {
        aesni: Backend::AesNi.is_available(),
        vaes512: Backend::Vaes512.is_available(),
        vaes256: Backend::Vaes256.is_available(),
    }
}

/// How the IV of each sector in a buffer is derived.
#[derive(Clone, Copy, Debug)]
struct IvGen {
    /// IV sector of the first sector in the buffer.
    first: u64,
    /// IV sector increment per sector.
    step: u64,
    /// Truncate to 32 bits (`plain`).
    plain32: bool,
}

impl IvGen {
    /// The generator for the buffer that starts `n` sectors later.
    fn skip(&self, n: usize) -> IvGen {
        IvGen {
            first: self.first.wrapping_add(self.step.wrapping_mul(n as u64)),
            ..*self
        }
    }

    #[inline(always)]
    fn block(&self, i: usize) -> [u8; 16] {
        let s = self.first.wrapping_add(self.step.wrapping_mul(i as u64));
        let s = if self.plain32 { s & 0xffff_ffff } else { s };
        let mut b = [0u8; 16];
        b[..8].copy_from_slice(&s.to_le_bytes());
        b
    }
}

/// A keyed sector cipher. Key material is zeroized on drop and never shown by `Debug`.
pub struct SectorCipher {
    spec: CipherSpec,
    key_len: usize,
    backend: Backend,
    /// Data key (XTS: first half of the key).
    data: AesKey,
    /// XTS tweak key (second half) or the ESSIV key (AES-256 keyed by SHA-256(key)).
    aux: Option<AesKey>,
}

impl fmt::Debug for SectorCipher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SectorCipher")
            .field("spec", &format_args!("{}", self.spec))
            .field("key_bits", &(self.key_len * 8))
            .field("backend", &self.backend.name())
            .finish_non_exhaustive()
    }
}

impl SectorCipher {
    /// Keys a cipher for `spec`. XTS takes 32, 48 or 64 bytes (two AES keys), CBC and ECB
    /// take 16, 24 or 32. Picks the fastest backend the CPU has.
    pub fn new(spec: CipherSpec, key: &[u8]) -> Result<SectorCipher, EngineError> {
        Self::build(spec, key, Backend::best())
    }

    /// Like [`SectorCipher::new`] with a chosen backend; `Ok(None)` when this CPU cannot
    /// run it. Meant for tests and benchmarks.
    pub fn with_backend(
        spec: CipherSpec,
        key: &[u8],
        backend: Backend,
    ) -> Result<Option<SectorCipher>, EngineError> {
        if !spec.key_len_ok(key.len()) {
            return Err(EngineError::BadKeyLength(key.len()));
        }
        if !backend.is_available() {
            return Ok(None);
        }
        Self::build(spec, key, backend).map(Some)
    }

    fn build(spec: CipherSpec, key: &[u8], backend: Backend) -> Result<SectorCipher, EngineError> {
        if !spec.key_len_ok(key.len()) {
            return Err(EngineError::BadKeyLength(key.len()));
        }
        let hw = backend != Backend::Soft;
        let (data, aux) = match spec.mode {
            Mode::Xts => {
                let half = key.len() / 2;
                (
                    AesKey::new(&key[..half], hw),
                    Some(AesKey::new(&key[half..], hw)),
                )
            }
            Mode::Cbc if spec.iv == IvMode::EssivSha256 => {
                use sha2::Digest;
                let mut salt: [u8; 32] = sha2::Sha256::digest(key).into();
                let essiv = AesKey::new(&salt, hw);
                zeroize::Zeroize::zeroize(&mut salt);
                (AesKey::new(key, hw), Some(essiv))
            }
            _ => (AesKey::new(key, hw), None),
        };
        Ok(SectorCipher {
            spec,
            key_len: key.len(),
            backend,
            data,
            aux,
        })
    }

    /// The cipher specification.
    pub fn spec(&self) -> CipherSpec {
        self.spec
    }

    /// Length of the key in bytes (for XTS both halves).
    pub fn key_len(&self) -> usize {
        self.key_len
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Name of the backend in use (`soft`, `aesni`, `vaes256`, `vaes512`).
    pub fn backend_name(&self) -> &'static str {
        self.backend.name()
    }

    /// Encrypts `buf` (whole sectors) in place; `sector` is in 512-byte units.
    pub fn encrypt(&self, geom: &Geometry, sector: u64, buf: &mut [u8]) -> Result<(), EngineError> {
        self.run(geom, sector, buf, true)
    }

    /// Decrypts `buf` (whole sectors) in place; `sector` is in 512-byte units.
    pub fn decrypt(&self, geom: &Geometry, sector: u64, buf: &mut [u8]) -> Result<(), EngineError> {
        self.run(geom, sector, buf, false)
    }

    fn run(
        &self,
        geom: &Geometry,
        sector: u64,
        buf: &mut [u8],
        enc: bool,
    ) -> Result<(), EngineError> {
        geom.check()?;
        let ss = geom.sector_size as usize;
        if !buf.len().is_multiple_of(ss) {
            return Err(EngineError::BadLength(buf.len()));
        }
        let shift = geom.shift();
        if sector & ((1u64 << shift) - 1) != 0 {
            return Err(EngineError::MisalignedSector(sector));
        }
        if buf.is_empty() {
            return Ok(());
        }
        let s = sector.wrapping_add(geom.iv_offset);
        let iv = if geom.iv_large_sectors {
            IvGen {
                first: s >> shift,
                step: 1,
                plain32: self.spec.iv == IvMode::Plain,
            }
        } else {
            IvGen {
                first: s,
                step: 1 << shift,
                plain32: self.spec.iv == IvMode::Plain,
            }
        };
        let job = Job {
            spec: self.spec,
            data: &self.data,
            aux: self.aux.as_ref(),
            ss,
            iv,
            enc,
        };
        match self.backend {
            Backend::Soft => soft::run(&job, buf),
            Backend::AesNi => {
                // SAFETY: the AesNi backend is only chosen when cpufeatures reported
                // AES-NI and SSE2 (see `with_backend`/`best`), and hardware backends
                // always hold expanded round keys.
                unsafe { ni::run(&job, buf) }
            }
            Backend::Vaes512 => {
                // SAFETY: the Vaes512 backend is only chosen when cpufeatures reported
                // AES-NI, AVX-512F, VAES and VPCLMULQDQ with OS zmm support.
                unsafe { vaes::run(&job, buf) }
            }
            Backend::Vaes256 => {
                // SAFETY: the Vaes256 backend is only chosen when cpufeatures reported
                // AES-NI, SSE2, AVX and AVX2 with OS ymm state and CPUID reported VAES
                // and VPCLMULQDQ (`vaes256_available`).
                unsafe { vaes256::run(&job, buf) }
            }
        }
        Ok(())
    }
}

/// One call's work, shared by the backends.
#[derive(Clone, Copy)]
struct Job<'a> {
    spec: CipherSpec,
    data: &'a AesKey,
    aux: Option<&'a AesKey>,
    /// Sector size in bytes.
    ss: usize,
    iv: IvGen,
    enc: bool,
}

impl Job<'_> {
    /// The hardware round keys of the data key and the aux key (hardware backends only).
    fn hw_keys(&self) -> (&RoundKeys, Option<&RoundKeys>) {
        let data = match self.data {
            AesKey::Hw(k) => k,
            AesKey::Soft(_) => unreachable!("hardware backend with software keys"),
        };
        let aux = self.aux.map(|a| match a {
            AesKey::Hw(k) => k,
            AesKey::Soft(_) => unreachable!("hardware backend with software keys"),
        });
        (data, aux)
    }
}

const _: () = {
    const fn send_sync<T: Send + Sync>() {}
    send_sync::<SectorCipher>();
};

#[cfg(test)]
mod tests;
