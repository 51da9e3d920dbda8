//! The browser pages: the order form with recent orders, and one order's page.
//!
//! Invariant: an invalid form re-renders with every field's message and the
//! values typed so far (422); a valid one redirects to the order's page (303).
//! Each form view carries a one-time idempotency key, so a double click or a
//! browser's resend lands on the order the first submit created.

use askama::Template;
use axum::Form;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{Html, IntoResponse, Redirect, Response};
use error_reporter::Report;
use schema::{Order, OrderId, Placed, Product, StoreError};
use serde::Deserialize;

use crate::error::ApiError;
use crate::validation::{FieldError, RawOrder};
use crate::{AppState, outgoing, trace_context};
use tracing::Instrument;

/// An order formatted for display.
pub(crate) struct OrderView {
    order_id: i64,
    customer_name: String,
    product_id: String,
    quantity: i32,
    status: String,
    unit_price: String,
    total_price: String,
    failure_reason: String,
    created_at: String,
    processed_at: String,
}

impl From<&Order> for OrderView {
    fn from(o: &Order) -> Self {
        let money = |d: Option<rust_decimal::Decimal>| d.map_or_else(|| "—".to_string(), |d| d.to_string());
        Self {
            order_id: o.order_id.0,
            customer_name: o.customer_name.clone(),
            product_id: o.product_id.clone(),
            quantity: o.quantity,
            status: o.status.to_string(),
            unit_price: money(o.unit_price),
            total_price: money(o.total_price),
            failure_reason: o.failure_reason.clone().unwrap_or_default(),
            created_at: o.created_at.format("%Y-%m-%d %H:%M:%S UTC").to_string(),
            processed_at: o.processed_at.map_or_else(String::new, |t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string()),
        }
    }
}

/// What the user typed, to put back into the form.
#[derive(Debug, Default, Deserialize)]
pub(crate) struct OrderForm {
    customer_name: Option<String>,
    product_id: Option<String>,
    quantity: Option<String>,
    /// The form's one-time key (rendered per page view, kept across a re-render).
    idempotency_key: Option<String>,
}

#[derive(Template)]
#[template(path = "index.html")]
struct IndexPage {
    products: Vec<Product>,
    orders: Vec<OrderView>,
    form: OrderForm,
    errors: Vec<FieldError>,
}

impl IndexPage {
    fn error_for(&self, field: &str) -> String {
        self.errors.iter().filter(|e| e.field == field).map(|e| e.message.as_str()).collect::<Vec<_>>().join("; ")
    }

    fn value(field: &Option<String>) -> &str {
        field.as_deref().unwrap_or("")
    }
}

#[derive(Template)]
#[template(path = "order.html")]
struct OrderPage {
    order: OrderView,
    is_final: bool,
    journey: Vec<Step>,
}

/// One step of an order's journey: placed → published → processed or failed.
pub(crate) struct Step {
    /// `placed`, `published`, `processed`, `failed`.
    name: &'static str,
    /// When, or empty while it has not happened.
    at: String,
    /// Time since the step before, e.g. `+7 ms`.
    took: String,
}

fn journey(order: &Order, published_at: Option<chrono::DateTime<chrono::Utc>>) -> Vec<Step> {
    let time = |t: chrono::DateTime<chrono::Utc>| t.format("%Y-%m-%d %H:%M:%S%.3f UTC").to_string();
    let took = |from: chrono::DateTime<chrono::Utc>, to: chrono::DateTime<chrono::Utc>| {
        let ms = (to - from).num_milliseconds().max(0);
        if ms < 10_000 { format!("+{ms} ms") } else { format!("+{:.1} s", ms as f64 / 1000.0) }
    };
    let mut steps = vec![Step { name: "placed", at: time(order.created_at), took: String::new() }];
    let published = published_at;
    let seen_published = published.is_some() || order.status != schema::OrderStatus::Pending;
    steps.push(Step {
        name: "published",
        at: match (published, seen_published) {
            (Some(at), _) => time(at),
            (None, true) => "(time no longer kept)".into(),
            (None, false) => String::new(),
        },
        took: published.map(|at| took(order.created_at, at)).unwrap_or_default(),
    });
    let last = if order.status == schema::OrderStatus::Failed { "failed" } else { "processed" };
    steps.push(Step {
        name: last,
        at: order.processed_at.map(time).unwrap_or_default(),
        took: order.processed_at.map(|at| took(published.unwrap_or(order.created_at), at)).unwrap_or_default(),
    });
    steps
}

fn render(status: StatusCode, page: impl Template) -> Response {
    match page.render() {
        Ok(html) => (status, Html(html)).into_response(),
        Err(error) => {
            tracing::error!(error = %Report::new(&error), "template failed");
            (StatusCode::INTERNAL_SERVER_ERROR, "internal error").into_response()
        }
    }
}

fn page_error(error: ApiError) -> Response {
    match error {
        ApiError::NotFound => {
            (StatusCode::NOT_FOUND, Html("<h1>Order not found</h1><p><a href=\"/\">Back to the order form</a></p>"))
                .into_response()
        }
        ApiError::KeyReused(_) => (
            StatusCode::UNPROCESSABLE_ENTITY,
            Html("<h1>This form was already sent</h1><p>It placed another order. <a href=\"/\">Start a new order</a></p>"),
        )
            .into_response(),
        other => {
            let status = other.into_response().status();
            (status, Html("<h1>Sorry, something went wrong</h1><p>Please try again in a moment.</p>")).into_response()
        }
    }
}

async fn index_page(state: &AppState, form: OrderForm, errors: Vec<FieldError>, status: StatusCode) -> Response {
    let orders = match state.store.recent_orders(state.recent_orders).await {
        Ok(orders) => orders,
        Err(error) => return page_error(error.into()),
    };
    let page =
        IndexPage { products: state.products(), orders: orders.iter().map(OrderView::from).collect(), form, errors };
    render(status, page)
}

/// `GET /`
pub(crate) async fn index(State(state): State<AppState>) -> Response {
    let form = OrderForm {
        quantity: Some("1".into()),
        idempotency_key: Some(format!("form-{}", uuid::Uuid::new_v4().simple())),
        ..OrderForm::default()
    };
    index_page(&state, form, Vec::new(), StatusCode::OK).await
}

/// `POST /orders`
pub(crate) async fn submit(State(state): State<AppState>, headers: HeaderMap, Form(form): Form<OrderForm>) -> Response {
    let span = tracing::debug_span!(
        "POST /orders",
        otel.kind = "server",
        http.route = "/orders",
        trace_id = tracing::field::Empty
    );
    let incoming = trace_context(&headers);
    observability::continue_trace(&span, incoming.0.as_deref(), incoming.1.as_deref());
    let raw = RawOrder::from_form(form.customer_name.as_deref(), form.product_id.as_deref(), form.quantity.as_deref());
    let trace = outgoing(&span, incoming);
    let key = match form.idempotency_key.as_deref().map(crate::api::checked_key).transpose() {
        Ok(key) => key,
        Err(error) => return page_error(error),
    };
    match state.place(raw, key, trace).instrument(span).await {
        Ok(Placed::Created(order) | Placed::Existing(order)) => {
            Redirect::to(&format!("/orders/{}", order.order_id)).into_response()
        }
        Err(ApiError::Invalid(errors)) => index_page(&state, form, errors, StatusCode::UNPROCESSABLE_ENTITY).await,
        Err(other) => page_error(other),
    }
}

/// `GET /orders/{id}`
pub(crate) async fn order(State(state): State<AppState>, Path(id): Path<String>) -> Response {
    let Ok(id) = id.parse::<i64>() else {
        return page_error(ApiError::NotFound);
    };
    match state.store.order(OrderId(id)).await {
        Ok(order) => {
            let published_at = match state.store.published_at(order.order_id).await {
                Ok(at) => at,
                Err(error) => return page_error(error.into()),
            };
            let page = OrderPage {
                is_final: order.status.is_final(),
                journey: journey(&order, published_at),
                order: OrderView::from(&order),
            };
            let mut response = render(StatusCode::OK, page);
            response.headers_mut().insert(header::CACHE_CONTROL, "no-store".parse().expect("static header"));
            response
        }
        Err(StoreError::NotFound) => page_error(ApiError::NotFound),
        Err(other) => page_error(other.into()),
    }
}
