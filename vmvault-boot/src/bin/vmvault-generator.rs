//! vmvault-generator: turns /etc/vaulttab into vmvault@NAME.service units (in progress).
fn main() {}
