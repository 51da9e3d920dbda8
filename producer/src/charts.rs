//! The ops page's live charts: a background task samples the pipeline every
//! `CHARTS_SAMPLE_MS` into a bounded ring in memory, and `GET /ops/series`
//! hands the ring to the page, which draws it (`static/charts.js`).
//!
//! Where each figure comes from: orders placed, this producer's own counter;
//! the backlog and the age of its oldest row, the database (the figure the
//! relays export, read here so that the chart keeps drawing while every relay
//! is down, which is when it matters); processed per second and the
//! end-to-end latency, each consumer's `/metrics` on its admin port.
//!
//! Invariant: memory is bounded (at most [`MAX_POINTS`] points, 15 minutes at
//! the default interval); nothing is written anywhere; a source that does not
//! answer is a gap in its chart, never a zero and never an error.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use prometheus::IntCounter;
use schema::Store;
use serde_json::{Value, json};

use crate::series::{Bucket, ConsumerReading, Ring, Snapshot, point_between};

/// How far back the charts look.
const WINDOW: Duration = Duration::from_secs(15 * 60);

/// The most points the ring holds, whatever the interval (so the answer of
/// `/ops/series` stays under about 60 KB); an interval under a second shortens the window.
pub(crate) const MAX_POINTS: usize = 900;

/// The ring and how it is filled; cloned into the route and the sampler.
#[derive(Clone)]
pub(crate) struct Charts {
    ring: Arc<Mutex<Ring>>,
    interval: Duration,
}

impl Charts {
    pub fn new(interval: Duration) -> Self {
        let capacity = (WINDOW.as_millis() / interval.as_millis().max(1)).clamp(1, MAX_POINTS as u128) as usize;
        Self { ring: Arc::new(Mutex::new(Ring::new(capacity))), interval }
    }
}

/// `GET /ops/series`, open like `/ops/state`.
pub(crate) fn router(charts: Charts) -> Router {
    Router::new().route("/ops/series", get(series)).with_state(charts)
}

async fn series(State(charts): State<Charts>) -> Json<Value> {
    let ring = charts.ring.lock().expect("chart ring lock");
    let interval = charts.interval.as_secs_f64();
    Json(json!({
        "interval_seconds": interval,
        "window_seconds": interval * ring.capacity() as f64,
        "series": ring.columns(),
    }))
}

/// What the sampler reads from.
pub(crate) struct Sampler {
    pub charts: Charts,
    pub store: Arc<dyn Store>,
    /// This producer's `orderflow_producer_orders_placed_total`.
    pub placed: IntCounter,
    /// The consumers' admin base URLs.
    pub consumers: Vec<String>,
    pub http: reqwest::Client,
}

/// Samples every interval until `stop`: the producer's essential task "chart sampler".
pub(crate) async fn run(sampler: Sampler, stop: tokio_util::sync::CancellationToken) -> anyhow::Result<()> {
    let mut every = service::Every::new(sampler.charts.interval, stop);
    let mut before: Option<Snapshot> = None;
    while every.tick().await {
        // After a slow sample the clock turns again at once to catch up; such
        // a turn is skipped, so that points stay about one interval apart.
        if before.as_ref().is_some_and(|b| b.taken.elapsed() < sampler.charts.interval / 2) {
            continue;
        }
        let now = sample_once(&sampler).await;
        let point = point_between(before.as_ref(), &now);
        sampler.charts.ring.lock().expect("chart ring lock").push(point);
        before = Some(now);
    }
    Ok(())
}

/// Reads every source once; the consumers at the same time, each for at most one interval.
pub(crate) async fn sample_once(sampler: &Sampler) -> Snapshot {
    let taken = Instant::now();
    let at = chrono::Utc::now().timestamp_millis() as f64 / 1000.0;
    let timeout = sampler.charts.interval.min(Duration::from_secs(2));
    let scrapes = sampler.consumers.iter().map(|url| scrape(&sampler.http, url, timeout));
    let (stats, readings) = tokio::join!(sampler.store.outbox_stats(), futures::future::join_all(scrapes));
    let backlog = match stats {
        Ok(stats) => Some((stats.pending as f64, stats.oldest_pending_seconds)),
        Err(error) => {
            tracing::debug!(error = %error_reporter::Report::new(&error), "charts: no backlog figure this time");
            None
        }
    };
    let consumers = sampler.consumers.iter().cloned().zip(readings).filter_map(|(url, r)| Some((url, r?))).collect();
    Snapshot { taken, at, placed: sampler.placed.get() as f64, backlog, consumers }
}

async fn scrape(http: &reqwest::Client, url: &str, timeout: Duration) -> Option<ConsumerReading> {
    let answer = http.get(format!("{url}/metrics")).timeout(timeout).send().await;
    let text = match answer.and_then(reqwest::Response::error_for_status) {
        Ok(response) => response.text().await.ok()?,
        Err(error) => {
            tracing::debug!(error = %error_reporter::Report::new(&error), url, "charts: consumer not read this time");
            return None;
        }
    };
    read_consumer(&text)
}

/// The processed count and the end-to-end histogram in a consumer's
/// `/metrics` text; `None` when either is missing (not a consumer).
pub(crate) fn read_consumer(text: &str) -> Option<ConsumerReading> {
    use prometheus_parse::Value as V;
    let scrape = prometheus_parse::Scrape::parse(text.lines().map(|line| Ok(line.to_string()))).ok()?;
    let processed = scrape.samples.iter().find_map(|s| match &s.value {
        V::Counter(v) | V::Untyped(v)
            if s.metric == "orderflow_consumer_messages_total" && s.labels.get("outcome") == Some("processed") =>
        {
            Some(*v)
        }
        _ => None,
    })?;
    let mut end_to_end: Vec<Bucket> = scrape.samples.iter().find_map(|s| match &s.value {
        V::Histogram(counts) if s.metric == "orderflow_consumer_end_to_end_seconds" => {
            Some(counts.iter().map(|c| Bucket { le: c.less_than, count: c.count }).collect())
        }
        _ => None,
    })?;
    end_to_end.sort_by(|a, b| a.le.total_cmp(&b.le));
    Some(ConsumerReading { processed, end_to_end })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_consumers_metrics_give_its_processed_count_and_latency_buckets() {
        let registry = prometheus::Registry::new();
        let metrics = consumer::metrics::Metrics::register(&registry).unwrap();
        metrics.messages.with_label_values(&["processed"]).inc_by(7);
        metrics.messages.with_label_values(&["failed"]).inc_by(2);
        for seconds in [0.003, 0.004, 0.2] {
            metrics.end_to_end_seconds.observe(seconds);
        }
        let text = prometheus::TextEncoder::new().encode_to_string(&registry.gather()).unwrap();
        let reading = read_consumer(&text).expect("a consumer's metrics");
        assert_eq!(reading.processed, 7.0);
        let bounds: Vec<f64> = reading.end_to_end.iter().map(|b| b.le).collect();
        assert!(bounds.is_sorted() && bounds.last() == Some(&f64::INFINITY), "{bounds:?}");
        let at = |le: f64| reading.end_to_end.iter().find(|b| b.le == le).unwrap().count;
        assert_eq!((at(0.0025), at(0.005), at(0.25), at(f64::INFINITY)), (0.0, 2.0, 3.0, 3.0));
    }

    #[test]
    fn text_that_is_not_a_consumers_metrics_reads_as_nothing() {
        assert_eq!(read_consumer(""), None);
        assert_eq!(read_consumer("<html>not found</html>"), None);
        let relay = "# TYPE orderflow_relay_published_total counter\norderflow_relay_published_total 5\n";
        assert_eq!(read_consumer(relay), None);
    }

    #[tokio::test]
    async fn a_sample_reads_the_database_and_each_consumer_and_leaves_out_one_that_does_not_answer() {
        let dir = tempfile::tempdir().unwrap();
        let url = format!("sqlite://{}", dir.path().join("charts.db").display());
        let schema::testing::TestDb { store, probe } = schema::testing::open(&url).await.unwrap();
        // A consumer's admin port: its real metrics behind the real admin router, on port 0.
        let registry = prometheus::Registry::new();
        let metrics = consumer::metrics::Metrics::register(&registry).unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let consumer = format!("http://{}", listener.local_addr().unwrap());
        let stop = tokio_util::sync::CancellationToken::new();
        let router = observability::admin_router(registry, observability::Readiness::new(&[]));
        let limits = <crate::Config as clap::Parser>::try_parse_from(["producer"]).unwrap().service.http_limits();
        tokio::spawn(service::serve(listener, router, limits, stop.clone()));
        let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap();
        let sampler = Sampler {
            charts: Charts::new(Duration::from_millis(500)),
            store,
            placed: IntCounter::new("placed", "orders placed").unwrap(),
            consumers: vec![consumer.clone(), format!("http://{closed}")],
            http: reqwest::Client::new(),
        };

        let first = sample_once(&sampler).await;
        assert_eq!(first.backlog, Some((0.0, 0.0)));
        assert_eq!(first.consumers.keys().collect::<Vec<_>>(), [&consumer], "the closed port is left out");
        probe.bulk_orders(1, 0).await.unwrap();
        sampler.placed.inc();
        metrics.messages.with_label_values(&["processed"]).inc_by(3);
        for seconds in [0.02, 0.02, 0.02] {
            metrics.end_to_end_seconds.observe(seconds);
        }
        let second = sample_once(&sampler).await;
        assert_eq!(second.backlog.map(|(rows, _)| rows), Some(1.0), "the order's outbox row waits");
        let point = point_between(Some(&first), &second);
        assert!(point.placed_per_second.is_some_and(|r| r > 0.0), "{point:?}");
        assert!(point.processed_per_second.is_some_and(|r| r > 0.0), "{point:?}");
        // All three in the 10-25 ms bucket: the median is halfway through it.
        assert!(point.p50_seconds.is_some_and(|p| (p - 0.0175).abs() < 1e-9), "{point:?}");
        stop.cancel();
    }

    #[test]
    fn the_ring_holds_fifteen_minutes_up_to_its_bound() {
        let capacity = |ms| Charts::new(Duration::from_millis(ms)).ring.lock().unwrap().capacity();
        assert_eq!(capacity(5_000), 180);
        assert_eq!(capacity(1_000), 900);
        assert_eq!(capacity(200), MAX_POINTS);
    }
}
