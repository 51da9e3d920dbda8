//! SQL Server: placing and reading orders.
//!
//! Invariant: an order and its outbox row commit in one transaction, one order's
//! failure never undoes another's ([`place_orders`]); a replayed idempotency key
//! returns the first order, also when two requests race.

use std::sync::Arc;

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use std::sync::atomic::{AtomicUsize, Ordering};
use tiberius::ToSql;

use serde_json::{Value, json};
use tokio::sync::{Mutex, Notify, mpsc};
use uuid::Uuid;

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::store::{Answer, Cause, add_count};
use crate::{
    MssqlStore, NewOrder, Order, OrderCounts, OrderId, OrderStatus, OrderStore, OutboxId, Placed, Product, StoreError,
};

use super::sql::*;
use super::{
    TdsClient, TdsResult, all_rows, batch, batch_rows, conversion, exec, load_order, order_from_row, product_from_row,
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

/// Most orders committed together: each takes 9 parameters, and SQL Server
/// takes 2,100 per call.
const MAX_ORDERS_PER_COMMIT: usize = 100;

/// An order waiting for the group-commit writers, with where its answer goes.
pub(super) struct PlaceRequest {
    pub(super) order: NewOrder,
    pub(super) answer: Answer,
}

/// What the group-commit writers share: the queue of orders, and how many
/// groups are committing now.
pub(super) struct Writers {
    queue: Mutex<mpsc::Receiver<PlaceRequest>>,
    committing: AtomicUsize,
    committed: Notify,
}

impl Writers {
    pub(super) fn new(queue: mpsc::Receiver<PlaceRequest>) -> Arc<Self> {
        Arc::new(Self { queue: Mutex::new(queue), committing: AtomicUsize::new(0), committed: Notify::new() })
    }

    /// The orders waiting now, at least one, counted as committing until
    /// [`Writers::done`]; `None` once the store is gone.
    /// While [`BUSY`] groups commit, another starts only with
    /// [`WORTH_A_COMMIT`] orders or when one of them ends: a commit's fixed
    /// cost is spread over a bigger group when the database is busy, and an
    /// order still starts at once when it is not.
    async fn next_group(&self) -> Option<Vec<PlaceRequest>> {
        let mut queue = self.queue.lock().await;
        let mut group = vec![queue.recv().await?];
        loop {
            while group.len() < MAX_ORDERS_PER_COMMIT {
                match queue.try_recv() {
                    Ok(next) => group.push(next),
                    Err(_) => break,
                }
            }
            let committed = self.committed.notified();
            tokio::pin!(committed);
            committed.as_mut().enable();
            if group.len() >= WORTH_A_COMMIT || self.committing.load(Ordering::Acquire) < BUSY {
                break;
            }
            tokio::select! {
                next = queue.recv() => match next {
                    Some(next) => group.push(next),
                    None => break,
                },
                _ = committed => {}
            }
        }
        // Counted while the queue is still held, before the next writer can look.
        self.committing.fetch_add(1, Ordering::AcqRel);
        Some(group)
    }

    /// A group from [`Writers::next_group`] has been answered.
    fn done(&self) {
        self.committing.fetch_sub(1, Ordering::AcqRel);
        self.committed.notify_waiters();
    }
}

/// Groups committing at once beyond which a new group waits to grow. With 1,
/// at 500 orders/s on Babelfish the producer's share of the server fell from
/// 80 % of a core to 43-46 % (bigger groups), against 2.
const BUSY: usize = 1;
/// The size of a group that starts whatever else is committing.
const WORTH_A_COMMIT: usize = 8;

/// One group-commit writer: it takes the orders waiting at that moment
/// ([`Writers::next_group`]) and places them in one call and one transaction
/// ([`place`]). Several writers share the queue, so one group is collected
/// while another commits. When a group fails, each of its orders is placed
/// on its own, so one bad order fails no other.
pub(super) async fn place_orders(store: MssqlStore, writers: Arc<Writers>) {
    while let Some(group) = writers.next_group().await {
        place_group(&store, group).await;
        writers.done();
    }
}

/// Places `group` together, or each of its orders alone when that fails for
/// a reason of one of them, and answers each order.
async fn place_group(store: &MssqlStore, group: Vec<PlaceRequest>) {
    let orders: Vec<&NewOrder> = group.iter().map(|r| &r.order).collect();
    match store.with_hot_conn(async |c| Ok(place(c, &orders).await?)).await {
        Ok(placed) => {
            for (request, placed) in group.into_iter().zip(placed) {
                request.answer.send(Ok(placed));
            }
        }
        Err(error) if error.is_transient() || group.len() == 1 && !matches!(error, StoreError::Conflict(_)) => {
            for request in group {
                request.answer.send(Err(error.clone()));
            }
        }
        Err(_) => {
            for request in group {
                let placed = store.place_alone(&request.order).await;
                request.answer.send(placed);
            }
        }
    }
}

/// The event's JSON without its order id and creation time, for
/// `dbo.place_order` (migration V8) to complete: what follows `{"order_id":0`,
/// up to but without the closing brace.
fn event_rest(order: &NewOrder, outbox_id: OutboxId) -> TdsResult<String> {
    let event = OrderPlacedV1 {
        order_id: 0,
        customer_name: order.customer_name.clone(),
        product_id: order.product_id.clone(),
        quantity: i64::from(order.quantity),
        version: Some(1),
        outbox_id: Some(outbox_id),
        created_at: None,
    };
    let json = serde_json::to_string(&event).map_err(|e| tiberius::error::Error::Conversion(e.to_string().into()))?;
    json.strip_prefix(r#"{"order_id":0"#)
        .and_then(|rest| rest.strip_suffix('}'))
        .map(str::to_string)
        .ok_or_else(|| conversion("the event's JSON, which must start with its order id"))
}

/// The values `dbo.place_order` takes for one order, bound without a NULL.
struct PlaceArgs<'a> {
    order: &'a NewOrder,
    outbox_id: Uuid,
    rest: String,
}

impl<'a> PlaceArgs<'a> {
    fn of(order: &'a NewOrder) -> TdsResult<Self> {
        let outbox_id = OutboxId::new();
        Ok(Self { order, outbox_id: outbox_id.0, rest: event_rest(order, outbox_id)? })
    }

    fn params(&self) -> [&dyn ToSql; 9] {
        let o = self.order;
        [
            &o.customer_name,
            &o.product_id,
            &o.quantity,
            text_or_empty(&o.idempotency_key),
            &self.outbox_id,
            &ORDER_PLACED_V1,
            &self.rest,
            text_or_empty(&o.traceparent),
            text_or_empty(&o.tracestate),
        ]
    }
}

/// Places `orders` in one transaction, answered in their order. When at least
/// [`TOGETHER`] of them have no idempotency key and plain texts
/// ([`goes_as_json`]), those go together: one `dbo.insert_orders` for all,
/// then one `dbo.insert_outbox` (migrations V9, V10), each with its JSON
/// inlined in a SQL batch, since the transaction spans the calls and SQL
/// Server refuses one that an `sp_executesql` call leaves open or finds open
/// and closes (266). Each of the others is one `dbo.place_order`: in a call
/// between the two, or all in one call of their own.
async fn place(client: &mut TdsClient, orders: &[&NewOrder]) -> TdsResult<Vec<Placed>> {
    let (mut plain, mut others): (Vec<usize>, Vec<usize>) = (0..orders.len()).partition(|&i| goes_as_json(orders[i]));
    if plain.len() < TOGETHER {
        (plain, others) = (Vec::new(), (0..orders.len()).collect());
    }
    let others_args = others.iter().map(|&i| PlaceArgs::of(orders[i])).collect::<TdsResult<Vec<_>>>()?;
    let others_params: Vec<&dyn ToSql> = others_args.iter().flat_map(PlaceArgs::params).collect();
    let (inserted, answers) = if plain.is_empty() {
        (Vec::new(), all_rows(client, &place_orders_sql(others.len()), &others_params).await?)
    } else {
        let plain_orders: Vec<&NewOrder> = plain.iter().map(|&i| orders[i]).collect();
        let inserted = insert_orders(client, &plain_orders).await?;
        let answers = match others.is_empty() {
            true => Vec::new(),
            false => all_rows(client, &place_calls_sql(others.len()), &others_params).await?,
        };
        batch(client, &with_json(INSERT_OUTBOX_AND_COMMIT, &outbox_json(&inserted, &plain_orders))).await?;
        (inserted, answers)
    };
    if answers.len() != others.len() {
        return Err(conversion("one answer per order placed"));
    }
    let mut placed: Vec<Option<Placed>> = (0..orders.len()).map(|_| None).collect();
    for (i, order) in plain.into_iter().zip(inserted) {
        placed[i] = Some(Placed::Created(order));
    }
    for (i, row) in others.into_iter().zip(&answers) {
        let created = row.try_get::<i32, _>(0)?.ok_or_else(|| conversion("created"))? == 1;
        let order = super::order_at(row, 1)?;
        placed[i] = Some(if created { Placed::Created(order) } else { Placed::Existing(order) });
    }
    placed.into_iter().map(|p| p.ok_or_else(|| conversion("one answer per order placed"))).collect()
}

/// The fewest plain orders placed together. Babelfish's time per order, on a
/// warm connection: 1.32 ms alone by `dbo.place_order` against 2.18 ms in two
/// calls; for 2, 1.05 against 1.09; for 4, 0.79 against 0.60; for 16, 0.89
/// against 0.24.
const TOGETHER: usize = 3;

/// Whether `order` can be placed with others through JSON: no idempotency key
/// (its check is `dbo.place_order`'s), and no text that JSON escapes (`"`,
/// `\`, a control character), since Babelfish's OPENJSON keeps the escapes.
fn goes_as_json(order: &NewOrder) -> bool {
    let plain = |text: &str| !text.chars().any(|c| c == '"' || c == '\\' || c.is_control());
    order.idempotency_key.is_none()
        && plain(&order.customer_name)
        && plain(&order.product_id)
        && order.traceparent.as_deref().is_none_or(plain)
        && order.tracestate.as_deref().is_none_or(plain)
}

/// Opens the transaction and inserts `orders`, answering each with its row.
/// The server answers the rows in any order: each is told its order by its
/// fields, the lowest id to the first of equal orders (the order in which
/// both engines number an `INSERT ... SELECT` over a JSON array). Equal
/// orders differ only in their trace context and outbox id, which follow the
/// id each is given.
async fn insert_orders(client: &mut TdsClient, orders: &[&NewOrder]) -> TdsResult<Vec<Order>> {
    let json: Vec<Value> =
        orders.iter().map(|o| json!({"c": o.customer_name, "p": o.product_id, "q": o.quantity})).collect();
    let mut rows = batch_rows(client, &with_json(BEGIN_AND_INSERT_ORDERS, &Value::Array(json).to_string())).await?;
    if rows.len() != orders.len() {
        return Err(conversion("one row per order inserted"));
    }
    let mut inserted: Vec<Option<Order>> = (0..orders.len()).map(|_| None).collect();
    rows.sort_by_key(|row| row.try_get::<i64, _>(0).ok().flatten());
    for row in &rows {
        let order = Order {
            order_id: OrderId(row.try_get::<i64, _>(0)?.ok_or_else(|| conversion("order_id"))?),
            customer_name: row.try_get::<&str, _>(1)?.ok_or_else(|| conversion("customer_name"))?.to_string(),
            product_id: row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string(),
            quantity: row.try_get::<i32, _>(3)?.ok_or_else(|| conversion("quantity"))?,
            status: OrderStatus::Pending,
            unit_price: None,
            total_price: None,
            failure_reason: None,
            created_at: utc(row.try_get::<NaiveDateTime, _>(4)?.ok_or_else(|| conversion("created_at"))?),
            processed_at: None,
        };
        let asked = |i: usize| {
            let o = orders[i];
            inserted[i].is_none()
                && (o.customer_name.as_str(), o.product_id.as_str(), o.quantity)
                    == (order.customer_name.as_str(), order.product_id.as_str(), order.quantity)
        };
        let i = (0..orders.len()).find(|&i| asked(i)).ok_or_else(|| conversion("an order inserted as asked"))?;
        inserted[i] = Some(order);
    }
    inserted.into_iter().map(|o| o.ok_or_else(|| conversion("one row per order inserted"))).collect()
}

/// What `dbo.insert_outbox` takes for `inserted`, the rows of `orders`: their
/// outbox rows' ids, the fields of their events and their trace context.
fn outbox_json(inserted: &[Order], orders: &[&NewOrder]) -> String {
    let rows: Vec<Value> = inserted
        .iter()
        .zip(orders)
        .map(|(order, asked)| {
            json!({
                "x": OutboxId::new().0,
                "o": order.order_id.0,
                "c": order.customer_name,
                "p": order.product_id,
                "q": order.quantity,
                "at": order.created_at.format("%Y-%m-%dT%H:%M:%S%.3f").to_string(),
                "tp": asked.traceparent,
                "ts": asked.tracestate,
            })
        })
        .collect();
    Value::Array(rows).to_string()
}

impl MssqlStore {
    /// One order in a transaction of its own, after its group failed.
    async fn place_alone(&self, order: &NewOrder) -> Result<Placed, StoreError> {
        match self.with_conn(async |c| Ok(place(c, &[order]).await?.remove(0))).await {
            // Two requests with the same new key raced; the winner's order is the answer.
            Err(StoreError::Conflict(_)) if order.idempotency_key.is_some() => {
                let key = order.idempotency_key.clone();
                let existing = self
                    .with_conn(async |c| {
                        Ok(rows(c, ORDER_BY_KEY, &[&key]).await?.first().map(order_from_row).transpose()?)
                    })
                    .await?;
                existing.map(Placed::Existing).ok_or(StoreError::NotFound)
            }
            other => other,
        }
    }
}

#[async_trait]
impl OrderStore for MssqlStore {
    async fn products(&self) -> Result<Vec<Product>, StoreError> {
        self.with_conn(async |c| {
            Ok(rows(c, PRODUCTS, &[]).await?.iter().map(product_from_row).collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn product(&self, product_id: &str) -> Result<Product, StoreError> {
        self.with_conn(async |c| {
            Ok(rows(c, PRODUCT, &[&product_id]).await?.first().map(product_from_row).transpose()?)
        })
        .await?
        .ok_or(StoreError::NotFound)
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
            .map_err(|_| StoreError::Unavailable(Cause::msg("the order writers have stopped")))?;
        reply.await.map_err(|_| StoreError::Unavailable(Cause::msg("the order writers have stopped")))?
    }

    async fn order(&self, order_id: OrderId) -> Result<Order, StoreError> {
        self.with_conn(async |c| Ok(load_order(c, order_id).await?)).await?.ok_or(StoreError::NotFound)
    }

    async fn order_counts(&self) -> Result<OrderCounts, StoreError> {
        self.with_conn(async |c| {
            let mut counts = OrderCounts::default();
            for row in rows(c, ORDER_COUNTS, &[]).await? {
                let status = row.try_get::<&str, _>(0)?.ok_or_else(|| conversion("status"))?;
                add_count(&mut counts, status, row.try_get::<i64, _>(1)?.unwrap_or(0));
            }
            Ok(counts)
        })
        .await
    }

    async fn recent_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            Ok(rows(c, RECENT_ORDERS, &[&limit]).await?.iter().map(order_from_row).collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn failed_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            Ok(rows(c, FAILED_ORDERS, &[&limit]).await?.iter().map(order_from_row).collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn published_at(&self, order_id: OrderId) -> Result<Option<DateTime<Utc>>, StoreError> {
        self.with_conn(async |c| {
            let found = rows(c, PUBLISHED_AT, &[&order_id.0]).await?;
            Ok(found.first().map(|r| r.try_get::<NaiveDateTime, _>(0)).transpose()?.flatten().map(utc))
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::super::check_params;
    use super::*;

    /// Every optional value of an order, absent: no NULL may be bound.
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
        let args = PlaceArgs::of(&order).unwrap();
        check_params(&place_orders_sql(1), &args.params()).unwrap();
    }

    #[test]
    fn an_outbox_row_binds_no_null() {
        for created_at in [None, Some(Utc::now().naive_utc())] {
            let row = OutboxInsert { outbox_id: Uuid::new_v4(), order_id: 1, payload: "{}".into(), created_at };
            let (sql, params) = row.statement(&None, &None);
            check_params(sql, &params).unwrap();
            let placeholders = (1..=7).filter(|n| sql.contains(&format!("@P{n}"))).count();
            assert_eq!(placeholders, params.len(), "one value per placeholder in {sql}");
        }
    }

    #[test]
    fn the_event_is_completed_from_its_rest() {
        let order = NewOrder {
            customer_name: "A \"quoted\" \u{1F600} name".into(),
            product_id: "P123".into(),
            quantity: 2,
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
        };
        let outbox_id = OutboxId::new();
        let rest = event_rest(&order, outbox_id).unwrap();
        // What dbo.place_order builds around it.
        let json = format!(r#"{{"order_id":42{rest},"created_at":"2026-12-03T10:00:00.123Z"}}"#);
        let event: OrderPlacedV1 = serde_json::from_str(&json).unwrap();
        assert_eq!(
            (event.order_id, event.customer_name.as_str(), event.outbox_id),
            (42, order.customer_name.as_str(), Some(outbox_id))
        );
    }
}
