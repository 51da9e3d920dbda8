//! A real browser (headless Chromium via chromedriver) places an order through
//! the form, sees field errors for bad input, and watches the order become processed.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::{free_port, wait_for};
use fantoccini::{Client, ClientBuilder, Locator};
use hyper_util::client::legacy::connect::HttpConnector;

struct Driver(Child);

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

async fn browser() -> (Driver, Client) {
    let port = free_port();
    let child = Command::new("chromedriver")
        .arg(format!("--port={port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("chromedriver is installed (the test command installs chromium-driver)");
    let driver = Driver(child);
    let profile = tempfile::tempdir().unwrap().keep();
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
    let name_error = page.wait().for_element(Locator::Id("customer_name-error")).await.unwrap();
    assert_eq!(name_error.text().await.unwrap(), "customer name is required");
    let qty_error = page.find(Locator::Id("quantity-error")).await.unwrap().text().await.unwrap();
    assert_eq!(qty_error, "quantity must be a whole number");
    assert_eq!(page.find(Locator::Id("quantity")).await.unwrap().prop("value").await.unwrap().as_deref(), Some("abc"));
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
