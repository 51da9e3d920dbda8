//! The bench binary, stopped with SIGTERM in the middle of a phase, leaves no
//! process behind: neither the services of the phase nor its broker.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

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

fn wait_for(what: &str, limit: Duration, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what} within {limit:?}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn an_interrupted_bench_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    for name in ["relay", "consumer", "producer"] {
        fake_service(dir.path(), name);
    }
    let log = dir.path().join("bench.log");
    let mut bench = Command::new(env!("CARGO_BIN_EXE_bench"))
        .args(["--messages", "50", "--rounds", "1", "--history", "0", "--bin-dir"])
        .arg(dir.path())
        .arg("--json")
        .arg(dir.path().join("bench.json"))
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    // The fake relay never publishes, so the drain phase waits on it.
    let pids = dir.path().join("pids");
    wait_for("the phase's relay starts", Duration::from_secs(180), || {
        assert!(bench.try_wait().unwrap().is_none(), "bench exited early: {}", std::fs::read_to_string(&log).unwrap());
        std::fs::read_to_string(&pids).is_ok_and(|p| !p.trim().is_empty())
    });
    let text = std::fs::read_to_string(&log).unwrap();
    let port: u16 = text
        .split_once("broker at tcp://127.0.0.1:")
        .and_then(|(_, rest)| rest.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .expect("the bench names its broker's port");
    assert!(std::net::TcpStream::connect(("127.0.0.1", port)).is_ok(), "its broker listens");

    let status = Command::new("kill").arg("-TERM").arg(bench.id().to_string()).status().unwrap();
    assert!(status.success());
    wait_for("the bench exits", Duration::from_secs(60), || bench.try_wait().unwrap().is_some());
    assert!(!bench.wait().unwrap().success(), "an interrupted bench exits non-zero");
    let text = std::fs::read_to_string(&log).unwrap();
    assert!(text.contains("terminated (SIGTERM)"), "{text}");
    for pid in std::fs::read_to_string(&pids).unwrap().split_whitespace() {
        wait_for(&format!("service {pid} ends"), Duration::from_secs(10), || !e2e::broker::alive(pid));
    }
    wait_for("its broker stops listening", Duration::from_secs(30), || {
        std::net::TcpStream::connect(("127.0.0.1", port)).is_err()
    });
}
