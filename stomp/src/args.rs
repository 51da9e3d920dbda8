//! The broker flags the relay and the consumer share (flattened into their
//! `Config`s), and the client settings they give.

use std::time::Duration;

use crate::Config;

/// Where order events go; the dead-letter queue is this name plus `.DLQ`.
pub const ORDER_QUEUE: &str = "/queue/order.processing";

/// Broker flags, with the same names and env vars in every service.
#[derive(Debug, Clone, clap::Args)]
pub struct BrokerArgs {
    /// ActiveMQ STOMP connector, `tcp://[USER:PASS@]HOST:PORT`; for a
    /// master/slave pair `failover:(tcp://a:61613,tcp://b:61613)` or a comma list.
    #[arg(long, env = "BROKER_URL", default_value = "tcp://127.0.0.1:61613")]
    pub broker_url: String,
    /// Queue the order events go to; the dead-letter queue is this name plus `.DLQ`.
    #[arg(long, env = "ORDER_QUEUE", default_value = ORDER_QUEUE)]
    pub queue: String,
    /// STOMP heart-beat interval (ms); 0 disables.
    #[arg(long, env = "BROKER_HEARTBEAT_MS", default_value_t = 5_000)]
    pub heartbeat_ms: u64,
}

impl BrokerArgs {
    /// The client settings: the URL's addresses and credentials, and the heart-beat.
    pub fn client_config(&self) -> Result<Config, String> {
        let mut config = Config::from_url(&self.broker_url)?;
        config.heartbeat = Duration::from_millis(self.heartbeat_ms);
        Ok(config)
    }
}
