//! Storage and shared types for orderflow: the only crate that knows SQL.
//!
//! Invariant: every store method is one whole unit of work, so its transaction
//! lives inside the backend and nothing above this crate sees a driver type.

#![warn(missing_docs)]

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

pub use model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};
pub use mssql::MssqlStore;
pub use sqlite::SqliteStore;
pub use store::{
    Applied, AuditEntry, DeadLetter, Delivery, FailureOutcome, OrderCounts, OrderStore, OutboxStats, OutboxStore,
    ParkedRow, Placed, ProcessOutcome, ProcessingStore, Reconciliation, RequeueTarget, Store, StoreError,
};

/// Every SQL Server statement this crate sends, for the T-SQL parser test.
pub fn mssql_statements() -> Vec<(&'static str, &'static str)> {
    mssql::statements()
}

/// Connects to the database named by `url` and runs the migrations.
///
/// `sqlite://path/to/file.db` (or `sqlite::memory:` is not supported: several
/// processes share the file) selects SQLite; `mssql://…` or an ADO.NET string
/// starting with `server=` selects SQL Server.
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

/// [`connect`] with the durability the service's writes need; a
/// `synchronous=` option in the URL still wins.
pub async fn connect_with(url: &str, durability: Durability) -> anyhow::Result<Arc<dyn Store>> {
    Ok(match backend(url)? {
        Backend::Sqlite(path) => Arc::new(
            SqliteStore::open_with(path, durability)
                .await
                .with_context(|| format!("opening sqlite database {path}"))?,
        ),
        Backend::Mssql => Arc::new(MssqlStore::connect(url).await.context("connecting to sql server")?),
    })
}

/// The backend a `DATABASE_URL` selects.
enum Backend<'a> {
    /// The path after `sqlite://`.
    Sqlite(&'a str),
    Mssql,
}

fn backend(url: &str) -> anyhow::Result<Backend<'_>> {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("sqlite:") {
        return Ok(Backend::Sqlite(url["sqlite:".len()..].trim_start_matches("//")));
    }
    if lower.starts_with("mssql://") || lower.starts_with("sqlserver://") || lower.starts_with("server=") {
        return Ok(Backend::Mssql);
    }
    anyhow::bail!("unsupported DATABASE_URL scheme: expected sqlite://PATH or mssql://USER:PASSWORD@HOST:PORT/DATABASE")
}

/// Hides the password of a database URL so that it can be logged.
pub fn redact_url(url: &str) -> String {
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("server=") {
        return url
            .split(';')
            .map(|part| match part.split_once('=') {
                Some((k, _)) if k.trim().eq_ignore_ascii_case("password") || k.trim().eq_ignore_ascii_case("pwd") => {
                    format!("{k}=***")
                }
                _ => part.to_string(),
            })
            .collect::<Vec<_>>()
            .join(";");
    }
    // A broker list (`failover:(tcp://u:p@a,tcp://u:p@b)`) is redacted address
    // by address; a comma inside a password does not make a list.
    match url.contains(',') && url.split(',').all(|part| part.contains("://")) {
        true => url.split(',').map(redact_one).collect::<Vec<_>>().join(","),
        false => redact_one(url),
    }
}

fn redact_one(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(scheme_end), Some(at)) if at > scheme_end => {
            let creds = &url[scheme_end + 3..at];
            match creds.split_once(':') {
                Some((user, _)) => format!("{}{user}:***{}", &url[..scheme_end + 3], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::redact_url;

    #[test]
    fn passwords_never_reach_the_logs() {
        assert_eq!(redact_url("mssql://sa:Secret1!@db:1433/orders"), "mssql://sa:***@db:1433/orders");
        assert_eq!(
            redact_url("server=tcp:db,1433;user=sa;password=Secret1!;TrustServerCertificate=true"),
            "server=tcp:db,1433;user=sa;password=***;TrustServerCertificate=true"
        );
        assert_eq!(redact_url("sqlite://data/orderflow.db"), "sqlite://data/orderflow.db");
        assert_eq!(
            redact_url("failover:(tcp://app:pw1@a:61613,tcp://app:pw2@b:61613)"),
            "failover:(tcp://app:***@a:61613,tcp://app:***@b:61613)"
        );
        assert_eq!(redact_url("mssql://sa:Sec,ret@db:1433/orders"), "mssql://sa:***@db:1433/orders");
    }
}
