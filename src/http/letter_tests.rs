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
