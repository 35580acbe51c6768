//! The `Cache-Status` header values a stash answers with, made once when it is built.

use http::HeaderValue;

/// The `Cache-Status` values that do not change, made once.
#[derive(Debug)]
pub(crate) struct StatusHeaders {
    pub(crate) name: String,
    pub(crate) show_key: bool,
    pub(crate) show_detail: bool,
    pub(crate) hit: HeaderValue,
    pub(crate) stored: HeaderValue,
    pub(crate) miss: HeaderValue,
    pub(crate) bypass: HeaderValue,
    pub(crate) stale: HeaderValue,
    pub(crate) collapsed_hit: HeaderValue,
    pub(crate) collapsed_miss: HeaderValue,
}

impl StatusHeaders {
    /// The values of the cache named `name` (an HTTP token, checked by the builder).
    pub(super) fn new(name: String, show_key: bool, show_detail: bool) -> Self {
        let value =
            |s: String| HeaderValue::try_from(s).expect("a token makes a valid header value");
        Self {
            hit: value(format!("{name}; hit")),
            stored: value(format!("{name}; fwd=miss; stored")),
            miss: value(format!("{name}; fwd=miss")),
            bypass: value(format!("{name}; fwd=bypass")),
            stale: value(format!("{name}; hit; stale")),
            collapsed_hit: value(format!("{name}; hit; collapsed")),
            collapsed_miss: value(format!("{name}; fwd=miss; collapsed")),
            show_key,
            show_detail,
            name,
        }
    }

    /// No key, detail or ttl to add: the ready-made values serve as they are.
    pub(crate) fn plain(&self) -> bool {
        !self.show_key && !self.show_detail
    }
}
