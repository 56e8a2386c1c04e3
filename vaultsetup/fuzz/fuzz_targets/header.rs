//! Raw bytes as the start of a device: LUKS1 header or LUKS2 binary headers + JSON.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(v) = vaultsetup::parse_header_bytes(data) {
        let _ = vaultsetup::dump::human(&v, "fuzz");
        if let vaultsetup::Volume::Luks2(h) = &v {
            let _ = vaultsetup::dump::json(h);
        }
    }
});
