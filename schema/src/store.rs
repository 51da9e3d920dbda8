//! Storage role traits and their error type.
//!
//! Invariant: each method is one whole unit of work (its own transaction), and
//! errors say what the caller can do: not found, duplicate, retry, give up.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};
use error_reporter::Report;

use crate::incidents::IncidentAdmin;
use crate::model::{NewOrder, Order, OrderId, OrderStatus, OutboxId, OutboxRow, Product};

/// What went wrong in the store, phrased as what the caller can do about it.
///
/// Each variant's `Display` names only the class; the database's own error is
/// its [`source`](std::error::Error::source). Show it to people through
/// [`Report`] (`database unavailable: sqlite pool: timed out ...`).
#[derive(Debug, Clone, thiserror::Error)]
pub enum StoreError {
    /// The row does not exist.
    #[error("not found")]
    NotFound,
    /// A unique key already exists, or the row is not in the state the call needs.
    #[error("conflict")]
    Conflict(#[source] Cause),
    /// Transient: the database is unreachable, busy, or chose us as a deadlock victim. Retry.
    #[error("database unavailable")]
    Unavailable(#[source] Cause),
    /// Permanent: the data breaks a rule of the database (a text too long, a
    /// value out of range, a constraint). The same call fails the same way again.
    #[error("rejected by the database")]
    Invalid(#[source] Cause),
    /// Anything else; retrying will not help.
    #[error("database error")]
    Other(#[source] Cause),
}

impl StoreError {
    /// True when retrying the same call later may succeed.
    pub fn is_transient(&self) -> bool {
        matches!(self, StoreError::Unavailable(_))
    }

    /// The HTTP status and message an operator route answers with; the cause
    /// of an unexpected failure (500) is logged here, never shown.
    pub fn operator_answer(&self) -> (u16, String) {
        match self {
            StoreError::NotFound => (404, "not found".into()),
            StoreError::Conflict(cause) => (409, Report::new(cause).to_string()),
            StoreError::Invalid(cause) => (422, Report::new(cause).to_string()),
            StoreError::Unavailable(_) => (503, Report::new(self).to_string()),
            StoreError::Other(_) => {
                tracing::error!(error = %Report::new(self), "operator request failed");
                (500, "internal error".into())
            }
        }
    }
}

/// The error beneath a [`StoreError`], whole with its own sources; shared, so
/// that the error stays `Clone` (a group commit answers every order with it).
#[derive(Clone)]
pub struct Cause(Arc<anyhow::Error>);

impl Cause {
    /// Keeps `error` (a driver error, or an `anyhow` chain with context).
    pub fn new(error: impl Into<anyhow::Error>) -> Self {
        Self(Arc::new(error.into()))
    }

    /// A cause that is only a message.
    pub fn msg(message: impl fmt::Display + fmt::Debug + Send + Sync + 'static) -> Self {
        Self::new(anyhow::Error::msg(message))
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&**self.0, f)
    }
}

impl fmt::Debug for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&**self.0, f)
    }
}

impl std::error::Error for Cause {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.0.source()
    }
}

/// Result of placing an order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Placed {
    /// A new order and its outbox row were committed.
    Created(Order),
    /// The idempotency key was seen before: this is the order it created.
    Existing(Order),
}

/// Result of recording a failed publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FailureOutcome {
    /// The row will be retried at its next attempt time.
    Retrying,
    /// The row hit the attempt cap and was parked (`dead_at`).
    Parked,
    /// The row is no longer leased by the caller (its lease lapsed and another
    /// relay took it, or it was published): nothing was counted.
    LeaseLost,
}

/// Backlog figures for the relay's gauges.
#[derive(Debug, Clone, Copy, PartialEq, Default, serde::Serialize)]
pub struct OutboxStats {
    /// Rows neither published nor parked.
    pub pending: i64,
    /// Age in seconds of the oldest such row (0 when none).
    pub oldest_pending_seconds: f64,
    /// Parked rows.
    pub parked: i64,
}

/// A parked outbox row, for operators.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct ParkedRow {
    /// The row.
    pub outbox_id: OutboxId,
    /// Its order.
    pub order_id: OrderId,
    /// Failed attempts.
    pub attempts: i32,
    /// The broker's last answer.
    pub last_error: Option<String>,
    /// When the row was committed.
    pub created_at: chrono::DateTime<chrono::Utc>,
    /// When it was parked.
    pub dead_at: chrono::DateTime<chrono::Utc>,
}

/// Which parked rows to requeue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RequeueTarget {
    /// One row.
    Outbox(OutboxId),
    /// Every parked row of one order.
    Order(OrderId),
    /// Every parked row (for the day a whole class was parked by mistake).
    All,
}

/// One row of `outbox_audit`: an operator's or the reconciler's action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// The row acted on; the nil id for relay-wide actions (pause, resume, drain).
    pub outbox_id: OutboxId,
    /// Its order; 0 for relay-wide actions.
    pub order_id: OrderId,
    /// `requeue`, `retry`, `repair`, `pause`, ...
    pub action: String,
    /// Who asked.
    pub requested_by: String,
    /// When (database clock).
    pub requested_at: DateTime<Utc>,
}

/// Findings of the reconciliation sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Reconciliation {
    /// Orders `pending` with no outbox row at all: they would never be published.
    pub pending_without_outbox: i64,
    /// Orders `published` and not processed, whose last publication (not their
    /// creation: a backlog after an outage is not stuck) is older than the threshold.
    pub published_not_processed: i64,
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
    async fn place_order(&self, order: NewOrder) -> Result<Placed, StoreError>;
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

/// The relay's hot path: lease, confirm, count failures, give back.
#[async_trait]
pub trait OutboxStore: Send + Sync {
    /// Leases up to `limit` due rows for `owner` until `lease` from now (database clock).
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError>;
    /// Marks rows published, whoever leases them now (the broker's receipt
    /// proves the message is on the queue; sending it again would only
    /// duplicate), clears any park mark, and moves their orders `pending →
    /// published`, never overwriting a later status. Returns the rows marked.
    async fn mark_published(&self, ids: &[OutboxId]) -> Result<u64, StoreError>;
    /// Counts a failed attempt of a row `owner` leases; parks the row once
    /// `attempts >= max_attempts`, else makes it due again after `retry_in`.
    /// `LeaseLost` (nothing counted) when `owner` no longer holds the lease.
    async fn record_failure(
        &self,
        owner: &str,
        id: OutboxId,
        error: &str,
        retry_in: Duration,
        max_attempts: i32,
    ) -> Result<FailureOutcome, StoreError>;
    /// Gives back every lease `owner` holds, so another relay may take the rows at once.
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;
    /// Backlog figures.
    async fn outbox_stats(&self) -> Result<OutboxStats, StoreError>;
}

/// Administration of the outbox: parked rows, requeues, retention,
/// reconciliation and repair, the audit trail.
#[async_trait]
pub trait OutboxAdmin: Send + Sync {
    /// Parked rows, most recently parked first.
    async fn parked_rows(&self, limit: u32) -> Result<Vec<ParkedRow>, StoreError>;
    /// Makes parked rows due again (attempts reset) and records who asked, in
    /// one transaction. Returns the rows requeued.
    async fn requeue(&self, target: RequeueTarget, requested_by: &str) -> Result<Vec<OutboxId>, StoreError>;
    /// Deletes up to `limit` outbox rows published more than `older_than` ago; returns how many.
    async fn purge_published(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError>;
    /// Deletes up to `limit` inbox rows recorded more than `older_than` ago; returns how many.
    async fn purge_inbox(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError>;
    /// Deletes up to `limit` dead letters sent more than `older_than` ago; returns how many.
    async fn purge_dead_letters(&self, older_than: Duration, limit: u32) -> Result<u64, StoreError>;
    /// Counts orders that look stuck.
    async fn reconcile(&self, published_for: Duration) -> Result<Reconciliation, StoreError>;
    /// Self-healing: for up to `limit` orders counted in
    /// `published_not_processed`, makes the order's last outbox row due again
    /// (or writes a fresh one when retention has deleted it) and records a
    /// `repair` audit entry by `requested_by`, in one transaction. The consumer
    /// dedupes a message that was only late. Returns the (order, row) repaired.
    async fn repair_stuck(
        &self,
        published_for: Duration,
        limit: u32,
        requested_by: &str,
    ) -> Result<Vec<(OrderId, OutboxId)>, StoreError>;
    /// The most recent audit entries, newest first.
    async fn recent_audit(&self, limit: u32) -> Result<Vec<AuditEntry>, StoreError>;
    /// The most recent dead letters, newest first, with whether each reached the dead-letter queue.
    async fn recent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetterEntry>, StoreError>;
    /// Records a relay-wide operator action (`pause`, `resume`, `drain`).
    async fn record_action(&self, action: &str, requested_by: &str) -> Result<(), StoreError>;
    /// Puts a `failed` order back to `pending` with a fresh outbox row (a new
    /// idempotency key), recording who asked. `Conflict` unless the order is `failed`.
    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError>;
}

/// One delivery as the consumer's unit of work sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Delivery {
    /// Recognises a repeat of the same message: the broker's message id (kept
    /// across redeliveries), else its outbox id, else a fresh id.
    pub dead_letter_id: String,
    /// The `outbox-id` header (or body field) when it is a UUID.
    pub outbox_id: Option<OutboxId>,
    /// The order the message names, when it names one.
    pub order_id: Option<OrderId>,
    /// Why the message failed its checks; `None` for a valid message.
    pub rejection: Option<String>,
    /// The original headers, for the dead-letter copy.
    pub headers: Vec<(String, String)>,
    /// The original body, for the dead-letter copy.
    pub body: Vec<u8>,
}

/// What the consumer's unit of work did with one delivery.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Applied {
    /// Priced and final; the inbox row was written in the same transaction.
    Processed(Order),
    /// Already applied (inbox hit, or the order is already final): nothing changed.
    Duplicate,
    /// Recorded as a dead letter (in the same transaction) with this reason;
    /// `order_failed` when its order was marked `failed` with it.
    DeadLettered {
        /// Why, for people.
        reason: String,
        /// Whether an order was marked `failed`.
        order_failed: bool,
    },
}

/// A dead letter waiting to be published to the dead-letter queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    /// Its key (see [`Delivery::dead_letter_id`]); sent as the `dlq-id` header.
    pub dead_letter_id: String,
    /// Why the message was parked.
    pub reason: String,
    /// The original headers.
    pub headers: Vec<(String, String)>,
    /// The original body.
    pub body: Vec<u8>,
    /// Times the broker refused it or its send ended without a receipt.
    pub attempts: u32,
}

/// A dead letter as operators see it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct DeadLetterEntry {
    /// Its key, the `dlq-id` it carries on the dead-letter queue.
    pub dead_letter_id: String,
    /// The order the message named, if any.
    pub order_id: Option<OrderId>,
    /// Why the message was parked.
    pub reason: String,
    /// When the message was parked.
    pub created_at: DateTime<Utc>,
    /// When it reached the dead-letter queue; `None` while it waits or once set aside.
    pub sent_at: Option<DateTime<Utc>>,
    /// When the broker's refusals set it aside.
    pub undeliverable_at: Option<DateTime<Utc>>,
    /// When an operator replayed it (its order sent again).
    pub replayed_at: Option<DateTime<Utc>>,
}

/// A dead letter the broker refused until it was set aside: kept, listed for
/// operators, never again sent ahead of the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct UndeliverableLetter {
    /// Its key, the `dlq-id` it would have carried.
    pub dead_letter_id: String,
    /// The order the message named, if any.
    pub order_id: Option<OrderId>,
    /// Why the message was parked.
    pub reason: String,
    /// The broker's answer to the last send.
    pub last_error: Option<String>,
    /// Sends that ended without a receipt.
    pub attempts: u32,
    /// When the message was parked.
    pub created_at: DateTime<Utc>,
    /// When it was set aside.
    pub undeliverable_at: DateTime<Utc>,
}

/// The consumer's unit of work: dedupe, price, finalise, record dead letters.
#[async_trait]
pub trait ProcessingStore: Send + Sync {
    /// The consumer's whole batch in one transaction, one outcome per delivery.
    /// A valid delivery: looks up the order and its product's list price,
    /// records `outbox_id` in the inbox (a duplicate means "already done"),
    /// prices the order ([`crate::pricing::price`]) and sets it `processed`,
    /// guarded by its status; an unknown product marks the order `failed`
    /// instead; an unknown order changes nothing. A rejected one changes no order unless it is the order's own
    /// outbox message (its outbox id names an outbox row of that order): then
    /// the order is marked `failed` and the outbox id recorded in the inbox.
    /// Every delivery that ends as a dead letter (rejected, unknown order,
    /// unknown product) is recorded in `dead_letters` in the same transaction,
    /// once per `dead_letter_id`, for [`ProcessingStore::unsent_dead_letters`].
    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError>;
    /// Dead letters not yet confirmed on the dead-letter queue, oldest first.
    async fn unsent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError>;
    /// Records that the broker confirmed these dead letters; returns how many were marked.
    async fn mark_dead_letters_sent(&self, ids: &[String]) -> Result<u64, StoreError>;
    /// Counts a refused send of an unsent letter, with the broker's error; at
    /// `give_up_at` attempts it is set aside as undeliverable. True when it is now.
    async fn refuse_dead_letter(&self, id: &str, error: &str, give_up_at: u32) -> Result<bool, StoreError>;
    /// The letters set aside, newest first.
    async fn undeliverable_dead_letters(&self, limit: u32) -> Result<Vec<UndeliverableLetter>, StoreError>;
}

/// Everything a backend offers; each service takes the role it needs.
pub trait Store: OrderStore + OutboxStore + OutboxAdmin + ProcessingStore + IncidentAdmin {}

impl<T: OrderStore + OutboxStore + OutboxAdmin + ProcessingStore + IncidentAdmin> Store for T {}
