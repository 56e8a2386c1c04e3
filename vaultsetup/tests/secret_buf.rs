//! Issue 11, point 8: a `SecretBuf` must stay locked when another one is dropped.
//!
//! `mlock`/`munlock` work on whole pages. Secret buffers used to be small heap
//! allocations, so neighbours shared pages, and dropping one (`munlock` of its range)
//! unlocked the page the other still used. The lock state is read from the `VmFlags`
//! (`lo`) of the mapping in `/proc/self/smaps` that contains each surviving buffer.

use vaultsetup::SecretBuf;

/// The `VmFlags` of the mapping of `/proc/self/smaps` that contains `addr`.
fn vm_flags_at(addr: usize) -> String {
    let smaps = std::fs::read_to_string("/proc/self/smaps").expect("read /proc/self/smaps");
    let mut inside = false;
    for line in smaps.lines() {
        let first = line.split_whitespace().next().unwrap_or("");
        if let Some((a, b)) = first.split_once('-') {
            if let (Ok(a), Ok(b)) = (usize::from_str_radix(a, 16), usize::from_str_radix(b, 16)) {
                inside = a <= addr && addr < b;
                continue;
            }
        }
        if inside {
            if let Some(f) = line.strip_prefix("VmFlags:") {
                return f.trim().to_string();
            }
        }
    }
    panic!("no mapping with VmFlags contains {addr:#x}");
}

/// Whether the mapping that contains `addr` is locked (`lo`).
fn locked_at(addr: usize) -> bool {
    vm_flags_at(addr).split_whitespace().any(|f| f == "lo")
}

/// Issue 11, point 8: dropping one buffer must not unlock pages of another. Small
/// buffers allocated one after another shared heap pages before, and `munlock` of
/// the dropped one unlocked the survivor's page too.
#[test]
fn drop_keeps_other_buffers_locked() {
    let bufs: Vec<SecretBuf> = (0..16)
        .map(|_| SecretBuf::from_slice(&[0x5a; 32]))
        .collect();
    if !bufs.iter().all(SecretBuf::is_locked) {
        let why = "mlock refused (RLIMIT_MEMLOCK? run as root): the lock state cannot be tested";
        assert!(std::env::var_os("CI").is_none(), "{why}");
        eprintln!("SKIPPED: {why}");
        return;
    }
    let (keep, drop_these): (Vec<_>, Vec<_>) =
        bufs.into_iter().enumerate().partition(|(i, _)| i % 2 == 0);
    for (_, b) in &keep {
        assert!(locked_at(b.as_slice().as_ptr() as usize));
    }
    drop(drop_these);
    for (i, b) in &keep {
        let a = b.as_slice().as_ptr() as usize;
        assert!(
            locked_at(a),
            "buffer {i} at {a:#x} is no longer locked after its neighbours were dropped (VmFlags: {})",
            vm_flags_at(a)
        );
        assert_eq!(b.as_slice(), &[0x5a; 32]);
    }
}

/// Each buffer is its own mapping, left out of core dumps (`dd`).
#[test]
fn buffers_are_not_dumped() {
    let b = SecretBuf::from_slice(b"0123456789abcdef");
    let flags = vm_flags_at(b.as_slice().as_ptr() as usize);
    assert!(flags.split_whitespace().any(|f| f == "dd"), "{flags}");
}
