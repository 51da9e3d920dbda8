//! `bench`: measures the relay and the consumer against the raw ceiling of the
//! same broker for the same work, in one run on one machine.
//!
//! It starts a private ActiveMQ, runs the release binaries of the services as
//! separate processes (so their memory and CPU can be read from /proc), prints
//! a table and writes JSON. Run it with `scripts/bench.sh`.

mod procs;
mod raw;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use clap::Parser;
use serde::Serialize;

use crate::procs::ServiceProcess;

/// Relay and consumer throughput against the broker's own ceiling.
#[derive(Debug, Parser)]
struct Args {
    /// Messages per phase.
    #[arg(long, default_value_t = 100_000)]
    messages: usize,
    /// Relay batch size, also the raw client's transaction size.
    #[arg(long, default_value_t = 200)]
    batch: usize,
    /// Consumer prefetch, also the raw consumer's.
    #[arg(long, default_value_t = 500)]
    prefetch: u32,
    /// Where the release binaries are.
    #[arg(long, default_value = "target/release")]
    bin_dir: PathBuf,
    /// How long the HTTP load phases send.
    #[arg(long, default_value = "20s", value_parser = humantime::parse_duration)]
    load_duration: Duration,
    /// Closed-loop concurrency of the pipeline-max phase.
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Query options for the SQLite URLs, e.g. `synchronous=normal` (default: FULL, durable).
    #[arg(long, default_value = "")]
    sqlite_options: String,
    /// Write the results as JSON here too.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
}

#[derive(Debug, Serialize)]
struct Report {
    machine: String,
    sqlite_options: String,
    messages: usize,
    batch: usize,
    raw_send_msgs_per_s: f64,
    raw_consume_msgs_per_s: f64,
    raw_send_and_consume_msgs_per_s: f64,
    relay_drain_msgs_per_s: f64,
    relay_ratio: f64,
    consumer_drain_msgs_per_s: f64,
    consumer_ratio: f64,
    pipeline_msgs_per_s: f64,
    pipeline_ratio: f64,
    http_pipeline_max: loadtest::stats::Summary,
    http_pipeline_max_per_s: f64,
    http_pipeline_ratio: f64,
    steady_2k: loadtest::stats::Summary,
    producer: procs::Usage,
    relay: procs::Usage,
    consumer: procs::Usage,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let broker = e2e::broker::Broker::start();
    let url = broker.url();
    eprintln!("broker at {url}; {} messages per phase, batch {}", args.messages, args.batch);

    let payload = raw::sample_payload();
    // Warm the broker's JVM up so that the first measured phase is not penalised.
    raw::send_and_consume(&url, "/queue/bench.warmup", args.messages.min(20_000), args.batch, args.prefetch, &payload)
        .await?;
    let raw_send = raw::send(&url, "/queue/bench.raw", args.messages, args.batch, &payload).await?;
    eprintln!("raw send: {raw_send:.0} msg/s");
    let raw_consume = raw::consume(&url, "/queue/bench.raw", args.messages, args.prefetch).await?;
    eprintln!("raw consume: {raw_consume:.0} msg/s");
    let raw_both =
        raw::send_and_consume(&url, "/queue/bench.both", args.messages, args.batch, args.prefetch, &payload).await?;
    eprintln!("raw send + consume: {raw_both:.0} msg/s");

    let dir = tempfile::Builder::new().prefix("orderflow-bench-").tempdir()?;
    let db_path = dir.path().join("bench.db");
    let database_url = sqlite_url(&db_path, &args.sqlite_options);
    let probe = schema::testing::probe(&database_url).await?;
    probe.bulk_orders(args.messages, 0).await?;
    let queue = "/queue/bench.pipeline";
    let env = [
        ("DATABASE_URL", database_url.clone()),
        ("BROKER_URL", url.clone()),
        ("ORDER_QUEUE", queue.to_string()),
        ("RELAY_BATCH_SIZE", args.batch.to_string()),
        ("CONSUMER_PREFETCH", args.prefetch.to_string()),
        ("RUST_LOG", "warn".to_string()),
    ];

    let tally = || async { probe.tally().await.unwrap_or_default() };
    let relay = ServiceProcess::start(&args.bin_dir.join("relay"), &env)?;
    let started = Instant::now();
    wait_until(Duration::from_secs(600), || async { tally().await.unpublished == 0 }).await?;
    let relay_rate = args.messages as f64 / started.elapsed().as_secs_f64();
    let relay_usage = relay.stop()?;
    eprintln!("relay drain: {relay_rate:.0} msg/s");

    let consumer = ServiceProcess::start(&args.bin_dir.join("consumer"), &env)?;
    let started = Instant::now();
    let target = args.messages as i64;
    wait_until(Duration::from_secs(600), || async { tally().await.processed >= target }).await?;
    let consumer_rate = args.messages as f64 / started.elapsed().as_secs_f64();
    let consumer_usage = consumer.stop()?;
    eprintln!("consumer drain: {consumer_rate:.0} msg/s");

    // Relay and consumer together on a fresh backlog: the steady pipeline rate.
    let pipeline_queue = "/queue/bench.steady".to_string();
    let steady_env = env.clone().map(|(k, v)| if k == "ORDER_QUEUE" { (k, pipeline_queue.clone()) } else { (k, v) });
    probe.clear().await?;
    probe.bulk_orders(args.messages, 0).await?;
    let relay = ServiceProcess::start(&args.bin_dir.join("relay"), &steady_env)?;
    let consumer = ServiceProcess::start(&args.bin_dir.join("consumer"), &steady_env)?;
    let started = Instant::now();
    wait_until(Duration::from_secs(600), || async { tally().await.processed >= target }).await?;
    let pipeline_rate = args.messages as f64 / started.elapsed().as_secs_f64();
    let pipeline_relay = relay.stop()?;
    let pipeline_consumer = consumer.stop()?;
    eprintln!("relay + consumer: {pipeline_rate:.0} msg/s");

    // Through HTTP: producer + relay + consumer, fed by the load-test tool.
    let (max, steady, usage) = http_phases(&args, &url, dir.path()).await?;
    let (producer_usage, http_relay, http_consumer) = usage;
    let http_max = max.sustained_per_s.unwrap_or(0.0);
    eprintln!("pipeline max through HTTP: {http_max:.0} orders/s");

    let report = Report {
        machine: procs::machine(),
        sqlite_options: match args.sqlite_options.as_str() {
            "" => "default (synchronous=FULL)".into(),
            options => options.into(),
        },
        messages: args.messages,
        batch: args.batch,
        raw_send_msgs_per_s: raw_send.round(),
        raw_consume_msgs_per_s: raw_consume.round(),
        raw_send_and_consume_msgs_per_s: raw_both.round(),
        relay_drain_msgs_per_s: relay_rate.round(),
        relay_ratio: (relay_rate / raw_send * 100.0).round() / 100.0,
        consumer_drain_msgs_per_s: consumer_rate.round(),
        consumer_ratio: (consumer_rate / raw_consume * 100.0).round() / 100.0,
        pipeline_msgs_per_s: pipeline_rate.round(),
        pipeline_ratio: (pipeline_rate / raw_both * 100.0).round() / 100.0,
        http_pipeline_max_per_s: http_max,
        http_pipeline_ratio: (http_max / raw_both * 100.0).round() / 100.0,
        http_pipeline_max: max,
        steady_2k: steady,
        producer: producer_usage,
        relay: max_usage(max_usage(relay_usage, pipeline_relay), http_relay),
        consumer: max_usage(max_usage(consumer_usage, pipeline_consumer), http_consumer),
    };
    print_table(&report);
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nJSON written to {}", args.json.display());
    Ok(())
}

type Usages = (procs::Usage, procs::Usage, procs::Usage);

/// Pipeline max (closed loop, every order processed) and latency at a steady
/// 2,000 orders/s, on a fresh database with all three services.
async fn http_phases(
    args: &Args,
    broker_url: &str,
    dir: &std::path::Path,
) -> anyhow::Result<(loadtest::stats::Summary, loadtest::stats::Summary, Usages)> {
    let database_url = sqlite_url(&dir.join("http.db"), &args.sqlite_options);
    let http_port = e2e::free_port();
    let env = [
        ("DATABASE_URL", database_url),
        ("BROKER_URL", broker_url.to_string()),
        ("ORDER_QUEUE", "/queue/bench.http".to_string()),
        ("RELAY_BATCH_SIZE", args.batch.to_string()),
        ("CONSUMER_PREFETCH", args.prefetch.to_string()),
        ("HTTP_ADDR", format!("127.0.0.1:{http_port}")),
        ("RUST_LOG", "warn".to_string()),
    ];
    let relay = ServiceProcess::start(&args.bin_dir.join("relay"), &env)?;
    let consumer = ServiceProcess::start(&args.bin_dir.join("consumer"), &env)?;
    let producer = ServiceProcess::start(&args.bin_dir.join("producer"), &env)?;
    let base = format!("http://127.0.0.1:{http_port}");
    reqwest_ready(&base).await?;
    let options = |mode| loadtest::run::Options {
        url: base.clone(),
        mode,
        duration: args.load_duration,
        products: ["P123", "P200", "P300", "P400", "P500"].map(String::from).to_vec(),
        idempotency_keys: false,
        wait: Some(Duration::from_secs(300)),
        request_timeout: Duration::from_secs(10),
        progress: false,
    };
    let max = loadtest::run::run(options(loadtest::run::Mode::Closed { concurrency: args.concurrency })).await?;
    eprint!("pipeline max:\n{}", max.render());
    let steady = loadtest::run::run(options(loadtest::run::Mode::Open { rate: 2000.0 })).await?;
    eprint!("steady 2k/s:\n{}", steady.render());
    let usage = (producer.stop()?, relay.stop()?, consumer.stop()?);
    Ok((max, steady, usage))
}

/// `sqlite://PATH`, with `?OPTIONS` when given.
fn sqlite_url(path: &std::path::Path, options: &str) -> String {
    match options {
        "" => format!("sqlite://{}", path.display()),
        options => format!("sqlite://{}?{options}", path.display()),
    }
}

/// Waits until the producer answers.
async fn reqwest_ready(base: &str) -> anyhow::Result<()> {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Ok(r) = reqwest::get(format!("{base}/api/products")).await
            && r.status().is_success()
        {
            return Ok(());
        }
        anyhow::ensure!(Instant::now() < deadline, "the producer did not come up");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn max_usage(a: procs::Usage, b: procs::Usage) -> procs::Usage {
    procs::Usage { peak_rss_mb: a.peak_rss_mb.max(b.peak_rss_mb), cpu_seconds: a.cpu_seconds + b.cpu_seconds }
}

async fn wait_until<F, Fut>(timeout: Duration, mut done: F) -> anyhow::Result<()>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + timeout;
    while !done().await {
        anyhow::ensure!(Instant::now() < deadline, "phase did not finish within {timeout:?}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

fn print_table(r: &Report) {
    println!(
        "\norderflow bench: {} messages, batch {}, SQLite {}, on {}",
        r.messages, r.batch, r.sqlite_options, r.machine
    );
    println!("{:<44} {:>12} {:>8}", "phase", "msg/s", "ratio");
    println!("{:<44} {:>12.0} {:>8}", "raw broker: transactional batch send", r.raw_send_msgs_per_s, "");
    println!("{:<44} {:>12.0} {:>8}", "raw broker: client-individual consume", r.raw_consume_msgs_per_s, "");
    println!("{:<44} {:>12.0} {:>8}", "raw broker: send + consume together", r.raw_send_and_consume_msgs_per_s, "");
    println!(
        "{:<44} {:>12.0} {:>7.0}%",
        "relay: drain outbox -> broker",
        r.relay_drain_msgs_per_s,
        r.relay_ratio * 100.0
    );
    println!(
        "{:<44} {:>12.0} {:>7.0}%",
        "consumer: drain queue -> processed orders",
        r.consumer_drain_msgs_per_s,
        r.consumer_ratio * 100.0
    );
    println!(
        "{:<44} {:>12.0} {:>7.0}%",
        "relay + consumer: outbox -> processed orders",
        r.pipeline_msgs_per_s,
        r.pipeline_ratio * 100.0
    );
    println!(
        "{:<44} {:>12.0} {:>7.0}%",
        "HTTP pipeline max: orders processed end to end",
        r.http_pipeline_max_per_s,
        r.http_pipeline_ratio * 100.0
    );
    println!("(relay vs raw send; consumer vs raw consume; pipelines vs raw send + consume)");
    let s = &r.steady_2k;
    println!(
        "\nsteady 2,000 orders/s: end-to-end p50 {:.1} ms, p99 {:.1} ms; HTTP p50 {:.1} ms, p99 {:.1} ms; {:.2} % final",
        s.end_to_end_latency.p50_ms,
        s.end_to_end_latency.p99_ms,
        s.http_latency.p50_ms,
        s.http_latency.p99_ms,
        s.completion_rate * 100.0
    );
    println!("\n{:<10} {:>14} {:>14}", "service", "peak RSS MB", "CPU seconds (all phases)");
    for (name, u) in [("producer", &r.producer), ("relay", &r.relay), ("consumer", &r.consumer)] {
        println!("{:<10} {:>14.1} {:>14.2}", name, u.peak_rss_mb, u.cpu_seconds);
    }
}
