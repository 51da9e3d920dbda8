//! The JSON API: create and read orders, list products.
//!
//! Invariant: a body over the limit is 413, malformed JSON is 400, invalid fields are 422 with every field's
//! problem, an unknown order is 404; a replayed `Idempotency-Key` returns the
//! first order (200) instead of creating another.

use axum::Json;
use axum::body::Bytes;
use axum::extract::rejection::{BytesRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use schema::{Order, OrderId, Placed, Product};
use serde::Deserialize;

use crate::error::{ApiError, ErrorBody};
use crate::validation::RawOrder;
use crate::{AppState, outgoing, trace_context};
use tracing::Instrument;

const MAX_IDEMPOTENCY_KEY: usize = 100;

/// The body of `POST /api/orders` (a documented shape: the handler reads any
/// JSON object, so that each wrong field gets its own 422 message).
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[allow(dead_code, reason = "a shape for the OpenAPI document only; the handler reads the JSON itself")]
pub(crate) struct OrderRequest {
    /// 1-100 characters after trimming.
    #[schema(min_length = 1, max_length = 100, example = "Ajay")]
    customer_name: String,
    /// A catalogue product (`GET /api/products`).
    #[schema(example = "P123")]
    product_id: String,
    /// A whole number.
    #[schema(minimum = 1, maximum = 1000, example = 2)]
    quantity: i32,
}

/// `POST /api/orders`
#[utoipa::path(
    post,
    path = "/api/orders",
    tag = "orders",
    request_body = OrderRequest,
    params((
        "Idempotency-Key" = Option<String>,
        Header,
        description = "1-100 visible ASCII characters; a replay with the same body returns the first order (200)",
        pattern = "^[!-~]{1,100}$"
    )),
    responses(
        (status = 201, description = "Order placed", body = Order),
        (status = 200, description = "The order this Idempotency-Key placed before", body = Order),
        (status = 400, description = "Malformed JSON or header", body = ErrorBody),
        (status = 409, description = "Collides with an existing order", body = ErrorBody),
        (status = 413, description = "Body over 16 KiB", body = ErrorBody),
        (status = 422, description = "Invalid fields (each in `errors`), or the key was used for another order", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
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
#[utoipa::path(
    get,
    path = "/api/orders/{id}",
    tag = "orders",
    params(("id" = i64, Path, description = "The order id")),
    responses(
        (status = 200, description = "The order", body = Order),
        (status = 404, description = "No such order", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
pub(crate) async fn get_order(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<Order>, ApiError> {
    let id: i64 = id.parse().map_err(|_| ApiError::NotFound)?;
    Ok(Json(state.store.order(OrderId(id)).await?))
}

#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[into_params(parameter_in = Query)]
pub(crate) struct RecentQuery {
    /// How many (1-100; out-of-range values are clamped).
    limit: Option<u32>,
}

/// `GET /api/orders?limit=N`: the most recent orders, newest first (at most 100).
#[utoipa::path(
    get,
    path = "/api/orders",
    tag = "orders",
    params(RecentQuery),
    responses(
        (status = 200, description = "Recent orders, newest first", body = [Order]),
        (status = 400, description = "A query parameter that is not a number", body = ErrorBody),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
pub(crate) async fn recent_orders(
    State(state): State<AppState>,
    query: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<Vec<Order>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let limit = q.limit.unwrap_or(state.recent_orders).clamp(1, 100);
    Ok(Json(state.store.recent_orders(limit).await?))
}

/// `GET /api/stats`: orders per status.
#[utoipa::path(
    get,
    path = "/api/stats",
    tag = "orders",
    responses(
        (status = 200, description = "Orders per status", body = schema::OrderCounts),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
pub(crate) async fn stats(State(state): State<AppState>) -> Result<Json<schema::OrderCounts>, ApiError> {
    Ok(Json(state.store.order_counts().await?))
}

/// `GET /api/products`
#[utoipa::path(
    get,
    path = "/api/products",
    tag = "catalogue",
    responses(
        (status = 200, description = "The catalogue", body = [Product]),
        (status = 503, description = "Database unavailable; retry", body = ErrorBody),
    )
)]
pub(crate) async fn products(State(state): State<AppState>) -> Result<Json<Vec<Product>>, ApiError> {
    let products = state.store.products().await?;
    Ok(Json(products))
}

/// The API's OpenAPI description, generated from the handlers and their types.
#[derive(utoipa::OpenApi)]
#[openapi(
    info(title = "orderflow", description = "Place orders and follow them until they are processed."),
    paths(create_order, get_order, recent_orders, stats, products)
)]
pub(crate) struct ApiDoc;

/// `GET /api/openapi.json`
pub(crate) async fn openapi() -> Json<utoipa::openapi::OpenApi> {
    Json(<ApiDoc as utoipa::OpenApi>::openapi())
}
