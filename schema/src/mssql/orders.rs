//! SQL Server: placing and reading orders.
//!
//! Invariant: an order and its outbox row commit in one transaction, one order's
//! failure never undoes another's ([`place_orders`]); a replayed idempotency key
//! returns the first order, also when two requests race.

use async_trait::async_trait;
use chrono::{DateTime, NaiveDateTime, Utc};
use serde_json::{Value, json};
use tiberius::ToSql;
use tokio::sync::mpsc;
use uuid::Uuid;

use crate::messages::{ORDER_PLACED_V1, OrderPlacedV1};
use crate::store::{Answer, Cause, add_count};
use crate::{
    MssqlStore, NewOrder, Order, OrderCounts, OrderId, OrderStatus, OrderStore, OutboxId, Placed, Product, StoreError,
};

use super::carried::carried;
use super::sql::*;
use super::{
    TdsClient, TdsResult, all_rows, calls_without_repeats, conversion, exec, load_order, order_from_row,
    product_from_row, rows, text_or_empty, utc,
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
        let outbox_id = super::ids::outbox_id();
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

/// Most orders placed in one call: a bound on the call's size and on the
/// work one failed group makes its orders do again alone.
const MAX_ORDERS_PER_CALL: usize = 100;

/// An order waiting for the writer, with where its answer goes.
pub(super) struct PlaceRequest {
    pub(super) order: NewOrder,
    pub(super) answer: Answer,
}

/// The group-commit writer, shaped like SQLite's: the orders waiting at the
/// moment a call can start are placed in one call and one transaction
/// ([`place`]); while it runs, the next group gathers. Unlike SQLite, SQL
/// Server takes several writers at once, so up to [`CALLS_IN_FLIGHT`] calls
/// run together, each on its own connection; a new one starts when one ends
/// or when [`WORTH_A_CALL`] orders wait. When a group fails, each of its
/// orders is placed on its own, so one bad order fails no other.
pub(super) async fn place_orders(store: MssqlStore, mut queue: mpsc::Receiver<PlaceRequest>) {
    let mut calls = tokio::task::JoinSet::new();
    loop {
        let first = tokio::select! {
            next = queue.recv() => match next {
                Some(next) => next,
                None => break,
            },
            Some(_) = calls.join_next(), if !calls.is_empty() => continue,
        };
        let mut group = vec![first];
        while group.len() < MAX_ORDERS_PER_CALL {
            match queue.try_recv() {
                Ok(next) => group.push(next),
                Err(_) => break,
            }
        }
        // A small group waits for a call to end while others run: the
        // commit's fixed cost is then spread over more orders.
        while calls.len() >= CALLS_IN_FLIGHT || !calls.is_empty() && group.len() < WORTH_A_CALL {
            tokio::select! {
                _ = calls.join_next() => {}
                next = queue.recv(), if group.len() < MAX_ORDERS_PER_CALL => match next {
                    Some(next) => group.push(next),
                    None => break,
                },
            }
        }
        let store = store.clone();
        calls.spawn(async move { place_group(&store, group).await });
    }
    while calls.join_next().await.is_some() {}
}

/// Calls placing orders at once, at most.
const CALLS_IN_FLIGHT: usize = 4;
/// The size of a group that starts while other calls run.
const WORTH_A_CALL: usize = 8;

/// Places `group` together, or each of its orders alone when that fails for
/// a reason of one of them, and answers each order.
async fn place_group(store: &MssqlStore, group: Vec<PlaceRequest>) {
    let orders: Vec<&NewOrder> = group.iter().map(|r| &r.order).collect();
    match store.with_conn(async |c| Ok(place(c, &orders).await?)).await {
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
/// `dbo.place_orders` (migration V20) to complete: what follows
/// `{"order_id":0`, up to but without the closing brace.
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

/// What `dbo.place_orders` takes for `orders`: one object each, numbered by
/// its place in `orders`, its texts [`carried`]; and the outbox id each
/// order's row will have, in the same order.
fn orders_json(orders: &[&NewOrder]) -> TdsResult<(String, Vec<OutboxId>)> {
    let outbox_ids: Vec<OutboxId> = orders.iter().map(|_| super::ids::outbox_id()).collect();
    let rows = orders
        .iter()
        .zip(&outbox_ids)
        .enumerate()
        .map(|(n, (order, &outbox_id))| {
            let mut row = json!({
                "n": n,
                "c": carried(&order.customer_name),
                "p": carried(&order.product_id),
                "q": order.quantity,
                "x": outbox_id.0,
                "e": carried(&event_rest(order, outbox_id)?),
            });
            let optional = [("k", &order.idempotency_key), ("tp", &order.traceparent), ("ts", &order.tracestate)];
            for (key, value) in optional {
                if let Some(value) = value {
                    row[key] = Value::from(carried(value));
                }
            }
            Ok(row)
        })
        .collect::<TdsResult<Vec<Value>>>()?;
    Ok((Value::Array(rows).to_string(), outbox_ids))
}

/// Places `orders`, answered in their order: in one call of
/// `dbo.place_orders` (migration V21), which owns its transaction, or one
/// per [`calls`]. Each new order comes back
/// as its outbox row (the id its request brought, the order's id and time);
/// a key's request that placed nothing comes back with its number and the
/// order the key names.
async fn place(client: &mut TdsClient, orders: &[&NewOrder]) -> TdsResult<Vec<Placed>> {
    let mut placed: Vec<Option<Placed>> = (0..orders.len()).map(|_| None).collect();
    for call in calls(orders) {
        let group: Vec<&NewOrder> = call.iter().map(|&i| orders[i]).collect();
        for (i, answer) in call.into_iter().zip(place_call(client, &group).await?) {
            placed[i] = Some(answer);
        }
    }
    placed.into_iter().map(|p| p.ok_or_else(|| conversion("one answer per order placed"))).collect()
}

/// The calls a group takes: each a list of its orders (by index) in which
/// no idempotency key comes twice (what `dbo.place_orders` asks). Nearly
/// every group is one call; a repeated key goes in the next, which finds the
/// first one's order.
fn calls(orders: &[&NewOrder]) -> Vec<Vec<usize>> {
    calls_without_repeats(orders.iter().map(|o| o.idempotency_key.as_deref().into_iter().collect::<Vec<_>>()))
}

/// One call of `dbo.place_orders` for `orders`, whose keys differ.
async fn place_call(client: &mut TdsClient, orders: &[&NewOrder]) -> TdsResult<Vec<Placed>> {
    let (json, outbox_ids) = orders_json(orders)?;
    let count = i32::try_from(orders.len()).map_err(|_| conversion("a group's size"))?;
    let keyed = orders.iter().any(|o| o.idempotency_key.is_some());
    let answers = all_rows(client, PLACE_ORDERS, &[&json, &ORDER_PLACED_V1, &count, &keyed]).await?;
    let mut placed: Vec<Option<Placed>> = (0..orders.len()).map(|_| None).collect();
    for row in &answers {
        if row.columns().len() == NEW_ORDER_COLUMNS {
            let outbox_id = row.try_get::<Uuid, _>(0)?.ok_or_else(|| conversion("outbox_id"))?;
            let n =
                outbox_ids.iter().position(|x| x.0 == outbox_id).ok_or_else(|| conversion("an outbox id asked for"))?;
            let asked = orders[n];
            let order = Order {
                order_id: OrderId(row.try_get::<i64, _>(1)?.ok_or_else(|| conversion("order_id"))?),
                customer_name: asked.customer_name.clone(),
                product_id: asked.product_id.clone(),
                quantity: asked.quantity,
                status: OrderStatus::Pending,
                unit_price: None,
                total_price: None,
                failure_reason: None,
                created_at: utc(row.try_get::<NaiveDateTime, _>(2)?.ok_or_else(|| conversion("created_at"))?),
                processed_at: None,
            };
            placed[n] = Some(Placed::Created(order));
        } else {
            let n = row.try_get::<i32, _>(0)?.ok_or_else(|| conversion("n"))?;
            let slot = usize::try_from(n).ok().and_then(|n| placed.get_mut(n)).ok_or_else(|| conversion("n"))?;
            *slot = Some(Placed::Existing(super::order_at(row, 1)?));
        }
    }
    placed.into_iter().map(|p| p.ok_or_else(|| conversion("one answer per order placed"))).collect()
}

/// The columns of a new order's answer: its outbox row's id, the order's id
/// and its creation time.
const NEW_ORDER_COLUMNS: usize = 3;

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

    /// Each order is numbered by its place, an absent optional value is
    /// absent from its object (never a JSON null), and no text holds a
    /// character the TDS engine's OPENJSON would hand back escaped.
    #[test]
    fn a_group_is_sent_numbered_with_its_texts_carried() {
        let plain = NewOrder {
            customer_name: "Ajay".into(),
            product_id: "P123".into(),
            quantity: 2,
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
        };
        let hostile = NewOrder {
            customer_name: "a \"quoted\" \\ 100% \u{1F600}\n".into(),
            idempotency_key: Some("key \"1\"".into()),
            traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
            ..plain.clone()
        };
        let (json, _) = orders_json(&[&plain, &hostile]).unwrap();
        let rows: Vec<Value> = serde_json::from_str(&json).unwrap();
        assert_eq!((rows[0]["n"].as_i64(), rows[1]["n"].as_i64()), (Some(0), Some(1)));
        assert!(rows[0].get("k").is_none() && rows[0].get("tp").is_none() && rows[0].get("ts").is_none());
        assert_eq!(rows[1]["c"], "a %22quoted%22 %5C 100%25 \u{1F600}%0A");
        assert_eq!(rows[1]["k"], "key %221%22");
        let rest = rows[1]["e"].as_str().unwrap();
        assert!(rest.starts_with(",%22customer_name%22:%22a %5C%22quoted"), "{rest}");
        let escaped = |text: &str| text.chars().any(|c| c == '"' || c == '\\' || c.is_control());
        assert!(
            rows.iter().flat_map(|r| r.as_object().unwrap().values()).filter_map(Value::as_str).all(|t| !escaped(t))
        );
    }

    #[test]
    fn a_group_is_one_call_unless_it_repeats_a_key() {
        let order = |key: Option<&str>| NewOrder {
            customer_name: "Ajay".into(),
            product_id: "P123".into(),
            quantity: 2,
            idempotency_key: key.map(str::to_string),
            traceparent: None,
            tracestate: None,
        };
        let group = [order(Some("a")), order(None), order(Some("a")), order(Some("A")), order(None)];
        assert_eq!(calls(&group.iter().collect::<Vec<_>>()), [vec![0, 1, 3, 4], vec![2]], "keys compare as bytes");
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
