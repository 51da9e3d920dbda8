//! The statement tables: each backend's `sql.rs` declares its statements with
//! [`statements!`], which makes each one a constant and lists them all, by
//! name, in `STATEMENTS`, the table its tests walk (SQLite prepares every one
//! on a migrated database, the T-SQL parser reads every SQL Server one).
//!
//! Invariant: both backends name a statement of the same role alike; the only
//! names one side has and the other lacks are the dialect's own, listed with
//! their reason in this module's test.

/// Declares statements: `/// what it does` then `NAME = text;` (a literal or
/// a `concat!`), the test probe's last, in `@testing { ... }` (behind the
/// `testing` feature). Makes `pub(super) const NAME: &str`, and the table
/// `STATEMENTS: &[(&str, &str)]` of every name and text, for the tests.
macro_rules! statements {
    (
        $($(#[doc = $doc:literal])* $name:ident = $sql:expr;)*
        @testing { $($(#[doc = $test_doc:literal])* $test_name:ident = $test_sql:expr;)* }
    ) => {
        $($(#[doc = $doc])* pub(super) const $name: &str = $sql;)*
        $($(#[doc = $test_doc])* #[cfg(feature = "testing")] pub(super) const $test_name: &str = $test_sql;)*

        /// Every statement of this backend, by name, for the tests.
        #[cfg(test)]
        pub(crate) const STATEMENTS: &[(&str, &str)] = &[
            $((stringify!($name), $name),)*
            $(#[cfg(feature = "testing")] (stringify!($test_name), $test_name),)*
        ];
    };
}

/// The columns of an order, in the order `order_from_row` reads them, each
/// after `$prefix` (`inserted.` in an SQL Server `OUTPUT`).
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

pub(crate) use {order_columns, statements};

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    /// SQLite's own statements: savepoints for its group commit (SQL Server
    /// places a group in one procedure call); an order inserted alone, and
    /// moved to `published` apart from its outbox row (SQL Server's
    /// procedures do either with the other); the consumer's message-by-message
    /// steps (SQL Server applies a batch in one call); the status an order
    /// leaves read before it is failed; a WAL checkpoint; the clock read once
    /// per transaction (SQL Server's procedures read it).
    const SQLITE_ONLY: [&str; 14] = [
        "CLOCK",
        "SAVEPOINT",
        "RELEASE_SAVEPOINT",
        "ROLLBACK_TO_SAVEPOINT",
        "INSERT_ORDER",
        "MARK_ORDER_PUBLISHED",
        "ORDER_FOR_PRICING",
        "OWN_MESSAGE",
        "RECORD_INBOX",
        "MARK_PROCESSED",
        "MARK_FAILED",
        "RECORD_DEAD_LETTER",
        "OPEN_STATUS",
        "TEST_CHECKPOINT",
    ];

    /// SQL Server's own statements: the procedure calls that stand for
    /// several statements (placing a group, the consumer's facts and batch),
    /// a text that avoids a NULL parameter, transactions and session control
    /// (SQLite has rusqlite's transaction), the migration lock (SQLite locks a
    /// file) and the replacement of the first V3, a lock on one order's row
    /// (SQLite locks the whole file), and a fresh database with the sweep of
    /// those earlier runs left behind.
    const MSSQL_ONLY: [&str; 15] = [
        "PLACE_ORDERS",
        "INSERT_OUTBOX_NOW",
        "ORDER_FACTS",
        "APPLY_BATCH",
        "RESET_SESSION",
        "BEGIN",
        "COMMIT",
        "MIGRATION_LOCK",
        "MIGRATION_UNLOCK",
        "ACCEPT_SUPERSEDED",
        "TEST_LOCK_ORDER",
        "CREATE_DATABASE",
        "TEST_STALE_DATABASES",
        "DROP_DATABASE",
        "TEST_KILL_SESSIONS",
    ];

    fn names(table: &[(&'static str, &str)]) -> BTreeSet<&'static str> {
        table.iter().map(|(name, _)| *name).collect()
    }

    #[test]
    fn both_backends_name_their_statements_alike() {
        let (sqlite, mssql) = (names(crate::sqlite::sql::STATEMENTS), names(crate::mssql::sql::STATEMENTS));
        let (sqlite_only, mssql_only) = (BTreeSet::from(SQLITE_ONLY), BTreeSet::from(MSSQL_ONLY));
        let stale: Vec<_> = sqlite_only.difference(&sqlite).chain(mssql_only.difference(&mssql)).collect();
        assert!(stale.is_empty(), "listed as a dialect's own, but no statement has the name: {stale:?}");
        let shared = |side: &BTreeSet<&'static str>, own: &BTreeSet<&'static str>| -> BTreeSet<&'static str> {
            side.difference(own).copied().collect()
        };
        let (sqlite, mssql) = (shared(&sqlite, &sqlite_only), shared(&mssql, &mssql_only));
        let missing_in_mssql: Vec<_> = sqlite.difference(&mssql).collect();
        let missing_in_sqlite: Vec<_> = mssql.difference(&sqlite).collect();
        assert!(
            missing_in_mssql.is_empty() && missing_in_sqlite.is_empty(),
            "name a statement of the same role alike on both sides, or list it as a dialect's own here: \
             only SQLite has {missing_in_mssql:?}, only SQL Server has {missing_in_sqlite:?}"
        );
    }
}
