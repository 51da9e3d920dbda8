//! Bad input at both ends: the API's 400/422 answers, and malformed or
//! unprocessable messages parked on the dead-letter queue with their reason
//! while the consumer keeps going and no stray message harms an order.

use std::collections::HashMap;
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::{send_raw as send, wait_for};
use schema::NewOrder;
use serde_json::json;
use service::Service as _;
use stomp::{Client, Frame};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_rejects_bad_input_with_clear_errors() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let url = format!("{}/api/orders", stack.base_url());
    let http = reqwest::Client::new();

    let malformed =
        http.post(&url).header("content-type", "application/json").body("{\"customer_name\": ").send().await.unwrap();
    assert_eq!(malformed.status().as_u16(), 400);
    let body: serde_json::Value = malformed.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().starts_with("malformed JSON"), "{body}");

    let (status, body) = stack.post_json(&json!([1, 2]), None).await;
    assert_eq!(status, 400, "{body}");

    let (status, body) =
        stack.post_json(&json!({"customer_name": " ", "product_id": "NOPE", "quantity": 0}), None).await;
    assert_eq!(status, 422);
    let fields: Vec<&str> = body["errors"].as_array().unwrap().iter().map(|e| e["field"].as_str().unwrap()).collect();
    assert_eq!(fields, ["customer_name", "product_id", "quantity"]);
    assert!(body["errors"][1]["message"].as_str().unwrap().contains("unknown product"));

    let (status, body) =
        stack.post_json(&json!({"customer_name": "A", "product_id": "P123", "quantity": "2"}), None).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("quantity")));

    let (status, body) =
        stack.post_json(&json!({"customer_name": "x".repeat(101), "product_id": "P123", "quantity": 1}), None).await;
    assert_eq!((status, body["errors"][0]["field"].as_str()), (422, Some("customer_name")));

    assert_eq!(reqwest::get(format!("{}/api/orders/424242", stack.base_url())).await.unwrap().status().as_u16(), 404);
    assert_eq!(reqwest::get(format!("{}/api/orders/abc", stack.base_url())).await.unwrap().status().as_u16(), 404);
    assert_eq!(stack.tally().await.orders, 0, "nothing stored from bad input");

    let order = json!({"customer_name": "Ajay", "product_id": "P123", "quantity": 2});
    let (first, a) = stack.post_json(&order, Some("load-test-7")).await;
    let (again, b) = stack.post_json(&order, Some("load-test-7")).await;
    assert_eq!((first, again), (201, 200), "a replayed Idempotency-Key returns the first order");
    assert_eq!(a["order_id"], b["order_id"]);
    assert_eq!(stack.tally().await.outbox, 1);

    let other = json!({"customer_name": "Ajay", "product_id": "P123", "quantity": 3});
    let (status, body) = stack.post_json(&other, Some("load-test-7")).await;
    assert_eq!(status, 422, "the same key with another body: {body}");
    assert!(body["error"].as_str().unwrap().contains("already used for order"), "{body}");
    let (status, c) = stack.post_json(&order, Some("LOAD-TEST-7")).await;
    assert_eq!(status, 201, "keys that differ in case are different keys");
    assert_ne!(c["order_id"], a["order_id"]);

    let emoji = json!({"customer_name": "😀".repeat(100), "product_id": "P123", "quantity": 1});
    let (status, body) = stack.post_json(&emoji, None).await;
    assert_eq!(status, 201, "100 non-BMP characters are a valid name: {body}");
    assert_eq!(body["customer_name"], "😀".repeat(100));
    let too_long = json!({"customer_name": "😀".repeat(101), "product_id": "P123", "quantity": 1});
    assert_eq!(stack.post_json(&too_long, None).await.0, 422);

    let huge = json!({"customer_name": "x".repeat(20_000), "product_id": "P123", "quantity": 1});
    let answer = http.post(&url).json(&huge).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 413, "an explicit body limit");
    let body: serde_json::Value = answer.json().await.unwrap();
    assert!(body["error"].as_str().unwrap().contains("larger than 16384 bytes"), "{body}");
    let form = http.post(format!("{}/orders", stack.base_url())).form(&[("customer_name", "x".repeat(20_000))]);
    assert_eq!(form.send().await.unwrap().status().as_u16(), 413);
    let (status, _) = stack.post_json(&order, Some("ключ")).await;
    assert_eq!(status, 400, "a key must be visible ASCII");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pages_send_security_headers_and_a_form_submitted_twice_places_one_order() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let http = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let page = http.get(stack.base_url()).send().await.unwrap();
    let headers = page.headers().clone();
    let csp = headers["content-security-policy"].to_str().unwrap();
    assert!(csp.contains("script-src 'self'") && csp.contains("frame-ancestors 'none'"), "{csp}");
    assert_eq!(headers["x-content-type-options"], "nosniff");
    assert_eq!(headers["x-frame-options"], "DENY");
    assert_eq!(headers["referrer-policy"], "same-origin");
    let html = page.text().await.unwrap();
    assert!(!html.contains("<script>") && !html.contains("<style>"), "no inline script or style");
    for file in ["app.css", "orders.js", "order.js"] {
        let answer = http.get(format!("{}/static/{file}", stack.base_url())).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 200, "{file}");
    }
    assert_eq!(http.get(format!("{}/static/../Cargo.toml", stack.base_url())).send().await.unwrap().status(), 404);

    // The form's one-time key: every view has its own, and a resend of the same view is the same order.
    let key_of = |html: &str| {
        let at = html.find(r#"name="idempotency_key""#).expect("a hidden key");
        let value = &html[at..];
        let start = value.find("value=\"").unwrap() + 7;
        value[start..start + value[start..].find('"').unwrap()].to_string()
    };
    let key = key_of(&html);
    let other_view = key_of(&http.get(stack.base_url()).send().await.unwrap().text().await.unwrap());
    assert_ne!(key, other_view, "a key per page view");
    let fields =
        [("customer_name", "Double Click"), ("product_id", "P200"), ("quantity", "2"), ("idempotency_key", &key)];
    let mut locations = Vec::new();
    for _ in 0..2 {
        let answer = http.post(format!("{}/orders", stack.base_url())).form(&fields).send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 303);
        locations.push(answer.headers()["location"].to_str().unwrap().to_string());
    }
    assert_eq!(locations[0], locations[1], "the second submit lands on the first order");
    assert_eq!(stack.tally().await.orders, 1);
    let changed =
        [("customer_name", "Double Click"), ("product_id", "P200"), ("quantity", "3"), ("idempotency_key", &key)];
    let answer = http.post(format!("{}/orders", stack.base_url())).form(&changed).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 422);
    assert!(answer.text().await.unwrap().contains("already sent"));
    assert_eq!(stack.tally().await.orders, 1);
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_messages_are_parked_with_their_reason_and_the_consumer_keeps_going() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    stack.consumer = Some(stack.start_consumer().await);
    // No relay: this test is the only producer of messages on its queue.
    let seed_order = stack.place_order("Ajay", "P123", 2).await;
    let range_order = stack.place_order("Bea", "P200", 1).await;
    let dup_order = stack.place_order("Cem", "P300", 3).await;
    let store = stack.store.clone();
    let schema::Placed::Created(unknown) = store
        .place_order(NewOrder {
            customer_name: "Dee".into(),
            product_id: "P999".into(),
            quantity: 1,
            idempotency_key: None,
            traceparent: None,
            tracestate: None,
        })
        .await
        .unwrap()
    else {
        panic!("a new order")
    };
    let unknown_order = unknown.order_id.0;

    let client = Client::connect(&stomp::Config::from_url(&stack.broker_url).unwrap()).await.unwrap();
    let q = stack.queue.clone();
    send(&client, &q, "this is not json", &[]).await;
    send(
        &client,
        &q,
        &json!({"order_id": seed_order, "customer_name": "Ajay", "product_id": "P123", "quantity": 2}).to_string(),
        &[],
    )
    .await;
    send(
        &client,
        &q,
        &json!({"order_id": range_order, "customer_name": "Bea", "product_id": "P200", "quantity": 0}).to_string(),
        &[],
    )
    .await;
    send(
        &client,
        &q,
        &json!({"order_id": 777_777, "customer_name": "Nobody", "product_id": "P123", "quantity": 1}).to_string(),
        &[],
    )
    .await;
    send(
        &client,
        &q,
        &json!({"order_id": unknown_order, "customer_name": "Dee", "product_id": "P999", "quantity": 1}).to_string(),
        &[],
    )
    .await;
    send(&client, &q, &json!({"customer_name": "NoId"}).to_string(), &[]).await;
    let dup_body =
        json!({"order_id": dup_order, "customer_name": "Cem", "product_id": "P300", "quantity": 3}).to_string();
    // Its own outbox id, twice: processed once.
    let dup_id = stack.probe.outbox_ids(schema::OrderId(dup_order)).await.unwrap()[0].to_string();
    send(&client, &q, &dup_body, &[("outbox-id", &dup_id)]).await;
    send(&client, &q, &dup_body, &[("outbox-id", &dup_id)]).await;

    // Everything on the dead-letter queue, each with its reason.
    client.subscribe(&format!("{q}.DLQ"), "dlq", 100, Duration::from_secs(10)).await.unwrap();
    let mut messages = client.take_messages().unwrap();
    let mut parked: HashMap<String, Frame> = HashMap::new();
    while parked.len() < 5 {
        let frame = tokio::time::timeout(Duration::from_secs(30), messages.recv())
            .await
            .expect("dead letters arrive")
            .expect("stream open");
        client.ack(&[frame.get("ack").unwrap()]).await.unwrap();
        parked.insert(frame.get("dlq-reason").expect("every dead letter has a reason").to_string(), frame);
    }
    let reasons: Vec<&String> = parked.keys().collect();
    let has = |needle: &str| parked.keys().any(|r| r.contains(needle));
    assert!(has("message body is not valid JSON"), "{reasons:?}");
    assert!(has("quantity 0 is out of range 1-1000"), "{reasons:?}");
    assert!(has("order 777777 not found"), "{reasons:?}");
    assert!(has("unknown product P999"), "{reasons:?}");
    assert!(has("missing field `order_id`"), "{reasons:?}");
    let garbage = parked.iter().find(|(r, _)| r.contains("not valid JSON")).unwrap().1;
    assert_eq!(&garbage.body[..], b"this is not json", "the original body is kept");
    assert!(garbage.get("original-message-id").is_some(), "the original headers are kept");

    assert!(parked.values().all(|f| f.get("dlq-id").is_some()), "every copy says which message it is");

    // Good messages among the bad ones were processed; a stray message harms no order.
    stack.wait_until_final(3, Duration::from_secs(30)).await;
    let store = &stack.store;
    let status = |id: i64| async move {
        let o = store.order(schema::OrderId(id)).await.unwrap();
        (o.status.to_string(), o.unit_price.map(|p| p.to_string()), o.failure_reason)
    };
    assert_eq!(
        status(seed_order).await,
        ("processed".into(), Some("90.00".into()), None),
        "a seed-style message is processed"
    );
    assert_eq!(status(range_order).await, ("pending".into(), None, None), "not its own outbox message");
    assert_eq!(status(unknown_order).await, ("failed".into(), None, Some("unknown product P999".into())));
    assert_eq!(status(dup_order).await.0, "processed");
    wait_for("the duplicate to be acknowledged", Duration::from_secs(10), || async {
        (stack.consumer_outcome("duplicate").await >= 1.0).then_some(())
    })
    .await;
    assert_eq!(stack.consumer_outcome("processed").await, 2.0, "the duplicate was priced once");
    let dup_id: schema::OutboxId = dup_id.parse().unwrap();
    assert_eq!(stack.probe.inbox_rows(dup_id).await.unwrap(), 1, "one inbox row");
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ops_actions_need_the_token_and_are_off_on_a_public_producer_without_one() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let http = reqwest::Client::new();
    let retry = |base: String| http.post(format!("{base}/ops/retry?order_id=1")).header("X-Requested-By", "mallory");
    let mut guarded = e2e::stack::producer_config(&stack.database_url);
    guarded.service.admin_token = Some("ops-secret".into());
    let guarded = e2e::service::Service::start(producer::App::build(guarded)).await.unwrap();
    let base = format!("http://{}", guarded.http_addr.unwrap());
    assert_eq!(retry(base.clone()).send().await.unwrap().status().as_u16(), 401);
    let answer = retry(base.clone()).bearer_auth("ops-secret").send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 404, "past the door: order 1 does not exist");
    let nameless = http.post(format!("{base}/ops/retry?order_id=1")).bearer_auth("ops-secret").send().await.unwrap();
    assert_eq!(nameless.status().as_u16(), 400, "an action says who acts");
    assert_eq!(http.get(format!("{base}/ops/state")).send().await.unwrap().status().as_u16(), 200, "reads are open");
    guarded.stop().await.unwrap();

    let mut public = e2e::stack::producer_config(&stack.database_url);
    public.http_addr = "0.0.0.0:0".parse().unwrap();
    let public = e2e::service::Service::start(producer::App::build(public)).await.unwrap();
    let base = format!("http://127.0.0.1:{}", public.http_addr.unwrap().port());
    let off = retry(base.clone()).send().await.unwrap();
    assert_eq!(off.status().as_u16(), 403);
    assert!(off.text().await.unwrap().contains("ADMIN_TOKEN is not set"));
    let page = http.get(format!("{base}/ops")).send().await.unwrap().text().await.unwrap();
    assert!(page.contains("Actions are off"), "the page says so");
    public.stop().await.unwrap();
    stack.shutdown().await;
}
