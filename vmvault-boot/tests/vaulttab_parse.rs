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

fn opts(text: &str) -> Options {
    let (o, w) = Options::parse(text).unwrap();
    assert!(w.is_empty(), "{w:?}");
    o
}

fn err(text: &str) -> String {
    let t = parse(text);
    assert_eq!(t.errors.len(), 1, "{text:?}: {:?}", t.entries);
    t.errors[0].to_string()
}

#[test]
fn fields_comments_and_blank_lines() {
    let t = parse(
        "# a comment\n\n   \t\n  # indented comment\nroot UUID=abc none luks\nhome /dev/sda3\n\tswap\t/dev/sdb1\t/k\tdiscard  \n",
    );
    assert!(t.errors.is_empty(), "{:?}", t.errors);
    assert!(t.warnings.is_empty());
    let names: Vec<_> = t.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["root", "home", "swap"]);
    assert_eq!(t.entries[0].location.line, 5);
    assert_eq!(t.entries[0].location.to_string(), "/etc/vaulttab:5");
    assert_eq!(t.entries[1].key, KeySpec::Ask);
    assert_eq!(t.entries[1].key_text, "none");
    assert_eq!(t.entries[1].options, Options::default());
    assert_eq!(t.entries[1].options_text, "none");
    assert_eq!(t.entries[2].location.line, 7);
    assert!(t.entries[2].options.discard);
    assert_eq!(t.get("home").unwrap().device_text, "/dev/sda3");
}

#[test]
fn no_quoting_and_backslash_is_literal() {
    // crypttab has no quoting: quotes and backslashes are part of the field.
    let e = one("v\\x /dev/disk/by-id/a\\x20b /keys/k\"1 none\n");
    assert_eq!(e.name, "v\\x");
    assert_eq!(
        e.device,
        DeviceSpec::Path(PathBuf::from("/dev/disk/by-id/a\\x20b"))
    );
    assert_eq!(e.key, KeySpec::Path(PathBuf::from("/keys/k\"1")));
    // A quoted value with a space is two fields (and so an error here: 5 fields).
    assert!(err("v \"/dev/a b\" none luks x\n").contains("found 6"));
    // `#` after the first field is not a comment: it is an (unknown) option.
    let t = parse("v /dev/a none #x\n");
    assert_eq!(t.entries.len(), 1);
    assert_eq!(t.warnings[0].option, "#x");
}

#[test]
fn every_device_spec() {
    let cases = [
        (
            "/dev/sda2",
            DeviceSpec::Path("/dev/sda2".into()),
            "/dev/sda2",
        ),
        (
            "/srv/disk.img",
            DeviceSpec::Path("/srv/disk.img".into()),
            "/srv/disk.img",
        ),
        (
            "UUID=0b7e4d3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
            DeviceSpec::Uuid("0b7e4d3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into()),
            "/dev/disk/by-uuid/0b7e4d3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b",
        ),
        (
            "PARTUUID=abcd-01",
            DeviceSpec::PartUuid("abcd-01".into()),
            "/dev/disk/by-partuuid/abcd-01",
        ),
        (
            "LABEL=data/1",
            DeviceSpec::Label("data/1".into()),
            "/dev/disk/by-label/data\\x2f1",
        ),
        (
            "LABEL=\"quoted\"",
            DeviceSpec::Label("quoted".into()),
            "/dev/disk/by-label/quoted",
        ),
        (
            "PARTLABEL=crypt",
            DeviceSpec::PartLabel("crypt".into()),
            "/dev/disk/by-partlabel/crypt",
        ),
    ];
    for (text, spec, node) in cases {
        let e = one(&format!("v {text}\n"));
        assert_eq!(e.device, spec, "{text}");
        assert_eq!(e.device.udev_node(), PathBuf::from(node), "{text}");
        assert_eq!(DeviceSpec::parse(&spec.to_string()).unwrap(), spec);
    }
    assert!(err("v UUID=\n").contains("invalid device 'UUID='"));
    assert!(err("v LABEL=\"\"\n").contains("invalid device"));
}

#[test]
fn resolve_names_the_missing_node() {
    let e = DeviceSpec::Uuid("00000000-dead-beef-0000-000000000000".into())
        .resolve()
        .unwrap_err();
    let m = e.to_string();
    assert!(
        m.contains("UUID=00000000-dead-beef-0000-000000000000"),
        "{m}"
    );
    assert!(
        m.contains("/dev/disk/by-uuid/00000000-dead-beef-0000-000000000000"),
        "{m}"
    );
    assert!(std::error::Error::source(&e).is_some());
    assert_eq!(
        DeviceSpec::Path("/dev/null".into()).resolve().unwrap(),
        PathBuf::from("/dev/null")
    );
}

#[test]
fn matches_udev_properties() {
    let props = |k: &str| -> Option<String> {
        match k {
            "ID_FS_UUID" => Some("0b7e4d3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b".into()),
            "ID_PART_ENTRY_UUID" => Some("abcd-01".into()),
            "ID_FS_LABEL" => Some("data".into()),
            "ID_PART_ENTRY_NAME" => Some("crypt".into()),
            "DEVNAME" => Some("/dev/vdb1".into()),
            "DEVLINKS" => Some("/dev/disk/by-id/virtio-x-part1 /dev/disk/by-path/p1".into()),
            _ => None,
        }
    };
    for yes in [
        "UUID=0B7E4D3A-1C2D-4E5F-8A9B-0C1D2E3F4A5B",
        "PARTUUID=ABCD-01",
        "LABEL=data",
        "PARTLABEL=crypt",
        "/dev/vdb1",
        "/dev/disk/by-path/p1",
    ] {
        assert!(DeviceSpec::parse(yes).unwrap().matches(&props), "{yes}");
    }
    for no in [
        "UUID=0b7e",
        "LABEL=Data",
        "PARTLABEL=other",
        "/dev/vdb",
        "/dev/disk/by-path/p",
    ] {
        assert!(!DeviceSpec::parse(no).unwrap().matches(&props), "{no}");
    }
}

#[test]
fn every_key_file_form() {
    for ask in ["none", "-"] {
        assert_eq!(one(&format!("v /dev/a {ask}\n")).key, KeySpec::Ask);
    }
    assert_eq!(one("v /dev/a\n").key, KeySpec::Ask);
    assert_eq!(
        one("v /dev/a /etc/k.key\n").key,
        KeySpec::Path("/etc/k.key".into())
    );
    assert_eq!(
        one("v /dev/a /keys/k:UUID=1234\n").key,
        KeySpec::PathOnDevice {
            path: "/keys/k".into(),
            device: DeviceSpec::Uuid("1234".into())
        }
    );
    assert_eq!(
        one("v /dev/a /k:/dev/sdc1\n").key,
        KeySpec::PathOnDevice {
            path: "/k".into(),
            device: DeviceSpec::Path("/dev/sdc1".into())
        }
    );
    // A colon not followed by a device is part of the file name (systemd's rule).
    assert_eq!(
        one("v /dev/a /keys/a:b\n").key,
        KeySpec::Path("/keys/a:b".into())
    );
    let e = one("v /dev/a /keys/k:LABEL=usb\n");
    assert_eq!(e.key_text, "/keys/k:LABEL=usb");
    assert_eq!(e.key.to_string(), "/keys/k:LABEL=usb");
    assert!(err("v /dev/a relative.key\n")
        .contains("/etc/vaulttab:1:10: invalid key file 'relative.key'"));
    assert!(err("v /dev/a k:UUID=1\n").contains("invalid key file"));
}

#[test]
fn supported_options() {
    let o = opts("luks,discard,readonly,tries=5,timeout=1min 30s");
    // (Whitespace splits fields in a table; Options::parse takes any text.)
    assert!(o.luks && o.discard && o.readonly);
    assert_eq!(o.tries, Some(5));
    assert_eq!(o.timeout, Some(Duration::from_secs(90)));
    assert!(opts("read-only").readonly);
    assert_eq!(opts("").tries_or_default(), DEFAULT_TRIES);
    assert_eq!(opts("tries=0").tries_or_default(), 0);
    assert_eq!(opts("timeout=0").timeout, None);
    let o = opts("keyfile-offset=1024,keyfile-size=64,key-slot=2,header=/boot/h.img");
    assert_eq!(o.keyfile_offset, Some(1024));
    assert_eq!(o.keyfile_size, Some(64));
    assert_eq!(o.key_slot, Some(2));
    assert_eq!(o.header, Some(DeviceSpec::Path("/boot/h.img".into())));
    assert_eq!(opts("keyslot=3").key_slot, Some(3));
    assert_eq!(
        opts("header=UUID=5678").header,
        Some(DeviceSpec::Uuid("5678".into()))
    );
    let o = opts("nofail,noauto,_netdev,x-initrd.attach,x-systemd.device-timeout=10s");
    assert!(o.nofail && o.noauto && o.netdev && o.initrd_attach);
    assert_eq!(o.device_timeout, Some(Duration::from_secs(10)));
    let o = opts("backend=kvm,frontend=ublk");
    assert_eq!((o.backend, o.frontend), (Backend::Kvm, Frontend::Ublk));
    let o = opts("backend=soft,frontend=fuse");
    assert_eq!((o.backend, o.frontend), (Backend::Soft, Frontend::Fuse));
    assert_eq!(opts("backend=auto,frontend=auto"), Options::default());
    for none in ["", "-", "none"] {
        assert_eq!(opts(none), Options::default());
    }
    // Empty items are skipped, `\,` is a literal comma inside a value.
    assert!(opts(",discard,,").discard);
}

#[test]
fn unknown_and_unsupported_options_warn_and_the_line_is_used() {
    let t = parse(
        "v /dev/a none discard,frobnicate,tpm2-device=auto,cipher=aes-xts-plain64,same-cpu-crypt\n",
    );
    assert!(t.errors.is_empty());
    assert_eq!(t.entries.len(), 1);
    assert!(t.entries[0].options.discard);
    let w: Vec<String> = t.warnings.iter().map(|w| w.to_string()).collect();
    assert_eq!(
        w,
        [
            "/etc/vaulttab:1:23: unknown option 'frobnicate', ignoring",
            "/etc/vaulttab:1:34: option 'tpm2-device=auto' is not supported by vmvault, ignoring",
            "/etc/vaulttab:1:51: option 'cipher=aes-xts-plain64' applies to plain dm-crypt only; a LUKS header sets it, ignoring",
            "/etc/vaulttab:1:74: option 'same-cpu-crypt' is not supported by vmvault, ignoring",
        ]
    );
    assert_eq!(t.warnings[0].kind, WarningKind::UnknownOption);
    assert_eq!(t.warnings[1].kind, WarningKind::Unsupported);
    assert_eq!(t.warnings[2].kind, WarningKind::PlainOnly);
    let (_, w) = Options::parse("pkcs11-uri=auto,fido2-device=auto,x-systemd.foo").unwrap();
    assert!(w
        .iter()
        .all(|w| w.kind == WarningKind::Unsupported && w.location.is_none()));
    assert!(w[0]
        .to_string()
        .starts_with("option 'pkcs11-uri=auto' is not supported by vmvault"));
}

#[test]
fn non_luks_types_and_formatting_are_errors() {
    for o in [
        "plain",
        "tcrypt",
        "tcrypt-veracrypt",
        "bitlk",
        "veracrypt-pim=1",
        "fvault2",
    ] {
        let m = err(&format!("v /dev/a none luks,{o}\n"));
        assert!(m.starts_with("/etc/vaulttab:1:20: "), "{m}");
        assert!(m.contains("LUKS1/LUKS2 only"), "{m}");
    }
    for o in ["swap", "tmp", "tmp=ext4"] {
        let m = err(&format!("v /dev/a none {o}\n"));
        assert!(m.contains("formats the device"), "{m}");
    }
    assert!(err("v /dev/a none header=/h:UUID=12\n").contains("not supported by vmvault"));
}

#[test]
fn bad_values_name_file_line_and_column() {
    let cases = [
        (
            "v /dev/a none tries=x\n",
            "/etc/vaulttab:1:15: invalid number 'x' for option tries=",
        ),
        (
            "v /dev/a none discard,tries=-1\n",
            "/etc/vaulttab:1:23: invalid number '-1'",
        ),
        (
            "v /dev/a none tries\n",
            "/etc/vaulttab:1:15: option 'tries' needs a value",
        ),
        (
            "v /dev/a none discard=yes\n",
            "/etc/vaulttab:1:15: option 'discard' takes no value",
        ),
        (
            "v /dev/a none timeout=5parsecs\n",
            "invalid time span '5parsecs' for option timeout=",
        ),
        (
            "v /dev/a none x-systemd.device-timeout=\n",
            "invalid time span ''",
        ),
        (
            "v /dev/a none keyfile-size=1k\n",
            "invalid number '1k' for option keyfile-size=",
        ),
        (
            "v /dev/a none backend=qemu\n",
            "invalid value 'qemu' for option backend= (expected kvm, soft or auto)",
        ),
        (
            "v /dev/a none frontend=nbd\n",
            "expected fuse, ublk or auto",
        ),
        ("v /dev/a none header=\n", "invalid header ''"),
    ];
    for (line, want) in cases {
        let m = err(line);
        assert!(m.contains(want), "{line:?}: {m}");
    }
    // The numeric cause is kept as the source, not pasted into the message.
    let t = parse("v /dev/a none tries=x\n");
    let src = std::error::Error::source(&t.errors[0]).expect("source");
    assert_eq!(src.to_string(), "invalid digit found in string");
    let e = Options::parse("timeout=1x").unwrap_err();
    assert!(e.location.is_none());
    assert_eq!(e.to_string(), "invalid time span '1x' for option timeout=");
    assert_eq!(
        std::error::Error::source(&e).unwrap().to_string(),
        "unknown time unit 'x' (use us, ms, s, min, h, d, w)"
    );
}

#[test]
fn line_errors_do_not_stop_other_lines() {
    let t = parse(
        "good1 /dev/a\nlonely\nfive /dev/a none luks extra\nbad/name /dev/a\ngood2 UUID=1 /k\ngood1 /dev/b\n..  /dev/a\n",
    );
    let names: Vec<_> = t.entries.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["good1", "good2"]);
    let e: Vec<String> = t.errors.iter().map(|e| e.to_string()).collect();
    assert_eq!(
        e,
        [
            "/etc/vaulttab:2:1: expected 2 to 4 fields (name device [keyfile [options]]), found 1",
            "/etc/vaulttab:3:23: expected 2 to 4 fields (name device [keyfile [options]]), found 5",
            "/etc/vaulttab:4:1: invalid volume name 'bad/name' (it becomes /dev/mapper/NAME: no '/', no control characters, at most 127 bytes)",
            "/etc/vaulttab:6:1: volume name 'good1' already used on line 1",
            "/etc/vaulttab:7:1: invalid volume name '..' (it becomes /dev/mapper/NAME: no '/', no control characters, at most 127 bytes)",
        ]
    );
    assert!(matches!(*t.errors[0].kind, ParseErrorKind::FieldCount(1)));
    assert!(!name_is_valid(&"x".repeat(128)));
    assert!(name_is_valid(&"x".repeat(127)));
}

#[test]
fn read_reports_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("vaulttab");
    let e = Vaulttab::read(&p).unwrap_err();
    assert_eq!(e.source.kind(), std::io::ErrorKind::NotFound);
    assert!(e.to_string().contains(&*p.to_string_lossy()));
    std::fs::write(&p, "a /dev/a none tries=x\nb /dev/b\n").unwrap();
    let t = Vaulttab::read(&p).unwrap();
    assert_eq!(t.entries.len(), 1);
    assert!(t.errors[0]
        .to_string()
        .starts_with(&format!("{}:1:15:", p.display())));
}
