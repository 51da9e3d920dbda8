//! The whole pipeline for one test: its own SQLite file and queue, the shared
//! (or a private) broker, and the three services.

use std::sync::Arc;
use std::time::Duration;

use ::service::Service as _;
use schema::testing::{Probe, Tally};
use serde_json::{Value, json};

use crate::flags::Flags;
use crate::invariants::{self, Expected};
use crate::service::Service;
use crate::wait_for;

/// Lease used in tests, so a killed relay's rows come back quickly.
pub const TEST_LEASE_MS: u64 = 4_000;

/// Lease used in tests on SQL Server. A lease must stay well above the
/// database's slowest claim (docs/configuration.md): on the TDS engine a claim
/// from a freshly loaded backlog takes 3-8 s under the suite's load, until the
/// engine's statistics catch up; with 4 s, a relay gave back claim after claim.
pub const TEST_MSSQL_LEASE_MS: u64 = 12_000;

/// The test lease for the database at `database_url`.
pub fn test_lease_ms(database_url: &str) -> u64 {
    match database_url.starts_with("sqlite:") {
        true => TEST_LEASE_MS,
        false => TEST_MSSQL_LEASE_MS,
    }
}

/// The operators' token the stack's relays require on their mutating routes.
pub const TEST_ADMIN_TOKEN: &str = "e2e-operator-token";

/// Producer + relay + consumer on one database and one queue.
pub struct Stack {
    /// The stack's own folder (its SQLite file), deleted with it.
    pub dir: tempfile::TempDir,
    /// The database all three services use.
    pub database_url: String,
    /// The store, for reading orders as the services see them.
    pub store: Arc<dyn schema::Store>,
    /// Whole-database figures and bulk loading, on either backend.
    pub probe: Arc<dyn Probe>,
    /// The broker.
    pub broker_url: String,
    /// The order queue, this stack's own.
    pub queue: String,
    /// The producer, always running.
    pub producer: Service,
    /// The relay, once started.
    pub relay: Option<Service>,
    /// The consumer, once started.
    pub consumer: Option<Service>,
    http: reqwest::Client,
}

impl Stack {
    /// All three services.
    pub async fn start(broker_url: &str) -> Stack {
        let mut stack = Self::start_producer(broker_url).await;
        stack.relay = Some(stack.start_relay().await);
        stack.consumer = Some(stack.start_consumer().await);
        stack
    }

    /// The producer only; start the others with [`Stack::start_relay`] and [`Stack::start_consumer`].
    pub async fn start_producer(broker_url: &str) -> Stack {
        let dir = tempfile::Builder::new().prefix("orderflow-e2e-").tempdir().expect("temp dir");
        let database_url = crate::test_database_url(&dir).await;
        let schema::testing::TestDb { store, probe } =
            schema::testing::open(&database_url).await.expect("test database");
        let config = producer_config(&database_url);
        let producer = Service::start(producer::App::build(config)).await.expect("producer starts");
        Stack {
            dir,
            database_url,
            store,
            probe,
            broker_url: broker_url.to_string(),
            queue: crate::unique_queue(),
            producer,
            relay: None,
            consumer: None,
            http: reqwest::Client::new(),
        }
    }

    /// Relay settings for this stack.
    pub fn relay_config(&self) -> relay::Config {
        let flags = Flags::relay(&self.database_url, &self.broker_url, &self.queue)
            .with("--heartbeat-ms", 1000)
            .with("--lease-ms", test_lease_ms(&self.database_url))
            .with("--receipt-timeout-ms", 2500)
            .with("--admin-token", TEST_ADMIN_TOKEN);
        flags.parse().expect("relay test flags")
    }

    /// Consumer settings for this stack.
    pub fn consumer_config(&self) -> consumer::Config {
        let flags = Flags::consumer(&self.database_url, &self.broker_url, &self.queue).with("--heartbeat-ms", 1000);
        flags.parse().expect("consumer test flags")
    }

    /// Starts a relay on this stack.
    pub async fn start_relay(&self) -> Service {
        Service::start(relay::App::build(self.relay_config())).await.expect("relay starts")
    }

    /// Starts a consumer on this stack.
    pub async fn start_consumer(&self) -> Service {
        Service::start(consumer::App::build(self.consumer_config())).await.expect("consumer starts")
    }

    /// A second producer on this stack's database whose ops page shows and
    /// drives the stack's relay and consumer and wants [`TEST_ADMIN_TOKEN`];
    /// its base URL is `http://` and its `http_addr`.
    pub async fn start_ops_producer(&self) -> Service {
        let mut config = producer_config(&self.database_url);
        config.ops_relays = self.relay.iter().map(|r| format!("http://{}", r.admin_addr)).collect();
        config.ops_consumers = self.consumer.iter().map(|c| format!("http://{}", c.admin_addr)).collect();
        config.service.admin_token = Some(TEST_ADMIN_TOKEN.into());
        Service::start(producer::App::build(config)).await.expect("ops producer starts")
    }

    /// `http://ADDR` of the producer.
    pub fn base_url(&self) -> String {
        format!("http://{}", self.producer.http_addr.expect("producer has a public address"))
    }

    /// `POST /api/orders` with a JSON body; returns status and body.
    pub async fn post_json(&self, body: &Value, idempotency_key: Option<&str>) -> (u16, Value) {
        let mut request = self.http.post(format!("{}/api/orders", self.base_url())).json(body);
        if let Some(key) = idempotency_key {
            request = request.header("Idempotency-Key", key);
        }
        let response = request.send().await.expect("producer answers");
        let status = response.status().as_u16();
        (status, response.json().await.unwrap_or(Value::Null))
    }

    /// Places a valid order through the JSON API and returns its id.
    pub async fn place_order(&self, name: &str, product_id: &str, quantity: i64) -> i64 {
        let (status, body) =
            self.post_json(&json!({"customer_name": name, "product_id": product_id, "quantity": quantity}), None).await;
        assert_eq!(status, 201, "order accepted: {body}");
        body["order_id"].as_i64().expect("order_id in the answer")
    }

    /// Whole-database figures, for waits and invariant checks.
    pub async fn tally(&self) -> Tally {
        self.probe.tally().await.expect("tally the test database")
    }

    /// Waits until `n` orders are final (processed or failed).
    pub async fn wait_until_final(&self, n: i64, timeout: Duration) {
        wait_for(&format!("{n} final orders"), timeout, || async {
            let t = self.tally().await;
            (t.processed + t.failed >= n).then_some(())
        })
        .await
    }

    /// Waits until `n` orders are final and the relay has marked every outbox
    /// row (a fast consumer may finish an order before its RECEIPT is recorded).
    pub async fn wait_until_settled(&self, n: i64, timeout: Duration) {
        self.wait_until_final(n, timeout).await;
        wait_for("the outbox to drain", timeout, || async { (self.tally().await.unpublished == 0).then_some(()) }).await
    }

    /// The consumer's count of messages with this outcome.
    pub async fn consumer_outcome(&self, outcome: &str) -> f64 {
        let consumer = self.consumer.as_ref().expect("consumer running");
        consumer.metric(&format!("orderflow_consumer_messages_total{{outcome=\"{outcome}\"}}")).await
    }

    /// The end-of-test invariants ([`crate::invariants`]): `n` orders, every
    /// one processed exactly once with the right prices, one published outbox
    /// row and one inbox row each, and the counters in agreement.
    pub async fn assert_all_processed_exactly_once(&self, n: i64) {
        let broken = invariants::check(self.store.as_ref(), self.probe.as_ref(), Expected::Exactly(n))
            .await
            .expect("read the test database");
        assert!(broken.is_empty(), "invariants broken: {broken:#?}");
    }

    /// Inserts `n` orders with their outbox rows straight into the database
    /// (a backlog for the relay). Returns the outbox ids.
    pub async fn fill_outbox(&self, n: usize, payload_pad: usize) -> Vec<schema::OutboxId> {
        self.probe.bulk_orders(n, payload_pad).await.expect("bulk load the outbox")
    }

    /// Reads every message on the stack's queue (acknowledging each) until the
    /// queue has been quiet for `quiet`; returns their `outbox-id` headers.
    pub async fn read_queue(&self, quiet: Duration) -> Vec<String> {
        let frames = crate::read_queue(&self.broker_url, &self.queue, quiet).await.expect("read the queue");
        frames.iter().map(|frame| frame.get("outbox-id").unwrap_or_default().to_string()).collect()
    }

    /// Stops every running service gracefully; each must exit cleanly.
    pub async fn shutdown(self) {
        if let Some(consumer) = self.consumer {
            consumer.stop().await.expect("consumer stops cleanly");
        }
        if let Some(relay) = self.relay {
            relay.stop().await.expect("relay stops cleanly");
        }
        self.producer.stop().await.expect("producer stops cleanly");
    }
}

/// Producer settings for tests: `database_url`, both ports 0, no ops targets.
pub fn producer_config(database_url: &str) -> producer::Config {
    let mut config: producer::Config = Flags::producer(database_url).parse().expect("producer test flags");
    config.ops_relays.clear();
    config.ops_consumers.clear();
    config
}
