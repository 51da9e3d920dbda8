//! The broker flags the relay and the consumer share (flattened into their
//! `Config`s), and the client settings they give.
//!
//! Invariant: clap refuses at start-up a value that would stop or wedge a
//! connection (no heart-beat, a queue that is no queue), naming the flag.

use std::ops::RangeInclusive;
use std::time::Duration;

use error_reporter::Report;

use crate::{BrokerUrl, Config};

/// Where order events go; the dead-letter queue is this name plus `.DLQ`.
pub const ORDER_QUEUE: &str = "/queue/order.processing";

/// `BROKER_HEARTBEAT_MS`: heart-beats are how a broker that went silent is
/// noticed (after three missed), so they cannot be off; a minute at most, so
/// that a dead connection is left within three.
pub const HEARTBEAT_MS: RangeInclusive<u64> = 1_000..=60_000;

/// Broker flags, with the same names and env vars in every service.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// ActiveMQ STOMP connector, `tcp://[USER:PASS@]HOST:PORT` (or `stomp://`); for a
    /// master/slave pair `failover:(tcp://a:61613,tcp://b:61613)` or a comma list.
    #[arg(long, env = "BROKER_URL", default_value = "tcp://127.0.0.1:61613", value_parser = Parser)]
    pub broker_url: BrokerUrl,
    /// Queue the order events go to, `/queue/NAME`; the dead-letter queue is this name plus `.DLQ`.
    #[arg(long, env = "ORDER_QUEUE", default_value = ORDER_QUEUE, value_parser = queue)]
    pub queue: String,
    /// STOMP heart-beat interval (ms, 1000-60000); a silent broker is dropped after three missed.
    #[arg(long, env = "BROKER_HEARTBEAT_MS", default_value_t = 5_000,
          value_parser = clap::value_parser!(u64).range(HEARTBEAT_MS))]
    pub heartbeat_ms: u64,
}

impl BrokerArgs {
    /// The client settings: the URL's addresses and credentials, and the heart-beat.
    pub fn client_config(&self) -> Config {
        Config { heartbeat: Duration::from_millis(self.heartbeat_ms), ..self.broker_url.config() }
    }
}

/// Parses the flag without echoing it: clap's own message would print the
/// value, passcode and all.
#[derive(Clone)]
struct Parser;

impl clap::builder::TypedValueParser for Parser {
    type Value = BrokerUrl;

    fn parse_ref(
        &self,
        cmd: &clap::Command,
        _arg: Option<&clap::Arg>,
        value: &std::ffi::OsStr,
    ) -> Result<BrokerUrl, clap::Error> {
        let refused = |why: String| {
            let message = format!("invalid --broker-url (BROKER_URL): {why}\n");
            clap::Error::raw(clap::error::ErrorKind::ValueValidation, message).with_cmd(cmd)
        };
        let text = value.to_str().ok_or_else(|| refused("not UTF-8".into()))?;
        text.parse().map_err(|e: crate::UrlError| refused(Report::new(&e).to_string()))
    }
}

/// A queue: `/queue/` and a name of at most 200 bytes without control
/// characters (a line break would end a STOMP header).
fn queue(text: &str) -> Result<String, String> {
    let name = text.strip_prefix("/queue/").unwrap_or_default();
    match name.is_empty() || name.len() > 200 || name.chars().any(char::is_control) {
        true => Err("write /queue/NAME (a name of 1-200 bytes, no control characters)".into()),
        false => Ok(text.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        broker: super::BrokerArgs,
    }

    fn parse(args: &[&str]) -> Result<super::BrokerArgs, String> {
        Cli::try_parse_from([&["test"], args].concat()).map(|c| c.broker).map_err(|e| e.to_string())
    }

    #[test]
    fn heart_beats_and_queues_out_of_range_are_refused_naming_the_flag() {
        let defaults = parse(&[]).unwrap();
        assert_eq!((defaults.heartbeat_ms, defaults.queue.as_str()), (5_000, super::ORDER_QUEUE));
        for bad in ["0", "-1", "999", "60001", "18446744073709551616"] {
            let error = parse(&[&format!("--heartbeat-ms={bad}")]).unwrap_err();
            assert!(error.contains("--heartbeat-ms"), "{bad}: {error}");
        }
        for bad in ["", "/queue/", "orders", "/topic/orders", "/queue/a\nb"] {
            let bad = bad.replace("\\n", "\n");
            let error = parse(&[&format!("--queue={bad}")]).unwrap_err();
            assert!(error.contains("--queue") && error.contains("/queue/NAME"), "{bad:?}: {error}");
        }
        assert_eq!(parse(&["--queue", "/queue/a.b-c"]).unwrap().queue, "/queue/a.b-c");
    }
}
