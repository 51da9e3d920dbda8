//! The producer's answers, typed: what `orderflowctl` reads from each ops
//! route, and the bounded read that turns a body into one of them.
//!
//! Invariant: an answer is used only once it has the shape of its route's
//! answer; a body that is not (an HTML page from a proxy, JSON cut short or of
//! another shape, more than [`MAX_ANSWER_BYTES`]) is an error, never "done".
//! Fields are those the tables show; others are left to `--json`, which
//! prints the producer's JSON as it came, after the same check.

use serde::Deserialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The most of a body read: the largest answer (`/ops/state`, fifty rows of
/// each list with their reasons) is well under a megabyte.
pub(crate) const MAX_ANSWER_BYTES: usize = 4 * 1024 * 1024;

/// A body that is not the answer expected of its route.
#[derive(Debug)]
pub(crate) enum Unreadable {
    /// Over [`MAX_ANSWER_BYTES`].
    TooLarge,
    /// The connection failed or timed out before the body ended.
    BrokenOff(String),
    /// Not JSON, or JSON of another shape (serde's words).
    NotTheAnswer(String),
}

impl std::fmt::Display for Unreadable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Unreadable::TooLarge => write!(f, "an answer over {} MiB", MAX_ANSWER_BYTES / (1024 * 1024)),
            Unreadable::BrokenOff(why) => write!(f, "an answer that broke off: {why}"),
            Unreadable::NotTheAnswer(why) => write!(f, "an answer that is not the producer's ({why})"),
        }
    }
}

/// Reads at most [`MAX_ANSWER_BYTES`] of `response`'s body.
pub(crate) async fn body(mut response: reqwest::Response) -> Result<Vec<u8>, Unreadable> {
    if response.content_length().is_some_and(|n| n > MAX_ANSWER_BYTES as u64) {
        return Err(Unreadable::TooLarge);
    }
    let mut bytes = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) if bytes.len() + chunk.len() > MAX_ANSWER_BYTES => return Err(Unreadable::TooLarge),
            Ok(Some(chunk)) => bytes.extend_from_slice(&chunk),
            Ok(None) => return Ok(bytes),
            Err(error) => return Err(Unreadable::BrokenOff(crate::error_chain(&error))),
        }
    }
}

/// The body as `T`, and as the JSON it came as (for `--json`).
pub(crate) fn parse<T: DeserializeOwned>(bytes: &[u8]) -> Result<(Value, T), Unreadable> {
    let unreadable = |e: serde_json::Error| Unreadable::NotTheAnswer(e.to_string());
    let raw: Value = serde_json::from_slice(bytes).map_err(unreadable)?;
    let typed = T::deserialize(&raw).map_err(unreadable)?;
    Ok((raw, typed))
}

/// Every refusal of the producer (and of the admin door before it).
#[derive(Debug, Deserialize)]
pub(crate) struct Refusal {
    pub error: String,
}

/// `GET /ops/state`.
#[derive(Debug, Deserialize)]
pub(crate) struct State {
    pub services: Vec<Service>,
    pub stale_after_seconds: u64,
    pub relays: Vec<Relay>,
    #[serde(flatten)]
    pub stored: Stored,
}

/// What `/ops/state` read from the database, or why it could not.
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Stored {
    Read { outbox: Outbox, parked: Vec<Parked>, dead_letters: Vec<DeadLetter>, reconciliation: Reconciliation },
    Unreachable { database_error: String },
}

/// A service's readiness, in words.
#[derive(Debug, Deserialize)]
pub(crate) struct Service {
    pub name: String,
    pub ready: bool,
    pub words: String,
}

/// The outbox's backlog.
#[derive(Debug, Deserialize)]
pub(crate) struct Outbox {
    pub pending: i64,
    pub oldest_pending_seconds: f64,
    pub parked: i64,
}

/// The reconciliation sweep's figures.
#[derive(Debug, Deserialize)]
pub(crate) struct Reconciliation {
    pub pending_without_outbox: i64,
    pub published_not_processed: i64,
}

/// A relay as the ops page numbers it; `status` is null when its admin port did not answer.
#[derive(Debug, Deserialize)]
pub(crate) struct Relay {
    pub index: usize,
    pub url: String,
    pub status: Option<RelayStatus>,
}

/// A relay's own `/relay/status`, passed on by the producer: what it holds is
/// the relay's word, so a field it left out shows as `-`.
#[derive(Debug, Deserialize)]
pub(crate) struct RelayStatus {
    #[serde(default)]
    pub relay_id: Option<String>,
    #[serde(default)]
    pub paused: Option<bool>,
}

/// A parked outbox row.
#[derive(Debug, Deserialize)]
pub(crate) struct Parked {
    pub outbox_id: uuid::Uuid,
    pub order_id: i64,
    pub attempts: i32,
    pub dead_at: String,
    pub last_error: Option<String>,
}

/// A dead letter.
#[derive(Debug, Deserialize)]
pub(crate) struct DeadLetter {
    pub dead_letter_id: String,
    pub order_id: Option<i64>,
    pub reason: String,
    pub created_at: String,
    pub sent_at: Option<String>,
    pub replayed_at: Option<String>,
}

/// `GET /ops/groups`.
#[derive(Debug, Deserialize)]
pub(crate) struct Groups {
    pub groups: Vec<Group>,
}

/// Failures that share a fingerprint.
#[derive(Debug, Deserialize)]
pub(crate) struct Group {
    pub fingerprint: String,
    pub example: String,
    pub failed_orders: u64,
    pub dead_letters: u64,
    pub newest_at: String,
}

/// `POST /ops/relay`: the relay's answer to pause, resume or drain.
#[derive(Debug, Deserialize)]
pub(crate) struct RelayAction {
    pub paused: bool,
    /// Only a drain releases leases.
    #[serde(default)]
    pub leases_released: Option<u64>,
    pub requested_by: String,
}

/// `POST /ops/requeue`.
#[derive(Debug, Deserialize)]
pub(crate) struct Requeued {
    pub requeued: Vec<uuid::Uuid>,
    pub requested_by: String,
}

/// `POST /ops/retry` (one order) or `/ops/groups/retry` (a list).
#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub(crate) enum Retried {
    /// A group.
    Group { retried: Vec<RetriedOrder> },
    /// One order.
    One(RetriedOrder),
}

/// An order put back to pending, with its fresh outbox row.
#[derive(Debug, Deserialize)]
pub(crate) struct RetriedOrder {
    pub order_id: i64,
    pub outbox_id: uuid::Uuid,
}

/// `POST /ops/replay` and `/ops/groups/replay`.
#[derive(Debug, Deserialize)]
pub(crate) struct Replayed {
    pub replayed: Vec<ReplayedLetter>,
    pub skipped: Vec<Skipped>,
}

/// A dead letter whose order was sent again.
#[derive(Debug, Deserialize)]
pub(crate) struct ReplayedLetter {
    pub dead_letter_id: String,
    pub order_id: i64,
    pub outbox_id: uuid::Uuid,
}

/// A dead letter a group replay left, and why.
#[derive(Debug, Deserialize)]
pub(crate) struct Skipped {
    pub dead_letter_id: String,
    pub reason: String,
}

/// `POST /ops/dead-letters/purge`.
#[derive(Debug, Deserialize)]
pub(crate) struct Purged {
    pub purged: u64,
    pub older_than_seconds: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_body_of_another_shape_is_unreadable_and_says_why() {
        let not_json = parse::<Purged>(b"<html><body>Bad gateway</body></html>").unwrap_err();
        assert!(not_json.to_string().contains("not the producer's"), "{not_json}");
        let cut = parse::<Purged>(br#"{"purged": 3, "older_th"#).unwrap_err();
        assert!(cut.to_string().contains("EOF"), "{cut}");
        let shape = parse::<Purged>(br#"{"purged": "three", "older_than_seconds": 60}"#).unwrap_err();
        assert!(shape.to_string().contains("invalid type"), "{shape}");
        let missing = parse::<State>(br#"{"ok": true}"#).unwrap_err();
        assert!(missing.to_string().contains("missing field"), "{missing}");
        let (raw, purged) =
            parse::<Purged>(br#"{"purged": 3, "older_than_seconds": 60, "requested_by": "a"}"#).unwrap();
        assert_eq!((purged.purged, raw["requested_by"].as_str()), (3, Some("a")), "other fields stay for --json");
    }

    #[test]
    fn one_retry_and_a_group_retry_both_read() {
        let id = "00000000-0000-0000-0000-000000000001";
        let one = format!(r#"{{"order_id": 5, "outbox_id": "{id}", "requested_by": "ann"}}"#);
        assert!(matches!(parse::<Retried>(one.as_bytes()).unwrap().1, Retried::One(RetriedOrder { order_id: 5, .. })));
        let group = format!(r#"{{"retried": [{{"order_id": 5, "outbox_id": "{id}"}}], "requested_by": "ann"}}"#);
        assert!(
            matches!(parse::<Retried>(group.as_bytes()).unwrap().1, Retried::Group { retried } if retried.len() == 1)
        );
        assert!(parse::<Retried>(br#"{"requested_by": "ann"}"#).is_err());
    }
}
