//! SQL Server: the consumer's unit of work: inbox, pricing, final status.
//!
//! Invariant: a batch of messages is one call and one transaction
//! (`dbo.apply_batch`); an unknown order leaves no inbox row.

use std::collections::{HashMap, HashSet};

use async_trait::async_trait;
use chrono::NaiveDateTime;
use rust_decimal::Decimal;
use tiberius::Row;
use uuid::Uuid;

use serde_json::json;

use crate::decide::{Decision, OrderFacts, dead_letter, failure_reason, order_of, own_ids, verdict};
use crate::limits::{LAST_ERROR_UNITS, truncate_utf16};
use crate::pricing::Priced;
use crate::{
    Applied, DeadLetter, Delivery, MssqlStore, Order, OrderId, OrderStatus, ProcessingStore, StoreError,
    UndeliverableLetter,
};

use super::carried::{ascii_json, carried};
use super::sql::*;
use super::{
    TdsClient, TdsResult, calls_without_repeats, changed, conversion, count_slot, order_at, rows, status_at, utc,
};

/// What the database held of an order before the batch's call: a plain
/// read of what does not change (its product, quantity, outbox rows); its
/// status the call checks again on the row it moves.
struct Facts {
    facts: OrderFacts,
    order: Order,
    /// The order's outbox rows: the only outbox ids its messages may carry.
    outbox_ids: HashSet<Uuid>,
}

async fn read_facts(client: &mut TdsClient, deliveries: &[Delivery]) -> TdsResult<HashMap<i64, Facts>> {
    let mut ids: Vec<i64> = deliveries.iter().filter_map(|d| d.order_id).map(|o| o.0).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut found = HashMap::with_capacity(ids.len());
    if !ids.is_empty() {
        let (lo, hi) = (ids[0], ids[ids.len() - 1]);
        let list: Vec<String> = ids.iter().map(i64::to_string).collect();
        for row in rows(client, ORDER_FACTS, &[&list.join(","), &lo, &hi]).await? {
            let facts = OrderFacts {
                status: status_at(&row, 0)?,
                quantity: row.try_get::<i32, _>(1)?.ok_or_else(|| conversion("quantity"))?,
                product_id: row.try_get::<&str, _>(2)?.ok_or_else(|| conversion("product_id"))?.to_string(),
                list_price: row.try_get::<Decimal, _>(3)?,
            };
            let outbox_id = row.try_get::<Uuid, _>(4)?;
            let order = order_at(&row, 5)?;
            let entry =
                found.entry(order.order_id.0).or_insert_with(|| Facts { facts, order, outbox_ids: HashSet::new() });
            entry.outbox_ids.extend(outbox_id);
        }
    }
    Ok(found)
}

/// What one message is to `dbo.apply_batch` (migration V21), decided from the
/// facts ([`order_of`], [`own_ids`], [`verdict`]).
enum Kind {
    /// Price its order and process it.
    Process(Priced),
    /// Fail its order (unknown product) and park the message.
    Fail(String),
    /// A rejected message of its own order: fail the order, park the message.
    Reject(String),
    /// Park the message; no order of it may change.
    Letter(String),
}

impl Kind {
    fn of(d: &Delivery, facts: &HashMap<i64, Facts>) -> Kind {
        let order_id = match order_of(d) {
            Ok(order_id) => order_id,
            Err(reason) => {
                let reason = failure_reason(reason).to_string();
                let own = own_ids(d).is_some_and(|(x, o)| facts.get(&o.0).is_some_and(|f| f.outbox_ids.contains(&x.0)));
                return if own { Kind::Reject(reason) } else { Kind::Letter(reason) };
            }
        };
        let Some(facts) = facts.get(&order_id.0) else {
            return Kind::Letter(format!("order {order_id} not found"));
        };
        if let Some(id) = d.outbox_id.filter(|id| !facts.outbox_ids.contains(&id.0)) {
            return Kind::Letter(format!("outbox-id {id} is not an outbox message of order {order_id}"));
        }
        match verdict(&facts.facts) {
            Decision::Process { priced, .. } => Kind::Process(priced),
            Decision::Fail(reason) => Kind::Fail(reason),
            Decision::Duplicate => unreachable!("a verdict is never a duplicate"),
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Kind::Process(_) => "p",
            Kind::Fail(_) => "f",
            Kind::Reject(_) => "r",
            Kind::Letter(_) => "d",
        }
    }
}

/// The calls a batch takes: each a list of its messages (by index) in which
/// no outbox id and no order comes twice among those that may move an order,
/// and no dead letter id among those that may park one (what
/// `dbo.apply_batch` asks). Nearly every batch is one call; a message
/// that repeats one goes in the next, which sees the first one's effect.
fn rounds(deliveries: &[Delivery], kinds: &[Kind]) -> Vec<Vec<usize>> {
    calls_without_repeats(deliveries.iter().zip(kinds).map(|(d, kind)| {
        let mut keys = Vec::with_capacity(3);
        if !matches!(kind, Kind::Letter(_)) {
            keys.extend(d.outbox_id.map(|x| format!("x{x}")));
            keys.extend(d.order_id.map(|o| format!("o{o}")));
        }
        if !matches!(kind, Kind::Process(_)) {
            keys.push(format!("l{}", d.dead_letter_id));
        }
        keys
    }))
}

/// One call's `@rows`, `@bodies` and `@headers` for `dbo.apply_batch`: an
/// object per message of `round`, numbered by its place there, texts
/// [`carried`]; the dead letters' bodies, and their headers' JSON made ASCII
/// ([`ascii_json`]), one after another, each found by its offset and length
/// (a header may be long, and the TDS engine's OPENJSON cuts a text at 4,000
/// characters).
fn batch_args(
    round: &[usize],
    deliveries: &[Delivery],
    kinds: &[Kind],
) -> Result<(String, Vec<u8>, String), StoreError> {
    let mut bodies = Vec::new();
    let mut headers = String::new();
    let mut rows = Vec::with_capacity(round.len());
    for (n, &i) in round.iter().enumerate() {
        let (d, kind) = (&deliveries[i], &kinds[i]);
        let mut row = json!({"n": n, "k": kind.code()});
        if let Some(x) = d.outbox_id {
            row["x"] = json!(x.0);
        }
        if let Some(o) = d.order_id {
            row["o"] = json!(o.0);
        }
        match kind {
            Kind::Process(priced) => {
                row["u"] = json!(priced.unit_price.to_string());
                row["t"] = json!(priced.total_price.to_string());
            }
            Kind::Fail(reason) | Kind::Reject(reason) | Kind::Letter(reason) => {
                let letter = dead_letter(d, reason)?;
                row["r"] = json!(carried(reason));
                row["lr"] = json!(carried(letter.reason));
                row["l"] = json!(carried(letter.id));
                let ascii = ascii_json(&letter.headers);
                row["hb"] = json!(headers.len() + 1);
                row["hn"] = json!(ascii.len());
                headers.push_str(&ascii);
                row["b"] = json!(bodies.len() + 1);
                row["bn"] = json!(d.body.len());
                bodies.extend_from_slice(&d.body);
            }
        }
        rows.push(row);
    }
    Ok((serde_json::Value::Array(rows).to_string(), bodies, headers))
}

/// The batch after one read of its orders' facts, in one call of
/// `dbo.apply_batch` (migration V22), which owns its transaction (or one per
/// [`rounds`]). Each row a call answers carries the number of its message.
async fn apply_batch(client: &mut TdsClient, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
    let facts = read_facts(client, deliveries).await?;
    let kinds: Vec<Kind> = deliveries.iter().map(|d| Kind::of(d, &facts)).collect();
    let mut applied: Vec<Option<Applied>> = vec![None; deliveries.len()];
    for round in rounds(deliveries, &kinds) {
        let (batch, bodies, headers) = batch_args(&round, deliveries, &kinds)?;
        for row in rows(client, APPLY_BATCH, &[&batch, &bodies, &headers, &count_slot()]).await? {
            let n = row.try_get::<i32, _>(0)?.ok_or_else(|| conversion("n"))?;
            let i = *usize::try_from(n).ok().and_then(|n| round.get(n)).ok_or_else(|| conversion("n"))?;
            let counted = row.try_get::<bool, _>(1)?.ok_or_else(|| conversion("counts"))?;
            let moved = row.try_get::<&str, _>(2)?.is_some();
            let processed_at = row.try_get::<NaiveDateTime, _>(3)?.map(utc);
            applied[i] = Some(match &kinds[i] {
                Kind::Process(priced) if moved => {
                    let order_id = deliveries[i].order_id.ok_or_else(|| conversion("order_id"))?;
                    Applied::Processed(Order {
                        status: OrderStatus::Processed,
                        unit_price: Some(priced.unit_price),
                        total_price: Some(priced.total_price),
                        failure_reason: None,
                        processed_at,
                        ..facts[&order_id.0].order.clone()
                    })
                }
                Kind::Fail(reason) if moved => Applied::DeadLettered { reason: reason.clone(), order_failed: true },
                Kind::Reject(reason) if counted => {
                    Applied::DeadLettered { reason: reason.clone(), order_failed: moved }
                }
                Kind::Letter(reason) => Applied::DeadLettered { reason: reason.clone(), order_failed: false },
                Kind::Process(_) | Kind::Fail(_) | Kind::Reject(_) => Applied::Duplicate,
            });
        }
    }
    applied.into_iter().map(|a| a.ok_or_else(|| StoreError::from(conversion("one answer per message")))).collect()
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
        attempts: row.try_get::<i32, _>(4)?.unwrap_or_default().max(0) as u32,
    })
}

#[async_trait]
impl ProcessingStore for MssqlStore {
    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
        match self.with_conn(async |c| apply_batch(c, deliveries).await).await {
            // A duplicate key here is another consumer's commit of the same
            // inbox row or dead letter, seen where the lock hints are ignored
            // (Babelfish): done again, the batch finds it and counts a duplicate.
            Err(StoreError::Conflict(cause)) => Err(StoreError::Unavailable(cause)),
            other => other,
        }
    }

    async fn unsent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            Ok(rows(c, UNSENT_DEAD_LETTERS, &[&limit])
                .await?
                .iter()
                .map(dead_letter_from_row)
                .collect::<TdsResult<_>>()?)
        })
        .await
    }

    async fn mark_dead_letters_sent(&self, ids: &[String]) -> Result<u64, StoreError> {
        self.with_conn(async |c| {
            let mut marked = 0;
            for id in ids {
                marked += changed(c, MARK_DEAD_LETTER_SENT, &[id]).await?;
            }
            Ok(marked)
        })
        .await
    }

    async fn refuse_dead_letter(&self, id: &str, error: &str, give_up_at: u32) -> Result<bool, StoreError> {
        let error = truncate_utf16(error, LAST_ERROR_UNITS);
        let give_up = i32::try_from(give_up_at).unwrap_or(i32::MAX);
        self.with_conn(async |c| {
            let attempts = rows(c, REFUSE_DEAD_LETTER, &[&id, &error, &give_up]).await?;
            Ok(attempts.first().and_then(|r| r.get::<i32, _>(0)).is_some_and(|n| n >= give_up))
        })
        .await
    }

    async fn undeliverable_dead_letters(&self, limit: u32) -> Result<Vec<UndeliverableLetter>, StoreError> {
        let limit = i64::from(limit);
        self.with_conn(async |c| {
            let text = |row: &Row, i: usize| -> TdsResult<Option<String>> {
                Ok(row.try_get::<&str, _>(i)?.map(str::to_string))
            };
            let time = |row: &Row, i: usize| -> TdsResult<_> {
                Ok(utc(row.try_get::<NaiveDateTime, _>(i)?.ok_or_else(|| conversion("dead letter time"))?))
            };
            let read = |row: &Row| -> TdsResult<UndeliverableLetter> {
                Ok(UndeliverableLetter {
                    dead_letter_id: text(row, 0)?.ok_or_else(|| conversion("dead_letter_id"))?,
                    order_id: row.try_get::<i64, _>(1)?.map(OrderId),
                    reason: text(row, 2)?.unwrap_or_default(),
                    last_error: text(row, 3)?,
                    attempts: row.try_get::<i32, _>(4)?.unwrap_or_default().max(0) as u32,
                    created_at: time(row, 5)?,
                    undeliverable_at: time(row, 6)?,
                })
            };
            Ok(rows(c, UNDELIVERABLE_DEAD_LETTERS, &[&limit]).await?.iter().map(read).collect::<TdsResult<_>>()?)
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{OrderId, OutboxId};

    fn delivery(outbox_id: Option<OutboxId>, order_id: Option<i64>) -> Delivery {
        Delivery {
            dead_letter_id: format!("ID:{}", Uuid::new_v4()),
            outbox_id,
            order_id: order_id.map(OrderId),
            rejection: None,
            headers: Vec::new().into(),
            body: Default::default(),
        }
    }

    fn process() -> Kind {
        Kind::Process(Priced { unit_price: Decimal::ONE, total_price: Decimal::ONE })
    }

    /// A call sees each outbox id and each order once among the messages
    /// that may move an order; dead letters alone never split a batch.
    #[test]
    fn a_batch_is_one_call_unless_it_repeats_an_outbox_id_or_an_order() {
        let (x, y) = (OutboxId::new(), OutboxId::new());
        let deliveries = [
            delivery(Some(x), Some(1)),
            delivery(Some(y), Some(2)),
            delivery(Some(x), Some(1)),
            delivery(None, Some(2)),
            delivery(Some(x), Some(9)),
            delivery(None, Some(1)),
        ];
        let kinds = [process(), process(), process(), process(), Kind::Letter("stray".into()), process()];
        assert_eq!(rounds(&deliveries, &kinds), [vec![0, 1, 4], vec![2, 3], vec![5]]);
        let letter = delivery(None, None);
        let twice = [letter.clone(), delivery(None, None), letter];
        let kinds = [Kind::Letter("a".into()), Kind::Letter("b".into()), Kind::Letter("a".into())];
        assert_eq!(rounds(&twice, &kinds), [vec![0, 1], vec![2]], "a dead letter id once per call");
        let plain = [delivery(Some(x), Some(1)), delivery(Some(y), Some(2))];
        assert_eq!(rounds(&plain, &[process(), process()]), [vec![0, 1]]);
    }
}
