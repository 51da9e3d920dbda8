//! SQL Server: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one transaction; an unknown order leaves no inbox row.

use super::sql::*;
use super::*;

/// One message's effect inside the batch's transaction.
async fn process_one(
    client: &mut TdsClient,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    price: fn(Decimal, i32) -> Priced,
) -> TdsResult<ProcessOutcome> {
    let found = rows(client, ORDER_FOR_PRICING, &[&order_id.0]).await?;
    // An unknown order leaves no inbox row: a later delivery, once the order exists, still counts.
    let Some(row) = found.first() else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    let status = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
    let status = OrderStatus::from_str(status).map_err(|e| tiberius::error::Error::Conversion(e.into()))?;
    let quantity = row.try_get::<i32, _>(1)?.ok_or_else(|| conversion("quantity"))?;
    let product_id = row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string();
    let list_price = row.try_get::<Decimal, _>(3)?;
    if let Some(id) = outbox_id
        && exec(client, RECORD_INBOX, &[&id.0, &order_id.0]).await? == 0
    {
        return Ok(ProcessOutcome::Duplicate);
    }
    if status.is_final() {
        return Ok(ProcessOutcome::Duplicate);
    }
    let Some(list_price) = list_price else {
        let reason = truncate_utf16(&format!("unknown product {product_id}"), FAILURE_REASON_UNITS).to_string();
        exec(client, MARK_FAILED, &[&order_id.0, &reason]).await?;
        return Ok(ProcessOutcome::Failed(reason));
    };
    let priced = price(list_price, quantity);
    let updated = rows(client, MARK_PROCESSED, &[&order_id.0, &priced.unit_price, &priced.total_price]).await?;
    Ok(ProcessOutcome::Processed(order_from_row(updated.first().ok_or_else(|| conversion("processed order"))?)?))
}

async fn process_batch(
    client: &mut TdsClient,
    items: &[(Option<OutboxId>, OrderId)],
    price: fn(Decimal, i32) -> Priced,
) -> TdsResult<Vec<ProcessOutcome>> {
    batch(client, BEGIN).await?;
    let mut outcomes = Vec::with_capacity(items.len());
    for (outbox_id, order_id) in items {
        outcomes.push(process_one(client, *outbox_id, *order_id, price).await?);
    }
    batch(client, COMMIT).await?;
    Ok(outcomes)
}

async fn fail(client: &mut TdsClient, outbox_id: Option<OutboxId>, order_id: OrderId, reason: &str) -> TdsResult<bool> {
    batch(client, BEGIN).await?;
    let exists =
        rows(client, ORDER_EXISTS, &[&order_id.0]).await?.first().and_then(|r| r.get::<i64, _>(0)).unwrap_or(0) > 0;
    if !exists {
        batch(client, ROLLBACK).await?;
        return Ok(false);
    }
    if let Some(id) = outbox_id {
        exec(client, RECORD_INBOX, &[&id.0, &order_id.0]).await?;
    }
    exec(client, MARK_FAILED, &[&order_id.0, &reason]).await?;
    batch(client, COMMIT).await?;
    Ok(true)
}

#[async_trait]
impl ProcessingStore for MssqlStore {
    async fn process_orders(
        &self,
        items: &[(Option<OutboxId>, OrderId)],
        price: fn(Decimal, i32) -> Priced,
    ) -> Result<Vec<ProcessOutcome>, StoreError> {
        let mut conn = self.conn().await?;
        let result = process_batch(&mut conn, items, price).await;
        finish(conn, result)
    }

    async fn fail_order(
        &self,
        outbox_id: Option<OutboxId>,
        order_id: OrderId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let mut conn = self.conn().await?;
        let reason = truncate_utf16(reason, FAILURE_REASON_UNITS);
        let result = fail(&mut conn, outbox_id, order_id, reason).await;
        finish(conn, result)
    }
}
