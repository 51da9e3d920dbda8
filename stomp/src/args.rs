//! The broker flags the relay and the consumer share (flattened into their
//! `Config`s), and the client settings they give.

use std::time::Duration;

use error_reporter::Report;

use crate::{BrokerUrl, Config};

/// Where order events go; the dead-letter queue is this name plus `.DLQ`.
pub const ORDER_QUEUE: &str = "/queue/order.processing";

/// Broker flags, with the same names and env vars in every service.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// ActiveMQ STOMP connector, `tcp://[USER:PASS@]HOST:PORT`; for a
    /// master/slave pair `failover:(tcp://a:61613,tcp://b:61613)` or a comma list.
    #[arg(long, env = "BROKER_URL", default_value = "tcp://127.0.0.1:61613", value_parser = Parser)]
    pub broker_url: BrokerUrl,
    /// Queue the order events go to; the dead-letter queue is this name plus `.DLQ`.
    #[arg(long, env = "ORDER_QUEUE", default_value = ORDER_QUEUE)]
    pub queue: String,
    /// STOMP heart-beat interval (ms); 0 disables.
    #[arg(long, env = "BROKER_HEARTBEAT_MS", default_value_t = 5_000)]
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
