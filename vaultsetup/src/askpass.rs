//! Who asks for a passphrase at boot (`vaultsetup attach`), as systemd-cryptsetup does:
//!
//! - under systemd (`/run/systemd/system` exists, or `$NOTIFY_SOCKET` is set):
//!   `systemd-ask-password --icon=drive-harddisk --id=vmvault:NAME --timeout=SECS PROMPT`,
//!   so that the console, Plymouth, `systemd-tty-ask-password-agent` or an ssh agent can
//!   answer through systemd's ask-password protocol;
//! - else, when Plymouth runs (`plymouth --ping`): `plymouth ask-for-password --prompt=…`;
//! - else the terminal (or stdin), as `open` reads it.
//!
//! The helper's standard output goes straight from `read(2)` into a locked, zeroized
//! [`Passphrase`] (no `String`, no buffered reader); its first line is the passphrase.

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::passphrase::{read_key_from, PassphraseError, MAX_INTERACTIVE};
use crate::secret::Passphrase;

/// Where a passphrase is asked for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Agent {
    /// `systemd-ask-password` (systemd's ask-password protocol).
    Systemd,
    /// `plymouth ask-for-password`.
    Plymouth,
    /// The terminal, or stdin when it is not one.
    Tty,
}

/// What decides the [`Agent`]; [`Environment::probe`] fills it from the system.
#[derive(Clone, Debug, Default)]
pub struct Environment {
    /// `/run/systemd/system` exists (booted with systemd).
    pub systemd_booted: bool,
    /// `$NOTIFY_SOCKET` is set (run by systemd as a service).
    pub notify_socket: bool,
    /// `plymouth --ping` succeeded.
    pub plymouth_running: bool,
}

impl Environment {
    /// Looks at the running system. `plymouth --ping` is only run when systemd is not
    /// in charge (systemd-ask-password reaches Plymouth itself).
    pub fn probe() -> Self {
        let systemd_booted = Path::new("/run/systemd/system").is_dir();
        let notify_socket = std::env::var_os("NOTIFY_SOCKET").is_some();
        let plymouth_running = !(systemd_booted || notify_socket)
            && Command::new("plymouth")
                .arg("--ping")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        Environment {
            systemd_booted,
            notify_socket,
            plymouth_running,
        }
    }

    /// The agent for this environment.
    pub fn agent(&self) -> Agent {
        if self.systemd_booted || self.notify_socket {
            Agent::Systemd
        } else if self.plymouth_running {
            Agent::Plymouth
        } else {
            Agent::Tty
        }
    }
}

/// systemd-cryptsetup's prompt: `Please enter passphrase for disk NAME:`.
pub fn prompt_for(name: &str) -> String {
    format!("Please enter passphrase for disk {name}:")
}

/// The `systemd-ask-password` command line for volume `name` (`program` is
/// `systemd-ask-password` outside tests). `timeout` `None` asks without a time limit
/// (`--timeout=0`).
pub fn systemd_command(program: &Path, name: &str, timeout: Option<Duration>) -> Command {
    let mut c = Command::new(program);
    c.args(systemd_args(name, timeout));
    c
}

/// The arguments of [`systemd_command`].
pub fn systemd_args(name: &str, timeout: Option<Duration>) -> Vec<OsString> {
    vec![
        "--icon=drive-harddisk".into(),
        format!("--id=vmvault:{name}").into(),
        format!("--timeout={}", timeout.map_or(0, |t| t.as_secs().max(1))).into(),
        prompt_for(name).into(),
    ]
}

/// The `plymouth ask-for-password` command line (`program` is `plymouth` outside tests).
pub fn plymouth_command(program: &Path, name: &str) -> Command {
    let mut c = Command::new(program);
    c.arg("ask-for-password")
        .arg(format!("--prompt={}", prompt_for(name)));
    c
}

/// The program of an agent: `systemd-ask-password` or `plymouth`, looked up in `$PATH`.
pub fn program(agent: Agent) -> PathBuf {
    PathBuf::from(match agent {
        Agent::Systemd => "systemd-ask-password",
        Agent::Plymouth => "plymouth",
        Agent::Tty => "",
    })
}

/// Runs `cmd` (stdin: the terminal as inherited, stdout: a pipe) and reads its first
/// output line as the passphrase, straight into a [`Passphrase`]. A helper that exits
/// with an error (cancelled, timed out) gives [`PassphraseError::Agent`].
pub fn read_from_program(mut cmd: Command) -> Result<Passphrase, PassphraseError> {
    let what = cmd.get_program().to_string_lossy().into_owned();
    let mut child =
        cmd.stdout(Stdio::piped())
            .spawn()
            .map_err(|source| PassphraseError::AgentSpawn {
                program: what.clone(),
                source,
            })?;
    let Some(out) = child.stdout.take() else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(PassphraseError::Agent {
            program: what,
            status: None,
        });
    };
    // ChildStdout reads with read(2) and keeps no buffer.
    let r = read_key_from(out, 0, Some(MAX_INTERACTIVE as u64 + 1), true);
    let status = child.wait().map_err(PassphraseError::Read)?;
    if !status.success() {
        return Err(PassphraseError::Agent {
            program: what,
            status: Some(status),
        });
    }
    let p = r?;
    if p.len() > MAX_INTERACTIVE {
        return Err(PassphraseError::TooLong);
    }
    Ok(p)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn agent_choice() {
        let e = |systemd_booted, notify_socket, plymouth_running| Environment {
            systemd_booted,
            notify_socket,
            plymouth_running,
        };
        assert_eq!(e(true, false, false).agent(), Agent::Systemd);
        assert_eq!(e(false, true, true).agent(), Agent::Systemd);
        assert_eq!(e(false, false, true).agent(), Agent::Plymouth);
        assert_eq!(e(false, false, false).agent(), Agent::Tty);
    }

    #[test]
    fn command_lines() {
        let c = systemd_command(Path::new("systemd-ask-password"), "cr_root", None);
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "--icon=drive-harddisk",
                "--id=vmvault:cr_root",
                "--timeout=0",
                "Please enter passphrase for disk cr_root:"
            ]
        );
        let a = systemd_args("d", Some(Duration::from_millis(1500)));
        assert_eq!(a[2], "--timeout=1");
        let a = systemd_args("d", Some(Duration::from_millis(10)));
        assert_eq!(a[2], "--timeout=1", "a sub-second timeout is not 'none'");
        let c = plymouth_command(Path::new("plymouth"), "home");
        let args: Vec<_> = c.get_args().map(|a| a.to_str().unwrap()).collect();
        assert_eq!(
            args,
            [
                "ask-for-password",
                "--prompt=Please enter passphrase for disk home:"
            ]
        );
    }

    /// The reading path, with a stand-in program (`sh`) in place of the agent.
    #[test]
    fn reads_first_line_of_the_helper() {
        let mut c = Command::new("sh");
        c.args(["-c", "printf 'pass word\\nignored\\n'"]);
        let p = read_from_program(c).unwrap();
        assert_eq!(p.as_bytes(), b"pass word");
        // Plymouth prints no newline.
        let mut c = Command::new("sh");
        c.args(["-c", "printf 'x'"]);
        assert_eq!(read_from_program(c).unwrap().as_bytes(), b"x");
        // Cancelled or timed out: the helper fails.
        let mut c = Command::new("sh");
        c.args(["-c", "echo partial; exit 1"]);
        let e = read_from_program(c).unwrap_err();
        assert!(matches!(e, PassphraseError::Agent { .. }), "{e}");
        let c = Command::new("/nonexistent/agent");
        let e = read_from_program(c).unwrap_err();
        assert!(e.to_string().contains("/nonexistent/agent"), "{e}");
    }
}
