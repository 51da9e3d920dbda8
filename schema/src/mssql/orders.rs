//! SQL Server: placing and reading orders.
//!
//! Invariant: an order and its outbox row commit in one transaction, one order's
//! failure never undoes another's ([`place_orders`]); a replayed idempotency key
//! returns the first order, also when two requests race.

use std::collections::HashMap;
use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use tiberius::ToSql;
use tokio::sync::{Mutex, mpsc, oneshot};
use uuid::Uuid;

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::store::{Cause, Moves, add_count};
use crate::{
    MssqlStore, NewOrder, Order, OrderCounts, OrderId, OrderStatus, OrderStore, OutboxId, Placed, Product, StoreError,
};

use super::sql::*;
use super::{
    TdsClient, TdsResult, batch, conversion, count_moves, count_slot, exec, finish, order_from_row, product_from_row,
    rows, text_or_empty, utc,
};

/// Writes the `OrderPlacedV1` outbox row of `order`; `created_at` None means now.
pub(super) async fn insert_outbox(
    client: &mut TdsClient,
    order: &Order,
    traceparent: &Option<String>,
    tracestate: &Option<String>,
    created_at: Option<NaiveDateTime>,
) -> TdsResult<OutboxId> {
    let row = OutboxInsert::of(order, created_at)?;
    let (sql, params) = row.statement(traceparent, tracestate);
    exec(client, sql, &params).await?;
    Ok(OutboxId(row.outbox_id))
}

/// The values of a new outbox row, bound without a NULL parameter.
struct OutboxInsert {
    outbox_id: Uuid,
    order_id: i64,
    payload: String,
    created_at: Option<NaiveDateTime>,
}

impl OutboxInsert {
    /// The `OrderPlacedV1` row of `order`, with a new outbox id.
    fn of(order: &Order, created_at: Option<NaiveDateTime>) -> TdsResult<Self> {
        let outbox_id = OutboxId::new();
        let payload = serde_json::to_string(&OrderPlacedV1::for_order(order, outbox_id))
            .map_err(|e| tiberius::error::Error::Conversion(e.to_string().into()))?;
        Ok(Self { outbox_id: outbox_id.0, order_id: order.order_id.0, payload, created_at })
    }

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

/// Most orders committed together: each takes 5 parameters in the orders'
/// insert and 7 in the outbox rows', and SQL Server takes 2,100 per call.
const MAX_ORDERS_PER_COMMIT: usize = 100;

/// An order waiting for the group-commit writers, with where its answer goes.
pub(super) struct PlaceRequest {
    pub(super) order: NewOrder,
    pub(super) reply: oneshot::Sender<Result<Placed, StoreError>>,
}

/// One group-commit writer: it takes the orders waiting at that moment
/// and writes them in one transaction ([`place_group`]), in a handful of round
/// trips whatever the group's size. Several writers share the queue, so one
/// group is collected while another commits. When a group fails, each of its
/// orders is placed on its own, so one bad order fails no other.
pub(super) async fn place_orders(store: MssqlStore, queue: Arc<Mutex<mpsc::Receiver<PlaceRequest>>>) {
    loop {
        let group = {
            let mut queue = queue.lock().await;
            let Some(first) = queue.recv().await else { return };
            let mut group = vec![first];
            while group.len() < MAX_ORDERS_PER_COMMIT {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            group
        };
        let orders: Vec<&NewOrder> = group.iter().map(|r| &r.order).collect();
        let placed = match store.conn().await {
            Ok(mut conn) if group.len() > 1 && keys_are_distinct(&orders) => {
                let result = place_group(&mut conn, &orders).await;
                finish(conn, result)
            }
            Ok(conn) => finish(conn, Ok(())).and(Err(StoreError::Conflict(Cause::msg("placed one by one")))),
            Err(error) => Err(error),
        };
        match placed {
            Ok(placed) => {
                for (request, placed) in group.into_iter().zip(placed) {
                    let _ = request.reply.send(Ok(placed));
                }
            }
            Err(error) if error.is_transient() => {
                for request in group {
                    let _ = request.reply.send(Err(error.clone()));
                }
            }
            Err(_) => {
                for request in group {
                    let placed = store.place_alone(&request.order).await;
                    let _ = request.reply.send(placed);
                }
            }
        }
    }
}

/// Two orders of one group with the same key must be placed one after the other.
fn keys_are_distinct(orders: &[&NewOrder]) -> bool {
    let mut keys: Vec<&str> = orders.iter().filter_map(|o| o.idempotency_key.as_deref()).collect();
    let n = keys.len();
    keys.sort_unstable();
    keys.dedup();
    keys.len() == n
}

/// A group of orders and their outbox rows in one transaction: the orders
/// their keys already name, then every new order (one batch of inserts, each
/// answering with its row), their outbox rows (one insert), the counters.
/// The inserted row of each new order, in the orders' order: the first unused
/// row with its values, rows taken in id order. Orders that differ get their
/// own row exactly; orders alike in every value are interchangeable, and get
/// ids in their order wherever the engine inserts rows in the order given.
fn match_inserted(new: &[&NewOrder], mut inserted: Vec<(Option<String>, Order)>) -> Option<Vec<Order>> {
    if inserted.len() != new.len() {
        return None;
    }
    inserted.sort_by_key(|(_, o)| o.order_id.0);
    let mut taken = vec![false; inserted.len()];
    new.iter()
        .map(|want| {
            let i = inserted.iter().enumerate().position(|(i, (key, o))| {
                !taken[i]
                    && *key == want.idempotency_key
                    && o.customer_name == want.customer_name
                    && o.product_id == want.product_id
                    && o.quantity == want.quantity
            })?;
            taken[i] = true;
            Some(inserted[i].1.clone())
        })
        .collect()
}

async fn place_group(client: &mut TdsClient, orders: &[&NewOrder]) -> TdsResult<Vec<Placed>> {
    batch(client, BEGIN).await?;
    let keys: Vec<&String> = orders.iter().filter_map(|o| o.idempotency_key.as_ref()).collect();
    let mut existing = HashMap::new();
    if !keys.is_empty() {
        let params: Vec<&dyn ToSql> = keys.iter().map(|k| *k as &dyn ToSql).collect();
        for row in rows(client, &with_ids(ORDERS_BY_KEYS, 1, keys.len()), &params).await? {
            let key = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("idempotency_key"))?.to_string();
            existing.insert(key, super::order_at(&row, 1)?);
        }
    }
    let new: Vec<&NewOrder> = orders
        .iter()
        .copied()
        .filter(|o| o.idempotency_key.as_ref().is_none_or(|k| !existing.contains_key(k)))
        .collect();
    let mut stored = Vec::with_capacity(new.len());
    if !new.is_empty() {
        let params: Vec<&dyn ToSql> = new.iter().flat_map(|o| insert_order_params(o)).collect();
        let inserted = rows(client, &with_rows(INSERT_ORDERS, new.len(), 4), &params).await?;
        let inserted = inserted
            .iter()
            .map(|row| Ok((row.try_get::<&str, _>(0)?.map(str::to_string), super::order_at(row, 1)?)))
            .collect::<TdsResult<Vec<_>>>()?;
        stored = match_inserted(&new, inserted).ok_or_else(|| conversion("one inserted order per new order"))?;
        let rows_of: Vec<OutboxInsert> = stored
            .iter()
            .map(|order| OutboxInsert::of(order, Some(order.created_at.naive_utc())))
            .collect::<TdsResult<_>>()?;
        let mut params: Vec<&dyn ToSql> = Vec::with_capacity(7 * new.len());
        for (row, order) in rows_of.iter().zip(&new) {
            let (_, values) = row.statement(&order.traceparent, &order.tracestate);
            params.extend(values);
        }
        // The outbox rows and the counters in one call; the counters' values
        // are integers inlined, after the rows' parameters.
        let pending = new.len() as i64;
        let counts = with_integers(BUMP_COUNTS, &[pending, 0, 0, 0, i64::from(count_slot())]);
        exec(client, &format!("{}; {counts}", with_rows(INSERT_OUTBOXES, new.len(), 7)), &params).await?;
    }
    batch(client, COMMIT).await?;
    let mut stored = stored.into_iter();
    orders
        .iter()
        .map(|o| match o.idempotency_key.as_ref().and_then(|k| existing.get(k)) {
            Some(order) => Ok(Placed::Existing(order.clone())),
            None => stored.next().map(Placed::Created).ok_or_else(|| conversion("placed order")),
        })
        .collect()
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

impl MssqlStore {
    /// One order in a transaction of its own (a group that failed is placed so).
    async fn place_alone(&self, order: &NewOrder) -> Result<Placed, StoreError> {
        let mut conn = self.conn().await?;
        let result = place(&mut conn, order).await;
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
        let (reply, answer) = oneshot::channel();
        self.orders
            .send(PlaceRequest { order, reply })
            .await
            .map_err(|_| StoreError::Unavailable(Cause::msg("the order writers have stopped")))?;
        answer.await.map_err(|_| StoreError::Unavailable(Cause::msg("the order writers have stopped")))?
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
