//! axum wiring (feature `axum`): a route's policy where the route is defined, so that it is
//! named once ([`cache`]); and, for a separate [`Routes`] table, which names each route a
//! second time beside the router (a typo there means "never cached", without a word), a
//! check at start ([`unmatched_routes`]).
//!
//! ```
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//! use tower_stash::{axum::cache, Policy, Stash};
//!
//! let stash = Stash::new();
//! let app: Router = Router::new().route(
//!     "/users/{id}",
//!     get(|| async { "a user" })
//!         .layer(cache(&stash, Policy::ttl(Duration::from_secs(60)).key("user:{id}"))),
//! );
//! # let _ = app;
//! ```
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() {
//! use axum::{routing::get, Router};
//! use std::time::Duration;
//! use tower_stash::{Policy, Routes};
//!
//! let router: Router = Router::new().route("/users/{id}", get(|| async { "a user" }));
//! let routes = Routes::new()
//!     .get("/users/{id}", Policy::ttl(Duration::from_secs(60)))
//!     .get("/usres/{id}", Policy::ttl(Duration::from_secs(60))); // a typo
//! let unmatched = tower_stash::axum::unmatched_routes(&router, &routes).await;
//! assert_eq!(unmatched, ["GET /usres/{id}"]);
//! # }
//! ```

use crate::cache::{CacheBody, CacheLayer, CacheService, ResponseFuture};
use crate::{Policy, Routes, Stash};
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use bytes::Bytes;
use http_body::Body as HttpBody;
use std::collections::HashMap;
use std::convert::Infallible;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, RwLock};
use std::task::{Context, Poll};
use tower_layer::Layer;
use tower_service::Service;

/// The routes of `routes` (`GET /path/{param}`) that no route of `router` serves: for each,
/// a path the pattern matches (each parameter `x`) is routed through `router` with every
/// route's endpoint replaced by a probe, so that no handler or middleware of the app runs.
/// A path that reaches the fallback, or a route of another shape than the pattern's (the
/// router's `/users/{id}/posts` for `/users/{id}`), is unmatched. Call it at start, and log or
/// fail on what it returns. gRPC routes are left out (tonic routes them).
pub async fn unmatched_routes(router: &Router, routes: &Routes) -> Vec<String> {
    let probed = router.clone().layer(ProbeLayer);
    let mut unmatched = Vec::new();
    let grpc: Vec<&str> = routes.grpc_paths().collect();
    for (method, pattern) in routes.patterns() {
        if grpc.contains(&pattern) {
            continue;
        }
        let path = sample_path(pattern);
        let req = Request::builder()
            .method(method.clone())
            .uri(&path)
            .body(Body::empty());
        let Ok(req) = req else {
            unmatched.push(format!("{method} {pattern}"));
            continue;
        };
        let mut svc = probed.clone();
        let called = match std::future::poll_fn(|cx| {
            <Router as Service<Request<Body>>>::poll_ready(&mut svc, cx)
        })
        .await
        {
            Ok(()) => svc.call(req).await,
            Err(never) => match never {},
        };
        let matched = match called {
            Ok(resp) => resp
                .headers()
                .get(PROBE_HEADER)
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned),
            Err(never) => match never {},
        };
        let same_shape = matched
            .as_deref()
            .is_some_and(|found| shape(found) == shape(pattern));
        if !same_shape {
            unmatched.push(format!("{method} {pattern}"));
        }
    }
    unmatched
}

/// A layer caching the GET (and HEAD) requests of the axum route it is put on with `policy`,
/// the route's pattern read from axum's [`MatchedPath`]: the route is named once, where it is
/// defined (`get(handler).layer(cache(&stash, policy))`, or `Router::route_layer`). The
/// policy's key template may name the pattern's parameters. Outside an axum route (no
/// `MatchedPath`), or with a policy the pattern cannot serve (a template naming a parameter
/// it lacks), requests pass through, said once at error level.
pub fn cache(stash: &Stash, policy: Policy) -> RouteCacheLayer {
    RouteCacheLayer {
        shared: Arc::new(RouteShared {
            stash: stash.clone(),
            policy,
            layers: RwLock::default(),
        }),
    }
}

/// See [`cache`].
#[derive(Clone)]
pub struct RouteCacheLayer {
    shared: Arc<RouteShared>,
}

struct RouteShared {
    stash: Stash,
    policy: Policy,
    /// A cache layer per axum pattern seen (one, unless the layer is on several routes),
    /// and one without routes under `""` (no `MatchedPath`: requests pass through).
    layers: RwLock<HashMap<Box<str>, CacheLayer>>,
}

impl fmt::Debug for RouteCacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCacheLayer")
            .field("policy", &self.shared.policy)
            .finish_non_exhaustive()
    }
}

impl RouteShared {
    /// The cache layer for axum's pattern `matched` (none outside an axum route), on `path`
    /// (the path the route sees: inside a nested router, without the nest's prefix): built
    /// on first sight.
    fn layer_for(&self, matched: Option<&str>, path: &str) -> CacheLayer {
        // Keyed by axum's pattern as it comes (`""`: none): no allocation on a hit.
        let seen = matched.unwrap_or("");
        let layers = self.layers.read().unwrap_or_else(|e| e.into_inner());
        if let Some(layer) = layers.get(seen) {
            return layer.clone();
        }
        drop(layers);
        let built = self.build(matched, path);
        let mut layers = self.layers.write().unwrap_or_else(|e| e.into_inner());
        layers.entry(seen.into()).or_insert(built).clone()
    }

    /// The cache layer for axum's pattern `matched`, first seen on `path`; one without
    /// routes (and said once) where the policy cannot serve it.
    fn build(&self, matched: Option<&str>, path: &str) -> CacheLayer {
        let Some(matched) = matched else {
            tracing::error!(
                "tower_stash::axum::cache saw a request without axum's MatchedPath: put it on \
                 a route of an axum Router (`get(handler).layer(cache(..))` or \
                 `Router::route_layer`); requests pass through uncached"
            );
            return CacheLayer::new(self.stash.clone(), Routes::new());
        };
        // Inside `Router::nest`, the path has lost the prefix the pattern keeps: the pattern's
        // last segments, as many as the path has, are the route's.
        let tail = path.matches('/').count();
        let segments: Vec<&str> = matched.split('/').collect();
        let pattern = if matched.contains("{*") || segments.len() <= tail + 1 {
            matched.to_owned()
        } else {
            format!("/{}", segments[segments.len() - tail..].join("/"))
        };
        let routes = Routes::new().get(pattern.as_str(), self.policy.clone());
        CacheLayer::try_new(self.stash.clone(), routes).unwrap_or_else(|e| {
            tracing::error!(
                route = pattern.as_str(),
                error = %e,
                "tower_stash::axum::cache: the policy cannot serve this route; requests pass \
                 through uncached"
            );
            CacheLayer::new(self.stash.clone(), Routes::new())
        })
    }
}

impl<S> Layer<S> for RouteCacheLayer {
    type Service = RouteCacheService<S>;

    fn layer(&self, inner: S) -> RouteCacheService<S> {
        RouteCacheService {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// See [`cache`].
#[derive(Clone)]
pub struct RouteCacheService<S> {
    inner: S,
    shared: Arc<RouteShared>,
}

impl<S> fmt::Debug for RouteCacheService<S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RouteCacheService").finish_non_exhaustive()
    }
}

impl<S, ReqB, ResB> Service<Request<ReqB>> for RouteCacheService<S>
where
    S: Service<Request<ReqB>, Response = Response<ResB>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    ReqB: Send + 'static,
    ResB: HttpBody<Data = Bytes> + Send + 'static,
    ResB::Error: Send + 'static,
{
    type Response = Response<CacheBody<ResB>>;
    type Error = S::Error;
    type Future = ResponseFuture<S, ReqB>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<ReqB>) -> Self::Future {
        let pattern = req
            .extensions()
            .get::<MatchedPath>()
            .map(MatchedPath::as_str);
        let layer = self.shared.layer_for(pattern, req.uri().path());
        // The ready service goes to the cache; a clone stays for the next call.
        let clone = self.inner.clone();
        let ready = std::mem::replace(&mut self.inner, clone);
        let mut svc: CacheService<S> = layer.layer(ready);
        svc.call(req)
    }
}

/// A path `pattern` matches: each `{param}` and `{*rest}` becomes `x`.
fn sample_path(pattern: &str) -> String {
    replace_params(pattern, |_| "x")
}

/// A pattern with its parameters' names left out (`/users/{}`): two patterns of one shape
/// match the same paths.
fn shape(pattern: &str) -> String {
    replace_params(pattern, |wild| if wild { "{*}" } else { "{}" })
}

/// `pattern` with each parameter (`{name}`, or `{*name}`: `wild`) replaced by `with(wild)`.
fn replace_params(pattern: &str, with: impl Fn(bool) -> &'static str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push_str(with(rest[open + 1..].starts_with('*')));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

/// Where the probe says which route pattern it stood in for.
const PROBE_HEADER: &str = "x-tower-stash-probe";

/// Replaces every route's endpoint (and the fallback) with a probe.
#[derive(Clone, Copy)]
struct ProbeLayer;

impl<S> Layer<S> for ProbeLayer {
    type Service = Probe;

    fn layer(&self, _: S) -> Probe {
        Probe
    }
}

/// Answers at once with the route pattern axum matched (none for the fallback).
#[derive(Clone, Copy)]
struct Probe;

impl Service<Request<Body>> for Probe {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<Body>) -> Self::Future {
        let matched = req
            .extensions()
            .get::<MatchedPath>()
            .map(|m| m.as_str().to_owned());
        Box::pin(async move {
            let mut resp = Response::new(Body::empty());
            *resp.status_mut() = StatusCode::NO_CONTENT;
            if let Some(pattern) = matched {
                if let Ok(value) = pattern.parse() {
                    resp.headers_mut().insert(PROBE_HEADER, value);
                }
            }
            Ok(resp)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::{sample_path, shape, unmatched_routes};
    use crate::{Policy, Routes};
    use axum::routing::get;
    use axum::Router;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;
    use std::time::Duration;

    /// `GET path` through `app`: its `Cache-Status`, and its body.
    async fn fetch(app: &Router, path: &str) -> (String, String) {
        use http_body_util::BodyExt;
        use tower::ServiceExt;
        let req = axum::http::Request::get(path)
            .body(axum::body::Body::empty())
            .unwrap();
        let resp = app.clone().oneshot(req).await.unwrap();
        let status = resp
            .headers()
            .get("cache-status")
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn a_policy_on_the_route_caches_it_named_once_nested_too() {
        let stash = crate::Stash::new();
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = {
            let calls = calls.clone();
            move |axum::extract::Path(id): axum::extract::Path<String>| {
                let n = calls.fetch_add(1, Ordering::SeqCst);
                async move { format!("item {id}, call {n}") }
            }
        };
        let ttl = Policy::ttl(Duration::from_secs(60));
        let orders = Router::new().route(
            "/orders/{id}",
            get(handler.clone()).layer(super::cache(&stash, ttl.clone().key("order:{id}"))),
        );
        let app: Router = Router::new()
            .route(
                "/users/{id}",
                get(handler.clone()).layer(super::cache(&stash, ttl.clone().key("user:{id}"))),
            )
            .nest("/api", orders);
        let (first, body) = fetch(&app, "/users/1").await;
        assert!(first.contains("fwd=miss"), "{first}");
        assert_eq!(
            fetch(&app, "/users/1").await,
            ("tower-stash; hit".into(), body)
        );
        assert!(fetch(&app, "/users/2").await.0.contains("fwd=miss"));
        assert_eq!(calls.load(Ordering::SeqCst), 2);
        // The key template named the pattern's parameter: invalidated by it.
        stash.invalidate_key("user:1").await.unwrap();
        assert!(fetch(&app, "/users/1").await.0.contains("fwd=miss"));
        // Inside a nested router too.
        assert!(fetch(&app, "/api/orders/7").await.0.contains("fwd=miss"));
        assert_eq!(fetch(&app, "/api/orders/7").await.0, "tower-stash; hit");
        stash.invalidate_key("order:7").await.unwrap();
        assert!(fetch(&app, "/api/orders/7").await.0.contains("fwd=miss"));
        let routes: Vec<String> = stash.route_stats().into_iter().map(|r| r.route).collect();
        assert!(routes.contains(&"GET /users/{id}".to_owned()), "{routes:?}");
    }

    #[test]
    fn a_policy_the_route_cannot_serve_passes_through_and_says_so_once() {
        let stash = crate::Stash::new();
        let app: Router = Router::new().route(
            "/users/{id}",
            get(|| async { "a user" }).layer(super::cache(
                &stash,
                Policy::ttl(Duration::from_secs(60)).key("user:{user_id}"),
            )),
        );
        let errors = crate::test_util::logged_errors(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .build()
                .unwrap();
            rt.block_on(async {
                for _ in 0..3 {
                    let (status, body) = fetch(&app, "/users/1").await;
                    assert_eq!((status.as_str(), body.as_str()), ("", "a user"));
                }
            });
        });
        assert_eq!(errors.len(), 1, "{errors:?}");
        assert!(errors[0].contains("cannot serve"), "{errors:?}");
    }

    #[tokio::test]
    async fn a_pattern_no_route_serves_is_reported_and_no_handler_runs() {
        let calls = Arc::new(AtomicUsize::new(0));
        let handler = {
            let calls = calls.clone();
            move || {
                calls.fetch_add(1, Ordering::SeqCst);
                async { "answer" }
            }
        };
        let api = Router::new().route("/orders/{id}", get(handler.clone()));
        let router: Router = Router::new()
            .route("/users/{user_id}", get(handler.clone()))
            .route("/users/{id}/posts", get(handler.clone()))
            .route("/files/{*path}", get(handler.clone()))
            .nest("/api", api)
            .fallback(handler.clone())
            .layer(axum::middleware::from_fn(
                |req: axum::extract::Request, _: axum::middleware::Next| async move {
                    panic!("the app's middleware ran for {}", req.uri());
                    #[allow(unreachable_code)]
                    axum::response::Response::new(axum::body::Body::empty())
                },
            ));
        let ttl = Policy::ttl(Duration::from_secs(60));
        let routes = Routes::new()
            // Served, whatever its parameter's name.
            .get("/users/{id}", ttl.clone())
            .get("/users/{id}/posts", ttl.clone())
            .get("/files/{*rest}", ttl.clone())
            .get("/api/orders/{id}", ttl.clone())
            // A typo; a shape the router does not have; a prefix the router nests elsewhere.
            .get("/usres/{id}", ttl.clone())
            .get("/users/{id}/comments", ttl.clone())
            .get("/orders/{id}", ttl.clone())
            .grpc("/pkg.Users/Get", ttl);
        let unmatched = unmatched_routes(&router, &routes).await;
        assert_eq!(
            unmatched,
            [
                "GET /usres/{id}",
                "GET /users/{id}/comments",
                "GET /orders/{id}"
            ]
        );
        assert_eq!(calls.load(Ordering::SeqCst), 0);
    }

    #[test]
    fn patterns_become_sample_paths_and_shapes() {
        assert_eq!(sample_path("/users/{id}"), "/users/x");
        assert_eq!(sample_path("/a/{x}/b/{*rest}"), "/a/x/b/x");
        assert_eq!(sample_path("/plain"), "/plain");
        assert_eq!(sample_path("/a/{x}/open{"), "/a/x/open{");
        assert_eq!(shape("/users/{id}"), shape("/users/{user_id}"));
        assert_ne!(shape("/users/{id}"), shape("/users/{*id}"));
        assert_ne!(shape("/users/{id}"), shape("/users/{id}/posts"));
    }
}
