//! How a vault is opened: backend, vCPUs, window size, run mode and the [`Tuning`] of
//! the `kvm` backend. Plain data: the library reads no environment variable; programs
//! that want environment overrides (the `vmvault-hv` tool, the benchmark) read them and
//! fill these in.

use std::str::FromStr;

use crate::error::{HvError, Result};

/// Which backend runs the vault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BackendKind {
    /// The vault VM under KVM.
    Kvm,
    /// In-process, keys in `memfd_secret`.
    Soft,
    /// `Kvm` when `/dev/kvm` works, else `Soft`.
    Auto,
}

impl BackendKind {
    /// Lower-case name (`kvm`, `soft`, `auto`).
    pub fn name(self) -> &'static str {
        match self {
            BackendKind::Kvm => "kvm",
            BackendKind::Soft => "soft",
            BackendKind::Auto => "auto",
        }
    }
}

impl FromStr for BackendKind {
    type Err = HvError;
    fn from_str(s: &str) -> Result<Self> {
        match s {
            "kvm" => Ok(BackendKind::Kvm),
            "soft" => Ok(BackendKind::Soft),
            "auto" => Ok(BackendKind::Auto),
            _ => Err(HvError::Config(format!(
                "unknown backend {s:?} (kvm, soft or auto)"
            ))),
        }
    }
}

/// Who runs a vCPU of the `kvm` backend ([`VaultConfig::run`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub enum RunMode {
    /// [`RunMode::Caller`] when the vCPUs would take half the CPUs this process may use
    /// or more (each polling vCPU keeps a CPU busy; on small machines the submitters
    /// need them), [`RunMode::Thread`] otherwise.
    #[default]
    Auto,
    /// One thread per vCPU polls its ring (~1 µs hand-off, full throughput per vCPU) and
    /// sleeps after an adaptive idle spin; a submitter that finds it asleep serves the
    /// ring itself until the thread is back. Needs CPUs to spare for the polling.
    Thread,
    /// Run to completion on the caller: a submitter that finds the vCPU asleep enters
    /// `KVM_RUN` itself and the guest serves the ring until it is drained; nobody polls
    /// between bursts. Submitters that find the vCPU taken sleep until the runner's
    /// episode ends, and the runner runs another episode for them, so one `KVM_RUN`
    /// serves several threads' requests under load. Each episode costs one VM exit
    /// (~25 µs of CPU on PVM, 1–3 µs on VMX/SVM hardware) but there is no cross-CPU
    /// hand-off and no polling thread competing with the submitters: the better choice
    /// on small machines.
    Caller,
}

impl RunMode {
    /// Lower-case name (`auto`, `thread`, `caller`), as [`RunMode::from_str`] takes it.
    pub fn name(self) -> &'static str {
        match self {
            RunMode::Auto => "auto",
            RunMode::Thread => "thread",
            RunMode::Caller => "caller",
        }
    }
}

/// A [`RunMode`] or [`CpuPinning`] that could not be parsed from text.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ParseTuningError {
    /// The run mode is none of `auto`, `thread` or `caller`.
    #[error("unknown run mode {0:?} (auto, thread or caller)")]
    RunMode(String),
    /// An entry of a CPU list is not a CPU number.
    #[error("invalid CPU {cpu:?} in CPU list {list:?} (CPU numbers separated by commas, or none)")]
    Cpu {
        /// The entry that is not a number.
        cpu: String,
        /// The whole list it came in.
        list: String,
    },
}

impl FromStr for RunMode {
    type Err = ParseTuningError;
    /// `auto`, `thread` or `caller`.
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        match s {
            "auto" => Ok(RunMode::Auto),
            "thread" => Ok(RunMode::Thread),
            "caller" => Ok(RunMode::Caller),
            _ => Err(ParseTuningError::RunMode(s.to_owned())),
        }
    }
}

/// Where the vCPU threads of a `kvm` vault run ([`Tuning::vcpu_cpus`]).
#[derive(Clone, Debug, Default, PartialEq, Eq, Hash)]
pub enum CpuPinning {
    /// Thread mode: when the CPUs this process may use outnumber the vCPUs, vCPU `i`
    /// takes the `i`-th of them counted from the top, so the scheduler keeps the
    /// submitting threads on the others (a vCPU woken by a submitter would otherwise be
    /// placed on the submitter's CPU, and its idle polling would keep the submitter from
    /// seeing its completion). Not pinned otherwise, nor in caller mode.
    #[default]
    Default,
    /// No pinning at all (text: `none`).
    None,
    /// Thread mode: vCPU `i` on CPU `cpus[i % cpus.len()]` (text: `3,2`). An empty list
    /// pins nothing. Caller mode pins nothing.
    Cpus(Vec<usize>),
}

impl FromStr for CpuPinning {
    type Err = ParseTuningError;
    /// `none`, or CPU numbers separated by commas (`3,2`; blanks around them are
    /// ignored, and so are empty entries: `""` is an empty list).
    fn from_str(s: &str) -> std::result::Result<Self, Self::Err> {
        if s.trim() == "none" {
            return Ok(CpuPinning::None);
        }
        s.split(',')
            .map(str::trim)
            .filter(|c| !c.is_empty())
            .map(|c| {
                c.parse().map_err(|_| ParseTuningError::Cpu {
                    cpu: c.to_owned(),
                    list: s.to_owned(),
                })
            })
            .collect::<std::result::Result<Vec<usize>, _>>()
            .map(CpuPinning::Cpus)
    }
}

/// Fine tuning of the `kvm` backend's vCPUs ([`VaultConfig::tuning`]); the soft backend
/// ignores it. [`Tuning::default`] is what a deployment should use; the fields exist for
/// benchmarks and for machines that need something else.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Tuning {
    /// Base idle spin of a vCPU thread before it sleeps, in ring scans (default
    /// [`Tuning::DEFAULT_IDLE_SPINS`], 4000: each scan pauses about 25 ns here, so about
    /// 100 µs). It adapts: doubled (up to 16×) each time the thread is woken less than
    /// 2 ms after it slept, back to the base after 50 ms of quiet. A sleeping vCPU costs
    /// a VM exit (~25–60 µs on a PVM host). Clamped to 1..=`abi::MAX_IDLE_SPINS`.
    pub idle_spins: u32,
    /// Idle spin of the guest when a submitting thread runs the vCPU itself (default
    /// [`Tuning::DEFAULT_CALLER_SPINS`], 1: exit as soon as the ring is empty; the runner
    /// then runs another episode if threads submitted meanwhile, and wakes the threads
    /// whose requests it served). Spinning longer in the guest only took CPU from the
    /// rest of the I/O stack (fio random 4K, 2 CPUs: 1 spin 101 MB/s write vs 400 spins
    /// 90 MB/s). Clamped like `idle_spins`.
    pub caller_spins: u32,
    /// Thread mode: a submitter that finds the vCPU asleep also serves the ring itself
    /// while the vCPU thread is being woken (a cross-CPU wake-up costs ~100 µs on a PVM
    /// host). Default `true`.
    pub assist: bool,
    /// Where the vCPU threads run (default [`CpuPinning::Default`]).
    pub vcpu_cpus: CpuPinning,
    /// Nice value of the vCPU threads (`setpriority`; below 0 needs `CAP_SYS_NICE`, and a
    /// failure is ignored). Default `None`: left as inherited, since a vCPU woken by a
    /// submitting thread tends to land on that thread's CPU, and a heavier vCPU would
    /// then starve the thread waiting for it.
    pub vcpu_nice: Option<i32>,
}

impl Tuning {
    /// Default of [`Tuning::idle_spins`].
    pub const DEFAULT_IDLE_SPINS: u32 = 4_000;
    /// Default of [`Tuning::caller_spins`].
    pub const DEFAULT_CALLER_SPINS: u32 = 1;
}

impl Default for Tuning {
    fn default() -> Self {
        Tuning {
            idle_spins: Self::DEFAULT_IDLE_SPINS,
            caller_spins: Self::DEFAULT_CALLER_SPINS,
            assist: true,
            vcpu_cpus: CpuPinning::Default,
            vcpu_nice: None,
        }
    }
}

/// How to open a vault.
#[derive(Clone, Debug)]
pub struct VaultConfig {
    /// Backend to use.
    pub backend: BackendKind,
    /// vCPUs serving requests (1..=`abi::MAX_VCPUS`).
    pub vcpus: usize,
    /// Size of the data window in bytes (rounded up to 2 MiB).
    pub window_size: u64,
    /// Who runs the vCPUs (`kvm` backend).
    pub run: RunMode,
    /// Idle spins, pinning and priority of the vCPUs (`kvm` backend).
    pub tuning: Tuning,
}

impl Default for VaultConfig {
    fn default() -> Self {
        VaultConfig {
            backend: BackendKind::Auto,
            vcpus: 1,
            window_size: 16 << 20,
            run: RunMode::Auto,
            tuning: Tuning::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_modes_parse() {
        assert_eq!("auto".parse(), Ok(RunMode::Auto));
        assert_eq!("thread".parse(), Ok(RunMode::Thread));
        assert_eq!("caller".parse(), Ok(RunMode::Caller));
        assert_eq!(
            "Thread".parse::<RunMode>(),
            Err(ParseTuningError::RunMode("Thread".into()))
        );
        for m in [RunMode::Auto, RunMode::Thread, RunMode::Caller] {
            assert_eq!(m.name().parse(), Ok(m));
        }
    }

    #[test]
    fn cpu_pinnings_parse() {
        assert_eq!("none".parse(), Ok(CpuPinning::None));
        assert_eq!("3,2".parse(), Ok(CpuPinning::Cpus(vec![3, 2])));
        assert_eq!(" 1 , 0,".parse(), Ok(CpuPinning::Cpus(vec![1, 0])));
        assert_eq!("".parse(), Ok(CpuPinning::Cpus(vec![])));
        assert!(matches!(
            "3,x".parse::<CpuPinning>(),
            Err(ParseTuningError::Cpu { cpu, .. }) if cpu == "x"
        ));
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let t = Tuning::default();
        assert_eq!((t.idle_spins, t.caller_spins, t.assist), (4000, 1, true));
        assert_eq!((t.vcpu_cpus, t.vcpu_nice), (CpuPinning::Default, None));
        assert_eq!(VaultConfig::default().tuning, Tuning::default());
    }
}
