//! The quickstart's user route without a cache: the same bytes, rendered ahead and served from
//! memory. It exists to measure the cache against (`scripts/load.sh` runs both under wrk).
//!
//! ```sh
//! cargo run --release --example baseline -- --listen 127.0.0.1:3001
//! ```

use axum::{extract::Path, extract::State, response::IntoResponse, routing::get, Router};
use bytes::Bytes;
use std::net::SocketAddr;
use std::sync::Arc;

fn user_json(id: u64) -> String {
    format!(r#"{{"id":{id},"name":"User {id}","email":"user{id}@example.com"}}"#)
}

async fn get_user(
    State(users): State<Arc<Vec<Bytes>>>,
    Path(id): Path<usize>,
) -> impl IntoResponse {
    let body = users.get(id).cloned().unwrap_or_default();
    ([("content-type", "application/json")], body)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = match std::env::args().skip_while(|a| a != "--listen").nth(1) {
        Some(addr) => addr.parse().map_err(|e| format!("--listen {addr}: {e}"))?,
        None => "127.0.0.1:3001".parse()?,
    };
    let users: Vec<Bytes> = (0..1000).map(|id| user_json(id).into()).collect();
    let app = Router::new()
        .route("/users/{id}", get(get_user))
        .with_state(Arc::new(users));
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!("baseline listening on http://{}", listener.local_addr()?);
    axum::serve(listener, app).await?;
    Ok(())
}
