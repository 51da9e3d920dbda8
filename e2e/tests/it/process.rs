//! Services as child processes leave nothing behind and say what went wrong:
//! stand-in scripts for the binaries, started through `e2e::process`.
//!
//! Every wait has a deadline.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use e2e::flags::{Flags, Role};
use e2e::process::{Launch, alive, wait_while_running};
use e2e::wait_for;

/// A shell script standing in for `role`'s binary in `dir`.
fn fake(dir: &Path, role: Role, body: &str) -> Launch {
    use std::os::unix::fs::PermissionsExt;
    let path = dir.join(role.name());
    std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    let flags = match role {
        Role::Producer => Flags::producer("sqlite://x.db"),
        Role::Relay => Flags::relay("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q"),
        Role::Consumer => Flags::consumer("sqlite://x.db", "tcp://127.0.0.1:1", "/queue/q"),
    };
    Launch::new(dir, flags, "warn")
}

async fn until_ended(pid: u32) {
    wait_for(&format!("process {pid} to end"), Duration::from_secs(20), async || (!alive(pid)).then_some(())).await
}

const SERVES: &str = "trap 'exit 0' TERM\necho \"fake listening: admin=127.0.0.1:9 http=127.0.0.1:8\"\nwhile :; do sleep 1 & wait $!; done";

#[tokio::test]
async fn a_phase_that_fails_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let serving = fake(dir.path(), Role::Relay, SERVES);
    let failing = fake(dir.path(), Role::Consumer, "echo 'cannot start' >&2\nexit 1");
    let mut started = 0;
    let phase = async {
        let relay = serving.start().await?;
        started = relay.pid();
        failing.start().await?;
        anyhow::Ok(relay)
    };
    let error = phase.await.err().expect("the second service fails to start");
    assert!(format!("{error:#}").contains("exited before it listened"), "{error:#}");
    assert_ne!(started, 0);
    until_ended(started).await;
}

#[tokio::test]
async fn a_phase_that_panics_leaves_no_process_behind() {
    let dir = tempfile::tempdir().unwrap();
    let serving = fake(dir.path(), Role::Relay, SERVES);
    let (tx, rx) = tokio::sync::oneshot::channel();
    let phase = tokio::spawn(async move {
        let relay = serving.start().await.unwrap();
        tx.send(relay.pid()).unwrap();
        panic!("a phase that panics with its relay running");
    });
    let started = rx.await.unwrap();
    assert!(phase.await.unwrap_err().is_panic());
    until_ended(started).await;
}

#[tokio::test]
async fn a_phase_whose_service_exits_fails_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let dies = fake(dir.path(), Role::Relay, "echo 'relay listening: admin=127.0.0.1:9'\nexit 3");
    let relay = dies.start().await.unwrap();
    let never = async || false;
    let error = wait_while_running("the phase", Duration::from_secs(600), &[&relay], never).await.unwrap_err();
    assert!(format!("{error:#}").contains("relay exited during the phase"), "{error:#}");
}

#[tokio::test]
async fn ports_are_read_back_and_stop_ends_the_process() {
    let dir = tempfile::tempdir().unwrap();
    let service = fake(dir.path(), Role::Relay, SERVES).start().await.unwrap();
    let expected: [SocketAddr; 2] = ["127.0.0.1:9".parse().unwrap(), "127.0.0.1:8".parse().unwrap()];
    assert_eq!([service.admin_addr, service.http_addr.unwrap()], expected);
    let pid = service.pid();
    service.stop().await.unwrap();
    assert!(!alive(pid));
}

#[tokio::test]
async fn a_service_that_never_says_where_it_listens_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let mute = fake(dir.path(), Role::Producer, "echo 'hello'\nexec sleep 600");
    let error = mute.start().await.err().expect("no listening line");
    assert!(format!("{error:#}").contains("unexpected first line"), "{error:#}");
}

#[tokio::test]
async fn a_log_file_gets_the_listening_line_and_what_follows() {
    let dir = tempfile::tempdir().unwrap();
    let body = "echo 'relay listening: admin=127.0.0.1:9'\necho 'to stderr' >&2\necho 'more'\nexec sleep 600";
    let log = dir.path().join("relay.log");
    let relay = fake(dir.path(), Role::Relay, body).log_to(log.clone()).start().await.unwrap();
    let text = wait_for("the log", Duration::from_secs(20), async || {
        let text = std::fs::read_to_string(&log).ok()?;
        text.contains("more").then_some(text)
    })
    .await;
    assert!(text.contains("relay listening: admin=127.0.0.1:9\n") && text.contains("to stderr"), "{text}");
    drop(relay);
}
