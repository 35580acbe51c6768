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
