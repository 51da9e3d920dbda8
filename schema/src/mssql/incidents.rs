//! SQL Server: failure groups, group retries and dead-letter replays.
//!
//! Invariant: each action is one transaction; an order leaves `failed` only
//! through the statement guarded by that status (`RETRY_ORDER`), and a group
//! replay takes a letter only through the statement that marks it
//! (`MARK_REPLAYED`), never on the strength of an earlier read, since engines
//! that ignore lock hints (Babelfish) let another operator act in between.
//! The rules are `crate::incidents`'s.

use std::collections::HashMap;

use async_trait::async_trait;
use chrono::NaiveDateTime;
use tiberius::Row;

use crate::incidents::{
    Failure, FailureGroup, GROUP_SCAN, IncidentAdmin, ReplayReport, ReplayStep, Replayed, Skipped, fingerprint, group,
    replay_step,
};
use crate::limits::{REQUESTED_BY_UNITS, truncate_utf16};
use crate::store::Cause;
use crate::{AuditAction, MssqlStore, OrderId, OutboxId, StoreError};

use super::orders::insert_outbox;
use super::outbox::{audit, retry_order};
use super::sql::*;
use super::{TdsClient, TdsResult, conversion, load_order, rows, utc};

/// A failed order or an open dead letter: its id, order, reason and when.
struct Found {
    id: String,
    order_id: Option<OrderId>,
    reason: String,
    at: NaiveDateTime,
}

async fn failed_orders(client: &mut TdsClient) -> TdsResult<Vec<Found>> {
    let read = |r: &Row| -> TdsResult<Found> {
        let order_id = r.try_get::<i64, _>(0)?.ok_or_else(|| conversion("order_id"))?;
        Ok(Found {
            id: order_id.to_string(),
            order_id: Some(OrderId(order_id)),
            reason: r.try_get::<&str, _>(1)?.unwrap_or_default().to_string(),
            at: r.try_get::<NaiveDateTime, _>(2)?.ok_or_else(|| conversion("processed_at"))?,
        })
    };
    rows(client, FAILED_REASONS, &[&i64::from(GROUP_SCAN)]).await?.iter().map(read).collect()
}

async fn open_letters(client: &mut TdsClient) -> TdsResult<Vec<Found>> {
    let read = |r: &Row| -> TdsResult<Found> {
        Ok(Found {
            id: r.try_get::<&str, _>(0)?.ok_or_else(|| conversion("dead_letter_id"))?.to_string(),
            order_id: r.try_get::<i64, _>(1)?.map(OrderId),
            reason: r.try_get::<&str, _>(2)?.unwrap_or_default().to_string(),
            at: r.try_get::<NaiveDateTime, _>(3)?.ok_or_else(|| conversion("created_at"))?,
        })
    };
    rows(client, OPEN_DEAD_LETTERS, &[&i64::from(GROUP_SCAN)]).await?.iter().map(read).collect()
}

/// Replays one letter inside the caller's transaction (see [`replay_step`]);
/// `only_open` takes it only if no other replay marked it meanwhile. An order
/// already sent again by this action (`sent`) is not sent twice.
async fn replay(
    client: &mut TdsClient,
    letter: &str,
    order_id: Option<OrderId>,
    by: &str,
    only_open: bool,
    sent: &mut HashMap<OrderId, OutboxId>,
) -> Result<Result<Replayed, String>, StoreError> {
    let order = match order_id {
        Some(id) => load_order(client, id).await?,
        None => None,
    };
    let (step, order) = match replay_step(order_id, order.as_ref()) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let order_id = order.order_id;
    if rows(client, MARK_REPLAYED, &[&letter, &i32::from(only_open)]).await?.is_empty() {
        return Ok(Err("replayed meanwhile by another action".into()));
    }
    let outbox_id = match (sent.get(&order_id), step) {
        (Some(outbox_id), _) => *outbox_id,
        (None, ReplayStep::Retry) => match retry_order(client, order_id, AuditAction::Replay, by).await? {
            Some(outbox_id) => outbox_id,
            None => return Ok(Err(format!("order {order_id} changed status meanwhile"))),
        },
        (None, ReplayStep::Resend) => {
            let outbox_id = insert_outbox(client, order, &None, &None, None).await?;
            audit(client, outbox_id, order_id, AuditAction::Replay, by).await?;
            outbox_id
        }
    };
    sent.insert(order_id, outbox_id);
    Ok(Ok(Replayed { dead_letter_id: letter.to_string(), order_id, outbox_id }))
}

#[async_trait]
impl IncidentAdmin for MssqlStore {
    async fn failure_groups(&self) -> Result<Vec<FailureGroup>, StoreError> {
        self.with_conn(async |c| {
            let orders = failed_orders(c).await?.into_iter().map(|f| (f, true));
            let letters = open_letters(c).await?.into_iter().map(|f| (f, false));
            let failures =
                orders.chain(letters).map(|(f, is_order)| Failure { reason: f.reason, at: utc(f.at), is_order });
            Ok(group(failures))
        })
        .await
    }

    async fn retry_group(&self, key: &str, requested_by: &str) -> Result<Vec<(OrderId, OutboxId)>, StoreError> {
        let by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.transaction(async |c| {
            let mut retried = Vec::new();
            for failed in failed_orders(c).await? {
                let Some(order_id) = failed.order_id.filter(|_| fingerprint(&failed.reason) == key) else { continue };
                if let Some(outbox_id) = retry_order(c, order_id, AuditAction::Retry, by).await? {
                    retried.push((order_id, outbox_id));
                }
            }
            Ok(retried)
        })
        .await
    }

    async fn replay_dead_letter(&self, dead_letter_id: &str, requested_by: &str) -> Result<Replayed, StoreError> {
        let by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.transaction(async |c| {
            let found = rows(c, DEAD_LETTER_ORDER, &[&dead_letter_id]).await?;
            let Some(row) = found.first() else { return Err(StoreError::NotFound) };
            let order_id = row.try_get::<i64, _>(1)?.map(OrderId);
            replay(c, dead_letter_id, order_id, by, false, &mut HashMap::new())
                .await?
                .map_err(|why| StoreError::Conflict(Cause::msg(why)))
        })
        .await
    }

    async fn replay_group(&self, key: &str, requested_by: &str) -> Result<ReplayReport, StoreError> {
        let by = truncate_utf16(requested_by, REQUESTED_BY_UNITS);
        self.transaction(async |c| {
            let (mut report, mut sent) = (ReplayReport::default(), HashMap::new());
            for letter in open_letters(c).await? {
                if fingerprint(&letter.reason) != key {
                    continue;
                }
                match replay(c, &letter.id, letter.order_id, by, true, &mut sent).await? {
                    Ok(replayed) => report.replayed.push(replayed),
                    Err(reason) => report.skipped.push(Skipped { dead_letter_id: letter.id, reason }),
                }
            }
            Ok(report)
        })
        .await
    }
}
