//! The admin port: Prometheus text at `/metrics`, liveness at `/healthz`,
//! readiness (per component) at `/readyz`.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Instant;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use error_reporter::Report;
use prometheus::{Encoder, Registry, TextEncoder};

/// A fresh registry with the process collector (memory, CPU, open fds),
/// `orderflow_build_info{service, version}` and
/// `orderflow_db_round_trips_total` (read from `db_round_trips`) registered.
pub fn new_registry(service: &str, db_round_trips: fn() -> u64) -> Registry {
    let registry = Registry::new();
    let info = prometheus::IntGaugeVec::new(
        prometheus::Opts::new("orderflow_build_info", "Always 1; labels say which service and version run"),
        &["service", "version"],
    )
    .expect("static metric definition");
    info.with_label_values(&[service, env!("CARGO_PKG_VERSION")]).set(1);
    if let Err(error) = registry.register(Box::new(info)) {
        tracing::warn!(error = %Report::new(&error), "build info metric unavailable");
    }
    let help = "Round trips to SQL Server (statements and batches sent); 0 on SQLite";
    if let Err(error) = register_counter_fn(&registry, "orderflow_db_round_trips_total", help, db_round_trips) {
        tracing::warn!(error = %Report::new(&error), "round-trip metric unavailable");
    }
    #[cfg(target_os = "linux")]
    {
        let process = prometheus::process_collector::ProcessCollector::for_self();
        if let Err(error) = registry.register(Box::new(process)) {
            tracing::warn!(error = %Report::new(&error), "process metrics unavailable");
        }
    }
    registry
}

/// Registers a counter whose value is read from `read` at each scrape: for
/// counts kept outside the registry, such as the store's database round trips.
fn register_counter_fn(registry: &Registry, name: &str, help: &str, read: fn() -> u64) -> prometheus::Result<()> {
    let desc = prometheus::core::Desc::new(name.into(), help.into(), vec![], Default::default())?;
    registry.register(Box::new(CounterFn { desc, read }))
}

struct CounterFn {
    desc: prometheus::core::Desc,
    read: fn() -> u64,
}

impl prometheus::core::Collector for CounterFn {
    fn desc(&self) -> Vec<&prometheus::core::Desc> {
        vec![&self.desc]
    }

    fn collect(&self) -> Vec<prometheus::proto::MetricFamily> {
        let mut counter = prometheus::proto::Counter::default();
        counter.set_value((self.read)() as f64);
        let mut metric = prometheus::proto::Metric::default();
        metric.set_counter(counter);
        let mut family = prometheus::proto::MetricFamily::default();
        family.set_name(self.desc.fq_name.clone());
        family.set_help(self.desc.help.clone());
        family.set_field_type(prometheus::proto::MetricType::COUNTER);
        family.mut_metric().push(metric);
        vec![family]
    }
}

/// Named readiness components (`database`, `broker`, ...), each up or down with a note.
#[derive(Clone, Default)]
pub struct Readiness {
    components: Arc<Mutex<BTreeMap<&'static str, Component>>>,
}

/// One component's state, and since when it has been up (or down).
struct Component {
    ok: bool,
    note: String,
    since: Instant,
}

impl Readiness {
    /// Readiness with the given components, all down until reported.
    pub fn new(components: &[&'static str]) -> Self {
        let now = Instant::now();
        let map = components
            .iter()
            .map(|c| (*c, Component { ok: false, note: "not checked yet".into(), since: now }))
            .collect();
        Self { components: Arc::new(Mutex::new(map)) }
    }

    /// Reports a component up (`ok = true`) or down, with a short note; its
    /// time in that state starts again only when it flips.
    pub fn set(&self, component: &'static str, ok: bool, note: impl Into<String>) {
        let mut map = self.components.lock().expect("readiness lock");
        let since = map.get(component).filter(|c| c.ok == ok).map_or_else(Instant::now, |c| c.since);
        map.insert(component, Component { ok, note: note.into(), since });
    }

    /// Reports a component from the outcome of its check: up with `up_note`,
    /// or down with the error and its causes.
    pub fn record<T, E: std::error::Error>(&self, component: &'static str, outcome: &Result<T, E>, up_note: &str) {
        match outcome {
            Ok(_) => self.set(component, true, up_note),
            Err(error) => self.set(component, false, Report::new(error).to_string()),
        }
    }

    /// True when every component is up.
    pub fn is_ready(&self) -> bool {
        self.components.lock().expect("readiness lock").values().all(|c| c.ok)
    }

    /// `{"ready", "components": {name: {"ok", "note", "for_seconds"}}}`, as
    /// `/readyz` answers: `for_seconds` is how long it has been up, or down.
    pub fn report(&self) -> serde_json::Value {
        let map = self.components.lock().expect("readiness lock");
        let components: serde_json::Map<String, serde_json::Value> = map
            .iter()
            .map(|(k, c)| {
                let json =
                    serde_json::json!({ "ok": c.ok, "note": c.note, "for_seconds": c.since.elapsed().as_secs() });
                ((*k).to_string(), json)
            })
            .collect();
        serde_json::json!({ "ready": map.values().all(|c| c.ok), "components": components })
    }
}

#[derive(Clone)]
struct AdminState {
    registry: Registry,
    readiness: Readiness,
}

/// `/metrics`, `/healthz`, `/readyz`; services may merge their own admin routes.
pub fn admin_router(registry: Registry, readiness: Readiness) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(AdminState { registry, readiness })
}

async fn metrics(State(state): State<AdminState>) -> impl IntoResponse {
    let mut buf = Vec::new();
    let encoder = TextEncoder::new();
    match encoder.encode(&state.registry.gather(), &mut buf) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_string())], buf).into_response(),
        Err(error) => {
            tracing::error!(error = %Report::new(&error), "encoding metrics failed");
            StatusCode::INTERNAL_SERVER_ERROR.into_response()
        }
    }
}

async fn readyz(State(state): State<AdminState>) -> impl IntoResponse {
    let code = if state.readiness.is_ready() { StatusCode::OK } else { StatusCode::SERVICE_UNAVAILABLE };
    (code, axum::Json(state.readiness.report()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_check_that_fails_reports_its_error_with_the_causes() {
        let readiness = Readiness::new(&["database", "broker"]);
        let refused = std::io::Error::other(anyhow::anyhow!("connection refused").context("sqlite pool"));
        readiness.record("database", &Err::<(), _>(refused), "ok");
        readiness.record("broker", &Ok::<_, std::io::Error>(()), "connected");
        let report = readiness.report();
        assert_eq!(report["ready"], false);
        assert_eq!(report["components"]["broker"]["ok"], true);
        assert_eq!(report["components"]["broker"]["note"], "connected");
        assert_eq!(report["components"]["database"]["note"], "sqlite pool: connection refused");
    }

    #[test]
    fn a_component_keeps_its_since_until_it_flips() {
        let readiness = Readiness::new(&["broker"]);
        let since = |r: &Readiness| r.components.lock().unwrap()["broker"].since;
        readiness.set("broker", false, "connection refused");
        let down = since(&readiness);
        readiness.set("broker", false, "connection reset");
        assert_eq!(since(&readiness), down, "still down: the same outage");
        let flipped = Instant::now();
        readiness.set("broker", true, "connected");
        assert!(since(&readiness) >= flipped && flipped >= down, "up again: a new state");
        assert!(readiness.report()["components"]["broker"]["for_seconds"].is_u64());
    }
}
