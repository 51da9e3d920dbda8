//! One skeleton for the three services: the flags they share (flattened into
//! each service's `Config`, so every default lives in one place), the
//! [`Service`] each `App` implements, and [`run_service`], which parses, sets
//! up tracing, builds, runs until signalled and turns the outcome into the exit code.

use std::net::SocketAddr;
use std::process::ExitCode;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

/// Flags every service has, with the same names and env vars.
#[derive(Debug, Clone, clap::Args)]
pub struct ServiceArgs {
    /// How long SIGTERM waits for the work in flight (ms).
    #[arg(long, env = "SHUTDOWN_GRACE_MS", default_value_t = 15_000)]
    pub shutdown_grace_ms: u64,
    /// Log JSON lines instead of text.
    #[arg(long, env = "LOG_JSON", default_value_t = false)]
    pub log_json: bool,
    /// Bearer token the admin port's mutating routes (and the producer's ops
    /// actions) require; needed when ADMIN_ADDR (or HTTP_ADDR, for ops actions) is not loopback.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

impl ServiceArgs {
    /// How long work may run on after the shutdown signal.
    pub fn grace(&self) -> Duration {
        Duration::from_millis(self.shutdown_grace_ms)
    }
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
