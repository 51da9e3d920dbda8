//! Operator routes on the relay's admin port: status, pause / resume / drain,
//! parked rows and their requeue, retry of a failed order.
//!
//! Invariant: every change an operator asks for passes the admin door (a
//! bearer `ADMIN_TOKEN` when one is set) and names who asked (`requested_by`),
//! and requeues and retries are recorded in `outbox_audit`.

use std::str::FromStr;
use std::sync::Arc;

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use schema::{AuditAction, OrderId, OutboxAdmin, OutboxId, RequeueTarget, StoreError};
use serde::Deserialize;
use serde_json::json;
use service::AdminToken;

use crate::broker_stats::BrokerQueues;
use crate::step::Relay;

/// The operator routes, to merge into the admin router: reads are open, every
/// change passes the admin door (`ADMIN_TOKEN`).
pub fn router(relay: Arc<Relay>, admin: Arc<dyn OutboxAdmin>, token: AdminToken, broker: BrokerQueues) -> Router {
    let changes = Router::new()
        .route("/relay/pause", post(pause))
        .route("/relay/resume", post(resume))
        .route("/relay/drain", post(drain))
        .route("/relay/requeue", post(requeue))
        .route("/relay/retry-order", post(retry_order))
        .route_layer(axum::middleware::from_fn_with_state(token, service::require_admin));
    Router::new()
        .route("/relay/status", get(status))
        .route("/relay/parked", get(parked))
        .merge(changes)
        .with_state(Ops { relay, admin, broker })
}

/// What the routes act on: the relay's loop, and the outbox's administration.
#[derive(Clone)]
struct Ops {
    relay: Arc<Relay>,
    admin: Arc<dyn OutboxAdmin>,
    broker: BrokerQueues,
}

/// What an operator request can fail with.
#[derive(Debug)]
enum OpsError {
    BadRequest(String),
    NotFound(String),
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
            OpsError::Store(error) => service::operator_answer(&error),
        };
        (status, Json(json!({ "error": message }))).into_response()
    }
}

type Answer = Result<Json<serde_json::Value>, OpsError>;

async fn status(State(Ops { relay, broker, .. }): State<Ops>) -> Json<serde_json::Value> {
    Json(json!({
        "relay_id": relay.owner,
        "broker": broker.report(),
        "paused": relay.control.is_paused(),
        "heartbeat_age_seconds": relay.control.heartbeat_age().as_secs_f64(),
    }))
}

async fn pause(
    State(Ops { relay, admin, .. }): State<Ops>,
    headers: HeaderMap,
    Query(q): Query<TargetQuery>,
) -> Answer {
    let who = requested_by(&q, &headers)?;
    admin.record_action(AuditAction::Pause, &who).await?;
    relay.pause();
    tracing::warn!(relay_id = %relay.owner, requested_by = %who, "paused by an operator");
    Ok(Json(json!({ "paused": true, "requested_by": who })))
}

async fn resume(
    State(Ops { relay, admin, .. }): State<Ops>,
    headers: HeaderMap,
    Query(q): Query<TargetQuery>,
) -> Answer {
    let who = requested_by(&q, &headers)?;
    admin.record_action(AuditAction::Resume, &who).await?;
    relay.resume();
    tracing::info!(relay_id = %relay.owner, requested_by = %who, "resumed by an operator");
    Ok(Json(json!({ "paused": false, "requested_by": who })))
}

async fn drain(
    State(Ops { relay, admin, .. }): State<Ops>,
    headers: HeaderMap,
    Query(q): Query<TargetQuery>,
) -> Answer {
    let who = requested_by(&q, &headers)?;
    admin.record_action(AuditAction::Drain, &who).await?;
    let released = relay.drain().await?;
    tracing::warn!(relay_id = %relay.owner, requested_by = %who, released, "drained by an operator");
    Ok(Json(json!({ "paused": true, "leases_released": released, "requested_by": who })))
}

#[derive(Debug, Deserialize)]
struct ParkedQuery {
    limit: Option<u32>,
}

async fn parked(State(Ops { admin, .. }): State<Ops>, Query(q): Query<ParkedQuery>) -> Answer {
    let rows = admin.parked_rows(q.limit.unwrap_or(100).clamp(1, 1000)).await?;
    Ok(Json(json!(rows)))
}

#[derive(Debug, Deserialize)]
struct TargetQuery {
    outbox_id: Option<String>,
    order_id: Option<String>,
    all: Option<bool>,
    requested_by: Option<String>,
}

/// Who asked: `requested_by` in the query, or the `X-Requested-By` header.
fn requested_by(q: &TargetQuery, headers: &HeaderMap) -> Result<String, OpsError> {
    q.requested_by
        .clone()
        .or_else(|| headers.get("x-requested-by").and_then(|v| v.to_str().ok()).map(str::to_string))
        .and_then(|w| schema::limits::requester(&w))
        .ok_or_else(|| {
            OpsError::BadRequest(
                "say who is asking: requested_by=NAME or an X-Requested-By header (1-200 characters)".into(),
            )
        })
}

fn parse_order_id(raw: &str) -> Result<OrderId, OpsError> {
    raw.trim().parse().map(OrderId).map_err(|_| OpsError::BadRequest(format!("order_id {raw:?} is not a number")))
}

async fn requeue(State(Ops { admin, .. }): State<Ops>, headers: HeaderMap, Query(q): Query<TargetQuery>) -> Answer {
    let who = requested_by(&q, &headers)?;
    let target = match (&q.outbox_id, &q.order_id, q.all.unwrap_or(false)) {
        (Some(id), None, false) => RequeueTarget::Outbox(
            OutboxId::from_str(id.trim())
                .map_err(|_| OpsError::BadRequest(format!("outbox_id {id:?} is not a UUID")))?,
        ),
        (None, Some(order), false) => RequeueTarget::Order(parse_order_id(order)?),
        (None, None, true) => RequeueTarget::All,
        _ => return Err(OpsError::BadRequest("give exactly one of outbox_id, order_id and all=true".into())),
    };
    let ids = admin.requeue(target, &who).await?;
    if ids.is_empty() {
        return Err(OpsError::NotFound("no parked row matches".into()));
    }
    tracing::warn!(requested_by = %who, count = ids.len(), "parked rows requeued");
    Ok(Json(json!({ "requeued": ids, "requested_by": who })))
}

async fn retry_order(State(Ops { admin, .. }): State<Ops>, headers: HeaderMap, Query(q): Query<TargetQuery>) -> Answer {
    let who = requested_by(&q, &headers)?;
    let raw = q.order_id.as_deref().ok_or_else(|| OpsError::BadRequest("order_id is required".into()))?;
    let order_id = parse_order_id(raw)?;
    let outbox_id = admin.retry_failed_order(order_id, &who).await?;
    tracing::warn!(requested_by = %who, order_id = order_id.0, %outbox_id, "failed order retried");
    Ok(Json(json!({ "order_id": order_id, "outbox_id": outbox_id, "status": "pending", "requested_by": who })))
}
