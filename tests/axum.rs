//! CacheLayer on real axum routers served over loopback TCP.

mod support;

use axum::body::Body;
use axum::extract::Path;
use axum::response::IntoResponse;
use axum::routing::{get, MethodRouter};
use axum::{Extension, Router};
use bytes::Bytes;
use http::StatusCode;
use http_body_util::BodyExt;
use std::time::Duration;
use support::{fetch, fetch_streaming, serve, within, Counter};
use tower_stash::{CacheHint, CacheLayer, Policy, Routes, Stash};

const HOUR: Duration = Duration::from_secs(3600);

/// A GET route answering `user {id} #{call number}`, its calls counted by `calls`.
fn counted(calls: &Counter) -> MethodRouter {
    let calls = calls.clone();
    get(move |Path(id): Path<String>| {
        let calls = calls.clone();
        async move { format!("user {id} #{}", calls.enter().await) }
    })
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
    let users = Counter::default();
    let others = Counter::default();
    let stash = Stash::new();
    let app = Router::new()
        .route("/users/{id}", counted(&users))
        .route("/things/{id}", counted(&others))
        .layer(cache(&stash));
    let addr = serve(app).await;

    let first = fetch(addr, support::get(addr, "/users/1")).await;
    assert_eq!(first.body, "user 1 #1");
    assert_eq!(
        first.headers["cache-status"],
        "tower-stash; fwd=miss; stored"
    );
    let hit = fetch(addr, support::get(addr, "/users/1")).await;
    assert_eq!(hit.body, "user 1 #1");
    assert_eq!(hit.headers["cache-status"], "tower-stash; hit");
    assert_eq!(hit.headers["content-length"], "9");
    assert_eq!(
        fetch(addr, support::get(addr, "/users/2")).await.body,
        "user 2 #2"
    );
    assert_eq!(users.calls(), 2);

    for n in 1..=2 {
        let got = fetch(addr, support::get(addr, "/things/1")).await;
        assert_eq!(got.body, format!("user 1 #{n}"));
        assert!(!got.headers.contains_key("cache-status"));
    }
    // 404s from the router are not ours either.
    let got = fetch(addr, support::get(addr, "/nowhere")).await;
    assert_eq!(got.status, StatusCode::NOT_FOUND);
    let stats = stash.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 2, 2));
}

#[tokio::test]
async fn route_layer_caches_only_its_routes() {
    let users = Counter::default();
    let stash = Stash::new();
    let app = Router::new()
        .route("/users/{id}", counted(&users))
        .route_layer(cache(&stash))
        .route("/health", get(|| async { "ok" }));
    let addr = serve(app).await;
    fetch(addr, support::get(addr, "/users/9")).await;
    let hit = fetch(addr, support::get(addr, "/users/9")).await;
    assert_eq!(hit.body, "user 9 #1");
    assert_eq!(hit.headers["cache-status"], "tower-stash; hit");
    let health = fetch(addr, support::get(addr, "/health")).await;
    assert!(!health.headers.contains_key("cache-status"));
    assert_eq!(users.calls(), 1);
}

#[tokio::test]
async fn handlers_use_cache_hint_extensions() {
    let calls = Counter::default();
    let c = calls.clone();
    let stash = Stash::new();
    let app = Router::new()
        .route(
            "/drafts/{id}",
            get(move |Path(id): Path<u32>| {
                let c = c.clone();
                async move {
                    let n = c.enter().await;
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
    assert_eq!(calls.calls(), 3);
}

#[tokio::test]
async fn head_over_tcp_is_answered_from_the_get_entry() {
    let users = Counter::default();
    let stash = Stash::new();
    let app = Router::new()
        .route("/users/{id}", counted(&users))
        .layer(cache(&stash));
    let addr = serve(app).await;
    fetch(addr, support::get(addr, "/users/3")).await;
    let mut head = support::get(addr, "/users/3");
    *head.method_mut() = http::Method::HEAD;
    let got = fetch(addr, head).await;
    assert_eq!(got.headers["cache-status"], "tower-stash; hit");
    assert_eq!(got.headers["content-length"], "9");
    assert!(got.body.is_empty());
    assert_eq!(users.calls(), 1);
}

type Feed = tokio::sync::mpsc::Sender<Result<Bytes, std::io::Error>>;

/// A route whose body the test feeds chunk by chunk; each call hands the test its sender.
fn streaming_app(
    stash: &Stash,
    limit: usize,
) -> (Router, tokio::sync::mpsc::UnboundedReceiver<Feed>, Counter) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let calls = Counter::default();
    let c = calls.clone();
    let app = Router::new()
        .route(
            "/report",
            get(move || {
                let (c, tx) = (c.clone(), tx.clone());
                async move {
                    c.enter().await;
                    let (feed, chunks) = tokio::sync::mpsc::channel(16);
                    tx.send(feed).unwrap();
                    let stream = futures_util::stream::unfold(chunks, |mut rx| async move {
                        rx.recv().await.map(|c| (c, rx))
                    });
                    Body::from_stream(stream)
                }
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
    Counter,
    std::net::SocketAddr,
    tokio::sync::mpsc::UnboundedReceiver<Feed>,
) {
    let stash = Stash::new();
    let (app, mut feeds, calls) = streaming_app(&stash, limit);
    let addr = serve(app).await;
    let resp = fetch_streaming(addr, support::get(addr, "/report")).await;
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
    let got = fetch(addr, support::get(addr, "/report")).await;
    assert_eq!(got.headers["cache-status"], "tower-stash; hit");
    assert_eq!(got.body.len(), 4000);
    assert_eq!(calls.calls(), 1);
}

#[tokio::test]
async fn streams_a_body_over_the_limit_in_full_and_stores_nothing() {
    let (stash, calls, addr, mut feeds) = stream_report(2500).await;
    assert_eq!(stash.stats().stores, 0);
    let resp = fetch_streaming(addr, support::get(addr, "/report")).await;
    // A streaming body cannot be promised `stored` before it ends.
    assert_eq!(resp.headers()["cache-status"], "tower-stash; fwd=miss");
    drop(
        within("the second handler call", feeds.recv())
            .await
            .unwrap(),
    );
    assert_eq!(calls.calls(), 2);
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
    let got = fetch(addr, support::get(addr, "/sized")).await;
    assert_eq!(got.body, "abcdef");
    support::stored(&stash, 1).await;
    let got = fetch(addr, support::get(addr, "/sized")).await;
    assert_eq!(got.headers["cache-status"], "tower-stash; hit");
    assert_eq!(got.body, "abcdef");
}
