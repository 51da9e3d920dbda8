//! SQLite: the test probe (whole-database figures, bulk loading).
//!
//! Invariant: read-only figures come from one connection in one statement, so
//! they are one consistent snapshot.

use super::*;
use crate::testing::{AuditEntry, Probe, Tally, bulk_payload};

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
