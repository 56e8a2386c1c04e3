//! vmvault-hv (work in progress).
