//! The services as child processes (chaos, the bench): started from their
//! [`Flags`], their ports read back from the `listening:` line each prints
//! first (so port 0 works: nothing picks a port that another process could
//! take before the service binds it), signalled, watched over the admin port,
//! and measured from /proc.
//!
//! Invariant: a process ends with its handle. [`Process::stop`] ends it with
//! SIGTERM and checks its exit; a handle dropped on any other path (a phase
//! that failed, a run interrupted, a panic) kills it with SIGKILL. Every wait
//! has a deadline.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, Command};

use crate::flags::Flags;

/// How long a service may take to connect, migrate and bind.
const START_TIMEOUT: Duration = Duration::from_secs(300);
/// How long [`Process::stop`] waits for the exit after SIGTERM (the services'
/// grace period is 15 s by default).
const STOP_TIMEOUT: Duration = Duration::from_secs(60);

/// How to start one service binary; kept, so that it can be started again.
#[derive(Debug, Clone)]
pub struct Launch {
    /// The binary: its service's name in the folder given.
    pub bin: PathBuf,
    /// Its command line.
    pub flags: Flags,
    /// Its `RUST_LOG`.
    pub rust_log: String,
    /// A file its stdout and stderr are appended to; `None`: its stderr is ours.
    pub log: Option<PathBuf>,
}

impl Launch {
    /// The binary of `flags`' service in `bin_dir`, logging at `rust_log` to our stderr.
    pub fn new(bin_dir: &Path, flags: Flags, rust_log: &str) -> Launch {
        Launch { bin: bin_dir.join(flags.role().name()), flags, rust_log: rust_log.to_string(), log: None }
    }

    /// Appends its stdout and stderr to `path` instead.
    pub fn log_to(self, path: PathBuf) -> Launch {
        Launch { log: Some(path), ..self }
    }

    /// Where to read what it said, for errors.
    fn log_hint(&self) -> String {
        match &self.log {
            Some(path) => format!("see {}", path.display()),
            None => "its log is above".into(),
        }
    }

    /// Starts it and waits for its `listening:` line.
    pub async fn start(&self) -> anyhow::Result<Process> {
        let name = self.flags.role().name();
        anyhow::ensure!(self.bin.exists(), "{} not found: build the services first", self.bin.display());
        self.flags.check()?;
        let log = match &self.log {
            Some(path) => Some(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(path)
                    .with_context(|| format!("opening {}", path.display()))?,
            ),
            None => None,
        };
        let stderr = match &log {
            Some(file) => Stdio::from(file.try_clone()?),
            None => Stdio::inherit(),
        };
        let mut child = Command::new(&self.bin)
            .args(self.flags.args())
            .env("RUST_LOG", &self.rust_log)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", self.bin.display()))?;
        let pid = child.id().context("the service has no pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let line = match tokio::time::timeout(START_TIMEOUT, lines.next_line()).await {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = child.wait().await?;
                anyhow::bail!("{name} exited before it listened ({status}); {}", self.log_hint())
            }
            Err(_) => anyhow::bail!("{name} did not listen within {START_TIMEOUT:?}; {}", self.log_hint()),
        };
        // The rest of its stdout is copied to its log, or read and dropped, so
        // that it never blocks on a full pipe.
        let mut rest = lines.into_inner();
        match log {
            Some(file) => {
                let mut file = tokio::fs::File::from_std(file);
                file.write_all(format!("{line}\n").as_bytes()).await?;
                tokio::spawn(async move { tokio::io::copy_buf(&mut rest, &mut file).await });
            }
            None => {
                tokio::spawn(async move { tokio::io::copy_buf(&mut rest, &mut tokio::io::sink()).await });
            }
        }
        let listening = parse_listening(&line).with_context(|| format!("{name}: unexpected first line {line:?}"))?;
        let address = |what: &str| listening.iter().find(|(n, _)| n == what).map(|(_, addr)| *addr);
        let admin_addr = address("admin").with_context(|| format!("{name}: no admin port in {line:?}"))?;
        let http = reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?;
        let log_hint = self.log_hint();
        Ok(Process { child, pid, name, admin_addr, http_addr: address("http"), http, log_hint })
    }
}

/// A running service binary.
pub struct Process {
    child: Child,
    pid: u32,
    name: &'static str,
    /// The admin port it bound (`/metrics`, `/readyz`).
    pub admin_addr: SocketAddr,
    /// The producer's public port.
    pub http_addr: Option<SocketAddr>,
    http: reqwest::Client,
    log_hint: String,
}

impl Process {
    /// Its process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// True until it has exited.
    pub fn alive(&self) -> bool {
        // Our child stays a zombie until it is waited for, which `alive` counts as ended.
        alive(self.pid)
    }

    /// Its `/metrics` text, when the admin port answers.
    pub async fn metrics(&self) -> Option<String> {
        let response = self.http.get(format!("http://{}/metrics", self.admin_addr)).send().await.ok()?;
        response.text().await.ok()
    }

    /// One series of its `/metrics`, when it answers and has the series.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        crate::metric_value(&self.metrics().await?, series)
    }

    /// `GET /readyz` answers 200.
    pub async fn ready(&self) -> bool {
        let answer = self.http.get(format!("http://{}/readyz", self.admin_addr)).send().await;
        answer.is_ok_and(|r| r.status().is_success())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        let what = format!("{} to be ready ({})", self.name, self.log_hint);
        crate::wait_until(&what, timeout, async || self.ready().await.then_some(())).await
    }

    /// Its usage so far.
    pub fn usage(&self) -> Usage {
        usage(self.pid)
    }

    /// Sends `signal` (`TERM`, `KILL`) and waits up to `timeout` for the exit;
    /// killed when it does not exit in time.
    pub async fn end_with(mut self, signal: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        send_signal(self.pid, signal)?;
        tokio::time::timeout(timeout, self.child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{} did not exit within {timeout:?} of SIG{signal}", self.name))?
            .with_context(|| format!("waiting for {}", self.name))
    }

    /// Reads its usage, then stops it with SIGTERM; fails unless it exits 0.
    pub async fn stop(self) -> anyhow::Result<Usage> {
        let (usage, name) = (self.usage(), self.name);
        let status = self.end_with("TERM", STOP_TIMEOUT).await?;
        anyhow::ensure!(status.success(), "{name} exited with {status}");
        Ok(usage)
    }
}

/// Polls `done` until it is true, like [`crate::wait_until`], and fails at
/// once when one of `services` has exited: a phase whose relay died would
/// otherwise wait out its whole timeout.
pub async fn wait_while_running(
    what: &str,
    timeout: Duration,
    services: &[&Process],
    mut done: impl AsyncFnMut() -> bool,
) -> anyhow::Result<()> {
    let outcome = crate::wait_until(what, timeout, async || {
        if done().await {
            return Some(Ok(()));
        }
        let gone = services.iter().find(|s| !s.alive())?;
        Some(Err(anyhow::anyhow!("{} exited during the phase; {}", gone.name, gone.log_hint)))
    });
    outcome.await?
}

/// `NAME listening: admin=ADDR http=ADDR` as pairs.
fn parse_listening(line: &str) -> Option<Vec<(String, SocketAddr)>> {
    let (_, named) = line.split_once(" listening: ")?;
    let pair = |pair: &str| pair.split_once('=').and_then(|(n, a)| Some((n.to_string(), a.parse().ok()?)));
    named.split_whitespace().map(pair).collect()
}

/// Sends `signal` (`TERM`, `KILL`, `STOP`, `CONT`) to process `pid`.
pub fn send_signal(pid: u32, signal: &str) -> anyhow::Result<()> {
    let status = std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
    anyhow::ensure!(status.success(), "kill -{signal} {pid} failed");
    Ok(())
}

/// True while process `pid` exists and is not a zombie waiting to be reaped.
pub fn alive(pid: impl std::fmt::Display) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|stat| stat.rsplit_once(')').is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')))
}

/// What a process used.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Peak resident set size (VmHWM), MB.
    pub peak_rss_mb: f64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// What process `pid` has used so far (zero when it is gone).
pub fn usage(pid: u32) -> Usage {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let kb: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0.0);
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    // Fields after the command name (which may contain spaces): utime is the 12th, stime the 13th.
    let after = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
    Usage { peak_rss_mb: kb / 1024.0, cpu_seconds: (ticks(11) + ticks(12)) / 100.0 }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_listening_line_is_parsed() {
        let pairs = parse_listening("producer listening: http=127.0.0.1:8080 admin=127.0.0.1:9100").unwrap();
        assert_eq!(pairs[0], ("http".to_string(), "127.0.0.1:8080".parse().unwrap()));
        assert_eq!(pairs[1].1.port(), 9100);
        assert!(parse_listening("listening on 8080").is_none());
    }
}
