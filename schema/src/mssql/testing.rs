//! SQL Server: the test probe (whole-database figures, bulk loading) and
//! fresh test databases, behind the `testing` feature.
//!
//! Invariant: the same figures as the SQLite probe, from the statements in `sql.rs`.

use std::time::Duration;

use async_trait::async_trait;
use tiberius::{Config, Row, ToSql};
use uuid::Uuid;

use crate::store::{Moves, OutboxAdmin};
use crate::testing::{AuditEntry, Held, Probe, Tally, bulk_payload};
use crate::{MssqlStore, OrderId, OrderStatus, OutboxId, Product, StoreError};

use super::sql::*;
use super::{
    CONNECT_TIMEOUT, TdsClient, batch, changed, conn_from, conversion, count, count_moves, exec, open_client, rows,
    superseded_checksums,
};

fn count_at(row: &Row, i: usize) -> i64 {
    row.get::<i64, _>(i).unwrap_or(0)
}

/// Runs `sql` in a transaction of its own session and keeps that transaction
/// open, with the locks `sql` took, until the [`Held`] is released.
async fn hold(store: &MssqlStore, sql: &'static str, params: &[&dyn ToSql]) -> Result<Held, StoreError> {
    let mut conn = conn_from(&store.pool).await?;
    batch(&mut conn, BEGIN).await?;
    exec(&mut conn, sql, params).await?;
    let (release, on_release) = tokio::sync::oneshot::channel();
    let (released, on_released) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = on_release.await;
        if batch(&mut conn, ROLLBACK).await.is_ok() {
            conn.release();
        }
        let _ = released.send(());
    });
    Ok(Held::new(release, on_released))
}

#[async_trait]
impl Probe for MssqlStore {
    async fn tally(&self) -> Result<Tally, StoreError> {
        self.with_conn(async |c| {
            let found = rows(c, TEST_TALLY, &[]).await?;
            let r = found.first().ok_or_else(|| conversion("tally"))?;
            Ok(Tally {
                orders: count_at(r, 0),
                processed: count_at(r, 1),
                failed: count_at(r, 2),
                published: count_at(r, 3),
                outbox: count_at(r, 4),
                unpublished: count_at(r, 5),
                published_rows: count_at(r, 6),
                parked: count_at(r, 7),
                leased: count_at(r, 8),
                inbox: count_at(r, 9),
                inbox_from_outbox: count_at(r, 10),
                mispriced: count_at(r, 11),
            })
        })
        .await
    }

    async fn traceparents(&self, order: OrderId) -> Result<Vec<Option<String>>, StoreError> {
        self.with_conn(async |c| {
            let found = rows(c, TEST_TRACEPARENTS, &[&order.0]).await?;
            Ok(found.iter().map(|r| r.get::<&str, _>(0).map(str::to_string)).collect())
        })
        .await
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut entries = self.recent_audit(u32::MAX).await?;
        entries.reverse();
        Ok(entries)
    }

    async fn inbox_rows(&self, outbox_id: OutboxId) -> Result<i64, StoreError> {
        self.with_conn(async |c| Ok(count(&rows(c, TEST_INBOX_ROWS, &[&outbox_id.0]).await?))).await
    }

    async fn outbox_ids(&self, order: OrderId) -> Result<Vec<OutboxId>, StoreError> {
        self.with_conn(async |c| {
            let found = rows(c, TEST_OUTBOX_IDS, &[&order.0]).await?;
            Ok(found
                .iter()
                .map(|r| Ok(OutboxId(r.try_get::<Uuid, _>(0)?.unwrap_or_default())))
                .collect::<Result<_, tiberius::error::Error>>()?)
        })
        .await
    }

    async fn hold_order(&self, order: OrderId) -> Result<Held, StoreError> {
        hold(self, TEST_LOCK_ORDER, &[&order.0]).await
    }

    async fn hold_write_lock(&self) -> Result<Held, StoreError> {
        hold(self, TEST_LOCK_WRITES, &[]).await
    }

    async fn add_product(&self, product: &Product) -> Result<(), StoreError> {
        self.with_conn(async |c| {
            exec(c, TEST_ADD_PRODUCT, &[&product.product_id, &product.name, &product.list_price]).await?;
            Ok(())
        })
        .await
    }

    async fn bulk_orders(&self, n: usize, payload_pad: usize) -> Result<Vec<OutboxId>, StoreError> {
        self.transaction(async |c| {
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let name = format!("Backlog {i}");
                let inserted = rows(c, TEST_BULK_ORDER, &[&name]).await?;
                let order_id =
                    inserted.first().and_then(|r| r.get::<i64, _>(0)).ok_or_else(|| conversion("order_id"))?;
                let outbox_id = super::ids::outbox_id();
                let payload = bulk_payload(order_id, &name, outbox_id, payload_pad);
                exec(c, TEST_BULK_OUTBOX, &[&outbox_id.0, &order_id, &payload]).await?;
                ids.push(outbox_id);
            }
            let mut moves = Moves::default();
            moves.add(OrderStatus::Pending, n as i64);
            count_moves(c, moves).await?;
            Ok(ids)
        })
        .await
    }

    async fn bulk_history(&self, n: usize) -> Result<(), StoreError> {
        let mut left = n;
        while left > 0 {
            let chunk = left.min(crate::testing::HISTORY_CHUNK);
            left -= chunk;
            self.transaction(async |c| {
                let first = rows(c, TEST_HISTORY_FIRST, &[]).await?;
                let first = first.first().and_then(|r| r.get::<i64, _>(0)).ok_or_else(|| conversion("first id"))?;
                exec(c, TEST_HISTORY_ORDERS, &[&(chunk as i64)]).await?;
                exec(c, TEST_HISTORY_OUTBOX, &[&first]).await?;
                exec(c, TEST_HISTORY_INBOX, &[&first]).await?;
                let mut moves = Moves::default();
                moves.add(OrderStatus::Processed, chunk as i64);
                count_moves(c, moves).await?;
                Ok(())
            })
            .await?;
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.with_conn(async |c| Ok(batch(c, TEST_CLEAR).await?)).await
    }
}

/// Creates an empty database on the server `config` names and returns its
/// name, after dropping those earlier runs left behind ([`TEST_STALE_DATABASES`]):
/// kept, they pile up on a shared server (on Babelfish 135 of them cut the
/// bench's HTTP max on a fresh one from 1,662 to 514 orders/s).
pub(crate) async fn fresh_database(config: &Config) -> anyhow::Result<String> {
    let name = format!("orderflow_test_{}", Uuid::new_v4().simple());
    let mut client = open_client(config, CONNECT_TIMEOUT).await?;
    // Once per process: the suites create a database for every test.
    static SWEPT: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if !SWEPT.swap(true, std::sync::atomic::Ordering::Relaxed) {
        drop_stale_databases(&mut client).await;
    }
    // Babelfish fails a CREATE DATABASE that runs beside another one ("tuple
    // concurrently updated"); a moment later it succeeds.
    let mut attempt = 0;
    while let Err(error) = exec(&mut client, CREATE_DATABASE, &[&name.as_str()]).await {
        attempt += 1;
        anyhow::ensure!(attempt < 10 && error.to_string().contains("concurrently"), error);
        tokio::time::sleep(Duration::from_millis(100 * attempt)).await;
    }
    client.close().await?;
    Ok(name)
}

/// Best effort: a database still in use, or one another run drops at the
/// same moment, stays for the next sweep.
async fn drop_stale_databases(client: &mut TdsClient) {
    let Ok(stale) = rows(client, TEST_STALE_DATABASES, &[]).await else { return };
    let names: Vec<String> = stale.iter().filter_map(|r| r.get::<&str, _>(0).map(str::to_string)).collect();
    for name in &names {
        let _ = exec(client, DROP_DATABASE, &[&name.as_str()]).await;
    }
}

/// Kills every session the services opened on the database `config` names;
/// answers how many there were.
pub(crate) async fn kill_sessions(config: &Config) -> anyhow::Result<i64> {
    let mut config = config.clone();
    config.application_name("orderflow-test");
    let mut client = open_client(&config, CONNECT_TIMEOUT).await?;
    let killed = count(&super::batch_rows(&mut client, TEST_KILL_SESSIONS).await?);
    client.close().await?;
    Ok(killed)
}

/// Records on the migrated database `config` names the first text of every
/// superseded migration, as a database migrated before the replacement holds
/// them; the number of records changed.
pub(crate) async fn record_superseded(config: &Config) -> anyhow::Result<u64> {
    let mut client = open_client(config, CONNECT_TIMEOUT).await?;
    let mut records = 0;
    for (version, first, current) in superseded_checksums()? {
        records += changed(&mut client, ACCEPT_SUPERSEDED, &[&first, &version, &current]).await?;
    }
    client.close().await?;
    Ok(records)
}
