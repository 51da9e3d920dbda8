//! The raw ceiling: a minimal STOMP client doing exactly the relay's and the
//! consumer's broker work with nothing else around it.

use std::time::{Duration, Instant};

use stomp::{Client, Config, Frame};

/// A message like the relay's: the same headers and a body of the same size.
pub fn sample_payload() -> String {
    serde_json::json!({"order_id": 123456, "customer_name": "Backlog 123456", "product_id": "P123", "quantity": 2,
        "version": 1, "outbox_id": "0193a0b4-7c1e-7a2b-9c3d-4e5f60718293"})
    .to_string()
}

fn frame(queue: &str, payload: &str) -> Frame {
    Frame::new("SEND")
        .header("destination", queue)
        .header("persistent", "true")
        .header("content-type", "application/json")
        .header("outbox-id", "0193a0b4-7c1e-7a2b-9c3d-4e5f60718293")
        .header("order-id", "123456")
        .header("event-type", "OrderPlacedV1")
        .body(payload.to_string())
}

async fn connect(url: &str) -> anyhow::Result<Client> {
    Ok(Client::connect(&Config::from_url(url).map_err(anyhow::Error::msg)?).await?)
}

/// Sends `n` messages in transactions of `batch`, one COMMIT receipt each; msg/s.
pub async fn send(url: &str, queue: &str, n: usize, batch: usize, payload: &str) -> anyhow::Result<f64> {
    let client = connect(url).await?;
    let started = Instant::now();
    let mut sent = 0;
    while sent < n {
        let k = batch.min(n - sent);
        let receipt = client.send_in_transaction((0..k).map(|_| frame(queue, payload))).await?;
        receipt.wait(Duration::from_secs(30)).await?;
        sent += k;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    client.disconnect(Duration::from_secs(2)).await;
    Ok(rate)
}

/// Consumes `n` messages with a client-individual ACK for each, the ACKs of
/// whatever has arrived written together (as the consumer does); msg/s.
pub async fn consume(url: &str, queue: &str, n: usize, prefetch: u32) -> anyhow::Result<f64> {
    let client = connect(url).await?;
    client.subscribe(queue, "raw", prefetch, Duration::from_secs(10)).await?;
    let mut messages = client.take_messages().expect("fresh client");
    let started = Instant::now();
    let mut received = 0;
    while received < n {
        let first = tokio::time::timeout(Duration::from_secs(30), messages.recv())
            .await?
            .ok_or_else(|| anyhow::anyhow!("connection closed"))?;
        let mut batch = vec![first];
        while let Ok(frame) = messages.try_recv() {
            batch.push(frame);
        }
        received += batch.len();
        let acks: Vec<&str> = batch.iter().map(|f| f.get("ack").unwrap_or_default()).collect();
        client.ack(&acks).await?;
    }
    let rate = n as f64 / started.elapsed().as_secs_f64();
    client.disconnect(Duration::from_secs(2)).await;
    Ok(rate)
}

/// Sends and consumes at once (two connections), steady state; msg/s end to end.
pub async fn send_and_consume(
    url: &str,
    queue: &str,
    n: usize,
    batch: usize,
    prefetch: u32,
    payload: &str,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let (sent, consumed) = tokio::join!(send(url, queue, n, batch, payload), consume(url, queue, n, prefetch));
    sent?;
    consumed?;
    Ok(n as f64 / started.elapsed().as_secs_f64())
}
