//! End to end: LUKS1 and LUKS2 (Argon2id) images made by cryptsetup, unlocked by the
//! vault's UNLOCK_KEYSLOT in process; the installed key is compared with cryptsetup's
//! own `--dump-volume-key` by encrypting a sector both ways. Also: a wrong passphrase,
//! KEY_DIGEST against the header's digest, SEAL then UNLOCK, SEAL output accepted by
//! cryptsetup, and GENERATE_KEY then SEAL then UNLOCK.
//!
//! Needs `cryptsetup` (no root: image files only). Without it the test prints
//! `SKIPPED: ...` and passes, except under `CI`, where it fails.

use std::alloc::{alloc_zeroed, dealloc, Layout};
use std::path::{Path, PathBuf};
use std::process::Command;

use vault_vm::abi::keyslot::{self, hash, kdf, KeyslotParams, PARAMS_LEN};
use vault_vm::abi::{self, cipher_id, op, status, Request, Response, Segment, MAX_SLOTS};
use vault_vm::argon2::Job;
use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vault_vm::service::{Counters, Service, SlotCell};

fn have_cryptsetup() -> bool {
    let ok = Command::new("cryptsetup")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !ok {
        assert!(
            std::env::var_os("CI").is_none(),
            "cryptsetup is missing and CI is set: this test must run"
        );
        println!("SKIPPED: cryptsetup not found");
    }
    ok
}

fn run(cmd: &mut Command) -> Vec<u8> {
    let o = cmd.output().expect("spawn");
    assert!(
        o.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    o.stdout
}

fn tmpdir(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("vault-vm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn b64(s: &str) -> Vec<u8> {
    let val = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => (c - b'A') as u32,
            b'a'..=b'z' => (c - b'a' + 26) as u32,
            b'0'..=b'9' => (c - b'0' + 52) as u32,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("bad base64"),
        }
    };
    let mut out = Vec::new();
    let bytes: Vec<u8> = s.bytes().filter(|&c| c != b'=').collect();
    for ch in bytes.chunks(4) {
        let mut n = 0u32;
        for (i, &c) in ch.iter().enumerate() {
            n |= val(c) << (18 - 6 * i);
        }
        for i in 0..ch.len() - 1 {
            out.push((n >> (16 - 8 * i)) as u8);
        }
    }
    out
}

fn hash_id(name: &str) -> u32 {
    match name {
        "sha1" => hash::SHA1,
        "sha224" => hash::SHA224,
        "sha256" => hash::SHA256,
        "sha384" => hash::SHA384,
        "sha512" => hash::SHA512,
        "ripemd160" => hash::RIPEMD160,
        _ => panic!("hash {name}"),
    }
}

/// What a host reads from a header for one keyslot: the parameters, the area's place
/// in the image and the volume cipher.
struct Slot {
    params: KeyslotParams,
    area_offset: u64,
    cipher: CipherSpec,
}

fn luks2_slot(img: &Path) -> Slot {
    let j: serde_json::Value = serde_json::from_slice(&run(Command::new("cryptsetup")
        .args(["luksDump", "--dump-json-metadata"])
        .arg(img)))
    .unwrap();
    let ks = &j["keyslots"]["0"];
    let dg = &j["digests"]["0"];
    let mut p = KeyslotParams::ZERO;
    let k = &ks["kdf"];
    p.kdf = match k["type"].as_str().unwrap() {
        "argon2id" => kdf::ARGON2ID,
        "argon2i" => kdf::ARGON2I,
        "pbkdf2" => kdf::PBKDF2,
        t => panic!("kdf {t}"),
    };
    if p.kdf == kdf::PBKDF2 {
        p.kdf_hash = hash_id(k["hash"].as_str().unwrap());
        p.time = k["iterations"].as_u64().unwrap() as u32;
    } else {
        p.time = k["time"].as_u64().unwrap() as u32;
        p.memory_kib = k["memory"].as_u64().unwrap() as u32;
        p.lanes = k["cpus"].as_u64().unwrap() as u32;
        p.scratch_len = u64::from(p.memory_kib) * 1024;
    }
    let salt = b64(k["salt"].as_str().unwrap());
    p.salt[..salt.len()].copy_from_slice(&salt);
    p.salt_len = salt.len() as u32;
    let area = &ks["area"];
    p.area_cipher = cipher_id(CipherSpec::parse(area["encryption"].as_str().unwrap()).unwrap());
    p.area_key_len = area["key_size"].as_u64().unwrap() as u32;
    p.af_stripes = ks["af"]["stripes"].as_u64().unwrap() as u32;
    p.af_hash = hash_id(ks["af"]["hash"].as_str().unwrap());
    p.volume_key_len = ks["key_size"].as_u64().unwrap() as u32;
    p.digest_hash = hash_id(dg["hash"].as_str().unwrap());
    p.digest_iterations = dg["iterations"].as_u64().unwrap() as u32;
    let d = b64(dg["digest"].as_str().unwrap());
    p.digest[..d.len()].copy_from_slice(&d);
    p.digest_len = d.len() as u32;
    let s = b64(dg["salt"].as_str().unwrap());
    p.digest_salt[..s.len()].copy_from_slice(&s);
    p.digest_salt_len = s.len() as u32;
    Slot {
        params: p,
        area_offset: area["offset"].as_str().unwrap().parse().unwrap(),
        cipher: CipherSpec::parse(j["segments"]["0"]["encryption"].as_str().unwrap()).unwrap(),
    }
}

fn luks1_slot(img: &Path) -> Slot {
    let h = std::fs::read(img).unwrap();
    let be = |o: usize| u32::from_be_bytes(h[o..o + 4].try_into().unwrap());
    let cstr = |o: usize| {
        let s = &h[o..o + 32];
        String::from_utf8(s[..s.iter().position(|&b| b == 0).unwrap()].to_vec()).unwrap()
    };
    assert_eq!(&h[..6], b"LUKS\xba\xbe");
    let cipher = CipherSpec::parse(&format!("{}-{}", cstr(8), cstr(40))).unwrap();
    let hname = cstr(72);
    let key_bytes = be(108);
    let ks = 208;
    assert_eq!(be(ks), 0x00AC_71F3, "keyslot 0 active");
    let mut p = KeyslotParams::ZERO;
    p.kdf = kdf::PBKDF2;
    p.kdf_hash = hash_id(&hname);
    p.time = be(ks + 4);
    p.salt[..32].copy_from_slice(&h[ks + 8..ks + 40]);
    p.salt_len = 32;
    p.area_cipher = cipher_id(cipher);
    p.area_key_len = key_bytes;
    p.af_stripes = be(ks + 44);
    p.af_hash = p.kdf_hash;
    p.volume_key_len = key_bytes;
    p.digest_hash = p.kdf_hash;
    p.digest_iterations = be(164);
    p.digest[..20].copy_from_slice(&h[112..132]);
    p.digest_len = 20;
    p.digest_salt[..32].copy_from_slice(&h[132..164]);
    p.digest_salt_len = 32;
    Slot {
        params: p,
        area_offset: u64::from(be(ks + 40)) * 512,
        cipher,
    }
}

fn volume_key(img: &Path, pass: &Path) -> Vec<u8> {
    let out = String::from_utf8(run(Command::new("cryptsetup")
        .args([
            "luksDump",
            "--dump-volume-key",
            "--batch-mode",
            "--key-file",
        ])
        .arg(pass)
        .arg(img)))
    .unwrap();
    let i = out.find("MK dump:").expect("MK dump");
    out[i + 8..]
        .split_whitespace()
        .take_while(|w| w.len() == 2 && w.bytes().all(|c| c.is_ascii_hexdigit()))
        .map(|w| u8::from_str_radix(w, 16).unwrap())
        .collect()
}

/// A vault in process: slots, a 1 MiB window, a transfer page and a scratch region.
struct Vault {
    slots: Box<[SlotCell; MAX_SLOTS]>,
    job: Job,
    window: Vec<u8>,
    transfer: Vec<u8>,
    scratch: *mut u8,
    scratch_len: usize,
    counters: Counters,
}

const P_OFF: u64 = 0;
const PASS_OFF: u64 = 4096;
const AREA_OFF: u64 = 8192;
const DIGEST_OFF: u64 = 2048;

impl Vault {
    fn new(scratch_len: usize) -> Vault {
        let lay = Layout::from_size_align(scratch_len.max(4096), 4096).unwrap();
        // SAFETY: non-zero size.
        let scratch = unsafe { alloc_zeroed(lay) };
        assert!(!scratch.is_null());
        Vault {
            slots: Box::new([const { SlotCell::EMPTY }; MAX_SLOTS]),
            job: Job::new(),
            window: vec![0u8; 1 << 20],
            transfer: vec![0u8; abi::TRANSFER_SIZE as usize],
            scratch,
            scratch_len: scratch_len.max(4096),
            counters: Counters::default(),
        }
    }

    fn handle(&mut self, req: &Request) -> Response {
        // SAFETY: the buffers have the stated sizes and outlive the service; the scratch
        // is ours and large enough for the requests of these tests.
        let svc = unsafe {
            Service::new(
                &self.slots,
                &self.job,
                self.window.as_mut_ptr(),
                self.window.len() as u64,
                self.transfer.as_mut_ptr(),
                self.scratch,
            )
        };
        svc.handle(req, &mut self.counters)
    }

    fn put_params(&mut self, p: &KeyslotParams) {
        // SAFETY: KeyslotParams is plain old data of PARAMS_LEN bytes.
        let b = unsafe {
            std::slice::from_raw_parts(
                (p as *const KeyslotParams).cast::<u8>(),
                PARAMS_LEN as usize,
            )
        };
        self.window[P_OFF as usize..][..b.len()].copy_from_slice(b);
    }

    /// UNLOCK_KEYSLOT or SEAL_KEYSLOT with the area at AREA_OFF.
    fn keyslot(
        &mut self,
        opc: u32,
        slot: u32,
        gen: u32,
        cipher: CipherSpec,
        p: &KeyslotParams,
        pass: &[u8],
    ) -> Response {
        self.put_params(p);
        self.window[PASS_OFF as usize..][..pass.len()].copy_from_slice(pass);
        let mut r = Request {
            op: opc,
            slot,
            cipher: cipher_id(cipher),
            key_len: p.volume_key_len,
            generation: gen,
            nsegs: 3,
            id: 1,
            ..Request::ZERO
        };
        r.segs[0] = Segment {
            offset: P_OFF,
            len: PARAMS_LEN,
        };
        r.segs[1] = Segment {
            offset: PASS_OFF,
            len: pass.len() as u64,
        };
        r.segs[2] = Segment {
            offset: AREA_OFF,
            len: p.area_len(),
        };
        self.handle(&r)
    }

    fn digest(
        &mut self,
        slot: u32,
        gen: u32,
        cipher: CipherSpec,
        p: &KeyslotParams,
    ) -> (Response, Vec<u8>) {
        self.put_params(p);
        let mut r = Request {
            op: keyslot::op::KEY_DIGEST,
            slot,
            cipher: cipher_id(cipher),
            key_len: p.volume_key_len,
            generation: gen,
            nsegs: 2,
            ..Request::ZERO
        };
        r.segs[0] = Segment {
            offset: P_OFF,
            len: PARAMS_LEN,
        };
        r.segs[1] = Segment {
            offset: DIGEST_OFF,
            len: u64::from(p.digest_len),
        };
        let resp = self.handle(&r);
        (
            resp,
            self.window[DIGEST_OFF as usize..][..p.digest_len as usize].to_vec(),
        )
    }

    /// ENCRYPT of sector 7 (pattern data) with the key in `slot`.
    fn encrypt_probe(&mut self, slot: u32, gen: u32, cipher: CipherSpec) -> Result<Vec<u8>, u32> {
        let off = 512 * 1024;
        for (i, b) in self.window[off..off + 4096].iter_mut().enumerate() {
            *b = (i * 7) as u8;
        }
        let mut r = Request {
            op: op::ENCRYPT,
            slot,
            cipher: cipher_id(cipher),
            sector_size: 4096,
            generation: gen,
            nsegs: 1,
            sector: 8,
            ..Request::ZERO
        };
        r.segs[0] = Segment {
            offset: off as u64,
            len: 4096,
        };
        let resp = self.handle(&r);
        if resp.status != status::OK {
            return Err(resp.status);
        }
        Ok(self.window[off..off + 4096].to_vec())
    }
}

impl Drop for Vault {
    fn drop(&mut self) {
        // SAFETY: allocated in `new` with this layout.
        unsafe {
            dealloc(
                self.scratch,
                Layout::from_size_align(self.scratch_len, 4096).unwrap(),
            )
        };
    }
}

fn expected_probe(cipher: CipherSpec, key: &[u8]) -> Vec<u8> {
    let mut buf: Vec<u8> = (0..4096).map(|i| (i * 7) as u8).collect();
    SectorCipher::new(cipher, key)
        .unwrap()
        .encrypt(&Geometry::new(4096, false, 0).unwrap(), 8, &mut buf)
        .unwrap();
    buf
}

fn check_image(dir: &Path, img: &Path, luks2: bool) {
    let pass = dir.join("pass");
    let slot = if luks2 {
        luks2_slot(img)
    } else {
        luks1_slot(img)
    };
    let p = slot.params;
    let vk = volume_key(img, &pass);
    assert_eq!(vk.len(), p.volume_key_len as usize);
    let image = std::fs::read(img).unwrap();
    let area = &image[slot.area_offset as usize..][..p.area_len() as usize];
    let mut v = Vault::new(p.scratch_len as usize);
    v.window[AREA_OFF as usize..][..area.len()].copy_from_slice(area);

    // Wrong passphrase: BAD_PASSPHRASE, nothing installed.
    let r = v.keyslot(
        keyslot::op::UNLOCK_KEYSLOT,
        2,
        7,
        slot.cipher,
        &p,
        b"not it",
    );
    assert_eq!(r.status, keyslot::status::BAD_PASSPHRASE);
    assert_eq!(v.encrypt_probe(2, 7, slot.cipher), Err(status::SLOT_EMPTY));
    // SAFETY: the scratch allocation is at least scratch_len bytes and not in use now.
    let scratch = unsafe { std::slice::from_raw_parts(v.scratch, p.scratch_len as usize) };
    assert!(scratch.iter().all(|&b| b == 0), "scratch wiped");

    // The right one: the installed key is cryptsetup's volume key.
    let t = std::time::Instant::now();
    let r = v.keyslot(
        keyslot::op::UNLOCK_KEYSLOT,
        2,
        7,
        slot.cipher,
        &p,
        b"pw-one",
    );
    println!(
        "{} unlock: {:?}",
        if luks2 { "LUKS2" } else { "LUKS1" },
        t.elapsed()
    );
    assert_eq!(r.status, status::OK, "{}", status::name(r.status));
    assert_eq!(
        v.encrypt_probe(2, 7, slot.cipher).unwrap(),
        expected_probe(slot.cipher, &vk)
    );
    // Into a full slot: SLOT_BUSY.
    let r = v.keyslot(
        keyslot::op::UNLOCK_KEYSLOT,
        2,
        8,
        slot.cipher,
        &p,
        b"pw-one",
    );
    assert_eq!(r.status, status::SLOT_BUSY);

    // KEY_DIGEST gives the header's digest.
    let (r, d) = v.digest(2, 7, slot.cipher, &p);
    assert_eq!(r.status, status::OK);
    assert_eq!(d, p.digest[..p.digest_len as usize]);
    assert_eq!(v.digest(2, 6, slot.cipher, &p).0.status, status::SLOT_EMPTY);

    // SEAL with a new passphrase, then UNLOCK of that area into another slot.
    let r = v.keyslot(keyslot::op::SEAL_KEYSLOT, 2, 7, slot.cipher, &p, b"pw-two");
    assert_eq!(r.status, status::OK, "{}", status::name(r.status));
    let sealed = v.window[AREA_OFF as usize..][..area.len()].to_vec();
    assert_ne!(sealed, area);
    let r = v.keyslot(
        keyslot::op::UNLOCK_KEYSLOT,
        3,
        1,
        slot.cipher,
        &p,
        b"pw-two",
    );
    assert_eq!(r.status, status::OK);
    assert_eq!(
        v.encrypt_probe(3, 1, slot.cipher).unwrap(),
        expected_probe(slot.cipher, &vk)
    );

    // cryptsetup accepts the sealed area (same KDF salt and cost, written in place).
    let mut image = image;
    image[slot.area_offset as usize..][..sealed.len()].copy_from_slice(&sealed);
    std::fs::write(img, &image).unwrap();
    std::fs::write(dir.join("pass2"), b"pw-two").unwrap();
    run(Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--batch-mode", "--key-file"])
        .arg(dir.join("pass2"))
        .arg(img));
    let o = Command::new("cryptsetup")
        .args(["open", "--test-passphrase", "--batch-mode", "--key-file"])
        .arg(&pass)
        .arg(img)
        .output()
        .unwrap();
    assert!(
        !o.status.success(),
        "the old passphrase no longer opens slot 0"
    );

    // GENERATE_KEY, SEAL it, UNLOCK it with the digest KEY_DIGEST computed.
    v.transfer[..64].copy_from_slice(&[0x5a; 64]);
    let g = Request {
        op: keyslot::op::GENERATE_KEY,
        slot: 9,
        cipher: cipher_id(slot.cipher),
        key_len: p.volume_key_len,
        generation: 4,
        ..Request::ZERO
    };
    let r = v.handle(&g);
    assert_eq!(r.status, status::OK);
    assert!(
        r.aux[0] == keyslot::entropy_source::RDSEED || r.aux[0] == keyslot::entropy_source::RDRAND
    );
    assert!(v.transfer.iter().all(|&b| b == 0), "transfer page wiped");
    let (r, d) = v.digest(9, 4, slot.cipher, &p);
    assert_eq!(r.status, status::OK);
    let mut p2 = p;
    p2.digest[..d.len()].copy_from_slice(&d);
    assert_eq!(
        v.keyslot(keyslot::op::SEAL_KEYSLOT, 9, 4, slot.cipher, &p2, b"gen")
            .status,
        status::OK
    );
    assert_eq!(
        v.keyslot(keyslot::op::UNLOCK_KEYSLOT, 10, 1, slot.cipher, &p2, b"gen")
            .status,
        status::OK
    );
    assert_eq!(
        v.encrypt_probe(10, 1, slot.cipher),
        v.encrypt_probe(9, 4, slot.cipher)
    );
    assert_ne!(
        v.encrypt_probe(10, 1, slot.cipher).unwrap(),
        expected_probe(slot.cipher, &vk)
    );
}

#[test]
fn luks2_argon2id_image() {
    if !have_cryptsetup() {
        return;
    }
    let dir = tmpdir("luks2");
    let img = dir.join("img");
    std::fs::write(dir.join("pass"), b"pw-one").unwrap();
    run(Command::new("truncate").args(["-s", "32M"]).arg(&img));
    run(Command::new("cryptsetup")
        .args([
            "luksFormat",
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "32768",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "2",
            "--batch-mode",
            "--key-file",
        ])
        .arg(dir.join("pass"))
        .arg(&img));
    check_image(&dir, &img, true);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn luks1_image() {
    if !have_cryptsetup() {
        return;
    }
    for (cipher, key_size, hash) in [
        ("aes-xts-plain64", "512", "sha256"),
        ("aes-cbc-essiv:sha256", "256", "sha1"),
    ] {
        let dir = tmpdir(&format!("luks1-{hash}"));
        let img = dir.join("img");
        std::fs::write(dir.join("pass"), b"pw-one").unwrap();
        run(Command::new("truncate").args(["-s", "8M"]).arg(&img));
        run(Command::new("cryptsetup")
            .args([
                "luksFormat",
                "--type",
                "luks1",
                "--cipher",
                cipher,
                "--key-size",
                key_size,
                "--hash",
                hash,
                "--pbkdf-force-iterations",
                "1000",
                "--batch-mode",
                "--key-file",
            ])
            .arg(dir.join("pass"))
            .arg(&img));
        check_image(&dir, &img, false);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
