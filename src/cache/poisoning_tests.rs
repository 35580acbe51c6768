//! Cache poisoning through request headers the key does not hold: each header an app may
//! read to build its answer (a host, scheme, port, prefix or method it thinks it serves),
//! sent by an attacker first, then a clean request that must get the clean answer.

use crate::test_util::{full, send, Got, Upstream};
use crate::{CacheLayer, Policy, Routes, Stash};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use std::time::Duration;
use tower::ServiceBuilder;

const HOUR: Duration = Duration::from_secs(3600);

/// The headers that rewrite what many apps and frameworks answer (the host, scheme, port,
/// path prefix or method they believe they serve) without being part of the URL.
const POISONING: [&str; 13] = [
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method",
    "x-http-method-override",
    "x-method-override",
    "forwarded",
];

/// An app that builds its page from `name` when a request carries it.
fn reflecting(name: &'static str) -> Upstream {
    Upstream::new(move |req, n| {
        let seen = req
            .headers()
            .get(name)
            .map_or("example.com", |v| v.to_str().unwrap());
        Response::new(full(format!("<script src=//{seen}/app.js> #{n}")))
    })
}

struct App {
    stash: Stash,
    layer: CacheLayer,
    handler: Upstream,
}

impl App {
    fn new(policy: Policy, handler: Upstream) -> Self {
        let stash = Stash::builder().cache_status_detail(true).build().unwrap();
        let layer = CacheLayer::new(stash.clone(), Routes::new().get("/page", policy));
        Self {
            stash,
            layer,
            handler,
        }
    }

    async fn get(&self, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::get("/page");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let svc = ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(self.handler.clone());
        send(svc, req.body(Empty::<Bytes>::new()).unwrap()).await
    }
}

#[tokio::test]
async fn every_rewriting_header_bypasses_and_a_clean_request_gets_the_clean_page() {
    for name in POISONING {
        let app = App::new(Policy::ttl(HOUR), reflecting(name));
        let poisoned = app.get(&[(name, "evil.example")]).await;
        assert!(poisoned.text().contains("evil.example"), "{name}");
        assert_eq!(
            poisoned.cache_status(),
            "tower-stash; fwd=bypass; detail=unkeyed-forwarding-header",
            "{name}"
        );
        for _ in 0..2 {
            let clean = app.get(&[]).await;
            assert!(!clean.text().contains("evil"), "{name}: {}", clean.text());
        }
        assert_eq!(
            app.handler.calls(),
            2,
            "{name}: one poisoned, one clean fill"
        );
    }
}

#[tokio::test]
async fn with_an_allowlist_any_other_header_bypasses() {
    // A header nobody thought of, which this app reads.
    let app = App::new(
        Policy::ttl(HOUR)
            .key_headers(["x-tenant"])
            .allow_headers(["accept", "user-agent"]),
        reflecting("x-invented-override"),
    );
    let poisoned = app.get(&[("x-invented-override", "evil.example")]).await;
    assert!(poisoned.text().contains("evil.example"));
    assert_eq!(
        poisoned.cache_status(),
        "tower-stash; fwd=bypass; detail=unlisted-header"
    );
    // Listed, keyed and the cache's own headers are fine.
    let headers = [
        ("accept", "text/html"),
        ("user-agent", "curl"),
        ("x-tenant", "a"),
        ("host", "shop.example"),
        ("if-none-match", "\"nope\""),
        ("cache-control", "max-age=0"),
    ];
    let first = app.get(&headers).await;
    assert!(!first.text().contains("evil"), "{}", first.text());
    let second = app.get(&headers).await;
    assert!(second.is_hit(), "{}", second.cache_status());
    assert_eq!(second.body, first.body);
    assert_eq!(app.handler.calls(), 2);
    assert_eq!(app.stash.stats().bypasses, 1);
    // Without an allowlist, the invented header is not known to poison: the default keeps
    // it (an app that reads such a header lists what it allows, or keys it).
    let open = App::new(Policy::ttl(HOUR), reflecting("x-invented-override"));
    open.get(&[("x-other", "1")]).await;
    assert!(open.get(&[("x-other", "2")]).await.is_hit());
}
