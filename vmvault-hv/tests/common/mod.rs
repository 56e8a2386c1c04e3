//! Helpers shared by the vault integration tests.
#![allow(dead_code)]

use std::io::{Read, Seek, SeekFrom};
use std::sync::atomic::{AtomicU64, Ordering};

use vmvault_hv::{BackendKind, Vault, VaultConfig};

/// Opens a vault on `backend`. For `Kvm` without a usable /dev/kvm: fails when `CI` is
/// set, else prints SKIPPED and returns `None`.
pub fn open(backend: BackendKind, vcpus: usize) -> Option<Vault> {
    if backend == BackendKind::Kvm
        && std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
            .is_err()
    {
        if std::env::var_os("CI").is_some() {
            panic!("/dev/kvm is not usable and CI is set: the vault tests must run on KVM");
        }
        println!("SKIPPED: /dev/kvm is not usable here");
        return None;
    }
    Some(
        Vault::open(&VaultConfig {
            backend,
            vcpus,
            window_size: 8 << 20,
            ..Default::default()
        })
        .unwrap_or_else(|e| panic!("opening a {backend:?} vault: {e}")),
    )
}

/// Deterministic but test-unique pseudo-random bytes.
pub fn random_bytes(n: usize) -> Vec<u8> {
    static SEED: AtomicU64 = AtomicU64::new(0);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos() as u64;
    let mut x = t
        ^ SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed)
        ^ (std::process::id() as u64) << 32;
    (0..n)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            (x >> 24) as u8
        })
        .collect()
}

/// Reads every mapping of `/memfd:<name>` in this process through /proc/self/mem.
pub fn read_memfd_mappings(name: &str) -> Vec<Vec<u8>> {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap();
    let mut mem = std::fs::File::open("/proc/self/mem").unwrap();
    let mut out = Vec::new();
    for line in maps.lines() {
        if !line.contains(&format!("/memfd:{name}")) {
            continue;
        }
        let range = line.split_whitespace().next().unwrap();
        let (a, b) = range.split_once('-').unwrap();
        let (a, b) = (
            u64::from_str_radix(a, 16).unwrap(),
            u64::from_str_radix(b, 16).unwrap(),
        );
        let mut buf = vec![0u8; (b - a) as usize];
        mem.seek(SeekFrom::Start(a)).unwrap();
        mem.read_exact(&mut buf)
            .unwrap_or_else(|e| panic!("reading {line}: {e}"));
        out.push(buf);
    }
    out
}

/// Whether `needle` occurs in `hay`.
pub fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

/// AES encryption key schedule (FIPS-197), as round keys of 16 bytes.
pub fn aes_round_keys(key: &[u8]) -> Vec<[u8; 16]> {
    const SBOX: [u8; 256] = {
        let mut s = [0u8; 256];
        let mut p: u8 = 1;
        let mut q: u8 = 1;
        loop {
            // multiply p by 3
            p = p ^ (p << 1) ^ if p & 0x80 != 0 { 0x1b } else { 0 };
            // divide q by 3
            q ^= q << 1;
            q ^= q << 2;
            q ^= q << 4;
            if q & 0x80 != 0 {
                q ^= 0x09;
            }
            let x = q ^ q.rotate_left(1) ^ q.rotate_left(2) ^ q.rotate_left(3) ^ q.rotate_left(4);
            s[p as usize] = x ^ 0x63;
            if p == 1 {
                break;
            }
        }
        s[0] = 0x63;
        s
    };
    let nk = key.len() / 4;
    let nr = nk + 6;
    let mut w: Vec<[u8; 4]> = key.chunks(4).map(|c| [c[0], c[1], c[2], c[3]]).collect();
    let mut rcon: u8 = 1;
    for i in nk..4 * (nr + 1) {
        let mut t = w[i - 1];
        if i % nk == 0 {
            t = [
                SBOX[t[1] as usize] ^ rcon,
                SBOX[t[2] as usize],
                SBOX[t[3] as usize],
                SBOX[t[0] as usize],
            ];
            rcon = (rcon << 1) ^ if rcon & 0x80 != 0 { 0x1b } else { 0 };
        } else if nk > 6 && i % nk == 4 {
            t = t.map(|b| SBOX[b as usize]);
        }
        let p = w[i - nk];
        w.push([p[0] ^ t[0], p[1] ^ t[1], p[2] ^ t[2], p[3] ^ t[3]]);
    }
    w.chunks(4)
        .map(|c| {
            let mut r = [0u8; 16];
            for (j, word) in c.iter().enumerate() {
                r[j * 4..j * 4 + 4].copy_from_slice(word);
            }
            r
        })
        .collect()
}
