//! The services as child processes on fixed loopback ports, so that a
//! restarted service answers where the load and the checks expect it.
//!
//! Invariant: every wait has a deadline; a child is killed when its handle drops.

use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::{Duration, Instant};

use tokio::process::{Child, Command};

/// One service binary and how to start it.
pub struct Proc {
    /// `producer`, `relay-a`, ...
    pub name: String,
    bin: PathBuf,
    env: Vec<(String, String)>,
    /// Its admin port (`/metrics`, `/readyz`).
    pub admin: u16,
    child: Option<Child>,
    log: PathBuf,
    /// Times started.
    pub starts: u32,
    /// Counter totals carried over from earlier incarnations, and the last
    /// scrape of the current one (a lower bound: increments after the last
    /// scrape of a killed process are lost).
    carried: f64,
    current: f64,
}

impl Proc {
    /// A service `bin` (a file in `bin_dir`) with `env`; logs go to `logs/NAME.log`.
    pub fn new(name: &str, bin_dir: &Path, bin: &str, logs: &Path, env: Vec<(String, String)>) -> Proc {
        Proc {
            name: name.to_string(),
            bin: bin_dir.join(bin),
            env,
            admin: e2e::free_port(),
            child: None,
            log: logs.join(format!("{name}.log")),
            starts: 0,
            carried: 0.0,
            current: 0.0,
        }
    }

    /// Starts the process (its log is appended to).
    pub fn spawn(&mut self) -> anyhow::Result<()> {
        anyhow::ensure!(self.bin.exists(), "{} not found: build the workspace first", self.bin.display());
        let log = std::fs::OpenOptions::new().create(true).append(true).open(&self.log)?;
        let child = Command::new(&self.bin)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .env("ADMIN_ADDR", format!("127.0.0.1:{}", self.admin))
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .kill_on_drop(true)
            .spawn()?;
        self.child = Some(child);
        self.starts += 1;
        self.carried += self.current;
        self.current = 0.0;
        Ok(())
    }

    /// True while the process runs.
    pub fn running(&mut self) -> bool {
        self.child.as_mut().is_some_and(|c| matches!(c.try_wait(), Ok(None)))
    }

    /// Sends `signal` (`KILL`, `TERM`) and waits for the exit.
    pub async fn signal_and_wait(&mut self, signal: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let child = self.child.as_mut().ok_or_else(|| anyhow::anyhow!("{} is not running", self.name))?;
        let pid = child.id().ok_or_else(|| anyhow::anyhow!("{} has already exited", self.name))?;
        std::process::Command::new("kill").arg(format!("-{signal}")).arg(pid.to_string()).status()?;
        let status = tokio::time::timeout(timeout, child.wait())
            .await
            .map_err(|_| anyhow::anyhow!("{} did not exit within {timeout:?} of SIG{signal}", self.name))??;
        self.child = None;
        Ok(status)
    }

    /// `GET /readyz` answers 200.
    pub async fn ready(&self, http: &reqwest::Client) -> bool {
        let url = format!("http://127.0.0.1:{}/readyz", self.admin);
        http.get(url).send().await.is_ok_and(|r| r.status().is_success())
    }

    /// One sample of its `/metrics`, when it answers.
    pub async fn metric(&self, http: &reqwest::Client, series: &str) -> Option<f64> {
        let url = format!("http://127.0.0.1:{}/metrics", self.admin);
        let text = http.get(url).send().await.ok()?.text().await.ok()?;
        e2e::metric_value(&text, series)
    }

    /// Scrapes a counter, keeping its running total across restarts.
    pub async fn track(&mut self, http: &reqwest::Client, series: &str) {
        if let Some(value) = self.metric(http, series).await {
            self.current = value;
        }
    }

    /// The tracked counter over every incarnation (a lower bound).
    pub fn tracked_total(&self) -> f64 {
        self.carried + self.current
    }

    /// True when its log holds an ANSI escape (colour codes belong on terminals only).
    pub fn log_has_ansi(&self) -> bool {
        std::fs::read(&self.log).is_ok_and(|bytes| bytes.contains(&0x1b))
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, http: &reqwest::Client, timeout: Duration) -> anyhow::Result<()> {
        let deadline = Instant::now() + timeout;
        while !self.ready(http).await {
            anyhow::ensure!(
                Instant::now() < deadline,
                "{} not ready within {timeout:?} (see {})",
                self.name,
                self.log.display()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Ok(())
    }
}
