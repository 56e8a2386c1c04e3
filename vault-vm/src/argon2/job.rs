//! The job board: one Argon2 computation whose lane-segments several vCPUs claim.
//!
//! # Protocol
//! The computation is a sequence of *steps*: step `4·pass + slice` fills segment
//! (pass, slice) of every lane; step `4·passes` (the *wipe step*) zeroes every lane; step
//! `4·passes + 1` is the end marker. `next` holds `step << 32 | next lane to claim`;
//! `done` counts the lane-segments finished since the job began (cumulative, so it needs
//! no reset between steps: step `k` is complete when `done == (k + 1) · lanes`).
//!
//! - A worker (the owner or a helper) claims with `next.fetch_add(1)`; the value returned
//!   names both the step and the lane, so a worker late for step `k` that lands in step
//!   `k + 1` simply works on `k + 1`. A lane number ≥ `lanes` means nothing is left in
//!   that step: a helper then spins until `next` names a later step; the owner waits for
//!   `done` to reach the step's total, then stores `next = (k + 1) << 32`.
//! - Before storing the wipe step the owner computes the tag from the last blocks.
//! - The owner ends the job by storing the end marker, unpublishing (`state = IDLE`) and
//!   waiting for `participants == 0`, so no helper touches the job (or the memory, which
//!   it only touches for lanes it claimed, all counted in `done`) once `run_owner` returns.
//!
//! Every step is claimed by the owner too, so the job completes when nobody joins.
//!
//! # Memory ordering
//! Within step `(pass, slice)` a segment reads only: blocks of its own lane (written by
//! earlier steps or by itself), and blocks of other lanes in slices ≠ `slice` — those of
//! slices < `slice` written in this pass, those of slices > `slice` in the previous pass.
//! So step `k` reads only blocks written in steps < `k` and writes only its own segment,
//! disjoint from every other lane's. Visibility: a worker writes its segment, then does
//! `done.fetch_add(Release)`; the owner's `Acquire` load that sees the step total
//! synchronises with all those (they are RMWs, each heading a release sequence the later
//! ones continue); the owner then `Release`-stores `next` for step `k + 1`, and a worker's
//! `AcqRel` `fetch_add` that reads that value (or a later RMW of it) synchronises with it.
//! Hence everything written in steps ≤ `k` happens-before everything done in step `k + 1`.
//! Joining is a Dekker pair: a helper increments `participants` then re-reads `state`,
//! the owner stores `state = IDLE` then reads `participants` (all `SeqCst`); either the
//! helper sees IDLE and leaves, or the owner sees it and waits for it.
//! The parameters are stored before the `SeqCst` store that publishes the job, and read
//! after the helper's `SeqCst` load that sees it.

use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU32, AtomicU64, Ordering};

use zeroize::Zeroize;

use super::blake2b::h0;
use super::compress::CompressPath;
use super::fill::{fill_segment, finalise, first_blocks, wipe_lane, Shape};
use super::params::{check_all, Algorithm, Argon2Error, Inputs, Params, SYNC_POINTS};
use super::Block;

/// No computation.
const IDLE: u32 = 0;
/// An owner is preparing the job (not joinable yet).
const PREPARING: u32 = 1;
/// Joinable.
const PUBLISHED: u32 = 2;

/// Largest `t_cost` the board numbers (4 steps per pass plus 2 fit in 32 bits).
const MAX_PASSES: u32 = (u32::MAX - 2) / SYNC_POINTS;

/// A job board for one Argon2 computation at a time, shared by the owner and helpers.
///
/// Made to live in a `static` (`Job::new` is `const`); only atomics inside. It holds the
/// memory's address while a job runs but no password-derived bytes.
#[derive(Debug)]
pub struct Job {
    /// IDLE, PREPARING or PUBLISHED.
    state: AtomicU32,
    /// Helpers inside the job (between their join and their exit).
    participants: AtomicU32,
    /// Base of the Argon2 memory.
    base: AtomicPtr<Block>,
    /// `Algorithm as u32`.
    algorithm: AtomicU32,
    /// Passes.
    passes: AtomicU32,
    /// Lanes.
    lanes: AtomicU32,
    /// Blocks per segment.
    segment_length: AtomicU32,
    /// `step << 32 | next lane to claim`.
    next: AtomicU64,
    /// Lane-segments (and lane wipes) finished since the job began.
    done: AtomicU64,
}

impl Default for Job {
    fn default() -> Self {
        Self::new()
    }
}

impl Job {
    /// An idle board.
    pub const fn new() -> Job {
        Job {
            state: AtomicU32::new(IDLE),
            participants: AtomicU32::new(0),
            base: AtomicPtr::new(ptr::null_mut()),
            algorithm: AtomicU32::new(0),
            passes: AtomicU32::new(0),
            lanes: AtomicU32::new(0),
            segment_length: AtomicU32::new(0),
            next: AtomicU64::new(0),
            done: AtomicU64::new(0),
        }
    }

    /// Whether a job is published (joinable) right now.
    pub fn is_published(&self) -> bool {
        self.state.load(Ordering::Acquire) == PUBLISHED
    }

    /// The published shape and memory (after the helper's `SeqCst` re-check).
    fn shape(&self) -> (Shape, *mut Block) {
        let shape = Shape {
            algorithm: Algorithm::from_u32(self.algorithm.load(Ordering::Relaxed)),
            passes: self.passes.load(Ordering::Relaxed),
            lanes: self.lanes.load(Ordering::Relaxed),
            segment_length: self.segment_length.load(Ordering::Relaxed),
        };
        (shape, self.base.load(Ordering::Relaxed))
    }
}

/// Does lane `lane` of step `step` (a segment fill or, for the wipe step, a lane wipe).
///
/// # Safety
/// The claim protocol of the module docs: `(step, lane)` was claimed by the caller alone
/// and every step before `step` is complete and visible to it; `mem` is the job's memory.
unsafe fn work(mem: *mut Block, shape: &Shape, path: CompressPath, step: u32, lane: u32) {
    let fill_steps = shape.passes * SYNC_POINTS;
    if step < fill_steps {
        // SAFETY: the claim gives this caller the segment; the blocks it reads were
        // written in earlier, complete steps (module docs).
        unsafe {
            fill_segment(
                mem,
                shape,
                path,
                step / SYNC_POINTS,
                step % SYNC_POINTS,
                lane,
            )
        };
    } else {
        // SAFETY: the wipe step: the tag is computed, nobody reads the memory any more,
        // and the claim gives this caller the lane.
        unsafe { wipe_lane(mem, shape, lane) };
    }
}

/// Computes Argon2 as the owner of `job` (see [`run_owner_with`]), with no secret and no
/// associated data.
pub fn run_owner(
    job: &Job,
    params: &Params,
    password: &[u8],
    salt: &[u8],
    memory: &mut [Block],
    out: &mut [u8],
) -> Result<(), Argon2Error> {
    run_owner_with(job, params, &Inputs::new(password, salt), memory, out)
}

/// Computes Argon2 into `out` (the tag length is `out.len()`), publishing `job` so that
/// other vCPUs calling [`join`] share the lanes. Returns once the tag is in `out`, the
/// first [`Params::block_count`] blocks of `memory` are zero, and no helper is inside
/// the job. Completes alone when nobody joins.
///
/// Errors (before anything is computed): invalid parameters or sizes, `t_cost` above
/// 2^30 − 1, or [`Argon2Error::JobBusy`] when `job` already has an owner.
pub fn run_owner_with(
    job: &Job,
    params: &Params,
    inputs: &Inputs<'_>,
    memory: &mut [Block],
    out: &mut [u8],
) -> Result<(), Argon2Error> {
    check_all(params, inputs, memory, out)?;
    if params.t_cost > MAX_PASSES {
        return Err(Argon2Error::TimeCost);
    }
    job.state
        .compare_exchange(IDLE, PREPARING, Ordering::Acquire, Ordering::Relaxed)
        .map_err(|_| Argon2Error::JobBusy)?;

    let shape = Shape {
        algorithm: params.algorithm,
        passes: params.t_cost,
        lanes: params.lanes,
        segment_length: params.segment_length(),
    };
    let path = CompressPath::detect();
    // From here on the memory is used through this pointer only (helpers share it).
    let mem = memory.as_mut_ptr();

    let mut h = h0(params, inputs, out.len() as u32);
    for lane in 0..shape.lanes {
        // SAFETY: the memory holds `block_count` blocks (checked); nobody else runs yet.
        unsafe { first_blocks(mem, &shape, &h, lane) };
    }
    h.zeroize();

    job.base.store(mem, Ordering::Relaxed);
    job.algorithm
        .store(shape.algorithm as u32, Ordering::Relaxed);
    job.passes.store(shape.passes, Ordering::Relaxed);
    job.lanes.store(shape.lanes, Ordering::Relaxed);
    job.segment_length
        .store(shape.segment_length, Ordering::Relaxed);
    job.done.store(0, Ordering::Relaxed);
    job.next.store(0, Ordering::Relaxed);
    // Publishes the parameters above and the first blocks.
    job.state.store(PUBLISHED, Ordering::SeqCst);

    let lanes = u64::from(shape.lanes);
    let fill_steps = shape.passes * SYNC_POINTS;
    for step in 0..=fill_steps {
        loop {
            let v = job.next.fetch_add(1, Ordering::AcqRel);
            debug_assert_eq!((v >> 32) as u32, step);
            let lane = v as u32;
            if lane >= shape.lanes {
                break;
            }
            // SAFETY: claimed alone, earlier steps complete (this loop waits for them).
            unsafe { work(mem, &shape, path, step, lane) };
            job.done.fetch_add(1, Ordering::Release);
        }
        let target = (u64::from(step) + 1) * lanes;
        while job.done.load(Ordering::Acquire) < target {
            core::hint::spin_loop();
        }
        if step + 1 == fill_steps {
            // SAFETY: every fill step is complete and visible; the wipe step is not
            // published yet, so nobody writes the memory.
            unsafe { finalise(mem, &shape, out) };
        }
        job.next.store(u64::from(step + 1) << 32, Ordering::Release);
    }

    // `next` now holds the end marker. Unpublish and wait for helpers to leave.
    job.state.store(IDLE, Ordering::SeqCst);
    while job.participants.load(Ordering::SeqCst) != 0 {
        core::hint::spin_loop();
    }
    job.base.store(ptr::null_mut(), Ordering::Relaxed);
    Ok(())
}

/// Helps the job published on `job`, waiting up to `wait_spins` spin iterations for one
/// to be published. Claims lanes slice by slice until the job ends and returns the number
/// of lane-segments (and lane wipes) it did; 0 when no job came, it arrived too late, or
/// the job has a single lane (nothing can run beside the owner).
///
/// Never waits for anything but the owner's progress: the owner does every step it
/// finds unclaimed and then advances, so a helper's waits end with the owner's job.
pub fn join(job: &Job, wait_spins: u64) -> u32 {
    let mut spins = 0u64;
    loop {
        if job.state.load(Ordering::Acquire) == PUBLISHED {
            job.participants.fetch_add(1, Ordering::SeqCst);
            if job.state.load(Ordering::SeqCst) == PUBLISHED {
                break;
            }
            job.participants.fetch_sub(1, Ordering::Release);
        }
        if spins >= wait_spins {
            return 0;
        }
        spins += 1;
        core::hint::spin_loop();
    }

    let (shape, mem) = job.shape();
    if shape.lanes < 2 {
        // One lane is one chain of blocks: a helper could only take turns with the
        // owner, never run beside it. Leave at once.
        job.participants.fetch_sub(1, Ordering::Release);
        return 0;
    }
    let path = CompressPath::detect();
    let end = shape.passes * SYNC_POINTS + 1;
    let mut count = 0u32;
    loop {
        let v = job.next.fetch_add(1, Ordering::AcqRel);
        let step = (v >> 32) as u32;
        let lane = v as u32;
        if step >= end {
            break;
        }
        if lane < shape.lanes {
            // SAFETY: claimed alone; `next` names `step` only after every earlier step
            // completed, and the AcqRel claim made their writes visible (module docs).
            unsafe { work(mem, &shape, path, step, lane) };
            job.done.fetch_add(1, Ordering::Release);
            count += 1;
            continue;
        }
        while (job.next.load(Ordering::Acquire) >> 32) as u32 == step {
            core::hint::spin_loop();
        }
    }
    job.participants.fetch_sub(1, Ordering::Release);
    count
}
