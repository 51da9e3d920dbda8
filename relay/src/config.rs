//! Relay configuration: every flag has an env var of the same meaning as in
//! the other services; `relay --help` is the reference.
//!
//! Invariant: a value that would stop or wedge the relay (a batch of none, a
//! lease that lapses mid-send, a parking rule that parks all or nothing, a
//! retention that forgets what the consumer dedupes by) is refused at start,
//! by clap with the flag's name and range, or by [`Config::check`] when the
//! rule joins two flags. Each range is written once, below.

use std::net::SocketAddr;
use std::ops::RangeInclusive;
use std::time::Duration;

/// `RELAY_BATCH_SIZE`: at least one row, at most what one claim and one mark can carry.
pub const BATCH_SIZE: RangeInclusive<i64> = 1..=5_000;
/// `RELAY_LEASE_MS`: long enough for a batch's connect, send and receipts,
/// short enough that a crashed relay's rows come back within the hour.
pub const LEASE_MS: RangeInclusive<u64> = 1_000..=3_600_000;
/// `RELAY_POLL_MIN_MS` and `RELAY_POLL_MAX_MS`: no pause of 0 (a busy loop on
/// the database), none over a minute (a relay that seems stopped).
pub const POLL_MS: RangeInclusive<u64> = 1..=60_000;
/// `RELAY_MAX_ATTEMPTS`: at least one send before a row is parked.
pub const MAX_ATTEMPTS: RangeInclusive<i64> = 1..=100;
/// `RELAY_RECEIPT_TIMEOUT_MS`; [`Config::check`] also keeps it under two thirds of the lease.
pub const RECEIPT_TIMEOUT_MS: RangeInclusive<u64> = 100..=600_000;
/// `RELAY_MAX_MESSAGE_BYTES`: room for any order's message, and never more
/// than the consumer reads whole (`schema::messages::MAX_BODY_BYTES`).
pub const MAX_MESSAGE_BYTES: RangeInclusive<u64> = 4_096..=schema::messages::MAX_BODY_BYTES as u64;
/// `OUTBOX_RETENTION_SECS` and `INBOX_RETENTION_SECS`: an hour at least (the
/// inbox is how the consumer knows a copy it already applied), ten years at most.
pub const RETENTION_SECS: RangeInclusive<u64> = 3_600..=315_360_000;
/// `PURGE_BATCH`: rows per retention delete.
pub const PURGE_BATCH: RangeInclusive<i64> = 1..=10_000;
/// `PURGE_PAUSE_MS`: 0 purges without a pause; a minute at most, so a purge ends.
pub const PURGE_PAUSE_MS: RangeInclusive<u64> = 0..=60_000;

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
    /// Rows leased and published per batch (1-5000).
    #[arg(long, env = "RELAY_BATCH_SIZE", default_value_t = 200, value_parser = clap::value_parser!(u32).range(BATCH_SIZE))]
    pub batch_size: u32,
    /// How long a lease lasts (ms, 1000-3600000); a crashed relay's rows are retried after it.
    #[arg(long, env = "RELAY_LEASE_MS", default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(LEASE_MS))]
    pub lease_ms: u64,
    /// Shortest pause between polls when the last poll found work (ms, 1-60000, at most RELAY_POLL_MAX_MS).
    #[arg(long, env = "RELAY_POLL_MIN_MS", default_value_t = 1, value_parser = clap::value_parser!(u64).range(POLL_MS))]
    pub poll_min_ms: u64,
    /// Longest pause between polls when idle (ms, 1-60000); the pause doubles per empty poll.
    #[arg(long, env = "RELAY_POLL_MAX_MS", default_value_t = 10, value_parser = clap::value_parser!(u64).range(POLL_MS))]
    pub poll_max_ms: u64,
    /// Broker rejections of one row before it is parked (1-100).
    #[arg(long, env = "RELAY_MAX_ATTEMPTS", default_value_t = 5, value_parser = clap::value_parser!(i32).range(MAX_ATTEMPTS))]
    pub max_attempts: i32,
    /// How long to wait for the broker's RECEIPT before the outcome counts as unknown
    /// (ms, 100-600000, and under two thirds of RELAY_LEASE_MS).
    #[arg(long, env = "RELAY_RECEIPT_TIMEOUT_MS", default_value_t = 10_000,
          value_parser = clap::value_parser!(u64).range(RECEIPT_TIMEOUT_MS))]
    pub receipt_timeout_ms: u64,
    /// Largest message body sent (4096-65536, the consumer's limit); a larger row is rejected
    /// without sending (and parked at the cap).
    #[arg(long, env = "RELAY_MAX_MESSAGE_BYTES", default_value_t = schema::messages::MAX_BODY_BYTES,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(MAX_MESSAGE_BYTES))]
    pub max_message_bytes: usize,
    /// Name of this relay in lease columns (1-100 characters); defaults to host-pid-random.
    #[arg(long, env = "RELAY_ID", value_parser = relay_id)]
    pub relay_id: Option<String>,
    /// Cron (6 fields, UTC) of the retention job; empty disables it.
    #[arg(long, env = "RETENTION_CRON", default_value = "0 */5 * * * *", value_parser = cron)]
    pub retention_cron: String,
    /// Published outbox rows older than this many seconds are deleted (3600-315360000).
    #[arg(long, env = "OUTBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(RETENTION_SECS))]
    pub outbox_retention_secs: u64,
    /// Inbox rows older than this many seconds are deleted (3600-315360000).
    #[arg(long, env = "INBOX_RETENTION_SECS", default_value_t = 7 * 24 * 3600,
          value_parser = clap::value_parser!(u64).range(RETENTION_SECS))]
    pub inbox_retention_secs: u64,
    /// Rows per retention delete (1-10000).
    #[arg(long, env = "PURGE_BATCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(PURGE_BATCH))]
    pub purge_batch: u32,
    /// Pause between retention deletes (ms, 0-60000), so that a large purge leaves the
    /// database's writer to the pipeline most of the time.
    #[arg(long, env = "PURGE_PAUSE_MS", default_value_t = 50, value_parser = clap::value_parser!(u64).range(PURGE_PAUSE_MS))]
    pub purge_pause_ms: u64,
    /// Cron (6 fields, UTC) of the reconciliation sweep; empty disables it.
    #[arg(long, env = "RECONCILE_CRON", default_value = "*/30 * * * * *", value_parser = cron)]
    pub reconcile_cron: String,
    /// Orders published longer than this many seconds (30-604800) without being processed are
    /// reported (and repaired).
    #[arg(long, env = "STALE_PUBLISHED_SECS", default_value_t = 300,
          value_parser = clap::value_parser!(u64).range(schema::STALE_PUBLISHED_SECS))]
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

    /// Refuses settings that clap's ranges cannot, since they join two flags:
    /// a step that could outlive its lease, polls whose floor is over their ceiling.
    pub(crate) fn check(&self) -> anyhow::Result<()> {
        anyhow::ensure!(
            self.poll_min_ms <= self.poll_max_ms,
            "RELAY_POLL_MIN_MS ({} ms) must be at most RELAY_POLL_MAX_MS ({} ms)",
            self.poll_min_ms,
            self.poll_max_ms
        );
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

/// `RELAY_ID`: 1-100 characters without control characters, so that two relays
/// never share a name once it is cut to its column (`schema::limits::LEASE_OWNER_UNITS`).
fn relay_id(text: &str) -> Result<String, String> {
    let units = schema::limits::utf16_len(text);
    match text.trim().is_empty() || units > schema::limits::LEASE_OWNER_UNITS || text.chars().any(char::is_control) {
        true => Err(format!("1-{} characters, none of them control characters", schema::limits::LEASE_OWNER_UNITS)),
        false => Ok(text.to_string()),
    }
}

/// A schedule as the maintenance jobs read it (tokio-cron-scheduler's parser),
/// so that a typo stops the relay at start, naming its flag; empty disables the job.
fn cron(text: &str) -> Result<String, String> {
    if text.trim().is_empty() {
        return Ok(String::new());
    }
    match tokio_cron_scheduler::Job::new_async(text, |_, _| Box::pin(async {})) {
        Ok(_) => Ok(text.to_string()),
        Err(_) => {
            Err("a 6-field cron (sec min hour day month weekday, UTC), e.g. \"0 */5 * * * *\"; empty disables".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use service::flag_ranges::{walk_numeric_flags, wide};

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from([&["relay"], args].concat()).map_err(|e| e.to_string())
    }

    /// Each numeric flag through 0, -1, its bounds, one past each and a number
    /// no integer holds (see `service::flag_ranges`).
    #[test]
    fn every_numeric_setting_out_of_range_is_refused_naming_it() {
        let flags = [
            ("--batch-size", wide(&BATCH_SIZE)),
            ("--lease-ms", wide(&LEASE_MS)),
            ("--poll-min-ms", wide(&POLL_MS)),
            ("--poll-max-ms", wide(&POLL_MS)),
            ("--max-attempts", wide(&MAX_ATTEMPTS)),
            ("--receipt-timeout-ms", wide(&RECEIPT_TIMEOUT_MS)),
            ("--max-message-bytes", wide(&MAX_MESSAGE_BYTES)),
            ("--outbox-retention-secs", wide(&RETENTION_SECS)),
            ("--inbox-retention-secs", wide(&RETENTION_SECS)),
            ("--purge-batch", wide(&PURGE_BATCH)),
            ("--purge-pause-ms", wide(&PURGE_PAUSE_MS)),
            ("--stale-published-secs", wide(&schema::STALE_PUBLISHED_SECS)),
            ("--heartbeat-ms", wide(&stomp::HEARTBEAT_MS)),
            ("--db-connect-timeout-ms", wide(&schema::CONNECT_TIMEOUT_MS_RANGE)),
            ("--db-command-timeout-ms", wide(&schema::COMMAND_TIMEOUT_MS_RANGE)),
        ];
        walk_numeric_flags::<Config>("relay", &flags);
    }

    #[test]
    fn the_defaults_parse_and_pass_the_checks() {
        let config = parse(&[]).unwrap();
        config.check().unwrap();
        assert_eq!((config.batch_size, config.max_message_bytes), (200, schema::messages::MAX_BODY_BYTES));
    }

    #[test]
    fn rules_that_join_two_flags_are_checked_at_start() {
        let polls = parse(&["--poll-min-ms=50", "--poll-max-ms=10"]).unwrap().check().unwrap_err().to_string();
        assert!(polls.contains("RELAY_POLL_MIN_MS (50 ms)") && polls.contains("RELAY_POLL_MAX_MS (10 ms)"), "{polls}");
        let receipts = parse(&["--lease-ms=1000", "--receipt-timeout-ms=700"]).unwrap().check().unwrap_err();
        assert!(receipts.to_string().contains("RELAY_RECEIPT_TIMEOUT_MS (700 ms)"), "{receipts}");
        parse(&["--poll-min-ms=10", "--poll-max-ms=10", "--lease-ms=1000", "--receipt-timeout-ms=600"])
            .unwrap()
            .check()
            .unwrap();
    }

    #[test]
    fn a_bad_schedule_or_relay_id_is_refused_naming_its_flag() {
        for (flag, value) in [
            ("--retention-cron", "every five minutes"),
            ("--reconcile-cron", "*/30 * * * *"),
            ("--relay-id", ""),
            ("--relay-id", "a\nb"),
            ("--relay-id", &"r".repeat(101)),
        ] {
            let error = parse(&[&format!("{flag}={value}")]).unwrap_err();
            assert!(error.contains(flag), "{flag}={value:?}: {error}");
        }
        let config = parse(&["--retention-cron=", "--reconcile-cron=0 0 * * * *", "--relay-id=relay-a"]).unwrap();
        assert_eq!((config.retention_cron.as_str(), config.relay_id.as_deref()), ("", Some("relay-a")));
    }
}
