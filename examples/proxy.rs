//! A caching reverse proxy built from the layers and a hyper-util client: HTTP mode (RFC 9111
//! decides what is stored and for how long), the Host keyed, everything else forwarded
//! untouched (methods, headers other than hop-by-hop ones, bodies streaming both ways).
//!
//! ```text
//! cargo run --release --example proxy -- --listen 127.0.0.1:8080 --upstream http://127.0.0.1:8000 \
//!     [--redis redis://127.0.0.1:6379] [--config proxy.toml] [--allow-headers req-num,x-y]
//! ```
//!
//! With `--config`, the file's `[stash]` settings apply, and its routes, if it has any, replace
//! the default one (every path, HTTP mode, keyed by Host). Give them `http_mode = true` and
//! `key_headers = ["host"]` to keep those, or a TTL to let the policy decide. After a
//! successful unsafe request (POST, PUT, DELETE, ...), the cache drops the target URL and a
//! same-origin `Location` / `Content-Location` (HTTP mode does that: routes given a TTL
//! instead, in application mode, are not invalidated by writes). `scripts/cache-tests.sh`
//! runs the public HTTP cache test suite against it.
//!
//! Interim answers of the origin (`102 Processing`, `103 Early Hints`, ...) reach HTTP/1.1
//! clients before the final answer, and are never stored: hyper's server has no API to send
//! them, so [`serve`] writes them on the client's connection itself while hyper waits for the
//! final answer (HTTP/2 and HTTP/1.0 clients get the final answer only; `100 Continue` is
//! hyper's own business on each side).
//!
//! Poisoning is closed by construction, as a CDN's origin-request policy does: a cacheable
//! request (a GET or HEAD the cache may answer for others) reaches the origin with the
//! headers its key holds (`Host`, and those a `Vary` picks a variant by: each variant its
//! own entry), the [`FORWARDED`] allowlist (`Accept`, `Accept-Encoding`, `Accept-Language`,
//! `Accept-Charset`, `User-Agent`), the cache's own (conditions, ranges, `Cache-Control`)
//! and `Authorization` (stored only when the origin says it may be shared). Any other
//! header (`X-Forwarded-Host`, `X-Forwarded-Proto`, a header nobody listed) is removed, so
//! no answer the key does not describe can be stored. Requests the cache does not store
//! (unsafe methods, requests with a `Cookie`, `Cache-Control: no-store`) keep all of their
//! headers. `--allow-headers` adds names to the default routes' list; configuration files
//! choose per route: `allow_headers = [...]` (see `Policy::allow_headers`). Key a header
//! (`key_headers`) to forward it and keep an entry per value.

use axum::body::Body;
use http::{header, Request, Response, StatusCode, Uri};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use std::convert::Infallible;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{ready, Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tower::ServiceBuilder;
use tower_stash::config::Config;
use tower_stash::http::strip_hop_by_hop;
use tower_stash::{CacheLayer, Policy, Routes, SingleFlightLayer};

/// How long the origin may take to start answering.
const UPSTREAM_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(60);

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

/// How long the default routes keep a 404, 410 or 414 the origin gives no explicit
/// freshness: Varnish's default TTL, for the statuses it caches by default.
const NEGATIVE_TTL: std::time::Duration = std::time::Duration::from_secs(120);

/// The request headers, besides the keyed ones, that the default routes forward on a
/// cacheable request: what content negotiation needs (an origin that answers by them says so
/// with `Vary`, and each variant gets its own entry).
pub const FORWARDED: [&str; 5] = [
    "accept",
    "accept-encoding",
    "accept-language",
    "accept-charset",
    "user-agent",
];

/// The proxy's default routes: every path, in HTTP mode, keyed by Host, forwarding only the
/// [`FORWARDED`] headers besides. Client errors are stored only with explicit freshness from
/// the origin, except 404, 410 and 414, which these routes ask for: two minutes when the
/// origin says nothing.
pub fn default_routes() -> Routes {
    default_routes_forwarding(&[])
}

/// [`default_routes`], forwarding the headers `extra` too on cacheable requests (the
/// command line's `--allow-headers a,b`: the public test suite's `Req-Num`, for one).
pub fn default_routes_forwarding(extra: &[String]) -> Routes {
    let allowed: Vec<String> = FORWARDED
        .iter()
        .map(|h| h.to_string())
        .chain(extra.iter().cloned())
        .collect();
    let policy = || {
        Policy::new()
            .http_mode(true)
            .key_headers(["host"])
            .allow_headers(allowed.clone())
            .status_ttl(404, NEGATIVE_TTL)
            .status_ttl(410, NEGATIVE_TTL)
            .status_ttl(414, NEGATIVE_TTL)
    };
    Routes::new().get("/", policy()).get("/{*path}", policy())
}

/// What the proxy needs to forward.
#[derive(Clone)]
pub struct Upstream {
    client: Client<HttpConnector, Body>,
    base: Uri,
}

impl Upstream {
    pub fn new(base: Uri) -> Self {
        let client = Client::builder(TokioExecutor::new()).build_http();
        Self { client, base }
    }

    /// Sends `req` upstream; a failure to reach it is a 502.
    async fn forward(self, req: Request<Body>) -> Result<Response<Body>, Infallible> {
        let (mut parts, body) = req.into_parts();
        // The origin is spoken to in HTTP/1.1, with the host the client asked for (an HTTP/2
        // request names it in its authority, which the cache keyed on).
        if !parts.headers.contains_key(header::HOST) {
            if let Some(host) = parts
                .uri
                .authority()
                .and_then(|a| header::HeaderValue::from_str(a.as_str().rsplit('@').next()?).ok())
            {
                parts.headers.insert(header::HOST, host);
            }
        }
        parts.version = http::Version::HTTP_11;
        let path = parts
            .uri
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_owned();
        let mut uri = self.base.clone().into_parts();
        uri.path_and_query = path.parse().ok();
        // (Its hop-by-hop headers went before the cache: see `app`.)
        parts.uri = Uri::from_parts(uri).expect("the upstream URL and a path");
        let mut req = Request::from_parts(parts, body);
        // Interim answers (102, 103 Early Hints) come before the final one: on to the client
        // while its request is unanswered (see `serve`); the cache only ever sees, and
        // stores, the final one.
        let interim = req.extensions_mut().remove::<Interim>();
        hyper::ext::on_informational(&mut req, move |res| match &interim {
            Some(interim) if res.status() != StatusCode::CONTINUE => {
                interim.send(res.status(), res.headers())
            }
            _ => {
                tracing::debug!(status = %res.status(), "interim answer from the origin, not forwarded")
            }
        });
        let sent = self.client.request(req);
        let resp = match tokio::time::timeout(UPSTREAM_TIMEOUT, sent).await {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let mut resp = Response::new(Body::from(format!("upstream failed: {e}\n")));
                *resp.status_mut() = StatusCode::BAD_GATEWAY;
                return Ok(resp);
            }
            Err(_) => {
                let mut resp = Response::new(Body::from("upstream timed out\n"));
                *resp.status_mut() = StatusCode::GATEWAY_TIMEOUT;
                return Ok(resp);
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        Ok(Response::from_parts(parts, Body::new(body)))
    }
}

/// The proxy's router: the cache (and single flight) over the forwarding client. The cache
/// also drops what it holds for the target (and a same-origin `Location` or
/// `Content-Location`) of every successful unsafe request: HTTP mode does that.
pub fn app(upstream: Upstream, cache: CacheLayer) -> axum::Router {
    let stash = cache.stash().clone();
    let forward = tower::service_fn(move |req| upstream.clone().forward(req));
    axum::Router::new().fallback_service(
        ServiceBuilder::new()
            // Before the cache builds its key: a header `Connection` names never reaches the
            // origin, so it must not choose the entry either.
            .map_request(|mut req: Request<Body>| {
                strip_hop_by_hop(req.headers_mut());
                req
            })
            .layer(cache)
            .layer(SingleFlightLayer::new(stash))
            .service(forward),
    )
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:8080".into())
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let upstream: Uri = arg("--upstream")
        .unwrap_or_else(|| "http://127.0.0.1:8000".into())
        .parse()
        .map_err(|e| format!("--upstream: {e}"))?;
    if upstream.scheme_str() != Some("http") || upstream.authority().is_none() {
        return Err("--upstream: an http:// URL with a host, such as http://127.0.0.1:8000".into());
    }
    let mut config = match arg("--config") {
        Some(path) => Config::load(&path)?,
        None => Config::default(),
    };
    if let Some(url) = arg("--redis") {
        let mut redis = config.stash.redis.take().unwrap_or_default();
        redis.url = Some(url);
        redis.cluster = None;
        config.stash.redis = Some(redis);
    }
    let extra: Vec<String> = arg("--allow-headers")
        .map(|list| list.split(',').map(|h| h.trim().to_owned()).collect())
        .unwrap_or_default();
    let routes = if config.routes.is_empty() {
        default_routes_forwarding(&extra)
    } else {
        config.routes()?
    };
    let stash = config.stash()?.build()?;
    let cache = CacheLayer::try_new(stash.clone(), routes)?;
    let router = app(Upstream::new(upstream.clone()), cache);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    println!(
        "caching proxy on http://{} for {upstream}",
        listener.local_addr()?
    );
    serve(listener, router).await;
    Ok(())
}

/// Serves `app` on `listener` (HTTP/1.1 and HTTP/2 over cleartext), letting the origin's
/// interim answers through to HTTP/1.1 clients.
///
/// hyper writes a response only once the service has answered, so while a request is
/// unanswered its connection is idle on the write side: [`Interim`] (in the request's
/// extensions) puts an interim answer there, whole, ahead of anything hyper writes next. Once
/// the request is answered it writes nothing more (a background refresh carries the client's
/// request, and its origin's interim answers go nowhere).
pub async fn serve(listener: tokio::net::TcpListener, app: axum::Router) {
    use hyper_util::server::conn::auto;
    use tower::ServiceExt;
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, mostly: let some connections close.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let conn = Conn::new(stream);
        let shared = conn.shared.clone();
        let app = app.clone();
        let service = hyper::service::service_fn(move |mut req: Request<hyper::body::Incoming>| {
            let interim = (req.version() == http::Version::HTTP_11).then(|| Interim::open(&shared));
            if let Some(interim) = &interim {
                req.extensions_mut().insert(interim.clone());
            }
            let answered = app.clone().oneshot(req.map(Body::new));
            async move {
                let resp = answered.await;
                if let Some(interim) = interim {
                    interim.close();
                }
                resp
            }
        });
        tokio::spawn(async move {
            let io = hyper_util::rt::TokioIo::new(conn);
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(io, service)
                .await
            {
                tracing::debug!(error = %e, "connection ended");
            }
        });
    }
}

/// A client connection whose write side is shared with the [`Interim`] answers of its
/// requests.
struct Conn {
    read: OwnedReadHalf,
    shared: Arc<Mutex<Shared>>,
}

struct Shared {
    write: OwnedWriteHalf,
    /// Interim answers not yet written: always before hyper's next bytes.
    pending: bytes::BytesMut,
    /// The request whose interim answers may still go out (0: none).
    open: u64,
    next: u64,
}

impl Shared {
    /// Writes what is pending, whole.
    fn poll_pending(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        use bytes::Buf;
        while !self.pending.is_empty() {
            let n = ready!(Pin::new(&mut self.write).poll_write(cx, &self.pending))?;
            if n == 0 {
                return Poll::Ready(Err(io::ErrorKind::WriteZero.into()));
            }
            self.pending.advance(n);
        }
        Poll::Ready(Ok(()))
    }
}

impl Conn {
    fn new(stream: tokio::net::TcpStream) -> Self {
        let (read, write) = stream.into_split();
        let shared = Shared {
            write,
            pending: bytes::BytesMut::new(),
            open: 0,
            next: 0,
        };
        Self {
            read,
            shared: Arc::new(Mutex::new(shared)),
        }
    }

    fn shared(&self) -> MutexGuard<'_, Shared> {
        lock(&self.shared)
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.read).poll_read(cx, buf)
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.shared();
        ready!(shared.poll_pending(cx))?;
        Pin::new(&mut shared.write).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let mut shared = self.shared();
        ready!(shared.poll_pending(cx))?;
        Pin::new(&mut shared.write).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        true
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared();
        ready!(shared.poll_pending(cx))?;
        Pin::new(&mut shared.write).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let mut shared = self.shared();
        ready!(shared.poll_pending(cx))?;
        Pin::new(&mut shared.write).poll_shutdown(cx)
    }
}

/// The connection's shared write side, even after a panic elsewhere held it.
fn lock(shared: &Mutex<Shared>) -> MutexGuard<'_, Shared> {
    shared.lock().unwrap_or_else(|e| e.into_inner())
}

/// Sends interim answers to the client of one HTTP/1.1 request, until it is answered.
#[derive(Clone)]
pub struct Interim {
    shared: Arc<Mutex<Shared>>,
    id: u64,
}

impl Interim {
    fn open(shared: &Arc<Mutex<Shared>>) -> Self {
        let mut guard = lock(shared);
        guard.next += 1;
        guard.open = guard.next;
        Self {
            shared: shared.clone(),
            id: guard.open,
        }
    }

    fn close(&self) {
        let mut shared = lock(&self.shared);
        if shared.open == self.id {
            shared.open = 0;
        }
    }

    /// Queues `res` for the client (ahead of the final answer) and writes it out.
    fn send(&self, status: StatusCode, headers: &http::HeaderMap) {
        let mut shared = lock(&self.shared);
        if shared.open != self.id {
            return;
        }
        let head = &mut shared.pending;
        head.extend_from_slice(
            format!(
                "HTTP/1.1 {} {}\r\n",
                status.as_u16(),
                status.canonical_reason().unwrap_or("")
            )
            .as_bytes(),
        );
        for (name, value) in headers {
            head.extend_from_slice(name.as_str().as_bytes());
            head.extend_from_slice(b": ");
            head.extend_from_slice(value.as_bytes());
            head.extend_from_slice(b"\r\n");
        }
        head.extend_from_slice(b"\r\n");
        drop(shared);
        // Out now, not only when hyper next writes: the client may start on the hints.
        let shared = self.shared.clone();
        // (One waker waits on a socket's write side: should hyper write meanwhile and take
        // it, hyper writes these first, and this task ends at its deadline.)
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            let out = std::future::poll_fn(move |cx| {
                let mut shared = lock(&shared);
                shared.poll_pending(cx)
            });
            rt.spawn(tokio::time::timeout(UPSTREAM_TIMEOUT, out));
        }
    }
}
