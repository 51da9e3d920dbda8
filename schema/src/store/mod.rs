//! The storage roles each service takes, one file each beside its types, and
//! their error.
//!
//! Invariant: each method is one whole unit of work (its own transaction), and
//! errors say what the caller can do: not found, duplicate, retry, give up.

mod error;
mod orders;
mod outbox;
mod processing;

pub use error::{Cause, StoreError};
pub(crate) use orders::{Answer, Moves, add_count};
pub use orders::{OrderCounts, OrderStore, Placed};
pub use outbox::{
    AuditAction, AuditEntry, FailedAttempt, FailureOutcome, OutboxAdmin, OutboxStats, OutboxStore, ParkedRow,
    Reconciliation, RequeueTarget, STALE_PUBLISHED_SECS,
};
pub use processing::{Applied, DeadLetter, DeadLetterEntry, Delivery, ProcessingStore, UndeliverableLetter};

use crate::incidents::IncidentAdmin;

/// Everything a backend offers; each service takes the role it needs.
pub trait Store: OrderStore + OutboxStore + OutboxAdmin + ProcessingStore + IncidentAdmin {}

impl<T: OrderStore + OutboxStore + OutboxAdmin + ProcessingStore + IncidentAdmin> Store for T {}
