//! The storage contract, written once and expanded per backend: SQLite always,
//! SQL Server whenever `TEST_MSSQL_URL` is set (each test gets a fresh database).

use std::str::FromStr;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use error_reporter::Report;
use rust_decimal::Decimal;
use schema::RequeueTarget;

// The incident tools' contract lives in its own file and is expanded with the rest.
use super::incidents::{
    a_dead_letter_is_replayed_through_a_fresh_outbox_row_of_its_order,
    a_failure_group_is_retried_in_one_action_each_audited,
    a_group_replay_sends_each_order_once_and_says_what_it_skipped,
    failures_are_grouped_by_the_fingerprint_of_their_reason,
};
use schema::testing::TestDb;
use schema::{
    Applied, Delivery, FailedAttempt, FailureOutcome, NewOrder, OrderId, OrderStatus, OutboxId, Placed, Store,
};

fn new_order(name: &str, product: &str, quantity: i32) -> NewOrder {
    NewOrder {
        customer_name: name.into(),
        product_id: product.into(),
        quantity,
        idempotency_key: None,
        traceparent: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into()),
        tracestate: None,
    }
}

/// A hook for `place_order_then` that counts the orders it is told of in `created`.
fn count_into(created: &Arc<AtomicI64>) -> Box<dyn FnOnce(&schema::Order) + Send> {
    let created = created.clone();
    Box::new(move |_| {
        created.fetch_add(1, Ordering::SeqCst);
    })
}

pub(crate) async fn place(store: &Arc<dyn Store>, product: &str, quantity: i32) -> OrderId {
    match store.place_order(new_order("Ajay", product, quantity)).await.unwrap() {
        Placed::Created(o) => o.order_id,
        Placed::Existing(_) => panic!("no idempotency key was given"),
    }
}

/// The outbox id of an order's message (claimed and given back at once).
async fn outbox_of(store: &Arc<dyn Store>, order: OrderId) -> OutboxId {
    let rows = store.claim_batch("contract-probe", 1000, Duration::from_secs(30)).await.unwrap();
    store.release_leases("contract-probe").await.unwrap();
    rows.iter().find(|r| r.order_id == order).expect("the order's outbox row").outbox_id
}

/// One valid message of an order through [`schema::ProcessingStore::apply`].
async fn process_order(
    store: &Arc<dyn Store>,
    outbox_id: Option<OutboxId>,
    order_id: OrderId,
) -> anyhow::Result<Applied> {
    let mut outcomes = store.apply(&[delivery(outbox_id, Some(order_id), None)]).await?;
    anyhow::ensure!(outcomes.len() == 1, "one outcome per message");
    Ok(outcomes.remove(0))
}

/// A refused publish of `outbox_id`, due again at once unless parked at `max_attempts`.
fn failed<'a>(owner: &'a str, outbox_id: OutboxId, error: &'a str, max_attempts: i32) -> FailedAttempt<'a> {
    FailedAttempt { owner, outbox_id, error, retry_in: Duration::ZERO, max_attempts }
}

/// What a message that failed its order, or found none to act on, becomes.
fn dead_letter(reason: &str, order_failed: bool) -> Applied {
    Applied::DeadLettered { reason: reason.into(), order_failed }
}

fn delivery(outbox_id: Option<OutboxId>, order_id: Option<OrderId>, rejection: Option<&str>) -> Delivery {
    Delivery {
        dead_letter_id: format!("ID:test-{}", OutboxId::new()),
        outbox_id,
        order_id,
        rejection: rejection.map(str::to_string),
        headers: [("message-id".into(), "ID:test".into()), ("destination".into(), "/queue/x".into())].into(),
        body: br#"{"order_id": 1}"#[..].into(),
    }
}

/// Asks `answer` every 20 ms until it gives something, for `within` at most
/// (`None` then).
async fn poll<T>(within: Duration, mut answer: impl AsyncFnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + within;
    loop {
        if let Some(found) = answer().await {
            return Some(found);
        }
        if Instant::now() > deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn dec(s: &str) -> Decimal {
    Decimal::from_str(s).unwrap()
}

pub async fn catalogue_is_seeded(store: Arc<dyn Store>) {
    let products = store.products().await.unwrap();
    assert!(products.len() >= 5, "at least five products, got {}", products.len());
    let p123 = store.product("P123").await.unwrap();
    assert_eq!(p123.list_price, dec("100.00"));
    assert!(matches!(store.product("NOPE").await, Err(schema::StoreError::NotFound)));
}

pub async fn order_and_outbox_row_are_written_together(store: Arc<dyn Store>) {
    let id = place(&store, "P123", 2).await;
    let order = store.order(id).await.unwrap();
    assert_eq!(order.status, OrderStatus::Pending);
    assert_eq!(order.quantity, 2);
    assert_eq!(order.unit_price, None);
    let rows = store.claim_batch("relay-a", 100, Duration::from_secs(30)).await.unwrap();
    let row = rows.iter().find(|r| r.order_id == id).expect("outbox row for the order");
    assert_eq!(row.event_type, "OrderPlacedV1");
    assert_eq!(row.attempts, 0);
    assert!(row.traceparent.is_some());
    let body: serde_json::Value = serde_json::from_str(&row.payload).unwrap();
    assert_eq!(body["order_id"], id.0);
    assert_eq!(body["product_id"], "P123");
    assert_eq!(body["quantity"], 2);
    assert_eq!(body["outbox_id"], row.outbox_id.to_string());
    // The whole body is the wire contract, whoever writes it (SQL Server
    // completes it with the id and time the row got).
    let event: schema::messages::OrderPlacedV1 = serde_json::from_value(body).unwrap();
    assert_eq!(event, schema::messages::OrderPlacedV1::for_order(&order, row.outbox_id), "{}", row.payload);
}

pub async fn idempotency_key_returns_the_first_order(store: Arc<dyn Store>) {
    let mut order = new_order("Bea", "P200", 1);
    order.idempotency_key = Some("key-1".into());
    let created = Arc::new(AtomicI64::new(0));
    let place = |order: NewOrder| store.place_order_then(order, count_into(&created));
    let Placed::Created(first) = place(order.clone()).await.unwrap() else { panic!("first is new") };
    let Placed::Existing(again) = place(order).await.unwrap() else { panic!("second is a replay") };
    assert_eq!(first.order_id, again.order_id);
    assert_eq!(created.load(Ordering::SeqCst), 1, "the hook is told of the new order, not of its replay");
    let rows = store.claim_batch("relay-a", 100, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rows.len(), 1, "one outbox row for one key");
}

pub async fn a_leased_row_is_invisible_until_its_lease_expires(store: Arc<dyn Store>) {
    let id = place(&store, "P123", 1).await;
    let a = store.claim_batch("relay-a", 10, Duration::from_millis(300)).await.unwrap();
    assert_eq!(a.len(), 1);
    let b = store.claim_batch("relay-b", 10, Duration::from_secs(30)).await.unwrap();
    assert!(b.is_empty(), "relay-b must not see relay-a's lease");
    let claim_b = async || store.claim_batch("relay-b", 10, Duration::from_secs(30)).await.unwrap().into_iter().next();
    let row = poll(Duration::from_secs(10), claim_b).await.expect("lease never expired");
    assert_eq!(row.order_id, id);
}

pub async fn claims_respect_the_limit_and_share_the_work(store: Arc<dyn Store>) {
    for _ in 0..25 {
        place(&store, "P300", 1).await;
    }
    let a = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let b = store.claim_batch("relay-b", 10, Duration::from_secs(30)).await.unwrap();
    let c = store.claim_batch("relay-c", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!((a.len(), b.len(), c.len()), (10, 10, 5));
    let mut ids: Vec<_> = a.iter().chain(&b).chain(&c).map(|r| r.outbox_id).collect();
    ids.sort_by_key(|i| i.0);
    ids.dedup();
    assert_eq!(ids.len(), 25, "no row claimed twice");
}

pub async fn publishing_advances_pending_orders_only(store: Arc<dyn Store>) {
    let first = place(&store, "P123", 2).await;
    let second = place(&store, "P123", 2).await;
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    // A fast consumer finishes the second order before the relay marks it.
    let done = process_order(&store, None, second).await.unwrap();
    assert!(matches!(done, Applied::Processed(_)));
    let ids: Vec<OutboxId> = rows.iter().map(|r| r.outbox_id).collect();
    assert_eq!(store.mark_published(&ids).await.unwrap(), 2);
    assert_eq!(store.order(first).await.unwrap().status, OrderStatus::Published);
    assert_eq!(store.order(second).await.unwrap().status, OrderStatus::Processed);
    assert_eq!(store.mark_published(&ids).await.unwrap(), 0, "marking is idempotent");
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 0);
    assert!(store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap().is_empty());
}

pub async fn processing_prices_once_per_outbox_id(store: Arc<dyn Store>) {
    let id = place(&store, "P123", 2).await;
    let outbox_id = outbox_of(&store, id).await;
    let Applied::Processed(order) = process_order(&store, Some(outbox_id), id).await.unwrap() else {
        panic!("first delivery processes")
    };
    assert_eq!(order.status, OrderStatus::Processed);
    assert_eq!(order.unit_price, Some(dec("90.00")));
    assert_eq!(order.total_price, Some(dec("180.00")));
    assert!(order.processed_at.is_some());
    assert_eq!(process_order(&store, Some(outbox_id), id).await.unwrap(), Applied::Duplicate);
    assert_eq!(process_order(&store, None, id).await.unwrap(), Applied::Duplicate);
    let stray = OutboxId::new();
    let not_its_own = dead_letter(&format!("outbox-id {stray} is not an outbox message of order {id}"), false);
    assert_eq!(process_order(&store, Some(stray), id).await.unwrap(), not_its_own);
    let again = store.order(id).await.unwrap();
    assert_eq!(again.processed_at, order.processed_at, "a duplicate changes nothing");
}

pub async fn an_unknown_product_fails_the_order_with_a_reason(store: Arc<dyn Store>) {
    let id = place(&store, "P999", 1).await;
    let outcome = process_order(&store, Some(outbox_of(&store, id).await), id).await.unwrap();
    assert_eq!(outcome, dead_letter("unknown product P999", true));
    let order = store.order(id).await.unwrap();
    assert_eq!(order.status, OrderStatus::Failed);
    assert_eq!(order.failure_reason.as_deref(), Some("unknown product P999"));
    assert_eq!(order.unit_price, None);
}

pub async fn a_missing_order_changes_nothing(store: Arc<dyn Store>) {
    let outbox_id = OutboxId::new();
    let outcome = process_order(&store, Some(outbox_id), OrderId(987_654)).await.unwrap();
    assert_eq!(outcome, dead_letter("order 987654 not found", false));
    let stray = delivery(Some(outbox_id), Some(OrderId(987_654)), Some("bad"));
    let applied = store.apply(&[stray]).await.unwrap();
    assert_eq!(applied, vec![Applied::DeadLettered { reason: "bad".into(), order_failed: false }]);
    assert!(matches!(store.order(OrderId(987_654)).await, Err(schema::StoreError::NotFound)));
}

pub async fn another_orders_outbox_id_blocks_neither_order(store: Arc<dyn Store>) {
    let victim = place(&store, "P123", 1).await;
    let body_of = place(&store, "P200", 2).await;
    let victims_id = outbox_of(&store, victim).await;
    // A valid message for one order carrying the other's outbox id, in a batch
    // and alone: a dead letter each time, and neither order changes.
    let spoofed = |n: u32| Delivery {
        dead_letter_id: format!("ID:spoof-{n}"),
        ..delivery(Some(victims_id), Some(body_of), None)
    };
    for batch in [vec![spoofed(1), delivery(None, None, Some("filler"))], vec![spoofed(2)]] {
        let applied = store.apply(&batch).await.unwrap();
        let Applied::DeadLettered { reason, order_failed: false } = &applied[0] else { panic!("{applied:?}") };
        assert!(reason.contains("is not an outbox message of order"), "{reason}");
    }
    assert_eq!(store.order(body_of).await.unwrap().status, OrderStatus::Pending);
    assert_eq!(store.order(victim).await.unwrap().status, OrderStatus::Pending);
    // The victim's own message is then processed, not taken for a duplicate.
    let applied = store.apply(&[delivery(Some(victims_id), Some(victim), None)]).await.unwrap();
    assert!(matches!(&applied[0], Applied::Processed(o) if o.order_id == victim), "{applied:?}");
    let own = outbox_of(&store, body_of).await;
    let applied = store.apply(&[delivery(Some(own), Some(body_of), None)]).await.unwrap();
    assert!(matches!(&applied[0], Applied::Processed(o) if o.order_id == body_of), "{applied:?}");
}

pub async fn a_rejected_message_fails_only_its_own_order(store: Arc<dyn Store>) {
    let open = place(&store, "P123", 1).await;
    let done = place(&store, "P123", 1).await;
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let own = |order: OrderId| rows.iter().find(|r| r.order_id == order).unwrap().outbox_id;
    process_order(&store, Some(own(done)), done).await.unwrap();
    let stray = [
        delivery(None, Some(open), Some("quantity \"lots\" is not a number")),
        delivery(Some(OutboxId::new()), Some(open), Some("a stranger's outbox id")),
        delivery(Some(own(done)), Some(open), Some("another order's outbox id")),
    ];
    for applied in store.apply(&stray).await.unwrap() {
        assert!(matches!(applied, Applied::DeadLettered { order_failed: false, .. }), "{applied:?}");
    }
    assert_eq!(store.order(open).await.unwrap().status, OrderStatus::Pending, "a stray message harms no order");
    let mine = delivery(Some(own(open)), Some(open), Some("quantity out of range"));
    let applied = store.apply(std::slice::from_ref(&mine)).await.unwrap();
    assert_eq!(applied, vec![Applied::DeadLettered { reason: "quantity out of range".into(), order_failed: true }]);
    let open = store.order(open).await.unwrap();
    assert_eq!((open.status, open.failure_reason.as_deref()), (OrderStatus::Failed, Some("quantity out of range")));
    assert_eq!(store.apply(&[mine]).await.unwrap(), vec![Applied::Duplicate], "a redelivery is a duplicate");
    let late = delivery(Some(own(done)), Some(done), Some("late failure"));
    assert!(matches!(&store.apply(&[late]).await.unwrap()[0], Applied::Duplicate));
    assert_eq!(store.order(done).await.unwrap().status, OrderStatus::Processed);
}

pub async fn dead_letters_are_recorded_once_and_kept_until_confirmed(store: Arc<dyn Store>) {
    let unknown = place(&store, "P999", 1).await;
    let mut garbage = delivery(None, None, Some("message body is not valid JSON"));
    garbage.body = vec![0xff, 0x00, b'x'].into();
    let product = delivery(None, Some(unknown), None);
    let missing = delivery(None, Some(OrderId(777_777)), None);
    let batch = [garbage.clone(), product.clone(), missing.clone(), garbage.clone()];
    let applied = store.apply(&batch).await.unwrap();
    assert_eq!(applied[1], Applied::DeadLettered { reason: "unknown product P999".into(), order_failed: true });
    assert_eq!(applied[2], Applied::DeadLettered { reason: "order 777777 not found".into(), order_failed: false });
    store.apply(std::slice::from_ref(&missing)).await.unwrap();
    let unsent = store.unsent_dead_letters(100).await.unwrap();
    let ids: Vec<&str> = unsent.iter().map(|d| d.dead_letter_id.as_str()).collect();
    assert_eq!(ids, [&garbage.dead_letter_id, &product.dead_letter_id, &missing.dead_letter_id], "once per id");
    assert_eq!(unsent[0].body, garbage.body, "the body is kept byte for byte");
    assert_eq!(unsent[0].headers, *garbage.headers);
    assert_eq!(unsent[0].reason, "message body is not valid JSON");
    assert_eq!(store.mark_dead_letters_sent(&[garbage.dead_letter_id.clone()]).await.unwrap(), 1);
    assert_eq!(store.unsent_dead_letters(100).await.unwrap().len(), 2, "sent ones are done");
    assert_eq!(store.unsent_dead_letters(1).await.unwrap()[0].dead_letter_id, product.dead_letter_id);
    // As operators see them: newest first, with whether each reached the dead-letter queue.
    let listed = store.recent_dead_letters(10).await.unwrap();
    let seen: Vec<(&str, Option<OrderId>, bool)> =
        listed.iter().map(|l| (l.dead_letter_id.as_str(), l.order_id, l.sent_at.is_some())).collect();
    assert_eq!(
        seen,
        [
            (missing.dead_letter_id.as_str(), Some(OrderId(777_777)), false),
            (product.dead_letter_id.as_str(), Some(unknown), false),
            (garbage.dead_letter_id.as_str(), None, true),
        ]
    );
    assert_eq!(listed[1].reason, "unknown product P999");
    assert_eq!(store.recent_dead_letters(1).await.unwrap().len(), 1, "the limit holds");
}

pub async fn a_refused_dead_letter_is_set_aside_and_sent_ones_expire(store: Arc<dyn Store>) {
    let [a, b, c] = ["a", "b", "c"].map(|r| delivery(None, None, Some(r)));
    store.apply(&[a.clone(), b.clone(), c.clone()]).await.unwrap();
    assert!(!store.refuse_dead_letter(&a.dead_letter_id, "connection closed", 2).await.unwrap());
    assert_eq!(store.unsent_dead_letters(10).await.unwrap()[0].attempts, 1, "counted, still first");
    assert!(store.refuse_dead_letter(&a.dead_letter_id, "header too long", 2).await.unwrap(), "set aside");
    assert!(!store.refuse_dead_letter(&a.dead_letter_id, "again", 2).await.unwrap(), "set aside once");
    let unsent: Vec<String> =
        store.unsent_dead_letters(10).await.unwrap().into_iter().map(|l| l.dead_letter_id).collect();
    assert_eq!(unsent, [b.dead_letter_id.clone(), c.dead_letter_id.clone()], "never again ahead of the others");
    let aside = store.undeliverable_dead_letters(10).await.unwrap();
    assert_eq!(aside.len(), 1);
    assert_eq!((aside[0].dead_letter_id.as_str(), aside[0].attempts), (a.dead_letter_id.as_str(), 2));
    assert_eq!((aside[0].reason.as_str(), aside[0].last_error.as_deref()), ("a", Some("header too long")));
    assert_eq!(store.mark_dead_letters_sent(std::slice::from_ref(&b.dead_letter_id)).await.unwrap(), 1);
    assert_eq!(store.purge_dead_letters(Duration::from_secs(3600), 100).await.unwrap(), 0, "nothing is an hour old");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_dead_letters(Duration::ZERO, 100).await.unwrap(), 1, "only the sent one");
    assert_eq!(store.unsent_dead_letters(10).await.unwrap().len(), 1, "the unsent one stays");
    assert_eq!(store.undeliverable_dead_letters(10).await.unwrap().len(), 1, "the set-aside one stays");
}

pub async fn a_failing_row_is_retried_then_parked(store: Arc<dyn Store>) {
    place(&store, "P123", 1).await;
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let id = rows[0].outbox_id;
    let first = store.record_failure(&failed("relay-a", id, "rejected", 2)).await.unwrap();
    assert_eq!(first, FailureOutcome::Retrying);
    let due = async || {
        Some(store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap()).filter(|r| !r.is_empty())
    };
    let again = poll(Duration::from_secs(10), due).await.expect("retry never became due");
    assert_eq!(again[0].attempts, 1);
    let second = store.record_failure(&failed("relay-a", id, "rejected again", 2)).await.unwrap();
    assert_eq!(second, FailureOutcome::Parked);
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 1));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap().is_empty());
}

pub async fn released_leases_are_claimable_at_once(store: Arc<dyn Store>) {
    place(&store, "P123", 1).await;
    place(&store, "P200", 1).await;
    assert_eq!(store.claim_batch("relay-a", 10, Duration::from_secs(300)).await.unwrap().len(), 2);
    assert_eq!(store.release_leases("relay-a").await.unwrap(), 2);
    assert_eq!(store.claim_batch("relay-b", 10, Duration::from_secs(300)).await.unwrap().len(), 2);
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!(stats.pending, 2);
    assert!(stats.oldest_pending_seconds >= 0.0);
}

pub async fn renewed_leases_outlast_their_term_and_a_lapsed_one_is_never_revived(store: Arc<dyn Store>) {
    place(&store, "P123", 1).await;
    place(&store, "P200", 1).await;
    // A term long enough for a first call on a fresh connection (0.6 s each
    // for the claim and the renewal on the TDS engine).
    let term = Duration::from_secs(3);
    let claimed_at = tokio::time::Instant::now();
    let held = store.claim_batch("relay-a", 2, term).await.unwrap();
    assert_eq!(held.len(), 2);
    assert_eq!(store.renew_leases("relay-a", Duration::from_secs(60)).await.unwrap(), 2);
    // Past the first term: the renewal holds them.
    tokio::time::sleep_until(claimed_at + term + Duration::from_millis(200)).await;
    assert!(store.claim_batch("relay-b", 10, Duration::from_secs(60)).await.unwrap().is_empty(), "still relay-a's");
    store.mark_published(&[held[0].outbox_id]).await.unwrap();
    place(&store, "P123", 2).await;
    let lapsing = store.claim_batch("relay-a", 10, Duration::from_millis(1)).await.unwrap();
    assert_eq!(lapsing.len(), 1);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(
        store.renew_leases("relay-a", Duration::from_secs(60)).await.unwrap(),
        1,
        "a lapsed lease is not revived"
    );
    let taken = poll(Duration::from_secs(10), async || {
        Some(store.claim_batch("relay-b", 10, Duration::from_secs(60)).await.unwrap()).filter(|r| !r.is_empty())
    })
    .await
    .expect("the lapsed lease is claimable");
    assert_eq!(taken[0].outbox_id, lapsing[0].outbox_id);
    assert_eq!(
        store.renew_leases("relay-a", Duration::from_secs(60)).await.unwrap(),
        1,
        "only the row still relay-a's: not the one it published, nor the one relay-b took"
    );
    assert_eq!(store.renew_leases("relay-b", Duration::from_secs(60)).await.unwrap(), 1);
}

pub async fn recent_orders_are_newest_first(store: Arc<dyn Store>) {
    let a = place(&store, "P123", 1).await;
    let b = place(&store, "P200", 3).await;
    let counts = store.order_counts().await.unwrap();
    assert_eq!((counts.pending, counts.processed), (2, 0));
    let recent = store.recent_orders(10).await.unwrap();
    assert_eq!(recent.iter().map(|o| o.order_id).collect::<Vec<_>>(), vec![b, a]);
    assert_eq!(store.recent_orders(1).await.unwrap().len(), 1);
}

pub async fn parked_rows_are_listed_and_requeued_with_an_audit_record(store: Arc<dyn Store>) {
    let order = place(&store, "P123", 1).await;
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let id = rows[0].outbox_id;
    let parked = store.record_failure(&failed("relay-a", id, "too big", 1)).await.unwrap();
    assert_eq!(parked, FailureOutcome::Parked);
    let listed = store.parked_rows(10).await.unwrap();
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].outbox_id, listed[0].order_id, listed[0].attempts), (id, order, 1));
    assert_eq!(listed[0].last_error.as_deref(), Some("too big"));
    assert!(store.requeue(RequeueTarget::Order(OrderId(order.0 + 1000)), "ops@example").await.unwrap().is_empty());
    assert_eq!(store.requeue(RequeueTarget::Order(order), "ops@example").await.unwrap(), vec![id]);
    assert!(store.parked_rows(10).await.unwrap().is_empty());
    let again = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!((again[0].outbox_id, again[0].attempts), (id, 0), "due again with a fresh attempt count");
    store.record_failure(&failed("relay-a", id, "too big", 1)).await.unwrap();
    assert_eq!(store.requeue(RequeueTarget::Outbox(id), "ops@example").await.unwrap(), vec![id]);
    assert_eq!(store.outbox_stats().await.unwrap().parked, 0);
}

pub async fn retention_deletes_old_rows_in_small_batches(store: Arc<dyn Store>) {
    let mut ids = Vec::new();
    for _ in 0..5 {
        let order = place(&store, "P200", 1).await;
        process_order(&store, Some(outbox_of(&store, order).await), order).await.unwrap();
    }
    place(&store, "P200", 1).await; // stays unpublished
    let rows = store.claim_batch("relay-a", 5, Duration::from_secs(30)).await.unwrap();
    ids.extend(rows.iter().map(|r| r.outbox_id));
    store.mark_published(&ids).await.unwrap();
    assert_eq!(store.purge_published(Duration::from_secs(3600), 100).await.unwrap(), 0, "nothing is an hour old");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 2);
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 2);
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 1);
    assert_eq!(store.purge_published(Duration::ZERO, 2).await.unwrap(), 0);
    assert_eq!(store.outbox_stats().await.unwrap().pending, 1, "unpublished rows are never purged");
    assert_eq!(store.purge_inbox(Duration::from_secs(3600), 100).await.unwrap(), 0);
    assert_eq!(store.purge_inbox(Duration::ZERO, 3).await.unwrap(), 3);
    assert_eq!(store.purge_inbox(Duration::ZERO, 3).await.unwrap(), 2);
}

pub async fn reconciliation_reports_orders_published_but_not_processed(store: Arc<dyn Store>) {
    let stuck = place(&store, "P123", 1).await;
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    store.mark_published(&[rows[0].outbox_id]).await.unwrap();
    assert_eq!(store.order(stuck).await.unwrap().status, OrderStatus::Published);
    let fresh = store.reconcile(Duration::from_secs(3600)).await.unwrap();
    assert_eq!(fresh, schema::Reconciliation::default(), "nothing is stuck for an hour");
    tokio::time::sleep(Duration::from_millis(20)).await;
    let found = store.reconcile(Duration::ZERO).await.unwrap();
    assert_eq!((found.published_not_processed, found.pending_without_outbox), (1, 0));
    process_order(&store, None, stuck).await.unwrap();
    assert_eq!(store.reconcile(Duration::ZERO).await.unwrap().published_not_processed, 0);
}

pub async fn an_order_stuck_since_its_publication_is_sent_again(store: Arc<dyn Store>) {
    let lost = place(&store, "P123", 1).await;
    let first = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap()[0].outbox_id;
    store.mark_published(&[first]).await.unwrap();
    let waiting = place(&store, "P200", 1).await;
    let repair = |after: Duration| {
        let store = store.clone();
        async move { store.repair_stuck(after, 100, "reconciler").await.unwrap() }
    };
    assert!(repair(Duration::from_secs(3600)).await.is_empty(), "published a moment ago");
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(repair(Duration::ZERO).await, vec![(lost, first)], "only the published order; the pending one waits");
    assert!(repair(Duration::ZERO).await.is_empty(), "a row waiting to be sent is not stuck");
    assert_eq!(store.reconcile(Duration::ZERO).await.unwrap().published_not_processed, 0);
    let due = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let resent = due.iter().find(|r| r.order_id == lost).expect("the same row is due again");
    assert_eq!((resent.outbox_id, resent.attempts), (first, 0));
    let other = due.iter().find(|r| r.order_id == waiting).unwrap().outbox_id;
    store.mark_published(&[first, other]).await.unwrap();
    assert_eq!(store.order(lost).await.unwrap().status, OrderStatus::Published, "never moved back");
    process_order(&store, Some(first), lost).await.unwrap();
    // The other order's row is deleted by retention before anyone notices it is
    // stuck: the repair writes a fresh row.
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert_eq!(store.purge_published(Duration::ZERO, 100).await.unwrap(), 2);
    let repaired = repair(Duration::ZERO).await;
    assert_eq!(repaired.len(), 1);
    assert_eq!(repaired[0].0, waiting);
    assert_ne!(repaired[0].1, other, "a fresh row");
    let due = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(due.iter().map(|r| (r.order_id, r.outbox_id)).collect::<Vec<_>>(), vec![repaired[0]]);
    assert!(due[0].payload.contains(&repaired[0].1.to_string()), "the message names its new row");
}

pub async fn the_ops_views_list_failures_publication_times_and_the_audit(store: Arc<dyn Store>) {
    let good = place(&store, "P123", 1).await;
    let bad = place(&store, "P999", 1).await;
    assert_eq!(store.published_at(good).await.unwrap(), None, "not yet published");
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let ids: Vec<OutboxId> = rows.iter().map(|r| r.outbox_id).collect();
    store.mark_published(&ids).await.unwrap();
    let published = store.published_at(good).await.unwrap().expect("published");
    assert!(published >= store.order(good).await.unwrap().created_at);
    assert_eq!(store.published_at(OrderId(777_777)).await.unwrap(), None);
    for row in &rows {
        process_order(&store, Some(row.outbox_id), row.order_id).await.unwrap();
    }
    let failed = store.failed_orders(10).await.unwrap();
    assert_eq!(failed.iter().map(|o| o.order_id).collect::<Vec<_>>(), vec![bad]);
    assert_eq!(failed[0].failure_reason.as_deref(), Some("unknown product P999"));
    store.record_action(schema::AuditAction::Pause, "ops@example").await.unwrap();
    store.retry_failed_order(bad, "ops@example").await.unwrap();
    let audit = store.recent_audit(10).await.unwrap();
    let seen: Vec<(&str, i64)> = audit.iter().map(|a| (a.action.as_str(), a.order_id.0)).collect();
    assert_eq!(seen, vec![("retry", bad.0), ("pause", 0)], "newest first");
    assert_eq!(audit[1].outbox_id, OutboxId(uuid::Uuid::nil()), "a relay-wide action names no row");
    assert!(audit[0].requested_at >= audit[1].requested_at);
    assert_eq!(store.recent_audit(1).await.unwrap().len(), 1);
}

pub async fn order_counts_follow_every_status_change(store: Arc<dyn Store>) {
    let counts = |store: Arc<dyn Store>| async move {
        let c = store.order_counts().await.unwrap();
        (c.pending, c.published, c.processed, c.failed)
    };
    let good = place(&store, "P123", 1).await;
    let unknown = place(&store, "P999", 1).await;
    let rejected = place(&store, "P200", 1).await;
    assert_eq!(counts(store.clone()).await, (3, 0, 0, 0));
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let own = |order: OrderId| rows.iter().find(|r| r.order_id == order).unwrap().outbox_id;
    store.mark_published(&[own(good), own(unknown)]).await.unwrap();
    store.mark_published(&[own(good)]).await.unwrap();
    assert_eq!(counts(store.clone()).await, (1, 2, 0, 0), "a repeated mark moves nothing");
    let applied = store
        .apply(&[
            delivery(Some(own(good)), Some(good), None),
            delivery(Some(own(good)), Some(good), None),
            delivery(Some(own(unknown)), Some(unknown), None),
            delivery(Some(own(rejected)), Some(rejected), Some("quantity must be a number")),
            delivery(None, Some(good), Some("a stray")),
        ])
        .await
        .unwrap();
    assert!(matches!(applied[0], Applied::Processed(_)) && applied[1] == Applied::Duplicate);
    assert_eq!(counts(store.clone()).await, (0, 0, 1, 2), "processed once; failed from pending and from published");
    store.retry_failed_order(unknown, "ops").await.unwrap();
    assert_eq!(counts(store.clone()).await, (1, 0, 1, 1));
    process_order(&store, None, good).await.unwrap();
    assert_eq!(counts(store.clone()).await, (1, 0, 1, 1), "a final order is not counted twice");
}

pub async fn a_failed_order_can_be_retried_once_its_cause_is_fixed(store: Arc<dyn Store>) {
    let order = place(&store, "P999", 2).await;
    let first = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap()[0].outbox_id;
    store.mark_published(&[first]).await.unwrap();
    let failed = process_order(&store, Some(first), order).await.unwrap();
    assert!(matches!(failed, Applied::DeadLettered { order_failed: true, .. }));
    let fresh = store.retry_failed_order(order, "ops@example").await.unwrap();
    assert_ne!(fresh, first, "a new idempotency key: the old one is in the inbox");
    let retried = store.order(order).await.unwrap();
    assert_eq!((retried.status, retried.failure_reason), (OrderStatus::Pending, None));
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rows.iter().map(|r| r.outbox_id).collect::<Vec<_>>(), vec![fresh]);
    assert!(matches!(store.retry_failed_order(order, "ops").await, Err(schema::StoreError::Conflict(_))));
    assert!(matches!(store.retry_failed_order(OrderId(555_555), "ops").await, Err(schema::StoreError::NotFound)));
}

pub async fn a_batch_is_one_transaction_with_an_outcome_per_message(store: Arc<dyn Store>) {
    let good = place(&store, "P123", 2).await;
    let unknown = place(&store, "P999", 1).await;
    let seed = place(&store, "P200", 1).await;
    let id = outbox_of(&store, good).await;
    let outcomes = store
        .apply(&[
            delivery(Some(id), Some(good), None),
            delivery(Some(id), Some(good), None),
            delivery(None, Some(OrderId(424_242)), None),
            delivery(Some(outbox_of(&store, unknown).await), Some(unknown), None),
            delivery(None, Some(seed), None),
            delivery(None, Some(seed), None),
        ])
        .await
        .unwrap();
    assert!(matches!(&outcomes[0], Applied::Processed(o) if o.total_price == Some(dec("180.00"))));
    assert_eq!(outcomes[1], Applied::Duplicate, "the same outbox id twice in one batch");
    assert_eq!(outcomes[2], dead_letter("order 424242 not found", false));
    assert_eq!(outcomes[3], dead_letter("unknown product P999", true));
    assert!(matches!(&outcomes[4], Applied::Processed(_)));
    assert_eq!(outcomes[5], Applied::Duplicate, "a seed-style repeat is caught by the status guard");
    assert_eq!(outcomes.len(), 6);
}

pub async fn orders_placed_at_once_each_get_their_own_row(store: Arc<dyn Store>) {
    // Sent at once, so that the writers commit them in groups; some alike in
    // every value but their trace, some with texts JSON escapes (quotes,
    // backslashes, control characters), some with what looks like the
    // escapes SQL Server's batch calls use (`%22`), some not in the BMP.
    let round_trips = schema::round_trips();
    let placing: Vec<_> = (1..=60)
        .map(|i| {
            let (name, quantity) = match i {
                _ if i % 4 == 0 => ("twin".to_string(), 7),
                _ if i % 5 == 0 => (format!("a \"quoted\" \\ buyer {i}"), i),
                _ if i % 7 == 0 => (format!("\u{1F600} buyer {i}"), i),
                _ if i % 11 == 0 => (format!("O'Brien'); DELETE FROM orders; -- {i}"), i),
                _ if i % 13 == 0 => (format!("tab\tline\nbell\u{7} \\u0041 %22 %25 %0A {i}"), i),
                _ => (format!("buyer {i}"), i),
            };
            let mut order = new_order(&name, if i % 2 == 0 { "P123" } else { "P200" }, quantity);
            order.idempotency_key = (i % 3 == 0).then(|| format!("key-{i}"));
            order.traceparent = Some(format!("00-{i:032x}-{i:016x}-01"));
            let store = store.clone();
            tokio::spawn(async move { (order.clone(), store.place_order(order).await) })
        })
        .collect();
    let mut placed = Vec::new();
    for placing in placing {
        placed.push(placing.await.unwrap());
    }
    // A group is a few round trips, not a few per order (SQLite makes none).
    assert!(schema::round_trips() - round_trips < 60, "{} round trips", schema::round_trips() - round_trips);
    let rows = store.claim_batch("contract-probe", 1000, Duration::from_secs(30)).await.unwrap();
    store.release_leases("contract-probe").await.unwrap();
    let mut ids = std::collections::HashSet::new();
    for (asked, placed) in placed {
        let Ok(Placed::Created(order)) = placed else { panic!("{asked:?}: {placed:?}") };
        let kept = store.order(order.order_id).await.unwrap();
        for o in [&order, &kept] {
            let fields = (&o.customer_name, &o.product_id, o.quantity);
            assert_eq!(fields, (&asked.customer_name, &asked.product_id, asked.quantity));
        }
        assert!(ids.insert(order.order_id), "one order each");
        let row = rows.iter().find(|r| r.order_id == order.order_id).expect("its outbox row");
        let event: schema::messages::OrderPlacedV1 = serde_json::from_str(&row.payload).unwrap();
        assert_eq!(event, schema::messages::OrderPlacedV1::for_order(&kept, row.outbox_id), "its message is its own");
        assert_eq!(row.traceparent, asked.traceparent, "its trace is its own");
    }
    assert_eq!(store.order_counts().await.unwrap().pending, 60);
    let mut again = new_order("someone else", "P123", 1);
    again.idempotency_key = Some("key-9".into());
    let Placed::Existing(first) = store.place_order(again).await.unwrap() else { panic!("key-9 was used") };
    assert_eq!((first.customer_name.as_str(), first.quantity), ("buyer 9", 9), "each key names its own order");
}

/// The relay's `pending -> published` and the consumer's move to `processed`
/// racing on the same orders, many times over: every move is counted from
/// the status it really left (on Babelfish, `OUTPUT deleted.status` named
/// `pending` for orders the relay had moved meanwhile, and the counters drifted
/// negative).
pub async fn counts_stay_true_while_relay_and_consumer_race(store: Arc<dyn Store>) {
    let mut orders = Vec::new();
    for _ in 0..120 {
        orders.push(place(&store, "P123", 1).await);
    }
    let rows = store.claim_batch("relay-a", 1000, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rows.len(), orders.len());
    // Each order's mark and its message at the same moment, a few orders at a time.
    for chunk in rows.chunks(3) {
        let ids: Vec<OutboxId> = chunk.iter().map(|r| r.outbox_id).collect();
        let batch: Vec<Delivery> = chunk.iter().map(|r| delivery(Some(r.outbox_id), Some(r.order_id), None)).collect();
        let relay = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while let Err(error) = store.mark_published(&ids).await {
                assert!(error.is_transient() && Instant::now() < deadline, "{}", Report::new(error));
            }
        };
        // A deadlock with the relay is retried, as the consumer does.
        let consumer = async {
            let deadline = Instant::now() + Duration::from_secs(60);
            while let Err(error) = store.apply(&batch).await {
                assert!(error.is_transient() && Instant::now() < deadline, "{}", Report::new(error));
            }
        };
        tokio::join!(relay, consumer);
    }
    let counts = store.order_counts().await.unwrap();
    let mut processed = 0;
    for order in &orders {
        processed += i64::from(store.order(*order).await.unwrap().status == OrderStatus::Processed);
    }
    assert_eq!(processed, orders.len() as i64, "every order processed");
    assert_eq!((counts.pending, counts.published, counts.processed, counts.failed), (0, 0, processed, 0));
}

pub async fn keys_that_differ_only_in_case_are_different(store: Arc<dyn Store>) {
    let mut lower = new_order("Bea", "P200", 1);
    lower.idempotency_key = Some("abC".into());
    let mut upper = lower.clone();
    upper.idempotency_key = Some("ABc".into());
    let Placed::Created(a) = store.place_order(lower).await.unwrap() else { panic!("abC is new") };
    let Placed::Created(b) = store.place_order(upper).await.unwrap() else { panic!("ABc is another key") };
    assert_ne!(a.order_id, b.order_id);
    assert!(matches!(store.product("p123").await, Err(schema::StoreError::NotFound)), "product ids are exact");
    let lowercase_product = place(&store, "p123", 1).await;
    let outcome = process_order(&store, None, lowercase_product).await.unwrap();
    assert_eq!(outcome, dead_letter("unknown product p123", true), "p123 is not P123");
}

pub async fn non_bmp_text_fits_at_every_limit(store: Arc<dyn Store>) {
    use schema::limits::{CUSTOMER_NAME_CHARS, FAILURE_REASON_UNITS, LAST_ERROR_UNITS, utf16_len};
    let name = "😀".repeat(CUSTOMER_NAME_CHARS);
    let Placed::Created(order) = store.place_order(new_order(&name, "P123", 1)).await.unwrap() else {
        panic!("a new order")
    };
    assert_eq!(store.order(order.order_id).await.unwrap().customer_name, name, "stored whole");
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(30)).await.unwrap();
    let body: serde_json::Value = serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!(body["customer_name"], name.as_str());

    let reason = format!("invalid order message: {}", "𝄞".repeat(300));
    let own = delivery(Some(rows[0].outbox_id), Some(order.order_id), Some(&reason));
    assert!(matches!(&store.apply(&[own]).await.unwrap()[0], Applied::DeadLettered { order_failed: true, .. }));
    let stored = store.order(order.order_id).await.unwrap().failure_reason.unwrap();
    assert!(utf16_len(&stored) <= FAILURE_REASON_UNITS && utf16_len(&stored) >= FAILURE_REASON_UNITS - 1);
    assert!(reason.starts_with(&stored), "cut on a character boundary");

    let error = "ERROR: ".to_string() + &"💥".repeat(LAST_ERROR_UNITS);
    let parked = store.record_failure(&failed("relay-a", rows[0].outbox_id, &error, 1)).await.unwrap();
    assert_eq!(parked, FailureOutcome::Parked);
    let last_error = store.parked_rows(1).await.unwrap()[0].last_error.clone().unwrap();
    assert!(utf16_len(&last_error) <= LAST_ERROR_UNITS && error.starts_with(&last_error));
    let who = "運用担当👩‍💻".repeat(40);
    assert_eq!(store.requeue(RequeueTarget::Outbox(rows[0].outbox_id), &who).await.unwrap(), vec![rows[0].outbox_id]);
}

pub async fn a_lapsed_lease_cannot_touch_the_row_another_relay_holds(store: Arc<dyn Store>) {
    place(&store, "P123", 1).await;
    let id = store.claim_batch("relay-a", 10, Duration::from_millis(200)).await.unwrap()[0].outbox_id;
    let claim_b = async || store.claim_batch("relay-b", 10, Duration::from_secs(60)).await.unwrap().into_iter().next();
    let taken = poll(Duration::from_secs(10), claim_b).await.expect("relay-a's lease never lapsed");
    let late = store.record_failure(&failed("relay-a", id, "late ERROR", 1)).await.unwrap();
    assert_eq!(late, FailureOutcome::LeaseLost, "a lapsed lease counts nothing");
    assert!(
        store.claim_batch("relay-c", 10, Duration::from_secs(60)).await.unwrap().is_empty(),
        "relay-b still holds it"
    );
    assert!(store.parked_rows(10).await.unwrap().is_empty(), "not parked by the lapsed relay");
    // relay-a's RECEIPT did arrive: the row is published, whoever holds it.
    assert_eq!(store.mark_published(&[id]).await.unwrap(), 1);
    assert_eq!(taken.attempts, 0);
    assert_eq!(store.record_failure(&failed("relay-b", id, "ERROR", 1)).await.unwrap(), FailureOutcome::LeaseLost);
    let stats = store.outbox_stats().await.unwrap();
    assert_eq!((stats.pending, stats.parked), (0, 0), "published and never parked");
}

pub async fn a_parked_row_confirmed_late_is_published_not_parked(store: Arc<dyn Store>) {
    place(&store, "P123", 1).await;
    place(&store, "P200", 1).await;
    let rows = store.claim_batch("relay-a", 10, Duration::from_secs(60)).await.unwrap();
    for row in &rows {
        assert_eq!(
            store.record_failure(&failed("relay-a", row.outbox_id, "x", 1)).await.unwrap(),
            FailureOutcome::Parked
        );
    }
    assert_eq!(store.mark_published(&[rows[0].outbox_id]).await.unwrap(), 1);
    assert_eq!(store.outbox_stats().await.unwrap().parked, 1, "the confirmed row is no longer parked");
    assert_eq!(store.requeue(RequeueTarget::All, "ops@example").await.unwrap(), vec![rows[1].outbox_id]);
    assert_eq!(store.outbox_stats().await.unwrap().parked, 0);
}

/// Expands every contract test for one backend, from the one list below: a
/// test taking a store gets a fresh one from `$store`, a test taking a URL
/// (it opens a second session itself) a fresh database's URL from `$url`. The
/// tidy test checks that every `pub async fn` of the contract is listed here.
macro_rules! contract_tests {
    ($backend:ident, $store:path, $url:path, #[$attr:meta]) => {
        mod $backend {
            contract_tests!(@each $url, $attr;
                a_locked_order_is_an_outage_never_a_failed_order,
                a_held_write_lock_stops_writers_until_released,
                an_abandoned_placement_writes_its_whole_order_or_nothing
            );
            contract_tests!(@each $store, $attr;
                catalogue_is_seeded,
                order_and_outbox_row_are_written_together,
                idempotency_key_returns_the_first_order,
                a_leased_row_is_invisible_until_its_lease_expires,
                claims_respect_the_limit_and_share_the_work,
                publishing_advances_pending_orders_only,
                processing_prices_once_per_outbox_id,
                an_unknown_product_fails_the_order_with_a_reason,
                a_missing_order_changes_nothing,
                a_rejected_message_fails_only_its_own_order,
                another_orders_outbox_id_blocks_neither_order,
                dead_letters_are_recorded_once_and_kept_until_confirmed,
                a_refused_dead_letter_is_set_aside_and_sent_ones_expire,
                a_failing_row_is_retried_then_parked,
                released_leases_are_claimable_at_once,
                renewed_leases_outlast_their_term_and_a_lapsed_one_is_never_revived,
                recent_orders_are_newest_first,
                parked_rows_are_listed_and_requeued_with_an_audit_record,
                retention_deletes_old_rows_in_small_batches,
                reconciliation_reports_orders_published_but_not_processed,
                an_order_stuck_since_its_publication_is_sent_again,
                the_ops_views_list_failures_publication_times_and_the_audit,
                order_counts_follow_every_status_change,
                a_failed_order_can_be_retried_once_its_cause_is_fixed,
                a_batch_is_one_transaction_with_an_outcome_per_message,
                keys_that_differ_only_in_case_are_different,
                orders_placed_at_once_each_get_their_own_row,
                non_bmp_text_fits_at_every_limit,
                a_lapsed_lease_cannot_touch_the_row_another_relay_holds,
                a_parked_row_confirmed_late_is_published_not_parked,
                counts_stay_true_while_relay_and_consumer_race,
                failures_are_grouped_by_the_fingerprint_of_their_reason,
                a_failure_group_is_retried_in_one_action_each_audited,
                a_dead_letter_is_replayed_through_a_fresh_outbox_row_of_its_order,
                a_group_replay_sends_each_order_once_and_says_what_it_skipped
            );
        }
    };
    (@each $make:path, $attr:meta; $($name:ident),*) => {
        $(
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            #[$attr]
            async fn $name() {
                let Some((database, _guard)) = $make().await else { return };
                super::$name(database).await;
            }
        )*
    };
}

async fn sqlite_store() -> Option<(Arc<dyn Store>, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("contract.db").display());
    Some((schema::testing::open(&url).await.unwrap().store, dir))
}

/// A fresh database on the server `TEST_MSSQL_URL` names. Without one the
/// tests are ignored at build time (`schema/build.rs`), so they are reported as
/// not run; run with `--include-ignored` anyway, they fail saying why.
async fn mssql_store() -> Option<(Arc<dyn Store>, ())> {
    let (url, guard) = mssql_url().await?;
    Some((schema::testing::open(&url).await.unwrap_or_else(|e| panic!("{e:#}")).store, guard))
}

/// A fresh SQLite file's URL, whose writers give up after 300 ms instead of
/// the default 10 s (the URL tests wait out locks).
async fn sqlite_url() -> Option<(String, tempfile::TempDir)> {
    let dir = tempfile::tempdir().unwrap();
    Some((format!("sqlite://{}?busy_timeout_ms=300", dir.path().join("contract.db").display()), dir))
}

/// A fresh database's URL on the server `TEST_MSSQL_URL` names.
async fn mssql_url() -> Option<(String, ())> {
    let url = std::env::var("TEST_MSSQL_URL").expect("TEST_MSSQL_URL names the SQL Server to test against");
    Some((schema::testing::fresh_mssql_database(&url).await.unwrap_or_else(|e| panic!("{e:#}")), ()))
}

contract_tests!(sqlite, super::sqlite_store, super::sqlite_url, #[doc = "On a fresh SQLite file."]);
contract_tests!(
    mssql,
    super::mssql_store,
    super::mssql_url,
    #[cfg_attr(not(mssql_server_given), ignore = "TEST_MSSQL_URL is not set: no SQL Server to run against")]
);

/// An outage as the consumer meets it, injected: another session holds the
/// order's row (on SQLite the database), so the batch's write waits out its
/// lock timeout. That is the database's state, never the message's fault: the
/// batch fails as transient (retried in place, never parked), the order stays
/// open, and once the lock is gone the same message is applied.
pub async fn a_locked_order_is_an_outage_never_a_failed_order(url: String) {
    let TestDb { store, probe } = schema::testing::open(&url).await.unwrap_or_else(|e| panic!("{e:#}"));
    let id = place(&store, "P123", 2).await;
    let outbox_id = outbox_of(&store, id).await;
    let message = delivery(Some(outbox_id), Some(id), None);
    let held = probe.hold_order(id).await.unwrap();
    let refused = store.apply(std::slice::from_ref(&message)).await;
    held.release().await;
    let error = refused.expect_err("no write gets past the lock");
    assert!(error.is_transient(), "an outage is retried, never parked: {}", Report::new(&error));
    let order = store.order(id).await.unwrap();
    assert_eq!((order.status, order.failure_reason), (OrderStatus::Pending, None), "the order is untouched");
    assert_eq!(probe.inbox_rows(outbox_id).await.unwrap(), 0, "nothing of the batch was kept");
    let applied = store.apply(&[message]).await.unwrap();
    assert!(matches!(applied[..], [Applied::Processed(_)]), "{applied:?}");
    assert_eq!(store.order(id).await.unwrap().status, OrderStatus::Processed);
}

/// The chaos run's database outage: another session holds the write lock (on
/// SQLite the database's, on SQL Server every order counter's), so placing an
/// order waits out its lock timeout and fails as transient, keeping nothing;
/// once the lock is released, the same order is placed.
pub async fn a_held_write_lock_stops_writers_until_released(url: String) {
    let TestDb { store, probe } = schema::testing::open(&url).await.unwrap_or_else(|e| panic!("{e:#}"));
    let held = probe.hold_write_lock().await.unwrap();
    let refused = store.place_order(new_order("Held", "P123", 1)).await;
    held.release().await;
    let error = refused.expect_err("no order is placed past the lock");
    assert!(error.is_transient(), "an outage is retried, never refused: {}", Report::new(&error));
    assert_eq!(probe.tally().await.unwrap().orders, 0, "nothing was kept");
    place(&store, "P123", 1).await;
    assert_eq!(store.order_counts().await.unwrap().pending, 1);
}

/// A caller that stops waiting (a client that hangs up) drops its answer,
/// never half a write: of 200 placements given up after 0 to 30 ms, each wrote
/// its order with its outbox row and its count, or nothing; those already
/// queued are written all the same, and each written one is told to its hook
/// once; and the store goes on placing orders.
pub async fn an_abandoned_placement_writes_its_whole_order_or_nothing(url: String) {
    let TestDb { store, probe } = schema::testing::open(&url).await.unwrap_or_else(|e| panic!("{e:#}"));
    let created = Arc::new(AtomicI64::new(0));
    let mut placements = tokio::task::JoinSet::new();
    for i in 0..200_u64 {
        let (store, hook) = (store.clone(), count_into(&created));
        placements.spawn(async move {
            let patience = Duration::from_micros(i * 149 % 30_000);
            tokio::time::timeout(patience, store.place_order_then(new_order("Gone", "P123", 1), hook)).await.ok()
        });
    }
    let mut answered = Vec::new();
    while let Some(outcome) = placements.join_next().await {
        if let Some(placed) = outcome.unwrap() {
            answered.push(placed.unwrap());
        }
    }
    place(&store, "P200", 1).await;
    // Groups queued before the last order may still be in a writer's hands.
    // The last order (`place`, no hook) is not told.
    let figures = async || {
        let (tally, counts) = (probe.tally().await.unwrap(), store.order_counts().await.unwrap());
        (tally.orders, tally.outbox, counts.pending, created.load(Ordering::SeqCst) + 1)
    };
    let settled = async || {
        Some(figures().await)
            .filter(|&(orders, outbox, pending, told)| (outbox, pending, told) == (orders, orders, orders))
    };
    let (orders, outbox, pending, told) = match poll(Duration::from_secs(30), settled).await {
        Some(settled) => settled,
        None => figures().await,
    };
    assert_eq!((outbox, pending), (orders, orders), "each order has its outbox row and its count");
    assert_eq!(told, orders, "each order written is told to its hook once, its caller gone or not");
    for placed in &answered {
        let Placed::Created(order) = placed else { panic!("no idempotency key was given") };
        assert_eq!(store.order(order.order_id).await.unwrap().customer_name, "Gone");
    }
    assert!(orders > answered.len() as i64 + 1, "a placement given up once queued is written all the same");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mssql_server_given), ignore = "TEST_MSSQL_URL is not set: no SQL Server to run against")]
async fn mssql_a_database_that_applied_the_first_v3_still_starts() {
    let url = std::env::var("TEST_MSSQL_URL").expect("TEST_MSSQL_URL names the SQL Server to test against");
    let url = schema::testing::fresh_mssql_database(&url).await.unwrap_or_else(|e| panic!("{e:#}"));
    drop(schema::testing::open(&url).await.unwrap_or_else(|e| panic!("{e:#}")));
    assert_eq!(schema::testing::record_superseded_migrations(&url).await.unwrap(), 1, "the first text recorded");
    let TestDb { store, .. } = schema::testing::open(&url)
        .await
        .unwrap_or_else(|e| panic!("a database migrated before V3 was replaced: {e:#}"));
    assert_eq!(store.products().await.unwrap().len(), 6);
    assert_eq!(schema::testing::record_superseded_migrations(&url).await.unwrap(), 1, "the replacement was recorded");
}

/// A call the server does not answer within `DB_COMMAND_TIMEOUT_MS` (here
/// 2 s, below the session's 5 s lock timeout) is an outage: its connection is
/// closed, and the next call gets a new one.
/// (The order is placed and finally applied through a store with the default
/// bound: on the TDS engine a procedure's first call on a connection compiles it.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mssql_server_given), ignore = "TEST_MSSQL_URL is not set: no SQL Server to run against")]
async fn mssql_a_call_past_the_command_timeout_is_an_outage_and_its_connection_is_replaced() {
    let url = std::env::var("TEST_MSSQL_URL").expect("TEST_MSSQL_URL names the SQL Server to test against");
    let url = schema::testing::fresh_mssql_database(&url).await.unwrap_or_else(|e| panic!("{e:#}"));
    let TestDb { store, probe } = schema::testing::open(&url).await.unwrap_or_else(|e| panic!("{e:#}"));
    let args = schema::DatabaseArgs {
        database_url: url.parse().unwrap(),
        db_connect_timeout_ms: 10_000,
        db_command_timeout_ms: 2_000,
    };
    let bounded = schema::testing::open_url(&args.url()).await.unwrap_or_else(|e| panic!("{e:#}")).store;
    let id = place(&store, "P123", 2).await;
    let message = delivery(Some(outbox_of(&store, id).await), Some(id), None);
    let held = probe.hold_order(id).await.unwrap();
    let started = Instant::now();
    let refused = bounded.apply(std::slice::from_ref(&message)).await;
    let waited = started.elapsed();
    held.release().await;
    let error = refused.expect_err("no write gets past the lock");
    assert!(matches!(error, schema::StoreError::Unavailable(_)), "an outage: {}", Report::new(&error));
    assert!(waited < Duration::from_millis(4_500), "cut at the command timeout, not the lock timeout: {waited:?}");
    // Its caller cannot know what became of the call: SQL Server rolls it
    // back on the client's attention; a server that runs it on after the
    // client left (the TDS engine, once the lock is free) commits the whole
    // batch, which owns its transaction. Either way the message counts once.
    let status = bounded.order(id).await.unwrap().status;
    assert!(matches!(status, OrderStatus::Pending | OrderStatus::Processed), "{status:?}, read on a new connection");
    let applied = store.apply(&[message]).await.unwrap();
    assert!(matches!(applied[..], [Applied::Processed(_) | Applied::Duplicate]), "{applied:?}");
    assert_eq!(store.order(id).await.unwrap().status, OrderStatus::Processed);
    assert_eq!(probe.inbox_rows(outbox_of(&store, id).await).await.unwrap(), 1, "its message counted once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_migrations_are_safe_to_run_concurrently_and_repeatedly() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("shared.db").display());
    let opens = (0..4).map(|_| {
        let url = url.clone();
        tokio::spawn(async move { schema::testing::open(&url).await.map(drop) })
    });
    for open in opens {
        open.await.unwrap().unwrap();
    }
    let store = schema::testing::open(&url).await.unwrap().store;
    assert_eq!(store.products().await.unwrap().len(), 6, "seeded once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_reconciliation_finds_pending_orders_without_an_outbox_row() {
    let (store, dir) = sqlite_store().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("contract.db")).unwrap();
    conn.execute("INSERT INTO orders (customer_name, product_id, quantity) VALUES ('Seed', 'P123', 2)", []).unwrap();
    assert_eq!(store.reconcile(Duration::from_secs(3600)).await.unwrap().pending_without_outbox, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_history_loads_as_processed_orders_with_their_rows_and_counts() {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("history.db").display());
    let TestDb { store, probe } = schema::testing::open(&url).await.unwrap();
    place(&store, "P123", 1).await;
    probe.bulk_history(schema::testing::HISTORY_CHUNK + 7).await.unwrap();
    let t = probe.tally().await.unwrap();
    let n = schema::testing::HISTORY_CHUNK as i64 + 7;
    assert_eq!((t.orders, t.processed, t.outbox, t.published_rows, t.inbox_from_outbox), (n + 1, n, n + 1, n, n));
    assert_eq!(store.order_counts().await.unwrap().processed, n);
    // History is old: retention takes it, in batches.
    assert_eq!(store.purge_published(Duration::from_secs(7 * 24 * 3600), 500).await.unwrap(), 500);
    let parse = store.recent_orders(1).await.unwrap();
    assert_eq!(parse[0].status, OrderStatus::Processed, "history rows read back as orders");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_history_ids_are_version_7_and_ascend_as_the_relay_s_own_do() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.db");
    let TestDb { store, probe } = schema::testing::open(&format!("sqlite://{}", path.display())).await.unwrap();
    probe.bulk_history(20_000).await.unwrap();
    place(&store, "P123", 1).await;
    let conn = rusqlite::Connection::open(&path).unwrap();
    let rows: Vec<(String, String)> = conn
        .prepare("SELECT outbox_id, created_at FROM outbox ORDER BY order_id")
        .unwrap()
        .query_map([], |r| Ok((r.get(0)?, r.get(1)?)))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    assert_eq!(rows.len(), 20_001);
    let ids: Vec<uuid::Uuid> = rows.iter().map(|(id, _)| id.parse().unwrap()).collect();
    assert!(ids.iter().all(|id| id.get_version_num() == 7), "{:?}", &rows[..2]);
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ids ascend with the orders, the placed one's last");
    let (_, created_at) = &rows[0];
    let created_ms = chrono::DateTime::parse_from_rfc3339(created_at).unwrap().timestamp_millis() as u64;
    let (seconds, nanos) = ids[0].get_timestamp().unwrap().to_unix();
    assert_eq!(seconds * 1000 + u64::from(nanos) / 1_000_000, created_ms, "the id holds its row's creation time");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqlite_one_failing_order_in_a_group_commit_leaves_the_others_placed() {
    let (store, dir) = sqlite_store().await.unwrap();
    let conn = rusqlite::Connection::open(dir.path().join("contract.db")).unwrap();
    conn.execute_batch(
        "CREATE TRIGGER boom BEFORE INSERT ON outbox WHEN (SELECT customer_name FROM orders \
         WHERE order_id = NEW.order_id) = 'boom' BEGIN SELECT RAISE(ABORT, 'boom'); END",
    )
    .unwrap();
    // Sent at once, so that the writer commits them in groups.
    let names: Vec<String> = (0..40).map(|i| if i == 17 { "boom".into() } else { format!("buyer {i}") }).collect();
    let placing: Vec<_> = names
        .iter()
        .map(|name| {
            let (store, order) = (store.clone(), new_order(name, "P200", 1));
            tokio::spawn(async move { store.place_order(order).await })
        })
        .collect();
    for (name, placed) in names.iter().zip(placing) {
        match (name.as_str(), placed.await.unwrap()) {
            ("boom", Err(e)) => assert!(Report::new(&e).to_string().contains("boom"), "{e:?}"),
            ("boom", Ok(p)) => panic!("the failing order was placed: {p:?}"),
            (_, Ok(Placed::Created(order))) => assert_eq!(&order.customer_name, name),
            (_, other) => panic!("{name}: {other:?}"),
        }
    }
    let (orders, outbox): (i64, i64) = conn
        .query_row("SELECT (SELECT COUNT(*) FROM orders), (SELECT COUNT(*) FROM outbox)", [], |r| {
            Ok((r.get(0)?, r.get(1)?))
        })
        .unwrap();
    assert_eq!((orders, outbox), (39, 39), "the failing order's row went with its outbox row, no other");
    assert_eq!(store.order_counts().await.unwrap().pending, 39);
}
