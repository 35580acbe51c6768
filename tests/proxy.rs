//! The caching reverse proxy of `examples/proxy.rs` in front of a counting origin, both on
//! loopback ports: HTTP mode, Host keyed, unsafe methods invalidating, hop-by-hop headers.

#[path = "../examples/proxy.rs"]
#[allow(dead_code)]
mod proxy;
mod support;

use axum::extract::Request;
use axum::response::IntoResponse;
use bytes::Bytes;
use http::StatusCode;
use http_body_util::{BodyExt, Full};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use support::{fetch, serve, within, Counter};
use tower_stash::{CacheLayer, Stash};

/// An origin that counts its requests and answers with what it saw: GETs cacheable for a
/// minute, in the language asked for, but `/missing` (a 404) and `/bad` (a 400), which say
/// nothing of their freshness. POSTs: `/cl` answers with `Content-Location: /after`,
/// `/cross` with a `Location` on another origin, `/fail` with a 500, the others with
/// `Location: /after`.
async fn origin(calls: Counter) -> SocketAddr {
    let app = axum::Router::new().fallback(move |req: Request| {
        let calls = calls.clone();
        async move {
            let n = calls.enter().await;
            let lang = req
                .headers()
                .get("accept-language")
                .map_or("default", |v| v.to_str().unwrap())
                .to_owned();
            let host = req
                .headers()
                .get("host")
                .unwrap()
                .to_str()
                .unwrap()
                .to_owned();
            let body = format!("{} {} for {host} in {lang} #{n}", req.method(), req.uri());
            if req.method() == http::Method::POST {
                return match req.uri().path() {
                    "/cl" => ([("content-location", "/after")], body).into_response(),
                    "/cross" => ([("location", "http://other.example/q")], body).into_response(),
                    "/fail" => (StatusCode::INTERNAL_SERVER_ERROR, body).into_response(),
                    _ => ([("location", "/after")], body).into_response(),
                };
            }
            match req.uri().path() {
                // Errors with nothing said of their freshness.
                "/missing" => (StatusCode::NOT_FOUND, body).into_response(),
                "/bad" => (StatusCode::BAD_REQUEST, body).into_response(),
                _ => (
                    [("cache-control", "max-age=60"), ("vary", "Accept-Language")],
                    body,
                )
                    .into_response(),
            }
        }
    });
    serve(app).await
}

struct Setup {
    proxy: SocketAddr,
    origin: Counter,
}

async fn setup() -> Setup {
    let calls = Counter::default();
    let origin = origin(calls.clone()).await;
    let stash = Stash::builder().build().unwrap();
    let cache = CacheLayer::new(stash.clone(), proxy::default_routes());
    let upstream = format!("http://{origin}").parse().unwrap();
    let app = proxy::app(proxy::Upstream::new(upstream), cache);
    Setup {
        proxy: serve(app).await,
        origin: calls,
    }
}

/// Sends `method path` with `headers` (and `Host: shop.example` unless they name one) to
/// `addr`: the status and body.
async fn request(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
) -> (StatusCode, String) {
    let mut req = http::Request::builder().method(method).uri(path);
    if !headers.iter().any(|(n, _)| *n == "host") {
        req = req.header("host", "shop.example");
    }
    for (n, v) in headers {
        req = req.header(*n, *v);
    }
    let got = fetch(addr, req.body(Full::new(Bytes::new())).unwrap()).await;
    (got.status, got.text().to_owned())
}

#[tokio::test]
async fn gets_are_cached_per_host_and_variant() {
    let s = setup().await;
    let (status, first) = request(s.proxy, "GET", "/p", &[]).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(request(s.proxy, "GET", "/p", &[]).await.1, first);
    assert_eq!(s.origin.calls(), 1);
    // Another Host, another entry.
    let (_, other) = request(s.proxy, "GET", "/p", &[("host", "evil.example")]).await;
    assert!(other.contains("evil.example"));
    assert_eq!(request(s.proxy, "GET", "/p", &[]).await.1, first);
    // Another language (the origin varies on it), another entry.
    let (_, fr) = request(s.proxy, "GET", "/p", &[("accept-language", "fr")]).await;
    assert!(fr.contains("in fr"));
    assert_eq!(
        request(s.proxy, "GET", "/p", &[("accept-language", "fr")])
            .await
            .1,
        fr
    );
    assert_eq!(s.origin.calls(), 3);
}

#[tokio::test]
async fn a_successful_post_invalidates_the_target_and_its_location() {
    let s = setup().await;
    request(s.proxy, "GET", "/p", &[]).await;
    request(s.proxy, "GET", "/after", &[]).await;
    assert_eq!(s.origin.calls(), 2);
    let (status, _) = request(s.proxy, "POST", "/p", &[]).await;
    assert_eq!(status, StatusCode::OK);
    let (_, again) = request(s.proxy, "GET", "/p", &[]).await;
    assert!(again.ends_with("#4"), "{again}");
    let (_, after) = request(s.proxy, "GET", "/after", &[]).await;
    assert!(after.ends_with("#5"), "the Location went too: {after}");
}

#[tokio::test]
async fn a_header_named_by_connection_cannot_choose_the_entry() {
    let s = setup().await;
    // `Connection` drops Accept-Language on its way to the origin, which then answers in
    // its default language: that answer must not become the French entry.
    let (_, poisoned) = request(
        s.proxy,
        "GET",
        "/p",
        &[("accept-language", "fr"), ("connection", "accept-language")],
    )
    .await;
    assert!(poisoned.contains("in default"), "{poisoned}");
    let (_, fr) = request(s.proxy, "GET", "/p", &[("accept-language", "fr")]).await;
    assert!(fr.contains("in fr"), "{fr}");
}

#[tokio::test]
async fn content_location_is_invalidated_but_not_another_origin_nor_after_a_failure() {
    let s = setup().await;
    let count = || s.origin.calls();
    request(s.proxy, "GET", "/after", &[]).await;
    request(s.proxy, "GET", "/q", &[("host", "other.example")]).await;
    request(s.proxy, "GET", "/fail", &[]).await;
    assert_eq!(count(), 3);
    // A failed write changes nothing: its target stays cached.
    let (status, _) = request(s.proxy, "POST", "/fail", &[]).await;
    assert_eq!(status, StatusCode::INTERNAL_SERVER_ERROR);
    request(s.proxy, "GET", "/fail", &[]).await;
    assert_eq!(count(), 4, "only the POST reached the origin");
    // A Location on another origin drops nothing there.
    request(s.proxy, "POST", "/cross", &[]).await;
    let (_, q) = request(s.proxy, "GET", "/q", &[("host", "other.example")]).await;
    assert!(q.ends_with("#2"), "still the cached answer: {q}");
    assert_eq!(count(), 5);
    // A same-origin Content-Location is dropped.
    request(s.proxy, "POST", "/cl", &[]).await;
    let (_, after) = request(s.proxy, "GET", "/after", &[]).await;
    assert!(after.ends_with("#7"), "fetched again: {after}");
    // PUT and DELETE invalidate their target too.
    for method in ["PUT", "DELETE"] {
        request(s.proxy, "GET", "/after", &[]).await;
        let before = count();
        request(s.proxy, method, "/after", &[]).await;
        request(s.proxy, "GET", "/after", &[]).await;
        assert_eq!(count(), before + 2, "{method}");
    }
}

#[tokio::test]
async fn a_404_is_kept_two_minutes_by_the_default_routes_and_a_400_never() {
    let s = setup().await;
    for _ in 0..2 {
        assert_eq!(
            request(s.proxy, "GET", "/missing", &[]).await.0,
            StatusCode::NOT_FOUND
        );
    }
    assert_eq!(s.origin.calls(), 1);
    for _ in 0..2 {
        assert_eq!(
            request(s.proxy, "GET", "/bad", &[]).await.0,
            StatusCode::BAD_REQUEST
        );
    }
    assert_eq!(s.origin.calls(), 3);
}

#[tokio::test]
async fn a_write_on_one_host_never_drops_another_hosts_entry() {
    let s = setup().await;
    request(s.proxy, "GET", "/p", &[("host", "other.example")]).await;
    request(s.proxy, "GET", "/p", &[]).await;
    assert_eq!(s.origin.calls(), 2);
    // A POST to shop.example's /p (the default Host) drops that entry only.
    request(s.proxy, "POST", "/p", &[]).await;
    let (_, other) = request(s.proxy, "GET", "/p", &[("host", "other.example")]).await;
    assert!(
        other.ends_with("#1"),
        "other.example's entry stays: {other}"
    );
    let (_, shop) = request(s.proxy, "GET", "/p", &[]).await;
    assert!(shop.ends_with("#4"), "shop.example's entry went: {shop}");
}

#[tokio::test]
async fn http2_requests_reach_the_origin_with_their_authority_and_are_cached_per_host() {
    let s = setup().await;
    let get = |authority: &'static str| async move {
        let stream = tokio::net::TcpStream::connect(s.proxy).await.unwrap();
        let (mut sender, conn) = hyper::client::conn::http2::handshake(
            hyper_util::rt::TokioExecutor::new(),
            hyper_util::rt::TokioIo::new(stream),
        )
        .await
        .unwrap();
        tokio::spawn(conn);
        let req = http::Request::get(format!("http://{authority}/h2"))
            .body(Full::new(Bytes::new()))
            .unwrap();
        let resp = sender.send_request(req).await.unwrap();
        let status = resp.status();
        let body = resp.into_body().collect().await.unwrap().to_bytes();
        (status, String::from_utf8(body.to_vec()).unwrap())
    };
    let exchange = async {
        let (status, first) = get("shop.example").await;
        assert_eq!(status, StatusCode::OK, "{first}");
        assert!(
            first.contains("for shop.example"),
            "the origin saw the authority: {first}"
        );
        assert_eq!(get("shop.example").await.1, first, "cached");
        let (_, other) = get("other.example").await;
        assert!(other.contains("for other.example"), "{other}");
        // The same entry as an HTTP/1.1 request with that Host.
        assert_eq!(request(s.proxy, "GET", "/h2", &[]).await.1, first);
    };
    tokio::time::timeout(Duration::from_secs(10), exchange)
        .await
        .expect("answers within 10 s");
    assert_eq!(s.origin.calls(), 2);
}

/// The headers of a request that rewrite what many apps answer, and one nobody lists.
const POISONING: [&str; 14] = [
    "x-forwarded-host",
    "x-forwarded-scheme",
    "x-forwarded-proto",
    "x-forwarded-port",
    "x-forwarded-prefix",
    "x-host",
    "x-original-host",
    "x-original-url",
    "x-rewrite-url",
    "x-http-method",
    "x-http-method-override",
    "x-method-override",
    "forwarded",
    // Invented for this test: no list names it.
    "x-tenant-override-7f3a",
];

/// An origin that builds its answer (cacheable for a minute, no `Vary`) from every header
/// it gets, as an app that trusts its proxy might; the names it saw are kept.
async fn reflecting_origin(calls: Counter, seen: Arc<Mutex<Vec<Vec<String>>>>) -> SocketAddr {
    let app = axum::Router::new().fallback(move |req: Request| {
        let (calls, seen) = (calls.clone(), seen.clone());
        async move {
            let n = calls.enter().await;
            let mut names: Vec<String> = req.headers().keys().map(|k| k.to_string()).collect();
            names.sort();
            let reflected: Vec<String> = req
                .headers()
                .iter()
                .filter(|(k, _)| *k != "host")
                .map(|(k, v)| format!("{k}={}", v.to_str().unwrap()))
                .collect();
            seen.lock().unwrap().push(names);
            let body = format!("{} #{n} {}", req.uri(), reflected.join(" "));
            ([("cache-control", "max-age=60")], body).into_response()
        }
    });
    serve(app).await
}

async fn reflecting_setup() -> (SocketAddr, Counter, Arc<Mutex<Vec<Vec<String>>>>) {
    let (calls, seen) = (Counter::default(), Arc::default());
    let origin = reflecting_origin(calls.clone(), Arc::clone(&seen)).await;
    let stash = Stash::builder().build().unwrap();
    let cache = CacheLayer::new(stash, proxy::default_routes());
    let upstream = format!("http://{origin}").parse().unwrap();
    let proxy = serve(proxy::app(proxy::Upstream::new(upstream), cache)).await;
    (proxy, calls, seen)
}

#[tokio::test]
async fn no_unkeyed_header_poisons_the_proxy_not_even_one_nobody_listed() {
    let (proxy, calls, _) = reflecting_setup().await;
    for (i, name) in POISONING.iter().enumerate() {
        let path = format!("/page{i}");
        let (_, poisoned) = request(proxy, "GET", &path, &[(name, "evil.example")]).await;
        for _ in 0..2 {
            let (status, clean) = request(proxy, "GET", &path, &[]).await;
            assert_eq!(status, StatusCode::OK);
            assert!(
                !clean.contains("evil"),
                "{name}: {clean} (after {poisoned})"
            );
        }
    }
    assert!(calls.calls() <= 2 * POISONING.len());
}

#[tokio::test]
async fn a_cacheable_request_reaches_the_origin_with_keyed_and_allowed_headers_only() {
    let (proxy, _, seen) = reflecting_setup().await;
    let headers = [
        ("accept", "text/html"),
        ("accept-language", "fr"),
        ("user-agent", "test"),
        ("referer", "http://elsewhere.example/"),
        ("x-tenant-override-7f3a", "1"),
    ];
    request(proxy, "GET", "/cacheable", &headers).await;
    let last = || seen.lock().unwrap().last().unwrap().clone();
    assert_eq!(
        last(),
        ["accept", "accept-language", "host", "user-agent"],
        "the origin saw"
    );
    // Requests the cache passes through keep their headers: a POST, a GET with a cookie.
    request(proxy, "POST", "/cacheable", &headers).await;
    assert!(last().contains(&"x-tenant-override-7f3a".to_string()));
    let with_cookie = [headers[4], ("cookie", "sid=1")];
    request(proxy, "GET", "/cacheable", &with_cookie).await;
    assert!(last().contains(&"x-tenant-override-7f3a".to_string()));
}

/// An origin on a raw socket: to each request, `103 Early Hints` first, then a final answer
/// cacheable for a minute, counting its requests.
async fn early_hints_origin(calls: Counter) -> SocketAddr {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        loop {
            let (mut socket, _) = listener.accept().await.unwrap();
            let calls = calls.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut read = 0;
                while !buf[..read].windows(4).any(|w| w == b"\r\n\r\n") {
                    let n = socket.read(&mut buf[read..]).await.unwrap();
                    if n == 0 {
                        return;
                    }
                    read += n;
                }
                let n = calls.enter().await;
                let body = format!("final #{n}");
                let answer = format!(
                    "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\n\
                     HTTP/1.1 200 OK\r\ncache-control: max-age=60\r\ncontent-length: {}\r\n\
                     connection: close\r\n\r\n{body}",
                    body.len()
                );
                socket.write_all(answer.as_bytes()).await.unwrap();
            });
        }
    });
    addr
}

/// Sends `GET path` in `version` on a new connection (closed after the answer) and reads
/// everything the proxy writes.
async fn raw_get(proxy: SocketAddr, path: &str, version: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut socket = within("connect", tokio::net::TcpStream::connect(proxy))
        .await
        .unwrap();
    let head = format!("GET {path} {version}\r\nhost: shop.example\r\nconnection: close\r\n\r\n");
    socket.write_all(head.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    within("the answer", socket.read_to_end(&mut out))
        .await
        .unwrap();
    String::from_utf8(out).unwrap()
}

#[tokio::test]
async fn an_interim_answer_reaches_the_client_and_is_never_stored() {
    let calls = Counter::default();
    let origin = early_hints_origin(calls.clone()).await;
    let cache = CacheLayer::new(Stash::new(), proxy::default_routes());
    let upstream = format!("http://{origin}").parse().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let proxy = listener.local_addr().unwrap();
    let app = proxy::app(proxy::Upstream::new(upstream), cache);
    tokio::spawn(proxy::serve(listener, app));

    // The miss: the hint first, whole, then the final answer.
    let first = raw_get(proxy, "/hinted", "HTTP/1.1").await;
    assert!(
        first.starts_with(
            "HTTP/1.1 103 Early Hints\r\nlink: </s.css>; rel=preload\r\n\r\nHTTP/1.1 200 OK\r\n"
        ),
        "{first}"
    );
    assert!(first.ends_with("final #1"), "{first}");
    // The hit: the final answer only (the 103 was not stored).
    let second = raw_get(proxy, "/hinted", "HTTP/1.1").await;
    assert!(second.starts_with("HTTP/1.1 200 OK\r\n"), "{second}");
    assert!(second.ends_with("final #1"), "{second}");
    // Through the library's own client too.
    let (status, body) = request(proxy, "GET", "/hinted", &[]).await;
    assert_eq!((status, body.as_str()), (StatusCode::OK, "final #1"));
    assert_eq!(calls.calls(), 1);

    // An HTTP/1.0 client never gets a 1xx (RFC 9110 section 15.2).
    let old = raw_get(proxy, "/other", "HTTP/1.0").await;
    assert!(
        old.starts_with("HTTP/1.") && old.contains(" 200 OK\r\n"),
        "{old}"
    );
    assert!(!old.contains(" 103 "), "{old}");
    assert_eq!(calls.calls(), 2);
}
