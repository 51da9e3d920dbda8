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

use crate::handler::to_delivery;

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// Dead letters published per round.
const DEAD_LETTER_BATCH: u32 = 100;

/// The broker side of a step.
#[async_trait]
pub trait Acker: Send + Sync {
    /// Sends frames, each confirmed by a broker receipt.
    async fn send_confirmed(&self, frames: Vec<Frame>) -> Result<(), StompError>;
    /// Acknowledges deliveries by their `ack` header values.
    async fn ack(&self, ack_ids: &[&str]) -> Result<(), StompError>;
}

#[async_trait]
impl Acker for Client {
    async fn send_confirmed(&self, frames: Vec<Frame>) -> Result<(), StompError> {
        for receipt in self.send_with_receipts(frames).await? {
            receipt.wait(BROKER_TIMEOUT).await?;
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

/// Applies a batch and ACKs it: one outcome per frame, in order. Dead letters
/// are published by [`publish_dead_letters`] afterwards.
pub async fn handle_delivery(
    store: &dyn ProcessingStore,
    broker: &dyn Acker,
    frames: &[Frame],
) -> Result<Vec<Applied>, StepError> {
    let deliveries: Vec<Delivery> = frames.iter().map(to_delivery).collect();
    let applied = apply_isolating(store, &deliveries).await.map_err(StepError::Store)?;
    let acks: Vec<&str> =
        frames.iter().map(|f| f.get("ack").or_else(|| f.get("message-id")).unwrap_or_default()).collect();
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
/// reason (failing its own order), else recorded as a dead letter alone.
async fn park(store: &dyn ProcessingStore, delivery: &Delivery, error: &StoreError) -> Result<Applied, StoreError> {
    tracing::warn!(error = %Report::new(&error), dead_letter_id = %delivery.dead_letter_id, "message refused by the database; dead-lettering it");
    let reason = format!("the database refused the message: {}", Report::new(error));
    let mut rejected = Delivery { rejection: Some(reason), ..delivery.clone() };
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

/// Publishes every unsent dead letter to `<queue>.DLQ` (each confirmed by a
/// receipt), then marks it sent. Returns how many were published.
pub async fn publish_dead_letters(
    store: &dyn ProcessingStore,
    broker: &dyn Acker,
    queue: &str,
) -> Result<u64, StepError> {
    let mut published = 0;
    loop {
        let letters = store.unsent_dead_letters(DEAD_LETTER_BATCH).await.map_err(StepError::Store)?;
        if letters.is_empty() {
            return Ok(published);
        }
        let ids: Vec<String> = letters.iter().map(|l| l.dead_letter_id.clone()).collect();
        broker.send_confirmed(letters.iter().map(|l| dead_letter_frame(queue, l)).collect()).await?;
        published += store.mark_dead_letters_sent(&ids).await.map_err(StepError::Store)?;
    }
}

/// The dead-letter copy: the original body, the reason, the original headers,
/// and `dlq-id`, which is the same for every copy of one message.
pub fn dead_letter_frame(queue: &str, letter: &DeadLetter) -> Frame {
    let original = |name: &str| letter.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str());
    let mut out = Frame::new("SEND")
        .header("destination", format!("{queue}.DLQ"))
        .header("persistent", "true")
        .header("dlq-reason", letter.reason.clone())
        .header("dlq-id", letter.dead_letter_id.clone())
        .header("content-type", original("content-type").unwrap_or("application/octet-stream"));
    for (name, value) in &letter.headers {
        match name.as_str() {
            "content-length" | "content-type" | "ack" | "subscription" | "receipt" => {}
            "outbox-id" | "order-id" | "traceparent" | "tracestate" => {
                out = out.header(name, value.clone()).header(&format!("original-{name}"), value.clone());
            }
            _ => out = out.header(&format!("original-{name}"), value.clone()),
        }
    }
    out.body(letter.body.clone())
}
