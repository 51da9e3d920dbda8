//! The consumer step against a real SQLite store and a fake broker: what each
//! kind of delivery does to the orders, the ACKs and the dead-letter queue.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking; its helpers unwrap like its tests")]

use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};

use async_trait::async_trait;
use consumer::step::{Acker, DEAD_LETTER_ATTEMPTS, StepError, Unconfirmed, handle_delivery, publish_dead_letters};
use schema::{
    Applied, Cause, DeadLetter, Delivery, NewOrder, OrderId, OrderStatus, OutboxId, Placed, ProcessingStore, Store,
    StoreError, UndeliverableLetter,
};
use stomp::{Frame, StompError};

/// Records ACKs and confirmed sends; fails sends while `drop_sends` is set,
/// ACKs while `drop_acks` is, and drops the connection over any frame whose
/// `dlq-id` is `refused` (as ActiveMQ does over a header it cannot read).
#[derive(Default)]
struct FakeBroker {
    acked: Mutex<Vec<String>>,
    sent: Mutex<Vec<Frame>>,
    drop_sends: AtomicBool,
    drop_acks: AtomicBool,
    refused: Mutex<Option<String>>,
    offered: Mutex<Vec<String>>,
}

#[async_trait]
impl Acker for FakeBroker {
    async fn send_confirmed(&self, frames: Vec<Frame>) -> Result<(), Unconfirmed> {
        if self.drop_sends.load(Ordering::SeqCst) {
            let error = StompError::Closed("connection dropped before the receipt".into());
            return Err(Unconfirmed { confirmed: 0, error });
        }
        let refused = self.refused.lock().unwrap().clone();
        for (confirmed, frame) in frames.into_iter().enumerate() {
            self.offered.lock().unwrap().push(frame.get("dlq-id").unwrap_or_default().to_string());
            if refused.as_deref().is_some_and(|id| frame.get("dlq-id") == Some(id)) {
                let error = StompError::Closed("broker error: The maximum header length was exceeded".into());
                return Err(Unconfirmed { confirmed, error });
            }
            self.sent.lock().unwrap().push(frame);
        }
        Ok(())
    }

    async fn ack(&self, ack_ids: &[&str]) -> Result<(), StompError> {
        if self.drop_acks.load(Ordering::SeqCst) {
            return Err(StompError::Closed("connection dropped before the ACK".into()));
        }
        self.acked.lock().unwrap().extend(ack_ids.iter().map(|a| a.to_string()));
        Ok(())
    }
}

impl FakeBroker {
    fn dead_letters(&self) -> Vec<(String, String)> {
        let sent = self.sent.lock().unwrap();
        sent.iter().map(|f| (f.get("dlq-id").unwrap().to_string(), f.get("dlq-reason").unwrap().to_string())).collect()
    }
}

/// How [`Refusing`] refuses.
#[derive(Clone, Copy, PartialEq)]
enum Refusal {
    /// A value of the message breaks a rule (SQL Server's 2628 truncation).
    Invalid,
    /// The database is unavailable (locked, disk or log full).
    Transient,
    /// Something the code does not know (an unmapped error number).
    Unknown,
}

/// The real store, except that it refuses any batch holding a valid delivery
/// whose body contains `marker` (any delivery, when transient).
struct Refusing {
    inner: std::sync::Arc<dyn Store>,
    marker: &'static str,
    refusal: Refusal,
}

#[async_trait]
impl ProcessingStore for Refusing {
    async fn apply(&self, deliveries: &[Delivery]) -> Result<Vec<Applied>, StoreError> {
        let marked = |d: &Delivery| String::from_utf8_lossy(&d.body).contains(self.marker);
        if deliveries.iter().any(|d| marked(d) && (self.refusal == Refusal::Transient || d.rejection.is_none())) {
            return Err(match self.refusal {
                Refusal::Transient => StoreError::Unavailable(Cause::msg("database is locked")),
                Refusal::Invalid => StoreError::Invalid(Cause::msg("String or binary data would be truncated (2628)")),
                Refusal::Unknown => StoreError::Other(Cause::msg("Invalid object name 'dbo.inbox' (208)")),
            });
        }
        self.inner.apply(deliveries).await
    }
    async fn unsent_dead_letters(&self, limit: u32) -> Result<Vec<DeadLetter>, StoreError> {
        self.inner.unsent_dead_letters(limit).await
    }
    async fn mark_dead_letters_sent(&self, ids: &[String]) -> Result<u64, StoreError> {
        self.inner.mark_dead_letters_sent(ids).await
    }
    async fn refuse_dead_letter(&self, id: &str, error: &str, give_up_at: u32) -> Result<bool, StoreError> {
        self.inner.refuse_dead_letter(id, error, give_up_at).await
    }
    async fn undeliverable_dead_letters(&self, limit: u32) -> Result<Vec<UndeliverableLetter>, StoreError> {
        self.inner.undeliverable_dead_letters(limit).await
    }
}

async fn store() -> (std::sync::Arc<dyn Store>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let url = format!("sqlite://{}", dir.path().join("consumer.db").display());
    (schema::testing::open(&url).await.unwrap().store, dir)
}

async fn place(store: &dyn Store, name: &str, product: &str) -> (OrderId, OutboxId) {
    let order = NewOrder {
        customer_name: name.into(),
        product_id: product.into(),
        quantity: 2,
        idempotency_key: None,
        traceparent: None,
        tracestate: None,
    };
    let Placed::Created(order) = store.place_order(order).await.unwrap() else { panic!("a new order") };
    let rows = store.claim_batch("test", 1000, std::time::Duration::from_secs(60)).await.unwrap();
    let row = rows.iter().find(|r| r.order_id == order.order_id).unwrap();
    store.release_leases("test").await.unwrap();
    (order.order_id, row.outbox_id)
}

/// A MESSAGE frame as the broker delivers it, as the consumer hands it on.
fn message(n: u32, body: &str, outbox_id: Option<OutboxId>) -> Delivery {
    let mut frame = Frame::new("MESSAGE")
        .header("message-id", format!("ID:broker-1:{n}"))
        .header("ack", format!("ack-{n}"))
        .header("destination", "/queue/orders");
    if let Some(id) = outbox_id {
        frame = frame.header("outbox-id", id.to_string());
    }
    consumer::handler::to_delivery(frame.body(body.to_string()))
}

fn order_body(order: OrderId, name: &str, quantity: &str) -> String {
    format!(r#"{{"order_id": {}, "customer_name": "{name}", "product_id": "P123", "quantity": {quantity}}}"#, order.0)
}

#[tokio::test]
async fn a_permanent_error_mid_batch_parks_only_its_message() {
    let (inner, _dir) = store().await;
    let (a, a_id) = place(inner.as_ref(), "Ann", "P123").await;
    let (bad, bad_id) = place(inner.as_ref(), "Poison", "P123").await;
    let (c, c_id) = place(inner.as_ref(), "Cem", "P123").await;
    let store = Refusing { inner: inner.clone(), marker: "Poison", refusal: Refusal::Invalid };
    let broker = FakeBroker::default();
    let frames = [
        message(1, &order_body(a, "Ann", "2"), Some(a_id)),
        message(2, &order_body(bad, "Poison", "2"), Some(bad_id)),
        message(3, &order_body(c, "Cem", "2"), Some(c_id)),
    ];
    let outcomes = handle_delivery(&store, &broker, &frames).await.unwrap();
    assert!(matches!(outcomes[0], Applied::Processed(_)) && matches!(outcomes[2], Applied::Processed(_)));
    assert!(matches!(&outcomes[1], Applied::DeadLettered { order_failed: true, reason } if reason.contains("2628")));
    assert_eq!(*broker.acked.lock().unwrap(), ["ack-1", "ack-2", "ack-3"], "the whole batch is ACKed");
    assert_eq!(inner.order(c).await.unwrap().status, OrderStatus::Processed, "messages behind it are applied");
    let failed = inner.order(bad).await.unwrap();
    assert_eq!(failed.status, OrderStatus::Failed);
    assert!(failed.failure_reason.unwrap().starts_with("the database refused the message"));
    assert_eq!(publish_dead_letters(&store, &broker, "/queue/orders").await.unwrap().sent, 1);
    let letters = broker.dead_letters();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].0, "ID:broker-1:2");
}

#[tokio::test]
async fn an_error_that_is_not_the_messages_fault_fails_no_order() {
    let (inner, _dir) = store().await;
    let (order, outbox_id) = place(inner.as_ref(), "Odd", "P123").await;
    let store = Refusing { inner: inner.clone(), marker: "Odd", refusal: Refusal::Unknown };
    let broker = FakeBroker::default();
    let frames = [message(1, &order_body(order, "Odd", "2"), Some(outbox_id))];
    let outcomes = handle_delivery(&store, &broker, &frames).await.unwrap();
    assert!(matches!(&outcomes[0], Applied::DeadLettered { order_failed: false, reason } if reason.contains("208")));
    assert_eq!(inner.order(order).await.unwrap().status, OrderStatus::Pending, "the order stays open");
    assert_eq!(publish_dead_letters(&store, &broker, "/q").await.unwrap().sent, 1, "parked with its reason");
    // Its message again, once the database is right: processed, not a duplicate.
    let again = message(2, &order_body(order, "Odd", "2"), Some(outbox_id));
    assert!(matches!(handle_delivery(inner.as_ref(), &broker, &[again]).await.unwrap()[0], Applied::Processed(_)));
}

#[tokio::test]
async fn a_transient_error_acks_nothing_and_is_returned_for_retry() {
    let (inner, _dir) = store().await;
    let (a, a_id) = place(inner.as_ref(), "Locked", "P123").await;
    let store = Refusing { inner: inner.clone(), marker: "Locked", refusal: Refusal::Transient };
    let broker = FakeBroker::default();
    let frames = [message(1, &order_body(a, "Locked", "2"), Some(a_id))];
    let result = handle_delivery(&store, &broker, &frames).await;
    assert!(matches!(result, Err(StepError::Store(StoreError::Unavailable(_)))), "{result:?}");
    assert!(broker.acked.lock().unwrap().is_empty(), "nothing ACKed");
    assert_eq!(inner.order(a).await.unwrap().status, OrderStatus::Pending);
    // The database is back: the same batch goes through.
    let outcomes = handle_delivery(inner.as_ref(), &broker, &frames).await.unwrap();
    assert!(matches!(outcomes[0], Applied::Processed(_)));
}

#[tokio::test]
async fn a_crash_between_commit_and_dead_letter_send_loses_no_dead_letter() {
    let (store, _dir) = store().await;
    let (order, outbox_id) = place(store.as_ref(), "Dee", "P999").await;
    let broker = FakeBroker::default();
    let frame = message(7, &order_body(order, "Dee", "2"), Some(outbox_id));
    let outcomes = handle_delivery(store.as_ref(), &broker, std::slice::from_ref(&frame)).await.unwrap();
    assert!(
        matches!(&outcomes[0], Applied::DeadLettered { order_failed: true, reason } if reason == "unknown product P999")
    );
    // The connection drops before the dead letter's receipt; the process dies.
    broker.drop_sends.store(true, Ordering::SeqCst);
    let cut_short = publish_dead_letters(store.as_ref(), &broker, "/q").await.unwrap();
    assert!(matches!((cut_short.sent, cut_short.broker_error), (0, Some(StompError::Closed(_)))));
    // The broker redelivers the original: a duplicate, ACKed, and still one dead letter.
    let again = FakeBroker::default();
    assert_eq!(handle_delivery(store.as_ref(), &again, &[frame]).await.unwrap(), vec![Applied::Duplicate]);
    assert_eq!(
        publish_dead_letters(store.as_ref(), &again, "/q").await.unwrap().sent,
        1,
        "published after the restart"
    );
    assert_eq!(again.dead_letters(), [("ID:broker-1:7".to_string(), "unknown product P999".to_string())]);
    assert_eq!(again.sent.lock().unwrap()[0].get("destination"), Some("/q.DLQ"));
    assert_eq!(publish_dead_letters(store.as_ref(), &again, "/q").await.unwrap().sent, 0, "sent once confirmed");
}

#[tokio::test]
async fn a_batch_committed_but_not_acked_is_reported_and_its_redelivery_is_a_duplicate() {
    let (store, _dir) = store().await;
    let (order, outbox_id) = place(store.as_ref(), "Finn", "P123").await;
    let broker = FakeBroker::default();
    broker.drop_acks.store(true, Ordering::SeqCst);
    let frame = message(9, &order_body(order, "Finn", "3"), Some(outbox_id));
    let result = handle_delivery(store.as_ref(), &broker, std::slice::from_ref(&frame)).await;
    let Err(StepError::NotAcked { applied, .. }) = result else { panic!("the ACK failed: {result:?}") };
    assert!(matches!(applied[..], [Applied::Processed(_)]), "the commit is reported: {applied:?}");
    assert_eq!(store.order(order).await.unwrap().status, OrderStatus::Processed);
    // The broker redelivers it on the next connection: absorbed, ACKed, priced once.
    let again = FakeBroker::default();
    assert_eq!(handle_delivery(store.as_ref(), &again, &[frame]).await.unwrap(), vec![Applied::Duplicate]);
    assert_eq!(*again.acked.lock().unwrap(), ["ack-9"]);
    assert_eq!(store.order(order).await.unwrap().total_price, Some("180.00".parse().unwrap()), "2 × 90.00, once");
}

#[tokio::test]
async fn a_stray_malformed_message_harms_no_order() {
    let (store, _dir) = store().await;
    let (order, outbox_id) = place(store.as_ref(), "Eve", "P123").await;
    let broker = FakeBroker::default();
    let strays = [
        message(1, &order_body(order, "Eve", r#""lots""#), None),
        message(2, &order_body(order, "Eve", r#""lots""#), Some(OutboxId::new())),
        message(3, &order_body(order, "Eve", "0"), None),
    ];
    let outcomes = handle_delivery(store.as_ref(), &broker, &strays).await.unwrap();
    for outcome in &outcomes {
        assert!(matches!(outcome, Applied::DeadLettered { order_failed: false, .. }), "{outcome:?}");
    }
    assert_eq!(store.order(order).await.unwrap().status, OrderStatus::Pending, "the order is untouched");
    assert_eq!(publish_dead_letters(store.as_ref(), &broker, "/q").await.unwrap().sent, 3, "each stray on the DLQ");
    // Its own outbox message then arrives and prices it.
    let own = message(4, &order_body(order, "Eve", "2"), Some(outbox_id));
    assert!(matches!(handle_delivery(store.as_ref(), &broker, &[own]).await.unwrap()[0], Applied::Processed(_)));
    // A seed-style message (no outbox-id) still works.
    let (seed, _) = place(store.as_ref(), "Seed", "P123").await;
    let seeded = message(5, &order_body(seed, "Seed", "2"), None);
    assert!(matches!(handle_delivery(store.as_ref(), &broker, &[seeded]).await.unwrap()[0], Applied::Processed(_)));
}

#[tokio::test]
async fn a_dead_letter_the_broker_never_takes_is_set_aside_and_blocks_no_other() {
    let (store, _dir) = store().await;
    let broker = FakeBroker::default();
    let strays: Vec<Delivery> = (1..=3).map(|n| message(n, "not json", None)).collect();
    handle_delivery(store.as_ref(), &broker, &strays).await.unwrap();
    *broker.refused.lock().unwrap() = Some("ID:broker-1:2".into());
    let mut rounds = 0;
    let mut undeliverable = 0;
    while broker.sent.lock().unwrap().len() < 2 {
        rounds += 1;
        assert!(rounds <= 10, "the letters behind the refused one go out");
        let published = publish_dead_letters(store.as_ref(), &broker, "/q").await.unwrap();
        undeliverable += published.undeliverable;
    }
    assert_eq!(undeliverable, 1);
    let sent: Vec<String> = broker.dead_letters().into_iter().map(|(id, _)| id).collect();
    assert_eq!(sent, ["ID:broker-1:1", "ID:broker-1:3"]);
    let offered = broker.offered.lock().unwrap().clone();
    let tries = offered.iter().filter(|id| *id == "ID:broker-1:2").count();
    assert_eq!(tries, DEAD_LETTER_ATTEMPTS as usize, "tried {DEAD_LETTER_ATTEMPTS} times, alone after the first");
    let aside = store.undeliverable_dead_letters(10).await.unwrap();
    assert_eq!(aside.len(), 1);
    assert_eq!((aside[0].dead_letter_id.as_str(), aside[0].attempts), ("ID:broker-1:2", DEAD_LETTER_ATTEMPTS));
    assert!(aside[0].last_error.as_deref().unwrap().contains("maximum header length"), "{aside:?}");
    assert!(store.unsent_dead_letters(10).await.unwrap().is_empty(), "never again ahead of the others");
}
