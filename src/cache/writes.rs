//! HTTP mode: a successful unsafe request (POST, PUT, DELETE, PATCH, ...) invalidates what
//! the cache holds for its target URL and for a same-origin `Location` or `Content-Location`
//! of its answer (RFC 9111 section 4.4).

use super::layer::Shared;
use crate::plumbing::base_key;
use http::header::{self, HeaderMap, HeaderValue};
use http::{Method, Request, StatusCode, Uri};
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

/// How long a write's answer waits for its invalidations before going to the client anyway
/// (they go on in the background, and a store that cannot be reached retries them).
const WAIT: Duration = Duration::from_secs(2);

/// Whether `method` may change what the origin holds.
pub(crate) fn is_unsafe(method: &Method) -> bool {
    !matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::TRACE
    )
}

/// What an unsafe request to a URL an HTTP-mode route caches needs to invalidate once its
/// answer is in.
pub(crate) struct Write {
    shared: Arc<Shared>,
    path: String,
    host: Option<HeaderValue>,
}

impl Write {
    /// The write `req` is, when some GET route is in HTTP mode (its target's, or one a
    /// `Location` of the answer may name).
    pub(crate) fn of<B>(shared: &Arc<Shared>, req: &Request<B>) -> Option<Box<Self>> {
        if !shared.routes.has_http() {
            return None;
        }
        let path = req.uri().path();
        let host = crate::plumbing::request_host(req).and_then(|h| HeaderValue::from_str(&h).ok());
        Some(Box::new(Self {
            shared: shared.clone(),
            path: path.to_owned(),
            host,
        }))
    }

    /// After the answer `status` with `headers`: the invalidations to await, when it
    /// succeeded (2xx or 3xx); a failed write changed nothing.
    pub(crate) fn invalidations(
        self,
        status: StatusCode,
        headers: &HeaderMap,
    ) -> Option<Pin<Box<dyn Future<Output = ()> + Send>>> {
        if !(status.is_success() || status.is_redirection()) {
            return None;
        }
        let mut paths = vec![self.path.clone()];
        for name in [header::LOCATION, header::CONTENT_LOCATION] {
            for value in headers.get_all(name) {
                let url = value.to_str().ok();
                if let Some(path) = url.and_then(|u| same_origin(u, self.host.as_ref())) {
                    if !paths.contains(&path) {
                        paths.push(path);
                    }
                }
            }
        }
        let keys: Vec<String> = paths.iter().filter_map(|p| self.key(p)).collect();
        if keys.is_empty() {
            return None;
        }
        let stash = self.shared.stash.clone();
        // Run as a task: an invalidation the wait gives up on still completes.
        let task = tokio::runtime::Handle::try_current()
            .ok()?
            .spawn(async move {
                for key in keys {
                    // A store that cannot be reached retries it in the background.
                    let _ = stash.invalidate_key(&key).await;
                }
            });
        Some(Box::pin(async move {
            let _ = tokio::time::timeout(WAIT, task).await;
        }))
    }

    /// The key that drops every entry of `path` (all its variants), if an HTTP-mode route
    /// caches it.
    fn key(&self, path: &str) -> Option<String> {
        let mut probe = Request::get(path).body(()).ok()?;
        if let Some(host) = &self.host {
            probe.headers_mut().insert(header::HOST, host.clone());
        }
        let (policy, params) = self.shared.routes.find(&Method::GET, probe.uri().path())?;
        if !policy.http {
            return None;
        }
        let params = crate::key::Params::new(&params, None);
        Some(base_key(policy, &params, &probe))
    }
}

/// The path of `url` if it is relative (to the origin) or on `host`; `None` for another
/// origin, whose entries an answer from this one must not drop.
pub(crate) fn same_origin(url: &str, host: Option<&HeaderValue>) -> Option<String> {
    let uri: Uri = url.trim().parse().ok()?;
    match uri.authority() {
        None => Some(uri.path().to_owned()).filter(|p| p.starts_with('/')),
        Some(authority) => {
            // Default ports (80, 443) are dropped: `a.example:80` is `a.example`. The scheme
            // is not compared: behind a TLS terminator, an `https` location is this host's
            // (and dropping an entry never serves a wrong answer; dropping another host's
            // would let one host purge another's).
            let plain = |a: &str| crate::key::normal_host(a.into()).into_owned();
            let host = host?.to_str().ok()?;
            let web = uri
                .scheme_str()
                .is_none_or(|s| s.eq_ignore_ascii_case("http") || s.eq_ignore_ascii_case("https"));
            let on_host = authority.as_str().rsplit('@').next().map(plain) == Some(plain(host));
            (web && on_host).then(|| uri.path().to_owned())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::same_origin;
    use http::HeaderValue;

    #[test]
    fn only_the_same_origin_is_invalidated() {
        let host = HeaderValue::from_static("shop.example");
        let same = |u| same_origin(u, Some(&host));
        assert_eq!(same("/after?x=1").as_deref(), Some("/after"));
        assert_eq!(same("http://shop.example/a").as_deref(), Some("/a"));
        assert_eq!(same("http://SHOP.example/a").as_deref(), Some("/a"));
        assert_eq!(same("http://shop.example:80/a").as_deref(), Some("/a"));
        assert_eq!(same("https://shop.example/a").as_deref(), Some("/a"));
        assert_eq!(same("ftp://shop.example/a"), None);
        assert_eq!(same("http://other.example/a"), None);
        assert_eq!(same("http://shop.example.evil/a"), None);
        assert_eq!(same("relative/path"), None);
        assert_eq!(same_origin("http://shop.example/a", None), None);
    }
}
