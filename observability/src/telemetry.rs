//! Logging and tracing set-up, and W3C trace-context propagation helpers.
//!
//! Invariants: spans are exported over OTLP only when
//! `OTEL_EXPORTER_OTLP_ENDPOINT` is set (otherwise the per-message spans are
//! disabled and cost nothing); trace context travels as W3C `traceparent` /
//! `tracestate` strings, stored in the outbox row and sent as STOMP headers.

use std::collections::HashMap;

use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{TraceContextExt, TracerProvider as _};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing::Span;
use tracing_opentelemetry::OpenTelemetrySpanExt;
use tracing_subscriber::filter::{EnvFilter, LevelFilter, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, Registry};

/// Keeps the exporter alive; flushes spans when shut down.
pub struct Telemetry {
    provider: Option<SdkTracerProvider>,
}

impl Telemetry {
    /// Flushes and stops span export (call before exit).
    pub fn shutdown(self) {
        if let Some(provider) = self.provider
            && let Err(error) = provider.shutdown()
        {
            eprintln!("span export did not shut down cleanly: {error}");
        }
    }
}

/// Installs the global subscriber: `RUST_LOG`-filtered logs on stderr (text,
/// coloured only when stderr is a terminal, or JSON lines when `json`), plus OTLP span export for `service` when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn init_tracing(service: &'static str, json: bool) -> Telemetry {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    // Colour only on a terminal: a log written to a file or a pipe stays plain text.
    let colour = std::io::IsTerminal::is_terminal(&std::io::stderr());
    let logs = match json {
        true => tracing_subscriber::fmt::layer().json().with_writer(std::io::stderr).with_filter(filter).boxed(),
        false => {
            tracing_subscriber::fmt::layer().with_ansi(colour).with_writer(std::io::stderr).with_filter(filter).boxed()
        }
    };
    let provider = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").ok().filter(|e| !e.is_empty()).and_then(|_| {
        match opentelemetry_otlp::SpanExporter::builder().with_tonic().build() {
            Ok(exporter) => Some(
                SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(opentelemetry_sdk::Resource::builder().with_service_name(service).build())
                    .build(),
            ),
            Err(error) => {
                eprintln!("OTLP exporter unavailable, spans will not be exported: {error}");
                None
            }
        }
    });
    let spans = provider.as_ref().map(|p| span_layer(p, service));
    let result = Registry::default().with(logs).with(spans).try_init();
    if let Err(error) = result {
        eprintln!("tracing already initialised: {error}");
    }
    Telemetry { provider }
}

/// The layer that turns our spans into OpenTelemetry spans. Public so that
/// tests can install it with an in-memory exporter.
pub fn span_layer<S>(provider: &SdkTracerProvider, service: &'static str) -> Box<dyn Layer<S> + Send + Sync>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a> + Send + Sync,
{
    let targets = Targets::new()
        .with_target("producer", LevelFilter::DEBUG)
        .with_target("relay", LevelFilter::DEBUG)
        .with_target("consumer", LevelFilter::DEBUG)
        .with_default(LevelFilter::OFF);
    tracing_opentelemetry::layer().with_tracer(provider.tracer(service)).with_filter(targets).boxed()
}

struct Carrier<'a>(&'a HashMap<String, String>);

impl Extractor for Carrier<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }
    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

struct Collect(HashMap<String, String>);

impl Injector for Collect {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_string(), value);
    }
}

/// Makes the trace in `traceparent`/`tracestate` the parent of `span` and
/// records its trace id on the span's `trace_id` field (when declared).
pub fn continue_trace(span: &Span, traceparent: Option<&str>, tracestate: Option<&str>) {
    let Some(traceparent) = traceparent else { return };
    let mut headers = HashMap::from([("traceparent".to_string(), traceparent.to_string())]);
    if let Some(state) = tracestate {
        headers.insert("tracestate".into(), state.to_string());
    }
    let parent = TraceContextPropagator::new().extract(&Carrier(&headers));
    if parent.span().span_context().is_valid() {
        let _ = span.set_parent(parent);
    }
    if let Some(trace_id) = trace_id_of(traceparent) {
        span.record("trace_id", trace_id);
    }
}

/// The W3C headers naming `span` as the parent, when spans are exported;
/// `None` when they are not (callers then pass on the context they received).
pub fn trace_headers(span: &Span) -> Option<(String, Option<String>)> {
    let cx = span.context();
    if !cx.span().span_context().is_valid() {
        return None;
    }
    let mut out = Collect(HashMap::new());
    TraceContextPropagator::new().inject_context(&cx, &mut out);
    let traceparent = out.0.remove("traceparent")?;
    let tracestate = out.0.remove("tracestate").filter(|s| !s.is_empty());
    Some((traceparent, tracestate))
}

/// The trace id inside a W3C `traceparent` (`00-<trace id>-<span id>-<flags>`).
pub fn trace_id_of(traceparent: &str) -> Option<&str> {
    let id = traceparent.split('-').nth(1)?;
    (id.len() == 32 && id.chars().all(|c| c.is_ascii_hexdigit())).then_some(id)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_trace_id_is_read_from_a_traceparent() {
        assert_eq!(
            trace_id_of("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            Some("0af7651916cd43dd8448eb211c80319c")
        );
        assert_eq!(trace_id_of("garbage"), None);
    }

    #[test]
    fn without_an_exporter_a_span_has_no_headers_to_send() {
        assert_eq!(trace_headers(&tracing::info_span!("no subscriber")), None);
    }
}
