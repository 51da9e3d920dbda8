//! The supervisor of a service's essential tasks (its admin server, its
//! watch loops).
//!
//! Invariant: an essential task that ends while the service runs, for
//! whatever reason (an error, a panic, a plain return), cancels the service's
//! shutdown token, so the service drains and stops, and is reported by
//! [`Supervisor::stop`], so the process exits non-zero. The admin server
//! drains from the shutdown signal, within the grace period, so no admin
//! client can hold [`Supervisor::stop`] up.

use observability::Readiness;
use tokio_util::sync::CancellationToken;

use crate::AdminPort;

/// The tasks a service cannot do without; one that ends before
/// [`Supervisor::stop`] shuts the service down and fails it.
pub struct Supervisor {
    tasks: tokio::task::JoinSet<anyhow::Result<()>>,
    stop: CancellationToken,
    shutdown: CancellationToken,
}

impl Supervisor {
    /// Tasks that cancel `shutdown` when one of them fails.
    pub fn new(shutdown: &CancellationToken) -> Self {
        Self { tasks: tokio::task::JoinSet::new(), stop: CancellationToken::new(), shutdown: shutdown.clone() }
    }

    /// The token the tasks must stop on (cancelled by [`Supervisor::stop`]).
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

    /// Serves the admin port until [`Supervisor::stop`]: `/metrics` from its
    /// registry, `/healthz`, `/readyz` from `readiness`, and the service's own `routes`.
    /// It drains from the shutdown signal (or the stop, if that comes first),
    /// alongside the service's own drain, so both fit in one grace period.
    pub fn serve_admin(&mut self, admin: AdminPort, readiness: Readiness, routes: axum::Router) {
        let router = observability::admin_router(admin.registry, readiness).merge(routes);
        let (stop, drain) = (self.stop_token(), self.shutdown.child_token());
        self.spawn("admin server", async move {
            let serving = crate::serve(admin.listener, router, admin.limits, drain.clone());
            tokio::pin!(serving);
            tokio::select! {
                () = &mut serving => {}
                () = stop.cancelled() => {
                    drain.cancel();
                    serving.await;
                }
            }
            // Drained by the shutdown signal, it ends cleanly only with the supervisor.
            stop.cancelled().await;
            Ok(())
        });
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
    use std::time::Duration;

    use super::*;

    /// Supervisor holding one task that runs until told to stop.
    fn with_a_watch(shutdown: &CancellationToken) -> Supervisor {
        let mut supervisor = Supervisor::new(shutdown);
        let stop = supervisor.stop_token();
        supervisor.spawn("watch", async move {
            stop.cancelled().await;
            Ok(())
        });
        supervisor
    }

    #[tokio::test]
    async fn tasks_that_end_on_stop_are_a_clean_stop() {
        let shutdown = CancellationToken::new();
        let supervisor = with_a_watch(&shutdown);
        assert!(supervisor.stop().await.is_ok());
        assert!(!shutdown.is_cancelled());
    }

    #[tokio::test]
    async fn a_task_that_ends_early_shuts_the_service_down_and_fails_it() {
        for early in [Ok(()), Err(anyhow::anyhow!("port closed"))] {
            let shutdown = CancellationToken::new();
            let mut supervisor = with_a_watch(&shutdown);
            supervisor.spawn("admin server", async move { early });
            tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled()).await.expect("shutdown fired");
            let error = supervisor.stop().await.expect_err("the early end is reported");
            assert!(format!("{error:#}").contains("admin server"), "{error:#}");
        }
    }

    #[tokio::test]
    async fn a_panicking_task_is_a_failure() {
        let shutdown = CancellationToken::new();
        let mut supervisor = Supervisor::new(&shutdown);
        supervisor.spawn("admin server", async { panic!("boom") });
        tokio::time::timeout(Duration::from_secs(5), shutdown.cancelled()).await.expect("shutdown fired");
        let error = supervisor.stop().await.expect_err("a panic is a failure");
        assert!(format!("{error:#}").contains("panicked"), "{error:#}");
    }
}
