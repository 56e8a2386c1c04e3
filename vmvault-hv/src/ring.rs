//! Host side of the request rings: claim an entry, publish a request, wake a sleeping
//! vCPU, wait for the response.

use std::hint::spin_loop;
use std::ptr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use vault_vm::abi::{
    Request, Response, Ring, ENTRY_CLAIMED, ENTRY_DONE, ENTRY_FREE, ENTRY_SUBMITTED, RING_ENTRIES,
};

use crate::error::{HvError, Result, VaultFailure};

/// How long a waiting thread spins before it starts sleeping. Short: several waiting
/// threads may share one CPU, and a spinning one keeps the others from resubmitting.
const SPIN: Duration = Duration::from_micros(15);
/// Throughput assumed to estimate how long a request takes at least (40 GB/s); a waiter for a
/// long request sleeps through most of it before it starts spinning.
const EXPECTED_BYTES_PER_US: u64 = 40_000;
/// Sleep between checks once the spin budget is spent. A sleeping waiter (rather than a
/// yielding one) is woken by a timer, which lets it preempt a vCPU thread that shares
/// its CPU, so completions are seen promptly even on an oversubscribed machine.
const WAIT_SLEEP: Duration = Duration::from_micros(10);

/// Wakes a vCPU thread that waits outside `KVM_RUN` for work.
#[derive(Default)]
pub(crate) struct Wake {
    pub lock: Mutex<()>,
    pub cv: Condvar,
    /// Set by `notify`, consumed by `take`: the vCPU thread was asked to run.
    kicked: AtomicBool,
}

impl Wake {
    pub fn notify(&self) {
        if self.kicked.swap(true, Ordering::SeqCst) {
            return; // already asked, not yet served
        }
        let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        self.cv.notify_all();
    }

    /// Whether `notify` was called since the last `take`.
    pub fn take(&self) -> bool {
        self.kicked.swap(false, Ordering::SeqCst)
    }

    /// Waits until `ready()` holds (rechecked every few milliseconds as a safety net).
    pub fn wait_until(&self, ready: impl Fn() -> bool) {
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while !ready() {
            g = self
                .cv
                .wait_timeout(g, Duration::from_millis(20))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Completion broadcast of caller mode: the thread that ran the vCPU bumps the
/// generation after each `KVM_RUN` episode (and when it gives the vCPU up); threads whose
/// requests another thread serves sleep on it instead of spinning on a CPU that the
/// runner and the rest of the I/O stack need.
#[derive(Default)]
pub(crate) struct Done {
    generation: AtomicU64,
    waiters: AtomicU32,
    lock: Mutex<()>,
    cv: Condvar,
}

impl Done {
    /// The current generation; pass it to [`Done::wait_past`].
    pub fn generation(&self) -> u64 {
        self.generation.load(Ordering::SeqCst)
    }

    /// Wakes every thread waiting for a newer generation.
    pub fn bump(&self) {
        self.generation.fetch_add(1, Ordering::SeqCst);
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
            self.cv.notify_all();
        }
    }

    /// Sleeps until the generation differs from `seen`, or `timeout` passed.
    pub fn wait_past(&self, seen: u64, timeout: Duration) {
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let deadline = Instant::now() + timeout;
        let mut g = self.lock.lock().unwrap_or_else(|e| e.into_inner());
        while self.generation.load(Ordering::SeqCst) == seen {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            g = self
                .cv
                .wait_timeout(g, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        drop(g);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
    }
}

/// How a submitting thread waits for its response.
pub(crate) enum WaitMode<'a> {
    /// A vCPU thread polls the ring: spin briefly, then sleep in short steps; `wake`
    /// gets a sleeping vCPU going again.
    Poll { wake: &'a (dyn Fn() + Sync) },
    /// Caller mode: `run` runs the sleeping vCPU on this thread if nobody else does and
    /// returns whether it did; otherwise the thread sleeps on [`RingClient::done`].
    Caller { run: &'a (dyn Fn() -> bool + Sync) },
}

/// A ring in guest memory plus its wake-up channels.
pub(crate) struct RingClient {
    ring: *const Ring,
    pub wake: Wake,
    pub done: Done,
}

// SAFETY: `ring` points into guest memory that outlives every RingClient (owned by the
// same backend); shared fields are atomics, requests/responses are moved with volatile
// copies under the entry-state protocol.
unsafe impl Send for RingClient {}
// SAFETY: as above.
unsafe impl Sync for RingClient {}

/// What runs beside a thread's wait for its response. Normal builds only have [`Alone`];
/// test builds (`test-api`) also race the request in shared memory while the vault
/// serves it (`test_api::Racing`).
pub(crate) trait Beside: Copy {
    /// Runs `wait` on this thread (with whatever runs beside it) and returns its result;
    /// `req` is the request in shared memory.
    fn wait<T>(self, req: *mut Request, wait: impl FnOnce() -> T) -> T;
}

/// Nothing runs beside the wait.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Alone;

impl Beside for Alone {
    #[inline(always)]
    fn wait<T>(self, _req: *mut Request, wait: impl FnOnce() -> T) -> T {
        wait()
    }
}

impl RingClient {
    /// # Safety
    /// `ring` must point to a `Ring` in memory that stays mapped while this client lives.
    pub unsafe fn new(ring: *const Ring) -> Self {
        RingClient {
            ring,
            wake: Wake::default(),
            done: Done::default(),
        }
    }

    pub fn ring(&self) -> &Ring {
        // SAFETY: contract of `new`.
        unsafe { &*self.ring }
    }

    /// Whether the vCPU must stop.
    pub fn header_stop(&self) -> bool {
        self.ring().header.stop.load(Ordering::SeqCst) != 0
    }

    /// Whether work is waiting (or the vCPU must stop).
    pub fn has_work(&self) -> bool {
        let r = self.ring();
        r.header.stop.load(Ordering::SeqCst) != 0
            || r.entries
                .iter()
                .any(|e| e.state.load(Ordering::SeqCst) == ENTRY_SUBMITTED)
    }

    /// Whether the vCPU is (about to be) outside the guest, waiting to be run again.
    pub fn vcpu_sleeping(&self) -> bool {
        self.ring().header.sleeping.load(Ordering::SeqCst) != 0
    }

    /// Claims a free entry (waiting while all are taken), publishes `req` in it and
    /// returns its index; the caller must [`RingClient::complete`] it.
    pub fn submit(&self, req: &Request, failed: &AtomicBool) -> Result<usize> {
        let ring = self.ring();
        let mut spins = Backoff::new(SPIN);
        let idx = loop {
            if let Some(idx) = ring.entries.iter().position(|e| {
                e.state
                    .compare_exchange(
                        ENTRY_FREE,
                        ENTRY_CLAIMED,
                        Ordering::Acquire,
                        Ordering::Relaxed,
                    )
                    .is_ok()
            }) {
                break idx;
            }
            if failed.load(Ordering::Relaxed) {
                return Err(HvError::VaultFailed(VaultFailure::VcpuStopped));
            }
            spins.wait();
        };
        let e = &ring.entries[idx];
        let req_ptr = ptr::addr_of!(e.req).cast_mut();
        // SAFETY: the entry is CLAIMED by this thread; the vault ignores it until SUBMITTED.
        unsafe { vault_vm::abi::write_request(req_ptr, req) };
        e.state.store(ENTRY_SUBMITTED, Ordering::SeqCst);
        ring.header.head.fetch_add(1, Ordering::Relaxed);
        Ok(idx)
    }

    /// Waits for entry `idx` (submitted by this thread, `bytes` of data) as `mode` says,
    /// then takes its response and frees the entry. In poll mode `wake` is called at once
    /// if the vCPU sleeps, and again whenever the wait finds it asleep with the request
    /// still pending.
    pub fn complete(
        &self,
        idx: usize,
        bytes: u64,
        failed: &AtomicBool,
        beside: impl Beside,
        mode: WaitMode<'_>,
    ) -> Result<Response> {
        let ring = self.ring();
        let e = &ring.entries[idx % RING_ENTRIES];
        let req_ptr = ptr::addr_of!(e.req).cast_mut();
        let done = || e.state.load(Ordering::Acquire) == ENTRY_DONE;
        let wake = match mode {
            WaitMode::Poll { wake } => wake,
            WaitMode::Caller { run } => {
                let wait = || self.wait_caller(&done, run, failed);
                return self.finish(e, req_ptr, beside, wait);
            }
        };
        if !done() && self.vcpu_sleeping() {
            wake();
        }
        // Requests ahead of this one (and this one) on the ring: waiting threads sleep
        // through the queue instead of spinning on CPUs the vCPUs need (and waking up
        // early, which preempts a vCPU: a VM exit).
        // (`tail` is a line the vault writes: read it only when a sleep may follow.)
        let queued = if bytes.saturating_mul(RING_ENTRIES as u64) / EXPECTED_BYTES_PER_US
            > 2 * SPIN.as_micros() as u64
        {
            ring.header
                .head
                .load(Ordering::Relaxed)
                .wrapping_sub(ring.header.tail.load(Ordering::Relaxed))
                .clamp(1, RING_ENTRIES as u64)
        } else {
            1
        };
        let expected = Duration::from_micros(
            (queued.saturating_mul(bytes) / EXPECTED_BYTES_PER_US).min(10_000),
        );
        let wait = || {
            if expected > 2 * SPIN && !done() && !self.vcpu_sleeping() {
                precise_sleep(expected - SPIN);
            }
            let mut spins = Backoff::new(SPIN);
            let mut n = 0u32;
            loop {
                if done() {
                    return Ok(());
                }
                n = n.wrapping_add(1);
                if (spins.sleeping || n.is_multiple_of(64)) && self.vcpu_sleeping() && !done() {
                    // Missed or not yet effective wake-up (the vCPU went to sleep while
                    // another thread ran it, or its thread has not been scheduled).
                    wake();
                }
                if failed.load(Ordering::Relaxed) {
                    return Err(HvError::VaultFailed(VaultFailure::StoppedServing));
                }
                spins.wait();
            }
        };
        self.finish(e, req_ptr, beside, wait)
    }

    /// Caller-mode wait: run the vCPU here whenever it sleeps with work waiting and no
    /// other thread runs it; else sleep until the runner reports an episode's end.
    fn wait_caller(
        &self,
        done: &dyn Fn() -> bool,
        run: &(dyn Fn() -> bool + Sync),
        failed: &AtomicBool,
    ) -> Result<()> {
        loop {
            if done() {
                return Ok(());
            }
            if failed.load(Ordering::Relaxed) {
                return Err(HvError::VaultFailed(VaultFailure::StoppedServing));
            }
            let seen = self.done.generation();
            // Let the threads that are ready on this CPU submit first, so that one
            // KVM_RUN episode (~25 µs of CPU here) serves them all (fio random 4K,
            // 2 CPUs: read 185 -> 265 MB/s, write 124 -> 145 MB/s).
            std::thread::yield_now();
            if done() {
                continue;
            }
            if run() || done() {
                continue;
            }
            // Another thread runs the vCPU; it bumps `done` when its episode ends (the
            // timeout is only a safety net).
            self.done.wait_past(seen, Duration::from_millis(2));
        }
    }

    /// Waits (with `beside` running beside the wait), then takes the response and frees
    /// the entry.
    fn finish(
        &self,
        e: &vault_vm::abi::RingEntry,
        req_ptr: *mut Request,
        beside: impl Beside,
        wait: impl FnOnce() -> Result<()>,
    ) -> Result<Response> {
        beside.wait(req_ptr, wait)?;
        // SAFETY: DONE: the vault wrote the response and no longer touches the entry.
        let resp = unsafe { ptr::read_volatile(ptr::addr_of!(e.resp)) };
        e.state.store(ENTRY_FREE, Ordering::Release);
        Ok(resp)
    }
}

/// Bytes of data a request names (the sum of its segment lengths).
pub(crate) fn request_bytes(req: &Request) -> u64 {
    req.segs
        .iter()
        .take(req.nsegs as usize)
        .map(|s| s.len)
        .fold(0, u64::saturating_add)
}

/// Waiting strategy: spin for a budget, then sleep in short steps.
struct Backoff {
    start: Option<Instant>,
    spin: Duration,
    calls: u32,
    sleeping: bool,
}

impl Backoff {
    fn new(spin: Duration) -> Self {
        Backoff {
            start: None,
            spin,
            calls: 0,
            sleeping: false,
        }
    }

    /// One wait step: a single `pause` while spinning (the caller rechecks its condition
    /// right after, so a completion is seen within nanoseconds), a short sleep after.
    /// The clock is read only every 64 steps.
    fn wait(&mut self) {
        if !self.sleeping {
            self.calls = self.calls.wrapping_add(1);
            if self.calls % 64 != 1 {
                spin_loop();
                return;
            }
            let t = *self.start.get_or_insert_with(Instant::now);
            if t.elapsed() < self.spin {
                spin_loop();
                return;
            }
            self.sleeping = true;
        }
        precise_sleep(WAIT_SLEEP);
    }
}

/// Sleeps about `d`; the first call on a thread lowers its timer slack to 1 µs (the
/// default 50 µs would dominate short waits).
fn precise_sleep(d: Duration) {
    thread_local! {
        static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
    }
    SLACK_SET.with(|s| {
        if !s.get() {
            // SAFETY: PR_SET_TIMERSLACK only changes this thread's timer slack.
            unsafe { libc::prctl(libc::PR_SET_TIMERSLACK, 1_000 as libc::c_ulong) };
            s.set(true);
        }
    });
    std::thread::sleep(d);
}
