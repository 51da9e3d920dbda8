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
