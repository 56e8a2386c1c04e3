//! The kernel command line options of the generator, in the style of systemd's `luks.*`:
//! `vmvault=`, `vmvault.vaulttab=`, `vmvault.uuid=`, `vmvault.name=`, `vmvault.options=`,
//! `vmvault.key=`, each also as `rd.vmvault...` which applies in the initrd only (a plain
//! `vmvault.*` applies in both, as with `rd.luks.*`).

use std::fmt;

/// One volume named on the kernel command line, keyed by its LUKS UUID.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct CmdlineVolume {
    /// The LUKS UUID (as written, without a `luks-` prefix).
    pub uuid: String,
    /// `vmvault.name=UUID=NAME`.
    pub name: Option<String>,
    /// `vmvault.key=UUID=KEYFILE[:DEVICE]`.
    pub key: Option<String>,
    /// `vmvault.options=UUID=OPTIONS`.
    pub options: Option<String>,
    /// Whether the volume was named by `vmvault.uuid=` or `vmvault.name=` (created even
    /// without a vaulttab line, and allow-listed).
    pub create: bool,
}

/// What the kernel command line says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Cmdline {
    /// `vmvault=no` turns the generator off entirely.
    pub enabled: bool,
    /// `vmvault.vaulttab=no`: ignore /etc/vaulttab (command-line volumes only).
    pub read_vaulttab: bool,
    /// Set when any `vmvault.uuid=`/`vmvault.name=` is given: only those volumes are
    /// attached, the rest of the table is skipped.
    pub allow_list: bool,
    /// Volumes by UUID, in first-mention order.
    pub volumes: Vec<CmdlineVolume>,
    /// `vmvault.options=OPTIONS` without a UUID: default options of command-line volumes.
    pub default_options: Option<String>,
    /// `vmvault.key=KEYFILE` without a UUID: default key file of command-line volumes.
    pub default_key: Option<String>,
}

impl Default for Cmdline {
    fn default() -> Self {
        Cmdline {
            enabled: true,
            read_vaulttab: true,
            allow_list: false,
            volumes: Vec::new(),
            default_options: None,
            default_key: None,
        }
    }
}

/// A kernel command-line word the generator ignores, with the reason.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CmdlineWarning {
    /// The word (`vmvault.name=...`).
    pub word: String,
    /// Why it is ignored.
    pub reason: &'static str,
}

impl fmt::Display for CmdlineWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "kernel command line: {}: {}, ignoring",
            self.word, self.reason
        )
    }
}

/// Splits the command line into words; double quotes group (`a="b c"`) and are removed,
/// as systemd's `proc_cmdline_parse` does.
fn words(cmdline: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut in_word = false;
    let mut quoted = false;
    for c in cmdline.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                in_word = true;
            }
            c if c.is_whitespace() && !quoted => {
                if in_word {
                    out.push(std::mem::take(&mut cur));
                    in_word = false;
                }
            }
            c => {
                cur.push(c);
                in_word = true;
            }
        }
    }
    if in_word {
        out.push(cur);
    }
    out
}

/// systemd's `parse_boolean`.
fn boolean(v: &str) -> Option<bool> {
    match v.to_ascii_lowercase().as_str() {
        "1" | "yes" | "y" | "true" | "t" | "on" => Some(true),
        "0" | "no" | "n" | "false" | "f" | "off" => Some(false),
        _ => None,
    }
}

/// systemd's `id128_is_valid`: 32 hex digits, or 36 characters in the 8-4-4-4-12 form.
pub fn uuid_is_valid(s: &str) -> bool {
    let b = s.as_bytes();
    match b.len() {
        32 => b.iter().all(u8::is_ascii_hexdigit),
        36 => b.iter().enumerate().all(|(i, c)| {
            if matches!(i, 8 | 13 | 18 | 23) {
                *c == b'-'
            } else {
                c.is_ascii_hexdigit()
            }
        }),
        _ => false,
    }
}

impl Cmdline {
    /// Parses a kernel command line (the text of /proc/cmdline). `in_initrd` says whether
    /// `rd.vmvault.*` words apply.
    pub fn parse(cmdline: &str, in_initrd: bool) -> (Cmdline, Vec<CmdlineWarning>) {
        let mut c = Cmdline::default();
        let mut warnings = Vec::new();
        for word in words(cmdline) {
            let (key, value) = match word.split_once('=') {
                Some((k, v)) => (k, Some(v)),
                None => (word.as_str(), None),
            };
            let key = match key.strip_prefix("rd.") {
                Some(k) if in_initrd => k,
                Some(_) => continue,
                None => key,
            };
            if key != "vmvault" && !key.starts_with("vmvault.") {
                continue;
            }
            let mut warn = |reason| {
                warnings.push(CmdlineWarning {
                    word: word.clone(),
                    reason,
                })
            };
            match key {
                "vmvault" | "vmvault.vaulttab" => match value.map_or(Some(true), boolean) {
                    Some(b) if key == "vmvault" => c.enabled = b,
                    Some(b) => c.read_vaulttab = b,
                    None => warn("not a boolean"),
                },
                "vmvault.uuid" => match value {
                    Some(v) if !v.is_empty() => {
                        let u = v.strip_prefix("luks-").unwrap_or(v);
                        c.volume(u).create = true;
                        c.allow_list = true;
                    }
                    _ => warn("missing value"),
                },
                "vmvault.name" => match value.and_then(split_uuid) {
                    Some((u, name)) if !name.is_empty() => {
                        let vol = c.volume(u);
                        vol.create = true;
                        vol.name = Some(name.to_string());
                        c.allow_list = true;
                    }
                    _ => warn("expected UUID=NAME"),
                },
                "vmvault.options" => match value {
                    None | Some("") => warn("missing value"),
                    Some(v) => match split_uuid(v) {
                        Some((u, o)) if uuid_is_valid(u) => {
                            c.volume(u).options = Some(o.to_string());
                        }
                        Some(_) => warn("invalid UUID"),
                        None => c.default_options = Some(v.to_string()),
                    },
                },
                "vmvault.key" => match value {
                    None | Some("") => warn("missing value"),
                    Some(v) => {
                        let n = v
                            .bytes()
                            .take_while(|b| b.is_ascii_alphanumeric() || *b == b'-')
                            .count();
                        if v.as_bytes().get(n) == Some(&b'=') {
                            if uuid_is_valid(&v[..n]) {
                                c.volume(&v[..n]).key = Some(v[n + 1..].to_string());
                            } else {
                                warn("invalid UUID");
                            }
                        } else {
                            c.default_key = Some(v.to_string());
                        }
                    }
                },
                _ => warn("unknown vmvault option"),
            }
        }
        (c, warnings)
    }

    fn volume(&mut self, uuid: &str) -> &mut CmdlineVolume {
        let i = match self.volumes.iter().position(|v| v.uuid == uuid) {
            Some(i) => i,
            None => {
                self.volumes.push(CmdlineVolume {
                    uuid: uuid.to_string(),
                    ..Default::default()
                });
                self.volumes.len() - 1
            }
        };
        &mut self.volumes[i]
    }

    /// The command-line volume a vaulttab line is about: matched by `UUID=`, a
    /// `/dev/disk/by-uuid/` path, or a `luks-UUID` name, as systemd matches.
    pub fn volume_for(&self, name: &str, device_text: &str) -> Option<&CmdlineVolume> {
        let uuid = device_text
            .strip_prefix("UUID=")
            .or_else(|| device_text.strip_prefix("/dev/disk/by-uuid/"))
            .or_else(|| name.strip_prefix("luks-"))?;
        self.volumes
            .iter()
            .find(|v| v.uuid.eq_ignore_ascii_case(uuid))
    }
}

/// `UUID=REST` where UUID is hex digits and dashes (sscanf `%[0-9a-fA-F-]=`).
fn split_uuid(v: &str) -> Option<(&str, &str)> {
    let n = v
        .bytes()
        .take_while(|b| b.is_ascii_hexdigit() || *b == b'-')
        .count();
    if n > 0 && v.as_bytes().get(n) == Some(&b'=') {
        Some((&v[..n], &v[n + 1..]))
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const U: &str = "11111111-2222-3333-4444-555555555555";

    #[test]
    fn rd_only_in_initrd() {
        let line = format!("quiet rd.vmvault.uuid={U} vmvault.options=discard");
        let (c, w) = Cmdline::parse(&line, false);
        assert!(w.is_empty());
        assert!(!c.allow_list);
        assert_eq!(c.default_options.as_deref(), Some("discard"));
        let (c, _) = Cmdline::parse(&line, true);
        assert!(c.allow_list);
        assert_eq!(c.volumes[0].uuid, U);
    }

    #[test]
    fn names_keys_and_switches() {
        let line = format!(
            "vmvault.name={U}=root vmvault.key={U}=/k:LABEL=usb vmvault.options={U}=tries=1 vmvault.vaulttab=no vmvault.bogus vmvault=maybe"
        );
        let (c, w) = Cmdline::parse(&line, false);
        assert_eq!(w.len(), 2, "{w:?}");
        assert!(!c.read_vaulttab && c.enabled);
        let v = &c.volumes[0];
        assert_eq!(v.name.as_deref(), Some("root"));
        assert_eq!(v.key.as_deref(), Some("/k:LABEL=usb"));
        assert_eq!(v.options.as_deref(), Some("tries=1"));
        assert!(c.volume_for("x", &format!("UUID={U}")).is_some());
        assert!(c.volume_for(&format!("luks-{U}"), "/dev/sda").is_some());
        assert!(!Cmdline::parse("vmvault=0", false).0.enabled);
    }
}
