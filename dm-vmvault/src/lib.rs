//! dm-vmvault (work in progress).
