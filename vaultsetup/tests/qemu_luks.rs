//! Images written by QEMU's own LUKS implementation (`qemu-img create -f luks`).

mod common;
use common::*;
use std::process::Command;

const PASS: &str = "qemu-secret-42";

fn check(name: &str, opts: &[&str]) {
    if !need("qemu-img", name) || !need("cryptsetup", name) {
        return;
    }
    let d = tmp();
    let img = d.path().join("q.luks");
    let mut o = String::from("key-secret=sec0,iter-time=10");
    for x in opts {
        o.push(',');
        o.push_str(x);
    }
    run_ok(
        Command::new("qemu-img")
            .args(["create", "-q", "-f", "luks", "--object"])
            .arg(format!("secret,id=sec0,data={PASS}"))
            .args(["-o", &o])
            .arg(&img)
            .arg("4M"),
        None,
    );
    let before = sha256_file(&img);
    let want = cryptsetup_volume_key(d.path(), &img, PASS.as_bytes());
    let (_, got) = our_volume_key(&img, PASS.as_bytes(), None);
    assert_eq!(got, want, "{name}");
    let (rc, _, err) = vs(
        &["open", "--test-passphrase", img.to_str().unwrap()],
        Some(format!("{PASS}\n").as_bytes()),
    );
    assert_eq!(rc, 0, "{name}: {err}");
    let (rc, out, _) = vs(&["luksDump", img.to_str().unwrap()], None);
    assert_eq!(rc, 0);
    assert!(out.contains("Version:       \t1"), "{out}");
    assert_eq!(sha256_file(&img), before);
}

#[test]
fn qemu_default_aes256_xts() {
    check("qemu default", &[]);
}

#[test]
fn qemu_aes128_cbc_essiv_sha1() {
    check(
        "qemu aes-128-cbc-essiv sha1",
        &[
            "cipher-alg=aes-128",
            "cipher-mode=cbc",
            "ivgen-alg=essiv",
            "ivgen-hash-alg=sha256",
            "hash-alg=sha1",
        ],
    );
}

#[test]
fn qemu_aes256_xts_sha512() {
    check(
        "qemu aes-256-xts sha512",
        &["cipher-alg=aes-256", "cipher-mode=xts", "hash-alg=sha512"],
    );
}
