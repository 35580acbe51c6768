//! HTTP mode through the layer, with a counting upstream: each rule checked on what the client
//! got and how often the origin was asked.

use super::{byte_range, freshen, freshness, RequestDirectives};
use crate::test_util::{full, send, Got, TestBody, Upstream};
use crate::{CacheLayer, ManualClock, Policy, Routes, Stash};
use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tower::{Service, ServiceExt};

/// An answer of `status`, `headers` and `body`, whatever the request.
fn reply(
    status: u16,
    headers: &[(&'static str, &str)],
    body: &'static str,
) -> impl Fn(&Request<Bytes>, usize) -> Response<TestBody> + Send + Sync + 'static {
    let status = StatusCode::from_u16(status).unwrap();
    let headers: Vec<_> = headers.iter().map(|(n, v)| (*n, v.to_string())).collect();
    move |_, _| {
        let mut resp = Response::new(full(Bytes::from_static(body.as_bytes())));
        *resp.status_mut() = status;
        for (n, v) in &headers {
            resp.headers_mut()
                .append(*n, HeaderValue::from_str(v).unwrap());
        }
        resp
    }
}

/// An origin that answers with [`reply`] until the test sets another answer, counts its calls
/// and records the requests.
fn origin(status: u16, headers: &[(&'static str, &str)], body: &'static str) -> Upstream {
    Upstream::new(reply(status, headers, body))
}

/// The headers of the last request `origin` got.
fn last_request(origin: &Upstream) -> HeaderMap {
    origin.requests().last().unwrap().headers().clone()
}

struct Cache {
    layer: CacheLayer,
    origin: Upstream,
    clock: ManualClock,
}

fn cache(policy: Policy, origin: Upstream) -> Cache {
    cache_with(Routes::new().get("/{*path}", policy), origin)
}

fn cache_with(routes: Routes, origin: Upstream) -> Cache {
    // The origin's Date headers come from the real clock: the cache's starts there too.
    let clock = ManualClock::new(SystemTime::now());
    let stash = Stash::builder().clock(clock.clone()).build().unwrap();
    Cache {
        layer: CacheLayer::new(stash, routes),
        origin,
        clock,
    }
}

/// An origin whose answers vary on `Accept-Language`, fresh for 100 s.
fn varying() -> Upstream {
    origin(
        200,
        &[
            ("cache-control", "max-age=100"),
            ("vary", "Accept-Language"),
        ],
        "x",
    )
}

/// An origin answering bytes 4 to 8 of "0123456789", fresh for 100 s.
fn partial() -> Upstream {
    origin(
        206,
        &[
            ("cache-control", "max-age=100"),
            ("content-range", "bytes 4-8/10"),
        ],
        "45678",
    )
}

fn http() -> Policy {
    Policy::new().http_mode(true).key_headers(["host"])
}

impl Cache {
    async fn send(&self, req: Request<Empty<Bytes>>) -> Got {
        let svc = tower::ServiceBuilder::new()
            .layer(self.layer.clone())
            .service(self.origin.clone());
        send(svc, req).await
    }
    async fn get(&self, headers: &[(&str, &str)]) -> Got {
        let mut req = Request::get("/r").header("host", "a.example");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        self.send(req.body(Empty::new()).unwrap()).await
    }
}

fn now_date() -> String {
    httpdate::fmt_http_date(SystemTime::now())
}

#[tokio::test]
async fn freshness_comes_from_the_origin() {
    // max-age, and s-maxage over it.
    for (cc, fresh_for) in [("max-age=60", 60), ("max-age=5, s-maxage=60", 60)] {
        let c = cache(http(), origin(200, &[("cache-control", cc)], "x"));
        c.get(&[]).await;
        c.clock.advance(Duration::from_secs(fresh_for - 1));
        assert!(c.get(&[]).await.is_hit(), "{cc}");
        c.clock.advance(Duration::from_secs(2));
        assert!(!c.get(&[]).await.is_hit(), "{cc}");
        assert_eq!(c.origin.calls(), 2, "{cc}");
    }
    // Expires, against Date.
    let expires = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(30));
    let c = cache(
        http(),
        origin(200, &[("expires", &expires), ("date", &now_date())], "x"),
    );
    c.get(&[]).await;
    assert!(c.get(&[]).await.is_hit());
    // No freshness at all: not stored.
    let c = cache(http(), origin(200, &[], "x"));
    c.get(&[]).await;
    c.get(&[]).await;
    assert_eq!(c.origin.calls(), 2);
    // Heuristic: a tenth of the time since Last-Modified.
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(1000));
    let c = cache(
        http(),
        origin(200, &[("last-modified", &lm), ("date", &now_date())], "x"),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(90));
    assert!(c.get(&[]).await.is_hit());
    c.clock.advance(Duration::from_secs(20));
    assert!(!c.get(&[]).await.is_hit());
}

#[tokio::test]
async fn client_errors_need_explicit_freshness_or_a_status_ttl() {
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100_000));
    let date = now_date();
    // Heuristically cacheable by RFC 9110, but an error an attacker may provoke: not
    // stored on a heuristic lifetime.
    for status in [404, 405, 410, 414] {
        let c = cache(
            http(),
            origin(status, &[("last-modified", &lm), ("date", &date)], "x"),
        );
        c.get(&[]).await;
        c.get(&[]).await;
        assert_eq!(c.origin.calls(), 2, "{status}");
    }
    // A 200 with the same headers is.
    let c = cache(
        http(),
        origin(200, &[("last-modified", &lm), ("date", &date)], "x"),
    );
    c.get(&[]).await;
    assert!(c.get(&[]).await.is_hit());
    // With explicit freshness from the origin, a 4xx is stored.
    for status in [400, 404, 499] {
        let c = cache(
            http(),
            origin(status, &[("cache-control", "max-age=60")], "x"),
        );
        c.get(&[]).await;
        let hit = c.get(&[]).await;
        assert!(hit.is_hit(), "{status}");
        assert_eq!(hit.status.as_u16(), status);
    }
    // Or with the policy's own TTL for that status, used when the origin gives none.
    let c = cache(
        http().status_ttl(404, Duration::from_secs(30)),
        origin(404, &[("date", &date)], "x"),
    );
    c.get(&[]).await;
    // Margins of seconds either side: `Date` is whole seconds, taken before the cache's
    // clock starts, so the entry's apparent age starts between 0 and about 2 s.
    c.clock.advance(Duration::from_secs(25));
    assert!(c.get(&[]).await.is_hit());
    c.clock.advance(Duration::from_secs(7));
    assert!(!c.get(&[]).await.is_hit());
    // The origin's no-store still wins over the policy.
    let c = cache(
        http().status_ttl(404, Duration::from_secs(30)),
        origin(404, &[("cache-control", "no-store")], "x"),
    );
    c.get(&[]).await;
    c.get(&[]).await;
    assert_eq!(c.origin.calls(), 2);
}

#[tokio::test]
async fn the_age_a_response_arrives_with_counts_and_a_bad_one_is_ignored() {
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=60"), ("age", "50")], "x"),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(5));
    let hit = c.get(&[]).await;
    assert!(hit.is_hit());
    assert_eq!(hit.headers["age"], "55");
    c.clock.advance(Duration::from_secs(6));
    assert!(!c.get(&[]).await.is_hit());
    // An `Age` that is not a non-negative integer is ignored (RFC 9111 section 5.1): the
    // age comes from `Date` (none here: zero).
    for bad in ["abc", "-1", "1.5"] {
        let c = cache(
            http(),
            origin(200, &[("cache-control", "max-age=60"), ("age", bad)], "x"),
        );
        c.get(&[]).await;
        let hit = c.get(&[]).await;
        assert!(hit.is_hit(), "Age: {bad}");
        assert_eq!(hit.headers["age"], "0", "Age: {bad}");
    }
}

#[tokio::test]
async fn no_store_and_private_are_not_stored_and_no_cache_is_revalidated() {
    for cc in ["no-store, max-age=60", "private, max-age=60"] {
        let c = cache(http(), origin(200, &[("cache-control", cc)], "x"));
        c.get(&[]).await;
        c.get(&[]).await;
        assert_eq!(c.origin.calls(), 2, "{cc}");
    }
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "no-cache"), ("etag", "\"v1\"")],
            "body",
        ),
    );
    c.get(&[]).await;
    c.origin.answer(reply(304, &[("etag", "\"v1\"")], ""));
    let got = c.get(&[]).await;
    assert_eq!(last_request(&c.origin)["if-none-match"], "\"v1\"");
    assert_eq!((got.status, &got.body[..]), (StatusCode::OK, &b"body"[..]));
}

#[tokio::test]
async fn a_304_freshens_the_stored_headers() {
    let c = cache(
        http(),
        origin(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"a\""),
                ("x-v", "1"),
            ],
            "body",
        ),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(2));
    // (The same entity tag, weak: a 304 for another one would confirm nothing stored.)
    c.origin.answer(reply(
        304,
        &[
            ("cache-control", "max-age=100"),
            ("etag", "W/\"a\""),
            ("x-v", "2"),
        ],
        "",
    ));
    let got = c.get(&[]).await;
    assert_eq!(last_request(&c.origin)["if-none-match"], "\"a\"");
    assert_eq!(&got.body[..], b"body");
    assert_eq!(got.headers["x-v"], "2", "updated from the 304");
    assert_eq!(got.headers["etag"], "\"a\"", "never the validator itself");
    // Fresh again for the 304's max-age.
    c.clock.advance(Duration::from_secs(50));
    assert!(c.get(&[]).await.is_hit());
    assert_eq!(c.origin.calls(), 2);
}

#[tokio::test]
async fn stale_entries_answer_for_an_unreachable_origin_unless_they_must_be_revalidated() {
    // 502/504: the origin could not be reached (a proxy's answer); a 503 is the origin's
    // own, served as it is without `stale-if-error`.
    for (cc, status, stale_ok) in [
        ("max-age=1", 502, true),
        ("max-age=1", 504, true),
        ("max-age=1", 503, false),
        ("max-age=1, must-revalidate", 502, false),
        ("max-age=1, proxy-revalidate", 502, false),
        ("max-age=1, s-maxage=1", 502, false),
    ] {
        let c = cache(http(), origin(200, &[("cache-control", cc)], "old"));
        c.get(&[]).await;
        c.clock.advance(Duration::from_secs(5));
        c.origin.answer(reply(status, &[], "down"));
        let got = c.get(&[]).await;
        assert_eq!(&got.body[..] == b"old", stale_ok, "{cc}, {status}");
    }
}

#[tokio::test]
async fn request_directives_are_honoured_in_http_mode() {
    // Each against an entry 30 s into its 100 s (a miss stores a fresh one).
    for (cc, hit) in [
        ("no-cache", false),
        ("max-age=10", false),
        ("max-age=60", true),
        ("min-fresh=90", false),
        ("min-fresh=10", true),
    ] {
        let c = cache(
            http(),
            origin(200, &[("cache-control", "max-age=100")], "x"),
        );
        c.get(&[]).await;
        c.clock.advance(Duration::from_secs(30));
        let got = c.get(&[("cache-control", cc)]).await;
        assert_eq!(got.is_hit(), hit, "{cc}");
    }
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "x"),
    );
    c.get(&[]).await;
    assert!(!c.get(&[("pragma", "no-cache")]).await.is_hit());
    // no-store: nothing of the exchange is stored.
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "x"),
    );
    c.get(&[("cache-control", "no-store")]).await;
    assert!(!c.get(&[]).await.is_hit());
    // max-stale: an expired entry will do.
    c.clock.advance(Duration::from_secs(110));
    assert!(c.get(&[("cache-control", "max-stale=60")]).await.is_hit());
    assert!(!c.get(&[("cache-control", "max-stale=5")]).await.is_hit());
    // only-if-cached: never the origin; 504 when nothing is stored.
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "x"),
    );
    let got = c.get(&[("cache-control", "only-if-cached")]).await;
    assert_eq!(got.status, StatusCode::GATEWAY_TIMEOUT);
    assert_eq!(c.origin.calls(), 0);
}

#[tokio::test]
async fn immutable_fresh_entries_survive_a_reload() {
    // A reload (`max-age=0`, or any `max-age`) of a fresh immutable entry is answered from
    // the cache; a forced reload (`no-cache`, `Pragma: no-cache`) and `min-fresh` still go to
    // the origin, and once stale it is fetched again.
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100, immutable")], "x"),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(30));
    for cc in ["max-age=0", "max-age=10"] {
        assert!(c.get(&[("cache-control", cc)]).await.is_hit(), "{cc}");
    }
    assert_eq!(c.origin.calls(), 1);
    for (name, value) in [("cache-control", "no-cache"), ("pragma", "no-cache")] {
        assert!(!c.get(&[(name, value)]).await.is_hit(), "{name}: {value}");
    }
    assert_eq!(c.origin.calls(), 3);
    c.clock.advance(Duration::from_secs(30));
    // (Fresh since the last fetch for 70 s more.)
    assert!(!c.get(&[("cache-control", "min-fresh=90")]).await.is_hit());
    assert_eq!(c.origin.calls(), 4);
    // (That miss stored a new entry, fresh for 100 s.)
    c.clock.advance(Duration::from_secs(101));
    assert!(!c.get(&[("cache-control", "max-age=0")]).await.is_hit());
    assert_eq!(c.origin.calls(), 5);
}

#[tokio::test]
async fn application_mode_ignores_request_directives_unless_asked() {
    let app = Policy::ttl(Duration::from_secs(100));
    let c = cache(app.clone(), origin(200, &[], "x"));
    c.get(&[]).await;
    assert!(c.get(&[("cache-control", "no-cache")]).await.is_hit());
    let c = cache(app.request_directives(true), origin(200, &[], "x"));
    c.get(&[]).await;
    assert!(!c.get(&[("cache-control", "no-cache")]).await.is_hit());
}

#[tokio::test]
async fn each_variant_has_an_entry_and_vary_star_none() {
    let c = cache(http(), varying());
    c.get(&[("accept-language", "en")]).await;
    c.get(&[("accept-language", "fr")]).await;
    assert_eq!(c.origin.calls(), 2);
    assert!(c.get(&[("accept-language", "en")]).await.is_hit());
    assert!(c.get(&[("accept-language", "fr")]).await.is_hit());
    assert!(
        c.get(&[("accept-language", "EN")]).await.is_hit(),
        "case-insensitive tags"
    );
    assert!(
        !c.get(&[]).await.is_hit(),
        "no header is a variant of its own"
    );
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100"), ("vary", "*")], "x"),
    );
    c.get(&[]).await;
    c.get(&[]).await;
    assert_eq!(c.origin.calls(), 2);
}

#[tokio::test]
async fn variants_per_url_are_bounded_dropping_the_oldest() {
    let c = cache(http().max_variants(2), varying());
    for lang in ["en", "fr", "de"] {
        c.get(&[("accept-language", lang)]).await;
    }
    assert_eq!(c.origin.calls(), 3);
    assert!(c.get(&[("accept-language", "fr")]).await.is_hit());
    assert!(c.get(&[("accept-language", "de")]).await.is_hit());
    // The third variant pushed out the first.
    assert!(!c.get(&[("accept-language", "en")]).await.is_hit());
    assert_eq!(c.origin.calls(), 4);
    // And storing it again pushed out the next oldest.
    assert!(!c.get(&[("accept-language", "fr")]).await.is_hit());
    assert!(c.get(&[("accept-language", "en")]).await.is_hit());
    assert_eq!(c.origin.calls(), 5);
    // Concurrent answers for new variants (all asked before any is stored) each add to the
    // list as it is when they are stored: the bound still holds.
    let c = cache(http().max_variants(2), varying());
    let svc = tower::ServiceBuilder::new()
        .layer(c.layer.clone())
        .service(c.origin.clone());
    let mut pending = Vec::new();
    for lang in ["a", "b", "c", "d", "e"] {
        let req = Request::get("/r")
            .header("host", "a.example")
            .header("accept-language", lang)
            .body(Empty::new())
            .unwrap();
        let mut svc = svc.clone();
        let ready = ServiceExt::<Request<Empty<Bytes>>>::ready(&mut svc);
        pending.push(ready.await.unwrap().call(req));
    }
    for resp in pending {
        resp.await.unwrap().into_body().collect().await.unwrap();
    }
    // (Dropping a variant from memory takes effect on the call: nothing to wait for.)
    assert_eq!(c.origin.calls(), 5);
    // (Hits first: a miss stores its variant, which pushes out another.)
    let kept: Vec<bool> = futures_hits(&c, &["d", "e", "c"]).await;
    assert_eq!(kept, [true, true, false], "the two last stored are kept");
    // A bound of zero is refused, naming the field.
    let err = CacheLayer::try_new(
        Stash::new(),
        Routes::new().get("/{*path}", http().max_variants(0)),
    )
    .unwrap_err()
    .to_string();
    assert!(err.contains("max_variants: must be at least 1"), "{err}");
}

#[tokio::test]
async fn two_hosts_never_share_an_entry() {
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "x"),
    );
    for host in ["a.example", "b.example", "a.example", "b.example"] {
        let req = Request::get("/r").header("host", host);
        c.send(req.body(Empty::new()).unwrap()).await;
    }
    assert_eq!(c.origin.calls(), 2);
    // HTTP/2 requests carry the authority in the URI, not in a Host header.
    for uri in [
        "http://c.example/r",
        "http://d.example/r",
        "http://c.example/r",
    ] {
        c.send(Request::get(uri).body(Empty::new()).unwrap()).await;
    }
    assert_eq!(c.origin.calls(), 4);
    // Invalidating the URL on one host drops that host's entry; the key without a host (a
    // rule's template) drops them all.
    let stash = c.layer.stash().clone();
    stash.invalidate_key("GET /r|host=a.example").await.unwrap();
    let on = |host: &str| {
        Request::get("/r")
            .header("host", host)
            .body(Empty::new())
            .unwrap()
    };
    assert!(!c.send(on("a.example")).await.is_hit());
    assert!(c.send(on("b.example")).await.is_hit());
    stash.invalidate_key("GET /r").await.unwrap();
    assert!(!c.send(on("a.example")).await.is_hit());
    assert!(!c.send(on("b.example")).await.is_hit());
}

#[tokio::test]
async fn authorized_requests_are_stored_only_when_the_origin_says_they_may_be_shared() {
    for (cc, stored) in [
        ("max-age=100", false),
        ("max-age=100, public", true),
        ("s-maxage=100", true),
        ("max-age=100, must-revalidate", true),
    ] {
        let c = cache(http(), origin(200, &[("cache-control", cc)], "x"));
        c.get(&[("authorization", "Bearer a")]).await;
        assert_eq!(c.get(&[]).await.is_hit(), stored, "{cc}");
    }
}

#[tokio::test]
async fn partial_answers_serve_only_the_ranges_they_hold_and_never_a_whole_request() {
    // The origin holds "0123456789"; a 206 of bytes 4-8 is stored apart.
    let c = cache(http(), partial());
    c.get(&[("range", "bytes=4-8")]).await;
    for (range, body, content_range) in [
        ("bytes=4-8", "45678", "bytes 4-8/10"),
        ("bytes=5-7", "567", "bytes 5-7/10"),
        ("bytes=6-8", "678", "bytes 6-8/10"),
    ] {
        let got = c.get(&[("range", range)]).await;
        assert!(got.is_hit(), "{range}");
        assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
        assert_eq!(&got.body[..], body.as_bytes(), "{range}");
        assert_eq!(got.headers["content-range"], content_range);
        assert_eq!(got.headers["content-length"], body.len().to_string());
    }
    assert_eq!(c.origin.calls(), 1);
    // Bytes it does not hold, and a request for the whole body, go to the origin.
    for range in ["bytes=0-4", "bytes=-1", "bytes=4-"] {
        assert!(!c.get(&[("range", range)]).await.is_hit(), "{range}");
    }
    assert!(!c.get(&[]).await.is_hit(), "never the whole response");
    assert_eq!(c.origin.calls(), 5);
    // A 206 that varies, or whose range is unknown (several, or no complete length), is not
    // stored.
    for headers in [
        vec![("content-range", "bytes 0-1/10"), ("vary", "accept")],
        vec![("content-range", "bytes 0-1/*")],
        vec![("content-type", "multipart/byteranges; boundary=x")],
    ] {
        let mut all = vec![("cache-control", "max-age=100")];
        all.extend(headers);
        let c = cache(http(), origin(206, &all, "ab"));
        c.get(&[("range", "bytes=0-1")]).await;
        c.get(&[("range", "bytes=0-1")]).await;
        assert_eq!(c.origin.calls(), 2, "{all:?}");
    }
    // Nor when the policy's statuses leave 206 out.
    let c = cache(
        http().statuses([200]),
        origin(
            206,
            &[
                ("cache-control", "max-age=100"),
                ("content-range", "bytes 0-1/10"),
            ],
            "ab",
        ),
    );
    c.get(&[("range", "bytes=0-1")]).await;
    c.get(&[("range", "bytes=0-1")]).await;
    assert_eq!(c.origin.calls(), 2);
    // Nor in application mode.
    let c = cache(
        Policy::ttl(Duration::from_secs(100)).statuses([200]),
        origin(206, &[("content-range", "bytes 0-1/10")], "ab"),
    );
    c.get(&[("range", "bytes=0-1")]).await;
    c.get(&[("range", "bytes=0-1")]).await;
    assert_eq!(c.origin.calls(), 2);
    // Invalidating the URL drops its partial response too.
    let c = cache(http(), partial());
    c.get(&[("range", "bytes=4-8")]).await;
    let probe = Request::get("/r")
        .header("host", "a.example")
        .body(())
        .unwrap();
    let key = c.layer.invalidation_key_for(&probe).unwrap();
    assert_eq!(
        key, "GET /r|host=a.example",
        "the host is part of the URL's key"
    );
    c.layer.stash().invalidate_key(&key).await.unwrap();
    assert!(!c.get(&[("range", "bytes=4-8")]).await.is_hit());
    // Ranges are served from a whole response.
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "0123456789"),
    );
    c.get(&[]).await;
    let got = c.get(&[("range", "bytes=5-")]).await;
    assert_eq!(got.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(&got.body[..], b"56789");
    assert_eq!(got.headers["content-range"], "bytes 5-9/10");
    // HEAD is answered from the GET entry.
    let req = Request::head("/r").header("host", "a.example");
    let got = c.send(req.body(Empty::new()).unwrap()).await;
    assert!(got.is_hit() && got.body.is_empty());
    assert_eq!(c.origin.calls(), 1);
}

#[test]
fn helpers() {
    let mut h = HeaderMap::new();
    h.insert("cache-control", "max-age=10".parse().unwrap());
    assert_eq!(
        freshness(StatusCode::OK, &h, SystemTime::now(), None)
            .unwrap()
            .0,
        Duration::from_secs(10)
    );
    let d = RequestDirectives::parse(&{
        let mut h = HeaderMap::new();
        h.insert(
            "cache-control",
            "max-stale, only-if-cached".parse().unwrap(),
        );
        h
    });
    assert_eq!(d.max_stale, Some(None));
    assert!(d.only_if_cached);
    let r = |s: &str| byte_range(&HeaderValue::from_str(s).unwrap(), 10);
    assert_eq!(r("bytes=0-4"), Some((0, 4)));
    assert_eq!(r("bytes=-3"), Some((7, 9)));
    assert_eq!(r("bytes=8-100"), Some((8, 9)));
    assert_eq!(r("bytes=0-1,3-4"), None);
    assert_eq!(r("bytes=20-"), None);
    let mut stored = HeaderMap::new();
    stored.insert("etag", "\"a\"".parse().unwrap());
    stored.insert("content-length", "4".parse().unwrap());
    let mut nm = HeaderMap::new();
    nm.insert("etag", "\"b\"".parse().unwrap());
    nm.insert("content-length", "0".parse().unwrap());
    nm.insert("x-new", "1".parse().unwrap());
    let merged = freshen(&stored, &nm);
    assert_eq!(merged["etag"], "\"a\"");
    assert_eq!(merged["content-length"], "4");
    assert_eq!(merged["x-new"], "1");
}

#[tokio::test]
async fn an_authorized_answer_is_never_handed_to_a_waiting_request() {
    use crate::SingleFlightLayer;
    let stash = Stash::builder().build().unwrap();
    let layer = CacheLayer::new(stash.clone(), Routes::new().get("/{*path}", http()));
    let origin = tower::service_fn(|req: Request<Empty<Bytes>>| async move {
        tokio::time::sleep(Duration::from_millis(100)).await;
        let who = req
            .headers()
            .get("authorization")
            .map_or("anonymous".to_owned(), |v| v.to_str().unwrap().to_owned());
        let mut resp = Response::new(Full::new(Bytes::from(who)));
        resp.headers_mut()
            .insert("cache-control", HeaderValue::from_static("max-age=100"));
        Ok::<_, Infallible>(resp)
    });
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(SingleFlightLayer::new(stash))
        .service(origin);
    let get_me = |auth: Option<&'static str>| {
        let mut req = Request::get("/me").header("host", "a.example");
        if let Some(a) = auth {
            req = req.header("authorization", a);
        }
        let got = send(svc.clone(), req.body(Empty::new()).unwrap());
        async move { got.await.body }
    };
    let (private, anonymous) = tokio::join!(get_me(Some("Bearer alice")), async {
        tokio::time::sleep(Duration::from_millis(20)).await;
        get_me(None).await
    });
    assert_eq!(&private[..], b"Bearer alice");
    assert_eq!(&anonymous[..], b"anonymous");
}

#[tokio::test]
async fn a_304_never_stores_a_cookie_for_others() {
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "max-age=1"), ("etag", "\"a\"")],
            "body",
        ),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(2));
    c.origin.answer(reply(
        304,
        &[("etag", "\"a\""), ("set-cookie", "session=alice")],
        "",
    ));
    let first = c.get(&[]).await;
    assert_eq!(
        first.headers["set-cookie"], "session=alice",
        "for this client"
    );
    c.origin.answer(reply(304, &[("etag", "\"a\"")], ""));
    let second = c.get(&[]).await;
    assert!(
        second.headers.get("set-cookie").is_none(),
        "never for the next"
    );
    assert_eq!(&second.body[..], b"body");
}

#[tokio::test]
async fn a_range_with_if_range_gets_the_whole_body() {
    // The version the client holds may not be the stored one: a slice of this one could
    // corrupt its file, so it gets all of it.
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "0123456789"),
    );
    c.get(&[]).await;
    let got = c
        .get(&[("range", "bytes=5-"), ("if-range", "\"old\"")])
        .await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(&got.body[..], b"0123456789");
}

#[tokio::test]
async fn the_origin_s_own_stale_windows_are_honoured() {
    // stale-while-revalidate: answered stale at once, refreshed in the background.
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "max-age=10, stale-while-revalidate=30")],
            "old",
        ),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(20));
    c.origin
        .answer(reply(200, &[("cache-control", "max-age=10")], "new"));
    let got = c.get(&[]).await;
    assert_eq!(&got.body[..], b"old");
    assert!(got.is_hit());
    crate::test_util::until("the refresh", || c.origin.calls() == 2).await;
    // stale-if-error: answered stale when the origin fails, inside the window only.
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "max-age=10, stale-if-error=30")],
            "old",
        ),
    );
    c.get(&[]).await;
    c.origin.answer(reply(500, &[], "down"));
    c.clock.advance(Duration::from_secs(20));
    assert_eq!(&c.get(&[]).await.body[..], b"old");
    c.clock.advance(Duration::from_secs(30));
    let got = c.get(&[]).await;
    assert_eq!(got.status, StatusCode::INTERNAL_SERVER_ERROR);
}

/// A store that always answers later (as Redis does): every lookup takes the slow path.
struct Remote(crate::MemoryStore);

impl crate::Store for Remote {
    fn get(&self, key: Arc<str>) -> crate::StoreFuture<Option<Arc<crate::Entry>>> {
        self.0.get(key)
    }
    fn put(
        &self,
        key: Arc<str>,
        entry: Arc<crate::Entry>,
        ttl: Duration,
    ) -> crate::StoreFuture<()> {
        self.0.put(key, entry, ttl)
    }
    fn delete(&self, key: Arc<str>) -> crate::StoreFuture<()> {
        self.0.delete(key)
    }
}

#[tokio::test]
async fn variants_are_found_through_a_shared_store_too() {
    let stash = Stash::builder()
        .store(Remote(crate::MemoryStore::new(1 << 20)))
        .build()
        .unwrap();
    let c = Cache {
        layer: CacheLayer::new(stash, Routes::new().get("/{*path}", http())),
        origin: varying(),
        clock: ManualClock::default(),
    };
    c.get(&[("accept-language", "en")]).await;
    c.get(&[("accept-language", "fr")]).await;
    assert!(c.get(&[("accept-language", "en")]).await.is_hit());
    assert!(c.get(&[("accept-language", "fr")]).await.is_hit());
    assert_eq!(c.origin.calls(), 2);
}

#[tokio::test]
async fn head_is_answered_from_the_get_entry_and_never_stores_an_empty_body() {
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "body"),
    );
    let head = || {
        Request::head("/r")
            .header("host", "a.example")
            .body(Empty::new())
            .unwrap()
    };
    // A HEAD miss: forwarded, nothing stored for GET.
    let got = c.send(head()).await;
    assert!(!got.is_hit());
    let get = c.get(&[]).await;
    assert!(!get.is_hit());
    assert_eq!(&get.body[..], b"body");
    assert_eq!(c.origin.calls(), 2);
    // Now HEAD is a hit on the GET entry, without a body.
    let got = c.send(head()).await;
    assert!(got.is_hit());
    assert!(got.body.is_empty());
    assert_eq!(got.headers["cache-control"], "max-age=100");
    // HEAD ignores Range: the whole response's headers.
    let mut ranged = head();
    ranged
        .headers_mut()
        .insert("range", HeaderValue::from_static("bytes=0-1"));
    let got = c.send(ranged).await;
    assert_eq!(got.status, StatusCode::OK);
    assert_eq!(got.headers["content-length"], "4");
    assert!(!got.headers.contains_key("content-range"));
    assert_eq!(c.origin.calls(), 2);
}

/// Whether each `Accept-Language` variant is answered from the cache, in order.
async fn futures_hits(c: &Cache, langs: &[&str]) -> Vec<bool> {
    let mut hits = Vec::new();
    for lang in langs {
        hits.push(c.get(&[("accept-language", lang)]).await.is_hit());
    }
    hits
}

#[tokio::test]
async fn a_write_elsewhere_invalidates_the_cached_url_its_location_names() {
    // POST /orders has no cached route; its answer's Location names a cached item.
    let c = cache_with(
        Routes::new().get("/items/{id}", http()),
        origin(200, &[("cache-control", "max-age=100")], "item"),
    );
    let send = |method: &str, uri: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header("host", "a.example")
            .body(Empty::new())
            .unwrap()
    };
    c.send(send("GET", "/items/5")).await;
    c.send(send("GET", "/items/6")).await;
    assert!(c.send(send("GET", "/items/5")).await.is_hit());
    c.origin
        .answer(reply(201, &[("location", "/items/5")], "created"));
    c.send(send("POST", "/orders")).await;
    c.origin
        .answer(reply(200, &[("cache-control", "max-age=100")], "item"));
    assert!(
        !c.send(send("GET", "/items/5")).await.is_hit(),
        "named by Location"
    );
    assert!(c.send(send("GET", "/items/6")).await.is_hit(), "not named");
}

#[tokio::test]
async fn invalidating_a_url_drops_the_variants_its_first_answers_became() {
    let c = cache(
        http(),
        origin(
            200,
            &[
                ("cache-control", "max-age=100"),
                ("vary", "Accept-Encoding"),
            ],
            "x",
        ),
    );
    // The first answer for the URL becomes a variant: it must still be tagged with the URL.
    c.get(&[("accept-encoding", "gzip")]).await;
    assert!(c.get(&[("accept-encoding", "gzip")]).await.is_hit());
    let probe = Request::get("/r")
        .header("host", "a.example")
        .body(())
        .unwrap();
    let key = c.layer.invalidation_key_for(&probe).unwrap();
    c.layer.stash().invalidate_key(&key).await.unwrap();
    c.clock.advance(Duration::from_secs(1));
    // Another variant writes a new record; the old variant must not come back with it.
    c.get(&[("accept-encoding", "br")]).await;
    assert!(!c.get(&[("accept-encoding", "gzip")]).await.is_hit());
    assert_eq!(c.origin.calls(), 3);
}

#[tokio::test]
async fn one_host_written_several_ways_is_one_key_without_credentials() {
    let c = cache(
        http(),
        origin(200, &[("cache-control", "max-age=100")], "x"),
    );
    let key = |req: Request<()>| c.layer.key_for(&req).unwrap();
    let plain = key(Request::get("/r")
        .header("host", "a.example")
        .body(())
        .unwrap());
    for req in [
        Request::get("/r")
            .header("host", "A.Example")
            .body(())
            .unwrap(),
        Request::get("/r")
            .header("host", "a.example:80")
            .body(())
            .unwrap(),
        Request::get("http://a.example:443/r").body(()).unwrap(),
        Request::get("http://user:secret@a.example/r")
            .body(())
            .unwrap(),
    ] {
        let k = key(req);
        assert_eq!(k, plain);
        assert!(!k.contains("secret"));
    }
    let other_port = key(Request::get("/r")
        .header("host", "a.example:8080")
        .body(())
        .unwrap());
    assert_ne!(other_port, plain);
}

/// Issue 17's rules ("HTTP caching to the letter"), with the helpers above.
#[path = "letter_tests.rs"]
mod letter;
