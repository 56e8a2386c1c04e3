//! The checks the fuzz target runs on arbitrary input, shared with the test that replays
//! the seed corpus and the regressions (`tests/robustness.rs`), so that both run the
//! same code. Not part of the stable API.

use std::path::Path;

use crate::generator;
use crate::vaulttab::{DeviceSpec, KeySpec, Options, Vaulttab};

/// Parses `data` as a vaulttab and checks what must hold for any input: no panic; every
/// entry's fields re-parse to the same values; its options re-parse to the same options
/// after the generator's filtering; a unit plan can be made; every reported problem
/// names a line of the input.
pub fn vaulttab(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let lines = text.lines().count();
    let t = Vaulttab::parse(Path::new("fuzz"), &text);
    for e in &t.entries {
        assert_eq!(
            DeviceSpec::parse(&e.device_text).as_ref().ok(),
            Some(&e.device)
        );
        assert_eq!(KeySpec::parse(&e.key_text).as_ref().ok(), Some(&e.key));
        let (o, _) = Options::parse(&e.options_text).expect("entry options re-parse");
        assert_eq!(o, e.options);
        let filtered = generator::filter_options(&e.options_text);
        let (f, _) = Options::parse(&filtered).expect("filtered options parse");
        assert_eq!(f.device_timeout, None);
        assert_eq!(
            Options {
                device_timeout: None,
                ..f
            },
            Options {
                device_timeout: None,
                ..o
            }
        );
        let _ = e.device.udev_node();
        let p = generator::plan(e, Path::new("fuzz"));
        assert_eq!(p.unit, generator::unit_name(&e.name));
        assert!(e.location.line >= 1 && e.location.line <= lines);
    }
    for e in &t.errors {
        let l = e.location.as_ref().expect("table errors have a location");
        assert!(l.line >= 1 && l.line <= lines);
        let _ = e.to_string();
    }
    for w in &t.warnings {
        let _ = w.to_string();
    }
}
