//! `vmvaultd`: the vmvault daemon. One per host (per run directory).
//!
//! ```text
//! vmvaultd [--run-dir DIR] [--fuse-threads N] [--vault-vcpus N] [--no-mlock]
//!          [--config PATH] [--check-config] [--log-level LEVEL] [--initrd]
//! ```
//!
//! The run directory defaults to `$VMVAULT_RUN_DIR`, else the configuration file's
//! `run_dir`, else `/run/vmvault`. Control socket: `<run-dir>/control` (root only, JSON
//! lines; see `vmvault_proto::protocol`). The run directory must be a directory (not a
//! symlink) owned by root that group and others cannot write; it is created with mode
//! 0700 when missing.
//!
//! The configuration file (`--config`, default `/etc/vmvault/vmvaultd.toml`; see
//! `dm_vmvault::daemon::config`) sets defaults; command-line options override it. A
//! missing default file is no error; a missing `--config` file, or a malformed file, is
//! (exit 1, naming `file:line:column` and the key).
//!
//! The log goes to stderr, one line per event: `vmvaultd: MESSAGE` (`vmvaultd: warning:
//! MESSAGE` for warnings), after an RFC 3339 time stamp unless `JOURNAL_STREAM` is set
//! (journald stamps lines itself). The level comes from `--log-level`, else `RUST_LOG`,
//! else `info`.
//! With `--initrd`, warnings and errors also go to the kernel log (`/dev/kmsg`): the
//! initramfs daemon's stderr is a file in `/run/vmvault` that no journal collects.
//!
//! Socket activation: a listening socket passed by systemd (`LISTEN_PID`, `LISTEN_FDS`,
//! descriptor 3; `boot/systemd/vmvaultd.socket`) is served instead of binding one; it
//! must be bound to `<run-dir>/control`.
//!
//! `--initrd` (the initramfs daemon): re-executes itself with `argv[0]` `@vmvaultd`
//! (systemd's convention for root-storage daemons that survive the switch to the real
//! root and the shutdown killing spree) and writes the marker `<run-dir>/initrd` while
//! it runs. The `switch_root` request then moves it into the real root.
//!
//! SIGTERM (or SIGINT): no new volumes; idle volumes are closed at once, volumes in use
//! are closed as soon as they are released (the log says what each one waits for), then
//! the vaults' memory is wiped and the daemon exits 0.

use std::num::NonZeroUsize;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use dm_vmvault::daemon::config::{FileConfig, DEFAULT_CONFIG_PATH};
use dm_vmvault::daemon::{self, DaemonConfig};
use tracing::Level;
use tracing_subscriber::fmt::format::{self, FormatEvent, FormatFields};
use tracing_subscriber::fmt::time::{FormatTime, SystemTime};
use tracing_subscriber::fmt::FmtContext;
use tracing_subscriber::registry::LookupSpan;
use tracing_subscriber::EnvFilter;

const USAGE: &str = "vmvaultd [--run-dir DIR] [--fuse-threads N] [--vault-vcpus N] [--no-mlock] \
                     [--config PATH] [--check-config] [--log-level LEVEL] [--initrd] [VAULT TUNING OPTIONS]";

/// The vmvault daemon: serves encrypted volumes whose keys live in a vault VM.
#[derive(Debug, Parser)]
#[command(name = "vmvaultd", override_usage = USAGE, disable_version_flag = true)]
struct Cli {
    /// Run directory (control socket, pid file, FUSE mounts) [default: /run/vmvault]
    #[arg(long, value_name = "DIR", env = "VMVAULT_RUN_DIR")]
    run_dir: Option<PathBuf>,
    /// FUSE serving threads per volume [default: 16]
    #[arg(long, value_name = "N")]
    fuse_threads: Option<NonZeroUsize>,
    /// vCPUs of each vault [default: half the CPUs, at least 2 where there are 2]
    #[arg(long, value_name = "N")]
    vault_vcpus: Option<NonZeroUsize>,
    /// Do not mlockall the daemon
    #[arg(long)]
    no_mlock: bool,
    /// Configuration file (TOML)
    #[arg(long, value_name = "PATH")]
    config: Option<PathBuf>,
    /// Read the configuration (file and options), print it and exit
    #[arg(long)]
    check_config: bool,
    /// Log level (error, warn, info, debug, trace) or a RUST_LOG-style filter
    /// [default: $RUST_LOG, else info]
    #[arg(long, value_name = "LEVEL")]
    log_level: Option<String>,
    /// Initramfs mode: run as @vmvaultd (survives the switch to the real root) and
    /// write the marker RUN-DIR/initrd
    #[arg(long)]
    initrd: bool,
    /// Who runs a sleeping vault vCPU: auto, thread or caller [default: auto]
    #[arg(
        long,
        value_name = "MODE",
        env = "VMVAULT_RUN",
        help_heading = "Vault tuning"
    )]
    vault_run: Option<vmvault_hv::RunMode>,
    /// Ring scans of an idle vCPU thread before it sleeps [default: 4000]
    #[arg(
        long,
        value_name = "N",
        env = "VMVAULT_IDLE_SPINS",
        help_heading = "Vault tuning"
    )]
    idle_spins: Option<u32>,
    /// Ring scans of a submitter running the vCPU before it exits [default: 1]
    #[arg(
        long,
        value_name = "N",
        env = "VMVAULT_CALLER_SPINS",
        help_heading = "Vault tuning"
    )]
    caller_spins: Option<u32>,
    /// 0: a submitter that finds the vCPU asleep does not serve the ring itself
    #[arg(
        long,
        value_name = "0|1",
        env = "VMVAULT_ASSIST",
        help_heading = "Vault tuning"
    )]
    assist: Option<String>,
    /// Pin vCPU i to the i-th listed CPU ("3,2"), or "none"
    #[arg(
        long,
        value_name = "CPUS",
        env = "VMVAULT_VCPU_CPUS",
        help_heading = "Vault tuning"
    )]
    vcpu_cpus: Option<vmvault_hv::CpuPinning>,
    /// CPU weight (nice) of the vCPU threads (needs CAP_SYS_NICE)
    #[arg(
        long,
        value_name = "NICE",
        env = "VMVAULT_VCPU_NICE",
        allow_hyphen_values = true,
        help_heading = "Vault tuning"
    )]
    vcpu_nice: Option<i32>,
}

/// The daemon's configuration: defaults, then the file, then the command line.
fn configure(cli: &Cli, file: FileConfig) -> DaemonConfig {
    let mut cfg = DaemonConfig::default();
    if let Some(d) = file.run_dir {
        cfg.run_dir = d;
    }
    if let Some(n) = file.threads {
        cfg.fuse_threads = n.get();
    }
    if let Some(n) = file.vcpus {
        cfg.vault_vcpus = n.get();
    }
    if let Some(n) = file.window_size {
        cfg.window_size = n;
    }
    if let Some(m) = file.mlock {
        cfg.mlock = m;
    }
    let t = &mut cfg.vault_tuning;
    cfg.vault_run = cli.vault_run.or(file.run).unwrap_or(cfg.vault_run);
    if let Some(n) = cli.idle_spins.or(file.idle_spins) {
        t.idle_spins = n;
    }
    if let Some(n) = cli.caller_spins.or(file.caller_spins) {
        t.caller_spins = n;
    }
    // As vmvault-hv always read VMVAULT_ASSIST: only "0" turns it off.
    if let Some(a) = cli.assist.as_deref().map(|v| v != "0").or(file.assist) {
        t.assist = a;
    }
    if let Some(p) = cli.vcpu_cpus.clone().or(file.vcpu_cpus) {
        t.vcpu_cpus = p;
    }
    if let Some(n) = cli.vcpu_nice.or(file.vcpu_nice) {
        t.vcpu_nice = Some(n);
    }
    if let Some(d) = &cli.run_dir {
        cfg.run_dir = d.clone();
    }
    if let Some(n) = cli.fuse_threads {
        cfg.fuse_threads = n.get();
    }
    if let Some(n) = cli.vault_vcpus {
        cfg.vault_vcpus = n.get();
    }
    if cli.no_mlock {
        cfg.mlock = false;
    }
    cfg.initrd = cli.initrd;
    cfg
}

/// The log line format: `[TIME ]vmvaultd: [warning: ]MESSAGE[ FIELDS]`, no colours.
struct LogFormat {
    /// Prefix each line with the time (not under journald, which stamps lines itself).
    timestamps: bool,
}

impl<S, N> FormatEvent<S, N> for LogFormat
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a>,
    N: for<'a> FormatFields<'a> + 'static,
{
    fn format_event(
        &self,
        ctx: &FmtContext<'_, S, N>,
        mut w: format::Writer<'_>,
        event: &tracing::Event<'_>,
    ) -> std::fmt::Result {
        if self.timestamps {
            SystemTime.format_time(&mut w)?;
            w.write_char(' ')?;
        }
        w.write_str("vmvaultd: ")?;
        match *event.metadata().level() {
            Level::WARN => w.write_str("warning: ")?,
            Level::DEBUG => w.write_str("debug: ")?,
            Level::TRACE => w.write_str("trace: ")?,
            _ => {}
        }
        ctx.field_format().format_fields(w.by_ref(), event)?;
        writeln!(w)
    }
}

/// Sets up logging to stderr at `level` (a level or an `EnvFilter` directive), else
/// `RUST_LOG`, else `info`. Fails on a `level` that does not parse. With `kmsg` (the
/// initramfs daemon, whose stderr is a file in `/run/vmvault` that nothing collects),
/// warnings and errors also go to the kernel log (`/dev/kmsg`), when it can be opened.
fn init_logging(level: Option<&str>, kmsg: bool) -> Result<(), String> {
    use tracing_subscriber::fmt::writer::{BoxMakeWriter, MakeWriterExt};
    let filter = match level {
        Some(l) => EnvFilter::try_new(l).map_err(|e| format!("--log-level {l}: {e}"))?,
        None => EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info")),
    };
    let kmsg = kmsg
        .then(|| {
            std::fs::OpenOptions::new()
                .write(true)
                .open("/dev/kmsg")
                .ok()
        })
        .flatten();
    let writer = match kmsg {
        Some(f) => BoxMakeWriter::new(
            std::io::stderr.and(std::sync::Arc::new(f).with_max_level(Level::WARN)),
        ),
        None => BoxMakeWriter::new(std::io::stderr),
    };
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(false)
        .event_format(LogFormat {
            timestamps: std::env::var_os("JOURNAL_STREAM").is_none(),
        })
        .try_init()
        .map_err(|e| e.to_string())
}

fn main() -> ExitCode {
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) => {
            use clap::error::ErrorKind;
            let _ = e.print();
            return match e.kind() {
                ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            };
        }
    };
    // Before anything else: the initramfs daemon runs as @vmvaultd (same pid).
    if cli.initrd
        && !cli.check_config
        && daemon::activation::needs_initrd_reexec(std::env::args_os().next().as_deref())
    {
        let e = daemon::activation::reexec_as_initrd();
        eprintln!("vmvaultd: --initrd: cannot re-execute /proc/self/exe as @vmvaultd: {e}");
        return ExitCode::from(4);
    }
    if let Err(e) = init_logging(cli.log_level.as_deref(), cli.initrd) {
        eprintln!("vmvaultd: {e}");
        return ExitCode::from(1);
    }
    let (path, must_exist) = match &cli.config {
        Some(p) => (p.clone(), true),
        None => (PathBuf::from(DEFAULT_CONFIG_PATH), false),
    };
    let file = match FileConfig::load(&path, must_exist) {
        Ok(f) => f,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    let cfg = configure(&cli, file);
    if cli.check_config {
        println!("run_dir = {:?}", cfg.run_dir.display().to_string());
        println!("threads = {}", cfg.fuse_threads);
        println!("vcpus = {}", cfg.vault_vcpus);
        println!("window_size = {}", cfg.window_size);
        println!("mlock = {}", cfg.mlock);
        if cfg.initrd {
            println!("# initrd mode (--initrd)");
        }
        let t = &cfg.vault_tuning;
        println!("run = {:?}", cfg.vault_run.name());
        println!("idle_spins = {}", t.idle_spins);
        println!("caller_spins = {}", t.caller_spins);
        println!("assist = {}", t.assist);
        match &t.vcpu_cpus {
            vmvault_hv::CpuPinning::Default => println!("# vcpu_cpus: default placement"),
            vmvault_hv::CpuPinning::None => println!("vcpu_cpus = \"none\""),
            vmvault_hv::CpuPinning::Cpus(c) => println!(
                "vcpu_cpus = \"{}\"",
                c.iter()
                    .map(|n| n.to_string())
                    .collect::<Vec<_>>()
                    .join(",")
            ),
        }
        match t.vcpu_nice {
            Some(n) => println!("vcpu_nice = {n}"),
            None => println!("# vcpu_nice: unchanged"),
        }
        return ExitCode::SUCCESS;
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        tracing::error!("must run as root");
        return ExitCode::from(2);
    }
    // A socket from systemd: taken (and the environment cleaned) before any thread.
    let activated = match daemon::activation::take_listener(&daemon::socket_path(&cfg.run_dir)) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("{e}");
            return ExitCode::from(1);
        }
    };
    match daemon::run_with(cfg, activated) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!("{e}");
            match e {
                daemon::DaemonError::Host(daemon::host::HostError::AlreadyRunning { .. }) => {
                    ExitCode::from(5)
                }
                _ => ExitCode::from(4),
            }
        }
    }
}
