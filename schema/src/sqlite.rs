//! SQLite backend: rusqlite behind a deadpool-sqlite pool, WAL mode.
//!
//! Invariant: every write runs in a `BEGIN IMMEDIATE` transaction, so writers
//! queue on the busy timeout instead of failing on a lock upgrade, and time
//! comes from SQLite's clock (`strftime('now')`), never the caller's.

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use deadpool_sqlite::{Config, Hook, HookError, Pool, PoolConfig, Runtime};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use rust_decimal::Decimal;
use tokio::sync::{mpsc, oneshot};

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
use crate::pricing::Priced;
use crate::store::{
    FailureOutcome, OrderCounts, OrderStore, OutboxStats, OutboxStore, ParkedRow, Placed, ProcessOutcome,
    ProcessingStore, Reconciliation, RequeueTarget, StoreError, add_count,
};

mod migrations {
    refinery::embed_migrations!("migrations/sqlite");
}

/// The database clock as stored text (ISO 8601, milliseconds, UTC).
const NOW: &str = "strftime('%Y-%m-%dT%H:%M:%fZ', 'now')";
const ORDER_COLUMNS: &str = "order_id, customer_name, product_id, quantity, status, unit_price, total_price, \
     failure_reason, created_at, processed_at";
const PRAGMAS: &str = "PRAGMA journal_mode = WAL; PRAGMA synchronous = NORMAL; \
     PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON;";

/// Most orders committed together by the group-commit writer.
const MAX_ORDERS_PER_COMMIT: usize = 256;

/// The embedded default backend.
#[derive(Clone)]
pub struct SqliteStore {
    pool: Pool,
    /// One write transaction at a time from this process: SQLite has a single
    /// writer anyway, and queueing here is far cheaper than its busy handler,
    /// which sleeps for milliseconds when connections collide.
    writer: Arc<tokio::sync::Mutex<()>>,
    /// Orders to place, committed in groups by [`place_orders`].
    orders: mpsc::Sender<PlaceRequest>,
}

struct PlaceRequest {
    order: NewOrder,
    reply: oneshot::Sender<Result<Placed, StoreError>>,
}

impl SqliteStore {
    /// Opens (creating if needed) the database file and runs the migrations.
    /// `path` may end in `?busy_timeout_ms=N`: how long a writer waits for the
    /// lock before the store reports the database unavailable (default 10 s).
    pub async fn open(path: &str) -> anyhow::Result<Self> {
        let (path, busy_ms) = match path.split_once('?') {
            Some((p, query)) => (p, parse_busy_timeout(query)?),
            None => (path, 10_000),
        };
        let path = PathBuf::from(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir)?;
        }
        let migrate_path = path.clone();
        tokio::task::spawn_blocking(move || migrate(&migrate_path)).await??;
        let pool = Config { path, pool: Some(PoolConfig::new(8)) }
            .builder(Runtime::Tokio1)?
            .post_create(Hook::async_fn(move |conn, _| {
                Box::pin(async move {
                    conn.interact(move |c| {
                        c.execute_batch(PRAGMAS)?;
                        c.busy_timeout(Duration::from_millis(busy_ms))
                    })
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .map_err(HookError::Backend)
                })
            }))
            .build()?;
        let (orders, queue) = mpsc::channel(4 * MAX_ORDERS_PER_COMMIT);
        let store = Self { pool, writer: Arc::new(tokio::sync::Mutex::new(())), orders };
        tokio::spawn(place_orders(store.clone_without_queue(), queue));
        Ok(store)
    }

    /// A handle for the group-commit task: holding the order queue's sender
    /// would keep the task alive forever.
    fn clone_without_queue(&self) -> WriterHandle {
        WriterHandle { pool: self.pool.clone(), writer: self.writer.clone() }
    }

    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.pool.get().await.map_err(|e| StoreError::Unavailable(format!("sqlite pool: {e}")))?;
        conn.interact(f).await.map_err(|e| StoreError::Unavailable(format!("sqlite worker: {e}")))?
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.clone_without_queue().write(f).await
    }
}

/// What the group-commit task needs: the pool and the writer lock.
struct WriterHandle {
    pool: Pool,
    writer: Arc<tokio::sync::Mutex<()>>,
}

impl WriterHandle {
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let _one_writer = self.writer.lock().await;
        let conn = self.pool.get().await.map_err(|e| StoreError::Unavailable(format!("sqlite pool: {e}")))?;
        conn.interact(move |conn| {
            let tx = conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
            let out = f(&tx)?;
            tx.commit()?;
            Ok(out)
        })
        .await
        .map_err(|e| StoreError::Unavailable(format!("sqlite worker: {e}")))?
    }
}

/// Group commit: orders waiting at the same moment are written in one
/// transaction, each inside its own savepoint, so one order's failure never
/// touches another's and each order still commits with its outbox row.
async fn place_orders(writer: WriterHandle, mut queue: mpsc::Receiver<PlaceRequest>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_ORDERS_PER_COMMIT {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (orders, replies): (Vec<NewOrder>, Vec<_>) = batch.into_iter().map(|r| (r.order, r.reply)).unzip();
        let results = writer
            .write(move |tx| {
                Ok(orders
                    .into_iter()
                    .map(|order| {
                        tx.execute_batch("SAVEPOINT place_order")?;
                        match place_one(tx, order) {
                            Ok(placed) => {
                                tx.execute_batch("RELEASE place_order")?;
                                Ok(placed)
                            }
                            Err(error) => {
                                tx.execute_batch("ROLLBACK TO place_order; RELEASE place_order")?;
                                Err(error)
                            }
                        }
                    })
                    .collect::<Vec<Result<Placed, StoreError>>>())
            })
            .await;
        match results {
            Ok(results) => {
                for (reply, result) in replies.into_iter().zip(results) {
                    let _ = reply.send(result);
                }
            }
            Err(error) => {
                for reply in replies {
                    let _ = reply.send(Err(error.clone()));
                }
            }
        }
    }
}

/// One order and its outbox row (inside the caller's transaction).
fn place_one(tx: &Connection, order: NewOrder) -> Result<Placed, StoreError> {
    if let Some(key) = &order.idempotency_key {
        let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE idempotency_key = ?1");
        if let Some(existing) = tx.query_row(&sql, [key], order_from_row).optional()? {
            return Ok(Placed::Existing(existing));
        }
    }
    let sql = format!(
        "INSERT INTO orders (customer_name, product_id, quantity, idempotency_key) \
         VALUES (?1, ?2, ?3, ?4) RETURNING {ORDER_COLUMNS}"
    );
    let stored = tx.prepare_cached(&sql)?.query_row(
        params![order.customer_name, order.product_id, order.quantity, order.idempotency_key],
        order_from_row,
    )?;
    insert_outbox(tx, &stored, order.traceparent.as_deref(), order.tracestate.as_deref(), Some(stored.created_at))?;
    Ok(Placed::Created(stored))
}

fn parse_busy_timeout(query: &str) -> anyhow::Result<u64> {
    let mut busy = 10_000;
    for pair in query.split('&').filter(|p| !p.is_empty()) {
        match pair.split_once('=') {
            Some(("busy_timeout_ms", v)) => busy = v.parse()?,
            _ => anyhow::bail!("unknown sqlite url option {pair:?} (known: busy_timeout_ms)"),
        }
    }
    Ok(busy)
}

/// Runs the migrations under an exclusive lock on a sidecar file, so that
/// several services starting at once apply them exactly once.
fn migrate(path: &Path) -> anyhow::Result<()> {
    let lock_path = path.with_extension("migrate.lock");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    lock.lock()?;
    let mut conn = Connection::open(path)?;
    conn.execute_batch(PRAGMAS)?;
    migrations::migrations::runner().run(&mut conn)?;
    drop(lock);
    Ok(())
}

impl From<rusqlite::Error> for StoreError {
    fn from(e: rusqlite::Error) -> Self {
        use rusqlite::ErrorCode;
        match &e {
            rusqlite::Error::QueryReturnedNoRows => StoreError::NotFound,
            rusqlite::Error::SqliteFailure(f, _) => match f.code {
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure => StoreError::Unavailable(e.to_string()),
                ErrorCode::ConstraintViolation => StoreError::Conflict(e.to_string()),
                _ => StoreError::Other(e.to_string()),
            },
            _ => StoreError::Other(e.to_string()),
        }
    }
}

fn parse_time(text: &str) -> rusqlite::Result<DateTime<Utc>> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn parse_decimal(text: Option<String>) -> rusqlite::Result<Option<Decimal>> {
    text.map(|t| {
        Decimal::from_str(&t)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
    })
    .transpose()
}

fn order_from_row(row: &Row<'_>) -> rusqlite::Result<Order> {
    let status: String = row.get(4)?;
    Ok(Order {
        order_id: OrderId(row.get(0)?),
        customer_name: row.get(1)?,
        product_id: row.get(2)?,
        quantity: row.get(3)?,
        status: OrderStatus::from_str(&status)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(4, rusqlite::types::Type::Text, e.into()))?,
        unit_price: parse_decimal(row.get(5)?)?,
        total_price: parse_decimal(row.get(6)?)?,
        failure_reason: row.get(7)?,
        created_at: parse_time(&row.get::<_, String>(8)?)?,
        processed_at: row.get::<_, Option<String>>(9)?.as_deref().map(parse_time).transpose()?,
    })
}

fn outbox_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    let id: String = row.get(0)?;
    Ok(OutboxRow {
        outbox_id: OutboxId::from_str(&id)
            .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))?,
        order_id: OrderId(row.get(1)?),
        event_type: row.get(2)?,
        payload: row.get(3)?,
        traceparent: row.get(4)?,
        tracestate: row.get(5)?,
        created_at: parse_time(&row.get::<_, String>(6)?)?,
        attempts: row.get(7)?,
    })
}

fn load_order(conn: &Connection, order_id: OrderId) -> Result<Option<Order>, StoreError> {
    let sql = format!("SELECT {ORDER_COLUMNS} FROM orders WHERE order_id = ?1");
    Ok(conn.query_row(&sql, [order_id.0], order_from_row).optional()?)
}

/// Records an inbox row; false when the outbox id was seen before.
fn record_inbox(tx: &Connection, outbox_id: Option<OutboxId>, order_id: OrderId) -> Result<bool, StoreError> {
    let Some(id) = outbox_id else { return Ok(true) };
    let inserted = tx
        .prepare_cached("INSERT INTO inbox (outbox_id, order_id) VALUES (?1, ?2) ON CONFLICT (outbox_id) DO NOTHING")?
        .execute(params![id.to_string(), order_id.0])?;
    Ok(inserted == 1)
}

/// One message's effect inside the batch's transaction.
fn process_one(
    tx: &Connection,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    price: fn(Decimal, i32) -> Priced,
) -> Result<ProcessOutcome, StoreError> {
    let found: Option<(String, i32, String, Option<String>)> = tx
        .prepare_cached(
            "SELECT o.status, o.quantity, o.product_id, p.list_price \
             FROM orders o LEFT JOIN products p ON p.product_id = o.product_id WHERE o.order_id = ?1",
        )?
        .query_row([order_id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    // An unknown order leaves no inbox row: a later delivery, once the order exists, still counts.
    let Some((status, quantity, product_id, list_price)) = found else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    if !record_inbox(tx, outbox_id, order_id)? {
        return Ok(ProcessOutcome::Duplicate);
    }
    if OrderStatus::from_str(&status).map_err(StoreError::Other)?.is_final() {
        return Ok(ProcessOutcome::Duplicate);
    }
    let Some(list_price) = parse_decimal(list_price)? else {
        let reason = format!("unknown product {product_id}");
        mark_failed(tx, order_id, &reason)?;
        return Ok(ProcessOutcome::Failed(reason));
    };
    let priced = price(list_price, quantity);
    let sql = format!(
        "UPDATE orders SET status = 'processed', unit_price = ?2, total_price = ?3, failure_reason = NULL, \
           processed_at = {NOW} \
         WHERE order_id = ?1 AND status IN ('pending', 'published') RETURNING {ORDER_COLUMNS}"
    );
    let order = tx.prepare_cached(&sql)?.query_row(
        params![order_id.0, priced.unit_price.to_string(), priced.total_price.to_string()],
        order_from_row,
    )?;
    Ok(ProcessOutcome::Processed(order))
}

fn mark_failed(tx: &Connection, order_id: OrderId, reason: &str) -> Result<usize, StoreError> {
    let sql = format!(
        "UPDATE orders SET status = 'failed', failure_reason = ?2, processed_at = {NOW} \
         WHERE order_id = ?1 AND status IN ('pending', 'published')"
    );
    Ok(tx.execute(&sql, params![order_id.0, reason])?)
}

/// Writes the `OrderPlacedV1` outbox row of `order`; `created_at` None means now.
fn insert_outbox(
    tx: &Connection,
    order: &Order,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    created_at: Option<DateTime<Utc>>,
) -> Result<OutboxId, StoreError> {
    let outbox_id = OutboxId::new();
    let payload = serde_json::to_string(&OrderPlacedV1::for_order(order, outbox_id))
        .map_err(|e| StoreError::Other(e.to_string()))?;
    let sql = format!(
        "INSERT INTO outbox (outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, {NOW}))"
    );
    tx.prepare_cached(&sql)?.execute(params![
        outbox_id.to_string(),
        order.order_id.0,
        ORDER_PLACED_V1,
        payload,
        traceparent,
        tracestate,
        created_at.map(|t| t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string()),
    ])?;
    Ok(outbox_id)
}

fn ago_modifier(d: Duration) -> String {
    format!("-{:.3} seconds", d.as_secs_f64())
}

fn seconds_modifier(d: Duration) -> String {
    format!("+{:.3} seconds", d.as_secs_f64())
}

#[async_trait]
impl OrderStore for SqliteStore {
    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt =
                conn.prepare_cached("SELECT product_id, name, list_price FROM products ORDER BY product_id")?;
            let rows = stmt.query_map([], product_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn product(&self, product_id: &str) -> Result<Product, StoreError> {
        let product_id = product_id.to_string();
        self.with_conn(move |conn| {
            Ok(conn.query_row(
                "SELECT product_id, name, list_price FROM products WHERE product_id = ?1",
                [product_id],
                product_from_row,
            )?)
        })
        .await
    }

    async fn place_order(&self, order: NewOrder) -> Result<Placed, StoreError> {
        let (reply, answer) = oneshot::channel();
        self.orders
            .send(PlaceRequest { order, reply })
            .await
            .map_err(|_| StoreError::Unavailable("the order writer has stopped".into()))?;
        answer.await.map_err(|_| StoreError::Unavailable("the order writer has stopped".into()))?
    }

    async fn order(&self, order_id: OrderId) -> Result<Order, StoreError> {
        self.with_conn(move |conn| load_order(conn, order_id)?.ok_or(StoreError::NotFound)).await
    }

    async fn order_counts(&self) -> Result<OrderCounts, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached("SELECT status, COUNT(*) FROM orders GROUP BY status")?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut counts = OrderCounts::default();
            for row in rows {
                let (status, n) = row?;
                add_count(&mut counts, &status, n);
            }
            Ok(counts)
        })
        .await
    }

    async fn recent_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        self.with_conn(move |conn| {
            let sql = format!("SELECT {ORDER_COLUMNS} FROM orders ORDER BY order_id DESC LIMIT ?1");
            let mut stmt = conn.prepare_cached(&sql)?;
            let rows = stmt.query_map([limit], order_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }
}

fn product_from_row(row: &Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        product_id: row.get(0)?,
        name: row.get(1)?,
        list_price: parse_decimal(Some(row.get(2)?))?.unwrap_or_default(),
    })
}

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let owner = owner.to_string();
        self.write(move |tx| {
            // One IMMEDIATE transaction is the single writer: no two relays can
            // select the same due rows.
            let sql = format!(
                "UPDATE outbox SET lease_owner = ?1, lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) \
                 WHERE outbox_id IN (\
                   SELECT outbox_id FROM outbox \
                   WHERE published_at IS NULL AND dead_at IS NULL AND next_attempt_at <= {NOW} \
                     AND (lease_until IS NULL OR lease_until < {NOW}) \
                   ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at, attempts"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![owner, seconds_modifier(lease), limit], outbox_from_row)?;
            let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.sort_by_key(|r| (r.created_at, r.order_id));
            Ok(rows)
        })
        .await
    }

    async fn mark_published(&self, _owner: &str, ids: &[OutboxId]) -> Result<u64, StoreError> {
        let ids: Vec<String> = ids.iter().map(ToString::to_string).collect();
        self.write(move |tx| {
            // Marked whoever holds the lease now: the broker's receipt proves the
            // message is on the queue, so publishing it again would only duplicate.
            let mut mark = tx.prepare_cached(&format!(
                "UPDATE outbox SET published_at = {NOW}, lease_owner = NULL, lease_until = NULL \
                 WHERE outbox_id = ?1 AND published_at IS NULL RETURNING order_id"
            ))?;
            let mut advance =
                tx.prepare_cached("UPDATE orders SET status = 'published' WHERE order_id = ?1 AND status = 'pending'")?;
            let mut marked = 0;
            for id in &ids {
                let order_id: Option<i64> = mark.query_row([id], |r| r.get(0)).optional()?;
                if let Some(order_id) = order_id {
                    advance.execute([order_id])?;
                    marked += 1;
                }
            }
            Ok(marked)
        })
        .await
    }

    async fn record_failure(
        &self,
        _owner: &str,
        id: OutboxId,
        error: &str,
        retry_in: Duration,
        max_attempts: i32,
    ) -> Result<FailureOutcome, StoreError> {
        let error = error.chars().take(1000).collect::<String>();
        self.write(move |tx| {
            let sql = format!(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, lease_owner = NULL, lease_until = NULL, \
                   next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3), \
                   dead_at = CASE WHEN attempts + 1 >= ?4 THEN {NOW} END \
                 WHERE outbox_id = ?1 AND published_at IS NULL RETURNING dead_at"
            );
            let dead: Option<Option<String>> = tx
                .query_row(&sql, params![id.to_string(), error, seconds_modifier(retry_in), max_attempts], |r| r.get(0))
                .optional()?;
            Ok(match dead {
                Some(Some(_)) => FailureOutcome::Parked,
                _ => FailureOutcome::Retrying,
            })
        })
        .await
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = owner.to_string();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = ?1 AND published_at IS NULL",
                [owner],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.with_conn(|conn| {
            let (pending, oldest): (i64, Option<f64>) = conn.query_row(
                "SELECT COUNT(*), (julianday('now') - julianday(MIN(created_at))) * 86400.0 \
                 FROM outbox WHERE published_at IS NULL AND dead_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let parked: i64 =
                conn.query_row("SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL", [], |r| r.get(0))?;
            Ok(OutboxStats { pending, oldest_pending_seconds: oldest.unwrap_or(0.0).max(0.0), parked })
        })
        .await
    }

    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT outbox_id, order_id, attempts, last_error, created_at, dead_at FROM outbox \
                 WHERE dead_at IS NOT NULL ORDER BY dead_at DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                let id: String = r.get(0)?;
                Ok(ParkedRow {
                    outbox_id: OutboxId::from_str(&id).map_err(|e| {
                        rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e))
                    })?,
                    order_id: OrderId(r.get(1)?),
                    attempts: r.get(2)?,
                    last_error: r.get(3)?,
                    created_at: parse_time(&r.get::<_, String>(4)?)?,
                    dead_at: parse_time(&r.get::<_, String>(5)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn requeue(&self, target: RequeueTarget, requested_by: &str) -> Result<Vec<OutboxId>, StoreError> {
        let requested_by = requested_by.to_string();
        self.write(move |tx| {
            let (by_id, by_order) = match target {
                RequeueTarget::Outbox(id) => (Some(id.to_string()), None),
                RequeueTarget::Order(order) => (None, Some(order.0)),
            };
            let sql = format!(
                "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = {NOW}, lease_owner = NULL, \
                   lease_until = NULL \
                 WHERE dead_at IS NOT NULL AND published_at IS NULL AND (outbox_id = ?1 OR order_id = ?2) \
                 RETURNING outbox_id, order_id"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![by_id, by_order], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut audit = tx.prepare_cached(
                "INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, ?2, 'requeue', ?3)",
            )?;
            let mut ids = Vec::with_capacity(rows.len());
            for (id, order_id) in rows {
                audit.execute(params![id, order_id, requested_by])?;
                ids.push(OutboxId::from_str(&id).map_err(|e| StoreError::Other(e.to_string()))?);
            }
            Ok(ids)
        })
        .await
    }

    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM outbox WHERE outbox_id IN (SELECT outbox_id FROM outbox \
                   WHERE published_at IS NOT NULL \
                     AND published_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) LIMIT ?2)",
                params![ago_modifier(older_than), limit],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| {
            let n = tx.execute(
                "DELETE FROM inbox WHERE outbox_id IN (SELECT outbox_id FROM inbox \
                   WHERE processed_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) LIMIT ?2)",
                params![ago_modifier(older_than), limit],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError> {
        self.with_conn(move |conn| {
            let pending_without_outbox = conn.query_row(
                "SELECT COUNT(*) FROM orders o WHERE o.status = 'pending' \
                 AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.order_id)",
                [],
                |r| r.get(0),
            )?;
            let published_not_processed = conn.query_row(
                "SELECT COUNT(*) FROM orders WHERE status = 'published' \
                 AND created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)",
                [ago_modifier(published_for)],
                |r| r.get(0),
            )?;
            Ok(Reconciliation { pending_without_outbox, published_not_processed })
        })
        .await
    }

    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError> {
        let requested_by = requested_by.to_string();
        self.write(move |tx| {
            let sql = format!(
                "UPDATE orders SET status = 'pending', failure_reason = NULL, processed_at = NULL, unit_price = NULL, \
                   total_price = NULL WHERE order_id = ?1 AND status = 'failed' RETURNING {ORDER_COLUMNS}"
            );
            let Some(order) = tx.query_row(&sql, [order_id.0], order_from_row).optional()? else {
                return match load_order(tx, order_id)? {
                    None => Err(StoreError::NotFound),
                    Some(o) => Err(StoreError::Conflict(format!("order {order_id} is {}, not failed", o.status))),
                };
            };
            let outbox_id = insert_outbox(tx, &order, None, None, None)?;
            tx.execute(
                "INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, ?2, 'retry', ?3)",
                params![outbox_id.to_string(), order_id.0, requested_by],
            )?;
            Ok(outbox_id)
        })
        .await
    }
}

#[async_trait]
impl ProcessingStore for SqliteStore {
    async fn process_orders(
        &self,
        items: &[(Option<OutboxId>, OrderId)],
        price: fn(Decimal, i32) -> Priced,
    ) -> Result<Vec<ProcessOutcome>, StoreError> {
        let items = items.to_vec();
        self.write(move |tx| {
            items.iter().map(|(outbox_id, order_id)| process_one(tx, *outbox_id, *order_id, price)).collect()
        })
        .await
    }

    async fn fail_order(
        &self,
        outbox_id: Option<OutboxId>,
        order_id: OrderId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let reason = reason.chars().take(400).collect::<String>();
        self.write(move |tx| {
            let exists: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM orders WHERE order_id = ?1)", [order_id.0], |r| r.get(0))?;
            if !exists {
                return Ok(false);
            }
            record_inbox(tx, outbox_id, order_id)?;
            mark_failed(tx, order_id, &reason)?;
            Ok(true)
        })
        .await
    }
}
