//! Operator routes on the relay's admin port: status, pause / resume / drain,
//! parked rows and their requeue, retry of a failed order.
//!
//! Invariant: every change an operator asks for names who asked
//! (`requested_by`), and requeues and retries are recorded in `outbox_audit`.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use schema::{OrderId, OutboxId, RequeueTarget, StoreError};
use serde::Deserialize;
use serde_json::json;

use crate::relay::Relay;

/// The operator routes, to merge into the admin router.
pub fn router(relay: Arc<Relay>) -> Router {
    Router::new()
        .route("/relay/status", get(status))
        .route("/relay/pause", post(pause))
        .route("/relay/resume", post(resume))
        .route("/relay/drain", post(drain))
        .route("/relay/parked", get(parked))
        .route("/relay/requeue", post(requeue))
        .route("/relay/retry-order", post(retry_order))
        .with_state(relay)
}

fn error(status: StatusCode, message: impl Into<String>) -> Response {
    (status, Json(json!({ "error": message.into() }))).into_response()
}

fn store_error(e: StoreError) -> Response {
    match e {
        StoreError::NotFound => error(StatusCode::NOT_FOUND, "not found"),
        StoreError::Conflict(m) => error(StatusCode::CONFLICT, m),
        StoreError::Unavailable(m) => error(StatusCode::SERVICE_UNAVAILABLE, format!("database unavailable: {m}")),
        StoreError::Other(m) => {
            tracing::error!(cause = %m, "operator request failed");
            error(StatusCode::INTERNAL_SERVER_ERROR, "internal error")
        }
    }
}

async fn status(State(relay): State<Arc<Relay>>) -> Json<serde_json::Value> {
    Json(json!({
        "relay_id": relay.owner,
        "paused": relay.control.is_paused(),
        "heartbeat_age_seconds": relay.control.heartbeat_age().as_secs_f64(),
    }))
}

async fn pause(State(relay): State<Arc<Relay>>) -> Json<serde_json::Value> {
    relay.pause();
    tracing::warn!(relay_id = %relay.owner, "paused by an operator");
    Json(json!({ "paused": true }))
}

async fn resume(State(relay): State<Arc<Relay>>) -> Json<serde_json::Value> {
    relay.resume();
    tracing::info!(relay_id = %relay.owner, "resumed by an operator");
    Json(json!({ "paused": false }))
}

async fn drain(State(relay): State<Arc<Relay>>) -> Response {
    match relay.drain().await {
        Ok(released) => {
            tracing::warn!(relay_id = %relay.owner, released, "drained by an operator");
            Json(json!({ "paused": true, "leases_released": released })).into_response()
        }
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct ParkedQuery {
    limit: Option<u32>,
}

async fn parked(State(relay): State<Arc<Relay>>, Query(q): Query<ParkedQuery>) -> Response {
    match relay.store.parked_rows(q.limit.unwrap_or(100).clamp(1, 1000)).await {
        Ok(rows) => Json(rows).into_response(),
        Err(e) => store_error(e),
    }
}

#[derive(Debug, Deserialize)]
struct TargetQuery {
    outbox_id: Option<String>,
    order_id: Option<String>,
    requested_by: Option<String>,
}

/// Who asked: `requested_by` in the query, or the `X-Requested-By` header.
fn requested_by(q: &TargetQuery, headers: &HeaderMap) -> Result<String, Response> {
    let who = q
        .requested_by
        .clone()
        .or_else(|| headers.get("x-requested-by").and_then(|v| v.to_str().ok()).map(str::to_string))
        .map(|w| w.trim().to_string())
        .filter(|w| !w.is_empty() && w.len() <= 200);
    who.ok_or_else(|| {
        error(StatusCode::BAD_REQUEST, "say who is asking: requested_by=NAME or an X-Requested-By header")
    })
}

fn parse_order_id(raw: &str) -> Result<OrderId, Response> {
    raw.trim()
        .parse()
        .map(OrderId)
        .map_err(|_| error(StatusCode::BAD_REQUEST, format!("order_id {raw:?} is not a number")))
}

async fn requeue(State(relay): State<Arc<Relay>>, headers: HeaderMap, Query(q): Query<TargetQuery>) -> Response {
    let who = match requested_by(&q, &headers) {
        Ok(who) => who,
        Err(r) => return r,
    };
    let target = match (&q.outbox_id, &q.order_id) {
        (Some(id), None) => match OutboxId::from_str(id.trim()) {
            Ok(id) => RequeueTarget::Outbox(id),
            Err(_) => return error(StatusCode::BAD_REQUEST, format!("outbox_id {id:?} is not a UUID")),
        },
        (None, Some(order)) => match parse_order_id(order) {
            Ok(id) => RequeueTarget::Order(id),
            Err(r) => return r,
        },
        _ => return error(StatusCode::BAD_REQUEST, "give exactly one of outbox_id and order_id"),
    };
    match relay.store.requeue(target, &who).await {
        Ok(ids) if ids.is_empty() => error(StatusCode::NOT_FOUND, "no parked row matches"),
        Ok(ids) => {
            tracing::warn!(requested_by = %who, count = ids.len(), "parked rows requeued");
            Json(json!({ "requeued": ids, "requested_by": who })).into_response()
        }
        Err(e) => store_error(e),
    }
}

async fn retry_order(State(relay): State<Arc<Relay>>, headers: HeaderMap, Query(q): Query<TargetQuery>) -> Response {
    let who = match requested_by(&q, &headers) {
        Ok(who) => who,
        Err(r) => return r,
    };
    let Some(raw) = &q.order_id else { return error(StatusCode::BAD_REQUEST, "order_id is required") };
    let order_id = match parse_order_id(raw) {
        Ok(id) => id,
        Err(r) => return r,
    };
    match relay.store.retry_failed_order(order_id, &who).await {
        Ok(outbox_id) => {
            tracing::warn!(requested_by = %who, order_id = order_id.0, %outbox_id, "failed order retried");
            Json(json!({ "order_id": order_id, "outbox_id": outbox_id, "status": "pending", "requested_by": who }))
                .into_response()
        }
        Err(e) => store_error(e),
    }
}
