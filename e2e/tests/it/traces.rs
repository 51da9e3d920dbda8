//! One trace per order, across the outbox row and the broker: the HTTP request,
//! the relay's publish and the consumer's processing, checked with the SDK's
//! in-memory exporter.

use std::sync::OnceLock;
use std::time::Duration;

use e2e::broker::shared_broker_url;
use e2e::stack::Stack;
use e2e::wait_for;
use opentelemetry::Value;
use opentelemetry::trace::SpanId;
use opentelemetry_sdk::trace::{InMemorySpanExporter, SdkTracerProvider, SpanData};
use tracing_subscriber::layer::SubscriberExt;

/// Installs (once per test process) a global subscriber exporting our spans to memory.
fn exporter() -> InMemorySpanExporter {
    static EXPORTER: OnceLock<(InMemorySpanExporter, SdkTracerProvider)> = OnceLock::new();
    EXPORTER
        .get_or_init(|| {
            let exporter = InMemorySpanExporter::default();
            let provider = SdkTracerProvider::builder().with_simple_exporter(exporter.clone()).build();
            let subscriber = tracing_subscriber::registry().with(observability::span_layer(&provider, "orderflow"));
            tracing::subscriber::set_global_default(subscriber).expect("no other global subscriber in this process");
            (exporter, provider)
        })
        .0
        .clone()
}

fn order_id_of(span: &SpanData) -> Option<i64> {
    span.attributes.iter().find(|kv| kv.key.as_str() == "order_id").and_then(|kv| match &kv.value {
        Value::I64(v) => Some(*v),
        Value::String(s) => s.as_str().parse().ok(),
        _ => None,
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_order_is_one_trace_from_the_request_to_the_consumer() {
    let exporter = exporter();
    let stack = Stack::start(&shared_broker_url()).await;
    let order = stack.place_order("Traced", "P123", 2).await;
    stack.wait_until_settled(1, Duration::from_secs(30)).await;

    // The outbox row carries the request's trace context: that names this order's trace
    // (other tests' stacks have orders with the same ids).
    let traceparent = stack.probe.traceparents(schema::OrderId(order)).await.unwrap().remove(0).expect("a traceparent");
    let trace_id = observability::trace_id_of(&traceparent).expect("a W3C traceparent").to_string();
    let in_trace = wait_for("the three spans of the order", Duration::from_secs(30), || async {
        let all = exporter.get_finished_spans().ok()?;
        let mine: Vec<SpanData> =
            all.into_iter().filter(|s| s.span_context.trace_id().to_string() == trace_id).collect();
        (mine.len() >= 3).then_some(mine)
    })
    .await;
    let request = in_trace.iter().find(|s| s.name == "POST /api/orders").expect("the request span").clone();
    assert_eq!(order_id_of(&request), Some(order));
    let names: Vec<&str> = in_trace.iter().map(|s| s.name.as_ref()).collect();
    assert_eq!(in_trace.len(), 3, "exactly three spans in the order's trace: {names:?}");
    let publish = in_trace.iter().find(|s| s.name == "outbox.publish").expect("a publish span");
    let process = in_trace.iter().find(|s| s.name == "order.process").expect("a process span");
    assert_eq!(request.parent_span_id, SpanId::INVALID, "the request starts the trace");
    assert_eq!(publish.parent_span_id, request.span_context.span_id(), "publish is a child of the request");
    assert_eq!(process.parent_span_id, publish.span_context.span_id(), "processing is a child of the publish");
    assert_eq!(order_id_of(publish), Some(order));
    assert_eq!(order_id_of(process), Some(order));
    stack.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incoming_traceparent_is_continued() {
    let exporter = exporter();
    let stack = Stack::start(&shared_broker_url()).await;
    let caller = "4bf92f3577b34da6a3ce929d0e0e4736";
    let response = reqwest::Client::new()
        .post(format!("{}/api/orders", stack.base_url()))
        .header("traceparent", format!("00-{caller}-00f067aa0ba902b7-01"))
        .json(&serde_json::json!({"customer_name": "Upstream", "product_id": "P200", "quantity": 1}))
        .send()
        .await
        .unwrap();
    assert_eq!(response.status().as_u16(), 201);
    stack.wait_until_settled(1, Duration::from_secs(30)).await;
    let in_trace = wait_for("three spans in the caller's trace", Duration::from_secs(30), || async {
        let all = exporter.get_finished_spans().ok()?;
        let mine: Vec<SpanData> = all.into_iter().filter(|s| s.span_context.trace_id().to_string() == caller).collect();
        (mine.len() >= 3).then_some(mine)
    })
    .await;
    assert_eq!(in_trace.len(), 3);
    let request = in_trace.iter().find(|s| s.name == "POST /api/orders").unwrap();
    assert_eq!(request.parent_span_id.to_string(), "00f067aa0ba902b7", "the caller's span is the parent");
    stack.shutdown().await;
}
