//! SQL Server: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one transaction; an unknown order leaves no inbox row.

use std::str::FromStr;

use async_trait::async_trait;
use rust_decimal::Decimal;
use tiberius::Row;

use crate::decide::{Decision, OrderFacts, decide, order_of, settle};
use crate::limits::{DEAD_LETTER_ID_UNITS, DEAD_LETTER_REASON_UNITS, FAILURE_REASON_UNITS, truncate_utf16};
use crate::store::Moves;
use crate::{
    Applied, DeadLetter, Delivery, MssqlStore, OrderId, OrderStatus, OutboxId, ProcessOutcome, ProcessingStore,
    StoreError,
};

use super::sql::*;
use super::{TdsClient, TdsResult, batch, conversion, count_moves, exec, finish, order_from_row, rows};

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
    let status = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
    let facts = OrderFacts {
        status: OrderStatus::from_str(status).map_err(|e| tiberius::error::Error::Conversion(e.into()))?,
        quantity: row.try_get::<i32, _>(1)?.ok_or_else(|| conversion("quantity"))?,
        product_id: row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string(),
        list_price: row.try_get::<Decimal, _>(3)?,
    };
    let first_delivery = match outbox_id {
        Some(id) => exec(client, RECORD_INBOX, &[&id.0, &order_id.0]).await? == 1,
        None => true,
    };
    match decide(&facts, first_delivery) {
        Decision::Duplicate => Ok(ProcessOutcome::Duplicate),
        Decision::Fail(reason) => {
            mark_failed(client, order_id, &reason, moves).await?;
            Ok(ProcessOutcome::Failed(reason))
        }
        Decision::Process { from, priced } => {
            let updated = rows(client, MARK_PROCESSED, &[&order_id.0, &priced.unit_price, &priced.total_price]).await?;
            moves.moved(from, OrderStatus::Processed, 1);
            let order = updated.first().ok_or_else(|| conversion("processed order"))?;
            Ok(ProcessOutcome::Processed(order_from_row(order)?))
        }
    }
}

/// Fails the order unless it is already final; true when it did.
async fn mark_failed(client: &mut TdsClient, order_id: OrderId, reason: &str, moves: &mut Moves) -> TdsResult<bool> {
    let updated = rows(client, MARK_FAILED, &[&order_id.0, &reason]).await?;
    let Some(row) = updated.first() else { return Ok(false) };
    let from = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
    let from = OrderStatus::from_str(from).map_err(|e| tiberius::error::Error::Conversion(e.into()))?;
    moves.moved(from, OrderStatus::Failed, 1);
    Ok(true)
}

async fn process_batch(
    client: &mut TdsClient,
    items: &[(Option<OutboxId>, OrderId)],
) -> TdsResult<Vec<ProcessOutcome>> {
    batch(client, BEGIN).await?;
    let mut outcomes = Vec::with_capacity(items.len());
    let mut moves = Moves::default();
    for (outbox_id, order_id) in items {
        outcomes.push(process_one(client, *outbox_id, *order_id, &mut moves).await?);
    }
    count_moves(client, moves).await?;
    batch(client, COMMIT).await?;
    Ok(outcomes)
}

async fn record_dead_letter(client: &mut TdsClient, d: &Delivery, reason: &str) -> TdsResult<()> {
    let headers =
        serde_json::to_string(&d.headers).map_err(|e| tiberius::error::Error::Conversion(e.to_string().into()))?;
    let id = truncate_utf16(&d.dead_letter_id, DEAD_LETTER_ID_UNITS);
    let order_id = d.order_id.map_or(0, |o| o.0);
    let reason = truncate_utf16(reason, DEAD_LETTER_REASON_UNITS);
    exec(client, RECORD_DEAD_LETTER, &[&id, &order_id, &reason, &headers, &d.body.as_slice()]).await.map(drop)
}

/// A delivery that failed its checks: it may fail only its own order.
async fn reject(client: &mut TdsClient, d: &Delivery, reason: &str, moves: &mut Moves) -> TdsResult<Applied> {
    let reason = truncate_utf16(reason, FAILURE_REASON_UNITS);
    let mut order_failed = false;
    if let (Some(outbox_id), Some(order_id)) = (d.outbox_id, d.order_id) {
        let own = rows(client, OWN_MESSAGE, &[&outbox_id.0, &order_id.0]).await?;
        if own.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0) > 0 {
            if exec(client, RECORD_INBOX, &[&outbox_id.0, &order_id.0]).await? == 0 {
                return Ok(Applied::Duplicate);
            }
            order_failed = mark_failed(client, order_id, reason, moves).await?;
        }
    }
    record_dead_letter(client, d, reason).await?;
    Ok(Applied::DeadLettered { reason: reason.to_string(), order_failed })
}

async fn apply_one(client: &mut TdsClient, d: &Delivery, moves: &mut Moves) -> TdsResult<Applied> {
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

async fn apply_batch(client: &mut TdsClient, deliveries: &[Delivery]) -> TdsResult<Vec<Applied>> {
    batch(client, BEGIN).await?;
    let mut outcomes = Vec::with_capacity(deliveries.len());
    let mut moves = Moves::default();
    for d in deliveries {
        outcomes.push(apply_one(client, d, &mut moves).await?);
    }
    count_moves(client, moves).await?;
    batch(client, COMMIT).await?;
    Ok(outcomes)
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
    })
}

#[async_trait]
impl ProcessingStore for MssqlStore {
    async fn process_orders(&self, items: &[(Option<OutboxId>, OrderId)]) -> Result<Vec<ProcessOutcome>, StoreError> {
        let mut conn = self.conn().await?;
        let result = process_batch(&mut conn, items).await;
        finish(conn, result)
    }

    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
        let mut conn = self.conn().await?;
        let result = apply_batch(&mut conn, deliveries).await;
        finish(conn, result)
    }

    async fn unsent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, UNSENT_DEAD_LETTERS, &[&limit]).await?.iter().map(dead_letter_from_row).collect() }
                .await;
        finish(conn, result)
    }

    async fn mark_dead_letters_sent(&self, ids: &[String]) -> Result<u64, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let mut marked = 0;
            for id in ids {
                marked += exec(&mut conn, MARK_DEAD_LETTER_SENT, &[id]).await?;
            }
            Ok(marked)
        }
        .await;
        finish(conn, result)
    }
}
