//! Matching udev devices to vaulttab entries (in progress).
