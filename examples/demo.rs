//! The demo service: every caching pattern on one axum router, over a simulated database
//! that answers after 200 ms and counts its queries.
//!
//! ```text
//! cargo run --example demo -- [--listen 127.0.0.1:3000] [--config examples/demo.toml] [--db-latency-ms 200]
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example demo --features redis   # tiered on Redis
//! ```
//!
//! | route                          | pattern                                               |
//! |--------------------------------|-------------------------------------------------------|
//! | `GET /users/{id}`              | cache-aside, 1 h, tag `users`                         |
//! | `PUT /users/{id}`              | write-through (`?fail=1`: a failed write drops it)    |
//! | `GET /products`, `/products/{id}` | 24 h, tagged by category and brand from the data; the list built from products cached as typed values |
//! | `PUT /products/{id}`           | invalidates the product, the list, its category's tag |
//! | `GET /prices/{symbol}`         | 5 min, stale-while-revalidate 30 s                    |
//! | `GET /stats/daily`             | 1 min                                                 |
//! | `POST /login`, `GET /me`, `POST /logout` | per-session entry, sliding 30 min, cap 12 h |
//! | `POST /admin/invalidate?tag=X` / `?key=X` | `Authorization: Bearer $ADMIN_TOKEN`       |
//! | `GET /stats`                   | hits, misses, ..., database queries, store health     |
//! | `GET /metrics`                 | the same and more, in Prometheus text (`metrics-exporter-prometheus`) |
//! | `GET /admin/`          | the operator console (`--features admin`), for the admin token |
//!
//! Policies come from `examples/demo.toml`. The router, its state and its database are also
//! what `tests/demo.rs` drives, in-process.

#![allow(dead_code)] // Parts are used by the tests only.

use axum::extract::{Path, Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Extension, Json, Router};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashMap};
use std::hash::{Hash, Hasher};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceBuilder;
use tower_stash::config::{Config, ConfigFileError};
use tower_stash::{
    CacheHint, CacheLayer, InvalidateLayer, Policy, SingleFlightLayer, Stash, Values,
};

/// A user profile.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct User {
    pub id: u64,
    pub name: String,
    pub email: String,
}

/// A product; its category and brand tag its entries.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Product {
    pub id: u64,
    pub name: String,
    pub category: String,
    pub brand: String,
    pub price_cents: u64,
}

/// The simulated database: every query waits `latency` and is counted.
pub struct Db {
    users: Mutex<BTreeMap<u64, User>>,
    products: Mutex<BTreeMap<u64, Product>>,
    queries: AtomicU64,
    latency: Duration,
}

impl Db {
    /// 100 users and 6 products, answering after `latency`.
    pub fn new(latency: Duration) -> Arc<Self> {
        let users = (1..=100)
            .map(|id| {
                let name = format!("User {id}");
                let email = format!("user{id}@example.com");
                (id, User { id, name, email })
            })
            .collect();
        let products = [
            ("iPhone 16", "electronics", "apple", 99_900),
            ("MacBook Air", "electronics", "apple", 119_900),
            ("Galaxy S25", "electronics", "samsung", 89_900),
            ("Kettle", "kitchen", "philips", 4_900),
            ("Toaster", "kitchen", "philips", 3_900),
            ("AirPods", "audio", "apple", 17_900),
        ]
        .into_iter()
        .zip(1..)
        .map(|((name, category, brand, price_cents), id)| {
            let product = Product {
                id,
                name: name.into(),
                category: category.into(),
                brand: brand.into(),
                price_cents,
            };
            (id, product)
        })
        .collect();
        Arc::new(Self {
            users: Mutex::new(users),
            products: Mutex::new(products),
            queries: AtomicU64::new(0),
            latency,
        })
    }

    /// How many queries reached the database.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }

    async fn query(&self) -> u64 {
        let n = self.queries.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.latency).await;
        n
    }

    /// One product, by one query.
    async fn product(&self, id: u64) -> Result<Option<Product>, std::convert::Infallible> {
        self.query().await;
        Ok(self.products.lock().unwrap().get(&id).cloned())
    }

    /// The ids of every product, by one query.
    async fn product_ids(&self) -> Vec<u64> {
        self.query().await;
        self.products.lock().unwrap().keys().copied().collect()
    }
}

/// The demo's state: database, stash, sessions, admin token.
pub struct Demo {
    pub db: Arc<Db>,
    pub stash: Stash,
    /// Products as typed values (the list is built from them), tagged by category and brand
    /// like the product routes: the same invalidations drop both.
    products: Values<Product>,
    sessions: Mutex<HashMap<String, u64>>,
    admin_token: String,
}

impl Demo {
    pub fn new(db: Arc<Db>, stash: Stash, admin_token: impl Into<String>) -> Arc<Self> {
        let day = std::time::Duration::from_secs(24 * 3600);
        let products = stash
            .values(Policy::ttl(day).tags(["products"]))
            .with_tags_from(|p: &Product| vec![p.category.clone(), p.brand.clone()]);
        Arc::new(Self {
            db,
            stash,
            products,
            sessions: Mutex::default(),
            admin_token: admin_token.into(),
        })
    }
}

/// The router: cached routes under the cache's layers, the rest beside them.
pub fn app(demo: Arc<Demo>, config: &Config) -> Result<Router, ConfigFileError> {
    let stash = demo.stash.clone();
    let cached = Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/products", get(list_products))
        .route("/products/{id}", get(get_product).put(put_product))
        .route("/prices/{symbol}", get(get_price))
        .route("/stats/daily", get(daily_stats))
        .route("/me", get(me))
        .layer(
            ServiceBuilder::new()
                .layer(InvalidateLayer::new(stash.clone(), config.rules()?))
                .layer(CacheLayer::new(stash.clone(), config.routes()?))
                .layer(SingleFlightLayer::new(stash)),
        );
    let open = Router::new()
        .route("/login", post(login))
        .route("/logout", post(logout))
        .route("/admin/invalidate", post(admin_invalidate))
        .route("/stats", get(stats))
        .route("/metrics", get(metrics));
    let app = cached.merge(open);
    // The operator console (feature `admin`), for the admin token.
    #[cfg(feature = "admin")]
    let app = {
        let token = demo.admin_token.clone();
        app.nest_service(
            "/admin",
            tower_stash::admin::router(demo.stash.clone(), move |headers| {
                headers
                    .get(header::AUTHORIZATION)
                    .and_then(|v| v.to_str().ok())
                    .and_then(|v| v.strip_prefix("Bearer "))
                    .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
            }),
        )
    };
    Ok(app.with_state(demo))
}

fn not_found(what: &str) -> Response {
    (StatusCode::NOT_FOUND, format!("no such {what}\n")).into_response()
}

async fn get_user(State(demo): State<Arc<Demo>>, Path(id): Path<u64>) -> Response {
    demo.db.query().await;
    match demo.db.users.lock().unwrap().get(&id) {
        Some(user) => Json(user.clone()).into_response(),
        None => not_found("user"),
    }
}

#[derive(Deserialize)]
struct Fail {
    #[serde(default)]
    fail: u8,
}

#[derive(Deserialize)]
struct UserUpdate {
    name: String,
    email: String,
}

async fn put_user(
    State(demo): State<Arc<Demo>>,
    Path(id): Path<u64>,
    Query(q): Query<Fail>,
    Json(update): Json<UserUpdate>,
) -> Response {
    demo.db.query().await;
    if q.fail != 0 {
        // The write may or may not have reached the database: the cached entry goes.
        return (StatusCode::SERVICE_UNAVAILABLE, "database unavailable\n").into_response();
    }
    let mut users = demo.db.users.lock().unwrap();
    let Some(user) = users.get_mut(&id) else {
        return not_found("user");
    };
    user.name = update.name;
    user.email = update.email;
    Json(user.clone()).into_response()
}

/// The list, built from the products cached as values: one query for the ids, and one per
/// product not cached (a product's update drops its value, its category's tag the others').
async fn list_products(State(demo): State<Arc<Demo>>) -> Response {
    let ids = demo.db.product_ids().await;
    let mut products = Vec::with_capacity(ids.len());
    for id in ids {
        let fetch = || demo.db.product(id);
        let product = demo
            .products
            .get_or_fetch_option(format!("product:{id}"), fetch);
        if let Ok(Some(product)) = product.await {
            products.push(product);
        }
    }
    let mut hint = CacheHint::new().tag("products");
    for p in &products {
        hint = hint.tag(p.category.clone()).tag(p.brand.clone());
    }
    let products: Vec<&Product> = products.iter().map(|p| &**p).collect();
    (Extension(hint), Json(products)).into_response()
}

async fn get_product(State(demo): State<Arc<Demo>>, Path(id): Path<u64>) -> Response {
    demo.db.query().await;
    let Some(p) = demo.db.products.lock().unwrap().get(&id).cloned() else {
        return not_found("product");
    };
    // Tagged from its data: invalidating `apple` drops every Apple product.
    let hint = CacheHint::new().tags([p.category.clone(), p.brand.clone()]);
    (Extension(hint), Json(p)).into_response()
}

#[derive(Deserialize)]
struct ProductUpdate {
    name: Option<String>,
    category: Option<String>,
    brand: Option<String>,
    price_cents: Option<u64>,
}

async fn put_product(
    State(demo): State<Arc<Demo>>,
    Path(id): Path<u64>,
    Json(update): Json<ProductUpdate>,
) -> Response {
    demo.db.query().await;
    let (before, after) = {
        let mut products = demo.db.products.lock().unwrap();
        let Some(p) = products.get_mut(&id) else {
            return not_found("product");
        };
        let before = p.category.clone();
        if let Some(v) = update.name {
            p.name = v;
        }
        if let Some(v) = update.category {
            p.category = v;
        }
        if let Some(v) = update.brand {
            p.brand = v;
        }
        if let Some(v) = update.price_cents {
            p.price_cents = v;
        }
        (before, p.clone())
    };
    // The rule drops `product:{id}` and `products`; the category comes from the data.
    let _ = demo.stash.invalidate_tag(&before).await;
    if after.category != before {
        let _ = demo.stash.invalidate_tag(&after.category).await;
    }
    Json(after).into_response()
}

#[derive(Serialize)]
struct Price {
    symbol: String,
    price: f64,
    quote: u64,
}

async fn get_price(State(demo): State<Arc<Demo>>, Path(symbol): Path<String>) -> Response {
    let quote = demo.db.query().await;
    let base = symbol.bytes().map(u64::from).sum::<u64>() as f64;
    Json(Price {
        symbol,
        price: base + quote as f64 / 100.0,
        quote,
    })
    .into_response()
}

async fn daily_stats(State(demo): State<Arc<Demo>>) -> Response {
    let run = demo.db.query().await;
    let users = demo.db.users.lock().unwrap().len();
    Json(serde_json::json!({ "users": users, "orders": 1000 + run, "computed_by_query": run }))
        .into_response()
}

/// The session cookie's value, if the request has one.
fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().strip_prefix("session="))
        .map(str::to_owned)
        .next()
}

/// A tag naming a session without showing it (tags are stored in Redis).
fn session_tag(session: &str) -> String {
    let mut h = std::collections::hash_map::DefaultHasher::new();
    session.hash(&mut h);
    format!("session-{:016x}", h.finish())
}

#[derive(Deserialize)]
struct Login {
    user: u64,
}

async fn login(State(demo): State<Arc<Demo>>, Json(login): Json<Login>) -> Response {
    if !demo.db.users.lock().unwrap().contains_key(&login.user) {
        return not_found("user");
    }
    let token = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
    demo.sessions
        .lock()
        .unwrap()
        .insert(token.clone(), login.user);
    let cookie = format!("session={token}; Path=/; HttpOnly; SameSite=Lax");
    (
        [(header::SET_COOKIE, cookie)],
        Json(serde_json::json!({ "user": login.user })),
    )
        .into_response()
}

async fn me(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    let Some(session) = session_of(&headers) else {
        return (StatusCode::UNAUTHORIZED, "log in first\n").into_response();
    };
    let Some(id) = demo.sessions.lock().unwrap().get(&session).copied() else {
        return (StatusCode::UNAUTHORIZED, "unknown session\n").into_response();
    };
    demo.db.query().await;
    let Some(user) = demo.db.users.lock().unwrap().get(&id).cloned() else {
        return not_found("user");
    };
    // Tagged with its session, so that logging out drops exactly this entry.
    (
        Extension(CacheHint::new().tag(session_tag(&session))),
        Json(user),
    )
        .into_response()
}

async fn logout(State(demo): State<Arc<Demo>>, headers: HeaderMap) -> Response {
    if let Some(session) = session_of(&headers) {
        demo.sessions.lock().unwrap().remove(&session);
        let _ = demo.stash.invalidate_tag(&session_tag(&session)).await;
    }
    let expired = "session=; Path=/; HttpOnly; SameSite=Lax; Max-Age=0";
    ([(header::SET_COOKIE, expired)], "logged out\n").into_response()
}

#[derive(Deserialize)]
struct Target {
    tag: Option<String>,
    key: Option<String>,
}

/// Compares without leaking where the first difference is.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn admin_invalidate(
    State(demo): State<Arc<Demo>>,
    headers: HeaderMap,
    Query(target): Query<Target>,
) -> Response {
    let token = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "));
    if !token.is_some_and(|t| same(t.as_bytes(), demo.admin_token.as_bytes())) {
        return (
            StatusCode::UNAUTHORIZED,
            "a valid admin token is required\n",
        )
            .into_response();
    }
    if target.tag.is_none() && target.key.is_none() {
        return (StatusCode::BAD_REQUEST, "name a ?tag= or a ?key=\n").into_response();
    }
    let mut done = Vec::new();
    if let Some(tag) = &target.tag {
        if demo.stash.invalidate_tag(tag).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed: retried in the background\n",
            )
                .into_response();
        }
        done.push(format!("tag {tag}"));
    }
    if let Some(key) = &target.key {
        if demo.stash.invalidate_key(key).await.is_err() {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                "the store failed: retried in the background\n",
            )
                .into_response();
        }
        done.push(format!("key {key}"));
    }
    Json(serde_json::json!({ "invalidated": done })).into_response()
}

async fn stats(State(demo): State<Arc<Demo>>) -> Response {
    // `Stats` as it serializes (`health`, `breaker`, `since_last_success_ms`, `entries`,
    // `bytes`, ...; `breaker` is null in memory: no breaker), and the database's count.
    let mut stats = serde_json::to_value(demo.stash.stats()).unwrap_or_default();
    stats["db_queries"] = demo.db.queries().into();
    Json(stats).into_response()
}

/// The process's Prometheus recorder, installed as the global `metrics` recorder on first
/// use (before the stash is built, so that its metrics are described), with its upkeep
/// every 5 s. If the process had another recorder already, this one renders nothing.
pub fn prometheus() -> &'static metrics_exporter_prometheus::PrometheusHandle {
    static HANDLE: std::sync::OnceLock<metrics_exporter_prometheus::PrometheusHandle> =
        std::sync::OnceLock::new();
    HANDLE.get_or_init(|| {
        let recorder = metrics_exporter_prometheus::PrometheusBuilder::new().build_recorder();
        let handle = recorder.handle();
        let _ = metrics::set_global_recorder(recorder);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let upkeep = handle.clone();
            rt.spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
        }
        handle
    })
}

/// `GET /metrics`: every metric the stash reports, in Prometheus text. The gauges (entries,
/// bytes, health) are brought up to date first.
async fn metrics(State(demo): State<Arc<Demo>>) -> Response {
    let _ = demo.stash.stats();
    (
        [(header::CONTENT_TYPE, "text/plain; version=0.0.4")],
        prometheus().render(),
    )
        .into_response()
}

/// The stash's settings from `config`, with `Cache-Status` keys and details (which
/// `demo.toml` turns on) shown only to requests carrying `X-Stash-Debug: <admin token>`:
/// anonymous clients get the plain values.
pub fn stash_builder(
    config: &Config,
    admin_token: &str,
) -> Result<tower_stash::StashBuilder, ConfigFileError> {
    let token = admin_token.to_owned();
    Ok(config.stash()?.cache_status_for(move |headers| {
        headers
            .get("x-stash-debug")
            .is_some_and(|t| same(t.as_bytes(), token.as_bytes()))
    }))
}

/// Puts the stash on the Redis at `url` (`REDIS_URL`), in place of the file's `[stash.redis]`
/// address; an empty `url` leaves the file's choice.
pub fn use_redis(config: &mut Config, url: String) {
    if !url.is_empty() {
        let mut redis = config.stash.redis.take().unwrap_or_default();
        redis.url = Some(url);
        redis.cluster = None;
        config.stash.redis = Some(redis);
    }
}

/// The line the demo prints at start about its store: what it connected to (a fresh
/// connection and a ping, within 2 s), or that Redis is unreachable and it serves from memory
/// meanwhile. A Redis that answers and refuses it (a wrong password) is an error: the demo
/// does not start.
pub async fn store_line(stash: &Stash, config: &Config) -> Result<String, tower_stash::StoreError> {
    if config.stash.redis.is_none() {
        return Ok(
            "store: in memory (REDIS_URL and --features redis share it through Redis)".into(),
        );
    }
    match stash.check(Duration::from_secs(2)).await {
        Ok(what) => Ok(format!("store: memory in front of {what}")),
        Err(e) if e.is_unreachable() => Ok(format!(
            "store: Redis is unreachable, serving from memory until it answers ({e})"
        )),
        Err(e) => Err(e),
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:3000".into())
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let latency = match arg("--db-latency-ms") {
        Some(ms) => Duration::from_millis(ms.parse().map_err(|e| format!("--db-latency-ms: {e}"))?),
        None => Duration::from_millis(200),
    };
    let path = arg("--config")
        .unwrap_or_else(|| concat!(env!("CARGO_MANIFEST_DIR"), "/examples/demo.toml").into());
    let mut config = Config::load(&path)?;
    // Before the stash: its metrics are described to this recorder when it is built.
    prometheus();
    if let Ok(url) = std::env::var("REDIS_URL") {
        use_redis(&mut config, url);
    }
    let admin_token = match std::env::var("ADMIN_TOKEN") {
        Ok(t) if !t.is_empty() => t,
        _ => {
            let t = format!("{:016x}{:016x}", fastrand::u64(..), fastrand::u64(..));
            println!("ADMIN_TOKEN is not set: this run's admin token is {t}");
            t
        }
    };
    let stash = stash_builder(&config, &admin_token)?.build()?;
    println!("{}", store_line(&stash, &config).await?);
    let db = Db::new(latency);
    let router = app(Demo::new(db, stash.clone(), admin_token), &config)?;
    // Every cached route of the configuration names a route the router serves (feature
    // `axum`): a typo would mean "never cached".
    #[cfg(feature = "axum")]
    {
        let unmatched = tower_stash::axum::unmatched_routes(&router, &config.routes()?).await;
        if !unmatched.is_empty() {
            return Err(format!("routes the router does not serve: {unmatched:?}").into());
        }
    }
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    let tier = if config.stash.redis.is_some() {
        "memory in front of Redis"
    } else {
        "in memory"
    };
    println!("demo on http://{addr} ({tier}; policies from {path}; database latency {latency:?})");
    println!("try: curl -i http://{addr}/users/1   (twice: a miss, then a hit)");
    println!("     curl -s http://{addr}/stats");
    println!("     curl -s http://{addr}/metrics");
    if cfg!(feature = "admin") {
        println!("     open http://{addr}/admin/#token=<the admin token>");
    } else {
        println!("     (the operator console: --features admin)");
    }
    axum::serve(listener, router).await?;
    Ok(())
}
