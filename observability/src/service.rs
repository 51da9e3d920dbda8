//! One skeleton for the three services: the flags they share (flattened into
//! each service's `Config`, so every default lives in one place) and
//! [`run_service`], which parses, sets up tracing, builds, runs until signalled
//! and turns the outcome into the exit code.

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
    /// The addresses it has bound, by name (`admin`, `http`).
    fn listening(&self) -> Vec<(&'static str, SocketAddr)>;
    /// Serves until `shutdown`, then drains within the grace period.
    fn run(self, shutdown: CancellationToken) -> impl Future<Output = anyhow::Result<()>> + Send;
}

/// Implements [`Service`] for a service's `App` whose own `build(Config)` and
/// `run(self, shutdown)` do the work, whose `listening()` names its bound
/// addresses, and whose `Config` holds the shared flags in its `service` field:
/// `observability::service!(App, Config, "relay");`.
#[macro_export]
macro_rules! service {
    ($app:ty, $config:ty, $name:literal) => {
        impl $crate::Service for $app {
            const NAME: &'static str = $name;
            type Config = $config;

            fn shared(config: &$config) -> &$crate::ServiceArgs {
                &config.service
            }

            async fn build(config: $config) -> ::anyhow::Result<Self> {
                <$app>::build(config).await
            }

            fn listening(&self) -> Vec<(&'static str, ::std::net::SocketAddr)> {
                <$app>::listening(self)
            }

            async fn run(self, shutdown: $crate::CancellationToken) -> ::anyhow::Result<()> {
                <$app>::run(self, shutdown).await
            }
        }
    };
}

/// A service's `main`: parse → tracing → build → run until SIGINT/SIGTERM →
/// exit code (0 after a clean stop, 1 when it failed to start or stopped with an error).
pub async fn run_service<S: Service>() -> ExitCode {
    let config = <S::Config as clap::Parser>::parse();
    let telemetry = crate::init_tracing(S::NAME, S::shared(&config).log_json);
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

/// The tasks a service cannot do without (its admin server, its watch loop).
/// When one ends before [`Essentials::stop`], for whatever reason, the
/// service's shutdown token is cancelled, so the service drains and stops,
/// and `stop` reports the failure, so the process exits non-zero.
pub struct Essentials {
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    stop: CancellationToken,
    shutdown: CancellationToken,
}

impl Essentials {
    /// Tasks that cancel `shutdown` when one of them fails.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self { tasks: tokio::task::JoinSet::new(), stop: CancellationToken::new(), shutdown: shutdown.clone() }
    }

    /// The token the tasks must stop on (cancelled by [`Essentials::stop`]).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Runs `task` as an essential task named `name`.
    pub fn spawn<F>(&mut self, name: &'static str, task: F)
    where
        F: Future<Output = anyhow::Result<()>> + Send + 'static,
    {
        let (stop, shutdown) = (self.stop.clone(), self.shutdown.clone());
        self.tasks.spawn(async move {
            let outcome = match tokio::spawn(task).await {
                Ok(outcome) => outcome,
                Err(panic) => Err(anyhow::anyhow!("panicked: {panic}")),
            };
            let error = match outcome {
                Ok(()) if stop.is_cancelled() => return Ok(()),
                Ok(()) => anyhow::anyhow!("{name} ended while the service was running"),
                Err(error) => error.context(name),
            };
            if !stop.is_cancelled() {
                tracing::error!(error = format!("{error:#}"), task = name, "an essential task stopped; shutting down");
                shutdown.cancel();
            }
            Err(error)
        });
    }

    /// Serves the admin `router` on `listener` until [`Essentials::stop`].
    pub fn serve_admin(&mut self, listener: tokio::net::TcpListener, router: axum::Router) {
        let stop = self.stop_token();
        self.spawn("admin server", async move { Ok(crate::serve(listener, router, stop).await?) });
    }

    /// Stops every task and waits for them: the first failure, if any.
    pub async fn stop(mut self) -> anyhow::Result<()> {
        self.stop.cancel();
        let mut first = Ok(());
        while let Some(joined) = self.tasks.join_next().await {
            let outcome = joined.map_err(anyhow::Error::from).and_then(|outcome| outcome);
            if let (Err(error), true) = (outcome, first.is_ok()) {
                first = Err(error);
            }
        }
        first
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Essentials holding one task that runs until told to stop.
    fn with_a_watch(shutdown: &CancellationToken) -> Essentials {
        let mut essentials = Essentials::new(shutdown);
        let stop = essentials.stop_token();
        essentials.spawn("watch", async move {
            stop.cancelled().await;
            Ok(())
        });
        essentials
    }

    #[tokio::test]
    async fn tasks_that_end_on_stop_are_a_clean_stop() {
        let shutdown = CancellationToken::new();
        let essentials = with_a_watch(&shutdown);
        assert!(essentials.stop().await.is_ok());
        assert!(!shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_ends_early_shuts_the_service_down_and_fails_it() {
        for early in [Ok(()), Err(anyhow::anyhow!("port closed"))] {
            let shutdown = CancellationToken::new();
            let mut essentials = with_a_watch(&shutdown);
            essentials.spawn("admin server", async move { early });
            tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled()).await.expect("shutdown fired");
            let error = essentials.stop().await.expect_err("the early end is reported");
            assert!(format!("{error:#}").contains("admin server"), "{error:#}");
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_a_failure() {
        let shutdown = CancellationToken::new();
        let mut essentials = Essentials::new(&shutdown);
        essentials.spawn("admin server", async { panic!("boom") });
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled()).await.expect("shutdown fired");
        let error = essentials.stop().await.expect_err("a panic is a failure");
        assert!(format!("{error:#}").contains("panicked"), "{error:#}");
    }
}
