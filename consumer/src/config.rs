//! Consumer configuration: every flag has an env var of the same meaning as in
//! the other services; `consumer --help` is the reference.

use std::net::SocketAddr;

/// Prices and finalises orders from `/queue/order.processing`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "consumer", version, about)]
pub struct Config {
    /// Database: `sqlite://PATH` (embedded default) or `mssql://USER:PASSWORD@HOST:PORT/DB`.
    #[arg(long, env = "DATABASE_URL", default_value = "sqlite://.orderflow/orderflow.db")]
    pub database_url: String,
    /// ActiveMQ STOMP connector, `tcp://[USER:PASS@]HOST:PORT`.
    #[arg(long, env = "BROKER_URL", default_value = "tcp://127.0.0.1:61613")]
    pub broker_url: String,
    /// Queue the order events go to; the dead-letter queue is this name plus `.DLQ`.
    #[arg(long, env = "ORDER_QUEUE", default_value = schema::messages::ORDER_QUEUE)]
    pub queue: String,
    /// Admin port address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9102")]
    pub admin_addr: SocketAddr,
    /// Messages the broker may push ahead of our ACKs (`activemq.prefetchSize`).
    #[arg(long, env = "CONSUMER_PREFETCH", default_value_t = 500)]
    pub prefetch: u32,
    /// Most messages applied in one database transaction (each is ACKed after the commit).
    #[arg(long, env = "CONSUMER_BATCH", default_value_t = 200)]
    pub batch_size: usize,
    /// STOMP heart-beat interval (ms); 0 disables.
    #[arg(long, env = "BROKER_HEARTBEAT_MS", default_value_t = 5_000)]
    pub heartbeat_ms: u64,
    /// How long SIGTERM waits for the message in hand (ms).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 15_000)]
    pub shutdown_grace_ms: u64,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Bearer token the admin port's mutating routes require; needed when ADMIN_ADDR is not loopback.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl Config {
    /// Settings for tests and embedding: the given database and broker, admin on port 0.
    pub fn for_urls(database_url: &str, broker_url: &str) -> Self {
        Self {
            database_url: database_url.to_string(),
            broker_url: broker_url.to_string(),
            queue: schema::messages::ORDER_QUEUE.to_string(),
            admin_addr: "127.0.0.1:0".parse().expect("static address"),
            prefetch: 500,
            batch_size: 200,
            heartbeat_ms: 5_000,
            shutdown_grace_ms: 15_000,
            log_json: false,
            admin_token: None,
        }
    }
}
