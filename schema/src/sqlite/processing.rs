//! SQLite: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one transaction; an unknown order leaves no inbox row.

use super::*;

/// Records an inbox row; false when the outbox id was seen before.
fn record_inbox(tx: &Connection, outbox_id: Option<OutboxId>, order_id: OrderId) -> Result<bool, StoreError> {
    let Some(id) = outbox_id else { return Ok(true) };
    let inserted = tx
        .prepare_cached("INSERT INTO inbox (outbox_id, order_id) VALUES (?1, ?2) ON CONFLICT (outbox_id) DO NOTHING")?
        .execute(params![id.to_string(), order_id.0])?;
    Ok(inserted == 1)
}

/// One message's effect inside the batch's transaction.
fn process_one(
    tx: &Connection,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
    price: fn(Decimal, i32) -> Priced,
) -> Result<ProcessOutcome, StoreError> {
    let found: Option<(String, i32, String, Option<String>)> = tx
        .prepare_cached(
            "SELECT o.status, o.quantity, o.product_id, p.list_price \
             FROM orders o LEFT JOIN products p ON p.product_id = o.product_id WHERE o.order_id = ?1",
        )?
        .query_row([order_id.0], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
        .optional()?;
    // An unknown order leaves no inbox row: a later delivery, once the order exists, still counts.
    let Some((status, quantity, product_id, list_price)) = found else {
        return Ok(ProcessOutcome::OrderNotFound);
    };
    if !record_inbox(tx, outbox_id, order_id)? {
        return Ok(ProcessOutcome::Duplicate);
    }
    if OrderStatus::from_str(&status).map_err(StoreError::Other)?.is_final() {
        return Ok(ProcessOutcome::Duplicate);
    }
    let Some(list_price) = parse_decimal(list_price)? else {
        let reason = truncate_utf16(&format!("unknown product {product_id}"), FAILURE_REASON_UNITS).to_string();
        mark_failed(tx, order_id, &reason)?;
        return Ok(ProcessOutcome::Failed(reason));
    };
    let priced = price(list_price, quantity);
    let sql = format!(
        "UPDATE orders SET status = 'processed', unit_price = ?2, total_price = ?3, failure_reason = NULL, \
           processed_at = {NOW} \
         WHERE order_id = ?1 AND status IN ('pending', 'published') RETURNING {ORDER_COLUMNS}"
    );
    let order = tx.prepare_cached(&sql)?.query_row(
        params![order_id.0, priced.unit_price.to_string(), priced.total_price.to_string()],
        order_from_row,
    )?;
    Ok(ProcessOutcome::Processed(order))
}

fn mark_failed(tx: &Connection, order_id: OrderId, reason: &str) -> Result<usize, StoreError> {
    let sql = format!(
        "UPDATE orders SET status = 'failed', failure_reason = ?2, processed_at = {NOW} \
         WHERE order_id = ?1 AND status IN ('pending', 'published')"
    );
    Ok(tx.execute(&sql, params![order_id.0, reason])?)
}

#[async_trait]
impl ProcessingStore for SqliteStore {
    async fn process_orders(
        &self,
        items: &[(Option<OutboxId>, OrderId)],
        price: fn(Decimal, i32) -> Priced,
    ) -> Result<Vec<ProcessOutcome>, StoreError> {
        let items = items.to_vec();
        self.write(move |tx| {
            items.iter().map(|(outbox_id, order_id)| process_one(tx, *outbox_id, *order_id, price)).collect()
        })
        .await
    }

    async fn fail_order(
        &self,
        outbox_id: Option<OutboxId>,
        order_id: OrderId,
        reason: &str,
    ) -> Result<bool, StoreError> {
        let reason = truncate_utf16(reason, FAILURE_REASON_UNITS).to_string();
        self.write(move |tx| {
            let exists: bool =
                tx.query_row("SELECT EXISTS (SELECT 1 FROM orders WHERE order_id = ?1)", [order_id.0], |r| r.get(0))?;
            if !exists {
                return Ok(false);
            }
            record_inbox(tx, outbox_id, order_id)?;
            mark_failed(tx, order_id, &reason)?;
            Ok(true)
        })
        .await
    }
}
