//! HTTP mode to the letter of RFC 9111 and its companions: what reaches the origin, what is
//! never stored, what is revalidated, and how the targeted fields and `Age` are read.

use super::*;

#[tokio::test]
async fn an_allowlist_forwards_what_the_variant_key_holds_and_nothing_else() {
    let c = cache(
        http().allow_headers(["accept"]),
        origin(
            200,
            &[
                ("cache-control", "max-age=1"),
                ("etag", "\"v1\""),
                ("vary", "X-Abc"),
            ],
            "x",
        ),
    );
    let headers = [("x-abc", "1"), ("accept", "*/*"), ("x-other", "2")];
    c.get(&headers).await;
    let seen = last_request(&c.origin);
    assert!(seen.contains_key("accept") && seen.contains_key("host"));
    assert!(!seen.contains_key("x-abc") && !seen.contains_key("x-other"));
    // Once the URL is known to vary on X-Abc, its variants' keys hold it: it is forwarded
    // (here in the revalidation of the expired variant).
    c.clock.advance(Duration::from_secs(2));
    c.origin.answer(reply(304, &[("etag", "\"v1\"")], ""));
    let got = c.get(&headers).await;
    assert_eq!(got.text(), "x");
    let seen = last_request(&c.origin);
    assert_eq!(seen["x-abc"], "1");
    assert_eq!(seen["if-none-match"], "\"v1\"");
    assert!(!seen.contains_key("x-other"));
}

#[tokio::test]
async fn errors_a_request_s_own_range_or_preconditions_caused_are_never_the_url_s_entry() {
    // CPDoS: an unsatisfiable range, or a failed If-Match, answered with a long public
    // lifetime; every client after must still get the resource.
    for (name, value, status) in [
        ("range", "bytes=99999999-", 416),
        ("if-match", "\"nope\"", 412),
        ("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT", 412),
    ] {
        let c = cache(
            http(),
            origin(
                status,
                &[("cache-control", "public, max-age=86400")],
                "error",
            ),
        );
        let attack = c.get(&[(name, value)]).await;
        assert_eq!(attack.status.as_u16(), status, "{name}");
        c.origin
            .answer(reply(200, &[("cache-control", "max-age=60")], "app.js"));
        let clean = c.get(&[]).await;
        assert_eq!(
            (clean.status, clean.text()),
            (StatusCode::OK, "app.js"),
            "{name}"
        );
        assert!(c.get(&[]).await.is_hit(), "{name}: the 200 is the entry");
        assert_eq!(c.origin.calls(), 2, "{name}");
    }
}

#[test]
fn no_policy_stores_412_or_416() {
    for status in [412, 416] {
        for mode in [false, true] {
            let policy = Policy::ttl(Duration::from_secs(60))
                .http_mode(mode)
                .status_ttl(status, Duration::from_secs(1));
            let e = Routes::new().get("/x", policy).validate().unwrap_err();
            assert!(e.to_string().contains("is never stored"), "{e}");
        }
    }
}

#[tokio::test]
async fn a_refresh_forwards_none_of_the_client_s_preconditions() {
    let c = cache(
        http().stale_while_revalidate(Duration::from_secs(60)),
        origin(200, &[("cache-control", "max-age=1")], "x"),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(2));
    let stale = c
        .get(&[
            ("if-match", "\"a\""),
            ("if-unmodified-since", "Thu, 01 Jan 1970 00:00:00 GMT"),
            ("if-range", "\"a\""),
            ("range", "bytes=0-0"),
            ("if-none-match", "\"b\""),
        ])
        .await;
    assert!(
        stale.cache_status().contains("stale"),
        "{}",
        stale.cache_status()
    );
    crate::test_util::until("the refresh", || c.origin.requests().len() == 2).await;
    let seen = last_request(&c.origin);
    for name in [
        "if-match",
        "if-unmodified-since",
        "if-range",
        "range",
        "if-none-match",
    ] {
        assert!(!seen.contains_key(name), "the refresh sent {name}");
    }
}

#[tokio::test]
async fn no_cache_is_revalidated_on_every_use_also_after_a_304() {
    // A Last-Modified long ago would give a heuristic lifetime of a day: never to a
    // `no-cache` answer.
    let lm = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(100 * 86400));
    let c = cache(
        http(),
        origin(
            200,
            &[
                ("cache-control", "no-cache"),
                ("etag", "\"v1\""),
                ("last-modified", &lm),
                ("date", &now_date()),
            ],
            "body",
        ),
    );
    c.get(&[]).await;
    c.origin
        .answer(reply(304, &[("etag", "\"v1\""), ("date", &now_date())], ""));
    for use_ in 2..6 {
        let got = c.get(&[]).await;
        assert_eq!((got.status, got.text()), (StatusCode::OK, "body"));
        assert_eq!(c.origin.calls(), use_, "use {use_} asked the origin");
        assert_eq!(last_request(&c.origin)["if-none-match"], "\"v1\"");
        assert_eq!(got.cache_status(), "tower-stash; fwd=stale; fwd-status=304");
    }
}

#[tokio::test]
async fn a_policy_s_stale_windows_never_override_the_origin() {
    for cc in [
        "max-age=1, must-revalidate",
        "max-age=1, proxy-revalidate",
        "max-age=1, s-maxage=1",
        "no-cache",
    ] {
        let policy = http()
            .stale_while_revalidate(Duration::from_secs(600))
            .stale_if_error(Duration::from_secs(600));
        let c = cache(
            policy,
            origin(200, &[("cache-control", cc), ("etag", "\"v1\"")], "old"),
        );
        c.get(&[]).await;
        c.clock.advance(Duration::from_secs(2));
        // Not answered stale while it is refreshed: the origin is asked first.
        c.origin
            .answer(reply(200, &[("cache-control", "max-age=1")], "new"));
        let got = c.get(&[]).await;
        assert_eq!(got.text(), "new", "{cc}: {}", got.cache_status());
        // Nor when the origin fails.
        let c = cache(
            http()
                .stale_while_revalidate(Duration::from_secs(600))
                .stale_if_error(Duration::from_secs(600)),
            origin(200, &[("cache-control", cc), ("etag", "\"v1\"")], "old"),
        );
        c.get(&[]).await;
        c.clock.advance(Duration::from_secs(2));
        c.origin.answer(reply(500, &[], "down"));
        let got = c.get(&[]).await;
        assert_eq!((got.status.as_u16(), got.text()), (500, "down"), "{cc}");
    }
}

#[tokio::test]
async fn storing_needs_a_reason() {
    // Only `no-cache` and a validator: neither explicit freshness nor a status that may
    // be given a heuristic one. Not kept, so never revalidated.
    for status in [500, 400, 201] {
        let c = cache(
            http(),
            origin(
                status,
                &[("cache-control", "no-cache"), ("etag", "\"e\"")],
                "x",
            ),
        );
        c.get(&[]).await;
        c.get(&[]).await;
        assert_eq!(c.origin.calls(), 2, "{status}");
        assert!(
            !last_request(&c.origin).contains_key("if-none-match"),
            "{status}: nothing kept to revalidate"
        );
    }
    // A 200 may be kept to be revalidated.
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "no-cache"), ("etag", "\"e\"")],
            "x",
        ),
    );
    c.get(&[]).await;
    c.get(&[]).await;
    assert_eq!(last_request(&c.origin)["if-none-match"], "\"e\"");
}

#[tokio::test]
async fn a_304_answers_a_2xx_entry_only() {
    let c = cache(
        http(),
        origin(
            404,
            &[("cache-control", "max-age=60"), ("etag", "\"gone\"")],
            "missing",
        ),
    );
    c.get(&[]).await;
    for inm in ["\"gone\"", "*"] {
        let got = c.get(&[("if-none-match", inm)]).await;
        assert!(got.is_hit());
        assert_eq!((got.status.as_u16(), got.text()), (404, "missing"), "{inm}");
    }
}

#[tokio::test]
async fn a_304_merges_no_hop_by_hop_header_and_one_for_another_etag_updates_nothing() {
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
    c.origin.answer(reply(
        304,
        &[
            ("etag", "\"a\""),
            ("cache-control", "max-age=100"),
            ("connection", "x-hop"),
            ("x-hop", "1"),
            ("keep-alive", "timeout=5"),
        ],
        "",
    ));
    let got = c.get(&[]).await;
    assert_eq!(got.text(), "body");
    for name in ["x-hop", "keep-alive", "connection"] {
        assert!(!got.headers.contains_key(name), "{name} merged");
    }
    assert!(c.get(&[]).await.is_hit());
    // A 304 for another representation confirms nothing: the entry is not freshened, and
    // the next request fetches it whole.
    c.clock.advance(Duration::from_secs(200));
    c.origin.answer(reply(
        304,
        &[
            ("etag", "\"b\""),
            ("cache-control", "max-age=100"),
            ("x-v", "2"),
        ],
        "",
    ));
    let got = c.get(&[]).await;
    assert_ne!(
        got.headers.get("x-v").map(|v| v.as_bytes()),
        Some(&b"2"[..])
    );
    c.origin.answer(reply(
        200,
        &[("cache-control", "max-age=100"), ("etag", "\"b\"")],
        "new",
    ));
    let next = c.get(&[]).await;
    assert_eq!(next.text(), "new");
    assert!(!last_request(&c.origin).contains_key("if-none-match"));
}

#[test]
fn a_304_merge_keeps_no_hop_by_hop_header() {
    let stored = HeaderMap::new();
    let mut nm = HeaderMap::new();
    nm.insert("connection", "x-hop".parse().unwrap());
    nm.insert("x-hop", "1".parse().unwrap());
    nm.insert("keep-alive", "timeout=5".parse().unwrap());
    nm.insert("x-new", "1".parse().unwrap());
    let merged = freshen(&stored, &nm);
    assert_eq!(merged.len(), 1, "{merged:?}");
    assert_eq!(merged["x-new"], "1");
}

#[tokio::test]
async fn an_origin_s_hint_headers_are_ignored_unless_the_policy_opts_in() {
    let stretched = [
        ("cache-control", "max-age=0"),
        ("x-stash-ttl", "31536000"),
        ("x-stash-tags", "everything"),
    ];
    let c = cache(http(), origin(200, &stretched, "x"));
    let first = c.get(&[]).await;
    assert!(!c.get(&[]).await.is_hit(), "max-age=0 is not stretched");
    assert_eq!(first.headers["x-stash-ttl"], "31536000", "an origin header");
    let c = cache(http().hints(true), origin(200, &stretched, "x"));
    c.get(&[]).await;
    assert!(c.get(&[]).await.is_hit(), "the policy trusts its origin");
}

/// Whether a response with these headers (and `max-age`) is still a hit on the second request.
async fn reused(headers: &[(&'static str, &str)]) -> bool {
    let c = cache(http(), origin(200, headers, "x"));
    c.get(&[]).await;
    c.get(&[]).await.is_hit()
}

#[tokio::test]
async fn age_is_its_first_member_and_an_invalid_one_is_ignored() {
    // RFC 9111 section 5.1: a list's first member; an invalid value is ignored (the age
    // then comes from `Date`), it does not make the response stale.
    let date = now_date();
    let cases: [(&[&str], bool); 11] = [
        (&["abc"], true),
        (&["-7200"], true),
        (&["7200.0"], true),
        (&[""], true),
        (&["0, 7200"], true),
        (&["0", "7200"], true),
        (&["0, 0"], true),
        (&["0", "0"], true),
        (&["7200, 0"], false),
        (&["7200", "0"], false),
        // A parameter is not part of the number it follows.
        (&["7200;foo=bar"], false),
    ];
    for (ages, fresh) in cases {
        let mut headers = vec![("cache-control", "max-age=3600"), ("date", date.as_str())];
        headers.extend(ages.iter().map(|a| ("age", *a)));
        assert_eq!(reused(&headers).await, fresh, "Age: {ages:?}");
    }
    // The first member counts toward the age sent on hits.
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "max-age=3600"), ("age", "100, 3")],
            "x",
        ),
    );
    c.get(&[]).await;
    assert_eq!(c.get(&[]).await.headers["age"], "100");
}

#[tokio::test]
async fn cdn_cache_control_is_obeyed_before_cache_control_and_expires() {
    let date = now_date();
    let past = httpdate::fmt_http_date(SystemTime::now() - Duration::from_secs(10_000));
    let future = httpdate::fmt_http_date(SystemTime::now() + Duration::from_secs(10_000));
    let cases: [(&[(&'static str, &str)], bool); 10] = [
        (&[("cdn-cache-control", "max-age=3600")], true),
        (&[("cdn-cache-control", "max-age=99999999999")], true),
        (&[("cdn-cache-control", "foobar, max-age=3600")], true),
        (
            &[
                ("cache-control", "no-store"),
                ("cdn-cache-control", "max-age=3600"),
            ],
            true,
        ),
        (
            &[
                ("cdn-cache-control", "max-age=3600"),
                ("expires", &past),
                ("date", &date),
            ],
            true,
        ),
        (
            &[
                ("cdn-cache-control", "max-age=0"),
                ("expires", &future),
                ("date", &date),
            ],
            false,
        ),
        (
            &[
                ("cdn-cache-control", "private"),
                ("cache-control", "max-age=10000"),
            ],
            false,
        ),
        (
            &[
                ("cdn-cache-control", "no-store"),
                ("cache-control", "max-age=10000"),
            ],
            false,
        ),
        // Not a valid Structured Field, or a directive of the wrong type: ignored, and the
        // origin's `Cache-Control` decides.
        (
            &[
                ("cdn-cache-control", "max-age=10000, &&&&&"),
                ("cache-control", "no-store"),
            ],
            false,
        ),
        (
            &[
                ("cdn-cache-control", "max-age=\"10000\""),
                ("cache-control", "no-store"),
            ],
            false,
        ),
    ];
    for (headers, fresh) in cases {
        assert_eq!(reused(headers).await, fresh, "{headers:?}");
    }
    // A short CDN lifetime wins over a long Cache-Control one; the header goes on to the
    // client, whose caches it does not concern.
    let c = cache(
        http(),
        origin(
            200,
            &[
                ("cache-control", "max-age=3600"),
                ("cdn-cache-control", "max-age=1"),
            ],
            "x",
        ),
    );
    let first = c.get(&[]).await;
    assert_eq!(first.headers["cdn-cache-control"], "max-age=1");
    c.clock.advance(Duration::from_secs(2));
    assert!(!c.get(&[]).await.is_hit());
    // `no-cache` there: revalidated on every use.
    let c = cache(
        http(),
        origin(
            200,
            &[
                ("cdn-cache-control", "no-cache"),
                ("cache-control", "max-age=10000"),
                ("etag", "\"e\""),
            ],
            "x",
        ),
    );
    c.get(&[]).await;
    c.origin.answer(reply(304, &[("etag", "\"e\"")], ""));
    c.get(&[]).await;
    assert_eq!(c.origin.calls(), 2);
    // `must-revalidate` there: never answered stale.
    let c = cache(
        http(),
        origin(
            200,
            &[
                ("cdn-cache-control", "max-age=1, must-revalidate"),
                ("cache-control", "max-age=1"),
            ],
            "old",
        ),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(5));
    c.origin.answer(reply(502, &[], "down"));
    assert_eq!(c.get(&[]).await.text(), "down");
}

#[tokio::test]
async fn a_targeted_field_of_its_own_comes_first_and_cdn_cache_control_can_be_ignored() {
    let both = [
        ("stash-cache-control", "max-age=1"),
        ("cdn-cache-control", "max-age=3600"),
    ];
    let c = cache(
        http().targeted_field("stash-cache-control"),
        origin(200, &both, "x"),
    );
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(2));
    assert!(!c.get(&[]).await.is_hit(), "Stash-Cache-Control first");
    let c = cache(http(), origin(200, &both, "x"));
    c.get(&[]).await;
    c.clock.advance(Duration::from_secs(2));
    assert!(
        c.get(&[]).await.is_hit(),
        "not targeted at this cache: ignored"
    );
    let c = cache(
        http().cdn_cache_control(false),
        origin(200, &[("cdn-cache-control", "max-age=3600")], "x"),
    );
    c.get(&[]).await;
    assert!(!c.get(&[]).await.is_hit(), "CDN-Cache-Control ignored");
}

#[tokio::test]
async fn expires_is_read_in_the_three_formats_case_aside_and_anything_else_is_expired() {
    // RFC 9110 section 5.6.7's three formats, in any case (the newest HTTP cache suite's
    // optional tests); RFC 9111 section 5.3: anything else means already expired.
    for expires in [
        "THU, 18 Aug 2050 02:01:18 GMT",
        "Thu, 18 AUG 2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02:01:18 gMT",
        "Thu Aug  8 02:01:18 2050",
        "Thursday, 18-Aug-50 02:01:18 GMT",
        "Tue, 19 Jan 2038 14:14:08 GMT",
    ] {
        let headers = [("expires", expires), ("date", &now_date())];
        assert!(reused(&headers).await, "Expires: {expires}");
    }
    for expires in [
        "Thu, 18 Aug 2050 02:01:18 UTC",
        "Thu, 18 Aug 2050 02:01:18 AEST",
        "Thu, 18 Aug 50 02:01:18 GMT",
        "Thu 18 Aug 2050 02:01:18 GMT",
        "Thu, 18  Aug  2050 02:01:18 GMT",
        "Thu, 18-Aug-2050 02:01:18 GMT",
        "Thu, 18 Aug 2050 02.01.18 GMT",
        "Thu, 18 Aug 2050 2:01:18 GMT",
        "0",
        "soon",
    ] {
        let headers = [("expires", expires), ("date", &now_date())];
        assert!(!reused(&headers).await, "Expires: {expires}");
    }
    // Two `Expires` lines: not one date, so already expired.
    let date = now_date();
    let headers = [
        ("expires", "Thu, 18 Aug 2050 02:01:18 GMT"),
        ("expires", "Thu, 18 Aug 2050 02:01:19 GMT"),
        ("date", date.as_str()),
    ];
    assert!(!reused(&headers).await, "two Expires lines");
}

#[tokio::test]
async fn an_interim_response_is_never_stored() {
    let c = cache(
        http(),
        origin(
            103,
            &[
                ("cache-control", "max-age=3600"),
                ("link", "</s.css>; rel=preload"),
            ],
            "",
        ),
    );
    c.get(&[]).await;
    c.get(&[]).await;
    assert_eq!(c.origin.calls(), 2);
}

#[tokio::test]
async fn a_miss_with_if_none_match_answered_304_is_relayed_and_stores_nothing() {
    let c = cache(
        http(),
        origin(
            200,
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            "body",
        ),
    );
    c.origin.answer(|req, _| {
        // The origin answers the client's own condition.
        let matches = req
            .headers()
            .get("if-none-match")
            .is_some_and(|v| v == "\"v1\"");
        let mut resp = reply(
            if matches { 304 } else { 200 },
            &[("cache-control", "max-age=60"), ("etag", "\"v1\"")],
            "body",
        )(req, 0);
        if matches {
            *resp.body_mut() = full(Bytes::new());
        }
        resp
    });
    // A cold miss: the client's condition goes to the origin, its 304 comes back.
    let relayed = c.get(&[("if-none-match", "\"v1\"")]).await;
    assert_eq!(relayed.status, StatusCode::NOT_MODIFIED);
    assert_eq!(last_request(&c.origin)["if-none-match"], "\"v1\"");
    // Nothing was stored: the next plain request is a miss, and gets the whole body.
    let full_answer = c.get(&[]).await;
    assert_eq!(
        (full_answer.status, full_answer.text()),
        (StatusCode::OK, "body")
    );
    assert!(!full_answer.is_hit());
    assert_eq!(c.origin.calls(), 2);
    // A forced miss with the condition, now that the entry is stored: the origin's 304
    // confirms the entry, the client gets its 304, and the entry keeps its body.
    let forced = c
        .get(&[("if-none-match", "\"v1\""), ("cache-control", "no-cache")])
        .await;
    assert_eq!(forced.status, StatusCode::NOT_MODIFIED);
    assert!(forced.body.is_empty());
    let after = c.get(&[]).await;
    assert!(after.is_hit());
    assert_eq!((after.status, after.text()), (StatusCode::OK, "body"));
    assert_eq!(c.origin.calls(), 3);
}

#[tokio::test]
async fn set_cookie_answers_are_stored_without_it_only_where_the_policy_asks() {
    let answer = || {
        origin(
            200,
            &[
                ("cache-control", "max-age=60"),
                ("etag", "\"p\""),
                ("set-cookie", "lb=node-3"),
            ],
            "page",
        )
    };
    // The default: not stored at all.
    let c = cache(http(), answer());
    for _ in 0..2 {
        let got = c.get(&[]).await;
        assert_eq!(got.headers["set-cookie"], "lb=node-3");
        assert!(!got.is_hit());
    }
    assert_eq!(c.origin.calls(), 2);

    // Asked for: the filling client gets its cookie, the others the copy without it.
    let c = cache(http().store_without_set_cookie(true), answer());
    let first = c.get(&[]).await;
    assert_eq!(first.headers["set-cookie"], "lb=node-3");
    let second = c.get(&[]).await;
    assert!(second.is_hit());
    assert!(
        second.headers.get("set-cookie").is_none(),
        "{:?}",
        second.headers
    );
    assert_eq!(second.text(), "page");
    assert_eq!(c.origin.calls(), 1);

    // A 304 that sets a cookie: this client's, never the stored copy's.
    c.clock.advance(Duration::from_secs(61));
    c.origin.answer(reply(
        304,
        &[
            ("cache-control", "max-age=60"),
            ("etag", "\"p\""),
            ("set-cookie", "session=alice"),
        ],
        "",
    ));
    let third = c.get(&[]).await;
    assert_eq!(third.headers["set-cookie"], "session=alice");
    assert_eq!(last_request(&c.origin)["if-none-match"], "\"p\"");
    let fourth = c.get(&[]).await;
    assert!(fourth.is_hit());
    assert!(
        fourth.headers.get("set-cookie").is_none(),
        "{:?}",
        fourth.headers
    );
    assert_eq!((fourth.text(), c.origin.calls()), ("page", 2));
}

#[tokio::test]
async fn a_waiting_request_never_gets_the_leader_s_cookie() {
    use crate::SingleFlightLayer;
    let stash = Stash::builder().build().unwrap();
    let policy = http().store_without_set_cookie(true);
    let layer = CacheLayer::new(stash.clone(), Routes::new().get("/{*path}", policy));
    let (tx, rx) = tokio::sync::watch::channel(false);
    let calls = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counted = calls.clone();
    let origin = tower::service_fn(move |_: Request<Empty<Bytes>>| {
        let mut open = rx.clone();
        counted.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        async move {
            // Answers once the test lets it: the second request has joined by then.
            open.wait_for(|o| *o).await.unwrap();
            let mut resp = Response::new(Full::new(Bytes::from_static(b"page")));
            let h = resp.headers_mut();
            h.insert("cache-control", HeaderValue::from_static("max-age=100"));
            h.insert("set-cookie", HeaderValue::from_static("session=leader"));
            Ok::<_, Infallible>(resp)
        }
    });
    let flights = SingleFlightLayer::new(stash);
    let svc = tower::ServiceBuilder::new()
        .layer(layer)
        .layer(flights.clone())
        .service(origin);
    let get = || {
        let req = Request::get("/p").header("host", "a.example");
        send(svc.clone(), req.body(Empty::new()).unwrap())
    };
    let leader = tokio::spawn(get());
    let waiter = tokio::spawn(get());
    // Both are in: the leader at the origin, the other waiting on it.
    tokio::time::timeout(Duration::from_secs(10), async {
        while calls.load(std::sync::atomic::Ordering::SeqCst) == 0 || flights.waiting() == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .unwrap();
    tx.send(true).unwrap();
    let (a, b) = (leader.await.unwrap(), waiter.await.unwrap());
    let cookies: Vec<_> = [&a, &b]
        .iter()
        .map(|g| g.headers.get("set-cookie").is_some())
        .collect();
    assert_eq!(calls.load(std::sync::atomic::Ordering::SeqCst), 1);
    assert_eq!(
        cookies.iter().filter(|c| **c).count(),
        1,
        "only the leader's"
    );
    assert_eq!((&a.body[..], &b.body[..]), (&b"page"[..], &b"page"[..]));
}
