//! The keyslot commands of the control protocol: receiving their payload (keyslot areas,
//! the passphrase into a locked buffer), the key handles a connection owns, and the
//! vault calls behind `generate_key`, `unlock_keyslot`, `seal_keyslot`, `key_digest`
//! and `drop_key`. The host never holds a volume key: handles name vault slots.

use std::collections::HashMap;
use std::sync::Arc;

use vmvault_hv::{EntropySource, HvError, SlotId, Vault};
use vmvault_proto::keyslot::{KeyslotCandidate, KeyslotError, KeyslotSpec, Payload};
use vmvault_proto::protocol::{
    AreaReply, BackendChoice, DigestReply, Done, EntropyKind, GeneratedKey, KeyHandle, Request,
    Response,
};
use vmvault_proto::secret::{Passphrase, SecretBuf};
use vmvault_proto::types::{CipherSpec, KeySize};
use vmvault_proto::ExitCode;

use super::conn::ConnReader;
use crate::backend::{vault_kind, UnlockCandidate};
use crate::vault::VaultPool;

/// Most key handles one connection may hold.
pub const MAX_HANDLES: usize = 16;

/// The commands whose line is followed by a payload (a line of one of them that does
/// not parse leaves the stream out of step: the connection is closed).
pub const PAYLOAD_COMMANDS: [&str; 4] = [
    "open_unlock",
    "open_fd_unlock",
    "unlock_keyslot",
    "seal_keyslot",
];

/// The payload lengths `req` names, checked; `None` for requests without payload.
pub fn payload_of(req: &Request) -> Option<Result<Payload, KeyslotError>> {
    Some(match req {
        Request::OpenUnlock(o) | Request::OpenFdUnlock(o) => {
            Payload::check(&o.keyslots, o.passphrase_len, false)
        }
        Request::UnlockKeyslot {
            keyslot,
            passphrase_len,
            ..
        } => Payload::check(std::slice::from_ref(keyslot), *passphrase_len, false),
        Request::SealKeyslot { passphrase_len, .. } => Payload::check(&[], *passphrase_len, true),
        _ => return None,
    })
}

/// A received payload: the areas (ciphertext) and the passphrase (locked, zeroized).
pub struct Received {
    /// Each keyslot's area, in the request's order.
    pub areas: Vec<Vec<u8>>,
    /// The passphrase.
    pub passphrase: Passphrase,
}

/// Lengths only.
impl std::fmt::Debug for Received {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("areas", &self.areas.len())
            .field("passphrase", &self.passphrase)
            .finish()
    }
}

/// Reads the payload `p` describes from the connection: the areas, then the passphrase
/// straight into a locked buffer.
pub fn read_payload(reader: &mut ConnReader, p: &Payload) -> std::io::Result<Received> {
    let mut areas = Vec::with_capacity(p.areas.len());
    for &len in &p.areas {
        let mut a = vec![0u8; len as usize];
        reader.read_exact(&mut a)?;
        areas.push(a);
    }
    let mut pass = SecretBuf::zeroed(p.passphrase as usize);
    reader.read_exact(pass.as_mut_slice())?;
    Ok(Received {
        areas,
        passphrase: Passphrase::new(pass),
    })
}

/// The vault's parameter blocks of `keyslots` with their areas.
pub fn candidates(
    keyslots: &[KeyslotCandidate],
    areas: Vec<Vec<u8>>,
) -> Result<Vec<UnlockCandidate>, KeyslotError> {
    keyslots
        .iter()
        .zip(areas)
        .map(|(k, area)| {
            Ok(UnlockCandidate {
                keyslot: k.keyslot,
                params: k.spec.to_params()?,
                area,
            })
        })
        .collect()
}

/// Key handles of one connection: vault slots it generated or unlocked, dropped when
/// it says so or closes.
#[derive(Default)]
pub struct ConnHandles {
    next: u64,
    keys: HashMap<u64, (Arc<Vault>, SlotId)>,
}

/// Handle numbers only.
impl std::fmt::Debug for ConnHandles {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ConnHandles")
            .field("handles", &self.keys.keys().collect::<Vec<_>>())
            .finish()
    }
}

impl Drop for ConnHandles {
    fn drop(&mut self) {
        for (_, (vault, slot)) in self.keys.drain() {
            let _ = vault.drop_key(slot);
        }
    }
}

/// A refusal for a vault error of a keyslot command.
fn refuse<T>(e: &HvError) -> Response<T> {
    let code = match e {
        HvError::BadPassphrase => ExitCode::NoPermission,
        HvError::ScratchTooLarge { .. } => ExitCode::OutOfMemory,
        HvError::Refused { status, .. } if *status == vault_vm::abi::keyslot::status::KDF_LIMIT => {
            ExitCode::OutOfMemory
        }
        HvError::BadKeyLength(..) | HvError::BadKeyslot(_) | HvError::Unsupported(_) => {
            ExitCode::WrongParameters
        }
        _ => ExitCode::WrongDevice,
    };
    match e {
        HvError::BadPassphrase => Response::err(code, "No key available with this passphrase."),
        e => Response::err(code, format!("vault: {e}")),
    }
}

fn bad<T>(e: impl std::fmt::Display) -> Response<T> {
    Response::err(ExitCode::WrongParameters, e.to_string())
}

impl ConnHandles {
    fn insert(&mut self, vault: Arc<Vault>, slot: SlotId) -> u64 {
        self.next += 1;
        self.keys.insert(self.next, (vault, slot));
        self.next
    }

    fn room<T>(&self) -> Result<(), Response<T>> {
        if self.keys.len() >= MAX_HANDLES {
            return Err(Response::err(
                ExitCode::Busy,
                format!("this connection holds {MAX_HANDLES} key handles already; drop one"),
            ));
        }
        Ok(())
    }

    fn get<T>(&self, handle: u64) -> Result<&(Arc<Vault>, SlotId), Response<T>> {
        self.keys
            .get(&handle)
            .ok_or_else(|| bad(format!("no key handle {handle} on this connection")))
    }

    /// `generate_key`.
    pub fn generate(
        &mut self,
        vaults: &VaultPool,
        cipher: &CipherSpec,
        key_size: KeySize,
        backend: BackendChoice,
    ) -> Response<GeneratedKey> {
        let r = (|| {
            self.room()?;
            if !cipher.key_size_ok(key_size) {
                return Err(bad(format!(
                    "a {key_size} key does not fit cipher {cipher}"
                )));
            }
            let vault = open_vault(vaults, backend)?;
            let (slot, source) = vault
                .generate_key(cipher.engine(), key_size.bytes())
                .map_err(|e| refuse(&e))?;
            let entropy = match source {
                EntropySource::Rdseed => EntropyKind::Rdseed,
                EntropySource::Rdrand => EntropyKind::Rdrand,
            };
            let handle = self.insert(vault, slot);
            Ok(GeneratedKey { handle, entropy })
        })();
        r.map_or_else(|e| e, Response::ok)
    }

    /// `unlock_keyslot`.
    pub fn unlock(
        &mut self,
        vaults: &VaultPool,
        cipher: &CipherSpec,
        backend: BackendChoice,
        keyslot: &KeyslotCandidate,
        rx: Received,
    ) -> Response<KeyHandle> {
        let r = (|| {
            self.room()?;
            let c = candidates(std::slice::from_ref(keyslot), rx.areas).map_err(bad)?;
            let vault = open_vault(vaults, backend)?;
            let slot = vault
                .unlock_keyslot(
                    cipher.engine(),
                    &c[0].params,
                    rx.passphrase.as_bytes(),
                    &c[0].area,
                )
                .map_err(|e| refuse(&e))?;
            Ok(KeyHandle {
                handle: self.insert(vault, slot),
            })
        })();
        r.map_or_else(|e| e, Response::ok)
    }

    /// `seal_keyslot`: the reply and the area that follows it.
    pub fn seal(
        &self,
        handle: u64,
        keyslot: &KeyslotSpec,
        rx: Received,
    ) -> (Response<AreaReply>, Vec<u8>) {
        let r = (|| {
            let (vault, slot) = self.get(handle)?;
            let params = keyslot.to_params().map_err(bad)?;
            vault
                .seal_keyslot(*slot, &params, rx.passphrase.as_bytes())
                .map_err(|e| refuse(&e))
        })();
        match r {
            Ok(area) => (
                Response::ok(AreaReply {
                    area_len: area.len() as u64,
                }),
                area,
            ),
            Err(e) => (e, Vec::new()),
        }
    }

    /// `key_digest`.
    pub fn digest(&self, handle: u64, keyslot: &KeyslotSpec) -> Response<DigestReply> {
        let r = (|| {
            let (vault, slot) = self.get(handle)?;
            let params = keyslot.to_params().map_err(bad)?;
            let d = vault.key_digest(*slot, &params).map_err(|e| refuse(&e))?;
            let digest = vmvault_proto::keyslot::HexBytes::new(&d).map_err(bad)?;
            Ok(DigestReply { digest })
        })();
        r.map_or_else(|e| e, Response::ok)
    }

    /// `drop_key`.
    pub fn drop_key(&mut self, handle: u64) -> Response<Done> {
        let Some((vault, slot)) = self.keys.remove(&handle) else {
            return bad(format!("no key handle {handle} on this connection"));
        };
        match vault.drop_key(slot) {
            Ok(()) => Response::ok(Done {}),
            Err(e) => refuse(&e),
        }
    }
}

/// The vault a keyslot command names (never the in-process engine).
fn open_vault<T>(vaults: &VaultPool, backend: BackendChoice) -> Result<Arc<Vault>, Response<T>> {
    let kind = vault_kind(backend).ok_or_else(|| {
        bad("the in-process backend has no vault to hold keys; use kvm, soft or auto")
    })?;
    vaults
        .get(kind)
        .map_err(|e| Response::err(ExitCode::WrongDevice, e.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use vmvault_proto::keyslot::{HashAlg, HexBytes, KdfSpec};

    fn spec() -> KeyslotSpec {
        KeyslotSpec {
            kdf: KdfSpec::Pbkdf2 {
                hash: HashAlg::Sha256,
                iterations: 1000,
            },
            salt: HexBytes::new(&[1; 32]).unwrap(),
            area_cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
            area_key_size: KeySize::from_bits(512).unwrap(),
            stripes: 4000,
            af_hash: HashAlg::Sha256,
            volume_key_size: KeySize::from_bits(512).unwrap(),
            digest_hash: HashAlg::Sha256,
            digest_iterations: 1000,
            digest_salt: HexBytes::new(&[2; 32]).unwrap(),
            digest: HexBytes::new(&[3; 32]).unwrap(),
        }
    }

    #[test]
    fn payload_requests_are_known_and_checked() {
        let cand = KeyslotCandidate {
            keyslot: 0,
            spec: spec(),
            area_len: 256_000,
        };
        let r = Request::UnlockKeyslot {
            cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
            backend: BackendChoice::Soft,
            keyslot: cand.clone(),
            passphrase_len: 4,
        };
        let p = payload_of(&r).unwrap().unwrap();
        assert_eq!((p.areas, p.passphrase), (vec![256_000], 4));
        let r = Request::UnlockKeyslot {
            cipher: CipherSpec::parse("aes-xts-plain64").unwrap(),
            backend: BackendChoice::Soft,
            keyslot: KeyslotCandidate {
                area_len: 512,
                ..cand
            },
            passphrase_len: 4,
        };
        assert!(payload_of(&r).unwrap().is_err());
        assert!(payload_of(&Request::Ping {}).is_none());
        assert!(payload_of(&Request::DropKey { handle: 1 }).is_none());
        // Every request with a payload is in PAYLOAD_COMMANDS.
        let seal = Request::SealKeyslot {
            handle: 1,
            keyslot: spec(),
            passphrase_len: 1,
        };
        for req in [&r, &seal] {
            let v: serde_json::Value = serde_json::to_value(req).unwrap();
            let cmd = v["cmd"].as_str().unwrap();
            assert!(PAYLOAD_COMMANDS.contains(&cmd), "{cmd}");
        }
    }

    #[test]
    fn payload_is_read_into_areas_and_a_locked_passphrase() {
        use std::io::Write;
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        (&a).write_all(b"line\n").unwrap();
        (&a).write_all(&[7u8; 512]).unwrap();
        (&a).write_all(b"secret").unwrap();
        let mut r = ConnReader::new(&b);
        assert!(matches!(r.next_line(), super::super::conn::Next::Line(..)));
        let rx = read_payload(
            &mut r,
            &Payload {
                areas: vec![512],
                passphrase: 6,
            },
        )
        .unwrap();
        assert_eq!(rx.areas, vec![vec![7u8; 512]]);
        assert_eq!(rx.passphrase.as_bytes(), b"secret");
        let dbg = format!("{rx:?}");
        assert!(!dbg.contains("secret"), "{dbg}");
    }

    #[test]
    fn handles_belong_to_the_connection() {
        let pool = VaultPool::new(1);
        let mut h = ConnHandles::default();
        let r = h.digest(9, &spec());
        assert!(matches!(
            r,
            Response::Error {
                code: ExitCode::WrongParameters,
                ..
            }
        ));
        let r = h.drop_key(9);
        assert!(matches!(
            r,
            Response::Error {
                code: ExitCode::WrongParameters,
                ..
            }
        ));
        // The in-process engine cannot hold a handle.
        let r = h.generate(
            &pool,
            &CipherSpec::parse("aes-xts-plain64").unwrap(),
            KeySize::from_bits(512).unwrap(),
            BackendChoice::InProcess,
        );
        assert!(matches!(
            r,
            Response::Error {
                code: ExitCode::WrongParameters,
                ..
            }
        ));
        // A key size the cipher does not take is refused before the vault.
        let r = h.generate(
            &pool,
            &CipherSpec::parse("aes-xts-plain64").unwrap(),
            KeySize::from_bits(128).unwrap(),
            BackendChoice::Soft,
        );
        assert!(matches!(
            r,
            Response::Error {
                code: ExitCode::WrongParameters,
                ..
            }
        ));
    }

    /// NEEDS THE VAULT SIDE OF ISSUE 14 (fails with "vault does not support
    /// GENERATE_KEY (BAD_OP)" until then): generate, digest, seal, unlock the sealed
    /// area into a second handle, compare digests; wrong passphrase is code 2.
    #[test]
    fn generate_seal_unlock_digest_on_the_soft_vault() {
        let pool = VaultPool::new(1);
        let mut h = ConnHandles::default();
        let cipher = CipherSpec::parse("aes-xts-plain64").unwrap();
        let g = match h.generate(
            &pool,
            &cipher,
            KeySize::from_bits(512).unwrap(),
            BackendChoice::Soft,
        ) {
            Response::Ok { reply, .. } => reply,
            Response::Error { error, .. } => panic!("{error}"),
        };
        let mut s = spec();
        let Response::Ok { reply: d, .. } = h.digest(g.handle, &s) else {
            panic!("digest")
        };
        s.digest = d.digest.clone();
        let pass = |p: &[u8]| Received {
            areas: Vec::new(),
            passphrase: Passphrase::from_slice(p),
        };
        let (Response::Ok { .. }, area) = h.seal(g.handle, &s, pass(b"pw")) else {
            panic!("seal")
        };
        let cand = KeyslotCandidate {
            keyslot: 0,
            area_len: area.len() as u64,
            spec: s.clone(),
        };
        let rx = |p: &[u8]| Received {
            areas: vec![area.clone()],
            passphrase: Passphrase::from_slice(p),
        };
        let Response::Ok { reply: k, .. } =
            h.unlock(&pool, &cipher, BackendChoice::Soft, &cand, rx(b"pw"))
        else {
            panic!("unlock")
        };
        let Response::Ok { reply: d2, .. } = h.digest(k.handle, &s) else {
            panic!("digest 2")
        };
        assert_eq!(d2.digest, d.digest);
        let r = h.unlock(&pool, &cipher, BackendChoice::Soft, &cand, rx(b"wrong"));
        assert!(matches!(
            r,
            Response::Error {
                code: ExitCode::NoPermission,
                ..
            }
        ));
        assert!(matches!(h.drop_key(k.handle), Response::Ok { .. }));
        assert!(matches!(h.drop_key(k.handle), Response::Error { .. }));
    }
}
