//! The generic AES operations (the PKCS#11 token's vault layer) on the kvm guest and the
//! soft backend, checked against OpenSSL: ECB, multi-part CBC, CTR with odd splits and a
//! 32-bit counter that wraps, GCM with AAD (and a tampered tag), XTS over one data unit,
//! AES key wrap (RFC 3394 and RFC 5649) and the rules: non-extractable keys stay in, LUKS
//! keys are no generic keys, owners are checked, a dropped key ends its contexts.

mod common;

use openssl::aes::{wrap_key, AesKey};
use openssl::symm::{decrypt_aead, encrypt, encrypt_aead, Cipher, Crypter, Mode};
use vault_vm::engine::CipherSpec;
use vmvault_hv::{
    BackendKind, Direction, GenericKey, HvError, KeyKind, Mechanism, Vault, WrapMechanism,
};

const OWNER: u64 = 0x0000_03e8_0000_0007;

fn ecb(key: &[u8], data: &[u8], enc: bool) -> Vec<u8> {
    let mut c = Crypter::new(
        Cipher::aes_256_ecb(),
        if enc { Mode::Encrypt } else { Mode::Decrypt },
        key,
        None,
    )
    .unwrap();
    c.pad(false);
    let mut out = vec![0u8; data.len() + 16];
    let n = c.update(data, &mut out).unwrap();
    let m = c.finalize(&mut out[n..]).unwrap();
    out.truncate(n + m);
    out
}

fn update(v: &Vault, ctx: vmvault_hv::ContextId, data: &[u8], cuts: &[usize]) -> Vec<u8> {
    let mut out = data.to_vec();
    let mut a = 0;
    for &c in cuts.iter().chain([data.len()].iter()) {
        v.generic_update(ctx, OWNER, &mut out[a..c]).unwrap();
        a = c;
    }
    out
}

fn modes(v: &Vault, k: GenericKey, key: &[u8]) {
    let data = common::random_bytes(4096 + 160);
    // ECB.
    let ctx = v
        .generic_init(k, &Mechanism::Ecb, Direction::Encrypt, OWNER)
        .unwrap();
    let ct = update(v, ctx, &data, &[16, 4096]);
    v.generic_final(ctx, OWNER).unwrap();
    assert_eq!(ct, ecb(key, &data, true), "ECB");
    // CBC in several parts, both ways.
    let iv: [u8; 16] = common::random_bytes(16).try_into().unwrap();
    let ctx = v
        .generic_init(k, &Mechanism::Cbc { iv }, Direction::Encrypt, OWNER)
        .unwrap();
    let ct = update(v, ctx, &data, &[32, 48, 3984]);
    v.generic_final(ctx, OWNER).unwrap();
    let mut want = encrypt(Cipher::aes_256_cbc(), key, Some(&iv), &data).unwrap();
    want.truncate(data.len()); // OpenSSL's PKCS#7 block
    assert_eq!(ct, want, "CBC");
    let ctx = v
        .generic_init(k, &Mechanism::Cbc { iv }, Direction::Decrypt, OWNER)
        .unwrap();
    assert_eq!(update(v, ctx, &ct, &[4096]), data, "CBC decrypt");
    v.generic_final(ctx, OWNER).unwrap();
    // CTR, odd splits, a 32-bit counter wrapping from 0xffff_fffd to 0 inside.
    let mut cb: [u8; 16] = common::random_bytes(16).try_into().unwrap();
    cb[12..].copy_from_slice(&0xffff_fffdu32.to_be_bytes());
    let ctx = v
        .generic_init(
            k,
            &Mechanism::Ctr {
                counter_block: cb,
                counter_bits: 32,
            },
            Direction::Encrypt,
            OWNER,
        )
        .unwrap();
    let ct = update(v, ctx, &data, &[1, 17, 50, 51, 1000, 3333]);
    v.generic_final(ctx, OWNER).unwrap();
    let blocks: Vec<u8> = (0..data.len().div_ceil(16) as u32)
        .flat_map(|i| {
            let mut b = cb;
            let lo = 0xffff_fffdu32.wrapping_add(i);
            b[12..].copy_from_slice(&lo.to_be_bytes());
            b
        })
        .collect();
    let ks = ecb(key, &blocks, true);
    let want: Vec<u8> = data.iter().zip(&ks).map(|(d, s)| d ^ s).collect();
    assert_eq!(ct, want, "CTR with a wrapping 32-bit counter");
    // GCM with AAD: ciphertext and tag as OpenSSL's; decrypt; a tampered tag.
    let iv = common::random_bytes(12);
    let aad = common::random_bytes(77);
    let gcm = Mechanism::Gcm {
        iv: &iv,
        aad: &aad,
        tag_bits: 128,
    };
    let ctx = v.generic_init(k, &gcm, Direction::Encrypt, OWNER).unwrap();
    let ct = update(v, ctx, &data, &[5, 100, 4001]);
    let tag = v.gcm_encrypt_final(ctx, OWNER).unwrap();
    let mut want_tag = [0u8; 16];
    let want = encrypt_aead(
        Cipher::aes_256_gcm(),
        key,
        Some(&iv),
        &aad,
        &data,
        &mut want_tag,
    )
    .unwrap();
    assert_eq!((ct.clone(), tag.clone()), (want, want_tag.to_vec()), "GCM");
    let ctx = v.generic_init(k, &gcm, Direction::Decrypt, OWNER).unwrap();
    assert_eq!(update(v, ctx, &ct, &[3000]), data);
    v.gcm_decrypt_final(ctx, OWNER, &tag).unwrap();
    let mut bad = tag.clone();
    bad[15] ^= 0x80;
    assert!(decrypt_aead(Cipher::aes_256_gcm(), key, Some(&iv), &aad, &ct, &bad).is_err());
    let ctx = v.generic_init(k, &gcm, Direction::Decrypt, OWNER).unwrap();
    update(v, ctx, &ct, &[]);
    assert!(matches!(
        v.gcm_decrypt_final(ctx, OWNER, &bad),
        Err(HvError::TagMismatch)
    ));
    assert!(matches!(
        v.generic_abort(ctx, OWNER),
        Err(HvError::ContextGone)
    ));
}

fn run(backend: BackendKind) {
    let Some(v) = common::open(backend, 2) else {
        return;
    };
    let key = common::random_bytes(32);
    let k = v.generic_import_key(KeyKind::Aes, &key, true).unwrap();
    modes(&v, k, &key);

    // XTS over one 4096-byte data unit and over eight 512-byte ones.
    let xkey = common::random_bytes(64);
    let xk = v.generic_import_key(KeyKind::Xts, &xkey, false).unwrap();
    let data = common::random_bytes(4096);
    let mut buf = data.clone();
    v.generic_xts(xk, Direction::Encrypt, 0x1234_5678_9abc, 4096, &mut buf)
        .unwrap();
    let mut tweak = [0u8; 16];
    tweak[..8].copy_from_slice(&0x1234_5678_9abcu64.to_le_bytes());
    let want = encrypt(Cipher::aes_256_xts(), &xkey, Some(&tweak), &data).unwrap();
    assert_eq!(buf, want, "XTS");
    v.generic_xts(xk, Direction::Decrypt, 0x1234_5678_9abc, 4096, &mut buf)
        .unwrap();
    assert_eq!(buf, data);
    v.generic_xts(xk, Direction::Encrypt, 7, 512, &mut buf)
        .unwrap();
    for (i, unit) in buf.chunks(512).enumerate() {
        let mut t = [0u8; 16];
        t[..8].copy_from_slice(&(7 + i as u64).to_le_bytes());
        let w = encrypt(
            Cipher::aes_256_xts(),
            &xkey,
            Some(&t),
            &data[i * 512..][..512],
        )
        .unwrap();
        assert_eq!(unit, &w[..], "XTS unit {i}");
    }

    // Key wrap: KW as OpenSSL's AES_wrap_key, KWP as RFC 5649 (AIV A65959A6 || length,
    // no padding for these lengths), and unwrap round trips.
    let kek = common::random_bytes(32);
    let wk = v.generic_import_key(KeyKind::Aes, &kek, false).unwrap();
    let ek = AesKey::new_encrypt(&kek).unwrap();
    let mut kw_ref = vec![0u8; 40];
    wrap_key(&ek, None, &mut kw_ref, &key).unwrap();
    let mut kwp_ref = vec![0u8; 40];
    let aiv = [0xa6, 0x59, 0x59, 0xa6, 0, 0, 0, 32];
    wrap_key(&ek, Some(aiv), &mut kwp_ref, &key).unwrap();
    for (m, r) in [(WrapMechanism::Kw, &kw_ref), (WrapMechanism::Kwp, &kwp_ref)] {
        let w = v.wrap_key(wk, k, m).unwrap();
        assert_eq!(&w, r, "{m:?}");
        let u = v.unwrap_key(wk, m, &w, KeyKind::Aes, false).unwrap();
        // The unwrapped key encrypts as the original.
        let ctx = v
            .generic_init(u, &Mechanism::Ecb, Direction::Encrypt, OWNER)
            .unwrap();
        let mut b = [0x42u8; 32];
        v.generic_update(ctx, OWNER, &mut b).unwrap();
        v.generic_final(ctx, OWNER).unwrap();
        assert_eq!(b.to_vec(), ecb(&key, &[0x42u8; 32], true));
        // Not extractable: it stays in.
        assert!(matches!(v.wrap_key(wk, u, m), Err(HvError::NotExtractable)));
        v.generic_drop_key(u).unwrap();
        let mut t = w.clone();
        t[9] ^= 1;
        assert!(matches!(
            v.unwrap_key(wk, m, &t, KeyKind::Aes, false),
            Err(HvError::UnwrapFailed)
        ));
    }
    // The XTS key was imported non-extractable.
    assert!(matches!(
        v.wrap_key(wk, xk, WrapMechanism::Kwp),
        Err(HvError::NotExtractable)
    ));
    // GCM and wrapping need an AES key, XTS an XTS key.
    assert!(matches!(
        v.generic_init(xk, &Mechanism::Ecb, Direction::Encrypt, OWNER),
        Err(HvError::KeyKind)
    ));

    // A LUKS (sector) key is no generic key: GENERIC_INIT refuses its slot.
    let luks = v
        .import_key(CipherSpec::parse("aes-ecb").unwrap(), &key)
        .unwrap();
    // What a confused or hostile caller of the raw ABI could send: a generic handle
    // naming the LUKS key's slot.
    let as_generic = GenericKey::from_raw_for_tests(luks.index(), luks.generation(), KeyKind::Aes);
    assert!(matches!(
        v.generic_init(as_generic, &Mechanism::Ecb, Direction::Encrypt, OWNER),
        Err(HvError::KeyKind)
    ));
    v.drop_key(luks).unwrap();

    // Owners: another owner cannot drive the context; the right one still can.
    let ctx = v
        .generic_init(k, &Mechanism::Ecb, Direction::Encrypt, OWNER)
        .unwrap();
    let mut b = [0u8; 16];
    assert!(matches!(
        v.generic_update(ctx, OWNER + 1, &mut b),
        Err(HvError::ContextOwner)
    ));
    assert!(matches!(
        v.generic_abort(ctx, OWNER + 1),
        Err(HvError::ContextOwner)
    ));
    v.generic_update(ctx, OWNER, &mut b).unwrap();
    // A dropped key ends its contexts.
    v.generic_drop_key(k).unwrap();
    assert!(matches!(
        v.generic_update(ctx, OWNER, &mut b),
        Err(HvError::ContextGone)
    ));
    v.generic_drop_key(xk).unwrap();
    v.generic_drop_key(wk).unwrap();
    assert_eq!(v.stats().unwrap().slots_used, 0);
}

#[test]
fn generic_modes_on_soft() {
    run(BackendKind::Soft);
}

#[test]
fn generic_modes_on_kvm() {
    run(BackendKind::Kvm);
}
