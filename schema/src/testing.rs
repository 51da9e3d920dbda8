//! Helpers for tests, chaos and the bench that look at the whole database:
//! figures for invariant checks, a bulk loader for backlogs, a held lock, and a
//! fresh SQL Server database. Behind the `testing` feature, so that no service
//! binary holds them.
//!
//! Invariant: their SQL lives in each backend's statement table, so that tests
//! above `schema` run unchanged on SQLite and on SQL Server; a test opens its
//! database once ([`open`]), one pool for the store and its probe.

use std::sync::Arc;

use async_trait::async_trait;

use crate::database_url::{Backend, DatabaseUrl};
use crate::model::{OrderId, OutboxId, Product};
use crate::store::{Store, StoreError};

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

/// A test's database: the store the services would open, and its probe, on one pool.
pub struct TestDb {
    /// What the services see.
    pub store: Arc<dyn Store>,
    /// What only tests see.
    pub probe: Arc<dyn Probe>,
}

/// Opens the database `url` names (running the migrations) as a store and its probe.
pub async fn open(url: &str) -> anyhow::Result<TestDb> {
    open_url(&url.parse()?).await
}

/// [`open`] for a parsed URL (with the timeouts of a service's flags, say).
pub async fn open_url(url: &DatabaseUrl) -> anyhow::Result<TestDb> {
    Ok(match url.connect(crate::Durability::Full).await? {
        Backend::Sqlite(store) => {
            let store = Arc::new(store);
            TestDb { store: store.clone(), probe: store }
        }
        Backend::Mssql(store) => {
            let store = Arc::new(store);
            TestDb { store: store.clone(), probe: store }
        }
    })
}

/// True when `url` names a SQL Server database.
pub fn is_mssql(url: &str) -> bool {
    url.parse::<DatabaseUrl>().is_ok_and(|u| u.is_mssql())
}

/// Creates an empty SQL Server database beside the one `url` names and returns
/// its URL, in the same form (`mssql://…` or ADO.NET) as `url`.
pub async fn fresh_mssql_database(url: &str) -> anyhow::Result<String> {
    let name = crate::mssql::testing::fresh_database(&mssql_config(url)?).await?;
    Ok(with_database(url, &name))
}

/// On a migrated SQL Server database, records the first text of every
/// migration that was replaced since (V3), as a database migrated before the
/// replacement holds it; returns how many records it changed.
pub async fn record_superseded_migrations(url: &str) -> anyhow::Result<u64> {
    crate::mssql::testing::record_superseded(&mssql_config(url)?).await
}

/// Kills every server session the services opened on the SQL Server
/// database `url` names (a failover as they meet it); answers how many.
pub async fn kill_mssql_sessions(url: &str) -> anyhow::Result<i64> {
    crate::mssql::testing::kill_sessions(&mssql_config(url)?).await
}

/// The SQL Server settings of `url`.
fn mssql_config(url: &str) -> anyhow::Result<tiberius::Config> {
    url.parse::<DatabaseUrl>()?.mssql_config().cloned().ok_or_else(|| anyhow::anyhow!("not a SQL Server url"))
}

/// `url` with its database replaced by `database`.
fn with_database(url: &str, database: &str) -> String {
    if url.to_ascii_lowercase().starts_with("server=") {
        let is_database_key = |part: &str| {
            let key = part.split_once('=').map_or(part, |(k, _)| k).trim().to_ascii_lowercase();
            matches!(key.as_str(), "database" | "initial catalog" | "databasename")
        };
        let mut parts: Vec<&str> = crate::database_url::ado_parts(url)
            .into_iter()
            .filter(|p| !p.trim().is_empty() && !is_database_key(p))
            .collect();
        let database = format!("database={database}");
        parts.push(&database);
        return parts.join(";");
    }
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let server = match base.rsplit_once('/') {
        Some((server, _)) if server.contains('@') => server,
        _ => base,
    };
    match query {
        Some(q) => format!("{server}/{database}?{q}"),
        None => format!("{server}/{database}"),
    }
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fresh_database_keeps_the_url_form() {
        assert_eq!(
            with_database("mssql://sa:pw@db:1433/orders?trust_server_certificate=true", "t1"),
            "mssql://sa:pw@db:1433/t1?trust_server_certificate=true"
        );
        assert_eq!(with_database("mssql://sa:pw@db:1433", "t1"), "mssql://sa:pw@db:1433/t1");
        let ado =
            "server=tcp:db,1433;user=sa;password={a;b}; Database=orders;Encrypt=true;TrustServerCertificate=true;";
        let fresh = with_database(ado, "t1");
        assert_eq!(
            fresh,
            "server=tcp:db,1433;user=sa;password={a;b};Encrypt=true;TrustServerCertificate=true;database=t1"
        );
        assert!(is_mssql(&fresh), "still a SQL Server URL: {fresh}");
    }
}
