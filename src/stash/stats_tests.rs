//! The metrics a stash reports, read through a recorder of the test's own, and `Stats` as JSON.

use crate::test_util::send;
use crate::{CacheLayer, Policy, Routes, Stash};
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use metrics::{Counter, Gauge, Histogram, Key, KeyName, Metadata, Recorder, SharedString, Unit};
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceBuilder;

/// Counters and gauges by name with their labels sorted (`name{a=1,b=2}`), and the names
/// described.
#[derive(Default)]
struct Recorded {
    counters: Mutex<HashMap<String, Arc<AtomicU64>>>,
    gauges: Mutex<HashMap<String, Arc<AtomicU64>>>,
    histograms: Mutex<HashMap<String, Arc<Samples>>>,
    described: Mutex<Vec<String>>,
}

/// A histogram's samples.
#[derive(Default)]
struct Samples(Mutex<Vec<f64>>);

impl metrics::HistogramFn for Samples {
    fn record(&self, value: f64) {
        self.0.lock().unwrap().push(value);
    }
}

fn series(key: &Key) -> String {
    let mut labels: Vec<String> = key
        .labels()
        .map(|l| format!("{}={}", l.key(), l.value()))
        .collect();
    labels.sort();
    if labels.is_empty() {
        key.name().to_string()
    } else {
        format!("{}{{{}}}", key.name(), labels.join(","))
    }
}

impl Recorded {
    fn counter(&self, name: &str) -> u64 {
        let counters = self.counters.lock().unwrap();
        counters.get(name).map_or(0, |c| c.load(Ordering::Relaxed))
    }

    fn samples(&self, name: &str) -> Vec<f64> {
        let histograms = self.histograms.lock().unwrap();
        histograms
            .get(name)
            .map_or_else(Vec::new, |h| h.0.lock().unwrap().clone())
    }

    fn gauge(&self, name: &str) -> Option<f64> {
        let gauges = self.gauges.lock().unwrap();
        gauges
            .get(name)
            .map(|g| f64::from_bits(g.load(Ordering::Relaxed)))
    }
}

impl Recorder for Recorded {
    fn describe_counter(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().into());
    }
    fn describe_gauge(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().into());
    }
    fn describe_histogram(&self, key: KeyName, _: Option<Unit>, _: SharedString) {
        self.described.lock().unwrap().push(key.as_str().into());
    }
    fn register_counter(&self, key: &Key, _: &Metadata<'_>) -> Counter {
        let mut counters = self.counters.lock().unwrap();
        Counter::from_arc(counters.entry(series(key)).or_default().clone())
    }
    fn register_gauge(&self, key: &Key, _: &Metadata<'_>) -> Gauge {
        let mut gauges = self.gauges.lock().unwrap();
        Gauge::from_arc(gauges.entry(series(key)).or_default().clone())
    }
    fn register_histogram(&self, key: &Key, _: &Metadata<'_>) -> Histogram {
        let mut histograms = self.histograms.lock().unwrap();
        Histogram::from_arc(histograms.entry(series(key)).or_default().clone())
    }
}

#[test]
fn requests_are_counted_by_route_pattern_and_outcome_and_every_metric_is_described() {
    let recorded = Recorded::default();
    let stash = metrics::with_local_recorder(&recorded, || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            // Guarded: its calls are timed.
            let stash = Stash::builder()
                .store(crate::Guarded::new(crate::MemoryStore::default()))
                .build()
                .unwrap();
            let upstream = crate::test_util::Upstream::echo();
            let svc = ServiceBuilder::new()
                .layer(CacheLayer::new(
                    stash.clone(),
                    Routes::new()
                        .get("/a", Policy::ttl(Duration::from_secs(60)))
                        .get("/b/{id}", Policy::ttl(Duration::from_secs(60)))
                        .policy("short", Policy::ttl(Duration::from_secs(5)))
                        .get("/c", Policy::named("short")),
                ))
                .service(upstream);
            let get = |uri: &str, cookie: bool| {
                let mut req = Request::get(uri);
                if cookie {
                    req = req.header("cookie", "session=1");
                }
                req.body(Empty::<Bytes>::new()).unwrap()
            };
            send(svc.clone(), get("/a", false)).await;
            assert!(send(svc.clone(), get("/a", false)).await.is_hit());
            send(svc.clone(), get("/a", true)).await;
            send(svc.clone(), get("/b/7", false)).await;
            send(svc.clone(), get("/c", false)).await;
            stash.stats();
            stash
        })
    });
    let route = |route: &str, outcome: &str| {
        recorded.counter(&format!(
            "tower_stash_requests_total{{outcome={outcome},policy=none,route={route}}}"
        ))
    };
    assert_eq!(route("GET /a", "miss"), 1);
    assert_eq!(route("GET /a", "hit"), 1);
    assert_eq!(route("GET /a", "bypass"), 1);
    assert_eq!(route("GET /b/{id}", "miss"), 1);
    // A route on a named policy is labelled with it.
    assert_eq!(
        recorded.counter("tower_stash_requests_total{outcome=miss,policy=short,route=GET /c}"),
        1
    );
    let counters: Vec<String> = recorded.counters.lock().unwrap().keys().cloned().collect();
    assert!(
        counters.iter().all(|c| !c.contains("/b/7")),
        "a raw path became a label: {counters:?}"
    );
    assert_eq!(recorded.counter("tower_stash_hits_total"), 1);
    assert_eq!(recorded.counter("tower_stash_misses_total"), 3);
    assert_eq!(recorded.counter("tower_stash_bypasses_total"), 1);
    assert_eq!(recorded.counter("tower_stash_stores_total"), 3);
    assert_eq!(
        recorded.gauge("tower_stash_entries{tier=memory}"),
        Some(3.0)
    );
    assert_eq!(
        recorded.gauge("tower_stash_evictions{tier=memory}"),
        Some(0.0)
    );
    // Guarded: its breaker, closed.
    assert_eq!(recorded.gauge("tower_stash_breaker_open"), Some(0.0));
    assert_eq!(recorded.gauge("tower_stash_store_healthy"), Some(1.0));
    assert!(recorded
        .gauge("tower_stash_bytes{tier=memory}")
        .is_some_and(|b| b > 0.0));
    // A hit from memory; the service's time on each miss, by route; the store's fills.
    assert_eq!(
        recorded.counter("tower_stash_tier_hits_total{tier=memory}"),
        1
    );
    assert_eq!(
        recorded
            .samples("tower_stash_upstream_seconds{route=GET /a}")
            .len(),
        1
    );
    assert_eq!(
        recorded
            .samples("tower_stash_upstream_seconds{route=GET /b/{id}}")
            .len(),
        1
    );
    let puts = recorded.samples("tower_stash_store_call_seconds{op=put,outcome=ok}");
    assert_eq!(
        puts.len(),
        3,
        "{:?}",
        recorded
            .histograms
            .lock()
            .unwrap()
            .keys()
            .collect::<Vec<_>>()
    );
    assert!(puts.iter().all(|s| *s >= 0.0 && *s < 10.0));
    let described = recorded.described.lock().unwrap().clone();
    for name in [
        "tower_stash_hits_total",
        "tower_stash_misses_total",
        "tower_stash_requests_total",
        "tower_stash_entries",
        "tower_stash_evictions",
        "tower_stash_store_healthy",
        "tower_stash_breaker_open",
    ] {
        assert!(described.iter().any(|d| d == name), "{name} not described");
    }
    // Every counter and histogram reported is described.
    let histograms: Vec<String> = recorded
        .histograms
        .lock()
        .unwrap()
        .keys()
        .cloned()
        .collect();
    for c in counters.iter().chain(&histograms) {
        let name = c.split('{').next().unwrap();
        assert!(described.iter().any(|d| d == name), "{name} not described");
    }

    let json = serde_json::to_value(stash.stats()).unwrap();
    assert_eq!(json["hits"], 1);
    assert_eq!(json["misses"], 3);
    assert_eq!(json["health"], "ok");
    // Guarded: a breaker, closed.
    assert_eq!(json["breaker"], "closed");
    assert!((json["hit_rate"].as_f64().unwrap() - 1.0 / 4.0).abs() < 1e-9);
}

/// Spans by name, each with its fields as last recorded.
#[derive(Default)]
struct Spans {
    next: AtomicU64,
    spans: Mutex<Vec<(String, HashMap<String, String>)>>,
    metadata: Mutex<Vec<&'static tracing::Metadata<'static>>>,
    /// The spans entered, innermost last (one thread).
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
        spans.push((span.metadata().name().to_owned(), fields));
        self.metadata.lock().unwrap().push(span.metadata());
        self.next.store(spans.len() as u64, Ordering::Relaxed);
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
                let metadata = self.metadata.lock().unwrap()[usize::try_from(id).unwrap() - 1];
                tracing_core::span::Current::new(tracing::span::Id::from_u64(id), metadata)
            }
            None => tracing_core::span::Current::none(),
        }
    }
}

#[test]
fn each_cached_request_has_a_span_with_its_route_key_outcome_and_tier() {
    let spans = Arc::new(Spans::default());
    let dispatch = tracing::Dispatch::from(SharedSpans(spans.clone()));
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
                .service(crate::test_util::Upstream::echo());
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
    let spans = spans.spans.lock().unwrap();
    let requests: Vec<&HashMap<String, String>> = spans
        .iter()
        .filter(|(name, _)| name == "tower_stash.request")
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
        .filter(|(name, _)| name == "tower_stash.invalidate")
        .collect();
    assert_eq!(invalidations.len(), 1);
    assert_eq!(invalidations[0].1["kind"], "key");
    assert_eq!(invalidations[0].1["target"], "b:7");
}

/// [`Spans`] behind an `Arc`, as a subscriber.
struct SharedSpans(Arc<Spans>);

impl tracing::Subscriber for SharedSpans {
    fn enabled(&self, m: &tracing::Metadata<'_>) -> bool {
        self.0.enabled(m)
    }
    fn new_span(&self, span: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        self.0.new_span(span)
    }
    fn record(&self, id: &tracing::span::Id, values: &tracing::span::Record<'_>) {
        self.0.record(id, values)
    }
    fn record_follows_from(&self, a: &tracing::span::Id, b: &tracing::span::Id) {
        self.0.record_follows_from(a, b)
    }
    fn event(&self, e: &tracing::Event<'_>) {
        self.0.event(e)
    }
    fn enter(&self, id: &tracing::span::Id) {
        self.0.enter(id)
    }
    fn exit(&self, id: &tracing::span::Id) {
        self.0.exit(id)
    }
    fn current_span(&self) -> tracing_core::span::Current {
        self.0.current_span()
    }
}
