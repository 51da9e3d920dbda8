//! One skeleton for the three services: the flags they share (flattened into
//! each service's `Config`, so every default lives in one place), among them
//! the bounds of every HTTP port ([`HttpArgs`]), the [`Service`] each `App`
//! implements, and [`run_service`], which parses, sets up tracing, builds,
//! runs until signalled and turns the outcome into the exit code.
//!
//! Invariant: every shared flag has one default, here, and a range that is
//! refused at start when a value falls outside it.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Flags every service has, with the same names and env vars.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// How long SIGTERM waits for the work in flight (ms, 0-600000: past ten
    /// minutes a deploy would wait on a stuck request as if for ever).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 15_000,
        value_parser = clap::value_parser!(u64).range(0..=600_000))]
    pub shutdown_grace_ms: u64,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Bearer token the admin port's mutating routes (and the producer's ops
    /// actions) require; needed when ADMIN_ADDR (or HTTP_ADDR, for ops actions) is not loopback.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
    #[command(flatten)]
    /// The bounds of every HTTP port (clap ignores this comment on a flattened field).
    pub http: HttpArgs,
}

impl ServiceArgs {
    /// How long work may run on after the shutdown signal.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }

    /// What [`crate::serve`] keeps to on each of the service's HTTP ports.
    pub fn http_limits(&self) -> HttpLimits {
        let http = &self.http;
        HttpLimits {
            header_read: Duration::from_millis(http.http_header_read_timeout_ms),
            idle: Duration::from_millis(http.http_idle_timeout_ms),
            request: Duration::from_millis(http.http_request_timeout_ms),
            max_connections: usize::try_from(http.http_max_connections).unwrap_or(usize::MAX),
            max_buffer_bytes: usize::try_from(http.http_max_buffer_bytes).unwrap_or(usize::MAX),
            grace: self.grace(),
        }
    }
}

/// The bounds of every HTTP port a service opens (the producer's public port
/// and each admin port), each port on its own: what a client may hold, for how long.
#[derive(Debug, Clone, clap::Args)]
pub struct HttpArgs {
    /// How long a client may take to send a request's head, from its first
    /// byte to its blank line (ms); past it the connection is closed.
    #[arg(long, env = "HTTP_HEADER_READ_TIMEOUT_MS", default_value_t = 10_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_header_read_timeout_ms: u64,
    /// How long a connection may wait with no request in service (ms): open
    /// and silent, kept alive between requests, or reading our answer; past it
    /// the connection is closed.
    #[arg(long, env = "HTTP_IDLE_TIMEOUT_MS", default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=3_600_000))]
    pub http_idle_timeout_ms: u64,
    /// How long one request may be in service, its body read and its handler
    /// run (ms); past it the request is answered 408 and its connection closed.
    #[arg(long, env = "HTTP_REQUEST_TIMEOUT_MS", default_value_t = 30_000,
        value_parser = clap::value_parser!(u64).range(100..=600_000))]
    pub http_request_timeout_ms: u64,
    /// Most connections one port holds at once; a connection over it closes
    /// the one that has waited longest with no request in service, or waits
    /// for a connection to end when every one has a request in service.
    #[arg(long, env = "HTTP_MAX_CONNECTIONS", default_value_t = 256,
        value_parser = clap::value_parser!(u64).range(1..=65_536))]
    pub http_max_connections: u64,
    /// Largest buffer one connection reads into (bytes): a request head that
    /// does not fit is answered 431 and its connection closed.
    #[arg(long, env = "HTTP_MAX_BUFFER_BYTES", default_value_t = 16_384,
        value_parser = clap::value_parser!(u64).range(8_192..=1_048_576))]
    pub http_max_buffer_bytes: u64,
}

/// The bounds [`crate::serve`] keeps on one port: [`HttpArgs`] as durations
/// and sizes, and the grace period that bounds its drain.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// From a request's first byte to its whole head.
    pub header_read: Duration,
    /// With no request in service.
    pub idle: Duration,
    /// From a whole head to the handler's answer.
    pub request: Duration,
    /// Connections held at once.
    pub max_connections: usize,
    /// One connection's read buffer, hence its largest request head.
    pub max_buffer_bytes: usize,
    /// After the shutdown signal, before the connections still open are dropped.
    pub grace: Duration,
}

/// What [`run_service`] needs of a service.
pub trait Service: Sized + Send {
    /// The process's name in logs and traces.
    const NAME: &'static str;
    /// The service's flags, with [`ServiceArgs`] flattened in.
    type Config: clap::Parser + Send;
    /// The shared flags inside `config`.
    fn shared(config: &Self::Config) -> &ServiceArgs;
    /// Connects, migrates and binds: everything that can fail before serving.
    fn build(config: Self::Config) -> impl Future<Output = anyhow::Result<Self>> + Send;
    /// The addresses it has bound, by name (`admin`, `http`): for the
    /// `listening:` line, and for tests, which bind port 0.
    fn listening(&self) -> Vec<(&'static str, SocketAddr)>;
    /// Serves until `shutdown`, then drains within the grace period.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// A service's `main`: parse → tracing → build → run until SIGINT/SIGTERM →
/// exit code (0 after a clean stop, 1 when it failed to start or stopped with an error).
pub async fn run_service<S: Service>() -> ExitCode {
    let config = <S::Config as clap::Parser>::parse();
    let telemetry = observability::init_tracing(S::NAME, S::shared(&config).log_json);
    let shutdown = crate::shutdown_on_signals();
    let code = match S::build(config).await {
        Err(error) => {
            tracing::error!(error = format!("{error:#}"), service = S::NAME, "failed to start");
            ExitCode::FAILURE
        }
        Ok(service) => match announce(S::NAME, &service.listening(), service.run(shutdown)).await {
            Ok(()) => ExitCode::SUCCESS,
            Err(error) => {
                tracing::error!(error = format!("{error:#}"), service = S::NAME, "stopped with an error");
                ExitCode::FAILURE
            }
        },
    };
    telemetry.shutdown();
    code
}

/// Prints `NAME listening: admin=ADDR http=ADDR` as the first line on stdout
/// (logs go to stderr), so a supervisor that binds port 0 can read back the
/// ports it got; then runs `run`.
async fn announce<F: Future>(name: &str, addresses: &[(&str, SocketAddr)], run: F) -> F::Output {
    use std::io::Write;
    let named: Vec<String> = addresses.iter().map(|(what, addr)| format!("{what}={addr}")).collect();
    let mut out = std::io::stdout().lock();
    // A closed stdout (a supervisor that does not read it) is not a reason to stop.
    let _ = writeln!(out, "{name} listening: {}", named.join(" ")).and_then(|()| out.flush());
    drop(out);
    run.await
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, clap::Parser)]
    struct Flags {
        #[command(flatten)]
        service: ServiceArgs,
    }

    #[test]
    fn a_shared_setting_out_of_its_range_is_refused_naming_the_setting_and_range() {
        for (flag, value, range) in [
            ("--http-max-buffer-bytes", "4096", "8192..=1048576"),
            ("--http-max-connections", "0", "1..=65536"),
            ("--http-idle-timeout-ms", "10", "100..=3600000"),
            ("--http-header-read-timeout-ms", "700000", "100..=600000"),
            ("--http-request-timeout-ms", "0", "100..=600000"),
            ("--shutdown-grace-ms", "600001", "0..=600000"),
            ("--shutdown-grace-ms", "-1", "--shutdown-grace-ms"),
            ("--http-max-connections", "18446744073709551616", "--http-max-connections"),
        ] {
            let error = Flags::try_parse_from(["service", &format!("{flag}={value}")]).unwrap_err().to_string();
            assert!(error.contains(flag) && error.contains(range), "{error}");
        }
    }

    #[test]
    fn the_http_flags_become_the_servers_limits() {
        let flags = Flags::try_parse_from(["service", "--http-idle-timeout-ms", "1500", "--shutdown-grace-ms", "700"]);
        let limits = flags.unwrap().service.http_limits();
        assert_eq!((limits.idle, limits.grace), (Duration::from_millis(1500), Duration::from_millis(700)));
    }
}
