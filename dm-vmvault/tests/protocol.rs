//! The control protocol is strict (issue 12): a connection starts with a hello of the same
//! version, a request with an unknown field or without a geometry field is refused with
//! a clear error (never a mapping with a default geometry), and the client refuses a
//! daemon of another version. Against a real vmvaultd; the daemon keeps serving.

mod common;

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::time::Duration;

use common::*;
use vmvault_proto::client::{Client, ClientError};
use vmvault_proto::protocol::VERSION;

/// Sends `lines` on a fresh connection and returns the answers, until EOF or `lines` run out.
fn raw(run: &Path, lines: &[String]) -> (Vec<String>, bool) {
    let s = UnixStream::connect(run.join("control")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut answers = Vec::new();
    for l in lines {
        if (&s).write_all(format!("{l}\n").as_bytes()).is_err() {
            return (answers, true);
        }
        let mut a = String::new();
        match r.read_line(&mut a) {
            Ok(0) => return (answers, true),
            Ok(_) => answers.push(a),
            Err(e) => panic!("no answer to {l}: {e}"),
        }
    }
    // Closed by the daemon?
    let mut rest = String::new();
    s.set_read_timeout(Some(Duration::from_millis(300)))
        .unwrap();
    let closed = matches!(r.read_line(&mut rest), Ok(0));
    (answers, closed)
}

fn hello() -> String {
    format!(r#"{{"cmd":"hello","version":{VERSION}}}"#)
}

/// A complete `open` line for `img` (the key serial is never read: the line is refused
/// before the key is touched).
fn open_line(img: &Path, edit: impl Fn(&mut serde_json::Map<String, serde_json::Value>)) -> String {
    let mut v = serde_json::json!({
        "cmd": "open", "name": "strict", "backing": img, "cipher": "aes-xts-plain64",
        "key_size": 512, "sector_size": 4096, "offset": 4096, "iv_offset": 0,
        "iv_large_sectors": false, "size": null, "backend": "soft", "frontend": "auto",
        "key_serial": 1, "keep_key": true,
    });
    edit(v.as_object_mut().unwrap());
    v.to_string()
}

fn assert_refused(answer: &str, code: i32, needle: &str) {
    let v: serde_json::Value =
        serde_json::from_str(answer).unwrap_or_else(|e| panic!("{answer}: {e}"));
    assert_eq!(v["result"], "error", "{answer}");
    assert_eq!(v["code"], code, "{answer}");
    let msg = v["error"].as_str().unwrap();
    assert!(msg.contains(needle), "wanted {needle:?} in {msg:?}");
}

#[test]
fn hello_first_and_same_version_or_the_connection_is_refused() {
    if !require(&["fuse", "loop"]) {
        return;
    }
    let t = TempDir::new("proto-hello");
    let run = t.path().join("run");
    let d = start_daemon(&run);

    // No hello: refused, connection closed.
    let (a, closed) = raw(&run, &[r#"{"cmd":"ping"}"#.into()]);
    assert_refused(&a[0], 1, "first request on a connection must be");
    assert!(closed, "connection left open after a request without hello");

    // Another version: refused with both versions named, connection closed.
    let (a, closed) = raw(&run, &[r#"{"cmd":"hello","version":999}"#.into()]);
    assert_refused(&a[0], 1, "protocol version 999 is not spoken");
    assert!(a[0].contains(&format!("version {VERSION}")), "{}", a[0]);
    assert!(closed);

    // Same version: answered with it and the daemon's pid; then requests work.
    let (a, _) = raw(&run, &[hello(), r#"{"cmd":"ping"}"#.into()]);
    let v: serde_json::Value = serde_json::from_str(&a[0]).unwrap();
    assert_eq!(v["result"], "ok", "{}", a[0]);
    assert_eq!(v["reply"]["version"], VERSION);
    assert_eq!(v["reply"]["pid"], d.pid());
    assert!(a[1].contains(r#""result":"ok""#), "{}", a[1]);

    // A second hello on the same connection is an error, not a reset.
    let (a, _) = raw(&run, &[hello(), hello()]);
    assert_refused(&a[1], 1, "already");
    assert_eq!(Client::connect(&run).unwrap().daemon_pid(), d.pid());
    d.shutdown();
}

#[test]
fn unknown_fields_and_missing_geometry_are_refused_and_nothing_opens() {
    if !require(&["fuse", "loop"]) {
        return;
    }
    let t = TempDir::new("proto-strict");
    let run = t.path().join("run");
    let img = t.path().join("img");
    sparse_image(&img, 8);
    let d = start_daemon(&run);
    let mut lines = vec![hello()];
    let mut want: Vec<(i32, String)> = Vec::new();
    // A misspelt geometry field is an unknown field, not a default.
    lines.push(open_line(&img, |m| {
        let v = m.remove("offset").unwrap();
        m.insert("ofset".into(), v);
    }));
    want.push((1, "unknown field `ofset`".into()));
    lines.push(open_line(&img, |m| {
        m.insert("sector_sz".into(), 512.into());
    }));
    want.push((1, "unknown field `sector_sz`".into()));
    for f in [
        "sector_size",
        "offset",
        "iv_offset",
        "iv_large_sectors",
        "size",
    ] {
        lines.push(open_line(&img, |m| {
            m.remove(f);
        }));
        want.push((1, format!("missing field `{f}`")));
    }
    lines.push(open_line(&img, |m| {
        m.insert("sector_size".into(), 1000.into());
    }));
    want.push((1, "sector size 1000 is not 512, 1024, 2048 or 4096".into()));
    lines.push(open_line(&img, |m| {
        m.insert("name".into(), "../etc".into());
    }));
    want.push((1, "invalid volume name `../etc`".into()));
    lines.push(open_line(&img, |m| {
        m.insert("cipher".into(), "serpent-xts-plain64".into());
    }));
    want.push((1, "cipher `serpent-xts-plain64` is not supported".into()));
    lines.push(r#"{"cmd":"close","name":"strict","force":true}"#.into());
    want.push((1, "unknown field `force`".into()));
    lines.push(r#"{"cmd":"list","all":true}"#.into());
    want.push((1, "unknown field `all`".into()));
    let (a, closed) = raw(&run, &lines);
    assert!(!closed, "a bad request closed the connection");
    assert_eq!(a.len(), lines.len());
    for (answer, (code, needle)) in a[1..].iter().zip(&want) {
        assert_refused(answer, *code, needle);
    }
    // Nothing was opened, the daemon still serves.
    let mut c = d.client();
    assert!(c.list().unwrap().is_empty());
    assert_eq!(c.ping().unwrap(), d.pid());
    d.shutdown();
}

/// A stand-in peer on a socket: answers the hello with `answer`.
fn fake_daemon(run: &Path, answer: &'static str) -> std::thread::JoinHandle<String> {
    std::fs::create_dir_all(run).unwrap();
    let l = UnixListener::bind(run.join("control")).unwrap();
    std::thread::spawn(move || {
        let (s, _) = l.accept().unwrap();
        let mut line = String::new();
        BufReader::new(&s).read_line(&mut line).unwrap();
        (&s).write_all(answer.as_bytes()).unwrap();
        line
    })
}

#[test]
fn the_client_refuses_a_daemon_of_another_version() {
    let t = TempDir::new("proto-client");
    for (i, answer) in [
        "{\"result\":\"ok\",\"reply\":{\"version\":99,\"pid\":1}}\n",
        // What a daemon from before the hello answers.
        "{\"ok\":false,\"code\":1,\"error\":\"bad request: unknown variant `hello`\"}\n",
        "{\"result\":\"error\",\"code\":1,\"error\":\"protocol version 1 is not spoken\"}\n",
    ]
    .into_iter()
    .enumerate()
    {
        let run = t.path().join(format!("run{i}"));
        let peer = fake_daemon(&run, answer);
        let e = Client::connect(&run).unwrap_err();
        let sent = peer.join().unwrap();
        assert_eq!(sent.trim(), hello());
        assert!(matches!(e, ClientError::Version { .. }), "{e:?}");
        let msg = e.to_string();
        assert!(
            msg.contains(&format!("does not speak protocol version {VERSION}"))
                && msg.contains("different builds"),
            "{msg}"
        );
        assert_eq!(e.exit_code(), 4);
    }
}

/// A keyslot candidate for a 64-byte key with 4000 stripes (area 256000 bytes), as
/// JSON, with `area_len` as given.
fn candidate_json(area_len: u64) -> serde_json::Value {
    serde_json::json!({
        "keyslot": 0,
        "spec": {
            "kdf": {"type": "pbkdf2", "hash": "sha256", "iterations": 1000},
            "salt": "11".repeat(32),
            "area_cipher": "aes-xts-plain64",
            "area_key_size": 512,
            "stripes": 4000,
            "af_hash": "sha256",
            "volume_key_size": 512,
            "digest_hash": "sha256",
            "digest_iterations": 1000,
            "digest_salt": "22".repeat(32),
            "digest": "33".repeat(32),
        },
        "area_len": area_len,
    })
}

fn open_unlock_line(img: &Path, area_len: u64, passphrase_len: u64) -> String {
    let mut v: serde_json::Value = serde_json::from_str(&open_line(img, |m| {
        m.remove("key_serial");
        m.remove("keep_key");
    }))
    .unwrap();
    let m = v.as_object_mut().unwrap();
    m.insert("cmd".into(), "open_unlock".into());
    m.insert(
        "keyslots".into(),
        serde_json::json!([candidate_json(area_len)]),
    );
    m.insert("passphrase_len".into(), passphrase_len.into());
    v.to_string()
}

/// Issue 14: requests with a binary payload (keyslot areas, passphrase) keep the stream
/// in step: a well-formed one is answered and the next line is read as a line; lengths
/// that cannot be right, or a payload command that does not parse, close the
/// connection (its payload must never be read as request lines); handles are the
/// connection's own.
#[test]
fn keyslot_payloads_are_framed_and_bad_lengths_close_the_connection() {
    if !require(&["fuse", "loop"]) {
        return;
    }
    let t = TempDir::new("proto-payload");
    let run = t.path().join("run");
    let img = t.path().join("img");
    sparse_image(&img, 8);
    let d = start_daemon(&run);

    // A well-formed open_unlock with its payload, then a ping on the same connection.
    let s = UnixStream::connect(run.join("control")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    let mut r = BufReader::new(s.try_clone().unwrap());
    let mut line = String::new();
    (&s).write_all(format!("{}\n", hello()).as_bytes()).unwrap();
    r.read_line(&mut line).unwrap();
    let mut msg = open_unlock_line(&img, 256_000, 9).into_bytes();
    msg.push(b'\n');
    msg.extend(std::iter::repeat_n(0x5a, 256_000));
    msg.extend_from_slice(b"{\"cmd\":\"p");
    msg.extend_from_slice(br#"{"cmd":"ping"}"#);
    msg.push(b'\n');
    (&s).write_all(&msg).unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    // Whatever the vault says (no key with this area, or no keyslot support yet), the
    // open is refused and the passphrase is not in the answer.
    assert_eq!(v["result"], "error", "{line}");
    assert!(!line.contains("{\\\"cmd\\\":\\\"p"), "{line}");
    line.clear();
    r.read_line(&mut line).unwrap();
    let v: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["result"], "ok", "the line after the payload: {line}");
    assert_eq!(v["reply"]["pid"], d.pid(), "{line}");
    drop((s, r));

    // Area length not what the spec gives: refused, connection closed.
    let (a, closed) = raw(&run, &[hello(), open_unlock_line(&img, 512, 1)]);
    assert_refused(
        &a[1],
        1,
        "area of 512 bytes, but key size and AF stripes give 256000",
    );
    assert!(closed, "connection left open after bad payload lengths");
    // A passphrase above 8 MiB: the same.
    let (a, closed) = raw(
        &run,
        &[hello(), open_unlock_line(&img, 256_000, (8 << 20) + 1)],
    );
    assert_refused(&a[1], 1, "passphrase is 8388609 bytes");
    assert!(closed);
    // A payload command that does not parse: closed too.
    let (a, closed) = raw(
        &run,
        &[
            hello(),
            r#"{"cmd":"seal_keyslot","handle":"x","passphrase_len":3}"#.into(),
        ],
    );
    assert_refused(&a[1], 1, "bad request");
    assert!(
        closed,
        "connection left open after an unparsable payload command"
    );
    // Commands without payload keep the connection; handles belong to it.
    let (a, closed) = raw(
        &run,
        &[
            hello(),
            r#"{"cmd":"drop_key","handle":1}"#.into(),
            r#"{"cmd":"key_digest","handle":2,"keyslot":{}}"#.into(),
            r#"{"cmd":"ping"}"#.into(),
        ],
    );
    assert_refused(&a[1], 1, "no key handle 1 on this connection");
    assert_refused(&a[2], 1, "bad request");
    assert!(a[3].contains("\"pid\""), "{}", a[3]);
    assert!(!closed);
    let mut c = d.client();
    assert!(c.list().unwrap().is_empty());
    d.shutdown();
}
