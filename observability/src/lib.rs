//! What every service shares for watching it: logging and tracing set-up
//! with W3C trace-context propagation, the metrics registry, readiness, and
//! the admin router (`/metrics`, `/healthz`, `/readyz`). How a service runs
//! (flags, start-up, supervision, shutdown, the admin door) is the `service` crate.
//!
//! Invariant: the admin port never serves business traffic, and `/readyz`
//! answers 503 until every readiness component has reported healthy.

mod admin;
mod telemetry;

pub use admin::{Readiness, admin_router, new_registry};
pub use telemetry::{Telemetry, continue_trace, init_tracing, span_layer, trace_headers, trace_id_of};
