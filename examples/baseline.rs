//! The quickstart's user route without a cache: the same bytes, rendered ahead and served from
//! memory. It exists to measure the cache against (`scripts/load.sh` runs both under wrk).
//!
//! ```sh
//! cargo run --release --example baseline -- --listen 127.0.0.1:3001
//! cargo run --release --example baseline -- --listen 127.0.0.1:3001 --cache-headers
//! ```
//!
//! It is served as the quickstart is (the same `axum::serve` with a graceful shutdown on
//! Ctrl-C, a `/stats` route beside it), so that the servers differ by the cache alone.
//!
//! With `--cache-headers`, responses also carry the headers a cache hit adds (`etag`, `age`,
//! `cache-status`), so that only the cache's own work differs between the two servers. With
//! `--max-age N`, they say `cache-control: max-age=N`: an origin for the proxy in HTTP mode
//! (`scripts/load.sh` puts `examples/proxy.rs` in front of one).

use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::{extract::Path, extract::State, routing::get, Router};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

fn user_json(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"User {id}","email":"user{id}@example.com"}}"#)
}

#[derive(Clone)]
struct Users {
    bodies: Arc<Vec<Bytes>>,
    cache_headers: bool,
    max_age: Option<HeaderValue>,
}

async fn get_user(State(users): State<Users>, Path(id): Path<usize>) -> Response {
    let body = users.bodies.get(id).cloned().unwrap_or_default();
    let mut resp = ([("content-type", "application/json")], body).into_response();
    if let Some(max_age) = &users.max_age {
        resp.headers_mut().insert("cache-control", max_age.clone());
    }
    if users.cache_headers {
        let h = resp.headers_mut();
        h.insert(
            "etag",
            HeaderValue::from_static("\"061501b38f4e562eb57a7fbba6b1775d\""),
        );
        h.insert("age", HeaderValue::from(0u64));
        h.insert("cache-status", HeaderValue::from_static("tower-stash; hit"));
    }
    resp
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?,
        None => "127.0.0.1:3001".parse()?,
    };
    let users = Users {
        bodies: Arc::new((0..1000).map(|id| user_json(id).into()).collect()),
        cache_headers: std::env::args().any(|a| a == "--cache-headers"),
        max_age: match std::env::args().skip_while(|a| a != "--max-age").nth(1) {
            Some(secs) => {
                let secs: u64 = secs.parse().map_err(|e| format!("--max-age {secs}: {e}"))?;
                Some(HeaderValue::from_str(&format!("max-age={secs}"))?)
            }
            None => None,
        },
    };
    let app = Router::new()
        .route("/users/{id}", get(get_user))
        .with_state(users)
        .route("/stats", get(|| async { "{}" }));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app)
        .with_graceful_shutdown(async {
            let _ = tokio::signal::ctrl_c().await;
        })
        .await?;
    Ok(())
}
