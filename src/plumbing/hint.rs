use http::response::Parts;
use http::{HeaderMap, HeaderName};
use std::time::Duration;

/// Lets a handler control how its own response is cached, through a response extension.
///
/// Insert it into the response's extensions (with axum, return `Extension(hint)` as a response
/// part), or set the equivalent headers; both are read and removed before the client sees the
/// response:
///
/// | extension                      | header                    |
/// |--------------------------------|---------------------------|
/// | [`CacheHint::skip`]            | `x-stash-skip: 1`         |
/// | [`CacheHint::with_ttl`]        | `x-stash-ttl: 30` (secs)  |
/// | [`CacheHint::tags`]            | `x-stash-tags: a, b`      |
///
/// A hint can shorten or lengthen the route's TTL and add tags, but never makes a response
/// stored that the rules forbid (a `Set-Cookie`, `private`, an uncacheable status). An
/// unreadable `x-stash-ttl` stores nothing.
///
/// # Example
///
/// ```
/// use axum::{response::IntoResponse, Extension};
/// use std::time::Duration;
/// use tower_stash::CacheHint;
///
/// async fn product() -> impl IntoResponse {
///     let hint = CacheHint::new()
///         .with_ttl(Duration::from_secs(30))
///         .tags(["electronics", "apple"]);
///     (Extension(hint), "iPhone 15")
/// }
///
/// async fn draft() -> impl IntoResponse {
///     (Extension(CacheHint::skip()), "not for the cache")
/// }
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CacheHint {
    pub(crate) skip: bool,
    pub(crate) ttl: Option<Duration>,
    pub(crate) tags: Vec<String>,
    pub(crate) invalid: bool,
}

impl CacheHint {
    /// The header that opts a response out of the cache.
    pub const SKIP_HEADER: HeaderName = crate::headers::HINT_SKIP;
    /// The header that sets a response's TTL, in whole seconds.
    pub const TTL_HEADER: HeaderName = crate::headers::HINT_TTL;
    /// The header that adds tags to a response, separated by commas.
    pub const TAGS_HEADER: HeaderName = crate::headers::HINT_TAGS;

    /// A hint that changes nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A hint that keeps this response out of the cache.
    pub fn skip() -> Self {
        Self {
            skip: true,
            ..Self::default()
        }
    }

    /// Stores this response for `ttl` instead of the route's TTL (zero: not stored).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Renamed [`with_ttl`](Self::with_ttl).
    #[deprecated(note = "renamed `with_ttl`")]
    pub fn time_to_live(self, ttl: Duration) -> Self {
        self.with_ttl(ttl)
    }

    /// Adds a tag.
    pub fn tag(mut self, tag: impl Into<String>) -> Self {
        self.tags.push(tag.into());
        self
    }

    /// Adds tags.
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Takes the hint out of a response: its extension and its headers, merged.
    pub(crate) fn take(parts: &mut Parts) -> Self {
        let hint = Self::peek(&parts.headers, &parts.extensions);
        parts.extensions.remove::<CacheHint>();
        for name in [Self::SKIP_HEADER, Self::TTL_HEADER, Self::TAGS_HEADER] {
            parts.headers.remove(name);
        }
        hint
    }

    /// The hint of a response, left in it (a layer below the one that takes it).
    pub(crate) fn peek(headers: &HeaderMap, extensions: &http::Extensions) -> Self {
        let mut hint = extensions.get::<CacheHint>().cloned().unwrap_or_default();
        hint.merge_headers(headers);
        hint
    }

    fn merge_headers(&mut self, headers: &HeaderMap) {
        if headers.contains_key(Self::SKIP_HEADER) {
            self.skip = true;
        }
        if let Some(v) = headers.get(Self::TTL_HEADER) {
            match v.to_str().ok().and_then(|s| s.trim().parse::<u64>().ok()) {
                Some(secs) if self.ttl.is_none() => {
                    self.ttl = Some(Duration::from_secs(secs).min(crate::entry::MAX_TTL))
                }
                Some(_) => {}
                None => self.invalid = true,
            }
        }
        for v in headers.get_all(Self::TAGS_HEADER) {
            match v.to_str() {
                Ok(s) => self.tags.extend(
                    s.split(',')
                        .map(str::trim)
                        .filter(|t| !t.is_empty())
                        .map(String::from),
                ),
                Err(_) => self.invalid = true,
            }
        }
    }
}
