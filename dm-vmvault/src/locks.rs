//! Byte-range reader/writer locks, so that concurrent read-modify-write of partial
//! sectors cannot interleave, and readers never see a half-written ciphertext sector.

use std::sync::{Condvar, Mutex, MutexGuard};

#[derive(Clone, Copy, Debug)]
struct Held {
    id: u64,
    start: u64,
    end: u64,
    exclusive: bool,
}

#[derive(Debug, Default)]
struct State {
    next_id: u64,
    held: Vec<Held>,
}

/// A set of held byte ranges; shared ranges may overlap each other, exclusive ones
/// overlap nothing.
#[derive(Debug, Default)]
pub struct RangeLocks {
    state: Mutex<State>,
    cv: Condvar,
}

/// A held range; released on drop.
#[derive(Debug)]
pub struct RangeGuard<'a> {
    locks: &'a RangeLocks,
    id: u64,
}

impl RangeLocks {
    /// An empty lock set.
    pub fn new() -> Self {
        Self::default()
    }

    fn state(&self) -> MutexGuard<'_, State> {
        // A panic while holding this short critical section leaves consistent data.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Blocks until `[start, end)` can be held (shared or exclusive), then holds it.
    pub fn lock(&self, start: u64, end: u64, exclusive: bool) -> RangeGuard<'_> {
        let mut st = self.state();
        loop {
            let conflict = st
                .held
                .iter()
                .any(|h| h.start < end && start < h.end && (exclusive || h.exclusive));
            if !conflict {
                break;
            }
            st = self.cv.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        let id = st.next_id;
        st.next_id += 1;
        st.held.push(Held {
            id,
            start,
            end,
            exclusive,
        });
        RangeGuard { locks: self, id }
    }
}

impl Drop for RangeGuard<'_> {
    fn drop(&mut self) {
        let mut st = self.locks.state();
        st.held.retain(|h| h.id != self.id);
        drop(st);
        self.locks.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    #[test]
    fn shared_ranges_coexist_exclusive_waits() {
        let l = Arc::new(RangeLocks::new());
        let a = l.lock(0, 4096, false);
        let _b = l.lock(0, 4096, false);
        let _c = l.lock(4096, 8192, true); // disjoint: no wait
        let got = Arc::new(AtomicBool::new(false));
        let (l2, g2) = (l.clone(), got.clone());
        let t = std::thread::spawn(move || {
            let _w = l2.lock(1000, 2000, true);
            g2.store(true, Ordering::SeqCst);
        });
        std::thread::sleep(Duration::from_millis(50));
        assert!(!got.load(Ordering::SeqCst));
        drop(a);
        std::thread::sleep(Duration::from_millis(20));
        assert!(
            !got.load(Ordering::SeqCst),
            "still blocked by the second reader"
        );
        drop(_b);
        t.join().unwrap();
        assert!(got.load(Ordering::SeqCst));
    }
}
