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
//! Interim (1xx) answers of the origin are read and dropped: hyper's server has no way to send
//! them on, so clients get the final answer only (which is what is stored; a 1xx never is).
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
use std::net::SocketAddr;
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
        // Interim answers (100, 102, 103 Early Hints) come before the final one. hyper's
        // server cannot send 1xx answers to our client (hyper 1 has no API for it), so they
        // end here, said in the log; the cache only ever sees, and stores, the final one.
        hyper::ext::on_informational(&mut req, |res| {
            tracing::debug!(status = %res.status(), "interim answer from the origin, not forwarded");
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
    axum::serve(listener, router).await?;
    Ok(())
}
