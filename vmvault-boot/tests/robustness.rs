//! The fuzz target's checks (`vmvault_boot::fuzzing::vaulttab`) over the seed corpus, the
//! fuzzer's regressions, and a few thousand deterministic mutations of the corpus, so the
//! normal test suite runs what `cargo fuzz run vaulttab` runs (which needs cargo-fuzz and
//! libFuzzer: see fuzz/README.md).

use std::path::Path;

use vmvault_boot::fuzzing::vaulttab;

fn inputs(dir: &str) -> Vec<Vec<u8>> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join(dir);
    let mut out = Vec::new();
    for e in std::fs::read_dir(&dir).unwrap() {
        let p = e.unwrap().path();
        if p.file_name().is_some_and(|n| n != ".keep") {
            out.push(std::fs::read(&p).unwrap());
        }
    }
    out
}

#[test]
fn seed_corpus() {
    let c = inputs("fuzz/corpus/vaulttab");
    assert!(c.len() >= 7);
    for i in c {
        vaulttab(&i);
    }
}

/// Inputs the fuzzer found or that once mattered; each must pass the checks.
#[test]
fn fuzz_regressions() {
    for i in inputs("tests/fuzz-regressions") {
        vaulttab(&i);
    }
}

/// Byte flips, insertions of separators and truncations of every corpus file.
#[test]
fn mutations() {
    let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let special = b" \t\n,=:\\#\"'/-";
    for base in inputs("fuzz/corpus/vaulttab") {
        for _ in 0..500 {
            let mut b = base.clone();
            for _ in 0..1 + next() % 4 {
                if b.is_empty() {
                    break;
                }
                let p = (next() as usize) % b.len();
                match next() % 4 {
                    0 => b[p] = special[(next() as usize) % special.len()],
                    1 => b.insert(p, special[(next() as usize) % special.len()]),
                    2 => b.truncate(p),
                    _ => b[p] = next() as u8,
                }
            }
            vaulttab(&b);
        }
    }
}
