//! Errors of the hypervisor library.

use vault_vm::abi::status;
use vault_vm::engine::CipherSpec;

/// Everything that can go wrong opening or using a vault. Messages never contain key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// `/dev/kvm` is missing or cannot be opened by this user (the kvm backend needs it;
    /// the soft backend does not).
    #[error("KVM is not usable (/dev/kvm: {0}); load kvm (kvm_intel, kvm_amd or kvm_pvm), check that /dev/kvm exists and that this user may open it, or use the soft backend")]
    KvmUnavailable(#[source] kvm_ioctls::Error),
    /// A KVM ioctl failed while the VM or a vCPU was being set up or inspected.
    #[error("KVM {what} failed: {err}")]
    Kvm {
        /// The ioctl that failed, by its KVM name (`KVM_CREATE_VM`, `KVM_SET_SREGS`, ...).
        what: &'static str,
        /// The errno the kernel returned for it.
        #[source]
        err: kvm_ioctls::Error,
    },
    /// `memfd_secret` is missing (kernel without `CONFIG_SECRETMEM` or `secretmem.enable=0`).
    #[error("memfd_secret is not available ({0}); boot a kernel with CONFIG_SECRETMEM=y (and secretmem.enable=1 on older kernels), or use the kvm backend")]
    SecretMemUnavailable(#[source] std::io::Error),
    /// A system call on guest or window memory (memfd, mmap, mlock, ...) or a thread
    /// spawn failed.
    #[error("{what} failed: {err}")]
    Os {
        /// What was being done, in words (`"creating the guest memfd"`, ...).
        what: &'static str,
        /// The error the system call returned.
        #[source]
        err: std::io::Error,
    },
    /// A configuration value is out of range, or a request names something that does
    /// not exist (a buffer of another vault, a vCPU that is not there).
    #[error("invalid vault configuration: {0}")]
    Config(String),
    /// The embedded guest image is malformed (a build problem); the text says which check
    /// failed.
    #[error("the embedded vault guest image is invalid: {0}")]
    BadImage(&'static str),
    /// The vault answered a request with an error status.
    #[error("the vault refused the request: {} (segment {detail})", status_name(*status))]
    Refused {
        /// One of `vault_vm::abi::status`.
        status: u32,
        /// Index of the offending segment, when the status concerns one (0 otherwise).
        detail: u32,
    },
    /// A vCPU stopped unexpectedly (or the vault was shut down); the vault is unusable
    /// and must be reopened. Every later request reports the first cause.
    #[error("the vault VM failed: {0}")]
    VaultFailed(#[source] VaultFailure),
    /// The vault was shut down.
    #[error("the vault has been shut down")]
    ShutDown,
    /// No free key slot (the number of slots is the payload).
    #[error("all {0} key slots of the vault are in use; drop a key first")]
    NoFreeSlot(usize),
    /// The key length (first field, in bytes) does not fit the cipher (second field).
    #[error("a {0}-byte key does not fit cipher {1}")]
    BadKeyLength(usize, CipherSpec),
    /// Reading a key from the kernel keyring failed.
    #[error("reading key {serial} from the kernel keyring failed: {err}")]
    Keyring {
        /// Serial number of the keyring key that was to be read.
        serial: i32,
        /// The error `keyctl(KEYCTL_READ)` returned (`ENOKEY`, `EKEYREVOKED`, `EACCES`, ...).
        #[source]
        err: std::io::Error,
    },
    /// The keyring key has another length than expected.
    #[error("key {serial} in the kernel keyring is {got} bytes, expected {want}")]
    KeyringLength {
        /// Serial number of the keyring key.
        serial: i32,
        /// Length of the key in the keyring, in bytes.
        got: usize,
        /// Length the cipher needs, in bytes.
        want: usize,
    },
    /// The data window has no room for a buffer of this size (first field, bytes; the
    /// second is the window's size).
    #[error("the data window has no free range of {0} bytes (window size {1} bytes)")]
    WindowFull(usize, u64),
    /// The vault answered SELFTEST_FAILED: its engine gave a wrong known answer.
    #[error("the vault self test failed")]
    SelftestFailed,
    /// The passphrase does not open the keyslot (the vault's BAD_PASSPHRASE).
    #[error("no key available with this passphrase")]
    BadPassphrase,
    /// The vault answered BAD_OP to an operation this library knows: the vault image
    /// predates it.
    #[error("vault does not support {0} (BAD_OP)")]
    Unsupported(&'static str),
    /// A keyslot request asked for more Argon2 scratch memory than this host gives
    /// (nothing was mapped).
    #[error("the keyslot needs {requested} bytes of Argon2 memory; this host allows at most {limit} (half its RAM, at most 4 GiB)")]
    ScratchTooLarge {
        /// Bytes the keyslot parameters asked for.
        requested: u64,
        /// The largest scratch memory this host accepts.
        limit: u64,
    },
    /// Keyslot parameters or buffers that cannot be right (checked before the vault
    /// sees them); the text says which check failed.
    #[error("invalid keyslot request: {0}")]
    BadKeyslot(&'static str),
    /// GCM decryption: the tag does not verify (the vault's TAG_MISMATCH; the context
    /// has ended, the plaintext must be wiped).
    #[error("the GCM tag does not match")]
    TagMismatch,
    /// Key unwrap: the integrity check failed (the vault's UNWRAP_FAILED; no key was
    /// installed).
    #[error("the wrapped key does not unwrap with this key (integrity check failed)")]
    UnwrapFailed,
    /// Key wrap of a key not marked extractable (the vault's NOT_EXTRACTABLE).
    #[error("the key is not extractable")]
    NotExtractable,
    /// The owner tag is not the one the operation context was started with (the vault's
    /// BAD_OWNER).
    #[error("the operation context belongs to another owner")]
    ContextOwner,
    /// The operation context does not exist (any more): finished, aborted, or its key
    /// was dropped (the vault's BAD_CONTEXT).
    #[error("no such operation context (finished, aborted or its key dropped)")]
    ContextGone,
    /// Every operation context of the vault is in use (the payload: how many there are).
    #[error("all {0} operation contexts of the vault are in use")]
    NoFreeContext(usize),
    /// The key is of another kind than the operation needs (a LUKS volume key for a
    /// generic operation, an XTS key for GCM, ...; the vault's KEY_KIND).
    #[error("the key is of the wrong kind for this operation")]
    KeyKind,
}

/// Name of a vault status code, keyslot statuses included.
pub(crate) fn status_name(s: u32) -> &'static str {
    vault_vm::abi::keyslot::status::name(s)
        .or_else(|| vault_vm::abi::generic::status::name(s))
        .unwrap_or_else(|| status::name(s))
}

/// Why a `kvm` vault stopped working ([`HvError::VaultFailed`]). The first cause is
/// recorded and reported by every later request.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum VaultFailure {
    /// `KVM_RUN` itself failed on a vCPU.
    #[error("KVM_RUN on vCPU {vcpu} failed: {err}")]
    Run {
        /// The vCPU whose `KVM_RUN` failed.
        vcpu: usize,
        /// The errno `KVM_RUN` returned.
        #[source]
        err: kvm_ioctls::Error,
    },
    /// The guest reported a panic through the doorbell.
    #[error("the vault guest panicked on vCPU {0}")]
    GuestPanic(usize),
    /// The guest rang the doorbell with a code the host does not know.
    #[error("unknown doorbell code {code} from vCPU {vcpu}")]
    UnknownDoorbell {
        /// The code written to the doorbell.
        code: u32,
        /// The vCPU that wrote it.
        vcpu: usize,
    },
    /// The guest touched a guest-physical address without memory behind it (not the
    /// doorbell).
    #[error("vCPU {vcpu} accessed unbacked guest address {addr:#x}")]
    Unbacked {
        /// The vCPU that made the access.
        vcpu: usize,
        /// The guest-physical address it accessed.
        addr: u64,
    },
    /// The guest took an exception; with no IDT that is a triple fault.
    #[error("vCPU {0} faulted (shutdown exit: an exception with no IDT)")]
    Fault(usize),
    /// KVM could not emulate an instruction of the guest.
    #[error("vCPU {0}: KVM internal error (emulation failure)")]
    InternalError(usize),
    /// Any other VM exit, which the vault guest never causes on purpose.
    #[error("vCPU {vcpu}: unexpected exit {exit}")]
    UnexpectedExit {
        /// The vCPU that exited.
        vcpu: usize,
        /// The exit, as KVM reported it (its `Debug` form).
        exit: String,
    },
    /// Not every vCPU reported ready within the start-up time limit.
    #[error("the vault guest did not start within 20 s")]
    StartTimeout,
    /// The vault was shut down; nothing runs any more.
    #[error("the vault has been shut down")]
    ShutDown,
    /// Shutdown found vCPU threads that did not stop (their number).
    #[error("{0} vCPU thread(s) did not stop")]
    ThreadsStuck(usize),
    /// A vCPU stopped while a thread waited for a free ring entry.
    #[error("a vCPU stopped")]
    VcpuStopped,
    /// A vCPU stopped while a thread waited for its response.
    #[error("a vCPU stopped while serving a request")]
    StoppedServing,
    /// The vault is marked failed but no cause was recorded.
    #[error("unknown")]
    Unknown,
}

impl HvError {
    pub(crate) fn os(what: &'static str) -> Self {
        HvError::Os {
            what,
            err: std::io::Error::last_os_error(),
        }
    }
}

/// Result alias.
pub type Result<T, E = HvError> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;
    use std::error::Error as _;

    #[test]
    fn messages_are_unchanged_and_keep_their_source() {
        let errno = kvm_ioctls::Error::new(libc::ENOENT);
        let e = HvError::KvmUnavailable(errno);
        assert!(e
            .to_string()
            .starts_with(&format!("KVM is not usable (/dev/kvm: {errno}); load kvm ")));
        assert!(e.source().is_some());
        let e = HvError::VaultFailed(VaultFailure::Run {
            vcpu: 1,
            err: kvm_ioctls::Error::new(libc::EFAULT),
        });
        assert_eq!(
            e.to_string(),
            format!(
                "the vault VM failed: KVM_RUN on vCPU 1 failed: {}",
                kvm_ioctls::Error::new(libc::EFAULT)
            )
        );
        assert!(e.source().and_then(|s| s.source()).is_some());
        for (f, want) in [
            (
                VaultFailure::GuestPanic(0),
                "the vault guest panicked on vCPU 0",
            ),
            (
                VaultFailure::UnknownDoorbell { code: 9, vcpu: 1 },
                "unknown doorbell code 9 from vCPU 1",
            ),
            (
                VaultFailure::Unbacked {
                    vcpu: 0,
                    addr: 0x1000,
                },
                "vCPU 0 accessed unbacked guest address 0x1000",
            ),
            (
                VaultFailure::Fault(2),
                "vCPU 2 faulted (shutdown exit: an exception with no IDT)",
            ),
            (
                VaultFailure::InternalError(0),
                "vCPU 0: KVM internal error (emulation failure)",
            ),
            (
                VaultFailure::StartTimeout,
                "the vault guest did not start within 20 s",
            ),
            (VaultFailure::ShutDown, "the vault has been shut down"),
            (
                VaultFailure::ThreadsStuck(2),
                "2 vCPU thread(s) did not stop",
            ),
            (VaultFailure::VcpuStopped, "a vCPU stopped"),
            (
                VaultFailure::StoppedServing,
                "a vCPU stopped while serving a request",
            ),
            (VaultFailure::Unknown, "unknown"),
        ] {
            assert_eq!(f.to_string(), want);
        }
        let spec = CipherSpec::parse("aes-xts-plain64").unwrap();
        assert_eq!(
            HvError::BadKeyLength(16, spec).to_string(),
            format!("a 16-byte key does not fit cipher {spec}")
        );
    }
}
