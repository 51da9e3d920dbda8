//! Every metric the consumer emits.
//!
//! Invariants: every name is `orderflow_consumer_*`; labels come from small
//! fixed sets, never ids or error text.

use prometheus::{Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, Opts, Registry};

/// Outcome label values of `orderflow_consumer_messages_total`.
pub const OUTCOMES: [&str; 5] = ["processed", "duplicate", "failed", "dead_lettered", "retried"];

/// The consumer's metrics, registered once per process.
#[derive(Clone)]
pub struct Metrics {
    /// Messages handled, by outcome ([`OUTCOMES`]).
    pub messages: IntCounterVec,
    /// Time to handle one batch, from delivery to ACK.
    pub processing_seconds: Histogram,
    /// Messages applied per database transaction.
    pub batch_size: Histogram,
    /// From an order's `created_at` to its `processed_at`.
    pub end_to_end_seconds: Histogram,
    /// Messages the broker marked redelivered.
    pub redeliveries: IntCounter,
    /// 1 while subscribed to the broker.
    pub broker_connected: IntGauge,
    /// Seconds the batch in hand has been retrying the database (0 when flowing).
    pub stuck_seconds: prometheus::Gauge,
    /// Dead letters the broker never took, set aside (listed on the admin port).
    pub undeliverable_dead_letters: IntCounter,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let latency =
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let m = Self {
            messages: IntCounterVec::new(
                Opts::new("orderflow_consumer_messages_total", "Messages handled, by outcome"),
                &["outcome"],
            )?,
            processing_seconds: Histogram::with_opts(
                HistogramOpts::new(
                    "orderflow_consumer_processing_seconds",
                    "Time to handle one batch, from delivery to ACK",
                )
                .buckets(latency.clone()),
            )?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("orderflow_consumer_batch_size", "Messages applied per database transaction")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
            )?,
            end_to_end_seconds: Histogram::with_opts(
                HistogramOpts::new("orderflow_consumer_end_to_end_seconds", "Order created_at to processed_at")
                    .buckets(latency),
            )?,
            redeliveries: IntCounter::new(
                "orderflow_consumer_redeliveries_total",
                "Messages the broker marked redelivered",
            )?,
            broker_connected: IntGauge::new("orderflow_consumer_broker_connected", "1 while subscribed to the broker")?,
            stuck_seconds: prometheus::Gauge::new(
                "orderflow_consumer_stuck_seconds",
                "Seconds the batch in hand has been retrying the database; 0 while messages flow",
            )?,
            undeliverable_dead_letters: IntCounter::new(
                "orderflow_consumer_dead_letters_undeliverable_total",
                "Dead letters the broker refused until they were set aside (GET /consumer/dead-letters/undeliverable)",
            )?,
        };
        for outcome in OUTCOMES {
            m.messages.with_label_values(&[outcome]);
        }
        registry.register(Box::new(m.messages.clone()))?;
        registry.register(Box::new(m.processing_seconds.clone()))?;
        registry.register(Box::new(m.end_to_end_seconds.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.redeliveries.clone()))?;
        registry.register(Box::new(m.broker_connected.clone()))?;
        registry.register(Box::new(m.stuck_seconds.clone()))?;
        registry.register(Box::new(m.undeliverable_dead_letters.clone()))?;
        Ok(m)
    }
}
