//! SQLite: failure groups, group retries and dead-letter replays.
//!
//! Invariant: each action reads the failures and acts on them in one
//! IMMEDIATE transaction (the single writer), so what it acts on is what it
//! read; the rules are `crate::incidents`'s.

use std::collections::HashMap;

use async_trait::async_trait;
use rusqlite::{OptionalExtension, Transaction, params};

use crate::incidents::{
    Failure, FailureGroup, GROUP_SCAN, IncidentAdmin, ReplayReport, ReplayStep, Replayed, Skipped, fingerprint, group,
    replay_step,
};
use crate::limits::{REQUESTED_BY_UNITS, truncate_utf16};
use crate::{AuditAction, OrderId, OutboxId, SqliteStore, StoreError};

use super::orders::insert_outbox;
use super::outbox::{audit, retry_order};
use super::sql::*;
use super::{load_order, parse_time};

type FailedOrder = (OrderId, String, String);
type OpenLetter = (String, Option<OrderId>, String, String);

fn failed_orders(tx: &rusqlite::Connection) -> Result<Vec<FailedOrder>, StoreError> {
    let mut stmt = tx.prepare_cached(FAILED_REASONS)?;
    let rows = stmt.query_map([GROUP_SCAN], |r| Ok((OrderId(r.get(0)?), r.get(1)?, r.get(2)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

fn open_letters(tx: &rusqlite::Connection) -> Result<Vec<OpenLetter>, StoreError> {
    let mut stmt = tx.prepare_cached(OPEN_DEAD_LETTERS)?;
    let rows = stmt
        .query_map([GROUP_SCAN], |r| Ok((r.get(0)?, r.get::<_, Option<i64>>(1)?.map(OrderId), r.get(2)?, r.get(3)?)))?;
    Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
}

/// Replays one letter inside the caller's transaction (see [`replay_step`]);
/// `only_open` takes it only if no other replay marked it meanwhile. An order
/// already sent again by this action (`sent`) is not sent twice.
fn replay(
    tx: &Transaction<'_>,
    letter: &str,
    order_id: Option<OrderId>,
    by: &str,
    only_open: bool,
    sent: &mut HashMap<OrderId, OutboxId>,
) -> Result<Result<Replayed, String>, StoreError> {
    let order = match order_id {
        Some(id) => load_order(tx, id)?,
        None => None,
    };
    let (step, order) = match replay_step(order_id, order.as_ref()) {
        Ok(found) => found,
        Err(why) => return Ok(Err(why)),
    };
    let order_id = order.order_id;
    let marked = tx.prepare_cached(MARK_REPLAYED)?.query_row(params![letter, only_open], |_| Ok(())).optional()?;
    if marked.is_none() {
        return Ok(Err("replayed meanwhile by another action".into()));
    }
    let outbox_id = match (sent.get(&order_id), step) {
        (Some(outbox_id), _) => *outbox_id,
        (None, ReplayStep::Retry) => match retry_order(tx, order_id, AuditAction::Replay, by)? {
            Some(outbox_id) => outbox_id,
            None => return Ok(Err(format!("order {order_id} changed status meanwhile"))),
        },
        (None, ReplayStep::Resend) => {
            let outbox_id = insert_outbox(tx, order, None, None, None)?;
            audit(tx, outbox_id, order_id, AuditAction::Replay, by)?;
            outbox_id
        }
    };
    sent.insert(order_id, outbox_id);
    Ok(Ok(Replayed { dead_letter_id: letter.to_string(), order_id, outbox_id }))
}

#[async_trait]
impl IncidentAdmin for SqliteStore {
    async fn failure_groups(&self) -> Result<Vec<FailureGroup>, StoreError> {
        self.with_conn(|conn| {
            let mut failures = Vec::new();
            for (_, reason, at) in failed_orders(conn)? {
                failures.push(Failure { reason, at: parse_time(&at)?, is_order: true });
            }
            for (_, _, reason, at) in open_letters(conn)? {
                failures.push(Failure { reason, at: parse_time(&at)?, is_order: false });
            }
            Ok(group(failures))
        })
        .await
    }

    async fn retry_group(&self, key: &str, requested_by: &str) -> Result<Vec<(OrderId, OutboxId)>, StoreError> {
        let (key, by) = (key.to_string(), truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string());
        self.write(move |tx| {
            let mut retried = Vec::new();
            for (order_id, reason, _) in failed_orders(tx)? {
                if fingerprint(&reason) != key {
                    continue;
                }
                if let Some(outbox_id) = retry_order(tx, order_id, AuditAction::Retry, &by)? {
                    retried.push((order_id, outbox_id));
                }
            }
            Ok(retried)
        })
        .await
    }

    async fn replay_dead_letter(&self, dead_letter_id: &str, requested_by: &str) -> Result<Replayed, StoreError> {
        let (letter, by) = (dead_letter_id.to_string(), truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string());
        self.write(move |tx| {
            let order_id: Option<Option<i64>> =
                tx.prepare_cached(DEAD_LETTER_ORDER)?.query_row([&letter], |r| r.get(1)).optional()?;
            let order_id = order_id.ok_or(StoreError::NotFound)?.map(OrderId);
            replay(tx, &letter, order_id, &by, false, &mut HashMap::new())?
                .map_err(|why| StoreError::Conflict(crate::Cause::msg(why)))
        })
        .await
    }

    async fn replay_group(&self, key: &str, requested_by: &str) -> Result<ReplayReport, StoreError> {
        let (key, by) = (key.to_string(), truncate_utf16(requested_by, REQUESTED_BY_UNITS).to_string());
        self.write(move |tx| {
            let (mut report, mut sent) = (ReplayReport::default(), HashMap::new());
            for (letter, order_id, reason, _) in open_letters(tx)? {
                if fingerprint(&reason) != key {
                    continue;
                }
                match replay(tx, &letter, order_id, &by, true, &mut sent)? {
                    Ok(replayed) => report.replayed.push(replayed),
                    Err(reason) => report.skipped.push(Skipped { dead_letter_id: letter, reason }),
                }
            }
            Ok(report)
        })
        .await
    }
}
