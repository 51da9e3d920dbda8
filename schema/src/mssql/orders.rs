//! SQL Server: placing and reading orders.
//!
//! Invariant: an order and its outbox row commit in one transaction; a replayed
//! idempotency key returns the first order, also when two requests race.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use tiberius::ToSql;
use uuid::Uuid;

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::store::{Moves, add_count};
use crate::{
    MssqlStore, NewOrder, Order, OrderCounts, OrderId, OrderStatus, OrderStore, OutboxId, Placed, Product, StoreError,
};

use super::sql::*;
use super::{
    TdsClient, TdsResult, batch, conversion, count_moves, exec, finish, order_from_row, product_from_row, rows,
    text_or_empty, utc,
};

/// Writes the `OrderPlacedV1` outbox row of `order`; `created_at` None means now.
pub(super) async fn insert_outbox(
    client: &mut TdsClient,
    order: &Order,
    traceparent: &Option<String>,
    tracestate: &Option<String>,
    created_at: Option<NaiveDateTime>,
) -> TdsResult<OutboxId> {
    let outbox_id = OutboxId::new();
    let payload = serde_json::to_string(&OrderPlacedV1::for_order(order, outbox_id))
        .map_err(|e| tiberius::error::Error::Conversion(e.to_string().into()))?;
    let row = OutboxInsert { outbox_id: outbox_id.0, order_id: order.order_id.0, payload, created_at };
    let (sql, params) = row.statement(traceparent, tracestate);
    exec(client, sql, &params).await?;
    Ok(outbox_id)
}

/// The values of a new outbox row, bound without a NULL parameter.
struct OutboxInsert {
    outbox_id: Uuid,
    order_id: i64,
    payload: String,
    created_at: Option<NaiveDateTime>,
}

impl OutboxInsert {
    fn statement<'a>(
        &'a self,
        traceparent: &'a Option<String>,
        tracestate: &'a Option<String>,
    ) -> (&'static str, Vec<&'a dyn ToSql>) {
        let mut params: Vec<&dyn ToSql> = vec![
            &self.outbox_id,
            &self.order_id,
            &ORDER_PLACED_V1,
            &self.payload,
            text_or_empty(traceparent),
            text_or_empty(tracestate),
        ];
        match &self.created_at {
            Some(at) => {
                params.push(at);
                (INSERT_OUTBOX, params)
            }
            None => (INSERT_OUTBOX_NOW, params),
        }
    }
}

fn insert_order_params(order: &NewOrder) -> [&dyn ToSql; 4] {
    [&order.customer_name, &order.product_id, &order.quantity, text_or_empty(&order.idempotency_key)]
}

async fn place(client: &mut TdsClient, order: &NewOrder) -> TdsResult<Placed> {
    batch(client, BEGIN).await?;
    if let Some(key) = &order.idempotency_key
        && let Some(row) = rows(client, ORDER_BY_KEY, &[key]).await?.first()
    {
        let existing = order_from_row(row)?;
        batch(client, COMMIT).await?;
        return Ok(Placed::Existing(existing));
    }
    let inserted = rows(client, INSERT_ORDER, &insert_order_params(order)).await?;
    let stored = order_from_row(inserted.first().ok_or_else(|| conversion("inserted order"))?)?;
    let created_at = Some(stored.created_at.naive_utc());
    insert_outbox(client, &stored, &order.traceparent, &order.tracestate, created_at).await?;
    let mut moves = Moves::default();
    moves.add(OrderStatus::Pending, 1);
    count_moves(client, moves).await?;
    batch(client, COMMIT).await?;
    Ok(Placed::Created(stored))
}

#[async_trait]
impl OrderStore for MssqlStore {
    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        let mut conn = self.conn().await?;
        let result = async { rows(&mut conn, PRODUCTS, &[]).await?.iter().map(product_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn product(&self, product_id: &str) -> Result<Product, StoreError> {
        let mut conn = self.conn().await?;
        let result =
            async { rows(&mut conn, PRODUCT, &[&product_id]).await?.first().map(product_from_row).transpose() }.await;
        finish(conn, result)?.ok_or(StoreError::NotFound)
    }

    async fn place_order(&self, order: NewOrder) -> Result<Placed, StoreError> {
        let mut conn = self.conn().await?;
        let result = place(&mut conn, &order).await;
        match finish(conn, result) {
            // Two requests with the same new key raced; the winner's order is the answer.
            Err(StoreError::Conflict(_)) if order.idempotency_key.is_some() => {
                let mut conn = self.conn().await?;
                let key = order.idempotency_key.clone();
                let result =
                    async { rows(&mut conn, ORDER_BY_KEY, &[&key]).await?.first().map(order_from_row).transpose() }
                        .await;
                finish(conn, result)?.map(Placed::Existing).ok_or(StoreError::NotFound)
            }
            other => other,
        }
    }

    async fn order(&self, order_id: OrderId) -> Result<Order, StoreError> {
        let mut conn = self.conn().await?;
        let result =
            async { rows(&mut conn, ORDER, &[&order_id.0]).await?.first().map(order_from_row).transpose() }.await;
        finish(conn, result)?.ok_or(StoreError::NotFound)
    }

    async fn order_counts(&self) -> Result<OrderCounts, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let mut counts = OrderCounts::default();
            for row in rows(&mut conn, ORDER_COUNTS, &[]).await? {
                let status = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
                add_count(&mut counts, status, row.try_get::<i64, _>(1)?.unwrap_or(0));
            }
            Ok(counts)
        }
        .await;
        finish(conn, result)
    }

    async fn recent_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, RECENT_ORDERS, &[&limit]).await?.iter().map(order_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn failed_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        let mut conn = self.conn().await?;
        let limit = i64::from(limit);
        let result =
            async { rows(&mut conn, FAILED_ORDERS, &[&limit]).await?.iter().map(order_from_row).collect() }.await;
        finish(conn, result)
    }

    async fn published_at(&self, order_id: OrderId) -> Result<Option<DateTime<Utc>>, StoreError> {
        let mut conn = self.conn().await?;
        let result = async {
            let found = rows(&mut conn, PUBLISHED_AT, &[&order_id.0]).await?;
            Ok(found.first().map(|r| r.try_get::<NaiveDateTime, _>(0)).transpose()?.flatten().map(utc))
        }
        .await;
        finish(conn, result)
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_params;
    use super::*;

    /// Every optional value of an order and its outbox row, absent: no NULL may be bound.
    #[test]
    fn optional_values_are_never_bound_as_null() {
        let order = NewOrder {
            customer_name: "Ajay".into(),
            product_id: "P123".into(),
            quantity: 2,
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
        };
        check_params(INSERT_ORDER, &insert_order_params(&order)).unwrap();
        for created_at in [None, Some(Utc::now().naive_utc())] {
            let row = OutboxInsert { outbox_id: Uuid::new_v4(), order_id: 1, payload: "{}".into(), created_at };
            let (sql, params) = row.statement(&None, &None);
            check_params(sql, &params).unwrap();
            let placeholders = (1..=7).filter(|n| sql.contains(&format!("@P{n}"))).count();
            assert_eq!(placeholders, params.len(), "one value per placeholder in {sql}");
        }
    }
}
