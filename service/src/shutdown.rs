//! One cancellation token per process, cancelled by SIGINT or SIGTERM; the
//! grace period that bounds what runs after it; the clock of watch loops.
//! (The HTTP server that drains on the token is `server.rs`.)
//!
//! Invariant: the token is cancelled once, by the first signal; what waits on
//! it with [`within_grace`] gives up after the grace period.

use std::time::Duration;

use error_reporter::Report;
use tokio_util::sync::CancellationToken;

/// Returns a token that is cancelled on the first SIGINT or SIGTERM.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let trigger = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(error) => {
                    tracing::warn!(error = %Report::new(&error), "cannot listen for SIGTERM");
                    std::future::pending::<()>().await;
                }
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT received, shutting down"),
            _ = term => tracing::info!("SIGTERM received, shutting down"),
        }
        trigger.cancel();
    });
    token
}

/// Runs `work` to its end, but gives up `grace` after `shutdown` fires:
/// `Some(output)` when the work finished, `None` when the grace period ran out.
pub async fn within_grace<T>(
    work: impl Future<Output = T>,
    shutdown: &CancellationToken,
    grace: Duration,
) -> Option<T> {
    let expired = async {
        shutdown.cancelled().await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        output = work => Some(output),
        _ = expired => None,
    }
}

/// The clock of a watch loop (gauges, readiness checks):
/// `while every.tick().await { ... }` turns at once, then once per period,
/// and ends when `stop` is cancelled.
pub struct Every {
    interval: tokio::time::Interval,
    stop: CancellationToken,
}

impl Every {
    /// Turns every `period` until `stop` is cancelled.
    pub fn new(period: Duration, stop: CancellationToken) -> Self {
        Self { interval: tokio::time::interval(period), stop }
    }

    /// Waits for the next turn: true, or false once `stop` is cancelled.
    pub async fn tick(&mut self) -> bool {
        tokio::select! {
            biased;
            _ = self.stop.cancelled() => false,
            _ = self.interval.tick() => true,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn every_turns_at_once_then_each_period_until_stopped() {
        let stop = CancellationToken::new();
        let mut every = Every::new(Duration::from_secs(1), stop.clone());
        let started = tokio::time::Instant::now();
        let mut turns = Vec::new();
        while every.tick().await {
            turns.push(started.elapsed().as_secs());
            if turns.len() == 3 {
                stop.cancel();
            }
        }
        assert_eq!(turns, [0, 1, 2], "turns at 0 s, 1 s and 2 s, none after the stop");
    }
}
