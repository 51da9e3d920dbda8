//! The whole pipeline for one test: its own SQLite file and queue, the shared
//! (or a private) broker, and the three services.

use std::sync::Arc;
use std::time::Duration;

use ::service::Service as _;
use clap::Parser;
use schema::testing::{Probe, Tally};
use serde_json::{Value, json};

use crate::service::Service;
use crate::wait_for;

/// Lease used in tests, so a killed relay's rows come back quickly.
pub const TEST_LEASE_MS: u64 = 4_000;

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
        let probe = schema::testing::probe(&database_url).await.expect("test database");
        let store = schema::connect(&database_url).await.expect("test database");
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
        let lease = TEST_LEASE_MS.to_string();
        let extra = ["--lease-ms", &lease, "--receipt-timeout-ms", "2500", "--admin-token", TEST_ADMIN_TOKEN];
        relay::Config::try_parse_from(self.broker_service_flags("relay", &extra)).expect("relay test flags")
    }

    /// Consumer settings for this stack.
    pub fn consumer_config(&self) -> consumer::Config {
        consumer::Config::try_parse_from(self.broker_service_flags("consumer", &[])).expect("consumer test flags")
    }

    /// The flags of a service that talks to this stack's database and broker,
    /// admin on port 0, heart-beats every second, then `extra`.
    fn broker_service_flags<'a>(&'a self, name: &'a str, extra: &[&'a str]) -> Vec<&'a str> {
        let mut flags = vec![name, "--database-url", &self.database_url, "--broker-url", &self.broker_url];
        flags.extend(["--queue", &self.queue, "--admin-addr", "127.0.0.1:0", "--heartbeat-ms", "1000"]);
        flags.extend(extra);
        flags
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

    /// The end-of-test invariants: `n` orders, every one processed exactly
    /// once with the right prices, one published outbox row and one inbox row each.
    pub async fn assert_all_processed_exactly_once(&self, n: i64) {
        let t = self.tally().await;
        assert_eq!(t.orders, n, "orders placed");
        assert_eq!(t.processed, n, "orders processed");
        assert_eq!(t.outbox, n, "one outbox row per order");
        assert_eq!(t.unpublished, 0, "no outbox row left unpublished");
        assert_eq!(t.parked, 0, "nothing parked");
        assert_eq!(t.inbox, n, "one inbox row per message");
        assert_eq!(t.inbox_from_outbox, n, "every inbox row is one of our outbox rows");
        assert_eq!(t.mispriced, 0, "every order priced at list price less 10 %");
        let counts = self.store.order_counts().await.expect("order counts");
        assert_eq!((counts.processed, counts.pending + counts.published + counts.failed), (n, 0), "the counters agree");
    }

    /// Inserts `n` orders with their outbox rows straight into the database
    /// (a backlog for the relay). Returns the outbox ids.
    pub async fn fill_outbox(&self, n: usize, payload_pad: usize) -> Vec<schema::OutboxId> {
        self.probe.bulk_orders(n, payload_pad).await.expect("bulk load the outbox")
    }

    /// Reads every message on the stack's queue (acknowledging each) until the
    /// queue has been quiet for `quiet`; returns their `outbox-id` headers.
    pub async fn read_queue(&self, quiet: Duration) -> Vec<String> {
        let client = stomp::Client::connect(&stomp::Config::from_url(&self.broker_url).expect("broker url"))
            .await
            .expect("connect to read the queue");
        client.subscribe(&self.queue, "reader", 1000, Duration::from_secs(10)).await.expect("subscribe");
        let mut messages = client.take_messages().expect("message stream");
        let mut ids = Vec::new();
        while let Ok(Some(frame)) = tokio::time::timeout(quiet, messages.recv()).await {
            client.ack(&[frame.get("ack").expect("ack header")]).await.expect("ack");
            ids.push(frame.get("outbox-id").unwrap_or_default().to_string());
        }
        client.disconnect(Duration::from_secs(2)).await;
        ids
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
    let flags =
        ["producer", "--database-url", database_url, "--http-addr", "127.0.0.1:0", "--admin-addr", "127.0.0.1:0"];
    let mut config = producer::Config::try_parse_from(flags).expect("producer test flags");
    config.ops_relays.clear();
    config.ops_consumers.clear();
    config
}
