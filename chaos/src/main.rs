//! `chaos`: the whole pipeline under faults, bounded in time, loopback only.
//!
//! Steady load from the loadtest tool against a producer, two relays and a
//! consumer running as processes on a private broker. At random moments one
//! fault: SIGKILL or SIGTERM of any service, a broker kill and restart,
//! SQLite's write lock held, a burst of hostile messages. After each, a fresh
//! order is carried end to end to time the recovery. At the end the
//! invariants are read straight from the database and the broker, and a
//! report is printed.
//!
//! Invariant: every wait has a deadline; the exit code is non-zero when an
//! invariant fails, and the report says which.

mod faults;
mod fleet;

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context;
use clap::Parser;
use rand::seq::SliceRandom;
use rand::{Rng, SeedableRng};
use schema::testing::Probe;

use crate::faults::Fault;
use crate::fleet::Proc;

/// Runs the pipeline under faults and checks that nothing is lost or doubled.
#[derive(Debug, Parser)]
#[command(name = "chaos", version, about)]
struct Args {
    /// How long faults are injected under load.
    #[arg(long, default_value = "60s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Orders per second from the load generator.
    #[arg(long, default_value_t = 100.0)]
    rate: f64,
    /// Seed of the fault schedule (printed; give it again to replay the schedule).
    #[arg(long)]
    seed: Option<u64>,
    /// Folder holding the producer, relay and consumer binaries; defaults to this binary's folder.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
    /// Where the run's database and service logs go.
    #[arg(long, default_value = "target/chaos")]
    dir: PathBuf,
}

const SERVICES: [(&str, &str); 4] =
    [("producer", "producer"), ("relay-a", "relay"), ("relay-b", "relay"), ("consumer", "consumer")];
const PRODUCER: usize = 0;
const CONSUMER: usize = 3;
/// Longest wait for the pipeline to carry a fresh order after a fault.
const RECOVERY_DEADLINE: Duration = Duration::from_secs(120);

/// One injected fault and what it cost.
struct FaultRecord {
    fault: Fault,
    /// From injection until a fresh order was processed end to end.
    recovered_in: Option<Duration>,
}

struct Run {
    args: Args,
    http: reqwest::Client,
    broker: e2e::broker::Broker,
    queue: String,
    store: std::sync::Arc<dyn schema::Store>,
    probe: std::sync::Arc<dyn Probe>,
    procs: Vec<Proc>,
    rng: rand::rngs::StdRng,
    faults: Vec<FaultRecord>,
    hostile: Vec<(String, String)>,
    violations: Vec<String>,
    canaries: u64,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let seed = args.seed.unwrap_or_else(rand::random);
    let run_dir = args.dir.join(format!("run-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S")));
    let logs = run_dir.join("logs");
    std::fs::create_dir_all(&logs).with_context(|| format!("creating {}", logs.display()))?;
    let bin_dir = match &args.bin_dir {
        Some(dir) => dir.clone(),
        None => std::env::current_exe()?.parent().context("binary folder")?.to_path_buf(),
    };
    println!(
        "chaos: seed {seed}, {} of faults under {} orders/s; logs in {}",
        humantime::format_duration(args.duration),
        args.rate,
        logs.display()
    );
    let broker = tokio::task::spawn_blocking(e2e::broker::Broker::start).await?;
    let database_path = std::path::absolute(run_dir.join("chaos.db"))?;
    let database_url = format!("sqlite://{}", database_path.display());
    let store = schema::connect(&database_url).await?;
    let probe = schema::testing::probe(&database_url).await?;
    let queue = format!("/queue/chaos.{}", uuid::Uuid::new_v4().simple());
    let http_port = e2e::free_port();
    let procs = SERVICES
        .iter()
        .map(|(name, bin)| {
            let mut env = vec![
                ("DATABASE_URL".to_string(), database_url.clone()),
                ("BROKER_URL".into(), broker.url()),
                ("ORDER_QUEUE".into(), queue.clone()),
                ("SHUTDOWN_GRACE_MS".into(), "5000".into()),
                ("BROKER_HEARTBEAT_MS".into(), "1000".into()),
                ("RUST_LOG".into(), "info".into()),
            ];
            match *bin {
                "producer" => env.push(("HTTP_ADDR".into(), format!("127.0.0.1:{http_port}"))),
                "relay" => env.extend([
                    ("RELAY_ID".into(), format!("chaos-{name}")),
                    ("RELAY_LEASE_MS".into(), "4000".into()),
                    ("RELAY_RECEIPT_TIMEOUT_MS".into(), "2500".into()),
                    ("RETENTION_CRON".into(), String::new()),
                    ("RECONCILE_CRON".into(), "*/5 * * * * *".into()),
                    ("STALE_PUBLISHED_SECS".into(), "60".into()),
                ]),
                _ => {}
            }
            Proc::new(name, &bin_dir, bin, &logs, env)
        })
        .collect();
    let mut run = Run {
        http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
        broker,
        queue,
        store,
        probe,
        procs,
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        faults: Vec::new(),
        hostile: Vec::new(),
        violations: Vec::new(),
        canaries: 0,
        args,
    };
    let producer_url = format!("http://127.0.0.1:{http_port}");
    for proc in &mut run.procs {
        proc.spawn()?;
    }
    for proc in &run.procs {
        proc.wait_ready(&run.http, Duration::from_secs(60)).await?;
    }
    let load = tokio::spawn(loadtest::run::run(loadtest::run::Options {
        url: producer_url.clone(),
        mode: loadtest::run::Mode::Open { rate: run.args.rate },
        duration: run.args.duration,
        products: ["P123", "P200", "P300", "P400"].map(String::from).to_vec(),
        idempotency_keys: true,
        wait: None,
        request_timeout: Duration::from_secs(10),
        progress: false,
        all_final: None,
    }));
    run.inject_faults(&producer_url).await?;
    let load = load.await??;
    let latency = run.settle_and_verify(&producer_url, load.accepted).await?;
    run.report(&load, latency).await?;
    if run.violations.is_empty() {
        println!("chaos: passed");
        Ok(())
    } else {
        anyhow::bail!("chaos: {} invariant(s) failed; logs in {}", run.violations.len(), logs.display())
    }
}

impl Run {
    fn names(&self) -> Vec<String> {
        self.procs.iter().map(|p| p.name.clone()).collect()
    }

    /// Faults one after another until the load's time is up: every kind once
    /// in a shuffled round, then more rounds while time remains.
    async fn inject_faults(&mut self, producer_url: &str) -> anyhow::Result<()> {
        let started = Instant::now();
        let mut round = Vec::new();
        while started.elapsed() + Duration::from_secs(5) < self.args.duration {
            if round.is_empty() {
                round = Fault::all(self.procs.len());
                round.shuffle(&mut self.rng);
            }
            let fault = round.pop().expect("refilled above");
            let pause = Duration::from_millis(self.rng.random_range(500..2_500));
            self.observe_for(pause).await;
            println!("  {:>5.1} s  {}", started.elapsed().as_secs_f64(), fault.label(&self.names()));
            let at = Instant::now();
            if let Err(error) = self.inject(fault).await {
                self.violations.push(format!("{}: {error:#}", fault.label(&self.names())));
            }
            let recovered_in = self.canary(producer_url, at).await;
            if recovered_in.is_none() {
                let label = fault.label(&self.names());
                self.violations.push(format!("no fresh order processed within {RECOVERY_DEADLINE:?} after {label}"));
            }
            self.faults.push(FaultRecord { fault, recovered_in });
        }
        Ok(())
    }

    async fn inject(&mut self, fault: Fault) -> anyhow::Result<()> {
        let down = Duration::from_millis(self.rng.random_range(200..1_500));
        match fault {
            Fault::Kill(i) => {
                self.procs[i].signal_and_wait("KILL", Duration::from_secs(10)).await?;
                tokio::time::sleep(down).await;
                self.procs[i].spawn()?;
            }
            Fault::Term(i) => {
                let status = self.procs[i].signal_and_wait("TERM", Duration::from_secs(20)).await?;
                tokio::time::sleep(down).await;
                self.procs[i].spawn()?;
                anyhow::ensure!(status.success(), "exited with {status} after SIGTERM (a drain must exit 0)");
            }
            Fault::BrokerKill => {
                self.broker.kill();
                tokio::time::sleep(down).await;
                self.broker.start_again();
            }
            Fault::DatabaseLock => {
                faults::hold_write_lock(&*self.probe).await?;
            }
            Fault::Hostile => {
                let recent = self.store.recent_orders(2).await?;
                let order = recent.first().map_or(1, |o| o.order_id.0);
                // The spoofed outbox id is the previous order's, which must still be processed.
                let other = match recent.get(1) {
                    Some(o) => self.probe.outbox_ids(o.order_id).await?.first().copied(),
                    None => None,
                };
                let sent =
                    faults::send_hostile(&self.broker.url(), &self.queue, order, other.unwrap_or_default()).await?;
                self.hostile.extend(sent);
            }
        }
        Ok(())
    }

    /// Places one order (retrying while the producer is down) and waits until
    /// it is processed; returns the time since `since`.
    async fn canary(&mut self, producer_url: &str, since: Instant) -> Option<Duration> {
        let deadline = since + RECOVERY_DEADLINE;
        let body = serde_json::json!({"customer_name": "Canary", "product_id": "P500", "quantity": 1});
        let key = format!("canary-{}", uuid::Uuid::new_v4().simple());
        let order = loop {
            let answer = self
                .http
                .post(format!("{producer_url}/api/orders"))
                .header("Idempotency-Key", &key)
                .json(&body)
                .send()
                .await;
            if let Ok(response) = answer
                && response.status().is_success()
                && let Ok(order) = response.json::<serde_json::Value>().await
            {
                break order["order_id"].as_i64()?;
            }
            if Instant::now() > deadline {
                return None;
            }
            self.observe_for(Duration::from_millis(100)).await;
        };
        self.canaries += 1;
        while Instant::now() < deadline {
            if let Ok(o) = self.store.order(schema::OrderId(order)).await
                && o.status.is_final()
            {
                return Some(since.elapsed());
            }
            self.observe_for(Duration::from_millis(100)).await;
        }
        None
    }

    /// Waits `pause`, scraping the consumer's duplicate counter meanwhile.
    async fn observe_for(&mut self, pause: Duration) {
        let until = Instant::now() + pause;
        loop {
            let http = self.http.clone();
            self.procs[CONSUMER].track(&http, r#"orderflow_consumer_messages_total{outcome="duplicate"}"#).await;
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return;
            }
            tokio::time::sleep(left.min(Duration::from_millis(250))).await;
        }
    }

    /// Brings every service back, waits until every order is final, then
    /// checks the invariants. Returns the end-to-end latencies (ms) of all orders.
    async fn settle_and_verify(&mut self, producer_url: &str, accepted: u64) -> anyhow::Result<Vec<i64>> {
        for proc in &mut self.procs {
            if !proc.running() {
                self.violations.push(format!("{} was found dead after the fault phase", proc.name));
                proc.spawn()?;
            }
        }
        for proc in &self.procs {
            proc.wait_ready(&self.http, Duration::from_secs(60)).await?;
        }
        let settled = self.wait_until("every order final and every row published", Duration::from_secs(180), |t| {
            t.processed + t.failed == t.orders && t.unpublished == 0
        });
        settled.await;
        self.check_metrics_agree(producer_url).await;
        let t = self.probe.tally().await?;
        let mut check = |ok: bool, what: String| {
            if !ok {
                self.violations.push(what);
            }
        };
        let expected = accepted + self.canaries;
        check(t.orders as u64 >= expected, format!("{} orders in the database, {expected} were accepted", t.orders));
        check(
            t.processed == t.orders,
            format!("{} of {} orders processed ({} failed)", t.processed, t.orders, t.failed),
        );
        check(t.outbox == t.orders, format!("{} outbox rows for {} orders", t.outbox, t.orders));
        check(t.unpublished == 0 && t.parked == 0, format!("{} rows unpublished, {} parked", t.unpublished, t.parked));
        check(
            t.inbox_from_outbox == t.orders,
            format!("{} outbox messages applied for {} orders", t.inbox_from_outbox, t.orders),
        );
        check(t.mispriced == 0, format!("{} orders mispriced", t.mispriced));
        self.check_queues().await?;
        for proc in &mut self.procs {
            match proc.signal_and_wait("TERM", Duration::from_secs(20)).await {
                Ok(status) if status.success() => {}
                Ok(status) => self.violations.push(format!("{} exited with {status} at the end", proc.name)),
                Err(error) => self.violations.push(format!("{error:#}")),
            }
        }
        for proc in &self.procs {
            if proc.log_has_ansi() {
                self.violations.push(format!("{}'s log file holds ANSI colour codes", proc.name));
            }
        }
        let orders = self.store.recent_orders(u32::MAX).await?;
        Ok(orders.iter().filter_map(|o| o.processed_at.map(|p| (p - o.created_at).num_milliseconds())).collect())
    }

    async fn wait_until(&mut self, what: &str, timeout: Duration, done: impl Fn(&schema::testing::Tally) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            match self.probe.tally().await {
                Ok(t) if done(&t) => return,
                _ if Instant::now() > deadline => {
                    self.violations.push(format!("timed out after {timeout:?} waiting for {what}"));
                    return;
                }
                _ => self.observe_for(Duration::from_millis(200)).await,
            }
        }
    }

    /// `/metrics` agrees with the database: the relays' gauges match the
    /// outbox, and 20 more orders move every service's counter by exactly 20.
    async fn check_metrics_agree(&mut self, producer_url: &str) {
        let http = self.http.clone();
        let relays: Vec<usize> = (0..self.procs.len()).filter(|i| self.procs[*i].name.starts_with("relay")).collect();
        let series = |i: usize| match i {
            PRODUCER => "orderflow_producer_orders_placed_total",
            CONSUMER => r#"orderflow_consumer_messages_total{outcome="processed"}"#,
            _ => "orderflow_relay_published_total",
        };
        let sum =
            |values: &[Option<f64>], which: &[usize]| which.iter().map(|i| values[*i].unwrap_or(f64::NAN)).sum::<f64>();
        let mut before = Vec::new();
        for (i, proc) in self.procs.iter().enumerate() {
            before.push(proc.metric(&http, series(i)).await);
        }
        let orders_before = self.probe.tally().await.map(|t| t.orders).unwrap_or_default();
        for n in 0..20 {
            let body = serde_json::json!({"customer_name": format!("Audit {n}"), "product_id": "P600", "quantity": 1});
            let sent = http.post(format!("{producer_url}/api/orders")).json(&body).send().await;
            if !sent.is_ok_and(|r| r.status().as_u16() == 201) {
                self.violations.push("a quiet pipeline refused an order".into());
            }
        }
        let target = orders_before + 20;
        self.wait_until("the 20 audit orders", Duration::from_secs(60), |t| {
            t.orders == target && t.processed == target && t.unpublished == 0
        })
        .await;
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            let mut after = Vec::new();
            for (i, proc) in self.procs.iter().enumerate() {
                after.push(proc.metric(&http, series(i)).await);
            }
            let mut gauges_ok = true;
            for &i in &relays {
                let pending = self.procs[i].metric(&http, "orderflow_relay_outbox_pending").await;
                let parked = self.procs[i].metric(&http, "orderflow_relay_outbox_parked").await;
                gauges_ok &= pending == Some(0.0) && parked == Some(0.0);
            }
            let delta = |i: usize| after[i].zip(before[i]).map(|(a, b)| a - b);
            let relay_delta = sum(&after, &relays) - sum(&before, &relays);
            let agree = delta(PRODUCER) == Some(20.0) && delta(CONSUMER) == Some(20.0) && relay_delta == 20.0;
            if agree && gauges_ok {
                return;
            }
            if Instant::now() > deadline {
                self.violations.push(format!(
                    "/metrics disagrees with the database for 20 orders: producer +{:?}, relays +{relay_delta}, consumer +{:?}, relay gauges zero: {gauges_ok}",
                    delta(PRODUCER),
                    delta(CONSUMER)
                ));
                return;
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// The order queue is drained, and every hostile message is on the
    /// dead-letter queue with a reason.
    async fn check_queues(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(30);
        while !self.store.unsent_dead_letters(1).await?.is_empty() {
            if Instant::now() > deadline {
                self.violations.push("dead letters still unsent 30 s after the run".into());
                break;
            }
            self.observe_for(Duration::from_millis(200)).await;
        }
        // Idle: its processed and duplicate counts stop moving.
        let http = self.http.clone();
        let mut last = None;
        loop {
            let now =
                self.procs[CONSUMER].metric(&http, r#"orderflow_consumer_messages_total{outcome="duplicate"}"#).await;
            if now.is_some() && now == last {
                break;
            }
            last = now;
            self.observe_for(Duration::from_secs(1)).await;
            if Instant::now() > deadline {
                break;
            }
        }
        let status = self.procs[CONSUMER].signal_and_wait("TERM", Duration::from_secs(20)).await?;
        if !status.success() {
            self.violations.push(format!("consumer exited with {status} before the queue check"));
        }
        let left = read_queue(&self.broker.url(), &self.queue, Duration::from_secs(2)).await?;
        if !left.is_empty() {
            self.violations.push(format!("{} messages left on the order queue", left.len()));
        }
        let letters = read_queue(&self.broker.url(), &format!("{}.DLQ", self.queue), Duration::from_secs(3)).await?;
        let reasons: HashMap<String, String> = letters
            .iter()
            .filter_map(|f| {
                Some((f.get("original-chaos-id")?.to_string(), f.get("dlq-reason").unwrap_or("").to_string()))
            })
            .collect();
        for (id, kind) in &self.hostile {
            match reasons.get(id) {
                Some(reason) if !reason.is_empty() => {}
                Some(_) => self.violations.push(format!("the dead letter of a {kind} message has no reason")),
                None => self.violations.push(format!("a {kind} message ({id}) never reached the dead-letter queue")),
            }
        }
        self.procs[CONSUMER].spawn()?;
        self.procs[CONSUMER].wait_ready(&self.http, Duration::from_secs(60)).await
    }

    async fn report(&self, load: &loadtest::stats::Summary, mut latency: Vec<i64>) -> anyhow::Result<()> {
        let names = self.names();
        let mut by_kind: BTreeMap<String, (u32, Duration)> = BTreeMap::new();
        for record in &self.faults {
            let entry = by_kind.entry(record.fault.label(&names)).or_default();
            entry.0 += 1;
            entry.1 = entry.1.max(record.recovered_in.unwrap_or(RECOVERY_DEADLINE));
        }
        println!(
            "\nfaults ({} in all)                      count   worst time to a fresh order processed",
            self.faults.len()
        );
        for (label, (count, worst)) in &by_kind {
            println!("  {label:<36} {count:>5}   {:.1} s", worst.as_secs_f64());
        }
        let t = self.probe.tally().await?;
        let errors: Vec<String> = load.errors.iter().map(|(k, v)| format!("{k} {v}")).collect();
        println!(
            "\norders: {} accepted by the load ({} sent; refused while a service was down: {}), {} canaries, {} in the database, {} processed, {} failed",
            load.accepted,
            load.sent,
            if errors.is_empty() { "none".into() } else { errors.join(", ") },
            self.canaries,
            t.orders,
            t.processed,
            t.failed
        );
        println!(
            "duplicates absorbed by the consumer: at least {} (counted from scrapes; a killed consumer's last ones are lost)",
            self.procs[CONSUMER].tracked_total()
        );
        println!("hostile messages: {} injected, each checked on the dead-letter queue", self.hostile.len());
        latency.sort_unstable();
        let at = |q: f64| latency.get(((latency.len() as f64 - 1.0) * q) as usize).copied().unwrap_or(0);
        println!(
            "end-to-end latency over all orders (faults included): p50 {} ms, p99 {} ms, worst {} ms",
            at(0.5),
            at(0.99),
            latency.last().copied().unwrap_or(0)
        );
        println!("\ninvariants:");
        if self.violations.is_empty() {
            println!(
                "  ok: every accepted order processed once at the right price, every row published, queue drained,"
            );
            println!(
                "      every hostile message dead-lettered with a reason, /metrics agrees with the database, every SIGTERM exited 0,"
            );
            println!("      no ANSI colour codes in the log files");
        }
        for violation in &self.violations {
            println!("  FAIL: {violation}");
        }
        Ok(())
    }
}

/// Reads (and ACKs) every message on `queue` until it is quiet for `quiet`.
async fn read_queue(broker_url: &str, queue: &str, quiet: Duration) -> anyhow::Result<Vec<stomp::Frame>> {
    let client = stomp::Client::connect(&stomp::Config::from_url(broker_url).map_err(anyhow::Error::msg)?).await?;
    client.subscribe(queue, "chaos-reader", 1000, Duration::from_secs(10)).await?;
    let mut messages = client.take_messages().context("message stream")?;
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(quiet, messages.recv()).await {
        if let Some(ack) = frame.get("ack") {
            client.ack(&[ack]).await?;
        }
        frames.push(frame);
    }
    client.disconnect(Duration::from_secs(2)).await;
    Ok(frames)
}
