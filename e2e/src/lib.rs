//! The harness that runs the system, for the end-to-end tests, chaos and the
//! bench: a private ActiveMQ; the three services started in-process on port 0
//! (`Stack`, `service`) or as child processes (`process`), both from one
//! command line per service (`flags`); one wait with a deadline; the queue
//! read back; and the end-of-run invariants (`invariants`).
//!
//! Invariant: every helper waits on a condition with a deadline, never on a
//! fixed sleep; every test gets its own database (a SQLite file, or a fresh SQL Server
//! database when `TEST_DATABASE_URL` names one) and its own queue; nothing
//! started here outlives its handle.

pub mod broker;
pub mod flags;
pub mod invariants;
pub mod process;
pub mod service;
pub mod stack;

use std::time::{Duration, Instant};

use anyhow::Context;

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port")
}

/// A queue name no other test uses.
pub fn unique_queue() -> String {
    format!("/queue/test.{}", uuid::Uuid::new_v4().simple())
}

/// How long a wait pauses between two looks.
const POLL: Duration = Duration::from_millis(20);

/// Looks at `check` every 20 ms until it returns `Some`; fails with "timed
/// out after TIMEOUT waiting for WHAT" once `timeout` has passed. The one wait
/// of the harness: the others are this one with a check of their own.
pub async fn wait_until<T>(
    what: &str,
    timeout: Duration,
    mut check: impl AsyncFnMut() -> Option<T>,
) -> anyhow::Result<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return Ok(value);
        }
        anyhow::ensure!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(POLL).await;
    }
}

/// [`wait_until`] for tests: panics when the time is up.
pub async fn wait_for<T>(what: &str, timeout: Duration, check: impl AsyncFnMut() -> Option<T>) -> T {
    wait_until(what, timeout, check).await.unwrap_or_else(|error| panic!("{error}"))
}

/// Reads one sample from Prometheus text, e.g. `orderflow_consumer_messages_total{outcome="processed"}`.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|l| l.strip_prefix(series).and_then(|rest| rest.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The database for one test: a fresh SQL Server database when
/// `TEST_DATABASE_URL` names one (either URL form), else a SQLite file in `dir`.
pub async fn test_database_url(dir: &tempfile::TempDir) -> String {
    match std::env::var("TEST_DATABASE_URL") {
        Ok(url) if schema::testing::is_mssql(&url) => {
            schema::testing::fresh_mssql_database(&url).await.expect("a fresh SQL Server database")
        }
        _ => format!("sqlite://{}", dir.path().join("orderflow.db").display()),
    }
}

/// A plain STOMP client of the broker at `broker_url`, as any other client would be.
pub async fn raw_client(broker_url: &str) -> stomp::Client {
    stomp::Client::connect(&stomp::Config::from_url(broker_url).expect("broker url")).await.expect("broker connects")
}

/// The next `n` dead letters on `<queue>.DLQ`, each acknowledged, read with `client`.
pub async fn next_dead_letters(client: &stomp::Client, queue: &str, n: usize) -> Vec<stomp::Frame> {
    client.subscribe(&format!("{queue}.DLQ"), "dlq", 100, Duration::from_secs(10)).await.expect("subscribe to the DLQ");
    let mut messages = client.take_messages().expect("message stream");
    let mut letters = Vec::new();
    while letters.len() < n {
        let frame = tokio::time::timeout(Duration::from_secs(60), messages.recv())
            .await
            .unwrap_or_else(|_| panic!("{n} dead letters, got {}", letters.len()))
            .expect("stream open");
        client.ack(&[frame.get("ack").expect("ack header")]).await.expect("ack");
        letters.push(frame);
    }
    letters
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

/// Sends one SEND frame written byte for byte as given (`head` is its header
/// lines, each ending in `\n`, written unescaped), as a producer in another
/// language might, on a connection of its own, and waits for the broker's
/// receipt: how a header our own client would escape reaches the broker as is.
pub async fn send_raw_bytes(broker_url: &str, queue: &str, head: &[u8], body: &[u8]) -> anyhow::Result<()> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let config = stomp::Config::from_url(broker_url).map_err(anyhow::Error::msg)?;
    let addr = config.addrs.first().context("a broker address")?;
    let mut socket = tokio::net::TcpStream::connect(addr).await.context("connecting to the broker")?;
    let mut frame = b"CONNECT\naccept-version:1.2\nhost:localhost\nheart-beat:0,0\n\n\0".to_vec();
    frame.extend_from_slice(format!("SEND\ndestination:{queue}\npersistent:true\nreceipt:raw-1\n").as_bytes());
    frame.extend_from_slice(head);
    frame.extend_from_slice(format!("content-length:{}\n\n", body.len()).as_bytes());
    frame.extend_from_slice(body);
    frame.push(0);
    socket.write_all(&frame).await.context("writing the frames")?;
    let mut answer = Vec::new();
    let receipt = async {
        let mut chunk = [0u8; 4096];
        while !String::from_utf8_lossy(&answer).contains("receipt-id:raw-1") {
            let n = socket.read(&mut chunk).await?;
            anyhow::ensure!(n > 0, "the broker closed the connection: {}", String::from_utf8_lossy(&answer));
            answer.extend_from_slice(&chunk[..n]);
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(10), receipt).await.context("no receipt in 10 s")??;
    Ok(())
}

/// Reads every message on `queue` (acknowledging each) until the queue has
/// been quiet for `quiet`.
pub async fn read_queue(broker_url: &str, queue: &str, quiet: Duration) -> anyhow::Result<Vec<stomp::Frame>> {
    let client = stomp::Client::connect(&stomp::Config::from_url(broker_url).map_err(anyhow::Error::msg)?).await?;
    client.subscribe(queue, "reader", 1000, Duration::from_secs(10)).await?;
    let mut messages = client.take_messages().context("message stream")?;
    let mut frames = Vec::new();
    while let Ok(Some(frame)) = tokio::time::timeout(quiet, messages.recv()).await {
        if let Some(ack) = frame.get("ack") {
            client.ack(&[ack]).await?;
        }
        frames.push(frame);
    }
    client.disconnect(Duration::from_secs(2)).await;
    Ok(frames)
}
