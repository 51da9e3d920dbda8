//! The consumer: prices and finalises orders from `/queue/order.processing`.
//!
//! Invariants: only the consumer subscribes; a message is ACKed only after its
//! database commit, and a dead letter is part of that commit (published from
//! the database afterwards); transient failures are retried in place and never
//! NACKed (ActiveMQ 5 sends a NACKed message straight to its DLQ); a permanent
//! failure never halts the consumer: it parks the one message that causes it.

mod config;
pub mod handler;
pub mod metrics;
pub mod step;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use axum::extract::{Query, State};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use error_reporter::Report;
use observability::Readiness;
use schema::{Applied, Delivery, ProcessingStore};
use service::{AdminPort, Backoff, Service, Supervisor};
use stomp::{Client, StompError};
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::handler::to_delivery;
use crate::metrics::Metrics;
use crate::step::{StepError, handle_delivery, publish_dead_letters};

const BROKER_TIMEOUT: Duration = Duration::from_secs(10);
/// A connection that lived this long proved itself: the reconnect after it
/// starts the backoff over.
const HEALTHY_SESSION: Duration = Duration::from_secs(10);

/// A built consumer: database connected and migrated, admin port bound.
pub struct App {
    config: Config,
    store: Arc<dyn ProcessingStore>,
    admin: AdminPort,
    metrics: Metrics,
    readiness: Readiness,
    broker: stomp::Config,
}

impl Service for App {
    const NAME: &'static str = "consumer";
    type Config = Config;

    fn shared(config: &Config) -> &service::ServiceArgs {
        &config.service
    }

    /// Checks the admin bind, connects to the database (running migrations)
    /// and binds the admin port. The broker is connected in `run`, with
    /// retries, so the consumer starts during an outage.
    async fn build(config: Config) -> anyhow::Result<App> {
        let admin = AdminPort::bind(Self::NAME, &config.service, config.admin_addr, schema::round_trips).await?;
        let url = &config.database.url();
        let store = url.open(schema::Durability::Full).await.with_context(|| format!("connecting to {url}"))?;
        let broker = config.broker.client_config();
        let metrics = Metrics::register(&admin.registry)?;
        let readiness = Readiness::new(&["broker", "database"]);
        Ok(App { config, store, admin, metrics, readiness, broker })
    }

    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![("admin", self.admin.local_addr())]
    }

    /// Consumes until `shutdown`; then finishes the message in hand, disconnects, and returns.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App { config, store, admin, metrics, readiness, broker } = self;
        tracing::info!(
            admin = %admin.local_addr(),
            database = %config.database.database_url,
            broker = %config.broker.broker_url,
            "consumer started"
        );
        let mut supervisor = Supervisor::new(&shutdown);
        supervisor.serve_admin(admin, readiness.clone(), ops_router(store.clone()));
        let consumer = Consumer {
            store,
            metrics,
            readiness,
            broker,
            prefetch: config.prefetch,
            batch_size: config.batch_size.max(1),
            queue: config.broker.queue.clone(),
        };
        let grace = config.service.grace();
        if service::within_grace(consumer.run(shutdown.clone()), &shutdown, grace).await.is_none() {
            tracing::warn!("grace period over with a message still in hand; it will be redelivered");
        }
        supervisor.stop().await?;
        tracing::info!("consumer stopped");
        Ok(())
    }
}

/// The consumer's operator route on the admin port: the dead letters set aside.
fn ops_router(store: Arc<dyn ProcessingStore>) -> Router {
    Router::new().route("/consumer/dead-letters/undeliverable", get(undeliverable)).with_state(store)
}

#[derive(serde::Deserialize)]
struct Limit {
    limit: Option<u32>,
}

async fn undeliverable(
    State(store): State<Arc<dyn ProcessingStore>>,
    Query(Limit { limit }): Query<Limit>,
) -> Response {
    match store.undeliverable_dead_letters(limit.unwrap_or(100).min(1000)).await {
        Ok(letters) => Json(letters).into_response(),
        Err(error) => {
            let (status, message) = service::operator_answer(&error);
            (status, Json(serde_json::json!({ "error": message }))).into_response()
        }
    }
}

struct Consumer {
    store: Arc<dyn ProcessingStore>,
    metrics: Metrics,
    readiness: Readiness,
    broker: stomp::Config,
    prefetch: u32,
    batch_size: usize,
    queue: String,
}

impl Consumer {
    /// Connect, subscribe, consume; reconnect with backoff whenever the connection ends.
    async fn run(&self, shutdown: CancellationToken) {
        let mut backoff = Backoff::new(Duration::from_millis(200), Duration::from_secs(10));
        while !shutdown.is_cancelled() {
            let subscribed = self.subscribe().await;
            self.readiness.record("broker", &subscribed, "subscribed");
            let client = match subscribed {
                Ok(client) => client,
                Err(error) => {
                    let delay = backoff.next_delay();
                    tracing::warn!(error = %Report::new(&error), retry_in_ms = delay.as_millis() as u64, "cannot subscribe");
                    tokio::select! {
                        _ = shutdown.cancelled() => {}
                        _ = tokio::time::sleep(delay) => {}
                    }
                    continue;
                }
            };
            self.readiness.set("database", true, "ok");
            self.metrics.broker_connected.set(1);
            tracing::info!(queue = %self.queue, prefetch = self.prefetch, "subscribed");
            let session = Instant::now();
            let consumed = self.consume(&client, &shutdown).await;
            let lasted = session.elapsed();
            self.metrics.broker_connected.set(0);
            self.readiness.set("broker", false, "disconnected");
            client.disconnect(Duration::from_secs(2)).await;
            let Err(error) = consumed else { continue };
            // A connection that lasted ended for a new reason: reconnect soon.
            // One that ended at once likely ends again the same way (the broker
            // redelivers the same message first): back off as after a refusal.
            if lasted >= HEALTHY_SESSION {
                backoff.reset();
            }
            let delay = backoff.next_delay();
            tracing::warn!(error = %Report::new(&error), retry_in_ms = delay.as_millis() as u64, "broker connection lost; reconnecting");
            tokio::select! {
                _ = shutdown.cancelled() => {}
                _ = tokio::time::sleep(delay) => {}
            }
        }
    }

    async fn subscribe(&self) -> Result<Client, StompError> {
        let client = Client::connect(&self.broker).await?;
        client.subscribe(&self.queue, "orders", self.prefetch, BROKER_TIMEOUT).await?;
        Ok(client)
    }

    /// Handles deliveries until shutdown (Ok) or the connection fails (Err).
    async fn consume(&self, client: &Client, shutdown: &CancellationToken) -> Result<(), StompError> {
        let mut messages = client.take_messages().expect("a fresh client has its message stream");
        // Dead letters left by a crash (or a failed send) go out at once, then on each tick.
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            let first = tokio::select! {
                _ = shutdown.cancelled() => return Ok(()),
                _ = tick.tick() => {
                    self.publish_dead_letters(client).await?;
                    continue;
                }
                frame = messages.recv() => frame,
            };
            let Some(first) = first else {
                return Err(StompError::Closed(client.close_reason()));
            };
            // Take whatever else has already arrived, up to the batch size:
            // batches grow with load and cost no latency when idle.
            let mut batch = Vec::with_capacity(self.batch_size.min(messages.len() + 1));
            batch.push(to_delivery(first));
            while batch.len() < self.batch_size {
                match messages.try_recv() {
                    Ok(frame) => batch.push(to_delivery(frame)),
                    Err(_) => break,
                }
            }
            // A batch that wrote a dead letter sends it at once; any other
            // batch leaves the database to the tick (one query less a batch).
            if self.deliver(client, &batch, shutdown).await? == Some(true) {
                self.publish_dead_letters(client).await?;
            }
        }
    }

    /// Counts and logs what a committed batch did.
    fn record(&self, batch: &[Delivery], outcomes: &[Applied], spans: &[tracing::Span]) {
        for ((delivery, outcome), span) in batch.iter().zip(outcomes).zip(spans) {
            match outcome {
                Applied::Processed(order) => {
                    span.record("order_id", order.order_id.0);
                    tracing::info!(
                        order_id = order.order_id.0,
                        trace_id = delivery.header("traceparent").and_then(observability::trace_id_of),
                        "Processed order {}: unit_price={}, total_price={}",
                        order.order_id,
                        order.unit_price.unwrap_or_default(),
                        order.total_price.unwrap_or_default()
                    );
                    self.metrics.messages.with_label_values(&["processed"]).inc();
                    if let Some(done) = order.processed_at {
                        let e2e = (done - order.created_at).to_std().unwrap_or_default();
                        self.metrics.end_to_end_seconds.observe(e2e.as_secs_f64());
                    }
                }
                Applied::Duplicate => self.metrics.messages.with_label_values(&["duplicate"]).inc(),
                Applied::DeadLettered { reason, order_failed } => {
                    tracing::warn!(%reason, order_failed, "message dead-lettered");
                    if *order_failed {
                        self.metrics.messages.with_label_values(&["failed"]).inc();
                    }
                }
            }
        }
    }

    /// Publishes dead letters waiting in the database; a database problem is
    /// only logged (they wait there safely), a broker problem ends the connection.
    async fn publish_dead_letters(&self, client: &Client) -> Result<(), StompError> {
        match publish_dead_letters(self.store.as_ref(), client, &self.queue).await {
            Ok(published) => {
                self.metrics.messages.with_label_values(&["dead_lettered"]).inc_by(published.sent);
                self.metrics.undeliverable_dead_letters.inc_by(published.undeliverable);
                published.broker_error.map_or(Ok(()), Err)
            }
            Err(StepError::Broker(error) | StepError::NotAcked { error, .. }) => Err(error),
            Err(StepError::Store(error)) => {
                tracing::warn!(error = %Report::new(&error), "dead letters wait in the database; publishing them later");
                Ok(())
            }
        }
    }

    /// Applies and ACKs a batch, retrying transient database errors in place
    /// (never NACKed) while readiness and a gauge say how long it has been
    /// stuck. Whether the batch wrote a dead letter; `None` when shutdown came
    /// first (nothing ACKed: redelivered).
    async fn deliver(
        &self,
        client: &Client,
        batch: &[Delivery],
        shutdown: &CancellationToken,
    ) -> Result<Option<bool>, StompError> {
        let started = Instant::now();
        self.metrics.batch_size.observe(batch.len() as f64);
        // One span per message, continuing the trace the message carries.
        let spans: Vec<tracing::Span> = batch
            .iter()
            .map(|delivery| {
                let span = tracing::debug_span!(
                    "order.process",
                    otel.kind = "consumer",
                    order_id = tracing::field::Empty,
                    trace_id = tracing::field::Empty
                );
                observability::continue_trace(&span, delivery.header("traceparent"), delivery.header("tracestate"));
                span
            })
            .collect();
        let redelivered = batch.iter().filter(|d| d.header("redelivered") == Some("true")).count();
        self.metrics.redeliveries.inc_by(redelivered as u64);
        let mut backoff = Backoff::new(Duration::from_millis(50), Duration::from_secs(5));
        let outcomes = loop {
            match handle_delivery(self.store.as_ref(), client, batch).await {
                Ok(outcomes) => break outcomes,
                Err(StepError::Broker(error)) => return Err(error),
                Err(StepError::NotAcked { applied, error }) => {
                    self.record(batch, &applied, &spans);
                    return Err(error);
                }
                Err(StepError::Store(error)) => {
                    let stuck = started.elapsed();
                    self.metrics.messages.with_label_values(&["retried"]).inc_by(batch.len() as u64);
                    self.metrics.stuck_seconds.set(stuck.as_secs_f64());
                    self.readiness.set(
                        "database",
                        false,
                        format!(
                            "a batch of {} has waited {:.1} s for the database: {}",
                            batch.len(),
                            stuck.as_secs_f64(),
                            Report::new(&error)
                        ),
                    );
                    let delay = backoff.next_delay();
                    tracing::warn!(
                        error = %Report::new(&error),
                        retry_in_ms = delay.as_millis() as u64,
                        "database unavailable; retrying the batch"
                    );
                    tokio::select! {
                        // Not ACKed: the broker redelivers them after we disconnect.
                        _ = shutdown.cancelled() => return Ok(None),
                        _ = tokio::time::sleep(delay) => {}
                    }
                }
            }
        };
        self.metrics.stuck_seconds.set(0.0);
        self.readiness.set("database", true, "ok");
        self.record(batch, &outcomes, &spans);
        self.metrics.processing_seconds.observe(started.elapsed().as_secs_f64());
        drop(spans);
        Ok(Some(outcomes.iter().any(|o| matches!(o, Applied::DeadLettered { .. }))))
    }
}
