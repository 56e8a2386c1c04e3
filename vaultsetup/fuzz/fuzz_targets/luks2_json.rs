//! Arbitrary JSON text inside two LUKS2 headers with valid checksums, so the fuzzer
//! reaches the serde model, validation and the dump code instead of stopping at the
//! checksum.
#![no_main]

use libfuzzer_sys::fuzz_target;
use sha2::Digest;

fuzz_target!(|data: &[u8]| {
    let hdr = 16384usize;
    if data.len() >= hdr - 4096 {
        return;
    }
    let mut img = vec![0u8; 2 * hdr + 4096];
    for (i, off) in [0usize, hdr].into_iter().enumerate() {
        let h = &mut img[off..off + hdr];
        h[..6].copy_from_slice(if i == 0 { b"LUKS\xba\xbe" } else { b"SKUL\xba\xbe" });
        h[6..8].copy_from_slice(&2u16.to_be_bytes());
        h[8..16].copy_from_slice(&(hdr as u64).to_be_bytes());
        h[16..24].copy_from_slice(&1u64.to_be_bytes());
        h[72..78].copy_from_slice(b"sha256");
        h[256..264].copy_from_slice(&(off as u64).to_be_bytes());
        h[4096..4096 + data.len()].copy_from_slice(data);
        let d = sha2::Sha256::digest(&*h);
        h[448..480].copy_from_slice(&d);
    }
    if let Ok(v) = vaultsetup::parse_header_bytes(&img) {
        let _ = vaultsetup::dump::human(&v, "fuzz");
        if let vaultsetup::Volume::Luks2(h) = &v {
            let _ = vaultsetup::dump::json(h);
        }
    }
});
