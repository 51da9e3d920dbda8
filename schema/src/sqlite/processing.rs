//! SQLite: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one transaction; an unknown order leaves no inbox row.

use std::str::FromStr;

use async_trait::async_trait;
use rusqlite::{Connection, OptionalExtension, params};

use crate::decide::{Decision, OrderFacts, decide, order_of, settle};
use crate::limits::{
    DEAD_LETTER_ID_UNITS, DEAD_LETTER_REASON_UNITS, FAILURE_REASON_UNITS, LAST_ERROR_UNITS, truncate_utf16,
};
use crate::store::{Cause, Moves};
use crate::{
    Applied, DeadLetter, Delivery, Order, OrderId, OrderStatus, OutboxId, ProcessOutcome, ProcessingStore, SqliteStore,
    StoreError, UndeliverableLetter,
};

use super::{NOW, count_moves, order_from_row, parse_decimal, parse_time};

/// Records an inbox row; false when the outbox id was seen before.
fn record_inbox(tx: &Connection, outbox_id: Option<OutboxId>, order_id: OrderId) -> Result<bool, StoreError> {
    let Some(id) = outbox_id else { return Ok(true) };
    let inserted = tx
        .prepare_cached("INSERT INTO inbox (outbox_id, order_id) VALUES (?1, ?2) ON CONFLICT (outbox_id) DO NOTHING")?
        .execute(params![id.to_string(), order_id.0])?;
    Ok(inserted == 1)
}

/// One message's effect inside the batch's transaction ([`decide`]), at the
/// batch's clock reading `now`; its status moves are added to `moves`.
fn process_one(
    tx: &Connection,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    now: &str,
    moves: &mut Moves,
) -> Result<ProcessOutcome, StoreError> {
    let found: Option<(Order, Option<String>)> = tx
        .prepare_cached(
            "SELECT o.order_id, o.customer_name, o.product_id, o.quantity, o.status, o.unit_price, o.total_price, \
               o.failure_reason, o.created_at, o.processed_at, p.list_price \
             FROM orders o LEFT JOIN products p ON p.product_id = o.product_id WHERE o.order_id = ?1",
        )?
        .query_row([order_id.0], |r| Ok((order_from_row(r)?, r.get(10)?)))
        .optional()?;
    let Some((order, list_price)) = found else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    if let Some(id) = outbox_id
        && !own_message(tx, id, order_id)?
    {
        return Ok(ProcessOutcome::NotItsOutboxId(id));
    }
    let facts = OrderFacts {
        status: order.status,
        quantity: order.quantity,
        product_id: order.product_id.clone(),
        list_price: parse_decimal(list_price)?,
    };
    match decide(&facts, record_inbox(tx, outbox_id, order_id)?) {
        Decision::Duplicate => Ok(ProcessOutcome::Duplicate),
        Decision::Fail(reason) => {
            mark_failed(tx, order_id, &reason, moves)?;
            Ok(ProcessOutcome::Failed(reason))
        }
        Decision::Process { from, priced } => {
            // No `RETURNING`: SQLite builds its rows in a temporary table; the
            // row is the one just read, priced.
            let changed = tx
                .prepare_cached(
                    "UPDATE orders SET status = 'processed', unit_price = ?2, total_price = ?3, \
                       failure_reason = NULL, processed_at = ?4 \
                     WHERE order_id = ?1 AND status IN ('pending', 'published')",
                )?
                .execute(params![order_id.0, priced.unit_price.to_string(), priced.total_price.to_string(), now])?;
            if changed != 1 {
                return Err(StoreError::Other(Cause::msg(format!("order {order_id} changed under its writer"))));
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

/// Fails the order unless it is already final; true when it did.
fn mark_failed(tx: &Connection, order_id: OrderId, reason: &str, moves: &mut Moves) -> Result<bool, StoreError> {
    let open: Option<String> = tx
        .prepare_cached("SELECT status FROM orders WHERE order_id = ?1 AND status IN ('pending', 'published')")?
        .query_row([order_id.0], |r| r.get(0))
        .optional()?;
    let Some(from) = open else { return Ok(false) };
    let sql =
        format!("UPDATE orders SET status = 'failed', failure_reason = ?2, processed_at = {NOW} WHERE order_id = ?1");
    tx.prepare_cached(&sql)?.execute(params![order_id.0, reason])?;
    moves.moved(OrderStatus::from_str(&from).map_err(|e| StoreError::Other(Cause::msg(e)))?, OrderStatus::Failed, 1);
    Ok(true)
}

/// Records the dead letter unless one with its id exists; true when recorded now.
fn record_dead_letter(tx: &Connection, d: &Delivery, reason: &str) -> Result<bool, StoreError> {
    let headers = serde_json::to_string(&d.headers).map_err(|e| StoreError::Other(Cause::new(e)))?;
    let inserted = tx
        .prepare_cached(
            "INSERT INTO dead_letters (dead_letter_id, order_id, reason, headers, body) VALUES (?1, ?2, ?3, ?4, ?5) \
             ON CONFLICT (dead_letter_id) DO NOTHING",
        )?
        .execute(params![
            truncate_utf16(&d.dead_letter_id, DEAD_LETTER_ID_UNITS),
            d.order_id.map(|o| o.0),
            truncate_utf16(reason, DEAD_LETTER_REASON_UNITS),
            headers,
            d.body
        ])?;
    Ok(inserted == 1)
}

/// True when `outbox_id` names an outbox row of `order_id`: the order's own message.
fn own_message(tx: &Connection, outbox_id: OutboxId, order_id: OrderId) -> Result<bool, StoreError> {
    Ok(tx
        .prepare_cached("SELECT EXISTS (SELECT 1 FROM outbox WHERE outbox_id = ?1 AND order_id = ?2)")?
        .query_row(params![outbox_id.to_string(), order_id.0], |r| r.get(0))?)
}

/// A delivery that failed its checks: it may fail only its own order.
fn reject(tx: &Connection, d: &Delivery, reason: &str, moves: &mut Moves) -> Result<Applied, StoreError> {
    let reason = truncate_utf16(reason, FAILURE_REASON_UNITS);
    let mut order_failed = false;
    if let (Some(outbox_id), Some(order_id)) = (d.outbox_id, d.order_id)
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

/// Runs a batch's work at one reading of the database clock, then moves the
/// counters once for the whole batch.
fn in_one_go<T>(
    tx: &Connection,
    work: impl FnOnce(&str, &mut Moves) -> Result<T, StoreError>,
) -> Result<T, StoreError> {
    let now = super::now(tx)?;
    let mut moves = Moves::default();
    let out = work(&now, &mut moves)?;
    count_moves(tx, moves)?;
    Ok(out)
}

#[async_trait]
impl ProcessingStore for SqliteStore {
    async fn process_orders(&self, items: &[(Option<OutboxId>, OrderId)]) -> Result<Vec<ProcessOutcome>, StoreError> {
        let items = items.to_vec();
        self.write(move |tx| {
            in_one_go(tx, |now, moves| {
                items.iter().map(|(outbox_id, order_id)| process_one(tx, *outbox_id, *order_id, now, moves)).collect()
            })
        })
        .await
    }

    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
        let deliveries = deliveries.to_vec();
        self.write(move |tx| {
            in_one_go(tx, |now, moves| deliveries.iter().map(|d| apply_one(tx, d, now, moves)).collect())
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
            let mut mark = tx.prepare_cached(&format!(
                "UPDATE dead_letters SET sent_at = {NOW} WHERE dead_letter_id = ?1 AND sent_at IS NULL"
            ))?;
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
                .prepare_cached(&format!(
                    "UPDATE dead_letters SET attempts = attempts + 1, last_error = ?2, \
                       undeliverable_at = CASE WHEN attempts + 1 >= ?3 THEN {NOW} END \
                     WHERE dead_letter_id = ?1 AND sent_at IS NULL AND undeliverable_at IS NULL RETURNING attempts"
                ))?
                .query_row(params![id, error, give_up_at], |r| r.get(0))
                .optional()?;
            Ok(attempts.is_some_and(|n| n >= give_up_at))
        })
        .await
    }

    async fn undeliverable_dead_letters(&self, limit: u32) -> Result<Vec<UndeliverableLetter>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(
                "SELECT dead_letter_id, order_id, reason, last_error, attempts, created_at, undeliverable_at \
                 FROM dead_letters WHERE undeliverable_at IS NOT NULL ORDER BY undeliverable_at DESC LIMIT ?1",
            )?;
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

/// The letters to publish, oldest first: the order of `dead_letters_unsent`
/// (created_at, then rowid), so the query walks the index and never sorts.
pub(super) const UNSENT_DEAD_LETTERS: &str = "SELECT dead_letter_id, reason, headers, body, attempts FROM dead_letters \
     WHERE sent_at IS NULL AND undeliverable_at IS NULL ORDER BY created_at, rowid LIMIT ?1";
