//! Consumer configuration: every flag has an env var of the same meaning as in
//! the other services; `consumer --help` is the reference.

use std::net::SocketAddr;

/// Prices and finalises orders from `/queue/order.processing`.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "consumer", version, about)]
pub struct Config {
    #[command(flatten)]
    /// The flags every service shares (clap ignores this comment on a flattened field).
    pub service: service::ServiceArgs,
    #[command(flatten)]
    /// `DATABASE_URL`.
    pub database: schema::DatabaseArgs,
    #[command(flatten)]
    /// `BROKER_URL`, `ORDER_QUEUE`, `BROKER_HEARTBEAT_MS`.
    pub broker: stomp::BrokerArgs,
    /// Admin port address (`/metrics`, `/healthz`, `/readyz`).
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9102")]
    pub admin_addr: SocketAddr,
    /// Messages the broker may push ahead of our ACKs (`activemq.prefetchSize`).
    #[arg(long, env = "CONSUMER_PREFETCH", default_value_t = 500)]
    pub prefetch: u32,
    /// Most messages applied in one database transaction (each is ACKed after the commit).
    #[arg(long, env = "CONSUMER_BATCH", default_value_t = 200)]
    pub batch_size: usize,
}
