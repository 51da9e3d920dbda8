//! Every metric the relay emits.
//!
//! Invariants: every name is `orderflow_relay_*`; labels come from small
//! fixed sets, never ids or error text.

use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry};

/// The relay's metrics, registered once per process.
#[derive(Clone)]
pub struct Metrics {
    /// Messages the broker confirmed.
    pub published: IntCounter,
    /// Failed publishes, by kind (`rejected`, `unknown`, `database`, `broker`).
    pub publish_errors: IntCounterVec,
    /// Outbox rows parked after too many rejections.
    pub parked: IntCounter,
    /// Rows per claimed batch.
    pub batch_size: Histogram,
    /// From a batch's claim to its rows marked.
    pub batch_seconds: Histogram,
    /// From an outbox row's commit to the broker's receipt.
    pub dwell_seconds: Histogram,
    /// Outbox rows neither published nor parked.
    pub outbox_pending: IntGauge,
    /// Age of the oldest unpublished outbox row.
    pub outbox_oldest_pending_seconds: Gauge,
    /// Parked outbox rows.
    pub outbox_parked: IntGauge,
    /// 1 while connected to the broker.
    pub broker_connected: IntGauge,
    /// 1 while an operator has paused claiming.
    pub paused: IntGauge,
    /// 1 while the database, the broker and the loop are all healthy.
    pub ready: IntGauge,
    /// Outbox rows this relay holds leases on.
    pub leases_held: IntGauge,
    /// Rows the retention job deleted, by table.
    pub purged: IntCounterVec,
    /// Maintenance job runs, by job and outcome.
    pub job_runs: IntCounterVec,
    /// Pending orders without an outbox row, at the last reconciliation.
    pub pending_without_outbox: IntGauge,
    /// Orders published but not processed in time, at the last reconciliation.
    pub published_not_processed: IntGauge,
    /// Stuck orders sent again by the sweep.
    pub repaired: IntCounter,
    /// The broker's own figures of the order queue and its `.DLQ` (`broker_stats`).
    pub broker_queue_size: IntGaugeVec,
    /// Consumers of each queue, as the broker counts them.
    pub broker_queue_consumers: IntGaugeVec,
    /// Messages sent to each queue since the broker started.
    pub broker_queue_enqueued: IntGaugeVec,
    /// Messages acknowledged from each queue since the broker started.
    pub broker_queue_dequeued: IntGaugeVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let latency =
            vec![0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0];
        let queue_gauge = |name: &str, help: &str| IntGaugeVec::new(Opts::new(name, help), &["queue"]);
        let m = Self {
            published: IntCounter::new("orderflow_relay_published_total", "Messages confirmed by the broker")?,
            publish_errors: IntCounterVec::new(
                Opts::new("orderflow_relay_publish_errors_total", "Failed publishes by kind"),
                &["kind"],
            )?,
            parked: IntCounter::new("orderflow_relay_parked_total", "Outbox rows parked after too many rejections")?,
            batch_size: Histogram::with_opts(
                HistogramOpts::new("orderflow_relay_batch_size", "Rows per claimed batch")
                    .buckets(vec![1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 200.0, 500.0, 1000.0]),
            )?,
            batch_seconds: Histogram::with_opts(
                HistogramOpts::new("orderflow_relay_batch_duration_seconds", "Claim to mark time of a batch")
                    .buckets(latency.clone()),
            )?,
            dwell_seconds: Histogram::with_opts(
                HistogramOpts::new("orderflow_relay_dwell_seconds", "Outbox commit to broker receipt").buckets(latency),
            )?,
            outbox_pending: IntGauge::new(
                "orderflow_relay_outbox_pending",
                "Outbox rows neither published nor parked",
            )?,
            outbox_oldest_pending_seconds: Gauge::new(
                "orderflow_relay_outbox_oldest_pending_age_seconds",
                "Age of the oldest unpublished outbox row",
            )?,
            outbox_parked: IntGauge::new("orderflow_relay_outbox_parked", "Parked outbox rows")?,
            broker_connected: IntGauge::new("orderflow_relay_broker_connected", "1 while connected to the broker")?,
            paused: IntGauge::new("orderflow_relay_paused", "1 while claiming is paused by an operator")?,
            ready: IntGauge::new("orderflow_relay_ready", "1 while database, broker and loop are all healthy")?,
            leases_held: IntGauge::new("orderflow_relay_leases_held", "Outbox rows this relay holds leases on")?,
            purged: IntCounterVec::new(
                Opts::new("orderflow_relay_retention_deleted_rows_total", "Rows deleted by the retention job"),
                &["table"],
            )?,
            job_runs: IntCounterVec::new(
                Opts::new("orderflow_relay_maintenance_runs_total", "Maintenance job runs by outcome"),
                &["job", "outcome"],
            )?,
            pending_without_outbox: IntGauge::new(
                "orderflow_relay_reconcile_pending_without_outbox",
                "Orders pending with no outbox row (last reconciliation)",
            )?,
            published_not_processed: IntGauge::new(
                "orderflow_relay_reconcile_published_not_processed",
                "Orders published but not processed after the threshold (last reconciliation)",
            )?,
            repaired: IntCounter::new(
                "orderflow_relay_reconcile_repaired_total",
                "Stuck orders whose outbox row the sweep made due again",
            )?,
            broker_queue_size: queue_gauge(
                "orderflow_relay_broker_queue_size",
                "Messages in the queue, as the broker counts them",
            )?,
            broker_queue_consumers: queue_gauge(
                "orderflow_relay_broker_queue_consumers",
                "Consumers of the queue, as the broker counts them",
            )?,
            broker_queue_enqueued: queue_gauge(
                "orderflow_relay_broker_queue_enqueued",
                "Messages sent to the queue since the broker started",
            )?,
            broker_queue_dequeued: queue_gauge(
                "orderflow_relay_broker_queue_dequeued",
                "Messages acknowledged from the queue since the broker started",
            )?,
        };
        for table in ["outbox", "inbox", "dead_letters"] {
            m.purged.with_label_values(&[table]);
        }
        for job in ["retention", "reconcile"] {
            for outcome in ["ok", "error", "skipped"] {
                m.job_runs.with_label_values(&[job, outcome]);
            }
        }
        for kind in ["rejected", "unknown", "database", "broker"] {
            m.publish_errors.with_label_values(&[kind]);
        }
        registry.register(Box::new(m.broker_queue_size.clone()))?;
        registry.register(Box::new(m.broker_queue_consumers.clone()))?;
        registry.register(Box::new(m.broker_queue_enqueued.clone()))?;
        registry.register(Box::new(m.broker_queue_dequeued.clone()))?;
        registry.register(Box::new(m.published.clone()))?;
        registry.register(Box::new(m.publish_errors.clone()))?;
        registry.register(Box::new(m.parked.clone()))?;
        registry.register(Box::new(m.batch_size.clone()))?;
        registry.register(Box::new(m.batch_seconds.clone()))?;
        registry.register(Box::new(m.dwell_seconds.clone()))?;
        registry.register(Box::new(m.outbox_pending.clone()))?;
        registry.register(Box::new(m.outbox_oldest_pending_seconds.clone()))?;
        registry.register(Box::new(m.outbox_parked.clone()))?;
        registry.register(Box::new(m.broker_connected.clone()))?;
        registry.register(Box::new(m.paused.clone()))?;
        registry.register(Box::new(m.ready.clone()))?;
        registry.register(Box::new(m.leases_held.clone()))?;
        registry.register(Box::new(m.purged.clone()))?;
        registry.register(Box::new(m.job_runs.clone()))?;
        registry.register(Box::new(m.pending_without_outbox.clone()))?;
        registry.register(Box::new(m.published_not_processed.clone()))?;
        registry.register(Box::new(m.repaired.clone()))?;
        Ok(m)
    }
}
