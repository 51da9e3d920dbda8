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

use crate::limits::{LAST_ERROR_UNITS, LEASE_OWNER_UNITS, REQUESTED_BY_UNITS, truncate_utf16};
use crate::store::{Cause, Moves, OrderStore};
use crate::{
    AuditEntry, DeadLetterEntry, FailureOutcome, MssqlStore, OrderId, OrderStatus, OutboxAdmin, OutboxId, OutboxRow,
    OutboxStats, OutboxStore, ParkedRow, Reconciliation, RequeueTarget, StoreError,
};

use super::orders::insert_outbox;
use super::sql::*;
use super::{
    TdsClient, TdsResult, batch, changed, conversion, count_moves, count_slot, exec, finish, millis, order_from_row,
    outbox_from_row, rows, seconds, utc,
};

/// One round trip, one transaction, whatever the number of ids.
async fn mark_published(client: &mut TdsClient, ids: &[OutboxId]) -> TdsResult<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let ids: Vec<String> = ids.iter().map(|id| id.0.to_string()).collect();
    let found = rows(client, MARK_PUBLISHED, &[&ids.join(","), &count_slot()]).await?;
    Ok(found.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0) as u64)
}

#[async_trait]
impl OutboxStore for MssqlStore {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        let mut conn = self.hot_conn().await?;
        let lease_ms = millis(lease);
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
        let limit = i32::try_from(limit).unwrap_or(i32::MAX);
        let result = async {
            let mut out = rows(&mut conn, CLAIM_OUTBOX, &[&owner, &lease_ms, &limit])
                .await?
                .iter()
                .map(outbox_from_row)
                .collect::<TdsResult<Vec<_>>>()?;
            out.sort_by_key(|r| (r.created_at, r.order_id));
            Ok(out)
        }
        .await;
        finish(conn, result)
    }

    async fn mark_published(&self, ids: &[OutboxId]) -> Result<u64, StoreError> {
        let mut conn = self.hot_conn().await?;
        let result = mark_published(&mut conn, ids).await;
        finish(conn, result)
    }

    async fn record_failure(
        &self,
        owner: &str,
        id: OutboxId,
        error: &str,
        retry_in: Duration,
        max_attempts: i32,
    ) -> Result<FailureOutcome, StoreError> {
        let mut conn = self.conn().await?;
        let error = truncate_utf16(error, LAST_ERROR_UNITS);
        let retry_ms = millis(retry_in);
        let result = async {
            let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
            let out = rows(&mut conn, RECORD_FAILURE, &[&id.0, &error, &retry_ms, &max_attempts, &owner]).await?;
            Ok(match out.first().map(|r| r.get::<NaiveDateTime, _>(0)) {
                None => FailureOutcome::LeaseLost,
                Some(Some(_)) => FailureOutcome::Parked,
                Some(None) => FailureOutcome::Retrying,
            })
        }
        .await;
        finish(conn, result)
    }

    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let owner = truncate_utf16(owner, LEASE_OWNER_UNITS);
        let result = changed(&mut conn, RELEASE_LEASES, &[&owner]).await;
        finish(conn, result)
    }

    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let pending = rows(&mut conn, PENDING_STATS, &[]).await?;
            let parked = rows(&mut conn, PARKED_COUNT, &[]).await?;
            let first = pending.first().ok_or_else(|| conversion("pending stats"))?;
            Ok(OutboxStats {
                pending: first.get::<i64, _>(0).unwrap_or(0),
                oldest_pending_seconds: first.get::<i64, _>(1).map_or(0.0, |ms| (ms as f64 / 1000.0).max(0.0)),
                parked: parked.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0),
            })
        }
        .await;
        finish(conn, result)
    }
}

#[async_trait]
impl OutboxAdmin for MssqlStore {
    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, PARKED_ROWS, &[&limit]).await?.iter().map(parked_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn requeue(&self, target: RequeueTarget, requested_by: &str) -> Result<Vec<OutboxId>, StoreError> {
        let mut conn = self.conn().await?;
        let result = requeue(&mut conn, target, truncate_utf16(requested_by, REQUESTED_BY_UNITS)).await;
        finish(conn, result)
    }

    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let ago = -seconds(older_than);
        let result = changed(&mut conn, &with_limit(PURGE_PUBLISHED, limit), &[&ago]).await;
        finish(conn, result)
    }

    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let ago = -seconds(older_than);
        let result = changed(&mut conn, &with_limit(PURGE_INBOX, limit), &[&ago]).await;
        finish(conn, result)
    }

    async fn purge_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let ago = -seconds(older_than);
        let result = changed(&mut conn, &with_limit(PURGE_DEAD_LETTERS, limit), &[&ago]).await;
        finish(conn, result)
    }

    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError> {
        let mut conn = self.conn().await?;
        let ago = -seconds(published_for);
        let result = async {
            let count = |rows: Vec<Row>| rows.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0);
            Ok(Reconciliation {
                pending_without_outbox: count(rows(&mut conn, PENDING_WITHOUT_OUTBOX, &[]).await?),
                published_not_processed: count(rows(&mut conn, PUBLISHED_NOT_PROCESSED, &[&ago]).await?),
            })
        }
        .await;
        finish(conn, result)
    }

    async fn repair_stuck(
        &self,
        published_for: Duration,
        limit: u32,
        requested_by: &str,
    ) -> Result<Vec<(OrderId, OutboxId)>, StoreError> {
        let mut conn = self.conn().await?;
        let result =
            repair(&mut conn, -seconds(published_for), limit, truncate_utf16(requested_by, REQUESTED_BY_UNITS));
        let result = result.await;
        finish(conn, result)
    }

    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, RECENT_AUDIT, &[&limit]).await?.iter().map(audit_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn recent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterEntry>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result = async {
            let time = |row: &Row, i: usize| -> TdsResult<_> { Ok(row.try_get::<NaiveDateTime, _>(i)?.map(utc)) };
            rows(&mut conn, RECENT_DEAD_LETTERS, &[&limit])
                .await?
                .iter()
                .map(|row| {
                    Ok(DeadLetterEntry {
                        dead_letter_id: row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("dead_letter_id"))?.into(),
                        order_id: row.try_get::<i64, _>(1)?.map(OrderId),
                        reason: row.try_get::<&str, _>(2)?.unwrap_or_default().into(),
                        created_at: time(row, 3)?.ok_or_else(|| conversion("created_at"))?,
                        sent_at: time(row, 4)?,
                        undeliverable_at: time(row, 5)?,
                        replayed_at: time(row, 6)?,
                    })
                })
                .collect()
        }
        .await;
        finish(conn, result)
    }

    async fn record_action(&self, action: &str, requested_by: &str) -> Result<(), StoreError> {
        let mut conn = self.conn().await?;
        let by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        let result = exec(&mut conn, INSERT_AUDIT, &[&Uuid::nil(), &0_i64, &action, &by]).await.map(drop);
        finish(conn, result)
    }

    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError> {
        let mut conn = self.conn().await?;
        let result = retry_order(&mut conn, order_id, truncate_utf16(requested_by, REQUESTED_BY_UNITS)).await;
        match finish(conn, result)? {
            Some(id) => Ok(id),
            None => match self.order(order_id).await {
                Ok(o) => Err(StoreError::Conflict(Cause::msg(format!("order {order_id} is {}, not failed", o.status)))),
                Err(e) => Err(e),
            },
        }
    }
}

fn audit_from_row(r: &Row) -> TdsResult<AuditEntry> {
    Ok(AuditEntry {
        outbox_id: OutboxId(r.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?),
        order_id: OrderId(r.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
        action: r.try_get::<&str, _>(2)?.ok_or_else(|| conversion("action"))?.to_string(),
        requested_by: r.try_get::<&str, _>(3)?.ok_or_else(|| conversion("requested_by"))?.to_string(),
        requested_at: utc(r.try_get::<NaiveDateTime, _>(4)?.ok_or_else(|| conversion("requested_at"))?),
    })
}

fn parked_from_row(row: &Row) -> TdsResult<ParkedRow> {
    Ok(ParkedRow {
        outbox_id: OutboxId(row.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?),
        order_id: OrderId(row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
        attempts: row.try_get::<i32, _>(2)?.ok_or_else(|| conversion("attempts"))?,
        last_error: row.try_get::<&str, _>(3)?.map(str::to_string),
        created_at: utc(row.try_get::<NaiveDateTime, _>(4)?.ok_or_else(|| conversion("created_at"))?),
        dead_at: utc(row.try_get::<NaiveDateTime, _>(5)?.ok_or_else(|| conversion("dead_at"))?),
    })
}

async fn requeue(client: &mut TdsClient, target: RequeueTarget, requested_by: &str) -> TdsResult<Vec<OutboxId>> {
    batch(client, BEGIN).await?;
    let requeued = match target {
        RequeueTarget::Outbox(id) => rows(client, REQUEUE_ROW, &[&id.0]).await?,
        RequeueTarget::Order(order) => rows(client, REQUEUE_ORDER, &[&order.0]).await?,
        RequeueTarget::All => rows(client, REQUEUE_ALL, &[]).await?,
    };
    let mut ids = Vec::with_capacity(requeued.len());
    for row in &requeued {
        let id = row.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?;
        let order_id = row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?;
        exec(client, INSERT_AUDIT, &[&id, &order_id, &"requeue", &requested_by]).await?;
        ids.push(OutboxId(id));
    }
    batch(client, COMMIT).await?;
    Ok(ids)
}

/// `None` when the order is not `failed` (or does not exist).
async fn repair(
    client: &mut TdsClient,
    ago: i32,
    limit: u32,
    requested_by: &str,
) -> TdsResult<Vec<(OrderId, OutboxId)>> {
    batch(client, BEGIN).await?;
    let stuck = rows(client, &with_limit(STUCK_ORDERS, limit), &[&ago]).await?;
    let mut repaired = Vec::with_capacity(stuck.len());
    for row in &stuck {
        let order_id = OrderId(row.try_get::<i64, _>(0)?.ok_or_else(|| conversion("order_id"))?);
        let outbox_id = match row.try_get::<Uuid, _>(1)? {
            Some(id) if changed(client, RESEND_ROW, &[&id]).await? == 1 => OutboxId(id),
            Some(_) => continue,
            None => match rows(client, ORDER, &[&order_id.0]).await?.first() {
                Some(order) => insert_outbox(client, &order_from_row(order)?, &None, &None, None).await?,
                None => continue,
            },
        };
        exec(client, INSERT_AUDIT, &[&outbox_id.0, &order_id.0, &"repair", &requested_by]).await?;
        repaired.push((order_id, outbox_id));
    }
    batch(client, COMMIT).await?;
    Ok(repaired)
}

async fn retry_order(client: &mut TdsClient, order_id: OrderId, requested_by: &str) -> TdsResult<Option<OutboxId>> {
    batch(client, BEGIN).await?;
    let Some(outbox_id) = retry_in(client, order_id, "retry", requested_by).await? else {
        batch(client, ROLLBACK).await?;
        return Ok(None);
    };
    batch(client, COMMIT).await?;
    Ok(Some(outbox_id))
}

/// Inside the caller's transaction: puts a `failed` order back to `pending`
/// with a fresh outbox row, audited as `action`; `None` when it is not `failed`
/// (the status it leaves is the one the guarded statement names).
pub(super) async fn retry_in(
    client: &mut TdsClient,
    order_id: OrderId,
    action: &str,
    requested_by: &str,
) -> TdsResult<Option<OutboxId>> {
    let updated = rows(client, RETRY_ORDER, &[&order_id.0]).await?;
    let Some(row) = updated.first() else {
        return Ok(None);
    };
    let order = order_from_row(row)?;
    let outbox_id = insert_outbox(client, &order, &None, &None, None).await?;
    let mut moves = Moves::default();
    moves.moved(OrderStatus::Failed, OrderStatus::Pending, 1);
    count_moves(client, moves).await?;
    exec(client, INSERT_AUDIT, &[&outbox_id.0, &order_id.0, &action, &requested_by]).await?;
    Ok(Some(outbox_id))
}
