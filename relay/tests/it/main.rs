//! The relay step against a real SQLite store and a scripted fake broker:
//! what each broker answer does to the rows.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking; its helpers unwrap like its tests")]

use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use relay::metrics::Metrics;
use relay::publisher::{Outcome, Publisher};
use relay::step::{Control, Relay, RelayError};
use schema::{NewOrder, OrderId, OrderStatus, OutboxRow, Store, StoreError};
use service::Service as _;
use tokio_util::sync::CancellationToken;

/// How the fake broker answers one row.
type Answer = Box<dyn Fn(&OutboxRow) -> Outcome + Send>;

/// Answers each publish with the next scripted outcome per row (the last one repeats).
struct FakeBroker {
    script: Mutex<Vec<Answer>>,
    seen: Mutex<Vec<OrderId>>,
}

impl FakeBroker {
    fn new(script: Vec<Answer>) -> Arc<Self> {
        Arc::new(Self { script: Mutex::new(script), seen: Mutex::new(Vec::new()) })
    }
}

#[async_trait]
impl Publisher for FakeBroker {
    async fn publish(&self, rows: &[OutboxRow]) -> Vec<Outcome> {
        self.seen.lock().unwrap().extend(rows.iter().map(|r| r.order_id));
        let mut script = self.script.lock().unwrap();
        if script.len() > 1 {
            let answer = script.remove(0);
            return rows.iter().map(&*answer).collect();
        }
        rows.iter().map(&*script[0]).collect()
    }
    async fn check(&self) -> Result<(), stomp::StompError> {
        Ok(())
    }
    async fn close(&self) {}
}

async fn setup(broker: Arc<FakeBroker>) -> (Relay, Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("relay.db").display());
    let store = schema::testing::open(&url).await.unwrap().store;
    let relay = Relay {
        store: store.clone(),
        publisher: broker,
        owner: "relay-test".into(),
        batch_size: 10,
        lease: Duration::from_secs(30),
        max_attempts: 2,
        metrics: Metrics::register(&prometheus::Registry::new()).unwrap(),
        control: Control::default(),
    };
    (relay, store, dir)
}

async fn place(store: &Arc<dyn Store>, product: &str) -> OrderId {
    let order = NewOrder {
        customer_name: "Step".into(),
        product_id: product.into(),
        quantity: 1,
        idempotency_key: None,
        traceparent: None,
        tracestate: None,
    };
    match store.place_order(order).await.unwrap() {
        schema::Placed::Created(o) | schema::Placed::Existing(o) => o.order_id,
    }
}

async fn place_many(store: &Arc<dyn Store>, n: usize) -> Vec<OrderId> {
    let mut orders = Vec::with_capacity(n);
    for _ in 0..n {
        orders.push(place(store, "P123").await);
    }
    orders
}

/// Runs the relay's loop (polls of 1 to 5 ms) until the token is cancelled.
fn run_loop(relay: Relay) -> (Arc<Relay>, CancellationToken, tokio::task::JoinHandle<()>) {
    let relay = Arc::new(relay);
    let stop = CancellationToken::new();
    let running = tokio::spawn({
        let (relay, stop) = (relay.clone(), stop.clone());
        async move { relay.run(Duration::from_millis(1), Duration::from_millis(5), stop).await }
    });
    (relay, stop, running)
}

#[tokio::test]
async fn confirmed_rows_are_marked_and_their_orders_published() {
    let (relay, store, _dir) = setup(FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)])).await;
    let a = place(&store, "P123").await;
    let b = place(&store, "P200").await;
    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.claimed, report.published), (2, 2));
    assert_eq!(store.order(a).await.unwrap().status, OrderStatus::Published);
    assert_eq!(store.order(b).await.unwrap().status, OrderStatus::Published);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 0);
    assert_eq!(relay.relay_once().await.unwrap().claimed, 0, "nothing left to send");
}

#[tokio::test]
async fn a_rejected_row_counts_attempts_and_is_parked_while_the_others_are_published() {
    let broker = FakeBroker::new(vec![Box::new(|row: &OutboxRow| match row.order_id {
        OrderId(1) => Outcome::Rejected("destination refused".into()),
        _ => Outcome::Confirmed,
    })]);
    let (relay, store, _dir) = setup(broker).await;
    let poison = place(&store, "P123").await;
    let good = place(&store, "P200").await;
    let first = relay.relay_once().await.unwrap();
    assert_eq!((first.published, first.rejected, first.parked), (1, 1, 0));
    assert_eq!(store.order(good).await.unwrap().status, OrderStatus::Published);
    assert_eq!(store.order(poison).await.unwrap().status, OrderStatus::Pending);
    // The retry is due after a backoff; the second rejection reaches the cap.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let second = loop {
        let report = relay.relay_once().await.unwrap();
        if report.claimed > 0 {
            break report;
        }
        assert!(std::time::Instant::now() < deadline, "the retry never became due");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    assert_eq!((second.rejected, second.parked), (1, 1));
    let parked = store.parked_rows(10).await.unwrap();
    assert_eq!(parked[0].last_error.as_deref(), Some("destination refused"));
}

#[tokio::test]
async fn an_unknown_outcome_releases_the_rows_without_counting_an_attempt() {
    let broker = FakeBroker::new(vec![
        Box::new(|_| Outcome::Unknown("receipt timed out".into())),
        Box::new(|_| Outcome::Confirmed),
    ]);
    let (relay, store, _dir) = setup(broker.clone()).await;
    let order = place(&store, "P123").await;
    let error = relay.relay_once().await.unwrap_err();
    assert!(matches!(error, RelayError::BrokerUnavailable(_)), "{error}");
    assert_eq!(store.outbox_stats().await.unwrap().parked, 0, "an outage never parks a row");
    // Released at once: the next step sends it again (the consumer dedupes).
    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(store.order(order).await.unwrap().status, OrderStatus::Published);
    assert_eq!(*broker.seen.lock().unwrap(), vec![order, order], "sent twice: at least once, never lost");
}

#[tokio::test]
async fn a_broker_refusing_for_a_passing_reason_never_parks_a_row() {
    let flow_control = "Usage Manager Memory Limit reached. Stopping producer to prevent flooding queue://orders";
    let broker = FakeBroker::new(vec![
        Box::new(move |_| relay::publisher::classify_error(flow_control.into())),
        Box::new(move |_| relay::publisher::classify_error(flow_control.into())),
        Box::new(|_| Outcome::Confirmed),
    ]);
    let (relay, store, _dir) = setup(broker.clone()).await;
    let order = place(&store, "P123").await;
    for _ in 0..2 {
        assert!(matches!(relay.relay_once().await.unwrap_err(), RelayError::BrokerUnavailable(_)));
    }
    assert_eq!(store.outbox_stats().await.unwrap().parked, 0, "flow control is not poison");
    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.claimed, report.published, report.rejected), (1, 1, 0));
    assert_eq!(store.order(order).await.unwrap().status, OrderStatus::Published);
    assert!(matches!(relay::publisher::classify_error("Frame size exceeds the maximum".into()), Outcome::Rejected(_)));
}

#[tokio::test]
async fn a_paused_relay_is_drained_of_its_leases() {
    let (relay, store, _dir) = setup(FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)])).await;
    place(&store, "P123").await;
    store.claim_batch("relay-test", 10, Duration::from_secs(300)).await.unwrap();
    assert_eq!(relay.drain().await.unwrap(), 1, "the lease it held is released");
    assert!(relay.control.is_paused());
    relay.resume();
    assert!(!relay.control.is_paused());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_loop_streams_batches_in_claim_order_and_a_silent_broker_mid_stream_gives_every_lease_back() {
    let broker = FakeBroker::new(vec![
        Box::new(|_| Outcome::Confirmed),
        Box::new(|_| Outcome::Confirmed),
        Box::new(|_| Outcome::Unknown("receipt timed out".into())),
        Box::new(|_| Outcome::Confirmed),
    ]);
    let (relay, store, _dir) = setup(broker.clone()).await;
    let orders = place_many(&store, 45).await;
    let (relay, stop, running) = run_loop(relay);
    // Well inside the 30 s lease: the batch claimed while the broker went
    // silent was given back at once, not left to lapse.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while store.outbox_stats().await.unwrap().pending > 0 {
        assert!(std::time::Instant::now() < deadline, "{:?}", store.outbox_stats().await.unwrap());
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    running.await.unwrap();
    for order in &orders {
        assert_eq!(store.order(*order).await.unwrap().status, OrderStatus::Published, "{order:?}");
    }
    let seen = broker.seen.lock().unwrap().clone();
    let first: Vec<OrderId> = seen.iter().take(20).copied().collect();
    assert_eq!(first, orders[..20], "the first two batches went out in claim order");
    for order in &orders {
        assert!(seen.contains(order), "{order:?} was never sent");
    }
    assert!(seen.len() > orders.len(), "the silent batch went out again: {} sends", seen.len());
    assert_eq!(relay.metrics.leases_held.get(), 0);
}

/// A broker that never answers (a hung connection, a full TCP window).
#[derive(Default)]
struct SilentBroker {
    closed: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Publisher for SilentBroker {
    async fn publish(&self, _rows: &[OutboxRow]) -> Vec<Outcome> {
        std::future::pending().await
    }
    async fn check(&self) -> Result<(), stomp::StompError> {
        Ok(())
    }
    async fn close(&self) {
        self.closed.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

#[tokio::test]
async fn a_silent_broker_never_holds_a_step_past_its_lease() {
    let broker = Arc::new(SilentBroker::default());
    let (mut relay, store, _dir) = setup(FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)])).await;
    relay.publisher = broker.clone();
    relay.lease = Duration::from_millis(600);
    place(&store, "P123").await;
    let started = std::time::Instant::now();
    let error = relay.relay_once().await.unwrap_err();
    let took = started.elapsed();
    assert!(matches!(error, RelayError::BrokerUnavailable(_)), "{error}");
    assert!(took < relay.lease, "the step ended inside its lease: {took:?}");
    assert!(broker.closed.load(std::sync::atomic::Ordering::SeqCst), "the connection is dropped");
    // Given back at once with no attempt counted: another relay may take it now.
    let rows = store.claim_batch("relay-other", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!((rows.len(), rows[0].attempts), (1, 0));
}

#[tokio::test]
async fn a_receipt_timeout_that_could_outlive_the_lease_is_refused_at_start() {
    let flags = ["relay", "--database-url", "sqlite://unused.db", "--lease-ms", "3000", "--receipt-timeout-ms", "2500"];
    let config = <relay::Config as clap::Parser>::try_parse_from(flags).unwrap();
    let error = relay::App::build(config).await.err().expect("refused");
    assert!(error.to_string().contains("RELAY_RECEIPT_TIMEOUT_MS (2500 ms)"), "{error}");
}

#[test]
fn a_bad_url_is_refused_at_start_naming_its_flag_and_never_its_password() {
    use clap::Parser;
    let database = ["relay", "--database-url", "mssql://sa:Secr3t@db/orders?tls=maybe"];
    let broker = ["relay", "--broker-url", "tcp://app:Secr3t@mq"];
    for (flags, flag) in [(database, "--database-url"), (broker, "--broker-url")] {
        let error = relay::Config::try_parse_from(flags).expect_err("refused").to_string();
        assert!(error.contains(flag) && !error.contains("Secr3t"), "{error}");
    }
    let good = ["relay", "--database-url", "mssql://sa:Secr3t@db/orders", "--broker-url", "tcp://app:Secr3t@mq:61613"];
    let config = relay::Config::try_parse_from(good).unwrap();
    let shown = format!("{} {} {config:?}", config.database.database_url, config.broker.broker_url);
    assert!(!shown.contains("Secr3t"), "{shown}");
}

/// The store behind gates the test opens: from the second claim on, each
/// claim waits for a permit of `claims` (none at first), then answers `late`
/// after the rows were leased; when `hold_marks` is set, each mark waits for
/// a permit of `marks`; when `late_commits` is set, a renewal while a claim
/// runs renews nothing, as when the claim's transaction commits at its end.
struct Gated {
    inner: Arc<dyn Store>,
    claims: tokio::sync::Semaphore,
    claimed: std::sync::atomic::AtomicUsize,
    late: Duration,
    marks: tokio::sync::Semaphore,
    hold_marks: bool,
    late_commits: bool,
    in_claim: std::sync::atomic::AtomicBool,
}

impl Gated {
    fn slow_claims(inner: Arc<dyn Store>, late: Duration) -> Arc<Self> {
        Arc::new(Self::new(inner, late, false))
    }

    fn late_commits(inner: Arc<dyn Store>, late: Duration) -> Arc<Self> {
        Arc::new(Self { late_commits: true, ..Self::new(inner, late, false) })
    }

    fn held_marks(inner: Arc<dyn Store>) -> Arc<Self> {
        let gated = Self::new(inner, Duration::ZERO, true);
        gated.claims.add_permits(1_000);
        Arc::new(gated)
    }

    fn new(inner: Arc<dyn Store>, late: Duration, hold_marks: bool) -> Self {
        let (claims, marks) = (tokio::sync::Semaphore::new(0), tokio::sync::Semaphore::new(0));
        let (claimed, in_claim) = Default::default();
        Self { inner, claims, claimed, late, marks, hold_marks, late_commits: false, in_claim }
    }
}

#[async_trait]
impl schema::OutboxStore for Gated {
    async fn claim_batch(&self, owner: &str, limit: u32, lease: Duration) -> Result<Vec<OutboxRow>, StoreError> {
        if self.claimed.fetch_add(1, std::sync::atomic::Ordering::SeqCst) > 0 {
            self.claims.acquire().await.unwrap().forget();
        }
        self.in_claim.store(true, std::sync::atomic::Ordering::SeqCst);
        let rows = self.inner.claim_batch(owner, limit, lease).await;
        tokio::time::sleep(self.late).await;
        self.in_claim.store(false, std::sync::atomic::Ordering::SeqCst);
        rows
    }
    async fn mark_published(&self, ids: &[schema::OutboxId]) -> Result<u64, StoreError> {
        if self.hold_marks {
            self.marks.acquire().await.unwrap().forget();
        }
        self.inner.mark_published(ids).await
    }
    async fn record_failure(&self, failure: &schema::FailedAttempt<'_>) -> Result<schema::FailureOutcome, StoreError> {
        self.inner.record_failure(failure).await
    }
    async fn release_leases(&self, owner: &str) -> Result<u64, StoreError> {
        self.inner.release_leases(owner).await
    }

    async fn renew_leases(&self, owner: &str, lease: Duration) -> Result<u64, StoreError> {
        if self.late_commits && self.in_claim.load(std::sync::atomic::Ordering::SeqCst) {
            return Ok(0);
        }
        self.inner.renew_leases(owner, lease).await
    }
    async fn outbox_stats(&self) -> Result<schema::OutboxStats, StoreError> {
        self.inner.outbox_stats().await
    }
}

/// Waits (10 s at most) until `done` holds.
async fn until(what: &str, mut done: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while !done().await {
        assert!(std::time::Instant::now() < deadline, "{what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_is_marked_as_soon_as_its_receipts_are_in_not_after_the_next_claim() {
    let (mut relay, store, _dir) = setup(FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)])).await;
    let slow = Gated::slow_claims(store.clone(), Duration::ZERO);
    relay.store = slow.clone();
    let orders = place_many(&store, 15).await;
    let (_relay, stop, running) = run_loop(relay);
    // The second claim hangs at the gate; the first batch's rows are marked
    // meanwhile (a claim stuck behind a lock must not eat their lease).
    let first_marked = async || store.order(orders[9]).await.unwrap().status == OrderStatus::Published;
    until("the first batch was not marked while the next claim waited", first_marked).await;
    assert_eq!(slow.claimed.load(std::sync::atomic::Ordering::SeqCst), 2, "the second claim is still waiting");
    assert_eq!(store.order(orders[10]).await.unwrap().status, OrderStatus::Pending);
    slow.claims.add_permits(100);
    until("the rest was not published", async || store.outbox_stats().await.unwrap().pending == 0).await;
    stop.cancel();
    running.await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_next_batch_is_sent_while_the_one_before_is_marked_and_the_queue_keeps_claim_order() {
    let broker = FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)]);
    let (mut relay, store, _dir) = setup(broker.clone()).await;
    let held = Gated::held_marks(store.clone());
    relay.store = held.clone();
    let orders = place_many(&store, 25).await;
    let (_relay, stop, running) = run_loop(relay);
    // The first batch's mark waits at the gate; the second and third batches
    // go out meanwhile (the third then waits for the recorder to take the second).
    until("the second batch was not sent while the first was marked", async || broker.seen.lock().unwrap().len() >= 20)
        .await;
    assert_eq!(store.order(orders[0]).await.unwrap().status, OrderStatus::Pending, "the first mark is held");
    held.marks.add_permits(100);
    until("the rest was not published", async || store.outbox_stats().await.unwrap().pending == 0).await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(*broker.seen.lock().unwrap(), orders, "each row sent once, in claim order");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_mark_held_past_the_lease_keeps_its_rows_from_another_relay() {
    let broker = FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)]);
    let (mut relay, store, _dir) = setup(broker.clone()).await;
    relay.lease = Duration::from_millis(600);
    let held = Gated::held_marks(store.clone());
    relay.store = held.clone();
    let orders = place_many(&store, 25).await;
    let (_relay, stop, running) = run_loop(relay);
    until("the first batches were not sent", async || broker.seen.lock().unwrap().len() >= 20).await;
    // Three leases pass while the first mark is held: renewed, none lapses.
    tokio::time::sleep(Duration::from_millis(1_800)).await;
    let stolen = store.claim_batch("relay-other", 100, Duration::from_secs(30)).await.unwrap();
    let sent = broker.seen.lock().unwrap().clone();
    assert!(stolen.iter().all(|row| !sent.contains(&row.order_id)), "another relay took a sent row: {stolen:?}");
    store.release_leases("relay-other").await.unwrap();
    held.marks.add_permits(100);
    until("the rest was not published", async || store.outbox_stats().await.unwrap().pending == 0).await;
    stop.cancel();
    running.await.unwrap();
    assert_eq!(*broker.seen.lock().unwrap(), orders, "each row sent once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_renewal_that_ran_beside_a_claim_does_not_stretch_that_claims_lease() {
    let broker = FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)]);
    let (mut relay, store, _dir) = setup(broker.clone()).await;
    relay.lease = Duration::from_millis(600);
    // The claim answers after its lease ran out; the three renewals meanwhile
    // (every 200 ms) cannot see its rows, as when it waited on locks and
    // committed last (seen on the TDS engine: claims of 7 s against a 4 s lease).
    let gated = Gated::late_commits(store.clone(), Duration::from_millis(700));
    relay.store = gated.clone();
    place(&store, "P123").await;
    let (_relay, stop, running) = run_loop(relay);
    until("the streak after the late claim began", async || {
        gated.claimed.load(std::sync::atomic::Ordering::SeqCst) >= 2
    })
    .await;
    assert!(broker.seen.lock().unwrap().is_empty(), "a row was sent after its lease had lapsed");
    let rows = store.claim_batch("relay-other", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!((rows.len(), rows[0].attempts), (1, 0), "given back with no attempt counted");
    stop.cancel();
    gated.claims.add_permits(100);
    running.await.unwrap();
}

/// A relay with a 600 ms lease whose claims answer `late` after leasing, its
/// broker confirming every message.
async fn with_slow_claims(late: Duration) -> (Relay, Arc<dyn Store>, Arc<FakeBroker>, tempfile::TempDir) {
    let broker = FakeBroker::new(vec![Box::new(|_| Outcome::Confirmed)]);
    let (mut relay, store, dir) = setup(broker.clone()).await;
    relay.lease = Duration::from_millis(600);
    relay.store = Gated::slow_claims(store.clone(), late);
    (relay, store, broker, dir)
}

#[tokio::test]
async fn a_claim_that_took_two_thirds_of_the_lease_is_renewed_and_sent() {
    let (relay, store, broker, _dir) = with_slow_claims(Duration::from_millis(450)).await;
    let order = place(&store, "P123").await;
    let report = relay.relay_once().await.unwrap();
    assert_eq!((report.claimed, report.published), (1, 1));
    assert_eq!(*broker.seen.lock().unwrap(), vec![order]);
}

#[tokio::test]
async fn a_claim_that_outlasted_its_lease_gives_its_batch_back_unsent() {
    let (relay, store, broker, _dir) = with_slow_claims(Duration::from_millis(700)).await;
    place(&store, "P123").await;
    let error = relay.relay_once().await.unwrap_err();
    assert!(matches!(error, RelayError::LeaseSpent(_)), "{error}");
    assert!(broker.seen.lock().unwrap().is_empty(), "nothing was sent that another relay might send too");
    // Given back at once with no attempt counted: another relay may take it now.
    let rows = store.claim_batch("relay-other", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!((rows.len(), rows[0].attempts), (1, 0));
}
