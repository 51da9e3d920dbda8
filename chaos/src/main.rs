//! `chaos`: the whole pipeline under faults, bounded in time, loopback only.
//!
//! Steady load from the loadtest tool against a producer, two relays and a
//! consumer running as processes on a private broker (`fleet`). At random
//! moments one fault (`schedule`): SIGKILL or SIGTERM of any service, a broker
//! kill and restart, SQLite's write lock held, a burst of hostile messages
//! (`faults`). After each, a fresh order is carried end to end to time the
//! recovery. At the end the invariants are read straight from the database
//! and the broker (`verify`), and a report is printed (`report`).
//!
//! Invariant: every wait has a deadline; the exit code is non-zero when an
//! invariant fails, and the report says which.

mod faults;
mod fleet;
mod report;
mod schedule;
mod verify;

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use rand::SeedableRng;

use crate::fleet::Fleet;
use crate::schedule::FaultRecord;

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

/// One run: its system, and what it found.
struct Run {
    args: Args,
    fleet: Fleet,
    /// For the canaries and the audit orders.
    http: reqwest::Client,
    rng: rand::rngs::StdRng,
    faults: Vec<FaultRecord>,
    /// (chaos-id, kind) of every hostile message sent.
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
    let fleet = Fleet::start(&bin_dir, &run_dir, &logs).await?;
    let mut run = Run {
        args,
        fleet,
        http: reqwest::Client::builder().timeout(Duration::from_secs(5)).build()?,
        rng: rand::rngs::StdRng::seed_from_u64(seed),
        faults: Vec::new(),
        hostile: Vec::new(),
        violations: Vec::new(),
        canaries: 0,
    };
    let load = tokio::spawn(loadtest::run::run(loadtest::run::Options {
        url: run.fleet.producer_url.clone(),
        mode: loadtest::run::Mode::Open { rate: run.args.rate },
        duration: run.args.duration,
        products: ["P123", "P200", "P300", "P400"].map(String::from).to_vec(),
        idempotency_keys: true,
        wait: None,
        request_timeout: Duration::from_secs(10),
        progress: false,
        all_final: None,
    }));
    run.inject_faults().await;
    let load = load.await??;
    let latency = run.settle_and_verify(load.accepted).await?;
    run.report(&load, latency).await?;
    if run.violations.is_empty() {
        println!("chaos: passed");
        Ok(())
    } else {
        anyhow::bail!("chaos: {} invariant(s) failed; logs in {}", run.violations.len(), logs.display())
    }
}
