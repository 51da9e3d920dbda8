//! SQL Server backend: tiberius 0.13 behind a deadpool pool with our own manager.
//!
//! Invariants: every statement lives in the table of `sql.rs`, so the T-SQL
//! parser test sees all of them; a call runs in `with_conn` or `transaction`,
//! and a connection that saw any error is discarded, never returned to the
//! pool; time comes from `SYSUTCDATETIME()`.

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use anyhow::Context;
use chrono::{DateTime, NaiveDateTime, Utc};
use deadpool::managed::{self, Metrics, Object, Pool, RecycleResult};
use rust_decimal::Decimal;
use tiberius::{Client, Config, Row, ToSql};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::compat::{Compat, TokioAsyncWriteCompatExt};
use uuid::Uuid;

use crate::model::{Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
use crate::store::{Cause, Moves, StoreError};

mod migrations {
    refinery::embed_migrations!("migrations/mssql");
}

type TdsClient = Client<Compat<TcpStream>>;
type TdsResult<T> = Result<T, tiberius::error::Error>;

mod carried;
mod ids;
mod incidents;
mod orders;
mod outbox;
mod processing;
pub(crate) mod sql;
#[cfg(feature = "testing")]
pub(crate) mod testing;

use sql::*;

/// Where SQL Server is, and how long opening a connection to it may take
/// (`DB_CONNECT_TIMEOUT_MS`); how long a call may wait for an answer
/// (`DB_COMMAND_TIMEOUT_MS`) is the config's command timeout.
#[derive(Clone)]
pub(crate) struct Server {
    pub(crate) config: Config,
    pub(crate) connect_timeout: Duration,
}

/// deadpool manager for tiberius connections.
struct TdsManager {
    server: Server,
    /// Shared by the pool's connections: after a failed connect, the next waits its turn.
    gate: Arc<ConnectGate>,
}

impl managed::Manager for TdsManager {
    type Type = TdsClient;
    type Error = tiberius::error::Error;

    async fn create(&self) -> TdsResult<TdsClient> {
        self.gate.admit()?;
        let opened = async {
            let mut client = open_client(&self.server.config, self.server.connect_timeout).await?;
            client.simple_query(SESSION_SETUP).await?.into_results().await?;
            Ok(client)
        };
        let opened = opened.await;
        self.gate.record(opened.is_ok());
        opened
    }

    /// A connection used within the last [`RECHECK_AFTER`] is handed out as it
    /// is: it came back through [`Conn::release`] after a call that ended, so no
    /// transaction is open (a round trip to ask costs as much as a small
    /// statement, a third of an order's work on Babelfish). One idle longer
    /// is asked, which also finds one the server closed meanwhile.
    async fn recycle(&self, client: &mut TdsClient, metrics: &Metrics) -> RecycleResult<Self::Error> {
        if metrics.last_used() < RECHECK_AFTER {
            return Ok(());
        }
        round_trip();
        client.simple_query(RESET_SESSION).await?.into_results().await?;
        Ok(())
    }
}

/// How long opening a connection (TCP, TLS, login) may take by default
/// (`DB_CONNECT_TIMEOUT_MS`): a blackholed host answers "unavailable" instead
/// of hanging the call. Nothing is sent on a connection before it is open, so
/// cutting it there cannot desynchronise one.
pub(crate) const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a call may wait for the server's answer by default
/// (`DB_COMMAND_TIMEOUT_MS`, ADO.NET's own default): past it the connection
/// is closed, which rolls back what it held, and the call is "unavailable".
pub(crate) const COMMAND_TIMEOUT: Duration = Duration::from_secs(30);
/// After a failed connect, no new one is tried for this long, doubling with
/// each failure up to [`CONNECT_BACKOFF_MAX`]: during an outage or a failover
/// the callers get "unavailable" at once instead of a connect each.
const CONNECT_BACKOFF_MIN: Duration = Duration::from_millis(100);
const CONNECT_BACKOFF_MAX: Duration = Duration::from_secs(5);

/// Backs off connecting after a failure (see [`CONNECT_BACKOFF_MIN`]).
#[derive(Default)]
struct ConnectGate {
    /// Failures in a row, and the moment before which no connect is tried.
    state: std::sync::Mutex<(u32, Option<std::time::Instant>)>,
}

impl ConnectGate {
    /// Refuses a connect while the last failure's backoff runs.
    fn admit(&self) -> TdsResult<()> {
        let (failures, not_before) = *self.state.lock().expect("connect gate");
        match not_before.map(|t| t.saturating_duration_since(std::time::Instant::now())) {
            Some(wait) if !wait.is_zero() => Err(tiberius::error::Error::Io {
                kind: std::io::ErrorKind::ConnectionRefused,
                message: format!("{failures} connects in a row failed; the next is tried in {wait:?}"),
            }),
            _ => Ok(()),
        }
    }

    fn record(&self, opened: bool) {
        let mut state = self.state.lock().expect("connect gate");
        *state = match opened {
            true => (0, None),
            false => {
                let wait = CONNECT_BACKOFF_MIN.saturating_mul(1 << state.0.min(16)).min(CONNECT_BACKOFF_MAX);
                (state.0 + 1, Some(std::time::Instant::now() + wait))
            }
        };
    }
}
/// How long a pooled connection may stay idle and still be handed out unasked.
const RECHECK_AFTER: Duration = Duration::from_secs(1);
/// How long a call waits for a pooled connection before "unavailable".
const POOL_WAIT: Duration = Duration::from_secs(10);

async fn open_client(config: &Config, timeout: Duration) -> TdsResult<TdsClient> {
    // Boxed: the login's TLS handshake is a large future, and every future
    // that waits on a new connection (a pool's `get` inside `with_conn` inside
    // `transaction` ...) would hold a copy of it; unboxed, a debug build ran
    // a test thread's 2 MiB stack out.
    let connect = Box::pin(async {
        let tcp = TcpStream::connect(config.get_addr()).await?;
        tcp.set_nodelay(true)?;
        Client::connect(config.clone(), tcp.compat_write()).await
    });
    match tokio::time::timeout(timeout, connect).await {
        Ok(client) => client,
        Err(_) => Err(tiberius::error::Error::Io {
            kind: std::io::ErrorKind::TimedOut,
            message: format!("no connection to {} within {timeout:?}", config.get_addr()),
        }),
    }
}

/// The production backend.
#[derive(Clone)]
pub struct MssqlStore {
    /// One pool for every call. Its most recently used connections go out
    /// first, so the few that carry the load are the ones that have met the
    /// procedures (Babelfish compiles one on each connection's first call).
    pool: Pool<TdsManager>,
    /// Orders to place, committed in groups by [`orders::place_orders`].
    orders: mpsc::Sender<orders::PlaceRequest>,
}

impl MssqlStore {
    /// Connects, runs the migrations under an application lock, and builds the pool.
    pub(crate) async fn connect(server: Server) -> anyhow::Result<Self> {
        // Migrations are not calls: one may rebuild a large table for minutes.
        let mut unbounded = server.config.clone();
        unbounded.command_timeout(None);
        let mut client = open_client(&unbounded, server.connect_timeout).await.context("opening a connection")?;
        client.simple_query(MIGRATION_LOCK).await?.into_results().await.context("taking the migration lock")?;
        let migrated = migrate(&mut client).await;
        client.simple_query(MIGRATION_UNLOCK).await?.into_results().await?;
        migrated?;
        client.close().await?;
        let gate = Arc::new(ConnectGate::default());
        let pool = pool_of(&server, &gate, 16)?;
        let (orders, queue) = mpsc::channel(1024);
        // The writer gets a store whose sender is closed: holding the real one
        // would keep it alive forever.
        let (closed, _) = mpsc::channel(1);
        tokio::spawn(orders::place_orders(Self { pool: pool.clone(), orders: closed }, queue));
        Ok(Self { pool, orders })
    }

    /// Runs `f` on a connection of the pool (mirrors `SqliteStore::with_conn`).
    async fn with_conn<T>(
        &self,
        f: impl AsyncFnOnce(&mut TdsClient) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        run_on(&self.pool, f).await
    }

    /// Runs `f` in one transaction, committed when `f` succeeds; after any
    /// error the connection is closed, which rolls it back (mirrors
    /// `SqliteStore::write`).
    async fn transaction<T>(
        &self,
        f: impl AsyncFnOnce(&mut TdsClient) -> Result<T, StoreError>,
    ) -> Result<T, StoreError> {
        self.with_conn(async |client| {
            batch(client, BEGIN).await?;
            let out = f(client).await?;
            batch(client, COMMIT).await?;
            Ok(out)
        })
        .await
    }
}

/// Runs `f` on a connection of `pool`, which goes back to the pool once `f`
/// succeeded, and is closed after an error: it may be mid-transaction or
/// desynchronised.
async fn run_on<T>(
    pool: &Pool<TdsManager>,
    f: impl AsyncFnOnce(&mut TdsClient) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let mut conn = conn_from(pool).await?;
    let out = f(&mut conn).await;
    if out.is_ok() {
        conn.release();
    }
    out
}

/// A pool of at most `size` connections, the most recently used handed out
/// first (each Babelfish connection parses a statement or compiles a
/// procedure slowly the first time it meets it, so a few hot connections
/// beat many lukewarm ones).
fn pool_of(server: &Server, gate: &Arc<ConnectGate>, size: usize) -> anyhow::Result<Pool<TdsManager>> {
    Ok(Pool::builder(TdsManager { server: server.clone(), gate: gate.clone() })
        .max_size(size)
        .queue_mode(deadpool::managed::QueueMode::Lifo)
        .runtime(deadpool::Runtime::Tokio1)
        .wait_timeout(Some(POOL_WAIT))
        .create_timeout(Some(server.connect_timeout + Duration::from_secs(1)))
        .build()?)
}

async fn conn_from(pool: &Pool<TdsManager>) -> Result<Conn, StoreError> {
    let conn = pool
        .get()
        .await
        .map_err(|e| StoreError::Unavailable(Cause::new(anyhow::Error::new(e).context("sql server pool"))))?;
    Ok(Conn(Some(conn)))
}

/// Texts of migrations that SQL Server applied before they were replaced:
/// each replacement ends in the same schema, so a database that applied the
/// first text has its recorded checksum moved to the replacement's.
const SUPERSEDED: [(&str, &str); 1] =
    [("V3__binary_keys", include_str!("../../migrations/mssql-superseded/V3__binary_keys.sql"))];

/// Each superseded migration: its version, the first text's checksum and the
/// replacement's, as refinery records them.
fn superseded_checksums() -> anyhow::Result<Vec<(i32, String, String)>> {
    let runner = migrations::migrations::runner();
    SUPERSEDED
        .iter()
        .map(|(name, text)| {
            let first = refinery::Migration::unapplied(name, text)?;
            let current = runner.get_migrations().iter().find(|m| m.version() == first.version());
            let current = current.ok_or_else(|| anyhow::anyhow!("superseded migration {name} has no replacement"))?;
            Ok((first.version(), first.checksum().to_string(), current.checksum().to_string()))
        })
        .collect()
}

async fn migrate(client: &mut TdsClient) -> anyhow::Result<()> {
    for (version, first, current) in superseded_checksums()? {
        changed(client, ACCEPT_SUPERSEDED, &[&current, &version, &first])
            .await
            .with_context(|| format!("accepting the first text of migration {version}"))?;
    }
    migrations::migrations::runner().run_async(client).await.context("running the migrations")?;
    Ok(())
}

/// What an SQL Server error number means for the caller (the table in ARCHITECTURE.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ErrorClass {
    /// Retry later: deadlocks, lock timeouts, lost connections, a busy or failing-over server.
    Transient,
    /// A unique key exists already.
    Duplicate,
    /// The data breaks a rule: too long, out of range, wrong type, a constraint.
    Invalid,
    /// Anything else: permanent.
    Other,
}

fn class_of(code: u32) -> ErrorClass {
    match code {
        // 1205 deadlock victim, 1222 lock timeout, 3960 snapshot update conflict;
        // 41301/41302/41305/41325/41839 memory-optimized tables' commit conflicts;
        // 20/64/121/233/10053/10054/10060/10061/11001 transport, 4060 cannot open
        // database, 18456 login failed, 18401 server in script-upgrade mode.
        1205 | 1222 | 3960 | 41301 | 41302 | 41305 | 41325 | 41839 | 20 | 64 | 121 | 233 | 10053 | 10054 | 10060
        | 10061 | 11001 | 4060 | 18456 | 18401 => ErrorClass::Transient,
        // Azure SQL reconfiguration and throttling (docs/sql-server.md): 40143, 40197,
        // 40501, 40540, 40613, 49918-49920, 49977, 49983, 10928, 10929, 4221, 615,
        // 926; serverless or paused pools 42108, 42109.
        40143 | 40197 | 40501 | 40540 | 40613 | 49918 | 49919 | 49920 | 49977 | 49983 | 10928 | 10929 | 4221 | 615
        | 926 | 42108 | 42109 => ErrorClass::Transient,
        // Always On failover: the session reached a replica that is not (or no
        // longer) the primary (976, 978, 983), or a role change ended its
        // transaction (3948); reconnecting finds the new primary.
        976 | 978 | 983 | 3948 => ErrorClass::Transient,
        // Our own THROW: an order moved under every pass of its move (sql.rs); done again.
        50002 => ErrorClass::Transient,
        // Resources and capacity, the state of the server and never of a message:
        // 701/802/8628/8645/8651 memory, 1101/1105 filegroup full, 9002 log full,
        // 1204 lock resources, 8623 query processor out of resources; Azure
        // 40544 size quota, 40549 long transaction, 40550 too many locks,
        // 40551 tempdb, 40552 log space, 40553 memory.
        701 | 802 | 8628 | 8645 | 8651 | 1101 | 1105 | 9002 | 1204 | 8623 | 40544 | 40549 | 40550 | 40551 | 40552
        | 40553 => ErrorClass::Transient,
        // 2627 unique constraint, 2601 unique index.
        2627 | 2601 => ErrorClass::Duplicate,
        // 2628/8152 truncation; 245/8114/8169 conversion; 220/8115 arithmetic overflow;
        // 241/242 date conversion or out of range; 515 NULL into NOT NULL; 547 FOREIGN
        // KEY or CHECK; 8009/8016/8023 a parameter the server refused.
        2628 | 8152 | 245 | 8114 | 8169 | 220 | 8115 | 241 | 242 | 515 | 547 | 8009 | 8016 | 8023 => {
            ErrorClass::Invalid
        }
        _ => ErrorClass::Other,
    }
}

/// Babelfish reports a PostgreSQL error that it maps to no SQL Server number
/// as this one, with PostgreSQL's message (seen: a lock timeout, which SQL
/// Server reports as 1222). Its "not currently supported" refusals share it.
const BABELFISH_UNMAPPED: u32 = 33557097;

/// PostgreSQL's messages for the state of a busy, full or failing server,
/// for errors reported as [`BABELFISH_UNMAPPED`]: transient, as the SQL
/// Server numbers for the same conditions are.
const BABELFISH_TRANSIENT: [&str; 12] = [
    "lock timeout",
    "deadlock detected",
    "could not serialize access",
    "could not obtain lock",
    "out of memory",
    "out of shared memory",
    "no space left on device",
    "could not extend file",
    "could not write",
    "too many connections",
    "terminating connection",
    "the database system is",
];

/// The class of a server error from its number and, for Babelfish's
/// [`BABELFISH_UNMAPPED`], its message.
fn class_of_error(code: u32, message: &str) -> ErrorClass {
    let message = message.to_ascii_lowercase();
    match code {
        BABELFISH_UNMAPPED if BABELFISH_TRANSIENT.iter().any(|m| message.contains(m)) => ErrorClass::Transient,
        code => class_of(code),
    }
}

impl From<tiberius::error::Error> for StoreError {
    fn from(e: tiberius::error::Error) -> Self {
        map_err(e)
    }
}

fn map_err(e: tiberius::error::Error) -> StoreError {
    let message = match &e {
        tiberius::error::Error::Server(token) => token.message().to_string(),
        _ => String::new(),
    };
    match e.code() {
        Some(code) => match class_of_error(code, &message) {
            ErrorClass::Transient => StoreError::Unavailable(Cause::new(e)),
            ErrorClass::Duplicate => StoreError::Conflict(Cause::new(e)),
            ErrorClass::Invalid => StoreError::Invalid(Cause::new(e)),
            ErrorClass::Other => StoreError::Other(Cause::new(e)),
        },
        None => match e {
            tiberius::error::Error::Io { .. }
            | tiberius::error::Error::Tls(_)
            | tiberius::error::Error::Routing { .. } => StoreError::Unavailable(Cause::new(e)),
            other if other.to_string().to_ascii_lowercase().contains("timed out") => {
                StoreError::Unavailable(Cause::new(other))
            }
            other => StoreError::Other(Cause::new(other)),
        },
    }
}

/// A pooled connection that returns to the pool only through [`Conn::release`].
/// Dropped anywhere else (a caller cancelled mid-call, say an HTTP client that
/// hung up while its handler waited on the database) it is closed instead: a
/// half-read answer or an open transaction never reaches the next caller, and
/// the server rolls back whatever the closed session left open.
struct Conn(Option<Object<TdsManager>>);

impl std::ops::Deref for Conn {
    type Target = TdsClient;

    fn deref(&self) -> &TdsClient {
        self.0.as_ref().expect("a connection until finished")
    }
}

impl std::ops::DerefMut for Conn {
    fn deref_mut(&mut self) -> &mut TdsClient {
        self.0.as_mut().expect("a connection until finished")
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if let Some(conn) = self.0.take() {
            drop(Object::take(conn));
        }
    }
}

impl Conn {
    /// Back to the pool, after a call that ended.
    fn release(mut self) {
        drop(self.0.take());
    }
}

fn conversion(what: &str) -> tiberius::error::Error {
    tiberius::error::Error::Conversion(format!("unexpected NULL or type in {what}").into())
}

fn utc(t: NaiveDateTime) -> DateTime<Utc> {
    t.and_utc()
}

fn order_from_row(row: &Row) -> TdsResult<Order> {
    order_at(row, 0)
}

/// The status in column `i`.
fn status_at(row: &Row, i: usize) -> TdsResult<OrderStatus> {
    let text = row.try_get::<&str, _>(i)?.ok_or_else(|| conversion("status"))?;
    OrderStatus::from_str(text).map_err(|e| tiberius::error::Error::Conversion(e.into()))
}

/// The order whose columns (`order_columns!`) start at column `at`.
fn order_at(row: &Row, at: usize) -> TdsResult<Order> {
    let text = |i: usize| -> TdsResult<String> {
        Ok(row.try_get::<&str, _>(at + i)?.ok_or_else(|| conversion("order"))?.to_string())
    };
    Ok(Order {
        order_id: OrderId(row.try_get::<i64, _>(at)?.ok_or_else(|| conversion("order_id"))?),
        customer_name: text(1)?,
        product_id: text(2)?,
        quantity: row.try_get::<i32, _>(at + 3)?.ok_or_else(|| conversion("quantity"))?,
        status: status_at(row, at + 4)?,
        unit_price: row.try_get::<Decimal, _>(at + 5)?,
        total_price: row.try_get::<Decimal, _>(at + 6)?,
        failure_reason: row.try_get::<&str, _>(at + 7)?.map(str::to_string),
        created_at: utc(row.try_get::<NaiveDateTime, _>(at + 8)?.ok_or_else(|| conversion("created_at"))?),
        processed_at: row.try_get::<NaiveDateTime, _>(at + 9)?.map(utc),
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

/// Refuses to send a NULL parameter: tiberius encodes a NULL string, decimal or
/// date as the untyped NULLTYPE (0x1F), which some TDS servers reject (8009).
/// Optional values use a statement of their own or a `NULLIF` sentinel instead.
fn check_params(sql: &str, params: &[&dyn ToSql]) -> TdsResult<()> {
    use tiberius::ColumnData as C;
    for (i, param) in params.iter().enumerate() {
        let null = match param.to_sql() {
            C::U8(v) => v.is_none(),
            C::I16(v) => v.is_none(),
            C::I32(v) => v.is_none(),
            C::I64(v) => v.is_none(),
            C::F32(v) => v.is_none(),
            C::F64(v) => v.is_none(),
            C::Bit(v) => v.is_none(),
            C::String(v) => v.is_none(),
            C::Guid(v) => v.is_none(),
            C::Binary(v) => v.is_none(),
            C::Numeric(v) => v.is_none(),
            C::Xml(v) => v.is_none(),
            C::DateTime(v) => v.is_none(),
            C::SmallDateTime(v) => v.is_none(),
            C::Time(v) => v.is_none(),
            C::Date(v) => v.is_none(),
            C::DateTime2(v) => v.is_none(),
            C::DateTimeOffset(v) => v.is_none(),
        };
        if null {
            let message = format!("parameter @P{} would be sent as an untyped NULL in: {sql}", i + 1);
            return Err(tiberius::error::Error::Conversion(message.into()));
        }
    }
    Ok(())
}

/// Round trips to the server, for [`crate::round_trips`].
pub(crate) static ROUND_TRIPS: AtomicU64 = AtomicU64::new(0);

fn round_trip() {
    ROUND_TRIPS.fetch_add(1, Ordering::Relaxed);
}

async fn rows(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> TdsResult<Vec<Row>> {
    check_params(sql, params)?;
    round_trip();
    client.query(sql, params).await?.into_first_result().await
}

/// Items (by index) split into the calls a batch procedure takes: each item
/// goes in the first call that holds none of its keys, so no key comes twice
/// in one call, and later calls see the earlier ones' effects. Nearly every
/// batch is one call.
fn calls_without_repeats<K: Eq + std::hash::Hash>(keys: impl IntoIterator<Item = Vec<K>>) -> Vec<Vec<usize>> {
    let mut calls: Vec<(std::collections::HashSet<K>, Vec<usize>)> = Vec::new();
    for (i, keys) in keys.into_iter().enumerate() {
        let at = match calls.iter().position(|(taken, _)| keys.iter().all(|k| !taken.contains(k))) {
            Some(at) => at,
            None => {
                calls.push((std::collections::HashSet::new(), Vec::new()));
                calls.len() - 1
            }
        };
        calls[at].0.extend(keys);
        calls[at].1.push(i);
    }
    calls.into_iter().map(|(_, members)| members).collect()
}

/// The rows of every result set a call returns, in order (a procedure may
/// answer with several).
async fn all_rows(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> TdsResult<Vec<Row>> {
    check_params(sql, params)?;
    round_trip();
    Ok(client.query(sql, params).await?.into_results().await?.into_iter().flatten().collect())
}

/// How many rows a statement changed, counted from the rows its `OUTPUT`
/// returns (see `sql.rs`: the server's own count is not to be trusted).
async fn changed(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> TdsResult<u64> {
    Ok(rows(client, sql, params).await?.len() as u64)
}

async fn exec(client: &mut TdsClient, sql: &str, params: &[&dyn ToSql]) -> TdsResult<u64> {
    check_params(sql, params)?;
    round_trip();
    Ok(client.execute(sql, params).await?.total())
}

/// An optional text bound without NULL: `None` becomes the empty string, which
/// the statement turns back into NULL with `NULLIF(@Pn, N'')`.
fn text_or_empty(value: &Option<String>) -> &dyn ToSql {
    match value {
        Some(text) => text,
        None => &"",
    }
}

async fn batch(client: &mut TdsClient, sql: &str) -> TdsResult<()> {
    batch_rows(client, sql).await.map(drop)
}

/// A SQL batch that takes no value (session control, transactions, the test
/// probe's fixed statements), with the rows of every result set it returns.
async fn batch_rows(client: &mut TdsClient, sql: &str) -> TdsResult<Vec<Row>> {
    round_trip();
    Ok(client.simple_query(sql).await?.into_results().await?.into_iter().flatten().collect())
}

/// The counter slot of one transaction: it varies from call to call, so that
/// concurrent writers rarely share a row.
fn count_slot() -> i32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.subsec_nanos());
    i32::try_from(nanos % 16).unwrap_or(0)
}

/// Applies one transaction's status moves to the counters, in one statement.
async fn count_moves(client: &mut TdsClient, moves: Moves) -> TdsResult<()> {
    let [pending, published, processed, failed] = moves.deltas();
    if moves.is_empty() {
        return Ok(());
    }
    exec(client, BUMP_COUNTS, &[&pending, &published, &processed, &failed, &count_slot()]).await.map(drop)
}

/// A time `d` after now, in the milliseconds the statements add to the
/// server's clock (DATEADD takes an INT: short spans, leases and retries, up
/// to 24 days).
fn from_now(d: Duration) -> i32 {
    i32::try_from(d.as_millis()).unwrap_or(i32::MAX)
}

/// A time `d` before now, in the seconds the statements add to the server's
/// clock (DATEADD takes an INT: long spans, retention and staleness, up to 68 years).
fn ago(d: Duration) -> i32 {
    -i32::try_from(d.as_secs()).unwrap_or(i32::MAX)
}

/// The count a statement answers (its first row's first column).
fn count(rows: &[Row]) -> i64 {
    rows.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0)
}

async fn load_order(client: &mut TdsClient, order_id: OrderId) -> TdsResult<Option<Order>> {
    rows(client, ORDER, &[&order_id.0]).await?.first().map(order_from_row).transpose()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_numbers_map_to_what_the_caller_can_do() {
        for code in [1205, 1222, 40613, 10054, 9002, 1105, 1204, 8623, 701, 40549, 40550, 40552] {
            assert_eq!(class_of(code), ErrorClass::Transient, "{code}: the server's state, never a message's");
        }
        for code in [2627, 2601] {
            assert_eq!(class_of(code), ErrorClass::Duplicate, "{code}");
        }
        for code in [2628, 8152, 547, 245, 8114, 515, 8009] {
            assert_eq!(class_of(code), ErrorClass::Invalid, "{code}");
        }
        assert_eq!(class_of(208), ErrorClass::Other, "invalid object name");
    }

    #[test]
    fn microsofts_documented_transient_numbers_are_retried() {
        // Azure SQL's transient list, the Always On role changes, and the
        // memory-optimized commit conflicts: each is the server's passing state.
        let azure = [4060, 4221, 40143, 40197, 40501, 40540, 40613, 49918, 49919, 49920, 10928, 10929, 615, 926];
        let failover = [976, 978, 983, 3948, 18401, 42108, 42109];
        let in_memory = [41301, 41302, 41305, 41325, 41839];
        for code in azure.into_iter().chain(failover).chain(in_memory) {
            assert_eq!(class_of(code), ErrorClass::Transient, "{code}");
        }
    }

    #[tokio::test]
    async fn a_failed_connect_backs_off_the_next_and_a_good_one_ends_it() {
        let gate = ConnectGate::default();
        gate.admit().expect("the first connect is tried");
        gate.record(false);
        let refused = gate.admit().expect_err("within the backoff").to_string();
        assert!(refused.contains("1 connects in a row failed"), "{refused}");
        assert!(matches!(map_err(gate.admit().unwrap_err()), StoreError::Unavailable(_)), "an outage, retried");
        tokio::time::sleep(CONNECT_BACKOFF_MIN).await;
        gate.admit().expect("tried again after the backoff");
        gate.record(false);
        gate.record(false);
        let waits = gate.state.lock().unwrap().1.unwrap().saturating_duration_since(std::time::Instant::now());
        assert!(waits > CONNECT_BACKOFF_MIN * 2 && waits <= CONNECT_BACKOFF_MIN * 4, "doubles: {waits:?}");
        for _ in 0..40 {
            gate.record(false);
        }
        let waits = gate.state.lock().unwrap().1.unwrap().saturating_duration_since(std::time::Instant::now());
        assert!(waits <= CONNECT_BACKOFF_MAX, "capped: {waits:?}");
        gate.record(true);
        gate.admit().expect("a good connect ends the backoff");
    }

    #[tokio::test]
    async fn a_blackholed_server_answers_unavailable_within_the_connect_timeout() {
        // A listener that accepts and never answers the login: the TDS
        // pre-login waits for ever without a connect timeout.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let mut config = Config::new();
        config.host("127.0.0.1");
        config.port(silent.local_addr().unwrap().port());
        config.trust_cert();
        let started = std::time::Instant::now();
        let Err(error) = open_client(&config, Duration::from_millis(300)).await else { panic!("no login") };
        assert!(started.elapsed() < Duration::from_secs(3), "{:?}", started.elapsed());
        assert!(error.to_string().contains("within 300ms"), "{error}");
        assert!(matches!(map_err(error), StoreError::Unavailable(_)));
    }

    #[test]
    fn babelfish_reports_an_outage_by_its_message() {
        for message in [
            "canceling statement due to lock timeout",
            "deadlock detected",
            "could not extend file \"base/16384/16385\": No space left on device",
            "out of shared memory",
        ] {
            assert_eq!(class_of_error(BABELFISH_UNMAPPED, message), ErrorClass::Transient, "{message}");
        }
        let refused = "'COLLATE in ALTER TABLE ALTER COLUMN' is not currently supported in Babelfish";
        assert_eq!(class_of_error(BABELFISH_UNMAPPED, refused), ErrorClass::Other);
        assert_eq!(class_of_error(2627, "lock timeout"), ErrorClass::Duplicate, "a number SQL Server defines decides");
    }

    #[test]
    fn a_null_parameter_is_refused_before_it_is_sent() {
        let none_text: Option<String> = None;
        let none_time: Option<NaiveDateTime> = None;
        let none_int: Option<i64> = None;
        for null in [&none_text as &dyn ToSql, &none_time, &none_int] {
            let refused = check_params("SELECT @P1", &[&1_i64, null]).unwrap_err();
            assert!(refused.to_string().contains("@P2 would be sent as an untyped NULL"), "{refused}");
        }
        assert!(check_params("SELECT @P1", &[&1_i64, text_or_empty(&none_text), &"x"]).is_ok());
    }
}
