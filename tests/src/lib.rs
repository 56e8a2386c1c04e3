//! Shared helpers for vmvault's integration tests.

pub mod residency;
pub mod sampler;
pub mod xstate;
