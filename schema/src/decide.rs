//! The rules both backends follow, written once: each backend reads the facts
//! inside its transaction and does what these functions say, so that the two
//! differ only in their driver calls.
//!
//! The consumer's sequence
//! for one valid message: order missing → nothing (no inbox row, so
//! a later delivery still counts); an outbox id that is no outbox row of that
//! order → nothing (a dead letter: only an order's own id may enter the inbox,
//! so a spoofed id can never make another order's message a duplicate);
//! outbox id already in the inbox → duplicate;
//! order already final → duplicate; unknown product → order failed; else the
//! order is priced ([`crate::pricing::price`]) and processed.

use rust_decimal::Decimal;

use crate::limits::{DEAD_LETTER_ID_UNITS, DEAD_LETTER_REASON_UNITS, FAILURE_REASON_UNITS, truncate_utf16};
use crate::model::{Order, OrderId, OrderStatus, OutboxId};
use crate::pricing::{Priced, price};
use crate::store::{Applied, Cause, Delivery, FailureOutcome, StoreError};

/// What the consumer's unit of work did with one message whose order it
/// looked up (the step before [`settle`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ProcessOutcome {
    /// Priced and final; the inbox row was written in the same transaction.
    Processed(Order),
    /// Already applied (inbox hit, or the order is already final): nothing changed.
    Duplicate,
    /// The order does not exist; nothing changed.
    OrderNotFound,
    /// The order was marked `failed` with this reason (e.g. unknown product).
    Failed(String),
    /// The outbox id is no outbox row of this order (a stray or spoofed
    /// message): nothing changed, and the id did not enter the inbox.
    NotItsOutboxId(OutboxId),
}

/// What the database holds of the order a message names.
pub(crate) struct OrderFacts {
    pub status: OrderStatus,
    pub quantity: i32,
    pub product_id: String,
    /// `None` when the product is not in the catalogue.
    pub list_price: Option<Decimal>,
}

/// What to do with a message whose order exists.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decision {
    /// Already done: change nothing.
    Duplicate,
    /// Mark the order failed with this reason.
    Fail(String),
    /// Price the order and move it from its status to `processed`.
    Process { from: OrderStatus, priced: Priced },
}

/// The decision for a message whose order is `order`; `first_delivery` is
/// false when the inbox already held its outbox id (a seed-style message
/// without one is always a first delivery: the status guard dedupes it).
pub(crate) fn decide(order: &OrderFacts, first_delivery: bool) -> Decision {
    if !first_delivery || order.status.is_final() {
        return Decision::Duplicate;
    }
    verdict(order)
}

/// What a first delivery does to `order` while it is not final: fail it for
/// an unknown product, or price it. (SQL Server's batch call takes this for
/// every message and re-checks the status itself, `mssql/processing.rs`.)
pub(crate) fn verdict(order: &OrderFacts) -> Decision {
    match order.list_price {
        None => Decision::Fail(
            truncate_utf16(&format!("unknown product {}", order.product_id), FAILURE_REASON_UNITS).to_string(),
        ),
        Some(list_price) => Decision::Process { from: order.status, priced: price(list_price, order.quantity) },
    }
}

/// The order a delivery may be processed for, or why it is rejected.
pub(crate) fn order_of(delivery: &Delivery) -> Result<OrderId, &str> {
    match (&delivery.rejection, delivery.order_id) {
        (Some(reason), _) => Err(reason),
        (None, None) => Err("the message names no order"),
        (None, Some(order_id)) => Ok(order_id),
    }
}

/// What a valid delivery's outcome means for its message: settled, or a dead
/// letter with its reason and whether the order was failed.
pub(crate) fn settle(outcome: ProcessOutcome, order_id: OrderId) -> Result<Applied, (String, bool)> {
    match outcome {
        ProcessOutcome::Processed(order) => Ok(Applied::Processed(order)),
        ProcessOutcome::Duplicate => Ok(Applied::Duplicate),
        ProcessOutcome::OrderNotFound => Err((format!("order {order_id} not found"), false)),
        ProcessOutcome::Failed(reason) => Err((reason, true)),
        ProcessOutcome::NotItsOutboxId(id) => {
            Err((format!("outbox-id {id} is not an outbox message of order {order_id}"), false))
        }
    }
}

/// A rejected delivery (one that failed its checks) may fail an order only
/// when it names both the order and an outbox id, and that id is an outbox
/// row of that order (checked by the backend): these two, when named.
pub(crate) fn own_ids(delivery: &Delivery) -> Option<(OutboxId, OrderId)> {
    delivery.outbox_id.zip(delivery.order_id)
}

/// A failure reason cut to fit `orders.failure_reason`.
pub(crate) fn failure_reason(reason: &str) -> &str {
    truncate_utf16(reason, FAILURE_REASON_UNITS)
}

/// A dead letter as both backends store it: its id and reason cut to fit
/// their columns, its headers as JSON.
pub(crate) struct DeadLetterRow<'a> {
    pub id: &'a str,
    pub order_id: Option<OrderId>,
    pub reason: &'a str,
    pub headers: String,
}

/// The dead letter of `delivery`, parked for `reason`.
pub(crate) fn dead_letter<'a>(delivery: &'a Delivery, reason: &'a str) -> Result<DeadLetterRow<'a>, StoreError> {
    Ok(DeadLetterRow {
        id: truncate_utf16(&delivery.dead_letter_id, DEAD_LETTER_ID_UNITS),
        order_id: delivery.order_id,
        reason: truncate_utf16(reason, DEAD_LETTER_REASON_UNITS),
        headers: serde_json::to_string(&*delivery.headers).map_err(|e| StoreError::Other(Cause::new(e)))?,
    })
}

/// What counting a failed publish did: nothing when the caller no longer
/// leased the row (`None`: no row changed), else whether the row was parked.
pub(crate) fn failure_outcome(parked: Option<bool>) -> FailureOutcome {
    match parked {
        None => FailureOutcome::LeaseLost,
        Some(true) => FailureOutcome::Parked,
        Some(false) => FailureOutcome::Retrying,
    }
}

/// Why an order was not retried, given what it is (`None`: no such order):
/// only a `failed` order is.
pub(crate) fn not_retried(order_id: OrderId, order: Option<Order>) -> StoreError {
    match order {
        None => StoreError::NotFound,
        Some(o) => StoreError::Conflict(Cause::msg(format!("order {order_id} is {}, not failed", o.status))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn order(status: OrderStatus, list_price: Option<&str>) -> OrderFacts {
        OrderFacts { status, quantity: 2, product_id: "P9".into(), list_price: list_price.map(|p| p.parse().unwrap()) }
    }

    #[test]
    fn each_step_of_the_sequence() {
        let open = order(OrderStatus::Published, Some("100.00"));
        assert_eq!(decide(&open, false), Decision::Duplicate, "the inbox had it");
        assert_eq!(decide(&order(OrderStatus::Processed, Some("100.00")), true), Decision::Duplicate);
        assert_eq!(decide(&order(OrderStatus::Failed, None), true), Decision::Duplicate, "final wins");
        assert_eq!(decide(&order(OrderStatus::Pending, None), true), Decision::Fail("unknown product P9".into()));
        let Decision::Process { from, priced } = decide(&open, true) else { panic!("processed") };
        assert_eq!(
            (from, priced.unit_price.to_string(), priced.total_price.to_string()),
            (open.status, "90.00".into(), "180.00".into())
        );
    }
}
