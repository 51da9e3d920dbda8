//! Producer configuration: every flag has an env var of the same meaning as in
//! the other services; `producer --help` is the reference.

use std::net::SocketAddr;

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
    /// How many recent orders the home page shows.
    #[arg(long, env = "RECENT_ORDERS", default_value_t = 20)]
    pub recent_orders: u32,
    /// The relays' admin ports the ops page shows and drives (comma-separated base URLs).
    #[arg(long, env = "OPS_RELAYS", value_delimiter = ',', default_value = "http://127.0.0.1:9101")]
    pub ops_relays: Vec<String>,
    /// The consumers' admin ports the ops page shows (comma-separated base URLs).
    #[arg(long, env = "OPS_CONSUMERS", value_delimiter = ',', default_value = "http://127.0.0.1:9102")]
    pub ops_consumers: Vec<String>,
    /// How often the ops page's live charts sample the pipeline, in milliseconds (they keep 15 minutes, at most 900 points).
    #[arg(long, env = "CHARTS_SAMPLE_MS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(100..=60_000))]
    pub charts_sample_ms: u64,
    /// The ops page counts an order published this many seconds ago and not processed as stuck (as the relay does).
    #[arg(long, env = "STALE_PUBLISHED_SECS", default_value_t = 300)]
    pub stale_published_secs: u64,
}
