//! SQLite: the relay's side of the outbox: claims, confirmations, failures,
//! operator requeues, retention and reconciliation.
//!
//! Invariant: every write runs in one IMMEDIATE transaction with the database clock.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::limits::{LAST_ERROR_UNITS, LEASE_OWNER_UNITS, REQUESTED_BY_UNITS, truncate_utf16};
use crate::store::{Cause, Moves};
use crate::{
    AuditEntry, DeadLetterEntry, FailureOutcome, OrderId, OrderStatus, OutboxAdmin, OutboxId, OutboxRow, OutboxStats,
    OutboxStore, ParkedRow, Reconciliation, RequeueTarget, SqliteStore, StoreError,
};

use super::orders::insert_outbox;
use super::{
    NOW, ORDER_COLUMNS, ago_modifier, count_moves, load_order, order_from_row, outbox_from_row, parse_id, parse_time,
    seconds_modifier,
};

/// Orders (alias `o`) `published`, not processed, with no outbox row waiting to
/// be sent and none published since the cutoff (`?1`, an ago modifier).
/// Publication follows creation, so the `created_at` test keeps the index on
/// (status, created_at) in use and covers orders whose rows retention deleted.
const STUCK_PUBLISHED: &str = "o.status = 'published' \
     AND o.created_at < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) \
     AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.order_id \
       AND (x.published_at IS NULL OR x.published_at >= strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1)))";

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| {
            // One IMMEDIATE transaction is the single writer: no two relays can
            // select the same due rows.
            let sql = format!(
                "UPDATE outbox SET lease_owner = ?1, lease_until = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?2) \
                 WHERE outbox_id IN (\
                   SELECT outbox_id FROM outbox \
                   WHERE published_at IS NULL AND dead_at IS NULL AND next_attempt_at <= {NOW} \
                     AND (lease_until IS NULL OR lease_until < {NOW}) \
                   ORDER BY next_attempt_at LIMIT ?3) \
                 RETURNING outbox_id, order_id, event_type, payload, traceparent, tracestate, created_at, attempts"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt.query_map(params![owner, seconds_modifier(lease), limit], outbox_from_row)?;
            let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.sort_by_key(|r| (r.created_at, r.order_id));
            Ok(rows)
        })
        .await
    }

    async fn mark_published(&self, ids: &[OutboxId]) -> Result<u64, StoreError> {
        let ids = serde_json::to_string(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())
            .map_err(|e| StoreError::Other(Cause::new(e)))?;
        self.write(move |tx| {
            // Marked whoever holds the lease now: the broker's receipt proves the
            // message is on the queue, so publishing it again would only duplicate.
            // One statement per batch, its ids as a JSON array: a statement per
            // row with `RETURNING` cost a temporary table per row.
            let orders: Vec<i64> = tx
                .prepare_cached(&format!(
                    "UPDATE outbox SET published_at = {NOW}, lease_owner = NULL, lease_until = NULL, dead_at = NULL \
                     WHERE outbox_id IN (SELECT value FROM json_each(?1)) AND published_at IS NULL RETURNING order_id"
                ))?
                .query_map([&ids], |r| r.get(0))?
                .collect::<rusqlite::Result<_>>()?;
            let marked = orders.len() as u64;
            let orders = serde_json::to_string(&orders).map_err(|e| StoreError::Other(Cause::new(e)))?;
            // `+status`: by the primary key, never by scanning `orders_status` for every pending order.
            let advanced = tx
                .prepare_cached(
                    "UPDATE orders SET status = 'published' \
                     WHERE order_id IN (SELECT value FROM json_each(?1)) AND +status = 'pending'",
                )?
                .execute([&orders])?;
            let mut moves = Moves::default();
            moves.moved(OrderStatus::Pending, OrderStatus::Published, advanced as i64);
            count_moves(tx, moves)?;
            Ok(marked)
        })
        .await
    }

    async fn record_failure(
        &self,
        owner: &str,
        id: OutboxId,
        error: &str,
        retry_in: Duration,
        max_attempts: i32,
    ) -> Result<FailureOutcome, StoreError> {
        let error = truncate_utf16(error, LAST_ERROR_UNITS).to_string();
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| {
            let sql = format!(
                "UPDATE outbox SET attempts = attempts + 1, last_error = ?2, lease_owner = NULL, lease_until = NULL, \
                   next_attempt_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?3), \
                   dead_at = CASE WHEN attempts + 1 >= ?4 THEN {NOW} END \
                 WHERE outbox_id = ?1 AND published_at IS NULL AND dead_at IS NULL AND lease_owner = ?5 \
                 RETURNING dead_at"
            );
            let params = params![id.to_string(), error, seconds_modifier(retry_in), max_attempts, owner];
            let dead: Option<Option<String>> = tx.query_row(&sql, params, |r| r.get(0)).optional()?;
            Ok(match dead {
                None => FailureOutcome::LeaseLost,
                Some(Some(_)) => FailureOutcome::Parked,
                Some(None) => FailureOutcome::Retrying,
            })
        })
        .await
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| {
            let n = tx.execute(
                "UPDATE outbox SET lease_owner = NULL, lease_until = NULL \
                 WHERE lease_owner = ?1 AND published_at IS NULL",
                [owner],
            )?;
            Ok(n as u64)
        })
        .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.with_conn(|conn| {
            let (pending, oldest): (i64, Option<f64>) = conn.query_row(
                "SELECT COUNT(*), (julianday('now') - julianday(MIN(created_at))) * 86400.0 \
                 FROM outbox WHERE published_at IS NULL AND dead_at IS NULL",
                [],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )?;
            let parked: i64 =
                conn.query_row("SELECT COUNT(*) FROM outbox WHERE dead_at IS NOT NULL", [], |r| r.get(0))?;
            Ok(OutboxStats { pending, oldest_pending_seconds: oldest.unwrap_or(0.0).max(0.0), parked })
        })
        .await
    }
}

#[async_trait]
impl OutboxAdmin for SqliteStore {
    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT outbox_id, order_id, attempts, last_error, created_at, dead_at FROM outbox \
                 WHERE dead_at IS NOT NULL ORDER BY dead_at DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(ParkedRow {
                    outbox_id: parse_id(r.get(0)?)?,
                    order_id: OrderId(r.get(1)?),
                    attempts: r.get(2)?,
                    last_error: r.get(3)?,
                    created_at: parse_time(&r.get::<_, String>(4)?)?,
                    dead_at: parse_time(&r.get::<_, String>(5)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn requeue(&self, target: RequeueTarget, requested_by: &str) -> Result<Vec<OutboxId>, StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string();
        self.write(move |tx| {
            let (by_id, by_order, all) = match target {
                RequeueTarget::Outbox(id) => (Some(id.to_string()), None, false),
                RequeueTarget::Order(order) => (None, Some(order.0), false),
                RequeueTarget::All => (None, None, true),
            };
            let sql = format!(
                "UPDATE outbox SET dead_at = NULL, attempts = 0, next_attempt_at = {NOW}, lease_owner = NULL, \
                   lease_until = NULL \
                 WHERE dead_at IS NOT NULL AND published_at IS NULL AND (outbox_id = ?1 OR order_id = ?2 OR ?3) \
                 RETURNING outbox_id, order_id"
            );
            let mut stmt = tx.prepare_cached(&sql)?;
            let rows = stmt
                .query_map(params![by_id, by_order, all], |r| Ok((parse_id(r.get(0)?)?, r.get::<_, i64>(1)?)))?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut audit = tx.prepare_cached(
                "INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, ?2, 'requeue', ?3)",
            )?;
            let mut ids = Vec::with_capacity(rows.len());
            for (id, order_id) in rows {
                audit.execute(params![id.to_string(), order_id, requested_by])?;
                ids.push(id);
            }
            Ok(ids)
        })
        .await
    }

    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        purge_older(self, "outbox", "published_at", older_than, limit).await
    }

    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        purge_older(self, "inbox", "processed_at", older_than, limit).await
    }

    async fn purge_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        purge_older(self, "dead_letters", "sent_at", older_than, limit).await
    }

    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError> {
        self.with_conn(move |conn| {
            let pending_without_outbox = conn.query_row(
                "SELECT COUNT(*) FROM orders o WHERE o.status = 'pending' \
                 AND NOT EXISTS (SELECT 1 FROM outbox x WHERE x.order_id = o.order_id)",
                [],
                |r| r.get(0),
            )?;
            let published_not_processed = conn.query_row(
                &format!("SELECT COUNT(*) FROM orders o WHERE {STUCK_PUBLISHED}"),
                [ago_modifier(published_for)],
                |r| r.get(0),
            )?;
            Ok(Reconciliation { pending_without_outbox, published_not_processed })
        })
        .await
    }

    async fn repair_stuck(
        &self,
        published_for: Duration,
        limit: u32,
        requested_by: &str,
    ) -> Result<Vec<(OrderId, OutboxId)>, StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string();
        self.write(move |tx| {
            let sql = format!(
                "SELECT o.order_id, (SELECT x.outbox_id FROM outbox x WHERE x.order_id = o.order_id \
                   ORDER BY x.published_at DESC LIMIT 1) FROM orders o WHERE {STUCK_PUBLISHED} LIMIT ?2"
            );
            let stuck = tx
                .prepare_cached(&sql)?
                .query_map(params![ago_modifier(published_for), limit], |r| {
                    Ok((OrderId(r.get(0)?), r.get::<_, Option<String>>(1)?.map(parse_id).transpose()?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut resend = tx.prepare_cached(&format!(
                "UPDATE outbox SET published_at = NULL, attempts = 0, next_attempt_at = {NOW}, lease_owner = NULL, \
                   lease_until = NULL, dead_at = NULL WHERE outbox_id = ?1 AND published_at IS NOT NULL"
            ))?;
            let mut audit = tx.prepare_cached(
                "INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, ?2, 'repair', ?3)",
            )?;
            let mut repaired = Vec::with_capacity(stuck.len());
            for (order_id, last_row) in stuck {
                let outbox_id = match last_row {
                    Some(id) if resend.execute([id.to_string()])? == 1 => id,
                    Some(_) => continue,
                    None => match load_order(tx, order_id)? {
                        Some(order) => insert_outbox(tx, &order, None, None, None)?,
                        None => continue,
                    },
                };
                audit.execute(params![outbox_id.to_string(), order_id.0, requested_by])?;
                repaired.push((order_id, outbox_id));
            }
            Ok(repaired)
        })
        .await
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT outbox_id, order_id, action, requested_by, requested_at FROM outbox_audit \
                 ORDER BY audit_id DESC LIMIT ?1",
            )?;
            let rows = stmt.query_map([limit], |r| {
                Ok(AuditEntry {
                    outbox_id: parse_id(r.get(0)?)?,
                    order_id: OrderId(r.get(1)?),
                    action: r.get(2)?,
                    requested_by: r.get(3)?,
                    requested_at: parse_time(&r.get::<_, String>(4)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn recent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterEntry>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT dead_letter_id, order_id, reason, created_at, sent_at, undeliverable_at, replayed_at FROM dead_letters \
                 ORDER BY created_at DESC, rowid DESC LIMIT ?1",
            )?;
            let time = |t: Option<String>| t.map(|t| parse_time(&t)).transpose();
            let rows = stmt.query_map([limit], |r| {
                Ok(DeadLetterEntry {
                    dead_letter_id: r.get(0)?,
                    order_id: r.get::<_, Option<i64>>(1)?.map(OrderId),
                    reason: r.get(2)?,
                    created_at: parse_time(&r.get::<_, String>(3)?)?,
                    sent_at: time(r.get(4)?)?,
                    undeliverable_at: time(r.get(5)?)?,
                    replayed_at: time(r.get(6)?)?,
                })
            })?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn record_action(&self, action: &str, requested_by: &str) -> Result<(), StoreError> {
        let (action, requested_by) = (action.to_string(), truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string());
        self.write(move |tx| {
            tx.execute(
                "INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, 0, ?2, ?3)",
                params![OutboxId(uuid::Uuid::nil()).to_string(), action, requested_by],
            )?;
            Ok(())
        })
        .await
    }

    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string();
        self.write(move |tx| match retry_order(tx, order_id, "retry", &requested_by)? {
            Some(outbox_id) => Ok(outbox_id),
            None => match load_order(tx, order_id)? {
                None => Err(StoreError::NotFound),
                Some(o) => {
                    Err(StoreError::Conflict(Cause::msg(format!("order {order_id} is {}, not failed", o.status))))
                }
            },
        })
        .await
    }
}

/// Puts a `failed` order back to `pending` with a fresh outbox row, audited
/// as `action` by `requested_by`; `None` when the order is not `failed`.
pub(super) fn retry_order(
    tx: &rusqlite::Transaction<'_>,
    order_id: OrderId,
    action: &str,
    requested_by: &str,
) -> Result<Option<OutboxId>, StoreError> {
    let sql = format!(
        "UPDATE orders SET status = 'pending', failure_reason = NULL, processed_at = NULL, unit_price = NULL, \
           total_price = NULL WHERE order_id = ?1 AND status = 'failed' RETURNING {ORDER_COLUMNS}"
    );
    let Some(order) = tx.query_row(&sql, [order_id.0], order_from_row).optional()? else {
        return Ok(None);
    };
    let outbox_id = insert_outbox(tx, &order, None, None, None)?;
    let mut moves = Moves::default();
    moves.moved(OrderStatus::Failed, OrderStatus::Pending, 1);
    count_moves(tx, moves)?;
    audit(tx, outbox_id, order_id, action, requested_by)?;
    Ok(Some(outbox_id))
}

/// One `outbox_audit` row.
pub(super) fn audit(
    tx: &rusqlite::Transaction<'_>,
    outbox_id: OutboxId,
    order_id: OrderId,
    action: &str,
    requested_by: &str,
) -> Result<(), StoreError> {
    tx.prepare_cached("INSERT INTO outbox_audit (outbox_id, order_id, action, requested_by) VALUES (?1, ?2, ?3, ?4)")?
        .execute(params![outbox_id.to_string(), order_id.0, action, requested_by])?;
    Ok(())
}

/// Deletes up to `limit` rows of `table` whose `column` is set and older than
/// `older_than` (each table has an index on that column).
async fn purge_older(
    store: &SqliteStore,
    table: &'static str,
    column: &'static str,
    older_than: Duration,
    limit: u32,
) -> Result<u64, StoreError> {
    store
        .write(move |tx| {
            let n = tx.execute(
                &format!(
                    "DELETE FROM {table} WHERE rowid IN (SELECT rowid FROM {table} \
                       WHERE {column} IS NOT NULL \
                         AND {column} < strftime('%Y-%m-%dT%H:%M:%fZ', 'now', ?1) LIMIT ?2)"
                ),
                params![ago_modifier(older_than), limit],
            )?;
            Ok(n as u64)
        })
        .await
}
