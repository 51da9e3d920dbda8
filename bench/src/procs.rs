//! Services as child processes, with their peak memory and CPU time read from /proc.

use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context;
use serde::Serialize;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// How long a service may take to connect, migrate and bind.
const START_TIMEOUT: Duration = Duration::from_secs(300);

/// What a service used.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Usage {
    /// Peak resident set size (VmHWM), MB.
    pub peak_rss_mb: f64,
    /// User + system CPU time, seconds.
    pub cpu_seconds: f64,
}

/// A running service binary.
///
/// Invariant: the process ends with its handle. [`ServiceProcess::stop`] ends
/// it with SIGTERM and checks its exit; a handle dropped on any other path (a
/// phase that failed, a bench interrupted) kills it with SIGKILL.
pub struct ServiceProcess {
    child: Child,
    pid: u32,
    /// Its binary's file name, for errors.
    name: String,
    /// What it printed on its `listening:` line, e.g. `[("http", "127.0.0.1:41234")]`.
    listening: Vec<(String, String)>,
}

impl ServiceProcess {
    /// Starts `bin` with `env`, its admin port (and its HTTP port, where `env`
    /// says `127.0.0.1:0`) on port 0, and waits for the `listening:` line in
    /// which it names the ports it got: no port is picked here and bound later,
    /// so nothing else can take it in between.
    pub async fn start(bin: &Path, env: &[(&str, String)]) -> anyhow::Result<Self> {
        anyhow::ensure!(bin.exists(), "{} not found: build with `cargo build --release` first", bin.display());
        let mut child = Command::new(bin)
            .env("ADMIN_ADDR", "127.0.0.1:0")
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("starting {}", bin.display()))?;
        let pid = child.id().context("the service has no pid")?;
        let mut lines = BufReader::new(child.stdout.take().context("no stdout")?).lines();
        let first = tokio::time::timeout(START_TIMEOUT, lines.next_line()).await;
        let line = match first {
            Ok(Ok(Some(line))) => line,
            Ok(_) => {
                let status = child.wait().await?;
                anyhow::bail!("{} exited before it listened ({status}); its log is above", bin.display())
            }
            Err(_) => anyhow::bail!("{} did not listen within {START_TIMEOUT:?}", bin.display()),
        };
        // Whatever else it prints is read and dropped, so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let listening =
            parse_listening(&line).with_context(|| format!("{}: unexpected first line {line:?}", bin.display()))?;
        let name = bin.file_name().map_or_else(|| bin.display().to_string(), |n| n.to_string_lossy().into_owned());
        Ok(Self { child, pid, name, listening })
    }

    /// The address it bound as `name` (`admin`, `http`).
    pub fn addr(&self, name: &str) -> &str {
        self.listening.iter().find(|(n, _)| n == name).map_or("127.0.0.1:0", |(_, addr)| addr)
    }

    /// One series of its `/metrics` (0 when it is absent or the port does not answer).
    pub async fn metric(&self, series: &str) -> f64 {
        let text = match reqwest::get(format!("http://{}/metrics", self.addr("admin"))).await {
            Ok(response) => response.text().await.unwrap_or_default(),
            Err(_) => String::new(),
        };
        e2e::metric_value(&text, series).unwrap_or(0.0)
    }

    /// Its usage so far.
    pub fn usage(&self) -> Usage {
        usage(self.pid)
    }

    /// Reads its usage, then stops it with SIGTERM and waits.
    pub async fn stop(mut self) -> anyhow::Result<Usage> {
        let usage = usage(self.pid);
        std::process::Command::new("kill").arg("-TERM").arg(self.pid.to_string()).status()?;
        let status = self.child.wait().await?;
        anyhow::ensure!(status.success(), "service exited with {status}");
        Ok(usage)
    }
}

/// Polls `done` every 20 ms until it is true. Fails when `timeout` has passed,
/// and at once when one of the phase's `services` has exited: a phase whose
/// relay died would otherwise wait out its whole timeout.
pub async fn wait_until<F, Fut>(timeout: Duration, services: &[&ServiceProcess], mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        for service in services {
            // Our child stays a zombie until it is waited for, which `alive` counts as ended.
            anyhow::ensure!(
                e2e::broker::alive(&service.pid.to_string()),
                "{} exited during the phase; its log is above",
                service.name
            );
        }
        anyhow::ensure!(Instant::now() < deadline, "phase did not finish within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `NAME listening: admin=ADDR http=ADDR` as pairs.
fn parse_listening(line: &str) -> Option<Vec<(String, String)>> {
    let (_, named) = line.split_once(" listening: ")?;
    named.split_whitespace().map(|pair| pair.split_once('=').map(|(n, a)| (n.to_string(), a.to_string()))).collect()
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

#[cfg(test)]
mod tests {
    use super::*;

    /// A shell script standing in for a service binary.
    fn fake(dir: &Path, name: &str, body: &str) -> std::path::PathBuf {
        use std::os::unix::fs::PermissionsExt;
        let path = dir.join(name);
        std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
        path
    }

    fn ended(pid: u32) -> bool {
        !e2e::broker::alive(&pid.to_string())
    }

    async fn until_ended(pid: u32) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while !ended(pid) {
            assert!(tokio::time::Instant::now() < deadline, "process {pid} still runs");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    const SERVES: &str = "trap 'exit 0' TERM\necho \"fake listening: admin=127.0.0.1:9 http=127.0.0.1:8\"\nwhile :; do sleep 1 & wait $!; done";

    #[tokio::test]
    async fn a_phase_that_fails_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let serving = fake(dir.path(), "serving", SERVES);
        let failing = fake(dir.path(), "failing", "echo 'cannot start' >&2\nexit 1");
        let mut started = 0;
        let phase = async {
            let relay = ServiceProcess::start(&serving, &[]).await?;
            started = relay.pid;
            ServiceProcess::start(&failing, &[]).await?;
            anyhow::Ok(relay)
        };
        let error = phase.await.err().expect("the second service fails to start");
        assert!(format!("{error:#}").contains("exited before it listened"), "{error:#}");
        assert_ne!(started, 0);
        until_ended(started).await;
    }

    #[tokio::test]
    async fn a_phase_that_panics_leaves_no_process_behind() {
        let dir = tempfile::tempdir().unwrap();
        let serving = fake(dir.path(), "serving", SERVES);
        let (tx, rx) = tokio::sync::oneshot::channel();
        let phase = tokio::spawn(async move {
            let relay = ServiceProcess::start(&serving, &[]).await.unwrap();
            tx.send(relay.pid).unwrap();
            panic!("a phase that panics with its relay running");
        });
        let started = rx.await.unwrap();
        assert!(phase.await.unwrap_err().is_panic());
        until_ended(started).await;
    }

    #[tokio::test]
    async fn a_phase_whose_service_exits_fails_at_once() {
        let dir = tempfile::tempdir().unwrap();
        let dies = fake(dir.path(), "relay", "echo 'relay listening: admin=127.0.0.1:9'\nexit 3");
        let relay = ServiceProcess::start(&dies, &[]).await.unwrap();
        let never = || async { false };
        let error = wait_until(Duration::from_secs(600), &[&relay], never).await.unwrap_err();
        assert!(format!("{error:#}").contains("relay exited during the phase"), "{error:#}");
    }

    #[tokio::test]
    async fn ports_are_read_back_and_stop_ends_the_process() {
        let dir = tempfile::tempdir().unwrap();
        let service = ServiceProcess::start(&fake(dir.path(), "serving", SERVES), &[]).await.unwrap();
        assert_eq!((service.addr("admin"), service.addr("http")), ("127.0.0.1:9", "127.0.0.1:8"));
        let pid = service.pid;
        service.stop().await.unwrap();
        assert!(ended(pid));
    }

    #[tokio::test]
    async fn a_service_that_never_says_where_it_listens_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let mute = fake(dir.path(), "mute", "echo 'hello'\nexec sleep 600");
        let error = ServiceProcess::start(&mute, &[]).await.err().expect("no listening line");
        assert!(format!("{error:#}").contains("unexpected first line"), "{error:#}");
    }

    #[test]
    fn the_listening_line_is_parsed() {
        let pairs = parse_listening("producer listening: http=127.0.0.1:8080 admin=127.0.0.1:9100").unwrap();
        assert_eq!(pairs[0], ("http".to_string(), "127.0.0.1:8080".to_string()));
        assert_eq!(pairs[1].1, "127.0.0.1:9100");
        assert!(parse_listening("listening on 8080").is_none());
    }
}
