//! One command line per service, built once and used two ways: parsed in
//! process by `Config::try_parse_from` (the e2e stack), or handed to the
//! binary by `Command::args` (chaos, the bench).
//!
//! Invariant: every flag is one of the service's own clap flags (`--help` is
//! the reference, `ServiceArgs` and each `Config` the definitions), so a
//! command line that parses here starts the binary the same way;
//! [`Flags::check`] parses it before a child process is started with it.

use std::fmt::Display;

use clap::Parser;

/// Which service a command line is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// The order form and JSON API.
    Producer,
    /// The outbox relay.
    Relay,
    /// The queue consumer.
    Consumer,
}

impl Role {
    /// The binary's name, also the first word of its command line.
    pub fn name(self) -> &'static str {
        match self {
            Role::Producer => "producer",
            Role::Relay => "relay",
            Role::Consumer => "consumer",
        }
    }
}

/// A service's flags as `--name=value` pairs; a flag set again replaces its value.
#[derive(Debug, Clone)]
pub struct Flags {
    role: Role,
    pairs: Vec<(String, String)>,
}

impl Flags {
    /// A producer on `database_url`, its HTTP and admin ports on port 0.
    pub fn producer(database_url: &str) -> Flags {
        Flags { role: Role::Producer, pairs: Vec::new() }
            .with("--database-url", database_url)
            .with("--http-addr", "127.0.0.1:0")
            .with("--admin-addr", "127.0.0.1:0")
    }

    /// A relay on `database_url` sending to `queue` on `broker_url`, admin on port 0.
    pub fn relay(database_url: &str, broker_url: &str, queue: &str) -> Flags {
        Flags::with_broker(Role::Relay, database_url, broker_url, queue)
    }

    /// A consumer on `database_url` reading `queue` on `broker_url`, admin on port 0.
    pub fn consumer(database_url: &str, broker_url: &str, queue: &str) -> Flags {
        Flags::with_broker(Role::Consumer, database_url, broker_url, queue)
    }

    fn with_broker(role: Role, database_url: &str, broker_url: &str, queue: &str) -> Flags {
        Flags { role, pairs: Vec::new() }
            .with("--database-url", database_url)
            .with("--broker-url", broker_url)
            .with("--queue", queue)
            .with("--admin-addr", "127.0.0.1:0")
    }

    /// Sets `flag` (with its dashes, e.g. `--lease-ms`) to `value`.
    pub fn with(mut self, flag: &str, value: impl Display) -> Flags {
        let value = value.to_string();
        match self.pairs.iter_mut().find(|(name, _)| name == flag) {
            Some(pair) => pair.1 = value,
            None => self.pairs.push((flag.to_string(), value)),
        }
        self
    }

    /// The service these flags are for.
    pub fn role(&self) -> Role {
        self.role
    }

    /// The flags as arguments, for `Command::args`: one `--name=value` each,
    /// so that an empty value or one starting with `-` stays a value.
    pub fn args(&self) -> Vec<String> {
        self.pairs.iter().map(|(name, value)| format!("{name}={value}")).collect()
    }

    /// The whole command line, program name first, for `try_parse_from`.
    pub fn command_line(&self) -> Vec<String> {
        std::iter::once(self.role.name().to_string()).chain(self.args()).collect()
    }

    /// The service's `Config` from these flags (and, for flags not given, the
    /// environment and the defaults, as the binary would read them).
    pub fn parse<C: Parser>(&self) -> anyhow::Result<C> {
        C::try_parse_from(self.command_line()).map_err(|e| anyhow::anyhow!("{} flags: {e}", self.role.name()))
    }

    /// Fails when the service would refuse these flags.
    pub fn check(&self) -> anyhow::Result<()> {
        match self.role {
            Role::Producer => self.parse::<producer::Config>().map(drop),
            Role::Relay => self.parse::<relay::Config>().map(drop),
            Role::Consumer => self.parse::<consumer::Config>().map(drop),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_flag_set_again_replaces_its_value() {
        let flags = Flags::relay("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q").with("--admin-addr", "127.0.0.1:7");
        let config: relay::Config = flags.parse().unwrap();
        assert_eq!(config.admin_addr.port(), 7);
        assert_eq!(flags.args().iter().filter(|a| a.starts_with("--admin-addr")).count(), 1);
    }

    #[test]
    fn an_empty_value_stays_a_value() {
        let flags = Flags::relay("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q").with("--retention-cron", "");
        let config: relay::Config = flags.parse().unwrap();
        assert_eq!(config.retention_cron, "");
    }

    #[test]
    fn each_constructor_parses_as_its_service() {
        Flags::producer("sqlite://x.db").check().unwrap();
        Flags::consumer("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q").check().unwrap();
        let config: consumer::Config =
            Flags::consumer("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q").with("--prefetch", 7).parse().unwrap();
        assert_eq!((config.broker.queue.as_str(), config.prefetch), ("/queue/q", 7));
    }

    #[test]
    fn a_value_out_of_its_range_is_refused_before_a_child_starts() {
        let relay = Flags::relay("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q");
        let consumer = Flags::consumer("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q");
        for (flags, flag) in [
            (relay.clone().with("--batch-size", 0), "--batch-size"),
            (relay.with("--broker-url", "bogus://127.0.0.1:1"), "--broker-url"),
            (consumer.with("--prefetch", 0), "--prefetch"),
            (Flags::producer("sqlite://x.db").with("--ops-relays", "ftp://r:1"), "--ops-relays"),
        ] {
            let error = flags.check().unwrap_err();
            assert!(format!("{error:#}").contains(flag), "{error:#}");
        }
    }

    #[test]
    fn a_flag_of_another_service_is_refused() {
        let error = Flags::producer("sqlite://x.db").with("--lease-ms", 1).check().unwrap_err();
        assert!(format!("{error:#}").contains("--lease-ms"), "{error:#}");
    }
}
