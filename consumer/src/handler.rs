//! One delivery, checked: parse the frame without touching the database and
//! turn it into the store's [`Delivery`].
//!
//! Invariant: every problem found here is a rejection with a human-readable
//! reason; it fails an order only when the message is that order's own outbox
//! message (decided by the store), so a stray message can harm no order.

use std::str::FromStr;

use schema::limits::QUANTITY_RANGE;
use schema::messages::{MAX_BODY_BYTES, OUTBOX_ID_HEADER, OrderPlacedV1};
use schema::{Delivery, OrderId, OutboxId};
use stomp::Frame;

/// A message we cannot process, and the order it names if it names one.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why, for a person: stored with the dead letter.
    pub reason: String,
    /// The order the message names, when it names one.
    pub order_id: Option<i64>,
}

/// A message that passed every check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The `outbox-id` header; none on seed-style messages.
    pub outbox_id: Option<OutboxId>,
    /// The body.
    pub message: OrderPlacedV1,
}

/// Checks a delivery without touching the database.
pub fn parse(frame: &Frame) -> Result<Accepted, Rejection> {
    let reject = |reason: String, order_id: Option<i64>| Rejection { reason, order_id };
    if let Some(cut) = &frame.cut {
        return Err(reject(cut_reason(cut), None));
    }
    if frame.body.len() > MAX_BODY_BYTES {
        return Err(reject(
            format!("message body of {} bytes exceeds the {MAX_BODY_BYTES}-byte limit", frame.body.len()),
            None,
        ));
    }
    // Straight into the message; on an error the body is read again to tell
    // JSON that is no message from no JSON at all.
    let message: OrderPlacedV1 = serde_json::from_slice(&frame.body).map_err(|e| {
        match serde_json::from_slice::<serde::de::IgnoredAny>(&frame.body) {
            Ok(_) => reject(format!("invalid order message: {e}"), named_order(&frame.body)),
            Err(e) => reject(format!("message body is not valid JSON: {e}"), None),
        }
    })?;
    let order_id = Some(message.order_id);
    let header_id = match frame.get(OUTBOX_ID_HEADER) {
        Some(raw) => Some(
            OutboxId::from_str(raw.trim())
                .map_err(|_| reject(format!("invalid {OUTBOX_ID_HEADER} header {raw:?}"), order_id))?,
        ),
        None => None,
    };
    if let (Some(header), Some(body)) = (header_id, message.outbox_id)
        && header != body
    {
        return Err(reject(format!("{OUTBOX_ID_HEADER} header {header} and body outbox_id {body} disagree"), order_id));
    }
    if !QUANTITY_RANGE.contains(&message.quantity) {
        return Err(reject(
            format!(
                "quantity {} is out of range {}-{}",
                message.quantity,
                QUANTITY_RANGE.start(),
                QUANTITY_RANGE.end()
            ),
            order_id,
        ));
    }
    if message.order_id <= 0 {
        return Err(reject(format!("order_id {} is not a valid order id", message.order_id), None));
    }
    Ok(Accepted { outbox_id: header_id.or(message.outbox_id), message })
}

/// The order a JSON body that is no valid message names, if it names one.
fn named_order(body: &[u8]) -> Option<i64> {
    #[derive(serde::Deserialize)]
    struct Named {
        order_id: Option<i64>,
    }
    serde_json::from_slice::<Named>(body).ok()?.order_id
}

/// Why a frame the client read only in part, or found amiss, is refused.
fn cut_reason(cut: &stomp::Cut) -> String {
    let mut parts = Vec::new();
    if let Some(bytes) = cut.body_bytes {
        parts.push(format!(
            "message body of {bytes} bytes exceeds the {}-byte limit (its first {} bytes are kept)",
            stomp::MAX_BODY_BYTES,
            stomp::BODY_PREFIX_BYTES
        ));
    }
    if cut.headers_dropped > 0 {
        parts.push(format!(
            "{} headers dropped: over the {}-byte header limit",
            cut.headers_dropped,
            stomp::MAX_HEADER_BYTES
        ));
    }
    if !cut.defects.is_empty() {
        let more = match cut.defects_more {
            0 => String::new(),
            n => format!("; and {n} more"),
        };
        parts.push(format!("not a valid STOMP 1.2 frame: {}{more}", cut.defects.join("; ")));
    }
    parts.join("; ")
}

/// The store's view of a delivery: checked here, applied by the store. The
/// frame's headers and body move into it, uncopied.
pub fn to_delivery(frame: Frame) -> Delivery {
    let (outbox_id, order_id, rejection) = match parse(&frame) {
        Ok(a) => (a.outbox_id, Some(OrderId(a.message.order_id)), None),
        Err(Rejection { reason, order_id }) => {
            // A rejected message still names its outbox row when its header is a UUID.
            let header_id = frame.get(OUTBOX_ID_HEADER).and_then(|h| OutboxId::from_str(h.trim()).ok());
            (header_id, order_id.filter(|id| *id > 0).map(OrderId), Some(reason))
        }
    };
    // The broker keeps a message's id across redeliveries: a repeat is recognised.
    let dead_letter_id = frame
        .get("message-id")
        .map(schema::limits::dead_letter_key)
        .or_else(|| outbox_id.map(|id| id.to_string()))
        .unwrap_or_else(|| OutboxId::new().to_string());
    Delivery { dead_letter_id, outbox_id, order_id, rejection, headers: frame.headers.into(), body: frame.body }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn frame(body: &str) -> Frame {
        Frame::new("MESSAGE").body(body.to_string())
    }

    fn reason(body: &str) -> Rejection {
        parse(&frame(body)).unwrap_err()
    }

    #[test]
    fn a_seed_style_message_is_accepted_without_an_outbox_id() {
        let ok =
            parse(&frame(r#"{"order_id": 1, "customer_name": "Ajay", "product_id": "P123", "quantity": 2}"#)).unwrap();
        assert_eq!(ok.outbox_id, None);
        assert_eq!(ok.message.quantity, 2);
    }

    #[test]
    fn the_outbox_id_header_wins_over_the_body() {
        let id = "0193a0b4-7c1e-7a2b-9c3d-4e5f60718293";
        let f = frame(r#"{"order_id": 1, "customer_name": "A", "product_id": "P123", "quantity": 2}"#)
            .header(OUTBOX_ID_HEADER, id);
        assert_eq!(parse(&f).unwrap().outbox_id.unwrap().to_string(), id);
    }

    #[test]
    fn non_json_is_rejected_without_an_order() {
        let r = reason("not json at all");
        assert!(r.reason.starts_with("message body is not valid JSON"), "{}", r.reason);
        assert_eq!(r.order_id, None);
    }

    #[test]
    fn a_missing_field_names_the_field_and_the_order() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "quantity": 2}"#);
        assert!(r.reason.contains("missing field `product_id`"), "{}", r.reason);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn a_wrong_type_is_rejected() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": "two"}"#);
        assert!(r.reason.contains("invalid type"), "{}", r.reason);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn a_body_that_breaks_off_after_a_wrong_value_is_no_json() {
        let r = reason(r#"{"order_id": 5, "quantity": "two", "#);
        assert!(r.reason.starts_with("message body is not valid JSON"), "{}", r.reason);
        assert_eq!(r.order_id, None);
    }

    #[test]
    fn a_field_given_twice_is_rejected_not_guessed() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": 2, "quantity": 3}"#);
        assert!(r.reason.contains("duplicate field `quantity`"), "{}", r.reason);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn quantity_out_of_range_is_rejected() {
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": 0}"#);
        assert_eq!(r.reason, "quantity 0 is out of range 1-1000");
        let r = reason(r#"{"order_id": 5, "customer_name": "A", "product_id": "P123", "quantity": 1001}"#);
        assert_eq!(r.order_id, Some(5));
    }

    #[test]
    fn a_frame_the_client_cut_is_rejected_with_what_was_cut() {
        let mut f = frame(r#"{"order_id": 1"#);
        f.cut = Some(stomp::Cut {
            body_bytes: Some(17 << 20),
            headers_dropped: 3,
            defects: vec![r#"the name of header "x\\q" holds the undefined escape "\\q"; kept as it came"#.into()],
            defects_more: 2,
        });
        let r = parse(&f).unwrap_err();
        assert!(r.reason.contains(r#"not a valid STOMP 1.2 frame: the name of header "x\\q""#), "{}", r.reason);
        assert!(r.reason.ends_with("; and 2 more"), "{}", r.reason);
        assert!(r.reason.contains("17825792 bytes exceeds the 65536-byte limit"), "{}", r.reason);
        assert!(r.reason.contains("3 headers dropped"), "{}", r.reason);
        assert_eq!(stomp::MAX_BODY_BYTES, MAX_BODY_BYTES, "the client keeps whole every body the consumer takes");
    }

    #[test]
    fn an_oversized_body_is_rejected() {
        let big = format!(r#"{{"order_id": 5, "pad": "{}"}}"#, "x".repeat(MAX_BODY_BYTES));
        assert!(reason(&big).reason.contains("exceeds"));
    }

    #[test]
    fn a_delivery_keeps_the_original_and_is_recognised_by_its_message_id() {
        let f = frame(r#"{"order_id": 7, "customer_name": "A", "product_id": "P123", "quantity": "lots"}"#)
            .header("message-id", "ID:broker-1:1:1:1:9");
        let d = to_delivery(f.clone());
        assert_eq!(d.dead_letter_id, "ID:broker-1:1:1:1:9");
        assert_eq!((d.order_id, d.outbox_id), (Some(OrderId(7)), None));
        assert!(d.rejection.unwrap().contains("invalid type"));
        assert_eq!(d.body, f.body);
        assert_eq!(*d.headers, f.headers);
    }

    #[test]
    fn a_header_and_body_that_name_different_outbox_ids_are_rejected() {
        let f = frame(
            r#"{"order_id": 1, "customer_name": "A", "product_id": "P123", "quantity": 2,
                "outbox_id": "0193a0b4-7c1e-7a2b-9c3d-4e5f60718293"}"#,
        )
        .header(OUTBOX_ID_HEADER, "0193a0b4-7c1e-7a2b-9c3d-4e5f60718294");
        assert!(parse(&f).unwrap_err().reason.contains("disagree"));
    }

    #[test]
    fn a_bad_outbox_id_header_is_rejected() {
        let f = frame(r#"{"order_id": 1, "customer_name": "A", "product_id": "P123", "quantity": 2}"#)
            .header(OUTBOX_ID_HEADER, "nope");
        assert!(parse(&f).unwrap_err().reason.contains("invalid outbox-id header"));
    }
}
