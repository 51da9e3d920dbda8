//! `loadtest` binary: see `loadtest --help`.

use std::time::Duration;

use clap::Parser;
use loadtest::run::{Mode, Options, run};

/// Load-tests a running producer through its JSON API.
#[derive(Debug, Parser)]
#[command(name = "loadtest", version, about)]
struct Args {
    /// Producer base URL.
    #[arg(long, env = "LOADTEST_URL", default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Open-loop: requests per second (mutually exclusive with --concurrency).
    #[arg(long, conflicts_with = "concurrency")]
    rate: Option<f64>,
    /// Closed-loop: requests in flight (default 64 when --rate is not given).
    #[arg(long)]
    concurrency: Option<usize>,
    /// How long to send, e.g. 30s, 2m.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Products to cycle through, comma-separated.
    #[arg(long, default_value = "P123,P200,P300,P400,P500", value_delimiter = ',')]
    products: Vec<String>,
    /// Send an Idempotency-Key with every request.
    #[arg(long)]
    idempotency_keys: bool,
    /// How long to wait for accepted orders to become final (0s: do not wait).
    #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
    wait: Duration,
    /// Per-request timeout.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    request_timeout: Duration,
    /// Print the summary as JSON on stdout.
    #[arg(long)]
    json: bool,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let mode = match args.rate {
        Some(rate) => Mode::Open { rate },
        None => Mode::Closed { concurrency: args.concurrency.unwrap_or(64) },
    };
    let options = Options {
        url: args.url,
        mode,
        duration: args.duration,
        products: args.products,
        idempotency_keys: args.idempotency_keys,
        wait: (!args.wait.is_zero()).then_some(args.wait),
        request_timeout: args.request_timeout,
        progress: !args.json,
        all_final: None,
    };
    let summary = run(options).await?;
    match args.json {
        true => println!("{}", serde_json::to_string_pretty(&summary)?),
        false => print!("{}", summary.render()),
    }
    Ok(())
}
