//! Small pieces of HTTP: `Cache-Control` directives, entity-tag comparison, hop-by-hop headers.

use http::header::{self, HeaderMap, HeaderName, HeaderValue};

/// The `Cache-Status` header (RFC 9211).
pub(crate) const CACHE_STATUS: HeaderName = HeaderName::from_static("cache-status");

/// The response header that opts a response out of the cache: see
/// [`CacheHint::SKIP_HEADER`](crate::CacheHint::SKIP_HEADER).
pub(crate) const HINT_SKIP: HeaderName = HeaderName::from_static("x-stash-skip");
/// The response header that sets a response's TTL, in whole seconds.
pub(crate) const HINT_TTL: HeaderName = HeaderName::from_static("x-stash-ttl");
/// The response header that adds tags to a response, separated by commas.
pub(crate) const HINT_TAGS: HeaderName = HeaderName::from_static("x-stash-tags");

/// Does a `Cache-Control` header in `headers` carry any of `directives` (lowercase)? A value
/// that is not visible ASCII counts as carrying them: the check fails closed.
pub(crate) fn has_directive(headers: &HeaderMap, directives: &[&str]) -> bool {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .any(|v| match v.to_str() {
            Err(_) => true,
            Ok(v) => v
                .split(',')
                .map(|d| d.split('=').next().unwrap_or_default().trim())
                .any(|d| directives.iter().any(|want| d.eq_ignore_ascii_case(want))),
        })
}

/// Is `If-None-Match` the wildcard `*` (any current representation matches)?
pub(crate) fn is_wildcard(if_none_match: &HeaderValue) -> bool {
    if_none_match.as_bytes().trim_ascii() == b"*"
}

/// The opaque tags of an `If-None-Match` list, with their `W/` prefix dropped (weak comparison);
/// `None` for `*`.
fn tags(list: &[u8]) -> Option<Vec<&[u8]>> {
    let mut out = Vec::new();
    let mut rest = list;
    loop {
        while let [b' ' | b'\t' | b',', tail @ ..] = rest {
            rest = tail;
        }
        match rest {
            [] => return Some(out),
            [b'*', ..] => return None,
            [b'W', b'/', tail @ ..] => rest = tail,
            _ => {}
        }
        let [b'"', tail @ ..] = rest else {
            return Some(out); // malformed: stop at what was read
        };
        let Some(end) = tail.iter().position(|&b| b == b'"') else {
            return Some(out);
        };
        out.push(&tail[..end]);
        rest = &tail[end + 1..];
    }
}

/// Does `if_none_match` match `etag`, by the weak comparison of RFC 9110 section 13.1.2?
pub(crate) fn none_match(if_none_match: &HeaderValue, etag: &HeaderValue) -> bool {
    let Some(mine) = tags(etag.as_bytes()).and_then(|t| t.first().copied()) else {
        return false;
    };
    match tags(if_none_match.as_bytes()) {
        None => true,
        Some(theirs) => theirs.contains(&mine),
    }
}

/// A strong entity tag derived from a body: 128 bits of its BLAKE3 hash.
pub(crate) fn derived_etag(body: &[u8]) -> HeaderValue {
    let hash = blake3::hash(body);
    let mut s = String::with_capacity(34);
    s.push('"');
    crate::key::push_hex(&mut s, &hash.as_bytes()[..16]);
    s.push('"');
    HeaderValue::try_from(s).expect("hex is a valid header value")
}

/// Removes the hop-by-hop headers (RFC 9110 section 7.6.1), and those `Connection` names:
/// they concern one connection, and are neither stored nor forwarded by a proxy.
pub fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|n| HeaderName::try_from(n.trim()).ok())
        .collect();
    for name in named {
        headers.remove(name);
    }
    for name in [
        header::CONNECTION,
        header::TRANSFER_ENCODING,
        header::TE,
        header::TRAILER,
        header::UPGRADE,
        header::PROXY_AUTHENTICATE,
        header::PROXY_AUTHORIZATION,
        HeaderName::from_static("keep-alive"),
        HeaderName::from_static("proxy-connection"),
    ] {
        headers.remove(name);
    }
}

/// The declared `Content-Length`, if it is a number.
pub(crate) fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
}

/// Headers that commonly change a response (the host, scheme, port, path prefix or method an
/// app or framework believes it serves) without being part of the URL: requests carrying one
/// bypass the cache unless the policy keys on it. A list of names always misses one: a
/// policy's allowlist ([`Policy::allow_headers`](crate::Policy::allow_headers)) closes the rest.
pub(crate) const REWRITE_HEADERS: [&str; 13] = [
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
];

pub(crate) fn is_rewrite_header(name: &http::HeaderName) -> bool {
    // `Forwarded` is a standard name (an enum compare); the others start with `x-`, which
    // most headers of a request do not.
    name == header::FORWARDED || {
        let s = name.as_str();
        s.starts_with("x-") && REWRITE_HEADERS.contains(&s)
    }
}

/// Whether a request header always passes a policy's allowlist: `Host`, those the cache reads
/// itself (directives, conditions, ranges), credentials (which have rules of their own) and
/// those of the connection.
pub(crate) fn always_allowed(name: &http::HeaderName) -> bool {
    [
        header::HOST,
        header::CACHE_CONTROL,
        header::PRAGMA,
        header::IF_NONE_MATCH,
        header::IF_MODIFIED_SINCE,
        header::IF_MATCH,
        header::IF_UNMODIFIED_SINCE,
        header::IF_RANGE,
        header::RANGE,
        header::AUTHORIZATION,
        header::COOKIE,
        header::CONNECTION,
        header::TE,
        header::CONTENT_LENGTH,
        header::TRANSFER_ENCODING,
    ]
    .contains(name)
        || name.as_str() == "keep-alive"
}

/// Removes from `headers` every one `unlisted` says is outside an allowlist.
pub(crate) fn retain_listed(headers: &mut HeaderMap, unlisted: impl Fn(&HeaderName) -> bool) {
    let drop: Vec<HeaderName> = headers.keys().filter(|n| unlisted(n)).cloned().collect();
    for name in drop {
        headers.remove(name);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(s: &'static str) -> HeaderValue {
        HeaderValue::from_static(s)
    }

    #[test]
    fn etag_weak_comparison() {
        assert!(none_match(&v("\"a\""), &v("\"a\"")));
        assert!(none_match(&v("W/\"a\""), &v("\"a\"")));
        assert!(none_match(&v("\"x\", W/\"a\""), &v("W/\"a\"")));
        assert!(none_match(&v("*"), &v("\"a\"")));
        assert!(!none_match(&v("\"b\""), &v("\"a\"")));
        assert!(!none_match(&v("\"a,b\""), &v("\"a\"")));
        assert!(none_match(&v("\"a,b\""), &v("\"a,b\"")));
        assert!(!none_match(&v("garbage"), &v("\"a\"")));
        assert!(!none_match(&v("\"a\""), &v("no-quotes")));
    }

    #[test]
    fn cache_control_directives() {
        let mut h = HeaderMap::new();
        h.insert(header::CACHE_CONTROL, v("max-age=60, Private=\"x\""));
        assert!(has_directive(&h, &["private"]));
        assert!(!has_directive(&h, &["no-store"]));
        h.append(header::CACHE_CONTROL, v("no-store"));
        assert!(has_directive(&h, &["no-store"]));
        let mut odd = HeaderMap::new();
        odd.insert(
            header::CACHE_CONTROL,
            HeaderValue::from_bytes(b"no-store, x=\"\xc3\xa9\"").unwrap(),
        );
        assert!(has_directive(&odd, &["no-store"]));
    }

    #[test]
    fn hop_by_hop_headers_are_removed() {
        let mut h = HeaderMap::new();
        h.insert(header::CONNECTION, v("x-private-hop"));
        h.insert("x-private-hop", v("1"));
        h.insert(header::TRANSFER_ENCODING, v("chunked"));
        h.insert(header::CONTENT_TYPE, v("text/plain"));
        strip_hop_by_hop(&mut h);
        assert_eq!(h.len(), 1);
        assert!(h.contains_key(header::CONTENT_TYPE));
    }
}
