//! Application mode and `Host`: an app that builds links, redirects or tenant lookups from
//! the host it is asked for answers differently per host, so the cache keys the host (or
//! serves only the hosts a policy lists).

use crate::test_util::{full, send, Got, Upstream};
use crate::{CacheLayer, Policy, Routes, Stash};
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Empty;
use std::time::Duration;
use tower::ServiceBuilder;

const HOUR: Duration = Duration::from_secs(3600);

/// An app that links to the host it was asked for, or the one its URI names.
fn linking() -> Upstream {
    Upstream::new(|req, n| {
        let host = req
            .uri()
            .authority()
            .map(|a| a.to_string())
            .or_else(|| {
                req.headers()
                    .get("host")
                    .map(|h| h.to_str().unwrap().to_owned())
            })
            .unwrap_or_default();
        Response::new(full(format!("<a href=//{host}/next> #{n}")))
    })
}

struct App {
    stash: Stash,
    layer: CacheLayer,
    handler: Upstream,
}

impl App {
    fn new(policy: Policy) -> Self {
        let stash = Stash::builder().cache_status_detail(true).build().unwrap();
        let routes = Routes::new().get("/users/{id}", policy.key("user:{id}"));
        Self {
            layer: CacheLayer::new(stash.clone(), routes),
            stash,
            handler: linking(),
        }
    }

    async fn get(&self, uri: &str, host: Option<&str>) -> Got {
        let mut req = Request::get(uri);
        if let Some(h) = host {
            req = req.header("host", h);
        }
        let svc = ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(self.handler.clone());
        send(svc, req.body(Empty::<Bytes>::new()).unwrap()).await
    }
}

#[tokio::test]
async fn by_default_each_host_has_entries_of_its_own() {
    let app = App::new(Policy::ttl(HOUR));
    let evil = app.get("/users/1", Some("evil.example")).await;
    assert!(evil.text().contains("evil.example"));
    let clean = app.get("/users/1", Some("shop.example")).await;
    assert!(clean.text().contains("//shop.example/"), "{}", clean.text());
    // One host written several ways is one host.
    for host in ["shop.example", "SHOP.example", "shop.example:80"] {
        let again = app.get("/users/1", Some(host)).await;
        assert!(again.is_hit(), "{host}");
        assert_eq!(again.body, clean.body, "{host}");
    }
    assert_eq!(app.handler.calls(), 2);
    // Invalidating the key drops every host's entry.
    app.stash.invalidate_key("user:1").await.unwrap();
    assert!(!app.get("/users/1", Some("shop.example")).await.is_hit());
    assert!(!app.get("/users/1", Some("evil.example")).await.is_hit());
}

#[tokio::test]
async fn an_absolute_uri_naming_another_host_than_host_bypasses() {
    let app = App::new(Policy::ttl(HOUR));
    let got = app
        .get("http://evil.example/users/1", Some("shop.example"))
        .await;
    assert!(got.text().contains("evil.example"));
    assert_eq!(
        got.cache_status(),
        "tower-stash; fwd=bypass; detail=host-mismatch"
    );
    let clean = app.get("/users/1", Some("shop.example")).await;
    assert!(!clean.text().contains("evil"), "{}", clean.text());
}

#[tokio::test]
async fn with_listed_hosts_they_share_entries_and_any_other_bypasses() {
    let app = App::new(Policy::ttl(HOUR).hosts(["shop.example", "www.shop.example"]));
    let evil = app.get("/users/1", Some("evil.example")).await;
    assert_eq!(
        evil.cache_status(),
        "tower-stash; fwd=bypass; detail=unknown-host"
    );
    let first = app.get("/users/1", Some("shop.example")).await;
    let www = app.get("/users/1", Some("WWW.shop.example:443")).await;
    assert!(www.is_hit(), "listed hosts share the entry");
    assert_eq!(www.body, first.body);
    assert_eq!(app.handler.calls(), 2);
    // A request naming no host at all is not one of them either.
    let none = app.get("/users/1", None).await;
    assert_eq!(
        none.cache_status(),
        "tower-stash; fwd=bypass; detail=unknown-host"
    );
}
