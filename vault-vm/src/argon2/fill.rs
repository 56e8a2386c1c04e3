//! Filling memory: the first blocks of each lane, one segment (one lane's part of one
//! slice of one pass), the final hash, and wiping a lane.
//!
//! Everything here works on a raw base pointer because several workers write disjoint
//! segments of the same memory at once; see [`super::job`] for why the reads are safe.

use zeroize::Zeroize;

use super::blake2b::{h_prime, H0_LEN};
use super::compress::CompressPath;
use super::params::{Algorithm, SYNC_POINTS};
use super::Block;

/// Words of an address block (one reference per word).
const ADDRESSES_IN_BLOCK: u32 = 128;

/// The shape of one computation, as every worker sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Shape {
    /// The variant.
    pub algorithm: Algorithm,
    /// Passes.
    pub passes: u32,
    /// Lanes.
    pub lanes: u32,
    /// Blocks per segment.
    pub segment_length: u32,
}

impl Shape {
    /// Blocks per lane.
    pub fn lane_length(&self) -> u32 {
        self.segment_length * SYNC_POINTS
    }

    /// Blocks in all lanes (`m'`).
    pub fn block_count(&self) -> u32 {
        self.lane_length() * self.lanes
    }
}

/// Writes the first two blocks of `lane`: B[lane][i] = H'(H0 ‖ LE32(i) ‖ LE32(lane)).
///
/// # Safety
/// `mem` points at `shape.block_count()` valid blocks; nobody else touches the first two
/// blocks of `lane` during the call.
pub(crate) unsafe fn first_blocks(mem: *mut Block, shape: &Shape, h0: &[u8; H0_LEN], lane: u32) {
    let mut bytes = [0u8; Block::SIZE];
    for i in 0..2u32 {
        h_prime(&[h0, &i.to_le_bytes(), &lane.to_le_bytes()], &mut bytes);
        let idx = (lane * shape.lane_length() + i) as usize;
        // SAFETY: `idx` is inside the memory and only this call touches the block.
        let block = unsafe { &mut *mem.add(idx) };
        for (w, chunk) in block.0.iter_mut().zip(bytes.chunks_exact(8)) {
            *w = u64::from_le_bytes(chunk.try_into().expect("8-byte chunk"));
        }
    }
    bytes.zeroize();
}

/// Computes segment (`pass`, `slice`, `lane`), RFC 9106 § 3.4.
///
/// # Safety
/// `mem` points at `shape.block_count()` valid blocks; the CPU runs `path`; during the
/// call nobody else writes any block this segment reads (the blocks of slices other than
/// `slice` in every lane, and the blocks of this lane) nor touches the segment itself.
pub(crate) unsafe fn fill_segment(
    mem: *mut Block,
    shape: &Shape,
    path: CompressPath,
    pass: u32,
    slice: u32,
    lane: u32,
) {
    let lanes = shape.lanes;
    let seg = shape.segment_length;
    let lane_len = shape.lane_length();
    let independent = match shape.algorithm {
        Algorithm::Argon2i => true,
        Algorithm::Argon2id => pass == 0 && slice < SYNC_POINTS / 2,
        Algorithm::Argon2d => false,
    };

    let mut address = Block::ZERO;
    let mut input = Block::ZERO;
    let zero = Block::ZERO;
    if independent {
        input.0[0] = u64::from(pass);
        input.0[1] = u64::from(lane);
        input.0[2] = u64::from(slice);
        input.0[3] = u64::from(shape.block_count());
        input.0[4] = u64::from(shape.passes);
        input.0[5] = shape.algorithm as u64;
    }
    // address = G(0, G(0, input)) after bumping the counter.
    let next_addresses = |address: &mut Block, input: &mut Block| {
        input.0[6] += 1;
        // SAFETY: local blocks; `dst` aliasing `y` is allowed by the contract.
        unsafe {
            path.compress(address, &zero, input, false);
            path.compress(address, &zero, address, false);
        }
    };

    let first = if pass == 0 && slice == 0 {
        if independent {
            next_addresses(&mut address, &mut input);
        }
        2
    } else {
        0
    };

    let lane_start = lane * lane_len;
    let seg_start = lane_start + slice * seg;
    let mut prev = if slice == 0 && first == 0 {
        lane_start + lane_len - 1
    } else {
        seg_start + first - 1
    };

    for index in first..seg {
        let cur = seg_start + index;
        let rand = if independent {
            let i = index % ADDRESSES_IN_BLOCK;
            if i == 0 {
                next_addresses(&mut address, &mut input);
            }
            address.0[i as usize]
        } else {
            // SAFETY: `prev` is a block of this lane written before (by this call or an
            // earlier step); nobody writes it now.
            unsafe { (*mem.add(prev as usize)).0[0] }
        };

        let ref_lane = if pass == 0 && slice == 0 {
            lane
        } else {
            ((rand >> 32) % u64::from(lanes)) as u32
        };
        let same = ref_lane == lane;
        // Blocks that may be referenced (RFC 9106 § 3.4.1.2).
        let area: u32 = if pass == 0 {
            if slice == 0 {
                index - 1
            } else if same {
                slice * seg + index - 1
            } else {
                slice * seg - u32::from(index == 0)
            }
        } else if same {
            lane_len - seg + index - 1
        } else {
            lane_len - seg - u32::from(index == 0)
        };
        let j1 = rand & 0xFFFF_FFFF;
        let x = (j1 * j1) >> 32;
        let y = (u64::from(area) * x) >> 32;
        let rel = area - 1 - y as u32;
        let start = if pass != 0 && slice != SYNC_POINTS - 1 {
            (slice + 1) * seg
        } else {
            0
        };
        let ref_index = ref_lane * lane_len + (start + rel) % lane_len;

        // SAFETY: `cur`, `prev` and `ref_index` are inside the memory; `cur` is this
        // segment's (only this call touches it), `prev` and `ref_index` differ from `cur`
        // and nobody writes them now (caller's contract); the CPU runs `path`.
        unsafe {
            path.compress(
                mem.add(cur as usize),
                mem.add(prev as usize),
                mem.add(ref_index as usize),
                pass != 0,
            );
        }
        prev = cur;
    }
    address.zeroize();
    input.zeroize();
}

/// The tag: H'(B[0][q−1] ⊕ … ⊕ B[p−1][q−1]).
///
/// # Safety
/// `mem` points at `shape.block_count()` valid blocks nobody writes during the call.
pub(crate) unsafe fn finalise(mem: *const Block, shape: &Shape, out: &mut [u8]) {
    let lane_len = shape.lane_length() as usize;
    let mut acc = Block::ZERO;
    for l in 0..shape.lanes as usize {
        // SAFETY: inside the memory; nobody writes it now.
        let last = unsafe { &*mem.add(l * lane_len + lane_len - 1) };
        for (a, w) in acc.0.iter_mut().zip(last.0.iter()) {
            *a ^= w;
        }
    }
    let mut bytes = [0u8; Block::SIZE];
    for (chunk, w) in bytes.chunks_exact_mut(8).zip(acc.0.iter()) {
        chunk.copy_from_slice(&w.to_le_bytes());
    }
    h_prime(&[&bytes], out);
    acc.zeroize();
    bytes.zeroize();
}

/// Zeroes the blocks of `lane`.
///
/// # Safety
/// `mem` points at `shape.block_count()` valid blocks; nobody else touches `lane`.
pub(crate) unsafe fn wipe_lane(mem: *mut Block, shape: &Shape, lane: u32) {
    let lane_len = shape.lane_length() as usize;
    // SAFETY: the lane is inside the memory and only this call touches it. The memory
    // belongs to the caller of `run_owner` and outlives it, so these stores are not dead
    // stores the compiler may drop; the fence keeps them before the `lanes done` count.
    unsafe {
        core::ptr::write_bytes(mem.add(lane as usize * lane_len), 0, lane_len);
    }
    core::sync::atomic::compiler_fence(core::sync::atomic::Ordering::SeqCst);
}
