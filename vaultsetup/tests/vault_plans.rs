//! The keyslots `open` sends to the vault (`keyslot::vault_plans`), checked without the
//! vault: for cryptsetup-made LUKS1 and LUKS2 images (PBKDF2 and Argon2id), a reference
//! unlock that uses only the typed parameters and the area sent (KDF, area decryption,
//! AF merge, digest check, as the vault does) opens the keyslot with the right
//! passphrase and fails with a wrong one; the areas are the device's bytes; LUKS2
//! keyslots are tried in cryptsetup's order and unbound ones are kept apart.

mod common;

use std::path::Path;

use common::*;
use vault_vm::engine::{CipherSpec, Geometry, SectorCipher};
use vaultsetup::device::Device;
use vaultsetup::kdf::{Argon2Variant, Hash, Kdf, KdfLimits};
use vaultsetup::keyslot::{vault_plans, VaultKeyslot};
use vaultsetup::{UnlockError, UnlockOptions, Volume};
use vmvault_proto::keyslot::{HashAlg, KdfSpec};

const PASS: &[u8] = b"plans passphrase";

fn hash(h: HashAlg) -> Hash {
    let name = serde_json::to_value(h).unwrap();
    Hash::from_name(name.as_str().unwrap()).unwrap()
}

/// What the vault does with a keyslot, from the typed parameters only: true when
/// `pass` opens it (the merged key has the digest).
fn reference_unlock(k: &VaultKeyslot, pass: &[u8]) -> bool {
    let s = &k.candidate.spec;
    let limits = KdfLimits::default();
    let salt = s.salt.as_bytes().to_vec();
    let kdf = match s.kdf {
        KdfSpec::Pbkdf2 {
            hash: h,
            iterations,
        } => Kdf::Pbkdf2 {
            hash: hash(h),
            iterations,
            salt,
        },
        KdfSpec::Argon2i {
            time,
            memory_kib,
            lanes,
        }
        | KdfSpec::Argon2id {
            time,
            memory_kib,
            lanes,
        } => Kdf::Argon2 {
            variant: if matches!(s.kdf, KdfSpec::Argon2i { .. }) {
                Argon2Variant::Argon2i
            } else {
                Argon2Variant::Argon2id
            },
            time,
            memory_kib,
            lanes,
            salt,
        },
    };
    let derived = kdf.derive(pass, s.area_key_size.bytes(), &limits).unwrap();
    let spec = CipherSpec::parse(s.area_cipher.as_str()).unwrap();
    let cipher = SectorCipher::new(spec, derived.as_slice()).unwrap();
    let mut area = k.area.clone();
    cipher
        .decrypt(&Geometry::new(512, false, 0).unwrap(), 0, &mut area)
        .unwrap();
    let key_len = s.volume_key_size.bytes();
    let key = vaultsetup::af::merge(
        &area[..key_len * s.stripes as usize],
        key_len,
        s.stripes,
        hash(s.af_hash),
    )
    .unwrap();
    let dkdf = Kdf::Pbkdf2 {
        hash: hash(s.digest_hash),
        iterations: s.digest_iterations,
        salt: s.digest_salt.as_bytes().to_vec(),
    };
    let d = dkdf
        .derive(key.as_slice(), s.digest.as_bytes().len(), &limits)
        .unwrap();
    d.as_slice() == s.digest.as_bytes()
}

fn format(w: &World, name: &str, args: &[&str]) -> std::path::PathBuf {
    let img = w.path().join(name);
    let kf = w.path().join("pass");
    std::fs::write(&kf, PASS).unwrap();
    support::luks_format(&img, 16, Path::new(&kf), args);
    img
}

fn plans(img: &Path, keyslot: Option<u32>) -> Result<vaultsetup::keyslot::VaultPlans, UnlockError> {
    let dev = Device::open(img).unwrap();
    let vol = Volume::read(&dev).unwrap();
    vault_plans(
        &dev,
        &vol,
        &UnlockOptions {
            keyslot,
            ..Default::default()
        },
    )
}

fn check_image(args: &[&str], want_kdf: &str) {
    if !require_for("vault_plans", &["cryptsetup"]) {
        return;
    }
    let w = World::new();
    let img = format(&w, "img", args);
    let p = plans(&img, None).unwrap();
    assert_eq!(p.bound.len(), 1, "{args:?}");
    assert!(p.unbound.is_empty());
    let k = p.bound.into_iter().next().unwrap().unwrap();
    assert_eq!(k.candidate.keyslot, 0);
    assert_eq!(k.area.len() as u64, k.candidate.area_len);
    assert_eq!(k.candidate.area_len, k.candidate.spec.area_len());
    let kdf = serde_json::to_value(k.candidate.spec.kdf).unwrap();
    assert_eq!(kdf["type"], want_kdf, "{kdf}");
    // The vault's parameter block builds.
    let params = k.candidate.spec.to_params().unwrap();
    assert_eq!(params.area_len(), k.candidate.area_len);
    // The area sent is the device's.
    let dev = Device::open(&img).unwrap();
    let mut first = vec![0u8; 512];
    let vol = Volume::read(&dev).unwrap();
    let off = match &vol {
        Volume::Luks1(h) => h.area(0).0,
        Volume::Luks2(h) => h.meta.keyslots["0"].area.offset.0,
    };
    dev.read_exact_at(off, &mut first).unwrap();
    assert_eq!(&k.area[..512], &first[..]);
    assert!(
        reference_unlock(&k, PASS),
        "{args:?}: the right passphrase opens it"
    );
    assert!(
        !reference_unlock(&k, b"wrong"),
        "{args:?}: a wrong one does not"
    );
}

#[test]
fn luks1_pbkdf2() {
    check_image(
        &[
            "--type",
            "luks1",
            "--pbkdf-force-iterations",
            "1000",
            "--hash",
            "sha1",
        ],
        "pbkdf2",
    );
}

#[test]
fn luks2_pbkdf2() {
    check_image(
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "pbkdf2",
            "--pbkdf-force-iterations",
            "1000",
        ],
        "pbkdf2",
    );
}

#[test]
fn luks2_argon2id() {
    check_image(
        &[
            "--type",
            "luks2",
            "--pbkdf",
            "argon2id",
            "--pbkdf-memory",
            "8192",
            "--pbkdf-force-iterations",
            "4",
            "--pbkdf-parallel",
            "1",
        ],
        "argon2id",
    );
}

#[test]
fn luks2_order_key_slot_and_unbound() {
    if !require_for("vault_plans", &["cryptsetup"]) {
        return;
    }
    let w = World::new();
    let fast = ["--pbkdf", "pbkdf2", "--pbkdf-force-iterations", "1000"];
    let mut a = vec!["--type", "luks2"];
    a.extend_from_slice(&fast);
    let img = format(&w, "img", &a);
    let kf = w.path().join("pass");
    let kf2 = w.path().join("pass2");
    std::fs::write(&kf2, b"second").unwrap();
    let add = |extra: &[&str]| {
        let mut c = std::process::Command::new("cryptsetup");
        c.args(["luksAddKey", "--batch-mode"])
            .args(fast)
            .args(extra)
            .arg("--key-file")
            .arg(&kf)
            .arg(&img)
            .arg(&kf2);
        run(&mut c);
    };
    add(&["--key-slot", "3"]);
    add(&["--unbound", "--key-size", "256", "--key-slot", "5"]);
    let p = plans(&img, None).unwrap();
    let ids: Vec<u32> = p
        .bound
        .iter()
        .map(|k| k.as_ref().unwrap().candidate.keyslot)
        .collect();
    assert_eq!(ids, vec![0, 3]);
    assert_eq!(p.unbound.len(), 1);
    let u = p.unbound[0].as_ref().unwrap();
    assert_eq!(u.candidate.keyslot, 5);
    assert_eq!(u.candidate.spec.volume_key_size.bits(), 256);
    assert!(
        reference_unlock(u, b"second"),
        "an unbound keyslot carries its own digest"
    );
    let three = p.bound[1].as_ref().unwrap();
    assert!(reference_unlock(three, b"second"));
    assert!(!reference_unlock(three, PASS));
    // --key-slot: only that one; an inactive or unbound one is refused before any
    // passphrase is sent.
    let p = plans(&img, Some(3)).unwrap();
    assert_eq!(p.bound.len(), 1);
    assert!(matches!(
        plans(&img, Some(4)),
        Err(UnlockError::SlotInactive(4))
    ));
    assert!(matches!(
        plans(&img, Some(5)),
        Err(UnlockError::NoUsableKeyslot)
    ));
}
