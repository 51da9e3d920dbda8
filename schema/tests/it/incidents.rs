//! The contract of `IncidentAdmin` (failure groups, group retries, dead-letter
//! replays), expanded for both backends by `contract_tests!` in `contract.rs`.

use std::sync::Arc;
use std::time::Duration;

use schema::{Applied, Delivery, OrderId, OrderStatus, OutboxId, Store, StoreError};

async fn place(store: &Arc<dyn Store>, product: &str) -> OrderId {
    crate::contract::place(store, product, 1).await
}

fn letter(id: &str, outbox_id: Option<OutboxId>, order_id: Option<OrderId>, rejection: Option<&str>) -> Delivery {
    Delivery {
        dead_letter_id: id.into(),
        outbox_id,
        order_id,
        rejection: rejection.map(str::to_string),
        headers: [("message-id".into(), id.into())].into(),
        body: br#"{"order_id": 1}"#[..].into(),
    }
}

/// Each order's own message through the consumer's unit of work (claimed and
/// marked published first, as the relay does); returns what each became.
async fn deliver_own(store: &Arc<dyn Store>, orders: &[OrderId]) -> Vec<Applied> {
    let rows = store.claim_batch("incidents", 1000, Duration::from_secs(30)).await.unwrap();
    let ids: Vec<OutboxId> = rows.iter().map(|r| r.outbox_id).collect();
    store.mark_published(&ids).await.unwrap();
    let mine = |o: OrderId| rows.iter().filter(move |r| r.order_id == o).map(|r| r.outbox_id).next_back();
    let batch: Vec<Delivery> =
        orders.iter().map(|o| letter(&format!("ID:own-{}", OutboxId::new()), mine(*o), Some(*o), None)).collect();
    store.apply(&batch).await.unwrap()
}

async fn statuses(store: &Arc<dyn Store>, orders: &[OrderId]) -> Vec<OrderStatus> {
    let mut out = Vec::new();
    for o in orders {
        out.push(store.order(*o).await.unwrap().status);
    }
    out
}

pub async fn failures_are_grouped_by_the_fingerprint_of_their_reason(store: Arc<dyn Store>) {
    let p777 = [place(&store, "P777").await, place(&store, "P777").await, place(&store, "P777").await];
    let p888 = place(&store, "P888").await;
    let mut all = p777.to_vec();
    all.push(p888);
    let applied = deliver_own(&store, &all).await;
    assert!(applied.iter().all(|a| matches!(a, Applied::DeadLettered { order_failed: true, .. })), "{applied:?}");
    let strays =
        [letter("ID:stray-1", None, Some(OrderId(777_001)), None), letter("ID:stray-2", None, Some(OrderId(9)), None)];
    store.apply(&strays).await.unwrap();

    let groups = store.failure_groups().await.unwrap();
    let mut seen: Vec<(&str, u64, u64)> =
        groups.iter().map(|g| (g.fingerprint.as_str(), g.failed_orders, g.dead_letters)).collect();
    seen.sort();
    assert_eq!(seen, [("order # not found", 0, 2), ("unknown product P777", 3, 3), ("unknown product P888", 1, 1)]);
    assert!(groups.windows(2).all(|w| w[0].newest_at >= w[1].newest_at), "newest group first");
    let missing = groups.iter().find(|g| g.fingerprint == "order # not found").unwrap();
    assert!(missing.example.starts_with("order ") && missing.example.ends_with(" not found"), "{}", missing.example);
}

pub async fn a_failure_group_is_retried_in_one_action_each_audited(store: Arc<dyn Store>) {
    let p777 = [place(&store, "P777").await, place(&store, "P777").await];
    let p888 = place(&store, "P888").await;
    deliver_own(&store, &[p777[0], p777[1], p888]).await;
    let before = store.order_counts().await.unwrap();
    assert_eq!((before.failed, before.pending), (3, 0));

    let mut retried = store.retry_group("unknown product P777", "Grace Group").await.unwrap();
    retried.sort_by_key(|(o, _)| *o);
    assert_eq!(retried.iter().map(|(o, _)| *o).collect::<Vec<_>>(), p777);
    assert_eq!(statuses(&store, &p777).await, [OrderStatus::Pending, OrderStatus::Pending]);
    assert_eq!(store.order(p888).await.unwrap().status, OrderStatus::Failed, "another group is left alone");
    let after = store.order_counts().await.unwrap();
    assert_eq!((after.failed, after.pending), (1, 2), "the counters follow");
    let rows = store.claim_batch("incidents", 100, Duration::from_secs(30)).await.unwrap();
    let mut fresh: Vec<OutboxId> = rows.iter().map(|r| r.outbox_id).collect();
    fresh.sort_by_key(|id| id.0);
    let mut expected: Vec<OutboxId> = retried.iter().map(|(_, id)| *id).collect();
    expected.sort_by_key(|id| id.0);
    assert_eq!(fresh, expected, "one fresh outbox row per order, due now");
    let audit = store.recent_audit(10).await.unwrap();
    assert_eq!(audit.iter().filter(|a| a.action == "retry" && a.requested_by == "Grace Group").count(), 2);

    assert!(store.retry_group("unknown product P777", "Grace Group").await.unwrap().is_empty(), "nothing left");
    assert!(store.retry_group("no such group", "Grace Group").await.unwrap().is_empty());
    let groups = store.failure_groups().await.unwrap();
    let p777_group = groups.iter().find(|g| g.fingerprint == "unknown product P777").unwrap();
    assert_eq!(p777_group.failed_orders, 0, "retried orders leave the group; their dead letters stay open");
}

pub async fn a_dead_letter_is_replayed_through_a_fresh_outbox_row_of_its_order(store: Arc<dyn Store>) {
    // A message of an open order that failed its checks: the order stays open.
    let open = place(&store, "P123").await;
    store.apply(&[letter("ID:bad-qty", None, Some(open), Some("quantity \"lots\" is not a number"))]).await.unwrap();
    // An order whose own message failed: the order is failed.
    let failed = place(&store, "P777").await;
    let first = store.claim_batch("incidents", 100, Duration::from_secs(30)).await.unwrap();
    store.mark_published(&first.iter().map(|r| r.outbox_id).collect::<Vec<_>>()).await.unwrap();
    let own = first.iter().find(|r| r.order_id == failed).unwrap().outbox_id;
    store.apply(&[letter("ID:unknown", Some(own), Some(failed), None)]).await.unwrap();
    store.apply(&[letter("ID:no-order", None, None, Some("message body is not valid JSON"))]).await.unwrap();

    let resent = store.replay_dead_letter("ID:bad-qty", "Rita Replay").await.unwrap();
    assert_eq!((resent.dead_letter_id.as_str(), resent.order_id), ("ID:bad-qty", open));
    let retried = store.replay_dead_letter("ID:unknown", "Rita Replay").await.unwrap();
    assert_eq!(retried.order_id, failed);
    assert_ne!(retried.outbox_id, own, "a fresh outbox id: the old one is in the inbox");
    assert_eq!(store.order(failed).await.unwrap().status, OrderStatus::Pending, "a failed order is retried");

    // The relay publishes the fresh rows and the consumer checks them in full.
    let rows = store.claim_batch("incidents", 100, Duration::from_secs(30)).await.unwrap();
    let mut due: Vec<OutboxId> = rows.iter().map(|r| r.outbox_id).collect();
    due.sort_by_key(|id| id.0);
    let mut expected = vec![resent.outbox_id, retried.outbox_id];
    expected.sort_by_key(|id| id.0);
    assert_eq!(due, expected);
    let body: serde_json::Value = serde_json::from_str(&rows[0].payload).unwrap();
    assert_eq!(body["outbox_id"], rows[0].outbox_id.to_string(), "the order's own message, with its new id");
    let applied = store.apply(&[letter("ID:again", Some(resent.outbox_id), Some(open), None)]).await.unwrap();
    assert!(matches!(&applied[0], Applied::Processed(o) if o.order_id == open), "{applied:?}");
    let other = letter("ID:other", None, Some(open), Some("quantity \"many\" is not a number"));
    store.apply(&[other]).await.unwrap();
    let groups = store.failure_groups().await.unwrap();
    assert!(groups.iter().all(|g| !g.fingerprint.starts_with("quantity")), "a processed order's letters are settled");

    let listed = store.recent_dead_letters(10).await.unwrap();
    let replayed: Vec<&str> =
        listed.iter().filter(|l| l.replayed_at.is_some()).map(|l| l.dead_letter_id.as_str()).collect();
    assert_eq!(replayed.len(), 2, "{listed:?}");
    let audit = store.recent_audit(10).await.unwrap();
    assert_eq!(audit.iter().filter(|a| a.action == "replay" && a.requested_by == "Rita Replay").count(), 2);

    // Nothing to send: a processed order, no order; a stray id is not found.
    assert!(matches!(store.replay_dead_letter("ID:bad-qty", "Rita").await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.replay_dead_letter("ID:no-order", "Rita").await, Err(StoreError::Conflict(_))));
    assert!(matches!(store.replay_dead_letter("ID:nowhere", "Rita").await, Err(StoreError::NotFound)));
    let listed = store.recent_dead_letters(10).await.unwrap();
    assert!(
        listed.iter().any(|l| l.dead_letter_id == "ID:no-order" && l.replayed_at.is_none()),
        "a refusal marks nothing"
    );
}

pub async fn a_group_replay_sends_each_order_once_and_says_what_it_skipped(store: Arc<dyn Store>) {
    let open = place(&store, "P123").await;
    let why = "quantity \"lots\" is not a number";
    let letters = [
        letter("ID:q-1", None, Some(open), Some(why)),
        letter("ID:q-2", None, Some(open), Some(why)),
        letter("ID:q-3", None, None, Some(why)),
    ];
    store.apply(&letters).await.unwrap();
    let key = schema::incidents::fingerprint(why);
    let report = store.replay_group(&key, "Gus Group").await.unwrap();
    assert_eq!(report.replayed.len(), 2, "{report:?}");
    assert_eq!(report.replayed[0].outbox_id, report.replayed[1].outbox_id, "one fresh row for one order");
    assert_eq!(report.skipped.len(), 1);
    assert_eq!(report.skipped[0].dead_letter_id, "ID:q-3");
    let rows = store.claim_batch("incidents", 100, Duration::from_secs(30)).await.unwrap();
    assert_eq!(rows.iter().filter(|r| r.order_id == open).count(), 2, "its first row and one replay");
    let group = store.failure_groups().await.unwrap().into_iter().find(|g| g.fingerprint == key).unwrap();
    assert_eq!(group.dead_letters, 1, "replayed letters leave the group");
    let again = store.replay_group(&key, "Gus Group").await.unwrap();
    assert_eq!((again.replayed.len(), again.skipped.len()), (0, 1), "a replayed letter is never sent twice");
    assert_eq!(store.replay_group("no such group", "Gus").await.unwrap(), schema::ReplayReport::default());
}
