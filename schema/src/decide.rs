//! The consumer's decisions, written once for both backends: each backend
//! reads the facts inside its transaction and does what these functions say.
//!
//! Sequence for one valid message: order missing → nothing (no inbox row, so
//! a later delivery still counts); an outbox id that is no outbox row of that
//! order → nothing (a dead letter: only an order's own id may enter the inbox,
//! so a spoofed id can never make another order's message a duplicate);
//! outbox id already in the inbox → duplicate;
//! order already final → duplicate; unknown product → order failed; else the
//! order is priced ([`crate::pricing::price`]) and processed.

use rust_decimal::Decimal;

use crate::limits::{FAILURE_REASON_UNITS, truncate_utf16};
use crate::model::{OrderId, OrderStatus};
use crate::pricing::{Priced, price};
use crate::store::{Applied, Delivery, ProcessOutcome};

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
