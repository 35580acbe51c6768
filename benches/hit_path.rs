//! The hit path measured side by side with the bare handler, key building, and the entry codec.
//!
//! `cargo bench --bench hit_path`; compare `hit/cached` with `hit/bare` from the same run.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::time::{Duration, SystemTime};
use tower::{service_fn, Service, ServiceBuilder, ServiceExt};
use tower_stash::{CacheLayer, Entry, Policy, Routes, Stash};

const BODY: &str = r#"{"id":1,"name":"User 1","email":"user1@example.com"}"#;

fn bare() -> impl Service<
    Request<Empty<Bytes>>,
    Response = Response<Full<Bytes>>,
    Error = Infallible,
    Future = impl Send + 'static,
> + Clone
       + Send
       + 'static {
    service_fn(|_req: Request<Empty<Bytes>>| async {
        let mut r = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
        r.headers_mut()
            .insert("content-type", "application/json".parse().unwrap());
        Ok::<_, Infallible>(r)
    })
}

fn routes() -> Routes {
    Routes::new().get(
        "/users/{id}",
        Policy::ttl(Duration::from_secs(3600)).key("user:{id}"),
    )
}

fn hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let stash = Stash::new();
    let cached = ServiceBuilder::new()
        .layer(CacheLayer::new(stash.clone(), routes()))
        .service(bare());
    let req = || {
        Request::get("/users/1")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    // Fill the entry.
    rt.block_on(async {
        let resp = cached.clone().oneshot(req()).await.unwrap();
        resp.into_body().collect().await.unwrap();
    });
    assert_eq!(stash.stats().stores, 1);

    let mut group = c.benchmark_group("hit");
    group.bench_function("bare", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = bare().oneshot(req()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.into_body().collect().await.unwrap()
        })
    });
    group.bench_function("cached", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = cached.clone().oneshot(req()).await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            resp.into_body().collect().await.unwrap()
        })
    });
    let unmatched = || Request::get("/health").body(Empty::<Bytes>::new()).unwrap();
    group.bench_function("unmatched_route", |b| {
        b.to_async(&rt)
            .iter(|| async { cached.clone().oneshot(unmatched()).await.unwrap() })
    });
    // HTTP mode (the proxy's): the origin's headers decide; one URL without Vary, one whose
    // answers vary on Accept-Language (a record, then the variant).
    let http = Policy::new().http_mode(true).key_headers(["host"]);
    let origin = service_fn(|req: Request<Empty<Bytes>>| async move {
        let mut r = Response::new(Full::new(Bytes::from_static(BODY.as_bytes())));
        let h = r.headers_mut();
        h.insert("content-type", "application/json".parse().unwrap());
        h.insert("cache-control", "max-age=3600".parse().unwrap());
        h.insert("etag", "\"v1\"".parse().unwrap());
        h.insert(
            "date",
            httpdate::fmt_http_date(SystemTime::now()).parse().unwrap(),
        );
        if req.uri().path() == "/varied" {
            h.insert("vary", "Accept-Language".parse().unwrap());
        }
        Ok::<_, Infallible>(r)
    });
    let proxy = ServiceBuilder::new()
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get("/{*path}", http),
        ))
        .service(origin);
    let get = |path: &str| {
        Request::get(path)
            .header("host", "shop.example")
            .header("accept-language", "fr")
            .header("user-agent", "bench/1")
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    rt.block_on(async {
        for path in ["/plain", "/varied"] {
            let resp = proxy.clone().oneshot(get(path)).await.unwrap();
            resp.into_body().collect().await.unwrap();
            let again = proxy.clone().oneshot(get(path)).await.unwrap();
            let status = again.headers()["cache-status"].to_str().unwrap().to_owned();
            assert!(status.contains("hit"), "{path}: {status}");
        }
    });
    for path in ["/plain", "/varied"] {
        let name = if path == "/plain" {
            "http_mode"
        } else {
            "http_mode_vary"
        };
        group.bench_function(name, |b| {
            b.to_async(&rt).iter(|| async {
                let resp = proxy.clone().oneshot(get(path)).await.unwrap();
                assert_eq!(resp.status(), StatusCode::OK);
                resp.into_body().collect().await.unwrap()
            })
        });
    }
    // What a hit in HTTP mode spends cloning the stored headers (`http::Response` owns its
    // map, so each hit clones it): a map as the proxy stores the origin's answer above.
    let mut stored = http::HeaderMap::new();
    for (name, value) in [
        ("age", "0"),
        ("cache-status", "tower-stash; hit"),
        ("content-type", "application/json"),
        ("cache-control", "max-age=3600"),
        ("etag", "\"v1\""),
        ("date", "Wed, 02 Dec 2026 10:00:00 GMT"),
    ] {
        stored.insert(
            name,
            http::HeaderValue::from_bytes(value.as_bytes()).unwrap(),
        );
    }
    group.bench_function("headers_clone", |b| b.iter(|| stored.clone()));
    group.finish();
}

fn keys(c: &mut Criterion) {
    let layer = CacheLayer::new(
        Stash::new(),
        routes().get(
            "/search",
            Policy::ttl(Duration::from_secs(60)).key_headers(["accept-language"]),
        ),
    );
    let mut group = c.benchmark_group("key");
    let template = Request::get("/users/12345").body(()).unwrap();
    group.bench_function("template", |b| b.iter(|| layer.key_for(&template)));
    let query = Request::get("/search?q=rust+cache&page=2&sort=asc&lang=en")
        .header("accept-language", "en-GB,en;q=0.9")
        .body(())
        .unwrap();
    group.bench_function("default_query_header", |b| b.iter(|| layer.key_for(&query)));
    let long = Request::get(format!("/search?q={}", "x".repeat(4000)))
        .body(())
        .unwrap();
    group.bench_function("hashed_4k", |b| b.iter(|| layer.key_for(&long)));
    group.finish();
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("codec");
    for size in [64usize, 16 * 1024] {
        let mut headers = http::HeaderMap::new();
        headers.insert("content-type", "application/json".parse().unwrap());
        headers.insert(
            "etag",
            "\"061501b38f4e562eb57a7fbba6b1775d\"".parse().unwrap(),
        );
        let entry = Entry::new(
            "app:v1:user:1",
            StatusCode::OK,
            headers,
            vec![b'x'; size].into(),
        )
        .with_times(SystemTime::now(), Duration::from_secs(3600))
        .with_tags(vec!["users".into()]);
        let bytes = entry.encode();
        group.throughput(Throughput::Bytes(bytes.len() as u64));
        group.bench_with_input(BenchmarkId::new("encode", size), &entry, |b, e| {
            b.iter(|| e.encode())
        });
        group.bench_with_input(BenchmarkId::new("decode", size), &bytes, |b, bytes| {
            b.iter(|| Entry::decode(bytes.clone()).unwrap())
        });
    }
    group.finish();
}

/// The quickstart's shape in process: an axum route serving the body from memory, against the
/// same route behind the cache (a hit): what wrk measures, without the network's noise.
fn axum_routes(c: &mut Criterion) {
    use axum::extract::Path;
    use axum::routing::get;
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let bare_handler = |Path(_id): Path<u64>| async {
        (
            [("content-type", "application/json")],
            Bytes::from_static(BODY.as_bytes()),
        )
    };
    let bare_app: axum::Router = axum::Router::new().route("/users/{id}", get(bare_handler));
    let stash = Stash::new();
    let cached_app: axum::Router = axum::Router::new()
        .route("/users/{id}", get(bare_handler))
        .layer(CacheLayer::new(stash.clone(), routes()));
    let req = || {
        Request::get("/users/1")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    rt.block_on(async {
        let resp = cached_app.clone().oneshot(req()).await.unwrap();
        resp.into_body().collect().await.unwrap();
    });
    assert_eq!(stash.stats().stores, 1);
    let mut group = c.benchmark_group("axum");
    group.bench_function("bare_route", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = bare_app.clone().oneshot(req()).await.unwrap();
            resp.into_body().collect().await.unwrap()
        })
    });
    group.bench_function("cached_route", |b| {
        b.to_async(&rt).iter(|| async {
            let resp = cached_app.clone().oneshot(req()).await.unwrap();
            resp.into_body().collect().await.unwrap()
        })
    });
    group.finish();
}

criterion_group!(benches, hit, axum_routes, keys, codec);
criterion_main!(benches);
