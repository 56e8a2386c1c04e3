//! Arbitrary bytes as /etc/vaulttab: the parser, the options parser, the device and key
//! specs, and the generator's unit plan (`vmvault_boot::fuzzing::vaulttab` says what is
//! checked; tests/robustness.rs replays the corpus and every crash with the same code).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    vmvault_boot::fuzzing::vaulttab(data);
});
