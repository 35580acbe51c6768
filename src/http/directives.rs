//! `Cache-Control`: the directives of responses and requests, and the stale use they allow.

use super::REVALIDATE_WINDOW;
use http::header::{self, HeaderMap};
use std::time::Duration;

/// Whether a shared cache may answer with this stored response once stale, when the origin
/// cannot be reached or fails (RFC 9111 section 4.2.4): not with `must-revalidate`,
/// `proxy-revalidate`, `s-maxage` or `no-cache`.
pub(crate) fn may_serve_stale(headers: &HeaderMap) -> bool {
    !crate::headers::has_directive(
        headers,
        &[
            "must-revalidate",
            "proxy-revalidate",
            "s-maxage",
            "no-cache",
        ],
    )
}

/// The stale windows a stored response grants itself: `stale-while-revalidate=N` and
/// `stale-if-error=N` (RFC 5861), none when it may not be served stale at all.
pub(crate) fn stale_windows(headers: &HeaderMap) -> (Duration, Duration) {
    if !may_serve_stale(headers) {
        return (Duration::ZERO, Duration::ZERO);
    }
    let (mut swr, mut sie) = (Duration::ZERO, Duration::ZERO);
    for (name, value) in directives(headers) {
        let secs = || {
            Duration::from_secs(
                seconds(&value)
                    .unwrap_or(0)
                    .min(REVALIDATE_WINDOW.as_secs()),
            )
        };
        match name.as_str() {
            "stale-while-revalidate" => swr = secs(),
            "stale-if-error" => sie = secs(),
            _ => {}
        }
    }
    (swr, sie)
}

/// The directives of a response's `Cache-Control` that HTTP mode reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ResponseDirectives {
    pub(crate) no_store: bool,
    pub(crate) no_cache: bool,
    pub(crate) private: bool,
    pub(crate) public: bool,
    pub(crate) must_revalidate: bool,
    pub(crate) max_age: Option<u64>,
    pub(crate) s_maxage: Option<u64>,
}

/// The directives of a request's `Cache-Control` (and `Pragma: no-cache`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RequestDirectives {
    /// Store nothing of this exchange.
    pub no_store: bool,
    /// Do not answer from the cache without asking the origin.
    pub no_cache: bool,
    /// Only an entry at most this old (seconds).
    pub max_age: Option<u64>,
    /// Only an entry fresh for at least this long still (seconds).
    pub min_fresh: Option<u64>,
    /// A stale entry will do: up to this long past expiry (`None` inside: any).
    pub max_stale: Option<Option<u64>>,
    /// Answer from the cache or with 504, never from the origin.
    pub only_if_cached: bool,
}

/// `name` or `name=value` items of every `Cache-Control` header value, lowercased names.
fn directives(headers: &HeaderMap) -> impl Iterator<Item = (String, Option<String>)> + '_ {
    headers
        .get_all(header::CACHE_CONTROL)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|item| {
            let item = item.trim();
            if item.is_empty() {
                return None;
            }
            Some(match item.split_once('=') {
                Some((name, value)) => (
                    name.trim().to_ascii_lowercase(),
                    Some(value.trim().trim_matches('"').to_owned()),
                ),
                None => (item.to_ascii_lowercase(), None),
            })
        })
}

/// A delta-seconds value; an invalid one is `None` (the directive is then treated as absent
/// for freshness, or as zero where that is safer: see the callers).
fn seconds(value: &Option<String>) -> Option<u64> {
    let v = value.as_deref()?;
    if v.is_empty() || !v.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    // Overflowing values mean "a very long time" (RFC 9111 section 1.2.2).
    Some(v.parse().unwrap_or(u64::from(u32::MAX)))
}

impl ResponseDirectives {
    pub(crate) fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                // `no-cache="field"` names fields; a cache may treat it as plain no-cache.
                "no-cache" => d.no_cache = true,
                "private" => d.private = true,
                "public" => d.public = true,
                "must-revalidate" | "proxy-revalidate" => d.must_revalidate = true,
                // A duplicate or an invalid value: the most restrictive reading (zero).
                "max-age" => {
                    d.max_age = Some(match (d.max_age, seconds(&value)) {
                        (None, Some(s)) => s,
                        _ => 0,
                    })
                }
                "s-maxage" => {
                    d.s_maxage = Some(match (d.s_maxage, seconds(&value)) {
                        (None, Some(s)) => s,
                        _ => 0,
                    })
                }
                _ => {}
            }
        }
        d
    }
}

impl RequestDirectives {
    /// The request's directives; `Pragma: no-cache` counts as `no-cache` when the request has
    /// no `Cache-Control`.
    pub fn parse(headers: &HeaderMap) -> Self {
        let mut d = Self::default();
        for (name, value) in directives(headers) {
            match name.as_str() {
                "no-store" => d.no_store = true,
                "no-cache" => d.no_cache = true,
                "max-age" => d.max_age = Some(seconds(&value).unwrap_or(0)),
                "min-fresh" => d.min_fresh = Some(seconds(&value).unwrap_or(u64::MAX)),
                "max-stale" => {
                    d.max_stale = Some(value.as_ref().map(|_| seconds(&value).unwrap_or(0)))
                }
                "only-if-cached" => d.only_if_cached = true,
                _ => {}
            }
        }
        if !headers.contains_key(header::CACHE_CONTROL)
            && headers.get_all(header::PRAGMA).iter().any(|v| {
                v.to_str()
                    .is_ok_and(|v| v.to_ascii_lowercase().contains("no-cache"))
            })
        {
            d.no_cache = true;
        }
        d
    }

    /// Whether a request with these directives may be answered by an entry `age` old with
    /// `remaining` freshness (zero when expired, `past` beyond expiry).
    pub(crate) fn accepts(&self, age: Duration, remaining: Duration, past: Duration) -> bool {
        if self.no_cache {
            return false;
        }
        if self.max_age.is_some_and(|m| age.as_secs() > m) {
            return false;
        }
        if let Some(min) = self.min_fresh {
            if remaining.as_secs() < min || (remaining.is_zero() && min > 0) {
                return false;
            }
        }
        if remaining.is_zero() {
            return match self.max_stale {
                None => false,
                Some(None) => true,
                Some(Some(limit)) => past.as_secs() <= limit,
            };
        }
        true
    }
}
