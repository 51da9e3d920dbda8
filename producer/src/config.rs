//! Producer configuration: every flag has an env var of the same meaning as in
//! the other services; `producer --help` is the reference.
//!
//! Invariant: a value out of its range, or an admin URL the ops page could
//! never reach, is refused by clap at start, naming the flag.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// `RECENT_ORDERS`: as many as the API's `?limit=` allows.
pub const RECENT_ORDERS: RangeInclusive<i64> = 1..=100;
/// `CHARTS_SAMPLE_MS`: the charts keep 15 minutes, at most 900 samples.
pub const CHARTS_SAMPLE_MS: RangeInclusive<u64> = 100..=60_000;

/// The order form and JSON API.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "producer", version, about)]
pub struct Config {
    #[command(flatten)]
    /// The flags every service shares (clap ignores this comment on a flattened field).
    pub service: service::ServiceArgs,
    #[command(flatten)]
    /// `DATABASE_URL`.
    pub database: schema::DatabaseArgs,
    /// Public address: the browser form and the JSON API.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Admin port address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    pub admin_addr: SocketAddr,
    /// How many recent orders the home page shows (1-100).
    #[arg(long, env = "RECENT_ORDERS", default_value_t = 20, value_parser = clap::value_parser!(u32).range(RECENT_ORDERS))]
    pub recent_orders: u32,
    /// The relays' admin ports the ops page shows and drives (comma-separated `http://HOST:PORT` base URLs).
    #[arg(long, env = "OPS_RELAYS", value_delimiter = ',', default_value = "http://127.0.0.1:9101", value_parser = admin_url)]
    pub ops_relays: Vec<String>,
    /// The consumers' admin ports the ops page shows (comma-separated `http://HOST:PORT` base URLs).
    #[arg(long, env = "OPS_CONSUMERS", value_delimiter = ',', default_value = "http://127.0.0.1:9102", value_parser = admin_url)]
    pub ops_consumers: Vec<String>,
    /// How often the ops page's live charts sample the pipeline, in milliseconds (100-60000; they keep
    /// 15 minutes, at most 900 points).
    #[arg(long, env = "CHARTS_SAMPLE_MS", default_value_t = 5000,
          value_parser = clap::value_parser!(u64).range(CHARTS_SAMPLE_MS))]
    pub charts_sample_ms: u64,
    /// The ops page counts an order published this many seconds ago (30-604800) and not processed as
    /// stuck (as the relay does).
    #[arg(long, env = "STALE_PUBLISHED_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(schema::STALE_PUBLISHED_SECS))]
    pub stale_published_secs: u64,
}

/// An admin port's base URL: `http://HOST:PORT`, the one scheme the ops
/// page's client speaks (it has no TLS), with a host and nothing after the path.
fn admin_url(text: &str) -> Result<String, String> {
    let refused = || "not an admin port: write http://HOST:PORT".to_string();
    let url = reqwest::Url::parse(text.trim()).map_err(|_| refused())?;
    let plain = url.query().is_none() && url.fragment().is_none() && url.username().is_empty();
    match url.scheme() == "http" && url.host_str().is_some_and(|h| !h.is_empty()) && plain {
        true => Ok(text.trim().to_string()),
        false => Err(refused()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use service::flag_ranges::{walk_numeric_flags, wide};

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from([&["producer"], args].concat()).map_err(|e| e.to_string())
    }

    /// Each numeric flag through 0, -1, its bounds, one past each and a number
    /// no integer holds (see `service::flag_ranges`).
    #[test]
    fn every_numeric_setting_out_of_range_is_refused_naming_it() {
        let flags = [
            ("--recent-orders", wide(&RECENT_ORDERS)),
            ("--charts-sample-ms", wide(&CHARTS_SAMPLE_MS)),
            ("--stale-published-secs", wide(&schema::STALE_PUBLISHED_SECS)),
            ("--db-connect-timeout-ms", wide(&schema::CONNECT_TIMEOUT_MS_RANGE)),
            ("--db-command-timeout-ms", wide(&schema::COMMAND_TIMEOUT_MS_RANGE)),
        ];
        walk_numeric_flags::<Config>("producer", &flags);
    }

    #[test]
    fn the_defaults_parse() {
        let config = parse(&[]).unwrap();
        assert_eq!((config.recent_orders, config.charts_sample_ms, config.stale_published_secs), (20, 5_000, 300));
        assert_eq!(config.ops_relays, ["http://127.0.0.1:9101"]);
    }

    #[test]
    fn an_admin_url_the_ops_page_cannot_reach_is_refused_naming_its_flag() {
        for flag in ["--ops-relays", "--ops-consumers"] {
            for bad in
                ["bogus://r:9101", "https://r:9101", "r:9101", "", "http://", "http://a:1,ftp://b:2", "http://u:p@r:1"]
            {
                let error = parse(&[&format!("{flag}={bad}")]).unwrap_err();
                assert!(error.contains(flag) && error.contains("http://HOST:PORT"), "{flag}={bad}: {error}");
            }
        }
        let config = parse(&["--ops-relays=http://a:9101/,http://b:9101"]).unwrap();
        assert_eq!(config.ops_relays, ["http://a:9101/", "http://b:9101"]);
    }
}
