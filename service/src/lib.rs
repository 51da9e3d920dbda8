//! How a service runs: the shared flags and the skeleton (`Service`,
//! `run_service`), the HTTP server of every port and its bounds (`serve`,
//! `HttpLimits`), the admin port bound in one call with its door, the answer
//! of an operator route to a store error, the supervisor of essential tasks,
//! the shutdown token and its grace period, the clock of watch loops, and the
//! backoff of retry loops. What a service exports for watching it
//! (telemetry, metrics, health) is `observability`.
//!
//! Invariant: one shutdown token per process, cancelled by SIGINT, SIGTERM or
//! an essential task that stops; work in flight gets the grace period, no more,
//! and so does every HTTP connection, whatever its client holds open.

mod admin;
mod answer;
mod backoff;
mod connection;
mod door;
pub mod flag_ranges;
mod run;
mod server;
mod shutdown;
mod supervisor;

pub use admin::AdminPort;
pub use answer::operator_answer;
pub use backoff::Backoff;
pub use door::{AdminToken, require_admin};
pub use run::{HttpArgs, HttpLimits, Service, ServiceArgs, run_service};
pub use server::serve;
pub use shutdown::{Every, shutdown_on_signals, within_grace};
pub use supervisor::Supervisor;
