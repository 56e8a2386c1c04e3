//! The vault as a [`Crypt`]: keys in vault slots, I/O buffers in the vault's data window
//! (backing I/O, encryption and FUSE replies share one buffer; no copy to or from the
//! vault).
//!
//! One vault per backend kind is shared by every volume of the daemon ([`VaultPool`]);
//! it shuts down (wiping every slot) when its last volume closes.
//!
//! # Sharing the data window
//!
//! The window has a fixed size, [`WINDOW_SIZE`]: the vault learns its length and maps it
//! when it boots, so it cannot grow under a running vault (growing it would need a new
//! memslot, new page tables and a new window length in the guest). It is cut into
//! buffers of [`IO_BUF_LEN`] bytes ([`BufShares`]), at least one per key slot, so that
//! every volume the vault can hold always has one buffer it can count on.
//!
//! Each volume of the vault is a member of its [`BufShares`]. The rules:
//! - *Reserve*: one buffer per member that holds none is kept back. A member holding no
//!   buffer may always take one; the others take only beyond the reserve. So a volume
//!   never waits for buffers that other volumes hold, except right after it opens while
//!   the others give back what they had (and even a volume whose backing file lives on
//!   another volume of the same vault cannot starve that one of its buffer).
//! - *Share*: the buffer count divided by the number of volumes. Below its share, a
//!   volume takes whatever is available beyond the reserve. At or above it, it may still
//!   borrow while no volume below its share is waiting: an active volume beside idle
//!   ones is not held back.
//! - *Backpressure*: when no buffer may be taken, the request *waits* until one comes
//!   back. A full window slows requests down; it never fails them.
//! - *Fairness*: a buffer coming back goes to the waiting volume that holds the fewest.
//!
//! The single-volume fast path is one short critical section per take and per give
//! (the same as the per-volume pool it replaces); the members are scanned only when a
//! volume is at or above its share while others wait.
//!
//! No deadlock: a request holds at most one buffer and holds none while it waits for
//! one (see [`crate::io`]); a holder only waits for the vault and the backing file, so
//! every buffer in use comes back, and whenever a buffer is available to a waiter, one
//! waiter that may take it is woken (on each give, after each take, and before a thread
//! goes to sleep, so that a wake-up is never lost).

use std::any::Any;
use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Weak};

use vault_vm::abi::{Segment, MAX_SLOTS};
use vault_vm::engine::{CipherSpec, Geometry};
use vmvault_hv::{
    BackendKind, HvError, SlotId, Vault, VaultConfig, Window, WindowBuf, WINDOW_GRANULE,
};

use crate::crypt::{Crypt, CryptError, IoBuf};
use crate::io::IO_BUF_LEN;
use vmvault_proto::keyring::KeyError;

/// Window bytes one pooled buffer takes.
const BUF_SPAN: u64 = (IO_BUF_LEN as u64).div_ceil(WINDOW_GRANULE) * WINDOW_GRANULE;

/// Data window size of a daemon's vault: 64 MiB, or one buffer per key slot if that is
/// more, in whole 2 MiB pages (66 MiB: 64 buffers of 1 MiB + 8 KiB).
pub const WINDOW_SIZE: u64 = {
    let want = if (MAX_SLOTS as u64) * BUF_SPAN > 64 << 20 {
        (MAX_SLOTS as u64) * BUF_SPAN
    } else {
        64 << 20
    };
    want.div_ceil(vault_vm::abi::WINDOW_ALIGN) * vault_vm::abi::WINDOW_ALIGN
};

// Every volume a vault can hold has a buffer; the vault accepts the size.
const _: () = assert!((WINDOW_SIZE / BUF_SPAN) as usize >= MAX_SLOTS);
const _: () = assert!(WINDOW_SIZE.is_multiple_of(vault_vm::abi::WINDOW_ALIGN));
const _: () = assert!(WINDOW_SIZE <= vault_vm::abi::WINDOW_MAX);

/// Checks a data window size for a daemon's vaults: a multiple of the 2 MiB window
/// alignment, no smaller than one I/O buffer per key slot, no larger than the vault
/// maps. Returns the size, or why it is refused.
pub fn check_window_size(n: u64) -> Result<u64, String> {
    let min = ((MAX_SLOTS as u64) * BUF_SPAN).div_ceil(vault_vm::abi::WINDOW_ALIGN)
        * vault_vm::abi::WINDOW_ALIGN;
    if !n.is_multiple_of(vault_vm::abi::WINDOW_ALIGN) {
        Err(format!(
            "window size {n} is not a multiple of {} MiB",
            vault_vm::abi::WINDOW_ALIGN >> 20
        ))
    } else if n < min {
        Err(format!(
            "window size {n} is below the minimum of {min} bytes ({} MiB)",
            min >> 20
        ))
    } else if n > vault_vm::abi::WINDOW_MAX {
        Err(format!(
            "window size {n} is above the maximum of {} bytes",
            vault_vm::abi::WINDOW_MAX
        ))
    } else {
        Ok(n)
    }
}

struct VaultBuf(WindowBuf);

impl IoBuf for VaultBuf {
    fn bytes(&self) -> &[u8] {
        &self.0
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.0
    }
    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

fn hv(e: HvError) -> CryptError {
    CryptError::Vault(e)
}

/// What one member (volume) of a [`BufShares`] holds and waits for.
struct Member {
    /// Buffers it holds.
    in_use: usize,
    /// Its threads waiting for a buffer.
    waiting: usize,
    /// Where they wait (with the [`BufShares`] mutex).
    cv: Arc<Condvar>,
}

struct SharesState {
    /// Buffers carved from the window and not lent.
    free: Vec<Box<dyn IoBuf>>,
    /// Buffers carved from the window so far.
    carved: usize,
    /// Most buffers the window holds.
    limit: usize,
    /// Members by id (`None`: id free).
    members: Vec<Option<Member>>,
    /// Live members.
    count: usize,
    /// Live members holding no buffer (one buffer is reserved for each).
    empty: usize,
    /// `limit / count` (at least 1).
    share: usize,
    /// Threads waiting, all members together.
    waiting: usize,
}

impl SharesState {
    fn member(&mut self, id: usize) -> &mut Member {
        self.members[id]
            .as_mut()
            .expect("a member id stays valid until the member leaves")
    }

    /// Buffers free or still to carve.
    fn available(&self) -> usize {
        self.free.len() + (self.limit - self.carved)
    }

    /// Whether a member other than `id` waits while below its share.
    fn hungry_other(&self, id: usize) -> bool {
        self.members.iter().enumerate().any(|(j, m)| {
            j != id
                && m.as_ref()
                    .is_some_and(|m| m.waiting > 0 && m.in_use < self.share)
        })
    }

    /// Whether member `id` may take a buffer now (the rules of the module
    /// documentation).
    fn may_take(&self, id: usize) -> bool {
        let Some(m) = self.members.get(id).and_then(Option::as_ref) else {
            return false;
        };
        let avail = self.available();
        if m.in_use == 0 {
            return avail > 0;
        }
        avail > self.empty && (m.in_use < self.share || !self.hungry_other(id))
    }

    /// The condvar of the waiting member that holds the fewest buffers, if it may take
    /// one now. (`may_take` only gets stricter as `in_use` grows: when that member may
    /// not, no waiting member may.)
    fn next_waiter(&self) -> Option<Arc<Condvar>> {
        if self.waiting == 0 || self.available() == 0 {
            return None;
        }
        let (id, m) = self
            .members
            .iter()
            .enumerate()
            .filter_map(|(i, m)| m.as_ref().map(|m| (i, m)))
            .filter(|(_, m)| m.waiting > 0)
            .min_by_key(|(_, m)| m.in_use)?;
        self.may_take(id).then(|| Arc::clone(&m.cv))
    }

    fn reshare(&mut self) {
        self.share = (self.limit / self.count.max(1)).max(1);
    }
}

/// The pooled I/O buffers of one vault's data window, shared fairly by its volumes
/// (see the module documentation).
pub struct BufShares {
    window: Arc<Window>,
    state: Mutex<SharesState>,
}

impl std::fmt::Debug for BufShares {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BufShares")
            .field("window_len", &self.window.len())
            .finish_non_exhaustive()
    }
}

impl BufShares {
    /// Buffers of [`IO_BUF_LEN`] bytes in `window`, none carved yet.
    pub fn new(window: Arc<Window>) -> Arc<Self> {
        let limit = (window.len() / BUF_SPAN) as usize;
        Arc::new(BufShares {
            window,
            state: Mutex::new(SharesState {
                free: Vec::new(),
                carved: 0,
                limit,
                members: Vec::new(),
                count: 0,
                empty: 0,
                share: limit.max(1),
                waiting: 0,
            }),
        })
    }

    fn lock(&self) -> MutexGuard<'_, SharesState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Buffers the window holds.
    pub fn limit(&self) -> usize {
        self.lock().limit
    }

    /// Adds a member (a volume); returns its id.
    pub fn join(&self) -> usize {
        let mut st = self.lock();
        let m = Member {
            in_use: 0,
            waiting: 0,
            cv: Arc::new(Condvar::new()),
        };
        let id = match st.members.iter().position(Option::is_none) {
            Some(i) => {
                st.members[i] = Some(m);
                i
            }
            None => {
                st.members.push(Some(m));
                st.members.len() - 1
            }
        };
        st.count += 1;
        st.empty += 1;
        st.reshare();
        id
    }

    /// Removes member `id`, which holds no buffer any more; the others' shares grow.
    pub fn leave(&self, id: usize) {
        let mut st = self.lock();
        let Some(m) = st.members.get_mut(id).and_then(Option::take) else {
            return;
        };
        debug_assert_eq!(m.in_use, 0, "a member left holding buffers");
        st.count -= 1;
        if m.in_use == 0 {
            st.empty -= 1;
        }
        st.reshare();
        // A smaller reserve and larger shares: let every waiter look again.
        let cvs: Vec<_> = st
            .members
            .iter()
            .flatten()
            .filter(|m| m.waiting > 0)
            .map(|m| Arc::clone(&m.cv))
            .collect();
        drop(st);
        for cv in cvs {
            cv.notify_all();
        }
    }

    /// Lends a buffer to member `id`, waiting while it may take none.
    pub fn take(&self, id: usize) -> Result<Box<dyn IoBuf>, CryptError> {
        let mut st = self.lock();
        loop {
            if st.may_take(id) {
                let buf = match st.free.pop() {
                    Some(b) => b,
                    None => match self.window.alloc(IO_BUF_LEN) {
                        Ok(b) => {
                            st.carved += 1;
                            Box::new(VaultBuf(b))
                        }
                        Err(HvError::WindowFull(..)) if st.carved > 0 => {
                            // Something else allocated in the window: what is carved
                            // is all there is.
                            st.limit = st.carved;
                            st.reshare();
                            continue;
                        }
                        Err(e) => return Err(hv(e)),
                    },
                };
                let m = st.member(id);
                m.in_use += 1;
                if m.in_use == 1 {
                    st.empty -= 1;
                }
                let next = st.next_waiter();
                drop(st);
                if let Some(cv) = next {
                    cv.notify_one();
                }
                return Ok(buf);
            }
            // Before sleeping, pass an available buffer on to a waiter that may take
            // it (never this member: it may not).
            if let Some(cv) = st.next_waiter() {
                cv.notify_one();
            }
            let m = st.member(id);
            m.waiting += 1;
            let cv = Arc::clone(&m.cv);
            st.waiting += 1;
            st = cv.wait(st).unwrap_or_else(|e| e.into_inner());
            st.waiting -= 1;
            st.member(id).waiting -= 1;
        }
    }

    /// Takes back a buffer lent to member `id`.
    pub fn give(&self, id: usize, mut buf: Box<dyn IoBuf>) {
        let ours = buf
            .as_any_mut()
            .downcast_mut::<VaultBuf>()
            .is_some_and(|b| Arc::ptr_eq(b.0.window(), &self.window));
        debug_assert!(ours, "a buffer from another window was given back");
        let mut st = self.lock();
        if ours {
            st.free.push(buf);
        }
        let mut now_empty = false;
        if let Some(m) = st.members.get_mut(id).and_then(Option::as_mut) {
            if m.in_use > 0 {
                m.in_use -= 1;
                now_empty = m.in_use == 0;
            }
        }
        if now_empty {
            st.empty += 1;
        }
        let next = st.next_waiter();
        drop(st);
        if let Some(cv) = next {
            cv.notify_one();
        }
    }

    /// Buffers member `id` holds (tests).
    #[cfg(test)]
    fn in_use(&self, id: usize) -> usize {
        self.lock().members[id].as_ref().map_or(0, |m| m.in_use)
    }
}

/// A volume's key slot in a shared vault, and its share of the vault's buffers.
pub struct VaultCrypt {
    vault: Arc<Vault>,
    slot: SlotId,
    geom: Geometry,
    bufs: Arc<BufShares>,
    member: usize,
}

/// Shows the slot and geometry, never the vault's memory.
impl std::fmt::Debug for VaultCrypt {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultCrypt")
            .field("slot", &self.slot.index())
            .field("geom", &self.geom)
            .field("member", &self.member)
            .finish_non_exhaustive()
    }
}

impl VaultCrypt {
    /// The slot index (for the table's `:<bytes>:vault:<slot>`).
    pub fn slot(&self) -> u32 {
        self.slot.index()
    }

    fn run(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
        enc: bool,
    ) -> Result<(), CryptError> {
        let vb = buf
            .as_any_mut()
            .downcast_mut::<VaultBuf>()
            .ok_or(CryptError::ForeignBuffer)?;
        if range.start > range.end || range.end > vb.0.len() {
            return Err(CryptError::Range(range));
        }
        if !Arc::ptr_eq(vb.0.window(), self.vault.window()) {
            return Err(CryptError::ForeignBuffer);
        }
        let seg = [Segment {
            offset: vb.0.offset() + range.start as u64,
            len: range.len() as u64,
        }];
        // SAFETY: `buf` is borrowed mutably for the whole call, so no other borrow of
        // this window range is live while the vault writes it; the range lies inside
        // the buffer (checked above), which lies inside this vault's window.
        let r = unsafe {
            if enc {
                self.vault
                    .encrypt_segments(self.slot, &self.geom, sector, &seg)
            } else {
                self.vault
                    .decrypt_segments(self.slot, &self.geom, sector, &seg)
            }
        };
        r.map(|_| ()).map_err(hv)
    }
}

impl Drop for VaultCrypt {
    fn drop(&mut self) {
        self.bufs.leave(self.member);
        let _ = self.vault.drop_key(self.slot);
    }
}

impl Crypt for VaultCrypt {
    /// A buffer of the vault's data window; waits while this volume may take none
    /// (see the module documentation).
    fn take_buf(&self, len: usize) -> Result<Box<dyn IoBuf>, CryptError> {
        if len > IO_BUF_LEN {
            return Err(CryptError::Alloc(len));
        }
        self.bufs.take(self.member)
    }

    fn give_buf(&self, buf: Box<dyn IoBuf>) {
        self.bufs.give(self.member, buf);
    }

    fn encrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError> {
        self.run(buf, range, sector, true)
    }

    fn decrypt(
        &self,
        buf: &mut dyn IoBuf,
        range: Range<usize>,
        sector: u64,
    ) -> Result<(), CryptError> {
        self.run(buf, range, sector, false)
    }

    fn geometry(&self) -> Geometry {
        self.geom
    }

    /// A whole pooled buffer in one vault request: one ring round trip (and, when the
    /// vCPU runs on the calling thread, one VM exit) per FUSE request.
    fn max_request(&self) -> usize {
        crate::io::MAX_IO
    }

    fn backend(&self) -> vmvault_proto::protocol::BackendChoice {
        match self.vault.backend() {
            vmvault_hv::BackendKind::Soft => vmvault_proto::protocol::BackendChoice::Soft,
            // Auto never comes back from an open vault: it resolved to one of the two.
            _ => vmvault_proto::protocol::BackendChoice::Kvm,
        }
    }

    fn protection(&self) -> String {
        self.vault.protection().to_string()
    }
}

/// Errors opening a vault or importing a key.
#[derive(Debug, thiserror::Error)]
pub enum VaultError {
    /// The keyring key could not be read.
    #[error(transparent)]
    Key(#[from] KeyError),
    /// The vault failed or refused.
    #[error("vault: {0}")]
    Hv(HvError),
    /// The passphrase opens none of the keyslots.
    #[error("No key available with this passphrase.")]
    NoKey,
}

/// A running vault and the buffer shares of its window.
struct Entry {
    vault: Weak<Vault>,
    bufs: Weak<BufShares>,
}

/// The daemon's vaults, one per backend kind, alive while a volume uses them.
pub struct VaultPool {
    vcpus: usize,
    window_size: u64,
    run: vmvault_hv::RunMode,
    tuning: vmvault_hv::Tuning,
    vaults: Mutex<HashMap<&'static str, Entry>>,
}

fn kvm_usable() -> bool {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok()
}

impl std::fmt::Debug for VaultPool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VaultPool")
            .field("vcpus", &self.vcpus)
            .field("window_size", &self.window_size)
            .field("run", &self.run)
            .field("tuning", &self.tuning)
            .finish_non_exhaustive()
    }
}

impl VaultPool {
    /// A pool whose vaults run `vcpus` vCPUs.
    pub fn new(vcpus: usize) -> Self {
        Self::with_window(vcpus, WINDOW_SIZE)
    }

    /// A pool whose vaults run `vcpus` vCPUs with data windows of `window_size` bytes
    /// (checked with [`check_window_size`]; a size it refuses falls back to
    /// [`WINDOW_SIZE`]).
    pub fn with_window(vcpus: usize, window_size: u64) -> Self {
        VaultPool {
            vcpus: vcpus.max(1),
            window_size: check_window_size(window_size).unwrap_or(WINDOW_SIZE),
            run: vmvault_hv::RunMode::Auto,
            tuning: vmvault_hv::Tuning::default(),
            vaults: Mutex::new(HashMap::new()),
        }
    }

    /// The same pool, its vaults run with `run` and `tuning`.
    pub fn with_tuning(mut self, run: vmvault_hv::RunMode, tuning: vmvault_hv::Tuning) -> Self {
        self.run = run;
        self.tuning = tuning;
        self
    }

    /// The vault for `kind` (`Auto` = kvm when `/dev/kvm` opens, else soft), started if
    /// none is running.
    pub fn get(&self, kind: BackendKind) -> Result<Arc<Vault>, VaultError> {
        self.get_shared(kind).map(|(v, _)| v)
    }

    /// The vault for `kind` and the buffer shares of its window (made if none exist:
    /// they live as long as a volume uses them).
    fn get_shared(&self, kind: BackendKind) -> Result<(Arc<Vault>, Arc<BufShares>), VaultError> {
        let kind = match kind {
            BackendKind::Auto if kvm_usable() => BackendKind::Kvm,
            BackendKind::Auto => BackendKind::Soft,
            k => k,
        };
        let mut m = self.vaults.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(e) = m.get_mut(kind.name()) {
            if let Some(v) = e.vault.upgrade() {
                let bufs = match e.bufs.upgrade() {
                    Some(b) => b,
                    None => {
                        let b = BufShares::new(Arc::clone(v.window()));
                        e.bufs = Arc::downgrade(&b);
                        b
                    }
                };
                return Ok((v, bufs));
            }
        }
        let v = Arc::new(
            Vault::open(&VaultConfig {
                backend: kind,
                vcpus: self.vcpus,
                window_size: self.window_size,
                run: self.run,
                tuning: self.tuning.clone(),
            })
            .map_err(VaultError::Hv)?,
        );
        let bufs = BufShares::new(Arc::clone(v.window()));
        m.insert(
            kind.name(),
            Entry {
                vault: Arc::downgrade(&v),
                bufs: Arc::downgrade(&bufs),
            },
        );
        Ok((v, bufs))
    }

    /// Imports keyring key `serial` (`key_len` bytes) into a vault slot: `keyctl_read`
    /// goes straight into the vault's transfer page. The volume joins the vault's
    /// buffer shares.
    pub fn import(
        &self,
        kind: BackendKind,
        spec: CipherSpec,
        geom: Geometry,
        serial: i32,
        key_len: usize,
    ) -> Result<VaultCrypt, VaultError> {
        let (vault, bufs) = self.get_shared(kind)?;
        let slot = vault
            .import_key_from_keyring(spec, serial, key_len)
            .map_err(|e| match e {
                HvError::Keyring { serial, err } => {
                    VaultError::Key(vmvault_proto::keyring::map_err(serial, err))
                }
                HvError::KeyringLength { serial, got, want } => {
                    VaultError::Key(KeyError::WrongSize { serial, got, want })
                }
                other => VaultError::Hv(other),
            })?;
        let member = bufs.join();
        Ok(VaultCrypt {
            vault,
            slot,
            geom,
            bufs,
            member,
        })
    }
}

impl VaultPool {
    /// Unlocks the first of `keyslots` that `passphrase` opens, in the vault: the KDF,
    /// the AF merge and the digest check run there and the key goes straight into a
    /// slot. Returns the volume's crypt and the LUKS keyslot that opened. When none
    /// opens: the first error other than a wrong passphrase, else [`VaultError::NoKey`].
    pub fn unlock(
        &self,
        kind: BackendKind,
        spec: CipherSpec,
        geom: Geometry,
        keyslots: &[crate::backend::UnlockCandidate],
        passphrase: &vmvault_proto::secret::Passphrase,
    ) -> Result<(VaultCrypt, u32), VaultError> {
        let (vault, bufs) = self.get_shared(kind)?;
        let mut first_err = None;
        for k in keyslots {
            match vault.unlock_keyslot(spec, &k.params, passphrase.as_bytes(), &k.area) {
                Ok(slot) => {
                    let member = bufs.join();
                    let vc = VaultCrypt {
                        vault,
                        slot,
                        geom,
                        bufs,
                        member,
                    };
                    return Ok((vc, k.keyslot));
                }
                Err(HvError::BadPassphrase) => {}
                Err(e) => {
                    tracing::warn!("keyslot {}: {e}", k.keyslot);
                    first_err.get_or_insert(VaultError::Hv(e));
                }
            }
        }
        Err(first_err.unwrap_or(VaultError::NoKey))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;
    use std::time::{Duration, Instant};

    const BOUND: Duration = Duration::from_secs(60);

    /// A soft vault with a window of `mib` MiB and the shares of its window.
    fn shares(mib: u64) -> (Vault, Arc<BufShares>) {
        let v = Vault::open(&VaultConfig {
            backend: BackendKind::Soft,
            vcpus: 1,
            window_size: mib << 20,
            ..Default::default()
        })
        .expect("soft vault (memfd_secret) for the buffer-share tests");
        let s = BufShares::new(Arc::clone(v.window()));
        (v, s)
    }

    /// Takes a buffer for `id` on another thread; the buffer arrives on the channel.
    fn take_async(
        s: &Arc<BufShares>,
        id: usize,
    ) -> mpsc::Receiver<Result<Box<dyn IoBuf>, CryptError>> {
        let (tx, rx) = mpsc::channel();
        let s = Arc::clone(s);
        std::thread::spawn(move || {
            let _ = tx.send(s.take(id));
        });
        rx
    }

    /// Waits (bounded) until `n` threads wait for a buffer.
    fn until_waiting(s: &BufShares, n: usize) {
        let t0 = Instant::now();
        while s.lock().waiting < n {
            assert!(t0.elapsed() < BOUND, "no thread started waiting");
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    fn got(rx: &mpsc::Receiver<Result<Box<dyn IoBuf>, CryptError>>) -> Box<dyn IoBuf> {
        rx.recv_timeout(BOUND)
            .expect("a waiting take must end once a buffer may be taken")
            .expect("taking a buffer must not fail")
    }

    #[test]
    fn a_full_window_means_waiting_and_every_request_finishes() {
        let (_v, s) = shares(6);
        let limit = s.limit();
        assert_eq!(limit, 5);
        let held = Arc::new(AtomicUsize::new(0));
        let peak = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        // 8 volumes x 4 threads, 5 buffers: most takes have to wait.
        for _ in 0..8 {
            let id = s.join();
            for t in 0..4 {
                let (s, held, peak, tx) = (s.clone(), held.clone(), peak.clone(), tx.clone());
                std::thread::spawn(move || {
                    for i in 0..200u32 {
                        let mut b = s.take(id).expect("never an error, only a wait");
                        let h = held.fetch_add(1, Ordering::SeqCst) + 1;
                        peak.fetch_max(h, Ordering::SeqCst);
                        b.bytes_mut()[0] = (i + t) as u8;
                        if i % 16 == 0 {
                            std::thread::yield_now();
                        }
                        held.fetch_sub(1, Ordering::SeqCst);
                        s.give(id, b);
                    }
                    let _ = tx.send(id);
                });
            }
        }
        drop(tx);
        let mut done = 0;
        while done < 32 {
            rx.recv_timeout(BOUND)
                .expect("every thread must finish: waits never deadlock");
            done += 1;
        }
        assert!(peak.load(Ordering::SeqCst) <= limit);
        assert_eq!(s.lock().waiting, 0);
        assert!(s.lock().carved <= limit);
    }

    #[test]
    fn a_new_volume_gets_buffers_back_from_one_that_borrowed_them_all() {
        let (_v, s) = shares(6);
        let a = s.join();
        // Alone, `a` may take every buffer.
        let mut held_a: Vec<_> = (0..5).map(|_| s.take(a).unwrap()).collect();
        let b = s.join();
        let rb = take_async(&s, b);
        until_waiting(&s, 1);
        // The first buffer `a` gives back goes to `b`.
        s.give(a, held_a.pop().unwrap());
        let b1 = got(&rb);
        // Now `a` (4 held, share 2) and `b` (1 held) both want one more: `b` is served
        // first, `a` waits while `b` is below its share.
        let ra = take_async(&s, a);
        until_waiting(&s, 1);
        let rb = take_async(&s, b);
        until_waiting(&s, 2);
        s.give(a, held_a.pop().unwrap());
        let b2 = got(&rb);
        assert_eq!(s.in_use(b), 2);
        assert!(
            ra.try_recv().is_err(),
            "`a` must wait: the free buffer was b's"
        );
        // When `b` gives back, `a` may borrow again.
        s.give(b, b1);
        let a4 = got(&ra);
        s.give(b, b2);
        s.give(a, a4);
        for x in held_a {
            s.give(a, x);
        }
        assert_eq!(s.in_use(a) + s.in_use(b), 0);
        s.leave(a);
        s.leave(b);
    }

    #[test]
    fn an_idle_volume_keeps_one_buffer_in_reserve() {
        let (_v, s) = shares(6);
        let a = s.join();
        let b = s.join();
        // `a` may use everything but the buffer reserved for idle `b`.
        let mut held_a: Vec<_> = (0..4).map(|_| s.take(a).unwrap()).collect();
        let ra = take_async(&s, a);
        until_waiting(&s, 1);
        // `b` gets its reserved buffer at once.
        let b1 = s.take(b).unwrap();
        assert!(ra.try_recv().is_err());
        // Given back, it is reserved again: `a` still waits...
        s.give(b, b1);
        assert!(ra.try_recv().is_err());
        // ...until `b` closes.
        s.leave(b);
        held_a.push(got(&ra));
        assert_eq!(s.in_use(a), 5);
        for x in held_a {
            s.give(a, x);
        }
        s.leave(a);
    }
}
