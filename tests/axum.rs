//! CacheLayer on real axum routers served over loopback TCP.

mod support;

use axum::body::Body;
use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Extension, Router};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{fetch, send, serve, within};
use tower_stash::{CacheHint, CacheLayer, Policy, Routes, Stash};

const HOUR: Duration = Duration::from_secs(3600);

fn counted(
    calls: &Arc<AtomicUsize>,
) -> impl Fn(Path<String>) -> std::future::Ready<String> + Clone {
    let calls = calls.clone();
    move |Path(id): Path<String>| {
        let n = calls.fetch_add(1, Ordering::SeqCst) + 1;
        std::future::ready(format!("user {id} #{n}"))
    }
}

fn cache(stash: &Stash) -> CacheLayer {
    CacheLayer::new(
        stash.clone(),
        Routes::new().get(
            "/users/{id}",
            Policy::ttl(Duration::from_secs(3600)).key("user:{id}"),
        ),
    )
}

#[tokio::test]
async fn router_layer_caches_named_routes_and_passes_others() {
    let users = Arc::new(AtomicUsize::new(0));
    let others = Arc::new(AtomicUsize::new(0));
    let stash = Stash::new();
    let app = Router::new()
        .route("/users/{id}", get(counted(&users)))
        .route("/things/{id}", get(counted(&others)))
        .layer(cache(&stash));
    let addr = serve(app).await;

    let (first, body) = fetch(addr, support::get(addr, "/users/1")).await;
    assert_eq!(body, "user 1 #1");
    assert_eq!(
        first.headers["cache-status"],
        "tower-stash; fwd=miss; stored"
    );
    let (hit, body) = fetch(addr, support::get(addr, "/users/1")).await;
    assert_eq!(body, "user 1 #1");
    assert_eq!(hit.headers["cache-status"], "tower-stash; hit");
    assert_eq!(hit.headers["content-length"], "9");
    assert_eq!(
        fetch(addr, support::get(addr, "/users/2")).await.1,
        "user 2 #2"
    );
    assert_eq!(users.load(Ordering::SeqCst), 2);

    for n in 1..=2 {
        let (parts, body) = fetch(addr, support::get(addr, "/things/1")).await;
        assert_eq!(body, format!("user 1 #{n}"));
        assert!(!parts.headers.contains_key("cache-status"));
    }
    // 404s from the router are not ours either.
    let (parts, _) = fetch(addr, support::get(addr, "/nowhere")).await;
    assert_eq!(parts.status, StatusCode::NOT_FOUND);
    let stats = stash.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 2, 2));
}

#[tokio::test]
async fn route_layer_caches_only_its_routes() {
    let users = Arc::new(AtomicUsize::new(0));
    let stash = Stash::new();
    let app = Router::new()
        .route("/users/{id}", get(counted(&users)))
        .route_layer(cache(&stash))
        .route("/health", get(|| async { "ok" }));
    let addr = serve(app).await;
    fetch(addr, support::get(addr, "/users/9")).await;
    let (hit, body) = fetch(addr, support::get(addr, "/users/9")).await;
    assert_eq!(body, "user 9 #1");
    assert_eq!(hit.headers["cache-status"], "tower-stash; hit");
    let (health, _) = fetch(addr, support::get(addr, "/health")).await;
    assert!(!health.headers.contains_key("cache-status"));
    assert_eq!(users.load(Ordering::SeqCst), 1);
}

#[tokio::test]
async fn handlers_use_cache_hint_extensions() {
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let stash = Stash::new();
    let app = Router::new()
        .route(
            "/drafts/{id}",
            get(move |Path(id): Path<u32>| {
                let n = c.fetch_add(1, Ordering::SeqCst);
                async move {
                    if id == 0 {
                        (Extension(CacheHint::skip()), format!("draft #{n}")).into_response()
                    } else {
                        (
                            Extension(CacheHint::new().tags(["drafts"])),
                            format!("post #{n}"),
                        )
                            .into_response()
                    }
                }
            }),
        )
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get("/drafts/{id}", Policy::ttl(HOUR)),
        ));
    let addr = serve(app).await;
    for _ in 0..2 {
        fetch(addr, support::get(addr, "/drafts/0")).await;
        fetch(addr, support::get(addr, "/drafts/1")).await;
    }
    assert_eq!(calls.load(Ordering::SeqCst), 3);
}

#[tokio::test]
async fn head_over_tcp_is_answered_from_the_get_entry() {
    let users = Arc::new(AtomicUsize::new(0));
    let stash = Stash::new();
    let app = Router::new()
        .route("/users/{id}", get(counted(&users)))
        .layer(cache(&stash));
    let addr = serve(app).await;
    fetch(addr, support::get(addr, "/users/3")).await;
    let mut head = support::get(addr, "/users/3");
    *head.method_mut() = http::Method::HEAD;
    let (parts, body) = fetch(addr, head).await;
    assert_eq!(parts.headers["cache-status"], "tower-stash; hit");
    assert_eq!(parts.headers["content-length"], "9");
    assert!(body.is_empty());
    assert_eq!(users.load(Ordering::SeqCst), 1);
}

type Feed = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// A route whose body the test feeds chunk by chunk; each call hands the test its sender.
fn streaming_app(
    stash: &Stash,
    limit: usize,
) -> (
    Router,
    tokio::sync::mpsc::UnboundedReceiver<Feed>,
    Arc<Mutex<usize>>,
) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Arc::new(Mutex::new(0));
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/report",
            get(move || {
                *c.lock().unwrap() += 1;
                let (feed, chunks) = tokio::sync::mpsc::channel(16);
                tx.send(feed).unwrap();
                let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
                    rx.recv().await.map(|c| (c, rx))
                });
                std::future::ready(Body::from_stream(stream))
            }),
        )
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get("/report", Policy::ttl(HOUR).max_body_size(limit)),
        ));
    (app, rx, calls)
}

/// The client reads the first chunk before the handler produces the last one.
async fn stream_report(
    limit: usize,
) -> (
    Stash,
    Arc<Mutex<usize>>,
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Feed>,
) {
    let stash = Stash::new();
    let (app, mut feeds, calls) = streaming_app(&stash, limit);
    let addr = serve(app).await;
    let resp = send(addr, support::get(addr, "/report")).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let feed = within("the handler", feeds.recv()).await.unwrap();
    let mut body = resp.into_body();
    let chunk = Bytes::from(vec![b'a'; 1000]);
    feed.send(Ok(chunk.clone())).await.unwrap();
    let first = within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(first.into_data().unwrap(), chunk);
    for _ in 0..3 {
        feed.send(Ok(chunk.clone())).await.unwrap();
    }
    drop(feed);
    let rest = within("the rest", body.collect()).await.unwrap().to_bytes();
    assert_eq!(rest.len(), 3000);
    (stash, calls, addr, feeds)
}

#[tokio::test]
async fn streams_a_body_under_the_limit_then_serves_it() {
    let (stash, calls, addr, _feeds) = stream_report(10_000).await;
    // The entry is written when the body ends: await it, bounded.
    support::stored(&stash, 1).await;
    let (parts, body) = fetch(addr, support::get(addr, "/report")).await;
    assert_eq!(parts.headers["cache-status"], "tower-stash; hit");
    assert_eq!(body.len(), 4000);
    assert_eq!(*calls.lock().unwrap(), 1);
}

#[tokio::test]
async fn streams_a_body_over_the_limit_in_full_and_stores_nothing() {
    let (stash, calls, addr, mut feeds) = stream_report(2500).await;
    assert_eq!(stash.stats().stores, 0);
    let resp = send(addr, support::get(addr, "/report")).await;
    // A streaming body cannot be promised `stored` before it ends.
    assert_eq!(resp.headers()["cache-status"], "tower-stash; fwd=miss");
    drop(
        within("the second handler call", feeds.recv())
            .await
            .unwrap(),
    );
    assert_eq!(*calls.lock().unwrap(), 2);
}

#[tokio::test]
async fn a_streamed_body_with_a_declared_length_is_stored() {
    // hyper may stop polling a body once the declared length is written: the entry must
    // still be stored.
    let stash = Stash::new();
    let app = Router::new()
        .route(
            "/sized",
            get(|| async {
                let chunks = futures_util::stream::iter(
                    ["abc", "def"]
                        .map(|c| Ok::<_, std::io::Error>(Bytes::from_static(c.as_bytes()))),
                );
                ([("content-length", "6")], Body::from_stream(chunks))
            }),
        )
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get("/sized", Policy::ttl(HOUR)),
        ));
    let addr = serve(app).await;
    let (_, body) = fetch(addr, support::get(addr, "/sized")).await;
    assert_eq!(body, "abcdef");
    support::stored(&stash, 1).await;
    let (parts, body) = fetch(addr, support::get(addr, "/sized")).await;
    assert_eq!(parts.headers["cache-status"], "tower-stash; hit");
    assert_eq!(body, "abcdef");
}
