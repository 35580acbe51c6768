//! What is stored: only a whole answer, with a reason to store it.

use crate::test_util::{full, send, Upstream};
use crate::{CacheLayer, Policy, Routes, Stash};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use std::time::Duration;
use tower::ServiceBuilder;

#[tokio::test]
async fn a_body_that_ends_short_of_its_content_length_is_never_stored() {
    for (declared, body) in [("100", "cut sh"), ("2", "longer than declared")] {
        let handler = Upstream::new(move |_, _| {
            let mut resp = Response::new(full(body));
            resp.headers_mut()
                .insert("content-length", HeaderValue::from_static(declared));
            resp
        });
        let stash = Stash::new();
        let layer = CacheLayer::new(
            stash.clone(),
            Routes::new().get("/f", Policy::ttl(Duration::from_secs(60))),
        );
        let svc = ServiceBuilder::new().layer(layer).service(handler.clone());
        for _ in 0..2 {
            let req = Request::get("/f").body(Empty::<Bytes>::new()).unwrap();
            send(svc.clone(), req).await;
        }
        assert_eq!(handler.calls(), 2, "Content-Length {declared}");
        assert_eq!(stash.stats().stores, 0);
    }
}

#[tokio::test]
async fn an_answer_with_more_tags_than_the_policy_allows_is_not_stored() {
    let handler = Upstream::new(|req, _| {
        let n: usize = req.uri().query().unwrap().parse().unwrap();
        let tags: Vec<String> = (0..n).map(|i| format!("t{i}")).collect();
        let mut resp = Response::new(full("tagged"));
        resp.headers_mut().insert(
            "x-stash-tags",
            HeaderValue::try_from(tags.join(",")).unwrap(),
        );
        resp
    });
    let stash = Stash::builder().cache_status_detail(true).build().unwrap();
    // Two tags of the policy's own, the one the cache adds (the query is keyed: the key's
    // family), and room for two more.
    let policy = Policy::ttl(Duration::from_secs(60))
        .tags(["a", "b"])
        .max_tags(5);
    let layer = CacheLayer::new(stash.clone(), Routes::new().get("/t", policy));
    let svc = ServiceBuilder::new().layer(layer).service(handler.clone());
    let get = |uri: &'static str| {
        let svc = svc.clone();
        async move {
            let req = Request::get(uri).body(Empty::<Bytes>::new()).unwrap();
            send(svc, req).await
        }
    };
    let got = get("/t?3").await;
    assert_eq!(
        got.cache_status(),
        "tower-stash; fwd=miss; detail=too-many-tags"
    );
    assert!(get("/t?2").await.cache_status().contains("stored"));
    assert!(get("/t?2").await.is_hit());
    // The default bound: 64. A bound leaving no room for the policy's own is refused.
    assert_eq!(crate::policy::DEFAULT_MAX_TAGS, 64);
    let tight = Policy::ttl(Duration::from_secs(60))
        .tags(["a", "b"])
        .max_tags(3);
    let e = Routes::new().get("/t", tight).validate().unwrap_err();
    assert!(e.to_string().contains("max_tags: 3 leaves no room"), "{e}");
}

#[tokio::test]
async fn long_tags_are_hashed_as_long_keys_are_and_still_invalidate() {
    // HTTP mode tags every entry with its URL's key: a 60 KB path must not make a 60 KB tag
    // (a Redis key of up to 180 KB once escaped).
    let long = "p".repeat(60_000);
    let handler = Upstream::new(|req, n| {
        let mut resp = Response::new(full(format!("#{n}")));
        if req.method() == http::Method::GET {
            resp.headers_mut()
                .insert("cache-control", HeaderValue::from_static("max-age=60"));
        }
        resp
    });
    let stash = Stash::new();
    let routes = Routes::new()
        .get("/{*path}", Policy::new().http_mode(true))
        .get(
            "/t/{id}",
            Policy::ttl(Duration::from_secs(60)).tags(["item:{id}"]),
        );
    let layer = CacheLayer::new(stash.clone(), routes);
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(handler.clone());
    let send_to = |method: http::Method, uri: String| {
        let svc = svc.clone();
        async move {
            let req = Request::builder()
                .method(method)
                .uri(uri)
                .body(Empty::<Bytes>::new())
                .unwrap();
            send(svc, req).await
        }
    };
    let url = format!("/{long}");
    send_to(http::Method::GET, url.clone()).await;
    let key = layer
        .key_for(&Request::get(&url).body(()).unwrap())
        .unwrap();
    let stored = stash.stored_key(&key);
    let entry = stash.store().get_local(&stored).flatten().expect("stored");
    assert!(!entry.tags().is_empty());
    assert!(
        entry.tags().iter().all(|t| t.len() <= 250),
        "tag lengths: {:?}",
        entry.tags().iter().map(String::len).collect::<Vec<_>>()
    );
    assert!(send_to(http::Method::GET, url.clone()).await.is_hit());
    // A write to the URL still drops it.
    send_to(http::Method::POST, url.clone()).await;
    assert!(!send_to(http::Method::GET, url).await.is_hit());
    // A policy's tag, filled from a long parameter: hashed too, and invalidated by its name.
    let id = "i".repeat(1000);
    send_to(http::Method::GET, format!("/t/{id}")).await;
    assert!(send_to(http::Method::GET, format!("/t/{id}"))
        .await
        .is_hit());
    stash.invalidate_tag(&format!("item:{id}")).await.unwrap();
    assert!(!send_to(http::Method::GET, format!("/t/{id}"))
        .await
        .is_hit());
}

#[tokio::test]
async fn an_answer_invalidated_while_the_service_answered_does_not_say_stored() {
    use crate::test_util::{until, Counter};
    let clock = crate::ManualClock::default();
    let stash = Stash::builder()
        .clock(clock.clone())
        .cache_status_detail(true)
        .build()
        .unwrap();
    let counter = Counter::closed();
    let app = axum::Router::new()
        .route("/u/{id}", counter.get(|n| format!("v{n}")))
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get(
                "/u/{id}",
                Policy::ttl(Duration::from_secs(60)).key("u:{id}"),
            ),
        ));
    let get = || {
        Request::get("/u/1")
            .body(axum::body::Body::empty())
            .unwrap()
    };
    let slow = tokio::spawn(send(app.clone(), get()));
    until("the service's call", || counter.calls() == 1).await;
    stash.invalidate_key("u:1").await.unwrap();
    counter.open();
    let got = slow.await.unwrap();
    assert_eq!(got.text(), "v1");
    assert_eq!(
        got.cache_status(),
        "tower-stash; fwd=miss; detail=invalidated"
    );
    // Not stored indeed; and a request after the invalidation (dated past the margin by the
    // stash's clock) is.
    clock.advance(Duration::from_millis(51));
    let got = send(app.clone(), get()).await;
    assert_eq!(
        (got.text(), got.cache_status()),
        ("v2", "tower-stash; fwd=miss; stored")
    );
    assert!(send(app, get()).await.is_hit());
}

#[tokio::test]
async fn an_ignored_analytics_cookie_no_longer_prevents_a_hit() {
    let upstream = Upstream::echo();
    let stash = Stash::builder().cache_status_detail(true).build().unwrap();
    let layer = |policy: Policy| {
        ServiceBuilder::new()
            .layer(CacheLayer::new(
                stash.clone(),
                Routes::new().get("/p", policy),
            ))
            .service(upstream.clone())
    };
    let get = |cookie: &str| {
        Request::get("/p")
            .header("cookie", cookie)
            .body(Empty::<Bytes>::new())
            .unwrap()
    };
    let analytics = "_ga=GA1.2.1234.5678; _gid=GA1.2.99";
    // The trap: any cookie bypasses, so every browser misses.
    let plain = layer(Policy::ttl(Duration::from_secs(60)));
    for _ in 0..2 {
        let got = send(plain.clone(), get(analytics)).await;
        assert_eq!(got.cache_status(), "tower-stash; fwd=bypass; detail=cookie");
    }
    assert_eq!(upstream.calls(), 2);
    // Ignored: the same requests share one entry, with and without the cookies.
    let ignoring = layer(Policy::ttl(Duration::from_secs(60)).ignore_cookies(["_ga", "_gid"]));
    send(ignoring.clone(), get(analytics)).await;
    assert!(send(ignoring.clone(), get("_gid=other; _ga=x"))
        .await
        .is_hit());
    let bare = Request::get("/p").body(Empty::<Bytes>::new()).unwrap();
    assert!(send(ignoring.clone(), bare).await.is_hit());
    assert_eq!(upstream.calls(), 3);
    // Any other cookie still bypasses: it may be what the answer depends on.
    let got = send(ignoring.clone(), get("_ga=x; session=abc")).await;
    assert_eq!(got.cache_status(), "tower-stash; fwd=bypass; detail=cookie");
    assert_eq!(upstream.calls(), 4);
}

#[test]
fn an_ignored_cookie_that_is_no_cookie_name_is_named_in_the_error() {
    let routes = Routes::new().get(
        "/p",
        Policy::ttl(Duration::from_secs(60)).ignore_cookies(["_ga", "bad name"]),
    );
    let err = routes.validate().unwrap_err().to_string();
    assert!(
        err.contains("ignore_cookies: `bad name` is not a cookie name"),
        "{err}"
    );
}
