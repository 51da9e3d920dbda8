//! Every metric the producer emits, and the middleware that records requests.
//!
//! Invariants: every name is `orderflow_producer_*`; labels come from small
//! fixed sets (route templates, status classes, field names), never ids or raw paths.

use std::time::Instant;

use axum::extract::{MatchedPath, Request};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use prometheus::{HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// The producer's metrics, registered once per process.
#[derive(Clone)]
pub struct Metrics {
    /// HTTP requests, by method, route and status class.
    pub http_requests: IntCounterVec,
    /// HTTP request latency, by method and route.
    pub http_seconds: HistogramVec,
    /// Orders this producer placed, counted by the store's writer as each
    /// commits, whether or not its client waited for the answer.
    pub orders_placed: IntCounter,
    /// Orders refused by validation, by field.
    pub validation_rejections: IntCounterVec,
}

impl Metrics {
    /// Creates and registers the metrics.
    pub fn register(registry: &Registry) -> prometheus::Result<Self> {
        let m = Self {
            http_requests: IntCounterVec::new(
                Opts::new("orderflow_producer_http_requests_total", "HTTP requests by route and status class"),
                &["route", "method", "status"],
            )?,
            http_seconds: HistogramVec::new(
                HistogramOpts::new("orderflow_producer_http_request_duration_seconds", "HTTP request duration")
                    .buckets(vec![
                        0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                        5.0, 10.0,
                    ]),
                &["route", "method"],
            )?,
            orders_placed: IntCounter::new(
                "orderflow_producer_orders_placed_total",
                "Orders committed with their outbox row",
            )?,
            validation_rejections: IntCounterVec::new(
                Opts::new("orderflow_producer_validation_rejections_total", "Rejected order fields"),
                &["field"],
            )?,
        };
        for field in ["customer_name", "product_id", "quantity"] {
            m.validation_rejections.with_label_values(&[field]);
        }
        registry.register(Box::new(m.http_requests.clone()))?;
        registry.register(Box::new(m.http_seconds.clone()))?;
        registry.register(Box::new(m.orders_placed.clone()))?;
        registry.register(Box::new(m.validation_rejections.clone()))?;
        Ok(m)
    }
}

/// Records count and duration of every request under its route template.
pub async fn record(metrics: &Metrics, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let route = request.extensions().get::<MatchedPath>().cloned();
    let route = route.as_ref().map_or("unmatched", MatchedPath::as_str);
    let method = method_label(request.method());
    let response = next.run(request).await;
    let class = match response.status().as_u16() {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    };
    metrics.http_requests.with_label_values(&[route, method, class]).inc();
    metrics.http_seconds.with_label_values(&[route, method]).observe(started.elapsed().as_secs_f64());
    response
}

/// The method as a label: one of HTTP's own methods, or `other` for any
/// made-up one, so that no client can add series.
fn method_label(method: &Method) -> &'static str {
    [
        Method::GET,
        Method::HEAD,
        Method::POST,
        Method::PUT,
        Method::DELETE,
        Method::PATCH,
        Method::OPTIONS,
        Method::CONNECT,
        Method::TRACE,
    ]
    .iter()
    .find(|known| *known == method)
    .map_or("other", Method::as_str)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn made_up_methods_share_one_label() {
        assert_eq!(method_label(&Method::POST), "POST");
        assert_eq!(method_label(&Method::from_bytes(b"BREW").unwrap()), "other");
        assert_eq!(method_label(&Method::from_bytes(b"get").unwrap()), "other");
    }
}
