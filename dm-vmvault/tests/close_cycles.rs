//! `close` never fails at random: 100 cycles of open, write + fsync, close on each vault
//! backend, with two CPU-burning threads running through the second half of the cycles
//! (they widen the window in which the FUSE session ends before `umount` returns).
//! Afterwards the last cycle's data reads back through a fresh open.

mod common;

use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use common::*;

const NEEDS: &[&str] = &["fuse", "loop", "keyctl"];
const CYCLES: usize = 100;
const CHUNK: usize = 64 * 1024;

/// Two threads spinning on the CPU while `on` is set; stopped and joined on drop.
struct Burners {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Burners {
    fn start(on: Arc<AtomicBool>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..2)
            .map(|_| {
                let (stop, on) = (stop.clone(), on.clone());
                std::thread::spawn(move || {
                    let mut x = 1u64;
                    while !stop.load(Ordering::Relaxed) {
                        if on.load(Ordering::Relaxed) {
                            for _ in 0..10_000 {
                                x = std::hint::black_box(x.wrapping_mul(6364136223846793005) + 1);
                            }
                        } else {
                            std::thread::sleep(std::time::Duration::from_millis(5));
                        }
                    }
                })
            })
            .collect();
        Burners { stop, threads }
    }
}

impl Drop for Burners {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

/// The bytes cycle `i` writes (distinct per cycle).
fn pattern(i: usize) -> Vec<u8> {
    (0..CHUNK).map(|j| (j * 31 + i * 7 + 1) as u8).collect()
}

/// Writes cycle `i`'s pattern at its own offset through the device, O_DIRECT, fsync.
fn write_fsync(dev: &Path, i: usize) {
    let f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_DIRECT)
        .open(dev)
        .unwrap_or_else(|e| panic!("open {}: {e}", dev.display()));
    let buf = AlignedBuf::from(&pattern(i));
    f.write_all_at(buf.as_slice(), (i * CHUNK) as u64)
        .unwrap_or_else(|e| panic!("cycle {i}: write {}: {e}", dev.display()));
    f.sync_all()
        .unwrap_or_else(|e| panic!("cycle {i}: fsync {}: {e}", dev.display()));
}

/// A 4096-aligned heap buffer for O_DIRECT.
struct AlignedBuf {
    ptr: *mut u8,
    len: usize,
}

impl AlignedBuf {
    fn layout(len: usize) -> std::alloc::Layout {
        std::alloc::Layout::from_size_align(len, 4096).unwrap()
    }

    fn from(data: &[u8]) -> Self {
        // SAFETY: the layout has a non-zero size (CHUNK).
        let ptr = unsafe { std::alloc::alloc_zeroed(Self::layout(data.len())) };
        assert!(!ptr.is_null());
        // SAFETY: `ptr` has room for `data.len()` bytes and does not overlap `data`.
        unsafe { std::ptr::copy_nonoverlapping(data.as_ptr(), ptr, data.len()) };
        AlignedBuf {
            ptr,
            len: data.len(),
        }
    }

    fn as_slice(&self) -> &[u8] {
        // SAFETY: `ptr` holds `len` initialized bytes for the life of `self`.
        unsafe { std::slice::from_raw_parts(self.ptr, self.len) }
    }
}

impl Drop for AlignedBuf {
    fn drop(&mut self) {
        // SAFETY: allocated in `from` with the same layout.
        unsafe { std::alloc::dealloc(self.ptr, Self::layout(self.len)) };
    }
}

#[test]
fn hundred_open_write_close_cycles_never_fail() {
    if !require(NEEDS) {
        return;
    }
    for backend in vault_backends() {
        cycles(backend);
    }
}

fn cycles(backend: vmvault_proto::protocol::BackendChoice) {
    let t = TempDir::new("close-cycles");
    let rundir = t.path().join("run");
    let img = t.path().join("img");
    sparse_image(&img, 17);
    let key = test_key(64, 9);
    let d = start_daemon(&rundir);
    let on = Arc::new(AtomicBool::new(false));
    let _burners = Burners::start(on.clone());
    let mut failures = Vec::new();
    for i in 0..CYCLES {
        on.store(i >= CYCLES / 2, Ordering::Relaxed);
        let mut req = open_req("cycle", &img, &key, 4096);
        req.backend = backend;
        let st = match d.client().open(req).map(|(st, _)| st) {
            Ok(st) => st,
            Err(e) => {
                failures.push(format!("cycle {i}: open: {e}"));
                break;
            }
        };
        write_fsync(Path::new(&st.device), i);
        if let Err(e) = d.client().close("cycle") {
            failures.push(format!("cycle {i}: close: {e}"));
            // A failed close leaves the volume open: stop here, the rest would only
            // report "already exists".
            break;
        }
    }
    on.store(false, Ordering::Relaxed);
    assert!(
        failures.is_empty(),
        "{} backend: {failures:?}\ndaemon log:\n{}",
        backend.as_str(),
        d.log()
    );

    // Every cycle's write reached the image: read them back through a fresh open.
    let mut req = open_req("cycle", &img, &key, 4096);
    req.backend = backend;
    let st = d.client().open(req).map(|(st, _)| st).unwrap();
    let f = std::fs::File::open(&st.device).unwrap();
    let mut got = vec![0u8; CHUNK];
    for i in 0..CYCLES {
        f.read_exact_at(&mut got, (i * CHUNK) as u64).unwrap();
        assert!(got == pattern(i), "cycle {i}: data read back differs");
    }
    drop(f);
    d.client().close("cycle").unwrap();
    d.shutdown();
}
