//! The consumer's role ([`ProcessingStore`]): one batch of deliveries in one
//! transaction, and the dead letters it records.
//!
//! Invariant: inbox row, pricing, status change and dead letter commit
//! together, so an ACK after the commit never loses or repeats an effect.

use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use chrono::{DateTime, Utc};

use super::StoreError;
use crate::model::{Order, OrderId, OutboxId};

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
    /// The original headers, for the dead-letter copy. Shared: a batch goes
    /// to the store, and again on a retry, without copying them.
    pub headers: Arc<[(String, String)]>,
    /// The original body, for the dead-letter copy.
    pub body: Bytes,
}

impl Delivery {
    /// The first value of an original header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }
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
