//! Row types shared by the services: ids, order status, orders, products, outbox rows.
//!
//! These are storage shapes; the wire contract lives apart in `messages`.

use std::fmt;
use std::str::FromStr;

use chrono::{DateTime, Utc};
use rust_decimal::Decimal;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Primary key of an order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OrderId(pub i64);

impl fmt::Display for OrderId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// Primary key of an outbox row; sent as the `outbox-id` header and used as the
/// consumer's idempotency key (the broker's own `message-id` changes per send).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OutboxId(pub Uuid);

impl OutboxId {
    /// A new, time-ordered id.
    pub fn new() -> Self {
        Self(Uuid::now_v7())
    }
}

impl Default for OutboxId {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Display for OutboxId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl FromStr for OutboxId {
    type Err = uuid::Error;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Uuid::parse_str(s).map(Self)
    }
}

/// The one lower-case status vocabulary of an order.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OrderStatus {
    /// Saved with its outbox row; not yet confirmed by the broker.
    Pending,
    /// The broker confirmed the message (RECEIPT).
    Published,
    /// Priced and final.
    Processed,
    /// Final, with a reason (unknown product, invalid message, ...).
    Failed,
}

impl OrderStatus {
    /// The value stored in the `status` column.
    pub fn as_str(self) -> &'static str {
        match self {
            OrderStatus::Pending => "pending",
            OrderStatus::Published => "published",
            OrderStatus::Processed => "processed",
            OrderStatus::Failed => "failed",
        }
    }

    /// True once nothing will change the order any more.
    pub fn is_final(self) -> bool {
        matches!(self, OrderStatus::Processed | OrderStatus::Failed)
    }
}

impl fmt::Display for OrderStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for OrderStatus {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "pending" => Ok(OrderStatus::Pending),
            "published" => Ok(OrderStatus::Published),
            "processed" => Ok(OrderStatus::Processed),
            "failed" => Ok(OrderStatus::Failed),
            other => Err(format!("unknown order status {other:?}")),
        }
    }
}

/// A catalogue entry.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Product {
    /// Catalogue key, e.g. `P123`.
    pub product_id: String,
    /// Display name.
    pub name: String,
    /// Price before discount.
    pub list_price: Decimal,
}

/// A validated order as the producer hands it to the store.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewOrder {
    /// Trimmed, 1-100 characters.
    pub customer_name: String,
    /// An existing catalogue product.
    pub product_id: String,
    /// 1-1000.
    pub quantity: i32,
    /// Client-chosen key; the same key returns the same order.
    pub idempotency_key: Option<String>,
    /// W3C trace context of the request that placed the order.
    pub traceparent: Option<String>,
    /// W3C trace state of the request that placed the order.
    pub tracestate: Option<String>,
}

/// An order as stored.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Order {
    /// Primary key.
    pub order_id: OrderId,
    /// Customer's name.
    pub customer_name: String,
    /// Catalogue product.
    pub product_id: String,
    /// Units ordered.
    pub quantity: i32,
    /// Where the order is in its life.
    pub status: OrderStatus,
    /// Price per unit after discount, once processed.
    pub unit_price: Option<Decimal>,
    /// `unit_price × quantity`, once processed.
    pub total_price: Option<Decimal>,
    /// Why the order failed, if it did.
    pub failure_reason: Option<String>,
    /// When the order was saved (database clock, UTC).
    #[serde(serialize_with = "crate::timestamps::serialize")]
    pub created_at: DateTime<Utc>,
    /// When the order was priced or failed (database clock, UTC).
    #[serde(serialize_with = "crate::timestamps::serialize_option")]
    pub processed_at: Option<DateTime<Utc>>,
}

/// An outbox row leased by a relay.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutboxRow {
    /// Idempotency key of the message.
    pub outbox_id: OutboxId,
    /// The order the event is about.
    pub order_id: OrderId,
    /// e.g. `OrderPlacedV1`.
    pub event_type: String,
    /// The message body (JSON).
    pub payload: String,
    /// W3C trace context stored with the order.
    pub traceparent: Option<String>,
    /// W3C trace state stored with the order.
    pub tracestate: Option<String>,
    /// When the row was committed (database clock).
    pub created_at: DateTime<Utc>,
    /// Failed publish attempts so far.
    pub attempts: i32,
}
