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
pub mod store;

pub mod testing;

use std::sync::Arc;

use anyhow::Context;

pub use database_url::{DatabaseArgs, DatabaseUrl};
pub use incidents::{FailureGroup, IncidentAdmin, ReplayReport, Replayed, Skipped};
pub use model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
pub use mssql::MssqlStore;
pub use sqlite::SqliteStore;
pub use store::{
    Applied, AuditEntry, Cause, DeadLetter, DeadLetterEntry, Delivery, FailureOutcome, OrderCounts, OrderStore,
    OutboxAdmin, OutboxStats, OutboxStore, ParkedRow, Placed, ProcessOutcome, ProcessingStore, Reconciliation,
    RequeueTarget, Store, StoreError, UndeliverableLetter,
};

/// Every SQL Server statement this crate sends, for the T-SQL parser test.
pub fn mssql_statements() -> Vec<(&'static str, String)> {
    mssql::statements()
}

/// Round trips this process has made to SQL Server (each statement or batch
/// sent and answered), for `orderflow_db_round_trips_total`; 0 on SQLite.
pub fn round_trips() -> u64 {
    mssql::ROUND_TRIPS.load(std::sync::atomic::Ordering::Relaxed)
}

/// Connects to the database named by `url` and runs the migrations (tools and
/// tests; services parse their [`DatabaseUrl`] at start-up and call [`connect_to`]).
pub async fn connect(url: &str) -> anyhow::Result<Arc<dyn Store>> {
    connect_with(url, Durability::Full).await
}

/// How much of a service's own commits must survive a power cut.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Every commit is on disk when it returns: what a 201 or an ACK promises.
    Full,
    /// For writes that are redone anyway (the relay's leases and marks: a lost
    /// lease lapses, a lost mark sends the message again and the consumer
    /// dedupes). On SQLite the commit skips its fsync (`synchronous = NORMAL`);
    /// WAL is written in order, so the next durable commit of any process
    /// makes it durable too, and only the relay's last commits before a power
    /// cut (never a crash) can be lost. SQL Server is always durable.
    Relaxed,
}

/// [`connect`] with the durability the service's writes need.
pub async fn connect_with(url: &str, durability: Durability) -> anyhow::Result<Arc<dyn Store>> {
    connect_to(&url.parse()?, durability).await
}

/// Connects to `url` and runs the migrations; a `synchronous=` option in a
/// SQLite URL wins over `durability`.
pub async fn connect_to(url: &DatabaseUrl, durability: Durability) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match &url.target {
        database_url::Target::Sqlite { path, options } => Arc::new(
            SqliteStore::open_at(path, options, durability)
                .await
                .with_context(|| format!("opening sqlite database {}", path.display()))?,
        ),
        database_url::Target::Mssql(config) => {
            Arc::new(MssqlStore::connect((**config).clone()).await.context("connecting to sql server")?)
        }
    })
}
