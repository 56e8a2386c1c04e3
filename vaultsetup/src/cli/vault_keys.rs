//! The vault side of `luksFormat` and the keyslot verbs: the volume key is generated or
//! unlocked inside the vault and stays there under a handle of the vmvaultd connection;
//! this process only sends passphrases (from their locked buffers) and keyslot
//! parameters, and receives encrypted areas and digests — never a key.
//!
//! - [`SlotParams`]: a new keyslot's KDF cost, salt, AF hash and area cipher, as the
//!   vault's [`KeyslotSpec`] and, with the sealed area, as the header writer's
//!   [`KeyslotMaterial`].
//! - [`Unlocker`]: the [`super::keyslots::KeyCheck`] of the keyslot verbs — it opens the
//!   header for writing, unlocks the candidate keyslots in the vault one by one and keeps
//!   the handle of the first that opens.

use std::fs::File;
use std::path::{Path, PathBuf};

use vmvault_proto::client::{connect_or_spawn, Client};
use vmvault_proto::keyslot::{HashAlg, HexBytes, KdfSpec, KeyslotSpec};
use vmvault_proto::protocol::BackendChoice;
use vmvault_proto::{CipherSpec, KeySize};

use super::activate::{backend_choice, client_fail, is_no_key};
use super::keyslots::SlotQuery;
use super::{fail, resolve_device, Cli, Failure, VaultArgs};
use crate::activation::volume_cipher;
use crate::device::Device;
use crate::exit::ExitCode;
use crate::format::material::{AfParams, KdfParams, KeyslotMaterial};
use crate::kdf::{Argon2Variant, Hash};
use crate::keyslot::{hash_alg, vault_plans, UnlockError, UnlockOptions};
use crate::pbkdf_bench::{
    digest_iterations, pbkdf2_iterations_per_second, BenchTuning, PbkdfCost, PbkdfRequest,
    PBKDF2_MIN_ITERATIONS,
};
use crate::secret::Passphrase;
use crate::volume::Volume;

/// Bytes of a new KDF or digest salt (cryptsetup's `LUKS_SALTSIZE`).
pub const SALT_LEN: usize = 32;
/// AF stripes of a new keyslot (cryptsetup's `LUKS_STRIPES`).
pub const STRIPES: u32 = 4000;
/// Length of a LUKS1 volume key digest (`LUKS_DIGESTSIZE`).
pub const LUKS1_DIGEST_LEN: usize = 20;

/// The LUKS name of a hash.
pub fn hash_name(h: Hash) -> &'static str {
    match h {
        Hash::Sha1 => "sha1",
        Hash::Sha224 => "sha224",
        Hash::Sha256 => "sha256",
        Hash::Sha384 => "sha384",
        Hash::Sha512 => "sha512",
        Hash::Ripemd160 => "ripemd160",
    }
}

/// `n` random bytes from the kernel (`getrandom`): KDF and digest salts.
pub fn random_bytes(n: usize) -> Result<Vec<u8>, Failure> {
    let mut v = vec![0u8; n];
    crate::format::random::fill(&mut v)?;
    Ok(v)
}

fn hex(b: &[u8]) -> Result<HexBytes, Failure> {
    HexBytes::new(b).map_err(|e| fail(ExitCode::WrongParameters, e.to_string()))
}

/// Connects to vmvaultd, starting it as `open` does when none answers.
pub fn connect(cli: &Cli, vault: &VaultArgs) -> Result<Client, Failure> {
    connect_or_spawn(&vault.daemon.dir(), &cli.spawn).map_err(client_fail)
}

/// The PBKDF2 iterations of a new volume key digest: cryptsetup's 125 ms of the
/// measured rate (at least 1000), or 1000 when the keyslot's cost was forced (cryptsetup
/// skips every benchmark then).
pub fn new_digest_iterations(
    req: &PbkdfRequest,
    hash: Hash,
    key_len: usize,
) -> Result<u32, Failure> {
    let forced = match req {
        PbkdfRequest::Pbkdf2 {
            forced_iterations, ..
        } => forced_iterations.is_some(),
        PbkdfRequest::Argon2 { forced_time, .. } => forced_time.is_some(),
    };
    if forced {
        return Ok(PBKDF2_MIN_ITERATIONS);
    }
    let rate = pbkdf2_iterations_per_second(hash, key_len, &BenchTuning::default())?;
    Ok(digest_iterations(rate, hash)?)
}

/// The digest part of a keyslot spec: the volume's digest parameters (for a seal the
/// digest value only gives the length; the vault ignores it).
#[derive(Clone, Debug)]
pub struct DigestSpec {
    /// PBKDF2 hash.
    pub hash: HashAlg,
    /// PBKDF2 iterations.
    pub iterations: u32,
    /// Salt.
    pub salt: HexBytes,
    /// Digest value, or zeros of its length.
    pub digest: HexBytes,
}

impl DigestSpec {
    /// The digest parameters of an existing keyslot's spec.
    pub fn of(spec: &KeyslotSpec) -> Self {
        Self {
            hash: spec.digest_hash,
            iterations: spec.digest_iterations,
            salt: spec.digest_salt.clone(),
            digest: spec.digest.clone(),
        }
    }
}

/// A new keyslot's parameters (public header values, no secret).
#[derive(Clone, Debug)]
pub struct SlotParams {
    /// KDF and cost.
    pub cost: PbkdfCost,
    /// KDF salt ([`SALT_LEN`] random bytes).
    pub salt: Vec<u8>,
    /// AF diffusion hash.
    pub af_hash: Hash,
    /// Area encryption: the volume's cipher (cryptsetup's choice for both formats).
    pub cipher: CipherSpec,
    /// The volume key size (also the area key size).
    pub key: KeySize,
}

impl SlotParams {
    /// New parameters with a fresh random salt.
    pub fn new(
        cost: PbkdfCost,
        af_hash: Hash,
        cipher: CipherSpec,
        key: KeySize,
    ) -> Result<Self, Failure> {
        Ok(Self {
            cost,
            salt: random_bytes(SALT_LEN)?,
            af_hash,
            cipher,
            key,
        })
    }

    fn kdf_spec(&self) -> KdfSpec {
        match self.cost {
            PbkdfCost::Pbkdf2 { hash, iterations } => KdfSpec::Pbkdf2 {
                hash: hash_alg(hash),
                iterations,
            },
            PbkdfCost::Argon2 {
                variant: Argon2Variant::Argon2i,
                time,
                memory_kib,
                lanes,
            } => KdfSpec::Argon2i {
                time,
                memory_kib,
                lanes,
            },
            PbkdfCost::Argon2 {
                variant: Argon2Variant::Argon2id,
                time,
                memory_kib,
                lanes,
            } => KdfSpec::Argon2id {
                time,
                memory_kib,
                lanes,
            },
        }
    }

    /// The vault's parameters for sealing this keyslot (and computing `digest`).
    pub fn spec(&self, digest: &DigestSpec) -> Result<KeyslotSpec, Failure> {
        Ok(KeyslotSpec {
            kdf: self.kdf_spec(),
            salt: hex(&self.salt)?,
            area_cipher: self.cipher.clone(),
            area_key_size: self.key,
            stripes: STRIPES,
            af_hash: hash_alg(self.af_hash),
            volume_key_size: self.key,
            digest_hash: digest.hash,
            digest_iterations: digest.iterations,
            digest_salt: digest.salt.clone(),
            digest: digest.digest.clone(),
        })
    }

    /// The header writer's view of the keyslot, with the area the vault sealed.
    pub fn material(&self, area: Vec<u8>) -> KeyslotMaterial {
        let kdf = match self.cost {
            PbkdfCost::Pbkdf2 { hash, iterations } => KdfParams::Pbkdf2 {
                hash: hash_name(hash).into(),
                iterations,
                salt: self.salt.clone(),
            },
            PbkdfCost::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
            } => KdfParams::Argon2 {
                variant,
                time,
                memory_kib,
                lanes,
                salt: self.salt.clone(),
            },
        };
        KeyslotMaterial {
            key_size: self.key.bytes() as u32,
            af: AfParams {
                stripes: STRIPES,
                hash: hash_name(self.af_hash).into(),
            },
            area_cipher: self.cipher.as_str().into(),
            area_key_size: self.key.bytes() as u32,
            kdf,
            priority: None,
            area,
        }
    }
}

/// The header being edited: opened for writing, and read from that same file.
#[derive(Debug)]
pub struct EditTarget {
    /// Opened read-write (not exclusive: cryptsetup edits keyslots of active devices).
    pub file: File,
    /// The same file for reading.
    pub dev: Device,
    /// Its header.
    pub vol: Volume,
}

impl EditTarget {
    /// Opens the header of `device` (`header` when detached) for a keyslot edit.
    pub fn open(device: &Path, header: Option<&Path>) -> Result<Self, Failure> {
        use std::os::unix::fs::OpenOptionsExt;
        let path: PathBuf = resolve_device(header.unwrap_or(device))?;
        let file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(&path)
            .map_err(|e| {
                fail(
                    ExitCode::WrongDevice,
                    format!(
                        "Cannot open device {} for read-write access: {e}",
                        path.display()
                    ),
                )
            })?;
        let dev = Device::open(&path)?;
        if !dev.is_same_file(&file) {
            return Err(fail(
                ExitCode::WrongDevice,
                format!(
                    "Device {} changed while it was being opened; refusing it.",
                    path.display()
                ),
            ));
        }
        let vol = Volume::read(&dev)?;
        Ok(Self { file, dev, vol })
    }
}

/// A key the vault unlocked from a keyslot (the key itself stays in the vault).
#[derive(Debug)]
pub struct Unlocked {
    /// The handle on the connection.
    pub handle: u64,
    /// The keyslot that opened.
    pub keyslot: u32,
    /// That keyslot's parameters (its digest parameters are the volume's).
    pub spec: KeyslotSpec,
}

/// The keyslot verbs' passphrase check, in the vault: header and connection are opened
/// on the first check; each check drops the key of the previous one.
#[derive(Debug)]
pub struct Unlocker<'a> {
    cli: &'a Cli,
    vault: &'a VaultArgs,
    device: &'a Path,
    header: Option<&'a Path>,
    /// The header, once opened.
    pub target: Option<EditTarget>,
    /// The connection, once made.
    pub client: Option<Client>,
    /// The last check's key.
    pub unlocked: Option<Unlocked>,
}

impl<'a> Unlocker<'a> {
    /// An unlocker for `device` (header `header` when detached); nothing is opened yet.
    pub fn new(
        cli: &'a Cli,
        vault: &'a VaultArgs,
        device: &'a Path,
        header: Option<&'a Path>,
    ) -> Self {
        Self {
            cli,
            vault,
            device,
            header,
            target: None,
            client: None,
            unlocked: None,
        }
    }

    /// The vault backend asked for.
    pub fn backend(&self) -> BackendChoice {
        backend_choice(self.vault.backend)
    }

    /// Opens the header (once) and returns it.
    pub fn target(&mut self) -> Result<&mut EditTarget, Failure> {
        if self.target.is_none() {
            self.target = Some(EditTarget::open(self.device, self.header)?);
        }
        Ok(self.target.as_mut().expect("just set"))
    }

    /// Connects (once) and returns the connection.
    pub fn client(&mut self) -> Result<&mut Client, Failure> {
        if self.client.is_none() {
            self.client = Some(connect(self.cli, self.vault)?);
        }
        Ok(self.client.as_mut().expect("just set"))
    }

    /// Drops the key of the last check from the vault.
    pub fn drop_key(&mut self) -> Result<(), Failure> {
        if let (Some(u), Some(c)) = (self.unlocked.take(), self.client.as_mut()) {
            c.drop_key(u.handle).map_err(client_fail)?;
        }
        Ok(())
    }

    /// Unlocks the keyslots `query` allows, in cryptsetup's order, until one opens;
    /// keeps its handle in [`Unlocker::unlocked`] and returns its number. None opens:
    /// "No key available with this passphrase." (exit 2), or the first keyslot's own
    /// error when one could not be tried.
    pub fn check(&mut self, pass: &Passphrase, query: SlotQuery) -> Result<u32, Failure> {
        self.drop_key()?;
        let backend = self.backend();
        let target = self.target()?;
        let (cipher, _) = volume_cipher(&target.vol)?;
        let opts = UnlockOptions {
            keyslot: query.only,
            ..Default::default()
        };
        let plans = vault_plans(&target.dev, &target.vol, &opts)?;
        let client = self.client()?;
        let mut first_err = None;
        for k in plans.bound {
            let k = match k {
                Ok(k) => k,
                Err(e) => {
                    first_err.get_or_insert(e);
                    continue;
                }
            };
            if Some(k.candidate.keyslot) == query.except {
                continue;
            }
            match client.unlock_keyslot(cipher.clone(), backend, k.candidate.clone(), &k.area, pass)
            {
                Ok(handle) => {
                    let keyslot = k.candidate.keyslot;
                    self.unlocked = Some(Unlocked {
                        handle,
                        keyslot,
                        spec: k.candidate.spec,
                    });
                    return Ok(keyslot);
                }
                Err(e) if is_no_key(&e) => {}
                Err(e) => return Err(client_fail(e)),
            }
        }
        Err(first_err.unwrap_or(UnlockError::NoKey).into())
    }
}
