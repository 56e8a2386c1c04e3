//! Many volumes at once share one vault and its data window: a full window must mean
//! waiting, never an I/O error (issue 11, point 4).
//!
//! 16 LUKS2 images made by cryptsetup are opened through a real vmvaultd (FUSE + loop)
//! at once, all on one vault; on each, `fio --rw=randrw --bs=1M --direct=1 --iodepth=16`
//! writes and reads with crc32c verify headers and checks every block it wrote. Then
//! every volume is closed, opened again with a fresh keyring key, and a second fio pass
//! (`--verify_only`) checks that all the data written in the first pass reads back after
//! the reopen. Once per vault backend (kvm, soft).

mod common;
// The LUKS helpers, which `common` does not re-export.
#[allow(clippy::duplicate_mod)]
#[path = "../../tests/support/mod.rs"]
mod support;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;
use support::{hex_decode, luks_format, luks_volume_key_hex};

const VOLUMES: usize = 16;
/// Bytes of I/O per fio job (half reads, half writes with `randrw`).
const FIO_SIZE: &str = "64M";
/// Plaintext size of each volume (MiB); the image adds the LUKS2 header.
const DATA_MIB: u64 = 64;
/// Bound of each fio pass: on timeout every fio is killed and the test fails.
const PASS_TIMEOUT: Duration = Duration::from_secs(100);

/// fio processes, killed and reaped on drop (a failing test leaves none behind).
struct FioJobs(Vec<(String, Child, PathBuf)>);

impl Drop for FioJobs {
    fn drop(&mut self) {
        for (_, c, _) in &mut self.0 {
            if let Ok(None) = c.try_wait() {
                let _ = c.kill();
            }
            let _ = c.wait();
        }
    }
}

/// One volume: its image, the volume key cryptsetup made, the LUKS2 data segment.
struct Image {
    path: PathBuf,
    key: Vec<u8>,
    offset_sectors: u64,
    sector_size: u32,
}

/// `offset` (bytes) and `sector` (bytes) of data segment 0 in `cryptsetup luksDump`.
fn data_segment(img: &Path) -> (u64, u32) {
    let dump = run(Command::new("cryptsetup").arg("luksDump").arg(img));
    let seg = dump
        .split("Data segments:")
        .nth(1)
        .unwrap_or_else(|| panic!("no data segment in luksDump:\n{dump}"));
    let field = |name: &str| -> u64 {
        seg.lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no `{name}` in the data segment:\n{seg}"))
    };
    (field("offset:"), field("sector:") as u32)
}

/// A LUKS2 image by cryptsetup (fast PBKDF2: the keyslot does not matter here, the test
/// hands the volume key to vmvaultd by keyring serial as vaultsetup does).
fn make_image(dir: &Path, i: usize) -> Image {
    let path = dir.join(format!("img{i}"));
    let kf = dir.join(format!("pass{i}"));
    std::fs::write(&kf, format!("passphrase {i}")).unwrap();
    let ss = if i.is_multiple_of(2) { "4096" } else { "512" };
    // 16 MiB of LUKS2 header and keyslots, then the data.
    luks_format(
        &path,
        16 + DATA_MIB,
        &kf,
        &[
            "--type",
            "luks2",
            "--cipher",
            "aes-xts-plain64",
            "--key-size",
            "512",
            "--sector-size",
            ss,
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
    );
    let key = hex_decode(&luks_volume_key_hex(&path, &kf));
    assert_eq!(key.len(), 64);
    let (off, sector_size) = data_segment(&path);
    assert!(off.is_multiple_of(512));
    Image {
        path,
        key,
        offset_sectors: off / 512,
        sector_size,
    }
}

/// Opens every image under `vol{i}` on `backend`; returns the block devices.
fn open_all(
    d: &Daemon,
    images: &[Image],
    backend: vmvault_proto::protocol::BackendChoice,
) -> Vec<String> {
    images
        .iter()
        .enumerate()
        .map(|(i, img)| {
            let name = format!("vol{i}");
            let mut req = open_req(&name, &img.path, &img.key, img.sector_size);
            req.offset = vmvault_proto::Sectors(img.offset_sectors);
            req.backend = backend;
            let st = d
                .client()
                .open(req)
                .map(|(st, _)| st)
                .unwrap_or_else(|e| panic!("open {name}: {e}\nvmvaultd log:\n{}", d.log()));
            assert_eq!(st.size.0, DATA_MIB << 11, "{name}: {st:?}");
            assert_eq!(st.backend, backend, "{name}: {st:?}");
            st.device.display().to_string()
        })
        .collect()
}

/// Closes `vol0`..`vol15`.
fn close_all(d: &Daemon) {
    for i in 0..VOLUMES {
        d.client()
            .close(&format!("vol{i}"))
            .unwrap_or_else(|e| panic!("close vol{i}: {e}"));
    }
    assert!(d.client().list().unwrap().is_empty());
}

/// Runs one fio per device at once (`extra` appended); fails naming every fio that
/// did not succeed, with its output.
fn fio_pass(what: &str, dir: &Path, devices: &[String], extra: &[&str]) {
    let mut jobs = FioJobs(Vec::new());
    for (i, dev) in devices.iter().enumerate() {
        let out = dir.join(format!("fio-{}-{i}.out", what.replace(' ', "-")));
        let f = std::fs::File::create(&out).unwrap();
        let child = Command::new("fio")
            .arg(format!("--name=vol{i}"))
            .arg(format!("--filename={dev}"))
            .args([
                "--rw=randrw",
                "--bs=1M",
                "--direct=1",
                "--iodepth=16",
                "--ioengine=libaio",
                &format!("--size={FIO_SIZE}"),
                "--verify=crc32c",
                "--randrepeat=1",
                // Keep no verify state files (fio writes them to its directory).
                "--verify_state_save=0",
                // A different random stream per volume, the same in both passes.
                &format!("--randseed={}", 1000 + i),
            ])
            .args(extra)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(f.try_clone().unwrap())
            .stderr(f)
            .spawn()
            .expect("spawn fio");
        jobs.0.push((dev.clone(), child, out));
    }
    let t0 = Instant::now();
    let mut failed = Vec::new();
    for (dev, c, out) in &mut jobs.0 {
        let status = loop {
            match c.try_wait().unwrap() {
                Some(s) => break Some(s),
                None if t0.elapsed() > PASS_TIMEOUT => {
                    let _ = c.kill();
                    let _ = c.wait();
                    break None;
                }
                None => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        let text = std::fs::read_to_string(&*out).unwrap_or_default();
        // fio prints `err= 0` per job when every I/O succeeded.
        let clean = text.contains("err= 0") && !text.contains("Input/output error");
        match status {
            Some(s) if s.success() && clean => {}
            Some(s) => failed.push(format!("{dev}: fio {s}:\n{}", tail(&text, 12))),
            None => failed.push(format!(
                "{dev}: fio did not finish within {PASS_TIMEOUT:?}:\n{}",
                tail(&text, 12)
            )),
        }
    }
    assert!(
        failed.is_empty(),
        "{what}: {} of {} fio jobs failed:\n{}",
        failed.len(),
        devices.len(),
        failed.join("\n")
    );
}

fn tail(s: &str, n: usize) -> String {
    let lines: Vec<&str> = s.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

#[test]
fn sixteen_volumes_under_fio_get_no_eio_and_keep_their_data() {
    if !require(&["fuse", "loop", "keyctl", "fio", "cryptsetup"]) {
        return;
    }
    let t = TempDir::new("many-volumes");
    let images: Vec<Image> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..VOLUMES)
            .map(|i| {
                let dir = t.path();
                s.spawn(move || make_image(dir, i))
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    // Every vault backend (kvm is required in CI); 16 volumes share one vault each time.
    for backend in vault_backends() {
        let tag = backend.as_str();
        let d = start_daemon(&t.path().join(format!("run-{tag}")));
        let devices = open_all(&d, &images, backend);
        // Pass 1: random 1 MiB reads and writes at depth 16 on all volumes at once; fio
        // checks every block it wrote when the workload ends.
        fio_pass(&format!("{tag} randrw"), t.path(), &devices, &[]);
        close_all(&d);
        // Pass 2, after a close and a reopen: every block of pass 1 reads back intact
        // (again on all volumes at once).
        let devices = open_all(&d, &images, backend);
        fio_pass(
            &format!("{tag} verify"),
            t.path(),
            &devices,
            &["--verify_only"],
        );
        close_all(&d);
        d.shutdown();
    }
}
