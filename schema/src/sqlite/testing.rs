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

const TALLY: &str = "SELECT \
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

/// `?1` processed orders, 30 days old.
const HISTORY_ORDERS: &str = "WITH RECURSIVE c(x) AS (SELECT 1 UNION ALL SELECT x + 1 FROM c WHERE x < ?1) \
     INSERT INTO orders (customer_name, product_id, quantity, status, unit_price, total_price, created_at, processed_at) \
     SELECT 'History ' || x, 'P123', 2, 'processed', '90.00', '180.00', \
       strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days'), strftime('%Y-%m-%dT%H:%M:%fZ', 'now', '-30 days') FROM c";
/// A published outbox row (random UUID text) for each order from `?1` on.
const HISTORY_OUTBOX: &str = "INSERT INTO outbox (outbox_id, order_id, event_type, payload, created_at, next_attempt_at, \
       published_at) \
     SELECT substr(h, 1, 8) || '-' || substr(h, 9, 4) || '-4' || substr(h, 14, 3) || '-a' || substr(h, 18, 3) || '-' \
       || substr(h, 21, 12), order_id, 'OrderPlacedV1', '{\"order_id\": ' || order_id || '}', created_at, created_at, created_at \
     FROM (SELECT lower(hex(randomblob(16))) AS h, order_id, created_at FROM orders WHERE order_id >= ?1)";
/// The inbox row of each of those messages.
const HISTORY_INBOX: &str = "INSERT INTO inbox (outbox_id, order_id, processed_at) \
     SELECT outbox_id, order_id, published_at FROM outbox WHERE order_id >= ?1";

#[async_trait]
impl Probe for SqliteStore {
    async fn tally(&self) -> Result<Tally, StoreError> {
        self.with_conn(|conn| {
            Ok(conn.query_row(TALLY, [], |r| {
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
            let mut stmt = conn.prepare("SELECT traceparent FROM outbox WHERE order_id = ?1 ORDER BY created_at")?;
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
            Ok(conn
                .query_row("SELECT COUNT(*) FROM inbox WHERE outbox_id = ?1", [outbox_id.to_string()], |r| r.get(0))?)
        })
        .await
    }

    async fn outbox_ids(&self, order: OrderId) -> Result<Vec<OutboxId>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare("SELECT outbox_id FROM outbox WHERE order_id = ?1")?;
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
                    c.execute_batch("BEGIN IMMEDIATE")?;
                    let _ = locked.send(());
                    let _ = on_release.blocking_recv();
                    Ok(c.execute_batch("ROLLBACK")?)
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
            tx.execute(
                "INSERT INTO products (product_id, name, list_price) VALUES (?1, ?2, ?3)",
                params![product.product_id, product.name, product.list_price.to_string()],
            )?;
            Ok(())
        })
        .await
    }

    async fn bulk_orders(&self, n: usize, payload_pad: usize) -> Result<Vec<OutboxId>, StoreError> {
        self.write(move |tx| {
            let mut order = tx.prepare(
                "INSERT INTO orders (customer_name, product_id, quantity) VALUES (?1, 'P123', 2) RETURNING order_id",
            )?;
            let mut outbox = tx.prepare(
                "INSERT INTO outbox (outbox_id, order_id, event_type, payload) VALUES (?1, ?2, 'OrderPlacedV1', ?3)",
            )?;
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
                let first: i64 = tx.query_row("SELECT COALESCE(MAX(order_id), 0) + 1 FROM orders", [], |r| r.get(0))?;
                tx.execute(HISTORY_ORDERS, [chunk as i64])?;
                tx.execute(HISTORY_OUTBOX, [first])?;
                tx.execute(HISTORY_INBOX, [first])?;
                let mut moves = Moves::default();
                moves.add(OrderStatus::Processed, chunk as i64);
                count_moves(tx, moves)?;
                Ok(())
            })
            .await?;
        }
        // Years of history have been checkpointed into the database file long
        // ago; a loader that left them in the WAL would make every commit
        // after it try to copy gigabytes back.
        self.with_conn(|c| Ok(c.query_row("PRAGMA wal_checkpoint(TRUNCATE)", [], |r| r.get::<_, i64>(0)).map(drop)?))
            .await
    }

    async fn clear(&self) -> Result<(), StoreError> {
        self.write(|tx| {
            Ok(tx.execute_batch(
                "DELETE FROM inbox; DELETE FROM outbox_audit; DELETE FROM outbox; DELETE FROM orders; \
                 UPDATE order_counts SET n = 0;",
            )?)
        })
        .await
    }
}
