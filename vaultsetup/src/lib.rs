//! vaultsetup (work in progress).
