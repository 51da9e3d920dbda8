//! A short load-test run against a test stack: every accepted order is final,
//! and the tool's accounting matches the database.

use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use loadtest::run::{Mode, Options, run};

fn options(stack: &Stack, mode: Mode) -> Options {
    Options {
        url: stack.base_url(),
        mode,
        duration: Duration::from_secs(2),
        products: vec!["P123".into(), "P200".into()],
        idempotency_keys: true,
        wait: Some(Duration::from_secs(60)),
        request_timeout: Duration::from_secs(10),
        progress: false,
        all_final: None,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_smoke_run_completes_with_every_order_processed() {
    let stack = Stack::start(&shared_broker_url()).await;
    let closed = run(options(&stack, Mode::Closed { concurrency: 8 })).await.unwrap();
    assert!(closed.accepted > 0, "{}", closed.render());
    assert!(closed.errors.is_empty(), "{:?}", closed.errors);
    assert_eq!(closed.completion_rate, 1.0, "{}", closed.render());
    assert_eq!(closed.end_to_end_latency.count, closed.accepted);
    assert!(closed.sustained_per_s.is_some());

    let open = run(options(&stack, Mode::Open { rate: 100.0 })).await.unwrap();
    assert_eq!(open.sent, 200, "open loop sends rate × duration requests");
    assert_eq!((open.accepted, open.completion_rate), (200, 1.0), "{}", open.render());

    let placed = (closed.accepted + open.accepted) as i64;
    assert_eq!(stack.tally().await.orders, placed, "the tool's count matches the database");
    stack.wait_until_settled(placed, Duration::from_secs(30)).await;
    stack.assert_all_processed_exactly_once(placed).await;
    stack.shutdown().await;
}
