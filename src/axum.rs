//! Wiring checks for axum (feature `axum`): a [`Routes`] table names each route a second
//! time, beside the router; a typo there means "never cached", without a word.
//! [`unmatched_routes`] finds those at start.
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

use crate::Routes;
use axum::body::Body;
use axum::extract::MatchedPath;
use axum::http::{Request, Response, StatusCode};
use axum::Router;
use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
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

/// A path `pattern` matches: each `{param}` and `{*rest}` becomes `x`.
fn sample_path(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                out.push('x');
                rest = &rest[open + close + 1..];
            }
            None => {
                rest = &rest[open..];
                break;
            }
        }
    }
    out.push_str(rest);
    out
}

/// A pattern with its parameters' names left out (`/users/{}`): two patterns of one shape
/// match the same paths.
fn shape(pattern: &str) -> String {
    let mut out = String::with_capacity(pattern.len());
    let mut rest = pattern;
    while let Some(open) = rest.find('{') {
        out.push_str(&rest[..open]);
        match rest[open..].find('}') {
            Some(close) => {
                let wild = rest[open + 1..].starts_with('*');
                out.push_str(if wild { "{*}" } else { "{}" });
                rest = &rest[open + close + 1..];
            }
            None => {
                rest = &rest[open..];
                break;
            }
        }
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
        assert_eq!(shape("/users/{id}"), shape("/users/{user_id}"));
        assert_ne!(shape("/users/{id}"), shape("/users/{*id}"));
        assert_ne!(shape("/users/{id}"), shape("/users/{id}/posts"));
    }
}
