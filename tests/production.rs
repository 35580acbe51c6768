//! What a team running the crate in production meets first, against real redis-server
//! processes: the check at start and the readiness probe, what an outage writes to the logs,
//! TLS, ACL users, a client the application already has, and Sentinel.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::send;
use tower::Layer;
use tower_stash::{CacheLayer, Health, Policy, Routes, Stash};

/// Waits (every 10 ms, at most 10 s) until `cond` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

/// A cached route over a handler that answers at once.
fn service(
    stash: &Stash,
) -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<tower_stash::CacheBody<Full<Bytes>>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let routes = Routes::new().get(
        "/items/{id}",
        Policy::ttl(Duration::from_secs(60)).key("item:{id}"),
    );
    CacheLayer::new(stash.clone(), routes).layer(tower::service_fn(
        |req: Request<Empty<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(Full::from(format!("item at {}", req.uri()))))
        },
    ))
}

// ---- Readiness and logs ----

/// The lines logged at info level and above, as `LEVEL message fields`.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

struct Collect(Arc<Lines>);

impl tracing::Subscriber for Collect {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                match field.name() {
                    "message" => write!(self.0, " {value:?}"),
                    name => write!(self.0, " {name}={value:?}"),
                }
                .unwrap();
            }
        }
        let mut text = Text(event.metadata().level().to_string());
        event.record(&mut text);
        self.0 .0.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Redis killed under 10,000 requests (each a lookup and a fill, the stash as
/// `StashBuilder::redis` builds it): every request is answered, and the outage writes a
/// handful of lines (the first error, the breaker opening, the bus and the pool noticing, the
/// breaker closing with the count of calls it refused), not two warnings per request.
#[test]
fn an_outage_of_10_000_requests_logs_a_bounded_number_of_lines() {
    let lines = Arc::new(Lines::default());
    let _logs = tracing::subscriber::set_default(Collect(lines.clone()));
    // One thread: every task of the stash logs to this thread's subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut redis = RedisServer::start();
        let stash = Stash::builder().redis(redis.url()).build().unwrap();
        eventually("ready", || async { stash.ready().await.is_ok() }).await;
        let svc = service(&stash);
        assert_eq!(
            send(svc.clone(), request("/items/warm")).await.status,
            StatusCode::OK
        );
        lines.0.lock().unwrap().clear();

        redis.kill();
        let start = Instant::now();
        for i in 0..10_000 {
            let got = send(svc.clone(), request(&format!("/items/{i}"))).await;
            assert_eq!(got.status, StatusCode::OK);
        }
        let took = start.elapsed();
        assert_eq!(stash.health(), Health::Degraded);
        let errors = stash.stats().store_errors;
        assert!(errors >= 20_000, "{errors} store errors");
        println!("10,000 requests in {took:?}, {errors} store errors");
        assert!(stash.ready().await.is_err());

        redis.restart();
        eventually("the breaker closed", || async {
            stash.health() == Health::Ok
        })
        .await;
        eventually("ready again", || async { stash.ready().await.is_ok() }).await;
        assert!(stash.ping().await.unwrap() < Duration::from_secs(1));
    });
    let lines = lines.0.lock().unwrap().clone();
    println!("{} lines logged for the outage:", lines.len());
    for line in &lines {
        println!("  {line}");
    }
    let warnings = lines.iter().filter(|l| !l.starts_with("INFO")).count();
    assert!(warnings <= 6, "{warnings} warnings and errors");
    assert!(lines.len() <= 10, "{} lines", lines.len());
    let closed = lines
        .iter()
        .find(|l| l.contains("circuit closed"))
        .expect("a line saying the breaker closed");
    let refused: u64 = closed
        .split("refused=")
        .nth(1)
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {closed}"));
    assert!(refused >= 19_000, "{closed}");
}
