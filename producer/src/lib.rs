//! The producer: the browser form and the JSON API that place orders.
//!
//! Invariant: an order and its outbox row are written in one transaction by
//! the store; the producer never talks to the broker.

mod api;
mod assets;
mod charts;
mod config;
pub mod error;
mod incidents;
pub mod metrics;
mod ops;
mod pages;
mod series;
pub mod validation;

use std::net::SocketAddr;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use anyhow::Context;
use axum::Router;
use axum::routing::{get, post};
use observability::Readiness;
use schema::{NewOrder, Order, OrderStore, Placed, Product, StoreError};
use service::{AdminPort, Every, Service, Supervisor};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use config::Config;

use crate::error::ApiError;
use crate::metrics::Metrics;
use crate::validation::{RawOrder, validate};

/// Shared by every handler.
#[derive(Clone)]
pub(crate) struct AppState {
    store: Arc<dyn OrderStore>,
    metrics: Metrics,
    catalogue: Arc<RwLock<Vec<Product>>>,
    recent_orders: u32,
}

impl AppState {
    /// True when the product is in the catalogue; a miss re-reads the
    /// catalogue once, so a product added to the database is seen at once.
    async fn product_exists(&self, product_id: &str) -> Result<bool, StoreError> {
        if self.cached_product(product_id) {
            return Ok(true);
        }
        let fresh = self.store.products().await?;
        *self.catalogue.write().expect("catalogue lock") = fresh;
        Ok(self.cached_product(product_id))
    }

    fn cached_product(&self, product_id: &str) -> bool {
        self.catalogue.read().expect("catalogue lock").iter().any(|p| p.product_id == product_id)
    }

    fn products(&self) -> Vec<Product> {
        self.catalogue.read().expect("catalogue lock").clone()
    }

    /// Validates and stores an order. A client hanging up cannot cut a
    /// database call in half: the store's own writer task places the order,
    /// and it is that task which counts and logs a new order ([`counted`]),
    /// so an order committed after its client hung up is counted all the same.
    async fn place(
        &self,
        raw: RawOrder,
        idempotency_key: Option<String>,
        (traceparent, tracestate): (Option<String>, Option<String>),
    ) -> Result<Placed, ApiError> {
        let product = raw.product_id.as_ref().and_then(|p| p.as_ref().ok()).map(|p| p.trim().to_string());
        let exists = match product {
            Some(p) if !p.is_empty() => self.product_exists(&p).await?,
            _ => false,
        };
        let valid = validate(&raw, |_| exists).map_err(|errors| {
            for e in &errors {
                self.metrics.validation_rejections.with_label_values(&[e.field]).inc();
            }
            ApiError::Invalid(errors)
        })?;
        let trace_id = traceparent.as_deref().and_then(observability::trace_id_of).map(str::to_string);
        let order = NewOrder {
            customer_name: valid.customer_name.clone(),
            product_id: valid.product_id.clone(),
            quantity: valid.quantity,
            idempotency_key,
            traceparent,
            tracestate,
        };
        let placed = self.store.place_order_then(order, counted(&self.metrics, trace_id)).await?;
        // A key names one request: the same key with another body is a client
        // bug, answered as such instead of with the other order.
        if let Placed::Existing(existing) = &placed
            && (existing.customer_name != valid.customer_name
                || existing.product_id != valid.product_id
                || existing.quantity != valid.quantity)
        {
            return Err(ApiError::KeyReused(format!(
                "Idempotency-Key was already used for order {} with a different body; use a new key for a new order",
                existing.order_id
            )));
        }
        Ok(placed)
    }
}

/// What the store's writer does for an order the moment it commits: count it
/// (`orderflow_producer_orders_placed_total`, which the ops charts draw) and
/// log it, under the request's span. Exactly once per order: a replayed key
/// answers the existing order and calls nothing.
fn counted(metrics: &Metrics, trace_id: Option<String>) -> Box<dyn FnOnce(&Order) + Send> {
    let placed = metrics.orders_placed.clone();
    let span = tracing::Span::current();
    Box::new(move |order| {
        placed.inc();
        tracing::info!(
            parent: &span,
            order_id = order.order_id.0,
            product_id = %order.product_id,
            quantity = order.quantity,
            trace_id = trace_id.as_deref(),
            "order placed"
        );
    })
}

/// A built producer: database connected and migrated, both ports bound.
pub struct App {
    config: Config,
    http: TcpListener,
    admin: AdminPort,
    state: AppState,
    ops: ops::Ops,
}

impl Service for App {
    const NAME: &'static str = "producer";
    type Config = Config;

    fn shared(config: &Config) -> &service::ServiceArgs {
        &config.service
    }

    /// Checks the admin bind, connects to the database (running migrations),
    /// loads the catalogue, binds both ports.
    async fn build(config: Config) -> anyhow::Result<App> {
        let admin = AdminPort::bind(Self::NAME, &config.service, config.admin_addr, schema::round_trips).await?;
        let url = &config.database.url();
        let store = url.open(schema::Durability::Full).await.with_context(|| format!("connecting to {url}"))?;
        let products = store.products().await.context("loading the catalogue")?;
        let http = TcpListener::bind(config.http_addr)
            .await
            .with_context(|| format!("binding http address {}", config.http_addr))?;
        let metrics = Metrics::register(&admin.registry)?;
        let token = admin.token.clone();
        let ops = ops::Ops {
            store: store.clone(),
            readiness: Readiness::new(&["database"]),
            relays: config.ops_relays.iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
            consumers: config.ops_consumers.iter().map(|u| u.trim_end_matches('/').to_string()).collect(),
            stale_after: Duration::from_secs(config.stale_published_secs),
            actions_enabled: token.is_set() || config.http_addr.ip().is_loopback(),
            token,
            http: reqwest::Client::builder().timeout(Duration::from_secs(2)).build()?,
            unreachable_since: Default::default(),
        };
        let state = AppState {
            store,
            metrics,
            catalogue: Arc::new(RwLock::new(products)),
            recent_orders: config.recent_orders,
        };
        Ok(App { config, http, admin, state, ops })
    }

    fn listening(&self) -> Vec<(&'static str, SocketAddr)> {
        let http = self.http.local_addr().expect("bound listener has an address");
        vec![("http", http), ("admin", self.admin.local_addr())]
    }

    /// Serves until `shutdown`, then lets requests in flight finish within the
    /// grace period (both ports drain at once) and drops the connections left.
    async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let App { config, http, admin, state, ops } = self;
        tracing::info!(
            url = %format!("http://{}/", http.local_addr()?),
            admin = %admin.local_addr(),
            database = %config.database.database_url,
            "producer started"
        );
        let readiness = ops.readiness.clone();
        let mut supervisor = Supervisor::new(&shutdown);
        let watch = watch_database(state.store.clone(), readiness.clone(), supervisor.stop_token());
        supervisor.spawn("database watch", async move {
            watch.await;
            Ok(())
        });
        supervisor.serve_admin(admin, readiness, Router::new());
        let charts = charts::Charts::new(Duration::from_millis(config.charts_sample_ms));
        let sampler = charts::Sampler {
            charts: charts.clone(),
            store: ops.store.clone(),
            placed: state.metrics.orders_placed.clone(),
            consumers: ops.consumers.clone(),
            http: ops.http.clone(),
        };
        supervisor.spawn("chart sampler", charts::run(sampler, supervisor.stop_token()));
        // Ends within the grace period of `shutdown`, whatever clients hold open.
        service::serve(http, router(state, ops, charts), config.service.http_limits(), shutdown.clone()).await;
        supervisor.stop().await?;
        tracing::info!("producer stopped");
        Ok(())
    }
}

fn router(state: AppState, ops: ops::Ops, charts: charts::Charts) -> Router {
    Router::new()
        .route("/", get(pages::index))
        .route("/orders", post(pages::submit))
        .route("/orders/{id}", get(pages::order))
        .route("/api/orders", post(api::create_order).get(api::recent_orders))
        .route("/api/orders/{id}", get(api::get_order))
        .route("/api/products", get(api::products))
        .route("/api/stats", get(api::stats))
        .route("/api/openapi.json", get(api::openapi))
        .route("/static/{name}", get(assets::file))
        .with_state(state.clone())
        .merge(incidents::router(ops.clone()))
        .merge(ops::router(ops))
        .merge(charts::router(charts))
        .layer(axum::extract::DefaultBodyLimit::max(assets::MAX_BODY_BYTES))
        .layer(axum::middleware::from_fn_with_state(state.metrics, every_answer))
}

/// Every answer's metrics and security headers, in one layer: a router's
/// layers are boxes inside boxes, each cloned for every request.
async fn every_answer(
    axum::extract::State(metrics): axum::extract::State<metrics::Metrics>,
    request: axum::extract::Request,
    next: axum::middleware::Next,
) -> axum::response::Response {
    let mut response = metrics::record(&metrics, request, next).await;
    assets::add_security_headers(response.headers_mut());
    response
}

async fn watch_database(store: Arc<dyn OrderStore>, readiness: Readiness, stop: CancellationToken) {
    let mut every = Every::new(Duration::from_secs(1), stop);
    while every.tick().await {
        readiness.record("database", &store.products().await, "ok");
    }
}

/// The request's W3C trace context (`traceparent` only if well formed).
pub(crate) fn trace_context(headers: &axum::http::HeaderMap) -> (Option<String>, Option<String>) {
    let header = |name: &str| headers.get(name).and_then(|v| v.to_str().ok()).map(|v| v.trim().to_string());
    let traceparent = header("traceparent").filter(|value| {
        let parts: Vec<&str> = value.split('-').collect();
        parts.len() == 4
            && [2, 32, 16, 2]
                .iter()
                .zip(&parts)
                .all(|(len, p)| p.len() == *len && p.chars().all(|c| c.is_ascii_hexdigit()))
    });
    let tracestate = traceparent.as_ref().and(header("tracestate")).filter(|s| !s.is_empty() && s.len() <= 512);
    (traceparent.map(|t| t.to_ascii_lowercase()), tracestate)
}

/// The context to store with the order: this request's span when spans are
/// exported, else the context the request came with.
pub(crate) fn outgoing(
    span: &tracing::Span,
    incoming: (Option<String>, Option<String>),
) -> (Option<String>, Option<String>) {
    match observability::trace_headers(span) {
        Some((traceparent, tracestate)) => (Some(traceparent), tracestate),
        None => incoming,
    }
}
