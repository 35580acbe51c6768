//! A first example as a service: a user lookup that takes 200 ms (a simulated
//! database), cached in memory for an hour.
//!
//! ```sh
//! cargo run --example quickstart                 # listens on 127.0.0.1:3000, in memory
//! cargo run --example quickstart -- --listen 127.0.0.1:8080
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example quickstart --features redis
//! ```
//!
//! With `REDIS_URL`, entries are shared through Redis behind a memory tier; `--no-l1` keeps
//! them in Redis only (every hit is a Redis round trip: for measuring the Redis tier).
//!
//! The cache stands in front of the router: a hit is answered before any routing, and other
//! requests go on to the router untouched.
//!
//! Concurrent misses for one user are coalesced ([`SingleFlightLayer`]): a thousand requests
//! for a cold key cost one database query. `--no-single-flight` turns that off, to compare
//! (`cargo run --release --example stampede` measures both).

use axum::{extract::Path, extract::State, response::IntoResponse, routing::get, Json, Router};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;
use tower_stash::{CacheLayer, Policy, Routes, SingleFlightLayer, Stash};

/// The body of a user, as the database would render it.
fn user_json(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"User {id}","email":"user{id}@example.com"}}"#)
}

#[derive(Clone, Default)]
struct Db {
    queries: Arc<AtomicU64>,
}

async fn get_user(State(db): State<Db>, Path(id): Path<u64>) -> impl IntoResponse {
    db.queries.fetch_add(1, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(200)).await; // the database
    ([("content-type", "application/json")], user_json(id))
}

async fn stats(State((db, stash)): State<(Db, Stash)>) -> impl IntoResponse {
    let s = stash.stats();
    Json(serde_json::json!({
        "db_queries": db.queries.load(Ordering::Relaxed),
        "hits": s.hits,
        "misses": s.misses,
        "stores": s.stores,
        "collapsed": s.collapsed,
        "leases": s.leases,
        "stale": s.stale,
        "refreshes": s.refreshes,
        "hit_rate": s.hit_rate(),
        "entries": s.entries,
        "bytes": s.bytes,
    }))
}

#[cfg(feature = "redis")]
fn redis_only() -> Result<Stash, Box<dyn std::error::Error>> {
    let url = std::env::var("REDIS_URL").map_err(|_| "--no-l1 needs REDIS_URL")?;
    let store = tower_stash::Guarded::new(tower_stash::RedisStore::new(url)?);
    Ok(Stash::builder().store(store).build()?)
}

#[cfg(not(feature = "redis"))]
fn redis_only() -> Result<Stash, Box<dyn std::error::Error>> {
    Err("--no-l1 needs the `redis` feature".into())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?,
        None => "127.0.0.1:3000".parse()?,
    };

    let stash = if std::env::args().any(|a| a == "--no-l1") {
        redis_only()?
    } else {
        Stash::from_env()? // in memory (64 MiB), or tiered on Redis when REDIS_URL is set
    };
    let db = Db::default();
    let routes = Routes::new().get(
        "/users/{id}",
        Policy::ttl(Duration::from_secs(3600))
            .key("user:{id}")
            .tags(["users"]), // 1 hour
    );
    let single_flight = !std::env::args().any(|a| a == "--no-single-flight");
    let router = Router::new()
        .route("/users/{id}", get(get_user))
        .with_state(db.clone())
        .route("/stats", get(stats).with_state((db, stash.clone())));
    // The cache in front of the router: a hit is answered before any routing, and requests
    // for other routes pass through to the router untouched. (`Router::layer` works too, at
    // the cost of the router's own work on every hit.)
    let app = ServiceBuilder::new()
        .map_response(|r: http::Response<_>| r.map(axum::body::Body::new))
        .layer(CacheLayer::new(stash.clone(), routes))
        // Inside the cache: it coalesces the cache's misses, by the cache's key.
        .option_layer(single_flight.then(|| {
            ServiceBuilder::new()
                .map_response(|r: http::Response<_>| r.map(axum::body::Body::new))
                .layer(SingleFlightLayer::new(stash.clone()))
        }))
        .service(router);

    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!(
        "tower-stash quickstart listening on http://{addr} ({})",
        if std::env::var("REDIS_URL").is_ok() {
            "Redis"
        } else {
            "in memory"
        }
    );
    println!();
    println!(
        "  curl -i http://{addr}/users/1     # first call: ~200 ms, Cache-Status: fwd=miss; stored"
    );
    println!("  curl -i http://{addr}/users/1     # again: from memory, Cache-Status: hit");
    println!("  curl -s -o /dev/null -w '%{{time_total}}s\\n' http://{addr}/users/2   # time it");
    println!("  curl -s http://{addr}/stats       # database queries, hits, misses");
    println!();
    println!("Ctrl-C to stop.");
    axum::serve(
        listener,
        axum::ServiceExt::<axum::extract::Request>::into_make_service(app),
    )
    .with_graceful_shutdown(async {
        let _ = tokio::signal::ctrl_c().await;
    })
    .await?;
    Ok(())
}
