//! Shared helpers for vmvault's integration tests.

pub mod residency;
