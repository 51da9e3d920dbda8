//! Drives the producer's JSON API, open-loop (fixed rate) or closed-loop
//! (fixed concurrency), then waits (bounded) until every accepted order is final.
//!
//! Invariant: in open-loop the latency of a request counts from the moment it
//! was due, not from when it was sent, so a stalled server cannot hide its
//! stall (coordinated omission corrected).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;
use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::stats::{Summary, Tally, record};

/// How requests are paced.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Mode {
    /// A request every 1/rate seconds whatever the answers.
    Open {
        /// Requests per second.
        rate: f64,
    },
    /// This many requests always in flight.
    Closed {
        /// Requests in flight.
        concurrency: usize,
    },
}

/// One run's settings.
#[derive(Debug, Clone)]
pub struct Options {
    /// Producer base URL, e.g. `http://127.0.0.1:8080`.
    pub url: String,
    /// How requests are paced.
    pub mode: Mode,
    /// How long requests are sent.
    pub duration: Duration,
    /// Products to cycle through.
    pub products: Vec<String>,
    /// Send an `Idempotency-Key` with every request.
    pub idempotency_keys: bool,
    /// How long to wait for accepted orders to become final; `None` skips the wait.
    pub wait: Option<Duration>,
    /// Per-request timeout.
    pub request_timeout: Duration,
    /// Draw a live progress bar on stderr.
    pub progress: bool,
    /// Notified when the totals first show every accepted order final, before
    /// the wait reads each order back (the bench takes its CPU figures there).
    pub all_final: Option<Arc<Notify>>,
}

#[derive(Default)]
struct Live {
    sent: AtomicU64,
    accepted: AtomicU64,
    errors: AtomicU64,
}

struct Shared {
    options: Options,
    /// The orders' own client: hyper-util's pool, with `POST /api/orders`
    /// parsed once (reqwest parsed the URL of every request).
    orders: Client<HttpConnector, Full<Bytes>>,
    orders_uri: http::Uri,
    /// Everything else (the totals, reading orders back).
    http: reqwest::Client,
    run_id: String,
    live: Live,
    tally: Mutex<Tally>,
    accepted_ids: Mutex<Vec<i64>>,
}

#[derive(Debug, Deserialize)]
struct OrderView {
    status: String,
    created_at: chrono::DateTime<chrono::Utc>,
    processed_at: Option<chrono::DateTime<chrono::Utc>>,
}

/// What an accepted order's answer is read for.
#[derive(Debug, Deserialize)]
struct Accepted {
    order_id: i64,
}

#[derive(Serialize)]
struct OrderRequest<'a> {
    customer_name: String,
    product_id: &'a str,
    quantity: u64,
}

#[derive(Debug, Deserialize, Default, Clone, Copy)]
struct Counts {
    processed: i64,
    failed: i64,
}

/// Runs the load and returns the summary.
pub async fn run(options: Options) -> anyhow::Result<Summary> {
    anyhow::ensure!(!options.products.is_empty(), "give at least one product");
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(4096)
        .tcp_nodelay(true)
        .timeout(options.request_timeout)
        .build()?;
    let base = options.url.trim_end_matches('/').to_string();
    let orders_uri: http::Uri = format!("{base}/api/orders").parse()?;
    anyhow::ensure!(orders_uri.scheme_str() == Some("http"), "the load tool speaks plain http://, not {base}");
    let baseline = counts(&http, &base).await.unwrap_or_default();
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    let orders = Client::builder(TokioExecutor::new()).pool_max_idle_per_host(4096).build(connector);
    let shared = Arc::new(Shared {
        options: Options { url: base, ..options },
        orders,
        orders_uri,
        http,
        run_id: format!("{:x}", chrono::Utc::now().timestamp_micros()),
        live: Live::default(),
        tally: Mutex::new(Tally::default()),
        accepted_ids: Mutex::new(Vec::new()),
    });
    let bar = progress_bar(&shared);
    let ticker = tokio::spawn(tick(shared.clone(), bar.clone(), baseline));
    let started = Instant::now();
    match shared.options.mode {
        Mode::Closed { concurrency } => closed_loop(&shared, concurrency.max(1)).await,
        Mode::Open { rate } => open_loop(&shared, rate).await,
    }
    let elapsed = started.elapsed();
    let all_final_after = match shared.options.wait {
        Some(wait) => wait_until_final(&shared, baseline, wait).await.map(|at| at - started),
        None => None,
    };
    ticker.abort();
    bar.finish_and_clear();
    let tally = shared.tally.lock().expect("tally lock");
    let mode = match shared.options.mode {
        Mode::Closed { concurrency } => format!("closed-loop, concurrency {concurrency}"),
        Mode::Open { rate } => format!("open-loop, {rate} requests/s"),
    };
    Ok(Summary::new(&mode, &tally, elapsed, all_final_after))
}

async fn counts(http: &reqwest::Client, base: &str) -> Option<Counts> {
    http.get(format!("{base}/api/stats")).send().await.ok()?.json().await.ok()
}

fn progress_bar(shared: &Shared) -> indicatif::ProgressBar {
    if !shared.options.progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new_spinner();
    bar.set_style(
        indicatif::ProgressStyle::with_template("{spinner} {elapsed_precise} {msg}").expect("static template"),
    );
    bar
}

async fn tick(shared: Arc<Shared>, bar: indicatif::ProgressBar, baseline: Counts) {
    let mut every = tokio::time::interval(Duration::from_millis(500));
    loop {
        every.tick().await;
        let live = &shared.live;
        let accepted = live.accepted.load(Ordering::Relaxed);
        let done = counts(&shared.http, &shared.options.url)
            .await
            .map(|c| (c.processed + c.failed - baseline.processed - baseline.failed).max(0) as u64);
        let done_text = done.map_or("?".into(), |d| d.to_string());
        let backlog = done.map_or("?".into(), |d| accepted.saturating_sub(d).to_string());
        bar.set_message(format!(
            "sent {}  accepted {}  errors {}  processed {}  backlog {}",
            live.sent.load(Ordering::Relaxed),
            accepted,
            live.errors.load(Ordering::Relaxed),
            done_text,
            backlog
        ));
        bar.tick();
    }
}

/// Sends request number `i`; `due` is when it should have gone out.
async fn one_request(shared: &Shared, i: u64, due: Instant) {
    shared.live.sent.fetch_add(1, Ordering::Relaxed);
    let outcome = match tokio::time::timeout(shared.options.request_timeout, place(shared, i)).await {
        Ok(outcome) => outcome,
        Err(_) => Err("timeout".into()),
    };
    let latency = due.elapsed();
    let mut tally = shared.tally.lock().expect("tally lock");
    tally.sent += 1;
    record(&mut tally.http, latency);
    match outcome {
        Ok(order_id) => {
            tally.accepted += 1;
            shared.live.accepted.fetch_add(1, Ordering::Relaxed);
            drop(tally);
            shared.accepted_ids.lock().expect("ids lock").push(order_id);
        }
        Err(kind) => {
            tally.error(kind);
            shared.live.errors.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// Places order number `i`: its id, or the kind of error.
async fn place(shared: &Shared, i: u64) -> Result<i64, String> {
    let product = &shared.options.products[(i as usize) % shared.options.products.len()];
    let order = OrderRequest { customer_name: format!("Load {i}"), product_id: product, quantity: i % 5 + 1 };
    let body = serde_json::to_vec(&order).map_err(|_| "bad_request")?;
    let mut request =
        http::Request::post(shared.orders_uri.clone()).header(http::header::CONTENT_TYPE, "application/json");
    if shared.options.idempotency_keys {
        request = request.header("idempotency-key", format!("lt-{}-{i}", shared.run_id));
    }
    let request = request.body(Full::new(Bytes::from(body))).map_err(|_| "bad_request")?;
    let response =
        shared.orders.request(request).await.map_err(|e| if e.is_connect() { "connect" } else { "other" })?;
    let status = response.status().as_u16();
    let body = response.into_body().collect().await.map_err(|_| "other")?.to_bytes();
    match status {
        200 | 201 => serde_json::from_slice::<Accepted>(&body).map(|a| a.order_id).map_err(|_| "bad_body".into()),
        status => Err(format!("http_{status}")),
    }
}

async fn closed_loop(shared: &Arc<Shared>, concurrency: usize) {
    let deadline = Instant::now() + shared.options.duration;
    let next = Arc::new(AtomicU64::new(0));
    let workers = (0..concurrency).map(|_| {
        let (shared, next) = (shared.clone(), next.clone());
        tokio::spawn(async move {
            while Instant::now() < deadline {
                let i = next.fetch_add(1, Ordering::Relaxed);
                one_request(&shared, i, Instant::now()).await;
            }
        })
    });
    futures::future::join_all(workers).await;
}

async fn open_loop(shared: &Arc<Shared>, rate: f64) {
    let interval = Duration::from_secs_f64(1.0 / rate.max(0.001));
    let started = Instant::now();
    let in_flight = Arc::new(tokio::sync::Semaphore::new(20_000));
    let mut tasks = Vec::new();
    for i in 0u64.. {
        let due = started + interval.mul_f64(i as f64);
        if due >= started + shared.options.duration {
            break;
        }
        tokio::time::sleep_until(due.into()).await;
        let permit = in_flight.clone().acquire_owned().await.expect("semaphore open");
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            one_request(&shared, i, due).await;
            drop(permit);
        }));
    }
    futures::future::join_all(tasks).await;
}

/// Waits (bounded) until every accepted order is final, then reads each one's
/// `created_at → processed_at`. Returns when the totals first showed every
/// accepted order final (None if they never did within the wait).
async fn wait_until_final(shared: &Arc<Shared>, baseline: Counts, wait: Duration) -> Option<Instant> {
    let deadline = Instant::now() + wait;
    let accepted = shared.accepted_ids.lock().expect("ids lock").len() as i64;
    // Cheap polling on the totals first.
    let mut all_final = None;
    while Instant::now() < deadline {
        match counts(&shared.http, &shared.options.url).await {
            Some(c) if c.processed + c.failed - baseline.processed - baseline.failed >= accepted => {
                all_final = Some(Instant::now());
                if let Some(notify) = &shared.options.all_final {
                    notify.notify_one();
                }
                break;
            }
            _ => tokio::time::sleep(Duration::from_millis(20)).await,
        }
    }
    let mut remaining: Vec<i64> = shared.accepted_ids.lock().expect("ids lock").clone();
    while !remaining.is_empty() {
        let fetched: Vec<(i64, Option<OrderView>)> = futures::stream::iter(remaining.iter().copied())
            .map(|id| {
                let shared = shared.clone();
                async move {
                    let url = format!("{}/api/orders/{id}", shared.options.url);
                    let order = match shared.http.get(url).send().await {
                        Ok(r) if r.status().is_success() => r.json::<OrderView>().await.ok(),
                        _ => None,
                    };
                    (id, order)
                }
            })
            .buffer_unordered(64)
            .collect()
            .await;
        remaining.clear();
        {
            let mut tally = shared.tally.lock().expect("tally lock");
            for (id, order) in fetched {
                match order {
                    Some(o) if o.status == "processed" || o.status == "failed" => {
                        tally.finished += 1;
                        if o.status == "failed" {
                            tally.failed += 1;
                        }
                        if let Some(done) = o.processed_at {
                            record(&mut tally.end_to_end, (done - o.created_at).to_std().unwrap_or_default());
                        }
                    }
                    _ => remaining.push(id),
                }
            }
        }
        if remaining.is_empty() || Instant::now() >= deadline {
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    all_final
}

#[cfg(test)]
mod tests {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;

    fn options(url: String) -> Options {
        Options {
            url,
            mode: Mode::Closed { concurrency: 2 },
            duration: Duration::from_millis(200),
            products: vec!["P123".into()],
            idempotency_keys: true,
            wait: None,
            request_timeout: Duration::from_secs(2),
            progress: false,
            all_final: None,
        }
    }

    #[tokio::test]
    async fn every_answer_is_counted_by_its_kind() {
        // A server that refuses every order with 422, then one that answers garbage with 201.
        for (answer, kind) in [
            ("HTTP/1.1 422 Unprocessable Entity\r\ncontent-length: 2\r\n\r\n{}", "http_422"),
            ("HTTP/1.1 201 Created\r\ncontent-length: 5\r\n\r\nnope!", "bad_body"),
        ] {
            let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let url = format!("http://{}", listener.local_addr().unwrap());
            tokio::spawn(async move {
                loop {
                    let (mut socket, _) = listener.accept().await.unwrap();
                    tokio::spawn(async move {
                        let mut buffer = vec![0; 4096];
                        // One request per read (small bodies), one answer each.
                        while socket.read(&mut buffer).await.is_ok_and(|n| n > 0) {
                            if socket.write_all(answer.as_bytes()).await.is_err() {
                                break;
                            }
                        }
                    });
                }
            });
            let summary = run(options(url)).await.unwrap();
            assert!(summary.sent > 0, "{summary:?}");
            assert_eq!(summary.accepted, 0, "{summary:?}");
            assert_eq!(summary.errors.get(kind), Some(&summary.sent), "{summary:?}");
        }
    }

    #[tokio::test]
    async fn a_producer_that_is_not_there_is_a_connect_error() {
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let summary = run(options(format!("http://127.0.0.1:{port}"))).await.unwrap();
        assert!(summary.sent > 0, "{summary:?}");
        assert_eq!(summary.errors.get("connect"), Some(&summary.sent), "{summary:?}");
    }
}
