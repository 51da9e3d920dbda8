//! The pipeline end to end, in calm weather and through a killed relay and a
//! restarted broker: every order processed exactly once, nothing lost.

use std::sync::Arc;
use std::time::Duration;

use e2e::broker::{Broker, shared_broker_url};
use e2e::stack::Stack;
use e2e::wait_for;
use tokio::task::JoinHandle;

const PRODUCTS: [&str; 5] = ["P123", "P200", "P300", "P400", "P500"];

/// Places `n` orders one after another in the background (a steady stream).
fn place_in_background(stack: &Arc<Stack>, n: usize) -> JoinHandle<Vec<i64>> {
    place_paced(stack, n, Duration::ZERO)
}

/// Places `n` orders, one each `every` at most: a stream long enough that a
/// test acting on a condition seen mid-way still meets it mid-way, however
/// fast the relay (on a server whose first query on a connection is slow).
fn place_paced(stack: &Arc<Stack>, n: usize, every: Duration) -> JoinHandle<Vec<i64>> {
    let stack = stack.clone();
    tokio::spawn(async move {
        let mut ids = Vec::with_capacity(n);
        let mut pace = (!every.is_zero()).then(|| tokio::time::interval(every));
        for i in 0..n {
            if let Some(pace) = pace.as_mut() {
                pace.tick().await;
            }
            ids.push(
                stack.place_order(&format!("Customer {i}"), PRODUCTS[i % PRODUCTS.len()], (i % 7 + 1) as i64).await,
            );
        }
        ids
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_hundred_orders_are_processed_exactly_once() {
    let stack = Stack::start(&shared_broker_url()).await;
    let first = stack.place_order("Ajay", "P123", 2).await;
    let stack = Arc::new(stack);
    let rest = place_in_background(&stack, 199).await.unwrap();
    assert_eq!(rest.len(), 199);
    stack.wait_until_settled(200, Duration::from_secs(60)).await;

    stack.assert_all_processed_exactly_once(200).await;
    let priced = stack.store.order(schema::OrderId(first)).await.unwrap();
    let (unit, total) = (priced.unit_price.unwrap().to_string(), priced.total_price.unwrap().to_string());
    assert_eq!((unit.as_str(), total.as_str()), ("90.00", "180.00"));
    let api: serde_json::Value =
        reqwest::get(format!("{}/api/orders/{first}", stack.base_url())).await.unwrap().json().await.unwrap();
    assert_eq!(api["status"], "processed");
    assert_eq!(api["unit_price"], "90.00");
    assert_eq!(api["total_price"], "180.00");
    assert_eq!(stack.consumer_outcome("processed").await, 200.0);
    Arc::into_inner(stack).expect("no other owner").shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_relay_killed_mid_stream_loses_nothing() {
    let mut stack = Stack::start(&shared_broker_url()).await;
    let relay = stack.relay.take().expect("relay running");
    let stack = Arc::new(stack);
    let placing = place_paced(&stack, 200, Duration::from_millis(10));
    // Kill the relay once part of the stream is published, part not.
    wait_for("some orders published", Duration::from_secs(30), || async {
        (stack.tally().await.published_rows >= 40).then_some(())
    })
    .await;
    relay.kill();
    let published_at_kill = stack.tally().await.published_rows;
    placing.await.unwrap();
    assert!(published_at_kill < 200, "the kill happened mid-stream ({published_at_kill} published)");

    let mut stack = Arc::into_inner(stack).expect("no other owner");
    stack.relay = Some(stack.start_relay().await);
    stack.wait_until_settled(200, Duration::from_secs(60)).await;
    stack.assert_all_processed_exactly_once(200).await;
    assert_eq!(stack.consumer_outcome("processed").await, 200.0, "priced once each; replays counted as duplicates");
    let duplicates = stack.consumer_outcome("duplicate").await;
    assert!(duplicates <= f64::from(stack.relay_config().batch_size), "at most one batch replayed, got {duplicates}");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_restart_mid_stream_loses_nothing() {
    let broker = Broker::start();
    let stack = Arc::new(Stack::start(&broker.url()).await);
    let placing = place_in_background(&stack, 100);
    wait_for("some orders processed", Duration::from_secs(30), || async {
        (stack.tally().await.processed >= 30).then_some(())
    })
    .await;
    broker.stop();
    let relay = stack.relay.as_ref().unwrap();
    wait_for("the relay to report the broker down", Duration::from_secs(30), || async {
        let ready = reqwest::get(format!("http://{}/readyz", relay.admin_addr)).await.ok()?;
        (ready.status().as_u16() == 503).then_some(())
    })
    .await;
    placing.await.unwrap();
    // Orders keep arriving while the broker is down: they wait in the outbox.
    // (Placed only now: a fast pipeline had processed a whole first stream
    // before the broker finished stopping.)
    place_in_background(&stack, 100).await.unwrap();
    assert!(stack.tally().await.processed <= 100, "the restart happened mid-stream");
    // The outage itself lasts ten seconds: a scenario length, not a wait for a condition.
    tokio::time::sleep(Duration::from_secs(10)).await;
    broker.start_again();

    stack.wait_until_settled(200, Duration::from_secs(90)).await;
    stack.assert_all_processed_exactly_once(200).await;
    assert_eq!(stack.consumer_outcome("processed").await, 200.0);
    Arc::into_inner(stack).expect("no other owner").shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_broker_is_detected_by_heartbeats_and_nothing_is_lost() {
    let broker = Broker::start();
    let stack = Stack::start(&broker.url()).await;
    stack.place_order("Before", "P123", 2).await;
    stack.wait_until_settled(1, Duration::from_secs(30)).await;
    // Frozen, the broker keeps its sockets open but sends nothing: only missed
    // heart-beats can tell the services it is gone.
    broker.freeze();
    let relay = stack.relay.as_ref().unwrap();
    wait_for("the relay to notice the silent broker", Duration::from_secs(30), || async {
        (relay.metric("orderflow_relay_broker_connected").await == 0.0).then_some(())
    })
    .await;
    let consumer = stack.consumer.as_ref().unwrap();
    wait_for("the consumer to notice the silent broker", Duration::from_secs(30), || async {
        (consumer.metric("orderflow_consumer_broker_connected").await == 0.0).then_some(())
    })
    .await;
    for i in 0..20 {
        stack.place_order(&format!("During {i}"), "P200", 1).await;
    }
    broker.thaw();
    stack.wait_until_settled(21, Duration::from_secs(60)).await;
    stack.assert_all_processed_exactly_once(21).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pipeline_follows_a_master_slave_broker_pair_and_loses_nothing() {
    let store = tempfile::Builder::new().prefix("orderflow-shared-kahadb-").tempdir().unwrap();
    let (master, standby) = tokio::task::spawn_blocking({
        let path = store.path().to_path_buf();
        move || Broker::shared_store_pair(&path)
    })
    .await
    .unwrap();
    assert!(!standby.listening(), "the standby waits for the store's lock");
    let stack = Arc::new(Stack::start(&format!("failover:({},{})", master.url(), standby.url())).await);
    let placing = place_in_background(&stack, 300);
    wait_for("orders flowing through the master", Duration::from_secs(30), || async {
        (stack.tally().await.processed >= 50).then_some(())
    })
    .await;
    assert!(!standby.listening(), "the standby is up but waits for the store's lock");
    let killed_at = std::time::Instant::now();
    master.kill().await;
    tokio::task::spawn_blocking(move || drop(master)).await.unwrap();
    let takeover = wait_for("the standby to take over the store", Duration::from_secs(90), || async {
        standby.listening().then(|| killed_at.elapsed())
    })
    .await;
    // An order placed after the takeover shows the pipeline running again,
    // also when the 300 were all processed before the kill.
    let after = stack.place_order("After the failover", PRODUCTS[0], 1).await;
    let resumed = wait_for("the pipeline to resume on the standby", Duration::from_secs(90), || async {
        let order = stack.store.order(schema::OrderId(after)).await.ok()?;
        (order.status == schema::OrderStatus::Processed).then(|| killed_at.elapsed())
    })
    .await;
    placing.await.unwrap();
    stack.wait_until_settled(301, Duration::from_secs(120)).await;
    stack.assert_all_processed_exactly_once(301).await;
    // The measured gap, for the record (the test output shows it with --nocapture).
    println!(
        "failover: standby listening {takeover:?} after the master's SIGKILL; orders processed again after {resumed:?}"
    );
    assert!(resumed < Duration::from_secs(60), "resumed within a minute of the kill: {resumed:?}");
    Arc::into_inner(stack).expect("no other owner").shutdown().await;
    drop(standby);
}
