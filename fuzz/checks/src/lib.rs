//! What must hold, beyond "no panic", for each parser that takes outside
//! bytes. The libFuzzer targets in `fuzz/fuzz_targets` call these; the test
//! suite replays the kept corpus (`fuzz/corpus/<target>/`) through them, so a
//! regression fails CI without any fuzzing.

use std::str::FromStr;

use bytes::BytesMut;
use schema::limits::{CUSTOMER_NAME_CHARS, CUSTOMER_NAME_UNITS, DEAD_LETTER_ID_UNITS, QUANTITY_RANGE, utf16_len};
use stomp::{Frame, Item, StompCodec};
use tokio_util::codec::{Decoder, Encoder};

/// A target's checks, run on one input.
pub type Check = fn(&[u8]);

/// The targets, by the name of their corpus folder.
pub const TARGETS: [(&str, Check); 5] = [
    ("stomp_codec", stomp_codec),
    ("broker_passthrough", broker_passthrough),
    ("consumer_message", consumer_message),
    ("order_validation", order_validation),
    ("urls", urls),
];

/// Decodes `bytes` fed in pieces of `chunk` bytes: the items up to the first
/// error, and whether there was one.
fn decode(bytes: &[u8], chunk: usize) -> (Vec<Item>, bool) {
    let mut codec = StompCodec::default();
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for piece in bytes.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(_) => return (items, true),
            }
        }
    }
    (items, false)
}

/// The STOMP codec: a stream decodes to the same frames however it is cut
/// into reads; every frame keeps within the limits; a whole frame encodes and
/// decodes back to itself.
pub fn stomp_codec(data: &[u8]) {
    // Heart-beats only say the peer is alive: how many a run of end-of-lines
    // makes depends on the reads, so frames alone are compared.
    let frames = |items: Vec<Item>| -> Vec<Item> { items.into_iter().filter(|i| *i != Item::Heartbeat).collect() };
    let (whole, whole_failed) = decode(data, data.len());
    let (pieces, pieces_failed) = decode(data, 7);
    assert_eq!(whole_failed, pieces_failed, "an error does not depend on how the bytes arrive");
    let (whole, pieces) = (frames(whole), frames(pieces));
    assert_eq!(whole, pieces, "the frames do not depend on how the bytes arrive");
    for item in whole {
        let Item::Frame(frame) = item else { continue };
        assert!(frame.body.len() <= stomp::MAX_BODY_BYTES, "a kept body is within the limit");
        if frame.cut.is_some() || frame.command.is_empty() || !frame.command.bytes().all(|b| b.is_ascii_uppercase()) {
            continue;
        }
        // CONNECT and CONNECTED headers go unescaped, so a colon in a name or
        // an end-of-line anywhere cannot be written back as it was read.
        let raw = matches!(frame.command.as_str(), "CONNECT" | "CONNECTED");
        let unwritable = |t: &str| t.contains(['\n', '\r']);
        if raw && frame.headers.iter().any(|(k, v)| k.contains(':') || unwritable(k) || unwritable(v)) {
            continue;
        }
        let mut encoded = BytesMut::new();
        StompCodec::default().encode(Item::Frame(frame.clone()), &mut encoded).expect("encoding cannot fail");
        let (again, failed) = decode(&encoded, encoded.len());
        assert!(!failed, "an encoded frame decodes: {frame:?}");
        let [Item::Frame(back)] = &again[..] else { panic!("one frame back, got {again:?}") };
        let without_length = |f: &Frame| -> Vec<(String, String)> {
            f.headers.iter().filter(|(k, _)| k != "content-length").cloned().collect()
        };
        assert_eq!((&back.command, &back.body), (&frame.command, &frame.body));
        assert_eq!(without_length(back), without_length(&frame), "headers survive encode then decode");
    }
}

/// `content-length` values that are no length: each must leave the body to
/// be read to its NUL, never lose the stream.
const ODD_LENGTHS: [&str; 8] = ["", " ", "-1", "+2", "2x", "0x10", "1e3", "\u{663}"];

/// What a broker may forward to a subscriber as it came from any producer:
/// `data` is split at each `0xFF` into a body, then header names and values
/// passed through raw (every escape, defined or not, and bytes that are not
/// UTF-8), framed by the broker's own headers and a `content-length` that is
/// right, missing or no length (the first byte chooses). The frame must be
/// read whole, keep its broker headers and its bound, say what is amiss in
/// it, and become a dead letter with that reason whose copy the broker can
/// take; the frame after it must come through untouched.
pub fn broker_passthrough(data: &[u8]) {
    let (mode, rest) = data.split_first().map_or((0, data), |(m, r)| (m % 3, r));
    let mut parts = rest.split(|b| *b == 0xFF);
    let mut body = parts.next().unwrap_or_default().to_vec();
    if mode != 0 {
        body.retain(|b| *b != 0);
    }
    let raw: Vec<Vec<u8>> = parts.map(|p| p.iter().copied().filter(|b| !matches!(b, b'\n' | b':')).collect()).collect();
    let mut wire = b"MESSAGE\nmessage-id:ID:fuzz-1\nack:fuzz-ack-1\ndestination:/queue/order.processing\n".to_vec();
    match mode {
        0 => wire.extend_from_slice(format!("content-length:{}\n", body.len()).as_bytes()),
        1 => {}
        _ => wire
            .extend_from_slice(format!("content-length:{}\n", ODD_LENGTHS[body.len() % ODD_LENGTHS.len()]).as_bytes()),
    }
    // Names and values alternate; a name left without a value gets an empty one.
    let mut amiss = false;
    for pair in raw.chunks(2) {
        let (name, value) = (&pair[0], pair.get(1).map_or(&[][..], |v| v.as_slice()));
        if name == b"content-length" {
            continue; // the broker's own: a producer's is taken by the broker, never passed on
        }
        amiss |= undefined_escape(name) || undefined_escape(value) || std::str::from_utf8(name).is_err();
        amiss |= std::str::from_utf8(value).is_err();
        wire.extend_from_slice(name);
        wire.push(b':');
        wire.extend_from_slice(value);
        wire.push(b'\n');
    }
    wire.extend_from_slice(b"\n");
    wire.extend_from_slice(&body);
    wire.extend_from_slice(b"\0\nMESSAGE\nmessage-id:ID:fuzz-2\nack:fuzz-ack-2\n\nnext\0\n");

    for chunk in [wire.len(), 7] {
        let (items, failed) = decode(&wire, chunk);
        assert!(!failed, "what a frame holds never loses the stream");
        let frames: Vec<Frame> = items
            .into_iter()
            .filter_map(|i| match i {
                Item::Frame(f) => Some(f),
                Item::Heartbeat => None,
            })
            .collect();
        let [first, next] = &frames[..] else { panic!("two frames, got {}", frames.len()) };
        assert_eq!((next.get("ack"), &next.body[..], &next.cut), (Some("fuzz-ack-2"), &b"next"[..], &None));
        assert_eq!((first.get("message-id"), first.get("ack")), (Some("ID:fuzz-1"), Some("fuzz-ack-1")));
        if body.len() <= stomp::MAX_BODY_BYTES {
            assert_eq!(first.body, body, "the body is whole");
        } else {
            assert_eq!(first.cut.as_ref().and_then(|c| c.body_bytes), Some(body.len()));
        }
        let headers: usize = first.headers.iter().map(|(k, v)| k.len() + v.len() + 1 + stomp::HEADER_COST).sum();
        assert!(headers + first.body.len() <= stomp::MAX_FRAME_BYTES, "within the frame bound");
        let defects = first.cut.as_ref().map_or(0, |c| c.defects.len());
        let dropped = first.cut.as_ref().map_or(0, |c| c.headers_dropped);
        // A header dropped for its size is not read, so its escapes are not judged.
        assert!(defects == 0 || amiss || mode == 2, "a defect is named only when there is one: {first:?}");
        assert!(defects > 0 || !(mode == 2 || amiss && dropped == 0), "every defect read is named: {first:?}");

        let delivery = consumer::handler::to_delivery(first.clone());
        assert_eq!(delivery.dead_letter_id, "ID:fuzz-1", "a redelivery is recognised");
        if defects > 0 {
            let reason = delivery.rejection.clone().expect("a frame found amiss is refused");
            assert!(reason.contains("not a valid STOMP 1.2 frame"), "{reason}");
        }
        let Some(reason) = delivery.rejection else { continue };
        let letter = schema::DeadLetter {
            dead_letter_id: delivery.dead_letter_id,
            reason,
            headers: delivery.headers.to_vec(),
            body: delivery.body.to_vec(),
            attempts: 0,
        };
        let copy = consumer::step::dead_letter_frame("/queue/order.processing", &letter);
        let mut encoded = BytesMut::new();
        StompCodec::default().encode(Item::Frame(copy), &mut encoded).expect("encoding cannot fail");
        let (again, failed) = decode(&encoded, encoded.len());
        assert!(!failed, "the dead-letter copy is a frame");
        let [Item::Frame(back)] = &again[..] else { panic!("one frame back") };
        assert!(back.cut.as_ref().is_none_or(|c| c.defects.is_empty()), "the copy is well-formed: {back:?}");
    }
}

/// True when `text` holds a backslash STOMP 1.2 does not define: any but
/// `\\`, `\n`, `\r` and `\c`, or one at its end.
fn undefined_escape(text: &[u8]) -> bool {
    let mut bytes = text.iter();
    while let Some(b) = bytes.next() {
        if *b == b'\\' && !matches!(bytes.next(), Some(b'\\' | b'n' | b'r' | b'c')) {
            return true;
        }
    }
    false
}

/// The consumer's check: any frame gives a delivery whose dead-letter key fits
/// its column; a rejection always has a reason; an accepted message names a
/// real order id, a quantity in range, and at most one outbox id.
pub fn consumer_message(data: &[u8]) {
    let (items, _) = decode(data, data.len());
    let mut frames: Vec<Frame> = items
        .into_iter()
        .filter_map(|i| match i {
            Item::Frame(f) => Some(f),
            Item::Heartbeat => None,
        })
        .collect();
    // The same bytes as the body of a message, with the first line as an outbox-id.
    let first_line = String::from_utf8_lossy(data.split(|b| *b == b'\n').next().unwrap_or_default()).into_owned();
    frames.push(Frame::new("MESSAGE").header("message-id", "ID:fuzz-1").body(data.to_vec()));
    frames.push(Frame::new("MESSAGE").header("outbox-id", first_line).body(data.to_vec()));
    for frame in frames {
        let delivery = consumer::handler::to_delivery(frame.clone());
        assert!(utf16_len(&delivery.dead_letter_id) <= DEAD_LETTER_ID_UNITS, "the key fits its column");
        match consumer::handler::parse(&frame) {
            Ok(accepted) => {
                assert!(accepted.message.order_id > 0);
                assert!(QUANTITY_RANGE.contains(&accepted.message.quantity));
                assert!(delivery.rejection.is_none() && delivery.order_id.is_some());
                if let (Some(header), Some(body)) = (delivery.outbox_id, accepted.message.outbox_id) {
                    assert_eq!(header, body, "one outbox id, or a rejection");
                }
            }
            Err(rejection) => {
                assert!(!rejection.reason.trim().is_empty(), "a rejection says why");
                assert_eq!(delivery.rejection.as_deref(), Some(rejection.reason.as_str()));
                assert!(delivery.order_id.is_none_or(|o| o.0 > 0), "a rejection names a real order or none");
            }
        }
    }
}

/// The API's and the form's validation: a valid order fits every column; an
/// invalid one names each bad field with a message.
pub fn order_validation(data: &[u8]) {
    let known = |p: &str| ["P123", "P200"].contains(&p);
    let mut raws = Vec::new();
    if let Ok(serde_json::Value::Object(object)) = serde_json::from_slice::<serde_json::Value>(data) {
        raws.push(producer::validation::RawOrder::from_json(&object));
    }
    let text = String::from_utf8_lossy(data);
    let mut fields = text.splitn(3, '&');
    let (name, product, quantity) = (fields.next(), fields.next(), fields.next());
    raws.push(producer::validation::RawOrder::from_form(name, product, quantity));
    for raw in raws {
        match producer::validation::validate(&raw, known) {
            Ok(order) => {
                let chars = order.customer_name.chars().count();
                assert!((1..=CUSTOMER_NAME_CHARS).contains(&chars), "{chars} characters");
                assert!(utf16_len(&order.customer_name) <= CUSTOMER_NAME_UNITS, "fits its column");
                assert_eq!(order.customer_name.trim(), order.customer_name, "trimmed");
                assert!(!order.customer_name.chars().any(char::is_control));
                assert!(known(&order.product_id));
                assert!(QUANTITY_RANGE.contains(&i64::from(order.quantity)));
            }
            Err(errors) => {
                assert!(!errors.is_empty(), "a refusal names a field");
                for e in errors {
                    assert!(["customer_name", "product_id", "quantity"].contains(&e.field), "{}", e.field);
                    assert!(!e.message.is_empty());
                }
            }
        }
    }
}

/// `DATABASE_URL` and `BROKER_URL`: whatever the text, parsing never panics,
/// and a password put into each form never shows, in the URL as displayed
/// nor in the error that refuses it.
pub fn urls(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = schema::DatabaseUrl::from_str(&text).map(|u| u.to_string());
    let _ = stomp::BrokerUrl::from_str(&text).map(|u| u.to_string());
    let secret = format!("Zk{}", text.chars().filter(|c| !c.is_control()).take(40).collect::<String>());
    let encoded = percent_encoding::utf8_percent_encode(&secret, percent_encoding::NON_ALPHANUMERIC).to_string();
    let shown = |outcome: Result<String, String>| outcome.unwrap_or_else(|e| e);
    let database = [
        format!("mssql://sa:{encoded}@db:1433/orders"),
        format!("server=tcp:db,1433;user=sa;password={{{}}};TrustServerCertificate=true", secret.replace('}', "}}")),
    ];
    for url in database {
        let outcome = schema::DatabaseUrl::from_str(&url).map(|u| format!("{u} {u:?}")).map_err(|e| format!("{e:#}"));
        let shown = shown(outcome);
        assert!(!shown.contains(&secret), "the password shows: {shown}");
    }
    let broker = stomp::BrokerUrl::from_str(&format!("tcp://app:{encoded}@mq:61613"))
        .map(|u| format!("{u} {u:?}"))
        .map_err(|e| error_reporter::Report::new(e).to_string());
    let shown = shown(broker);
    assert!(!shown.contains(&secret), "the passcode shows: {shown}");
}
