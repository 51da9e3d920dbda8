//! Incidents on the ops page, end to end: in real Chromium an operator replays
//! a dead letter and its order is processed, retries a whole failure group in
//! one click once the product exists, and purges sent dead letters; and the
//! incident routes refuse what they must (no token, no name, stray and
//! malformed ids and ages) with 401/400/404/409, never 500.

use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::{Stack, TEST_ADMIN_TOKEN};
use e2e::wait_for;
use fantoccini::Locator;
use schema::{OrderId, OrderStatus, Placed};
use serde_json::Value;

use crate::browser::{browser, click_id, screenshot, text_of};

/// Places an order straight through the store (the API would refuse a product the catalogue lacks).
async fn place_unchecked(stack: &Stack, product: &str) -> OrderId {
    let order = schema::NewOrder {
        customer_name: "Ines".into(),
        product_id: product.into(),
        quantity: 2,
        idempotency_key: None,
        traceparent: None,
        tracestate: None,
    };
    match stack.store.place_order(order).await.unwrap() {
        Placed::Created(o) | Placed::Existing(o) => o.order_id,
    }
}

/// A dead letter naming no order, recorded as the consumer records one.
async fn record_stray_letter(stack: &Stack, id: &str, reason: &str) {
    let letter = schema::Delivery {
        dead_letter_id: id.into(),
        outbox_id: None,
        order_id: None,
        rejection: Some(reason.into()),
        headers: [].into(),
        body: b"{"[..].into(),
    };
    stack.store.apply(&[letter]).await.unwrap();
}

async fn add_product(stack: &Stack, id: &str) {
    let product =
        schema::Product { product_id: id.into(), name: format!("Product {id}"), list_price: "40.00".parse().unwrap() };
    stack.probe.add_product(&product).await.unwrap();
}

async fn wait_processed(stack: &Stack, orders: &[OrderId]) {
    wait_for("the orders processed", Duration::from_secs(60), || async {
        for o in orders {
            (stack.store.order(*o).await.ok()?.status == OrderStatus::Processed).then_some(())?;
        }
        Some(())
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_replays_a_dead_letter_and_retries_a_failure_group_from_the_ops_page() {
    let stack = Stack::start(&shared_broker_url()).await;
    let lone = place_unchecked(&stack, "P777").await;
    let group = [
        place_unchecked(&stack, "P888").await,
        place_unchecked(&stack, "P888").await,
        place_unchecked(&stack, "P888").await,
    ];
    stack.wait_until_final(4, Duration::from_secs(60)).await;
    let letters = wait_for("four dead letters sent to the .DLQ", Duration::from_secs(30), || async {
        let letters = stack.store.recent_dead_letters(10).await.ok()?;
        (letters.len() == 4 && letters.iter().all(|l| l.sent_at.is_some())).then_some(letters)
    })
    .await;
    let letter = letters.iter().find(|l| l.order_id == Some(lone)).unwrap().dead_letter_id.clone();
    // A hostile reason: shown as text, in its group and its row, never as HTML.
    record_stray_letter(&stack, "ID:hostile", "<img src=x id=injected> bad").await;
    let ops = stack.start_ops_producer().await;
    let base = format!("http://{}", ops.http_addr.unwrap());

    let (_driver, page) = browser().await;
    page.goto(&format!("{base}/ops")).await.unwrap();
    page.find(Locator::Id("operator-name")).await.unwrap().send_keys("Ivy Incident").await.unwrap();
    page.find(Locator::Id("operator-token")).await.unwrap().send_keys(TEST_ADMIN_TOKEN).await.unwrap();
    let groups = wait_for("the failure groups on the page", Duration::from_secs(20), || async {
        text_of(&page, "#groups")
            .await
            .filter(|t| t.contains("unknown product P888 × 6") && t.contains("unknown product P777 × 2"))
    })
    .await;
    assert!(groups.contains("Retry 3 failed") && groups.contains("Replay 3 dead letters"), "{groups}");
    assert!(groups.contains("<img src=x id=injected> bad × 1"), "{groups}");
    assert!(page.find(Locator::Id("injected")).await.is_err(), "no element was made of data");

    // The products arrive; one dead letter is replayed, and its order is processed.
    add_product(&stack, "P777").await;
    add_product(&stack, "P888").await;
    click_id(&page, &format!("replay-{letter}")).await;
    wait_processed(&stack, &[lone]).await;
    wait_for("the letter shown as replayed", Duration::from_secs(20), || async {
        text_of(&page, "#dead-letters").await.filter(|t| t.contains("replayed at"))
    })
    .await;

    // One click retries the whole group.
    let retry = "tr[data-fingerprint='unknown product P888'] button.group-retry";
    wait_for("the group's retry button", Duration::from_secs(20), || async {
        page.find(Locator::Css(retry)).await.ok()?.click().await.ok()
    })
    .await;
    wait_processed(&stack, &group).await;
    wait_for("both groups gone from the page once their orders are processed", Duration::from_secs(20), || async {
        text_of(&page, "#groups").await.filter(|t| !t.contains("P777") && !t.contains("P888"))
    })
    .await;
    let actions: Vec<(String, String)> =
        stack.probe.audit().await.unwrap().into_iter().map(|a| (a.action, a.requested_by)).collect();
    let by_ivy = |action: &str| actions.iter().filter(|(a, who)| a == action && who == "Ivy Incident").count();
    assert_eq!((by_ivy("replay"), by_ivy("retry")), (1, 3), "{actions:?}");
    screenshot(&page, "ops-incidents").await;

    // Sent dead letters older than 0 s are purged (the replayed ones too: their orders are done).
    let age = page.find(Locator::Id("purge-age")).await.unwrap();
    age.clear().await.unwrap();
    age.send_keys("0").await.unwrap();
    click_id(&page, "purge").await;
    wait_for("the sent dead letters purged", Duration::from_secs(20), || async {
        let left = stack.store.recent_dead_letters(10).await.ok()?;
        left.iter().all(|l| l.dead_letter_id == "ID:hostile").then_some(())
    })
    .await;
    assert!(stack.probe.audit().await.unwrap().iter().any(|a| a.action == "purge-dead-letters"));
    let t = stack.tally().await;
    assert_eq!((t.orders, t.processed, t.unpublished, t.parked), (4, 4, 0, 0), "every order processed, none left");
    let counts = stack.store.order_counts().await.unwrap();
    assert_eq!((counts.processed, counts.failed, counts.pending + counts.published), (4, 0, 0), "the counters agree");
    page.close().await.unwrap();
    ops.stop().await.unwrap();
    stack.shutdown().await;
}

/// `POST path` with the name and token given; returns the status and JSON body.
async fn post(base: &str, path: &str, name: Option<&str>, token: Option<&str>) -> (u16, Value) {
    let mut request = reqwest::Client::new().post(format!("{base}{path}"));
    if let Some(name) = name {
        request = request.header("x-requested-by", name);
    }
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    (response.status().as_u16(), response.json().await.unwrap_or(Value::Null))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_incident_routes_refuse_strays_malformed_input_and_strangers() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    record_stray_letter(&stack, "ID:no-order", "message body is not valid JSON").await;
    let ops = stack.start_ops_producer().await;
    let base = format!("http://{}", ops.http_addr.unwrap());
    let (ok, token) = (Some("Hal Hostile"), Some(TEST_ADMIN_TOKEN));

    let refused = [
        ("/ops/replay?dead_letter_id=ID:no-order", None, token, 400),
        ("/ops/replay?dead_letter_id=ID:no-order", ok, None, 401),
        ("/ops/replay?dead_letter_id=ID:no-order", ok, Some("wrong"), 401),
        ("/ops/groups/retry?fingerprint=x", ok, None, 401),
        ("/ops/groups/replay?fingerprint=x", ok, None, 401),
        ("/ops/dead-letters/purge?older_than=7d", ok, None, 401),
        ("/ops/replay", ok, token, 400),
        ("/ops/replay?dead_letter_id=", ok, token, 400),
        ("/ops/replay?dead_letter_id=a%0Ab", ok, token, 400),
        ("/ops/replay?dead_letter_id=ID:nowhere", ok, token, 404),
        ("/ops/replay?dead_letter_id=ID:no-order", ok, token, 409),
        ("/ops/groups/retry?fingerprint=", ok, token, 400),
        ("/ops/groups/retry?fingerprint=unknown%20product%20P1", ok, token, 404),
        ("/ops/groups/replay?fingerprint=unknown%20product%20P1", ok, token, 404),
        ("/ops/dead-letters/purge", ok, token, 400),
        ("/ops/dead-letters/purge?older_than=soon", ok, token, 400),
        ("/ops/dead-letters/purge?older_than=-1", ok, token, 400),
        ("/ops/dead-letters/purge?older_than=99999999999999999999", ok, token, 400),
    ];
    for (path, name, token, expected) in refused {
        let (status, body) = post(&base, path, name, token).await;
        assert_eq!(status, expected, "{path} (name {name:?}, token {token:?}): {body}");
    }
    // Without a token (the stack's own producer), a DNS-rebinding page is refused at the loopback door.
    let port = stack.producer.http_addr.unwrap().port();
    for path in [
        "/ops/replay?dead_letter_id=ID:no-order",
        "/ops/groups/replay?fingerprint=x",
        "/ops/dead-letters/purge?older_than=0",
    ] {
        let rebound = reqwest::Client::new()
            .post(format!("{}{path}", stack.base_url()))
            .header("host", format!("evil.example:{port}"))
            .header("x-requested-by", "Hal Hostile")
            .send()
            .await
            .unwrap();
        assert_eq!(rebound.status().as_u16(), 403, "{path}");
    }
    assert!(stack.probe.audit().await.unwrap().is_empty(), "nothing refused was done or recorded");
    assert!(stack.store.recent_dead_letters(10).await.unwrap()[0].replayed_at.is_none());

    // A group that exists but has nothing to send answers with what it skipped.
    let (status, body) =
        post(&base, "/ops/groups/replay?fingerprint=message%20body%20is%20not%20valid%20JSON", ok, token).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        (body["replayed"].as_array().unwrap().len(), body["skipped"][0]["dead_letter_id"].as_str()),
        (0, Some("ID:no-order"))
    );
    let groups: Value = reqwest::get(format!("{base}/ops/groups")).await.unwrap().json().await.unwrap();
    assert_eq!(groups["groups"][0]["fingerprint"], "message body is not valid JSON", "{groups}");
    let (status, body) = post(&base, "/ops/dead-letters/purge?older_than=7d", ok, token).await;
    assert_eq!((status, body["purged"].as_u64()), (200, Some(0)), "{body}");
    ops.stop().await.unwrap();
    stack.shutdown().await;
}
