//! The monitoring files as code: the alert rules pass `promtool check rules`
//! and their unit tests (`promtool test rules`), the Prometheus config passes
//! `promtool check config`, and the dashboard is well-formed.

use std::path::PathBuf;
use std::process::Command;

fn dir(sub: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(sub)
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir("prometheus"))
        .output()
        .expect("promtool is installed (the test command installs Debian's prometheus package)");
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_alert_rules_are_valid() {
    assert!(promtool(&["check", "rules", "alerts.yml"]).contains("SUCCESS: 12 rules found"));
}

#[test]
fn the_alert_rules_pass_their_unit_tests() {
    assert!(promtool(&["test", "rules", "alerts_test.yml"]).contains("SUCCESS"));
}

#[test]
fn the_prometheus_configs_are_valid() {
    promtool(&["check", "config", "prometheus.yml"]);
    promtool(&["check", "config", "prometheus.docker.yml"]);
}

#[test]
fn the_dashboard_is_well_formed() {
    let text = std::fs::read_to_string(dir("grafana/dashboards/pipeline.json")).unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    let mut ids: Vec<i64> = panels.iter().map(|p| p["id"].as_i64().unwrap()).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), panels.len(), "panel ids are unique");
    let graphs: Vec<&serde_json::Value> = panels.iter().filter(|p| p["type"] != "row").collect();
    assert!(graphs.len() >= 15, "the pipeline dashboard has its panels");
    for panel in graphs {
        let targets = panel["targets"].as_array().unwrap();
        assert!(!targets.is_empty(), "panel {} queries something", panel["title"]);
        assert!(targets.iter().all(|t| {
            t["expr"].as_str().is_some_and(|e| e.contains("orderflow_") || e.contains("process_") || e.contains("up{"))
        }));
        assert_eq!(panel["datasource"]["uid"], "prometheus");
    }
}
