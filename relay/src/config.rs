//! Relay configuration: every flag has an env var of the same meaning as in
//! the other services; `relay --help` is the reference.

use std::net::SocketAddr;
use std::time::Duration;

/// Drains the transactional outbox to ActiveMQ.
#[derive(Debug, Clone, clap::Parser)]
#[command(name = "relay", version, about)]
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
    #[arg(long, env = "ADMIN_ADDR", default_value = "127.0.0.1:9101")]
    pub admin_addr: SocketAddr,
    /// Rows leased and published per batch.
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 200)]
    pub batch_size: u32,
    /// How long a lease lasts (ms); a crashed relay's rows are retried after it.
    #[arg(long, env = "RELAY_LEASE_MS", default_value_t = 30_000)]
    pub lease_ms: u64,
    /// Shortest pause between polls when the last poll found work (ms).
    #[arg(long, env = "RELAY_POLL_MIN_MS", default_value_t = 1)]
    pub poll_min_ms: u64,
    /// Longest pause between polls when idle (ms); the pause doubles per empty poll.
    #[arg(long, env = "RELAY_POLL_MAX_MS", default_value_t = 10)]
    pub poll_max_ms: u64,
    /// Broker rejections of one row before it is parked.
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 5)]
    pub max_attempts: i32,
    /// How long to wait for the broker's RECEIPT before the outcome counts as unknown (ms).
    #[arg(long, env = "RELAY_RECEIPT_TIMEOUT_MS", default_value_t = 10_000)]
    pub receipt_timeout_ms: u64,
    /// Largest message body sent; a larger row is rejected without sending (and parked at the cap).
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", default_value_t = schema::messages::MAX_BODY_BYTES)]
    pub max_message_bytes: usize,
    /// Name of this relay in lease columns; defaults to host-pid-random.
    #[arg(long, env = "RELAY_ID")]
    pub relay_id: Option<String>,
    /// Cron (6 fields, UTC) of the retention job; empty disables it.
    #[arg(long, env = "RETENTION_CRON", default_value = "0 */5 * * * *")]
    pub retention_cron: String,
    /// Published outbox rows older than this many seconds are deleted.
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub outbox_retention_secs: u64,
    /// Inbox rows older than this many seconds are deleted.
    #[arg(long, env = "INBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600)]
    pub inbox_retention_secs: u64,
    /// Rows per retention delete.
    #[arg(long, env = "PURGE_BATCH", default_value_t = 500)]
    pub purge_batch: u32,
    /// Pause between retention deletes (ms), so that a large purge leaves the
    /// database's writer to the pipeline most of the time.
    #[arg(long, env = "PURGE_PAUSE_MS", default_value_t = 50)]
    pub purge_pause_ms: u64,
    /// Cron (6 fields, UTC) of the reconciliation sweep; empty disables it.
    #[arg(long, env = "RECONCILE_CRON", default_value = "*/30 * * * * *")]
    pub reconcile_cron: String,
    /// Orders published longer than this many seconds without being processed are reported (and repaired).
    #[arg(long, env = "STALE_PUBLISHED_SECS", default_value_t = 300)]
    pub stale_published_secs: u64,
    /// Self-healing: the sweep sends stuck orders again (the consumer dedupes); false only reports them.
    #[arg(long, env = "REPAIR_STUCK", default_value_t = true, action = clap::ArgAction::Set)]
    pub repair_stuck: bool,
}

impl Config {
    pub(crate) fn lease(&self) -> Duration {
        Duration::from_millis(self.lease_ms)
    }

    pub(crate) fn maintenance(&self, relay_id: &str) -> crate::maintenance::Settings {
        crate::maintenance::Settings {
            retention_cron: self.retention_cron.clone(),
            outbox_retention: Duration::from_secs(self.outbox_retention_secs),
            inbox_retention: Duration::from_secs(self.inbox_retention_secs),
            purge_batch: self.purge_batch.max(1),
            purge_pause: Duration::from_millis(self.purge_pause_ms),
            reconcile_cron: self.reconcile_cron.clone(),
            stale_published_after: Duration::from_secs(self.stale_published_secs),
            repair_as: self.repair_stuck.then(|| format!("reconciler:{relay_id}")),
        }
    }

    /// Refuses settings under which a step could outlive its lease.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        let budget = crate::step::publish_budget(self.lease());
        anyhow::ensure!(
            self.receipt_timeout() < budget,
            "RELAY_RECEIPT_TIMEOUT_MS ({} ms) must be under two thirds of RELAY_LEASE_MS ({} ms): a batch waiting \
             that long on the broker could lose its lease to another relay",
            self.receipt_timeout_ms,
            self.lease_ms
        );
        Ok(())
    }

    pub(crate) fn receipt_timeout(&self) -> Duration {
        Duration::from_millis(self.receipt_timeout_ms)
    }
}
