//! vmvault-udev: matches a udev block device to a vaulttab entry (in progress).
fn main() {}
