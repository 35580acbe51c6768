//! The demo's router, driven in-process: one test per route behaviour, each checking what the
//! client got and how many queries reached the database.

#[path = "../examples/demo.rs"]
mod demo;
mod support;

use axum::body::Body;
use http::{header, Request, StatusCode};
use serde_json::Value;
use std::sync::Arc;
use std::time::Duration;
use support::{send, Got};
use tower_stash::config::Config;
use tower_stash::{ManualClock, Stash};

const TOKEN: &str = "test-admin-token";
const MIN: Duration = Duration::from_secs(60);

struct App {
    router: axum::Router,
    db: Arc<demo::Db>,
    stash: Stash,
    clock: ManualClock,
}

impl Got {
    /// The body as JSON.
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| {
            panic!("{e}: {}", String::from_utf8_lossy(&self.body));
        })
    }
}

fn config() -> Config {
    Config::load(concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml")).unwrap()
}

fn start() -> App {
    // The process's Prometheus recorder, before any stash (each test's stash reports to it).
    demo::prometheus();
    let config = config();
    let clock = ManualClock::default();
    let stash = demo::stash_builder(&config, TOKEN)
        .unwrap()
        .clock(clock.clone())
        .build()
        .unwrap();
    let db = demo::Db::new(Duration::from_millis(5));
    let state = demo::Demo::new(db.clone(), stash.clone(), TOKEN);
    let router = demo::app(state, &config).unwrap();
    App {
        router,
        db,
        stash,
        clock,
    }
}

impl App {
    async fn send(&self, req: Request<Body>) -> Got {
        tokio::time::timeout(Duration::from_secs(20), send(self.router.clone(), req))
            .await
            .expect("an answer within 20 s")
    }

    async fn get(&self, uri: &str) -> Got {
        self.send(Request::get(uri).body(Body::empty()).unwrap())
            .await
    }

    async fn json(&self, method: &str, uri: &str, json: Value) -> Got {
        let req = Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(json.to_string()))
            .unwrap();
        self.send(req).await
    }

    async fn admin(&self, query: &str, token: Option<&str>) -> Got {
        let mut req = Request::post(format!("/admin/invalidate?{query}"));
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        self.send(req.body(Body::empty()).unwrap()).await
    }

    fn queries(&self) -> u64 {
        self.db.queries()
    }

    /// Waits (bounded) until the database has served `n` queries: background refreshes.
    async fn until_queries(&self, n: u64) {
        let waited = tokio::time::timeout(Duration::from_secs(10), async {
            while self.queries() < n {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
        assert!(waited.is_ok(), "{} queries, not {n}", self.queries());
    }
}

#[tokio::test]
async fn a_user_is_read_from_the_database_once_then_from_the_cache() {
    let app = start();
    let miss = app.get("/users/1").await;
    assert_eq!(miss.status, StatusCode::OK);
    assert!(
        miss.cache_status().contains("fwd=miss"),
        "{}",
        miss.cache_status()
    );
    assert_eq!(miss.json()["email"], "user1@example.com");
    assert_eq!(miss.headers.get("age").unwrap(), "0");
    app.clock.advance(Duration::from_secs(90));
    let hit = app.get("/users/1").await;
    assert!(hit.is_hit(), "{}", hit.cache_status());
    assert_eq!(hit.headers.get("age").unwrap(), "90");
    assert_eq!(hit.body, miss.body);
    assert_eq!(app.queries(), 1);
}

#[tokio::test]
async fn put_writes_through_and_a_failed_put_drops_the_entry() {
    let app = start();
    app.get("/users/2").await;
    let put = app
        .json(
            "PUT",
            "/users/2",
            serde_json::json!({"name": "Ada", "email": "ada@example.com"}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(app.queries(), 2);
    // The read is answered by the write's response, with no query.
    let got = app.get("/users/2").await;
    assert!(got.is_hit(), "{}", got.cache_status());
    assert_eq!(got.json()["name"], "Ada");
    assert_eq!(app.queries(), 2);
    // A failed write: 503, and the entry is gone (the data may or may not have changed).
    let failed = app
        .json(
            "PUT",
            "/users/2?fail=1",
            serde_json::json!({"name": "Bob", "email": "bob@example.com"}),
        )
        .await;
    assert_eq!(failed.status, StatusCode::SERVICE_UNAVAILABLE);
    let got = app.get("/users/2").await;
    assert!(!got.is_hit(), "{}", got.cache_status());
    assert_eq!(got.json()["name"], "Ada");
    assert_eq!(app.queries(), 4);
}

#[tokio::test]
async fn products_are_tagged_by_category_and_brand_from_their_data() {
    let app = start();
    for id in [1, 3, 4] {
        app.get(&format!("/products/{id}")).await;
    }
    assert_eq!(app.queries(), 3);
    let done = app.admin("tag=apple", Some(TOKEN)).await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(
        !app.get("/products/1").await.is_hit(),
        "Apple's product went"
    );
    assert!(app.get("/products/3").await.is_hit(), "Samsung's stayed");
    assert!(app.get("/products/4").await.is_hit(), "Philips' stayed");
    assert_eq!(app.queries(), 4);
    app.admin("tag=kitchen", Some(TOKEN)).await;
    assert!(!app.get("/products/4").await.is_hit());
}

#[tokio::test]
async fn a_product_update_drops_the_product_its_category_and_the_list() {
    let app = start();
    for uri in ["/products", "/products/1", "/products/2", "/products/4"] {
        app.get(uri).await;
    }
    // The list: its ids, then each of the 6 products as a typed value; the routes: 3.
    assert_eq!(app.queries(), 10);
    let put = app
        .json(
            "PUT",
            "/products/1",
            serde_json::json!({"price_cents": 100}),
        )
        .await;
    assert_eq!(put.status, StatusCode::OK);
    assert_eq!(app.queries(), 11);
    let product = app.get("/products/1").await;
    assert!(!product.is_hit());
    assert_eq!(product.json()["price_cents"], 100);
    let list = app.get("/products").await;
    assert!(!list.is_hit());
    assert_eq!(list.json()[0]["price_cents"], 100);
    assert!(
        !app.get("/products/2").await.is_hit(),
        "same category: dropped"
    );
    assert!(
        app.get("/products/4").await.is_hit(),
        "another category: kept"
    );
    // The routes of products 1 and 2 asked once each, the list for its ids and the three
    // electronics products' values: the other categories' values stayed cached.
    assert_eq!(app.queries(), 17);
}

#[tokio::test]
async fn prices_are_served_stale_while_one_refresh_runs() {
    let app = start();
    assert_eq!(app.get("/prices/ACME").await.json()["quote"], 1);
    app.clock.advance(5 * MIN + Duration::from_secs(10));
    // Expired 10 s ago, inside the 30 s window: the old price at once, marked stale, and one
    // refresh behind it however many ask.
    for _ in 0..5 {
        let stale = app.get("/prices/ACME").await;
        assert!(
            stale.cache_status().contains("stale"),
            "{}",
            stale.cache_status()
        );
        assert_eq!(stale.json()["quote"], 1);
    }
    app.until_queries(2).await;
    // The refreshed entry is stored just after the refresh's query: a bounded wait for it.
    let fresh = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let got = app.get("/prices/ACME").await;
            if got.json()["quote"] == 2 {
                break got;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the refreshed price stored within 10 s");
    assert!(fresh.is_hit());
    assert_eq!(app.queries(), 2);
    // Past the window, a plain miss.
    app.clock.advance(5 * MIN + 31 * Duration::from_secs(1));
    let late = app.get("/prices/ACME").await;
    assert!(!late.cache_status().contains("stale"));
    assert_eq!(late.json()["quote"], 3);
}

#[tokio::test]
async fn daily_stats_last_a_minute() {
    let app = start();
    let first = app.get("/stats/daily").await;
    app.clock.advance(Duration::from_secs(59));
    assert_eq!(app.get("/stats/daily").await.body, first.body);
    app.clock.advance(Duration::from_secs(2));
    assert_ne!(app.get("/stats/daily").await.body, first.body);
    assert_eq!(app.queries(), 2);
}

fn session_cookie(login: &Got) -> String {
    let set = login
        .headers
        .get(header::SET_COOKIE)
        .unwrap()
        .to_str()
        .unwrap();
    set.split(';').next().unwrap().to_owned()
}

async fn me(app: &App, cookie: Option<&str>) -> Got {
    let mut req = Request::get("/me");
    if let Some(c) = cookie {
        req = req.header(header::COOKIE, c);
    }
    app.send(req.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn each_session_gets_its_own_sliding_entry_until_logout() {
    let app = start();
    let ada = session_cookie(
        &app.json("POST", "/login", serde_json::json!({"user": 5}))
            .await,
    );
    let bob = session_cookie(
        &app.json("POST", "/login", serde_json::json!({"user": 6}))
            .await,
    );
    assert_eq!(me(&app, Some(&ada)).await.json()["id"], 5);
    assert_eq!(me(&app, Some(&bob)).await.json()["id"], 6);
    assert_eq!(app.queries(), 2);
    // Each session's own entry; no session, no cache (and no profile).
    let again = me(&app, Some(&ada)).await;
    assert!(again.is_hit());
    assert_eq!(again.json()["id"], 5);
    let anonymous = me(&app, None).await;
    assert_eq!(anonymous.status, StatusCode::UNAUTHORIZED);
    assert!(anonymous.cache_status().contains("fwd=bypass"));
    // Activity keeps it (40 minutes, a hit every 20), inactivity ends it.
    for _ in 0..2 {
        app.clock.advance(20 * MIN);
        assert!(me(&app, Some(&ada)).await.is_hit());
    }
    app.clock.advance(31 * MIN);
    assert!(!me(&app, Some(&ada)).await.is_hit());
    assert!(!me(&app, Some(&bob)).await.is_hit());
    assert_eq!(app.queries(), 4);
    // Logging out ends the session and its entry: the cached profile is never served again.
    let bye = app
        .send(
            Request::post("/logout")
                .header(header::COOKIE, &ada)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(bye.status, StatusCode::OK);
    assert_eq!(me(&app, Some(&ada)).await.status, StatusCode::UNAUTHORIZED);
    assert!(
        me(&app, Some(&bob)).await.is_hit(),
        "the other session's entry stays"
    );
}

#[tokio::test]
async fn sessions_are_capped_at_twelve_hours_however_active() {
    let app = start();
    let ada = session_cookie(
        &app.json("POST", "/login", serde_json::json!({"user": 5}))
            .await,
    );
    me(&app, Some(&ada)).await;
    for _ in 0..(12 * 60 / 25) {
        app.clock.advance(25 * MIN);
        assert!(me(&app, Some(&ada)).await.is_hit());
    }
    app.clock.advance(25 * MIN);
    assert!(!me(&app, Some(&ada)).await.is_hit());
    assert_eq!(app.queries(), 2);
}

#[tokio::test]
async fn admin_invalidation_needs_the_token() {
    let app = start();
    app.get("/users/3").await;
    for token in [None, Some("wrong"), Some("")] {
        let refused = app.admin("key=user:3", token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        assert!(app.get("/users/3").await.is_hit(), "nothing invalidated");
    }
    assert_eq!(
        app.admin("", Some(TOKEN)).await.status,
        StatusCode::BAD_REQUEST
    );
    let done = app.admin("key=user:3", Some(TOKEN)).await;
    assert_eq!(done.status, StatusCode::OK);
    assert!(!app.get("/users/3").await.is_hit());
    // A tag: every user.
    app.get("/users/4").await;
    app.admin("tag=users", Some(TOKEN)).await;
    assert!(!app.get("/users/3").await.is_hit());
    assert!(!app.get("/users/4").await.is_hit());
}

#[tokio::test]
async fn stats_report_the_cache_and_the_database() {
    let app = start();
    app.get("/users/1").await;
    app.get("/users/1").await;
    me(&app, None).await;
    let stats = app.get("/stats").await.json();
    assert_eq!(stats["hits"], 1);
    assert_eq!(stats["misses"], 1);
    assert_eq!(stats["bypasses"], 1);
    assert_eq!(stats["db_queries"], 1);
    assert_eq!(stats["hit_rate"], 0.5);
    assert_eq!(stats["health"], "ok");
    // In memory: no breaker, nothing to ping.
    assert!(stats["breaker"].is_null());
    assert!(stats["since_last_success_ms"].is_null());
    assert_eq!(stats["entries"], 1);
    assert!(stats["bytes"].as_u64().unwrap() > 0);
    for field in ["stale", "collapsed", "store_errors", "stores"] {
        assert!(stats[field].is_u64(), "{field}");
    }
    assert_eq!(app.stash.stats().hits, 1);
}

#[tokio::test]
async fn cache_status_details_are_for_the_admin_token_only() {
    let app = start();
    app.get("/users/1").await;
    let anonymous = app.get("/users/1").await;
    assert_eq!(anonymous.cache_status(), "tower-stash; hit");
    let mut req = axum::http::Request::get("/users/1")
        .body(axum::body::Body::empty())
        .unwrap();
    req.headers_mut()
        .insert("x-stash-debug", TOKEN.parse().unwrap());
    let operator = support::send(app.router.clone(), req).await;
    assert!(
        operator
            .cache_status()
            .starts_with("tower-stash; hit; ttl="),
        "{}",
        operator.cache_status()
    );
}

/// The value of the series of `name` whose labels include each of `labels` (`key="value"`),
/// in Prometheus text; 0 when absent.
fn series(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")) || l.starts_with(&format!("{name} ")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn metrics_are_served_in_prometheus_text_and_move_with_each_request() {
    let app = start();
    app.get("/users/7").await;
    let scrape = || async {
        let got = app.get("/metrics").await;
        assert_eq!(got.status, StatusCode::OK);
        assert!(got.headers["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain"));
        String::from_utf8(got.body.to_vec()).unwrap()
    };
    let hit = ["route=\"GET /users/{id}\"", "outcome=\"hit\""];
    let before = scrape().await;
    assert!(app.get("/users/7").await.is_hit());
    let after = scrape().await;
    // Tests share the process's recorder: others may hit too, never fewer.
    assert!(
        series(&after, "tower_stash_requests_total", &hit)
            >= series(&before, "tower_stash_requests_total", &hit) + 1.0,
        "{after}"
    );
    assert!(series(&after, "tower_stash_tier_hits_total", &["tier=\"memory\""]) >= 1.0);
    // The service's time on the miss, by route pattern (a summary: count and quantiles).
    assert!(
        series(
            &after,
            "tower_stash_upstream_seconds_count",
            &["route=\"GET /users/{id}\""]
        ) >= 1.0,
        "{after}"
    );
    // Described, with their kind; never a raw path as a label.
    assert!(after.contains("# HELP tower_stash_hits_total"), "{after}");
    assert!(
        after.contains("# TYPE tower_stash_requests_total counter"),
        "{after}"
    );
    assert!(!after.contains("/users/7"), "{after}");
}

/// `examples/grafana-dashboard.json` is a dashboard (valid JSON, panels with queries), and
/// reads only metrics the crate describes.
#[test]
fn the_grafana_dashboard_reads_only_metrics_the_crate_reports() {
    let text = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/examples/grafana-dashboard.json"
    ))
    .unwrap();
    let dashboard: serde_json::Value = serde_json::from_str(&text).unwrap();
    let described =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/src/stash/stats.rs"))
            .unwrap();
    let panels = dashboard["panels"].as_array().unwrap();
    assert!(panels.len() >= 8);
    let mut read = 0;
    for panel in panels {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(at) = rest.find("tower_stash_") {
                let name: String = rest[at..]
                    .chars()
                    .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                    .collect();
                rest = &rest[at + name.len()..];
                let base = ["_count", "_sum", "_bucket"]
                    .iter()
                    .find_map(|suffix| name.strip_suffix(suffix))
                    .unwrap_or(&name);
                assert!(
                    described.contains(&format!("\"{base}\"")),
                    "the dashboard reads {name}, which the crate does not report"
                );
                read += 1;
            }
        }
    }
    assert!(read >= 10, "{read}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_burst_for_one_cold_user_costs_one_query() {
    let app = start();
    let calls = (0..100).map(|_| app.get("/users/9"));
    let got = futures_util::future::join_all(calls).await;
    assert!(got
        .iter()
        .all(|g| g.status == StatusCode::OK && g.body == got[0].body));
    assert_eq!(app.queries(), 1);
}

#[test]
fn the_demo_config_loads() {
    let config = config();
    assert_eq!(config.stash.namespace.as_deref(), Some("demo"));
    assert!(config.routes.contains_key("GET /me"));
}

#[tokio::test]
async fn every_cached_route_carries_age_and_cache_status() {
    let app = start();
    let ada = session_cookie(
        &app.json("POST", "/login", serde_json::json!({"user": 5}))
            .await,
    );
    for round in ["miss", "hit"] {
        let mut answers = Vec::new();
        for uri in [
            "/users/1",
            "/products",
            "/products/2",
            "/prices/ACME",
            "/stats/daily",
        ] {
            answers.push((uri, app.get(uri).await));
        }
        answers.push(("/me", me(&app, Some(&ada)).await));
        for (uri, got) in answers {
            assert_eq!(got.status, StatusCode::OK, "{uri}");
            assert!(got.headers.contains_key("age"), "{uri} ({round}): no Age");
            let status = got.cache_status();
            let want = if round == "hit" { "; hit" } else { "fwd=miss" };
            assert!(status.contains(want), "{uri} ({round}): {status}");
        }
    }
}

#[tokio::test]
async fn the_product_list_is_tagged_by_every_category_and_brand_in_it() {
    let app = start();
    app.get("/products").await;
    app.admin("tag=philips", Some(TOKEN)).await;
    // (A fill dated at the invalidation's instant is refused: the test clock moves on.)
    app.clock.advance(Duration::from_secs(1));
    let refill = app.get("/products").await;
    assert!(!refill.is_hit(), "the list holds Philips products");
    app.admin("tag=nokia", Some(TOKEN)).await;
    let after = app.get("/products").await;
    assert!(
        after.is_hit(),
        "no Nokia in the list: {}",
        after.cache_status()
    );
}

/// The demo on a Redis that is killed while no request comes: `/stats` says so within 2 s, and
/// says it is back within 3 s of its return. (`/stats` itself never calls Redis.)
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stats_show_a_killed_redis_within_2_s_with_no_traffic_and_its_return_within_3_s() {
    use std::time::Instant;
    use support::redis::RedisServer;

    let mut redis = tokio::task::block_in_place(RedisServer::start);
    // As `REDIS_URL=... cargo run --example demo` does.
    let mut config = config();
    demo::use_redis(&mut config, redis.url());
    let stash = config.stash().unwrap().build().unwrap();
    let db = demo::Db::new(Duration::from_millis(5));
    let router = demo::app(demo::Demo::new(db.clone(), stash.clone(), TOKEN), &config).unwrap();
    let app = App {
        router,
        db,
        stash,
        clock: ManualClock::default(),
    };
    let stats = || async { app.get("/stats").await.json() };
    // Polls `/stats` (every 10 ms, for at most 10 s) until `health` is `want`.
    let until_health = |want: &'static str, since: Instant| async move {
        loop {
            let s = stats().await;
            if s["health"] == want {
                return (since.elapsed(), s);
            }
            assert!(since.elapsed() < Duration::from_secs(10), "still {s}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };

    // Healthy: the probe's pings reach Redis.
    let (_, s) = until_health("ok", Instant::now()).await;
    assert_eq!(s["breaker"], "closed");
    let started = Instant::now();
    while stats().await["since_last_success_ms"].is_null() {
        assert!(started.elapsed() < Duration::from_secs(10), "never pinged");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let killed = Instant::now();
    tokio::task::block_in_place(|| redis.kill());
    let (down, s) = until_health("degraded", killed).await;
    println!("degraded {down:?} after the kill: {s}");
    assert!(
        down <= Duration::from_secs(2),
        "degraded only after {down:?}"
    );
    assert!(s["breaker"] == "open" || s["breaker"] == "half-open", "{s}");
    // The last answer came a second or more before the first failed ping.
    assert!(s["since_last_success_ms"].as_u64().unwrap() >= 1_000, "{s}");

    let restarted = Instant::now();
    tokio::task::block_in_place(|| redis.restart());
    let (up, s) = until_health("ok", restarted).await;
    println!("ok {up:?} after the restart began: {s}");
    assert!(up <= Duration::from_secs(3), "ok only after {up:?}");
    assert_eq!(s["breaker"], "closed");
    assert!(s["since_last_success_ms"].as_u64().unwrap() < 1_000, "{s}");
    // No request reached the cache or the database meanwhile.
    assert_eq!(
        (s["hits"].as_u64(), s["misses"].as_u64()),
        (Some(0), Some(0))
    );
    assert_eq!(s["store_errors"], 0);
    assert_eq!(app.queries(), 0);
}

/// The demo pointed at a closed port says so in one line at start and serves from memory;
/// pointed at a real Redis it names what it connected to; a wrong password stops it.
#[cfg(feature = "redis")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_start_line_names_the_redis_or_says_it_is_unreachable_and_serves_from_memory() {
    use support::redis::RedisServer;

    let closed = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = closed.local_addr().unwrap().port();
    drop(closed);
    let mut config = config();
    demo::use_redis(&mut config, format!("redis://127.0.0.1:{port}"));
    let stash = config.stash().unwrap().build().unwrap();
    let line = demo::store_line(&stash, &config).await.unwrap();
    println!("{line}");
    assert!(
        line.starts_with("store: Redis is unreachable, serving from memory")
            && line.contains(&format!("127.0.0.1:{port}")),
        "{line}"
    );
    assert!(!line.contains('\n'));
    // And it serves: a miss, then a hit from memory.
    let db = demo::Db::new(Duration::from_millis(1));
    let router = demo::app(demo::Demo::new(db.clone(), stash.clone(), TOKEN), &config).unwrap();
    let app = App {
        router,
        db,
        stash,
        clock: ManualClock::default(),
    };
    assert_eq!(app.get("/users/1").await.status, StatusCode::OK);
    assert_eq!(app.get("/users/1").await.status, StatusCode::OK);
    assert_eq!(app.queries(), 1);

    let redis = tokio::task::block_in_place(RedisServer::start);
    assert_eq!(redis.cli(&["CONFIG", "SET", "requirepass", "right"]), "OK");
    let mut config = self::config();
    let url = format!("redis://:right@127.0.0.1:{}/2", redis.port());
    demo::use_redis(&mut config, url);
    let stash = config.stash().unwrap().build().unwrap();
    let line = demo::store_line(&stash, &config).await.unwrap();
    println!("{line}");
    assert_eq!(
        line,
        format!(
            "store: memory in front of Redis {} at 127.0.0.1:{} (db 2)",
            redis
                .cli(&["-a", "right", "--no-auth-warning", "INFO", "server"])
                .lines()
                .find_map(|l| l.strip_prefix("redis_version:"))
                .unwrap()
                .trim(),
            redis.port()
        )
    );

    let mut config = self::config();
    demo::use_redis(
        &mut config,
        format!("redis://:s3cr3t-guess@127.0.0.1:{}", redis.port()),
    );
    let stash = config.stash().unwrap().build().unwrap();
    let e = demo::store_line(&stash, &config).await.unwrap_err();
    println!("{e}");
    assert!(!e.is_unreachable());
    let e = e.to_string();
    assert!(
        e.contains("refused the credentials") && e.contains("password"),
        "{e}"
    );
    assert!(
        !e.contains("s3cr3t-guess"),
        "the password is never shown: {e}"
    );
}

/// Every route the demo's configuration caches is one its router serves.
#[cfg(feature = "axum")]
#[tokio::test]
async fn every_configured_route_is_served_by_the_router() {
    let app = start();
    let routes = config().routes().unwrap();
    assert!(routes.patterns().count() >= 6);
    let unmatched = tower_stash::axum::unmatched_routes(&app.router, &routes).await;
    assert!(unmatched.is_empty(), "{unmatched:?}");
    // And a typo is caught.
    let typo = routes.get(
        "/userz/{id}",
        tower_stash::Policy::ttl(Duration::from_secs(1)),
    );
    let unmatched = tower_stash::axum::unmatched_routes(&app.router, &typo).await;
    assert_eq!(unmatched, ["GET /userz/{id}"]);
}

// ---- The operator console (feature `admin`) ----

#[cfg(feature = "admin")]
impl App {
    async fn console(&self, method: &str, path: &str, body: Option<Value>, token: &str) -> Got {
        let mut req = Request::builder()
            .method(method)
            .uri(format!("/admin{path}"))
            .header(header::AUTHORIZATION, format!("Bearer {token}"));
        let body = match body {
            Some(json) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Body::from(json.to_string())
            }
            None => Body::empty(),
        };
        self.send(req.body(body).unwrap()).await
    }
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_console_reports_looks_up_and_purges_for_the_admin_token_only() {
    let app = start();
    // The page holds no data: served to anyone.
    let page = app.get("/admin/").await;
    assert_eq!(page.status, StatusCode::OK);
    assert!(page.text().contains("tower-stash console"));
    // The API: only for the token.
    for token in ["", "wrong"] {
        let refused = app.console("GET", "/api/stats", None, token).await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
        let refused = app
            .console(
                "POST",
                "/api/purge",
                Some(serde_json::json!({"tag": "users"})),
                token,
            )
            .await;
        assert_eq!(refused.status, StatusCode::UNAUTHORIZED);
    }

    app.get("/users/1").await;
    assert!(app.get("/users/1").await.is_hit());
    let stats = app.console("GET", "/api/stats", None, TOKEN).await.json();
    let users = stats["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["route"] == "GET /users/{id}")
        .expect("the users route")
        .clone();
    assert_eq!(
        (users["hits"].as_u64(), users["misses"].as_u64()),
        (Some(1), Some(1))
    );
    assert_eq!(users["hit_rate"], 0.5);
    assert_eq!(stats["stats"]["health"], "ok");

    // Lookup: cached, with its tags, size, age and ttl.
    let found = app
        .console("GET", "/api/lookup?key=user:1", None, TOKEN)
        .await
        .json();
    assert_eq!(found["cached"], true, "{found}");
    assert_eq!(found["in_memory"], true);
    assert_eq!(found["status"], 200);
    assert_eq!(found["ttl_s"], 3600);
    assert_eq!(found["cache_status"], "tower-stash; hit; ttl=3600");
    assert!(found["tags"]
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t == "users"));
    assert!(found["size"].as_u64().unwrap() > 0);

    // Purge by key: the next read asks the database, and the invalidation is listed.
    let queries = app.queries();
    let purged = app
        .console(
            "POST",
            "/api/purge",
            Some(serde_json::json!({"key": "user:1"})),
            TOKEN,
        )
        .await;
    assert_eq!(purged.status, StatusCode::OK, "{}", purged.text());
    let gone = app
        .console("GET", "/api/lookup?key=user:1", None, TOKEN)
        .await
        .json();
    assert_eq!(gone["cached"], false, "{gone}");
    assert_eq!(gone["cache_status"], "tower-stash; fwd=miss");
    assert!(!app.get("/users/1").await.is_hit());
    assert_eq!(app.queries(), queries + 1);
    let stats = app.console("GET", "/api/stats", None, TOKEN).await.json();
    assert_eq!(stats["invalidations"][0]["kind"], "key");
    assert_eq!(stats["invalidations"][0]["target"], "user:1");

    // By tag, and a URL by its default key; a request naming nothing is refused.
    let purged = app
        .console(
            "POST",
            "/api/purge",
            Some(serde_json::json!({"tag": "users"})),
            TOKEN,
        )
        .await;
    assert_eq!(purged.status, StatusCode::OK);
    assert!(!app.get("/users/1").await.is_hit());
    let by_url = app
        .console(
            "POST",
            "/api/purge",
            Some(serde_json::json!({"url": "http://example.com/stats/daily"})),
            TOKEN,
        )
        .await
        .json();
    assert_eq!(by_url["purged"][0], "key GET /stats/daily");
    let nothing = app
        .console("POST", "/api/purge", Some(serde_json::json!({})), TOKEN)
        .await;
    assert_eq!(nothing.status, StatusCode::BAD_REQUEST);
}

/// The console in a real browser: Debian's Chromium driven by playwright-core (both
/// installed by `.ci/run`; `CHROMIUM` and `PLAYWRIGHT_MODULES` point elsewhere), against the
/// demo served on loopback. An unauthorised visitor gets 401 and sees nothing; the page shows
/// the users route's hit ratio rising after more hits, a lookup finds an entry, and purging
/// the tag `users` removes exactly its entries (checked through the API). A screenshot lands
/// in `target/console.png`.
#[cfg(feature = "admin")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_console_works_in_a_real_browser() {
    let root = env!("CARGO_MANIFEST_DIR");
    let chromium = std::env::var("CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
    let modules = std::env::var("PLAYWRIGHT_MODULES")
        .unwrap_or_else(|_| format!("{root}/target/browser/node_modules"));
    assert!(
        std::path::Path::new(&chromium).exists(),
        "no Chromium at {chromium}: apt-get install chromium (.ci/run does), or set CHROMIUM"
    );
    assert!(
        std::path::Path::new(&modules)
            .join("playwright-core")
            .exists(),
        "no playwright-core in {modules}: npm install --prefix {root}/target/browser \
         playwright-core (.ci/run does), or set PLAYWRIGHT_MODULES"
    );
    let app = start();
    let addr = support::serve(app.router.clone()).await;
    for path in ["/users/1", "/users/1", "/users/2", "/products/1"] {
        app.get(path).await;
    }
    let screenshot = format!("{root}/target/console.png");
    let _ = std::fs::remove_file(&screenshot);
    let run = tokio::process::Command::new("node")
        .arg(format!("{root}/tests/browser/console.cjs"))
        .arg(format!("http://{addr}/admin/"))
        .arg(TOKEN)
        .arg(&screenshot)
        .env("NODE_PATH", &modules)
        .env("CHROMIUM", &chromium)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(120), run)
        .await
        .expect("the browser run within 120 s")
        .expect("running node");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let seen: Value = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    println!("{seen}");
    assert_eq!(seen["errors"], serde_json::json!([]), "{seen}");
    // The stranger: 401, told so, and shown nothing.
    assert_eq!(seen["strangerStatus"], 401, "{seen}");
    assert_eq!(seen["strangerRows"], 0, "{seen}");
    assert_eq!(seen["strangerHealth"], "?", "{seen}");
    assert!(seen["strangerError"].as_str().unwrap().contains("refused"));
    // The operator: the token left the address bar; the ratio rose: 1 hit of 3, then 3 of 6
    // (the three reads over loopback name their host, which application mode keys: the
    // first of them misses).
    assert!(!seen["address"].as_str().unwrap().contains(TOKEN), "{seen}");
    assert_eq!(seen["health"], "ok");
    assert_eq!(seen["ratioBefore"], "33.3%", "{seen}");
    assert_eq!(seen["ratioAfter"], "50.0%", "{seen}");
    assert_eq!(seen["lookup"]["cached"], true, "{seen}");
    assert_eq!(
        seen["lookup"]["tags"],
        serde_json::json!(["users"]),
        "{seen}"
    );
    assert_eq!(seen["purge"]["purged"][0], "tag users", "{seen}");
    assert!(seen["invalidations"]
        .as_str()
        .unwrap()
        .contains("tag users"));
    assert_eq!(
        seen["afterPurge"],
        serde_json::json!({"user:1": false, "user:2": false, "product:1": true}),
        "{seen}"
    );
    // The purge reached the cache: the next read asks the database.
    let queries = app.queries();
    assert!(!app.get("/users/1").await.is_hit());
    assert_eq!(app.queries(), queries + 1);
    let shot = std::fs::metadata(&screenshot).expect("a screenshot");
    assert!(shot.len() > 1000);
}

#[cfg(feature = "admin")]
#[tokio::test]
async fn the_console_purges_by_key_and_url_prefix() {
    let app = start();
    for path in ["/users/1", "/users/2", "/products/1", "/stats/daily"] {
        app.get(path).await;
    }
    let purged = app
        .console(
            "POST",
            "/api/purge",
            Some(serde_json::json!({"prefix": "user:"})),
            TOKEN,
        )
        .await
        .json();
    assert_eq!(purged["purged"][0], "prefix user: (2 keys)", "{purged}");
    assert!(!app.get("/users/1").await.is_hit());
    assert!(!app.get("/users/2").await.is_hit());
    assert!(app.get("/products/1").await.is_hit());
    // Nothing under a prefix no key has.
    let none = app
        .console(
            "POST",
            "/api/purge",
            Some(serde_json::json!({"url_prefix": "/nothing/"})),
            TOKEN,
        )
        .await
        .json();
    assert_eq!(none["purged"][0], "prefix GET /nothing/ (0 keys)", "{none}");
}
