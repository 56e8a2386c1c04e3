//! Errors of the hypervisor library.

use vault_vm::abi::status;

/// Everything that can go wrong opening or using a vault. Messages never contain key
/// material.
#[derive(Debug, thiserror::Error)]
pub enum HvError {
    /// `/dev/kvm` is missing or unusable.
    #[error("KVM is not usable ({0}); load kvm (kvm_intel, kvm_amd or kvm_pvm), check that /dev/kvm exists and that this user may open it, or use the soft backend")]
    KvmUnavailable(String),
    /// A KVM ioctl failed.
    #[error("KVM {what} failed: {err}")]
    Kvm {
        /// The operation.
        what: &'static str,
        /// The error from the kernel.
        err: kvm_ioctls::Error,
    },
    /// `memfd_secret` is missing (kernel without `CONFIG_SECRETMEM` or `secretmem.enable=0`).
    #[error("memfd_secret is not available ({0}); boot a kernel with CONFIG_SECRETMEM=y (and secretmem.enable=1 on older kernels), or use the kvm backend")]
    SecretMemUnavailable(std::io::Error),
    /// A system call on guest or window memory failed.
    #[error("{what} failed: {err}")]
    Os {
        /// The operation.
        what: &'static str,
        /// The error.
        err: std::io::Error,
    },
    /// A configuration value is out of range.
    #[error("invalid vault configuration: {0}")]
    Config(String),
    /// The embedded guest image is malformed (a build problem).
    #[error("the embedded vault guest image is invalid: {0}")]
    BadImage(&'static str),
    /// The vault answered a request with an error status.
    #[error("the vault refused the request: {} (segment {detail})", status::name(*status))]
    Refused {
        /// One of `vault_vm::abi::status`.
        status: u32,
        /// Index of the offending segment, if any.
        detail: u32,
    },
    /// A vCPU stopped unexpectedly; the vault is unusable and must be reopened.
    #[error("the vault VM failed: {0}")]
    VaultFailed(String),
    /// The vault was shut down.
    #[error("the vault has been shut down")]
    ShutDown,
    /// No free key slot.
    #[error("all {0} key slots of the vault are in use; drop a key first")]
    NoFreeSlot(usize),
    /// The key length does not fit the cipher.
    #[error("a {0}-byte key does not fit cipher {1}")]
    BadKeyLength(usize, String),
    /// Reading a key from the kernel keyring failed.
    #[error("reading key {serial} from the kernel keyring failed: {err}")]
    Keyring {
        /// The key serial.
        serial: i32,
        /// The error.
        err: std::io::Error,
    },
    /// The keyring key has another length than expected.
    #[error("key {serial} in the kernel keyring is {got} bytes, expected {want}")]
    KeyringLength {
        /// The key serial.
        serial: i32,
        /// Its length.
        got: usize,
        /// The expected length.
        want: usize,
    },
    /// The data window has no room for a buffer of this size.
    #[error("the data window has no free range of {0} bytes (window size {1} bytes)")]
    WindowFull(usize, u64),
    /// The vault said SELFTEST_FAILED.
    #[error("the vault self test failed")]
    SelftestFailed,
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
