//! vmvault-hv: runs the vault that holds the volume keys.
//!
//! A [`Vault`] is opened on a backend:
//! - `kvm`: the `no_std` vault guest (built from `vault-vm`, embedded in this crate) runs
//!   in its own VM at CPL3, one thread per vCPU; each vCPU polls a request ring in shared
//!   memory and sleeps (an MMIO exit) when idle. Keys live only in guest memory, a memfd
//!   named `vmvault-guest`.
//! - `soft`: the same request handler and engine in this process, keys in
//!   `memfd_secret` pages. Weaker; [`Vault::protection`] says so.
//!
//! Data moves through the *data window*, shared memory both sides see; requests carry
//! (offset, length) ranges inside it. The vault validates every request on a private
//! copy and answers bad ones with an error status.
//!
//! Volume keys can be born and unlocked in the vault: [`Vault::unlock_keyslot`] hands
//! it a LUKS keyslot's parameters ([`KeyslotParams`]), the passphrase and the encrypted
//! area, and the KDF, AF merge and digest check run there; [`Vault::generate_key`],
//! [`Vault::seal_keyslot`] and [`Vault::key_digest`] serve `luksFormat`-like work. Argon2
//! gets a temporary scratch memory region for the duration of one request (at most
//! [`scratch_limit`] bytes), wiped and unmapped afterwards.
//!
//! Configuration is plain data: [`VaultConfig`] says which backend, how many vCPUs, how
//! large a window and who runs the vCPUs ([`RunMode`]); its [`Tuning`] fine-tunes the
//! `kvm` backend's vCPUs (idle spins of a polling vCPU thread and of a submitter running
//! the vCPU, whether submitters assist a waking vCPU thread, CPU pinning
//! ([`CpuPinning`]) and nice value of the vCPU threads). The library reads no
//! environment variable; the `vmvault-hv` tool takes the `VMVAULT_RUN`,
//! `VMVAULT_IDLE_SPINS`, `VMVAULT_CALLER_SPINS`, `VMVAULT_ASSIST`, `VMVAULT_VCPU_CPUS`
//! and `VMVAULT_VCPU_NICE` overrides from its environment (or options) and fills them in.
//!
//! ```no_run
//! use vmvault_hv::{Vault, VaultConfig, BackendKind};
//! use vault_vm::engine::{CipherSpec, Geometry};
//! let vault = Vault::open(&VaultConfig { backend: BackendKind::Auto, vcpus: 1, window_size: 16 << 20, ..Default::default() })?;
//! let slot = vault.import_key(CipherSpec::parse("aes-xts-plain64").unwrap(), &[7u8; 64])?;
//! let mut buf = vault.window().alloc(4096)?;
//! vault.encrypt(slot, &Geometry::new(4096, false, 0).unwrap(), 0, &mut buf)?;
//! vault.drop_key(slot)?;
//! # Ok::<(), vmvault_hv::HvError>(())
//! ```

#![warn(missing_docs)]

mod backend;
mod config;
mod error;
mod generic;
mod keys;
mod keyslot;
pub mod kvm;
mod layout;
mod memory;
mod pending;
mod requests;
mod ring;
mod scratch;
mod soft;
#[cfg(feature = "test-api")]
pub mod test_api;
mod window;

use std::cell::Cell;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;

use vault_vm::abi::{self, op, status, Request, Response};

use backend::{Backend, Ticket};
pub use config::{BackendKind, CpuPinning, ParseTuningError, RunMode, Tuning, VaultConfig};
pub use error::{HvError, Result, VaultFailure};
pub use generic::{ContextId, Direction, GenericKey, KeyKind, Mechanism, WrapMechanism};
pub use keys::SlotId;
use keys::Slots;
pub use keyslot::{EntropySource, KeyslotParams};
pub use pending::Pending;
pub use scratch::scratch_limit;
pub use window::{Window, WindowBuf, WINDOW_GRANULE};

/// The flat vault guest image (built by `build.rs`).
pub static GUEST_IMAGE: &[u8] = include_bytes!(env!("VAULT_GUEST_IMAGE"));

/// Counters summed over all vCPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VaultStats {
    /// Requests served (including the STATS requests that read these).
    pub requests: u64,
    /// Bytes encrypted or decrypted.
    pub bytes: u64,
    /// Requests refused.
    pub errors: u64,
    /// Key slots in use.
    pub slots_used: u64,
    /// Times a vCPU went to sleep.
    pub sleeps: u64,
}

/// What the self test found.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct SelftestReport {
    /// The AES implementation the engine uses inside the vault (`soft`, `aesni`,
    /// `vaes256`, `vaes512`).
    pub engine_backend: &'static str,
}

static NEXT_LANE: AtomicUsize = AtomicUsize::new(0);
thread_local! {
    static LANE: Cell<usize> = Cell::new(NEXT_LANE.fetch_add(1, Ordering::Relaxed));
}

/// An open vault. `Send + Sync`: share it between threads (each thread sticks to one
/// vCPU ring, assigned round robin).
pub struct Vault {
    backend: Box<dyn Backend>,
    /// Which key slots hold a key, of which import.
    slots: Slots,
    next_id: AtomicU64,
    /// Argon2 lane-segments computed by KDF_JOIN helpers ([`Vault::kdf_joined_segments`]).
    kdf_joined: AtomicU64,
}

impl std::fmt::Debug for Vault {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Vault")
            .field("backend", &self.backend())
            .field("vcpus", &self.vcpus())
            .finish()
    }
}

impl Vault {
    /// Opens a vault.
    pub fn open(cfg: &VaultConfig) -> Result<Vault> {
        if cfg.vcpus == 0 || cfg.vcpus > abi::MAX_VCPUS {
            return Err(HvError::Config(format!(
                "vcpus must be 1..={}, not {}",
                abi::MAX_VCPUS,
                cfg.vcpus
            )));
        }
        let window = cfg.window_size.max(1).div_ceil(abi::WINDOW_ALIGN) * abi::WINDOW_ALIGN;
        if window > abi::WINDOW_MAX {
            return Err(HvError::Config(format!(
                "window size {} exceeds {} bytes",
                cfg.window_size,
                abi::WINDOW_MAX
            )));
        }
        let open_kvm =
            || kvm::KvmBackend::open(GUEST_IMAGE, cfg.vcpus, window, cfg.run, &cfg.tuning);
        let backend: Box<dyn Backend> = match cfg.backend {
            BackendKind::Kvm => Box::new(open_kvm()?),
            BackendKind::Soft => Box::new(soft::SoftBackend::open(cfg.vcpus, window)?),
            BackendKind::Auto if kvm::KvmBackend::available() => Box::new(open_kvm()?),
            BackendKind::Auto => Box::new(soft::SoftBackend::open(cfg.vcpus, window)?),
        };
        Ok(Vault {
            backend,
            slots: Slots::new(),
            next_id: AtomicU64::new(1),
            kdf_joined: AtomicU64::new(0),
        })
    }

    /// The backend in use (never `Auto`).
    pub fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    /// What this backend protects against, in words (print it; never claim more).
    pub fn protection(&self) -> &'static str {
        self.backend.protection()
    }

    /// Number of vCPUs serving requests.
    pub fn vcpus(&self) -> usize {
        self.backend.vcpus()
    }

    /// CPUs the vCPU threads are pinned to (empty when they are not). Threads that
    /// submit many requests do best on the other CPUs.
    pub fn vcpu_cpus(&self) -> Vec<usize> {
        self.backend.vcpu_cpus()
    }

    /// Who runs the vCPUs (never `Auto`; `Caller` for the soft backend).
    pub fn run_mode(&self) -> RunMode {
        self.backend.run_mode()
    }

    /// Size in bytes of the embedded guest image.
    pub fn guest_image_size() -> usize {
        GUEST_IMAGE.len()
    }

    /// The data window; allocate request buffers from it.
    pub fn window(&self) -> &Arc<Window> {
        self.backend.window()
    }

    fn lane() -> usize {
        LANE.with(|l| l.get())
    }

    fn call(&self, req: &mut Request) -> Result<Response> {
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.backend.call(Self::lane(), req)
    }

    /// Like [`Vault::call`] without waiting: the ticket goes to `Backend::complete`.
    fn submit(&self, req: &mut Request) -> Result<Ticket> {
        req.id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.backend.submit(Self::lane(), req)
    }

    fn check(resp: Response) -> Result<Response> {
        match resp.status {
            status::OK => Ok(resp),
            status::SELFTEST_FAILED => Err(HvError::SelftestFailed),
            s => Err(HvError::Refused {
                status: s,
                detail: resp.detail,
            }),
        }
    }

    /// Runs the known-answer self test on every vCPU.
    pub fn selftest(&self) -> Result<SelftestReport> {
        let mut backend = 0;
        for lane in 0..self.vcpus() {
            let mut req = Request {
                op: op::SELFTEST,
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                ..Request::ZERO
            };
            req.op = op::SELFTEST;
            let resp = Self::check(self.backend.call(lane, &req)?)?;
            backend = resp.aux[0];
        }
        let engine_backend = match backend {
            vault_vm::service::selftest_aux::VAES512 => "vaes512",
            vault_vm::service::selftest_aux::VAES256 => "vaes256",
            vault_vm::service::selftest_aux::AESNI => "aesni",
            _ => "soft",
        };
        Ok(SelftestReport { engine_backend })
    }

    /// Counters summed over all vCPUs.
    pub fn stats(&self) -> Result<VaultStats> {
        let mut s = VaultStats::default();
        for lane in 0..self.vcpus() {
            let req = Request {
                op: op::STATS,
                id: self.next_id.fetch_add(1, Ordering::Relaxed),
                ..Request::ZERO
            };
            let r = Self::check(self.backend.call(lane, &req)?)?;
            s.requests += r.aux[abi::stats::REQUESTS];
            s.bytes += r.bytes;
            s.errors += r.aux[abi::stats::ERRORS];
            s.sleeps += r.aux[abi::stats::SLEEPS];
            s.slots_used = r.aux[abi::stats::SLOTS_USED];
        }
        Ok(s)
    }

    /// Wipes every key slot, stops the vault and zeroes its memory. Idempotent; `Drop`
    /// does it too.
    pub fn shutdown(&self) -> Result<()> {
        let mut first_err = None;
        for (i, generation) in self.slots.used() {
            let mut req = Request {
                op: op::DROP_KEY,
                slot: i as u32,
                generation,
                ..Request::ZERO
            };
            match self.call(&mut req) {
                Ok(_) | Err(HvError::ShutDown) => self.slots.free(i, generation),
                Err(e) => {
                    first_err.get_or_insert(e);
                }
            }
        }
        let r = self.backend.shutdown();
        match first_err {
            Some(e) if r.is_ok() => Err(e),
            _ => r,
        }
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        let _ = self.shutdown();
    }
}

// The front end must be shareable between the daemon's threads.
const _: () = {
    const fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Vault>();
};
