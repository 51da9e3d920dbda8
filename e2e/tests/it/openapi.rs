//! The JSON API against its own OpenAPI description: the document lists every
//! route, and schemathesis (installed by the test command) fuzzes a live
//! producer and finds no 5xx and no answer outside the description.

use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;

/// No 5xx, and every status, content type, body and header as documented.
const CHECKS: [&str; 5] = [
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_schema_conformance",
    "response_headers_conformance",
];

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_api_keeps_to_its_openapi_description_under_fuzzing() {
    let stack = Stack::start_producer(&shared_broker_url()).await;
    let url = format!("{}/api/openapi.json", stack.base_url());
    let doc: serde_json::Value = reqwest::get(&url).await.unwrap().json().await.unwrap();
    let paths: Vec<&str> = doc["paths"].as_object().unwrap().keys().map(String::as_str).collect();
    assert_eq!(paths, ["/api/orders", "/api/orders/{id}", "/api/products", "/api/stats"]);
    let create = &doc["paths"]["/api/orders"]["post"]["responses"];
    for status in ["200", "201", "400", "413", "422", "503"] {
        assert!(create[status].is_object(), "POST /api/orders documents {status}");
    }
    assert!(doc["components"]["schemas"]["Order"]["properties"]["status"].is_object());

    let Some(schemathesis) = std::env::var_os("SCHEMATHESIS") else {
        assert!(std::env::var_os("CI").is_none(), "CI runs schemathesis: run the suite with scripts/test.sh");
        eprintln!("SCHEMATHESIS is not set (scripts/test.sh installs it): the fuzzing part did not run");
        return;
    };
    // Its cache goes to a folder of its own, not into the source tree.
    let workdir = tempfile::tempdir().unwrap();
    let run = tokio::process::Command::new(schemathesis)
        .args(["run", &url, "--seed", "20261201", "--max-examples", "40", "--request-timeout", "10"])
        .arg("--checks")
        .arg(CHECKS.join(","))
        .env("NO_COLOR", "1")
        .current_dir(workdir.path())
        .kill_on_drop(true)
        .output();
    let output = tokio::time::timeout(Duration::from_secs(600), run).await.expect("schemathesis finished").unwrap();
    let report = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "schemathesis found problems:\n{report}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(report.contains("No issues found"), "{report}");
    stack.shutdown().await;
}
