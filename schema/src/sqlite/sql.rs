//! Every SQLite statement the backend sends, in one table ([`statements!`])
//! that the test below prepares on a migrated database.
//!
//! Invariants: a statement has the name of its SQL Server twin in
//! `mssql/sql.rs`, in the same order (`crate::statements` checks the names);
//! time is SQLite's clock as stored text, spelt once ([`now!`]), never the
//! caller's; a `LIMIT` takes its parameter as `+?n`, never a bare `?n`, whose
//! every new value makes SQLite compile the statement again (the test below).

use crate::statements::{order_columns, statements};

/// SQLite's clock as stored text (ISO 8601, milliseconds, UTC), moved by the
/// modifier when one is given: a parameter bound to `+1.500 seconds` (see
/// `super::from_now`, `super::ago`) or a literal.
macro_rules! now {
    ($($modifier:literal)?) => {
        concat!("strftime('%Y-%m-%dT%H:%M:%fZ', 'now'", $(", ", $modifier,)? ")")
    };
}

/// Parked rows made due again (attempts reset), those `$which` picks.
macro_rules! requeue {
    ($which:literal) => {
        concat!(
            "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = ",
            now!(),
            ", lease_owner = NULL, lease_until = NULL WHERE dead_at IS NOT NULL AND published_at IS NULL",
            $which,
            " RETURNING outbox_id, order_id"
        )
    };
}

/// Up to `?2` rows of `$table` whose `$column` is set and before `?1` (an ago
/// modifier); each table has an index on that column.
macro_rules! purge {
    ($table:literal, $column:literal) => {
        concat!(
            "DELETE FROM ",
            $table,
            " WHERE rowid IN (SELECT rowid FROM ",
            $table,
            " WHERE ",
            $column,
            " IS NOT NULL AND ",
            $column,
            " < ",
            now!("?1"),
            " LIMIT +?2)"
        )
    };
}

/// Orders (alias `o`) `published`, not processed, with no outbox row waiting
/// to be sent and none published since the cutoff (`?1`, an ago modifier).
/// Publication follows creation, so the `created_at` test keeps the index on
/// (status, created_at) in use and covers orders whose rows retention deleted.
macro_rules! stuck_published {
    () => {
        concat!(
            "o.status = 'published' AND o.created_at < ",
            now!("?1"),
            " AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.order_id \
               AND (x.published_at IS NULL OR x.published_at >= ",
            now!("?1"),
            "))"
        )
    };
}

statements! {
    // Sessions and the counters.
    /// Each connection's settings, and the migration's. `temp_store = MEMORY`
    /// keeps statement journals (a savepoint's copies of the pages it
    /// changes, never needed after a crash) off the disk.
    SESSION_SETUP = "PRAGMA journal_mode = WAL; PRAGMA busy_timeout = 10000; PRAGMA foreign_keys = ON; \
         PRAGMA temp_store = MEMORY;";
    /// The database clock, read once for a whole transaction (a group of
    /// orders, a batch of messages), whose rows then share it.
    CLOCK = concat!("SELECT ", now!());
    /// Every status's counter (slot 0: SQLite has one writer): pending,
    /// published, processed, failed move by ?1 .. ?4.
    BUMP_COUNTS = "UPDATE order_counts SET n = n + CASE status WHEN 'pending' THEN ?1 WHEN 'published' THEN ?2 \
         WHEN 'processed' THEN ?3 WHEN 'failed' THEN ?4 ELSE 0 END WHERE slot = 0";
    ORDER = concat!("SELECT ", order_columns!(""), " FROM orders WHERE order_id = ?1");

    // Placing and reading orders (`orders.rs`).
    PRODUCTS = "SELECT product_id, name, list_price FROM products ORDER BY product_id";
    PRODUCT = "SELECT product_id, name, list_price FROM products WHERE product_id = ?1";
    ORDER_BY_KEY = concat!("SELECT ", order_columns!(""), " FROM orders WHERE idempotency_key = ?1");
    /// Created at `?5` (the group's [`CLOCK`] reading). No `RETURNING`: SQLite
    /// builds its rows in a temporary table, a tenth of the writer's time.
    INSERT_ORDER = "INSERT INTO orders (customer_name, product_id, quantity, idempotency_key, created_at) \
         VALUES (?1, ?2, ?3, ?4, ?5)";
    /// A group commit's savepoint (never nested: the group's is released
    /// before each order gets its own).
    SAVEPOINT = "SAVEPOINT place";
    RELEASE_SAVEPOINT = "RELEASE place";
    ROLLBACK_TO_SAVEPOINT = "ROLLBACK TO place";
    /// Created and due at `?7`; NULL means now.
    INSERT_OUTBOX = concat!(
        "INSERT INTO outbox (outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at, \
           next_attempt_at) VALUES (?1, ?2, ?3, ?4, ?5, ?6, COALESCE(?7, ",
        now!(),
        "), COALESCE(?7, ",
        now!(),
        "))"
    );
    ORDER_COUNTS = "SELECT status, SUM(n) FROM order_counts GROUP BY status";
    RECENT_ORDERS = concat!("SELECT ", order_columns!(""), " FROM orders ORDER BY order_id DESC LIMIT +?1");
    FAILED_ORDERS =
        concat!("SELECT ", order_columns!(""), " FROM orders WHERE status = 'failed' ORDER BY order_id DESC LIMIT +?1");
    PUBLISHED_AT = "SELECT MAX(published_at) FROM outbox WHERE order_id = ?1";

    // The relay's outbox and its administration (`outbox.rs`).
    /// Leases up to `?3` due rows to `?1` until `?2` from now; run in one
    /// IMMEDIATE transaction, the single writer, so no two relays select the
    /// same due rows.
    CLAIM_OUTBOX = concat!(
        "UPDATE outbox SET lease_owner = ?1, lease_until = ",
        now!("?2"),
        " WHERE outbox_id IN (SELECT outbox_id FROM outbox WHERE published_at IS NULL AND dead_at IS NULL \
           AND next_attempt_at <= ",
        now!(),
        " AND (lease_until IS NULL OR lease_until < ",
        now!(),
        ") ORDER BY next_attempt_at LIMIT +?3) \
         RETURNING outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at, attempts"
    );
    /// Marked whoever holds the lease now: the broker's receipt proves the
    /// message is on the queue, so publishing it again would only duplicate.
    /// The batch's ids are one JSON array (`?1`): a statement per row with
    /// `RETURNING` cost a temporary table per row.
    MARK_PUBLISHED = concat!(
        "UPDATE outbox SET published_at = ",
        now!(),
        ", lease_owner = NULL, lease_until = NULL, dead_at = NULL \
         WHERE outbox_id IN (SELECT value FROM json_each(?1)) AND published_at IS NULL RETURNING order_id"
    );
    /// The orders of `?1` (a JSON array); `+status`: by the primary key, never
    /// by scanning `orders_status` for every pending order.
    MARK_ORDER_PUBLISHED = "UPDATE orders SET status = 'published' \
         WHERE order_id IN (SELECT value FROM json_each(?1)) AND +status = 'pending'";
    RECORD_FAILURE = concat!(
        "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, lease_owner = NULL, lease_until = NULL, \
           next_attempt_at = ",
        now!("?3"),
        ", dead_at = CASE WHEN attempts + 1 >= ?4 THEN ",
        now!(),
        " END WHERE outbox_id = ?1 AND published_at IS NULL AND dead_at IS NULL AND lease_owner = ?5 RETURNING dead_at"
    );
    RELEASE_LEASES =
        "UPDATE outbox SET lease_owner = NULL, lease_until = NULL WHERE lease_owner = ?1 AND published_at IS NULL";
    RENEW_LEASES =
        concat!("UPDATE outbox SET lease_until = ", now!("?2"), " WHERE lease_owner = ?1 AND published_at IS NULL \
         AND dead_at IS NULL AND lease_until > ", now!());
    PENDING_STATS = "SELECT COUNT(*), (julianday('now') - julianday(MIN(created_at))) * 86400.0 \
         FROM outbox WHERE published_at IS NULL AND dead_at IS NULL";
    PARKED_COUNT = "SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL";
    PARKED_ROWS = "SELECT outbox_id, order_id, attempts, last_error, created_at, dead_at FROM outbox \
         WHERE dead_at IS NOT NULL ORDER BY dead_at DESC LIMIT +?1";
    REQUEUE_ROW = requeue!(" AND outbox_id = ?1");
    REQUEUE_ORDER = requeue!(" AND order_id = ?1");
    REQUEUE_ALL = requeue!("");
    INSERT_AUDIT = "INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, ?2, ?3, ?4)";
    PURGE_PUBLISHED = purge!("outbox", "published_at");
    PURGE_INBOX = purge!("inbox", "processed_at");
    PURGE_DEAD_LETTERS = purge!("dead_letters", "sent_at");
    PENDING_WITHOUT_OUTBOX = "SELECT COUNT(*) FROM orders o WHERE o.status = 'pending' \
         AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.order_id)";
    PUBLISHED_NOT_PROCESSED = concat!("SELECT COUNT(*) FROM orders o WHERE ", stuck_published!());
    STUCK_ORDERS = concat!(
        "SELECT o.order_id, (SELECT x.outbox_id FROM outbox x WHERE x.order_id = o.order_id \
           ORDER BY x.published_at DESC LIMIT 1) FROM orders o WHERE ",
        stuck_published!(),
        " LIMIT +?2"
    );
    RESEND_ROW = concat!(
        "UPDATE outbox SET published_at = NULL, attempts = 0, next_attempt_at = ",
        now!(),
        ", lease_owner = NULL, lease_until = NULL, dead_at = NULL WHERE outbox_id = ?1 AND published_at IS NOT NULL"
    );
    RETRY_ORDER = concat!(
        "UPDATE orders SET status = 'pending', failure_reason = NULL, processed_at = NULL, unit_price = NULL, \
           total_price = NULL WHERE order_id = ?1 AND status = 'failed' RETURNING ",
        order_columns!("")
    );
    RECENT_AUDIT = "SELECT outbox_id, order_id, action, requested_by, requested_at FROM outbox_audit \
         ORDER BY audit_id DESC LIMIT +?1";
    RECENT_DEAD_LETTERS = "SELECT dead_letter_id, order_id, reason, created_at, sent_at, undeliverable_at, \
         replayed_at FROM dead_letters ORDER BY created_at DESC, rowid DESC LIMIT +?1";

    // The consumer's unit of work and its dead letters (`processing.rs`).
    /// The whole order, then its product's list price.
    ORDER_FOR_PRICING = concat!(
        "SELECT ",
        order_columns!("o."),
        ", p.list_price FROM orders o LEFT JOIN products p ON p.product_id = o.product_id WHERE o.order_id = ?1"
    );
    OWN_MESSAGE = "SELECT EXISTS (SELECT 1 FROM outbox WHERE outbox_id = ?1 AND order_id = ?2)";
    RECORD_INBOX = "INSERT INTO inbox (outbox_id, order_id) VALUES (?1, ?2) ON CONFLICT (outbox_id) DO NOTHING";
    /// Processed at `?4` (the batch's [`CLOCK`] reading). No `RETURNING`: the
    /// row is the one [`ORDER_FOR_PRICING`] read, priced.
    MARK_PROCESSED = "UPDATE orders SET status = 'processed', unit_price = ?2, total_price = ?3, \
         failure_reason = NULL, processed_at = ?4 WHERE order_id = ?1 AND status IN ('pending', 'published')";
    /// The status an open order leaves when it is failed (the single writer:
    /// nothing moves it between this read and the update).
    OPEN_STATUS = "SELECT status FROM orders WHERE order_id = ?1 AND status IN ('pending', 'published')";
    MARK_FAILED = concat!(
        "UPDATE orders SET status = 'failed', failure_reason = ?2, processed_at = ",
        now!(),
        " WHERE order_id = ?1"
    );
    RECORD_DEAD_LETTER = "INSERT INTO dead_letters (dead_letter_id, order_id, reason, headers, body) \
         VALUES (?1, ?2, ?3, ?4, ?5) ON CONFLICT (dead_letter_id) DO NOTHING";
    /// The letters to publish, oldest first: the order of `dead_letters_unsent`
    /// (created_at, then rowid), so the query walks the index and never sorts.
    UNSENT_DEAD_LETTERS = "SELECT dead_letter_id, reason, headers, body, attempts FROM dead_letters \
         WHERE sent_at IS NULL AND undeliverable_at IS NULL ORDER BY created_at, rowid LIMIT +?1";
    MARK_DEAD_LETTER_SENT =
        concat!("UPDATE dead_letters SET sent_at = ", now!(), " WHERE dead_letter_id = ?1 AND sent_at IS NULL");
    REFUSE_DEAD_LETTER = concat!(
        "UPDATE dead_letters SET attempts = attempts + 1, last_error = ?2, undeliverable_at = \
           CASE WHEN attempts + 1 >= ?3 THEN ",
        now!(),
        " END WHERE dead_letter_id = ?1 AND sent_at IS NULL AND undeliverable_at IS NULL RETURNING attempts"
    );
    UNDELIVERABLE_DEAD_LETTERS = "SELECT dead_letter_id, order_id, reason, last_error, attempts, created_at, \
         undeliverable_at FROM dead_letters WHERE undeliverable_at IS NOT NULL ORDER BY undeliverable_at DESC LIMIT +?1";

    // Incidents (`incidents.rs`).
    /// The newest failed orders (id, reason, when).
    FAILED_REASONS = "SELECT order_id, COALESCE(failure_reason, ''), COALESCE(processed_at, created_at) \
         FROM orders WHERE status = 'failed' ORDER BY order_id DESC LIMIT +?1";
    /// A letter is open until it is replayed or its order is processed (then
    /// there is nothing left to send); a letter naming no order stays open.
    OPEN_DEAD_LETTERS = "SELECT d.dead_letter_id, d.order_id, d.reason, d.created_at FROM dead_letters d \
         WHERE d.replayed_at IS NULL AND NOT EXISTS (SELECT 1 FROM orders o WHERE o.order_id = d.order_id \
           AND o.status = 'processed') ORDER BY d.created_at DESC LIMIT +?1";
    DEAD_LETTER_ORDER = "SELECT dead_letter_id, order_id FROM dead_letters WHERE dead_letter_id = ?1";
    /// The letter is taken by the statement that marks it: a group replay
    /// takes only a letter not yet replayed (`?2` = 1).
    MARK_REPLAYED = concat!(
        "UPDATE dead_letters SET replayed_at = ",
        now!(),
        " WHERE dead_letter_id = ?1 AND (?2 = 0 OR replayed_at IS NULL) RETURNING dead_letter_id"
    );

    // The test probe's (`testing.rs`).
    @testing {
        ROLLBACK = "ROLLBACK";
        TEST_TALLY = "SELECT \
             (SELECT COUNT(*) FROM orders), \
             (SELECT COUNT(*) FROM orders WHERE status = 'processed'), \
             (SELECT COUNT(*) FROM orders WHERE status = 'failed'), \
             (SELECT COUNT(*) FROM orders WHERE status = 'published'), \
             (SELECT COUNT(*) FROM outbox), \
             (SELECT COUNT(*) FROM outbox WHERE published_at IS NULL), \
             (SELECT COUNT(*) FROM outbox WHERE published_at IS NOT NULL), \
             (SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL), \
             (SELECT COUNT(*) FROM outbox WHERE lease_owner IS NOT NULL), \
             (SELECT COUNT(*) FROM inbox), \
             (SELECT COUNT(*) FROM inbox i JOIN outbox o ON o.outbox_id = i.outbox_id), \
             (SELECT COUNT(*) FROM orders o JOIN products p ON p.product_id = o.product_id WHERE o.status = 'processed' \
                AND (CAST(o.unit_price AS REAL) <> ROUND(CAST(p.list_price AS REAL) * 0.9 + 1e-9, 2) \
                  OR CAST(o.total_price AS REAL) <> ROUND(CAST(o.unit_price AS REAL) * o.quantity, 2)))";
        TEST_TRACEPARENTS = "SELECT traceparent FROM outbox WHERE order_id = ?1 ORDER BY created_at";
        TEST_INBOX_ROWS = "SELECT COUNT(*) FROM inbox WHERE outbox_id = ?1";
        TEST_OUTBOX_IDS = "SELECT outbox_id FROM outbox WHERE order_id = ?1";
        TEST_ADD_PRODUCT = "INSERT INTO products (product_id, name, list_price) VALUES (?1, ?2, ?3)";
        /// The database's write lock, held by the probe's open transaction.
        TEST_LOCK_WRITES = "BEGIN IMMEDIATE";
        TEST_BULK_ORDER =
            "INSERT INTO orders (customer_name, product_id, quantity) VALUES (?1, 'P123', 2) RETURNING order_id";
        TEST_BULK_OUTBOX =
            "INSERT INTO outbox (outbox_id, order_id, event_type, payload) VALUES (?1, ?2, 'OrderPlacedV1', ?3)";
        TEST_HISTORY_FIRST = "SELECT COALESCE(MAX(order_id), 0) + 1 FROM orders";
        /// `?1` processed orders, 30 days old.
        TEST_HISTORY_ORDERS = concat!(
            "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) \
             INSERT INTO orders (customer_name, product_id, quantity, status, unit_price, total_price, created_at, \
               processed_at) SELECT 'History ' || x, 'P123', 2, 'processed', '90.00', '180.00', ",
            now!("'-30 days'"),
            ", ",
            now!("'-30 days'"),
            " FROM c"
        );
        /// A published outbox row for each order from `?1` on. Its id is a
        /// version-7 UUID as `OutboxId::new` makes them: the creation time's
        /// milliseconds, then a counter (the order id, so ids of one
        /// millisecond still ascend), then random bits. Random (version-4) ids
        /// would scatter retention's deletes over the whole id index, which
        /// no database orderflow wrote holds: 10–40 ms a 500-row batch instead
        /// of 1–2 ms, measured on 2,000,000 rows.
        TEST_HISTORY_OUTBOX = "INSERT INTO outbox (outbox_id, order_id, event_type, payload, created_at, \
               next_attempt_at, published_at) \
             SELECT printf('%08x-%04x-7%03x-%04x-%s', ms / 65536, ms % 65536, (order_id / 16384) % 4096, \
               32768 + order_id % 16384, lower(hex(randomblob(6)))), order_id, 'OrderPlacedV1', \
               '{\"order_id\": ' || order_id || '}', created_at, created_at, created_at \
             FROM (SELECT CAST(round((julianday(created_at) - 2440587.5) * 86400000) AS INTEGER) AS ms, order_id, \
               created_at FROM orders WHERE order_id >= ?1)";
        /// The inbox row of each of those messages.
        TEST_HISTORY_INBOX = "INSERT INTO inbox (outbox_id, order_id, processed_at) \
             SELECT outbox_id, order_id, published_at FROM outbox WHERE order_id >= ?1";
        /// Years of history belong in the database file: a loader that left them
        /// in the WAL would make every commit after it try to copy gigabytes back.
        TEST_CHECKPOINT = "PRAGMA wal_checkpoint(TRUNCATE)";
        TEST_CLEAR = "DELETE FROM inbox; DELETE FROM outbox_audit; DELETE FROM outbox; DELETE FROM orders; \
             UPDATE order_counts SET n = 0;";
    }
}

#[cfg(test)]
mod tests {
    use rusqlite::Connection;

    use super::STATEMENTS;

    /// Calls `check` with each part of each statement (no statement holds a
    /// `;` but between its parts), its name, and a migrated database.
    fn each_statement(mut check: impl FnMut(&Connection, &str, &str)) {
        let mut conn = Connection::open_in_memory().unwrap();
        super::super::migrations::migrations::runner().run(&mut conn).unwrap();
        for (name, sql) in STATEMENTS {
            for part in sql.split(';').map(str::trim).filter(|part| !part.is_empty()) {
                check(&conn, name, part);
            }
        }
    }

    /// Every statement compiles against the schema the migrations build:
    /// each table, column and index it names exists.
    #[test]
    fn every_statement_prepares_on_a_migrated_database() {
        each_statement(|conn, name, part| {
            if let Err(error) = conn.prepare(part) {
                panic!("{name} does not prepare: {error}\n  {part}");
            }
        });
        assert!(STATEMENTS.len() > 60, "the table lists every statement");
    }

    /// SQLite compiles a statement again at its next step after a new value is
    /// bound to a parameter its plan was made for (a bare `LIMIT ?n` is one,
    /// in the SQLite rusqlite bundles): a whole parse, inside the writer's
    /// transaction, on every call. So each statement runs twice here with
    /// its parameters bound, and none may have been compiled again.
    #[test]
    fn no_statement_is_compiled_again_when_its_parameters_change() {
        each_statement(|conn, name, part| {
            let mut statement = conn.prepare(part).unwrap();
            if statement.parameter_count() == 0 {
                return; // a PRAGMA is compiled again whatever it is bound to
            }
            for run in 0..2_i64 {
                for i in 1..=statement.parameter_count() {
                    statement.raw_bind_parameter(i, run).unwrap();
                }
                // Its outcome does not matter here, only how it was compiled.
                let _ = statement.raw_execute();
            }
            let again = statement.get_status(rusqlite::StatementStatus::RePrepare);
            assert_eq!(again, 0, "{name} is compiled again for the values of its parameters:\n  {part}");
        });
    }
}
