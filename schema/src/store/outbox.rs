//! The relay's roles: the outbox's hot path ([`OutboxStore`]) and its
//! administration ([`OutboxAdmin`]), with their types.
//!
//! Invariant: a row is marked published only on the broker's receipt, and
//! every operator action on the outbox leaves an audit row in the same
//! transaction.

use std::time::Duration;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use super::{DeadLetterEntry, StoreError};
use crate::model::{OrderId, OutboxId, OutboxRow};

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
    pub created_at: DateTime<Utc>,
    /// When it was parked.
    pub dead_at: DateTime<Utc>,
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

/// A publish the broker refused (an ERROR naming the row's frame), for
/// [`OutboxStore::record_failure`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct FailedAttempt<'a> {
    /// The relay that leased the row: nothing is counted unless it still does.
    pub owner: &'a str,
    /// The row.
    pub outbox_id: OutboxId,
    /// The broker's answer.
    pub error: &'a str,
    /// When the row is due again, unless it is parked.
    pub retry_in: Duration,
    /// The attempts at which the row is parked.
    pub max_attempts: i32,
}

/// What an `outbox_audit` row records.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuditAction {
    /// Parked rows made due again ([`OutboxAdmin::requeue`]).
    Requeue,
    /// A failed order sent again ([`OutboxAdmin::retry_failed_order`], a group retry).
    Retry,
    /// A stuck order sent again by the reconciler ([`OutboxAdmin::repair_stuck`]).
    Repair,
    /// A dead letter's order sent again (`IncidentAdmin`'s replays).
    Replay,
    /// The relay paused (relay-wide).
    Pause,
    /// The relay resumed (relay-wide).
    Resume,
    /// The relay gave back its leases and paused (relay-wide).
    Drain,
    /// Sent dead letters purged (relay-wide).
    PurgeDeadLetters,
}

impl AuditAction {
    /// As stored in `outbox_audit.action`, and shown to operators.
    pub fn as_str(self) -> &'static str {
        match self {
            AuditAction::Requeue => "requeue",
            AuditAction::Retry => "retry",
            AuditAction::Repair => "repair",
            AuditAction::Replay => "replay",
            AuditAction::Pause => "pause",
            AuditAction::Resume => "resume",
            AuditAction::Drain => "drain",
            AuditAction::PurgeDeadLetters => "purge-dead-letters",
        }
    }
}

/// One row of `outbox_audit`: an operator's or the reconciler's action.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct AuditEntry {
    /// The row acted on; the nil id for relay-wide actions (pause, resume, drain).
    pub outbox_id: OutboxId,
    /// Its order; 0 for relay-wide actions.
    pub order_id: OrderId,
    /// An [`AuditAction`] as stored (`requeue`, `retry`, ...): read back as
    /// text, so that an action another version wrote still lists.
    pub action: String,
    /// Who asked.
    pub requested_by: String,
    /// When (database clock).
    pub requested_at: DateTime<Utc>,
}

/// `STALE_PUBLISHED_SECS`, in the relay and the producer alike: how long a
/// published order may wait to be processed before it counts as stuck (and the
/// relay sends it again). Under half a minute an ordinary backlog would be sent
/// twice over and over; over a week a lost message would wait for ever.
pub const STALE_PUBLISHED_SECS: std::ops::RangeInclusive<u64> = 30..=604_800;

/// Findings of the reconciliation sweep.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize)]
pub struct Reconciliation {
    /// Orders `pending` with no outbox row at all: they would never be published.
    pub pending_without_outbox: i64,
    /// Orders `published` and not processed, whose last publication (not their
    /// creation: a backlog after an outage is not stuck) is older than the threshold.
    pub published_not_processed: i64,
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
    /// Counts a failed attempt of a row its `owner` leases; parks the row once
    /// `attempts >= max_attempts`, else makes it due again after `retry_in`.
    /// `LeaseLost` (nothing counted) when `owner` no longer holds the lease.
    async fn record_failure(&self, failure: &FailedAttempt<'_>) -> Result<FailureOutcome, StoreError>;
    /// Gives back every lease `owner` holds, so another relay may take the rows at once.
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError>;
    /// Extends every lease `owner` holds that has not lapsed to `lease` from
    /// now (database clock): the relay keeps the rows it has in hand, so no
    /// other relay sends them too. A lapsed lease is never revived (its rows
    /// may be another relay's by now, or left by a run that gave up on them).
    /// Returns the leases extended.
    async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError>;
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
    /// Records a relay-wide operator action (pause, resume, drain, a purge).
    async fn record_action(&self, action: AuditAction, requested_by: &str) -> Result<(), StoreError>;
    /// Puts a `failed` order back to `pending` with a fresh outbox row (a new
    /// idempotency key), recording who asked. `Conflict` unless the order is `failed`.
    async fn retry_failed_order(&self, order_id: OrderId, requested_by: &str) -> Result<OutboxId, StoreError>;
}
