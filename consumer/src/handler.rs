//! One delivery, start to verdict: parse and check the message, then the store's
//! unit of work (inbox + price + status) decides.
//!
//! Invariants: a store error is returned (transient: retry, never ACK); every
//! other problem is a permanent verdict carrying a human-readable reason, and
//! the order is marked `failed` with it wherever the order can be identified.

use std::str::FromStr;

use schema::messages::{MAX_BODY_BYTES, OUTBOX_ID_HEADER, OrderPlacedV1};
use schema::pricing::price;
use schema::{Order, OrderId, OutboxId, ProcessOutcome, ProcessingStore, StoreError};
use stomp::Frame;

/// Quantities the consumer accepts, as the producer validates them.
pub const QUANTITY_RANGE: std::ops::RangeInclusive<i64> = 1..=1000;

/// What to do with a delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Priced and final: ACK.
    Processed(Order),
    /// Already applied: ACK.
    Duplicate,
    /// Permanent failure: dead-letter with the reason, then ACK.
    DeadLetter {
        /// Why, for people.
        reason: String,
        /// Whether an order was marked `failed` with the reason.
        order_failed: bool,
    },
}

/// A message we cannot process, and the order it names if it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    pub reason: String,
    pub order_id: Option<i64>,
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    pub outbox_id: Option<OutboxId>,
    pub message: OrderPlacedV1,
}

/// Checks a delivery without touching the database.
pub fn parse(frame: &Frame) -> Result<Accepted, Rejection> {
    let reject = |reason: String, order_id: Option<i64>| Rejection { reason, order_id };
    if frame.body.len() > MAX_BODY_BYTES {
        return Err(reject(
            format!("message body of {} bytes exceeds the {MAX_BODY_BYTES}-byte limit", frame.body.len()),
            None,
        ));
    }
    let value: serde_json::Value = serde_json::from_slice(&frame.body)
        .map_err(|e| reject(format!("message body is not valid JSON: {e}"), None))?;
    let order_id = value.get("order_id").and_then(serde_json::Value::as_i64);
    let message: OrderPlacedV1 =
        serde_json::from_value(value).map_err(|e| reject(format!("invalid order message: {e}"), order_id))?;
    let header_id = match frame.get(OUTBOX_ID_HEADER) {
        Some(raw) => Some(
            OutboxId::from_str(raw.trim())
                .map_err(|_| reject(format!("invalid {OUTBOX_ID_HEADER} header {raw:?}"), order_id))?,
        ),
        None => None,
    };
    if !QUANTITY_RANGE.contains(&message.quantity) {
        return Err(reject(
            format!(
                "quantity {} is out of range {}-{}",
                message.quantity,
                QUANTITY_RANGE.start(),
                QUANTITY_RANGE.end()
            ),
            order_id,
        ));
    }
    if message.order_id <= 0 {
        return Err(reject(format!("order_id {} is not a valid order id", message.order_id), None));
    }
    Ok(Accepted { outbox_id: header_id.or(message.outbox_id), message })
}

/// Handles a batch of deliveries: checks each, fails the orders of bad ones
/// (each in its own transaction; rare), then applies all good ones in one
/// store transaction. One verdict per frame, in order.
pub async fn handle_batch(store: &dyn ProcessingStore, frames: &[Frame]) -> Result<Vec<Verdict>, StoreError> {
    let mut verdicts: Vec<Option<Verdict>> = vec![None; frames.len()];
    let mut accepted = Vec::with_capacity(frames.len());
    for (i, frame) in frames.iter().enumerate() {
        match parse(frame) {
            Ok(ok) => accepted.push((i, ok)),
            Err(Rejection { reason, order_id }) => {
                let outbox_id = frame.get(OUTBOX_ID_HEADER).and_then(|h| OutboxId::from_str(h.trim()).ok());
                let order_failed = match order_id {
                    Some(id) if id > 0 => store.fail_order(outbox_id, OrderId(id), &reason).await?,
                    _ => false,
                };
                verdicts[i] = Some(Verdict::DeadLetter { reason, order_failed });
            }
        }
    }
    let items: Vec<(Option<OutboxId>, OrderId)> =
        accepted.iter().map(|(_, a)| (a.outbox_id, OrderId(a.message.order_id))).collect();
    let outcomes = match items.is_empty() {
        true => Vec::new(),
        false => store.process_orders(&items, price).await?,
    };
    for ((i, a), outcome) in accepted.into_iter().zip(outcomes) {
        let order_id = a.message.order_id;
        verdicts[i] = Some(match outcome {
            ProcessOutcome::Processed(order) => Verdict::Processed(order),
            ProcessOutcome::Duplicate => Verdict::Duplicate,
            ProcessOutcome::OrderNotFound => {
                Verdict::DeadLetter { reason: format!("order {order_id} not found"), order_failed: false }
            }
            ProcessOutcome::Failed(reason) => Verdict::DeadLetter { reason, order_failed: true },
        });
    }
    verdicts.into_iter().map(|v| v.ok_or_else(|| StoreError::Other("a message got no verdict".into()))).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &str) -> Frame {
        Frame::new("MESSAGE").body(body.to_string())
    }

    fn reason(body: &str) -> Rejection {
        parse(&frame(body)).unwrap_err()
    }

    #[test]
    fn a_seed_style_message_is_accepted_without_an_outbox_id() {
        let ok =
            parse(&frame(r#"{"order_id": 1, "customer_name": "Ajay", "product_id": "P123", "quantity": 2}"#)).unwrap();
        assert_eq!(ok.outbox_id, None);
        assert_eq!(ok.message.quantity, 2);
    }

    #[test]
    fn the_outbox_id_header_wins_over_the_body() {
        let id = "0193a0b4-7c1e-7a2b-9c3d-4e5f60718293";
        let f = frame(r#"{"order_id": 1, "customer_name": "A", "product_id": "P123", "quantity": 2}"#)
            .header(OUTBOX_ID_HEADER, id);
        assert_eq!(parse(&f).unwrap().outbox_id.unwrap().to_string(), id);
    }

    #[test]
    fn non_json_is_rejected_without_an_order() {
        let r = reason("not json at all");
        assert!(r.reason.starts_with("message body is not valid JSON"), "{}", r.reason);
        assert_eq!(r.order_id, None);
    }

    #[test]
    fn a_missing_field_names_the_field_and_the_order() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "quantity": 2}"#);
        assert!(r.reason.contains("missing field `product_id`"), "{}", r.reason);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn a_wrong_type_is_rejected() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": "two"}"#);
        assert!(r.reason.contains("invalid type"), "{}", r.reason);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn quantity_out_of_range_is_rejected() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": 0}"#);
        assert_eq!(r.reason, "quantity 0 is out of range 1-1000");
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": 1001}"#);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn an_oversized_body_is_rejected() {
        let big = format!(r#"{{"order_id": 5, "pad": "{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert!(reason(&big).reason.contains("exceeds"));
    }

    #[test]
    fn a_bad_outbox_id_header_is_rejected() {
        let f = frame(r#"{"order_id": 1, "customer_name": "A", "product_id": "P123", "quantity": 2}"#)
            .header(OUTBOX_ID_HEADER, "nope");
        assert!(parse(&f).unwrap_err().reason.contains("invalid outbox-id header"));
    }
}
