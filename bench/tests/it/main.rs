//! The bench binary leaves no process behind: neither the services of a phase
//! nor its broker, whether a phase fails or the bench is stopped with SIGTERM
//! in the middle of one.
//!
//! The services are stand-in scripts that record their pids and serve until
//! killed; the bench's broker is real. Every wait has a deadline.

#![allow(clippy::unwrap_used, reason = "a test fails by panicking; its helpers unwrap like its tests")]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use e2e::process::alive;
use e2e::wait_for;

/// A service binary stand-in that records its pid and serves until killed.
fn fake_service(dir: &Path, name: &str) {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(name);
    let pids = dir.join("pids");
    let script = format!(
        "#!/bin/sh\necho $$ >> '{}'\necho \"{name} listening: admin=127.0.0.1:9 http=127.0.0.1:8\"\nwhile :; do sleep 1 & wait $!; done\n",
        pids.display()
    );
    std::fs::write(&path, script).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// The bench on stand-in services in `dir`, one small round, with `flags`;
/// its stderr goes to `dir/bench.log`. The stand-in relay never publishes, so
/// the first drain phase waits on it.
fn start_bench(dir: &Path, flags: &[&str]) -> Child {
    for name in ["relay", "consumer", "producer"] {
        fake_service(dir, name);
    }
    Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--messages", "50", "--rounds", "1", "--history", "0", "--bin-dir"])
        .arg(dir)
        .arg("--json")
        .arg(dir.join("bench.json"))
        .args(flags)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.join("bench.log")).unwrap())
        .spawn()
        .unwrap()
}

fn log(dir: &Path) -> String {
    std::fs::read_to_string(dir.join("bench.log")).unwrap_or_default()
}

/// Waits (with a deadline) until `done`.
async fn wait(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    wait_for(what, limit, async || done().then_some(())).await
}

/// The broker's pid, from the bench's `broker at tcp://… (pid N)` line.
fn broker_pid(log: &str) -> String {
    let (_, rest) = log.split_once("broker at tcp://").expect("the bench names its broker");
    let (_, rest) = rest.split_once("(pid ").expect("and its pid");
    rest.split(')').next().unwrap().to_string()
}

/// Processes whose command line names `dir`: a stand-in service is `/bin/sh DIR/relay`.
fn started_from(dir: &Path) -> Vec<String> {
    let needle = dir.display().to_string();
    let entries = std::fs::read_dir("/proc").unwrap().filter_map(Result::ok);
    let pids = entries
        .filter_map(|e| e.file_name().to_str().filter(|n| n.bytes().all(|b| b.is_ascii_digit())).map(String::from));
    pids.filter(|pid| {
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        alive(pid) && String::from_utf8_lossy(&cmdline).contains(&needle)
    })
    .collect()
}

/// Every service the bench started from `dir`, and its broker, have ended.
async fn nothing_left_behind(dir: &Path, broker: &str) {
    let pids = std::fs::read_to_string(dir.join("pids")).unwrap();
    assert!(!pids.trim().is_empty(), "a service was started");
    for pid in pids.split_whitespace() {
        wait(&format!("service {pid} to end"), Duration::from_secs(10), || !alive(pid)).await;
    }
    let none_runs = || started_from(dir).is_empty();
    wait("no process started from the bench's folder to run", Duration::from_secs(10), none_runs).await;
    wait(&format!("its broker (pid {broker}) to end"), Duration::from_secs(30), || !alive(broker)).await;
}

#[tokio::test]
async fn a_failing_phase_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut bench = start_bench(dir.path(), &["--phase-timeout", "2s"]);
    wait("the bench to fail", Duration::from_secs(240), || bench.try_wait().unwrap().is_some()).await;
    assert!(!bench.wait().unwrap().success(), "a failed bench exits non-zero");
    let text = log(dir.path());
    assert!(text.contains("timed out after 2s waiting for the relay to drain the outbox"), "{text}");
    nothing_left_behind(dir.path(), &broker_pid(&text)).await;
}

#[tokio::test]
async fn an_interrupted_bench_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let mut bench = start_bench(dir.path(), &[]);
    wait("the phase's relay to start", Duration::from_secs(180), || {
        assert!(bench.try_wait().unwrap().is_none(), "bench exited early: {}", log(dir.path()));
        std::fs::read_to_string(dir.path().join("pids")).is_ok_and(|p| !p.trim().is_empty())
    })
    .await;
    let broker = broker_pid(&log(dir.path()));
    assert!(alive(&broker), "its broker runs");

    let status = Command::new("kill").arg("-TERM").arg(bench.id().to_string()).status().unwrap();
    assert!(status.success());
    wait("the bench to exit", Duration::from_secs(60), || bench.try_wait().unwrap().is_some()).await;
    assert!(!bench.wait().unwrap().success(), "an interrupted bench exits non-zero");
    let text = log(dir.path());
    assert!(text.contains("terminated (SIGTERM)"), "{text}");
    nothing_left_behind(dir.path(), &broker).await;
}
