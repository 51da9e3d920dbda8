//! The producer's role ([`OrderStore`]) and the per-status counts of orders.
//!
//! Invariant: an order and its outbox row are written in one transaction, and
//! every transaction that moves an order between statuses moves its counter
//! too ([`Moves`]), so the counts are read in O(1) and stay true.

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use tokio::sync::oneshot;

use super::StoreError;
use crate::model::{NewOrder, Order, OrderId, OrderStatus, Product};

/// Result of placing an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// A new order and its outbox row were committed.
    Created(Order),
    /// The idempotency key was seen before: this is the order it created.
    Existing(Order),
}

/// Where the outcome of one queued order goes: the hook told of a created
/// order, then the caller, who may have given up waiting.
pub(crate) struct Answer {
    reply: oneshot::Sender<Result<Placed, StoreError>>,
    on_created: Box<dyn FnOnce(&Order) + Send>,
}

impl Answer {
    /// The answer the writer sends, and the receiver its caller awaits.
    pub(crate) fn new(
        on_created: Box<dyn FnOnce(&Order) + Send>,
    ) -> (Answer, oneshot::Receiver<Result<Placed, StoreError>>) {
        let (reply, answer) = oneshot::channel();
        (Answer { reply, on_created }, answer)
    }

    /// Called by a backend's writer once `result` is committed (or failed):
    /// a created order is told to the hook before its caller hears, so that
    /// whatever the hook counts is never behind an answer, and is told even
    /// when the caller has gone. An existing order (a replayed key) is not.
    pub(crate) fn send(self, result: Result<Placed, StoreError>) {
        if let Ok(Placed::Created(order)) = &result {
            (self.on_created)(order);
        }
        let _ = self.reply.send(result);
    }
}

/// How many orders are in each status.
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct OrderCounts {
    /// `pending`
    pub pending: i64,
    /// `published`
    pub published: i64,
    /// `processed`
    pub processed: i64,
    /// `failed`
    pub failed: i64,
}

/// Adds `n` orders of `status` to the counts (unknown statuses are ignored).
pub(crate) fn add_count(counts: &mut OrderCounts, status: &str, n: i64) {
    match status {
        "pending" => counts.pending += n,
        "published" => counts.published += n,
        "processed" => counts.processed += n,
        "failed" => counts.failed += n,
        _ => {}
    }
}

/// How one transaction moved orders between statuses, for the per-status
/// counters (`order_counts`) it updates before it commits, so that reading the
/// counts costs O(1) however long the history.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Moves([i64; 4]);

impl Moves {
    const STATUSES: [OrderStatus; 4] =
        [OrderStatus::Pending, OrderStatus::Published, OrderStatus::Processed, OrderStatus::Failed];

    fn slot(status: OrderStatus) -> usize {
        Self::STATUSES.iter().position(|s| *s == status).expect("every status has a slot")
    }

    /// `n` new orders in `status`.
    pub(crate) fn add(&mut self, status: OrderStatus, n: i64) {
        self.0[Self::slot(status)] += n;
    }

    /// `n` orders moved from one status to another.
    pub(crate) fn moved(&mut self, from: OrderStatus, to: OrderStatus, n: i64) {
        self.add(from, -n);
        self.add(to, n);
    }

    /// The change of every status, in the order pending, published, processed, failed.
    pub(crate) fn deltas(&self) -> [i64; 4] {
        self.0
    }

    /// True when no count changed.
    pub(crate) fn is_empty(&self) -> bool {
        self.0.iter().all(|n| *n == 0)
    }
}

/// The producer's unit of work: the order and its outbox row together.
#[async_trait]
pub trait OrderStore: Send + Sync {
    /// The catalogue, ordered by product id.
    async fn products(&self) -> Result<Vec<Product>, StoreError>;
    /// One product, or `NotFound`.
    async fn product(&self, product_id: &str) -> Result<Product, StoreError>;
    /// Writes the order and its `OrderPlacedV1` outbox row in one transaction.
    /// Cancel-safe: once queued, the order is written by the store's own task,
    /// so dropping the future never cuts a database call in half.
    async fn place_order(&self, order: NewOrder) -> Result<Placed, StoreError> {
        self.place_order_then(order, Box::new(|_| {})).await
    }
    /// [`OrderStore::place_order`], and `on_created` is called with the new
    /// order by the store's own task the moment it commits, before the answer
    /// is sent: also when this future was dropped after the order was queued
    /// (a client that hung up), and never for a replayed key
    /// ([`Placed::Existing`]) or an order that failed. It runs on the writer:
    /// keep it short (a counter, a log line).
    async fn place_order_then(
        &self,
        order: NewOrder,
        on_created: Box<dyn for<'o> FnOnce(&'o Order) + Send>,
    ) -> Result<Placed, StoreError>;
    /// One order, or `NotFound`.
    async fn order(&self, order_id: OrderId) -> Result<Order, StoreError>;
    /// The most recent orders, newest first.
    async fn recent_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError>;
    /// Orders per status (for load tests and dashboards).
    async fn order_counts(&self) -> Result<OrderCounts, StoreError>;
    /// The most recent failed orders, newest first.
    async fn failed_orders(&self, limit: u32) -> Result<Vec<Order>, StoreError>;
    /// When the broker last confirmed one of the order's messages; `None` if
    /// never, or if retention has deleted its outbox rows.
    async fn published_at(&self, order_id: OrderId) -> Result<Option<DateTime<Utc>>, StoreError>;
}
