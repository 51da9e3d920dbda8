//! Test kit for end-to-end tests: a private ActiveMQ, the three services
//! started in-process on port 0, and typed helpers to drive and inspect them.
//!
//! Invariant: every helper waits on a condition with a deadline, never on a
//! fixed sleep; every test gets its own SQLite file and its own queue.

pub mod broker;
pub mod service;
pub mod stack;

use std::future::Future;
use std::time::{Duration, Instant};

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A queue name no other test uses.
pub fn unique_queue() -> String {
    format!("/queue/test.{}", uuid::Uuid::new_v4().simple())
}

/// Polls `check` every 20 ms until it returns `Some`, or panics with `what` after `timeout`.
pub async fn wait_for<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Reads one sample from Prometheus text, e.g. `orderflow_consumer_messages_total{outcome="processed"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Inserts `n` orders with their outbox rows straight into a SQLite database,
/// in one transaction (a backlog for the relay); `payload_pad` bytes of
/// padding make each message that much bigger. Returns the outbox ids.
pub fn fill_outbox(conn: &mut rusqlite::Connection, n: usize, payload_pad: usize) -> Vec<String> {
    let tx = conn.transaction().expect("begin");
    let mut ids = Vec::with_capacity(n);
    {
        let mut order = tx
            .prepare(
                "INSERT INTO orders (customer_name, product_id, quantity) VALUES (?1, 'P123', 2) RETURNING order_id",
            )
            .expect("prepare");
        let mut outbox = tx
            .prepare(
                "INSERT INTO outbox (outbox_id, order_id, event_type, payload) VALUES (?1, ?2, 'OrderPlacedV1', ?3)",
            )
            .expect("prepare");
        for i in 0..n {
            let name = format!("Backlog {i}");
            let order_id: i64 = order.query_row([&name], |r| r.get(0)).expect("insert order");
            let outbox_id = uuid::Uuid::now_v7().to_string();
            let mut payload = serde_json::json!({"order_id": order_id, "customer_name": name, "product_id": "P123",
                "quantity": 2, "version": 1, "outbox_id": outbox_id});
            if payload_pad > 0 {
                payload["pad"] = serde_json::json!("x".repeat(payload_pad));
            }
            outbox.execute(rusqlite::params![outbox_id, order_id, payload.to_string()]).expect("insert outbox row");
            ids.push(outbox_id);
        }
    }
    tx.commit().expect("commit");
    ids
}

/// Sends a persistent message with a plain STOMP client (as a seed-style
/// producer would), waiting for the broker's receipt.
pub async fn send_raw(client: &stomp::Client, queue: &str, body: &str, headers: &[(&str, &str)]) {
    let mut frame = stomp::Frame::new("SEND").header("destination", queue).header("persistent", "true");
    for (k, v) in headers {
        frame = frame.header(k, *v);
    }
    client.request(frame.body(body.to_string()), Duration::from_secs(10)).await.expect("broker accepts the send");
}
