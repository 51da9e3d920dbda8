//! `orderflowctl` as a script runs it, against a live stack (producer, relay,
//! consumer, a real broker): what it reads, what it refuses and with which
//! exit code, and a dead letter replayed until its order is processed; and
//! against a stand-in producer that answers what it should not (`answers`).

mod answers;

use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::{Stack, TEST_ADMIN_TOKEN};
use e2e::wait_for;
use schema::{OrderId, OrderStatus, Placed};
use serde_json::Value;

/// Runs the binary against `base` with `args`; returns its exit code and stdout.
async fn ctl(base: &str, token: Option<&str>, args: &[&str]) -> (i32, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflowctl"));
    command.env_remove("ADMIN_TOKEN").env_remove("PRODUCER_URL").env_remove("REQUESTED_BY");
    command.args(["--producer-url", base, "--requested-by", "Cal Ctl"]);
    if let Some(token) = token {
        command.env("ADMIN_TOKEN", token);
    }
    let out = command.args(args).output().await.expect("orderflowctl runs");
    (out.status.code().unwrap_or(-1), String::from_utf8_lossy(&out.stdout).into_owned())
}

fn json(out: &str) -> Value {
    serde_json::from_str(out).unwrap_or_else(|e| panic!("{e}: {out}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_scripts_an_incident_with_orderflowctl() {
    let stack = Stack::start(&shared_broker_url()).await;
    let ops = stack.start_ops_producer().await;
    let base = format!("http://{}", ops.http_addr.unwrap());
    let token = Some(TEST_ADMIN_TOKEN);

    // Reads: tables for people, JSON for scripts.
    let (code, table) = ctl(&base, None, &["status"]).await;
    assert_eq!(code, 0, "{table}");
    assert!(table.contains("SERVICE") && table.contains("producer") && table.contains("relay 1"), "{table}");
    let (code, out) = ctl(&base, None, &["status", "--json"]).await;
    assert_eq!((code, json(&out)["services"].as_array().map(Vec::len)), (0, Some(3)), "{out}");

    // An action without the token is refused (1) and changes nothing; with it, done (0).
    let relay = stack.relay.as_ref().unwrap();
    assert_eq!(ctl(&base, None, &["pause"]).await.0, 1);
    assert_eq!(relay.admin_get("/relay/status").await.1["paused"], false);
    assert_eq!(ctl(&base, token, &["pause"]).await.0, 0);
    assert_eq!(relay.admin_get("/relay/status").await.1["paused"], true);
    assert_eq!(ctl(&base, token, &["resume", "--relay", "0"]).await.0, 0);
    assert_eq!(ctl(&base, token, &["pause", "--relay", "7"]).await.0, 1, "no such relay");

    // A dead letter for an unknown product; the product arrives; the letter is replayed.
    let order = schema::NewOrder {
        customer_name: "Cleo".into(),
        product_id: "P555".into(),
        quantity: 1,
        idempotency_key: None,
        traceparent: None,
        tracestate: None,
    };
    let (Placed::Created(order) | Placed::Existing(order)) = stack.store.place_order(order).await.unwrap();
    stack.wait_until_final(1, Duration::from_secs(60)).await;
    let (code, out) = ctl(&base, None, &["dead-letters", "--json"]).await;
    assert_eq!(code, 0);
    let letter = json(&out)[0]["dead_letter_id"].as_str().expect("a dead letter").to_string();
    let (code, groups) = ctl(&base, None, &["groups"]).await;
    assert!(code == 0 && groups.contains("unknown product P555"), "{groups}");
    let lamp = schema::Product { product_id: "P555".into(), name: "Lamp".into(), list_price: "10.00".parse().unwrap() };
    stack.probe.add_product(&lamp).await.unwrap();
    let (code, out) = ctl(&base, token, &["replay", &letter]).await;
    assert_eq!(code, 0, "{out}");
    assert!(out.contains(&letter) && out.contains(&order.order_id.0.to_string()), "{out}");
    wait_for("the replayed order processed", Duration::from_secs(60), || async {
        (stack.store.order(order.order_id).await.ok()?.status == OrderStatus::Processed).then_some(())
    })
    .await;
    let audit = stack.probe.audit().await.unwrap();
    assert!(audit.iter().any(|a| a.action == "replay" && a.requested_by == "Cal Ctl" && a.order_id == order.order_id));

    // Refused (1), malformed (2), unreachable (3).
    assert_eq!(ctl(&base, token, &["replay", &letter]).await.0, 1, "its order is processed: nothing to replay");
    assert_eq!(ctl(&base, token, &["replay", "ID:nowhere"]).await.0, 1);
    assert_eq!(ctl(&base, token, &["retry", "999999"]).await.0, 1);
    assert_eq!(ctl(&base, token, &["retry", "--group", "no such group"]).await.0, 1);
    assert_eq!(ctl(&base, token, &["requeue", &uuid_nil()]).await.0, 1);
    assert_eq!(ctl(&base, token, &["purge", "--older-than", "soon"]).await.0, 2);
    assert_eq!(ctl(&base, token, &["retry", "twelve"]).await.0, 2);
    assert_eq!(ctl(&base, token, &["purge", "--older-than", "1d"]).await.0, 0);
    let nowhere = format!("http://127.0.0.1:{}", e2e::free_port());
    assert_eq!(ctl(&nowhere, None, &["status"]).await.0, 3);
    assert_eq!(stack.store.order(OrderId(order.order_id.0)).await.unwrap().status, OrderStatus::Processed);
    ops.stop().await.unwrap();
    stack.shutdown().await;
}

fn uuid_nil() -> String {
    "00000000-0000-0000-0000-000000000000".into()
}
