//! SQL Server's own failures as the services meet them, under a steady load:
//! every server session killed, as a failover does; the server stopped for
//! 10 s and started again. Runs when `TEST_DATABASE_URL` names SQL Server
//! (the TDS engine here); on SQLite it is reported as ignored. Stopping the
//! server also takes the commands to do it (`TEST_MSSQL_STOP`,
//! `TEST_MSSQL_START`, run by `sh -c`), and every other test's sessions with
//! it: run that test alone.

use std::sync::Arc;
use std::time::{Duration, Instant};

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::wait_for;
use serde_json::json;

/// Places `n` orders, one each `every`, each retried with its own
/// idempotency key until it is accepted: a 503 during an outage is the
/// client's cue to send the same order again, never a lost one.
fn place_retrying(stack: &Arc<Stack>, n: usize, every: Duration) -> tokio::task::JoinHandle<()> {
    let stack = stack.clone();
    tokio::spawn(async move {
        let mut pace = tokio::time::interval(every);
        for i in 0..n {
            pace.tick().await;
            let body = json!({"customer_name": format!("Failover {i}"), "product_id": "P123", "quantity": 2});
            let key = format!("failover-{i}");
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                match stack.post_json(&body, Some(&key)).await {
                    (200 | 201, _) => break,
                    (503, _) => assert!(Instant::now() < deadline, "order {i} still refused after 60 s"),
                    (status, answer) => panic!("order {i}: {status} {answer}"),
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    })
}

/// Places 300 orders, one each `every`; once 20 are processed runs `fault`
/// (which says what it did), then checks that every service is ready within
/// 15 s of its end and that every order is processed exactly once.
async fn under_load(every: Duration, fault: impl AsyncFnOnce(&Stack) -> String) {
    let stack = Arc::new(Stack::start(&shared_broker_url()).await);
    let orders = 300;
    let load = place_retrying(&stack, orders, every);
    wait_for("orders flowing", Duration::from_secs(60), || async {
        (stack.tally().await.processed >= 20).then_some(())
    })
    .await;
    let done = fault(&stack).await;
    let at = Instant::now();
    let services = [&stack.producer, stack.relay.as_ref().unwrap(), stack.consumer.as_ref().unwrap()];
    wait_for("every service ready again", Duration::from_secs(15), || async {
        for service in services {
            if service.admin_get("/readyz").await.0 != 200 {
                return None;
            }
        }
        Some(())
    })
    .await;
    eprintln!("{done}; every service ready {:?} after", at.elapsed());
    load.await.unwrap();
    stack.wait_until_settled(orders as i64, Duration::from_secs(120)).await;
    stack.assert_all_processed_exactly_once(orders as i64).await;
    Arc::into_inner(stack).expect("no other owner").shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[cfg_attr(not(mssql_database), ignore = "TEST_DATABASE_URL names no SQL Server")]
async fn every_server_session_killed_under_load_loses_nothing_and_the_services_are_ready_within_15_s() {
    under_load(Duration::from_millis(20), async |stack| {
        let killed = schema::testing::kill_mssql_sessions(&stack.database_url).await.unwrap();
        assert!(killed >= 3, "each service had a session: {killed} killed");
        format!("{killed} sessions killed")
    })
    .await;
}

/// Runs the shell command the environment variable `var` holds.
fn run_command(var: &str) {
    let command = std::env::var(var).unwrap_or_else(|_| panic!("{var} holds the command"));
    let status = std::process::Command::new("sh").arg("-c").arg(&command).status().unwrap();
    assert!(status.success(), "{var} ({command}) failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "stops the SQL Server every test uses: run alone, with TEST_MSSQL_STOP and TEST_MSSQL_START set"]
async fn the_server_stopped_for_10_s_under_load_loses_nothing_and_the_services_are_ready_within_15_s_of_its_return() {
    under_load(Duration::from_millis(30), async |stack| {
        run_command("TEST_MSSQL_STOP");
        let stopped = Instant::now();
        wait_for("the outage reported, naming the database", Duration::from_secs(8), || async {
            let (status, readiness) = stack.producer.admin_get("/readyz").await;
            (status == 503 && readiness.to_string().contains("database")).then_some(())
        })
        .await;
        // The ops page still answers, naming the outage beside the services' readiness.
        let ops = reqwest::get(format!("{}/ops/state", stack.base_url())).await.unwrap();
        assert_eq!(ops.status().as_u16(), 200, "the ops page's state answers during the outage");
        let ops: serde_json::Value = ops.json().await.unwrap();
        let cause = ops["database_error"].as_str().unwrap_or_default();
        assert!(cause.contains("database unavailable"), "the ops page names the outage: {ops}");
        assert!(ops["services"][0]["words"].to_string().contains("database"), "and the producer's readiness: {ops}");
        // The outage itself lasts ten seconds: a scenario length, not a wait for a condition.
        tokio::time::sleep_until((stopped + Duration::from_secs(10)).into()).await;
        run_command("TEST_MSSQL_START");
        "the server stopped for 10 s and started".to_string()
    })
    .await;
}
