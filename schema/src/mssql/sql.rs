//! Every SQL Server statement the backend sends, in one table ([`statements!`])
//! that the T-SQL parser test below reads.
//!
//! Invariants, each learnt on a real TDS engine (Babelfish 4.3) where SQLite
//! could not teach it:
//! - statements are written in the shapes sqlparser's MsSqlDialect accepts (no
//!   updatable CTEs, no MERGE, no DELETE TOP, no `EXEC @r = proc`);
//! - no statement is sent with a NULL parameter (some TDS servers refuse the
//!   untyped NULLTYPE that tiberius sends for it): optional values have a
//!   statement text of their own or an empty-string sentinel read with `NULLIF`;
//! - a count of changed rows is read from the rows a statement's `OUTPUT`
//!   returns, never from the server's row count (Babelfish reports 0 rows for an
//!   `INSERT ... SELECT` or a `DELETE ... WHERE ... IN (SELECT ...)` that changed some);
//! - every value is a parameter: no statement text is built from a value;
//! - the status an order leaves comes from the statement that moves it, one
//!   pass per status it can leave, never from an earlier read nor from
//!   `OUTPUT deleted.status`: engines that ignore lock hints (Babelfish) let
//!   another writer commit in between, and Babelfish's `deleted` is the row
//!   as first seen, before the statement waited on it;
//! - a unit of work done on every order or batch (placing a group, claiming
//!   and confirming a batch, applying the consumer's batch) is one call of a
//!   procedure that owns its transaction, parsed once per session: Babelfish
//!   parses and plans each statement sent as text on every call (a 27-row
//!   confirmation took 5.9 ms as text, 2.4 ms as a call). Its rows travel as
//!   one JSON or list parameter, every row numbered by the caller, and its
//!   texts carried (`carried.rs`): Babelfish's OPENJSON returns a string with
//!   its escapes (`\"`, `\\`, `\n`) left in.

use crate::statements::{order_columns, statements};

/// The database clock, read once per statement into a variable, `@P1`
/// seconds from now: a volatile SYSUTCDATETIME() inside a subquery made
/// Babelfish (PostgreSQL) re-run the subquery for every outer row and give up
/// its index (a 10,000-row claim took 41 s); a variable is a constant to the
/// planner, on both engines.
macro_rules! cutoff {
    () => {
        "SET NOCOUNT ON; DECLARE @cutoff DATETIME2(3) = DATEADD(second, @P1, SYSUTCDATETIME()); "
    };
}

/// Parked rows made due again (attempts reset), those `$which` picks.
macro_rules! requeue {
    ($which:literal) => {
        concat!(
            "UPDATE dbo.outbox SET dead_at = NULL, attempts = 0, next_attempt_at = SYSUTCDATETIME(), \
             lease_owner = NULL, lease_until = NULL OUTPUT inserted.outbox_id, inserted.order_id \
             WHERE dead_at IS NOT NULL AND published_at IS NULL",
            $which
        )
    };
}

/// Orders (alias `o`) `published`, not processed, with no outbox row waiting
/// and none published since the cutoff: stuck since their last publication.
/// The created_at test keeps ix (status, created_at) in use and covers orders
/// whose rows retention deleted (publication follows creation).
macro_rules! stuck_published {
    () => {
        "o.status = N'published' AND o.created_at < @cutoff \
         AND NOT EXISTS (SELECT 1 FROM dbo.outbox x WHERE x.order_id = o.order_id \
           AND (x.published_at IS NULL OR x.published_at >= @cutoff))"
    };
}

statements! {
    // Sessions, transactions and the counters.
    SESSION_SETUP = "SET XACT_ABORT ON; SET LOCK_TIMEOUT 5000";
    RESET_SESSION = "IF @@TRANCOUNT > 0 ROLLBACK";
    BEGIN = "BEGIN TRANSACTION";
    COMMIT = "COMMIT TRANSACTION";
    /// Migrations from several services at once serialise on an application lock.
    /// When sp_getapplock did not get the lock (timeout, deadlock), nothing may
    /// migrate: the batch fails unless the session now holds it.
    MIGRATION_LOCK = "EXEC sp_getapplock @Resource = N'orderflow-migrations', \
         @LockMode = N'Exclusive', @LockOwner = N'Session', @LockTimeout = 120000; \
         IF APPLOCK_MODE(N'public', N'orderflow-migrations', N'Session') <> N'Exclusive' \
         THROW 50001, N'the migration lock was not granted within 120 s', 1";
    MIGRATION_UNLOCK =
        "EXEC sp_releaseapplock @Resource = N'orderflow-migrations', @LockOwner = N'Session'";
    ACCEPT_SUPERSEDED = "IF OBJECT_ID(N'dbo.refinery_schema_history') IS NOT NULL \
         UPDATE dbo.refinery_schema_history SET checksum = @P1 OUTPUT inserted.version \
         WHERE version = @P2 AND checksum = @P3";
    /// Every status's counter in one of its sixteen slots: pending, published,
    /// processed, failed move by @P1 .. @P4.
    BUMP_COUNTS = "UPDATE dbo.order_counts SET n = n + CASE status WHEN N'pending' THEN @P1 \
         WHEN N'published' THEN @P2 WHEN N'processed' THEN @P3 WHEN N'failed' THEN @P4 ELSE 0 END WHERE slot = @P5";
    ORDER = concat!("SELECT ", order_columns!(""), " FROM dbo.orders WHERE order_id = @P1");

    // Placing and reading orders (`orders.rs`).
    PRODUCTS = "SELECT product_id, name, list_price FROM dbo.products ORDER BY product_id";
    PRODUCT = "SELECT product_id, name, list_price FROM dbo.products WHERE product_id = @P1";
    ORDER_BY_KEY =
        concat!("SELECT ", order_columns!(""), " FROM dbo.orders WITH (UPDLOCK, HOLDLOCK) WHERE idempotency_key = @P1");
    /// A group of orders placed in one call, which owns its transaction
    /// (`dbo.place_orders`, migration V21): @P1 the orders as JSON (their
    /// texts carried, `carried.rs`), @P2 the event type, @P3 how many, @P4
    /// whether any has an idempotency key.
    PLACE_ORDERS = "EXEC dbo.place_orders @P1, @P2, @P3, @P4";
    /// Empty trace context means none: a valid traceparent is never empty.
    INSERT_OUTBOX = "INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload, traceparent, tracestate, \
         created_at) VALUES (@P1, @P2, @P3, @P4, NULLIF(@P5, N''), NULLIF(@P6, N''), @P7)";
    INSERT_OUTBOX_NOW = "INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload, traceparent, \
         tracestate, created_at) VALUES (@P1, @P2, @P3, @P4, NULLIF(@P5, N''), NULLIF(@P6, N''), SYSUTCDATETIME())";
    ORDER_COUNTS = "SELECT status, SUM(n) FROM dbo.order_counts GROUP BY status";
    RECENT_ORDERS =
        concat!("SELECT TOP (@P1) ", order_columns!(""), " FROM dbo.orders ORDER BY order_id DESC");
    FAILED_ORDERS = concat!(
        "SELECT TOP (@P1) ",
        order_columns!(""),
        " FROM dbo.orders WHERE status = N'failed' ORDER BY order_id DESC"
    );
    PUBLISHED_AT = "SELECT MAX(published_at) FROM dbo.outbox WHERE order_id = @P1";

    // The relay's outbox and its administration (`outbox.rs`).
    /// The relay's claim and confirmation of a whole batch, one call each:
    /// procedures (migrations V12, V13, now V28, V29), parsed once per session.
    /// The claim takes the owner, the lease in milliseconds and the limit, and
    /// answers the rows it leased; the confirmation takes the ids as one
    /// comma-separated list (each id once) and a counter slot, and answers how
    /// many rows it marked.
    CLAIM_OUTBOX = "EXEC dbo.claim_outbox @P1, @P2, @P3";
    MARK_PUBLISHED = "EXEC dbo.mark_published @P1, @P2";
    RECORD_FAILURE = "UPDATE dbo.outbox SET attempts = attempts + 1, last_error = @P2, lease_owner = NULL, \
         lease_until = NULL, next_attempt_at = DATEADD(millisecond, @P3, SYSUTCDATETIME()), \
         dead_at = CASE WHEN attempts + 1 >= @P4 THEN SYSUTCDATETIME() ELSE NULL END \
         OUTPUT inserted.dead_at WHERE outbox_id = @P1 AND published_at IS NULL AND dead_at IS NULL AND lease_owner = @P5";
    RELEASE_LEASES = "UPDATE dbo.outbox SET lease_owner = NULL, lease_until = NULL OUTPUT inserted.outbox_id \
         WHERE lease_owner = @P1 AND published_at IS NULL";
    RENEW_LEASES = "UPDATE dbo.outbox SET lease_until = DATEADD(millisecond, @P2, SYSUTCDATETIME()) \
         OUTPUT inserted.outbox_id WHERE lease_owner = @P1 AND published_at IS NULL AND dead_at IS NULL \
         AND lease_until > SYSUTCDATETIME()";
    PENDING_STATS = "SELECT COUNT_BIG(*), DATEDIFF_BIG(millisecond, MIN(created_at), SYSUTCDATETIME()) \
         FROM dbo.outbox WHERE published_at IS NULL AND dead_at IS NULL";
    PARKED_COUNT = "SELECT COUNT_BIG(*) FROM dbo.outbox WHERE dead_at IS NOT NULL";
    PARKED_ROWS = "SELECT TOP (@P1) outbox_id, order_id, attempts, last_error, created_at, dead_at \
         FROM dbo.outbox WHERE dead_at IS NOT NULL ORDER BY dead_at DESC";
    REQUEUE_ROW = requeue!(" AND outbox_id = @P1");
    REQUEUE_ORDER = requeue!(" AND order_id = @P1");
    REQUEUE_ALL = requeue!("");
    INSERT_AUDIT =
        "INSERT INTO dbo.outbox_audit (outbox_id, order_id, action, requested_by) VALUES (@P1, @P2, @P3, @P4)";
    /// Small batches under ROWLOCK + READPAST: retention never takes a big lock and
    /// never waits on rows a relay or another cleaner holds.
    PURGE_PUBLISHED = "SET NOCOUNT ON; DECLARE @cutoff DATETIME2(3) = DATEADD(second, @P1, SYSUTCDATETIME()); \
         DELETE FROM dbo.outbox OUTPUT deleted.outbox_id WHERE outbox_id IN (SELECT TOP (@P2) p.outbox_id \
         FROM dbo.outbox p WITH (ROWLOCK, READPAST) WHERE p.published_at IS NOT NULL AND p.published_at < @cutoff)";
    PURGE_INBOX = "SET NOCOUNT ON; DECLARE @cutoff DATETIME2(3) = DATEADD(second, @P1, SYSUTCDATETIME()); \
         DELETE FROM dbo.inbox OUTPUT deleted.outbox_id WHERE outbox_id IN (SELECT TOP (@P2) i.outbox_id \
         FROM dbo.inbox i WITH (ROWLOCK, READPAST) WHERE i.processed_at < @cutoff)";
    PURGE_DEAD_LETTERS = concat!(
        "SET NOCOUNT ON; DECLARE @cutoff DATETIME2(3) = DATEADD(second, @P1, SYSUTCDATETIME()); ",
        "DELETE FROM dbo.dead_letters OUTPUT deleted.seq WHERE seq IN (SELECT TOP (@P2) d.seq \
         FROM dbo.dead_letters d WITH (ROWLOCK, READPAST) WHERE d.sent_at IS NOT NULL AND d.sent_at < @cutoff)"
    );
    PENDING_WITHOUT_OUTBOX = "SELECT COUNT_BIG(*) FROM dbo.orders o WHERE o.status = N'pending' \
         AND NOT EXISTS (SELECT 1 FROM dbo.outbox x WHERE x.order_id = o.order_id)";
    /// Orders `published`, not processed, with no outbox row waiting and none
    /// published since the cutoff: stuck since their last publication. The
    /// created_at test keeps ix (status, created_at) in use and covers orders whose
    /// rows retention deleted (publication follows creation).
    /// The database clock, read once per statement into a variable: a volatile
    /// SYSUTCDATETIME() inside a subquery made Babelfish (PostgreSQL) re-run the
    /// subquery for every outer row and give up its index (a 10,000-row claim took
    /// 41 s); a variable is a constant to the planner, on both engines.
    PUBLISHED_NOT_PROCESSED =
        concat!(cutoff!(), "SELECT COUNT_BIG(*) FROM dbo.orders o WHERE ", stuck_published!());
    /// UPDLOCK + READPAST: two relays sweeping at once repair disjoint orders.
    STUCK_ORDERS = concat!(
        cutoff!(),
        "SELECT TOP (@P2) o.order_id, (SELECT TOP (1) x.outbox_id FROM dbo.outbox x WHERE x.order_id = o.order_id \
           ORDER BY x.published_at DESC) FROM dbo.orders o WITH (UPDLOCK, ROWLOCK, READPAST) WHERE ",
        stuck_published!()
    );
    RESEND_ROW = "UPDATE dbo.outbox SET published_at = NULL, attempts = 0, \
         next_attempt_at = SYSUTCDATETIME(), lease_owner = NULL, lease_until = NULL, dead_at = NULL \
         OUTPUT inserted.outbox_id WHERE outbox_id = @P1 AND published_at IS NOT NULL";
    RETRY_ORDER = concat!(
        "UPDATE dbo.orders SET status = N'pending', failure_reason = NULL, processed_at = NULL, unit_price = NULL, ",
        "total_price = NULL OUTPUT ",
        order_columns!("inserted."),
        " WHERE order_id = @P1 AND status = N'failed'"
    );
    RECENT_AUDIT = "SELECT TOP (@P1) outbox_id, order_id, action, requested_by, requested_at \
         FROM dbo.outbox_audit ORDER BY audit_id DESC";
    /// Newest first, by the identity; dead letters are few (retention purges the sent ones).
    RECENT_DEAD_LETTERS = "SELECT TOP (@P1) dead_letter_id, order_id, reason, created_at, sent_at, \
         undeliverable_at, replayed_at FROM dbo.dead_letters ORDER BY seq DESC";

    // The consumer's unit of work and its dead letters (`processing.rs`).
    /// The consumer's batch (`processing.rs`), in two calls: the facts of
    /// every order it names (@P1, their ids comma-separated, all between @P2
    /// and @P3; migration V16), then the batch applied in one call that owns
    /// its transaction (`dbo.apply_batch`, migration V22): @P1 the messages as
    /// JSON, @P2 their dead letters' bodies, @P3 their headers, @P4 the counter slot.
    ORDER_FACTS = "EXEC dbo.order_facts @P1, @P2, @P3";
    APPLY_BATCH = "EXEC dbo.apply_batch @P1, @P2, @P3, @P4";
    /// The order of ix_dead_letters_unsent (seq), which also filters on both tests.
    UNSENT_DEAD_LETTERS = "SELECT TOP (@P1) dead_letter_id, reason, headers, body, attempts \
         FROM dbo.dead_letters WHERE sent_at IS NULL AND undeliverable_at IS NULL ORDER BY seq";
    MARK_DEAD_LETTER_SENT = "UPDATE dbo.dead_letters SET sent_at = SYSUTCDATETIME() OUTPUT inserted.dead_letter_id \
         WHERE dead_letter_id = @P1 AND sent_at IS NULL";
    REFUSE_DEAD_LETTER = "UPDATE dbo.dead_letters SET attempts = attempts + 1, last_error = @P2, \
         undeliverable_at = CASE WHEN attempts + 1 >= @P3 THEN SYSUTCDATETIME() END OUTPUT inserted.attempts \
         WHERE dead_letter_id = @P1 AND sent_at IS NULL AND undeliverable_at IS NULL";
    UNDELIVERABLE_DEAD_LETTERS = "SELECT TOP (@P1) dead_letter_id, order_id, reason, last_error, \
         attempts, created_at, undeliverable_at FROM dbo.dead_letters WHERE undeliverable_at IS NOT NULL \
         ORDER BY undeliverable_at DESC";

    // Incidents (`incidents.rs`).
    /// Failure groups (`incidents.rs`): the newest failed orders and open dead
    /// letters, whose reasons are grouped by `crate::incidents::fingerprint`.
    FAILED_REASONS = "SELECT TOP (@P1) order_id, COALESCE(failure_reason, N''), \
         COALESCE(processed_at, created_at) FROM dbo.orders WHERE status = N'failed' ORDER BY order_id DESC";
    /// A letter is open until it is replayed or its order is processed (nothing
    /// left to send); one naming no order stays open.
    OPEN_DEAD_LETTERS = "SELECT TOP (@P1) d.dead_letter_id, d.order_id, d.reason, d.created_at \
         FROM dbo.dead_letters d WHERE d.replayed_at IS NULL AND NOT EXISTS (SELECT 1 FROM dbo.orders o \
         WHERE o.order_id = d.order_id AND o.status = N'processed') ORDER BY d.seq DESC";
    DEAD_LETTER_ORDER =
        "SELECT dead_letter_id, order_id FROM dbo.dead_letters WHERE dead_letter_id = @P1";
    /// The letter is taken by the statement that marks it: a group replay takes
    /// only a letter no other replay has marked meanwhile (@P2 = 1).
    MARK_REPLAYED = "UPDATE dbo.dead_letters SET replayed_at = SYSUTCDATETIME() \
         OUTPUT inserted.dead_letter_id WHERE dead_letter_id = @P1 AND (@P2 = 0 OR replayed_at IS NULL)";

    // The test probe's (`testing.rs`).
    @testing {
        ROLLBACK = "ROLLBACK TRANSACTION";
        /// The test probe's statements (schema::testing).
        TEST_TALLY = "SELECT \
             (SELECT COUNT_BIG(*) FROM dbo.orders), \
             (SELECT COUNT_BIG(*) FROM dbo.orders WHERE status = N'processed'), \
             (SELECT COUNT_BIG(*) FROM dbo.orders WHERE status = N'failed'), \
             (SELECT COUNT_BIG(*) FROM dbo.orders WHERE status = N'published'), \
             (SELECT COUNT_BIG(*) FROM dbo.outbox), \
             (SELECT COUNT_BIG(*) FROM dbo.outbox WHERE published_at IS NULL), \
             (SELECT COUNT_BIG(*) FROM dbo.outbox WHERE published_at IS NOT NULL), \
             (SELECT COUNT_BIG(*) FROM dbo.outbox WHERE dead_at IS NOT NULL), \
             (SELECT COUNT_BIG(*) FROM dbo.outbox WHERE lease_owner IS NOT NULL), \
             (SELECT COUNT_BIG(*) FROM dbo.inbox), \
             (SELECT COUNT_BIG(*) FROM dbo.inbox i JOIN dbo.outbox o ON o.outbox_id = i.outbox_id), \
             (SELECT COUNT_BIG(*) FROM dbo.orders o JOIN dbo.products p ON p.product_id = o.product_id \
                WHERE o.status = N'processed' AND (o.unit_price <> ROUND(p.list_price * 0.9, 2) \
                  OR o.total_price <> o.unit_price * o.quantity))";
        TEST_TRACEPARENTS =
            "SELECT traceparent FROM dbo.outbox WHERE order_id = @P1 ORDER BY created_at";
        TEST_INBOX_ROWS = "SELECT COUNT_BIG(*) FROM dbo.inbox WHERE outbox_id = @P1";
        TEST_OUTBOX_IDS = "SELECT outbox_id FROM dbo.outbox WHERE order_id = @P1";
        TEST_ADD_PRODUCT =
            "INSERT INTO dbo.products (product_id, name, list_price) VALUES (@P1, @P2, @P3)";
        /// A write lock on one order's row, held by the probe's open transaction.
        TEST_LOCK_ORDER = "UPDATE dbo.orders SET quantity = quantity WHERE order_id = @P1";
        /// A write lock on every order counter: each write that places an order or
        /// moves its status bumps one, so all of them wait for the probe's transaction.
        TEST_LOCK_WRITES = "UPDATE dbo.order_counts SET n = n";
        TEST_BULK_ORDER =
            "INSERT INTO dbo.orders (customer_name, product_id, quantity) OUTPUT inserted.order_id VALUES (@P1, N'P123', 2)";
        TEST_BULK_OUTBOX =
            "INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload) VALUES (@P1, @P2, N'OrderPlacedV1', @P3)";
        /// The bench's history: set-based, a chunk per transaction (a loader, so a
        /// table lock is fine here).
        TEST_HISTORY_FIRST = "SELECT COALESCE(MAX(order_id), 0) + 1 FROM dbo.orders";
        TEST_HISTORY_ORDERS = "INSERT INTO dbo.orders (customer_name, product_id, quantity, status, \
             unit_price, total_price, created_at, processed_at) SELECT TOP (@P1) N'History', N'P123', 2, N'processed', \
             90.00, 180.00, DATEADD(day, -30, SYSUTCDATETIME()), DATEADD(day, -30, SYSUTCDATETIME()) \
             FROM sys.all_objects AS a CROSS JOIN sys.all_objects AS b";
        TEST_HISTORY_OUTBOX = "INSERT INTO dbo.outbox (outbox_id, order_id, event_type, payload, \
             created_at, next_attempt_at, published_at) SELECT NEWID(), o.order_id, N'OrderPlacedV1', N'{}', o.created_at, \
             o.created_at, o.created_at FROM dbo.orders AS o WHERE o.order_id >= @P1";
        TEST_HISTORY_INBOX = "INSERT INTO dbo.inbox (outbox_id, order_id, processed_at) \
             SELECT outbox_id, order_id, published_at FROM dbo.outbox WHERE order_id >= @P1";
        TEST_CLEAR = "DELETE FROM dbo.inbox; DELETE FROM dbo.outbox_audit; DELETE FROM dbo.outbox; DELETE FROM dbo.orders; \
             UPDATE dbo.order_counts SET n = 0";
        /// Every server session the services opened on this database, killed
        /// (a failover as they meet it); answers how many. `KILL` takes no
        /// variable, so the server builds the statements from the session ids.
        TEST_KILL_SESSIONS = "DECLARE @n BIGINT, @kill NVARCHAR(MAX); \
             SELECT @n = COUNT_BIG(*), @kill = STRING_AGG(CONCAT(N'KILL ', session_id, N';'), N' ') \
             FROM sys.dm_exec_sessions WHERE program_name = N'orderflow' AND database_id = DB_ID() AND session_id <> @@SPID; \
             IF @n > 0 EXEC (@kill); SELECT @n";
        /// A fresh database beside the one tests were given, named by @P1:
        /// `CREATE DATABASE` takes no variable, so the server quotes the name
        /// into the statement it runs.
        CREATE_DATABASE = "DECLARE @create NVARCHAR(400) = CONCAT(N'CREATE DATABASE ', QUOTENAME(@P1)); EXEC (@create)";
        /// Test databases a finished run left behind: created more than two
        /// hours ago (no run of the suites or the bench takes that long).
        TEST_STALE_DATABASES = "SELECT name FROM sys.databases \
             WHERE name LIKE N'orderflow[_]test[_]%' AND create_date < DATEADD(hour, -2, GETDATE())";
        DROP_DATABASE = "DECLARE @drop NVARCHAR(400) = CONCAT(N'DROP DATABASE ', QUOTENAME(@P1)); EXEC (@drop)";
    }
}

#[cfg(test)]
mod tests {
    use sqlparser::dialect::MsSqlDialect;
    use sqlparser::parser::Parser;

    use super::*;

    /// No SQL Server runs on our machines: this is every statement's syntax
    /// check, each exactly as it is sent.
    #[test]
    fn every_statement_parses_as_tsql() {
        let failures: Vec<String> = STATEMENTS
            .iter()
            .filter_map(|(name, sql)| {
                Parser::parse_sql(&MsSqlDialect {}, sql).err().map(|e| format!("{name}: {e}\n  {sql}"))
            })
            .collect();
        assert!(failures.is_empty(), "statements that do not parse:\n{}", failures.join("\n"));
    }
}
