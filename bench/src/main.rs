//! `bench`: measures the relay, the consumer and the whole pipeline against the
//! raw ceiling of the same broker for the same work, on one machine.
//!
//! It starts a private ActiveMQ and runs the release binaries of the services
//! as separate processes (so their memory and CPU can be read from /proc).
//! Raw and pipeline phases are interleaved over several rounds, so that each
//! ratio compares figures measured minutes apart at most; it prints the median
//! and the spread of every figure and ratio, and writes JSON. Run it with
//! `scripts/bench.sh`.
//!
//! Invariant: a figure whose spread is over ±10 points (ratios) or ±10 %
//! (rates) is printed as "not a result".

mod compare;
mod raw;
mod report;
mod rounds;
mod sizing;

use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;

/// Relay and consumer throughput against the broker's own ceiling.
#[derive(Debug, Clone, Parser)]
struct Args {
    /// Messages per drain phase.
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
    /// Raw-then-pipeline rounds; medians and spreads are taken over them.
    #[arg(long, default_value_t = 3)]
    rounds: usize,
    /// About two minutes: 20,000 messages and 5 s of load per phase, 3 rounds.
    #[arg(long)]
    quick: bool,
    /// Orders of processed history (with their outbox and inbox rows) under a
    /// last round run on a database that holds them, with retention purging; 0 skips it.
    #[arg(long, default_value_t = 2_000_000)]
    history: usize,
    /// How long a drain phase may take before the bench fails (a phase whose
    /// service exits fails at once).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    phase_timeout: Duration,
    /// Runs one busy-looping process at normal priority beside the bench (CPU contention).
    #[arg(long)]
    busy_loop: bool,
    /// Query options for the SQLite URLs, e.g. `synchronous=normal` (default: FULL, durable).
    #[arg(long, default_value = "")]
    sqlite_options: String,
    /// A SQL Server (`mssql://…` or ADO.NET, naming any database on it): the
    /// pipeline phases also run on a fresh database there, interleaved with
    /// SQLite's round by round, and print side by side.
    #[arg(long)]
    database_url: Option<String>,
    /// Backlog messages of each comparison round's drain phase.
    #[arg(long, default_value_t = 10_000)]
    compare_messages: usize,
    /// Steady open-loop rate of each comparison round, orders/s.
    #[arg(long, default_value_t = 500.0)]
    compare_rate: f64,
    /// Only the SQLite-against-SQL-Server comparison (needs `--database-url`).
    #[arg(long)]
    compare_only: bool,
    /// Write the results as JSON here too.
    #[arg(long, default_value = "target/bench.json")]
    json: PathBuf,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    // On a signal the bench's future is dropped, and with it every process it
    // started: services (killed on drop), the broker and the busy loop.
    tokio::select! {
        result = bench(args) => result,
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted (SIGINT); every process the bench started is stopped"),
        _ = terminate.recv() => anyhow::bail!("terminated (SIGTERM); every process the bench started is stopped"),
    }
}

async fn bench(mut args: Args) -> anyhow::Result<()> {
    if args.quick {
        args.messages = args.messages.min(20_000);
        args.load_duration = args.load_duration.min(Duration::from_secs(5));
        args.history = args.history.min(200_000);
    }
    anyhow::ensure!(!args.compare_only || args.database_url.is_some(), "--compare-only needs --database-url");
    let busy = match args.busy_loop {
        true => Some(BusyLoop(std::process::Command::new("sh").args(["-c", "while :; do :; done"]).spawn()?)),
        false => None,
    };
    let broker = e2e::broker::Broker::start();
    eprintln!(
        "broker at {} (pid {}); {} rounds of {} messages per phase, batch {}",
        broker.url(),
        broker.pid().unwrap_or(0),
        args.rounds,
        args.messages,
        args.batch
    );
    let payload = raw::sample_payload();
    // Warm the broker's JVM up so that the first measured phase is not penalised.
    let warm = args.messages.min(20_000);
    raw::send_and_consume(&broker.url(), "/queue/bench.warmup", warm, args.batch, args.prefetch, &payload).await?;
    if let Some(mssql) = &args.database_url {
        let compared = compare::run(&args, &broker, mssql).await?;
        compare::print(&args, &compared);
        let json = args.json.with_extension("compare.json");
        std::fs::write(&json, serde_json::to_string_pretty(&compared)?)?;
        println!("JSON written to {}", json.display());
    }
    if args.compare_only {
        return Ok(());
    }
    let mut all = Vec::new();
    for round in 0..args.rounds.max(1) {
        let measured = rounds::round(&args, &broker, round, 0).await?;
        eprintln!("round {}: {measured:?}", round + 1);
        all.push(measured);
    }
    let history = match args.history {
        0 => None,
        n => {
            eprintln!("history round: {n} processed orders under the pipeline");
            Some(rounds::round(&args, &broker, all.len(), n).await?)
        }
    };
    let report = report::Report::new(&args, report::machine(), all, history);
    report.print();
    std::fs::write(&args.json, serde_json::to_string_pretty(&report)?)?;
    println!("\nJSON written to {}", args.json.display());
    drop(busy);
    Ok(())
}

/// A busy-looping process, killed when dropped.
struct BusyLoop(std::process::Child);

impl Drop for BusyLoop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}
