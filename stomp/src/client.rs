//! The connection: one reader task resolving receipts and routing messages,
//! a shared writer, and a heart-beat task.
//!
//! Invariant: when the reader stops (EOF, error, missed heart-beats, ERROR
//! frame) every pending receipt resolves to `Closed` and the message stream ends.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use error_reporter::Report;
use futures::{SinkExt, StreamExt};
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{mpsc, oneshot};
use tokio_util::codec::{FramedRead, FramedWrite};
use tokio_util::sync::CancellationToken;

use crate::codec::{CodecError, Frame, Item, StompCodec};

/// What can go wrong talking to the broker.
#[derive(Debug, thiserror::Error)]
pub enum StompError {
    /// Socket error.
    #[error("broker i/o")]
    Io(#[from] std::io::Error),
    /// The broker sent something that is not STOMP.
    #[error("broker protocol")]
    Codec(#[from] CodecError),
    /// The broker refused the connection (bad credentials, ...).
    #[error("broker refused the connection: {0}")]
    Refused(String),
    /// The broker answered this frame with an ERROR: a permanent failure of the frame.
    #[error("broker rejected the frame: {0}")]
    Rejected(String),
    /// The connection ended before an answer: the outcome is unknown.
    #[error("broker connection closed: {0}")]
    Closed(String),
    /// No answer in time: the outcome is unknown.
    #[error("broker did not answer in time")]
    Timeout,
}

impl StompError {
    /// True when the frame itself was refused (retrying it as-is will not help).
    pub fn is_rejection(&self) -> bool {
        matches!(self, StompError::Rejected(_))
    }
}

/// How to reach the broker: one address, or several (a master/slave pair or
/// a network of brokers), tried in order until one answers.
#[derive(Clone)]
pub struct Config {
    /// `host:port` of each STOMP connector, in the order they are tried.
    pub addrs: Vec<String>,
    /// Optional login.
    pub login: Option<String>,
    /// Optional passcode (never logged).
    pub passcode: Option<String>,
    /// Heart-beat interval we offer and ask for; zero disables heart-beats.
    pub heartbeat: Duration,
    /// Bound on TCP connect plus the CONNECT/CONNECTED exchange.
    pub connect_timeout: Duration,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("addrs", &self.addrs)
            .field("login", &self.login)
            .field("passcode", &self.passcode.as_ref().map(|_| "***"))
            .field("heartbeat", &self.heartbeat)
            .finish()
    }
}

impl Config {
    /// The settings for `url` (see [`BrokerUrl`](crate::BrokerUrl)).
    pub fn from_url(url: &str) -> Result<Self, crate::UrlError> {
        Ok(url.parse::<crate::BrokerUrl>()?.config())
    }
}

type Pending = Mutex<HashMap<String, oneshot::Sender<Result<(), StompError>>>>;

struct Inner {
    writer: tokio::sync::Mutex<FramedWrite<OwnedWriteHalf, StompCodec>>,
    pending: Pending,
    next_receipt: AtomicU64,
    closed: CancellationToken,
    close_reason: Mutex<Option<String>>,
}

impl Inner {
    fn close(&self, reason: String) {
        if !self.closed.is_cancelled() {
            tracing::debug!(%reason, "stomp connection closed");
            *self.close_reason.lock().expect("close reason lock") = Some(reason.clone());
        }
        self.closed.cancel();
        let pending: Vec<_> = self.pending.lock().expect("pending lock").drain().collect();
        for (_, tx) in pending {
            let _ = tx.send(Err(StompError::Closed(reason.clone())));
        }
    }

    fn reason(&self) -> String {
        self.close_reason.lock().expect("close reason lock").clone().unwrap_or_else(|| "closed".into())
    }
}

/// A broker's answer to one receipted frame, to be awaited.
pub struct Receipt(oneshot::Receiver<Result<(), StompError>>);

impl Receipt {
    /// Waits for the broker's answer, up to `timeout`.
    pub async fn wait(self, timeout: Duration) -> Result<(), StompError> {
        match tokio::time::timeout(timeout, self.0).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(_)) => Err(StompError::Closed("connection dropped".into())),
            Err(_) => Err(StompError::Timeout),
        }
    }
}

/// One STOMP connection.
pub struct Client {
    inner: Arc<Inner>,
    messages: Mutex<Option<mpsc::Receiver<Frame>>>,
}

impl Client {
    /// Connects to the first broker that answers (each address in order,
    /// each within `connect_timeout`) and completes the CONNECT/CONNECTED
    /// exchange. A standby broker of a shared-store pair does not listen
    /// until it holds the store's lock, so it is skipped at once.
    pub async fn connect(config: &Config) -> Result<Client, StompError> {
        let mut last = StompError::Closed("no broker address".into());
        for addr in &config.addrs {
            match tokio::time::timeout(config.connect_timeout, Self::connect_to(config, addr)).await {
                Ok(Ok(client)) => {
                    if config.addrs.len() > 1 {
                        tracing::info!(%addr, "connected to broker");
                    }
                    return Ok(client);
                }
                Ok(Err(error)) => {
                    tracing::debug!(%addr, error = %Report::new(&error), "broker did not answer; trying the next");
                    last = error;
                }
                Err(_) => last = StompError::Timeout,
            }
        }
        Err(last)
    }

    async fn connect_to(config: &Config, addr: &str) -> Result<Client, StompError> {
        let tcp = TcpStream::connect(addr).await?;
        tcp.set_nodelay(true)?;
        let (read, write) = tcp.into_split();
        let mut reader = FramedRead::new(read, StompCodec::default());
        let mut writer = FramedWrite::new(write, StompCodec::default());
        let hb = config.heartbeat.as_millis();
        let host = addr.rsplit_once(':').map_or("localhost", |(h, _)| h);
        let mut connect = Frame::new("CONNECT")
            .header("accept-version", "1.2")
            .header("host", host)
            .header("heart-beat", format!("{hb},{hb}"));
        if let Some(login) = &config.login {
            connect = connect.header("login", login.clone());
        }
        if let Some(passcode) = &config.passcode {
            connect = connect.header("passcode", passcode.clone());
        }
        writer.send(Item::Frame(connect)).await?;
        let connected = loop {
            match reader.next().await {
                Some(Ok(Item::Heartbeat)) => continue,
                Some(Ok(Item::Frame(f))) => break f,
                Some(Err(e)) => return Err(e.into()),
                None => return Err(StompError::Closed("broker closed during CONNECT".into())),
            }
        };
        if connected.command != "CONNECTED" {
            let msg = connected.get("message").unwrap_or_default().to_string();
            return Err(StompError::Refused(
                format!("{msg} {}", String::from_utf8_lossy(&connected.body)).trim().to_string(),
            ));
        }
        // heart-beat negotiation (STOMP 1.2): each side sends at the larger of
        // what it offers and what the other wants; 0 on either side disables.
        let (server_send, server_want) = parse_heartbeat(connected.get("heart-beat"));
        let send_every = (hb > 0 && server_want > 0).then(|| Duration::from_millis(hb.max(server_want) as u64));
        let expect_every = (hb > 0 && server_send > 0).then(|| Duration::from_millis(hb.max(server_send) as u64));

        let inner = Arc::new(Inner {
            writer: tokio::sync::Mutex::new(writer),
            pending: Mutex::new(HashMap::new()),
            next_receipt: AtomicU64::new(1),
            closed: CancellationToken::new(),
            close_reason: Mutex::new(None),
        });
        let (msg_tx, msg_rx) = mpsc::channel(1024);
        tokio::spawn(read_loop(inner.clone(), reader, msg_tx, expect_every));
        if let Some(every) = send_every {
            tokio::spawn(heartbeat_loop(inner.clone(), every));
        }
        Ok(Client { inner, messages: Mutex::new(Some(msg_rx)) })
    }

    /// The MESSAGE frames of this connection's subscriptions; `None` after the first call.
    pub fn take_messages(&self) -> Option<mpsc::Receiver<Frame>> {
        self.messages.lock().expect("messages lock").take()
    }

    /// True once the connection is gone.
    pub fn is_closed(&self) -> bool {
        self.inner.closed.is_cancelled()
    }

    /// Why the connection ended (`closed` while it is open).
    pub fn close_reason(&self) -> String {
        self.inner.reason()
    }

    /// Resolves when the connection is gone.
    pub async fn closed(&self) {
        self.inner.closed.cancelled().await
    }

    /// Sends frames without receipts (ACK, BEGIN, SUBSCRIBE, ...), flushing once.
    pub async fn send(&self, frames: impl IntoIterator<Item = Frame>) -> Result<(), StompError> {
        if self.is_closed() {
            return Err(StompError::Closed(self.inner.reason()));
        }
        let mut writer = self.inner.writer.lock().await;
        for frame in frames {
            if let Err(e) = writer.feed(Item::Frame(frame)).await {
                self.inner.close(format!("write failed: {}", Report::new(&e)));
                return Err(e.into());
            }
        }
        if let Err(e) = writer.flush().await {
            self.inner.close(format!("write failed: {}", Report::new(&e)));
            return Err(e.into());
        }
        Ok(())
    }

    /// Sends frames, each with a receipt request, flushing once; returns one
    /// [`Receipt`] per frame, in order.
    pub async fn send_with_receipts(
        &self,
        frames: impl IntoIterator<Item = Frame>,
    ) -> Result<Vec<Receipt>, StompError> {
        let mut receipts = Vec::new();
        let mut tagged = Vec::new();
        for frame in frames {
            let id = format!("r-{}", self.inner.next_receipt.fetch_add(1, Ordering::Relaxed));
            let (tx, rx) = oneshot::channel();
            self.inner.pending.lock().expect("pending lock").insert(id.clone(), tx);
            receipts.push(Receipt(rx));
            tagged.push(frame.header("receipt", id));
        }
        self.send(tagged).await?;
        Ok(receipts)
    }

    /// Sends `frames` inside one STOMP transaction (BEGIN, frames, COMMIT) in
    /// a single flush; the returned receipt is the COMMIT's. ActiveMQ persists
    /// the whole transaction with one fsync, which is what makes batches fast.
    pub async fn send_in_transaction(&self, frames: impl IntoIterator<Item = Frame>) -> Result<Receipt, StompError> {
        let n = self.inner.next_receipt.fetch_add(1, Ordering::Relaxed);
        let tx = format!("tx-{n}");
        let receipt_id = format!("r-{n}");
        let (sender, rx) = oneshot::channel();
        self.inner.pending.lock().expect("pending lock").insert(receipt_id.clone(), sender);
        let mut all = vec![Frame::new("BEGIN").header("transaction", tx.clone())];
        all.extend(frames.into_iter().map(|f| f.header("transaction", tx.clone())));
        all.push(Frame::new("COMMIT").header("transaction", tx).header("receipt", receipt_id));
        self.send(all).await?;
        Ok(Receipt(rx))
    }

    /// Sends one frame with a receipt and waits for it.
    pub async fn request(&self, frame: Frame, timeout: Duration) -> Result<(), StompError> {
        let receipt = self.send_with_receipts([frame]).await?.pop().expect("one receipt per frame");
        receipt.wait(timeout).await
    }

    /// Subscribes to `destination` with client-individual acknowledgement and a prefetch.
    pub async fn subscribe(
        &self,
        destination: &str,
        id: &str,
        prefetch: u32,
        timeout: Duration,
    ) -> Result<(), StompError> {
        let frame = Frame::new("SUBSCRIBE")
            .header("destination", destination)
            .header("id", id)
            .header("ack", "client-individual")
            .header("activemq.prefetchSize", prefetch.to_string());
        self.request(frame, timeout).await
    }

    /// Acknowledges messages by the value of their `ack` header (not `message-id`:
    /// ActiveMQ rejects that).
    pub async fn ack(&self, ack_ids: &[&str]) -> Result<(), StompError> {
        let frames: Vec<Frame> = ack_ids.iter().map(|id| Frame::new("ACK").header("id", *id)).collect();
        self.send(frames).await
    }

    /// Says goodbye politely (waiting briefly for the receipt) and closes.
    pub async fn disconnect(&self, timeout: Duration) {
        if !self.is_closed() {
            let _ = self.request(Frame::new("DISCONNECT"), timeout).await;
        }
        self.inner.close("disconnected".into());
        let _ = self.inner.writer.lock().await.get_mut().shutdown().await;
    }
}

impl Drop for Client {
    fn drop(&mut self) {
        self.inner.close("client dropped".into());
    }
}

use tokio::io::AsyncWriteExt;

fn parse_heartbeat(value: Option<&str>) -> (u128, u128) {
    let Some((a, b)) = value.and_then(|v| v.split_once(',')) else {
        return (0, 0);
    };
    (a.trim().parse().unwrap_or(0), b.trim().parse().unwrap_or(0))
}

async fn read_loop(
    inner: Arc<Inner>,
    mut reader: FramedRead<OwnedReadHalf, StompCodec>,
    messages: mpsc::Sender<Frame>,
    expect_every: Option<Duration>,
) {
    // Allow generous slack before declaring a silent broker dead.
    let silence = expect_every.map(|d| d * 3);
    let reason = loop {
        let next = async {
            match silence {
                Some(limit) => tokio::time::timeout(limit, reader.next()).await.ok(),
                None => Some(reader.next().await),
            }
        };
        let item = tokio::select! {
            _ = inner.closed.cancelled() => break inner.reason(),
            item = next => item,
        };
        let frame = match item {
            None => break "broker missed its heart-beats".to_string(),
            Some(None) => break "broker closed the connection".to_string(),
            Some(Some(Err(e))) => {
                // Only a stream that lost its frame boundaries (or the socket) ends
                // up here: what a frame holds never does. Say so where it is seen.
                let reason = format!("read failed: {}", Report::new(&e));
                tracing::warn!(%reason, "broker stream unreadable; closing the connection");
                break reason;
            }
            Some(Some(Ok(Item::Heartbeat))) => continue,
            Some(Some(Ok(Item::Frame(frame)))) => frame,
        };
        match frame.command.as_str() {
            "MESSAGE" => {
                if messages.send(frame).await.is_err() {
                    tracing::debug!("message dropped: nobody is reading this connection's messages");
                }
            }
            "RECEIPT" => resolve(&inner, frame.get("receipt-id"), Ok(())),
            "ERROR" => {
                let text = format!(
                    "{} {}",
                    frame.get("message").unwrap_or_default(),
                    String::from_utf8_lossy(&frame.body).trim()
                )
                .trim()
                .to_string();
                match frame.get("receipt-id") {
                    Some(id) => resolve(&inner, Some(id), Err(StompError::Rejected(text))),
                    None => break format!("broker error: {text}"),
                }
            }
            other => tracing::debug!(command = other, "ignoring unexpected frame"),
        }
    };
    inner.close(reason);
}

fn resolve(inner: &Inner, receipt_id: Option<&str>, answer: Result<(), StompError>) {
    let Some(id) = receipt_id else { return };
    if let Some(tx) = inner.pending.lock().expect("pending lock").remove(id) {
        let _ = tx.send(answer);
    }
}

async fn heartbeat_loop(inner: Arc<Inner>, every: Duration) {
    let mut tick = tokio::time::interval(every / 2);
    loop {
        tokio::select! {
            _ = inner.closed.cancelled() => return,
            _ = tick.tick() => {}
        }
        let mut writer = inner.writer.lock().await;
        if let Err(e) = writer.send(Item::Heartbeat).await {
            drop(writer);
            inner.close(format!("heart-beat write failed: {}", Report::new(&e)));
            return;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn connect_skips_a_broker_that_does_not_answer() {
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = closed.local_addr().unwrap().to_string();
        drop(closed);
        let live = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let live_addr = live.local_addr().unwrap().to_string();
        tokio::spawn(async move {
            let (socket, _) = live.accept().await.unwrap();
            let (read, write) = socket.into_split();
            let mut reader = FramedRead::new(read, StompCodec::default());
            let mut writer = FramedWrite::new(write, StompCodec::default());
            let Some(Ok(Item::Frame(connect))) = futures::StreamExt::next(&mut reader).await else {
                panic!("a CONNECT frame")
            };
            assert_eq!(connect.command, "CONNECT");
            let connected = Frame::new("CONNECTED").header("version", "1.2").header("heart-beat", "0,0");
            futures::SinkExt::send(&mut writer, Item::Frame(connected)).await.unwrap();
            std::future::pending::<()>().await;
        });
        let mut config = Config::from_url(&format!("failover:(tcp://{dead},tcp://{live_addr})")).unwrap();
        config.heartbeat = Duration::ZERO;
        let client = Client::connect(&config).await.expect("the second broker answers");
        assert!(!client.is_closed());
    }
}
