//! The consumer step: one batch of deliveries from frames to ACKs, behind a
//! small [`Acker`] seam so that tests drive it with a fake broker.
//!
//! Invariants: a batch is ACKed only after its commit; a transient store error
//! is returned (the loop retries, nothing is ACKed); a permanent one never is:
//! the batch is split, the culprit becomes a dead letter with the error as its
//! reason, and the rest is applied. Dead letters are written in the batch's
//! transaction and published from the database afterwards, so none is lost
//! to a crash, a timeout or a dropped connection between the two.

use std::slice;
use std::time::Duration;

use async_trait::async_trait;
use error_reporter::Report;
use schema::{Applied, Cause, DeadLetter, Delivery, ProcessingStore, StoreError};
use stomp::{Client, Frame, StompError};

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead letters published per round.
/// Small, so that letters of the largest size cost little memory at a time
/// (each holds a body of up to 64 KiB).
const DEAD_LETTER_BATCH: u32 = 16;

/// How far a run of confirmed sends got before it failed.
#[derive(Debug)]
pub struct Unconfirmed {
    /// The frames before this index were confirmed; the one at it was not.
    pub confirmed: usize,
    /// Why the frame at `confirmed` was not.
    pub error: StompError,
}

/// The broker side of a step.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Sends frames, each confirmed by a broker receipt, in order.
    async fn send_confirmed(&self, frames: Vec<Frame>) -> Result<(), Unconfirmed>;
    /// Acknowledges deliveries by their `ack` header values.
    async fn ack(&self, ack_ids: &[&str]) -> Result<(), StompError>;
}

#[async_trait]
impl Acker for Client {
    async fn send_confirmed(&self, frames: Vec<Frame>) -> Result<(), Unconfirmed> {
        let receipts = self.send_with_receipts(frames).await.map_err(|error| Unconfirmed { confirmed: 0, error })?;
        for (confirmed, receipt) in receipts.into_iter().enumerate() {
            receipt.wait(BROKER_TIMEOUT).await.map_err(|error| Unconfirmed { confirmed, error })?;
        }
        Ok(())
    }

    async fn ack(&self, ack_ids: &[&str]) -> Result<(), StompError> {
        Client::ack(self, ack_ids).await
    }
}

/// Why a step could not finish; in every case nothing of the batch was ACKed.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    /// The database is unavailable: retry the batch later.
    #[error(transparent)]
    Store(StoreError),
    /// The broker connection failed: reconnect; the broker redelivers.
    #[error(transparent)]
    Broker(#[from] StompError),
    /// The batch was committed but its ACK failed: the redelivery will be
    /// duplicates. `applied` says what the commit did.
    #[error("committed, but the ACK failed")]
    NotAcked {
        /// The committed outcomes.
        applied: Vec<Applied>,
        /// Why the ACK failed.
        #[source]
        error: StompError,
    },
}

/// Applies a batch and ACKs it: one outcome per delivery, in order. Dead letters
/// are published by [`publish_dead_letters`] afterwards.
pub async fn handle_delivery(
    store: &dyn ProcessingStore,
    broker: &dyn Acker,
    deliveries: &[Delivery],
) -> Result<Vec<Applied>, StepError> {
    let applied = apply_isolating(store, deliveries).await.map_err(StepError::Store)?;
    // A frame that lost its ack id (dropped by the codec's limits) cannot be
    // acknowledged: an ACK without an id would cost the connection. It stays
    // unacknowledged until the connection ends; its dead letter is recorded.
    let acks: Vec<&str> = deliveries
        .iter()
        .filter_map(|d| d.header("ack").or_else(|| d.header("message-id")).filter(|id| !id.is_empty()))
        .collect();
    if acks.len() < deliveries.len() {
        tracing::warn!(unacknowledged = deliveries.len() - acks.len(), "a message carries no ack id; not acknowledged");
    }
    match broker.ack(&acks).await {
        Ok(()) => Ok(applied),
        Err(error) => Err(StepError::NotAcked { applied, error }),
    }
}

/// The batch in one transaction; after a permanent error, one by one, so that
/// only the message that causes it is parked. Transient errors are returned.
async fn apply_isolating(store: &dyn ProcessingStore, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
    match store.apply(deliveries).await {
        Ok(applied) => return Ok(applied),
        Err(error) if error.is_transient() => return Err(error),
        Err(error) if deliveries.len() == 1 => return park(store, &deliveries[0], &error).await.map(|a| vec![a]),
        Err(error) => {
            tracing::warn!(error = %Report::new(&error), batch = deliveries.len(), "a message broke the batch; applying one by one")
        }
    }
    let mut applied = Vec::with_capacity(deliveries.len());
    for delivery in deliveries {
        applied.push(match store.apply(slice::from_ref(delivery)).await {
            Ok(mut one) => one.pop().ok_or_else(|| StoreError::Other(Cause::msg("no outcome for the message")))?,
            Err(error) if error.is_transient() => return Err(error),
            Err(error) => park(store, delivery, &error).await?,
        });
    }
    Ok(applied)
}

/// A message the database refuses for good: rejected with the error as its
/// reason, else recorded as a dead letter alone. Only a value of the message
/// the database's rules refuse (`Invalid`) fails its own order; any other
/// refusal says nothing about the order, which stays open (the stuck sweep
/// sends it again).
async fn park(store: &dyn ProcessingStore, delivery: &Delivery, error: &StoreError) -> Result<Applied, StoreError> {
    tracing::warn!(error = %Report::new(&error), dead_letter_id = %delivery.dead_letter_id, "message refused by the database; dead-lettering it");
    let reason = format!("the database refused the message: {}", Report::new(error));
    let mut rejected = Delivery { rejection: Some(reason), ..delivery.clone() };
    if !matches!(error, StoreError::Invalid(_)) {
        rejected.outbox_id = None;
        rejected.order_id = None;
    }
    for attempt in 0..2 {
        match store.apply(slice::from_ref(&rejected)).await {
            Ok(mut one) => return one.pop().ok_or_else(|| StoreError::Other(Cause::msg("no outcome for the message"))),
            Err(error) if error.is_transient() => return Err(error),
            // Failing the order was refused too: keep the dead letter alone.
            Err(error) if attempt == 0 => {
                tracing::warn!(error = %Report::new(&error), "the order could not be marked failed either");
                rejected.outbox_id = None;
                rejected.order_id = None;
            }
            Err(error) => return Err(error),
        }
    }
    unreachable!("the loop returns on its last attempt")
}

/// Sends of one dead letter that may end without a receipt before it is set
/// aside as undeliverable (listed, counted, never again ahead of the others).
pub const DEAD_LETTER_ATTEMPTS: u32 = 5;

/// What a round of dead-letter publishing did.
#[derive(Debug, Default)]
pub struct Published {
    /// Letters on `<queue>.DLQ`, confirmed.
    pub sent: u64,
    /// Letters set aside as undeliverable in this round.
    pub undeliverable: u64,
    /// Why the round stopped early: the connection is no longer usable.
    pub broker_error: Option<StompError>,
}

/// Publishes every unsent dead letter to `<queue>.DLQ` (each confirmed by a
/// receipt), then marks it sent; a store error ends the round with an error,
/// a broker error with [`Published::broker_error`]. A send that ends without its receipt (the
/// broker refused the frame, or dropped the connection over it) is counted
/// against the first unconfirmed letter, and a letter that failed before is
/// sent alone, so a letter the broker will never take is pinned down and set
/// aside after [`DEAD_LETTER_ATTEMPTS`] instead of blocking those behind it.
pub async fn publish_dead_letters(
    store: &dyn ProcessingStore,
    broker: &dyn Acker,
    queue: &str,
) -> Result<Published, StepError> {
    let mut published = Published::default();
    loop {
        let mut letters = store.unsent_dead_letters(DEAD_LETTER_BATCH).await.map_err(StepError::Store)?;
        if letters.is_empty() {
            return Ok(published);
        }
        if letters[0].attempts > 0 {
            letters.truncate(1);
        }
        let frames = letters.iter().map(|l| dead_letter_frame(queue, l)).collect();
        let (confirmed, failure) = match broker.send_confirmed(frames).await {
            Ok(()) => (letters.len(), None),
            Err(Unconfirmed { confirmed, error }) => (confirmed, Some(error)),
        };
        let ids: Vec<String> = letters[..confirmed].iter().map(|l| l.dead_letter_id.clone()).collect();
        published.sent += store.mark_dead_letters_sent(&ids).await.map_err(StepError::Store)?;
        let Some(error) = failure else { continue };
        let letter = &letters[confirmed];
        let refused = store
            .refuse_dead_letter(&letter.dead_letter_id, &Report::new(&error).to_string(), DEAD_LETTER_ATTEMPTS)
            .await
            .map_err(StepError::Store)?;
        if refused {
            tracing::error!(dead_letter_id = %letter.dead_letter_id, error = %Report::new(&error), "the broker never took this dead letter; set aside as undeliverable");
            published.undeliverable += 1;
        }
        published.broker_error = Some(error);
        return Ok(published);
    }
}

/// Bytes of each header value a dead letter copies: its line stays far inside
/// ActiveMQ's 10 KiB per header even with every byte escaped.
pub const COPIED_VALUE_BYTES: usize = 2048;
/// Longest header name a dead letter copies.
const COPIED_NAME_BYTES: usize = 256;

/// `text` cut to at most `max` bytes, at a character boundary.
fn cut_to(text: &str, max: usize) -> &str {
    let mut end = text.len().min(max);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    &text[..end]
}

/// The dead-letter copy: the original body, the reason, the original headers,
/// and `dlq-id`, which is the same for every copy of one message. Whatever a
/// hostile original carried, the copy fits the broker's limits: values are
/// cut to [`COPIED_VALUE_BYTES`], over-long names are left out, and
/// `dlq-headers-trimmed` says how many headers were cut or left out.
pub fn dead_letter_frame(queue: &str, letter: &DeadLetter) -> Frame {
    let original = |name: &str| letter.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = Frame::new("SEND")
        .header("destination", format!("{queue}.DLQ"))
        .header("persistent", "true")
        .header("dlq-reason", cut_to(&letter.reason, COPIED_VALUE_BYTES))
        .header("dlq-id", letter.dead_letter_id.clone())
        .header("content-type", cut_to(original("content-type").unwrap_or("application/octet-stream"), 256));
    let mut trimmed = 0;
    for (name, value) in &letter.headers {
        if name.len() > COPIED_NAME_BYTES {
            trimmed += 1;
            continue;
        }
        let kept = cut_to(value, COPIED_VALUE_BYTES);
        trimmed += usize::from(kept.len() < value.len());
        match name.as_str() {
            "content-length" | "content-type" | "ack" | "subscription" | "receipt" => {}
            "outbox-id" | "order-id" | "traceparent" | "tracestate" => {
                out = out.header(name, kept).header(&format!("original-{name}"), kept);
            }
            _ => out = out.header(&format!("original-{name}"), kept),
        }
    }
    if trimmed > 0 {
        out = out.header("dlq-headers-trimmed", trimmed.to_string());
    }
    out.body(letter.body.clone())
}
