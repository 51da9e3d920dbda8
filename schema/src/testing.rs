//! Helpers for tests and the bench that look at the whole database: figures for
//! invariant checks, a bulk loader for backlogs, and a fresh SQL Server database.
//!
//! Invariant: the SQL for these lives here, beside each backend, so that tests
//! above `schema` run unchanged on SQLite and on SQL Server.

use std::sync::Arc;

use async_trait::async_trait;

use crate::model::{OrderId, OutboxId, Product};
use crate::store::StoreError;

/// Whole-database figures for the end-of-test invariants.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Tally {
    /// Every order.
    pub orders: i64,
    /// Orders `processed`.
    pub processed: i64,
    /// Orders `failed`.
    pub failed: i64,
    /// Orders `published`.
    pub published: i64,
    /// Every outbox row.
    pub outbox: i64,
    /// Outbox rows not yet published (parked ones included).
    pub unpublished: i64,
    /// Outbox rows published.
    pub published_rows: i64,
    /// Outbox rows parked.
    pub parked: i64,
    /// Outbox rows with a lease owner.
    pub leased: i64,
    /// Inbox rows.
    pub inbox: i64,
    /// Inbox rows whose outbox id is one of our outbox rows.
    pub inbox_from_outbox: i64,
    /// Processed orders whose prices are not list price less 10 %, times quantity.
    pub mispriced: i64,
}

pub use crate::store::AuditEntry;

/// A write lock another session holds (for fault tests) until [`Held::release`].
pub struct Held {
    release: tokio::sync::oneshot::Sender<()>,
    released: tokio::sync::oneshot::Receiver<()>,
}

impl Held {
    /// Holds a lock until released: `release` ends it, and the holder answers
    /// on `released` once the lock is gone.
    pub(crate) fn new(release: tokio::sync::oneshot::Sender<()>, released: tokio::sync::oneshot::Receiver<()>) -> Self {
        Self { release, released }
    }

    /// Gives the lock up, and returns once it is gone.
    pub async fn release(self) {
        let _ = self.release.send(());
        let _ = self.released.await;
    }
}

/// Orders per transaction of [`Probe::bulk_history`].
pub const HISTORY_CHUNK: usize = 100_000;

/// Test-only access to a backend.
#[async_trait]
pub trait Probe: Send + Sync {
    /// Whole-database figures.
    async fn tally(&self) -> Result<Tally, StoreError>;
    /// The `traceparent` of each outbox row of `order`, oldest first.
    async fn traceparents(&self, order: OrderId) -> Result<Vec<Option<String>>, StoreError>;
    /// Every audit entry, oldest first.
    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError>;
    /// Inbox rows for `outbox_id` (0 or 1).
    async fn inbox_rows(&self, outbox_id: OutboxId) -> Result<i64, StoreError>;
    /// The outbox ids of one order's rows.
    async fn outbox_ids(&self, order: OrderId) -> Result<Vec<OutboxId>, StoreError>;
    /// Adds a product to the catalogue.
    async fn add_product(&self, product: &Product) -> Result<(), StoreError>;
    /// Inserts `n` orders of `P123 × 2` with their outbox rows in one
    /// transaction (a backlog); `payload_pad` bytes of padding make each
    /// message that much bigger. Returns the outbox ids in order.
    async fn bulk_orders(&self, n: usize, payload_pad: usize) -> Result<Vec<OutboxId>, StoreError>;
    /// Adds `n` orders processed 30 days ago, each with its published outbox
    /// row and its inbox row (years of history, for the bench), set-based in
    /// transactions of [`HISTORY_CHUNK`] orders.
    async fn bulk_history(&self, n: usize) -> Result<(), StoreError>;
    /// Holds a write lock on `order`'s row from another session (on SQLite,
    /// which locks files, the whole database) until released: an outage as a
    /// writer sees it, which must wait, then fail as transient.
    async fn hold_order(&self, order: OrderId) -> Result<Held, StoreError>;
    /// Holds a write lock from another session that every write placing an
    /// order or moving its status waits for (on SQLite the database's write
    /// lock, so every writer; on SQL Server every order counter's row), until
    /// released: the database outage of the chaos run.
    async fn hold_write_lock(&self) -> Result<Held, StoreError>;
    /// Deletes every order, outbox, inbox and audit row.
    async fn clear(&self) -> Result<(), StoreError>;
}

/// Connects to the database named by `url` (running the migrations), for tests.
pub async fn probe(url: &str) -> anyhow::Result<Arc<dyn Probe>> {
    let url: crate::DatabaseUrl = url.parse()?;
    Ok(match url.target {
        crate::database_url::Target::Sqlite { path, options } => {
            Arc::new(crate::SqliteStore::open_at(&path, &options, crate::Durability::Full).await?)
        }
        crate::database_url::Target::Mssql(config) => Arc::new(crate::MssqlStore::connect(*config).await?),
    })
}

/// True when `url` names a SQL Server database.
pub fn is_mssql(url: &str) -> bool {
    url.parse::<crate::DatabaseUrl>().is_ok_and(|u| u.is_mssql())
}

/// Creates an empty SQL Server database beside the one `url` names and returns
/// its URL, in the same form (`mssql://…` or ADO.NET) as `url`.
pub async fn fresh_mssql_database(url: &str) -> anyhow::Result<String> {
    crate::mssql::fresh_database(url).await
}

/// On a migrated SQL Server database, records the first text of every
/// migration that was replaced since (V3), as a database migrated before the
/// replacement holds it; returns how many records it changed.
pub async fn record_superseded_migrations(url: &str) -> anyhow::Result<u64> {
    crate::mssql::record_superseded(url).await
}

/// The payload of a bulk-loaded order: an `OrderPlacedV1` for `P123 × 2`, padded.
pub(crate) fn bulk_payload(order_id: i64, name: &str, outbox_id: OutboxId, pad: usize) -> String {
    let mut payload = serde_json::json!({"order_id": order_id, "customer_name": name, "product_id": "P123",
        "quantity": 2, "version": 1, "outbox_id": outbox_id});
    if pad > 0 {
        payload["pad"] = serde_json::json!("x".repeat(pad));
    }
    payload.to_string()
}
