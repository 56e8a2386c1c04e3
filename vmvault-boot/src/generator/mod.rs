//! The systemd generator: each vaulttab entry (and each volume named on the kernel
//! command line) becomes `vmvault@NAME.service`, wired exactly as
//! systemd-cryptsetup-generator (v252) wires `systemd-cryptsetup@NAME.service` for the
//! same crypttab line: the same ordering and requirement dependencies, the same target
//! links (`cryptsetup.target.requires`, `.wants` with `nofail`, `remote-cryptsetup.target`
//! with `_netdev`, none with `noauto`), the same `dev-mapper-NAME.device` hooks and
//! device-timeout drop-ins. The service runs `vaultsetup attach`/`detach`, which talk to
//! vmvaultd (socket-activated through `vmvaultd.socket`).
//!
//! [`plan`] computes the files of one entry without touching the file system (tests
//! compare it); [`write_plan`] writes them into the generator's output directory.

mod cmdline;
mod unit_name;

use std::fmt::Write as _;
use std::io;
use std::path::{Path, PathBuf};
use std::time::Duration;

pub use cmdline::{uuid_is_valid, Cmdline, CmdlineVolume, CmdlineWarning};
pub use unit_name::{exec_arg, specifier_escape, unit_name_escape, unit_name_from_path};

use crate::vaulttab::{
    DeviceSpec, Entry, KeySpec, Location, Options, ParseError, Vaulttab, Warning,
};

/// The variable a generated unit sets to the entry's `FILE:LINE`; `vaultsetup attach`
/// puts it in front of its warnings and errors.
pub const SOURCE_ENV: &str = "VMVAULT_VAULTTAB_SOURCE";

/// `"NAME=VALUE"` quoted for `Environment=` (C-style escapes, `%` doubled as a specifier
/// escape; `$` is literal there).
fn environment_assignment(name: &str, value: &str) -> String {
    let mut out = format!("\"{name}=");
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '%' => out.push_str("%%"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

/// Where `vaultsetup` is installed; the units call it.
pub const VAULTSETUP: &str = "/usr/sbin/vaultsetup";

/// The template-style prefix of the generated units (`vmvault@NAME.service`).
pub const UNIT_PREFIX: &str = "vmvault@";

/// The socket unit that starts vmvaultd on demand.
pub const DAEMON_SOCKET: &str = "vmvaultd.socket";

/// `/etc/initrd-release`: its presence means we run in the initrd (systemd's `in_initrd`).
pub const INITRD_RELEASE: &str = "/etc/initrd-release";

/// The unit name for a volume: `vmvault@` + `systemd-escape NAME` + `.service`.
pub fn unit_name(volume: &str) -> String {
    format!("{UNIT_PREFIX}{}.service", unit_name_escape(volume))
}

/// A file the generator writes, relative to its output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GeneratedFile {
    /// Path relative to the output directory (`vmvault@a.service`,
    /// `dev-sdb2.device.d/50-device-timeout.conf`).
    pub path: PathBuf,
    /// Its contents.
    pub text: String,
}

/// A symlink `DIR/UNIT -> ../UNIT` in the output directory (`cryptsetup.target.requires`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// The `.wants`/`.requires` directory (`cryptsetup.target.requires`).
    pub dir: String,
    /// The unit linked (`vmvault@a.service`).
    pub unit: String,
}

/// Everything one volume contributes to the output directory.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Plan {
    /// The service's name.
    pub unit: String,
    /// The service file and drop-ins.
    pub files: Vec<GeneratedFile>,
    /// Target and device links.
    pub links: Vec<Link>,
}

/// Key files that are random-number devices: systemd orders after the random seed.
const RNG_DEVICES: &[&str] = &[
    "/dev/urandom",
    "/dev/random",
    "/dev/hw_random",
    "/dev/hwrng",
];

/// systemd's `print_dependencies` for a key file or header path: a device node gives
/// `After=`+`Requires=` its device unit, a regular file `RequiresMountsFor=`.
fn file_dependencies(u: &mut String, path: &Path) {
    let p = path.to_string_lossy();
    if RNG_DEVICES.contains(&p.as_ref()) {
        u.push_str("After=systemd-random-seed.service\n");
    } else if p == "/dev/null" {
    } else if p.starts_with("/dev/") {
        let d = unit_name_from_path(&p, ".device");
        let _ = writeln!(u, "After={d}\nRequires={d}");
    } else {
        let _ = writeln!(u, "RequiresMountsFor={}", specifier_escape(&p));
    }
}

/// Formats a time span for a unit file (`10s`, `1500000us`, `0`, `infinity`).
fn timespan(d: Duration) -> String {
    if d == Duration::MAX {
        "infinity".to_string()
    } else if d.is_zero() {
        // As systemd writes it; 0 means no timeout.
        "0".to_string()
    } else if d.subsec_micros() == 0 {
        format!("{}s", d.as_secs())
    } else {
        format!("{}us", d.as_micros())
    }
}

/// The options text without `x-systemd.device-timeout=` (the generator consumes it, as
/// systemd's `generator_write_timeouts` does); `none` when nothing is left. Commas
/// escaped as `\,` are kept as written.
pub fn filter_options(text: &str) -> String {
    if matches!(text, "" | "-" | "none") {
        return "none".to_string();
    }
    let mut items = Vec::new();
    let mut start = 0;
    let b = text.as_bytes();
    let mut i = 0;
    while i <= b.len() {
        if i == b.len() || b[i] == b',' {
            items.push(&text[start..i]);
            start = i + 1;
        } else if b[i] == b'\\' && b.get(i + 1) == Some(&b',') {
            i += 1;
        }
        i += 1;
    }
    let kept: Vec<&str> = items
        .into_iter()
        .filter(|w| !w.is_empty() && !w.starts_with("x-systemd.device-timeout="))
        .collect();
    if kept.is_empty() {
        "none".to_string()
    } else {
        kept.join(",")
    }
}

/// The files and links for one volume. `source` is the file named in `SourcePath=`.
pub fn plan(entry: &Entry, source: &Path) -> Plan {
    let o: &Options = &entry.options;
    let unit = unit_name(&entry.name);
    let escaped = unit_name_escape(&entry.name);
    let node = entry.device.udev_node();
    let node_s = node.to_string_lossy().into_owned();
    let target = if o.netdev {
        "remote-cryptsetup.target"
    } else {
        "cryptsetup.target"
    };
    let mut files = Vec::new();
    let mut links = Vec::new();

    let mut u = String::new();
    u.push_str("# Automatically generated by vmvault-generator\n\n[Unit]\n");
    u.push_str("Description=Vault volume %I (vmvault)\n");
    u.push_str("Documentation=man:vaulttab(5) man:vmvault-generator(8) man:vaultsetup(8)\n");
    let _ = writeln!(
        u,
        "SourcePath={}",
        specifier_escape(&source.to_string_lossy())
    );
    u.push_str("DefaultDependencies=no\nIgnoreOnIsolate=true\n");
    u.push_str("After=cryptsetup-pre.target systemd-udevd-kernel.socket\n");
    u.push_str("Before=blockdev@dev-mapper-%i.target\nWants=blockdev@dev-mapper-%i.target\n");
    let _ = writeln!(u, "After={DAEMON_SOCKET}\nWants={DAEMON_SOCKET}");
    if o.netdev {
        u.push_str("After=remote-fs-pre.target\n");
    }
    if !o.initrd_attach {
        u.push_str("Conflicts=umount.target\n");
    }
    if !o.nofail {
        let _ = writeln!(u, "Before={target}");
    }
    match &entry.key {
        KeySpec::Ask => {}
        KeySpec::Path(p) => file_dependencies(&mut u, p),
        KeySpec::PathOnDevice { device, .. } => {
            // vaultsetup attach mounts the key's file system itself; the unit waits for
            // the device, as systemd's keydev mount unit does.
            let d = unit_name_from_path(&device.udev_node().to_string_lossy(), ".device");
            let _ = writeln!(u, "After={d}\nRequires={d}");
        }
    }
    if let Some(h) = &o.header {
        file_dependencies(&mut u, &h.udev_node());
    }
    if node_s.starts_with("/dev/") {
        let d = unit_name_from_path(&node_s, ".device");
        let _ = writeln!(u, "BindsTo={d}\nAfter={d}\nBefore=umount.target");
        if let Some(t) = o.device_timeout {
            files.push(GeneratedFile {
                path: PathBuf::from(format!("{d}.d/50-device-timeout.conf")),
                text: format!(
                    "# Automatically generated by vmvault-generator\n# from supplied options \"{}\"\n\n[Unit]\nJobRunningTimeoutSec={}\n",
                    entry.options_text,
                    timespan(t)
                ),
            });
        }
    } else {
        // An image file: loop devices need /dev/loop-control (systemd's convention).
        let _ = writeln!(
            u,
            "RequiresMountsFor={}\nRequires=systemd-tmpfiles-setup-dev.service\nAfter=systemd-tmpfiles-setup-dev.service",
            specifier_escape(&node_s)
        );
    }
    u.push_str(
        "\n[Service]\nType=oneshot\nRemainAfterExit=yes\nTimeoutSec=0\nOOMScoreAdjust=500\n",
    );
    // vaultsetup prefixes its messages with this, so that a missing key file or a wrong
    // passphrase names the vaulttab line in the journal.
    let _ = writeln!(
        u,
        "Environment={}",
        environment_assignment(SOURCE_ENV, &entry.location.to_string())
    );
    let _ = writeln!(
        u,
        "ExecStart={VAULTSETUP} attach {} {} {} {}",
        exec_arg(&entry.name),
        exec_arg(&node_s),
        exec_arg(&entry.key_text),
        exec_arg(&filter_options(&entry.options_text)),
    );
    let _ = writeln!(u, "ExecStop={VAULTSETUP} detach {}", exec_arg(&entry.name));
    files.insert(
        0,
        GeneratedFile {
            path: PathBuf::from(&unit),
            text: u,
        },
    );

    if !o.noauto {
        let kind = if o.nofail { "wants" } else { "requires" };
        links.push(Link {
            dir: format!("{target}.{kind}"),
            unit: unit.clone(),
        });
    }
    let dm = format!("dev-mapper-{escaped}.device");
    links.push(Link {
        dir: format!("{dm}.requires"),
        unit: unit.clone(),
    });
    if !o.noauto && !o.nofail {
        files.push(GeneratedFile {
            path: PathBuf::from(format!("{dm}.d/40-device-timeout.conf")),
            text:
                "# Automatically generated by vmvault-generator\n\n[Unit]\nJobTimeoutSec=infinity\n"
                    .to_string(),
        });
    }
    Plan { unit, files, links }
}

/// Why the generator could not write a file or link.
#[derive(Debug, thiserror::Error)]
#[error("cannot write {}", path.display())]
pub struct WriteError {
    /// The file, directory or link.
    pub path: PathBuf,
    /// The I/O error.
    #[source]
    pub source: io::Error,
}

fn werr(path: &Path) -> impl FnOnce(io::Error) -> WriteError + '_ {
    move |source| WriteError {
        path: path.to_path_buf(),
        source,
    }
}

/// Writes a plan into `dir`. The unit file must not exist yet (a second volume of the
/// same name is an error, as in systemd); drop-ins and links are replaced or shared.
pub fn write_plan(dir: &Path, plan: &Plan) -> Result<(), WriteError> {
    use std::io::Write as _;
    for f in &plan.files {
        let p = dir.join(&f.path);
        if let Some(parent) = p.parent() {
            std::fs::create_dir_all(parent).map_err(werr(parent))?;
        }
        let is_unit = f.path.parent().is_none_or(|x| x.as_os_str().is_empty());
        let mut o = std::fs::OpenOptions::new();
        o.write(true);
        if is_unit {
            o.create_new(true);
        } else {
            o.create(true).truncate(true);
        }
        let mut file = o.open(&p).map_err(werr(&p))?;
        file.write_all(f.text.as_bytes()).map_err(werr(&p))?;
    }
    for l in &plan.links {
        let d = dir.join(&l.dir);
        std::fs::create_dir_all(&d).map_err(werr(&d))?;
        let p = d.join(&l.unit);
        match std::os::unix::fs::symlink(format!("../{}", l.unit), &p) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => return Err(werr(&p)(e)),
        }
    }
    Ok(())
}

/// A problem the generator reports (to stderr, which the journal collects) and then
/// goes on. [`Problem::message`] gives the full text, causes included.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Problem {
    /// A vaulttab line with a syntax error; the line is skipped.
    #[error(transparent)]
    Line(ParseError),
    /// An unknown or unsupported option; the line is used.
    #[error("{0}")]
    Option(Warning),
    /// The table could not be read (other than not existing).
    #[error(transparent)]
    Read(crate::vaulttab::ReadError),
    /// A kernel command-line word that is ignored.
    #[error("{0}")]
    Cmdline(CmdlineWarning),
    /// A command-line volume whose options or key do not parse; it is skipped.
    #[error("kernel command line: volume {uuid}, ignoring it")]
    CmdlineVolume {
        /// The volume's UUID.
        uuid: String,
        /// Why.
        #[source]
        source: ParseError,
    },
    /// A volume skipped because the kernel command line allow-lists others.
    #[error("{location}: not attaching {name}: not named by vmvault.uuid=/vmvault.name= on the kernel command line")]
    NotAllowed {
        /// The line.
        location: Location,
        /// The volume.
        name: String,
    },
    /// A unit or link could not be written; that volume is skipped.
    #[error("volume {name}: not generated")]
    Write {
        /// The volume.
        name: String,
        /// Why.
        #[source]
        source: WriteError,
    },
}

impl Problem {
    /// Whether this is an error (something is not attached as configured) rather than a
    /// warning or a notice.
    pub fn is_error(&self) -> bool {
        !matches!(
            self,
            Problem::Option(_) | Problem::Cmdline(_) | Problem::NotAllowed { .. }
        )
    }

    /// The message with every cause, `: `-separated, and what happens next for a
    /// skipped line (`..., ignoring line`).
    pub fn message(&self) -> String {
        let mut m = self.to_string();
        let mut src = std::error::Error::source(self);
        while let Some(e) = src {
            let _ = write!(m, ": {e}");
            src = e.source();
        }
        if matches!(self, Problem::Line(_)) {
            m.push_str(", ignoring line");
        }
        m
    }
}

/// The generator's inputs, gathered by the binary (the library reads no environment).
#[derive(Debug)]
pub struct Inputs {
    /// The table's path (`/etc/vaulttab` or `$VMVAULT_VAULTTAB`).
    pub vaulttab: PathBuf,
    /// The kernel command line (`/proc/cmdline` or `$SYSTEMD_PROC_CMDLINE`).
    pub cmdline: String,
    /// Whether we run in the initrd.
    pub in_initrd: bool,
}

/// The volumes to generate: vaulttab entries (filtered and overridden by the command
/// line as systemd does) followed by command-line-only volumes, plus problems.
pub fn collect(inputs: &Inputs) -> (Vec<Entry>, Vec<Problem>) {
    let mut problems = Vec::new();
    let (cmd, w) = Cmdline::parse(&inputs.cmdline, inputs.in_initrd);
    problems.extend(w.into_iter().map(Problem::Cmdline));
    let mut out = Vec::new();
    if !cmd.enabled {
        return (out, problems);
    }
    let mut used = vec![false; cmd.volumes.len()];
    if cmd.read_vaulttab {
        let tab = match Vaulttab::read(&inputs.vaulttab) {
            Ok(t) => t,
            Err(e) if e.source.kind() == io::ErrorKind::NotFound => Vaulttab::default(),
            Err(e) => {
                problems.push(Problem::Read(e));
                Vaulttab::default()
            }
        };
        problems.extend(tab.errors.into_iter().map(Problem::Line));
        problems.extend(tab.warnings.into_iter().map(Problem::Option));
        for mut e in tab.entries {
            let vol = cmd.volume_for(&e.name, &e.device_text);
            if cmd.allow_list && vol.is_none() {
                problems.push(Problem::NotAllowed {
                    location: e.location.clone(),
                    name: e.name.clone(),
                });
                continue;
            }
            if let Some(v) = vol {
                used[cmd
                    .volumes
                    .iter()
                    .position(|x| x.uuid == v.uuid)
                    .unwrap_or(0)] = true;
                if let Some(text) = &v.options {
                    match Options::parse(text) {
                        Ok((o, ws)) => {
                            e.options = o;
                            e.options_text = text.clone();
                            problems.extend(ws.into_iter().map(Problem::Option));
                        }
                        Err(source) => {
                            problems.push(Problem::CmdlineVolume {
                                uuid: v.uuid.clone(),
                                source,
                            });
                            continue;
                        }
                    }
                }
            }
            out.push(e);
        }
    }
    for (v, was_used) in cmd.volumes.iter().zip(used) {
        if !v.create || was_used {
            continue;
        }
        match cmdline_entry(v, &cmd) {
            Ok((e, ws)) => {
                problems.extend(ws.into_iter().map(Problem::Option));
                out.push(e);
            }
            Err(source) => problems.push(Problem::CmdlineVolume {
                uuid: v.uuid.clone(),
                source,
            }),
        }
    }
    (out, problems)
}

/// A volume named only on the kernel command line: `UUID=uuid`, name `luks-UUID` unless
/// `vmvault.name=` gave one (systemd's default name, so /dev/mapper names match
/// `rd.luks.uuid=`'s), key and options from the per-UUID or default switches.
fn cmdline_entry(v: &CmdlineVolume, cmd: &Cmdline) -> Result<(Entry, Vec<Warning>), ParseError> {
    let name = v.name.clone().unwrap_or_else(|| format!("luks-{}", v.uuid));
    let key_text = v
        .key
        .clone()
        .or_else(|| cmd.default_key.clone())
        .unwrap_or("none".into());
    let options_text = v
        .options
        .clone()
        .or_else(|| cmd.default_options.clone())
        .unwrap_or("none".into());
    let location = Location {
        file: PathBuf::from("/proc/cmdline"),
        line: 1,
        column: None,
    };
    let with_loc = |kind| ParseError {
        location: Some(location.clone()),
        kind: Box::new(kind),
    };
    let key = KeySpec::parse(&key_text).map_err(with_loc)?;
    let (options, warnings) = Options::parse(&options_text)?;
    if !crate::vaulttab::name_is_valid(&name) {
        return Err(with_loc(crate::vaulttab::ParseErrorKind::InvalidName(name)));
    }
    let device_text = format!("UUID={}", v.uuid);
    Ok((
        Entry {
            location,
            name,
            device: DeviceSpec::Uuid(v.uuid.clone()),
            key,
            options,
            options_text,
            device_text,
            key_text,
        },
        warnings,
    ))
}

/// Runs the generator into `dir`: plans every volume, writes what can be written, and
/// returns the problems (to print). Only an unusable output directory is an `Err`.
pub fn run(inputs: &Inputs, dir: &Path) -> Result<Vec<Problem>, WriteError> {
    std::fs::create_dir_all(dir).map_err(werr(dir))?;
    let (entries, mut problems) = collect(inputs);
    for e in &entries {
        let source: &Path = if e.location.file.as_os_str().is_empty() {
            &inputs.vaulttab
        } else {
            &e.location.file
        };
        let p = plan(e, source);
        if let Err(source) = write_plan(dir, &p) {
            problems.push(Problem::Write {
                name: e.name.clone(),
                source,
            });
        }
    }
    Ok(problems)
}
