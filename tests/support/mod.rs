//! Test support: servers on free loopback ports and a plain HTTP/1.1 client.
#![allow(dead_code)] // each test file uses a part

pub mod cluster;
pub mod redis;

use bytes::Bytes;
use http::{Request, Response};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

/// Waits for `fut`, failing the test after 10 seconds.
pub async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(10), fut)
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
}

/// Serves `app` on a free port of 127.0.0.1 until the test's runtime ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    addr
}

/// Sends one request on a new connection and returns the response with its streaming body.
pub async fn send(addr: SocketAddr, req: Request<Empty<Bytes>>) -> Response<Incoming> {
    let stream = within("connect", tokio::net::TcpStream::connect(addr))
        .await
        .unwrap();
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(conn);
    within("the response head", sender.send_request(req))
        .await
        .unwrap()
}

/// A GET to `path` on `addr`, with `Host` set.
pub fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap()
}

/// Sends and reads the whole body.
pub async fn fetch(addr: SocketAddr, req: Request<Empty<Bytes>>) -> (http::response::Parts, Bytes) {
    let (parts, body) = send(addr, req).await.into_parts();
    let bytes = within("the body", body.collect()).await.unwrap().to_bytes();
    (parts, bytes)
}

/// Waits until `stash` has stored `n` responses (entries are written when a body ends).
pub async fn stored(stash: &tower_stash::Stash, n: u64) {
    within("the store", async {
        while stash.stats().stores < n {
            tokio::task::yield_now().await;
        }
    })
    .await;
}
