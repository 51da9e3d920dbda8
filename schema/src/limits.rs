//! Limits of what an order may hold: text limits, counted the way SQL Server
//! counts `NVARCHAR(n)` (in UTF-16 code units), and the quantity range.
//!
//! Invariant: every text either backend writes fits its SQL Server column. Input
//! that people type is validated against these limits; text that we compose
//! (failure reasons, broker errors, operator names) is cut on a character
//! boundary with [`truncate_utf16`] before it is written, by both backends alike.

/// Longest customer name, in characters (Unicode scalar values), after trimming.
pub const CUSTOMER_NAME_CHARS: usize = 100;
/// `orders.customer_name` on SQL Server, in UTF-16 units: room for
/// [`CUSTOMER_NAME_CHARS`] characters even if every one is outside the BMP.
pub const CUSTOMER_NAME_UNITS: usize = 200;
/// `orders.idempotency_key`: the key is visible ASCII, one unit per byte.
pub const IDEMPOTENCY_KEY_UNITS: usize = 100;
/// `orders.failure_reason`.
pub const FAILURE_REASON_UNITS: usize = 400;
/// `dead_letters.reason` (also the `dlq-reason` header).
pub const DEAD_LETTER_REASON_UNITS: usize = 1000;
/// `dead_letters.dead_letter_id`.
pub const DEAD_LETTER_ID_UNITS: usize = 200;
/// `outbox.last_error`.
pub const LAST_ERROR_UNITS: usize = 1000;
/// `outbox_audit.requested_by`.
pub const REQUESTED_BY_UNITS: usize = 200;
/// `outbox.lease_owner`.
pub const LEASE_OWNER_UNITS: usize = 100;
/// The quantities an order may have: the API accepts only these, and the
/// consumer parks a message outside them.
pub const QUANTITY_RANGE: std::ops::RangeInclusive<i64> = 1..=1000;

const _: () = assert!(CUSTOMER_NAME_CHARS * 2 <= CUSTOMER_NAME_UNITS, "every valid name fits its column");

/// The key of a dead letter: the broker's message id when it fits
/// [`DEAD_LETTER_ID_UNITS`], else `sha256:` and the hash of the whole id, so
/// that two long ids alike in their first units are still two letters.
pub fn dead_letter_key(id: &str) -> String {
    use sha2::{Digest, Sha256};
    if utf16_len(id) <= DEAD_LETTER_ID_UNITS && !id.starts_with("sha256:") {
        return id.to_string();
    }
    let digest = Sha256::digest(id.as_bytes());
    let hex: String = digest.iter().map(|b| format!("{b:02x}")).collect();
    format!("sha256:{hex}")
}

/// An operator's name as given (`requested_by`): trimmed, 1-200 UTF-16
/// units, no control characters; `None` otherwise.
pub fn requester(raw: &str) -> Option<String> {
    let name = raw.trim();
    (!name.is_empty() && utf16_len(name) <= REQUESTED_BY_UNITS && !name.chars().any(char::is_control))
        .then(|| name.to_string())
}

/// Length of `s` in UTF-16 code units (an emoji counts two).
pub fn utf16_len(s: &str) -> usize {
    s.chars().map(char::len_utf16).sum()
}

/// The longest prefix of `s` that is at most `max_units` UTF-16 code units,
/// cut on a character boundary (never inside a surrogate pair).
pub fn truncate_utf16(s: &str, max_units: usize) -> &str {
    let mut units = 0;
    for (at, c) in s.char_indices() {
        units += c.len_utf16();
        if units > max_units {
            return &s[..at];
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_dead_letter_ids_alike_at_the_start_are_two_keys() {
        assert_eq!(dead_letter_key("ID:broker-1:1:1:1:9"), "ID:broker-1:1:1:1:9");
        let (a, b) = (format!("{}a", "x".repeat(300)), format!("{}b", "x".repeat(300)));
        let (ka, kb) = (dead_letter_key(&a), dead_letter_key(&b));
        assert_ne!(ka, kb);
        assert!(ka.starts_with("sha256:") && utf16_len(&ka) <= DEAD_LETTER_ID_UNITS, "{ka}");
        assert_eq!(ka, dead_letter_key(&a), "the same id, the same key");
        assert_ne!(dead_letter_key(&ka), ka, "a short id that looks like a key is hashed too");
    }

    #[test]
    fn emoji_count_two_units() {
        assert_eq!(utf16_len("abc"), 3);
        assert_eq!(utf16_len("é"), 1);
        assert_eq!(utf16_len("😀"), 2);
        assert_eq!(utf16_len(&"😀".repeat(60)), 120);
    }

    #[test]
    fn truncation_never_splits_a_surrogate_pair() {
        assert_eq!(truncate_utf16("😀😀", 3), "😀");
        assert_eq!(truncate_utf16("a😀", 2), "a");
        assert_eq!(truncate_utf16("a😀", 3), "a😀");
        assert_eq!(truncate_utf16("short", 400), "short");
        let long = "😀".repeat(300);
        let cut = truncate_utf16(&long, FAILURE_REASON_UNITS);
        assert_eq!(utf16_len(cut), 400);
        assert_eq!(truncate_utf16(&"x😀".repeat(300), 401).chars().count(), 267);
    }
}
