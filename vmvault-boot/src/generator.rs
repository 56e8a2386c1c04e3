//! The systemd generator (in progress).
