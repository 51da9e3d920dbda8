//! The JSON API: create and read orders, list products.
//!
//! Invariant: a body over the limit is 413, malformed JSON is 400, invalid fields are 422 with every field's
//! problem, an unknown order is 404; a replayed `Idempotency-Key` returns the
//! first order (200) instead of creating another.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schema::{Order, OrderId, Placed, Product};
use serde::Deserialize;

use crate::error::ApiError;
use crate::validation::RawOrder;
use crate::{AppState, outgoing, trace_context};
use tracing::Instrument;

const MAX_IDEMPOTENCY_KEY: usize = 100;

/// `POST /api/orders`
pub(crate) async fn create_order(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<Response, ApiError> {
    let body = body.map_err(ApiError::from)?;
    let span = tracing::debug_span!(
        "POST /api/orders",
        otel.kind = "server",
        http.route = "/api/orders",
        order_id = tracing::field::Empty,
        trace_id = tracing::field::Empty
    );
    let incoming = trace_context(&headers);
    observability::continue_trace(&span, incoming.0.as_deref(), incoming.1.as_deref());
    create_order_traced(state, headers, body, span.clone(), incoming).instrument(span).await
}

async fn create_order_traced(
    state: AppState,
    headers: HeaderMap,
    body: Bytes,
    span: tracing::Span,
    incoming: (Option<String>, Option<String>),
) -> Result<Response, ApiError> {
    let key = idempotency_key(&headers)?;
    let value: serde_json::Value =
        serde_json::from_slice(&body).map_err(|e| ApiError::BadRequest(format!("malformed JSON: {e}")))?;
    let object = value.as_object().ok_or_else(|| {
        ApiError::BadRequest("expected a JSON object with customer_name, product_id and quantity".into())
    })?;
    let placed = state.place(RawOrder::from_json(object), key, outgoing(&span, incoming)).await?;
    let (status, order) = match placed {
        Placed::Created(order) => (StatusCode::CREATED, order),
        Placed::Existing(order) => (StatusCode::OK, order),
    };
    span.record("order_id", order.order_id.0);
    let location = HeaderValue::from_str(&format!("/api/orders/{}", order.order_id)).expect("ascii path");
    Ok((status, [(header::LOCATION, location)], Json(order)).into_response())
}

fn idempotency_key(headers: &HeaderMap) -> Result<Option<String>, ApiError> {
    let Some(raw) = headers.get("idempotency-key") else {
        return Ok(None);
    };
    let key = raw.to_str().map_err(|_| ApiError::BadRequest("Idempotency-Key must be visible ASCII".into()))?;
    checked_key(key).map(Some)
}

/// An idempotency key as given (header or form field): 1-100 visible ASCII characters.
pub(crate) fn checked_key(key: &str) -> Result<String, ApiError> {
    let key = key.trim();
    if key.is_empty() || key.len() > MAX_IDEMPOTENCY_KEY || !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(ApiError::BadRequest(format!(
            "Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} visible ASCII characters"
        )));
    }
    Ok(key.to_string())
}

/// `GET /api/orders/{id}`
pub(crate) async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Order>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound)?;
    Ok(Json(state.store.order(OrderId(id)).await?))
}

#[derive(Debug, Deserialize)]
pub(crate) struct RecentQuery {
    limit: Option<u32>,
}

/// `GET /api/orders?limit=N`: the most recent orders, newest first (at most 100).
pub(crate) async fn recent_orders(
    State(state): State<AppState>,
    Query(q): Query<RecentQuery>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let limit = q.limit.unwrap_or(state.recent_orders).clamp(1, 100);
    Ok(Json(state.store.recent_orders(limit).await?))
}

/// `GET /api/stats`: orders per status.
pub(crate) async fn stats(State(state): State<AppState>) -> Result<Json<schema::OrderCounts>, ApiError> {
    Ok(Json(state.store.order_counts().await?))
}

/// `GET /api/products`
pub(crate) async fn products(State(state): State<AppState>) -> Result<Json<Vec<Product>>, ApiError> {
    let products = state.store.products().await?;
    Ok(Json(products))
}
