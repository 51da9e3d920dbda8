//! What every service shares for running and watching it: logging set-up, the
//! metrics registry, the admin router (`/metrics`, `/healthz`, `/readyz`), and
//! the shutdown signal.
//!
//! Invariant: the admin port never serves business traffic, and `/readyz`
//! answers 503 until every readiness component has reported healthy.

mod admin;
mod backoff;
mod shutdown;

pub use admin::{Readiness, admin_router, new_registry, serve};
pub use backoff::Backoff;
pub use shutdown::shutdown_on_signals;

/// Installs the global tracing subscriber: `RUST_LOG` filter (default `info`),
/// text or JSON lines on stderr.
pub fn init_tracing(json: bool) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    let result = if json { builder.json().try_init() } else { builder.try_init() };
    if let Err(error) = result {
        eprintln!("tracing already initialised: {error}");
    }
}
