//! SQLite: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one transaction; an unknown order leaves no inbox row.

use std::str::FromStr;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::decide::{
    Decision, OrderFacts, ProcessOutcome, dead_letter, decide, failure_reason, order_of, own_ids, settle,
};
use crate::limits::{LAST_ERROR_UNITS, truncate_utf16};
use crate::store::{Cause, Moves};
use crate::{
    Applied, DeadLetter, Delivery, Order, OrderId, OrderStatus, OutboxId, ProcessingStore, SqliteStore, StoreError,
    UndeliverableLetter,
};

use super::sql::*;
use super::{count_moves, now, order_from_row, parse_decimal, parse_time};

/// One message's effect inside the batch's transaction ([`decide`]), at the
/// batch's clock reading `now`.
fn process_one(
    tx: &Connection,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    now: &str,
    moves: &mut Moves,
) -> Result<ProcessOutcome, StoreError> {
    let found: Option<(Order, Option<String>)> = tx
        .prepare_cached(ORDER_FOR_PRICING)?
        .query_row([order_id.0], |r| Ok((order_from_row(r)?, r.get(10)?)))
        .optional()?;
    let Some((order, list_price)) = found else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    let facts = OrderFacts {
        status: order.status,
        quantity: order.quantity,
        product_id: order.product_id.clone(),
        list_price: parse_decimal(list_price)?,
    };
    if let Some(id) = outbox_id
        && !own_message(tx, id, order_id)?
    {
        return Ok(ProcessOutcome::NotItsOutboxId(id));
    }
    match decide(&facts, record_inbox(tx, outbox_id, order_id)?) {
        Decision::Duplicate => Ok(ProcessOutcome::Duplicate),
        Decision::Fail(reason) => {
            mark_failed(tx, order_id, &reason, moves)?;
            Ok(ProcessOutcome::Failed(reason))
        }
        Decision::Process { from, priced } => {
            let prices = params![order_id.0, priced.unit_price.to_string(), priced.total_price.to_string(), now];
            // Final by now through another message: the status guard held.
            if tx.prepare_cached(MARK_PROCESSED)?.execute(prices)? == 0 {
                return Ok(ProcessOutcome::Duplicate);
            }
            moves.moved(from, OrderStatus::Processed, 1);
            Ok(ProcessOutcome::Processed(Order {
                status: OrderStatus::Processed,
                unit_price: Some(priced.unit_price),
                total_price: Some(priced.total_price),
                failure_reason: None,
                processed_at: Some(parse_time(now)?),
                ..order
            }))
        }
    }
}

fn status_of(text: &str) -> Result<OrderStatus, StoreError> {
    OrderStatus::from_str(text).map_err(|e| StoreError::Other(Cause::msg(e)))
}

/// Records an inbox row; false when the outbox id was seen before.
fn record_inbox(tx: &Connection, outbox_id: Option<OutboxId>, order_id: OrderId) -> Result<bool, StoreError> {
    let Some(id) = outbox_id else { return Ok(true) };
    Ok(tx.prepare_cached(RECORD_INBOX)?.execute(params![id.to_string(), order_id.0])? == 1)
}

/// Fails the order unless it is already final; true when it did.
fn mark_failed(tx: &Connection, order_id: OrderId, reason: &str, moves: &mut Moves) -> Result<bool, StoreError> {
    let open: Option<String> = tx.prepare_cached(OPEN_STATUS)?.query_row([order_id.0], |r| r.get(0)).optional()?;
    let Some(from) = open else { return Ok(false) };
    tx.prepare_cached(MARK_FAILED)?.execute(params![order_id.0, reason])?;
    moves.moved(status_of(&from)?, OrderStatus::Failed, 1);
    Ok(true)
}

/// Records the dead letter unless one with its id exists.
fn record_dead_letter(tx: &Connection, d: &Delivery, reason: &str) -> Result<(), StoreError> {
    let row = dead_letter(d, reason)?;
    let params = params![row.id, row.order_id.map(|o| o.0), row.reason, row.headers, &d.body[..]];
    tx.prepare_cached(RECORD_DEAD_LETTER)?.execute(params)?;
    Ok(())
}

/// True when `outbox_id` names an outbox row of `order_id`: the order's own message.
fn own_message(tx: &Connection, outbox_id: OutboxId, order_id: OrderId) -> Result<bool, StoreError> {
    Ok(tx.prepare_cached(OWN_MESSAGE)?.query_row(params![outbox_id.to_string(), order_id.0], |r| r.get(0))?)
}

/// A delivery that failed its checks: it may fail only its own order.
fn reject(tx: &Connection, d: &Delivery, reason: &str, moves: &mut Moves) -> Result<Applied, StoreError> {
    let reason = failure_reason(reason);
    let mut order_failed = false;
    if let Some((outbox_id, order_id)) = own_ids(d)
        && own_message(tx, outbox_id, order_id)?
    {
        if !record_inbox(tx, Some(outbox_id), order_id)? {
            return Ok(Applied::Duplicate);
        }
        order_failed = mark_failed(tx, order_id, reason, moves)?;
    }
    record_dead_letter(tx, d, reason)?;
    Ok(Applied::DeadLettered { reason: reason.to_string(), order_failed })
}

fn apply_one(tx: &Connection, d: &Delivery, now: &str, moves: &mut Moves) -> Result<Applied, StoreError> {
    let order_id = match order_of(d) {
        Ok(order_id) => order_id,
        Err(reason) => return reject(tx, d, reason, moves),
    };
    match settle(process_one(tx, d.outbox_id, order_id, now, moves)?, order_id) {
        Ok(applied) => Ok(applied),
        Err((reason, order_failed)) => {
            record_dead_letter(tx, d, &reason)?;
            Ok(Applied::DeadLettered { reason, order_failed })
        }
    }
}

#[async_trait]
impl ProcessingStore for SqliteStore {
    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
        let deliveries = deliveries.to_vec();
        self.write(move |tx| {
            let (now, mut moves) = (now(tx)?, Moves::default());
            let applied =
                deliveries.iter().map(|d| apply_one(tx, d, &now, &mut moves)).collect::<Result<Vec<_>, _>>()?;
            count_moves(tx, moves)?;
            Ok(applied)
        })
        .await
    }

    async fn unsent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(UNSENT_DEAD_LETTERS)?;
            let rows = stmt.query_map([limit], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Vec<u8>>(3)?,
                    r.get::<_, u32>(4)?,
                ))
            })?;
            rows.map(|row| {
                let (dead_letter_id, reason, headers, body, attempts) = row?;
                let headers = serde_json::from_str(&headers).map_err(|e| StoreError::Other(Cause::new(e)))?;
                Ok(DeadLetter { dead_letter_id, reason, headers, body, attempts })
            })
            .collect()
        })
        .await
    }

    async fn mark_dead_letters_sent(&self, ids: &[String]) -> Result<u64, StoreError> {
        let ids = ids.to_vec();
        self.write(move |tx| {
            let mut mark = tx.prepare_cached(MARK_DEAD_LETTER_SENT)?;
            let mut marked = 0;
            for id in &ids {
                marked += mark.execute([id])? as u64;
            }
            Ok(marked)
        })
        .await
    }

    async fn refuse_dead_letter(&self, id: &str, error: &str, give_up_at: u32) -> Result<bool, StoreError> {
        let (id, error) = (id.to_string(), truncate_utf16(error, LAST_ERROR_UNITS).to_string());
        self.write(move |tx| {
            let attempts: Option<u32> = tx
                .prepare_cached(REFUSE_DEAD_LETTER)?
                .query_row(params![id, error, give_up_at], |r| r.get(0))
                .optional()?;
            Ok(attempts.is_some_and(|n| n >= give_up_at))
        })
        .await
    }

    async fn undeliverable_dead_letters(&self, limit: u32) -> Result<Vec<UndeliverableLetter>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(UNDELIVERABLE_DEAD_LETTERS)?;
            let rows = stmt.query_map([limit], |r| {
                Ok(UndeliverableLetter {
                    dead_letter_id: r.get(0)?,
                    order_id: r.get::<_, Option<i64>>(1)?.map(OrderId),
                    reason: r.get(2)?,
                    last_error: r.get(3)?,
                    attempts: r.get(4)?,
                    created_at: parse_time(&r.get::<_, String>(5)?)?,
                    undeliverable_at: parse_time(&r.get::<_, String>(6)?)?,
                })
            })?;
            Ok(rows.collect::<Result<Vec<_>, _>>()?)
        })
        .await
    }
}
