//! Child processes the demo starts (kvpick-epp, Envoy), each in its own process group, output to a
//! log file, and killed with its whole group when dropped, so that nothing outlives the demo on
//! an error or Ctrl-C (Envoy from pip runs behind wrapper scripts: killing the child alone would
//! leave the real `envoy` running).

use std::ffi::OsStr;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::FleetError;

/// A running child process group.
#[derive(Debug)]
pub struct Child {
    name: String,
    child: std::process::Child,
    log: PathBuf,
}

impl Child {
    /// Starts `program args` as the leader of a new process group, stdout and stderr to `log`.
    pub fn spawn<I, S>(
        name: &str,
        program: &Path,
        args: I,
        envs: &[(&str, &str)],
        log: &Path,
    ) -> Result<Self, FleetError>
    where
        I: IntoIterator<Item = S>,
        S: AsRef<OsStr>,
    {
        let out = std::fs::File::create(log).map_err(|e| FleetError::io(log, e))?;
        let err = out.try_clone().map_err(|e| FleetError::io(log, e))?;
        let child = Command::new(program)
            .args(args)
            .envs(envs.iter().copied())
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err)
            .process_group(0)
            .spawn()
            .map_err(|e| FleetError::Process(format!("cannot start {}: {e}", program.display())))?;
        Ok(Self {
            name: name.into(),
            child,
            log: log.to_owned(),
        })
    }

    /// Its process id (for `/proc/PID`).
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// An error if the process has exited, with the end of its log.
    pub fn check_alive(&mut self) -> Result<(), FleetError> {
        match self.child.try_wait() {
            Ok(None) => Ok(()),
            Ok(Some(status)) => Err(FleetError::Process(format!(
                "{} exited ({status}); the end of {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail(30)
            ))),
            Err(e) => Err(FleetError::Process(format!("{}: {e}", self.name))),
        }
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Kills the group and reaps the child.
    pub fn stop(mut self) {
        self.kill();
    }

    fn kill(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGTERM to the group first, for a clean exit, then SIGKILL after a grace period.
            let group = format!("-{}", self.child.id());
            let _ = Command::new("kill")
                .args(["-TERM", "--", &group])
                .stderr(Stdio::null())
                .status();
            for _ in 0..20 {
                if !matches!(self.child.try_wait(), Ok(None)) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = Command::new("kill")
                .args(["-KILL", "--", &group])
                .stderr(Stdio::null())
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A port free on 127.0.0.1 right now, for a process this one is about to start.
///
/// Taken from below the kernel's ephemeral range: a port that `bind(:0)` hands out and this
/// function then frees may be taken again, before the child binds it, by any outgoing connection
/// or `:0` listener on the machine (seen in CI as "Address already in use"). Ports below the range
/// are never handed out that way, and a process-wide cursor (starting at an offset of the pid, so
/// that concurrent test binaries start apart) never gives one port twice.
pub fn free_port() -> Result<u16, FleetError> {
    use std::sync::atomic::{AtomicU32, Ordering};
    static CURSOR: AtomicU32 = AtomicU32::new(u32::MAX);
    const LOWEST: u32 = 10_000;
    let top = ephemeral_low().max(LOWEST + 1_000);
    let span = top - LOWEST;
    let start = std::process::id().wrapping_mul(7_919) % span;
    let _ = CURSOR.compare_exchange(u32::MAX, start, Ordering::Relaxed, Ordering::Relaxed);
    for _ in 0..span {
        let port = LOWEST + CURSOR.fetch_add(1, Ordering::Relaxed) % span;
        let Ok(port) = u16::try_from(port) else {
            continue;
        };
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return Ok(port);
        }
    }
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .map_err(|e| FleetError::Network(format!("no free port: {e}")))
}

/// The first port of the kernel's ephemeral range (Linux's default when it cannot be read).
fn ephemeral_low() -> u32 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse().ok())
        .unwrap_or(32_768)
}
