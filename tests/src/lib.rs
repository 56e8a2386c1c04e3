//! Shared helpers for vmvault's integration tests.
