//! The wire contract on the order queue (`stomp::ORDER_QUEUE`).
//!
//! Invariant: the JSON body is a superset of the seed's
//! `{"order_id","customer_name","product_id","quantity"}`. Fields may be added
//! (optional), never renamed or retyped; a breaking change is a new version.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};

use crate::model::{Order, OutboxId};

/// `event_type` of outbox rows carrying [`OrderPlacedV1`].
pub const ORDER_PLACED_V1: &str = "OrderPlacedV1";
/// STOMP header carrying the outbox id (the idempotency key).
pub const OUTBOX_ID_HEADER: &str = "outbox-id";
/// STOMP header carrying the order id.
pub const ORDER_ID_HEADER: &str = "order-id";
/// STOMP header carrying the event type.
pub const EVENT_TYPE_HEADER: &str = "event-type";
/// Largest message body the consumer accepts.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// "An order was placed": the seed's four fields plus optional extras.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderPlacedV1 {
    /// The order's primary key.
    pub order_id: i64,
    /// Customer's name.
    pub customer_name: String,
    /// Catalogue product.
    pub product_id: String,
    /// Units ordered.
    pub quantity: i64,
    /// Contract version; absent in seed-style messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub version: Option<u32>,
    /// Outbox id, also sent as a header; absent in seed-style messages.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outbox_id: Option<OutboxId>,
    /// When the order was placed; absent in seed-style messages.
    #[serde(default, skip_serializing_if = "Option::is_none", serialize_with = "crate::timestamps::serialize_option")]
    pub created_at: Option<DateTime<Utc>>,
}

impl OrderPlacedV1 {
    /// The event for a freshly stored order.
    pub fn for_order(order: &Order, outbox_id: OutboxId) -> Self {
        Self {
            order_id: order.order_id.0,
            customer_name: order.customer_name.clone(),
            product_id: order.product_id.clone(),
            quantity: i64::from(order.quantity),
            version: Some(1),
            outbox_id: Some(outbox_id),
            created_at: Some(order.created_at),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;
    use std::str::FromStr;

    fn sample() -> OrderPlacedV1 {
        OrderPlacedV1 {
            order_id: 1,
            customer_name: "Ajay".into(),
            product_id: "P123".into(),
            quantity: 2,
            version: Some(1),
            outbox_id: Some(OutboxId::from_str("0193a0b4-7c1e-7a2b-9c3d-4e5f60718293").unwrap()),
            created_at: Some(Utc.with_ymd_and_hms(2026, 11, 25, 12, 0, 0).unwrap()),
        }
    }

    #[test]
    fn json_snapshot_is_a_superset_of_the_seed() {
        let json = serde_json::to_string(&sample()).unwrap();
        assert_eq!(
            json,
            r#"{"order_id":1,"customer_name":"Ajay","product_id":"P123","quantity":2,"version":1,"outbox_id":"0193a0b4-7c1e-7a2b-9c3d-4e5f60718293","created_at":"2026-11-25T12:00:00Z"}"#
        );
    }

    #[test]
    fn seed_style_message_parses() {
        let msg: OrderPlacedV1 =
            serde_json::from_str(r#"{"order_id": 1, "customer_name": "Ajay", "product_id": "P123", "quantity": 2}"#)
                .unwrap();
        assert_eq!(msg.order_id, 1);
        assert_eq!(msg.quantity, 2);
        assert_eq!(msg.outbox_id, None);
        assert_eq!(msg.version, None);
    }

    #[test]
    fn unknown_fields_are_tolerated() {
        let msg: Result<OrderPlacedV1, _> = serde_json::from_str(
            r#"{"order_id": 7, "customer_name": "A", "product_id": "P1", "quantity": 1, "coupon": "X"}"#,
        );
        assert!(msg.is_ok());
    }

    #[test]
    fn wrong_types_are_rejected() {
        let msg: Result<OrderPlacedV1, _> =
            serde_json::from_str(r#"{"order_id": "one", "customer_name": "A", "product_id": "P1", "quantity": 1}"#);
        assert!(msg.is_err());
    }
}
