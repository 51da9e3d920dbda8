//! The ops page's live charts in a real browser: while orders flow, the
//! producer's sampler fills its ring, `/ops/series` serves it, and the page
//! draws every chart under the strict content security policy.

use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::service::Service;
use e2e::stack::{Stack, producer_config};
use e2e::wait_for;
use fantoccini::Locator;
use serde_json::{Value, json};
use service::Service as _;

use crate::browser::{browser, console, save_screenshot};

/// Figures each chart must have before the test looks at the page.
const POINTS: usize = 15;

/// How many samples of `key` carry a figure (and, with `positive`, one above zero).
fn figures(series: &Value, key: &str, positive: bool) -> usize {
    let column = series["series"][key].as_array().cloned().unwrap_or_default();
    column.iter().filter_map(Value::as_f64).filter(|v| !positive || *v > 0.0).count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_ops_page_charts_orders_backlog_and_latency_as_orders_flow() {
    let stack = Stack::start(&shared_broker_url()).await;
    let mut config = producer_config(&stack.database_url);
    config.ops_relays = vec![format!("http://{}", stack.relay.as_ref().unwrap().admin_addr)];
    // A second consumer that never answers: its figures are a gap, the rest still drawn.
    let unreachable = format!("http://127.0.0.1:{}", e2e::free_port());
    config.ops_consumers = vec![format!("http://{}", stack.consumer.as_ref().unwrap().admin_addr), unreachable];
    config.charts_sample_ms = 200;
    let ops = Service::start(producer::App::build(config)).await.unwrap();
    let base = format!("http://{}", ops.http_addr.unwrap());

    let (driver, page) = browser().await;
    // Tall enough for the whole charts section in one element screenshot.
    page.set_window_size(1280, 2400).await.unwrap();
    page.goto(&format!("{base}/ops")).await.unwrap();

    // Orders go through this producer, whose own counter is the "placed" series;
    // one more each turn until every series has figures.
    let (placed, http) = (AtomicI64::new(0), reqwest::Client::new());
    let (placed, http, base) = (&placed, &http, &base);
    let series = wait_for("every series of /ops/series to have figures", Duration::from_secs(90), || async move {
        let order = json!({"customer_name": "Charts", "product_id": "P123", "quantity": 1});
        let answer = http.post(format!("{base}/api/orders")).json(&order).send().await.ok()?;
        assert_eq!(answer.status(), 201, "order accepted");
        placed.fetch_add(1, Ordering::Relaxed);
        let series: Value = http.get(format!("{base}/ops/series")).send().await.ok()?.json().await.ok()?;
        let rates = ["placed_per_second", "processed_per_second", "p50_seconds", "p99_seconds"];
        let drawn = rates.iter().all(|k| figures(&series, k, true) >= POINTS)
            && ["backlog", "oldest_age_seconds"].iter().all(|k| figures(&series, k, false) >= POINTS);
        drawn.then_some(series)
    })
    .await;
    assert_eq!(series["interval_seconds"], 0.2);
    let t = series["series"]["t"].as_array().unwrap();
    assert!(t.windows(2).all(|w| w[0].as_f64() < w[1].as_f64()), "samples oldest first");
    assert!(t.len() <= 900, "the ring is bounded: {} samples", t.len());
    assert!(figures(&series, "p50_seconds", true) <= figures(&series, "processed_per_second", false));

    // The page draws each chart on a canvas and says how many figures it holds.
    for id in ["chart-rates", "chart-backlog", "chart-latency"] {
        let points = wait_for(&format!("#{id} drawn with points"), Duration::from_secs(30), || async {
            let chart = page.find(Locator::Id(id)).await.ok()?;
            chart.find(Locator::Css("canvas")).await.ok()?;
            let points: usize = chart.attr("data-points").await.ok()??.parse().ok()?;
            (points >= POINTS).then_some(points)
        })
        .await;
        assert!(points >= POINTS, "{id}: {points}");
    }
    let note = page.find(Locator::Id("charts-note")).await.unwrap().text().await.unwrap();
    assert!(note.starts_with("Sampled every 0.2 s"), "{note}");
    let legend = page.find(Locator::Id("chart-latency")).await.unwrap().text().await.unwrap();
    assert!(legend.contains("p50") && legend.contains("p99"), "{legend}");
    // uPlot draws under the page's CSP: no violation and no script error in
    // the console (which does reach the test: the marker shows it).
    page.execute("console.error('charts-test-marker')", vec![]).await.unwrap();
    let messages = console(&driver, &page).await;
    assert!(messages.iter().any(|m| m.contains("charts-test-marker")), "{messages:?}");
    let complaints: Vec<&String> = messages
        .iter()
        .filter(|m| m.contains("Content Security Policy") || m.contains("Uncaught") || m.contains("uPlot"))
        .collect();
    assert!(complaints.is_empty(), "{complaints:?}");
    let charts = page.find(Locator::Id("charts")).await.unwrap();
    save_screenshot("charts", &charts.screenshot().await.unwrap());

    page.close().await.unwrap();
    let n = placed.load(Ordering::Relaxed);
    stack.wait_until_settled(n, Duration::from_secs(60)).await;
    stack.assert_all_processed_exactly_once(n).await;
    ops.stop().await.unwrap();
    stack.shutdown().await;
}
