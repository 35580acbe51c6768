//! Single flight shares a response with waiters only if the cache could have stored it: the
//! one rule of `plumbing::may_share`, checked with a leader held in a gated handler while a
//! second request joins it.

use crate::test_util::{full, until, within, Counter, Got, TestBody};
use crate::{CacheLayer, Policy, Routes, SingleFlightLayer, Stash};
use axum::body::Body;
use bytes::Bytes;
use http::{HeaderValue, Request, Response, StatusCode};
use std::convert::Infallible;
use std::time::Duration;
use tower::util::BoxCloneService;
use tower::{ServiceBuilder, ServiceExt};

const HOUR: Duration = Duration::from_secs(3600);

type Answer = fn(usize) -> Response<TestBody>;

/// An answer of `status` with `headers`, its body naming the call.
fn answer(n: usize, status: u16, headers: &[(&'static str, &'static str)]) -> Response<TestBody> {
    let mut resp = Response::new(full(format!("call {n}")));
    *resp.status_mut() = StatusCode::from_u16(status).unwrap();
    for (name, value) in headers {
        resp.headers_mut()
            .append(*name, HeaderValue::from_static(value));
    }
    resp
}

/// A gated handler answering `respond(call)`, behind `front` (a cache, or nothing) and a
/// single flight; two requests for `uri`, the second joining the first's flight. Returns
/// what each got, and how many calls the handler had.
async fn two_at_once(
    routes: Routes,
    with_cache: bool,
    respond: Answer,
    uri: [&'static str; 2],
) -> (Got, Got, usize) {
    let stash = Stash::new();
    let gate = Counter::closed();
    let g = gate.clone();
    let handler = tower::service_fn(move |_: Request<Body>| {
        let g = g.clone();
        async move { Ok::<_, Infallible>(respond(g.enter().await)) }
    });
    let sf = if with_cache {
        SingleFlightLayer::new(stash.clone())
    } else {
        SingleFlightLayer::new(stash.clone()).routes(routes.clone())
    };
    let flight = ServiceBuilder::new().layer(sf.clone()).service(handler);
    let svc: BoxCloneService<Request<Body>, Response<Body>, Infallible> = if with_cache {
        BoxCloneService::new(
            ServiceBuilder::new()
                .map_response(|r: Response<_>| r.map(Body::new))
                .layer(CacheLayer::new(stash.clone(), routes))
                .service(flight),
        )
    } else {
        BoxCloneService::new(flight.map_response(|r| r.map(Body::new)))
    };
    let send = |uri: &'static str| {
        let svc = svc.clone();
        tokio::spawn(async move {
            let req = Request::get(uri).body(Body::empty()).unwrap();
            Got::read(svc.oneshot(req).await.unwrap()).await
        })
    };
    let first = send(uri[0]);
    until("the leader in the handler", || gate.calls() == 1).await;
    let second = send(uri[1]);
    // A waiter joins the flight; a request that may not is in the handler.
    until("the second request waiting or called", || {
        sf.waiting() == 1 || gate.calls() == 2
    })
    .await;
    gate.open();
    let first = within("the first answer", first).await.unwrap();
    let second = within("the second answer", second).await.unwrap();
    (first, second, gate.calls())
}

fn http_routes() -> Routes {
    Routes::new().get("/{*path}", Policy::new().http_mode(true))
}

#[tokio::test]
async fn a_storable_answer_is_shared() {
    let (a, b, calls) = two_at_once(
        http_routes(),
        true,
        |n| answer(n, 200, &[("cache-control", "max-age=60")]),
        ["/x", "/x"],
    )
    .await;
    assert_eq!((a.text(), b.text(), calls), ("call 1", "call 1", 1));
}

#[tokio::test]
async fn what_the_cache_would_never_store_is_never_shared() {
    let cases: [(&str, Answer); 6] = [
        ("no-cache", |n| {
            answer(n, 200, &[("cache-control", "no-cache"), ("etag", "\"a\"")])
        }),
        ("no freshness", |n| answer(n, 200, &[])),
        ("stale on arrival", |n| {
            answer(n, 200, &[("cache-control", "max-age=5"), ("age", "10")])
        }),
        ("412", |n| {
            answer(n, 412, &[("cache-control", "max-age=60")])
        }),
        ("416", |n| {
            answer(n, 416, &[("cache-control", "max-age=60")])
        }),
        ("truncated", |n| {
            let mut resp = answer(n, 200, &[("cache-control", "max-age=60")]);
            resp.headers_mut()
                .insert("content-length", HeaderValue::from_static("100"));
            resp
        }),
    ];
    for (what, respond) in cases {
        let (a, b, calls) = two_at_once(http_routes(), true, respond, ["/x", "/x"]).await;
        assert_eq!(calls, 2, "{what}: {} / {}", a.text(), b.text());
        assert_eq!(b.text(), "call 2", "{what}");
    }
}

#[tokio::test]
async fn application_mode_shares_what_its_policy_stores_and_no_skipped_answer() {
    let routes = || Routes::new().get("/items/{id}", Policy::ttl(HOUR));
    let (_, b, calls) = two_at_once(routes(), true, |n| answer(n, 200, &[]), ["/items/1"; 2]).await;
    assert_eq!((b.text(), calls), ("call 1", 1));
    let skip: Answer = |n| answer(n, 200, &[("x-stash-skip", "1")]);
    let (_, b, calls) = two_at_once(routes(), true, skip, ["/items/1"; 2]).await;
    assert_eq!((b.text(), calls), ("call 2", 2));
    let (_, b, calls) = two_at_once(routes(), false, skip, ["/items/1"; 2]).await;
    assert_eq!((b.text(), calls), ("call 2", 2), "alone");
    // In HTTP mode an origin's `x-stash-skip` is its own header, as for the cache: the
    // answer is stored, and shared.
    let origin_s: Answer = |n| {
        answer(
            n,
            200,
            &[("cache-control", "max-age=60"), ("x-stash-skip", "1")],
        )
    };
    let (_, b, calls) = two_at_once(http_routes(), true, origin_s, ["/x"; 2]).await;
    assert_eq!((b.text(), calls), ("call 1", 1));
}

#[tokio::test]
async fn a_failure_of_the_moment_is_handed_to_those_already_waiting() {
    // Not stored, but not asked again by the whole burst either (see the module docs).
    for routes in [
        Routes::new().get("/items/{id}", Policy::ttl(HOUR)),
        http_routes(),
    ] {
        let (_, b, calls) = two_at_once(
            routes.clone(),
            true,
            |n| answer(n, 503, &[]),
            ["/items/1"; 2],
        )
        .await;
        assert_eq!((b.status.as_u16(), b.text(), calls), (503, "call 1", 1));
        // Unless it is one client's own.
        let private: Answer = |n| answer(n, 503, &[("cache-control", "private")]);
        let (_, b, calls) = two_at_once(routes, true, private, ["/items/1"; 2]).await;
        assert_eq!((b.text(), calls), ("call 2", 2));
    }
}

#[tokio::test]
async fn alone_it_never_coalesces_requests_with_query_parameters_its_key_leaves_out() {
    let routes = Routes::new().get("/items/{id}", Policy::ttl(HOUR).key_query(["q"]));
    let (a, b, calls) = two_at_once(
        routes.clone(),
        false,
        |n| answer(n, 200, &[]),
        ["/items/1?q=a&debug=1", "/items/1?q=a"],
    )
    .await;
    assert_eq!((a.text(), b.text(), calls), ("call 1", "call 2", 2));
    // Keyed parameters only: coalesced.
    let (_, b, calls) = two_at_once(
        routes,
        false,
        |n| answer(n, 200, &[]),
        ["/items/1?q=a", "/items/1?q=a"],
    )
    .await;
    assert_eq!((b.text(), calls), ("call 1", 1));
}

#[tokio::test]
async fn truncated_bodies_are_never_shared_nor_stored_in_application_mode() {
    let truncated: Answer = |n| {
        let mut resp = answer(n, 200, &[]);
        resp.headers_mut()
            .insert("content-length", HeaderValue::from_static("100"));
        resp
    };
    let routes = || Routes::new().get("/items/{id}", Policy::ttl(HOUR));
    let (_, b, calls) = two_at_once(routes(), true, truncated, ["/items/1"; 2]).await;
    assert_eq!((b.text(), calls), ("call 2", 2));
    let _ = Bytes::new();
}
