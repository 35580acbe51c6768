//! Stale-while-revalidate, stale-if-error, early refresh and TTL jitter: what each client
//! gets, and how often the handler runs.

use crate::test_util::{send, until, within, Counter, Got};
use crate::{CacheLayer, ManualClock, Policy, Routes, Stash};
use axum::body::Body;
use axum::routing::get;
use axum::Router;
use http::{Request, StatusCode};
use http_body_util::BodyExt;
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceExt;

const MINUTE: Duration = Duration::from_secs(60);

/// What the handler answers on each call, by call number.
#[derive(Clone, Copy)]
enum Answer {
    Ok,
    ServerError,
}

/// An app with one cached route, `/r`, on a manual clock. The handler counts its calls,
/// answers per `script(call number)`, and waits at its counter's gate while it is closed.
struct App {
    stash: Stash,
    clock: ManualClock,
    router: Router,
    handler: Counter,
}

impl App {
    fn new(policy: Policy, script: fn(usize) -> Answer) -> Self {
        Self::with(Stash::builder(), policy, script, Duration::ZERO)
    }

    /// `took`: how far the handler moves the clock while it works (the recompute time).
    fn with(
        builder: crate::StashBuilder,
        policy: Policy,
        script: fn(usize) -> Answer,
        took: Duration,
    ) -> Self {
        let clock = ManualClock::default();
        let stash = builder.clock(clock.clone()).build().unwrap();
        let handler = Counter::default();
        let ck = clock.clone();
        let router = Router::new()
            .route(
                "/r",
                handler.get(move |n| {
                    ck.advance(took);
                    match script(n) {
                        Answer::Ok => (StatusCode::OK, format!("call {n}")),
                        Answer::ServerError => {
                            (StatusCode::INTERNAL_SERVER_ERROR, format!("error {n}"))
                        }
                    }
                }),
            )
            .layer(CacheLayer::new(
                stash.clone(),
                Routes::new().get("/r", policy),
            ));
        Self {
            stash,
            clock,
            router,
            handler,
        }
    }

    fn calls(&self) -> usize {
        self.handler.calls()
    }

    async fn get(&self) -> Got {
        let req = Request::get("/r").body(Body::empty()).unwrap();
        send(self.router.clone(), req).await
    }

    async fn stores(&self, n: u64) {
        until("a store", || self.stash.stats().stores >= n).await;
    }
}

#[tokio::test]
async fn stale_while_revalidate_answers_stale_at_once_and_refreshes_once() {
    let app = App::new(
        Policy::ttl(MINUTE).stale_while_revalidate(Duration::from_secs(30)),
        |_| Answer::Ok,
    );
    assert_eq!(app.get().await.body, "call 1");
    app.stores(1).await;
    app.clock.advance(Duration::from_secs(70));
    // The refresh waits on the gate: every request meanwhile is answered stale, at once.
    app.handler.close();
    for _ in 0..20 {
        let got = app.get().await;
        assert_eq!(got.status, StatusCode::OK);
        assert_eq!(got.body, "call 1");
        assert_eq!(got.cache_status(), "tower-stash; hit; stale");
        assert_eq!(got.header("age"), Some("70"));
    }
    until("the refresh in the handler", || app.calls() == 2).await;
    app.handler.open();
    app.stores(2).await;
    let fresh = app.get().await;
    assert_eq!(
        (fresh.text(), fresh.cache_status()),
        ("call 2", "tower-stash; hit")
    );
    assert_eq!(app.calls(), 2, "exactly one refresh");
    let stats = app.stash.stats();
    assert_eq!((stats.stale, stats.refreshes), (20, 1));

    // Past the window, an entry is a miss like any other.
    app.clock.advance(Duration::from_secs(60 + 30));
    let late = app.get().await;
    assert_eq!(late.cache_status(), "tower-stash; fwd=miss; stored");
    assert_eq!(late.body, "call 3");
}

#[tokio::test]
async fn stale_if_error_answers_stale_on_a_5xx_inside_the_window_only() {
    let app = App::new(
        Policy::ttl(MINUTE).stale_if_error(Duration::from_secs(300)),
        |n| {
            if n == 1 {
                Answer::Ok
            } else {
                Answer::ServerError
            }
        },
    );
    assert_eq!(app.get().await.body, "call 1");
    app.stores(1).await;
    app.clock.advance(Duration::from_secs(61));
    let got = app.get().await;
    assert_eq!(
        (got.status, &got.body[..]),
        (StatusCode::OK, &b"call 1"[..])
    );
    assert_eq!(
        got.cache_status(),
        "tower-stash; fwd=stale; fwd-status=500; stale"
    );
    assert_eq!(app.calls(), 2, "the service was asked");
    assert_eq!(app.stash.stats().stale, 1);
    // After the window, the client gets the service's 500.
    app.clock.advance(Duration::from_secs(300));
    let got = app.get().await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(got.body, "error 3");
    assert!(got.cache_status().starts_with("tower-stash; fwd=miss"));
}

#[tokio::test(start_paused = true)]
async fn stale_if_error_answers_stale_when_the_service_is_too_slow_and_stores_it_later() {
    let app = App::new(
        Policy::ttl(MINUTE)
            .stale_if_error(Duration::from_secs(300))
            .upstream_timeout(Duration::from_millis(100)),
        |_| Answer::Ok,
    );
    app.get().await;
    app.stores(1).await;
    app.clock.advance(Duration::from_secs(61));
    app.handler.close();
    // The handler hangs on the gate; after 100 ms (paused time) the client gets the stale
    // entry.
    let got = within("the stale answer", app.get()).await;
    assert_eq!(got.body, "call 1");
    assert_eq!(got.cache_status(), "tower-stash; fwd=stale; stale");
    // The service's answer, when it comes, is stored.
    app.handler.open();
    app.stores(2).await;
    let fresh = app.get().await;
    assert_eq!(
        (fresh.text(), fresh.cache_status()),
        ("call 2", "tower-stash; hit")
    );
}

#[tokio::test]
async fn stale_entries_are_never_served_without_a_window() {
    let app = App::new(Policy::ttl(MINUTE), |n| {
        if n == 1 {
            Answer::Ok
        } else {
            Answer::ServerError
        }
    });
    app.get().await;
    app.stores(1).await;
    app.clock.advance(Duration::from_secs(61));
    let got = app.get().await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
}

#[test]
fn xfetch_refreshes_at_the_rate_exp_minus_t_over_beta_delta() {
    let mut rng = fastrand::Rng::with_seed(7);
    let n = 100_000;
    for (remaining, delta, beta) in [
        (1.0, 1.0, 1.0),
        (2.0, 1.0, 1.0),
        (0.5, 0.25, 4.0),
        (3.0, 2.0, 0.5),
    ] {
        let hits = (0..n)
            .filter(|_| crate::stash::xfetch(remaining, delta, beta, rng.f64()))
            .count();
        let rate = hits as f64 / n as f64;
        let expected = (-remaining / (beta * delta)).exp();
        assert!(
            (rate - expected).abs() < 0.01,
            "T={remaining} delta={delta} beta={beta}: {rate} vs {expected}"
        );
    }
}

#[tokio::test]
async fn early_refresh_fires_near_expiry_with_a_seeded_source() {
    // The handler takes 10 s (on the manual clock): delta = 10 s; TTL 60 s, beta 1.
    let app = App::with(
        Stash::builder().random_seed(42),
        Policy::ttl(MINUTE).early_refresh(1.0),
        |_| Answer::Ok,
        Duration::from_secs(10),
    );
    app.get().await;
    app.stores(1).await;
    // Stored at the request's start; 10 s have passed. At 50 s left the chance is
    // exp(-5) = 0.7 % a hit: 100 hits refresh at most a few times (once, deduplicated).
    for _ in 0..100 {
        assert_eq!(app.get().await.body, "call 1");
    }
    let early = app.stash.stats().refreshes;
    // 1 s before expiry the chance is exp(-0.1) = 90 %: the next hits refresh.
    app.clock.advance(Duration::from_secs(49));
    for _ in 0..5 {
        let got = app.get().await;
        assert_eq!(
            got.cache_status(),
            "tower-stash; hit",
            "served fresh while refreshing"
        );
    }
    until("a refresh", || app.stash.stats().refreshes > early).await;
    app.stores(2).await;
    assert_eq!(app.get().await.body, format!("call {}", app.calls()));
    assert!(app.calls() >= 2);

    // Off with beta 0: the same hits never refresh.
    let off = App::with(
        Stash::builder().random_seed(42),
        Policy::ttl(MINUTE).early_refresh(0.0),
        |_| Answer::Ok,
        Duration::from_secs(10),
    );
    off.get().await;
    off.stores(1).await;
    off.clock.advance(Duration::from_secs(49));
    for _ in 0..50 {
        off.get().await;
    }
    tokio::task::yield_now().await;
    assert_eq!((off.calls(), off.stash.stats().refreshes), (1, 0));
}

#[tokio::test]
async fn ttl_jitter_spreads_expiry_below_the_ttl() {
    let stash = Stash::builder().random_seed(1).build().unwrap();
    let router = Router::new()
        .route("/j/{id}", get(|| async { "x" }))
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get(
                "/j/{id}",
                Policy::ttl(MINUTE).ttl_jitter(Duration::from_secs(30)),
            ),
        ));
    let mut ttls = Vec::new();
    for i in 0..50 {
        let uri = format!("/j/{i}");
        send(
            router.clone(),
            Request::get(&uri).body(Body::empty()).unwrap(),
        )
        .await;
        let key = format!("stash:v1:GET /j/{i}");
        let entry = stash.store().get(key.into()).await.unwrap().unwrap();
        ttls.push(entry.ttl());
    }
    assert!(ttls
        .iter()
        .all(|t| *t > Duration::from_secs(30) && *t <= MINUTE));
    let spread = ttls
        .iter()
        .max()
        .unwrap()
        .saturating_sub(*ttls.iter().min().unwrap());
    assert!(spread > Duration::from_secs(15), "{ttls:?}");
}

#[test]
fn bad_stale_settings_name_their_field() {
    let err = Routes::new()
        .get("/a", Policy::ttl(MINUTE).ttl_jitter(MINUTE))
        .get("/b", Policy::ttl(MINUTE).early_refresh(f64::NAN))
        .get("/c", Policy::ttl(MINUTE).upstream_timeout(Duration::ZERO))
        .validate()
        .unwrap_err()
        .to_string();
    for want in [
        "routes[GET /a].ttl_jitter",
        "routes[GET /b].early_refresh",
        "routes[GET /c].upstream_timeout",
    ] {
        assert!(err.contains(want), "{want} not in {err}");
    }
}

#[tokio::test]
async fn a_refresh_started_by_a_conditional_head_still_stores_a_whole_response() {
    let app = App::new(
        Policy::ttl(MINUTE).stale_while_revalidate(Duration::from_secs(30)),
        |_| Answer::Ok,
    );
    app.get().await;
    app.stores(1).await;
    app.clock.advance(Duration::from_secs(61));
    let req = Request::head("/r")
        .header("if-none-match", "\"nothing-matches\"")
        .body(Body::empty())
        .unwrap();
    let resp = app.router.clone().oneshot(req).await.unwrap();
    assert_eq!(resp.headers()["cache-status"], "tower-stash; hit; stale");
    assert!(resp
        .into_body()
        .collect()
        .await
        .unwrap()
        .to_bytes()
        .is_empty());
    app.stores(2).await;
    let fresh = app.get().await;
    assert_eq!(
        (fresh.text(), fresh.cache_status()),
        ("call 2", "tower-stash; hit")
    );
}

// ---- Invalidation through the handle (memory store) ----

#[tokio::test]
async fn invalidate_key_drops_the_entry_and_its_variants_and_refuses_late_fills() {
    let stash = Stash::new();
    let calls = Counter::default();
    let router = Router::new()
        .route("/users/{id}", calls.get(|n| format!("call {n}")))
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get(
                "/users/{id}",
                Policy::ttl(MINUTE).key("user:{id}").tags(["users"]),
            ),
        ));
    let get_body = |uri: &'static str| {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let got = send(router.clone(), req);
        async move { got.await.body }
    };
    assert_eq!(get_body("/users/1").await, "call 1");
    assert_eq!(get_body("/users/1?lang=fr").await, "call 2");
    assert_eq!(get_body("/users/2").await, "call 3");
    assert_eq!(get_body("/users/1").await, "call 1", "a hit");
    stash.invalidate_key("user:1").await.unwrap();
    // Both variants of user 1 are gone; user 2 is not. Fills that began before the
    // invalidation (within its margin) are refused, so the next misses are not stored yet.
    assert_eq!(get_body("/users/1").await, "call 4");
    assert_eq!(get_body("/users/1?lang=fr").await, "call 5");
    assert_eq!(get_body("/users/2").await, "call 3");
    // A late fill: an entry whose request began before the invalidation.
    let late = crate::Entry::new(
        "stash:v1:user:1",
        StatusCode::OK,
        Default::default(),
        "old".into(),
    )
    .with_times(
        std::time::SystemTime::now() - Duration::from_secs(1),
        MINUTE,
    );
    stash
        .store()
        .put("stash:v1:user:1".into(), Arc::new(late), MINUTE)
        .await
        .unwrap();
    assert_ne!(get_body("/users/1").await, "old");

    stash.invalidate_tag("users").await.unwrap();
    // A late fill carrying the tag (its request began before the tag's invalidation) is
    // refused, even for a key the tag's invalidation never saw.
    let late = crate::Entry::new(
        "stash:v1:user:9",
        StatusCode::OK,
        Default::default(),
        "old".into(),
    )
    .with_times(
        std::time::SystemTime::now() - Duration::from_secs(1),
        MINUTE,
    )
    .with_tags(vec!["users".into()]);
    stash
        .store()
        .put("stash:v1:user:9".into(), Arc::new(late), MINUTE)
        .await
        .unwrap();
    assert!(stash
        .store()
        .get("stash:v1:user:9".into())
        .await
        .unwrap()
        .is_none());
    let before = calls.calls();
    assert_eq!(get_body("/users/2").await, format!("call {}", before + 1));
}

#[tokio::test]
async fn a_refresh_triggered_with_unkeyed_parameters_asks_with_the_keyed_ones_only() {
    let clock = ManualClock::default();
    let stash = Stash::builder().clock(clock.clone()).build().unwrap();
    let calls = Counter::default();
    let c = calls.clone();
    let router = Router::new()
        .route(
            "/r",
            get(move |uri: http::Uri| {
                let c = c.clone();
                async move { format!("call {} for {uri}", c.enter().await) }
            }),
        )
        .layer(CacheLayer::new(
            stash.clone(),
            Routes::new().get(
                "/r",
                Policy::ttl(MINUTE)
                    .key_query(["q"])
                    .stale_while_revalidate(Duration::from_secs(30)),
            ),
        ));
    let get = |uri: &'static str| {
        let req = Request::get(uri).body(Body::empty()).unwrap();
        let got = send(router.clone(), req);
        async move { got.await.body }
    };
    get("/r?q=1").await;
    clock.advance(MINUTE + Duration::from_secs(10));
    // Stale at once; the refresh behind it leaves `utm` out, so its answer can be stored.
    let stale = get("/r?q=1&utm=%3Cx%3E").await;
    assert_eq!(&stale[..], b"call 1 for /r?q=1");
    until("the refresh to be stored", || stash.stats().stores >= 2).await;
    let fresh = get("/r?q=1").await;
    assert_eq!(&fresh[..], b"call 2 for /r?q=1");
    assert_eq!(calls.calls(), 2);
}
