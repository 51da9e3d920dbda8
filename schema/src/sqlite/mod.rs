//! SQLite backend: rusqlite behind a deadpool-sqlite pool, WAL mode.
//!
//! Invariant: every write runs in a `BEGIN IMMEDIATE` transaction, so writers
//! queue on the busy timeout instead of failing on a lock upgrade, and time
//! comes from SQLite's clock (`strftime('now')`), never the caller's.

use std::path::Path;
use std::str::FromStr;
use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_sqlite::{Config, Hook, HookError, Pool, PoolConfig, Runtime};
use rusqlite::{Connection, OptionalExtension, Row, TransactionBehavior, params};
use rust_decimal::Decimal;
use tokio::sync::mpsc;

use crate::database_url::SqliteOptions;
use crate::model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
use crate::store::{Answer, Cause, Moves, StoreError};

mod busy;
mod incidents;
mod orders;
mod outbox;
mod processing;
pub(crate) mod sql;
#[cfg(feature = "testing")]
mod testing;

use sql::*;

mod migrations {
    refinery::embed_migrations!("migrations/sqlite");
}

/// Most orders committed together by the group-commit writer.
const MAX_ORDERS_PER_COMMIT: usize = 256;

/// The embedded default backend.
#[derive(Clone)]
pub struct SqliteStore {
    db: Db,
    /// Orders to place, committed in groups by [`place_orders`].
    orders: mpsc::Sender<PlaceRequest>,
}

struct PlaceRequest {
    order: NewOrder,
    answer: Answer,
}

impl SqliteStore {
    /// Opens (creating if needed) the file at `path` and runs the migrations.
    /// The URL's `options`: `busy_timeout_ms`, how long a writer waits for the
    /// lock before the store reports the database unavailable (default 10 s);
    /// `synchronous`, which wins over `durability` (`full`: a commit the
    /// producer answered 201 for, or the consumer ACKed, survives a power loss).
    pub(crate) async fn open(
        path: &Path,
        options: &SqliteOptions,
        durability: crate::Durability,
    ) -> anyhow::Result<Self> {
        let busy_ms = options.busy_ms.unwrap_or(10_000);
        let synchronous = options.synchronous.unwrap_or(match durability {
            crate::Durability::Full => "FULL",
            crate::Durability::Relaxed => "NORMAL",
        });
        let path = path.to_path_buf();
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
                        c.execute_batch(SESSION_SETUP)?;
                        c.pragma_update(None, "synchronous", synchronous)?;
                        c.busy_handler(Some(busy::on_busy))
                    })
                    .await
                    .map_err(|e| HookError::message(e.to_string()))?
                    .map_err(HookError::Backend)
                })
            }))
            .build()?;
        let (orders, queue) = mpsc::channel(4 * MAX_ORDERS_PER_COMMIT);
        let db = Db { pool, writer: Arc::new(tokio::sync::Mutex::new(None)), busy: Duration::from_millis(busy_ms) };
        // The group-commit task gets the database without the order queue's
        // sender: holding that would keep the task alive forever.
        tokio::spawn(orders::place_orders(db.clone(), queue));
        Ok(Self { db, orders })
    }

    /// Runs `f` on a pooled connection: reads (mirrored by `MssqlStore::with_conn`).
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.with_conn(f).await
    }

    /// Runs `f` in one IMMEDIATE transaction on the writer's connection,
    /// committed when `f` succeeds, rolled back after an error (mirrored by
    /// `MssqlStore::transaction`).
    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        self.db.write(f).await
    }
}

/// The pool and the process's writer lock.
#[derive(Clone)]
struct Db {
    pool: Pool,
    /// One write transaction at a time from this process: SQLite has a single
    /// writer anyway, and queueing here is cheaper than any busy handler. It
    /// holds the connection every write uses (taken from the pool at the first
    /// write and kept): a connection's page cache is dropped whenever another
    /// connection wrote since, so writes rotating over the pool would start
    /// from a cold cache each time.
    writer: Arc<tokio::sync::Mutex<Option<deadpool_sqlite::Object>>>,
    /// How long a call waits for another process's lock ([`busy`]).
    busy: Duration,
}

impl Db {
    async fn with_conn<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let conn = self.connection().await?;
        self.run_on(&conn, f).await?
    }

    async fn write<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&rusqlite::Transaction<'_>) -> Result<T, StoreError> + Send + 'static,
    {
        let mut writer = self.writer.lock().await;
        let conn = match writer.take() {
            Some(conn) => conn,
            None => self.connection().await?,
        };
        let out = self
            .run_on(&conn, |c| {
                let tx = c.transaction_with_behavior(TransactionBehavior::Immediate)?;
                let out = f(&tx)?;
                tx.commit()?;
                Ok(out)
            })
            .await;
        // After a panic inside the closure (`Err` here) the connection goes
        // back to the pool, which recycles it, and the next write takes another.
        if out.is_ok() {
            *writer = Some(conn);
        }
        out?
    }

    async fn connection(&self) -> Result<deadpool_sqlite::Object, StoreError> {
        self.pool
            .get()
            .await
            .map_err(|e| StoreError::Unavailable(Cause::new(anyhow::Error::new(e).context("sqlite pool"))))
    }

    /// Runs `f` on `conn`'s worker thread under the busy timeout; the outer
    /// error is the worker's (a panic), the inner one `f`'s.
    async fn run_on<T, F>(&self, conn: &deadpool_sqlite::Object, f: F) -> Result<Result<T, StoreError>, StoreError>
    where
        T: Send + 'static,
        F: FnOnce(&mut Connection) -> Result<T, StoreError> + Send + 'static,
    {
        let busy = self.busy;
        conn.interact(move |c| busy::with_timeout(busy, || f(c)))
            .await
            .map_err(|e| StoreError::Unavailable(Cause::msg(format!("sqlite worker: {e}"))))
    }
}

/// Runs the migrations under an exclusive lock on a sidecar file, so that
/// several services starting at once apply them exactly once.
fn migrate(path: &Path) -> anyhow::Result<()> {
    let lock_path = path.with_extension("migrate.lock");
    let lock = std::fs::OpenOptions::new().create(true).truncate(false).write(true).open(&lock_path)?;
    lock.lock()?;
    let mut conn = Connection::open(path)?;
    conn.execute_batch(SESSION_SETUP)?;
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
                // Busy, locked, I/O, and resources (disk full, out of memory, a
                // file made read-only): the state of the machine, never of a message.
                ErrorCode::DatabaseBusy
                | ErrorCode::DatabaseLocked
                | ErrorCode::CannotOpen
                | ErrorCode::SystemIoFailure
                | ErrorCode::DiskFull
                | ErrorCode::OutOfMemory
                | ErrorCode::ReadOnly
                | ErrorCode::FileLockingProtocolFailed => StoreError::Unavailable(Cause::new(e)),
                // 2067 UNIQUE, 1555 PRIMARY KEY: a duplicate; CHECK, NOT NULL and
                // FOREIGN KEY are the data breaking a rule.
                ErrorCode::ConstraintViolation if matches!(f.extended_code, 2067 | 1555) => {
                    StoreError::Conflict(Cause::new(e))
                }
                ErrorCode::ConstraintViolation | ErrorCode::TooBig | ErrorCode::TypeMismatch => {
                    StoreError::Invalid(Cause::new(e))
                }
                _ => StoreError::Other(Cause::new(e)),
            },
            _ => StoreError::Other(Cause::new(e)),
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

/// The database clock, read once for a whole transaction (a group of orders,
/// a batch of messages), whose rows then share it: they commit together.
fn now(tx: &Connection) -> Result<String, StoreError> {
    Ok(tx.prepare_cached(CLOCK)?.query_row([], |r| r.get(0))?)
}

/// Applies one transaction's status moves to the counters, in one statement.
fn count_moves(tx: &Connection, moves: Moves) -> Result<(), StoreError> {
    if moves.is_empty() {
        return Ok(());
    }
    let [pending, published, processed, failed] = moves.deltas();
    tx.prepare_cached(BUMP_COUNTS)?.execute(params![pending, published, processed, failed])?;
    Ok(())
}

/// An outbox id read back from its TEXT column.
fn parse_id(text: String) -> rusqlite::Result<OutboxId> {
    OutboxId::from_str(&text)
        .map_err(|e| rusqlite::Error::FromSqlConversionFailure(0, rusqlite::types::Type::Text, Box::new(e)))
}

fn outbox_from_row(row: &Row<'_>) -> rusqlite::Result<OutboxRow> {
    Ok(OutboxRow {
        outbox_id: parse_id(row.get(0)?)?,
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
    Ok(conn.prepare_cached(ORDER)?.query_row([order_id.0], order_from_row).optional()?)
}

/// A time `d` before now, as the modifier the statements add to SQLite's clock.
fn ago(d: Duration) -> String {
    format!("-{:.3} seconds", d.as_secs_f64())
}

/// A time `d` after now, as the modifier the statements add to SQLite's clock.
fn from_now(d: Duration) -> String {
    format!("+{:.3} seconds", d.as_secs_f64())
}

fn product_from_row(row: &Row<'_>) -> rusqlite::Result<Product> {
    Ok(Product {
        product_id: row.get(0)?,
        name: row.get(1)?,
        list_price: parse_decimal(Some(row.get(2)?))?.unwrap_or_default(),
    })
}

#[cfg(test)]
mod tests {
    use error_reporter::Report;

    use super::*;

    #[test]
    fn a_store_error_names_its_class_and_keeps_the_driver_error_beneath() {
        let conn = Connection::open_in_memory().unwrap();
        conn.execute_batch(
            "CREATE TABLE t (id INTEGER PRIMARY KEY, q INTEGER CHECK (q > 0)); INSERT INTO t VALUES (1, 1);",
        )
        .unwrap();
        let duplicate = StoreError::from(conn.execute("INSERT INTO t VALUES (1, 1)", []).unwrap_err());
        assert!(matches!(duplicate, StoreError::Conflict(_)), "{duplicate:?}");
        let refused = StoreError::from(conn.execute("INSERT INTO t VALUES (2, 0)", []).unwrap_err()).clone();
        assert_eq!(refused.to_string(), "rejected by the database", "Display is the class alone");
        let shown = Report::new(&refused).to_string();
        assert!(shown.starts_with("rejected by the database: CHECK constraint failed: q > 0"), "{shown}");
        assert_eq!(shown.matches("CHECK constraint failed").count(), 1, "no layer repeats another: {shown}");

        let lost = std::io::Error::new(std::io::ErrorKind::TimedOut, "no free connection in 30 s");
        let unavailable = StoreError::Unavailable(Cause::new(anyhow::Error::new(lost).context("sqlite pool")));
        assert_eq!(
            Report::new(&unavailable).to_string(),
            "database unavailable: sqlite pool: no free connection in 30 s"
        );
    }

    /// The store at `url_path` (a file, with the options of a `sqlite://` URL).
    async fn open(url_path: &str, durability: crate::Durability) -> SqliteStore {
        let url: crate::DatabaseUrl = format!("sqlite://{url_path}").parse().unwrap();
        match url.connect(durability).await.unwrap() {
            crate::database_url::Backend::Sqlite(store) => store,
            crate::database_url::Backend::Mssql(_) => unreachable!("a sqlite:// url opens SQLite"),
        }
    }

    #[tokio::test]
    async fn a_full_disk_is_an_outage_not_a_bad_message() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("full.db").display().to_string(), crate::Durability::Full).await;
        let error = store
            .write(|tx| {
                // The file may grow no more: SQLITE_FULL, as on a full disk.
                let pages: i64 = tx.query_row("PRAGMA page_count", [], |r| r.get(0))?;
                tx.pragma_update(None, "max_page_count", pages)?;
                let insert = tx.execute(
                    "INSERT INTO dead_letters (dead_letter_id, reason, headers, body) \
                     VALUES ('x', 'r', '[]', zeroblob(1000000))",
                    [],
                );
                tx.pragma_update(None, "max_page_count", 1_073_741_823)?;
                insert?;
                Ok(())
            })
            .await
            .unwrap_err();
        assert!(error.is_transient(), "retried, never a message's fault: {error:?}");
        assert!(Report::new(&error).to_string().contains("full"), "{}", Report::new(&error));
    }

    #[tokio::test]
    async fn the_dead_letters_to_send_are_read_through_their_index() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("plan.db").display().to_string(), crate::Durability::Full).await;
        let plan: Vec<String> = store
            .with_conn(|c| {
                let mut stmt = c.prepare(&format!("EXPLAIN QUERY PLAN {}", sql::UNSENT_DEAD_LETTERS))?;
                let rows = stmt.query_map([100], |r| r.get::<_, String>(3))?;
                Ok(rows.collect::<Result<Vec<_>, _>>()?)
            })
            .await
            .unwrap();
        assert!(plan.iter().any(|step| step.contains("USING INDEX dead_letters_unsent")), "{plan:?}");
        assert!(!plan.iter().any(|step| step.contains("TEMP B-TREE")), "no sort: {plan:?}");
    }

    #[tokio::test]
    async fn placing_and_moving_an_order_build_no_temporary_table_and_the_status_check_holds() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir.path().join("check.db").display().to_string(), crate::Durability::Full).await;
        let (temporary, refused) = store
            .with_conn(|c| {
                let opens = |statement: &str| -> Result<usize, StoreError> {
                    let mut stmt = c.prepare(&format!("EXPLAIN {statement}"))?;
                    let unbound = rusqlite::params_from_iter(vec![rusqlite::types::Null; stmt.parameter_count()]);
                    let ops = stmt.query_map(unbound, |r| r.get::<_, String>(1))?.collect::<Result<Vec<_>, _>>()?;
                    Ok(ops.iter().filter(|op| *op == "OpenEphemeral").count())
                };
                let temporary = [sql::INSERT_ORDER, sql::MARK_PROCESSED, sql::MARK_FAILED]
                    .map(|statement| opens(statement).map(|n| (statement, n)))
                    .into_iter()
                    .collect::<Result<Vec<_>, _>>()?;
                let bogus = c.execute(
                    "INSERT INTO orders (customer_name, product_id, quantity, status) VALUES ('a', 'P123', 1, 'lost')",
                    [],
                );
                Ok((temporary, bogus.map_err(StoreError::from)))
            })
            .await
            .unwrap();
        for (statement, n) in temporary {
            assert_eq!(n, 0, "a temporary table for the status CHECK's IN list: {statement}");
        }
        assert!(matches!(refused, Err(StoreError::Invalid(_))), "{refused:?}");
    }

    async fn synchronous(url_path: &str, durability: crate::Durability) -> i64 {
        let store = open(url_path, durability).await;
        store.with_conn(|c| Ok(c.query_row("PRAGMA synchronous", [], |r| r.get(0))?)).await.unwrap()
    }

    #[tokio::test]
    async fn commits_are_durable_unless_the_url_trades_them_away() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sync.db").display().to_string();
        let full = crate::Durability::Full;
        assert_eq!(synchronous(&path, full).await, 2, "FULL by default");
        assert_eq!(synchronous(&format!("{path}?synchronous=normal"), full).await, 1, "NORMAL on request");
        let relaxed = crate::Durability::Relaxed;
        assert_eq!(synchronous(&path, relaxed).await, 1, "NORMAL for writes that are redone anyway");
        assert_eq!(synchronous(&format!("{path}?synchronous=full"), relaxed).await, 2, "the URL wins");
    }
}
