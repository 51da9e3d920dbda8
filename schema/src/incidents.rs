//! Incidents: failed orders and dead letters grouped by the fingerprint of
//! their reason, and the replay of dead letters, for operators facing many
//! failures at once.
//!
//! Invariant: the grouping and the replay rules are written here once, for both
//! backends (each reads the facts in its transaction and does what these
//! functions say). A replay never re-sends a dead letter's stored bytes: it
//! writes a fresh outbox row of the order the letter names, which the relay
//! publishes like any other, so the consumer checks it again in full (a new
//! outbox id of that very order, the status guard, pricing from the catalogue)
//! and a replayed stray message can at most repeat a message the consumer
//! absorbs. That message is the order's own `OrderPlacedV1`, refused here when
//! it would exceed the broker's limit ([`MAX_BODY_BYTES`]).

use std::collections::BTreeMap;

use async_trait::async_trait;
use chrono::{DateTime, Utc};

use crate::limits::truncate_utf16;
use crate::messages::{MAX_BODY_BYTES, OrderPlacedV1};
use crate::model::{Order, OrderId, OrderStatus, OutboxId};
use crate::store::StoreError;

/// How many of the newest failed orders, and of the newest open dead letters,
/// the grouping reads: an incident larger than this still shows as groups of
/// its newest failures, and a group action acts on those.
pub const GROUP_SCAN: u32 = 10_000;

/// Longest fingerprint, in UTF-16 units.
pub const FINGERPRINT_UNITS: usize = 200;

/// The group key of a failure reason: the reason with what varies from one
/// occurrence to the next normalised out, and what names the cause kept.
///
/// - a UUID becomes `<uuid>`;
/// - a word of digits only becomes `#` (`order 123 not found` → `order # not
///   found`, `65536-byte` → `#-byte`);
/// - a word of 16 or more hex digits becomes `<hex>` (hashes, broker ids);
/// - a word mixing letters and digits stays (`unknown product P777` is its own
///   group, apart from `unknown product P778`);
/// - runs of white space become one space; the result is trimmed and cut to
///   [`FINGERPRINT_UNITS`].
pub fn fingerprint(reason: &str) -> String {
    let mut out = String::with_capacity(reason.len());
    let mut rest = reason;
    while let Some(c) = rest.chars().next() {
        if c.is_alphanumeric() {
            let end = rest.find(|c: char| !c.is_alphanumeric()).unwrap_or(rest.len());
            match uuid_at(rest) {
                Some(len) => {
                    out.push_str("<uuid>");
                    rest = &rest[len..];
                }
                None => {
                    out.push_str(normalised_word(&rest[..end]));
                    rest = &rest[end..];
                }
            }
        } else if c.is_whitespace() {
            if !out.ends_with(' ') {
                out.push(' ');
            }
            rest = rest.trim_start();
        } else {
            out.push(c);
            rest = &rest[c.len_utf8()..];
        }
    }
    truncate_utf16(out.trim(), FINGERPRINT_UNITS).trim_end().to_string()
}

/// The length of the UUID (`8-4-4-4-12` hex digits) `s` starts with, when it
/// is one and no letter or digit follows it.
fn uuid_at(s: &str) -> Option<usize> {
    let bytes = s.as_bytes();
    let shape = [8, 4, 4, 4, 12];
    let mut at = 0;
    for (i, len) in shape.iter().enumerate() {
        let part = bytes.get(at..at + len)?;
        if !part.iter().all(u8::is_ascii_hexdigit) {
            return None;
        }
        at += len;
        if i < shape.len() - 1 {
            (bytes.get(at) == Some(&b'-')).then_some(())?;
            at += 1;
        }
    }
    let next = s[at..].chars().next();
    (!next.is_some_and(char::is_alphanumeric)).then_some(at)
}

fn normalised_word(word: &str) -> &str {
    if word.chars().all(|c| c.is_ascii_digit()) {
        "#"
    } else if word.len() >= 16 && word.chars().all(|c| c.is_ascii_hexdigit()) {
        "<hex>"
    } else {
        word
    }
}

/// Failures that share a fingerprint, as operators see them: "unknown product
/// P777 × 42".
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct FailureGroup {
    /// The group's key ([`fingerprint`]); the group actions take it.
    pub fingerprint: String,
    /// The newest reason of the group, as written.
    pub example: String,
    /// Failed orders in the group.
    pub failed_orders: u64,
    /// Open dead letters in the group: not yet replayed, and their order (if
    /// they name one) not processed since.
    pub dead_letters: u64,
    /// When its newest failure happened.
    pub newest_at: DateTime<Utc>,
}

/// One failure as the grouping reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Why (an order's `failure_reason`, a dead letter's reason).
    pub reason: String,
    /// When it happened.
    pub at: DateTime<Utc>,
    /// A failed order (true) or a dead letter (false).
    pub is_order: bool,
}

/// Groups failures by fingerprint, newest group first.
pub fn group(failures: impl IntoIterator<Item = Failure>) -> Vec<FailureGroup> {
    let mut groups: BTreeMap<String, FailureGroup> = BTreeMap::new();
    for f in failures {
        let key = fingerprint(&f.reason);
        let g = groups.entry(key.clone()).or_insert_with(|| FailureGroup {
            fingerprint: key,
            example: f.reason.clone(),
            failed_orders: 0,
            dead_letters: 0,
            newest_at: f.at,
        });
        if f.at > g.newest_at {
            (g.newest_at, g.example) = (f.at, f.reason);
        }
        match f.is_order {
            true => g.failed_orders += 1,
            false => g.dead_letters += 1,
        }
    }
    let mut groups: Vec<FailureGroup> = groups.into_values().collect();
    groups.sort_by(|a, b| b.newest_at.cmp(&a.newest_at).then_with(|| a.fingerprint.cmp(&b.fingerprint)));
    groups
}

/// What a replay does for a dead letter, given the order it names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ReplayStep {
    /// The order failed: put it back to `pending` with a fresh outbox row (as a retry does).
    Retry,
    /// The order is still open: write a fresh outbox row of it.
    Resend,
}

/// The replay rule: only an existing order that is not processed, whose
/// message fits the broker, is sent again; otherwise why not.
pub(crate) fn replay_step(order_id: Option<OrderId>, order: Option<&Order>) -> Result<(ReplayStep, &Order), String> {
    let Some(order) = order else {
        return Err(match order_id {
            None => "the message names no order: nothing to replay".into(),
            Some(id) => format!("order {id} does not exist: nothing to replay"),
        });
    };
    let id = order.order_id;
    let bytes = serde_json::to_vec(&OrderPlacedV1::for_order(order, OutboxId::new())).map_or(usize::MAX, |b| b.len());
    if bytes > MAX_BODY_BYTES {
        return Err(format!("order {id}'s message of {bytes} bytes exceeds the broker's limit"));
    }
    match order.status {
        OrderStatus::Failed => Ok((ReplayStep::Retry, order)),
        OrderStatus::Pending | OrderStatus::Published => Ok((ReplayStep::Resend, order)),
        OrderStatus::Processed => Err(format!("order {id} is already processed: nothing to replay")),
    }
}

/// A dead letter sent again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Replayed {
    /// The letter.
    pub dead_letter_id: String,
    /// Its order.
    pub order_id: OrderId,
    /// The fresh outbox row the relay publishes.
    pub outbox_id: OutboxId,
}

/// A dead letter a group replay left alone, and why.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Skipped {
    /// The letter.
    pub dead_letter_id: String,
    /// Why it was not sent.
    pub reason: String,
}

/// What a group replay did.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct ReplayReport {
    /// The letters sent again (two letters of one order share its one fresh row).
    pub replayed: Vec<Replayed>,
    /// The letters left alone.
    pub skipped: Vec<Skipped>,
}

/// The operators' tools for incidents. Each action is one transaction and
/// writes who asked to `outbox_audit` (`retry`, `replay`).
#[async_trait]
pub trait IncidentAdmin: Send + Sync {
    /// Failed orders and open dead letters (not replayed, their order not
    /// processed), grouped by the
    /// [`fingerprint`] of their reason, newest group first (the newest
    /// [`GROUP_SCAN`] of each are read).
    async fn failure_groups(&self) -> Result<Vec<FailureGroup>, StoreError>;
    /// Retries every failed order of the group as
    /// [`crate::OutboxAdmin::retry_failed_order`] does; returns each order with its fresh row.
    async fn retry_group(&self, fingerprint: &str, requested_by: &str) -> Result<Vec<(OrderId, OutboxId)>, StoreError>;
    /// Sends the order a dead letter names again ([`replay_step`]) and marks
    /// the letter replayed. `NotFound` for no such letter; `Conflict` when
    /// there is nothing to send (no order, or it is processed).
    async fn replay_dead_letter(&self, dead_letter_id: &str, requested_by: &str) -> Result<Replayed, StoreError>;
    /// Replays every dead letter of the group not yet replayed.
    async fn replay_group(&self, fingerprint: &str, requested_by: &str) -> Result<ReplayReport, StoreError>;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_varies_is_normalised_and_what_names_the_cause_stays() {
        assert_eq!(fingerprint("unknown product P777"), "unknown product P777");
        assert_ne!(fingerprint("unknown product P777"), fingerprint("unknown product P778"));
        assert_eq!(fingerprint("order 123 not found"), "order # not found");
        assert_eq!(fingerprint("order 123 not found"), fingerprint("order 98765 not found"));
        assert_eq!(
            fingerprint("outbox-id 0b0e6c9e-2f4c-4a8f-9d5e-1f2a3b4c5d6e is not an outbox message of order 7"),
            "outbox-id <uuid> is not an outbox message of order #"
        );
        assert_eq!(
            fingerprint("message body of 17825792 bytes exceeds the 65536-byte limit"),
            "message body of # bytes exceeds the #-byte limit"
        );
        assert_eq!(fingerprint("dlq-id sha256:0123456789abcdef0123 cut"), "dlq-id sha256:<hex> cut");
        assert_eq!(fingerprint("  quantity \"lots\"\n is  not a number "), "quantity \"lots\" is not a number");
        assert_eq!(fingerprint("ID:broker-1:1:1:1:9"), "ID:broker-#:#:#:#:#");
        assert_eq!(fingerprint("12.50 € for 😀 3"), "#.# € for 😀 #");
        assert_eq!(fingerprint(""), "");
    }

    #[test]
    fn a_uuid_glued_to_more_letters_is_no_uuid_and_long_reasons_are_cut() {
        assert_eq!(fingerprint("0b0e6c9e-2f4c-4a8f-9d5e-1f2a3b4c5d6eZ"), "0b0e6c9e-2f4c-4a8f-9d5e-1f2a3b4c5d6eZ");
        let long = fingerprint(&"x ".repeat(500));
        assert!(crate::limits::utf16_len(&long) <= FINGERPRINT_UNITS && !long.ends_with(' '), "{long}");
    }

    fn at(secs: i64) -> DateTime<Utc> {
        DateTime::from_timestamp(1_800_000_000 + secs, 0).unwrap()
    }

    #[test]
    fn failures_are_grouped_newest_group_first_with_the_newest_reason_as_example() {
        let f = |reason: &str, secs, is_order| Failure { reason: reason.into(), at: at(secs), is_order };
        let groups = group([
            f("order 1 not found", 1, false),
            f("unknown product P777", 2, true),
            f("unknown product P777", 3, false),
            f("order 22 not found", 5, false),
            f("unknown product P777", 4, true),
        ]);
        let seen: Vec<(&str, &str, u64, u64)> = groups
            .iter()
            .map(|g| (g.fingerprint.as_str(), g.example.as_str(), g.failed_orders, g.dead_letters))
            .collect();
        assert_eq!(
            seen,
            [("order # not found", "order 22 not found", 0, 2), ("unknown product P777", "unknown product P777", 2, 1)]
        );
        assert_eq!(groups[1].newest_at, at(4));
    }

    fn order(status: OrderStatus, name_len: usize) -> Order {
        Order {
            order_id: OrderId(7),
            customer_name: "😀".repeat(name_len),
            product_id: "P123".into(),
            quantity: 1,
            status,
            unit_price: None,
            total_price: None,
            failure_reason: None,
            created_at: at(0),
            processed_at: None,
        }
    }

    #[test]
    fn only_an_open_or_failed_order_is_replayed_and_its_message_always_fits() {
        let id = Some(OrderId(7));
        let step = |o: &Order| replay_step(id, Some(o)).map(|(step, _)| step);
        assert_eq!(step(&order(OrderStatus::Failed, 1)), Ok(ReplayStep::Retry));
        assert_eq!(step(&order(OrderStatus::Pending, 1)), Ok(ReplayStep::Resend));
        assert_eq!(step(&order(OrderStatus::Published, 1)), Ok(ReplayStep::Resend));
        assert!(step(&order(OrderStatus::Processed, 1)).unwrap_err().contains("already processed"));
        assert!(replay_step(id, None).unwrap_err().contains("order 7 does not exist"));
        assert!(replay_step(None, None).unwrap_err().contains("names no order"));
        // The longest name an order may hold still makes a message far below the limit.
        assert_eq!(step(&order(OrderStatus::Failed, crate::limits::CUSTOMER_NAME_CHARS)), Ok(ReplayStep::Retry));
        let over = step(&order(OrderStatus::Failed, MAX_BODY_BYTES / 4 + 1)).unwrap_err();
        assert!(over.contains("exceeds the broker's limit"), "{over}");
    }
}
