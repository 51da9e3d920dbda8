//! Clients that hang up while the database is slow: every order committed is
//! counted once in `orderflow_producer_orders_placed_total` (the figure the
//! ops charts draw), whether or not its client waited for the answer, and a
//! replay of its `Idempotency-Key` counts nothing more.

use std::time::Duration;

use e2e::stack::Stack;
use serde_json::json;
use tokio::task::JoinSet;

/// Orders sent through each door (the JSON API and the form).
const EACH: usize = 8;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_order_committed_after_its_client_hung_up_is_counted_once() {
    // No broker: the producer never talks to one.
    let stack = Stack::start_producer("tcp://127.0.0.1:1").await;
    let api = format!("{}/api/orders", stack.base_url());
    let form = format!("{}/orders", stack.base_url());
    let key = |door: &str, i: usize| format!("hang-up-{door}-{i}");
    let send = {
        let (api, form) = (api.clone(), form.clone());
        move |http: &reqwest::Client, door: &str, key: String| match door {
            "api" => http
                .post(&api)
                .header("Idempotency-Key", key)
                .json(&json!({"customer_name": "Gone", "product_id": "P123", "quantity": 1})),
            _ => http
                .post(&form)
                .header("content-type", "application/x-www-form-urlencoded")
                .body(format!("customer_name=Gone&product_id=P123&quantity=1&idempotency_key={key}")),
        }
    };

    // The database is slow (another session holds its write lock), so every
    // client gives up and hangs up while its order waits in the store's queue.
    let held = stack.probe.hold_write_lock().await.unwrap();
    let impatient = reqwest::Client::builder().timeout(Duration::from_millis(300)).build().unwrap();
    let mut clients = JoinSet::new();
    for door in ["api", "form"] {
        for i in 0..EACH {
            let request = send(&impatient, door, key(door, i));
            clients.spawn(async move { request.send().await.map(|r| r.status().as_u16()) });
        }
    }
    while let Some(outcome) = clients.join_next().await {
        let error = outcome.unwrap().expect_err("no answer while the write lock is held");
        assert!(error.is_timeout(), "the client hung up: {error}");
    }
    held.release().await;

    // Each key again, waiting this time: an order already committed is answered
    // as it is (200 from the API, the same redirect from the form), a missing
    // one is placed now. Once all are answered, each key has its one order.
    let patient = reqwest::Client::builder().redirect(reqwest::redirect::Policy::none()).build().unwrap();
    let mut replayed_existing = 0;
    for door in ["api", "form"] {
        for i in 0..EACH {
            let status = send(&patient, door, key(door, i)).send().await.unwrap().status().as_u16();
            match (door, status) {
                ("api", 200) => replayed_existing += 1,
                ("api", 201) | ("form", 303) => {}
                other => panic!("unexpected answer to a replay: {other:?}"),
            }
        }
    }
    assert!(replayed_existing > 0, "some orders were committed after their clients hung up, else this tests nothing");

    let rows = stack.tally().await.orders;
    assert_eq!(rows, 2 * EACH as i64, "one order per key");
    let counted = stack.producer.metric("orderflow_producer_orders_placed_total").await;
    assert_eq!(counted, rows as f64, "every order committed is counted once, hung up or not, replayed or not");
    stack.shutdown().await;
}
