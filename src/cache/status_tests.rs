//! `Cache-Status` keys and details, shown only to the requests the app chooses.

use crate::test_util::{send, Got, Upstream};
use crate::{CacheLayer, Policy, Routes, Stash};
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use std::time::Duration;
use tower::ServiceBuilder;

async fn get(layer: &CacheLayer, upstream: &Upstream, path: &str, headers: &[(&str, &str)]) -> Got {
    let mut req = Request::get(path);
    for (name, value) in headers {
        req = req.header(*name, *value);
    }
    let svc = ServiceBuilder::new()
        .layer(layer.clone())
        .service(upstream.clone());
    send(svc, req.body(Empty::<Bytes>::new()).unwrap()).await
}

#[tokio::test]
async fn keys_and_details_are_shown_only_to_the_requests_the_app_chooses() {
    let stash = Stash::builder()
        .cache_status_key(true)
        .cache_status_detail(true)
        .cache_status_for(|h| h.get("x-debug-token").is_some_and(|t| t == "s3cret"))
        .build()
        .unwrap();
    let layer = CacheLayer::new(
        stash,
        Routes::new().get(
            "/users/{id}",
            Policy::ttl(Duration::from_secs(60)).key("user:{id}"),
        ),
    );
    let upstream = Upstream::echo();
    let operator = [("x-debug-token", "s3cret")];
    let wrong = [("x-debug-token", "guess")];

    // Anonymous and wrong-token clients: the plain values, nothing more.
    let miss = get(&layer, &upstream, "/users/1", &[]).await;
    assert_eq!(miss.cache_status(), "tower-stash; fwd=miss; stored");
    let hit = get(&layer, &upstream, "/users/1", &wrong).await;
    assert_eq!(hit.cache_status(), "tower-stash; hit");
    let bypass = get(&layer, &upstream, "/users/1", &[("cookie", "a=1")]).await;
    assert_eq!(bypass.cache_status(), "tower-stash; fwd=bypass");

    // The operator: the key, the remaining ttl, and why.
    let hit = get(&layer, &upstream, "/users/1", &operator).await;
    let status = hit.cache_status();
    assert!(status.starts_with("tower-stash; hit; ttl="), "{status}");
    assert!(status.contains("key=\""), "{status}");
    let bypass = get(
        &layer,
        &upstream,
        "/users/1",
        &[("x-debug-token", "s3cret"), ("cookie", "a=1")],
    )
    .await;
    assert_eq!(
        bypass.cache_status(),
        "tower-stash; fwd=bypass; detail=cookie"
    );
    let miss = get(&layer, &upstream, "/users/2", &operator).await;
    assert!(
        miss.cache_status().contains("key=\""),
        "{}",
        miss.cache_status()
    );
}

#[tokio::test]
async fn without_a_predicate_every_client_is_shown_them_and_a_warning_says_so() {
    let (stash, logged) = crate::test_util::logged_warnings(|| {
        Stash::builder().cache_status_detail(true).build().unwrap()
    });
    assert!(
        logged.iter().any(|l| l.contains("cache_status_for")),
        "{logged:?}"
    );
    let layer = CacheLayer::new(
        stash,
        Routes::new().get("/a", Policy::ttl(Duration::from_secs(60))),
    );
    let upstream = Upstream::echo();
    let bypass = get(&layer, &upstream, "/a", &[("cookie", "a=1")]).await;
    assert_eq!(
        bypass.cache_status(),
        "tower-stash; fwd=bypass; detail=cookie"
    );
    // Off (the default): no warning.
    let (_, logged) = crate::test_util::logged_warnings(|| Stash::builder().build().unwrap());
    assert!(logged.is_empty(), "{logged:?}");
}
