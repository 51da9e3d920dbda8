//! SQLite: the test probe (whole-database figures, bulk loading).
//!
//! Invariant: read-only figures come from one connection in one statement, so
//! they are one consistent snapshot.

use std::str::FromStr;

use async_trait::async_trait;
use rusqlite::params;

use crate::store::{Moves, OutboxAdmin};
use crate::testing::{AuditEntry, Held, Probe, Tally, bulk_payload};
use crate::{OrderId, OrderStatus, OutboxId, Product, SqliteStore, StoreError};

use super::count_moves;
use super::sql::*;

#[async_trait]
impl Probe for SqliteStore {
    async fn tally(&self) -> Result<Tally, StoreError> {
        self.with_conn(|conn| {
            Ok(conn.prepare_cached(TEST_TALLY)?.query_row([], |r| {
                Ok(Tally {
                    orders: r.get(0)?,
                    processed: r.get(1)?,
                    failed: r.get(2)?,
                    published: r.get(3)?,
                    outbox: r.get(4)?,
                    unpublished: r.get(5)?,
                    published_rows: r.get(6)?,
                    parked: r.get(7)?,
                    leased: r.get(8)?,
                    inbox: r.get(9)?,
                    inbox_from_outbox: r.get(10)?,
                    mispriced: r.get(11)?,
                })
            })?)
        })
        .await
    }

    async fn traceparents(&self, order: OrderId) -> Result<Vec<Option<String>>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(TEST_TRACEPARENTS)?;
            let rows = stmt.query_map([order.0], |r| r.get(0))?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn audit(&self) -> Result<Vec<AuditEntry>, StoreError> {
        let mut entries = self.recent_audit(u32::MAX).await?;
        entries.reverse();
        Ok(entries)
    }

    async fn inbox_rows(&self, outbox_id: OutboxId) -> Result<i64, StoreError> {
        self.with_conn(move |conn| {
            Ok(conn.prepare_cached(TEST_INBOX_ROWS)?.query_row([outbox_id.to_string()], |r| r.get(0))?)
        })
        .await
    }

    async fn outbox_ids(&self, order: OrderId) -> Result<Vec<OutboxId>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(TEST_OUTBOX_IDS)?;
            let ids = stmt.query_map([order.0], |r| r.get::<_, String>(0))?;
            ids.map(|id| OutboxId::from_str(&id?).map_err(|e| StoreError::Other(crate::Cause::msg(e)))).collect()
        })
        .await
    }

    async fn hold_order(&self, _order: OrderId) -> Result<Held, StoreError> {
        self.hold_write_lock().await
    }

    async fn hold_write_lock(&self) -> Result<Held, StoreError> {
        let (release, on_release) = tokio::sync::oneshot::channel::<()>();
        let (released, on_released) = tokio::sync::oneshot::channel();
        let (locked, on_locked) = tokio::sync::oneshot::channel();
        let store = self.clone();
        tokio::spawn(async move {
            let _ = store
                .with_conn(move |c| {
                    c.execute_batch(TEST_LOCK_WRITES)?;
                    let _ = locked.send(());
                    let _ = on_release.blocking_recv();
                    Ok(c.execute_batch(ROLLBACK)?)
                })
                .await;
            let _ = released.send(());
        });
        match on_locked.await {
            Ok(()) => Ok(Held::new(release, on_released)),
            Err(_) => Err(StoreError::Unavailable(crate::store::Cause::msg("the lock holder ended before it locked"))),
        }
    }

    async fn add_product(&self, product: &Product) -> Result<(), StoreError> {
        let product = product.clone();
        self.write(move |tx| {
            let params = params![product.product_id, product.name, product.list_price.to_string()];
            tx.prepare_cached(TEST_ADD_PRODUCT)?.execute(params)?;
            Ok(())
        })
        .await
    }

    async fn bulk_orders(&self, n: usize, payload_pad: usize) -> Result<Vec<OutboxId>, StoreError> {
        self.write(move |tx| {
            let (mut order, mut outbox) = (tx.prepare_cached(TEST_BULK_ORDER)?, tx.prepare_cached(TEST_BULK_OUTBOX)?);
            let mut ids = Vec::with_capacity(n);
            for i in 0..n {
                let name = format!("Backlog {i}");
                let order_id: i64 = order.query_row([&name], |r| r.get(0))?;
                let outbox_id = OutboxId::new();
                let payload = bulk_payload(order_id, &name, outbox_id, payload_pad);
                outbox.execute(params![outbox_id.to_string(), order_id, payload])?;
                ids.push(outbox_id);
            }
            let mut moves = Moves::default();
            moves.add(OrderStatus::Pending, n as i64);
            count_moves(tx, moves)?;
            Ok(ids)
        })
        .await
    }

    async fn bulk_history(&self, n: usize) -> Result<(), StoreError> {
        let mut left = n;
        while left > 0 {
            let chunk = left.min(crate::testing::HISTORY_CHUNK);
            left -= chunk;
            self.write(move |tx| {
                let first: i64 = tx.prepare_cached(TEST_HISTORY_FIRST)?.query_row([], |r| r.get(0))?;
                tx.prepare_cached(TEST_HISTORY_ORDERS)?.execute([chunk as i64])?;
                tx.prepare_cached(TEST_HISTORY_OUTBOX)?.execute([first])?;
                tx.prepare_cached(TEST_HISTORY_INBOX)?.execute([first])?;
                let mut moves = Moves::default();
                moves.add(OrderStatus::Processed, chunk as i64);
                count_moves(tx, moves)?;
                Ok(())
            })
            .await?;
        }
        self.with_conn(|c| Ok(c.query_row(TEST_CHECKPOINT, [], |r| r.get::<_, i64>(0)).map(drop)?)).await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.write(|tx| Ok(tx.execute_batch(TEST_CLEAR)?)).await
    }
}
