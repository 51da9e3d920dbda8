//! Publishing outbox rows to the broker: the `Publisher` seam (a fake one in
//! unit tests) and the STOMP implementation.
//!
//! Invariant: `Confirmed` only on the broker's RECEIPT; a timeout or a dropped
//! connection is `Unknown` (send again later, the consumer dedupes), and only
//! an ERROR naming the frame is `Rejected`.

use std::time::Duration;

use async_trait::async_trait;
use schema::OutboxRow;
use schema::messages::{EVENT_TYPE_HEADER, ORDER_ID_HEADER, OUTBOX_ID_HEADER};
use stomp::{Client, Frame, StompError};
use tokio::sync::Mutex;

/// What happened to one row's message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// The broker's RECEIPT arrived: the message is on the queue.
    Confirmed,
    /// The broker answered with an ERROR for this frame.
    Rejected(String),
    /// No answer: the broker may or may not have it.
    Unknown(String),
}

/// Sends outbox rows' messages; one outcome per row, in order.
#[async_trait]
pub trait Publisher: Send + Sync {
    /// Publishes the rows' messages.
    async fn publish(&self, rows: &[OutboxRow]) -> Vec<Outcome>;
    /// True while a broker connection is up (connecting if needed).
    async fn check(&self) -> Result<(), String>;
    /// Closes the connection politely.
    async fn close(&self);
}

/// Publishes over one STOMP connection, reconnecting on demand.
pub struct StompPublisher {
    config: stomp::Config,
    queue: String,
    receipt_timeout: Duration,
    client: Mutex<Option<Client>>,
}

impl StompPublisher {
    /// A publisher for the broker at `config`; connects on first use.
    pub fn new(config: stomp::Config, queue: String, receipt_timeout: Duration) -> Self {
        Self {
            config,
            queue,
            receipt_timeout,
            client: Mutex::new(None),
        }
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
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            match Client::connect(&self.config).await {
                Ok(client) => *guard = Some(client),
                Err(error) => {
                    *guard = None;
                    let reason = error.to_string();
                    return rows
                        .iter()
                        .map(|_| Outcome::Unknown(reason.clone()))
                        .collect();
                }
            }
        }
        let client = guard.as_ref().expect("connected above");
        let receipts = match client
            .send_with_receipts(rows.iter().map(|row| frame_for(&self.queue, row)))
            .await
        {
            Ok(receipts) => receipts,
            Err(error) => {
                *guard = None;
                let reason = error.to_string();
                return rows
                    .iter()
                    .map(|_| Outcome::Unknown(reason.clone()))
                    .collect();
            }
        };
        let answers =
            futures::future::join_all(receipts.into_iter().map(|r| r.wait(self.receipt_timeout)))
                .await;
        let mut broken = false;
        let outcomes = answers
            .into_iter()
            .map(|answer| match answer {
                Ok(()) => Outcome::Confirmed,
                Err(StompError::Rejected(reason)) => Outcome::Rejected(reason),
                Err(other) => {
                    broken = true;
                    Outcome::Unknown(other.to_string())
                }
            })
            .collect();
        if broken {
            // A missing receipt means the connection cannot be trusted: start afresh.
            if let Some(client) = guard.take() {
                client.disconnect(Duration::from_millis(200)).await;
            }
        }
        outcomes
    }

    async fn check(&self) -> Result<(), String> {
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
                Err(error.to_string())
            }
        }
    }

    async fn close(&self) {
        if let Some(client) = self.client.lock().await.take() {
            client.disconnect(Duration::from_secs(2)).await;
        }
    }
}
