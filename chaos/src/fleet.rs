//! The run's system: a private broker, a SQLite database, and the services as
//! child processes ([`e2e::process`]) on fixed loopback ports, so that a
//! restarted service answers where the load and the checks expect it.
//!
//! Invariant: every wait has a deadline; a service is killed when its
//! [`Member`] drops, and its counters are carried across its restarts.

use std::path::Path;
use std::process::ExitStatus;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use e2e::flags::{Flags, Role};
use e2e::process::{Launch, Process};
use schema::testing::Probe;

/// The services: name and role.
const SERVICES: [(&str, Role); 4] =
    [("producer", Role::Producer), ("relay-a", Role::Relay), ("relay-b", Role::Relay), ("consumer", Role::Consumer)];
/// The producer's index in [`Fleet::members`].
pub const PRODUCER: usize = 0;
/// The consumer's index in [`Fleet::members`].
pub const CONSUMER: usize = 3;

/// Everything the run starts and checks.
pub struct Fleet {
    pub broker: e2e::broker::Broker,
    pub queue: String,
    pub store: Arc<dyn schema::Store>,
    pub probe: Arc<dyn Probe>,
    pub members: Vec<Member>,
    /// `http://127.0.0.1:PORT` of the producer.
    pub producer_url: String,
}

impl Fleet {
    /// Starts the broker and every service (binaries from `bin_dir`, logs in
    /// `logs`, the database in `run_dir`) and waits until each is ready.
    pub async fn start(bin_dir: &Path, run_dir: &Path, logs: &Path) -> anyhow::Result<Fleet> {
        let broker = tokio::task::spawn_blocking(e2e::broker::Broker::start).await?;
        let database_path = std::path::absolute(run_dir.join("chaos.db"))?;
        let database_url = format!("sqlite://{}", database_path.display());
        let schema::testing::TestDb { store, probe } = schema::testing::open(&database_url).await?;
        let queue = format!("/queue/chaos.{}", uuid::Uuid::new_v4().simple());
        let http_addr = format!("127.0.0.1:{}", e2e::free_port());
        let mut members = Vec::new();
        for (name, role) in SERVICES {
            let flags = match role {
                Role::Producer => Flags::producer(&database_url).with("--http-addr", &http_addr),
                Role::Relay => Flags::relay(&database_url, &broker.url(), &queue)
                    .with("--heartbeat-ms", 1000)
                    .with("--relay-id", format!("chaos-{name}"))
                    .with("--lease-ms", e2e::stack::TEST_LEASE_MS)
                    .with("--receipt-timeout-ms", 2500)
                    .with("--retention-cron", "")
                    .with("--reconcile-cron", "*/5 * * * * *")
                    .with("--stale-published-secs", 60),
                Role::Consumer => Flags::consumer(&database_url, &broker.url(), &queue).with("--heartbeat-ms", 1000),
            };
            let flags =
                flags.with("--shutdown-grace-ms", 5000).with("--admin-addr", format!("127.0.0.1:{}", e2e::free_port()));
            let launch = Launch::new(bin_dir, flags, "info").log_to(logs.join(format!("{name}.log")));
            members.push(Member { name: name.to_string(), launch, process: None, carried: 0.0, current: 0.0 });
        }
        for member in &mut members {
            member.start().await?;
        }
        for member in &members {
            member.wait_ready(Duration::from_secs(60)).await?;
        }
        let producer_url = format!("http://{http_addr}");
        Ok(Fleet { broker, queue, store, probe, members, producer_url })
    }

    /// The services' names, by index.
    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }
}

/// One service, started again after each fault that ends it.
pub struct Member {
    /// `producer`, `relay-a`, ...
    pub name: String,
    launch: Launch,
    process: Option<Process>,
    /// Counter totals carried over from earlier incarnations, and the last
    /// scrape of the current one (a lower bound: increments after the last
    /// scrape of a killed process are lost).
    carried: f64,
    current: f64,
}

impl Member {
    /// Starts the service (its log is appended to) and waits until it listens.
    pub async fn start(&mut self) -> anyhow::Result<()> {
        self.carried += self.current;
        self.current = 0.0;
        self.process = Some(self.launch.start().await.with_context(|| format!("starting {}", self.name))?);
        Ok(())
    }

    fn process(&self) -> anyhow::Result<&Process> {
        self.process.as_ref().with_context(|| format!("{} is not running", self.name))
    }

    /// True while the process runs.
    pub fn running(&self) -> bool {
        self.process.as_ref().is_some_and(Process::alive)
    }

    /// Sends `signal` (`KILL`, `TERM`) and waits for the exit.
    pub async fn end_with(&mut self, signal: &str, timeout: Duration) -> anyhow::Result<ExitStatus> {
        let process = self.process.take().with_context(|| format!("{} is not running", self.name))?;
        process.end_with(signal, timeout).await.with_context(|| self.name.clone())
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, timeout: Duration) -> anyhow::Result<()> {
        self.process()?.wait_ready(timeout).await.with_context(|| self.name.clone())
    }

    /// One sample of its `/metrics`, when it answers.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        self.process.as_ref()?.metric(series).await
    }

    /// Scrapes a counter, keeping its running total across restarts.
    pub async fn track(&mut self, series: &str) {
        if let Some(value) = self.metric(series).await {
            self.current = value;
        }
    }

    /// The tracked counter over every incarnation (a lower bound).
    pub fn tracked_total(&self) -> f64 {
        self.carried + self.current
    }

    /// True when its log holds an ANSI escape (colour codes belong on terminals only).
    pub fn log_has_ansi(&self) -> bool {
        self.launch.log.as_ref().is_some_and(|log| std::fs::read(log).is_ok_and(|bytes| bytes.contains(&0x1b)))
    }
}
