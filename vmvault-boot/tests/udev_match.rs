//! `vmvault-udev` as udev runs it: the device's properties in the environment, the table
//! from `VMVAULT_VAULTTAB`; and `--attach`, which starts the attach command detached.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

const BIN: &str = env!("CARGO_BIN_EXE_vmvault-udev");

const TABLE: &str = "\
byuuid   UUID=0B7E4D3A-1C2D-4E5F-8A9B-0C1D2E3F4A5B /etc/k luks
bypart   PARTUUID=abcd-01      none
bylabel  LABEL=data            /k2:UUID=1234 discard
byplabel PARTLABEL=crypt       none
bypath   /dev/disk/by-path/p9  /k3
byname   /dev/vdz7             /k4 noauto
broken   /dev/vdq1             none tries=x
";

/// udev properties given to the helper.
type Props<'a> = &'a [(&'a str, &'a str)];

fn udev(tab: &Path, args: &[&str], props: &[(&str, &str)]) -> Output {
    let mut c = Command::new(BIN);
    c.args(args).env_clear().env("VMVAULT_VAULTTAB", tab);
    for (k, v) in props {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn table() -> tempfile::TempDir {
    let d = tempfile::tempdir().unwrap();
    std::fs::write(d.path().join("vaulttab"), TABLE).unwrap();
    d
}

#[test]
fn prints_the_entry_for_a_matching_device() {
    let d = table();
    let tab = d.path().join("vaulttab");
    let cases: [(Props, Option<&str>); 8] = [
        (
            &[("ID_FS_UUID", "0b7e4d3a-1c2d-4e5f-8a9b-0c1d2e3f4a5b")],
            Some("byuuid"),
        ),
        (&[("ID_PART_ENTRY_UUID", "ABCD-01")], Some("bypart")),
        (&[("ID_FS_LABEL", "data")], Some("bylabel")),
        (&[("ID_PART_ENTRY_NAME", "crypt")], Some("byplabel")),
        (
            &[("DEVLINKS", "/dev/disk/by-id/x /dev/disk/by-path/p9")],
            Some("bypath"),
        ),
        // noauto entries are not attached on hotplug.
        (&[("DEVNAME", "/dev/vdz7")], None),
        (
            &[
                ("ID_FS_UUID", "ffffffff-1c2d-4e5f-8a9b-0c1d2e3f4a5b"),
                ("ID_FS_LABEL", "other"),
            ],
            None,
        ),
        (&[], None),
    ];
    for (props, want) in cases {
        let o = udev(&tab, &["/dev/vdx1"], props);
        assert!(o.status.success(), "{o:?}");
        let out = String::from_utf8(o.stdout).unwrap();
        match want {
            Some(n) => assert_eq!(
                out,
                format!("VMVAULT_TAB_NAME={n}\nVMVAULT_TAB_UNIT=vmvault@{n}.service\n"),
                "{props:?}"
            ),
            None => assert_eq!(out, "", "{props:?}"),
        }
        // The broken line is reported (udev logs stderr) and does not stop the others.
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(":7:37: invalid number 'x' for option tries="),
            "{err}"
        );
    }
    // DEVNAME defaults to the argument.
    let o = udev(&tab, &["/dev/disk/by-path/p9"], &[]);
    assert!(String::from_utf8_lossy(&o.stdout).contains("VMVAULT_TAB_NAME=bypath"));
}

#[test]
fn missing_table_or_bad_usage() {
    let d = tempfile::tempdir().unwrap();
    let o = udev(
        &d.path().join("none"),
        &["/dev/vdx1"],
        &[("ID_FS_LABEL", "data")],
    );
    assert!(o.status.success() && o.stdout.is_empty() && o.stderr.is_empty());
    let o = udev(&d.path().join("none"), &[], &[]);
    assert_eq!(o.status.code(), Some(2));
}

/// `--attach` runs the attach command (here `/bin/echo`, a real program standing in for
/// vaultsetup so that the test needs no vault) in its own session, with its output in
/// the log directory, and returns before it finishes.
#[test]
fn attach_starts_key_file_entries_detached() {
    let d = table();
    let tab = d.path().join("vaulttab");
    let run = d.path().join("run");
    let o = Command::new(BIN)
        .args(["--attach", "/dev/vdb1"])
        .env_clear()
        .env("VMVAULT_VAULTTAB", &tab)
        .env("VMVAULT_VAULTSETUP", "/bin/echo")
        .env("VMVAULT_RUN_DIR", &run)
        .env("ID_FS_LABEL", "data")
        .output()
        .unwrap();
    assert!(o.status.success(), "{o:?}");
    assert!(String::from_utf8_lossy(&o.stderr).contains("attaching bylabel on /dev/vdb1"));
    let log = run.join("attach-bylabel.log");
    let start = Instant::now();
    let text = loop {
        let t = std::fs::read_to_string(&log).unwrap_or_default();
        if !t.is_empty() || start.elapsed() > Duration::from_secs(10) {
            break t;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(text, "attach bylabel /dev/vdb1 /k2:UUID=1234 discard\n");

    // A passphrase entry is not attached from udev (nothing to prompt on).
    let o = Command::new(BIN)
        .args(["--attach", "/dev/vdc1"])
        .env_clear()
        .env("VMVAULT_VAULTTAB", &tab)
        .env("VMVAULT_VAULTSETUP", "/bin/echo")
        .env("VMVAULT_RUN_DIR", &run)
        .env("ID_PART_ENTRY_UUID", "abcd-01")
        .output()
        .unwrap();
    assert!(o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr)
        .contains("bypart needs a passphrase; not attaching from udev"));
    assert!(!run.join("attach-bypart.log").exists());
}

/// The rule file is syntactically what udev expects: every line is a comment, blank, or
/// comma-separated KEY op "value" pairs, and it calls the installed helper path.
#[test]
fn rule_file_calls_the_helper() {
    let rules = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../udev/60-vmvault-vaulttab.rules"
    ))
    .unwrap();
    assert!(rules.contains("IMPORT{program}=\"/usr/lib/vmvault/vmvault-udev $devnode\""));
    assert!(rules.contains("ENV{SYSTEMD_WANTS}+=\"$env{VMVAULT_TAB_UNIT}\""));
    assert!(rules.contains("RUN+=\"/usr/lib/vmvault/vmvault-udev --attach $devnode\""));
    if let Ok(o) = Command::new("udevadm").arg("verify").arg("--help").output() {
        if o.status.success() {
            let v = Command::new("udevadm")
                .args([
                    "verify",
                    concat!(
                        env!("CARGO_MANIFEST_DIR"),
                        "/../udev/60-vmvault-vaulttab.rules"
                    ),
                ])
                .output()
                .unwrap();
            assert!(v.status.success(), "{v:?}");
        }
    }
}
