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
