//! Clients that try to hold the HTTP ports: slow, oversized and silent
//! connections past the cap on the producer's public port, and half-sent
//! requests on every port when SIGTERM comes. The services run as their
//! binaries, on port 0, built here first (a no-op when they are fresh) so the
//! test never runs stale ones; their memory and sockets are read from /proc.
//!
//! Every wait has a deadline.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::flags::Flags;
use e2e::process::{Launch, Process};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// The cap, and the timeouts, of the slow-clients test: short, so that it runs quickly.
const CAP: usize = 64;

/// The folder of the service binaries of this test's profile, built once per test process.
fn bin_dir() -> PathBuf {
    static BUILT: OnceLock<PathBuf> = OnceLock::new();
    BUILT
        .get_or_init(|| {
            // target/<profile>/deps/it-<hash> → target/<profile>
            let exe = std::env::current_exe().unwrap();
            let dir = exe.parent().and_then(|deps| deps.parent()).unwrap().to_path_buf();
            let mut build = std::process::Command::new(env!("CARGO"));
            build.args(["build", "--quiet", "-p", "producer", "-p", "relay", "-p", "consumer"]);
            if dir.ends_with("release") {
                build.arg("--release");
            }
            assert!(build.status().unwrap().success(), "building the services failed");
            dir
        })
        .clone()
}

/// A `/proc/PID/status` figure, in kB.
fn status_kb(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find_map(|l| l.strip_prefix(field)).unwrap();
    line.trim().trim_end_matches("kB").trim().parse().unwrap()
}

/// How many descriptors process `pid` has open.
fn open_fds(pid: u32) -> usize {
    std::fs::read_dir(format!("/proc/{pid}/fd")).map(|dir| dir.count()).unwrap_or(0)
}

/// Reads until the server closes the connection (end of stream or reset),
/// with a deadline.
async fn until_closed(mut stream: TcpStream, deadline: Duration) {
    let read = async {
        let mut buf = [0u8; 4096];
        while let Ok(n) = stream.read(&mut buf).await {
            if n == 0 {
                return;
            }
        }
    };
    tokio::time::timeout(deadline, read).await.expect("the server closes the connection");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_oversized_and_silent_clients_past_the_cap_are_closed_and_orders_still_get_in() {
    let dir = tempfile::tempdir().unwrap();
    let database_url = e2e::test_database_url(&dir).await;
    let flags = Flags::producer(&database_url)
        .with("--http-max-connections", CAP)
        .with("--http-idle-timeout-ms", 1_000)
        .with("--http-header-read-timeout-ms", 1_000)
        .with("--http-max-buffer-bytes", 16_384);
    let producer = Launch::new(&bin_dir(), flags, "warn").start().await.unwrap();
    let (pid, http) = (producer.pid(), producer.http_addr.unwrap());
    let (rss_before, fds_before) = (status_kb(pid, "VmRSS:"), open_fds(pid));

    // Its open descriptors, watched for the whole attack.
    let most_fds = std::sync::Arc::new(AtomicUsize::new(fds_before));
    let watching = tokio_util::sync::CancellationToken::new();
    let watcher = {
        let (most, stop) = (most_fds.clone(), watching.clone());
        tokio::spawn(async move {
            let mut every = tokio::time::interval(Duration::from_millis(5));
            while !stop.is_cancelled() {
                most.fetch_max(open_fds(pid), Ordering::Relaxed);
                every.tick().await;
            }
        })
    };

    // 150 clients each sending 300 KB of a head that never ends (the red
    // team's), 100 sending a few bytes of one, 100 sending nothing.
    let mut attackers = tokio::task::JoinSet::new();
    for i in 0..350 {
        let mut stream = TcpStream::connect(http).await.unwrap();
        attackers.spawn(async move {
            match i % 7 {
                0..3 => {
                    let head = format!("GET / HTTP/1.1\r\nhost: x\r\nx-pad: {}", "a".repeat(300_000));
                    // Refused part way (431, or closed at the cap): the write fails.
                    let _ = stream.write_all(head.as_bytes()).await;
                }
                3..5 => {
                    let _ = stream.write_all(b"POST /api/orders HTTP/1.1\r\nhost: x\r\n").await;
                }
                _ => {}
            }
            until_closed(stream, Duration::from_secs(60)).await;
        });
    }

    // While they hold their connections, an order gets in.
    let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
    let order = json!({"customer_name": "Patient", "product_id": "P123", "quantity": 1});
    let answer = client.post(format!("http://{http}/api/orders")).json(&order).send().await.unwrap();
    assert_eq!(answer.status().as_u16(), 201, "an order gets in during the attack");

    while let Some(closed) = attackers.join_next().await {
        closed.expect("every attacker's connection is closed by the producer");
    }
    watching.cancel();
    watcher.await.unwrap();
    let rss_peak = status_kb(pid, "VmHWM:");
    let most_fds = most_fds.load(Ordering::Relaxed);
    eprintln!(
        "producer: VmRSS {rss_before} kB before, VmHWM {rss_peak} kB after; fds {fds_before} before, {most_fds} at most"
    );
    // The cap, one connection waiting for a place, and the database's and the client's own.
    assert!(most_fds <= fds_before + CAP + 8, "{most_fds} descriptors open at once, {fds_before} before");
    // At most CAP buffers of 16 KiB: about 1 MB (150 unbounded heads of 300 KB took 44 MB before).
    assert!(rss_peak < rss_before + 16 * 1024, "peak RSS {rss_peak} kB against {rss_before} kB before");
    producer.stop().await.unwrap();
}

/// A request cut short on `addr`: its head half sent, or its head whole and
/// half its body.
async fn half_sent(addr: SocketAddr, path: &str, whole_head: bool) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    let request = match whole_head {
        true => format!(
            "POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\ncontent-length: 100\r\n\r\n{{\"customer"
        ),
        false => format!("GET {path} HTTP/1.1\r\nhost: 127.0.0.1\r\nx-half: "),
    };
    stream.write_all(request.as_bytes()).await.unwrap();
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_ends_every_service_within_its_grace_while_clients_hold_half_sent_requests() {
    const GRACE_MS: u64 = 2_000;
    let dir = tempfile::tempdir().unwrap();
    let database_url = e2e::test_database_url(&dir).await;
    let (broker_url, queue) = (shared_broker_url(), e2e::unique_queue());
    // Timeouts far past the grace period: only the drain can end these connections.
    let patient = |flags: Flags| {
        flags
            .with("--shutdown-grace-ms", GRACE_MS)
            .with("--http-idle-timeout-ms", 600_000)
            .with("--http-header-read-timeout-ms", 600_000)
            .with("--http-request-timeout-ms", 600_000)
    };
    let all = [
        patient(Flags::producer(&database_url)),
        patient(Flags::relay(&database_url, &broker_url, &queue)),
        patient(Flags::consumer(&database_url, &broker_url, &queue)),
    ];
    let mut services: Vec<Process> = Vec::new();
    for flags in all {
        services.push(Launch::new(&bin_dir(), flags, "warn").start().await.unwrap());
    }
    for service in &services {
        service.wait_ready(Duration::from_secs(120)).await.unwrap();
    }

    let mut held = Vec::new();
    for service in &services {
        held.push(half_sent(service.admin_addr, "/metrics", false).await);
        held.push(half_sent(service.admin_addr, "/metrics", true).await);
        if let Some(http) = service.http_addr {
            held.push(half_sent(http, "/api/orders", false).await);
            held.push(half_sent(http, "/api/orders", true).await);
        }
    }
    // All three at once: each must exit 0 within its grace period and a margin.
    let deadline = Duration::from_millis(GRACE_MS) + Duration::from_secs(10);
    let stops: Vec<_> = services.into_iter().map(|service| tokio::spawn(service.end_with("TERM", deadline))).collect();
    for stop in stops {
        let status = stop.await.unwrap().expect("exits within SHUTDOWN_GRACE_MS and a margin");
        assert!(status.success(), "{status}");
    }
    drop(held);
}
