//! tower-stash's spans through OpenTelemetry: `tracing-opentelemetry` turns them into
//! OpenTelemetry spans, exported over OTLP (gRPC) when `OTEL_EXPORTER_OTLP_ENDPOINT` names a
//! collector, and only printed otherwise (each span as it closes, with its fields and time).
//!
//! ```text
//! cargo run --example otel                                                   # printed
//! OTEL_EXPORTER_OTLP_ENDPOINT=http://127.0.0.1:4317 cargo run --example otel  # exported too
//! ```
//!
//! The spans: `tower_stash.request` (debug) per request on a cached route, with `route`, `key`
//! (a digest on session routes), `outcome` and `tier`; `tower_stash.invalidate` (debug) per
//! invalidation; `tower_stash.store` (trace) per store call through `Guarded`.

use axum::routing::get;
use axum::Router;
use http_body_util::BodyExt;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_otlp::WithExportConfig;
use std::time::Duration;
use tower::ServiceExt;
use tower_stash::{CacheLayer, Policy, Routes, Stash};
use tracing_subscriber::filter::Targets;
use tracing_subscriber::fmt::format::FmtSpan;
use tracing_subscriber::prelude::*;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    // Off unless a collector is named.
    let endpoint = std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT")
        .ok()
        .filter(|e| !e.is_empty());
    let provider = match &endpoint {
        Some(endpoint) => {
            let exporter = opentelemetry_otlp::SpanExporter::builder()
                .with_tonic()
                .with_endpoint(endpoint)
                .build()?;
            let resource = opentelemetry_sdk::Resource::builder()
                .with_service_name("tower-stash-example")
                .build();
            Some(
                opentelemetry_sdk::trace::SdkTracerProvider::builder()
                    .with_batch_exporter(exporter)
                    .with_resource(resource)
                    .build(),
            )
        }
        None => None,
    };
    let otel = provider
        .as_ref()
        .map(|p| tracing_opentelemetry::layer().with_tracer(p.tracer("tower-stash")));
    tracing_subscriber::registry()
        .with(Targets::new().with_target("tower_stash", tracing::Level::DEBUG))
        .with(otel)
        .with(tracing_subscriber::fmt::layer().with_span_events(FmtSpan::CLOSE))
        .init();
    match &endpoint {
        Some(e) => println!("exporting spans to {e} (OTLP over gRPC), and printing them"),
        None => println!("OTEL_EXPORTER_OTLP_ENDPOINT is not set: spans are only printed"),
    }

    let stash = Stash::new();
    let app: Router = Router::new()
        .route("/users/{id}", get(|| async { "a user" }))
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get(
                "/users/{id}",
                Policy::ttl(Duration::from_secs(60)).key("user:{id}"),
            ),
        ));
    let get = |path: &str| {
        axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap()
    };
    // A miss, a hit, an invalidation, a miss again: four spans of interest (a response is
    // stored once its body has been read).
    let read = |path: &'static str| {
        let app = app.clone();
        async move {
            let resp = app.oneshot(get(path)).await?;
            resp.into_body().collect().await?;
            Ok::<_, Box<dyn std::error::Error>>(())
        }
    };
    read("/users/1").await?;
    read("/users/1").await?;
    stash.invalidate_key("user:1").await?;
    read("/users/1").await?;

    if let Some(provider) = provider {
        provider.shutdown()?;
    }
    Ok(())
}
