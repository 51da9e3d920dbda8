//! SQLite against a SQL Server in the same run (`--database-url`): the same
//! pipeline phases on each backend, interleaved round by round, side by side,
//! with the database round trips each service made per order.
//!
//! Invariant: both backends run the same phases with the same flags on the
//! same broker; only `DATABASE_URL` differs.

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use e2e::process::{Process, wait_while_running};
use serde::Serialize;

use crate::Args;
use crate::report::Spread;
use crate::rounds::{load_options, ready, services};

const ROUND_TRIPS: &str = "orderflow_db_round_trips_total";
/// The unmeasured load before each backend's HTTP phases, and the backlog
/// drained before the measured one: each new Babelfish connection parses
/// every statement and compiles every procedure slowly on first use (a
/// procedure's first call took 340-760 ms, its next 1-3 ms; a fresh producer
/// accepted 412, 1,454, then 2,335 orders/s in three 3 s loads), and a
/// service's steady state, not its first seconds, is what the figures describe.
const WARM_UP: Duration = Duration::from_secs(8);
const WARM_UP_MESSAGES: usize = 1_000;

/// What one backend did in one round.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Backend {
    /// Relay and consumer together: a backlog of `--compare-messages` outbox rows to processed orders, msg/s.
    pub drain: f64,
    /// HTTP pipeline max (closed loop): orders accepted and all processed, per second.
    pub http_max: f64,
    /// At the steady `--compare-rate`: HTTP p50 and p99, end-to-end p50 and p99, ms.
    pub steady_ms: [f64; 4],
    /// Share of the steady phase's orders final by the end of the wait.
    pub steady_final: f64,
    /// Database round trips per order: producer (HTTP max), relay and consumer (drain).
    pub round_trips: [f64; 3],
}

/// Runs the comparison: `rounds` rounds, each SQLite then the SQL Server.
pub async fn run(args: &Args, broker: &e2e::broker::Broker, mssql: &str) -> anyhow::Result<Vec<[Backend; 2]>> {
    let mut rounds = Vec::new();
    for n in 0..args.rounds.max(1) {
        let dir = tempfile::Builder::new().prefix("orderflow-compare-").tempdir()?;
        let sqlite = format!("sqlite://{}", dir.path().join("compare.db").display());
        let on_sqlite = phases(args, broker, &sqlite, &format!("/queue/bench.c{n}.sqlite")).await?;
        eprintln!("compare round {}: SQLite {on_sqlite:?}", n + 1);
        let database = schema::testing::fresh_mssql_database(mssql).await?;
        let on_mssql = phases(args, broker, &database, &format!("/queue/bench.c{n}.mssql")).await?;
        eprintln!("compare round {}: SQL Server {on_mssql:?}", n + 1);
        rounds.push([on_sqlite, on_mssql]);
    }
    Ok(rounds)
}

async fn phases(args: &Args, broker: &e2e::broker::Broker, database_url: &str, queue: &str) -> anyhow::Result<Backend> {
    let schema::testing::TestDb { store, probe } = schema::testing::open(database_url).await?;
    let messages = args.compare_messages;
    let [producer, relay, consumer] = services(args, database_url, &broker.url(), queue);
    let (relay, consumer) = (relay.start().await?, consumer.start().await?);
    let both = [&relay, &consumer];
    let processed = async |target: usize| store.order_counts().await.is_ok_and(|c| c.processed >= target as i64);
    // A warm-up backlog first, unmeasured (see WARM_UP); then the measured
    // one, loaded while the relay is paused, so the clock starts with it whole.
    probe.bulk_orders(WARM_UP_MESSAGES, 0).await?;
    let warm = async || processed(WARM_UP_MESSAGES).await;
    wait_while_running("the warm-up backlog to drain", Duration::from_secs(900), &both, warm).await?;
    relay_switch(&relay, "pause").await?;
    probe.bulk_orders(messages, 0).await?;
    relay_switch(&relay, "resume").await?;
    let started = Instant::now();
    let drained = async || processed(WARM_UP_MESSAGES + messages).await;
    wait_while_running("relay and consumer to drain the outbox", Duration::from_secs(900), &both, drained).await?;
    let drain = messages as f64 / started.elapsed().as_secs_f64();
    let per_order = |trips: f64, orders: f64| (trips / orders.max(1.0) * 100.0).round() / 100.0;
    let trips = async |service: &Process| service.metric(ROUND_TRIPS).await.unwrap_or(0.0);
    let (relay_trips, consumer_trips) = (trips(&relay).await, trips(&consumer).await);

    let producer = producer.start().await?;
    let base = format!("http://{}", producer.http_addr.context("the producer names its HTTP port")?);
    ready(&base).await?;
    let options = |mode, all_final| load_options(args, &base, mode, all_final);
    let closed = loadtest::run::Mode::Closed { concurrency: args.concurrency };
    // A warm-up load first, unmeasured, on both backends (see WARM_UP).
    loadtest::run::run(loadtest::run::Options { duration: WARM_UP, ..options(closed, None) }).await?;
    // Read when every order is final, before the load tool reads each order
    // back: those reads are the tool's check, not the pipeline's work.
    let all_final = Arc::new(tokio::sync::Notify::new());
    let before = trips(&producer).await;
    let run = loadtest::run::run(options(closed, Some(all_final.clone())));
    tokio::pin!(run);
    let mut after = None;
    let max = loop {
        tokio::select! {
            summary = &mut run => break summary?,
            _ = all_final.notified(), if after.is_none() => after = Some(trips(&producer).await),
        }
    };
    let producer_trips = after.unwrap_or(0.0) - before;
    let steady = loadtest::run::run(options(loadtest::run::Mode::Open { rate: args.compare_rate }, None)).await?;
    for service in [producer, relay, consumer] {
        service.stop().await?;
    }
    Ok(Backend {
        drain,
        http_max: max.sustained_per_s.unwrap_or(0.0),
        steady_ms: [
            steady.http_latency.p50_ms,
            steady.http_latency.p99_ms,
            steady.end_to_end_latency.p50_ms,
            steady.end_to_end_latency.p99_ms,
        ],
        steady_final: steady.completion_rate,
        round_trips: [
            per_order(producer_trips, max.accepted as f64),
            per_order(relay_trips, messages as f64),
            per_order(consumer_trips, messages as f64),
        ],
    })
}

/// Pauses or resumes the relay through its admin port (loopback, no token).
async fn relay_switch(relay: &Process, action: &str) -> anyhow::Result<()> {
    let url = format!("http://{}/relay/{action}?requested_by=bench", relay.admin_addr);
    reqwest::Client::new().post(url).send().await?.error_for_status()?;
    Ok(())
}

/// One figure of a backend's round.
type Figure = fn(&Backend) -> f64;

/// The side-by-side table: the median of each figure on each backend.
pub fn print(args: &Args, rounds: &[[Backend; 2]]) {
    let rate = args.compare_rate;
    println!(
        "\nSQLite against SQL Server, same run: {} rounds, {} backlog messages, {:?} of HTTP load after {WARM_UP:?} \
         unmeasured, steady {rate}/s",
        rounds.len(),
        args.compare_messages,
        args.load_duration
    );
    println!(
        "{:<58} {:>12} {:>12} {:>14}",
        "figure (median over rounds)", "SQLite", "SQL Server", "SQL Server / SQLite"
    );
    let rows: Vec<(String, Figure, bool)> = vec![
        ("relay + consumer: backlog -> processed, msg/s".into(), |b| b.drain, true),
        ("HTTP pipeline max, orders/s, all processed (target >= 25 %)".into(), |b| b.http_max, true),
        (format!("steady {rate}/s: HTTP p50, ms (target <= 10)"), |b| b.steady_ms[0], false),
        (format!("steady {rate}/s: HTTP p99, ms"), |b| b.steady_ms[1], false),
        (format!("steady {rate}/s: end-to-end p50, ms"), |b| b.steady_ms[2], false),
        (format!("steady {rate}/s: end-to-end p99, ms"), |b| b.steady_ms[3], false),
        (format!("steady {rate}/s: share of orders final"), |b| b.steady_final, false),
        ("round trips per order: producer".into(), |b| b.round_trips[0], false),
        ("round trips per order: relay".into(), |b| b.round_trips[1], false),
        ("round trips per order: consumer".into(), |b| b.round_trips[2], false),
    ];
    for (name, figure, ratio) in rows {
        let median = |i: usize| Spread::of(&rounds.iter().map(|r| figure(&r[i])).collect::<Vec<_>>(), false).median;
        let (sqlite, mssql) = (median(0), median(1));
        let versus = match ratio {
            true => format!("{:.0} %", 100.0 * mssql / sqlite.max(f64::MIN_POSITIVE)),
            false => String::new(),
        };
        println!("{name:<58} {sqlite:>12.2} {mssql:>12.2} {versus:>14}");
    }
    println!("(round trips: SQL Server only; SQLite has none, its work stays in the process)");
}
