//! Consumer configuration: every flag has an env var of the same meaning as in
//! the other services; `consumer --help` is the reference.
//!
//! Invariant: a value that would stop the consumer (a prefetch of 0 is
//! ActiveMQ's pull mode: nothing is ever pushed) or let its memory grow
//! without bound is refused by clap at start, naming the flag and its range.

use std::net::SocketAddr;
use std::ops::RangeInclusive;

/// `CONSUMER_PREFETCH`: at least one message pushed; at most 10,000, since
/// each costs up to about 80 KiB (`docs/operations.md`, limits of what the consumer reads).
pub const PREFETCH: RangeInclusive<i64> = 1..=10_000;
/// `CONSUMER_BATCH`: messages in one database transaction.
pub const BATCH: RangeInclusive<u64> = 1..=1_000;

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
    /// Messages the broker may push ahead of our ACKs (`activemq.prefetchSize`, 1-10000).
    #[arg(long, env = "CONSUMER_PREFETCH", default_value_t = 500, value_parser = clap::value_parser!(u32).range(PREFETCH))]
    pub prefetch: u32,
    /// Most messages applied in one database transaction (1-1000; each is ACKed after the commit).
    #[arg(long, env = "CONSUMER_BATCH", default_value_t = 200,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(BATCH))]
    pub batch_size: usize,
}

#[cfg(test)]
mod tests {
    use clap::Parser;
    use service::flag_ranges::{walk_numeric_flags, wide};

    use super::*;

    fn parse(args: &[&str]) -> Result<Config, String> {
        Config::try_parse_from([&["consumer"], args].concat()).map_err(|e| e.to_string())
    }

    /// Each numeric flag through 0, -1, its bounds, one past each and a number
    /// no integer holds (see `service::flag_ranges`).
    #[test]
    fn every_numeric_setting_out_of_range_is_refused_naming_it() {
        let flags = [
            ("--prefetch", wide(&PREFETCH)),
            ("--batch-size", wide(&BATCH)),
            ("--heartbeat-ms", wide(&stomp::HEARTBEAT_MS)),
            ("--db-connect-timeout-ms", wide(&schema::CONNECT_TIMEOUT_MS_RANGE)),
            ("--db-command-timeout-ms", wide(&schema::COMMAND_TIMEOUT_MS_RANGE)),
        ];
        walk_numeric_flags::<Config>("consumer", &flags);
    }

    #[test]
    fn the_defaults_parse() {
        let config = parse(&[]).unwrap();
        assert_eq!((config.prefetch, config.batch_size, config.broker.heartbeat_ms), (500, 200, 5_000));
    }
}
