//! `orderflowctl` against a stand-in producer on port 0 that answers what a
//! proxy or a broken connection might: an HTML page, JSON cut short or of
//! another shape, a body without end. None of them is ever "done".

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

/// What the stand-in sends after its status line and headers.
#[derive(Clone)]
enum Body {
    /// These bytes, then the connection is closed.
    Bytes(&'static [u8]),
    /// JSON-looking bytes until the client hangs up.
    Endless,
}

/// Starts a server on port 0 that answers every request with `head` (status
/// line and headers, without the blank line) and `body`; returns its base URL.
async fn stand_in(head: impl Into<String>, body: Body) -> String {
    let head: String = head.into();
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let (head, body) = (head.clone(), body.clone());
            tokio::spawn(async move {
                let (mut request, mut buf) = (Vec::new(), [0u8; 4096]);
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match socket.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let head = format!("{head}\r\nconnection: close\r\n\r\n");
                if socket.write_all(head.as_bytes()).await.is_err() {
                    return;
                }
                match body {
                    Body::Bytes(bytes) => {
                        let _ = socket.write_all(bytes).await;
                    }
                    Body::Endless => {
                        let chunk = [b'['; 64 * 1024];
                        while socket.write_all(&chunk).await.is_ok() {}
                    }
                }
                let _ = socket.shutdown().await;
            });
        }
    });
    format!("http://{addr}")
}

/// A 200 of `content_type` with `body`, its length declared.
async fn ok(content_type: &str, body: &'static [u8]) -> String {
    let head = format!("HTTP/1.1 200 OK\r\ncontent-type: {content_type}\r\ncontent-length: {}", body.len());
    stand_in(head, Body::Bytes(body)).await
}

/// Runs the binary against `base` with `args`; returns its exit code, stdout and stderr.
async fn ctl(base: &str, args: &[&str]) -> (i32, String, String) {
    let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_orderflowctl"));
    command.env_remove("ADMIN_TOKEN").env_remove("PRODUCER_URL").env_remove("REQUESTED_BY");
    command.args(["--producer-url", base, "--requested-by", "Cal Ctl", "--timeout", "20s"]);
    let out = command.args(args).output().await.expect("orderflowctl runs");
    let text = |bytes: &[u8]| String::from_utf8_lossy(bytes).into_owned();
    (out.status.code().unwrap_or(-1), text(&out.stdout), text(&out.stderr))
}

const HTML: &[u8] = b"<!doctype html><html><body><h1>Welcome to nginx!</h1></body></html>";

#[tokio::test]
async fn an_html_page_answering_200_is_no_answer_and_never_done() {
    let base = ok("text/html", HTML).await;
    for args in [&["pause"][..], &["status"], &["purge", "--older-than", "7d"], &["dead-letters", "--json"]] {
        let (code, out, err) = ctl(&base, args).await;
        assert_eq!(code, 3, "{args:?}: {out}{err}");
        assert!(!out.contains("done") && out.is_empty(), "{args:?} prints nothing on stdout: {out}");
        assert!(err.contains("not the producer's") && err.contains("text/html"), "{args:?}: {err}");
    }
    let (_, _, err) = ctl(&base, &["pause"]).await;
    assert!(err.contains("whether it was done is unknown"), "an action's outcome is unknown: {err}");
    let (_, _, err) = ctl(&base, &["status"]).await;
    assert!(!err.contains("unknown"), "a read changed nothing: {err}");
}

#[tokio::test]
async fn json_cut_short_is_no_answer() {
    let base = ok("application/json", br#"{"paused": true, "requested_by": "Cal"#).await;
    let (code, out, err) = ctl(&base, &["pause"]).await;
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(err.contains("not the producer's") && err.contains("EOF"), "{err}");
    // The connection ends before the length it declared.
    let head = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 4000";
    let base = stand_in(head, Body::Bytes(br#"{"paused": true, "requ"#)).await;
    let (code, out, err) = ctl(&base, &["drain"]).await;
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(err.contains("broke off"), "{err}");
}

#[tokio::test]
async fn json_of_another_shape_is_no_answer_naming_what_is_missing() {
    let base = ok("application/json", br#"{"ok": true}"#).await;
    for (args, missing) in [(&["resume"][..], "paused"), (&["status"], "services"), (&["groups"], "groups")] {
        let (code, out, err) = ctl(&base, args).await;
        assert_eq!((code, out.as_str()), (3, ""), "{args:?}: {err}");
        assert!(err.contains(&format!("missing field `{missing}`")), "{args:?}: {err}");
    }
    let base = ok("application/json", br#"{"purged": "all", "older_than_seconds": 60}"#).await;
    let (code, _, err) = ctl(&base, &["purge", "--older-than", "1m"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("invalid type"), "{err}");
}

#[tokio::test]
async fn an_endless_body_is_cut_at_the_cap() {
    let base = stand_in("HTTP/1.1 200 OK\r\ncontent-type: application/json", Body::Endless).await;
    let (code, out, err) = ctl(&base, &["status"]).await;
    assert_eq!((code, out.as_str()), (3, ""), "{err}");
    assert!(err.contains("over 4 MiB"), "{err}");
    let declared = "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: 999999999999";
    let (code, _, err) = ctl(&stand_in(declared, Body::Endless).await, &["status"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(err.contains("over 4 MiB"), "refused from its declared length: {err}");
}

#[tokio::test]
async fn a_refusal_is_read_from_the_producers_error_and_any_other_page_is_no_answer() {
    let error = br#"{"error": "no failed order in that group"}"#;
    let head = format!("HTTP/1.1 404 Not Found\r\ncontent-type: application/json\r\ncontent-length: {}", error.len());
    let base = stand_in(head, Body::Bytes(error)).await;
    let (code, _, err) = ctl(&base, &["retry", "--group", "g"]).await;
    assert_eq!(code, 1, "{err}");
    assert!(err.contains("404 Not Found: no failed order in that group"), "{err}");
    let head = format!("HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}", HTML.len());
    let base = stand_in(head, Body::Bytes(HTML)).await;
    let (code, _, err) = ctl(&base, &["retry", "--group", "g"]).await;
    assert_eq!(code, 3, "a page that is not the producer's is no refusal of it: {err}");
    assert!(err.contains("404 Not Found") && err.contains("not the producer's"), "{err}");
}

#[tokio::test]
async fn a_well_formed_answer_is_done() {
    let base = ok("application/json", br#"{"paused": true, "leases_released": 2, "requested_by": "Cal Ctl"}"#).await;
    let (code, out, err) = ctl(&base, &["drain"]).await;
    assert_eq!(code, 0, "{err}");
    assert_eq!(out, "done: relay paused, 2 leases released (by Cal Ctl)\n");
    let (code, out, _) = ctl(&base, &["drain", "--json"]).await;
    assert_eq!(code, 0);
    assert!(out.contains("\"leases_released\": 2"), "the producer's JSON as it came: {out}");
}

#[tokio::test]
async fn a_producer_that_cannot_reach_its_database_is_shown_and_exits_3() {
    let base = ok(
        "application/json",
        br#"{"services": [{"name": "producer", "url": "(this process)", "ready": false,
             "words": "database: database unavailable: connection refused, 4 s"}],
             "stale_after_seconds": 60, "relays": [], "actions_enabled": true,
             "database_error": "database unavailable: connection refused"}"#,
    )
    .await;
    let (code, out, err) = ctl(&base, &["status"]).await;
    assert_eq!(code, 3, "{err}");
    assert!(
        out.contains("NOT READY") && out.contains("database: cannot be reached"),
        "the services still shown: {out}"
    );
    assert!(err.contains("cannot reach its database: database unavailable: connection refused"), "{err}");
    let (code, out, _) = ctl(&base, &["status", "--json"]).await;
    assert_eq!(code, 3);
    assert!(out.contains("\"database_error\""), "--json prints the producer's JSON: {out}");
    for args in [&["parked"][..], &["dead-letters"]] {
        let (code, out, err) = ctl(&base, args).await;
        assert_eq!((code, out.as_str()), (3, ""), "{args:?}: {err}");
        assert!(err.contains("cannot reach its database"), "{args:?}: {err}");
    }
}
