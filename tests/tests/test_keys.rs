//! The test suites leave no keys behind in root's user keyring: every key the shared
//! test support adds (`keyring_add`, `keyctl_padd`) is invalidated when the test process
//! exits, whether its tests passed or failed.

#[path = "../support/mod.rs"]
mod support;

use std::process::Command;

use support::{keyctl_padd, keyring_add, keyring_exists, require};

/// Run only as the child of [`test_keys_are_gone_after_the_test_process_exits`]: adds
/// two keys, prints their serials, and fails when asked to (a failing test must clean
/// up too).
#[test]
#[ignore = "run by test_keys_are_gone_after_the_test_process_exits"]
fn child_adds_keys() {
    let Ok(mode) = std::env::var("VMVAULT_TEST_KEYS_CHILD") else {
        return;
    };
    let a = keyring_add(&[7u8; 32]);
    let b = keyctl_padd(
        "user",
        &format!("vmvault-t:{}:child", std::process::id()),
        b"x",
    );
    println!("SERIALS {a} {b}");
    assert!(mode != "fail", "failing on purpose");
}

#[test]
fn test_keys_are_gone_after_the_test_process_exits() {
    if !require(&["keyctl"]) {
        return;
    }
    for mode in ["pass", "fail"] {
        let out = Command::new(std::env::current_exe().unwrap())
            .args(["--exact", "child_adds_keys", "--ignored", "--nocapture"])
            .env("VMVAULT_TEST_KEYS_CHILD", mode)
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert_eq!(out.status.success(), mode == "pass", "{mode}: {stdout}");
        let serials: Vec<i32> = stdout
            .lines()
            .find_map(|l| l.strip_prefix("SERIALS "))
            .unwrap_or_else(|| panic!("{mode}: child printed no serials: {stdout}"))
            .split_whitespace()
            .map(|s| s.parse().unwrap())
            .collect();
        assert_eq!(serials.len(), 2);
        // Invalidated keys are gone at once for lookups (the garbage collector frees
        // them later).
        for s in serials {
            assert!(
                !keyring_exists(s),
                "{mode}: key {s} outlived its test process"
            );
        }
    }
}
