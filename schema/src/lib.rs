//! Storage and shared types for orderflow: the only crate that knows SQL.
//!
//! Invariant: every store method is one whole unit of work, so its transaction
//! lives inside the backend and nothing above this crate sees a driver type.

mod database_url;
mod decide;
pub mod incidents;
pub mod limits;
pub mod messages;
pub mod model;
mod mssql;
pub mod pricing;
mod sqlite;
mod statements;
mod store;
#[cfg(feature = "testing")]
pub mod testing;
mod timestamps;

pub use database_url::{COMMAND_TIMEOUT_MS_RANGE, CONNECT_TIMEOUT_MS_RANGE, DatabaseArgs, DatabaseUrl, Durability};
pub use incidents::{FailureGroup, IncidentAdmin, ReplayReport, Replayed, Skipped};
pub use model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
pub(crate) use mssql::MssqlStore;
pub(crate) use sqlite::SqliteStore;
pub use store::{
    Applied, AuditAction, AuditEntry, Cause, DeadLetter, DeadLetterEntry, Delivery, FailedAttempt, FailureOutcome,
    OrderCounts, OrderStore, OutboxAdmin, OutboxStats, OutboxStore, ParkedRow, Placed, ProcessingStore, Reconciliation,
    RequeueTarget, STALE_PUBLISHED_SECS, Store, StoreError, UndeliverableLetter,
};

/// Round trips this process has made to SQL Server (each statement or batch
/// sent and answered), for `orderflow_db_round_trips_total`; 0 on SQLite.
pub fn round_trips() -> u64 {
    mssql::ROUND_TRIPS.load(std::sync::atomic::Ordering::Relaxed)
}
