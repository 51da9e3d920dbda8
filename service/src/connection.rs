//! One HTTP/1 connection of [`crate::serve`]: hyper reads and answers it, our
//! watchdog closes it when it breaks a bound, and the server reads its
//! [`Activity`] to choose which connection to close at the cap.
//!
//! Invariant: a connection is always in one of three phases, and each has its
//! bound: waiting for a request's first byte (idle timeout), reading the rest
//! of its head (header-read timeout), or a request in service (request
//! timeout, answered 408). Nothing a client sends or withholds keeps it open
//! past them, nor past the grace period once the server drains.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use axum::Router;
use axum::extract::ConnectInfo;
use axum::response::{IntoResponse, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::Notify;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::HttpLimits;

/// Hyper refuses (panics on) a smaller read buffer; `HTTP_MAX_BUFFER_BYTES` refuses it first.
const HYPER_MIN_BUFFER: usize = 8_192;

/// Where a connection is, and since when.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// No request in service, no byte of the next one yet.
    Idle,
    /// Bytes of a request's head have come, the head is not whole yet.
    Head,
    /// This many requests in service (one, with HTTP/1).
    Busy(usize),
}

/// What a connection is doing: written by its reads and its requests, read by
/// its watchdog and by the server at the cap.
pub(crate) struct Activity {
    state: Mutex<(Phase, Instant)>,
    /// Wakes the watchdog when the phase changes (its deadline moves).
    changed: Notify,
    /// Wakes the server's accept loop when the connection stops serving (it
    /// may then be closed to make room).
    went_idle: Arc<Notify>,
}

impl Activity {
    pub(crate) fn new(went_idle: Arc<Notify>) -> Arc<Activity> {
        Arc::new(Activity { state: Mutex::new((Phase::Idle, Instant::now())), changed: Notify::new(), went_idle })
    }

    fn set(&self, phase: Phase) {
        *self.state.lock().expect("activity lock") = (phase, Instant::now());
        self.changed.notify_one();
    }

    fn phase(&self) -> (Phase, Instant) {
        *self.state.lock().expect("activity lock")
    }

    /// Bytes came in: the first of a new request's head when nothing was in
    /// service (bytes read while a request is in service are its body).
    fn bytes_read(&self) {
        if self.phase().0 == Phase::Idle {
            self.set(Phase::Head);
        }
    }

    /// A whole head reached the router; the connection serves until the guard drops.
    fn request_started(self: &Arc<Self>) -> InService {
        let phase = match self.phase().0 {
            Phase::Busy(n) => Phase::Busy(n + 1),
            Phase::Idle | Phase::Head => Phase::Busy(1),
        };
        self.set(phase);
        InService(self.clone())
    }

    /// Since when the connection has had no request in service, or `None`
    /// while it serves one.
    pub(crate) fn waiting_since(&self) -> Option<Instant> {
        match self.phase() {
            (Phase::Busy(_), _) => None,
            (Phase::Idle | Phase::Head, since) => Some(since),
        }
    }

    /// When the phase's bound runs out, or `None` while a request is in
    /// service (the request timeout bounds that, in [`serve_connection`]).
    fn deadline(&self, limits: &HttpLimits) -> Option<Instant> {
        match self.phase() {
            (Phase::Idle, since) => Some(since + limits.idle),
            (Phase::Head, since) => Some(since + limits.header_read),
            (Phase::Busy(_), _) => None,
        }
    }
}

/// A request in service; its drop ends it.
struct InService(Arc<Activity>);

impl Drop for InService {
    fn drop(&mut self) {
        let phase = match self.0.phase().0 {
            Phase::Busy(n) if n > 1 => Phase::Busy(n - 1),
            _ => Phase::Idle,
        };
        self.0.set(phase);
        if phase == Phase::Idle {
            self.0.went_idle.notify_one();
        }
    }
}

/// The socket, telling [`Activity`] when bytes come in.
struct Watched {
    stream: TcpStream,
    activity: Arc<Activity>,
}

impl AsyncRead for Watched {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let polled = Pin::new(&mut self.stream).poll_read(cx, buf);
        if matches!(polled, Poll::Ready(Ok(()))) && buf.filled().len() > before {
            self.activity.bytes_read();
        }
        polled
    }
}

impl AsyncWrite for Watched {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.stream).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.stream).poll_shutdown(cx)
    }
}

/// Serves one accepted connection until it ends or breaks a bound. When
/// `close` fires (the server drains) it is closed at once if it has no
/// request in service, or after the answer to the one it has; the server
/// drops it at the end of the grace period if it has not ended by then.
pub(crate) async fn serve_connection(
    stream: TcpStream,
    peer: SocketAddr,
    router: Router,
    limits: HttpLimits,
    activity: Arc<Activity>,
    close: CancellationToken,
) {
    let router = TowerToHyperService::new(router);
    let requests = activity.clone();
    let service = hyper::service::service_fn(move |mut request: hyper::Request<Incoming>| {
        request.extensions_mut().insert(ConnectInfo(peer));
        let in_service = requests.request_started();
        let answer = hyper::service::Service::call(&router, request);
        async move {
            let _in_service = in_service;
            match tokio::time::timeout(limits.request, answer).await {
                Ok(answer) => answer,
                // The handler is dropped mid-way, as when a client hangs up.
                Err(_) => Ok::<_, Infallible>(timed_out()),
            }
        }
    });
    let io = TokioIo::new(Watched { stream, activity: activity.clone() });
    let connection = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        // Hyper counts its header timer from the end of the previous answer;
        // our watchdog keeps the two bounds apart and always fires first, so
        // this is only the backstop (never hyper's default of 30 s).
        .header_read_timeout(limits.idle + limits.header_read)
        .max_buf_size(limits.max_buffer_bytes.max(HYPER_MIN_BUFFER))
        .serve_connection(io, service);
    tokio::pin!(connection);
    let mut closing = false;
    loop {
        let deadline = activity.deadline(&limits);
        let expired = async {
            match deadline {
                Some(deadline) => tokio::time::sleep_until(deadline).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            ended = connection.as_mut() => {
                if let Err(error) = ended {
                    tracing::debug!(%peer, %error, "connection ended with an error");
                }
                return;
            }
            () = close.cancelled(), if !closing => {
                // Hyper would wait for a first request's half-sent head; it is no request in service.
                if activity.phase().0 == Phase::Head {
                    return;
                }
                // Closes it now when idle, else once the answer in hand is written.
                connection.as_mut().graceful_shutdown();
                closing = true;
            }
            () = activity.changed.notified() => {}
            () = expired => {
                if activity.deadline(&limits).is_some_and(|d| d <= Instant::now()) {
                    tracing::debug!(%peer, phase = ?activity.phase().0, "connection closed: its bound ran out");
                    return;
                }
            }
        }
    }
}

/// The answer to a request that outlived `HTTP_REQUEST_TIMEOUT_MS`; its body
/// may be half read, so the connection closes after it.
fn timed_out() -> Response {
    let headers = [(axum::http::header::CONNECTION, "close")];
    (axum::http::StatusCode::REQUEST_TIMEOUT, headers, "request timed out\n").into_response()
}
