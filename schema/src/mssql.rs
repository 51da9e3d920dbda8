//! SQL Server backend: tiberius 0.13 behind a deadpool pool with our own manager.
//!
//! Invariants: every statement lives in the `SQL` table below, so the T-SQL
//! parser test sees all of them; a connection that saw any error is discarded,
//! never returned to the pool; time comes from `SYSUTCDATETIME()`.

use std::str::FromStr;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use deadpool::managed::{self, Metrics, Object, Pool, RecycleResult};
use rust_decimal::Decimal;
use tiberius::{AuthMethod, Client, Config, EncryptionLevel, Row, ToSql};
use tokio::net::TcpStream;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use uuid::Uuid;

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
use crate::pricing::Priced;
use crate::store::{
    FailureOutcome, OrderCounts, OrderStore, OutboxStats, OutboxStore, ParkedRow, Placed, ProcessOutcome,
    ProcessingStore, Reconciliation, RequeueTarget, StoreError, add_count,
};

mod migrations {
    refinery::embed_migrations!("migrations/mssql");
}

type TdsClient = Client<Compat<TcpStream>>;
type TdsResult<T> = Result<T, tiberius::error::Error>;

macro_rules! order_columns {
    ($prefix:literal) => {
        concat!(
            $prefix,
            "order_id, ",
            $prefix,
            "customer_name, ",
            $prefix,
            "product_id, ",
            $prefix,
            "quantity, ",
            $prefix,
            "status, ",
            $prefix,
            "unit_price, ",
            $prefix,
            "total_price, ",
            $prefix,
            "failure_reason, ",
            $prefix,
            "created_at, ",
            $prefix,
            "processed_at"
        )
    };
}

const PRODUCTS: &str = "SELECT product_id, name, list_price FROM dbo.products ORDER BY product_id";
const PRODUCT: &str = "SELECT product_id, name, list_price FROM dbo.products WHERE product_id = @P1";
const ORDER_BY_KEY: &str =
    concat!("SELECT ", order_columns!(""), " FROM dbo.orders WITH (UPDLOCK, HOLDLOCK) WHERE idempotency_key = @P1");
const INSERT_ORDER: &str = concat!(
    "INSERT INTO dbo.orders (customer_name, product_id, quantity, idempotency_key) OUTPUT ",
    order_columns!("inserted."),
    " VALUES (@P1, @P2, @P3, @P4)"
);
const INSERT_OUTBOX: &str = "INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload, traceparent, tracestate, \
     created_at) VALUES (@P1, @P2, @P3, @P4, @P5, @P6, COALESCE(@P7, SYSUTCDATETIME()))";
const ORDER_COUNTS: &str = "SELECT status, COUNT_BIG(*) FROM dbo.orders GROUP BY status";
const PARKED_ROWS: &str = "SELECT TOP (@P1) outbox_id, order_id, attempts, last_error, created_at, dead_at \
     FROM dbo.outbox WHERE dead_at IS NOT NULL ORDER BY dead_at DESC";
const REQUEUE: &str = "UPDATE dbo.outbox SET dead_at = NULL, attempts = 0, next_attempt_at = SYSUTCDATETIME(), \
     lease_owner = NULL, lease_until = NULL OUTPUT inserted.outbox_id, inserted.order_id \
     WHERE dead_at IS NOT NULL AND published_at IS NULL AND (outbox_id = @P1 OR order_id = @P2)";
const INSERT_AUDIT: &str =
    "INSERT INTO dbo.outbox_audit (outbox_id, order_id, action, requested_by) VALUES (@P1, @P2, @P3, @P4)";
// Small batches under ROWLOCK + READPAST: retention never takes a big lock and
// never waits on rows a relay or another cleaner holds.
const PURGE_PUBLISHED: &str = "DELETE FROM dbo.outbox WHERE outbox_id IN (SELECT TOP (@P1) p.outbox_id \
     FROM dbo.outbox p WITH (ROWLOCK, READPAST) \
     WHERE p.published_at IS NOT NULL AND p.published_at < DATEADD(second, @P2, SYSUTCDATETIME()))";
const PURGE_INBOX: &str = "DELETE FROM dbo.inbox WHERE outbox_id IN (SELECT TOP (@P1) i.outbox_id \
     FROM dbo.inbox i WITH (ROWLOCK, READPAST) WHERE i.processed_at < DATEADD(second, @P2, SYSUTCDATETIME()))";
const PENDING_WITHOUT_OUTBOX: &str = "SELECT COUNT_BIG(*) FROM dbo.orders o WHERE o.status = N'pending' \
     AND NOT EXISTS (SELECT 1 FROM dbo.outbox x WHERE x.order_id = o.order_id)";
const PUBLISHED_NOT_PROCESSED: &str = "SELECT COUNT_BIG(*) FROM dbo.orders WHERE status = N'published' \
     AND created_at < DATEADD(second, @P1, SYSUTCDATETIME())";
const RETRY_ORDER: &str = concat!(
    "UPDATE dbo.orders SET status = N'pending', failure_reason = NULL, processed_at = NULL, unit_price = NULL, ",
    "total_price = NULL OUTPUT ",
    order_columns!("inserted."),
    " WHERE order_id = @P1 AND status = N'failed'"
);
const ORDER: &str = concat!("SELECT ", order_columns!(""), " FROM dbo.orders WHERE order_id = @P1");
const RECENT_ORDERS: &str = concat!("SELECT TOP (@P1) ", order_columns!(""), " FROM dbo.orders ORDER BY order_id DESC");
// The portable claim: alias form of UPDATE TOP with lock hints, no updatable
// CTE. READPAST skips rows another relay is claiming; UPDLOCK keeps two
// claimers from reading the same row; the lease makes it invisible afterwards.
const CLAIM: &str = "UPDATE TOP (@P3) o SET lease_owner = @P1, lease_until = DATEADD(millisecond, @P2, SYSUTCDATETIME()) \
     OUTPUT inserted.outbox_id, inserted.order_id, inserted.event_type, inserted.payload, inserted.traceparent, \
     inserted.tracestate, inserted.created_at, inserted.attempts \
     FROM dbo.outbox o WITH (UPDLOCK, READPAST, ROWLOCK) \
     WHERE o.published_at IS NULL AND o.dead_at IS NULL AND o.next_attempt_at <= SYSUTCDATETIME() \
     AND (o.lease_until IS NULL OR o.lease_until < SYSUTCDATETIME())";
const MARK_PUBLISHED: &str = "UPDATE dbo.outbox SET published_at = SYSUTCDATETIME(), lease_owner = NULL, lease_until = NULL \
     OUTPUT inserted.order_id WHERE outbox_id = @P1 AND published_at IS NULL";
const ADVANCE_ORDER: &str = "UPDATE dbo.orders SET status = N'published' WHERE order_id = @P1 AND status = N'pending'";
const RECORD_FAILURE: &str = "UPDATE dbo.outbox SET attempts = attempts + 1, last_error = @P2, lease_owner = NULL, \
     lease_until = NULL, next_attempt_at = DATEADD(millisecond, @P3, SYSUTCDATETIME()), \
     dead_at = CASE WHEN attempts + 1 >= @P4 THEN SYSUTCDATETIME() ELSE NULL END \
     OUTPUT inserted.dead_at WHERE outbox_id = @P1 AND published_at IS NULL";
const RELEASE_LEASES: &str =
    "UPDATE dbo.outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = @P1 AND published_at IS NULL";
const PENDING_STATS: &str = "SELECT COUNT_BIG(*), DATEDIFF_BIG(millisecond, MIN(created_at), SYSUTCDATETIME()) \
     FROM dbo.outbox WHERE published_at IS NULL AND dead_at IS NULL";
const PARKED_COUNT: &str = "SELECT COUNT_BIG(*) FROM dbo.outbox WHERE dead_at IS NOT NULL";
// Insert-if-absent under a key-range lock: a duplicate affects no row instead
// of raising 2627 inside the transaction.
const RECORD_INBOX: &str = "INSERT INTO dbo.inbox (outbox_id, order_id) SELECT @P1, @P2 \
     WHERE NOT EXISTS (SELECT 1 FROM dbo.inbox i WITH (UPDLOCK, HOLDLOCK) WHERE i.outbox_id = @P1)";
const ORDER_FOR_PRICING: &str = "SELECT o.status, o.quantity, o.product_id, p.list_price \
     FROM dbo.orders o WITH (UPDLOCK) LEFT JOIN dbo.products p ON p.product_id = o.product_id WHERE o.order_id = @P1";
const MARK_PROCESSED: &str = concat!(
    "UPDATE dbo.orders SET status = N'processed', unit_price = @P2, total_price = @P3, failure_reason = NULL, ",
    "processed_at = SYSUTCDATETIME() OUTPUT ",
    order_columns!("inserted."),
    " WHERE order_id = @P1 AND status IN (N'pending', N'published')"
);
const MARK_FAILED: &str = "UPDATE dbo.orders SET status = N'failed', failure_reason = @P2, processed_at = SYSUTCDATETIME() \
     WHERE order_id = @P1 AND status IN (N'pending', N'published')";
const ORDER_EXISTS: &str = "SELECT COUNT_BIG(*) FROM dbo.orders WHERE order_id = @P1";
const SESSION_SETUP: &str = "SET XACT_ABORT ON; SET LOCK_TIMEOUT 5000";
const RESET_SESSION: &str = "IF @@TRANCOUNT > 0 ROLLBACK";
const BEGIN: &str = "BEGIN TRANSACTION";
const COMMIT: &str = "COMMIT TRANSACTION";
const ROLLBACK: &str = "ROLLBACK TRANSACTION";
// Migrations from several services at once serialise on an application lock.
const MIGRATION_LOCK: &str = "EXEC sp_getapplock @Resource = N'orderflow-migrations', @LockMode = N'Exclusive', \
     @LockOwner = N'Session', @LockTimeout = 120000";
const MIGRATION_UNLOCK: &str = "EXEC sp_releaseapplock @Resource = N'orderflow-migrations', @LockOwner = N'Session'";

pub(crate) fn statements() -> Vec<(&'static str, &'static str)> {
    vec![
        ("PRODUCTS", PRODUCTS),
        ("PRODUCT", PRODUCT),
        ("ORDER_BY_KEY", ORDER_BY_KEY),
        ("INSERT_ORDER", INSERT_ORDER),
        ("INSERT_OUTBOX", INSERT_OUTBOX),
        ("ORDER", ORDER),
        ("RECENT_ORDERS", RECENT_ORDERS),
        ("CLAIM", CLAIM),
        ("MARK_PUBLISHED", MARK_PUBLISHED),
        ("ADVANCE_ORDER", ADVANCE_ORDER),
        ("RECORD_FAILURE", RECORD_FAILURE),
        ("RELEASE_LEASES", RELEASE_LEASES),
        ("PENDING_STATS", PENDING_STATS),
        ("PARKED_COUNT", PARKED_COUNT),
        ("RECORD_INBOX", RECORD_INBOX),
        ("ORDER_FOR_PRICING", ORDER_FOR_PRICING),
        ("MARK_PROCESSED", MARK_PROCESSED),
        ("MARK_FAILED", MARK_FAILED),
        ("ORDER_EXISTS", ORDER_EXISTS),
        ("PARKED_ROWS", PARKED_ROWS),
        ("ORDER_COUNTS", ORDER_COUNTS),
        ("REQUEUE", REQUEUE),
        ("INSERT_AUDIT", INSERT_AUDIT),
        ("PURGE_PUBLISHED", PURGE_PUBLISHED),
        ("PURGE_INBOX", PURGE_INBOX),
        ("PENDING_WITHOUT_OUTBOX", PENDING_WITHOUT_OUTBOX),
        ("PUBLISHED_NOT_PROCESSED", PUBLISHED_NOT_PROCESSED),
        ("RETRY_ORDER", RETRY_ORDER),
        ("SESSION_SETUP", SESSION_SETUP),
        ("RESET_SESSION", RESET_SESSION),
        ("BEGIN", BEGIN),
        ("COMMIT", COMMIT),
        ("ROLLBACK", ROLLBACK),
        ("MIGRATION_LOCK", MIGRATION_LOCK),
        ("MIGRATION_UNLOCK", MIGRATION_UNLOCK),
        ("CREATE_DATABASE", "CREATE DATABASE orderflow_test_0123456789abcdef"),
    ]
}

/// deadpool manager for tiberius connections.
struct TdsManager {
    config: Config,
}

impl managed::Manager for TdsManager {
    type Type = TdsClient;
    type Error = tiberius::error::Error;

    async fn create(&self) -> TdsResult<TdsClient> {
        let mut client = open_client(&self.config).await?;
        client.simple_query(SESSION_SETUP).await?.into_results().await?;
        Ok(client)
    }

    async fn recycle(&self, client: &mut TdsClient, _: &Metrics) -> RecycleResult<Self::Error> {
        client.simple_query(RESET_SESSION).await?.into_results().await?;
        Ok(())
    }
}

async fn open_client(config: &Config) -> TdsResult<TdsClient> {
    let tcp = TcpStream::connect(config.get_addr()).await?;
    tcp.set_nodelay(true)?;
    Client::connect(config.clone(), tcp.compat_write()).await
}

/// The production backend.
#[derive(Clone)]
pub struct MssqlStore {
    pool: Pool<TdsManager>,
}

impl MssqlStore {
    /// Connects, runs the migrations under an application lock, and builds the pool.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let config = parse_config(url)?;
        let mut client = open_client(&config).await?;
        client.simple_query(MIGRATION_LOCK).await?.into_results().await?;
        let report = migrations::migrations::runner().run_async(&mut client).await;
        client.simple_query(MIGRATION_UNLOCK).await?.into_results().await?;
        report?;
        client.close().await?;
        let pool = Pool::builder(TdsManager { config }).max_size(16).build()?;
        Ok(Self { pool })
    }

    async fn conn(&self) -> Result<Object<TdsManager>, StoreError> {
        self.pool.get().await.map_err(|e| StoreError::Unavailable(format!("sql server pool: {e}")))
    }
}

/// Parses `mssql://user:password@host:port/database?trust_server_certificate=true`
/// or an ADO.NET string (`server=tcp:host,1433;user=…;password=…`).
fn parse_config(url: &str) -> anyhow::Result<Config> {
    let mut config = if url.to_ascii_lowercase().starts_with("server=") {
        Config::from_ado_string(url)?
    } else {
        let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
        let (rest, query) = rest.split_once('?').unwrap_or((rest, ""));
        let (creds, host_db) =
            rest.rsplit_once('@').ok_or_else(|| anyhow::anyhow!("mssql url needs user:password@host"))?;
        let (user, password) = creds.split_once(':').unwrap_or((creds, ""));
        let (host_port, database) = host_db.split_once('/').unwrap_or((host_db, "master"));
        let (host, port) = host_port.split_once(':').unwrap_or((host_port, "1433"));
        let mut config = Config::new();
        config.host(host);
        config.port(port.parse()?);
        config.database(database);
        config.authentication(AuthMethod::sql_server(user, password));
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, "true"));
            match (k.to_ascii_lowercase().replace('_', "").as_str(), v.to_ascii_lowercase().as_str()) {
                ("trustservercertificate", "true") => config.trust_cert(),
                ("encrypt", "false") => config.encryption(EncryptionLevel::NotSupported),
                ("encrypt", "true") => config.encryption(EncryptionLevel::Required),
                _ => anyhow::bail!("unknown mssql url option {k}"),
            }
        }
        config
    };
    config.application_name("orderflow");
    config.command_timeout(Some(Duration::from_secs(30)));
    Ok(config)
}

fn map_err(e: tiberius::error::Error) -> StoreError {
    match e.code() {
        Some(2627 | 2601) => StoreError::Conflict(e.to_string()),
        Some(1205 | 1222 | 40197 | 40501 | 40613 | 49918 | 49919 | 49920) => StoreError::Unavailable(e.to_string()),
        Some(_) => StoreError::Other(e.to_string()),
        None => match e {
            tiberius::error::Error::Io { .. }
            | tiberius::error::Error::Tls(_)
            | tiberius::error::Error::Routing { .. } => StoreError::Unavailable(e.to_string()),
            other if other.to_string().to_ascii_lowercase().contains("timed out") => {
                StoreError::Unavailable(other.to_string())
            }
            other => StoreError::Other(other.to_string()),
        },
    }
}

/// Hands the result back, discarding the connection when it saw an error (it
/// may be mid-transaction or desynchronised).
fn finish<T>(conn: Object<TdsManager>, result: TdsResult<T>) -> Result<T, StoreError> {
    match result {
        Ok(v) => Ok(v),
        Err(e) => {
            drop(Object::take(conn));
            Err(map_err(e))
        }
    }
}

fn conversion(what: &str) -> tiberius::error::Error {
    tiberius::error::Error::Conversion(format!("unexpected NULL or type in {what}").into())
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

fn order_from_row(row: &Row) -> TdsResult<Order> {
    let text = |i: usize| -> TdsResult<String> {
        Ok(row.try_get::<&str, _>(i)?.ok_or_else(|| conversion("order"))?.to_string())
    };
    Ok(Order {
        order_id: OrderId(row.try_get::<i64, _>(0)?.ok_or_else(|| conversion("order_id"))?),
        customer_name: text(1)?,
        product_id: text(2)?,
        quantity: row.try_get::<i32, _>(3)?.ok_or_else(|| conversion("quantity"))?,
        status: OrderStatus::from_str(&text(4)?).map_err(|e| tiberius::error::Error::Conversion(e.into()))?,
        unit_price: row.try_get::<Decimal, _>(5)?,
        total_price: row.try_get::<Decimal, _>(6)?,
        failure_reason: row.try_get::<&str, _>(7)?.map(str::to_string),
        created_at: utc(row.try_get::<NaiveDateTime, _>(8)?.ok_or_else(|| conversion("created_at"))?),
        processed_at: row.try_get::<NaiveDateTime, _>(9)?.map(utc),
    })
}

fn product_from_row(row: &Row) -> TdsResult<Product> {
    Ok(Product {
        product_id: row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("product_id"))?.to_string(),
        name: row.try_get::<&str, _>(1)?.ok_or_else(|| conversion("name"))?.to_string(),
        list_price: row.try_get::<Decimal, _>(2)?.ok_or_else(|| conversion("list_price"))?,
    })
}

fn outbox_from_row(row: &Row) -> TdsResult<OutboxRow> {
    Ok(OutboxRow {
        outbox_id: OutboxId(row.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?),
        order_id: OrderId(row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
        event_type: row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("event_type"))?.to_string(),
        payload: row.try_get::<&str, _>(3)?.ok_or_else(|| conversion("payload"))?.to_string(),
        traceparent: row.try_get::<&str, _>(4)?.map(str::to_string),
        tracestate: row.try_get::<&str, _>(5)?.map(str::to_string),
        created_at: utc(row.try_get::<NaiveDateTime, _>(6)?.ok_or_else(|| conversion("created_at"))?),
        attempts: row.try_get::<i32, _>(7)?.ok_or_else(|| conversion("attempts"))?,
    })
}

async fn rows(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> TdsResult<Vec<Row>> {
    client.query(sql, params).await?.into_first_result().await
}

async fn exec(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> TdsResult<u64> {
    Ok(client.execute(sql, params).await?.total())
}

async fn batch(client: &mut TdsClient, sql: &str) -> TdsResult<()> {
    client.simple_query(sql).await?.into_results().await.map(drop)
}

/// DATEADD takes an INT: milliseconds for short spans (leases, retries; up to 24 days).
fn millis(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// DATEADD takes an INT: seconds for long spans (retention, staleness; up to 68 years).
fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// Writes the `OrderPlacedV1` outbox row of `order`; `created_at` None means now.
async fn insert_outbox(
    client: &mut TdsClient,
    order: &Order,
    traceparent: Option<String>,
    tracestate: Option<String>,
    created_at: Option<NaiveDateTime>,
) -> TdsResult<OutboxId> {
    let outbox_id = OutboxId::new();
    let payload = serde_json::to_string(&OrderPlacedV1::for_order(order, outbox_id))
        .map_err(|e| tiberius::error::Error::Conversion(e.to_string().into()))?;
    let params: [&dyn ToSql; 7] =
        [&outbox_id.0, &order.order_id.0, &ORDER_PLACED_V1, &payload, &traceparent, &tracestate, &created_at];
    exec(client, INSERT_OUTBOX, &params).await?;
    Ok(outbox_id)
}

async fn place(client: &mut TdsClient, order: &NewOrder) -> TdsResult<Placed> {
    batch(client, BEGIN).await?;
    if let Some(key) = &order.idempotency_key
        && let Some(row) = rows(client, ORDER_BY_KEY, &[key]).await?.first()
    {
        let existing = order_from_row(row)?;
        batch(client, COMMIT).await?;
        return Ok(Placed::Existing(existing));
    }
    let inserted =
        rows(client, INSERT_ORDER, &[&order.customer_name, &order.product_id, &order.quantity, &order.idempotency_key])
            .await?;
    let stored = order_from_row(inserted.first().ok_or_else(|| conversion("inserted order"))?)?;
    let created_at = Some(stored.created_at.naive_utc());
    insert_outbox(client, &stored, order.traceparent.clone(), order.tracestate.clone(), created_at).await?;
    batch(client, COMMIT).await?;
    Ok(Placed::Created(stored))
}

#[async_trait]
impl OrderStore for MssqlStore {
    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let mut conn = self.conn().await?;
        let result = async { rows(&mut conn, PRODUCTS, &[]).await?.iter().map(product_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn product(&self, product_id: &str) -> Result<Product, StoreError> {
        let mut conn = self.conn().await?;
        let result =
            async { rows(&mut conn, PRODUCT, &[&product_id]).await?.first().map(product_from_row).transpose() }.await;
        finish(conn, result)?.ok_or(StoreError::NotFound)
    }

    async fn place_order(&self, order: NewOrder) -> Result<Placed, StoreError> {
        let mut conn = self.conn().await?;
        let result = place(&mut conn, &order).await;
        match finish(conn, result) {
            // Two requests with the same new key raced; the winner's order is the answer.
            Err(StoreError::Conflict(_)) if order.idempotency_key.is_some() => {
                let mut conn = self.conn().await?;
                let key = order.idempotency_key.clone();
                let result =
                    async { rows(&mut conn, ORDER_BY_KEY, &[&key]).await?.first().map(order_from_row).transpose() }
                        .await;
                finish(conn, result)?.map(Placed::Existing).ok_or(StoreError::NotFound)
            }
            other => other,
        }
    }

    async fn order(&self, order_id: OrderId) -> Result<Order, StoreError> {
        let mut conn = self.conn().await?;
        let result =
            async { rows(&mut conn, ORDER, &[&order_id.0]).await?.first().map(order_from_row).transpose() }.await;
        finish(conn, result)?.ok_or(StoreError::NotFound)
    }

    async fn order_counts(&self) -> Result<OrderCounts, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let mut counts = OrderCounts::default();
            for row in rows(&mut conn, ORDER_COUNTS, &[]).await? {
                let status = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
                add_count(&mut counts, status, row.try_get::<i64, _>(1)?.unwrap_or(0));
            }
            Ok(counts)
        }
        .await;
        finish(conn, result)
    }

    async fn recent_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, RECENT_ORDERS, &[&limit]).await?.iter().map(order_from_row).collect() }.await;
        finish(conn, result)
    }
}

async fn mark_published(client: &mut TdsClient, ids: &[OutboxId]) -> TdsResult<u64> {
    batch(client, BEGIN).await?;
    let mut marked = 0;
    for id in ids {
        let row = rows(client, MARK_PUBLISHED, &[&id.0]).await?;
        if let Some(order_id) = row.first().and_then(|r| r.get::<i64, _>(0)) {
            exec(client, ADVANCE_ORDER, &[&order_id]).await?;
            marked += 1;
        }
    }
    batch(client, COMMIT).await?;
    Ok(marked)
}

#[async_trait]
impl OutboxStore for MssqlStore {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let mut conn = self.conn().await?;
        let (lease_ms, limit) = (millis(lease), i64::from(limit));
        let result = async {
            let mut out = rows(&mut conn, CLAIM, &[&owner, &lease_ms, &limit])
                .await?
                .iter()
                .map(outbox_from_row)
                .collect::<TdsResult<Vec<_>>>()?;
            out.sort_by_key(|r| (r.created_at, r.order_id));
            Ok(out)
        }
        .await;
        finish(conn, result)
    }

    async fn mark_published(&self, _owner: &str, ids: &[OutboxId]) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let result = mark_published(&mut conn, ids).await;
        finish(conn, result)
    }

    async fn record_failure(
        &self,
        _owner: &str,
        id: OutboxId,
        error: &str,
        retry_in: Duration,
        max_attempts: i32,
    ) -> Result<FailureOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let error: String = error.chars().take(1000).collect();
        let retry_ms = millis(retry_in);
        let result = async {
            let out = rows(&mut conn, RECORD_FAILURE, &[&id.0, &error, &retry_ms, &max_attempts]).await?;
            Ok(match out.first().and_then(|r| r.get::<NaiveDateTime, _>(0)) {
                Some(_) => FailureOutcome::Parked,
                None => FailureOutcome::Retrying,
            })
        }
        .await;
        finish(conn, result)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let result = exec(&mut conn, RELEASE_LEASES, &[&owner]).await;
        finish(conn, result)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let pending = rows(&mut conn, PENDING_STATS, &[]).await?;
            let parked = rows(&mut conn, PARKED_COUNT, &[]).await?;
            let first = pending.first().ok_or_else(|| conversion("pending stats"))?;
            Ok(OutboxStats {
                pending: first.get::<i64, _>(0).unwrap_or(0),
                oldest_pending_seconds: first.get::<i64, _>(1).map_or(0.0, |ms| (ms as f64 / 1000.0).max(0.0)),
                parked: parked.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0),
            })
        }
        .await;
        finish(conn, result)
    }

    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, PARKED_ROWS, &[&limit]).await?.iter().map(parked_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn requeue(&self, target: RequeueTarget, requested_by: &str) -> Result<Vec<OutboxId>, StoreError> {
        let mut conn = self.conn().await?;
        let result = requeue(&mut conn, target, requested_by).await;
        finish(conn, result)
    }

    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let (limit, ago) = (i64::from(limit), -seconds(older_than));
        let result = exec(&mut conn, PURGE_PUBLISHED, &[&limit, &ago]).await;
        finish(conn, result)
    }

    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let (limit, ago) = (i64::from(limit), -seconds(older_than));
        let result = exec(&mut conn, PURGE_INBOX, &[&limit, &ago]).await;
        finish(conn, result)
    }

    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError> {
        let mut conn = self.conn().await?;
        let ago = -seconds(published_for);
        let result = async {
            let count = |rows: Vec<Row>| rows.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0);
            Ok(Reconciliation {
                pending_without_outbox: count(rows(&mut conn, PENDING_WITHOUT_OUTBOX, &[]).await?),
                published_not_processed: count(rows(&mut conn, PUBLISHED_NOT_PROCESSED, &[&ago]).await?),
            })
        }
        .await;
        finish(conn, result)
    }

    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError> {
        let mut conn = self.conn().await?;
        let result = retry_order(&mut conn, order_id, requested_by).await;
        match finish(conn, result)? {
            Some(id) => Ok(id),
            None => match self.order(order_id).await {
                Ok(o) => Err(StoreError::Conflict(format!("order {order_id} is {}, not failed", o.status))),
                Err(e) => Err(e),
            },
        }
    }
}

fn parked_from_row(row: &Row) -> TdsResult<ParkedRow> {
    Ok(ParkedRow {
        outbox_id: OutboxId(row.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?),
        order_id: OrderId(row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
        attempts: row.try_get::<i32, _>(2)?.ok_or_else(|| conversion("attempts"))?,
        last_error: row.try_get::<&str, _>(3)?.map(str::to_string),
        created_at: utc(row.try_get::<NaiveDateTime, _>(4)?.ok_or_else(|| conversion("created_at"))?),
        dead_at: utc(row.try_get::<NaiveDateTime, _>(5)?.ok_or_else(|| conversion("dead_at"))?),
    })
}

async fn requeue(client: &mut TdsClient, target: RequeueTarget, requested_by: &str) -> TdsResult<Vec<OutboxId>> {
    let (by_id, by_order) = match target {
        RequeueTarget::Outbox(id) => (Some(id.0), None),
        RequeueTarget::Order(order) => (None, Some(order.0)),
    };
    batch(client, BEGIN).await?;
    let requeued = rows(client, REQUEUE, &[&by_id, &by_order]).await?;
    let mut ids = Vec::with_capacity(requeued.len());
    for row in &requeued {
        let id = row.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?;
        let order_id = row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?;
        exec(client, INSERT_AUDIT, &[&id, &order_id, &"requeue", &requested_by]).await?;
        ids.push(OutboxId(id));
    }
    batch(client, COMMIT).await?;
    Ok(ids)
}

/// `None` when the order is not `failed` (or does not exist).
async fn retry_order(client: &mut TdsClient, order_id: OrderId, requested_by: &str) -> TdsResult<Option<OutboxId>> {
    batch(client, BEGIN).await?;
    let updated = rows(client, RETRY_ORDER, &[&order_id.0]).await?;
    let Some(row) = updated.first() else {
        batch(client, ROLLBACK).await?;
        return Ok(None);
    };
    let order = order_from_row(row)?;
    let outbox_id = insert_outbox(client, &order, None, None, None).await?;
    exec(client, INSERT_AUDIT, &[&outbox_id.0, &order_id.0, &"retry", &requested_by]).await?;
    batch(client, COMMIT).await?;
    Ok(Some(outbox_id))
}

/// One message's effect inside the batch's transaction.
async fn process_one(
    client: &mut TdsClient,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    price: fn(Decimal, i32) -> Priced,
) -> TdsResult<ProcessOutcome> {
    let found = rows(client, ORDER_FOR_PRICING, &[&order_id.0]).await?;
    // An unknown order leaves no inbox row: a later delivery, once the order exists, still counts.
    let Some(row) = found.first() else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    let status = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
    let status = OrderStatus::from_str(status).map_err(|e| tiberius::error::Error::Conversion(e.into()))?;
    let quantity = row.try_get::<i32, _>(1)?.ok_or_else(|| conversion("quantity"))?;
    let product_id = row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string();
    let list_price = row.try_get::<Decimal, _>(3)?;
    if let Some(id) = outbox_id
        && exec(client, RECORD_INBOX, &[&id.0, &order_id.0]).await? == 0
    {
        return Ok(ProcessOutcome::Duplicate);
    }
    if status.is_final() {
        return Ok(ProcessOutcome::Duplicate);
    }
    let Some(list_price) = list_price else {
        let reason = format!("unknown product {product_id}");
        exec(client, MARK_FAILED, &[&order_id.0, &reason]).await?;
        return Ok(ProcessOutcome::Failed(reason));
    };
    let priced = price(list_price, quantity);
    let updated = rows(client, MARK_PROCESSED, &[&order_id.0, &priced.unit_price, &priced.total_price]).await?;
    Ok(ProcessOutcome::Processed(order_from_row(updated.first().ok_or_else(|| conversion("processed order"))?)?))
}

async fn process_batch(
    client: &mut TdsClient,
    items: &[(Option<OutboxId>, OrderId)],
    price: fn(Decimal, i32) -> Priced,
) -> TdsResult<Vec<ProcessOutcome>> {
    batch(client, BEGIN).await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for (outbox_id, order_id) in items {
        outcomes.push(process_one(client, *outbox_id, *order_id, price).await?);
    }
    batch(client, COMMIT).await?;
    Ok(outcomes)
}

async fn fail(client: &mut TdsClient, outbox_id: Option<OutboxId>, order_id: OrderId, reason: &str) -> TdsResult<bool> {
    batch(client, BEGIN).await?;
    let exists =
        rows(client, ORDER_EXISTS, &[&order_id.0]).await?.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0) > 0;
    if !exists {
        batch(client, ROLLBACK).await?;
        return Ok(false);
    }
    if let Some(id) = outbox_id {
        exec(client, RECORD_INBOX, &[&id.0, &order_id.0]).await?;
    }
    exec(client, MARK_FAILED, &[&order_id.0, &reason]).await?;
    batch(client, COMMIT).await?;
    Ok(true)
}

#[async_trait]
impl ProcessingStore for MssqlStore {
    async fn process_orders(
        &self,
        items: &[(Option<OutboxId>, OrderId)],
        price: fn(Decimal, i32) -> Priced,
    ) -> Result<Vec<ProcessOutcome>, StoreError> {
        let mut conn = self.conn().await?;
        let result = process_batch(&mut conn, items, price).await;
        finish(conn, result)
    }

    async fn fail_order(
        &self,
        outbox_id: Option<OutboxId>,
        order_id: OrderId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let reason: String = reason.chars().take(400).collect();
        let result = fail(&mut conn, outbox_id, order_id, &reason).await;
        finish(conn, result)
    }
}

const CREATE_DATABASE: &str = "CREATE DATABASE orderflow_test_";

/// Creates an empty database on the server named by `url` (an
/// `mssql://…/database` URL) and returns the URL of the new database.
pub async fn fresh_database(url: &str) -> anyhow::Result<String> {
    let (base, query) = url.split_once('?').map_or((url, None), |(b, q)| (b, Some(q)));
    let (server, _) = base.rsplit_once('/').filter(|(s, _)| s.contains('@')).unwrap_or((base, ""));
    let name = format!("{}", Uuid::new_v4().simple());
    let mut client = open_client(&parse_config(url)?).await?;
    batch(&mut client, &format!("{CREATE_DATABASE}{name}")).await?;
    client.close().await?;
    Ok(match query {
        Some(q) => format!("{server}/orderflow_test_{name}?{q}"),
        None => format!("{server}/orderflow_test_{name}"),
    })
}
