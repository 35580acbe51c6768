//! The rules of the cache, each checked on what the client gets and how often the handler runs.

use crate::test_util::{full, send, within, Got, TestBody, Upstream};
use crate::{CacheHint, CacheLayer, ManualClock, MemoryStore, Policy, Routes, Stash};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, StreamBody};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
type FrameTx = tokio::sync::mpsc::Sender<Result<http_body::Frame<Bytes>, BoxError>>;

const HOUR: Duration = Duration::from_secs(3600);

fn get(uri: &str) -> Request<Empty<Bytes>> {
    Request::get(uri).body(Empty::new()).unwrap()
}

struct Fixture {
    stash: Stash,
    layer: CacheLayer,
    handler: Upstream,
    clock: ManualClock,
}

impl Fixture {
    fn new(routes: Routes, handler: Upstream) -> Self {
        Self::with(Stash::builder(), routes, handler)
    }

    fn with(builder: crate::StashBuilder, routes: Routes, handler: Upstream) -> Self {
        let clock = ManualClock::default();
        let stash = builder.clock(clock.clone()).build().unwrap();
        let layer = CacheLayer::new(stash.clone(), routes);
        Self {
            stash,
            layer,
            handler,
            clock,
        }
    }

    async fn send(&self, req: Request<Empty<Bytes>>) -> Got {
        let svc = ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(self.handler.clone());
        send(svc, req).await
    }

    async fn get(&self, uri: &str) -> Got {
        self.send(get(uri)).await
    }
}

fn one_route(path: &str, policy: Policy) -> Routes {
    Routes::new().get(path, policy)
}

// ---- Keys (rule 5) ----

#[tokio::test]
async fn keys_have_namespace_and_version() {
    let f = Fixture::with(
        Stash::builder().namespace("shop"),
        one_route("/users/{id}", Policy::ttl(HOUR).key("user:{id}")),
        Upstream::echo(),
    );
    assert_eq!(f.layer.key_for(&get("/users/7")).unwrap(), "shop:v1:user:7");
    assert_eq!(
        f.layer.key_for(&get("/users/7?x=1")).unwrap(),
        "shop:v1:user:7?x=1"
    );
    assert_eq!(f.layer.key_for(&get("/other")), None);
    let f = Fixture::new(one_route("/p/{*rest}", Policy::ttl(HOUR)), Upstream::echo());
    assert_eq!(
        f.layer.key_for(&get("/p/a/b?z=1")).unwrap(),
        "stash:v1:GET /p/a/b?z=1"
    );
    let head = Request::head("/p/a").body(Empty::<Bytes>::new()).unwrap();
    assert_eq!(f.layer.key_for(&head).unwrap(), "stash:v1:GET /p/a");
}

#[tokio::test]
async fn separators_in_values_never_merge_two_requests() {
    let f = Fixture::new(
        one_route("/x/{a}/{b}", Policy::ttl(HOUR).key("item:{a}:{b}")),
        Upstream::echo(),
    );
    let one = f.get("/x/1:2/3").await;
    let two = f.get("/x/1/2:3").await;
    assert_ne!(one.body, two.body);
    assert_eq!(f.handler.calls(), 2);
    assert_eq!(f.get("/x/1:2/3").await.body, one.body);
    assert_eq!(f.get("/x/1/2:3").await.body, two.body);
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn a_value_cannot_forge_another_routes_key() {
    let routes = Routes::new()
        .get("/users/{id}", Policy::ttl(HOUR).key("user:{id}"))
        .get(
            "/users/{id}/posts",
            Policy::ttl(HOUR).key("user:{id}:posts"),
        );
    let f = Fixture::new(routes, Upstream::echo());
    let posts = f.get("/users/1/posts").await;
    // `1:posts` would render `user:1:posts` unescaped.
    let forged = f.get("/users/1:posts").await;
    assert_ne!(forged.body, posts.body);
    assert_eq!(forged.text(), "/users/1:posts #2");
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn globs_nul_and_newlines_are_escaped_and_distinct() {
    let f = Fixture::new(
        one_route("/k/{v}", Policy::ttl(HOUR).key("k:{v}")),
        Upstream::echo(),
    );
    let values = [
        "a*", "a%3F", "a%5B", "a%00", "a%0A", "a%0D%0A", "a", "a%20", "a%25",
    ];
    for v in values {
        let key = f.layer.key_for(&get(&format!("/k/{v}"))).unwrap();
        assert!(
            key.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~%:".contains(&b)),
            "{key}"
        );
        f.get(&format!("/k/{v}")).await;
    }
    assert_eq!(f.handler.calls(), values.len());
    for v in values {
        assert_eq!(
            f.get(&format!("/k/{v}")).await.text(),
            format!(
                "/k/{v} #{}",
                values.iter().position(|x| *x == v).unwrap() + 1
            )
        );
    }
    assert_eq!(f.handler.calls(), values.len());
    // `%31` decodes to `1`, as axum's Path decodes it: one entry.
    let f = Fixture::new(
        one_route("/k/{v}", Policy::ttl(HOUR).key("k:{v}")),
        Upstream::echo(),
    );
    f.get("/k/1").await;
    assert_eq!(f.get("/k/%31").await.cache_status(), "tower-stash; hit");
}

#[tokio::test]
async fn long_values_are_hashed_and_checked_on_read() {
    // URIs stop at 64 KiB, headers do not: 100 KB values arrive in a keyed header.
    let f = Fixture::new(
        one_route("/s", Policy::ttl(HOUR).key_headers(["x-big"])),
        Upstream::new(|req, n| {
            Response::new(full(format!(
                "{} #{n}",
                req.headers().get("x-big").map_or(0, |v| v.len())
            )))
        }),
    );
    let big = |last: char| {
        let v = format!("{}{last}", "a".repeat(100 * 1024 - 1));
        Request::get("/s")
            .header("x-big", v)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let a = f.send(big('a')).await;
    let b = f.send(big('b')).await;
    assert_ne!(a.body, b.body);
    assert_eq!(f.send(big('a')).await.body, a.body);
    assert_eq!(f.send(big('b')).await.body, b.body);
    assert_eq!(f.handler.calls(), 2);
    let long_query = format!("/s?q={}", "q".repeat(60 * 1024));
    f.get(&long_query).await;
    assert_eq!(f.get(&long_query).await.cache_status(), "tower-stash; hit");
    assert_eq!(f.handler.calls(), 3);

    // An entry under the hashed key whose full key differs (a collision) is a miss.
    let full = f.layer.key_for(&big('a')).unwrap();
    let prefix = crate::key::prefix("stash").len();
    let stored = crate::key::storage_key(&full, prefix, 250).unwrap();
    assert_eq!(stored.len(), prefix + 33);
    let impostor = crate::Entry::new(
        "stash:v1:something else",
        StatusCode::OK,
        HeaderMap::new(),
        "impostor".into(),
    )
    .with_times(crate::Clock::now(&f.clock), HOUR);
    f.stash
        .store()
        .put(stored.into(), Arc::new(impostor), HOUR)
        .await
        .unwrap();
    let again = f.send(big('a')).await;
    assert_ne!(again.text(), "impostor");
    assert_eq!(f.handler.calls(), 4);
}

#[tokio::test]
async fn query_is_normalised() {
    let f = Fixture::new(one_route("/s", Policy::ttl(HOUR)), Upstream::echo());
    f.get("/s?b=2&a=1").await;
    assert_eq!(f.get("/s?a=1&b=2").await.cache_status(), "tower-stash; hit");
    f.get("/s?a=1&a=2").await;
    f.get("/s?a=2&a=1").await;
    assert_eq!(f.handler.calls(), 3);
    let only = Fixture::new(
        one_route("/s", Policy::ttl(HOUR).key_query(["q"])),
        Upstream::echo(),
    );
    only.get("/s?q=1").await;
    assert_eq!(
        only.get("/s?utm=b&q=1").await.cache_status(),
        "tower-stash; hit"
    );
    assert_eq!(only.handler.calls(), 1);
}

#[tokio::test]
async fn a_reflected_query_parameter_outside_the_key_cannot_poison() {
    // The handler reflects every parameter; only `q` is keyed.
    let f = Fixture::new(
        one_route("/s", Policy::ttl(HOUR).key_query(["q"])),
        Upstream::echo(),
    );
    let poisoned = f.get("/s?q=1&utm=%3Cscript%3E").await;
    assert!(poisoned.text().contains("script"));
    assert!(poisoned.cache_status().contains("fwd=miss"));
    // The clean request after it never gets the poison: the poisoned answer was not stored.
    let clean = f.get("/s?q=1").await;
    assert!(!clean.text().contains("script"), "{}", clean.text());
    // Once a clean answer is stored, requests with extra parameters are served from it.
    let again = f.get("/s?q=1&utm=%3Cscript%3E").await;
    assert_eq!(again.body, clean.body);
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn cacheability_never_comes_from_a_file_extension() {
    // A route for static files; an account page answers any path under /account, private.
    let routes = Routes::new()
        .get("/static/{*path}", Policy::ttl(HOUR))
        .get("/{*path}", Policy::new().http_mode(true));
    let f = Fixture::new(
        routes,
        Upstream::new(|req, n| {
            let mut resp = Response::new(full(format!("account page #{n} for {}", req.uri())));
            if req.uri().path().starts_with("/account") {
                resp.headers_mut()
                    .insert("cache-control", HeaderValue::from_static("private"));
            }
            resp
        }),
    );
    for path in [
        "/account/x.css",
        "/account;x.css",
        "/account%2Fx.css",
        "/account/.css",
    ] {
        f.get(path).await;
        let again = f.get(path).await;
        assert!(!again.cache_status().contains("hit"), "{path} was cached");
    }
    assert_eq!(f.handler.calls(), 8);
}

#[tokio::test]
async fn vary_headers_key_each_value() {
    let f = Fixture::new(
        one_route("/s", Policy::ttl(HOUR).key_headers(["accept-language"])),
        Upstream::new(|req, n| {
            let lang = req
                .headers()
                .get("accept-language")
                .map_or("none", |v| v.to_str().unwrap());
            Response::new(full(format!("{lang} #{n}")))
        }),
    );
    let with = |lang: &'static str| {
        Request::get("/s")
            .header("accept-language", lang)
            .body(Empty::new())
            .unwrap()
    };
    assert_eq!(f.send(with("en")).await.text(), "en #1");
    assert_eq!(f.send(with("fr")).await.text(), "fr #2");
    assert_eq!(f.get("/s").await.text(), "none #3");
    assert_eq!(f.send(with("en")).await.text(), "en #1");
    assert_eq!(f.send(with("fr")).await.text(), "fr #2");
    assert_eq!(f.handler.calls(), 3);
}

// ---- Never stored (rule 6) ----

async fn assert_never_stored(
    respond: impl Fn() -> Response<TestBody> + Send + Sync + 'static,
    why: &str,
) {
    let f = Fixture::with(
        Stash::builder().cache_status_detail(true),
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(move |_, _| respond()),
    );
    let first = f.get("/r").await;
    assert_eq!(
        first.cache_status(),
        format!("tower-stash; fwd=miss; detail={why}")
    );
    f.get("/r").await;
    assert_eq!(
        f.handler.calls(),
        2,
        "{why}: the second request must reach the handler"
    );
    assert_eq!(f.stash.stats().stores, 0);
}

fn with_header(name: &'static str, value: &'static str) -> Response<TestBody> {
    let mut r = Response::new(full("x"));
    r.headers_mut()
        .insert(name, HeaderValue::from_static(value));
    r
}

fn with_status(s: u16) -> Response<TestBody> {
    let mut r = Response::new(full("x"));
    *r.status_mut() = StatusCode::from_u16(s).unwrap();
    r
}

#[tokio::test]
async fn set_cookie_is_never_stored() {
    assert_never_stored(|| with_header("set-cookie", "sid=1"), "set-cookie").await;
}

#[tokio::test]
async fn no_store_private_and_no_cache_are_never_stored() {
    assert_never_stored(|| with_header("cache-control", "no-store"), "cache-control").await;
    assert_never_stored(
        || with_header("cache-control", "max-age=60, private"),
        "cache-control",
    )
    .await;
    assert_never_stored(|| with_header("cache-control", "no-cache"), "cache-control").await;
}

#[tokio::test]
async fn unkeyed_vary_is_never_stored() {
    assert_never_stored(|| with_header("vary", "accept-encoding"), "vary").await;
    assert_never_stored(|| with_header("vary", "*"), "vary").await;
}

#[tokio::test]
async fn statuses_outside_the_set_and_5xx_are_never_stored() {
    for s in [201, 202, 302, 400, 401, 403, 500, 502, 503] {
        assert_never_stored(move || with_status(s), "status").await;
    }
    // The default set includes 404 and 410.
    for s in [404, 410, 301] {
        let f = Fixture::new(
            one_route("/r", Policy::ttl(HOUR)),
            Upstream::new(move |_, _| with_status(s)),
        );
        f.get("/r").await;
        let hit = f.get("/r").await;
        assert_eq!(hit.status.as_u16(), s);
        assert_eq!(hit.cache_status(), "tower-stash; hit");
        assert_eq!(f.handler.calls(), 1);
    }
    // A policy's own list.
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR).statuses([201])),
        Upstream::new(|_, _| with_status(201)),
    );
    f.get("/r").await;
    f.get("/r").await;
    assert_eq!(f.handler.calls(), 1);
}

#[tokio::test]
async fn credentials_bypass_unless_keyed() {
    let f = Fixture::with(
        Stash::builder().cache_status_detail(true),
        one_route("/me", Policy::ttl(HOUR)),
        Upstream::echo(),
    );
    f.get("/me").await; // an anonymous entry
    for (name, value) in [("authorization", "Bearer alice"), ("cookie", "sid=alice")] {
        let req = || {
            Request::get("/me")
                .header(name, value)
                .body(Empty::new())
                .unwrap()
        };
        let got = f.send(req()).await;
        assert_eq!(
            got.cache_status(),
            format!("tower-stash; fwd=bypass; detail={name}")
        );
        assert_ne!(
            got.text(),
            "/me #1",
            "{name}: must not get the anonymous entry"
        );
    }
    assert_eq!(f.handler.calls(), 3);
    assert_eq!(f.stash.stats().bypasses, 2);
    assert_eq!(f.stash.stats().stores, 1);

    // Keyed on the header: cached per user.
    let f = Fixture::new(
        one_route("/me", Policy::ttl(HOUR).key_headers(["authorization"])),
        Upstream::new(|req, _| {
            Response::new(full(
                req.headers()["authorization"].to_str().unwrap().to_string(),
            ))
        }),
    );
    let as_user = |who: &'static str| {
        Request::get("/me")
            .header("authorization", who)
            .body(Empty::new())
            .unwrap()
    };
    assert_eq!(f.send(as_user("alice")).await.text(), "alice");
    assert_eq!(f.send(as_user("bob")).await.text(), "bob");
    assert_eq!(f.send(as_user("alice")).await.text(), "alice");
    assert_eq!(f.send(as_user("bob")).await.text(), "bob");
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn other_methods_need_an_opt_in() {
    let err = CacheLayer::try_new(
        Stash::new(),
        Routes::new().route(Method::POST, "/q", Policy::ttl(HOUR)),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("routes[POST /q].unsafe_methods"),
        "{err}"
    );

    // Unregistered methods on a cached path pass through.
    let f = Fixture::new(one_route("/q", Policy::ttl(HOUR)), Upstream::echo());
    let post = || Request::post("/q").body(Empty::new()).unwrap();
    assert_eq!(f.send(post()).await.cache_status(), "");
    f.send(post()).await;
    assert_eq!(f.handler.calls(), 2);

    let f = Fixture::new(
        Routes::new().route(Method::POST, "/q", Policy::ttl(HOUR).unsafe_methods(true)),
        Upstream::echo(),
    );
    f.send(post()).await;
    assert_eq!(f.send(post()).await.cache_status(), "tower-stash; hit");
    assert_eq!(f.handler.calls(), 1);
}

#[tokio::test]
async fn head_miss_never_stores_an_empty_body_for_get() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|req, _| {
            if req.method() == Method::HEAD {
                let mut r = Response::new(full(""));
                r.headers_mut()
                    .insert("content-length", HeaderValue::from_static("5"));
                r
            } else {
                Response::new(full("hello"))
            }
        }),
    );
    let head = || Request::head("/r").body(Empty::new()).unwrap();
    let first = f.send(head()).await;
    assert!(first.body.is_empty());
    let got = f.get("/r").await;
    assert_eq!(got.text(), "hello");
    assert_eq!(got.cache_status(), "tower-stash; fwd=miss; stored");
    // HEAD is then answered from the GET entry, with no body and the right length.
    let hit = f.send(head()).await;
    assert_eq!(hit.cache_status(), "tower-stash; hit");
    assert!(hit.body.is_empty());
    assert_eq!(hit.headers["content-length"], "5");
    assert_eq!(f.handler.calls(), 2);
}

// ---- Streaming (rule 7) ----

/// A handler whose body the test feeds chunk by chunk.
fn streaming() -> (Upstream, tokio::sync::mpsc::UnboundedReceiver<FrameTx>) {
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let handler = Upstream::new(move |_, _| {
        let (body_tx, body_rx) = tokio::sync::mpsc::channel(16);
        tx.send(body_tx).unwrap();
        let stream = futures_util::stream::unfold(body_rx, |mut rx| async move {
            rx.recv().await.map(|frame| (frame, rx))
        });
        Response::new(StreamBody::new(stream).boxed())
    });
    (handler, rx)
}

async fn stream_through(limit: usize, chunk: usize) -> (Stash, Upstream) {
    let (handler, mut bodies) = streaming();
    let f = Fixture::new(
        one_route("/s", Policy::ttl(HOUR).max_body_size(limit)),
        handler.clone(),
    );
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(handler.clone());
    let resp = within("the response head", svc.oneshot(get("/s")))
        .await
        .unwrap();
    let producer = within("the body sender", bodies.recv()).await.unwrap();
    let mut body = resp.into_body();
    let first = Bytes::from(vec![b'a'; chunk]);
    producer
        .send(Ok(http_body::Frame::data(first.clone())))
        .await
        .unwrap();
    // The client reads the first chunk while the handler has not produced the second.
    let got = within("the first chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.into_data().unwrap(), first);
    producer
        .send(Ok(http_body::Frame::data(Bytes::from(vec![b'b'; chunk]))))
        .await
        .unwrap();
    let mut trailers = HeaderMap::new();
    trailers.insert("x-checksum", HeaderValue::from_static("abc"));
    producer
        .send(Ok(http_body::Frame::trailers(trailers)))
        .await
        .unwrap();
    drop(producer);
    let second = within("the second chunk", body.frame())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(second.into_data().unwrap().len(), chunk);
    let t = within("the trailers", body.frame()).await.unwrap().unwrap();
    assert_eq!(t.into_trailers().unwrap()["x-checksum"], "abc");
    assert!(within("the end", body.frame()).await.is_none());
    (f.stash, handler)
}

#[tokio::test]
async fn streams_under_the_limit_and_stores_with_trailers() {
    let (stash, handler) = stream_through(1000, 100).await;
    assert_eq!(stash.stats().stores, 1);
    // The next request is a hit with both chunks and the trailers.
    let layer = CacheLayer::new(
        stash.clone(),
        one_route("/s", Policy::ttl(HOUR).max_body_size(1000)),
    );
    let svc = ServiceBuilder::new().layer(layer).service(handler.clone());
    let hit = send(svc, get("/s")).await;
    assert_eq!(hit.cache_status(), "tower-stash; hit");
    assert_eq!(hit.trailers.unwrap()["x-checksum"], "abc");
    assert_eq!(hit.body.len(), 200);
    assert_eq!(handler.calls(), 1);
}

#[tokio::test]
async fn streams_over_the_limit_in_full_and_stores_nothing() {
    let (stash, handler) = stream_through(150, 100).await;
    assert_eq!(stash.stats().stores, 0);
    assert_eq!(stash.stats().entries, 0);
    assert_eq!(handler.calls(), 1);
}

#[tokio::test]
async fn declared_length_over_the_limit_is_not_copied() {
    let f = Fixture::with(
        Stash::builder().cache_status_detail(true),
        one_route("/r", Policy::ttl(HOUR).max_body_size(4)),
        Upstream::new(|_, _| Response::new(full("too long"))),
    );
    let got = f.get("/r").await;
    assert_eq!(got.text(), "too long");
    assert_eq!(
        got.cache_status(),
        "tower-stash; fwd=miss; detail=too-large"
    );
    f.get("/r").await;
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn a_body_failing_midway_is_not_stored() {
    let (handler, mut bodies) = streaming();
    let f = Fixture::new(one_route("/s", Policy::ttl(HOUR)), handler.clone());
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(handler.clone());
    let resp = within("the response head", svc.oneshot(get("/s")))
        .await
        .unwrap();
    let producer = within("the body sender", bodies.recv()).await.unwrap();
    producer
        .send(Ok(http_body::Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    producer
        .send(Err("database went away".into()))
        .await
        .unwrap();
    drop(producer);
    let mut body = resp.into_body();
    assert!(within("a chunk", body.frame()).await.unwrap().is_ok());
    assert!(within("the error", body.frame()).await.unwrap().is_err());
    assert_eq!(f.stash.stats().stores, 0);
    // The next request reaches the handler again.
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(handler.clone());
    let again = within("the second response", svc.oneshot(get("/s")))
        .await
        .unwrap();
    assert_eq!(again.headers()["cache-status"], "tower-stash; fwd=miss");
    assert_eq!(handler.calls(), 2);
}

#[tokio::test]
async fn a_body_dropped_midway_is_not_stored() {
    let (handler, mut bodies) = streaming();
    let f = Fixture::new(one_route("/s", Policy::ttl(HOUR)), handler.clone());
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(handler.clone());
    let resp = within("the response head", svc.oneshot(get("/s")))
        .await
        .unwrap();
    let producer = within("the body sender", bodies.recv()).await.unwrap();
    producer
        .send(Ok(http_body::Frame::data(Bytes::from_static(b"part"))))
        .await
        .unwrap();
    let mut body = resp.into_body();
    within("a chunk", body.frame()).await;
    drop(body); // the client went away
    assert_eq!(f.stash.stats().stores, 0);
    assert_eq!(f.stash.stats().entries, 0);
}

#[tokio::test]
async fn an_empty_body_is_stored_at_once() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| {
            let mut r = Response::new(Empty::new().map_err(|e| match e {}).boxed());
            *r.status_mut() = StatusCode::NO_CONTENT;
            r
        }),
    );
    f.get("/r").await;
    let hit = f.get("/r").await;
    assert_eq!(hit.status, StatusCode::NO_CONTENT);
    assert_eq!(hit.cache_status(), "tower-stash; hit");
    assert!(!hit.headers.contains_key("content-length"));
    assert_eq!(f.handler.calls(), 1);
}

// ---- Hits (rule 8) ----

#[tokio::test]
async fn hits_slice_the_stored_body_without_copying() {
    let store = MemoryStore::default();
    let f = Fixture::with(
        Stash::builder().store(store.clone()),
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| Response::new(full("the stored body"))),
    );
    f.get("/r").await;
    let key = f.layer.key_for(&get("/r")).unwrap();
    let stored = store.get_now(&key).unwrap();
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(f.handler.clone());
    let resp = svc.oneshot(get("/r")).await.unwrap();
    let frame = resp.into_body().frame().await.unwrap().unwrap();
    assert_eq!(frame.data_ref().unwrap().as_ptr(), stored.body().as_ptr());
}

#[tokio::test]
async fn a_status_ttl_stores_a_client_error_for_its_own_lifetime() {
    // 404 lives a minute on a route whose 200s live an hour; a 429 is stored only because the
    // policy names it, for a second.
    let routes = Routes::new()
        .get(
            "/users/{id}",
            Policy::ttl(HOUR).status_ttl(404, Duration::from_secs(60)),
        )
        .get(
            "/limited",
            Policy::ttl(HOUR).status_ttl(429, Duration::from_secs(1)),
        );
    let f = Fixture::new(
        routes,
        Upstream::new(|req, n| match req.uri().path() {
            "/users/1" => Response::new(full(format!("user #{n}"))),
            "/limited" => with_status(429),
            _ => with_status(404),
        }),
    );
    for uri in ["/users/1", "/users/2", "/limited"] {
        f.get(uri).await;
        let hit = f.get(uri).await;
        assert_eq!(hit.cache_status(), "tower-stash; hit", "{uri}");
    }
    assert_eq!(f.handler.calls(), 3);
    f.clock.advance(Duration::from_secs(2));
    assert_eq!(f.get("/limited").await.status.as_u16(), 429);
    assert_eq!(f.handler.calls(), 4, "the 429 lived one second");
    f.clock.advance(Duration::from_secs(59));
    let missing = f.get("/users/2").await;
    assert_eq!(missing.status.as_u16(), 404);
    assert_eq!(missing.cache_status(), "tower-stash; fwd=miss; stored");
    let user = f.get("/users/1").await;
    assert_eq!(user.text(), "user #1", "the 200 lives its hour");
    assert_eq!(f.handler.calls(), 5);
    // Out-of-range statuses and zero TTLs are refused, naming the field.
    let err = CacheLayer::try_new(
        Stash::new(),
        one_route(
            "/x",
            Policy::ttl(HOUR)
                .status_ttl(500, Duration::from_secs(1))
                .status_ttl(404, Duration::ZERO),
        ),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("status_ttls: 500 is never stored"), "{err}");
    assert!(
        err.contains("status_ttls: 404: the TTL must be above zero"),
        "{err}"
    );
}

#[tokio::test]
async fn age_is_the_nearest_whole_second() {
    // A client that waits 3 s by a timer that fires a millisecond early must still see an age
    // of 3, not 2: the age is rounded, never cut down to what it was a second ago.
    let f = Fixture::new(
        one_route("/r", Policy::ttl(Duration::from_secs(60))),
        Upstream::echo(),
    );
    f.get("/r").await;
    f.clock.advance(Duration::from_millis(2_400));
    assert_eq!(f.get("/r").await.headers["age"], "2");
    f.clock.advance(Duration::from_millis(599));
    assert_eq!(f.get("/r").await.headers["age"], "3");
    // Never the whole lifetime while fresh.
    f.clock.advance(Duration::from_millis(56_800));
    let last = f.get("/r").await;
    assert!(last.is_hit());
    assert_eq!(last.headers["age"], "59");
}

#[tokio::test]
async fn hits_carry_age_and_expire_after_the_ttl() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(Duration::from_secs(60))),
        Upstream::echo(),
    );
    let first = f.get("/r").await;
    // Fresh from the service: age 0.
    assert_eq!(first.headers["age"], "0");
    f.clock.advance(Duration::from_secs(5));
    let hit = f.get("/r").await;
    assert_eq!(hit.headers["age"], "5");
    assert_eq!(hit.body, first.body);
    f.clock.advance(Duration::from_secs(55));
    let after = f.get("/r").await;
    assert_eq!(after.text(), "/r #2");
    assert_eq!(after.cache_status(), "tower-stash; fwd=miss; stored");
    assert_eq!(f.handler.calls(), 2);
    let stats = f.stash.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 2, 2));
    assert!((stats.hit_rate() - 1.0 / 3.0).abs() < 1e-9);
}

#[tokio::test]
async fn if_none_match_gets_304_with_a_derived_etag() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| with_header("cache-control", "max-age=60")),
    );
    f.get("/r").await;
    let hit = f.get("/r").await;
    let etag = hit.headers["etag"].clone();
    assert!(etag.to_str().unwrap().starts_with('"'));
    let conditional = |tag: HeaderValue| {
        Request::get("/r")
            .header("if-none-match", tag)
            .body(Empty::new())
            .unwrap()
    };
    let not_modified = f.send(conditional(etag.clone())).await;
    assert_eq!(not_modified.status, StatusCode::NOT_MODIFIED);
    assert!(not_modified.body.is_empty());
    assert_eq!(not_modified.headers["etag"], etag);
    assert_eq!(not_modified.headers["cache-control"], "max-age=60");
    assert!(not_modified.headers.contains_key("age"));
    assert!(!not_modified.headers.contains_key("content-length"));
    let weak = HeaderValue::try_from(format!("\"nope\", W/{}", etag.to_str().unwrap())).unwrap();
    assert_eq!(
        f.send(conditional(weak)).await.status,
        StatusCode::NOT_MODIFIED
    );
    let other = f
        .send(conditional(HeaderValue::from_static("\"other\"")))
        .await;
    assert_eq!(other.status, StatusCode::OK);
    assert_eq!(other.body, "x");
    assert_eq!(f.handler.calls(), 1);
    assert_eq!(f.stash.stats().hits, 4);
}

#[tokio::test]
async fn handler_etag_is_kept_and_derivation_can_be_off() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| with_header("etag", "W/\"v7\"")),
    );
    f.get("/r").await;
    let req = Request::get("/r")
        .header("if-none-match", "\"v7\"")
        .body(Empty::new())
        .unwrap();
    assert_eq!(f.send(req).await.status, StatusCode::NOT_MODIFIED);

    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR).etag(false)),
        Upstream::echo(),
    );
    f.get("/r").await;
    let hit = f.get("/r").await;
    assert!(!hit.headers.contains_key("etag"));
    let req = Request::get("/r")
        .header("if-none-match", "\"x\"")
        .body(Empty::new())
        .unwrap();
    assert_eq!(f.send(req).await.status, StatusCode::OK);
    // `*` matches any stored representation, with or without an ETag.
    let req = Request::get("/r")
        .header("if-none-match", "*")
        .body(Empty::new())
        .unwrap();
    assert_eq!(f.send(req).await.status, StatusCode::NOT_MODIFIED);
}

#[tokio::test]
async fn cache_status_key_and_detail_only_when_enabled() {
    let f = Fixture::new(
        one_route("/r/{id}", Policy::ttl(HOUR).key("r:{id}")),
        Upstream::echo(),
    );
    assert_eq!(
        f.get("/r/1").await.cache_status(),
        "tower-stash; fwd=miss; stored"
    );
    assert_eq!(f.get("/r/1").await.cache_status(), "tower-stash; hit");

    let f = Fixture::with(
        Stash::builder()
            .cache_status_key(true)
            .cache_status_detail(true)
            .cache_status_name("edge"),
        one_route(
            "/r/{id}",
            Policy::ttl(Duration::from_secs(60)).key("r:{id}"),
        ),
        Upstream::echo(),
    );
    assert_eq!(
        f.get("/r/1").await.cache_status(),
        "edge; fwd=miss; stored; key=\"stash:v1:r:1\""
    );
    f.clock.advance(Duration::from_secs(10));
    assert_eq!(
        f.get("/r/1").await.cache_status(),
        "edge; hit; ttl=50; key=\"stash:v1:r:1\""
    );
}

#[tokio::test]
async fn unmatched_routes_pass_through_untouched() {
    let f = Fixture::new(
        one_route("/cached", Policy::ttl(HOUR)),
        Upstream::new(|_, _| with_header("x-stash-ttl", "5")),
    );
    let got = f.get("/elsewhere").await;
    assert_eq!(got.cache_status(), "");
    assert_eq!(got.headers["x-stash-ttl"], "5"); // not ours to touch
    f.get("/elsewhere").await;
    assert_eq!(f.handler.calls(), 2);
    assert_eq!(f.stash.stats().misses, 0);
}

// ---- Upstream control (rule 9) ----

#[tokio::test]
async fn handler_opts_out_with_an_extension_or_a_header() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| {
            let mut r = Response::new(full("x"));
            r.extensions_mut().insert(CacheHint::skip());
            r
        }),
    );
    f.get("/r").await;
    f.get("/r").await;
    assert_eq!(f.handler.calls(), 2);

    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| with_header("x-stash-skip", "1")),
    );
    let got = f.get("/r").await;
    assert!(!got.headers.contains_key("x-stash-skip"));
    f.get("/r").await;
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn handler_sets_the_ttl_and_tags() {
    let store = MemoryStore::default();
    let f = Fixture::with(
        Stash::builder().store(store.clone()),
        one_route(
            "/p/{id}",
            Policy::ttl(HOUR).key("p:{id}").tags(["products", "p:{id}"]),
        ),
        Upstream::new(|_, _| {
            let mut r = with_header("x-stash-ttl", "10");
            r.headers_mut().insert(
                "x-stash-tags",
                HeaderValue::from_static("apple, electronics"),
            );
            r.extensions_mut()
                .insert(CacheHint::new().tag("brand:apple"));
            r
        }),
    );
    let first = f.get("/p/9").await;
    assert!(!first.headers.contains_key("x-stash-ttl"));
    assert!(!first.headers.contains_key("x-stash-tags"));
    let entry = store.get_now("stash:v1:p:9").unwrap();
    assert_eq!(
        entry.tags(),
        ["products", "p:9", "brand:apple", "apple", "electronics"]
    );
    assert_eq!(entry.ttl(), Duration::from_secs(10));
    assert!(!entry.headers().contains_key("x-stash-ttl"));
    let hit = f.get("/p/9").await;
    assert_eq!(hit.cache_status(), "tower-stash; hit");
    assert!(!hit.headers.contains_key("x-stash-tags"));
    f.clock.advance(Duration::from_secs(11));
    assert_eq!(
        f.get("/p/9").await.cache_status(),
        "tower-stash; fwd=miss; stored"
    );
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn a_huge_ttl_is_capped_and_never_panics() {
    let f = Fixture::new(
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::new(|_, _| with_header("x-stash-ttl", "18446744073709551615")),
    );
    f.get("/r").await;
    let hit = f.get("/r").await;
    assert_eq!(hit.cache_status(), "tower-stash; hit");
    f.clock.advance(Duration::from_secs(5 * 365 * 24 * 3600));
    assert_eq!(f.get("/r").await.cache_status(), "tower-stash; hit");
    assert_eq!(f.handler.calls(), 1);
}

#[tokio::test]
async fn a_streaming_miss_is_not_promised_as_stored() {
    let (handler, mut bodies) = streaming();
    let f = Fixture::with(
        Stash::builder().cache_status_detail(true),
        one_route("/s", Policy::ttl(HOUR)),
        handler.clone(),
    );
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(handler);
    let resp = within("the response head", svc.oneshot(get("/s")))
        .await
        .unwrap();
    assert_eq!(
        resp.headers()["cache-status"],
        "tower-stash; fwd=miss; detail=streaming"
    );
    drop(within("the body sender", bodies.recv()).await);
}

#[tokio::test]
async fn an_unreadable_ttl_header_stores_nothing() {
    assert_never_stored(|| with_header("x-stash-ttl", "soon"), "hint").await;
    assert_never_stored(|| with_header("x-stash-ttl", "0"), "ttl").await;
}

// ---- Store failures and bounds ----

#[tokio::test]
async fn a_failing_store_never_fails_a_request() {
    let f = Fixture::with(
        Stash::builder().store(crate::test_util::Down),
        one_route("/r", Policy::ttl(HOUR)),
        Upstream::echo(),
    );
    for n in 1..=3 {
        let got = f.get("/r").await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.text(), format!("/r #{n}"));
    }
    let stats = f.stash.stats();
    assert_eq!(stats.store_errors, 6); // a failed lookup and a failed fill each time
    assert_eq!(stats.stores, 0);
}

#[tokio::test]
async fn many_keys_keep_the_memory_bound() {
    let bound = 200 * 1024;
    let store = MemoryStore::new(bound);
    let f = Fixture::with(
        Stash::builder().store(store.clone()),
        one_route("/k/{id}", Policy::ttl(HOUR).key("k:{id}")),
        Upstream::new(|_, _| Response::new(full(vec![b'z'; 2000]))),
    );
    for i in 0..2000 {
        f.get(&format!("/k/{i}")).await;
    }
    store.run_pending_tasks();
    let stats = f.stash.stats();
    assert!(stats.bytes <= bound, "{stats:?}");
    assert!(stats.evictions > 0, "{stats:?}");
    assert_eq!(stats.stores, 2000);
}

#[tokio::test]
async fn poll_ready_is_forwarded() {
    // A concurrency limit of one under the cache: the cache must wait for readiness, not bypass it.
    let f = Fixture::new(one_route("/r", Policy::ttl(HOUR)), Upstream::echo());
    let mut svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .concurrency_limit(1)
        .service(f.handler.clone());
    let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc)
        .await
        .unwrap();
    let fut = ready.call(get("/r"));
    let mut second = svc.clone();
    let pending = futures_util::poll!(std::pin::pin!(ServiceExt::<Request<Empty<Bytes>>>::ready(
        &mut second
    )));
    assert!(pending.is_pending(), "the limit is taken by the first call");
    fut.await.unwrap();
}

// ---- Poisoning ----

/// Answers with what an app behind a proxy would build from the request: the host it thinks
/// it serves, and the path.
fn reflecting() -> Upstream {
    Upstream::new(|req, n| {
        let host = crate::headers::REWRITE_HEADERS
            .iter()
            .find_map(|name| req.headers().get(*name))
            .map_or("example.com".to_string(), |v| {
                v.to_str().unwrap().to_string()
            });
        Response::new(full(format!("<script src=//{host}/app.js> #{n}")))
    })
}

#[tokio::test]
async fn unkeyed_forwarding_headers_never_poison_an_entry() {
    for name in crate::headers::REWRITE_HEADERS {
        let f = Fixture::with(
            Stash::builder().cache_status_detail(true),
            one_route("/page", Policy::ttl(HOUR)),
            reflecting(),
        );
        // The attacker's request first, on a cold key: it is answered, never stored.
        let poisoned = f
            .send(
                Request::get("/page")
                    .header(name, "evil.example")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await;
        assert!(poisoned.text().contains("evil.example"), "{name}");
        assert_eq!(
            poisoned.cache_status(),
            "tower-stash; fwd=bypass; detail=unkeyed-forwarding-header",
            "{name}"
        );
        // Every clean request gets the clean page, fresh or cached.
        for _ in 0..2 {
            let clean = f.get("/page").await;
            assert!(!clean.text().contains("evil"), "{name}: {}", clean.text());
        }
        // And a poisoned request after the entry exists is not served from it either.
        let again = f
            .send(
                Request::get("/page")
                    .header(name, "evil.example")
                    .body(Empty::new())
                    .unwrap(),
            )
            .await;
        assert!(again.text().contains("evil.example"), "{name}");
        assert_eq!(f.stash.stats().stores, 1, "{name}");
    }
}

#[tokio::test]
async fn a_keyed_forwarding_header_gets_entries_of_its_own() {
    let f = Fixture::new(
        one_route("/page", Policy::ttl(HOUR).key_headers(["x-forwarded-host"])),
        reflecting(),
    );
    let with = |host: &'static str| {
        Request::get("/page")
            .header("x-forwarded-host", host)
            .body(Empty::new())
            .unwrap()
    };
    let a = f.send(with("a.example")).await;
    let b = f.send(with("b.example")).await;
    assert_eq!(f.send(with("a.example")).await.body, a.body);
    assert_eq!(f.send(with("b.example")).await.body, b.body);
    assert_eq!(f.handler.calls(), 2);
    assert!(
        !f.get("/page").await.text().contains(".example/"),
        "no host: its own entry"
    );
}

#[tokio::test]
async fn a_get_with_a_body_bypasses() {
    let f = Fixture::with(
        Stash::builder().cache_status_detail(true),
        one_route("/search", Policy::ttl(HOUR)),
        Upstream::echo(),
    );
    for (name, value) in [("content-length", "12"), ("transfer-encoding", "chunked")] {
        let got = f
            .send(
                Request::get("/search")
                    .header(name, value)
                    .body(Empty::new())
                    .unwrap(),
            )
            .await;
        assert_eq!(
            got.cache_status(),
            "tower-stash; fwd=bypass; detail=request-body"
        );
    }
    // `Content-Length: 0` is no body.
    let got = f
        .send(
            Request::get("/search")
                .header("content-length", "0")
                .body(Empty::new())
                .unwrap(),
        )
        .await;
    assert!(got.cache_status().starts_with("tower-stash; fwd=miss"));
    assert_eq!(f.stash.stats().stores, 1);
}

// ---- Sliding expiry and session-scoped entries ----

const MIN: Duration = Duration::from_secs(60);

fn with_cookie(uri: &str, cookie: &str) -> Request<Empty<Bytes>> {
    Request::get(uri)
        .header("cookie", cookie)
        .body(Empty::new())
        .unwrap()
}

#[tokio::test]
async fn sliding_expiry_keeps_active_entries_and_drops_idle_ones() {
    let policy = Policy::new().sliding(10 * MIN).max_lifetime(HOUR);
    let f = Fixture::new(one_route("/s", policy), Upstream::echo());
    f.get("/s").await;
    // Each hit within 10 minutes of the last one keeps it: 24 minutes in all.
    for _ in 0..3 {
        f.clock.advance(8 * MIN);
        let got = f.get("/s").await;
        assert!(got.cache_status().contains("hit"), "{}", got.cache_status());
    }
    assert_eq!(f.handler.calls(), 1);
    // Age is the time since it was stored, not since the last hit.
    let got = f.get("/s").await;
    assert_eq!(got.headers.get("age").unwrap(), "1440");
    // Eleven idle minutes: gone.
    f.clock.advance(11 * MIN);
    let got = f.get("/s").await;
    assert_eq!(got.text(), "/s #2");
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn sliding_expiry_stops_at_the_lifetime_cap() {
    let policy = Policy::new().sliding(10 * MIN).max_lifetime(30 * MIN);
    let f = Fixture::new(one_route("/s", policy), Upstream::echo());
    f.get("/s").await;
    for _ in 0..3 {
        f.clock.advance(9 * MIN);
        assert_eq!(f.get("/s").await.text(), "/s #1");
    }
    // 36 minutes after it was stored, however active: refreshed.
    f.clock.advance(9 * MIN);
    assert_eq!(f.get("/s").await.text(), "/s #2");
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn session_scoped_entries_serve_only_their_session() {
    let policy = Policy::new()
        .sliding(30 * MIN)
        .max_lifetime(12 * HOUR)
        .session_cookie("sid");
    let f = Fixture::new(one_route("/me", policy), Upstream::echo());
    // No session: bypassed, never stored.
    for _ in 0..2 {
        let got = f.get("/me").await;
        assert!(
            got.cache_status().contains("fwd=bypass"),
            "{}",
            got.cache_status()
        );
    }
    let got = f.send(with_cookie("/me", "theme=dark")).await;
    assert!(got.cache_status().contains("fwd=bypass"));
    assert_eq!(f.handler.calls(), 3);
    // Each session its own entry; other cookies do not matter.
    let a = f.send(with_cookie("/me", "sid=alice")).await;
    let b = f.send(with_cookie("/me", "sid=bob")).await;
    assert_ne!(a.body, b.body);
    assert_eq!(f.handler.calls(), 5);
    let again = f.send(with_cookie("/me", "theme=dark; sid=alice")).await;
    assert_eq!(again.body, a.body);
    assert_eq!(f.send(with_cookie("/me", "sid=bob")).await.body, b.body);
    assert_eq!(f.handler.calls(), 5);
    // Two different session ids in one request: which one the handler reads is unknown.
    let got = f.send(with_cookie("/me", "sid=alice; sid=bob")).await;
    assert!(got.cache_status().contains("fwd=bypass"));
    assert_eq!(f.handler.calls(), 6);
    // The key holds a hash of the session id, never the id.
    let key = f.layer.key_for(&with_cookie("/me", "sid=alice")).unwrap();
    assert!(!key.contains("alice"), "{key}");
    assert_eq!(f.layer.key_for(&get("/me")), None);
}

#[tokio::test]
async fn session_headers_scope_entries_too() {
    let policy = Policy::ttl(HOUR).session_header("authorization");
    let f = Fixture::new(one_route("/me", policy), Upstream::echo());
    let as_user = |token: &'static str| {
        Request::get("/me")
            .header("authorization", token)
            .body(Empty::new())
            .unwrap()
    };
    let a = f.send(as_user("Bearer a")).await;
    assert_eq!(f.send(as_user("Bearer a")).await.body, a.body);
    assert_ne!(f.send(as_user("Bearer b")).await.body, a.body);
    assert_eq!(f.handler.calls(), 2);
    f.get("/me").await;
    assert_eq!(f.handler.calls(), 3);
}

#[test]
fn sliding_settings_are_checked() {
    let check = |policy: Policy| one_route("/s", policy).validate().unwrap_err().to_string();
    assert!(check(Policy::new().sliding(MIN)).contains("routes[GET /s].max_lifetime: required"));
    assert!(check(Policy::ttl(HOUR).max_lifetime(HOUR))
        .contains("max_lifetime: only used with sliding"));
    assert!(check(Policy::new().sliding(HOUR).max_lifetime(MIN))
        .contains("routes[GET /s].max_lifetime"));
    assert!(check(
        Policy::new()
            .sliding(MIN)
            .max_lifetime(HOUR)
            .stale_while_revalidate(MIN)
    )
    .contains("routes[GET /s].sliding"));
    assert!(check(Policy::ttl(HOUR).session_cookie("a b")).contains("session_cookie"));
}

#[tokio::test]
async fn session_entries_may_be_private_and_vary_on_the_cookie() {
    let policy = Policy::ttl(HOUR).session_cookie("sid");
    let handler = Upstream::new(|req, n| {
        let mut resp = Response::new(full(format!("{} #{n}", req.uri())));
        resp.headers_mut().insert(
            "cache-control",
            HeaderValue::from_static("private, max-age=60"),
        );
        resp.headers_mut()
            .insert("vary", HeaderValue::from_static("Cookie"));
        resp
    });
    let f = Fixture::new(one_route("/me", policy), handler);
    let a = f.send(with_cookie("/me", "sid=a")).await;
    assert_eq!(f.send(with_cookie("/me", "sid=a")).await.body, a.body);
    assert_eq!(f.handler.calls(), 1);
    // Not on a route without a session: `private` is for one client.
    let f = Fixture::new(
        one_route("/p", Policy::ttl(HOUR)),
        Upstream::new(|_, n| {
            let mut resp = Response::new(full(format!("#{n}")));
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("private"));
            resp
        }),
    );
    f.get("/p").await;
    f.get("/p").await;
    assert_eq!(f.handler.calls(), 2);
}

#[tokio::test]
async fn a_keyed_host_is_a_variant_that_invalidating_the_key_drops() {
    // Application mode: the rules invalidate `user:{id}`, whatever the host.
    let f = Fixture::new(
        one_route(
            "/users/{id}",
            Policy::ttl(HOUR).key("user:{id}").key_headers(["host"]),
        ),
        Upstream::echo(),
    );
    let on = |host: &str| {
        Request::get("/users/1")
            .header("host", host)
            .body(Empty::new())
            .unwrap()
    };
    f.send(on("a.example")).await;
    f.send(on("b.example")).await;
    // HTTP/2: the authority, not a Host header.
    for uri in ["http://c.example/users/1", "http://d.example/users/1"] {
        f.send(Request::get(uri).body(Empty::new()).unwrap()).await;
    }
    assert_eq!(f.handler.calls(), 4, "four hosts, four entries");
    assert_eq!(
        f.send(on("a.example")).await.cache_status(),
        "tower-stash; hit"
    );
    f.stash.invalidate_key("user:1").await.unwrap();
    f.send(on("a.example")).await;
    f.send(on("b.example")).await;
    assert_eq!(f.handler.calls(), 6, "every host's entry went");
}

#[tokio::test]
async fn a_fill_older_than_a_tombstone_lasts_is_not_stored() {
    let f = Fixture::with(
        Stash::builder().tombstone_ttl(Duration::from_secs(60)),
        one_route("/slow", Policy::ttl(HOUR)),
        Upstream::echo(),
    );
    let svc = ServiceBuilder::new()
        .layer(f.layer.clone())
        .service(f.handler.clone());
    let resp = svc.oneshot(get("/slow")).await.unwrap();
    // The client reads the body for longer than a tombstone lasts: an invalidation made
    // meanwhile may have left no trace by the time the copy would be stored.
    f.clock.advance(Duration::from_secs(61));
    resp.into_body().collect().await.unwrap();
    f.get("/slow").await;
    assert_eq!(f.handler.calls(), 2, "the slow fill was not stored");
    // A fill within the tombstone's life is.
    f.get("/slow").await;
    assert_eq!(f.handler.calls(), 2);
}
