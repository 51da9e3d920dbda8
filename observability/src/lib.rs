//! What every service shares for running and watching it: logging and tracing set-up, the
//! metrics registry, the admin router (`/metrics`, `/healthz`, `/readyz`), and
//! the shutdown signal, and the service skeleton (shared flags, `run_service`).
//!
//! Invariant: the admin port never serves business traffic, and `/readyz`
//! answers 503 until every readiness component has reported healthy.

#![warn(missing_docs)]

mod admin;
mod backoff;
mod doors;
mod service;
mod shutdown;
mod telemetry;

pub use admin::{Readiness, admin_router, new_registry, serve};
pub use backoff::Backoff;
pub use doors::{AdminToken, require_admin};
pub use service::{Essentials, Service, ServiceArgs, run_service};
pub use shutdown::{Every, shutdown_on_signals, within_grace};
pub use telemetry::{Telemetry, continue_trace, init_tracing, span_layer, trace_headers, trace_id_of};
/// The shutdown token every service runs until.
pub use tokio_util::sync::CancellationToken;
