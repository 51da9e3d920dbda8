//! The faults: what each does, and the hostile messages a plain STOMP client sends.
//!
//! Invariant: every hostile message carries a `chaos-id` header, which its
//! dead-letter copy keeps as `original-chaos-id`, so the run can prove each
//! one reached the dead-letter queue.

use std::time::Duration;

use schema::OutboxId;
use schema::testing::Probe;

/// One kind of fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL of the service at this index, restarted after a pause.
    Kill(usize),
    /// SIGTERM of the service at this index (it must drain and exit 0), restarted.
    Term(usize),
    /// SIGKILL of the broker, restarted on the same store.
    BrokerKill,
    /// SQLite's write lock held by another connection.
    DatabaseLock,
    /// A burst of malformed, huge, non-BMP and stray messages on the order queue.
    Hostile,
}

impl Fault {
    /// Every kind, for `services` services.
    pub fn all(services: usize) -> Vec<Fault> {
        let mut all: Vec<Fault> = (0..services).flat_map(|i| [Fault::Kill(i), Fault::Term(i)]).collect();
        all.extend([Fault::BrokerKill, Fault::Hostile, Fault::DatabaseLock]);
        all
    }

    /// A label for the report.
    pub fn label(self, names: &[String]) -> String {
        match self {
            Fault::Kill(i) => format!("SIGKILL {}", names[i]),
            Fault::Term(i) => format!("SIGTERM {}", names[i]),
            Fault::BrokerKill => "broker SIGKILL + restart".into(),
            Fault::DatabaseLock => format!("SQLite write lock held {} s", LOCK_HELD.as_secs()),
            Fault::Hostile => format!("{} hostile messages", HOSTILE_KINDS.len()),
        }
    }
}

/// How long the SQLite write lock is held.
pub const LOCK_HELD: Duration = Duration::from_secs(3);

/// Holds the database's write lock from the probe's own session for [`LOCK_HELD`].
pub async fn hold_write_lock(probe: &dyn Probe) -> anyhow::Result<()> {
    let held = probe.hold_write_lock().await?;
    tokio::time::sleep(LOCK_HELD).await;
    held.release().await;
    Ok(())
}

/// The kinds of hostile message, by name.
pub const HOSTILE_KINDS: [&str; 9] = [
    "malformed JSON",
    "quantity as text",
    "stray outbox-id",
    "huge body",
    "non-BMP name, bad quantity",
    "missing order",
    "17 MiB frame",
    "another order's outbox-id",
    "10,235-byte header",
];

/// A hostile message for an existing `order`, `other` being another order's
/// outbox id: (kind, body, extra headers).
pub fn hostile_message(kind: &str, order: i64, other: OutboxId) -> (String, Vec<(String, String)>) {
    let emoji = "\u{1F600}".repeat(300);
    match kind {
        "malformed JSON" => (format!(r#"{{"order_id": {order}, "quantity": "#), vec![]),
        "quantity as text" => (
            format!(r#"{{"order_id": {order}, "customer_name": "Mallory", "product_id": "P123", "quantity": "lots"}}"#),
            vec![],
        ),
        "stray outbox-id" => (
            format!(r#"{{"order_id": {order}, "customer_name": "Mallory", "product_id": "P123", "quantity": 0}}"#),
            vec![("outbox-id".into(), OutboxId::new().to_string())],
        ),
        "huge body" => (
            format!(
                r#"{{"order_id": {order}, "customer_name": "{}", "product_id": "P123", "quantity": 1}}"#,
                "x".repeat(200_000)
            ),
            vec![],
        ),
        "17 MiB frame" => ("z".repeat(17 << 20), vec![]),
        // Valid, and for a real order: only the outbox id is not its own.
        "another order's outbox-id" => (
            format!(r#"{{"order_id": {order}, "customer_name": "Mallory", "product_id": "P123", "quantity": 1}}"#),
            vec![("outbox-id".into(), other.to_string())],
        ),
        "10,235-byte header" => (format!(r#"{{"order_id": {order}"#), vec![("note".into(), "n".repeat(10_235))]),
        "non-BMP name, bad quantity" => (
            format!(r#"{{"order_id": {order}, "customer_name": "{emoji}", "product_id": "P123", "quantity": -1}}"#),
            vec![],
        ),
        _ => (
            r#"{"order_id": 987654321987, "customer_name": "Nobody", "product_id": "P123", "quantity": 1}"#.into(),
            vec![],
        ),
    }
}

/// Sends one of each hostile kind for `order` (`other`: another order's
/// outbox id); returns (chaos-id, kind) per message.
pub async fn send_hostile(
    broker_url: &str,
    queue: &str,
    order: i64,
    other: OutboxId,
) -> anyhow::Result<Vec<(String, String)>> {
    let config = stomp::Config::from_url(broker_url).map_err(anyhow::Error::msg)?;
    let client = stomp::Client::connect(&config).await?;
    let mut sent = Vec::new();
    for kind in HOSTILE_KINDS {
        let (body, headers) = hostile_message(kind, order, other);
        let id = format!("chaos-{}", uuid::Uuid::new_v4().simple());
        let mut frame = stomp::Frame::new("SEND")
            .header("destination", queue)
            .header("persistent", "true")
            .header("chaos-id", id.clone())
            .header("content-type", "application/json");
        for (k, v) in headers {
            frame = frame.header(&k, v);
        }
        client.request(frame.body(body.into_bytes()), Duration::from_secs(10)).await?;
        sent.push((id, kind.to_string()));
    }
    client.disconnect(Duration::from_secs(2)).await;
    Ok(sent)
}
