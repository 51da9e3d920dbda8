//! A real Prometheus scrapes the three services during an end-to-end run;
//! every PromQL expression of the dashboard and the alert rules is evaluated
//! through its HTTP API and must return data, and every `/metrics` page must
//! pass `promtool check metrics` and name its metrics for its service.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::{free_port, metric_value, wait_for};
use serde_json::Value;

struct Prometheus {
    child: Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn repo(path: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..").join(path)
}

fn start_prometheus(stack: &Stack) -> Prometheus {
    let dir = tempfile::tempdir().unwrap();
    let rules = repo("observability/prometheus/alerts.yml").canonicalize().unwrap();
    let target = |job: &str, addr: std::net::SocketAddr| {
        format!("  - job_name: {job}\n    static_configs:\n      - targets: [\"{addr}\"]\n")
    };
    let config = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\nrule_files:\n  - {}\nscrape_configs:\n{}{}{}",
        rules.display(),
        target("producer", stack.producer.admin_addr),
        target("relay", stack.relay.as_ref().unwrap().admin_addr),
        target("consumer", stack.consumer.as_ref().unwrap().admin_addr),
    );
    let config_path = dir.path().join("prometheus.yml");
    std::fs::write(&config_path, config).unwrap();
    let port = free_port();
    let child = Command::new("prometheus")
        .arg(format!("--config.file={}", config_path.display()))
        .arg(format!("--storage.tsdb.path={}", dir.path().join("data").display()))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .arg("--log.level=warn")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus is installed (the test command installs Debian's prometheus package)");
    Prometheus { child, url: format!("http://127.0.0.1:{port}"), _dir: dir }
}

async fn query(prometheus: &Prometheus, expr: &str) -> Option<Vec<Value>> {
    let response = reqwest::Client::new()
        .get(format!("{}/api/v1/query", prometheus.url))
        .query(&[("query", expr)])
        .send()
        .await
        .ok()?;
    let body: Value = response.json().await.ok()?;
    assert_eq!(body["status"], "success", "query failed: {expr}\n{body}");
    body["data"]["result"].as_array().cloned()
}

/// Every expression of the dashboard (with Grafana's `$__rate_interval` as 1m).
fn dashboard_queries() -> Vec<String> {
    let text = std::fs::read_to_string(repo("observability/grafana/dashboards/pipeline.json")).unwrap();
    let dashboard: Value = serde_json::from_str(&text).unwrap();
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().into_iter().flatten() {
            out.push(target["expr"].as_str().unwrap().replace("$__rate_interval", "1m"));
        }
    }
    out
}

/// The query parts of every alert: each side of `and`/`or`, without its comparison.
fn alert_queries(path: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(path).unwrap();
    let mut out = Vec::new();
    for line in text.lines() {
        let Some(expr) = line.trim().strip_prefix("expr:") else { continue };
        for part in expr.split(" and ").flat_map(|p| p.split(" or ")) {
            let part = part.trim();
            let cut = [" == ", " != ", " >= ", " <= ", " > ", " < "].iter().filter_map(|op| part.rfind(op)).max();
            out.push(cut.map_or(part, |i| &part[..i]).trim().to_string());
        }
    }
    out
}

fn promtool_check_metrics(service: &str, text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool is installed");
    child.stdin.take().unwrap().write_all(text.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    let report = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{service} /metrics fails promtool check metrics:\n{report}");
}

/// One prefix per service: every `orderflow_` metric a service exports is
/// `orderflow_<service>_*`, but for those of the registry all services share.
fn assert_named_for(service: &str, text: &str) {
    const SHARED: [&str; 2] = ["orderflow_build_info", "orderflow_db_round_trips_total"];
    let own = format!("orderflow_{service}_");
    let strays: Vec<&str> = text
        .lines()
        .filter_map(|line| line.strip_prefix("# TYPE ")?.split(' ').next())
        .filter(|name| name.starts_with("orderflow_") && !name.starts_with(&own) && !SHARED.contains(name))
        .collect();
    assert!(strays.is_empty(), "{service} exports metrics outside {own}*: {strays:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prometheus_scrapes_the_pipeline_and_every_dashboard_and_alert_query_returns_data() {
    let stack = Arc::new(Stack::start(&shared_broker_url()).await);
    let prometheus = start_prometheus(&stack);

    // Steady traffic while Prometheus scrapes: orders, reads, one invalid order.
    let running = Arc::new(AtomicBool::new(true));
    let traffic = {
        let (stack, running) = (stack.clone(), running.clone());
        tokio::spawn(async move {
            let mut placed = 0i64;
            while running.load(Ordering::Relaxed) {
                let id = stack.place_order(&format!("Watched {placed}"), "P123", 1).await;
                placed += 1;
                let _ = reqwest::get(format!("{}/api/orders/{id}", stack.base_url())).await;
                if placed % 50 == 0 {
                    stack
                        .post_json(&serde_json::json!({"customer_name": "", "product_id": "P123", "quantity": 1}), None)
                        .await;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            placed
        })
    };
    wait_for("five scrapes of every service with traffic in them", Duration::from_secs(60), || async {
        let scrapes = query(&prometheus, "min(count_over_time(up[1m])) >= 5 and min(up) == 1").await?;
        let processed =
            query(&prometheus, "sum(increase(orderflow_consumer_messages_total{outcome=\"processed\"}[1m])) > 0")
                .await?;
        (!scrapes.is_empty() && !processed.is_empty()).then_some(())
    })
    .await;

    let mut queries = dashboard_queries();
    queries.extend(alert_queries(&repo("observability/prometheus/alerts.yml")));
    assert!(queries.len() >= 40, "all queries were found ({})", queries.len());
    let mut empty = Vec::new();
    for expr in &queries {
        if query(&prometheus, expr).await.unwrap_or_default().is_empty() {
            empty.push(expr.clone());
        }
    }
    assert!(empty.is_empty(), "queries that return no data (typo'd metric or label?):\n{}", empty.join("\n"));

    running.store(false, Ordering::Relaxed);
    let placed = traffic.await.unwrap();
    stack.wait_until_settled(placed, Duration::from_secs(30)).await;
    let producer = stack.producer.metrics().await;
    let relay = stack.relay.as_ref().unwrap().metrics().await;
    let consumer = stack.consumer.as_ref().unwrap().metrics().await;
    for (service, text) in [("producer", &producer), ("relay", &relay), ("consumer", &consumer)] {
        promtool_check_metrics(service, text);
        assert_named_for(service, text);
        assert_eq!(
            metric_value(text, &format!("orderflow_build_info{{service=\"{service}\",version=\"0.1.0\"}}")),
            Some(1.0)
        );
        assert!(
            metric_value(text, "process_resident_memory_bytes").unwrap_or(0.0) > 1e6,
            "{service} reports its memory"
        );
    }
    let placed_metric = metric_value(&producer, "orderflow_producer_orders_placed_total").unwrap();
    assert_eq!(placed_metric, placed as f64, "orders placed");
    assert_eq!(metric_value(&relay, "orderflow_relay_published_total"), Some(placed_metric), "placed = published");
    assert_eq!(
        metric_value(&consumer, "orderflow_consumer_messages_total{outcome=\"processed\"}"),
        Some(placed_metric),
        "published = processed"
    );
    assert!(
        metric_value(&producer, "orderflow_producer_validation_rejections_total{field=\"customer_name\"}").unwrap()
            >= 1.0
    );
    drop(prometheus);
    Arc::into_inner(stack).expect("no other owner").shutdown().await;
}
