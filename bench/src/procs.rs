//! Services as child processes, with their peak memory and CPU time read from /proc.

use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde::Serialize;

/// What a service used.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Peak resident set size (VmHWM), MB.
    pub peak_rss_mb: f64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// A running service binary.
pub struct ServiceProcess {
    child: Child,
    admin: String,
}

impl ServiceProcess {
    /// Starts `bin` with `env` (and a free admin port).
    pub fn start(bin: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        anyhow::ensure!(bin.exists(), "{} not found: build with `cargo build --release` first", bin.display());
        let admin = format!("127.0.0.1:{}", e2e::free_port());
        let mut cmd = Command::new(bin);
        cmd.envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .env("ADMIN_ADDR", &admin)
            .stdout(Stdio::null())
            .stderr(Stdio::inherit());
        Ok(Self { child: cmd.spawn()?, admin })
    }

    /// One series of its `/metrics` (0 when it is absent or the port does not answer).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = match reqwest::get(format!("http://{}/metrics", self.admin)).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        e2e::metric_value(&text, series).unwrap_or(0.0)
    }

    /// Its usage so far.
    pub fn usage(&self) -> Usage {
        usage(self.child.id())
    }

    /// Reads its usage, then stops it with SIGTERM and waits.
    pub fn stop(mut self) -> anyhow::Result<Usage> {
        let usage = usage(self.child.id());
        Command::new("kill").arg("-TERM").arg(self.child.id().to_string()).status()?;
        let status = self.child.wait()?;
        anyhow::ensure!(status.success(), "service exited with {status}");
        Ok(usage)
    }
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

/// CPU model and core count, for the report.
pub fn machine() -> String {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name"))
        .map_or("unknown CPU", |v| v.trim_start_matches([' ', '\t', ':']));
    format!("{model}, {} cores", std::thread::available_parallelism().map_or(0, |n| n.get()))
}
