//! The HTTP server of every port (the producer's public port and each admin
//! port): our accept loop on hyper's HTTP/1 connections, in place of
//! `axum::serve`, which has no timer (so no header-read timeout), no idle
//! timeout, no connection cap and a drain without end.
//!
//! Invariant: a port holds at most `HTTP_MAX_CONNECTIONS` connections, each
//! within the bounds of [`crate::HttpLimits`] (see `connection.rs`); once the
//! shutdown token fires it accepts nothing more, asks every connection to
//! finish, and drops whatever is left after the grace period, so [`serve`]
//! always returns within the grace period of the shutdown signal.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use error_reporter::Report;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Notify;
use tokio::task::{AbortHandle, Id, JoinSet};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::HttpLimits;
use crate::connection::{Activity, serve_connection};

/// At most one warning per this long that a port is at its cap (an attack
/// would otherwise write one per connection).
const CAP_WARNING_EVERY: Duration = Duration::from_secs(60);

/// Pause after an accept error that is not one connection's (out of file
/// descriptors, out of memory): retrying at once would spin.
const ACCEPT_ERROR_PAUSE: Duration = Duration::from_millis(100);

/// A connection the port holds: what it is doing, and how to drop it.
struct Held {
    activity: Arc<Activity>,
    abort: AbortHandle,
}

/// Serves `router` on `listener` within `limits` until `shutdown` fires, then
/// drains: accepts nothing more, closes each connection at once or, if it has
/// a request in service, once that is answered, and drops those still open
/// after `limits.grace`. Routers can read the peer with `ConnectInfo<SocketAddr>`.
///
/// At the cap, a new connection takes the place of the one that has waited
/// longest with no request in service (an idle keep-alive, a silent or a
/// slow client), which is dropped. Chosen so that clients that open
/// connections and send nothing cannot lock others out for a whole idle
/// timeout, while no request in service is ever cut to make room. When every
/// connection has a request in service, the new one waits (and the listener
/// with it, so later ones wait in the listen backlog) until one is answered,
/// within the request timeout.
pub async fn serve(listener: TcpListener, router: Router, limits: HttpLimits, shutdown: CancellationToken) {
    let max = limits.max_connections.max(1);
    let went_idle = Arc::new(Notify::new());
    let mut tasks = JoinSet::new();
    let mut held: HashMap<Id, Held> = HashMap::new();
    let mut warned_at: Option<Instant> = None;
    // A connection accepted at the cap waits here, and the listener with it.
    let mut next: Option<(TcpStream, SocketAddr)> = None;
    loop {
        if let Some((stream, peer)) = next.take() {
            // Counted until their tasks end, dropped connections included: a
            // hard bound on the sockets the port holds.
            if tasks.len() >= max {
                if warned_at.is_none_or(|at| at.elapsed() >= CAP_WARNING_EVERY) {
                    warned_at = Some(Instant::now());
                    tracing::warn!(
                        max,
                        "HTTP connection cap reached; dropping the longest-idle connections for new ones"
                    );
                }
                // Unless one dropped already is still ending; false when every one has a request in service.
                if tasks.len() == held.len() {
                    drop_longest_waiting(&mut held);
                }
                next = Some((stream, peer));
                tokio::select! {
                    biased;
                    () = shutdown.cancelled() => break,
                    Some(ended) = tasks.join_next_with_id() => forget(&mut held, ended),
                    () = went_idle.notified() => {}
                }
                continue;
            }
            let activity = Activity::new(went_idle.clone());
            let connection = serve_connection(stream, peer, router.clone(), limits, activity.clone(), shutdown.clone());
            let abort = tasks.spawn(connection);
            held.insert(abort.id(), Held { activity, abort });
        }
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            Some(ended) = tasks.join_next_with_id() => forget(&mut held, ended),
            accepted = listener.accept() => match accepted {
                Ok(accepted) => next = Some(accepted),
                Err(error) => accept_failed(&error).await,
            },
        }
    }
    drop((listener, next));
    drain(tasks, limits.grace).await;
}

/// Waits for every connection to end (each was asked to by the shutdown
/// token), and drops those still open after `grace`.
async fn drain(mut tasks: JoinSet<()>, grace: Duration) {
    let expired = tokio::time::sleep(grace);
    tokio::pin!(expired);
    loop {
        tokio::select! {
            ended = tasks.join_next() => if ended.is_none() {
                return;
            },
            () = &mut expired => break,
        }
    }
    tracing::warn!(open = tasks.len(), "grace period over; dropping the HTTP connections still open");
    tasks.shutdown().await;
}

/// Drops the connection that has waited longest with no request in service
/// (a half-sent head, a silent client, an idle keep-alive; at worst one still
/// writing its last answer to a client that does not read it) and stops
/// tracking it; false if every connection has a request in service. Dropped,
/// not closed gracefully: hyper would wait for a first request's half-sent
/// head, and the new connection would wait with it.
fn drop_longest_waiting(held: &mut HashMap<Id, Held>) -> bool {
    let longest = held.iter().filter_map(|(id, c)| Some((c.activity.waiting_since()?, *id))).min();
    let Some((_, id)) = longest else {
        return false;
    };
    if let Some(connection) = held.remove(&id) {
        connection.abort.abort();
    }
    tracing::debug!("connection dropped to make room at the cap");
    true
}

/// Forgets a connection task that ended; a panic in a handler ends only its connection.
fn forget(held: &mut HashMap<Id, Held>, ended: Result<(Id, ()), tokio::task::JoinError>) {
    let id = match ended {
        Ok((id, ())) => id,
        Err(error) => {
            if error.is_panic() {
                tracing::error!(error = %Report::new(&error), "an HTTP connection panicked");
            }
            error.id()
        }
    };
    held.remove(&id);
}

/// An accept error: one connection's (reset before it was accepted) is
/// skipped; any other (out of descriptors) is logged and retried after a pause.
async fn accept_failed(error: &std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(error.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    tracing::warn!(error = %Report::new(error), "accepting an HTTP connection failed; retrying");
    tokio::time::sleep(ACCEPT_ERROR_PAUSE).await;
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use axum::extract::ConnectInfo;
    use axum::routing::{get, post};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    use super::*;

    /// How long a test waits for what must happen well before it.
    const DEADLINE: Duration = Duration::from_secs(10);
    const LONG: Duration = Duration::from_secs(600);

    /// Bounds long enough never to fire in a test; each test shortens the one it checks.
    fn patient() -> HttpLimits {
        HttpLimits {
            header_read: LONG,
            idle: LONG,
            request: LONG,
            max_connections: 64,
            max_buffer_bytes: 16_384,
            grace: LONG,
        }
    }

    struct Running {
        addr: SocketAddr,
        shutdown: CancellationToken,
        served: tokio::task::JoinHandle<()>,
        /// Told each time `POST /echo` is in service, before it reads its body.
        echoing: Arc<Notify>,
    }

    impl Running {
        async fn until_echo_in_service(&self) {
            tokio::time::timeout(DEADLINE, self.echoing.notified()).await.expect("the request reaches the router");
        }
    }

    /// `GET /` answers the peer address the router saw; `POST /echo` its body.
    async fn start(limits: HttpLimits) -> Running {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let echoing = Arc::new(Notify::new());
        let told = echoing.clone();
        let echo = move |body: axum::body::Body| async move {
            told.notify_one();
            axum::body::to_bytes(body, usize::MAX).await.map_err(|_| axum::http::StatusCode::BAD_REQUEST)
        };
        let router = Router::new()
            .route("/", get(|ConnectInfo(peer): ConnectInfo<SocketAddr>| async move { peer.to_string() }))
            .route("/echo", post(echo));
        let shutdown = CancellationToken::new();
        let served = tokio::spawn(serve(listener, router, limits, shutdown.clone()));
        Running { addr, shutdown, served, echoing }
    }

    async fn connect(running: &Running) -> TcpStream {
        TcpStream::connect(running.addr).await.unwrap()
    }

    /// Reads until the server closes the connection; what it sent.
    async fn until_closed(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(n) => seen.extend_from_slice(&buf[..n]),
                }
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("the server closes the connection");
        String::from_utf8_lossy(&seen).into_owned()
    }

    /// Sends a keep-alive `GET /` and reads its whole answer; the answer's body.
    async fn get_root(stream: &mut TcpStream) -> String {
        stream.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        read_answer(stream).await
    }

    /// Reads one answer with a `content-length`; its body.
    async fn read_answer(stream: &mut TcpStream) -> String {
        let mut seen = Vec::new();
        let read = async {
            let mut buf = [0u8; 4096];
            loop {
                let text = String::from_utf8_lossy(&seen).into_owned();
                if let Some((head, body)) = text.split_once("\r\n\r\n") {
                    let length = head
                        .lines()
                        .find_map(|l| {
                            l.to_ascii_lowercase().strip_prefix("content-length:").map(|v| v.trim().to_string())
                        })
                        .and_then(|v| v.parse::<usize>().ok())
                        .expect("a content-length");
                    if body.len() >= length {
                        return body.to_string();
                    }
                }
                let n = stream.read(&mut buf).await.unwrap();
                assert!(n > 0, "closed mid-answer after {text:?}");
                seen.extend_from_slice(&buf[..n]);
            }
        };
        tokio::time::timeout(DEADLINE, read).await.expect("an answer")
    }

    #[tokio::test]
    async fn a_connection_that_sends_nothing_is_closed_after_the_idle_timeout() {
        let running = start(HttpLimits { idle: Duration::from_millis(200), ..patient() }).await;
        let mut silent = connect(&running).await;
        assert_eq!(until_closed(&mut silent).await, "");
    }

    #[tokio::test]
    async fn a_keep_alive_connection_is_closed_once_idle_after_its_answer() {
        let running = start(HttpLimits { idle: Duration::from_millis(300), ..patient() }).await;
        let mut client = connect(&running).await;
        assert_eq!(get_root(&mut client).await, client.local_addr().unwrap().to_string(), "ConnectInfo is the peer");
        assert_eq!(until_closed(&mut client).await, "");
    }

    #[tokio::test]
    async fn a_half_sent_head_is_closed_after_the_header_read_timeout() {
        let running = start(HttpLimits { header_read: Duration::from_millis(200), ..patient() }).await;
        let mut slow = connect(&running).await;
        slow.write_all(b"GET / HTTP/1.1\r\nhost: t\r\nx-slow: 1").await.unwrap();
        assert_eq!(until_closed(&mut slow).await, "");
    }

    #[tokio::test]
    async fn a_head_larger_than_the_buffer_is_refused_with_431() {
        let running = start(patient()).await;
        let mut big = connect(&running).await;
        let head = format!("GET / HTTP/1.1\r\nhost: t\r\nx-big: {}", "a".repeat(20_000));
        // The server may close before it has read it all.
        let _ = big.write_all(head.as_bytes()).await;
        let answer = until_closed(&mut big).await;
        assert!(answer.starts_with("HTTP/1.1 431"), "{answer:?}");
    }

    #[tokio::test]
    async fn a_body_that_never_comes_is_answered_408_and_closed() {
        let running = start(HttpLimits { request: Duration::from_millis(300), ..patient() }).await;
        let mut slow = connect(&running).await;
        slow.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nten bytes.").await.unwrap();
        let answer = until_closed(&mut slow).await;
        assert!(answer.starts_with("HTTP/1.1 408"), "{answer:?}");
    }

    #[tokio::test]
    async fn at_the_cap_a_new_connection_drops_the_longest_idle_one() {
        let running = start(HttpLimits { max_connections: 2, ..patient() }).await;
        let (mut first, mut second) = (connect(&running).await, connect(&running).await);
        get_root(&mut first).await;
        get_root(&mut second).await;
        let mut third = connect(&running).await;
        get_root(&mut third).await;
        assert_eq!(until_closed(&mut first).await, "", "the first, idle longest, made room");
        get_root(&mut second).await;
    }

    #[tokio::test]
    async fn at_the_cap_a_request_in_service_is_never_dropped_for_a_new_connection() {
        let running = start(HttpLimits { max_connections: 1, ..patient() }).await;
        let mut serving = connect(&running).await;
        serving.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 10\r\n\r\nhalf.").await.unwrap();
        running.until_echo_in_service().await;
        let mut waiting = connect(&running).await;
        waiting.write_all(b"GET / HTTP/1.1\r\nhost: t\r\n\r\n").await.unwrap();
        serving.write_all(b"half.").await.unwrap();
        assert_eq!(read_answer(&mut serving).await, "half.half.", "the request in service was answered");
        assert_eq!(
            read_answer(&mut waiting).await,
            waiting.local_addr().unwrap().to_string(),
            "then the new one got in"
        );
    }

    #[tokio::test]
    async fn on_shutdown_a_request_in_service_is_answered_and_idle_connections_close() {
        let running = start(patient()).await;
        let mut idle = connect(&running).await;
        get_root(&mut idle).await;
        let mut serving = connect(&running).await;
        serving.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 4\r\n\r\nab").await.unwrap();
        running.until_echo_in_service().await;
        running.shutdown.cancel();
        assert_eq!(until_closed(&mut idle).await, "");
        serving.write_all(b"cd").await.unwrap();
        assert_eq!(read_answer(&mut serving).await, "abcd");
        assert_eq!(until_closed(&mut serving).await, "", "closed after its answer");
        tokio::time::timeout(DEADLINE, running.served).await.expect("serve returns").unwrap();
    }

    #[tokio::test]
    async fn after_the_grace_period_the_connections_left_are_dropped_and_serve_returns() {
        let running = start(HttpLimits { grace: Duration::from_millis(300), ..patient() }).await;
        let mut stuck = connect(&running).await;
        stuck.write_all(b"POST /echo HTTP/1.1\r\nhost: t\r\ncontent-length: 100\r\n\r\nnever all").await.unwrap();
        running.until_echo_in_service().await;
        let mut half = connect(&running).await;
        half.write_all(b"GET / HTTP/1.1\r\nhost").await.unwrap();
        let mut idle = connect(&running).await;
        get_root(&mut idle).await;
        running.shutdown.cancel();
        tokio::time::timeout(DEADLINE, running.served).await.expect("serve returns").unwrap();
        for stream in [&mut stuck, &mut half, &mut idle] {
            assert_eq!(until_closed(stream).await, "");
        }
        assert!(TcpStream::connect(running.addr).await.is_err(), "the port is closed");
    }
}
