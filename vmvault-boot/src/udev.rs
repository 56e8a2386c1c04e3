//! Matching a block device, described by its udev properties, to a vaulttab entry: what
//! `vmvault-udev` prints for udev's `IMPORT{program}` and what `--attach` starts.

use crate::generator::unit_name;
use crate::vaulttab::{Entry, KeySpec, Vaulttab};

/// The first entry (not `noauto`) whose device is the device with these properties.
pub fn find_entry<'a>(
    tab: &'a Vaulttab,
    props: &dyn Fn(&str) -> Option<String>,
) -> Option<&'a Entry> {
    tab.entries
        .iter()
        .find(|e| !e.options.noauto && e.device.matches(props))
}

/// The `KEY=value` lines for udev's `IMPORT{program}`: `VMVAULT_TAB_NAME` and
/// `VMVAULT_TAB_UNIT` (the generated service). Values are written plainly; udev takes
/// everything after the first `=` up to the end of the line.
pub fn import_lines(e: &Entry) -> String {
    format!(
        "VMVAULT_TAB_NAME={}\nVMVAULT_TAB_UNIT={}\n",
        e.name,
        unit_name(&e.name)
    )
}

/// Whether `--attach` may start this entry unattended: only with a key file (udev cannot
/// prompt for a passphrase).
pub fn can_attach_unattended(e: &Entry) -> bool {
    !matches!(e.key, KeySpec::Ask)
}
