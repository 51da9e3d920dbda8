//! SQL Server: the relay's side of the outbox: claims, confirmations, failures,
//! operator requeues, retention and reconciliation.
//!
//! Invariant: a claim (`dbo.claim_outbox`) takes due rows under UPDLOCK + READPAST
//! and leases only those still unleased, so several relays never take the same row.

use std::time::Duration;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use tiberius::Row;
use uuid::Uuid;

use crate::decide::{failure_outcome, not_retried};
use crate::limits::{LAST_ERROR_UNITS, LEASE_OWNER_UNITS, REQUESTED_BY_UNITS, truncate_utf16};
use crate::store::Moves;
use crate::{
    AuditAction, AuditEntry, DeadLetterEntry, FailedAttempt, FailureOutcome, MssqlStore, OrderId, OrderStatus,
    OutboxAdmin, OutboxId, OutboxRow, OutboxStats, OutboxStore, ParkedRow, Reconciliation, RequeueTarget, StoreError,
};

use super::orders::insert_outbox;
use super::sql::*;
use super::{
    TdsClient, TdsResult, ago, changed, conversion, count, count_moves, count_slot, exec, from_now, load_order,
    order_from_row, outbox_from_row, rows, utc,
};

#[async_trait]
impl OutboxStore for MssqlStore {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        self.with_conn(async |c| {
            let claimed = rows(c, CLAIM_OUTBOX, &[&owner, &from_now(lease), &limit]).await?;
            let mut rows = claimed.iter().map(outbox_from_row).collect::<TdsResult<Vec<_>>>()?;
            rows.sort_by_key(|r| (r.created_at, r.order_id));
            Ok(rows)
        })
        .await
    }

    /// One round trip, one transaction, whatever the number of ids.
    async fn mark_published(&self, ids: &[OutboxId]) -> Result<u64, StoreError> {
        if ids.is_empty() {
            return Ok(0);
        }
        let ids: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
        self.with_conn(async |c| Ok(count(&rows(c, MARK_PUBLISHED, &[&ids.join(","), &count_slot()]).await?) as u64))
            .await
    }

    async fn record_failure(&self, failure: &FailedAttempt<'_>) -> Result<FailureOutcome, StoreError> {
        let FailedAttempt { owner, outbox_id, error, retry_in, max_attempts } = *failure;
        let error = truncate_utf16(error, LAST_ERROR_UNITS);
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
        self.with_conn(async |c| {
            let params: [&dyn tiberius::ToSql; 5] = [&outbox_id.0, &error, &from_now(retry_in), &max_attempts, &owner];
            let dead_at = rows(c, RECORD_FAILURE, &params).await?;
            Ok(failure_outcome(dead_at.first().map(|r| r.get::<NaiveDateTime, _>(0).is_some())))
        })
        .await
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
        self.with_conn(async |c| Ok(changed(c, RELEASE_LEASES, &[&owner]).await?)).await
    }

    async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
        self.with_conn(async |c| Ok(changed(c, RENEW_LEASES, &[&owner, &from_now(lease)]).await?)).await
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        self.with_conn(async |c| {
            let pending = rows(c, PENDING_STATS, &[]).await?;
            let first = pending.first().ok_or_else(|| conversion("pending stats"))?;
            let oldest = first.get::<i64, _>(1).map_or(0.0, |ms| ms as f64 / 1000.0);
            let parked = count(&rows(c, PARKED_COUNT, &[]).await?);
            Ok(OutboxStats {
                pending: first.get::<i64, _>(0).unwrap_or(0),
                oldest_pending_seconds: oldest.max(0.0),
                parked,
            })
        })
        .await
    }
}

#[async_trait]
impl OutboxAdmin for MssqlStore {
    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            let read = |r: &Row| -> TdsResult<ParkedRow> {
                Ok(ParkedRow {
                    outbox_id: OutboxId(r.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?),
                    order_id: OrderId(r.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
                    attempts: r.try_get::<i32, _>(2)?.ok_or_else(|| conversion("attempts"))?,
                    last_error: r.try_get::<&str, _>(3)?.map(str::to_string),
                    created_at: utc(r.try_get::<NaiveDateTime, _>(4)?.ok_or_else(|| conversion("created_at"))?),
                    dead_at: utc(r.try_get::<NaiveDateTime, _>(5)?.ok_or_else(|| conversion("dead_at"))?),
                })
            };
            Ok(rows(c, PARKED_ROWS, &[&limit]).await?.iter().map(read).collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn requeue(&self, target: RequeueTarget, requested_by: &str) -> Result<Vec<OutboxId>, StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.transaction(async |c| {
            let row = |r: &Row| -> TdsResult<(OutboxId, OrderId)> {
                let id = r.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?;
                Ok((OutboxId(id), OrderId(r.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?)))
            };
            let requeued = match target {
                RequeueTarget::Outbox(id) => rows(c, REQUEUE_ROW, &[&id.0]).await?,
                RequeueTarget::Order(order) => rows(c, REQUEUE_ORDER, &[&order.0]).await?,
                RequeueTarget::All => rows(c, REQUEUE_ALL, &[]).await?,
            };
            let requeued = requeued.iter().map(row).collect::<TdsResult<Vec<_>>>()?;
            let mut ids = Vec::with_capacity(requeued.len());
            for (outbox_id, order_id) in requeued {
                audit(c, outbox_id, order_id, AuditAction::Requeue, requested_by).await?;
                ids.push(outbox_id);
            }
            Ok(ids)
        })
        .await
    }

    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.with_conn(async |c| Ok(changed(c, PURGE_PUBLISHED, &[&ago(older_than), &i64::from(limit)]).await?)).await
    }

    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.with_conn(async |c| Ok(changed(c, PURGE_INBOX, &[&ago(older_than), &i64::from(limit)]).await?)).await
    }

    async fn purge_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        self.with_conn(async |c| Ok(changed(c, PURGE_DEAD_LETTERS, &[&ago(older_than), &i64::from(limit)]).await?))
            .await
    }

    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError> {
        self.with_conn(async |c| {
            Ok(Reconciliation {
                pending_without_outbox: count(&rows(c, PENDING_WITHOUT_OUTBOX, &[]).await?),
                published_not_processed: count(&rows(c, PUBLISHED_NOT_PROCESSED, &[&ago(published_for)]).await?),
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
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.transaction(async |c| {
            let stuck = rows(c, STUCK_ORDERS, &[&ago(published_for), &i64::from(limit)])
                .await?
                .iter()
                .map(|r| Ok((OrderId(r.try_get::<i64, _>(0)?.ok_or_else(|| conversion("order_id"))?), r.try_get(1)?)))
                .collect::<TdsResult<Vec<(OrderId, Option<Uuid>)>>>()?;
            let mut repaired = Vec::with_capacity(stuck.len());
            for (order_id, last_row) in stuck {
                let outbox_id = match last_row.map(OutboxId) {
                    Some(id) if changed(c, RESEND_ROW, &[&id.0]).await? == 1 => id,
                    Some(_) => continue,
                    None => match load_order(c, order_id).await? {
                        Some(order) => insert_outbox(c, &order, &None, &None, None).await?,
                        None => continue,
                    },
                };
                audit(c, outbox_id, order_id, AuditAction::Repair, requested_by).await?;
                repaired.push((order_id, outbox_id));
            }
            Ok(repaired)
        })
        .await
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            let read = |r: &Row| -> TdsResult<AuditEntry> {
                Ok(AuditEntry {
                    outbox_id: OutboxId(r.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?),
                    order_id: OrderId(r.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
                    action: r.try_get::<&str, _>(2)?.ok_or_else(|| conversion("action"))?.to_string(),
                    requested_by: r.try_get::<&str, _>(3)?.ok_or_else(|| conversion("requested_by"))?.to_string(),
                    requested_at: utc(r.try_get::<NaiveDateTime, _>(4)?.ok_or_else(|| conversion("requested_at"))?),
                })
            };
            Ok(rows(c, RECENT_AUDIT, &[&limit]).await?.iter().map(read).collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn recent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterEntry>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            let time = |r: &Row, i: usize| -> TdsResult<_> { Ok(r.try_get::<NaiveDateTime, _>(i)?.map(utc)) };
            let read = |r: &Row| -> TdsResult<DeadLetterEntry> {
                Ok(DeadLetterEntry {
                    dead_letter_id: r.try_get::<&str, _>(0)?.ok_or_else(|| conversion("dead_letter_id"))?.into(),
                    order_id: r.try_get::<i64, _>(1)?.map(OrderId),
                    reason: r.try_get::<&str, _>(2)?.unwrap_or_default().into(),
                    created_at: time(r, 3)?.ok_or_else(|| conversion("created_at"))?,
                    sent_at: time(r, 4)?,
                    undeliverable_at: time(r, 5)?,
                    replayed_at: time(r, 6)?,
                })
            };
            Ok(rows(c, RECENT_DEAD_LETTERS, &[&limit]).await?.iter().map(read).collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn record_action(&self, action: AuditAction, requested_by: &str) -> Result<(), StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.with_conn(async |c| audit(c, OutboxId(Uuid::nil()), OrderId(0), action, requested_by).await).await
    }

    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError> {
        let requested_by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.transaction(async |c| match retry_order(c, order_id, AuditAction::Retry, requested_by).await? {
            Some(outbox_id) => Ok(outbox_id),
            None => Err(not_retried(order_id, load_order(c, order_id).await?)),
        })
        .await
    }
}

/// Puts a `failed` order back to `pending` with a fresh outbox row, audited
/// as `action` by `requested_by`; `None` when the order is not `failed` (the
/// status it leaves is the one the guarded statement names).
pub(super) async fn retry_order(
    c: &mut TdsClient,
    order_id: OrderId,
    action: AuditAction,
    requested_by: &str,
) -> Result<Option<OutboxId>, StoreError> {
    let Some(order) = rows(c, RETRY_ORDER, &[&order_id.0]).await?.first().map(order_from_row).transpose()? else {
        return Ok(None);
    };
    let outbox_id = insert_outbox(c, &order, &None, &None, None).await?;
    let mut moves = Moves::default();
    moves.moved(OrderStatus::Failed, OrderStatus::Pending, 1);
    count_moves(c, moves).await?;
    audit(c, outbox_id, order_id, action, requested_by).await?;
    Ok(Some(outbox_id))
}

/// One `outbox_audit` row.
pub(super) async fn audit(
    c: &mut TdsClient,
    outbox_id: OutboxId,
    order_id: OrderId,
    action: AuditAction,
    requested_by: &str,
) -> Result<(), StoreError> {
    exec(c, INSERT_AUDIT, &[&outbox_id.0, &order_id.0, &action.as_str(), &requested_by]).await?;
    Ok(())
}
