//! SQLite: placing and reading orders, with group commit of concurrent orders.
//!
//! Invariant: each order commits together with its outbox row, and one order's
//! failure never undoes another's ([`place_each`]).

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use rusqlite::{Connection, OptionalExtension, params};
use tokio::sync::mpsc;

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::store::{Answer, Cause, Moves, add_count};
use crate::{
    NewOrder, Order, OrderCounts, OrderId, OrderStatus, OrderStore, OutboxId, Placed, Product, SqliteStore, StoreError,
};

use super::sql::*;
use super::{
    Db, MAX_ORDERS_PER_COMMIT, PlaceRequest, count_moves, load_order, now, order_from_row, parse_time, product_from_row,
};

/// Group commit: orders waiting at the same moment are written in one
/// transaction ([`place_all`]); each order still commits with its outbox row.
pub(super) async fn place_orders(writer: Db, mut queue: mpsc::Receiver<PlaceRequest>) {
    while let Some(first) = queue.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_ORDERS_PER_COMMIT {
            match queue.try_recv() {
                Ok(next) => batch.push(next),
                Err(_) => break,
            }
        }
        let (orders, answers): (Vec<NewOrder>, Vec<_>) = batch.into_iter().map(|r| (r.order, r.answer)).unzip();
        let orders = Arc::new(orders);
        // All at once first; when one order fails (rare: the API has validated
        // them), that transaction is rolled back whole and the group placed
        // again, each order in its own savepoint, so its failure touches no
        // other order. No savepoint on the first try: a savepoint copies every
        // page the group touches into the statement journal.
        let all = orders.clone();
        let results = match writer.write(move |tx| place_all(tx, &all)).await {
            Ok(placed) => Ok(placed.into_iter().map(Ok).collect()),
            Err(_) => writer.write(move |tx| place_each(tx, &orders)).await,
        };
        match results {
            Ok(results) => {
                for (answer, result) in answers.into_iter().zip(results) {
                    answer.send(result);
                }
            }
            Err(error) => {
                for answer in answers {
                    answer.send(Err(error.clone()));
                }
            }
        }
    }
}

/// Places every order of a group and counts them, or fails as a whole.
fn place_all(tx: &Connection, orders: &[NewOrder]) -> Result<Vec<Placed>, StoreError> {
    let now = now(tx)?;
    let placed = orders.iter().map(|order| place_one(tx, order, &now)).collect::<Result<Vec<_>, _>>()?;
    count_created(tx, placed.iter().filter(|p| matches!(p, Placed::Created(_))).count())?;
    Ok(placed)
}

/// Places each order of a group inside its own savepoint, so that one order's
/// failure undoes that order alone, and counts those it created.
fn place_each(tx: &Connection, orders: &[NewOrder]) -> Result<Vec<Result<Placed, StoreError>>, StoreError> {
    let now = now(tx)?;
    let results =
        orders.iter().map(|order| in_savepoint(tx, || place_one(tx, order, &now))).collect::<Result<Vec<_>, _>>()?;
    count_created(tx, results.iter().filter(|r| matches!(r, Ok(Placed::Created(_)))).count())?;
    Ok(results)
}

/// The counters move once per group, for the orders it created.
fn count_created(tx: &Connection, created: usize) -> Result<(), StoreError> {
    let mut moves = Moves::default();
    moves.add(OrderStatus::Pending, created as i64);
    count_moves(tx, moves)
}

/// Runs `f` inside a savepoint, rolled back to when `f` fails; the outer
/// error is the savepoint's own.
fn in_savepoint<T>(
    tx: &Connection,
    f: impl FnOnce() -> Result<T, StoreError>,
) -> Result<Result<T, StoreError>, StoreError> {
    tx.execute_batch(SAVEPOINT)?;
    let out = f();
    if out.is_err() {
        tx.execute_batch(ROLLBACK_TO_SAVEPOINT)?;
    }
    tx.execute_batch(RELEASE_SAVEPOINT)?;
    Ok(out)
}

/// One order and its outbox row (inside the caller's transaction), created
/// at `now`; the new row is the order as given.
fn place_one(tx: &Connection, order: &NewOrder, now: &str) -> Result<Placed, StoreError> {
    if let Some(key) = &order.idempotency_key
        && let Some(existing) = tx.prepare_cached(ORDER_BY_KEY)?.query_row([key], order_from_row).optional()?
    {
        return Ok(Placed::Existing(existing));
    }
    tx.prepare_cached(INSERT_ORDER)?.execute(params![
        order.customer_name,
        order.product_id,
        order.quantity,
        order.idempotency_key,
        now
    ])?;
    let stored = Order {
        order_id: OrderId(tx.last_insert_rowid()),
        customer_name: order.customer_name.clone(),
        product_id: order.product_id.clone(),
        quantity: order.quantity,
        status: OrderStatus::Pending,
        unit_price: None,
        total_price: None,
        failure_reason: None,
        created_at: parse_time(now)?,
        processed_at: None,
    };
    insert_outbox(tx, &stored, order.traceparent.as_deref(), order.tracestate.as_deref(), Some(now))?;
    Ok(Placed::Created(stored))
}

/// Writes the `OrderPlacedV1` outbox row of `order`, due at once; `created_at`
/// (stored text) None means now.
pub(super) fn insert_outbox(
    tx: &Connection,
    order: &Order,
    traceparent: Option<&str>,
    tracestate: Option<&str>,
    created_at: Option<&str>,
) -> Result<OutboxId, StoreError> {
    let outbox_id = OutboxId::new();
    let payload = serde_json::to_string(&OrderPlacedV1::for_order(order, outbox_id))
        .map_err(|e| StoreError::Other(Cause::new(e)))?;
    tx.prepare_cached(INSERT_OUTBOX)?.execute(params![
        outbox_id.to_string(),
        order.order_id.0,
        ORDER_PLACED_V1,
        payload,
        traceparent,
        tracestate,
        created_at,
    ])?;
    Ok(outbox_id)
}

#[async_trait]
impl OrderStore for SqliteStore {
    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(PRODUCTS)?;
            let rows = stmt.query_map([], product_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn product(&self, product_id: &str) -> Result<Product, StoreError> {
        let product_id = product_id.to_string();
        self.with_conn(move |conn| Ok(conn.prepare_cached(PRODUCT)?.query_row([product_id], product_from_row)?)).await
    }

    async fn place_order_then(
        &self,
        order: NewOrder,
        on_created: Box<dyn for<'o> FnOnce(&'o Order) + Send>,
    ) -> Result<Placed, StoreError> {
        let (answer, reply) = Answer::new(on_created);
        self.orders
            .send(PlaceRequest { order, answer })
            .await
            .map_err(|_| StoreError::Unavailable(Cause::msg("the order writer has stopped")))?;
        reply.await.map_err(|_| StoreError::Unavailable(Cause::msg("the order writer has stopped")))?
    }

    async fn order(&self, order_id: OrderId) -> Result<Order, StoreError> {
        self.with_conn(move |conn| load_order(conn, order_id)?.ok_or(StoreError::NotFound)).await
    }

    async fn order_counts(&self) -> Result<OrderCounts, StoreError> {
        self.with_conn(|conn| {
            let mut stmt = conn.prepare_cached(ORDER_COUNTS)?;
            let rows = stmt.query_map([], |r| Ok((r.get::<_, String>(0)?, r.get::<_, i64>(1)?)))?;
            let mut counts = OrderCounts::default();
            for row in rows {
                let (status, n) = row?;
                add_count(&mut counts, &status, n);
            }
            Ok(counts)
        })
        .await
    }

    async fn recent_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(RECENT_ORDERS)?;
            let rows = stmt.query_map([limit], order_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn failed_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        self.with_conn(move |conn| {
            let mut stmt = conn.prepare_cached(FAILED_ORDERS)?;
            let rows = stmt.query_map([limit], order_from_row)?;
            Ok(rows.collect::<rusqlite::Result<Vec<_>>>()?)
        })
        .await
    }

    async fn published_at(&self, order_id: OrderId) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.with_conn(move |conn| {
            let at: Option<String> = conn.prepare_cached(PUBLISHED_AT)?.query_row([order_id.0], |r| r.get(0))?;
            Ok(at.as_deref().map(parse_time).transpose()?)
        })
        .await
    }
}
