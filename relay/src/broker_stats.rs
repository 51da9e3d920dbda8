//! The order queue and its dead-letter queue as the broker counts them
//! (depth, consumers, enqueued, dequeued), asked of the broker's statistics
//! plugin every few seconds for the metrics and the ops page.
//!
//! Invariant: nothing waits on the broker's answer: when it does not answer,
//! the last figures stay with their age, and the note says why.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use error_reporter::Report;
use serde_json::{Value, json};
use service::Every;
use stomp::QueueStats;
use tokio_util::sync::CancellationToken;

use crate::metrics::Metrics;

/// How often the broker is asked.
const EVERY: Duration = Duration::from_secs(5);
/// How long an answer may take.
const WAIT: Duration = Duration::from_secs(2);

/// The last answer, shared by the watch loop and `/relay/status`.
#[derive(Clone, Default)]
pub struct BrokerQueues(Arc<Mutex<Last>>);

#[derive(Default)]
struct Last {
    queues: Vec<QueueStats>,
    /// Queues asked for that the broker does not have (yet).
    absent: Vec<String>,
    note: String,
    at: Option<Instant>,
}

impl BrokerQueues {
    /// `{"queues": [...], "absent": [...], "note", "age_seconds"}`; `age_seconds` is null before the first answer.
    pub fn report(&self) -> Value {
        let last = self.0.lock().expect("broker queues lock");
        let note = match (&last.at, last.note.is_empty()) {
            (None, true) => "not asked yet",
            _ => last.note.as_str(),
        };
        json!({
            "queues": last.queues,
            "absent": last.absent,
            "note": note,
            "age_seconds": last.at.map(|at| at.elapsed().as_secs()),
        })
    }
}

/// Asks the broker for `queues` every [`EVERY`] until `stop`.
pub async fn watch(
    config: stomp::Config,
    queues: Vec<String>,
    view: BrokerQueues,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let names: Vec<&str> = queues.iter().map(|q| q.strip_prefix("/queue/").unwrap_or(q)).collect();
    let mut every = Every::new(EVERY, stop);
    while every.tick().await {
        let answer = stomp::queue_stats(&config, &names, WAIT).await;
        let mut last = view.0.lock().expect("broker queues lock");
        match answer {
            Ok(found) => {
                for s in &found {
                    metrics.broker_queue_size.with_label_values(&[&s.queue]).set(s.depth);
                    metrics.broker_queue_consumers.with_label_values(&[&s.queue]).set(s.consumers);
                    metrics.broker_queue_enqueued.with_label_values(&[&s.queue]).set(s.enqueued);
                    metrics.broker_queue_dequeued.with_label_values(&[&s.queue]).set(s.dequeued);
                }
                let missing: Vec<String> =
                    names.iter().filter(|n| !found.iter().any(|s| s.queue == **n)).map(|n| n.to_string()).collect();
                // The plugin answers for every queue that exists: one answer
                // shows it is there, and the others do not exist yet.
                last.note = match found.is_empty() {
                    false => "ok".into(),
                    true => format!(
                        "no figures within {WAIT:?}: the queues do not exist yet, or the broker runs without its \
                         statistics plugin (<statisticsBrokerPlugin/>)"
                    ),
                };
                last.queues = found;
                last.absent = missing;
                last.at = Some(Instant::now());
            }
            Err(error) => last.note = format!("the broker did not answer: {}", Report::new(&error)),
        }
    }
}
