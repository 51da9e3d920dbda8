//! A real browser (headless Chromium via chromedriver) places an order through
//! the form, sees field errors for bad input, and watches the order become processed.

use std::os::unix::process::CommandExt as _;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::{free_port, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;
use service::Service as _;

/// chromedriver and every browser process it starts, in a process group of
/// their own that is killed whole when this drops, and by its watchdog within
/// a second of the test process ending any other way (a signal, an abort).
/// Killing chromedriver alone left Chromium running after the test command.
/// Chromium's crash handlers leave the group (`setsid`) and end with the
/// browser. Holds the port it serves and the browser's profile folder.
pub(crate) struct Driver(Child, u16, tempfile::TempDir);

/// Runs chromedriver (`$1`: its port) until it or the test process (`$2`)
/// ends, then kills its whole process group, browser included.
const DRIVER_WATCHDOG: &str = r#"chromedriver --port="$1" >/dev/null 2>&1 </dev/null &
while kill -0 "$2" 2>/dev/null && kill -0 $! 2>/dev/null; do sleep 1; done
kill -KILL 0"#;

impl Drop for Driver {
    fn drop(&mut self) {
        // The group is the watchdog's: it leads it (`process_group(0)`).
        let group = format!("-{}", self.0.id());
        let _ = Command::new("kill").args(["-KILL", "--", &group]).stderr(Stdio::null()).status();
        let _ = self.0.wait();
    }
}

pub(crate) async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("sh")
        .args(["-c", DRIVER_WATCHDOG, "chromedriver-watchdog", &port.to_string(), &std::process::id().to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("sh starts chromedriver (the test command installs chromium-driver)");
    let profile = tempfile::tempdir().unwrap();
    let driver = Driver(child, port, profile);
    let profile = driver.2.path();
    let mut caps = serde_json::Map::new();
    caps.insert(
        "goog:chromeOptions".into(),
        serde_json::json!({
            "binary": "/usr/bin/chromium",
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--disable-quic",
                     "--no-first-run", "--disable-background-networking", "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.display())]
        }),
    );
    // The console, so a test can see what the page's scripts and the CSP reported (`console`).
    caps.insert("goog:loggingPrefs".into(), serde_json::json!({ "browser": "ALL" }));
    let url = format!("http://127.0.0.1:{port}");
    let client = wait_for("chromedriver to accept a session", Duration::from_secs(30), || {
        let (url, caps) = (url.clone(), caps.clone());
        async move { ClientBuilder::new(HttpConnector::new()).capabilities(caps).connect(&url).await.ok() }
    })
    .await;
    (driver, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_places_an_order_in_the_browser_and_sees_it_processed() {
    let stack = Stack::start(&shared_broker_url()).await;
    let (_driver, page) = browser().await;
    page.goto(&stack.base_url()).await.unwrap();

    // Bad input: the form comes back with a message per field and keeps what was typed.
    page.find(Locator::Id("customer_name")).await.unwrap().send_keys("   ").await.unwrap();
    let quantity = page.find(Locator::Id("quantity")).await.unwrap();
    quantity.clear().await.unwrap();
    quantity.send_keys("abc").await.unwrap();
    page.find(Locator::Id("submit")).await.unwrap().click().await.unwrap();
    // Each read finds its element again: a reference taken before the page
    // settled went stale once in CI.
    let shown = |css: &'static str| wait_for(css, Duration::from_secs(10), || text_of(&page, css));
    assert_eq!(shown("#customer_name-error").await, "customer name is required");
    assert_eq!(shown("#quantity-error").await, "quantity must be a whole number");
    let kept = wait_for("the typed quantity kept", Duration::from_secs(10), || async {
        page.find(Locator::Id("quantity")).await.ok()?.prop("value").await.ok()
    })
    .await;
    assert_eq!(kept.as_deref(), Some("abc"));
    assert_eq!(stack.tally().await.orders, 0);

    // Good input: redirected to the order's page, which turns `processed` by itself.
    let name = page.find(Locator::Id("customer_name")).await.unwrap();
    name.clear().await.unwrap();
    name.send_keys("Ajay").await.unwrap();
    page.find(Locator::Css("#product_id option[value='P123']")).await.unwrap().click().await.unwrap();
    let quantity = page.find(Locator::Id("quantity")).await.unwrap();
    quantity.clear().await.unwrap();
    quantity.send_keys("2").await.unwrap();
    page.find(Locator::Id("submit")).await.unwrap().click().await.unwrap();
    wait_for("the order page", Duration::from_secs(10), || async {
        page.current_url().await.ok().filter(|u| u.path().starts_with("/orders/"))
    })
    .await;
    let status = wait_for("the order to be processed in the page", Duration::from_secs(30), || async {
        let text = page.find(Locator::Id("status")).await.ok()?.text().await.ok()?;
        (text == "processed").then_some(text)
    })
    .await;
    assert_eq!(status, "processed");
    // The page reloads itself once the order is final; read the prices from the reloaded page.
    let prices = wait_for("the prices on the order page", Duration::from_secs(30), || async {
        let unit = page.find(Locator::Id("unit_price")).await.ok()?.text().await.ok()?;
        let total = page.find(Locator::Id("total_price")).await.ok()?.text().await.ok()?;
        (unit != "—").then_some((unit, total))
    })
    .await;
    assert_eq!(prices, ("90.00".to_string(), "180.00".to_string()));

    // The home page lists it with its live status.
    page.goto(&stack.base_url()).await.unwrap();
    // The table is rebuilt every second, so an element read may go stale: read until it holds.
    let row = wait_for("the order listed on the home page", Duration::from_secs(10), || async {
        page.find(Locator::Css("#recent-orders tr td.status")).await.ok()?.text().await.ok()
    })
    .await;
    assert_eq!(row, "processed");
    screenshot(&page, "form").await;

    // An order placed elsewhere appears on the open page and turns processed, with no reload.
    let other = stack.place_order("Elsewhere", "P300", 1).await;
    let status = wait_for("the new order to show up processed on the open page", Duration::from_secs(30), || async {
        let first = page.find(Locator::Css("#recent-orders tr")).await.ok()?;
        let id = first.attr("data-order-id").await.ok()??;
        let status = first.find(Locator::Css("td.status")).await.ok()?.text().await.ok()?;
        (id == other.to_string() && status == "processed").then_some(status)
    })
    .await;
    assert_eq!(status, "processed");
    page.close().await.unwrap();
    stack.shutdown().await;
}

/// Saves a screenshot as a test artifact and prints where.
pub(crate) async fn screenshot(page: &Client, name: &str) {
    page.set_window_size(1280, 1600).await.unwrap();
    page.execute("window.scrollTo(0, 0)", vec![]).await.unwrap();
    save_screenshot(name, &page.screenshot().await.unwrap());
}

/// Saves a PNG (of a page or of one element) as the test artifact `name` and prints where.
pub(crate) fn save_screenshot(name: &str, png: &[u8]) {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join(format!("{name}.png"));
    std::fs::write(&path, png).unwrap();
    println!("screenshot: {}", path.canonicalize().unwrap().display());
}

/// The browser console's messages since the last call (chromedriver's log
/// endpoint), e.g. a content security policy violation, as `LEVEL message`.
pub(crate) async fn console(driver: &Driver, page: &Client) -> Vec<String> {
    let session = page.session_id().await.unwrap().expect("a session");
    let url = format!("http://127.0.0.1:{}/session/{session}/se/log", driver.1);
    let answer: serde_json::Value = reqwest::Client::new()
        .post(url)
        .json(&serde_json::json!({ "type": "browser" }))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("chromedriver gives the browser log")
        .json()
        .await
        .expect("the log as JSON");
    let entries = answer["value"].as_array().cloned().unwrap_or_default();
    entries
        .iter()
        .map(|e| format!("{} {}", e["level"].as_str().unwrap_or("?"), e["message"].as_str().unwrap_or("")))
        .collect()
}

/// Clicks the element with this id, waiting for it to be (re-)rendered first.
pub(crate) async fn click_id(page: &Client, id: &str) {
    wait_for(&format!("#{id} clickable"), Duration::from_secs(20), || async {
        page.find(Locator::Id(id)).await.ok()?.click().await.ok()
    })
    .await;
}

pub(crate) async fn text_of(page: &Client, css: &str) -> Option<String> {
    page.find(Locator::Css(css)).await.ok()?.text().await.ok()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_runs_the_pipeline_from_the_ops_page() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    let poison = stack.fill_outbox(1, 100_000).await.pop().unwrap();
    let mut strict = stack.relay_config();
    strict.max_attempts = 1;
    let relay = e2e::service::Service::start(relay::App::build(strict)).await.unwrap();
    stack.consumer = Some(stack.start_consumer().await);
    // An order for a product the catalogue does not have (yet): placed past the API's check.
    let order = schema::NewOrder {
        customer_name: "Olga".into(),
        product_id: "P777".into(),
        quantity: 1,
        idempotency_key: None,
        traceparent: None,
        tracestate: None,
    };
    let schema::Placed::Created(order) = stack.store.place_order(order).await.unwrap() else { panic!("a new order") };
    let failed = order.order_id.0;
    stack.wait_until_final(1, Duration::from_secs(30)).await;
    wait_for("the poison row parked", Duration::from_secs(30), || async {
        (stack.tally().await.parked == 1).then_some(())
    })
    .await;
    let mut config = e2e::stack::producer_config(&stack.database_url);
    config.ops_relays = vec![format!("http://{}", relay.admin_addr)];
    config.ops_consumers = vec![format!("http://{}", stack.consumer.as_ref().unwrap().admin_addr)];
    config.service.admin_token = Some(e2e::stack::TEST_ADMIN_TOKEN.into());
    let ops = e2e::service::Service::start(producer::App::build(config)).await.unwrap();
    let base = format!("http://{}", ops.http_addr.unwrap());

    let (_driver, page) = browser().await;
    page.goto(&format!("{base}/ops")).await.unwrap();
    let ready = wait_for("every service ready on the page", Duration::from_secs(20), || async {
        let rows = page.find_all(Locator::Css("#services tr")).await.ok()?;
        let mut texts = Vec::new();
        for row in rows {
            texts.push(row.text().await.ok()?);
        }
        (texts.len() == 3 && texts.iter().all(|t| t.contains("ready") && !t.contains("NOT READY"))).then_some(texts)
    })
    .await;
    assert!(ready[1].contains("relay 1") && ready[2].contains("consumer 1"), "{ready:?}");
    // Services in words, not JSON.
    assert!(ready[0].contains("database ok") && ready.iter().all(|t| !t.contains('{')), "{ready:?}");
    // The broker's own figures of the order queue, through the relay (which
    // asks every 5 s; an answer can miss its 2 s on a busy machine).
    let queue = stack.queue.strip_prefix("/queue/").unwrap().to_string();
    wait_for("the broker's figures on the page", Duration::from_secs(30), || async {
        let note = text_of(&page, "#broker-note").await?;
        let rows = text_of(&page, "#broker").await?;
        (note.starts_with("As the broker counts them") && rows.contains(&queue)).then_some(())
    })
    .await;
    assert_eq!(text_of(&page, "#outbox-parked").await.as_deref(), Some("1"));
    let parked = text_of(&page, "#parked").await.unwrap();
    assert!(parked.contains(&poison.to_string()) && parked.contains("exceeds the 65536-byte limit"), "{parked}");
    let failures = text_of(&page, "#failed").await.unwrap();
    assert!(failures.contains("unknown product P777"), "{failures}");
    let letters = wait_for("the dead letter on the page, sent to the DLQ", Duration::from_secs(20), || async {
        text_of(&page, "#dead-letters").await.filter(|t| t.contains("unknown product P777") && !t.contains("waiting"))
    })
    .await;
    assert!(letters.contains(&failed.to_string()), "{letters}");

    // An action without a name is refused on the page; with the wrong token by the server.
    click_id(&page, "pause-0").await;
    let said = wait_for("the page asks who acts", Duration::from_secs(10), || async {
        text_of(&page, "#ops-message").await.filter(|t| !t.is_empty())
    })
    .await;
    assert!(said.contains("Say who you are"), "{said}");
    page.find(Locator::Id("operator-name")).await.unwrap().send_keys("Olivia Ops").await.unwrap();
    page.find(Locator::Id("operator-token")).await.unwrap().send_keys("not-the-token").await.unwrap();
    click_id(&page, "pause-0").await;
    wait_for("a 401 shown", Duration::from_secs(10), || async {
        text_of(&page, "#ops-message").await.filter(|t| t.contains("401"))
    })
    .await;
    assert_eq!(relay.admin_get("/relay/status").await.1["paused"], false, "refused: nothing changed");
    page.find(Locator::Id("operator-token")).await.unwrap().clear().await.unwrap();
    page.find(Locator::Id("operator-token")).await.unwrap().send_keys(e2e::stack::TEST_ADMIN_TOKEN).await.unwrap();

    // Pause and resume the relay; requeue the parked row; fix the catalogue and retry the failed order.
    click_id(&page, "pause-0").await;
    wait_for("the relay paused", Duration::from_secs(10), || async {
        (relay.admin_get("/relay/status").await.1["paused"] == true).then_some(())
    })
    .await;
    click_id(&page, "resume-0").await;
    wait_for("the relay resumed", Duration::from_secs(10), || async {
        (relay.admin_get("/relay/status").await.1["paused"] == false).then_some(())
    })
    .await;
    click_id(&page, &format!("requeue-{poison}")).await;
    // Acted on before the next click, so that the audit's order is the clicks' order.
    wait_for("the requeue recorded", Duration::from_secs(20), || async {
        let audit = stack.probe.audit().await.ok()?;
        audit.iter().any(|a| a.action == "requeue").then_some(())
    })
    .await;
    let lamp =
        schema::Product { product_id: "P777".into(), name: "Desk lamp".into(), list_price: "40.00".parse().unwrap() };
    stack.probe.add_product(&lamp).await.unwrap();
    click_id(&page, &format!("retry-{failed}")).await;
    wait_for("the retried order processed", Duration::from_secs(30), || async {
        let o = stack.store.order(schema::OrderId(failed)).await.ok()?;
        (o.status == schema::OrderStatus::Processed).then_some(())
    })
    .await;
    let audit = wait_for("the audit list on the page", Duration::from_secs(20), || async {
        let text = text_of(&page, "#audit").await?;
        ["pause", "resume", "requeue", "retry"].iter().all(|a| text.contains(a)).then_some(text)
    })
    .await;
    assert!(audit.contains("Olivia Ops"), "{audit}");
    let actions: Vec<String> = stack.probe.audit().await.unwrap().into_iter().map(|a| a.action).collect();
    assert_eq!(actions, ["pause", "resume", "requeue", "retry"], "every action written to outbox_audit");
    screenshot(&page, "ops").await;

    // The order page shows the journey of the retried order.
    page.goto(&format!("{base}/orders/{failed}")).await.unwrap();
    let steps = wait_for("the journey", Duration::from_secs(10), || async { text_of(&page, "#journey").await }).await;
    assert!(steps.contains("placed") && steps.contains("published") && steps.contains("processed"), "{steps}");
    assert!(steps.contains(" ms") || steps.contains(" s"), "each step says how long it took: {steps}");
    screenshot(&page, "order").await;
    page.close().await.unwrap();
    ops.stop().await.unwrap();
    relay.stop().await.unwrap();
    stack.shutdown().await;
}

/// The Broker panel follows the queue as the broker counts it: what the relay
/// sends while no consumer listens raises the depth on the page, and a
/// consumer takes it back to 0.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_broker_panel_shows_the_queue_depth_moving() {
    let mut stack = Stack::start_producer(&shared_broker_url()).await;
    stack.relay = Some(stack.start_relay().await);
    let ops = stack.start_ops_producer().await;
    for i in 0..5 {
        stack.place_order(&format!("depth {i}"), "P123", 1).await;
    }
    let (_driver, page) = browser().await;
    page.goto(&format!("http://{}/ops", ops.http_addr.unwrap())).await.unwrap();
    let queue = stack.queue.strip_prefix("/queue/").unwrap().to_string();
    // The relay asks the broker every 5 s.
    let figures = |queue: String| {
        let page = page.clone();
        async move {
            let mut cells = Vec::new();
            for n in 2..=5 {
                let css = format!("#broker tr[data-queue='{queue}'] td:nth-child({n})");
                cells.push(text_of(&page, &css).await?.parse::<u64>().ok()?);
            }
            Some(cells)
        }
    };
    let waiting = wait_for("five messages waiting on the page", Duration::from_secs(40), || async {
        figures(queue.clone()).await.filter(|f| f[0] == 5)
    })
    .await;
    assert_eq!((waiting[1], waiting[2]), (0, 5), "depth, consumers, enqueued, dequeued: {waiting:?}");
    stack.consumer = Some(stack.start_consumer().await);
    let drained = wait_for("the depth back to 0 on the page", Duration::from_secs(40), || async {
        figures(queue.clone()).await.filter(|f| f[0] == 0 && f[3] == 5)
    })
    .await;
    assert_eq!(drained[1], 1, "one consumer: {drained:?}");
    stack.wait_until_final(5, Duration::from_secs(30)).await;
    stack.assert_all_processed_exactly_once(5).await;
    drop(ops);
    stack.shutdown().await;
}
