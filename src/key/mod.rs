//! Cache keys: templates such as `user:{id}`, the default `METHOD path?query` key, escaping and
//! hashing.
//!
//! A key has the form `{namespace}:v{format}:{body}`, where the body is one of:
//!
//! - a rendered template (`user:42`), when the route's policy names one;
//! - `GET /users/42`, the method and the raw path, when it does not;
//! - `#` and 32 hex digits, a 128-bit BLAKE3 hash of the whole key, when the key is longer than
//!   the stash's `max_key_len`. The whole key is stored in the entry and compared on every read,
//!   so even a hash collision can only cause a miss.
//!
//! followed by the query (`?a=1&b=2`, sorted by name, duplicates kept in their order) and the
//! request headers the policy varies on (`|accept-language=en`). Credentials (`authorization`,
//! `cookie`, `proxy-authorization`) are keyed by a 128-bit hash of their values, so that no
//! secret appears in a key, a log line, a `Cache-Status` header or Redis.
//!
//! Every piece that comes from the request is escaped: each byte outside `A-Z a-z 0-9 - . _ ~`
//! becomes `%XX`. Template literals may only use those characters and `:` and `/`, so the
//! separators (`space ? & = | # ,` and `%` itself) can only be produced by the key builder.
//! A template parameter must fill a whole segment between `:` or `/` (`user:{id}:posts`, not
//! `item-{id}`), and two routes' templates that could render the same key are refused: no
//! input can make two different requests share a key, or forge another route's key.
//!
//! Path parameters are percent-decoded before they are escaped, as axum's `Path` extractor
//! decodes them: `/users/%31` and `/users/1` share the key `user:1`. Query strings and default
//! keys use the raw bytes, so two requests share a key only if a handler cannot tell them apart.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_stash::{CacheLayer, Policy, Routes, Stash};
//!
//! let stash = Stash::builder().namespace("shop").build().unwrap();
//! let routes = Routes::new()
//!     .get("/users/{id}", Policy::ttl(Duration::from_secs(3600)).key("user:{id}"))
//!     .get("/search", Policy::ttl(Duration::from_secs(60)).key_query(["q", "page"]));
//! let layer = CacheLayer::new(stash, routes);
//!
//! let req = http::Request::get("/users/%34%32").body(()).unwrap();
//! assert_eq!(layer.key_for(&req).unwrap(), "shop:v1:user:42");
//!
//! let req = http::Request::get("/search?page=2&utm=x&q=a%20b").body(()).unwrap();
//! assert_eq!(layer.key_for(&req).unwrap(), "shop:v1:GET /search?page=2&q=a%2520b");
//!
//! // A separator in a value cannot reach the key unescaped.
//! let req = http::Request::get("/users/1:admin").body(()).unwrap();
//! assert_eq!(layer.key_for(&req).unwrap(), "shop:v1:user:1%3Aadmin");
//! ```

pub(crate) mod fields;
pub(crate) mod template;

pub(crate) use fields::{FieldValues, MessageFields};

pub(crate) use template::Template;

/// The values templates are filled from: the path parameters, then the fields of a gRPC
/// request message.
pub(crate) struct Params<'a, 'k, 'v> {
    pub(crate) path: &'a matchit::Params<'k, 'v>,
    pub(crate) fields: Option<&'a FieldValues>,
}

impl<'a, 'k, 'v: 'a> Params<'a, 'k, 'v> {
    pub(crate) fn new(path: &'a matchit::Params<'k, 'v>, fields: Option<&'a FieldValues>) -> Self {
        Self { path, fields }
    }

    /// The raw (percent-encoded) value of `name`.
    pub(crate) fn get(&self, name: &str) -> Option<&'a str> {
        self.path
            .get(name)
            .or_else(|| self.fields.and_then(|f| f.get(name)))
    }
}

use http::{HeaderMap, HeaderName, Method};
use percent_encoding::{percent_decode_str, AsciiSet, NON_ALPHANUMERIC};
use std::fmt::Write as _;

/// The version of the key format, part of every key: a change of format never reads old keys.
pub(crate) const KEY_FORMAT: u32 = 1;

/// Bytes kept as they are; everything else is `%XX`.
const COMPONENT: &AsciiSet = &NON_ALPHANUMERIC
    .remove(b'-')
    .remove(b'.')
    .remove(b'_')
    .remove(b'~');

/// As [`COMPONENT`], but `/` is kept: for raw paths, whose `/` are real separators.
const PATH: &AsciiSet = &COMPONENT.remove(b'/');

/// A byte a key holds as it is (RFC 3986's unreserved characters).
fn unreserved(b: u8) -> bool {
    b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')
}

/// A host as keys and origins compare it: trimmed, lowercase, without a default port (`:80`,
/// `:443`). Borrowed when it already is.
pub(crate) fn normal_host(host: std::borrow::Cow<'_, str>) -> std::borrow::Cow<'_, str> {
    use std::borrow::Cow;
    let trimmed = host.trim();
    let plain = trimmed
        .strip_suffix(":80")
        .or_else(|| trimmed.strip_suffix(":443"))
        .unwrap_or(trimmed);
    if plain.len() == host.len() && !plain.bytes().any(|b| b.is_ascii_uppercase()) {
        return host;
    }
    Cow::Owned(plain.to_ascii_lowercase())
}

/// Appends `bytes`, escaped, to `out`.
pub(crate) fn escape_into(out: &mut String, bytes: &[u8]) {
    // Most values (ids, slugs) need no escaping: copy them in one go.
    if bytes.iter().copied().all(unreserved) {
        if let Ok(plain) = std::str::from_utf8(bytes) {
            out.push_str(plain);
            return;
        }
    }
    out.extend(percent_encoding::percent_encode(bytes, COMPONENT));
}

pub(crate) fn escape_path_into(out: &mut String, path: &str) {
    out.extend(percent_encoding::utf8_percent_encode(path, PATH));
}

/// Appends a path parameter, percent-decoded (as axum's `Path` does) then escaped.
pub(crate) fn escape_param_into(out: &mut String, raw: &str) {
    // Most parameters (ids, slugs) have nothing to decode nor escape.
    if raw.bytes().all(unreserved) {
        out.push_str(raw);
        return;
    }
    let decoded: std::borrow::Cow<'_, [u8]> = percent_decode_str(raw).into();
    escape_into(out, &decoded);
}

/// Which query parameters are part of the key.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) enum QueryKey {
    /// Every parameter (the default).
    #[default]
    All,
    /// Only the named parameters; the others do not change the response.
    Only(Vec<String>),
    /// None: the query never changes the response.
    Ignore,
}

/// The name of a query parameter as a handler's form decoder sees it (`+` is a space).
fn decoded_name(raw: &str) -> Vec<u8> {
    let plus: std::borrow::Cow<'_, str> = if raw.contains('+') {
        raw.replace('+', " ").into()
    } else {
        raw.into()
    };
    percent_decode_str(&plus).collect()
}

/// Whether the key holds the query parameter `pair` (`name=value`, or `name`).
fn is_keyed(pair: &str, which: &QueryKey) -> bool {
    match which {
        QueryKey::All => true,
        QueryKey::Ignore => false,
        QueryKey::Only(names) => {
            let name = decoded_name(pair.split_once('=').map_or(pair, |(k, _)| k));
            names.iter().any(|n| n.as_bytes() == name.as_slice())
        }
    }
}

/// The parameters of `query`, as they came.
fn params(query: Option<&str>) -> impl Iterator<Item = &str> {
    query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
}

/// The parameters of `query` the key holds, as they came (for a refresh that may be stored).
pub(crate) fn keyed_query(query: Option<&str>, which: &QueryKey) -> String {
    params(query)
        .filter(|p| is_keyed(p, which))
        .collect::<Vec<_>>()
        .join("&")
}

/// Whether `query` has parameters the key leaves out: a response to it may reflect them, so
/// it is served from the cache but never fills it.
pub(crate) fn has_unkeyed_query(query: Option<&str>, which: &QueryKey) -> bool {
    params(query).any(|p| !is_keyed(p, which))
}

/// Appends `?k=v&..` for the keyed parameters of `query`, sorted by raw name with duplicates in
/// their order, or nothing when no parameter is keyed.
pub(crate) fn push_query(out: &mut String, query: Option<&str>, which: &QueryKey) {
    let Some(query) = query.filter(|q| !q.is_empty()) else {
        return;
    };
    if matches!(which, QueryKey::Ignore) {
        return;
    }
    let mut pairs: Vec<(&str, Option<&str>)> = params(Some(query))
        .filter(|p| is_keyed(p, which))
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (k, Some(v)),
            None => (p, None),
        })
        .collect();
    if pairs.is_empty() {
        return;
    }
    // A stable sort: duplicates keep their order (`a=2&a=1` differs from `a=1&a=2`).
    pairs.sort_by(|a, b| a.0.cmp(b.0));
    out.push('?');
    for (i, (k, v)) in pairs.iter().enumerate() {
        if i > 0 {
            out.push('&');
        }
        escape_into(out, k.as_bytes());
        if let Some(v) = v {
            out.push('=');
            escape_into(out, v.as_bytes());
        }
    }
}

/// Headers whose values are secrets: keyed by a hash, so that they never appear in keys,
/// logs, `Cache-Status` or Redis.
fn is_credential(name: &HeaderName) -> bool {
    name == http::header::AUTHORIZATION
        || name == http::header::COOKIE
        || name == http::header::PROXY_AUTHORIZATION
}

/// Appends `|name=v1,v2` for each varied header (`|name` alone when absent); credentials as
/// `|name=#` and a 128-bit hash of their values.
pub(crate) fn push_headers(out: &mut String, headers: &HeaderMap, names: &[HeaderName]) {
    for name in names {
        out.push('|');
        out.push_str(name.as_str());
        let mut values = headers.get_all(name).iter().peekable();
        if values.peek().is_none() {
            continue;
        }
        out.push('=');
        if is_credential(name) {
            let mut hasher = blake3::Hasher::new();
            for v in values {
                hasher.update(&(v.len() as u64).to_le_bytes());
                hasher.update(v.as_bytes());
            }
            out.push('#');
            push_hex(out, &hasher.finalize().as_bytes()[..16]);
            continue;
        }
        for (i, v) in values.enumerate() {
            if i > 0 {
                out.push(',');
            }
            escape_into(out, v.as_bytes());
        }
    }
}

/// Appends `bytes` as lowercase hex.
pub(crate) fn push_hex(out: &mut String, bytes: &[u8]) {
    for b in bytes {
        let _ = write!(out, "{b:02x}");
    }
}

/// Appends the default key body: the method and the raw path.
pub(crate) fn push_default(out: &mut String, method: &Method, path: &str) {
    escape_into(out, method.as_str().as_bytes());
    out.push(' ');
    escape_path_into(out, path);
}

/// The prefix every key of a namespace starts with: `{namespace}:v1:`.
pub(crate) fn prefix(namespace: &str) -> String {
    format!("{namespace}:v{KEY_FORMAT}:")
}

/// The key under which an entry is stored: the full key when it is short enough, or the prefix,
/// `#` and a 128-bit BLAKE3 hash of the full key.
pub(crate) fn storage_key(full: &str, prefix_len: usize, max_len: usize) -> Option<String> {
    if full.len() <= max_len {
        return None;
    }
    let hash = blake3::hash(full.as_bytes());
    let mut out = String::with_capacity(prefix_len + 33);
    out.push_str(&full[..prefix_len]);
    out.push('#');
    push_hex(&mut out, &hash.as_bytes()[..16]);
    Some(out)
}

/// The name a tag is indexed under: the tag itself, or past `max_len` bytes `#` and 128 bits
/// of its BLAKE3 hash, as long keys are, so that no tag (a URL's, a long parameter's) makes
/// a long index key in a store.
pub(crate) fn tag_name(tag: &str, max_len: usize) -> std::borrow::Cow<'_, str> {
    if tag.len() <= max_len {
        return tag.into();
    }
    let mut out = String::with_capacity(33);
    out.push('#');
    push_hex(&mut out, &blake3::hash(tag.as_bytes()).as_bytes()[..16]);
    out.into()
}

/// Is `s` usable as a literal in a key template or a namespace?
pub(crate) fn is_literal(s: &str, allow_colon: bool) -> bool {
    s.bytes().all(|b| {
        b.is_ascii_alphanumeric()
            || matches!(b, b'-' | b'.' | b'_' | b'~' | b'/')
            || (allow_colon && b == b':')
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn q(query: &str, which: &QueryKey) -> String {
        let mut s = String::new();
        push_query(&mut s, Some(query), which);
        s
    }

    #[test]
    fn query_is_sorted_and_keeps_duplicates_in_order() {
        assert_eq!(q("b=2&a=2&a=1", &QueryKey::All), "?a=2&a=1&b=2");
        assert_ne!(q("a=1&a=2", &QueryKey::All), q("a=2&a=1", &QueryKey::All));
        assert_eq!(q("a=1&b=2", &QueryKey::All), q("b=2&a=1", &QueryKey::All));
    }

    #[test]
    fn query_separators_are_escaped() {
        // `a=1&b=2` and `a=1%26b%3D2` are different requests.
        assert_ne!(
            q("a=1&b=2", &QueryKey::All),
            q("a=1%26b%3D2", &QueryKey::All)
        );
        // A flag and an empty value differ.
        assert_ne!(q("a", &QueryKey::All), q("a=", &QueryKey::All));
        assert_eq!(q("", &QueryKey::All), "");
        assert_eq!(q("&&", &QueryKey::All), "");
    }

    #[test]
    fn only_matches_decoded_names() {
        let only = QueryKey::Only(vec!["page".into(), "sort by".into()]);
        assert_eq!(q("pa%67e=2&x=1", &only), "?pa%2567e=2");
        assert_eq!(q("sort+by=n", &only), "?sort%2Bby=n");
        assert_eq!(q("x=1", &only), "");
        assert_eq!(q("page=1", &QueryKey::Ignore), "");
    }

    #[test]
    fn headers_distinguish_absent_empty_and_lists() {
        let mut h = HeaderMap::new();
        let name = HeaderName::from_static("accept-language");
        let mut absent = String::new();
        push_headers(&mut absent, &h, std::slice::from_ref(&name));
        h.insert(&name, "".parse().unwrap());
        let mut empty = String::new();
        push_headers(&mut empty, &h, std::slice::from_ref(&name));
        h.insert(&name, "en,fr".parse().unwrap());
        let mut one = String::new();
        push_headers(&mut one, &h, std::slice::from_ref(&name));
        h.insert(&name, "en".parse().unwrap());
        h.append(&name, "fr".parse().unwrap());
        let mut two = String::new();
        push_headers(&mut two, &h, std::slice::from_ref(&name));
        let all = [absent, empty, one, two];
        for (i, a) in all.iter().enumerate() {
            for b in &all[i + 1..] {
                assert_ne!(a, b);
            }
        }
    }

    #[test]
    fn credentials_are_keyed_by_hash() {
        let mut h = HeaderMap::new();
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer secret-token".parse().unwrap(),
        );
        let mut k = String::new();
        push_headers(&mut k, &h, &[http::header::AUTHORIZATION]);
        assert!(!k.contains("secret"), "{k}");
        assert_eq!(k.len(), "|authorization=#".len() + 32);
        h.insert(
            http::header::AUTHORIZATION,
            "Bearer other-token".parse().unwrap(),
        );
        let mut other = String::new();
        push_headers(&mut other, &h, &[http::header::AUTHORIZATION]);
        assert_ne!(k, other);
    }

    #[test]
    fn escaping_leaves_no_separator_or_glob() {
        let mut s = String::new();
        escape_into(&mut s, b"a:b*c?d[e]\0\r\n |&=#,%/ \xff");
        assert!(s
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~%".contains(&b)));
        let mut p = String::new();
        escape_param_into(&mut p, "%2F%00x");
        assert_eq!(p, "%2F%00x");
        let mut p = String::new();
        escape_param_into(&mut p, "%31");
        assert_eq!(p, "1");
    }

    #[test]
    fn long_keys_are_hashed_with_128_bits() {
        let full = format!("ns:v1:{}", "x".repeat(300));
        let k = storage_key(&full, 6, 250).unwrap();
        assert_eq!(k.len(), 6 + 1 + 32);
        assert!(k.starts_with("ns:v1:#"));
        assert!(storage_key("ns:v1:short", 6, 250).is_none());
        let other = format!("ns:v1:{}y", "x".repeat(299));
        assert_ne!(storage_key(&other, 6, 250).unwrap(), k);
    }
}
