//! SQLite: the relay's side of the outbox: claims, confirmations, failures,
//! operator requeues, retention and reconciliation.
//!
//! Invariant: every write runs in one IMMEDIATE transaction with the database clock.

use std::time::Duration;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, params};

use crate::decide::{failure_outcome, not_retried};
use crate::limits::{LAST_ERROR_UNITS, LEASE_OWNER_UNITS, REQUESTED_BY_UNITS, truncate_utf16};
use crate::store::{Cause, Moves};
use crate::{
    AuditAction, AuditEntry, DeadLetterEntry, FailedAttempt, FailureOutcome, OrderId, OrderStatus, OutboxAdmin,
    OutboxId, OutboxRow, OutboxStats, OutboxStore, ParkedRow, Reconciliation, RequeueTarget, SqliteStore, StoreError,
};

use super::orders::insert_outbox;
use super::sql::*;
use super::{ago, count_moves, from_now, load_order, order_from_row, outbox_from_row, parse_id, parse_time};

#[async_trait]
impl OutboxStore for SqliteStore {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| {
            let mut stmt = tx.prepare_cached(CLAIM_OUTBOX)?;
            let rows = stmt.query_map(params![owner, from_now(lease), limit], outbox_from_row)?;
            let mut rows = rows.collect::<rusqlite::Result<Vec<_>>>()?;
            rows.sort_by_key(|r| (r.created_at, r.order_id));
            Ok(rows)
        })
        .await
    }

    async fn mark_published(&self, ids: &[OutboxId]) -> Result<u64, StoreError> {
        let ids = json_array(&ids.iter().map(ToString::to_string).collect::<Vec<_>>())?;
        self.write(move |tx| {
            let orders: Vec<i64> =
                tx.prepare_cached(MARK_PUBLISHED)?.query_map([&ids], |r| r.get(0))?.collect::<rusqlite::Result<_>>()?;
            let advanced = tx.prepare_cached(MARK_ORDER_PUBLISHED)?.execute([json_array(&orders)?])?;
            let mut moves = Moves::default();
            moves.moved(OrderStatus::Pending, OrderStatus::Published, advanced as i64);
            count_moves(tx, moves)?;
            Ok(orders.len() as u64)
        })
        .await
    }

    async fn record_failure(&self, failure: &FailedAttempt<'_>) -> Result<FailureOutcome, StoreError> {
        let FailedAttempt { owner, outbox_id, error, retry_in, max_attempts } = *failure;
        let error = truncate_utf16(error, LAST_ERROR_UNITS).to_string();
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| {
            let params = params![outbox_id.to_string(), error, from_now(retry_in), max_attempts, owner];
            let dead_at: Option<Option<String>> =
                tx.prepare_cached(RECORD_FAILURE)?.query_row(params, |r| r.get(0)).optional()?;
            Ok(failure_outcome(dead_at.map(|at| at.is_some())))
        })
        .await
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| Ok(tx.prepare_cached(RELEASE_LEASES)?.execute([owner])? as u64)).await
    }

    async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS).to_string();
        self.write(move |tx| Ok(tx.prepare_cached(RENEW_LEASES)?.execute(params![owner, from_now(lease)])? as u64))
            .await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.with_conn(|conn| {
            let (pending, oldest): (i64, Option<f64>) =
                conn.prepare_cached(PENDING_STATS)?.query_row([], |r| Ok((r.get(0)?, r.get(1)?)))?;
            let parked: i64 = conn.prepare_cached(PARKED_COUNT)?.query_row([], |r| r.get(0))?;
            Ok(OutboxStats { pending, oldest_pending_seconds: oldest.unwrap_or(0.0).max(0.0), parked })
        })
        .await
    }
}

#[async_trait]
impl OutboxAdmin for SqliteStore {
    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(PARKED_ROWS)?;
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
            let row = |r: &rusqlite::Row<'_>| Ok((parse_id(r.get(0)?)?, OrderId(r.get(1)?)));
            let requeued: rusqlite::Result<Vec<(OutboxId, OrderId)>> = match target {
                RequeueTarget::Outbox(id) => {
                    tx.prepare_cached(REQUEUE_ROW)?.query_map([id.to_string()], row)?.collect()
                }
                RequeueTarget::Order(order) => tx.prepare_cached(REQUEUE_ORDER)?.query_map([order.0], row)?.collect(),
                RequeueTarget::All => tx.prepare_cached(REQUEUE_ALL)?.query_map([], row)?.collect(),
            };
            let requeued = requeued?;
            let mut ids = Vec::with_capacity(requeued.len());
            for (outbox_id, order_id) in requeued {
                audit(tx, outbox_id, order_id, AuditAction::Requeue, &requested_by)?;
                ids.push(outbox_id);
            }
            Ok(ids)
        })
        .await
    }

    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| Ok(tx.prepare_cached(PURGE_PUBLISHED)?.execute(params![ago(older_than), limit])? as u64))
            .await
    }

    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.write(move |tx| Ok(tx.prepare_cached(PURGE_INBOX)?.execute(params![ago(older_than), limit])? as u64)).await
    }

    async fn purge_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.write(
            move |tx| Ok(tx.prepare_cached(PURGE_DEAD_LETTERS)?.execute(params![ago(older_than), limit])? as u64),
        )
        .await
    }

    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError> {
        self.with_conn(move |conn| {
            Ok(Reconciliation {
                pending_without_outbox: conn.prepare_cached(PENDING_WITHOUT_OUTBOX)?.query_row([], |r| r.get(0))?,
                published_not_processed: conn
                    .prepare_cached(PUBLISHED_NOT_PROCESSED)?
                    .query_row([ago(published_for)], |r| r.get(0))?,
            })
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
            let stuck = tx
                .prepare_cached(STUCK_ORDERS)?
                .query_map(params![ago(published_for), limit], |r| {
                    Ok((OrderId(r.get(0)?), r.get::<_, Option<String>>(1)?.map(parse_id).transpose()?))
                })?
                .collect::<rusqlite::Result<Vec<_>>>()?;
            let mut repaired = Vec::with_capacity(stuck.len());
            for (order_id, last_row) in stuck {
                let outbox_id = match last_row {
                    Some(id) if tx.prepare_cached(RESEND_ROW)?.execute([id.to_string()])? == 1 => id,
                    Some(_) => continue,
                    None => match load_order(tx, order_id)? {
                        Some(order) => insert_outbox(tx, &order, None, None, None)?,
                        None => continue,
                    },
                };
                audit(tx, outbox_id, order_id, AuditAction::Repair, &requested_by)?;
                repaired.push((order_id, outbox_id));
            }
            Ok(repaired)
        })
        .await
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(RECENT_AUDIT)?;
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
            let mut stmt = conn.prepare_cached(RECENT_DEAD_LETTERS)?;
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

    async fn record_action(&self, action: AuditAction, requested_by: &str) -> Result<(), StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string();
        self.write(move |tx| audit(tx, OutboxId(uuid::Uuid::nil()), OrderId(0), action, &requested_by)).await
    }

    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string();
        self.write(move |tx| match retry_order(tx, order_id, AuditAction::Retry, &requested_by)? {
            Some(outbox_id) => Ok(outbox_id),
            None => Err(not_retried(order_id, load_order(tx, order_id)?)),
        })
        .await
    }
}

/// Puts a `failed` order back to `pending` with a fresh outbox row, audited
/// as `action` by `requested_by`; `None` when the order is not `failed`.
pub(super) fn retry_order(
    tx: &rusqlite::Transaction<'_>,
    order_id: OrderId,
    action: AuditAction,
    requested_by: &str,
) -> Result<Option<OutboxId>, StoreError> {
    let Some(order) = tx.prepare_cached(RETRY_ORDER)?.query_row([order_id.0], order_from_row).optional()? else {
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
    action: AuditAction,
    requested_by: &str,
) -> Result<(), StoreError> {
    let params = params![outbox_id.to_string(), order_id.0, action.as_str(), requested_by];
    tx.prepare_cached(INSERT_AUDIT)?.execute(params)?;
    Ok(())
}

/// A batch's ids as one JSON array, the parameter `json_each` reads.
fn json_array<T: serde::Serialize>(ids: &[T]) -> Result<String, StoreError> {
    serde_json::to_string(ids).map_err(|e| StoreError::Other(Cause::new(e)))
}
