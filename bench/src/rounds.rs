//! One bench round (the raw ceiling, then the pipeline, on fresh databases and
//! queues) and the report over all rounds: median and spread of each figure.

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::procs::{self, ServiceProcess, Usage, wait_until};
use crate::{Args, raw, sizing};

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
    let probe = schema::testing::probe(&database_url).await?;
    load_history(probe.as_ref(), history).await?;
    probe.bulk_orders(args.messages, 0).await?;
    let env = |queue: String| {
        vec![
            ("DATABASE_URL", database_url.clone()),
            ("BROKER_URL", url.clone()),
            ("ORDER_QUEUE", queue),
            ("RELAY_BATCH_SIZE", args.batch.to_string()),
            ("CONSUMER_PREFETCH", args.prefetch.to_string()),
            ("RETENTION_CRON", String::new()),
            ("RUST_LOG", "warn".to_string()),
        ]
    };
    // Progress is polled every 20 ms from the store's own O(1) figures (the
    // per-status counters, the due-rows index): the probe's whole-database
    // tally would scan the history each time, and that scan was most of what
    // the history round measured.
    let store = schema::connect(&database_url).await?;
    let unpublished = || async { store.outbox_stats().await.map_or(i64::MAX, |s| s.pending) };
    let processed = || async { store.order_counts().await.map_or(0, |c| c.processed) };
    let base = processed().await;
    let target = base + args.messages as i64;
    let drain = env(q("pipeline"));
    let relay_proc = ServiceProcess::start(&args.bin_dir.join("relay"), &drain).await?;
    let started = Instant::now();
    wait_until(args.phase_timeout, &[&relay_proc], || async { unpublished().await == 0 }).await?;
    let relay = args.messages as f64 / started.elapsed().as_secs_f64();
    let relay_usage = relay_proc.stop().await?;
    let consumer_proc = ServiceProcess::start(&args.bin_dir.join("consumer"), &drain).await?;
    let started = Instant::now();
    wait_until(args.phase_timeout, &[&consumer_proc], || async { processed().await >= target }).await?;
    let consumer = args.messages as f64 / started.elapsed().as_secs_f64();
    let consumer_usage = consumer_proc.stop().await?;

    probe.clear().await?;
    load_history(probe.as_ref(), history).await?;
    probe.bulk_orders(args.messages, 0).await?;
    let steady_env = env(q("steady"));
    let relay_proc = ServiceProcess::start(&args.bin_dir.join("relay"), &steady_env).await?;
    let consumer_proc = ServiceProcess::start(&args.bin_dir.join("consumer"), &steady_env).await?;
    let started = Instant::now();
    wait_until(args.phase_timeout, &[&relay_proc, &consumer_proc], || async { processed().await >= target }).await?;
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
    let probe = schema::testing::probe(&database_url).await?;
    load_history(probe.as_ref(), history).await?;
    let env = [
        ("RETENTION_CRON", String::new()),
        ("DATABASE_URL", database_url),
        ("BROKER_URL", broker.url()),
        ("ORDER_QUEUE", queue.to_string()),
        ("RELAY_BATCH_SIZE", args.batch.to_string()),
        ("CONSUMER_PREFETCH", args.prefetch.to_string()),
        ("HTTP_ADDR", "127.0.0.1:0".to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];
    let relay = ServiceProcess::start(&args.bin_dir.join("relay"), &env).await?;
    let consumer = ServiceProcess::start(&args.bin_dir.join("consumer"), &env).await?;
    let producer = ServiceProcess::start(&args.bin_dir.join("producer"), &env).await?;
    let base = format!("http://{}", producer.addr("http"));
    ready(&base).await?;
    let options = |mode, all_final| load_options(args, &base, mode, all_final);
    let cpu = || {
        let broker_cpu = broker.pid().map_or(0.0, |pid| procs::usage(pid).cpu_seconds);
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
        _ => {
            let mut purging = env.to_vec();
            purging[0].1 = "*/2 * * * * *".into();
            Some(ServiceProcess::start(&args.bin_dir.join("relay"), &purging).await?)
        }
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

/// Waits until the producer answers.
pub(crate) async fn ready(base: &str) -> anyhow::Result<()> {
    wait_until(Duration::from_secs(60), &[], || async {
        reqwest::get(format!("{base}/api/products")).await.is_ok_and(|r| r.status().is_success())
    })
    .await
}

/// The table's name of the headline ratio.
const HTTP_RATIO: &str = "  HTTP max / raw send + consume (target >= 65 %)";

/// Median and spread of one figure over the rounds.
#[derive(Debug, Clone, Serialize)]
pub struct Spread {
    pub median: f64,
    pub min: f64,
    pub max: f64,
    /// Half the range: in points for ratios (×100), in % of the median for the rest.
    pub plus_minus: f64,
    /// False when the spread is over ±10 (points or %): such a figure is not a result.
    pub steady: bool,
}

impl Spread {
    pub(crate) fn of(values: &[f64], ratio: bool) -> Self {
        let mut v = values.to_vec();
        v.sort_by(f64::total_cmp);
        let median = match v.len() {
            0 => 0.0,
            n if n % 2 == 1 => v[n / 2],
            n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
        };
        let (min, max) = (v.first().copied().unwrap_or(0.0), v.last().copied().unwrap_or(0.0));
        let half = (max - min) / 2.0;
        let plus_minus = if ratio { half * 100.0 } else { 100.0 * half / median.max(f64::MIN_POSITIVE) };
        Self { median, min, max, plus_minus, steady: plus_minus <= 10.0 }
    }
}

/// The whole run.
#[derive(Debug, Serialize)]
pub struct Report {
    pub machine: String,
    pub messages: usize,
    pub batch: usize,
    pub sqlite_options: String,
    pub busy_loop: bool,
    pub rounds: Vec<Round>,
    pub figures: Vec<(String, Spread)>,
    /// The round on a database with history, if run.
    pub history: Option<Round>,
}

impl Report {
    /// Medians and spreads of every figure and ratio.
    pub fn new(args: &Args, machine: String, rounds: Vec<Round>, history: Option<Round>) -> Self {
        let col = |f: fn(&Round) -> f64| rounds.iter().map(f).collect::<Vec<_>>();
        let rate = |name: &str, f: fn(&Round) -> f64| (name.to_string(), Spread::of(&col(f), false));
        let ratio = |name: &str, f: fn(&Round) -> f64| (name.to_string(), Spread::of(&col(f), true));
        let figures = vec![
            rate("raw broker: transactional batch send, msg/s", |r| r.raw_send),
            rate("raw broker: client-individual consume, msg/s", |r| r.raw_consume),
            rate("raw broker: send + consume together, msg/s", |r| r.raw_both),
            rate("relay: drain outbox -> broker, msg/s", |r| r.relay),
            ratio("  relay / raw send", |r| r.relay / r.raw_send),
            rate("consumer: drain queue -> processed, msg/s", |r| r.consumer),
            ratio("  consumer / raw consume", |r| r.consumer / r.raw_consume),
            rate("relay + consumer: outbox -> processed, msg/s", |r| r.relay_and_consumer),
            ratio("  relay + consumer / raw send + consume", |r| r.relay_and_consumer / r.raw_both),
            rate("HTTP pipeline max, orders/s (all processed)", |r| r.http_max),
            ratio(HTTP_RATIO, |r| r.http_max / r.raw_both),
            rate("steady at half of HTTP max: orders/s", |r| r.half[0]),
            rate("  end-to-end p50, ms", |r| r.half[1]),
            rate("  end-to-end p99, ms (target <= 25)", |r| r.half[2]),
            rate("  end-to-end p99.9, ms", |r| r.half[3]),
            rate("steady 2,000/s: end-to-end p50, ms", |r| r.steady_p50_ms),
            rate("steady 2,000/s: end-to-end p99, ms", |r| r.steady_p99_ms),
            rate("CPU us per order (HTTP max): producer", |r| r.cpu_us_per_order[0]),
            rate("CPU us per order (HTTP max): relay", |r| r.cpu_us_per_order[1]),
            rate("CPU us per order (HTTP max): consumer", |r| r.cpu_us_per_order[2]),
            rate("CPU us per order (HTTP max): broker", |r| r.cpu_us_per_order[3]),
            rate("peak RSS MB: producer (target <= 64)", |r| r.peak_rss_mb[0]),
            rate("peak RSS MB: relay (target <= 64)", |r| r.peak_rss_mb[1]),
            rate("peak RSS MB: consumer (target <= 64)", |r| r.peak_rss_mb[2]),
        ];
        Self {
            machine,
            messages: args.messages,
            batch: args.batch,
            sqlite_options: match args.sqlite_options.as_str() {
                "" => "default (synchronous=FULL)".into(),
                options => options.into(),
            },
            busy_loop: args.busy_loop,
            rounds,
            figures,
            history,
        }
    }

    /// The median of the figure whose name starts with `name` (up to its unit).
    fn median(&self, name: &str) -> f64 {
        let key = name.rsplit_once(", ").map_or(name, |(k, _)| k);
        self.figures.iter().find(|(n, _)| n.starts_with(key)).map_or(0.0, |(_, s)| s.median)
    }

    /// Each service's CPU per order and what one instance did alone, for the sizing table.
    fn sizing(&self) -> [sizing::Service; 4] {
        let cpu = |service: &str| self.median(&format!("CPU us per order (HTTP max): {service}"));
        let service = |name, one_instance| sizing::Service { name, us_per_order: cpu(name), one_instance };
        [
            service("producer", Some((self.median("HTTP pipeline max, orders/s"), "HTTP max, whole pipeline"))),
            service("relay", Some((self.median("relay: drain outbox -> broker, msg/s"), "drain, alone"))),
            service("consumer", Some((self.median("consumer: drain queue -> processed, msg/s"), "drain, alone"))),
            service("broker", None),
        ]
    }

    /// The table: median, range and spread of each figure.
    pub fn print(&self) {
        println!(
            "\norderflow bench: {} rounds, {} messages per phase, batch {}, SQLite {}, on {}{}",
            self.rounds.len(),
            self.messages,
            self.batch,
            self.sqlite_options,
            self.machine,
            if self.busy_loop { ", with one busy-looping process beside it" } else { "" }
        );
        println!("{:<52} {:>10} {:>21} {:>9}", "figure", "median", "min - max", "spread");
        for (name, s) in &self.figures {
            let is_ratio = name.trim_start().contains(" / ");
            let (median, range, spread) = match is_ratio {
                true => (
                    format!("{:.0} %", s.median * 100.0),
                    format!("{:.0} - {:.0} %", s.min * 100.0, s.max * 100.0),
                    format!("±{:.1} pt", s.plus_minus),
                ),
                false => (
                    format!("{:.1}", s.median),
                    format!("{:.1} - {:.1}", s.min, s.max),
                    format!("±{:.1} %", s.plus_minus),
                ),
            };
            let flag = if s.steady { "" } else { "  spread over ±10: not a result" };
            println!("{name:<52} {median:>10} {range:>21} {spread:>9}{flag}");
        }
        let final_min = self.rounds.iter().map(|r| r.steady_final).fold(1.0, f64::min);
        println!("(steady 2,000/s: at least {:.2} % of orders final in every round)", final_min * 100.0);
        println!();
        for line in sizing::lines(&self.sizing()) {
            println!("{line}");
        }
        let Some(h) = &self.history else { return };
        println!(
            "\non a history of {} processed orders (database {:.0} MB; retention purging {:.0} rows/s during the steady phase):",
            h.history, h.database_mb, h.purged_per_s
        );
        println!("{:<44} {:>12} {:>12} {:>9} {:>16}  target", "figure", "empty", "history", "change", "change vs raw");
        // A ratio to the raw ceiling measured minutes apart in the same round
        // does not move with the machine's speed; the plain change does.
        let rows = [
            ("relay: drain outbox -> broker, msg/s", h.relay, Some(("  relay / raw send", h.raw_send))),
            (
                "consumer: drain queue -> processed, msg/s",
                h.consumer,
                Some(("  consumer / raw consume", h.raw_consume)),
            ),
            ("HTTP pipeline max, orders/s", h.http_max, Some((HTTP_RATIO, h.raw_both))),
            ("steady 2,000/s: end-to-end p99, ms", h.steady_p99_ms, None),
        ];
        for (name, on_history, ratio) in rows {
            let empty = self.median(name);
            let change = 100.0 * (on_history - empty) / empty.max(f64::MIN_POSITIVE);
            let (vs_raw, target) = match ratio {
                Some((ratio_name, raw)) => {
                    let empty_ratio = self.median(ratio_name);
                    let history_ratio = on_history / raw.max(f64::MIN_POSITIVE);
                    let vs = 100.0 * (history_ratio - empty_ratio) / empty_ratio.max(f64::MIN_POSITIVE);
                    (format!("{vs:+.0}%"), "within 10 %")
                }
                None => (String::new(), "at most 2x (purging)"),
            };
            println!("{name:<44} {empty:>12.1} {on_history:>12.1} {change:>+8.0}% {vs_raw:>16}  {target}");
        }
        let raw_change = 100.0 * (h.raw_both - self.median("raw broker: send + consume"))
            / self.median("raw broker: send + consume");
        println!("(the raw send + consume ceiling in the same round moved {raw_change:+.0} %)");
    }
}
