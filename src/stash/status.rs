//! The `Cache-Status` header values a stash answers with, made once when it is built.

use http::{HeaderMap, HeaderValue};
use std::sync::Arc;

/// Which requests may see a `Cache-Status` key, detail and ttl (see
/// [`StashBuilder::cache_status_for`](crate::StashBuilder::cache_status_for)).
pub(crate) type ShownTo = Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>;

/// The `Cache-Status` values that do not change, made once.
pub(crate) struct StatusHeaders {
    pub(crate) name: String,
    pub(crate) show_key: bool,
    pub(crate) show_detail: bool,
    /// The requests shown key and detail; `None`: every request.
    shown_to: Option<ShownTo>,
    pub(crate) hit: HeaderValue,
    pub(crate) stored: HeaderValue,
    pub(crate) miss: HeaderValue,
    pub(crate) bypass: HeaderValue,
    pub(crate) stale: HeaderValue,
    pub(crate) collapsed_hit: HeaderValue,
    pub(crate) collapsed_miss: HeaderValue,
}

impl std::fmt::Debug for StatusHeaders {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusHeaders")
            .field("name", &self.name)
            .field("show_key", &self.show_key)
            .field("show_detail", &self.show_detail)
            .field("shown_to", &self.shown_to.as_ref().map(|_| "a predicate"))
            .finish_non_exhaustive()
    }
}

impl StatusHeaders {
    /// The values of the cache named `name` (an HTTP token, checked by the builder).
    pub(super) fn new(
        name: String,
        show_key: bool,
        show_detail: bool,
        shown_to: Option<ShownTo>,
    ) -> Self {
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
            shown_to,
            name,
        }
    }

    /// Whether a request with `headers` is shown the key, detail and ttl (when any is on).
    pub(crate) fn shown(&self, headers: &HeaderMap) -> bool {
        !self.plain() && self.shown_to.as_ref().is_none_or(|shown| shown(headers))
    }

    /// Whether key or detail is shown to every request, with no predicate to choose.
    pub(super) fn shown_to_all(&self) -> bool {
        !self.plain() && self.shown_to.is_none()
    }

    /// No key, detail or ttl to add: the ready-made values serve as they are.
    pub(crate) fn plain(&self) -> bool {
        !self.show_key && !self.show_detail
    }
}
