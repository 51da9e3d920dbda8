//! The ops page: `/ops` shows the pipeline live (readiness of every service,
//! the outbox backlog, parked rows, failed orders, the reconciliation figures,
//! the relays, the audit trail) and carries the operators' buttons.
//!
//! It lives in the producer because that is the address people already open
//! and it reads everything it shows from the database; only the relays'
//! in-memory switches (pause, resume, drain) are asked of the relays' admin
//! ports, with the same bearer token.
//!
//! Invariant: every action names who acts (`X-Requested-By`), passes the
//! admin door (`ADMIN_TOKEN`; without one, only on a loopback producer) and is
//! written to `outbox_audit`. Reads are open, like `/metrics`.

use std::collections::HashMap;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use askama::Template;
use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use error_reporter::Report;
use observability::Readiness;
use schema::{OrderId, OutboxId, RequeueTarget, Store, StoreError};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use service::AdminToken;

/// What the ops page needs.
#[derive(Clone)]
pub(crate) struct Ops {
    pub store: Arc<dyn Store>,
    pub readiness: Readiness,
    pub relays: Vec<String>,
    pub consumers: Vec<String>,
    pub stale_after: Duration,
    pub token: AdminToken,
    /// False on a producer reachable from other machines without a token.
    pub actions_enabled: bool,
    pub http: reqwest::Client,
    /// Since when each service the page could not reach has been unreachable.
    pub unreachable_since: Arc<Mutex<HashMap<String, Instant>>>,
}

/// `/ops`, its state and its actions.
pub(crate) fn router(ops: Ops) -> Router {
    let actions = Router::new()
        .route("/ops/requeue", post(requeue))
        .route("/ops/retry", post(retry))
        .route("/ops/relay", post(relay_action))
        .route_layer(axum::middleware::from_fn_with_state(ops.token.clone(), service::require_admin));
    Router::new().route("/ops", get(page)).route("/ops/state", get(state)).merge(actions).with_state(ops)
}

#[derive(Template)]
#[template(path = "ops.html")]
struct OpsPage {
    actions_enabled: bool,
}

async fn page(State(ops): State<Ops>) -> Response {
    match (OpsPage { actions_enabled: ops.actions_enabled }).render() {
        Ok(html) => axum::response::Html(html).into_response(),
        Err(error) => {
            tracing::error!(error = %Report::new(&error), "rendering the ops page");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

/// One service's readiness as its admin port reports it, and in words.
#[derive(Serialize)]
struct ServiceState {
    name: String,
    url: String,
    ready: bool,
    /// For people: what is wrong and for how long, e.g. "broker: connection refused, 12 s".
    words: String,
    detail: Value,
}

impl ServiceState {
    fn new(name: String, url: String, ready: bool, detail: Value) -> Self {
        Self { words: in_words(&detail), name, url, ready, detail }
    }
}

async fn probe(ops: &Ops, name: String, url: &str) -> ServiceState {
    let answer = ops.http.get(format!("{url}/readyz")).send().await;
    let (ready, detail) = match answer {
        Ok(response) => {
            ops.unreachable_since.lock().expect("unreachable lock").remove(&name);
            (response.status().is_success(), response.json().await.unwrap_or(Value::Null))
        }
        Err(error) => {
            let since = *ops
                .unreachable_since
                .lock()
                .expect("unreachable lock")
                .entry(name.clone())
                .or_insert_with(Instant::now);
            let note = format!("unreachable: {}", Report::new(&error));
            (
                false,
                json!({ "components": { "admin port": { "ok": false, "note": note, "for_seconds": since.elapsed().as_secs() } } }),
            )
        }
    };
    ServiceState::new(name, url.to_string(), ready, detail)
}

/// A `/readyz` answer in words: the components that are down first, each
/// with its note and how long it has been down, then those that are up.
fn in_words(detail: &Value) -> String {
    let Some(components) = detail.get("components").and_then(Value::as_object) else {
        return "no readiness report".into();
    };
    let (mut down, mut up) = (Vec::new(), Vec::new());
    for (name, c) in components {
        let note = c.get("note").and_then(Value::as_str).unwrap_or("");
        match c.get("ok").and_then(Value::as_bool).unwrap_or(false) {
            true => up.push(format!("{name} {note}")),
            false => {
                let secs = c.get("for_seconds").and_then(Value::as_u64);
                down.push(match secs {
                    Some(secs) => format!("{name}: {note}, {}", duration_in_words(secs)),
                    None => format!("{name}: {note}"),
                });
            }
        }
    }
    down.extend(up);
    down.join("; ")
}

/// `12 s`, `3 min 4 s`, `2 h 5 min`.
fn duration_in_words(secs: u64) -> String {
    match secs {
        0..60 => format!("{secs} s"),
        60..3600 => format!("{} min {} s", secs / 60, secs % 60),
        _ => format!("{} h {} min", secs / 3600, secs % 3600 / 60),
    }
}

/// `GET /ops/state`: everything the page shows, in one answer. While the
/// database cannot be reached the answer still comes, with the services'
/// readiness and the relays (neither needs it) and `database_error` naming
/// the cause in place of what only the database knows: an outage is when an
/// operator needs the page most.
async fn state(State(ops): State<Ops>) -> Result<Json<Value>, OpsError> {
    let mut services = vec![ServiceState::new(
        "producer".into(),
        "(this process)".into(),
        ops.readiness.is_ready(),
        ops.readiness.report(),
    )];
    let mut relays = Vec::new();
    for (i, url) in ops.relays.iter().enumerate() {
        services.push(probe(&ops, format!("relay {}", i + 1), url).await);
        let status = match ops.http.get(format!("{url}/relay/status")).send().await {
            Ok(response) => response.json().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        };
        relays.push(json!({ "index": i, "url": url, "status": status }));
    }
    for (i, url) in ops.consumers.iter().enumerate() {
        services.push(probe(&ops, format!("consumer {}", i + 1), url).await);
    }
    let mut answer = json!({
        "services": services,
        "stale_after_seconds": ops.stale_after.as_secs(),
        "relays": relays,
        "actions_enabled": ops.actions_enabled,
    });
    match stored_state(&ops).await {
        Ok(stored) => answer.as_object_mut().expect("an object").extend(stored),
        Err(error @ StoreError::Unavailable(_)) => answer["database_error"] = json!(Report::new(error).to_string()),
        Err(error) => return Err(error.into()),
    }
    Ok(Json(answer))
}

/// The part of `/ops/state` that the database holds.
async fn stored_state(ops: &Ops) -> Result<serde_json::Map<String, Value>, StoreError> {
    let mut stored = serde_json::Map::new();
    stored.insert("outbox".into(), json!(ops.store.outbox_stats().await?));
    stored.insert("parked".into(), json!(ops.store.parked_rows(50).await?));
    stored.insert("failed".into(), json!(ops.store.failed_orders(50).await?));
    stored.insert("dead_letters".into(), json!(ops.store.recent_dead_letters(50).await?));
    stored.insert("reconciliation".into(), json!(ops.store.reconcile(ops.stale_after).await?));
    stored.insert("audit".into(), json!(ops.store.recent_audit(20).await?));
    Ok(stored)
}

/// Who acts: the `X-Requested-By` header (1-200 characters, no control characters).
pub(crate) fn acting(ops: &Ops, headers: &HeaderMap) -> Result<String, OpsError> {
    if !ops.actions_enabled {
        return Err(OpsError::Forbidden);
    }
    headers
        .get("x-requested-by")
        .and_then(|v| v.to_str().ok())
        .and_then(schema::limits::requester)
        .ok_or_else(|| OpsError::BadRequest("say who is acting: an X-Requested-By header (1-200 characters)".into()))
}

#[derive(Deserialize)]
struct Target {
    outbox_id: Option<String>,
    order_id: Option<String>,
    relay: Option<usize>,
    action: Option<String>,
}

async fn requeue(State(ops): State<Ops>, headers: HeaderMap, Query(q): Query<Target>) -> Result<Json<Value>, OpsError> {
    let who = acting(&ops, &headers)?;
    let raw = q.outbox_id.ok_or_else(|| OpsError::BadRequest("outbox_id is required".into()))?;
    let id = OutboxId::from_str(raw.trim()).map_err(|_| OpsError::BadRequest(format!("{raw:?} is not a UUID")))?;
    let ids = ops.store.requeue(RequeueTarget::Outbox(id), &who).await?;
    if ids.is_empty() {
        return Err(OpsError::NotFound("no parked row with that id".into()));
    }
    tracing::warn!(requested_by = %who, outbox_id = %id, "parked row requeued from the ops page");
    Ok(Json(json!({ "requeued": ids, "requested_by": who })))
}

async fn retry(State(ops): State<Ops>, headers: HeaderMap, Query(q): Query<Target>) -> Result<Json<Value>, OpsError> {
    let who = acting(&ops, &headers)?;
    let raw = q.order_id.ok_or_else(|| OpsError::BadRequest("order_id is required".into()))?;
    let order =
        raw.trim().parse().map(OrderId).map_err(|_| OpsError::BadRequest(format!("{raw:?} is not a number")))?;
    let outbox_id = ops.store.retry_failed_order(order, &who).await?;
    tracing::warn!(requested_by = %who, order_id = order.0, "failed order retried from the ops page");
    Ok(Json(json!({ "order_id": order, "outbox_id": outbox_id, "requested_by": who })))
}

/// `POST /ops/relay?relay=I&action=pause|resume|drain`: asked of that relay's admin port.
async fn relay_action(
    State(ops): State<Ops>,
    headers: HeaderMap,
    Query(q): Query<Target>,
) -> Result<Json<Value>, OpsError> {
    let who = acting(&ops, &headers)?;
    let url = q.relay.and_then(|i| ops.relays.get(i)).ok_or_else(|| OpsError::NotFound("no such relay".into()))?;
    let action = q.action.as_deref().unwrap_or("");
    if !matches!(action, "pause" | "resume" | "drain") {
        return Err(OpsError::BadRequest("action must be pause, resume or drain".into()));
    }
    let mut request = ops.http.post(format!("{url}/relay/{action}")).header("x-requested-by", &who);
    if let Some(bearer) = ops.token.bearer() {
        request = request.header("authorization", bearer);
    }
    let answer =
        request.send().await.map_err(|e| OpsError::Relay(format!("relay {url} unreachable: {}", Report::new(&e))))?;
    let status = answer.status();
    let body: Value = answer.json().await.unwrap_or(Value::Null);
    if !status.is_success() {
        return Err(OpsError::Relay(format!("relay {url} answered {status}: {body}")));
    }
    Ok(Json(body))
}

/// What an ops action can fail with.
#[derive(Debug)]
pub(crate) enum OpsError {
    BadRequest(String),
    NotFound(String),
    Forbidden,
    Relay(String),
    Store(StoreError),
}

impl From<StoreError> for OpsError {
    fn from(e: StoreError) -> Self {
        OpsError::Store(e)
    }
}

impl IntoResponse for OpsError {
    fn into_response(self) -> Response {
        let (status, message) = match self {
            OpsError::BadRequest(m) => (StatusCode::BAD_REQUEST, m),
            OpsError::NotFound(m) => (StatusCode::NOT_FOUND, m),
            OpsError::Forbidden => (
                StatusCode::FORBIDDEN,
                "ops actions are off: this producer is reachable from other machines and ADMIN_TOKEN is not set".into(),
            ),
            OpsError::Relay(m) => (StatusCode::BAD_GATEWAY, m),
            OpsError::Store(error) => service::operator_answer(&error),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_readiness_report_reads_as_words_with_what_is_down_first() {
        let detail = json!({ "ready": false, "components": {
            "broker": { "ok": false, "note": "connection refused", "for_seconds": 12 },
            "database": { "ok": true, "note": "ok", "for_seconds": 300 },
            "loop": { "ok": false, "note": "no step for 95 s", "for_seconds": 3725 },
        }});
        assert_eq!(
            in_words(&detail),
            "broker: connection refused, 12 s; loop: no step for 95 s, 1 h 2 min; database ok"
        );
        assert_eq!(in_words(&Value::Null), "no readiness report");
        assert_eq!(duration_in_words(125), "2 min 5 s");
    }
}
