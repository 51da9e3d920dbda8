//! SQL Server: the test probe (whole-database figures, bulk loading).
//!
//! Invariant: the same figures as the SQLite probe, from the statements in `sql.rs`.

use async_trait::async_trait;
use tiberius::{Row, ToSql};

use crate::store::{Moves, OutboxAdmin};
use crate::testing::{AuditEntry, Held, Probe, Tally, bulk_payload};
use crate::{MssqlStore, OrderId, OrderStatus, OutboxId, Product, StoreError};

use super::sql::*;
use super::{batch, conversion, count_moves, exec, finish, rows};

fn count(row: &Row, i: usize) -> i64 {
    row.get::<i64, _>(i).unwrap_or(0)
}

/// Runs `sql` in a transaction of its own session and keeps that transaction
/// open, with the locks `sql` took, until the [`Held`] is released.
async fn hold(store: &MssqlStore, sql: &str, params: &[&dyn ToSql]) -> Result<Held, StoreError> {
    let mut conn = store.conn().await?;
    let locked = async {
        batch(&mut conn, BEGIN).await?;
        exec(&mut conn, sql, params).await
    }
    .await;
    if let Err(error) = locked {
        return finish(conn, Err(error));
    }
    let (release, on_release) = tokio::sync::oneshot::channel();
    let (released, on_released) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let _ = on_release.await;
        let result = batch(&mut conn, ROLLBACK).await;
        let _ = finish(conn, result);
        let _ = released.send(());
    });
    Ok(Held::new(release, on_released))
}

#[async_trait]
impl Probe for MssqlStore {
    async fn tally(&self) -> Result<Tally, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let found = rows(&mut conn, TEST_TALLY, &[]).await?;
            let r = found.first().ok_or_else(|| conversion("tally"))?;
            Ok(Tally {
                orders: count(r, 0),
                processed: count(r, 1),
                failed: count(r, 2),
                published: count(r, 3),
                outbox: count(r, 4),
                unpublished: count(r, 5),
                published_rows: count(r, 6),
                parked: count(r, 7),
                leased: count(r, 8),
                inbox: count(r, 9),
                inbox_from_outbox: count(r, 10),
                mispriced: count(r, 11),
            })
        }
        .await;
        finish(conn, result)
    }

    async fn traceparents(&self, order: OrderId) -> Result<Vec<Option<String>>, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let found = rows(&mut conn, TEST_TRACEPARENTS, &[&order.0]).await?;
            Ok(found.iter().map(|r| r.get::<&str, _>(0).map(str::to_string)).collect())
        }
        .await;
        finish(conn, result)
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut entries = self.recent_audit(u32::MAX).await?;
        entries.reverse();
        Ok(entries)
    }

    async fn inbox_rows(&self, outbox_id: OutboxId) -> Result<i64, StoreError> {
        let mut conn = self.conn().await?;
        let result =
            async { Ok(rows(&mut conn, TEST_INBOX_ROWS, &[&outbox_id.0]).await?.first().map_or(0, |r| count(r, 0))) }
                .await;
        finish(conn, result)
    }

    async fn outbox_ids(&self, order: OrderId) -> Result<Vec<OutboxId>, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let found = rows(&mut conn, TEST_OUTBOX_IDS, &[&order.0]).await?;
            found.iter().map(|r| Ok(OutboxId(r.try_get::<uuid::Uuid, _>(0)?.unwrap_or_default()))).collect()
        }
        .await;
        finish(conn, result)
    }

    async fn hold_order(&self, order: OrderId) -> Result<Held, StoreError> {
        hold(self, TEST_LOCK_ORDER, &[&order.0]).await
    }

    async fn hold_write_lock(&self) -> Result<Held, StoreError> {
        hold(self, TEST_LOCK_COUNTS, &[]).await
    }

    async fn add_product(&self, product: &Product) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let result =
            exec(&mut conn, TEST_ADD_PRODUCT, &[&product.product_id, &product.name, &product.list_price]).await;
        finish(conn, result).map(drop)
    }

    async fn bulk_orders(&self, n: usize, payload_pad: usize) -> Result<Vec<OutboxId>, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            batch(&mut conn, BEGIN).await?;
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let name = format!("Backlog {i}");
                let inserted = rows(&mut conn, TEST_BULK_ORDER, &[&name]).await?;
                let order_id =
                    inserted.first().and_then(|r| r.get::<i64, _>(0)).ok_or_else(|| conversion("order_id"))?;
                let outbox_id = OutboxId::new();
                let payload = bulk_payload(order_id, &name, outbox_id, payload_pad);
                exec(&mut conn, TEST_BULK_OUTBOX, &[&outbox_id.0, &order_id, &payload]).await?;
                ids.push(outbox_id);
            }
            let mut moves = Moves::default();
            moves.add(OrderStatus::Pending, n as i64);
            count_moves(&mut conn, moves).await?;
            batch(&mut conn, COMMIT).await?;
            Ok(ids)
        }
        .await;
        finish(conn, result)
    }

    async fn bulk_history(&self, n: usize) -> Result<(), StoreError> {
        let mut left = n;
        while left > 0 {
            let chunk = left.min(crate::testing::HISTORY_CHUNK);
            left -= chunk;
            let mut conn = self.conn().await?;
            let result = async {
                batch(&mut conn, BEGIN).await?;
                let first = rows(&mut conn, TEST_HISTORY_FIRST, &[]).await?;
                let first = first.first().and_then(|r| r.get::<i64, _>(0)).ok_or_else(|| conversion("first id"))?;
                exec(&mut conn, &with_limit(TEST_HISTORY_ORDERS, chunk as u32), &[]).await?;
                exec(&mut conn, TEST_HISTORY_OUTBOX, &[&first]).await?;
                exec(&mut conn, TEST_HISTORY_INBOX, &[&first]).await?;
                let mut moves = Moves::default();
                moves.add(OrderStatus::Processed, chunk as i64);
                count_moves(&mut conn, moves).await?;
                batch(&mut conn, COMMIT).await
            }
            .await;
            finish(conn, result)?;
        }
        Ok(())
    }

    async fn clear(&self) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let result = batch(&mut conn, TEST_CLEAR).await;
        finish(conn, result)
    }
}
