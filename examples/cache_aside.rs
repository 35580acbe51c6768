//! The cache-aside pattern written by hand, as most services do it: bb8-redis GET; on a
//! miss query the database and SETEX. It exists to measure tower-stash against
//! (`scripts/load-redis.sh`).
//!
//! ```sh
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --release --features redis --example cache_aside -- --listen 127.0.0.1:3002
//! ```

use axum::extract::{Path, State};
use axum::response::{IntoResponse, Response};
use axum::{http::StatusCode, routing::get, Router};
use bb8_redis::redis::AsyncCommands;
use bb8_redis::{bb8, RedisConnectionManager};
use std::net::SocketAddr;
use std::time::Duration;

type Pool = bb8::Pool<RedisConnectionManager>;

fn user_json(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"User {id}","email":"user{id}@example.com"}}"#)
}

async fn get_user(State(pool): State<Pool>, Path(id): Path<u64>) -> Response {
    let key = format!("cache_aside:user:{id}");
    let mut conn = match pool.get().await {
        Ok(conn) => conn,
        Err(e) => return (StatusCode::SERVICE_UNAVAILABLE, e.to_string()).into_response(),
    };
    let cached: Option<Vec<u8>> = conn.get(&key).await.unwrap_or(None);
    let body = match cached {
        Some(body) => body,
        None => {
            tokio::time::sleep(Duration::from_millis(200)).await; // the database
            let body = user_json(id).into_bytes();
            let _: Result<(), _> = conn.set_ex(&key, &body, 3600).await;
            body
        }
    };
    ([("content-type", "application/json")], body).into_response()
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?,
        None => "127.0.0.1:3002".parse()?,
    };
    let url = std::env::var("REDIS_URL").unwrap_or_else(|_| "redis://127.0.0.1:6379".into());
    let pool = bb8::Pool::builder()
        .max_size(16)
        .build(RedisConnectionManager::new(url)?)
        .await?;
    let app = Router::new()
        .route("/users/{id}", get(get_user))
        .with_state(pool);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("cache-aside listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
