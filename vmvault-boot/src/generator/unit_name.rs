//! systemd's unit-name escaping (`unit_name_escape`, `unit_name_from_path`), the same
//! transformation as `systemd-escape` and `systemd-escape --path`, and the escaping of
//! values written into unit files.

/// Bytes kept as they are in a unit name; everything else but `/` becomes `\xHH`.
fn keep(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b':' || b == b'_' || b == b'.'
}

fn escape_into(s: &str, out: &mut String) {
    for (i, &b) in s.as_bytes().iter().enumerate() {
        if b == b'/' {
            out.push('-');
        } else if keep(b) && !(i == 0 && b == b'.') {
            out.push(b as char);
        } else {
            out.push_str(&format!("\\x{b:02x}"));
        }
    }
}

/// `unit_name_escape` / `systemd-escape NAME`: `/` becomes `-`; bytes other than ASCII
/// letters, digits, `:`, `_` and `.` (and a leading `.`) become `\xHH`.
pub fn unit_name_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    escape_into(s, &mut out);
    out
}

/// `unit_name_from_path` / `systemd-escape --path --suffix=SUFFIX`: the path is simplified
/// (duplicate and trailing slashes dropped), the leading `/` removed, then escaped; `/`
/// alone becomes `-`. `suffix` includes the dot (`.device`).
pub fn unit_name_from_path(path: &str, suffix: &str) -> String {
    let parts: Vec<&str> = path
        .split('/')
        .filter(|p| !p.is_empty() && *p != ".")
        .collect();
    let mut out = String::new();
    if parts.is_empty() {
        out.push('-');
    } else {
        escape_into(&parts.join("/"), &mut out);
    }
    out.push_str(suffix);
    out
}

/// A value for a unit-file setting that takes no command line (`RequiresMountsFor=`,
/// `SourcePath=`): `%` doubled, as systemd's `specifier_escape` does.
pub fn specifier_escape(s: &str) -> String {
    s.replace('%', "%%")
}

/// One argument of an `ExecStart=` command line, single-quoted: inside quotes systemd
/// unescapes C escapes, so `\` and `'` are backslash-escaped; `%` and `$` are doubled so
/// that neither specifiers nor environment variables expand. Control characters become
/// `\xHH`.
pub fn exec_arg(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('\'');
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '%' => out.push_str("%%"),
            '$' => out.push_str("$$"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escapes_like_systemd() {
        assert_eq!(unit_name_escape("data"), "data");
        assert_eq!(unit_name_escape("my-vol"), "my\\x2dvol");
        assert_eq!(unit_name_escape(".hidden"), "\\x2ehidden");
        assert_eq!(unit_name_escape("a b"), "a\\x20b");
        assert_eq!(
            unit_name_from_path("/dev/disk/by-uuid/1234-ab", ".device"),
            "dev-disk-by\\x2duuid-1234\\x2dab.device"
        );
        assert_eq!(
            unit_name_from_path("/dev//sda/", ".device"),
            "dev-sda.device"
        );
        assert_eq!(unit_name_from_path("/", ".mount"), "-.mount");
        assert_eq!(exec_arg("a'b\\c%$"), "'a\\'b\\\\c%%$$'");
    }
}
