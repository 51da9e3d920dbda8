//! The relay at production grade: shared work, SIGTERM, poison rows, drain,
//! maintenance jobs; against the real broker and real SQLite.

use std::collections::HashSet;
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::service::Service;
use e2e::stack::Stack;
use e2e::wait_for;
use service::Service as _;

const PUBLISHED: &str = "orderflow_relay_published_total";

async fn wait_unpublished(stack: &Stack, n: i64, timeout: Duration) {
    wait_for(&format!("{n} unpublished outbox rows"), timeout, || async {
        ({
            let t = stack.tally().await;
            t.unpublished - t.parked
        } == n)
            .then_some(())
    })
    .await
}

fn assert_distinct(ids: &[String], expected: usize) {
    let distinct: HashSet<&String> = ids.iter().collect();
    assert_eq!(distinct.len(), expected, "every row's message arrived");
    assert_eq!(ids.len(), expected, "no message was published twice");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_relays_share_twenty_thousand_rows_and_publish_none_twice() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    stack.fill_outbox(20_000, 0).await;
    let a = stack.start_relay().await;
    let b = stack.start_relay().await;
    wait_unpublished(&stack, 0, Duration::from_secs(120)).await;
    let (by_a, by_b) = (a.metric(PUBLISHED).await, b.metric(PUBLISHED).await);
    a.stop().await.expect("relay a exits cleanly");
    b.stop().await.expect("relay b exits cleanly");
    assert!(by_a > 0.0 && by_b > 0.0, "each relay did part of the work: {by_a} + {by_b}");
    assert_eq!(by_a + by_b, 20_000.0);
    assert_distinct(&stack.read_queue(Duration::from_secs(2)).await, 20_000);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_batch_marks_it_and_leaves_no_lease() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    stack.fill_outbox(20_000, 0).await;
    let relay = stack.start_relay().await;
    wait_for("publishing under way", Duration::from_secs(90), || async {
        (stack.tally().await.published_rows > 0).then_some(())
    })
    .await;
    relay.stop().await.expect("SIGTERM ends the relay cleanly");
    let published = stack.tally().await.published_rows;
    assert!(published < 20_000, "stopped mid-stream ({published} published)");
    assert_eq!(stack.tally().await.leased, 0, "no lease left behind");

    // A successor finishes the rest; the queue then holds each row exactly once.
    let successor = stack.start_relay().await;
    wait_unpublished(&stack, 0, Duration::from_secs(180)).await;
    successor.stop().await.unwrap();
    assert_distinct(&stack.read_queue(Duration::from_secs(2)).await, 20_000);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_row_is_parked_while_good_rows_flow_and_published_after_requeue() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    stack.fill_outbox(500, 0).await;
    let poison = stack.fill_outbox(1, 100_000).await.pop().unwrap();
    stack.fill_outbox(500, 0).await;
    let mut strict = stack.relay_config();
    strict.max_attempts = 3;
    let relay = Service::start(relay::App::build(strict)).await.unwrap();
    wait_for("the poison row parked", Duration::from_secs(60), || async {
        (stack.tally().await.parked == 1).then_some(())
    })
    .await;
    wait_unpublished(&stack, 0, Duration::from_secs(30)).await;
    assert_eq!(stack.tally().await.published_rows, 1_000, "good rows flowed past");
    let (status, parked) = relay.admin_get("/relay/parked").await;
    assert_eq!(status, 200);
    assert_eq!(parked[0]["outbox_id"], poison.to_string());
    assert_eq!(parked[0]["attempts"], 3);
    assert!(parked[0]["last_error"].as_str().unwrap().contains("exceeds the 65536-byte limit"), "{parked}");
    wait_for("the parked gauge", Duration::from_secs(10), || async {
        (relay.metric("orderflow_relay_outbox_parked").await == 1.0).then_some(())
    })
    .await;
    relay.stop().await.unwrap();

    // The cause is fixed (a relay allowing larger messages); an operator requeues the row.
    let mut lenient = stack.relay_config();
    lenient.max_message_bytes = 1 << 20;
    let relay = Service::start(relay::App::build(lenient)).await.unwrap();
    let (status, body) = relay.admin_post(&format!("/relay/requeue?outbox_id={poison}")).await;
    assert_eq!(status, 400, "an operator must say who they are: {body}");
    let (status, body) = relay.admin_post(&format!("/relay/requeue?outbox_id={poison}&requested_by=ops-alice")).await;
    assert_eq!(status, 200, "{body}");
    wait_unpublished(&stack, 0, Duration::from_secs(30)).await;
    assert_eq!(stack.tally().await.published_rows, 1_001);
    let audit = stack.probe.audit().await.unwrap();
    assert_eq!(
        audit
            .iter()
            .filter(|a| a.outbox_id == poison && a.action == "requeue" && a.requested_by == "ops-alice")
            .count(),
        1,
        "the requeue is recorded with who asked"
    );
    let (status, _) = relay.admin_post(&format!("/relay/requeue?outbox_id={poison}&requested_by=ops-alice")).await;
    assert_eq!(status, 404, "nothing parked any more");
    relay.stop().await.unwrap();
    assert_distinct(&stack.read_queue(Duration::from_secs(2)).await, 1_001);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drained_relay_claims_nothing_until_resumed() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let a = stack.start_relay().await;
    let (status, body) = a.admin_post("/relay/drain?requested_by=ops-carol").await;
    assert_eq!((status, body["paused"].as_bool()), (200, Some(true)), "{body}");
    assert_eq!(a.admin_get("/relay/status").await.1["paused"], true);
    assert_eq!(a.metric("orderflow_relay_paused").await, 1.0);

    stack.fill_outbox(300, 0).await;
    let b = stack.start_relay().await;
    wait_unpublished(&stack, 0, Duration::from_secs(30)).await;
    // The counter moves just after the commit the tally sees.
    wait_for("the other relay's count", Duration::from_secs(10), || async {
        (b.metric(PUBLISHED).await == 300.0).then_some(())
    })
    .await;
    assert_eq!(a.metric(PUBLISHED).await, 0.0, "the drained relay published nothing");
    b.stop().await.unwrap();

    assert_eq!(a.admin_post("/relay/resume?requested_by=ops-carol").await.1["paused"], false);
    stack.fill_outbox(50, 0).await;
    wait_unpublished(&stack, 0, Duration::from_secs(30)).await;
    wait_for("the resumed relay's count", Duration::from_secs(10), || async {
        (a.metric(PUBLISHED).await == 50.0).then_some(())
    })
    .await;
    a.stop().await.unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_jobs_purge_old_rows_and_report_stuck_orders() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let mut config = stack.relay_config();
    config.retention_cron = "* * * * * *".into();
    config.outbox_retention_secs = 0;
    config.inbox_retention_secs = 0;
    config.purge_batch = 7;
    config.reconcile_cron = "* * * * * *".into();
    config.stale_published_secs = 0;
    config.repair_stuck = false;
    let relay = Service::start(relay::App::build(config)).await.unwrap();
    for i in 0..20 {
        stack.place_order(&format!("Customer {i}"), "P123", 1).await;
    }
    // No consumer: the orders stay `published`, which the sweep reports.
    wait_for("the sweep to report 20 stuck orders", Duration::from_secs(30), || async {
        (relay.metric("orderflow_relay_reconcile_published_not_processed").await == 20.0).then_some(())
    })
    .await;
    wait_for("retention to delete the published rows", Duration::from_secs(30), || async {
        (stack.tally().await.outbox == 0).then_some(())
    })
    .await;
    assert_eq!(relay.metric("orderflow_relay_retention_deleted_rows_total{table=\"outbox\"}").await, 20.0);
    assert!(relay.metric("orderflow_relay_maintenance_runs_total{job=\"retention\",outcome=\"ok\"}").await >= 1.0);
    assert_eq!(stack.tally().await.published, 20, "orders are never deleted");
    relay.stop().await.unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn orders_whose_messages_were_lost_are_sent_again_and_processed_once() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    let mut config = stack.relay_config();
    config.reconcile_cron = "* * * * * *".into();
    config.stale_published_secs = 3;
    let relay = Service::start(relay::App::build(config)).await.unwrap();
    for i in 0..5 {
        stack.place_order(&format!("Customer {i}"), "P123", 1).await;
    }
    wait_for("5 published orders", Duration::from_secs(30), || async {
        let t = stack.tally().await;
        (t.published == 5 && t.unpublished == 0).then_some(())
    })
    .await;
    // The queue loses them: purged by hand, or a broker that lost its store.
    let lost = stack.read_queue(Duration::from_millis(500)).await;
    assert!(lost.len() >= 5, "read the 5 messages off the queue: {lost:?}");
    stack.consumer = Some(stack.start_consumer().await);
    stack.wait_until_settled(5, Duration::from_secs(60)).await;
    stack.assert_all_processed_exactly_once(5).await;
    let repairs: Vec<_> = stack.probe.audit().await.unwrap().into_iter().filter(|a| a.action == "repair").collect();
    assert!(repairs.len() >= 5, "every repair is audited: {repairs:?}");
    assert!(repairs.iter().all(|a| a.requested_by.starts_with("reconciler:")), "{repairs:?}");
    assert_eq!(relay.metric("orderflow_relay_reconcile_repaired_total").await, repairs.len() as f64);
    relay.stop().await.unwrap();
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_order_is_retried_from_the_admin_port() {
    let mut stack = Stack::start(&shared_broker_url()).await;
    let order = {
        let store = stack.store.clone();
        let placed = store
            .place_order(schema::NewOrder {
                customer_name: "Eve".into(),
                product_id: "P777".into(),
                quantity: 3,
                idempotency_key: None,
                traceparent: None,
                tracestate: None,
            })
            .await
            .unwrap();
        let schema::Placed::Created(order) = placed else { panic!("new order") };
        order.order_id.0
    };
    stack.wait_until_final(1, Duration::from_secs(30)).await;
    assert_eq!(stack.store.order(schema::OrderId(order)).await.unwrap().status, schema::OrderStatus::Failed);
    // The cause is fixed: the product is added to the catalogue.
    let lamp =
        schema::Product { product_id: "P777".into(), name: "Desk lamp".into(), list_price: "40.00".parse().unwrap() };
    stack.probe.add_product(&lamp).await.unwrap();
    let relay = stack.relay.take().unwrap();
    let (status, body) = relay.admin_post(&format!("/relay/retry-order?order_id={order}&requested_by=ops-bob")).await;
    assert_eq!(status, 200, "{body}");
    wait_for("the retried order processed", Duration::from_secs(30), || async {
        let o = stack.store.order(schema::OrderId(order)).await.unwrap();
        (o.status == schema::OrderStatus::Processed && o.total_price == Some("108.00".parse().unwrap())).then_some(())
    })
    .await;
    let (status, _) = relay.admin_post(&format!("/relay/retry-order?order_id={order}&requested_by=ops-bob")).await;
    assert_eq!(status, 409, "only a failed order can be retried");
    stack.relay = Some(relay);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mutating_admin_routes_need_the_token_and_reads_stay_open() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    let relay = stack.start_relay().await;
    for token in [None, Some("wrong-token")] {
        let (status, body) = relay.admin_post_as("/relay/pause?requested_by=mallory", token).await;
        assert_eq!(status, 401, "{token:?}: {body}");
        assert!(body["error"].as_str().unwrap().contains("ADMIN_TOKEN"), "{body}");
    }
    assert_eq!(relay.admin_get("/relay/status").await.1["paused"], false, "refused requests changed nothing");
    let (status, body) = relay.admin_post("/relay/pause?requested_by=ops-dan").await;
    assert_eq!((status, body["paused"].as_bool()), (200, Some(true)));
    assert_eq!(relay.admin_get("/relay/parked").await.0, 200, "reads need no token");
    assert!(relay.metrics().await.contains("orderflow_relay_paused 1"));
    assert_eq!(relay.admin_post("/relay/resume?requested_by=ops-dan").await.0, 200);
    stack.relay = Some(relay);

    // Without a token the port must be loopback, and a browser page elsewhere cannot drive it.
    let mut open = stack.relay_config();
    open.service.admin_token = None;
    open.admin_addr = "0.0.0.0:0".parse().unwrap();
    let refused = relay::App::build(open.clone()).await.err().expect("a public admin port needs a token");
    assert!(refused.to_string().contains("ADMIN_TOKEN is not set"), "{refused}");
    open.admin_addr = "127.0.0.1:0".parse().unwrap();
    let local = Service::start(relay::App::build(open)).await.unwrap();
    let csrf = reqwest::Client::new()
        .post(format!("http://{}/relay/pause", local.admin_addr))
        .header("Origin", "https://evil.example")
        .send()
        .await
        .unwrap();
    assert_eq!(csrf.status().as_u16(), 403);
    assert_eq!(
        local.admin_post_as("/relay/pause?requested_by=ops-dan", None).await.0,
        200,
        "curl on the machine itself"
    );
    local.stop().await.unwrap();
    stack.shutdown().await;
}
