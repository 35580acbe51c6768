//! Test support: servers on free loopback ports, a plain HTTP/1.1 client, what a client got
//! and a call counter.
#![allow(dead_code)] // each test file uses a part

pub mod cluster;
pub mod redis;
#[cfg(feature = "sentinel")]
pub mod sentinel;
#[cfg(feature = "tls")]
pub mod tls;

use axum::response::IntoResponse;
use axum::routing::MethodRouter;
use bytes::Bytes;
use http::{HeaderMap, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use std::fmt::Debug;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::Semaphore;
use tower::{Service, ServiceExt};

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

/// Sends one request on a new connection and returns the response once its head arrives,
/// its body still streaming.
pub async fn fetch_streaming<B>(addr: SocketAddr, req: Request<B>) -> Response<Incoming>
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
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

/// Sends one request on a new connection and reads the whole response.
pub async fn fetch<B>(addr: SocketAddr, req: Request<B>) -> Got
where
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let resp = fetch_streaming(addr, req).await;
    within("the body", Got::read(resp)).await
}

/// A GET to `path` on `addr`, with `Host` set.
pub fn get(addr: SocketAddr, path: &str) -> Request<Empty<Bytes>> {
    Request::get(path)
        .header("host", addr.to_string())
        .body(Empty::new())
        .unwrap()
}

/// Sends `req` through `svc` once, in process, and reads the whole response.
pub async fn send<S, R, B>(svc: S, req: R) -> Got
where
    S: Service<R, Response = Response<B>>,
    S::Error: Debug,
    B: http_body::Body<Data = Bytes>,
    B::Error: Debug,
{
    Got::read(svc.oneshot(req).await.unwrap()).await
}

/// What a client got: a response read to its end.
pub struct Got {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: Bytes,
}

impl Got {
    /// Reads `resp` to the end of its body.
    pub async fn read<B>(resp: Response<B>) -> Self
    where
        B: http_body::Body<Data = Bytes>,
        B::Error: Debug,
    {
        let (parts, body) = resp.into_parts();
        Self {
            status: parts.status,
            headers: parts.headers,
            body: body.collect().await.unwrap().to_bytes(),
        }
    }

    /// The body as UTF-8 text.
    pub fn text(&self) -> &str {
        std::str::from_utf8(&self.body).unwrap()
    }

    /// The `Cache-Status` header, or "" where there is none.
    pub fn cache_status(&self) -> &str {
        self.headers
            .get("cache-status")
            .map_or("", |v| v.to_str().unwrap())
    }

    /// Whether it was served from the cache: `Cache-Status` says `hit`.
    pub fn is_hit(&self) -> bool {
        self.cache_status().contains("; hit")
    }
}

/// Counts calls, and holds each one at a gate while the gate is closed.
#[derive(Clone)]
pub struct Counter {
    calls: Arc<AtomicUsize>,
    closed: Arc<AtomicBool>,
    permits: Arc<Semaphore>,
}

impl Default for Counter {
    /// A counter whose gate is open.
    fn default() -> Self {
        Self {
            calls: Arc::default(),
            closed: Arc::default(),
            permits: Arc::new(Semaphore::new(0)),
        }
    }
}

impl Counter {
    /// A counter whose gate is closed until [`open`](Self::open).
    pub fn closed() -> Self {
        let counter = Self::default();
        counter.close();
        counter
    }

    /// Closes the gate: the calls from now on wait for [`open`](Self::open).
    pub fn close(&self) {
        self.closed.store(true, Ordering::SeqCst);
    }

    /// Lets the calls waiting at the gate, and all later ones, through.
    pub fn open(&self) {
        self.permits.add_permits(Semaphore::MAX_PERMITS / 2);
    }

    /// Counts a call, waits while the gate is closed, and returns the call's number (from 1).
    pub async fn enter(&self) -> usize {
        let n = self.calls.fetch_add(1, Ordering::SeqCst) + 1;
        if self.closed.load(Ordering::SeqCst) {
            self.permits.acquire().await.unwrap().forget();
        }
        n
    }

    /// How many calls were counted.
    pub fn calls(&self) -> usize {
        self.calls.load(Ordering::SeqCst)
    }

    /// Forgets the calls counted so far.
    pub fn reset(&self) {
        self.calls.store(0, Ordering::SeqCst);
    }

    /// An axum GET handler that enters this counter, then answers `answer(call number)`.
    pub fn get<R>(
        &self,
        answer: impl Fn(usize) -> R + Clone + Send + Sync + 'static,
    ) -> MethodRouter
    where
        R: IntoResponse + 'static,
    {
        let counter = self.clone();
        axum::routing::get(move || {
            let (counter, answer) = (counter.clone(), answer.clone());
            async move { answer(counter.enter().await) }
        })
    }
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
