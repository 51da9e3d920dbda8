//! SQL Server: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one transaction; an unknown order leaves no inbox row.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use tiberius::Row;
use uuid::Uuid;

use crate::decide::{
    Decision, OrderFacts, ProcessOutcome, dead_letter, decide, failure_reason, order_of, own_ids, settle,
};
use crate::limits::{LAST_ERROR_UNITS, truncate_utf16};
use crate::store::Moves;
use crate::{
    Applied, DeadLetter, Delivery, MssqlStore, Order, OrderId, OrderStatus, OutboxId, ProcessingStore, StoreError,
    UndeliverableLetter,
};

use super::sql::*;
use super::{
    TdsClient, TdsResult, all_rows, batch, batch_rows, changed, conversion, count, count_moves, count_slot, exec,
    order_at, rows, status_at, utc,
};

/// One message's effect inside the batch's transaction ([`decide`]).
async fn process_one(
    client: &mut TdsClient,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    moves: &mut Moves,
) -> TdsResult<ProcessOutcome> {
    let found = rows(client, ORDER_FOR_PRICING, &[&order_id.0]).await?;
    let Some(row) = found.first() else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    let facts = OrderFacts {
        status: status_at(row, 0)?,
        quantity: row.try_get::<i32, _>(1)?.ok_or_else(|| conversion("quantity"))?,
        product_id: row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string(),
        list_price: row.try_get::<Decimal, _>(3)?,
    };
    if let Some(id) = outbox_id
        && !own_message(client, id, order_id).await?
    {
        return Ok(ProcessOutcome::NotItsOutboxId(id));
    }
    match decide(&facts, record_inbox(client, outbox_id, order_id).await?) {
        Decision::Duplicate => Ok(ProcessOutcome::Duplicate),
        Decision::Fail(reason) => {
            mark_failed(client, order_id, &reason, moves).await?;
            Ok(ProcessOutcome::Failed(reason))
        }
        Decision::Process { priced, .. } => {
            let updated =
                all_rows(client, MARK_PROCESSED, &[&order_id.0, &priced.unit_price, &priced.total_price]).await?;
            // Final by now through another message: the status guard held.
            let Some(row) = updated.first() else { return Ok(ProcessOutcome::Duplicate) };
            moves.moved(status_at(row, 0)?, OrderStatus::Processed, 1);
            Ok(ProcessOutcome::Processed(order_at(row, 1)?))
        }
    }
}

/// Records an inbox row; false when the outbox id was seen before.
async fn record_inbox(client: &mut TdsClient, outbox_id: Option<OutboxId>, order_id: OrderId) -> TdsResult<bool> {
    let Some(id) = outbox_id else { return Ok(true) };
    Ok(changed(client, RECORD_INBOX, &[&id.0, &order_id.0]).await? == 1)
}

/// Fails the order unless it is already final; true when it did.
async fn mark_failed(client: &mut TdsClient, order_id: OrderId, reason: &str, moves: &mut Moves) -> TdsResult<bool> {
    let updated = all_rows(client, MARK_FAILED, &[&order_id.0, &reason]).await?;
    let Some(row) = updated.first() else { return Ok(false) };
    moves.moved(status_at(row, 0)?, OrderStatus::Failed, 1);
    Ok(true)
}

/// Records the dead letter unless one with its id exists.
async fn record_dead_letter(client: &mut TdsClient, d: &Delivery, reason: &str) -> Result<(), StoreError> {
    let row = dead_letter(d, reason)?;
    // No NULL parameter: order 0 names none (ids start at 1).
    let params: [&dyn tiberius::ToSql; 5] =
        [&row.id, &row.order_id.map_or(0, |o| o.0), &row.reason, &row.headers, &&d.body[..]];
    exec(client, RECORD_DEAD_LETTER, &params).await?;
    Ok(())
}

/// True when `outbox_id` names an outbox row of `order_id`: the order's own message.
async fn own_message(client: &mut TdsClient, outbox_id: OutboxId, order_id: OrderId) -> TdsResult<bool> {
    Ok(count(&rows(client, OWN_MESSAGE, &[&outbox_id.0, &order_id.0]).await?) > 0)
}

/// A delivery that failed its checks: it may fail only its own order.
async fn reject(client: &mut TdsClient, d: &Delivery, reason: &str, moves: &mut Moves) -> Result<Applied, StoreError> {
    let reason = failure_reason(reason);
    let mut order_failed = false;
    if let Some((outbox_id, order_id)) = own_ids(d)
        && own_message(client, outbox_id, order_id).await?
    {
        if !record_inbox(client, Some(outbox_id), order_id).await? {
            return Ok(Applied::Duplicate);
        }
        order_failed = mark_failed(client, order_id, reason, moves).await?;
    }
    record_dead_letter(client, d, reason).await?;
    Ok(Applied::DeadLettered { reason: reason.to_string(), order_failed })
}

async fn apply_one(client: &mut TdsClient, d: &Delivery, moves: &mut Moves) -> Result<Applied, StoreError> {
    let order_id = match order_of(d) {
        Ok(order_id) => order_id,
        Err(reason) => return reject(client, d, reason, moves).await,
    };
    match settle(process_one(client, d.outbox_id, order_id, moves).await?, order_id) {
        Ok(applied) => Ok(applied),
        Err((reason, order_failed)) => {
            record_dead_letter(client, d, &reason).await?;
            Ok(Applied::DeadLettered { reason, order_failed })
        }
    }
}

/// A batch in three round trips whatever its size, when every message is a
/// plain case: the facts of every order it names (one read), then the
/// transaction opened with the final states of the plain cases set-based
/// ([`apply_plain`]), then their inbox rows, the counters and the commit in
/// one SQL batch. Any other message (and any plain case the set-based update
/// did not move) goes message by message ([`apply_one`]) before the commit.
/// An inbox row is written only with its order's move.
async fn apply_batch(client: &mut TdsClient, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
    let facts = read_facts(client, deliveries).await?;
    let mut moves = Moves::default();
    let (mut outcomes, inboxes) = apply_plain(client, deliveries, &facts, &mut moves).await?;
    if outcomes.iter().all(Option::is_some) {
        let [pending, published, processed, failed] = moves.deltas();
        let counts = [pending, published, processed, failed, i64::from(count_slot())];
        let record = with_json(&with_integers(RECORD_BATCH, &counts), &inboxes.to_string());
        batch(client, &format!("{record}; {COMMIT}")).await?;
    } else {
        if inboxes.as_array().is_some_and(|rows| !rows.is_empty()) {
            batch(client, &with_json(&with_integers(RECORD_BATCH, &[0; 5]), &inboxes.to_string())).await?;
        }
        for (d, outcome) in deliveries.iter().zip(outcomes.iter_mut()) {
            if outcome.is_none() {
                *outcome = Some(apply_one(client, d, &mut moves).await?);
            }
        }
        count_moves(client, moves).await?;
        batch(client, COMMIT).await?;
    }
    Ok(outcomes.into_iter().map(|o| o.expect("every delivery has an outcome")).collect())
}

/// What the database held of an order before the batch's transaction: a
/// plain read, so every write that depends on it repeats its guard.
struct Facts {
    facts: OrderFacts,
    order: Order,
    /// The order's outbox rows: the only outbox ids its messages may carry.
    outbox_ids: HashSet<Uuid>,
}

async fn read_facts(client: &mut TdsClient, deliveries: &[Delivery]) -> TdsResult<HashMap<i64, Facts>> {
    let mut ids: Vec<i64> = deliveries.iter().filter_map(|d| order_of(d).ok()).map(|o| o.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut found = HashMap::with_capacity(ids.len());
    if !ids.is_empty() {
        let (lo, hi) = (ids[0], ids[ids.len() - 1]);
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        for row in rows(client, ORDER_FACTS, &[&list.join(","), &lo, &hi]).await? {
            let facts = OrderFacts {
                status: status_at(&row, 0)?,
                quantity: row.try_get::<i32, _>(1)?.ok_or_else(|| conversion("quantity"))?,
                product_id: row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string(),
                list_price: row.try_get::<Decimal, _>(3)?,
            };
            let outbox_id = row.try_get::<Uuid, _>(4)?;
            let order = order_at(&row, 5)?;
            let entry =
                found.entry(order.order_id.0).or_insert_with(|| Facts { facts, order, outbox_ids: HashSet::new() });
            entry.outbox_ids.extend(outbox_id);
        }
    }
    Ok(found)
}

/// One plain case: a valid message, alone in its batch with its order and
/// outbox id, for an order that [`decide`]s to be processed.
struct Plain {
    index: usize,
    outbox_id: Option<OutboxId>,
    order_id: i64,
    unit_price: Decimal,
    total_price: Decimal,
}

/// Opens the transaction and applies the plain cases set-based; `None` for
/// every other delivery, and the inbox rows of those moved as a JSON array.
async fn apply_plain(
    client: &mut TdsClient,
    deliveries: &[Delivery],
    facts: &HashMap<i64, Facts>,
    moves: &mut Moves,
) -> TdsResult<(Vec<Option<Applied>>, serde_json::Value)> {
    let mut outcomes: Vec<Option<Applied>> = vec![None; deliveries.len()];
    let mut seen: HashMap<String, usize> = HashMap::new();
    for d in deliveries {
        let keys = [d.outbox_id.map(|id| format!("x{}", id.0)), order_of(d).ok().map(|o| format!("o{}", o.0))];
        for key in keys.into_iter().flatten() {
            *seen.entry(key).or_default() += 1;
        }
    }
    let alone = |key: String| seen.get(&key).is_some_and(|n| *n == 1);
    let mut plain: Vec<Plain> = deliveries
        .iter()
        .enumerate()
        .filter_map(|(index, d)| {
            let order_id = order_of(d).ok()?;
            if !alone(format!("o{}", order_id.0)) || d.outbox_id.is_some_and(|id| !alone(format!("x{}", id.0))) {
                return None;
            }
            let facts = facts.get(&order_id.0)?;
            if d.outbox_id.is_some_and(|id| !facts.outbox_ids.contains(&id.0)) {
                return None;
            }
            match decide(&facts.facts, true) {
                Decision::Process { priced, .. } => Some(Plain {
                    index,
                    outbox_id: d.outbox_id,
                    order_id: order_id.0,
                    unit_price: priced.unit_price,
                    total_price: priced.total_price,
                }),
                _ => None,
            }
        })
        .collect();
    // In ascending order of id, the order the relay's confirmation locks them in (V13).
    plain.sort_by_key(|p| p.order_id);
    // The transaction opens with the orders' move, one guarded update for
    // all; what it did not move (final by now, or skipped: Babelfish's UPDATE
    // ... FROM passes over a row another writer changed meanwhile) goes the
    // slow way, row by row.
    if plain.is_empty() {
        batch(client, BEGIN).await?;
        return Ok((outcomes, serde_json::Value::Array(Vec::new())));
    }
    let prices: Vec<serde_json::Value> = plain
        .iter()
        .map(|p| serde_json::json!({"o": p.order_id, "u": p.unit_price.to_string(), "t": p.total_price.to_string()}))
        .collect();
    let prices = serde_json::Value::Array(prices).to_string();
    let lo = plain.iter().map(|p| p.order_id).min().unwrap_or_default();
    let hi = plain.iter().map(|p| p.order_id).max().unwrap_or_default();
    let mark = with_json(&with_integers(BEGIN_AND_MARK_PROCESSED, &[lo, hi]), &prices);
    let mut done = HashMap::with_capacity(plain.len());
    for row in batch_rows(client, &mark).await? {
        let order_id = row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?;
        let processed_at = row.try_get::<NaiveDateTime, _>(2)?.ok_or_else(|| conversion("processed_at"))?;
        done.insert(order_id, (status_at(&row, 0)?, utc(processed_at)));
    }
    // Then the inbox rows of exactly the orders moved, in the same transaction.
    let inboxes: serde_json::Value = plain
        .iter()
        .filter(|p| done.contains_key(&p.order_id))
        .filter_map(|p| p.outbox_id.map(|id| serde_json::json!({"x": id.0.to_string(), "o": p.order_id})))
        .collect();
    for p in &plain {
        let Some((from, processed_at)) = done.get(&p.order_id) else { continue };
        moves.moved(*from, OrderStatus::Processed, 1);
        let order = Order {
            status: OrderStatus::Processed,
            unit_price: Some(p.unit_price),
            total_price: Some(p.total_price),
            failure_reason: None,
            processed_at: Some(*processed_at),
            ..facts[&p.order_id].order.clone()
        };
        outcomes[p.index] = Some(Applied::Processed(order));
    }
    Ok((outcomes, inboxes))
}

fn dead_letter_from_row(row: &Row) -> TdsResult<DeadLetter> {
    let text = |i: usize| -> TdsResult<String> {
        Ok(row.try_get::<&str, _>(i)?.ok_or_else(|| conversion("dead letter"))?.to_string())
    };
    let headers =
        serde_json::from_str(&text(2)?).map_err(|e| tiberius::error::Error::Conversion(e.to_string().into()))?;
    Ok(DeadLetter {
        dead_letter_id: text(0)?,
        reason: text(1)?,
        headers,
        body: row.try_get::<&[u8], _>(3)?.unwrap_or_default().to_vec(),
        attempts: row.try_get::<i32, _>(4)?.unwrap_or_default().max(0) as u32,
    })
}

#[async_trait]
impl ProcessingStore for MssqlStore {
    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
        match self.with_hot_conn(async |c| apply_batch(c, deliveries).await).await {
            // A duplicate key here is another consumer's commit of the same
            // inbox row or dead letter, seen where the lock hints are ignored
            // (Babelfish): done again, the batch finds it and counts a duplicate.
            Err(StoreError::Conflict(cause)) => Err(StoreError::Unavailable(cause)),
            other => other,
        }
    }

    async fn unsent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            Ok(rows(c, UNSENT_DEAD_LETTERS, &[&limit])
                .await?
                .iter()
                .map(dead_letter_from_row)
                .collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn mark_dead_letters_sent(&self, ids: &[String]) -> Result<u64, StoreError> {
        self.with_conn(async |c| {
            let mut marked = 0;
            for id in ids {
                marked += changed(c, MARK_DEAD_LETTER_SENT, &[id]).await?;
            }
            Ok(marked)
        })
        .await
    }

    async fn refuse_dead_letter(&self, id: &str, error: &str, give_up_at: u32) -> Result<bool, StoreError> {
        let error = truncate_utf16(error, LAST_ERROR_UNITS);
        let give_up = i32::try_from(give_up_at).unwrap_or(i32::MAX);
        self.with_conn(async |c| {
            let attempts = rows(c, REFUSE_DEAD_LETTER, &[&id, &error, &give_up]).await?;
            Ok(attempts.first().and_then(|r| r.get::<i32, _>(0)).is_some_and(|n| n >= give_up))
        })
        .await
    }

    async fn undeliverable_dead_letters(&self, limit: u32) -> Result<Vec<UndeliverableLetter>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            let text = |row: &Row, i: usize| -> TdsResult<Option<String>> {
                Ok(row.try_get::<&str, _>(i)?.map(str::to_string))
            };
            let time = |row: &Row, i: usize| -> TdsResult<_> {
                Ok(utc(row.try_get::<NaiveDateTime, _>(i)?.ok_or_else(|| conversion("dead letter time"))?))
            };
            let read = |row: &Row| -> TdsResult<UndeliverableLetter> {
                Ok(UndeliverableLetter {
                    dead_letter_id: text(row, 0)?.ok_or_else(|| conversion("dead_letter_id"))?,
                    order_id: row.try_get::<i64, _>(1)?.map(OrderId),
                    reason: text(row, 2)?.unwrap_or_default(),
                    last_error: text(row, 3)?,
                    attempts: row.try_get::<i32, _>(4)?.unwrap_or_default().max(0) as u32,
                    created_at: time(row, 5)?,
                    undeliverable_at: time(row, 6)?,
                })
            };
            Ok(rows(c, UNDELIVERABLE_DEAD_LETTERS, &[&limit]).await?.iter().map(read).collect::<TdsResult<_>>()?)
        })
        .await
    }
}
