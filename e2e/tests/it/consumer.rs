//! The consumer at production grade: crashes before ACK, SIGTERM mid-batch,
//! a locked database, and every kind of bad message.

use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::service::Service;
use e2e::stack::Stack;
use e2e::{raw_client, send_raw as send, wait_for};
use serde_json::json;
use service::Service as _;

/// Publishes a backlog of `n` orders with the relay, then stops the relay: the messages wait on the queue.
async fn queued_backlog(stack: &Stack, n: usize) {
    stack.fill_outbox(n, 0).await;
    let relay = stack.start_relay().await;
    wait_for("the backlog on the queue", Duration::from_secs(60), || async {
        (stack.tally().await.unpublished == 0).then_some(())
    })
    .await;
    relay.stop().await.unwrap();
}

async fn processed(stack: &Stack) -> i64 {
    stack.tally().await.processed
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_consumer_killed_before_its_acks_applies_nothing_twice() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    queued_backlog(&stack, 10_000).await;
    let consumer = stack.start_consumer().await;
    wait_for("part of the backlog processed", Duration::from_secs(60), || async {
        (processed(&stack).await > 0).then_some(())
    })
    .await;
    consumer.kill();
    let at_kill = processed(&stack).await;
    assert!(at_kill < 10_000, "killed mid-stream ({at_kill} processed)");
    stack.consumer = Some(stack.start_consumer().await);
    stack.wait_until_final(10_000, Duration::from_secs(60)).await;
    assert_eq!(stack.tally().await.inbox, 10_000, "one inbox row per message");
    let redelivered = stack.consumer_outcome("duplicate").await;
    assert!(redelivered <= 1_000.0, "only what was in hand came back ({redelivered})");
    // A batch the killed consumer was committing may land after the kill: the
    // successor prices at most what was left, and sees the rest as duplicates.
    let successor = stack.consumer_outcome("processed").await;
    assert!(successor <= (10_000 - at_kill) as f64, "nothing priced twice ({successor} after {at_kill})");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_mid_batch_exits_cleanly_and_loses_nothing() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    queued_backlog(&stack, 10_000).await;
    let consumer = stack.start_consumer().await;
    wait_for("part of the backlog processed", Duration::from_secs(60), || async {
        (processed(&stack).await > 0).then_some(())
    })
    .await;
    let first = consumer.metric("orderflow_consumer_messages_total{outcome=\"processed\"}").await;
    consumer.stop().await.expect("SIGTERM ends the consumer cleanly");
    let at_stop = processed(&stack).await;
    assert!(at_stop < 10_000, "stopped mid-stream ({at_stop} processed)");
    assert!(first <= at_stop as f64);
    let successor = stack.start_consumer().await;
    stack.wait_until_final(10_000, Duration::from_secs(60)).await;
    let rest = successor.metric("orderflow_consumer_messages_total{outcome=\"processed\"}").await;
    assert_eq!(at_stop as f64 + rest, 10_000.0, "every order priced exactly once");
    assert_eq!(
        successor.metric("orderflow_consumer_messages_total{outcome=\"duplicate\"}").await,
        0.0,
        "every ACK was sent"
    );
    successor.stop().await.unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_locked_database_is_retried_and_nothing_is_dead_lettered() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let mut ids = Vec::new();
    for i in 0..20 {
        ids.push(stack.place_order(&format!("Customer {i}"), "P123", 2).await);
    }
    let mut config = stack.consumer_config();
    if stack.database_url.starts_with("sqlite://") {
        // A SQLite writer gives up after 100 ms; SQL Server's sessions after their 5 s lock timeout.
        config.database.database_url = format!("{}?busy_timeout_ms=100", stack.database_url).parse().unwrap();
    }
    let consumer = Service::start(consumer::App::build(config)).await.unwrap();

    // Another session holds the first order's row (on SQLite the database)
    // while the messages arrive.
    let held = stack.probe.hold_order(schema::OrderId(ids[0])).await.unwrap();
    let client = raw_client(&stack.broker_url).await;
    for id in &ids {
        let body = json!({"order_id": id, "customer_name": "Seed", "product_id": "P123", "quantity": 2}).to_string();
        send(&client, &stack.queue, &body, &[]).await;
    }
    wait_for("the consumer to retry", Duration::from_secs(30), || async {
        (consumer.metric("orderflow_consumer_messages_total{outcome=\"retried\"}").await > 0.0).then_some(())
    })
    .await;
    // It says that it is stuck, and for how long.
    let (status, body) = wait_for("readiness to report the database", Duration::from_secs(30), || async {
        let (status, body) = consumer.admin_get("/readyz").await;
        (status == 503).then_some((status, body))
    })
    .await;
    assert!(body.to_string().contains("waited"), "{status}: {body}");
    wait_for("the stuck gauge", Duration::from_secs(30), || async {
        (consumer.metric("orderflow_consumer_stuck_seconds").await > 0.0).then_some(())
    })
    .await;
    held.release().await;

    stack.wait_until_final(20, Duration::from_secs(30)).await;
    assert_eq!(processed(&stack).await, 20);
    assert_eq!(consumer.metric("orderflow_consumer_messages_total{outcome=\"dead_lettered\"}").await, 0.0);
    wait_for("readiness back", Duration::from_secs(30), || async {
        (consumer.admin_get("/readyz").await.0 == 200).then_some(())
    })
    .await;
    assert_eq!(consumer.metric("orderflow_consumer_stuck_seconds").await, 0.0);
    consumer.stop().await.unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_kind_of_bad_message_is_parked_with_its_reason() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    stack.consumer = Some(stack.start_consumer().await);
    let typed = stack.place_order("Typo", "P123", 1).await;
    let big = stack.place_order("Big", "P123", 1).await;
    let header = stack.place_order("Header", "P123", 1).await;
    let good = stack.place_order("Good", "P123", 2).await;
    let client = raw_client(&stack.broker_url).await;
    let q = stack.queue.clone();
    send(
        &client,
        &q,
        &json!({"order_id": typed, "customer_name": "T", "product_id": "P123", "quantity": "two"}).to_string(),
        &[],
    )
    .await;
    let pad = "x".repeat(70_000);
    send(
        &client,
        &q,
        &json!({"order_id": big, "customer_name": pad, "product_id": "P123", "quantity": 1}).to_string(),
        &[],
    )
    .await;
    send(
        &client,
        &q,
        &json!({"order_id": header, "customer_name": "H", "product_id": "P123", "quantity": 1}).to_string(),
        &[("outbox-id", "not-a-uuid")],
    )
    .await;
    send(
        &client,
        &q,
        &json!({"order_id": good, "customer_name": "G", "product_id": "P123", "quantity": 2}).to_string(),
        &[],
    )
    .await;

    client.subscribe(&format!("{q}.DLQ"), "dlq", 100, Duration::from_secs(10)).await.unwrap();
    let mut messages = client.take_messages().unwrap();
    let mut reasons = Vec::new();
    while reasons.len() < 3 {
        let frame =
            tokio::time::timeout(Duration::from_secs(30), messages.recv()).await.expect("dead letters").unwrap();
        client.ack(&[frame.get("ack").unwrap()]).await.unwrap();
        reasons.push(frame.get("dlq-reason").unwrap().to_string());
    }
    assert!(reasons.iter().any(|r| r.contains("invalid type: string \"two\"")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("exceeds the 65536-byte limit")), "{reasons:?}");
    assert!(reasons.iter().any(|r| r.contains("invalid outbox-id header")), "{reasons:?}");
    stack.wait_until_final(1, Duration::from_secs(30)).await;
    let store = &stack.store;
    let status = |id: i64| async move { store.order(schema::OrderId(id)).await.unwrap().status.to_string() };
    assert_eq!(status(typed).await, "pending", "a stray message (no outbox-id of the order's) harms no order");
    assert_eq!(status(header).await, "pending");
    assert_eq!(status(big).await, "pending", "an oversized body is not read, so no order is named");
    assert_eq!(status(good).await, "processed", "good messages around bad ones are processed");
    stack.shutdown().await;
}
