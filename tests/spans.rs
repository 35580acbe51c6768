//! The spans a cache emits, read through a subscriber of the test's own: one per request on
//! a cached route (route, key or its digest, outcome, tier) and one per invalidation. Alone in
//! its test binary: tracing computes which spans are on for the whole process, and a test
//! running beside it without a subscriber can race that computation.

mod support;

use bytes::Bytes;
use http::Request;
use http_body_util::{Empty, Full};
use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Duration;
use support::send;
use tower::ServiceBuilder;
use tower_stash::{CacheLayer, Policy, Routes, Stash};

/// The spans made (a span's id is its place here, from 1), each with its fields as last
/// recorded; and those entered, innermost last (one thread).
#[derive(Default)]
struct Spans {
    spans: Mutex<Vec<(&'static tracing::Metadata<'static>, HashMap<String, String>)>>,
    entered: Mutex<Vec<u64>>,
}

struct Fields<'a>(&'a mut HashMap<String, String>);

impl tracing::field::Visit for Fields<'_> {
    fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
        self.0.insert(field.name().to_owned(), format!("{value:?}"));
    }
    fn record_str(&mut self, field: &tracing::field::Field, value: &str) {
        self.0.insert(field.name().to_owned(), value.to_owned());
    }
}

impl tracing::Subscriber for Spans {
    fn enabled(&self, _: &tracing::Metadata<'_>) -> bool {
        true
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        let mut fields = HashMap::new();
        span.record(&mut Fields(&mut fields));
        let mut spans = self.spans.lock().unwrap();
        spans.push((span.metadata(), fields));
        tracing::span::Id::from_u64(spans.len() as u64)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        let mut spans = self.spans.lock().unwrap();
        let index = usize::try_from(id.into_u64()).unwrap() - 1;
        values.record(&mut Fields(&mut spans[index].1));
    }
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, _: &tracing::Event<'_>) {}
    fn enter(&self, id: &tracing::span::Id) {
        self.entered.lock().unwrap().push(id.into_u64());
    }
    fn exit(&self, _: &tracing::span::Id) {
        self.entered.lock().unwrap().pop();
    }
    fn current_span(&self) -> tracing_core::span::Current {
        match self.entered.lock().unwrap().last() {
            Some(&id) => {
                let metadata = self.spans.lock().unwrap()[usize::try_from(id).unwrap() - 1].0;
                tracing_core::span::Current::new(tracing::span::Id::from_u64(id), metadata)
            }
            None => tracing_core::span::Current::none(),
        }
    }
}

#[test]
fn each_cached_request_has_a_span_with_its_route_key_outcome_and_tier() {
    let dispatch = tracing::Dispatch::new(Spans::default());
    tracing::dispatcher::with_default(&dispatch, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let stash = Stash::new();
            let svc = ServiceBuilder::new()
                .layer(CacheLayer::new(
                    stash.clone(),
                    Routes::new()
                        .get(
                            "/b/{id}",
                            Policy::ttl(Duration::from_secs(60)).key("b:{id}"),
                        )
                        .get(
                            "/me",
                            Policy::ttl(Duration::from_secs(60))
                                .key("me")
                                .session_cookie("sid"),
                        ),
                ))
                .service(tower::service_fn(|req: Request<Empty<Bytes>>| async move {
                    let body = format!("answer for {}", req.uri().path());
                    Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                        body,
                    ))))
                }));
            let get = |uri: &str| {
                let mut req = Request::get(uri);
                if uri == "/me" {
                    req = req.header("cookie", "sid=secret-session-id");
                }
                req.body(Empty::<Bytes>::new()).unwrap()
            };
            send(svc.clone(), get("/b/7")).await;
            send(svc.clone(), get("/b/7")).await;
            send(svc.clone(), get("/me")).await;
            send(svc.clone(), get("/elsewhere")).await;
            stash.invalidate_key("b:7").await.unwrap();
        });
    });
    let spans = dispatch
        .downcast_ref::<Spans>()
        .unwrap()
        .spans
        .lock()
        .unwrap();
    let requests: Vec<&HashMap<String, String>> = spans
        .iter()
        .filter(|(meta, _)| meta.name() == "tower_stash.request")
        .map(|(_, fields)| fields)
        .collect();
    // One per request on a cached route: none for /elsewhere.
    assert_eq!(requests.len(), 3, "{requests:?}");
    let field = |i: usize, name: &str| requests[i].get(name).cloned().unwrap_or_default();
    assert_eq!(field(0, "route"), "GET /b/{id}");
    assert!(field(0, "key").ends_with("b:7"), "{requests:?}");
    assert_eq!(field(0, "outcome"), "miss");
    assert_eq!(field(1, "outcome"), "hit");
    assert_eq!(field(1, "tier"), "memory");
    // A session's key: a digest, never the session id.
    assert!(field(2, "key").starts_with('#'), "{requests:?}");
    assert!(!field(2, "key").contains("secret"), "{requests:?}");
    let invalidations: Vec<_> = spans
        .iter()
        .filter(|(meta, _)| meta.name() == "tower_stash.invalidate")
        .collect();
    assert_eq!(invalidations.len(), 1);
    assert_eq!(invalidations[0].1["kind"], "key");
    assert_eq!(invalidations[0].1["target"], "b:7");
}
