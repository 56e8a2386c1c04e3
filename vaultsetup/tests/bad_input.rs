//! Bad input: each case gets a clear message, cryptsetup's exit code, and the image is
//! byte-for-byte unchanged afterwards.

mod common;
use common::*;
use std::path::{Path, PathBuf};

const PASS: &[u8] = b"good passphrase";

struct Case {
    _dir: tempfile::TempDir,
    img: PathBuf,
}

fn luks2(test: &str, kdf: &str) -> Option<Case> {
    if !need("cryptsetup", test) {
        return None;
    }
    let d = tmp();
    let mut args = vec!["--type".to_string(), "luks2".into()];
    if kdf == "pbkdf2" {
        args.extend(["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"].map(String::from));
    } else {
        args.extend(argon(kdf));
    }
    let a: Vec<&str> = args.iter().map(|s| s.as_str()).collect();
    let img = luks_format(d.path(), "img", PASS, &a);
    Some(Case { _dir: d, img })
}

fn luks1(test: &str) -> Option<Case> {
    if !need("cryptsetup", test) {
        return None;
    }
    let d = tmp();
    let img = luks_format(
        d.path(),
        "img",
        PASS,
        &["--type", "luks1", "--pbkdf-force-iterations", "1000"],
    );
    Some(Case { _dir: d, img })
}

/// Runs `open --test-passphrase` with PASS and checks code, message and checksum.
fn expect(img: &Path, pass: &[u8], code: i32, msg: &str) -> String {
    let before = sha256_file(img);
    let mut input = pass.to_vec();
    input.push(b'\n');
    let (rc, out, err) = vs(
        &["open", "--test-passphrase", img.to_str().unwrap()],
        Some(&input),
    );
    assert_eq!(rc, code, "exit code; stdout {out:?} stderr {err:?}");
    assert!(err.contains(msg), "expected {msg:?} in stderr: {err:?}");
    assert_eq!(sha256_file(img), before, "image changed");
    err
}

#[test]
fn wrong_passphrase() {
    for c in [
        luks1("wrong passphrase luks1"),
        luks2("wrong passphrase luks2", "argon2id"),
    ]
    .into_iter()
    .flatten()
    {
        expect(
            &c.img,
            b"not it",
            2,
            "No key available with this passphrase.",
        );
        let (rc, _, err) = vs(
            &["-v", "open", "--test-passphrase", c.img.to_str().unwrap()],
            Some(b"nope\n"),
        );
        assert_eq!(rc, 2);
        assert!(
            err.contains("Command failed with code -2 (no permission or bad passphrase)."),
            "{err}"
        );
    }
}

#[test]
fn not_luks() {
    // cryptsetup's own code for "not a LUKS device" is 1 (-EINVAL), checked against it
    // below when it is installed; 4 is for a device that does not exist / cannot open.
    let d = tmp();
    let zero = d.path().join("zero.img");
    sparse_image(&zero, 2);
    let rnd = d.path().join("random.img");
    let bytes: Vec<u8> = (0..1_000_000u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8)
        .collect();
    std::fs::write(&rnd, bytes).unwrap();
    let empty = d.path().join("empty.img");
    std::fs::write(&empty, b"").unwrap();
    for img in [&zero, &rnd, &empty] {
        expect(img, PASS, 1, "is not a valid LUKS device.");
        let before = sha256_file(img);
        let p = img.to_str().unwrap();
        assert_eq!(vs(&["isLuks", p], None).0, 1);
        let (rc, _, err) = vs(&["luksDump", p], None);
        assert_eq!(rc, 1, "{err}");
        assert!(err.contains("is not a valid LUKS device."), "{err}");
        assert_eq!(sha256_file(img), before);
        if need("cryptsetup", "not_luks peer") {
            let o = run_with_input(
                std::process::Command::new("cryptsetup").args(["open", "--test-passphrase", p]),
                Some(b"x\n"),
            );
            assert_eq!(
                o.status.code(),
                Some(1),
                "cryptsetup's code for a non-LUKS device"
            );
        }
    }
    let missing = d.path().join("missing.img");
    let (rc, _, err) = vs(
        &["open", "--test-passphrase", missing.to_str().unwrap()],
        Some(b"x\n"),
    );
    assert_eq!(rc, 4, "{err}");
    assert!(err.contains("does not exist or access denied."), "{err}");
    let (rc, _, err) = vs(&["isLuks", d.path().to_str().unwrap()], None);
    assert_eq!(rc, 4, "directory: {err}");
}

#[test]
fn corrupted_primary_opens_from_secondary() {
    let Some(c) = luks2("corrupted primary", "argon2id") else {
        return;
    };
    let want = cryptsetup_volume_key(c._dir.path(), &c.img, PASS);
    // A flipped byte inside the primary JSON area: checksum mismatch.
    patch(&c.img, 4096 + 20, b"X");
    let err = expect(
        &c.img,
        PASS,
        0,
        "Primary LUKS2 header is corrupted (checksum mismatch)",
    );
    assert!(err.contains("using the secondary header"), "{err}");
    assert_eq!(our_volume_key(&c.img, PASS, None).1, want);
    // The primary wiped entirely (no magic): still found through the secondary.
    patch(&c.img, 0, &[0u8; 4096]);
    let err = expect(
        &c.img,
        PASS,
        0,
        "Primary LUKS2 header is corrupted (no LUKS2 primary header magic)",
    );
    assert!(err.contains("cryptsetup repair"), "{err}");
    assert_eq!(our_volume_key(&c.img, PASS, None).1, want);
    let (rc, _, _) = vs(&["isLuks", c.img.to_str().unwrap()], None);
    assert_eq!(rc, 0);
    let (rc, out, _) = vs(&["luksDump", c.img.to_str().unwrap()], None);
    assert_eq!(rc, 0);
    assert!(out.contains("Version:       \t2"));
}

#[test]
fn corrupted_secondary_noted() {
    let Some(c) = luks2("corrupted secondary", "pbkdf2") else {
        return;
    };
    patch(&c.img, 16384 + 4096 + 5, b"Z");
    expect(
        &c.img,
        PASS,
        0,
        "Secondary LUKS2 header is corrupted (checksum mismatch)",
    );
}

#[test]
fn newer_seqid_wins() {
    let Some(c) = luks2("seqid", "pbkdf2") else {
        return;
    };
    // Make the secondary newer (seqid + 1) with a different label; it must be chosen.
    let mut data = std::fs::read(&c.img).unwrap();
    let s = 16384;
    let seq = u64::from_be_bytes(data[s + 16..s + 24].try_into().unwrap()) + 1;
    data[s + 16..s + 24].copy_from_slice(&seq.to_be_bytes());
    data[s + 24..s + 30].copy_from_slice(b"newer\0");
    fix_checksum(&mut data[s..s + 16384]);
    std::fs::write(&c.img, &data).unwrap();
    let before = sha256_file(&c.img);
    let (rc, out, err) = vs(&["luksDump", c.img.to_str().unwrap()], None);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("Label:         \tnewer"), "{out}");
    assert!(err.contains("headers disagree"), "{err}");
    assert_eq!(sha256_file(&c.img), before);
}

#[test]
fn both_headers_corrupted() {
    let Some(c) = luks2("both corrupted", "pbkdf2") else {
        return;
    };
    patch(&c.img, 4096 + 20, b"X");
    patch(&c.img, 16384 + 4096 + 20, b"X");
    let err = expect(
        &c.img,
        PASS,
        1,
        "is not a valid LUKS device: both LUKS2 headers are unusable",
    );
    assert!(
        err.contains("primary: checksum mismatch; secondary: checksum mismatch"),
        "{err}"
    );
    assert_eq!(vs(&["isLuks", c.img.to_str().unwrap()], None).0, 1);
}

#[test]
fn truncated_images() {
    if let Some(c) = luks1("truncated luks1") {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.img)
            .unwrap();
        f.set_len(300).unwrap();
        expect(&c.img, PASS, 1, "is not a valid LUKS device.");
    }
    if let Some(c) = luks2("truncated luks2", "pbkdf2") {
        // Cut inside the secondary header.
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.img)
            .unwrap();
        f.set_len(20_000).unwrap();
        let err = expect(
            &c.img,
            PASS,
            1,
            "Keyslot 0 area [32768, +256000) is cut short: the device has only 20000 bytes",
        );
        assert!(
            err.contains("Secondary LUKS2 header is corrupted (device too short: the header needs [16384, +4096) but the device has 20000 bytes)"),
            "{err}"
        );
        f.set_len(1000).unwrap();
        expect(&c.img, PASS, 1, "is not a valid LUKS device");
    }
}

#[test]
fn keyslot_area_cut_short() {
    if let Some(c) = luks2("area cut short luks2", "argon2id") {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.img)
            .unwrap();
        f.set_len(32768 + 100_000).unwrap();
        expect(
            &c.img,
            PASS,
            1,
            "Keyslot 0 area [32768, +256000) is cut short: the device has only 132768 bytes",
        );
    }
    if let Some(c) = luks1("area cut short luks1") {
        let f = std::fs::OpenOptions::new()
            .write(true)
            .open(&c.img)
            .unwrap();
        f.set_len(8 * 512 + 1000).unwrap();
        expect(
            &c.img,
            PASS,
            1,
            "Keyslot 0 area [4096, +256000) is cut short",
        );
    }
}

fn json_case(
    test: &str,
    kdf: &str,
    edit: impl Fn(&mut serde_json::Value),
    text: impl Fn(String) -> String,
    code: i32,
    msg: &str,
) {
    let Some(c) = luks2(test, kdf) else { return };
    rewrite_luks2_json(&c.img, edit, text);
    expect(&c.img, PASS, code, msg);
    // Metadata problems stop luksDump too; KDF costs are only refused when unlocking.
    let (rc, _, err) = vs(&["luksDump", c.img.to_str().unwrap()], None);
    let metadata_problem = !msg.contains("Keyslot 0:");
    assert_eq!(rc == 1, metadata_problem, "luksDump: {err}");
}

fn id(s: String) -> String {
    s
}

#[test]
fn absurd_json_sizes() {
    json_case(
        "json_size",
        "pbkdf2",
        |v| v["config"]["json_size"] = "18446744073709551615".into(),
        id,
        1,
        "config.json_size 18446744073709551615 does not match the header's JSON area (12288 bytes)",
    );
    json_case(
        "json_size overflow",
        "pbkdf2",
        |v| v["config"]["json_size"] = "99999999999999999999999".into(),
        id,
        1,
        "JSON metadata of the primary header is invalid",
    );
    json_case(
        "keyslots_size",
        "pbkdf2",
        |v| v["config"]["keyslots_size"] = "18446744073709547520".into(),
        id,
        1,
        "config.keyslots_size 18446744073709547520 is not a multiple of 4096 or overflows",
    );
    json_case(
        "area size",
        "pbkdf2",
        |v| v["keyslots"]["0"]["area"]["size"] = "18446744073709551615".into(),
        id,
        1,
        "keyslot 0: area [32768, +18446744073709551615) is outside the keyslots area",
    );
    json_case(
        "area offset",
        "pbkdf2",
        |v| v["keyslots"]["0"]["area"]["offset"] = "18446744073709551000".into(),
        id,
        1,
        "is outside the keyslots area",
    );
    json_case(
        "key_size",
        "pbkdf2",
        |v| v["keyslots"]["0"]["key_size"] = 4_000_000_000u32.into(),
        id,
        1,
        "keyslot 0: key_size 4000000000 outside 1..=512",
    );
    json_case(
        "stripes",
        "pbkdf2",
        |v| v["keyslots"]["0"]["af"]["stripes"] = u32::MAX.into(),
        id,
        1,
        "keyslot 0: af.stripes 4294967295 outside 1..=65536",
    );
    json_case(
        "negative",
        "pbkdf2",
        |v| v["keyslots"]["0"]["key_size"] = (-64).into(),
        id,
        1,
        "JSON metadata of the primary header is invalid",
    );
    json_case(
        "keyslot id",
        "pbkdf2",
        |v| {
            let ks = v["keyslots"]["0"].clone();
            v["keyslots"]["4294967296"] = ks;
        },
        id,
        1,
        "keyslot id \"4294967296\" is not a number 0..=31",
    );
    json_case(
        "deep nesting",
        "pbkdf2",
        |_| {},
        |s| {
            let deep = format!("{}{}", "[".repeat(5000), "]".repeat(5000));
            s.replacen(
                "\"tokens\":{}",
                &format!("\"tokens\":{{\"0\":{{\"type\":\"x\",\"keyslots\":[],\"d\":{deep}}}}}"),
                1,
            )
        },
        1,
        "recursion limit exceeded",
    );
}

#[test]
fn absurd_binary_header_size() {
    let Some(c) = luks2("hdr_size", "pbkdf2") else {
        return;
    };
    let mut data = std::fs::read(&c.img).unwrap();
    for off in [0usize, 16384] {
        data[off + 8..off + 16].copy_from_slice(&(1u64 << 62).to_be_bytes());
        fix_checksum(&mut data[off..off + 16384]);
    }
    std::fs::write(&c.img, &data).unwrap();
    expect(
        &c.img,
        PASS,
        1,
        "header size 4611686018427387904 is not a power of two between 16 KiB and 4 MiB",
    );
}

#[test]
fn absurd_kdf_costs() {
    json_case(
        "argon2 memory",
        "argon2id",
        |v| v["keyslots"]["0"]["kdf"]["memory"] = u32::MAX.into(),
        id,
        3,
        "Keyslot 0: Argon2 memory cost 4294967295 KiB is above the limit",
    );
    json_case(
        "argon2 time",
        "argon2i",
        |v| v["keyslots"]["0"]["kdf"]["time"] = u32::MAX.into(),
        id,
        1,
        "Keyslot 0: Argon2 time cost 4294967295 is above the limit of 1000",
    );
    json_case(
        "argon2 cpus",
        "argon2id",
        |v| v["keyslots"]["0"]["kdf"]["cpus"] = 100_000.into(),
        id,
        1,
        "Keyslot 0: Argon2 parallel cost 100000 is outside 1..=16",
    );
    json_case(
        "pbkdf2 iterations",
        "pbkdf2",
        |v| v["keyslots"]["0"]["kdf"]["iterations"] = u32::MAX.into(),
        id,
        1,
        "Keyslot 0: PBKDF2 iteration count 4294967295 is above the limit of 100000000",
    );
    json_case(
        "digest iterations",
        "pbkdf2",
        |v| v["digests"]["0"]["iterations"] = u32::MAX.into(),
        id,
        1,
        "Keyslot 0: PBKDF2 iteration count 4294967295 is above the limit",
    );
    json_case(
        "cost too big for u32",
        "pbkdf2",
        |v| v["keyslots"]["0"]["kdf"]["iterations"] = u64::MAX.into(),
        id,
        1,
        "JSON metadata of the primary header is invalid",
    );
    if let Some(c) = luks1("luks1 iterations") {
        // Keyslot 0 iterations field (big endian) at 208 + 4; LUKS1 has no checksum.
        patch(&c.img, 212, &u32::MAX.to_be_bytes());
        expect(
            &c.img,
            PASS,
            1,
            "Keyslot 0: PBKDF2 iteration count 4294967295 is above the limit",
        );
        patch(&c.img, 164, &u32::MAX.to_be_bytes());
        expect(
            &c.img,
            PASS,
            1,
            "Volume key digest: PBKDF2 iteration count 4294967295 is above the limit",
        );
    }
    if let Some(c) = luks1("luks1 key bytes") {
        patch(&c.img, 108, &u32::MAX.to_be_bytes());
        expect(
            &c.img,
            PASS,
            1,
            "LUKS1 header is invalid: volume key size 4294967295 bytes is outside 1..=512",
        );
    }
}

/// `open --test-passphrase` of `img` answers `code` with `msg`, the image unchanged; so
/// does cryptsetup (exit code only), when installed.
fn expect_like_cryptsetup(img: &Path, code: i32, msg: &str) {
    expect(img, PASS, code, msg);
    let mut input = PASS.to_vec();
    input.push(b'\n');
    let o = run_with_input(
        std::process::Command::new("cryptsetup").args([
            "open",
            "--test-passphrase",
            img.to_str().unwrap(),
        ]),
        Some(&input),
    );
    assert_eq!(o.status.code(), Some(code), "cryptsetup's exit code");
}

#[test]
fn keyslot_areas_overlapping_header_or_each_other() {
    // LUKS1: key material in the header's second sector (the header is 592 bytes).
    if let Some(c) = luks1("luks1 area in header") {
        // Keyslot 0's key material offset (big endian) at 208 + 40.
        patch(&c.img, 248, &1u32.to_be_bytes());
        expect_like_cryptsetup(
            &c.img,
            1,
            "LUKS keyslot 0 is invalid: key material at sector 1 (+500 sectors) overlaps the header",
        );
    }
    // LUKS1: keyslot 1's key material on keyslot 0's.
    if let Some(c) = luks1("luks1 areas overlap") {
        let data = std::fs::read(&c.img).unwrap();
        patch(&c.img, 208 + 48 + 40, &data[248..252]);
        let at = u32::from_be_bytes(data[248..252].try_into().unwrap());
        expect_like_cryptsetup(
            &c.img,
            1,
            &format!("LUKS keyslot 1 is invalid: key material at sector {at} (+500 sectors) overlaps keyslot 0's at sector {at}"),
        );
    }
    // LUKS2: a second keyslot on the first one's area.
    json_case(
        "luks2 areas overlap",
        "pbkdf2",
        |v| {
            let mut ks = v["keyslots"]["0"].clone();
            ks["area"]["offset"] = "33280".into();
            v["keyslots"]["1"] = ks;
        },
        id,
        1,
        "keyslot 1: area [33280, +258048) overlaps keyslot 0's area [32768, +258048)",
    );
}

/// `VmPeak` and `VmHWM` of `pid`, in KiB.
fn vm_peak_hwm(pid: u32) -> (u64, u64) {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let field = |name: &str| -> u64 {
        s.lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} in /proc/{pid}/status"))
    };
    (field("VmPeak:"), field("VmHWM:"))
}

/// A header asking for 8 GiB of Argon2 memory: vaultsetup refuses it naming the cost
/// and the limit (exit 3, cryptsetup's -ENOMEM), for `open` and `--test-passphrase`;
/// the same keyslot sent to vmvaultd directly is refused by the daemon; vmvaultd's
/// VmPeak/VmHWM grow by nothing near the request; the image is unchanged.
#[test]
fn argon2_memory_above_the_cap() {
    if !require_for("argon2 memory cap", &[]) {
        return;
    }
    let Some(c) = luks2("argon2 memory cap", "argon2id") else {
        return;
    };
    let w = World::new();
    let d = start_daemon(&w.run);
    // The vault is started (and its Argon2 scratch used once) before the measurement.
    let mut input = PASS.to_vec();
    input.push(b'\n');
    let (rc, _, err) = w.vs_env(
        &["open", "--test-passphrase", c.img.to_str().unwrap()],
        Some(&input),
    );
    assert_eq!(rc, 0, "{err}\n{}", w.log());
    // The same keyslot, as the vault would get it, before the header is edited.
    let dev = vaultsetup::device::Device::open(&c.img).unwrap();
    let vol = vaultsetup::Volume::read(&dev).unwrap();
    let plans = vaultsetup::keyslot::vault_plans(&dev, &vol, &Default::default()).unwrap();
    let mut k = plans.bound.into_iter().next().unwrap().unwrap();
    drop(dev);
    const HUGE_KIB: u32 = 8 << 20;
    rewrite_luks2_json(
        &c.img,
        |v| v["keyslots"]["0"]["kdf"]["memory"] = HUGE_KIB.into(),
        id,
    );
    let before = sha256_file(&c.img);
    let (peak0, hwm0) = vm_peak_hwm(d.pid());
    let msg = format!("Keyslot 0: Argon2 memory cost {HUGE_KIB} KiB is above the limit of");
    expect(&c.img, PASS, 3, &msg);
    let (rc, _, err) = w.vs_env(&["open", c.img.to_str().unwrap(), "capped"], Some(&input));
    assert_eq!(rc, 3, "{err}");
    assert!(
        err.contains(&msg) && err.contains("KiB (4 GiB or half"),
        "{err}"
    );
    assert!(w.volumes().is_empty(), "{:?}", w.volumes());
    // Past vaultsetup: the daemon (and the vault) refuse it themselves.
    if let vmvault_proto::keyslot::KdfSpec::Argon2id { memory_kib, .. } = &mut k.candidate.spec.kdf
    {
        *memory_kib = HUGE_KIB;
    } else {
        panic!("not an argon2id keyslot: {:?}", k.candidate.spec.kdf);
    }
    let mut client = vmvault_proto::client::Client::connect(&w.run).unwrap();
    let r = client.unlock_keyslot(
        vmvault_proto::CipherSpec::parse("aes-xts-plain64").unwrap(),
        vmvault_proto::protocol::BackendChoice::Auto,
        k.candidate.clone(),
        &k.area,
        &vaultsetup::Passphrase::from_slice(PASS),
    );
    match &r {
        Err(vmvault_proto::client::ClientError::Remote { code, message }) => {
            eprintln!("vmvaultd refuses the keyslot sent directly: exit {code:?}: {message}");
        }
        other => panic!("vmvaultd accepted an 8 GiB Argon2 keyslot: {other:?}"),
    }
    drop(client);
    let (peak1, hwm1) = vm_peak_hwm(d.pid());
    eprintln!("vmvaultd VmPeak {peak0} -> {peak1} KiB, VmHWM {hwm0} -> {hwm1} KiB");
    let slack = 256 << 10;
    assert!(
        peak1 < peak0 + slack && hwm1 < hwm0 + slack,
        "vmvaultd grew: VmPeak {peak0} -> {peak1} KiB, VmHWM {hwm0} -> {hwm1} KiB \
         (the request was {HUGE_KIB} KiB)"
    );
    assert_eq!(sha256_file(&c.img), before, "image changed");
}
