//! Single flight, checked on what each client gets and how often the handler runs.

use crate::test_util::{until, within, Counter, Got};
use crate::{CacheLayer, Policy, Routes, SingleFlightLayer, Stash};
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use std::convert::Infallible;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

const HOUR: Duration = Duration::from_secs(3600);

fn req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn cached(stash: &Stash, sf: SingleFlightLayer, app: Router) -> Router {
    app.layer(
        ServiceBuilder::new()
            .layer(CacheLayer::new(
                stash.clone(),
                Routes::new().get("/items/{id}", Policy::ttl(HOUR)),
            ))
            .layer(sf),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_cold_requests_make_one_call_and_get_the_same_body() {
    let calls = Counter::default();
    let c = calls.clone();
    let stash = Stash::new();
    let sf = SingleFlightLayer::new(stash.clone());
    let app = cached(
        &stash,
        sf.clone(),
        Router::new().route(
            "/items/{id}",
            get(move || {
                let c = c.clone();
                async move {
                    let n = c.enter().await;
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    format!("item from call {n}")
                }
            }),
        ),
    );
    let tasks: Vec<_> = (0..1000)
        .map(|_| {
            let app = app.clone();
            tokio::spawn(
                async move { Got::read(app.oneshot(req("/items/1")).await.unwrap()).await },
            )
        })
        .collect();
    let mut statuses = std::collections::BTreeMap::new();
    for t in tasks {
        let g = within("a response", t).await.unwrap();
        assert_eq!(g.status, StatusCode::OK);
        assert_eq!(g.body, "item from call 1");
        *statuses.entry(g.cache_status().to_owned()).or_insert(0) += 1;
    }
    assert_eq!(calls.calls(), 1, "{statuses:?}");
    assert_eq!(statuses.get("tower-stash; fwd=miss; stored"), Some(&1));
    let stats = stash.stats();
    assert_eq!(stats.collapsed + stats.hits, 999, "{statuses:?}");
    assert_eq!(stats.stores, 1);
    assert_eq!(sf.in_flight(), 0);
}

/// A router behind single flight alone (no cache), on a gated handler that answers with a
/// body and trailers.
fn standalone(h: &Counter) -> (SingleFlightLayer, Router) {
    let sf = SingleFlightLayer::new(Stash::new())
        .routes(Routes::new().get("/items/{id}", Policy::ttl(HOUR)));
    (sf.clone(), standalone_with(h, sf))
}

fn standalone_with(h: &Counter, sf: SingleFlightLayer) -> Router {
    gated(h).layer(sf)
}

/// The gated handler's router: each call answers `call N` with an `x-checksum: N` trailer.
fn gated(h: &Counter) -> Router {
    Router::new().route(
        "/items/{id}",
        h.get(|n| {
            let mut trailers = http::HeaderMap::new();
            trailers.insert("x-checksum", n.to_string().parse().unwrap());
            let frames = futures_util::stream::iter([
                Ok::<_, Infallible>(http_body::Frame::data(Bytes::from(format!("call {n}")))),
                Ok(http_body::Frame::trailers(trailers)),
            ]);
            Response::new(Body::new(http_body_util::StreamBody::new(frames)))
        }),
    )
}

fn spawn_get(app: &Router, uri: &'static str) -> tokio::task::JoinHandle<Got> {
    let app = app.clone();
    tokio::spawn(async move { Got::read(app.oneshot(req(uri)).await.unwrap()).await })
}

#[tokio::test]
async fn alone_it_deduplicates_requests_in_flight_with_body_and_trailers() {
    let h = Counter::closed();
    let (sf, app) = standalone(&h);
    let tasks: Vec<_> = (0..10).map(|_| spawn_get(&app, "/items/1")).collect();
    until("nine waiters", || sf.waiting() == 9).await;
    let other = spawn_get(&app, "/items/2");
    until("a second key's leader", || h.calls() == 2).await;
    h.open();
    for t in tasks {
        let g = within("a response", t).await.unwrap();
        assert_eq!(g.body, "call 1");
        assert_eq!(g.trailers.unwrap()["x-checksum"], "1");
    }
    assert_eq!(within("the other key", other).await.unwrap().body, "call 2");
    assert_eq!(h.calls(), 2);
    assert_eq!(sf.in_flight(), 0);
    // No cache: once the flight is over, the next request calls again.
    assert_eq!(
        Got::read(app.oneshot(req("/items/1")).await.unwrap())
            .await
            .body,
        "call 3"
    );
}

/// A flight on a gated handler with its leader in the handler, whose waiters wait as long as
/// it takes.
async fn waiting_line(h: &Counter) -> (SingleFlightLayer, Router, tokio::task::JoinHandle<Got>) {
    let sf = SingleFlightLayer::new(Stash::new())
        .routes(Routes::new().get("/items/{id}", Policy::ttl(HOUR)))
        .max_wait(HOUR);
    let app = standalone_with(h, sf.clone());
    let leader = spawn_get(&app, "/items/1");
    until("the leader in the handler", || h.calls() == 1).await;
    (sf, app, leader)
}

/// A request that notes its number in `answered` once it has its whole response.
fn spawn_in_line(
    app: &Router,
    i: usize,
    answered: &Arc<std::sync::Mutex<Vec<usize>>>,
) -> tokio::task::JoinHandle<Got> {
    let (app, answered) = (app.clone(), answered.clone());
    tokio::spawn(async move {
        let g = Got::read(app.oneshot(req("/items/1")).await.unwrap()).await;
        answered.lock().unwrap().push(i);
        g
    })
}

/// Waiters are answered in the order they came, so that the burst's first requests, which
/// waited longest, do not also wait for the whole fan-out; each waiter woken hands on to the
/// next, even when it is dropped instead of taking its copy.
#[tokio::test]
async fn waiters_are_answered_in_the_order_they_came() {
    let h = Counter::closed();
    let (sf, app, leader) = waiting_line(&h).await;
    // The first waiters: futures this test polls once. Once the flight is over, the first 32
    // (those the flight wakes) are dropped without taking their copies, and the others take
    // theirs unwoken.
    let mut held = Vec::new();
    for _ in 0..40 {
        let mut fut = Box::pin(app.clone().oneshot(req("/items/1")));
        assert!(futures_util::poll!(&mut fut).is_pending());
        held.push(fut);
    }
    assert_eq!(sf.waiting(), 40);
    let order = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..100 {
        waiters.push(spawn_in_line(&app, i, &order));
        until("the waiter in line", || sf.waiting() == 41 + i).await;
    }
    // One leaves the line before the end: the others pass it by, and its place goes.
    waiters.remove(50).abort();
    until("the waiter gone and its place with it", || {
        sf.waiting() == 139
    })
    .await;
    h.open();
    assert_eq!(within("the leader", leader).await.unwrap().body, "call 1");
    for fut in held.drain(32..) {
        assert_eq!(
            Got::read(within("a held waiter", fut).await.unwrap())
                .await
                .body,
            "call 1"
        );
    }
    drop(held);
    for w in waiters {
        assert_eq!(within("a waiter", w).await.unwrap().body, "call 1");
    }
    let expected: Vec<_> = (0..100).filter(|&i| i != 50).collect();
    assert_eq!(*order.lock().unwrap(), expected);
    assert_eq!(h.calls(), 1);
    assert_eq!(sf.in_flight(), 0);
}

/// On a multi-threaded runtime too, whose queues run the last task woken first and spill a
/// long local queue to the global one: of 1000 waiters, none is answered far behind its place
/// in the line (woken all at once, the first to come were often answered last).
#[tokio::test(flavor = "multi_thread", worker_threads = 1)]
async fn on_a_worker_thread_the_first_waiters_are_answered_first() {
    let h = Counter::closed();
    let (sf, app, leader) = waiting_line(&h).await;
    let answered = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut waiters = Vec::new();
    for i in 0..1000 {
        waiters.push(spawn_in_line(&app, i, &answered));
        until("the waiter in line", || sf.waiting() == i + 1).await;
    }
    h.open();
    for w in waiters {
        assert_eq!(within("a waiter", w).await.unwrap().body, "call 1");
    }
    within("the leader", leader).await.unwrap();
    let answered = answered.lock().unwrap();
    let late = answered
        .iter()
        .enumerate()
        .map(|(place, i)| place.saturating_sub(*i))
        .max();
    // The runtime runs a task woken by a running one next, up to three in a row: each waiter
    // woken by another may go before the few dozen in line ahead of it, never more.
    let bound = 4 * super::flight::WAKE_AHEAD;
    assert!(late < Some(bound), "a waiter answered {late:?} places late");
    assert_eq!(h.calls(), 1);
}

/// A waiter joins on its call, before its future is first polled: a leader gone in between
/// still leaves the flight to it, and a newcomer waits on it rather than call a second time.
#[tokio::test]
async fn a_hand_over_before_a_waiter_is_polled_keeps_the_flight_for_it() {
    let h = Counter::closed();
    let sf = SingleFlightLayer::new(Stash::new())
        .routes(Routes::new().get("/items/{id}", Policy::ttl(HOUR)))
        .max_wait(HOUR);
    let mut svc = tower::Layer::layer(&sf, gated(&h));
    let call = |svc: &mut crate::SingleFlightService<Router>| {
        let fut = svc.call(req("/items/1"));
        tokio::spawn(async move { Got::read(fut.await.unwrap()).await })
    };
    ServiceExt::<Request<Body>>::ready(&mut svc).await.unwrap();
    let leader = call(&mut svc);
    until("the leader in the handler", || h.calls() == 1).await;
    let unpolled = svc.call(req("/items/1"));
    assert_eq!(sf.waiting(), 1);
    leader.abort();
    assert!(within("the leader gone", leader).await.is_err());
    let taker = tokio::spawn(async move { Got::read(unpolled.await.unwrap()).await });
    until("the waiter leading", || h.calls() == 2).await;
    let newcomer = call(&mut svc);
    until("the newcomer waiting", || sf.waiting() == 1).await;
    h.open();
    assert_eq!(
        within("the new leader", taker).await.unwrap().body,
        "call 2"
    );
    assert_eq!(
        within("the newcomer", newcomer).await.unwrap().body,
        "call 2"
    );
    assert_eq!(h.calls(), 2);
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test]
async fn a_cancelled_leader_hands_over_to_one_waiter() {
    let h = Counter::closed();
    let (sf, app) = standalone(&h);
    let leader = spawn_get(&app, "/items/1");
    until("the leader in the handler", || h.calls() == 1).await;
    let waiters: Vec<_> = (0..5).map(|_| spawn_get(&app, "/items/1")).collect();
    until("five waiters", || sf.waiting() == 5).await;
    leader.abort();
    // One waiter takes over: a second call, which the gate lets through.
    until("a new leader", || h.calls() == 2).await;
    h.open();
    for w in waiters {
        assert_eq!(within("a waiter", w).await.unwrap().body, "call 2");
    }
    assert_eq!(h.calls(), 2);
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test]
async fn a_panicking_leader_hands_over_and_the_map_drains() {
    let h = Counter::closed();
    let sf =
        SingleFlightLayer::new(Stash::new()).routes(Routes::new().get("/p", Policy::ttl(HOUR)));
    let app = Router::new()
        .route(
            "/p",
            h.get(|n| {
                if n == 1 {
                    panic!("the leader's handler panics");
                }
                format!("call {n}")
            }),
        )
        .layer(sf.clone());
    let leader = spawn_get(&app, "/p");
    until("the leader in the handler", || h.calls() == 1).await;
    let waiters: Vec<_> = (0..5).map(|_| spawn_get(&app, "/p")).collect();
    until("five waiters", || sf.waiting() == 5).await;
    h.open();
    assert!(within("the leader", leader).await.unwrap_err().is_panic());
    for w in waiters {
        assert_eq!(within("a waiter", w).await.unwrap().body, "call 2");
    }
    assert_eq!(h.calls(), 2);
    assert_eq!(sf.in_flight(), 0);
}

/// A service that fails its first call (after a gate) and answers the others.
#[derive(Clone)]
struct FailsFirst(Counter);

impl Service<Request<Body>> for FailsFirst {
    type Response = Response<Body>;
    type Error = std::io::Error;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Response<Body>, std::io::Error>> + Send>,
    >;
    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }
    fn call(&mut self, _: Request<Body>) -> Self::Future {
        let h = self.0.clone();
        Box::pin(async move {
            let n = h.enter().await;
            if n == 1 {
                Err(std::io::Error::other("database down"))
            } else {
                Ok(Response::new(Body::from(format!("call {n}"))))
            }
        })
    }
}

#[tokio::test]
async fn a_service_error_hands_over_and_a_500_is_shared() {
    let h = Counter::closed();
    let sf =
        SingleFlightLayer::new(Stash::new()).routes(Routes::new().get("/e", Policy::ttl(HOUR)));
    let svc = ServiceBuilder::new()
        .layer(sf.clone())
        .service(FailsFirst(h.clone()));
    let call = |svc: &tower::util::BoxCloneService<_, _, _>| {
        let svc = svc.clone();
        // Each client reads its own body, as a server's connections do: a leader's waiters
        // get their copy when its body ends.
        tokio::spawn(async move {
            match svc.oneshot(req("/e")).await {
                Ok(resp) => Ok(Got::read(resp).await),
                Err(e) => Err(e),
            }
        })
    };
    let svc = tower::util::BoxCloneService::new(svc);
    let leader = call(&svc);
    until("the leader in the service", || h.calls() == 1).await;
    let waiters: Vec<_> = (0..4).map(|_| call(&svc)).collect();
    until("four waiters", || sf.waiting() == 4).await;
    h.open();
    assert!(within("the leader", leader).await.unwrap().is_err());
    for w in waiters {
        let g = within("a waiter", w).await.unwrap().unwrap();
        assert_eq!(g.body, "call 2");
    }
    assert_eq!(h.calls(), 2);
    assert_eq!(sf.in_flight(), 0);

    // A 500 is an answer: the waiters get it at once, with no second call.
    let h = Counter::closed();
    let sf =
        SingleFlightLayer::new(Stash::new()).routes(Routes::new().get("/f", Policy::ttl(HOUR)));
    let app = Router::new()
        .route(
            "/f",
            h.get(|_| (StatusCode::INTERNAL_SERVER_ERROR, "database down")),
        )
        .layer(sf.clone());
    let all: Vec<_> = (0..5).map(|_| spawn_get(&app, "/f")).collect();
    until("four waiters", || sf.waiting() == 4).await;
    h.open();
    for t in all {
        let g = within("a response", t).await.unwrap();
        assert_eq!(
            (g.status, &g.body[..]),
            (StatusCode::INTERNAL_SERVER_ERROR, &b"database down"[..])
        );
    }
    assert_eq!(h.calls(), 1);
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test]
async fn past_the_waiter_cap_requests_go_alone_and_are_not_stored() {
    let h = Counter::closed();
    let stash = Stash::new();
    let sf = SingleFlightLayer::new(stash.clone()).max_waiters(2);
    let app = cached(
        &stash,
        sf.clone(),
        Router::new().route("/items/{id}", h.get(|n| format!("call {n}"))),
    );
    let leader = spawn_get(&app, "/items/1");
    until("the leader", || h.calls() == 1).await;
    let waiters: Vec<_> = (0..2).map(|_| spawn_get(&app, "/items/1")).collect();
    until("two waiters", || sf.waiting() == 2).await;
    let alone: Vec<_> = (0..2).map(|_| spawn_get(&app, "/items/1")).collect();
    until("two alone", || h.calls() == 3).await;
    h.open();
    assert_eq!(
        within("leader", leader).await.unwrap().cache_status(),
        "tower-stash; fwd=miss; stored"
    );
    for w in waiters {
        let g = within("waiter", w).await.unwrap();
        assert_eq!(
            (g.text(), g.cache_status()),
            ("call 1", "tower-stash; fwd=miss; collapsed")
        );
    }
    for a in alone {
        let g = within("alone", a).await.unwrap();
        assert_eq!(g.cache_status(), "tower-stash; fwd=miss");
    }
    within("the store", async {
        while stash.stats().stores < 1 {
            tokio::task::yield_now().await;
        }
    })
    .await;
    let stats = stash.stats();
    assert_eq!((stats.stores, stats.collapsed), (1, 2));
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test(start_paused = true)]
async fn past_the_wait_bound_requests_go_alone() {
    let h = Counter::closed();
    let (_, app) = standalone(&h);
    let sf = SingleFlightLayer::new(Stash::new())
        .routes(Routes::new().get("/items/{id}", Policy::ttl(HOUR)))
        .max_wait(Duration::from_millis(50));
    let app2 = Router::new()
        .route("/items/{id}", h.get(|n| format!("call {n}")))
        .layer(sf.clone());
    drop(app);
    let leader = spawn_get(&app2, "/items/1");
    let waiter = spawn_get(&app2, "/items/1");
    // The leader holds the gate; the waiter gives up after 50 ms (paused time moves on
    // when every task is idle) and calls the service itself.
    until("the waiter alone", || h.calls() == 2).await;
    h.open();
    assert_eq!(within("waiter", waiter).await.unwrap().body, "call 2");
    assert_eq!(within("leader", leader).await.unwrap().body, "call 1");
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test]
async fn responses_for_one_client_are_not_shared_and_head_is_not_coalesced() {
    let h = Counter::closed();
    let sf =
        SingleFlightLayer::new(Stash::new()).routes(Routes::new().get("/s", Policy::ttl(HOUR)));
    let app = Router::new()
        .route(
            "/s",
            h.get(|n| {
                (
                    [("set-cookie", format!("session={n}"))],
                    format!("call {n}"),
                )
            }),
        )
        .layer(sf.clone());
    let all: Vec<_> = (0..3).map(|_| spawn_get(&app, "/s")).collect();
    until("two waiters", || sf.waiting() == 2).await;
    h.open();
    let mut bodies: Vec<_> = Vec::new();
    for t in all {
        bodies.push(within("a response", t).await.unwrap().body);
    }
    bodies.sort();
    assert_eq!(bodies, ["call 1", "call 2", "call 3"]);
    assert_eq!(h.calls(), 3);

    // HEAD goes straight through, even while a GET of the same key is in flight.
    let h = Counter::closed();
    let (sf, app) = standalone(&h);
    let get1 = spawn_get(&app, "/items/1");
    until("the GET leader", || h.calls() == 1).await;
    let app2 = app.clone();
    let head = tokio::spawn(async move {
        Got::read(
            app2.oneshot(Request::head("/items/1").body(Body::empty()).unwrap())
                .await
                .unwrap(),
        )
        .await
    });
    until("the HEAD's own call", || h.calls() == 2).await;
    assert_eq!(sf.waiting(), 0);
    h.open();
    within("get", get1).await.unwrap();
    within("head", head).await.unwrap();
}

#[tokio::test]
async fn a_leader_and_its_waiters_cancelled_together_leave_the_map_empty() {
    let h = Counter::closed();
    let (sf, app) = standalone(&h);
    let leader = spawn_get(&app, "/items/1");
    until("the leader in the handler", || h.calls() == 1).await;
    let waiters: Vec<_> = (0..3).map(|_| spawn_get(&app, "/items/1")).collect();
    until("three waiters", || sf.waiting() == 3).await;
    // A proxy timing out every request of the key at once.
    leader.abort();
    for w in &waiters {
        w.abort();
    }
    until("the map to drain", || sf.in_flight() == 0).await;
    // And the key works afterwards.
    h.open();
    let g = within("a new request", spawn_get(&app, "/items/1"))
        .await
        .unwrap();
    assert!(g.body.starts_with(b"call "));
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test]
async fn a_response_that_varies_on_an_unkeyed_header_is_not_shared() {
    let h = Counter::closed();
    let sf =
        SingleFlightLayer::new(Stash::new()).routes(Routes::new().get("/v", Policy::ttl(HOUR)));
    let app = Router::new()
        .route(
            "/v",
            h.get(|n| ([("vary", "accept-encoding")], format!("call {n}"))),
        )
        .layer(sf.clone());
    let all: Vec<_> = (0..3).map(|_| spawn_get(&app, "/v")).collect();
    until("two waiters", || sf.waiting() == 2).await;
    h.open();
    for t in all {
        within("a response", t).await.unwrap();
    }
    assert_eq!(h.calls(), 3, "each waiter asked the service itself");
}

#[tokio::test]
async fn after_three_failed_leaders_the_waiters_stop_queueing() {
    // Every call fails: the waiters take over one at a time, three leaders in all, then the
    // rest ask the service at once.
    #[derive(Clone)]
    struct AlwaysFails(Arc<AtomicUsize>, Arc<AtomicUsize>, Arc<AtomicUsize>);
    impl Service<Request<Body>> for AlwaysFails {
        type Response = Response<Body>;
        type Error = std::io::Error;
        type Future = std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<Response<Body>, std::io::Error>> + Send>,
        >;
        fn poll_ready(
            &mut self,
            _: &mut std::task::Context<'_>,
        ) -> std::task::Poll<Result<(), Self::Error>> {
            std::task::Poll::Ready(Ok(()))
        }
        fn call(&mut self, _: Request<Body>) -> Self::Future {
            let (calls, now, most) = (self.0.clone(), self.1.clone(), self.2.clone());
            Box::pin(async move {
                calls.fetch_add(1, Ordering::SeqCst);
                let running = now.fetch_add(1, Ordering::SeqCst) + 1;
                most.fetch_max(running, Ordering::SeqCst);
                for _ in 0..10 {
                    tokio::task::yield_now().await;
                }
                now.fetch_sub(1, Ordering::SeqCst);
                Err(std::io::Error::other("down"))
            })
        }
    }
    let (calls, most) = (Arc::new(AtomicUsize::new(0)), Arc::new(AtomicUsize::new(0)));
    let sf =
        SingleFlightLayer::new(Stash::new()).routes(Routes::new().get("/e", Policy::ttl(HOUR)));
    let svc = tower::util::BoxCloneService::new(
        ServiceBuilder::new().layer(sf.clone()).service(AlwaysFails(
            calls.clone(),
            Arc::default(),
            most.clone(),
        )),
    );
    let all: Vec<_> = (0..10)
        .map(|_| {
            let svc = svc.clone();
            tokio::spawn(async move { svc.oneshot(req("/e")).await.is_err() })
        })
        .collect();
    for t in all {
        assert!(
            within("an answer", t).await.unwrap(),
            "every caller gets the error"
        );
    }
    // Three leaders, then the remaining seven alone: ten calls, and no caller waited on
    // more than three failures.
    assert_eq!(calls.load(Ordering::SeqCst), 10);
    assert!(
        most.load(Ordering::SeqCst) > 1,
        "the last ones went at once, not in line"
    );
    assert_eq!(sf.in_flight(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_request_after_an_invalidation_never_gets_a_call_that_began_before_it() {
    let gated = Counter::closed();
    let stash = Stash::new();
    let sf = SingleFlightLayer::new(stash.clone());
    let app = cached(
        &stash,
        sf.clone(),
        Router::new().route("/items/{id}", gated.get(|n| format!("item from call {n}"))),
    );
    let spawn = |app: &Router| {
        let app = app.clone();
        tokio::spawn(async move { Got::read(app.oneshot(req("/items/1")).await.unwrap()).await })
    };
    // A call in flight, and a request waiting on it.
    let before = spawn(&app);
    until("the first call", || gated.calls() == 1).await;
    let waiting = spawn(&app);
    until("a waiter", || sf.waiting() == 1).await;
    // The data changes and the key is invalidated: a request that comes now must not get the
    // answer of a call that began before.
    stash.invalidate_key("GET /items/1").await.unwrap();
    let after = spawn(&app);
    until("a second call", || gated.calls() == 2).await;
    gated.open();
    let (before, waiting, after) = (
        within("a response", before).await.unwrap(),
        within("a response", waiting).await.unwrap(),
        within("a response", after).await.unwrap(),
    );
    assert_eq!(before.body, "item from call 1");
    assert_eq!(
        waiting.body, "item from call 1",
        "it came before the invalidation"
    );
    assert_eq!(after.body, "item from call 2", "{}", after.cache_status());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_finished_flight_serves_newcomers_until_the_leader_s_body_is_dropped() {
    let h = Counter::closed();
    let (_sf, app) = standalone(&h);
    h.open();
    // The leader's whole body is read, but the body is not dropped yet: a cache above would
    // store the answer only now, so a request that comes meanwhile takes a copy.
    let resp = app.clone().oneshot(req("/items/1")).await.unwrap();
    let mut body = resp.into_body();
    while let Some(frame) = body.frame().await {
        frame.unwrap();
    }
    let late = Got::read(app.clone().oneshot(req("/items/1")).await.unwrap()).await;
    assert_eq!(late.body, "call 1");
    assert_eq!(h.calls(), 1);
    // Once dropped, the flight ends: the next request calls the service.
    drop(body);
    let next = Got::read(app.clone().oneshot(req("/items/1")).await.unwrap()).await;
    assert_eq!(next.body, "call 2");
}

#[test]
fn a_single_flight_outside_the_cache_is_reported_once() {
    let misplaced = |outside: bool| {
        crate::test_util::logged_errors(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async {
                let stash = Stash::new();
                let h = Counter::default();
                let app = Router::new().route("/a", h.get(|n| format!("a{n}")));
                let cache = CacheLayer::new(
                    stash.clone(),
                    Routes::new().get("/a", Policy::ttl(Duration::from_secs(60))),
                );
                let sf = SingleFlightLayer::new(stash.clone());
                let svc = if outside {
                    app.layer(cache).layer(sf)
                } else {
                    app.layer(sf).layer(cache)
                };
                for _ in 0..3 {
                    within("a response", svc.clone().oneshot(req("/a")))
                        .await
                        .unwrap();
                }
            });
        })
    };
    let errors = misplaced(true);
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(errors[0].contains("put it inside the cache"), "{errors:?}");
    assert_eq!(misplaced(false), Vec::<String>::new());
}
