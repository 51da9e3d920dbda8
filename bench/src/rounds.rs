//! One bench round: the raw ceiling, then the pipeline's phases against the
//! service binaries run as processes ([`e2e::process`]), on fresh databases
//! and queues.
//!
//! Invariant: every phase waits with a deadline and fails at once when one of
//! its services exits; a phase's services end with it, whatever way it ends.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::flags::Flags;
use e2e::process::{Launch, Usage, usage, wait_while_running};
use serde::Serialize;

use crate::{Args, raw};

/// Everything one round measured.
#[derive(Debug, Clone, Serialize)]
pub struct Round {
    pub raw_send: f64,
    pub raw_consume: f64,
    pub raw_both: f64,
    pub relay: f64,
    pub consumer: f64,
    pub relay_and_consumer: f64,
    pub http_max: f64,
    pub steady_p50_ms: f64,
    pub steady_p99_ms: f64,
    pub steady_final: f64,
    /// Open loop at half of this round's HTTP max: its rate, then end-to-end p50, p99, p99.9 (ms).
    pub half: [f64; 4],
    /// CPU microseconds per order in the HTTP max phase: producer, relay, consumer, broker.
    pub cpu_us_per_order: [f64; 4],
    /// Peak RSS, MB: producer, relay, consumer.
    pub peak_rss_mb: [f64; 3],
    /// Orders of history under this round (0: an empty database).
    pub history: usize,
    /// The HTTP phases' database file at the end, MB.
    pub database_mb: f64,
    /// Outbox rows retention deleted per second during the steady phase.
    pub purged_per_s: f64,
}

/// Runs one round: raw send, consume, both; then relay drain, consumer drain,
/// relay + consumer, HTTP max, steady at half of it, steady 2,000/s.
pub async fn round(args: &Args, broker: &e2e::broker::Broker, n: usize, history: usize) -> anyhow::Result<Round> {
    let url = broker.url();
    let payload = raw::sample_payload();
    let q = |name: &str| format!("/queue/bench.r{n}.{name}");
    let raw_send = raw::send(&url, &q("raw"), args.messages, args.batch, &payload).await?;
    let raw_consume = raw::consume(&url, &q("raw"), args.messages, args.prefetch).await?;
    let raw_both = raw::send_and_consume(&url, &q("both"), args.messages, args.batch, args.prefetch, &payload).await?;

    let dir = tempfile::Builder::new().prefix("orderflow-bench-").tempdir()?;
    let database_url = sqlite_url(&dir.path().join("bench.db"), &args.sqlite_options);
    let schema::testing::TestDb { store, probe } = schema::testing::open(&database_url).await?;
    load_history(probe.as_ref(), history).await?;
    probe.bulk_orders(args.messages, 0).await?;
    // Progress is polled every 20 ms from the store's own O(1) figures (the
    // per-status counters, the due-rows index): the probe's whole-database
    // tally would scan the history each time, and that scan was most of what
    // the history round measured.
    let unpublished = || async { store.outbox_stats().await.map_or(i64::MAX, |s| s.pending) };
    let processed = || async { store.order_counts().await.map_or(0, |c| c.processed) };
    let base = processed().await;
    let target = base + args.messages as i64;
    let [_, relay, consumer] = services(args, &database_url, &url, &q("pipeline"));
    let relay_proc = relay.start().await?;
    let started = Instant::now();
    let drained = async || unpublished().await == 0;
    wait_while_running("the relay to drain the outbox", args.phase_timeout, &[&relay_proc], drained).await?;
    let relay = args.messages as f64 / started.elapsed().as_secs_f64();
    let relay_usage = relay_proc.stop().await?;
    let consumer_proc = consumer.start().await?;
    let started = Instant::now();
    let all_processed = async || processed().await >= target;
    wait_while_running("the consumer to drain the queue", args.phase_timeout, &[&consumer_proc], all_processed).await?;
    let consumer = args.messages as f64 / started.elapsed().as_secs_f64();
    let consumer_usage = consumer_proc.stop().await?;

    probe.clear().await?;
    load_history(probe.as_ref(), history).await?;
    probe.bulk_orders(args.messages, 0).await?;
    let [_, both_relay, both_consumer] = services(args, &database_url, &url, &q("steady"));
    let (relay_proc, consumer_proc) = (both_relay.start().await?, both_consumer.start().await?);
    let started = Instant::now();
    let both = [&relay_proc, &consumer_proc];
    wait_while_running("relay and consumer to drain the outbox", args.phase_timeout, &both, all_processed).await?;
    let relay_and_consumer = args.messages as f64 / started.elapsed().as_secs_f64();
    let both_usage = (relay_proc.stop().await?, consumer_proc.stop().await?);

    let http = http_phases(args, broker, dir.path(), &q("http"), history).await?;
    let peak = |a: &[Usage]| a.iter().map(|u| u.peak_rss_mb).fold(0.0, f64::max);
    Ok(Round {
        raw_send,
        raw_consume,
        raw_both,
        relay,
        consumer,
        relay_and_consumer,
        http_max: http.max_per_s,
        steady_p50_ms: http.steady.end_to_end_latency.p50_ms,
        steady_p99_ms: http.steady.end_to_end_latency.p99_ms,
        steady_final: http.steady.completion_rate,
        half: {
            let e2e = http.half.end_to_end_latency;
            [http.max_per_s / 2.0, e2e.p50_ms, e2e.p99_ms, e2e.p999_ms]
        },
        cpu_us_per_order: http.cpu_us_per_order,
        peak_rss_mb: [
            http.peak_rss_mb[0],
            peak(&[relay_usage, both_usage.0]).max(http.peak_rss_mb[1]),
            peak(&[consumer_usage, both_usage.1]).max(http.peak_rss_mb[2]),
        ],
        history,
        database_mb: http.database_mb,
        purged_per_s: http.purged_per_s,
    })
}

async fn load_history(probe: &dyn schema::testing::Probe, n: usize) -> anyhow::Result<()> {
    if n > 0 {
        let started = Instant::now();
        probe.bulk_history(n).await?;
        eprintln!("loaded {n} orders of history in {:.1} s", started.elapsed().as_secs_f64());
    }
    Ok(())
}

struct HttpFigures {
    max_per_s: f64,
    steady: loadtest::stats::Summary,
    half: loadtest::stats::Summary,
    cpu_us_per_order: [f64; 4],
    peak_rss_mb: [f64; 3],
    database_mb: f64,
    purged_per_s: f64,
}

/// Pipeline max (closed loop, every order processed), then latency at a
/// steady half of that max (a load that scales with the machine) and at a
/// steady 2,000 orders/s, on a fresh database with all three services.
async fn http_phases(
    args: &Args,
    broker: &e2e::broker::Broker,
    dir: &Path,
    queue: &str,
    history: usize,
) -> anyhow::Result<HttpFigures> {
    let path = dir.join("http.db");
    let database_url = sqlite_url(&path, &args.sqlite_options);
    let probe = schema::testing::open(&database_url).await?.probe;
    load_history(probe.as_ref(), history).await?;
    let [producer, relay, consumer] = services(args, &database_url, &broker.url(), queue);
    let purging = Launch { flags: relay.flags.clone().with("--retention-cron", "*/2 * * * * *"), ..relay.clone() };
    let relay = relay.start().await?;
    let consumer = consumer.start().await?;
    let producer = producer.start().await?;
    let base = format!("http://{}", producer.http_addr.context("the producer names its HTTP port")?);
    ready(&base).await?;
    let options = |mode, all_final| load_options(args, &base, mode, all_final);
    let cpu = || {
        let broker_cpu = broker.pid().map_or(0.0, |pid| usage(pid).cpu_seconds);
        [producer.usage().cpu_seconds, relay.usage().cpu_seconds, consumer.usage().cpu_seconds, broker_cpu]
    };
    // CPU is read when every order is final, before the load tool reads each
    // order back: those reads are the tool's check, not the pipeline's work.
    let all_final = Arc::new(tokio::sync::Notify::new());
    let before = cpu();
    let closed = loadtest::run::Mode::Closed { concurrency: args.concurrency };
    let run = loadtest::run::run(options(closed, Some(all_final.clone())));
    tokio::pin!(run);
    let mut after = None;
    let max = loop {
        tokio::select! {
            summary = &mut run => break summary?,
            _ = all_final.notified(), if after.is_none() => after = Some(cpu()),
        }
    };
    let after = after.ok_or_else(|| anyhow::anyhow!("the HTTP max phase's orders did not all become final"))?;
    let orders = max.accepted.max(1) as f64;
    let cpu_us_per_order = [0, 1, 2, 3].map(|i| ((after[i] - before[i]) * 1e6 / orders).round());
    let max_per_s = max.sustained_per_s.unwrap_or(0.0);
    let half =
        loadtest::run::run(options(loadtest::run::Mode::Open { rate: (max_per_s / 2.0).max(1.0) }, None)).await?;
    // On a history, a second relay runs retention every two seconds while the
    // steady load runs: the history is 30 days old, so it purges as it goes.
    let purger = match history {
        0 => None,
        _ => Some(purging.start().await?),
    };
    let outbox_before = probe.tally().await?.outbox;
    let started = Instant::now();
    let steady = loadtest::run::run(options(loadtest::run::Mode::Open { rate: 2000.0 }, None)).await?;
    let purged = (outbox_before + steady.accepted as i64 - probe.tally().await?.outbox).max(0) as f64;
    let purged_per_s = purged / started.elapsed().as_secs_f64();
    if let Some(purger) = purger {
        purger.stop().await?;
    }
    let usage = [producer.stop().await?, relay.stop().await?, consumer.stop().await?];
    let database_mb = ["", "-wal"]
        .iter()
        .filter_map(|suffix| std::fs::metadata(format!("{}{suffix}", path.display())).ok())
        .map(|m| m.len() as f64 / 1e6)
        .sum();
    Ok(HttpFigures {
        max_per_s,
        steady,
        half,
        cpu_us_per_order,
        peak_rss_mb: usage.map(|u| u.peak_rss_mb),
        database_mb,
        purged_per_s,
    })
}

/// The load tool's settings of every HTTP phase: `mode` for `--load-duration`,
/// waiting until every order is final; `all_final` is notified when it is.
pub(crate) fn load_options(
    args: &Args,
    base: &str,
    mode: loadtest::run::Mode,
    all_final: Option<Arc<tokio::sync::Notify>>,
) -> loadtest::run::Options {
    loadtest::run::Options {
        url: base.to_string(),
        mode,
        duration: args.load_duration,
        products: ["P123", "P200", "P300", "P400", "P500"].map(String::from).to_vec(),
        idempotency_keys: false,
        wait: Some(Duration::from_secs(300)),
        request_timeout: Duration::from_secs(10),
        progress: false,
        all_final,
    }
}

/// `sqlite://PATH`, with `?OPTIONS` when given.
fn sqlite_url(path: &Path, options: &str) -> String {
    match options {
        "" => format!("sqlite://{}", path.display()),
        options => format!("sqlite://{}?{options}", path.display()),
    }
}

/// Producer, relay and consumer on `database_url` and `queue`, as every phase
/// runs them: the relay's batch and the consumer's prefetch from the bench's
/// flags, retention off, logging warnings to the bench's stderr.
pub(crate) fn services(args: &Args, database_url: &str, broker_url: &str, queue: &str) -> [Launch; 3] {
    let relay =
        Flags::relay(database_url, broker_url, queue).with("--batch-size", args.batch).with("--retention-cron", "");
    let consumer = Flags::consumer(database_url, broker_url, queue).with("--prefetch", args.prefetch);
    [Flags::producer(database_url), relay, consumer].map(|flags| Launch::new(&args.bin_dir, flags, "warn"))
}

/// Waits until the producer answers.
pub(crate) async fn ready(base: &str) -> anyhow::Result<()> {
    let url = format!("{base}/api/products");
    let answers = async || reqwest::get(&url).await.is_ok_and(|r| r.status().is_success()).then_some(());
    e2e::wait_until("the producer to answer", Duration::from_secs(60), answers).await
}
