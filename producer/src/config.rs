//! Producer configuration: every flag has an env var of the same meaning as in
//! the other services; `producer --help` is the reference.

use std::net::SocketAddr;

/// The order form and JSON API.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "producer", version, about)]
pub struct Config {
    /// Database: `sqlite://PATH` (embedded default) or `mssql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://.orderflow/orderflow.db")]
    pub database_url: String,
    /// Public address: the browser form and the JSON API.
    #[arg(long, env = "HTTP_ADDR", default_value = "127.0.0.1:8080")]
    pub http_addr: SocketAddr,
    /// Admin port address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9100")]
    pub admin_addr: SocketAddr,
    /// How many recent orders the home page shows.
    #[arg(long, env = "RECENT_ORDERS", default_value_t = 20)]
    pub recent_orders: u32,
    /// How long SIGTERM waits for requests in flight (ms).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 15_000)]
    pub shutdown_grace_ms: u64,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Bearer token the admin port's mutating routes and the ops page's actions
    /// require; needed when ADMIN_ADDR is not loopback, and for ops actions when HTTP_ADDR is not.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    /// The relays' admin ports the ops page shows and drives (comma-separated base URLs).
    #[arg(long, env = "OPS_RELAYS", value_delimiter = ',', default_value = "http://127.0.0.1:9101")]
    pub ops_relays: Vec<String>,
    /// The consumers' admin ports the ops page shows (comma-separated base URLs).
    #[arg(long, env = "OPS_CONSUMERS", value_delimiter = ',', default_value = "http://127.0.0.1:9102")]
    pub ops_consumers: Vec<String>,
    /// The ops page counts an order published this many seconds ago and not processed as stuck (as the relay does).
    #[arg(long, env = "STALE_PUBLISHED_SECS", default_value_t = 300)]
    pub stale_published_secs: u64,
}

impl Config {
    /// Settings for tests and embedding: the given database, both ports 0.
    pub fn for_database(database_url: &str) -> Self {
        Self {
            database_url: database_url.to_string(),
            http_addr: "127.0.0.1:0".parse().expect("static address"),
            admin_addr: "127.0.0.1:0".parse().expect("static address"),
            recent_orders: 20,
            shutdown_grace_ms: 15_000,
            log_json: false,
            admin_token: None,
            ops_relays: Vec::new(),
            ops_consumers: Vec::new(),
            stale_published_secs: 300,
        }
    }
}
