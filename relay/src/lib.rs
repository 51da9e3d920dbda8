//! The relay: drains the transactional outbox to ActiveMQ `/queue/order.processing`.
//!
//! Invariant: only the relay publishes order events, and it marks a row
//! published only after the broker's RECEIPT (at-least-once; the consumer dedupes).

pub mod broker_stats;
mod config;
pub mod maintenance;
pub mod metrics;
pub mod ops;
pub mod publisher;
mod retry;
pub mod step;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use error_reporter::Report;
use observability::Readiness;
use schema::OutboxAdmin;
use service::{AdminPort, Every, Service, Supervisor};
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::broker_stats::BrokerQueues;
use crate::metrics::Metrics;
use crate::publisher::{Publisher, StompPublisher};
use crate::step::Relay;

/// A built relay: database connected and migrated, admin port bound.
pub struct App {
    config: Config,
    outbox_admin: Arc<dyn OutboxAdmin>,
    admin: AdminPort,
    readiness: Readiness,
    relay: Arc<Relay>,
}

impl Service for App {
    const NAME: &'static str = "relay";
    type Config = Config;

    fn shared(config: &Config) -> &service::ServiceArgs {
        &config.service
    }

    /// Checks the settings and the admin bind, connects to the database
    /// (running migrations) and binds the admin port. The broker is connected
    /// lazily, so the relay starts during a broker outage.
    async fn build(config: Config) -> anyhow::Result<App> {
        config.check()?;
        let admin = AdminPort::bind(Self::NAME, &config.service, config.admin_addr, schema::round_trips).await?;
        // Its writes are redone anyway (a lost lease lapses, a lost mark resends).
        let url = &config.database.url();
        let store = url.open(schema::Durability::Relaxed).await.with_context(|| format!("connecting to {url}"))?;
        let broker = config.broker.client_config();
        let publisher: Arc<dyn Publisher> = Arc::new(StompPublisher::new(
            broker,
            config.broker.queue.clone(),
            config.receipt_timeout(),
            config.max_message_bytes,
        ));
        let metrics = Metrics::register(&admin.registry)?;
        let owner = config.relay_id.clone().unwrap_or_else(default_relay_id);
        let relay = Arc::new(Relay {
            store: store.clone(),
            publisher,
            owner,
            batch_size: config.batch_size,
            lease: config.lease(),
            max_attempts: config.max_attempts,
            metrics,
            control: step::Control::default(),
        });
        let readiness = Readiness::new(&["database", "broker", "loop"]);
        Ok(App { config, outbox_admin: store, admin, readiness, relay })
    }

    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        vec![("admin", self.admin.local_addr())]
    }

    /// Runs until `shutdown`: then stops claiming, finishes the batch in
    /// flight within the grace period, releases its leases and disconnects.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App { config, outbox_admin, admin, readiness, relay } = self;
        tracing::info!(
            relay_id = %relay.owner,
            admin = %admin.local_addr(),
            database = %config.database.database_url,
            broker = %config.broker.broker_url,
            "relay started"
        );
        let mut supervisor = Supervisor::new(&shutdown);
        let broker_queues = BrokerQueues::default();
        let routes = ops::router(relay.clone(), outbox_admin.clone(), admin.token.clone(), broker_queues.clone());
        supervisor.serve_admin(admin, readiness.clone(), routes);
        let queue = config.broker.queue.clone();
        let stats = broker_stats::watch(
            config.broker.client_config(),
            vec![queue.clone(), format!("{queue}.DLQ")],
            broker_queues,
            relay.metrics.clone(),
            supervisor.stop_token(),
        );
        tokio::spawn(stats);
        let mut scheduler =
            maintenance::start(outbox_admin, config.maintenance(&relay.owner), relay.metrics.clone()).await?;
        let watch = watch(relay.clone(), readiness, supervisor.stop_token());
        supervisor.spawn("watch loop", async move {
            watch.await;
            Ok(())
        });

        let poll_min = Duration::from_millis(config.poll_min_ms);
        let poll_max = Duration::from_millis(config.poll_max_ms.max(config.poll_min_ms));
        let grace = config.service.grace();
        if service::within_grace(relay.run(poll_min, poll_max, shutdown.clone()), &shutdown, grace).await.is_none() {
            tracing::warn!("grace period over with a batch still in flight");
        }
        match relay.store.release_leases(&relay.owner).await {
            Ok(n) => tracing::info!(released = n, "leases released"),
            Err(error) => {
                tracing::warn!(error = %Report::new(&error), "could not release leases; they expire on their own")
            }
        }
        relay.publisher.close().await;
        if let Err(error) = scheduler.shutdown().await {
            tracing::warn!(error = %Report::new(&error), "maintenance scheduler did not stop cleanly");
        }
        supervisor.stop().await?;
        tracing::info!("relay stopped");
        Ok(())
    }
}

/// Refreshes backlog gauges and readiness every second; reconnects an idle broker link.
async fn watch(relay: Arc<Relay>, readiness: Readiness, stop: CancellationToken) {
    let mut every = Every::new(Duration::from_secs(1), stop);
    while every.tick().await {
        let stats = relay.store.outbox_stats().await;
        if let Ok(stats) = &stats {
            relay.metrics.outbox_pending.set(stats.pending);
            relay.metrics.outbox_oldest_pending_seconds.set(stats.oldest_pending_seconds);
            relay.metrics.outbox_parked.set(stats.parked);
        }
        readiness.record("database", &stats, "ok");
        // A loop that has not turned for 30 s is stuck (a batch cannot take that long).
        let age = relay.control.heartbeat_age();
        readiness.set("loop", age < Duration::from_secs(30), format!("last turn {:.1} s ago", age.as_secs_f64()));
        let broker = relay.publisher.check().await;
        relay.metrics.broker_connected.set(i64::from(broker.is_ok()));
        readiness.record("broker", &broker, "connected");
        relay.metrics.ready.set(i64::from(readiness.is_ready()));
    }
}

fn default_relay_id() -> String {
    let host =
        std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "relay".into());
    format!("{host}-{}-{:04x}", std::process::id(), rand::random::<u16>())
}
