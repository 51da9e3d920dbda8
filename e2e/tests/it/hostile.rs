//! Hostile input against the real broker: a message far over every limit, a
//! valid message carrying another order's outbox id, a header too long to be
//! copied as it is, header names STOMP 1.2 does not allow (passed through by
//! the broker as they came), made-up HTTP methods, and a DNS-rebinding page.
//! None may halt a service, block an order or open an admin door.

use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::{next_dead_letters, raw_client, send_raw as send};
use serde_json::json;
use service::Service as _;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_message_over_every_limit_is_dead_lettered_and_orders_keep_flowing() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    stack.relay = Some(stack.start_relay().await);
    stack.consumer = Some(stack.start_consumer().await);
    let client = raw_client(&stack.broker_url).await;
    let big = "x".repeat(17 << 20);
    send(&client, &stack.queue, &big, &[]).await;
    let long_header = "h".repeat(10_235);
    send(&client, &stack.queue, "not json", &[("note", &long_header)]).await;
    let order = stack.place_order("After", "P123", 2).await;
    stack.wait_until_final(1, Duration::from_secs(60)).await;
    assert_eq!(stack.store.order(schema::OrderId(order)).await.unwrap().status.to_string(), "processed");
    let letters = next_dead_letters(&client, &stack.queue, 2).await;
    let reason = |i: usize| letters[i].get("dlq-reason").unwrap_or_default().to_string();
    assert!(reason(0).contains(&format!("body of {} bytes exceeds the 65536-byte limit", 17 << 20)), "{}", reason(0));
    assert_eq!(letters[0].body.len(), stomp::BODY_PREFIX_BYTES, "its first bytes are kept");
    assert!(reason(1).contains("not valid JSON"), "{}", reason(1));
    let copied = letters[1].get("original-note").unwrap();
    assert_eq!(copied.len(), consumer::step::COPIED_VALUE_BYTES, "the long header is cut to fit");
    assert_eq!(letters[1].get("dlq-headers-trimmed"), Some("1"));
    let consumer = stack.consumer.as_ref().unwrap();
    assert_eq!(consumer.admin_get("/readyz").await.0, 200, "the consumer is still ready");
    let (status, aside) = consumer.admin_get("/consumer/dead-letters/undeliverable").await;
    assert_eq!((status, aside), (200, json!([])), "nothing was set aside");
    client.disconnect(Duration::from_secs(2)).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn frames_our_codec_cannot_read_whole_are_dead_lettered_and_orders_keep_flowing() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    stack.relay = Some(stack.start_relay().await);
    stack.consumer = Some(stack.start_consumer().await);
    let before = stack.place_order("Before", "P123", 1).await;
    stack.wait_until_final(1, Duration::from_secs(60)).await;
    // ActiveMQ passes header names through as its producers wrote them, so an
    // escape the grammar does not define reaches the consumer as it was sent.
    let poisons: [&[u8]; 3] = [b"x\\q:1\n", b"tab\\tbed:2\nnote:fine\n", b"many\\a:1\nmore\\b:2\n"];
    for head in poisons {
        e2e::send_raw_bytes(&stack.broker_url, &stack.queue, head, b"{\"order_id\": 1}")
            .await
            .expect("the broker takes it");
    }
    let after = stack.place_order("After", "P123", 2).await;
    stack.wait_until_final(2, Duration::from_secs(60)).await;
    for order in [before, after] {
        assert_eq!(stack.store.order(schema::OrderId(order)).await.unwrap().status.to_string(), "processed");
    }
    let client = raw_client(&stack.broker_url).await;
    let letters = next_dead_letters(&client, &stack.queue, 3).await;
    let reasons: Vec<&str> = letters.iter().map(|l| l.get("dlq-reason").unwrap_or_default()).collect();
    assert!(reasons[0].contains(r#"the name of header "x\\q" holds the undefined escape "\\q""#), "{}", reasons[0]);
    assert!(reasons[1].contains(r#"header "tab\\tbed""#), "{}", reasons[1]);
    assert!(reasons[2].contains(r#""many\\a""#) && reasons[2].contains(r#""more\\b""#), "{}", reasons[2]);
    assert_eq!(letters[0].get("original-x\\q"), Some("1"), "the header is copied as it came");
    assert_eq!(&letters[0].body[..], b"{\"order_id\": 1}");
    let consumer = stack.consumer.as_ref().unwrap();
    assert_eq!(consumer.admin_get("/readyz").await.0, 200, "the consumer is still ready");
    let metrics = consumer.metrics().await;
    let processed = e2e::metric_value(&metrics, r#"orderflow_consumer_messages_total{outcome="processed"}"#);
    assert_eq!(processed, Some(2.0), "each order once, none held up behind the poison");
    client.disconnect(Duration::from_secs(2)).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_orders_outbox_id_blocks_no_order() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    stack.consumer = Some(stack.start_consumer().await);
    let body_of = stack.place_order("Mallory", "P123", 1).await;
    let victim = stack.place_order("Victim", "P200", 2).await;
    let rows = stack.store.claim_batch("e2e-reader", 10, Duration::from_secs(30)).await.unwrap();
    stack.store.release_leases("e2e-reader").await.unwrap();
    let victims_id = rows.iter().find(|r| r.order_id.0 == victim).unwrap().outbox_id.to_string();
    let client = raw_client(&stack.broker_url).await;
    let spoof = json!({"order_id": body_of, "customer_name": "Mallory", "product_id": "P123", "quantity": 1});
    send(&client, &stack.queue, &spoof.to_string(), &[("outbox-id", &victims_id)]).await;
    let letters = next_dead_letters(&client, &stack.queue, 1).await;
    let reason = letters[0].get("dlq-reason").unwrap();
    assert!(
        reason.contains(&format!("outbox-id {victims_id} is not an outbox message of order {body_of}")),
        "{reason}"
    );
    let store = stack.store.clone();
    let status = |id: i64| {
        let store = store.clone();
        async move { store.order(schema::OrderId(id)).await.unwrap().status.to_string() }
    };
    assert_eq!((status(body_of).await, status(victim).await), ("pending".into(), "pending".into()), "both untouched");
    // The real messages then arrive: both orders are processed, neither taken for a duplicate.
    stack.relay = Some(stack.start_relay().await);
    stack.wait_until_final(2, Duration::from_secs(60)).await;
    assert_eq!((status(body_of).await, status(victim).await), ("processed".into(), "processed".into()));
    client.disconnect(Duration::from_secs(2)).await;
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn made_up_methods_add_no_series_and_a_rebinding_page_opens_no_door() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let http = reqwest::Client::new();
    let lines = || async { stack.producer.metrics().await.lines().count() };
    let before = lines().await;
    for n in 0..300 {
        let method = reqwest::Method::from_bytes(format!("BREW{n}").as_bytes()).unwrap();
        http.request(method, format!("{}/api/orders", stack.base_url())).send().await.unwrap();
    }
    let after = lines().await;
    assert!(after <= before + 40, "300 made-up methods took /metrics from {before} to {after} lines");
    assert!(stack.producer.metrics().await.contains("method=\"other\""));

    // No ADMIN_TOKEN: the relay's and the ops page's actions answer loopback names only.
    let mut config = stack.relay_config();
    config.service.admin_token = None;
    let relay = e2e::service::Service::start(relay::App::build(config)).await.unwrap();
    let port = relay.admin_addr.port();
    let rebound = http
        .post(format!("http://{}/relay/pause?requested_by=mallory", relay.admin_addr))
        .header("host", format!("evil.example:{port}"))
        .header("origin", format!("http://evil.example:{port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(rebound.status().as_u16(), 403);
    assert_eq!(relay.admin_get("/relay/status").await.1["paused"], false, "the relay did not pause");
    assert_eq!(
        relay.admin_post_as("/relay/pause?requested_by=ops-alice", None).await.0,
        200,
        "addressed to 127.0.0.1 it works"
    );
    let producer_port = stack.producer.http_addr.unwrap().port();
    let ops = http
        .post(format!("{}/ops/retry?order_id=1", stack.base_url()))
        .header("host", format!("evil.example:{producer_port}"))
        .send()
        .await
        .unwrap();
    assert_eq!(ops.status().as_u16(), 403, "the ops page's actions too");
    relay.stop().await.unwrap();
    stack.shutdown().await;
}
