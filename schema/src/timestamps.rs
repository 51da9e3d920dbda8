//! Timestamps written to JSON in one piece.
//!
//! Invariant: the text is exactly chrono's own (`Serialize` for `DateTime`:
//! RFC 3339, `Z`, as many fraction digits as needed), so readers see no
//! change. chrono hands serde_json its text a fragment at a time, each
//! escaped on its own: two timestamps an order cost about 4 % of the
//! producer's instructions.

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serializer;

/// `#[serde(serialize_with)]` for a `DateTime<Utc>`.
pub(crate) fn serialize<S: Serializer>(at: &DateTime<Utc>, serializer: S) -> Result<S::Ok, S::Error> {
    serializer.serialize_str(&at.to_rfc3339_opts(SecondsFormat::AutoSi, true))
}

/// `#[serde(serialize_with)]` for an `Option<DateTime<Utc>>`.
pub(crate) fn serialize_option<S: Serializer>(at: &Option<DateTime<Utc>>, serializer: S) -> Result<S::Ok, S::Error> {
    match at {
        Some(at) => serialize(at, serializer),
        None => serializer.serialize_none(),
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use serde::Serialize;

    #[derive(Serialize)]
    struct Ours(#[serde(serialize_with = "super::serialize")] chrono::DateTime<chrono::Utc>);

    #[test]
    fn the_text_is_chronos_own_whatever_the_fraction() {
        let second = chrono::Utc.with_ymd_and_hms(2026, 12, 4, 6, 21, 58).unwrap();
        for nanos in [0, 100_000_000, 190_000_000, 190_735_000, 190_735_123, 999_999_999] {
            let at = second + chrono::Duration::nanoseconds(nanos);
            let chronos = serde_json::to_string(&at).unwrap();
            assert_eq!(serde_json::to_string(&Ours(at)).unwrap(), chronos, "{nanos} ns");
        }
    }
}
