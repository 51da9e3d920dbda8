//! Publishing outbox rows to the broker: the `Publisher` seam (a fake one in
//! unit tests) and the STOMP implementation.
//!
//! Invariant: `Confirmed` only on the broker's RECEIPT; a timeout or a dropped
//! connection is `Unknown` (send again later, the consumer dedupes), and only
//! an ERROR naming the frame is `Rejected`, unless it names a passing condition
//! of the broker (`Refused`), which is never held against the message.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use error_reporter::Report;
use schema::OutboxRow;
use schema::messages::{EVENT_TYPE_HEADER, ORDER_ID_HEADER, OUTBOX_ID_HEADER};
use stomp::{Client, Frame, StompError};
use tokio::sync::Mutex;

/// What happened to one row's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker's RECEIPT arrived: the message is on the queue.
    Confirmed,
    /// The broker answered with an ERROR for this frame that it will give
    /// again for the same message (too big, not allowed): counts an attempt.
    Rejected(String),
    /// The broker answered with an ERROR for a passing condition (producer
    /// flow control, a resource limit): not the message's fault, sent again later.
    Refused(String),
    /// No answer: the broker may or may not have it.
    Unknown(String),
}

/// Sorts a broker ERROR for one frame: ActiveMQ answers ERROR for passing
/// conditions too (producer flow control with `sendFailIfNoSpace`, memory,
/// store or temp usage limits, timeouts), and those must never park a row.
pub fn classify_error(reason: String) -> Outcome {
    const PASSING: [&str; 9] =
        ["usage", "memory", "space", "flow control", "resource", "limit reached", "timeout", "timed out", "temporar"];
    let lower = reason.to_ascii_lowercase();
    match PASSING.iter().any(|p| lower.contains(p)) {
        true => Outcome::Refused(reason),
        false => Outcome::Rejected(reason),
    }
}

/// Sends outbox rows' messages; one outcome per row, in order.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes the rows' messages.
    async fn publish(&self, rows: &[OutboxRow]) -> Vec<Outcome>;
    /// True while a broker connection is up (connecting if needed).
    async fn check(&self) -> Result<(), StompError>;
    /// Closes the connection politely.
    async fn close(&self);
}

/// Publishes over one STOMP connection, reconnecting on demand.
///
/// A batch normally goes out as one STOMP transaction confirmed by the
/// COMMIT's receipt. When a transaction fails, the next batch is sent with a
/// receipt per message instead, so that a row the broker rejects is singled
/// out (its ERROR names its receipt) and the rest are confirmed.
pub struct StompPublisher {
    config: stomp::Config,
    queue: String,
    receipt_timeout: Duration,
    max_message_bytes: usize,
    client: Mutex<Option<Client>>,
    isolate: AtomicBool,
}

impl StompPublisher {
    /// A publisher for the broker at `config`; connects on first use.
    pub fn new(config: stomp::Config, queue: String, receipt_timeout: Duration, max_message_bytes: usize) -> Self {
        Self {
            config,
            queue,
            receipt_timeout,
            max_message_bytes,
            client: Mutex::new(None),
            isolate: AtomicBool::new(false),
        }
    }

    async fn per_message(&self, client: &Client, frames: Vec<Frame>) -> Result<Vec<Outcome>, StompError> {
        let receipts = client.send_with_receipts(frames).await?;
        let answers = futures::future::join_all(receipts.into_iter().map(|r| r.wait(self.receipt_timeout))).await;
        Ok(answers
            .into_iter()
            .map(|answer| match answer {
                Ok(()) => Outcome::Confirmed,
                Err(StompError::Rejected(reason)) => classify_error(reason),
                Err(other) => Outcome::Unknown(Report::new(&other).to_string()),
            })
            .collect())
    }

    async fn transactional(&self, client: &Client, frames: Vec<Frame>) -> Result<Vec<Outcome>, StompError> {
        let n = frames.len();
        let receipt = client.send_in_transaction(frames).await?;
        Ok(match receipt.wait(self.receipt_timeout).await {
            Ok(()) => vec![Outcome::Confirmed; n],
            Err(error) => vec![Outcome::Unknown(format!("transaction failed: {}", Report::new(&error))); n],
        })
    }

    async fn send(&self, frames: Vec<Frame>) -> Vec<Outcome> {
        let n = frames.len();
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            match Client::connect(&self.config).await {
                Ok(client) => *guard = Some(client),
                Err(error) => {
                    *guard = None;
                    return vec![Outcome::Unknown(Report::new(&error).to_string()); n];
                }
            }
        }
        let client = guard.as_ref().expect("connected above");
        let isolate = self.isolate.load(Ordering::Relaxed);
        let result = match isolate {
            true => self.per_message(client, frames).await,
            false => self.transactional(client, frames).await,
        };
        let outcomes = result.unwrap_or_else(|error| vec![Outcome::Unknown(Report::new(&error).to_string()); n]);
        let unknown = outcomes.iter().any(|o| matches!(o, Outcome::Unknown(_)));
        let rejected = outcomes.iter().any(|o| matches!(o, Outcome::Rejected(_)));
        // After a failed transaction, single rows out; after a clean batch, back to transactions.
        self.isolate.store(unknown || (isolate && rejected), Ordering::Relaxed);
        if unknown && let Some(client) = guard.take() {
            // A missing answer means the connection cannot be trusted: start afresh.
            client.disconnect(Duration::from_millis(200)).await;
        }
        outcomes
    }
}

/// The SEND frame for a row: seed-compatible JSON body plus our headers.
pub fn frame_for(queue: &str, row: &OutboxRow) -> Frame {
    let mut frame = Frame::new("SEND")
        .header("destination", queue)
        .header("persistent", "true")
        .header("content-type", "application/json")
        .header(OUTBOX_ID_HEADER, row.outbox_id.to_string())
        .header(ORDER_ID_HEADER, row.order_id.to_string())
        .header(EVENT_TYPE_HEADER, row.event_type.clone());
    if let Some(tp) = &row.traceparent {
        frame = frame.header("traceparent", tp.clone());
    }
    if let Some(ts) = &row.tracestate {
        frame = frame.header("tracestate", ts.clone());
    }
    frame.body(row.payload.clone().into_bytes())
}

#[async_trait]
impl Publisher for StompPublisher {
    async fn publish(&self, rows: &[OutboxRow]) -> Vec<Outcome> {
        // A message the broker would refuse by size is a permanent failure of
        // its row; it must never take the connection (and every other row) down.
        let mut outcomes: Vec<Option<Outcome>> = rows
            .iter()
            .map(|row| {
                (row.payload.len() > self.max_message_bytes).then(|| {
                    Outcome::Rejected(format!(
                        "message of {} bytes exceeds the {}-byte limit",
                        row.payload.len(),
                        self.max_message_bytes
                    ))
                })
            })
            .collect();
        let (indexes, frames): (Vec<usize>, Vec<Frame>) = rows
            .iter()
            .enumerate()
            .filter(|(i, _)| outcomes[*i].is_none())
            .map(|(i, row)| (i, frame_for(&self.queue, row)))
            .unzip();
        if !frames.is_empty() {
            let sent = self.send(frames).await;
            for (i, outcome) in indexes.into_iter().zip(sent) {
                outcomes[i] = Some(outcome);
            }
        }
        outcomes.into_iter().map(|o| o.expect("every row has an outcome")).collect()
    }

    async fn check(&self) -> Result<(), StompError> {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_some_and(|c| !c.is_closed()) {
            return Ok(());
        }
        match Client::connect(&self.config).await {
            Ok(client) => {
                *guard = Some(client);
                Ok(())
            }
            Err(error) => {
                *guard = None;
                Err(error)
            }
        }
    }

    async fn close(&self) {
        if let Some(client) = self.client.lock().await.take() {
            client.disconnect(Duration::from_secs(2)).await;
        }
    }
}
