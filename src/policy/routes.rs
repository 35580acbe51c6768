use super::compiled::{CompiledPolicy, MethodTable, RouteTable, SessionKey};
use super::{ConfigError, Policy, DEFAULT_MAX_BODY_SIZE, DEFAULT_STATUSES};
use crate::key::template::path_params;
use crate::key::Template;
use http::{HeaderName, Method};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Maps method and path pattern to a [`Policy`], and holds the named policies routes start from.
///
/// Mistakes (a bad pattern, an unknown named policy, a template naming a missing parameter)
/// are reported by [`validate`](Self::validate) and by
/// [`CacheLayer::try_new`](crate::CacheLayer::try_new), each naming its route and field.
#[derive(Debug, Clone, PartialEq)]
pub struct Routes {
    routes: Vec<(Method, String, Policy)>,
    named: BTreeMap<String, Policy>,
}

impl Default for Routes {
    fn default() -> Self {
        Self::new()
    }
}

impl Routes {
    /// No routes and no named policies.
    pub fn new() -> Self {
        Self {
            routes: Vec::new(),
            named: BTreeMap::new(),
        }
    }

    /// Caches GET requests for `path` (HEAD requests are answered from the same entries).
    pub fn get(self, path: impl Into<String>, policy: Policy) -> Self {
        self.route(Method::GET, path, policy)
    }

    /// Caches `method` requests for `path`. Methods other than GET and HEAD need a policy with
    /// [`Policy::unsafe_methods`].
    pub fn route(mut self, method: Method, path: impl Into<String>, policy: Policy) -> Self {
        self.routes.push((method, path.into(), policy));
        self
    }

    /// Caches the unary gRPC method `path` (`/package.Service/Method`): calls are keyed by
    /// the path (or the policy's template) and a digest of the request message, and only
    /// answers with `grpc-status: 0` are stored, trailers included. The policy's defaults
    /// differ for gRPC: status 200 only, no derived `ETag`, and `grpc-accept-encoding` always
    /// keyed. Needs a [`GrpcLayer`](crate::grpc::GrpcLayer) outside the cache (see
    /// [`grpc`](crate::grpc)); without it, calls bypass the cache.
    pub fn grpc(self, path: impl Into<String>, mut policy: Policy) -> Self {
        policy.grpc = true;
        self.route(Method::POST, path, policy)
    }

    /// Each route's method and path pattern.
    pub fn patterns(&self) -> impl Iterator<Item = (&Method, &str)> {
        self.routes.iter().map(|(m, p, _)| (m, p.as_str()))
    }

    /// The paths of the gRPC routes.
    pub(crate) fn grpc_paths(&self) -> impl Iterator<Item = &str> {
        self.routes
            .iter()
            .filter(|(_, _, p)| p.grpc)
            .map(|(_, path, _)| path.as_str())
    }

    /// Defines or replaces the named policy `name`, the base of [`Policy::named`].
    pub fn policy(mut self, name: impl Into<String>, policy: Policy) -> Self {
        self.named.insert(name.into(), policy);
        self
    }

    /// The named policy `name`, if defined.
    pub fn named_policy(&self, name: &str) -> Option<&Policy> {
        self.named.get(name)
    }

    /// Checks the routes without building a layer.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    pub(crate) fn compile(&self) -> Result<RouteTable, ConfigError> {
        let mut errors = Vec::new();
        for (name, p) in &self.named {
            if p.base.is_some() {
                errors.push(format!(
                    "policies.{name}: a named policy cannot be based on another"
                ));
            }
        }
        let mut table = MethodTable::new();
        for (method, path, policy) in &self.routes {
            let place = format!("routes[{method} {path}]");
            let compiled = match self.compile_one(&place, method, path, policy) {
                Ok(c) => c,
                Err(mut e) => {
                    errors.append(&mut e);
                    continue;
                }
            };
            if let Err(e) = table.insert(method, path, Arc::new(compiled), "route") {
                errors.push(format!("{place}: {e}"));
            }
        }
        let templates: Vec<(&str, &crate::key::Template)> = table
            .values()
            .filter_map(|(_, p)| p.key.as_ref().map(|k| (p.route.as_str(), k)))
            .collect();
        for (i, (route_a, a)) in templates.iter().enumerate() {
            for (route_b, b) in &templates[i + 1..] {
                if a.overlaps(b) {
                    errors.push(format!(
                        "routes[{route_b}].key: can render the same keys as routes[{route_a}].key for other requests"
                    ));
                }
            }
        }
        if errors.is_empty() {
            let http = table.values().any(|(m, p)| *m == Method::GET && p.http);
            Ok(RouteTable { table, http })
        } else {
            Err(ConfigError::new(errors))
        }
    }

    fn compile_one(
        &self,
        place: &str,
        method: &Method,
        path: &str,
        policy: &Policy,
    ) -> Result<CompiledPolicy, Vec<String>> {
        let mut errors = Vec::new();
        let resolved = match &policy.base {
            None => policy.clone(),
            Some(name) => match self.named.get(name) {
                Some(base) => policy.over(base),
                None => {
                    let known: Vec<&str> = self.named.keys().map(String::as_str).collect();
                    return Err(vec![format!(
                        "{place}.policy: no named policy `{name}` (defined: {})",
                        known.join(", ")
                    )]);
                }
            },
        };
        let mut params = path_params(path);
        if let Some(fields) = &resolved.fields {
            if !resolved.grpc {
                errors.push(format!(
                    "{place}.fields: message fields are for gRPC routes (Routes::grpc)"
                ));
            }
            for name in &fields.names {
                if params.contains(name) {
                    errors.push(format!("{place}.fields: `{name}` is also a path parameter"));
                }
                params.push(name.clone());
            }
        }
        let sliding = resolved.sliding;
        if let Some(idle) = sliding {
            if idle < Duration::from_millis(1) {
                errors.push(format!("{place}.sliding: must be at least a millisecond"));
            }
            if resolved.stale_while_revalidate.is_some() || resolved.stale_if_error.is_some() {
                errors.push(format!(
                    "{place}.sliding: not combined with stale_while_revalidate or stale_if_error"
                ));
            }
            if resolved.ttl_jitter.is_some() {
                errors.push(format!("{place}.sliding: not combined with ttl_jitter"));
            }
        }
        let lifetime = match (sliding, resolved.max_lifetime) {
            (Some(idle), Some(cap)) => {
                if cap < idle || cap > crate::entry::MAX_TTL {
                    errors.push(format!(
                        "{place}.max_lifetime: must be at least the sliding time ({idle:?}) and at most 10 years"
                    ));
                }
                Some(cap)
            }
            (Some(_), None) => {
                errors.push(format!(
                    "{place}.max_lifetime: required with sliding (the absolute cap)"
                ));
                Some(Duration::ZERO)
            }
            (None, Some(_)) => {
                errors.push(format!("{place}.max_lifetime: only used with sliding"));
                None
            }
            (None, None) => None,
        };
        let http = resolved.http_mode.unwrap_or(false);
        let ttl = match lifetime.or(resolved.ttl) {
            Some(ttl) if ttl > crate::entry::MAX_TTL => {
                errors.push(format!("{place}.ttl: must be at most 10 years"));
                Duration::ZERO
            }
            Some(ttl) if !ttl.is_zero() => ttl,
            Some(_) => {
                errors.push(format!("{place}.ttl: must be greater than zero"));
                Duration::ZERO
            }
            // In HTTP mode the origin decides; a ttl only caps it.
            None if http => crate::entry::MAX_TTL,
            None => {
                errors.push(format!(
                    "{place}.ttl: missing (set one, or use a named policy)"
                ));
                Duration::ZERO
            }
        };
        let unsafe_methods = resolved.unsafe_methods.unwrap_or(false);
        if *method == Method::HEAD {
            errors.push(format!(
                "{place}: HEAD is answered from the GET route's entries; register GET instead"
            ));
        } else if *method != Method::GET && !unsafe_methods && !resolved.grpc {
            errors.push(format!(
                "{place}.unsafe_methods: {method} responses are only cached by a policy that opts in"
            ));
        }
        let key = match resolved.key.as_deref().map(|t| Template::parse(t, &params)) {
            None => None,
            Some(Ok(t)) => Some(t),
            Some(Err(e)) => {
                errors.push(format!("{place}.key: {e}"));
                None
            }
        };
        let mut tags = Vec::new();
        for t in resolved.tags.as_deref().unwrap_or_default() {
            match Template::parse(t, &params) {
                Ok(t) => tags.push(t),
                Err(e) => errors.push(format!("{place}.tags: {e}")),
            }
        }
        let mut keyed = Vec::new();
        if resolved.grpc {
            // The answer is compressed only for clients that accept the encoding; the request
            // digest covers compressed bytes, so its encoding is part of the question.
            keyed.push(HeaderName::from_static("grpc-accept-encoding"));
            keyed.push(HeaderName::from_static("grpc-encoding"));
            if path.contains('{') {
                errors.push(format!(
                    "{place}: a gRPC route is one method's exact path (`/package.Service/Method`), not a pattern"
                ));
            }
        }
        for name in resolved.key_headers.as_deref().unwrap_or_default() {
            match HeaderName::try_from(name.as_str()) {
                Ok(h) if keyed.contains(&h) => {}
                Ok(h) => keyed.push(h),
                Err(_) => errors.push(format!(
                    "{place}.key_headers: `{name}` is not a header name"
                )),
            }
        }
        let mut allowed_headers = None;
        if let Some(names) = &resolved.allow_headers {
            let mut list = Vec::new();
            for name in names {
                match HeaderName::try_from(name.as_str()) {
                    Ok(h) => list.push(h),
                    Err(_) => errors.push(format!(
                        "{place}.allow_headers: `{name}` is not a header name"
                    )),
                }
            }
            allowed_headers = Some(list);
        }
        let mut targeted = Vec::new();
        if let Some(name) = &resolved.targeted_field {
            match HeaderName::try_from(name.as_str()) {
                Ok(h) if http => targeted.push(h),
                Ok(_) => errors.push(format!(
                    "{place}.targeted_field: for HTTP mode (`http_mode`), where the origin's headers decide"
                )),
                Err(_) => errors.push(format!(
                    "{place}.targeted_field: `{name}` is not a header name"
                )),
            }
        }
        if http && resolved.cdn_cache_control.unwrap_or(true) {
            targeted.push(HeaderName::from_static("cdn-cache-control"));
        }
        let hosts = resolved.hosts.as_ref().map(|list| {
            list.iter()
                .map(|h| crate::key::normal_host(h.as_str().into()).into_owned())
                .collect::<Vec<_>>()
        });
        if hosts.is_some() && (http || resolved.grpc) {
            errors.push(format!(
                "{place}.hosts: for application mode (HTTP mode keys `Host` with `key_headers`)"
            ));
        }
        let mut statuses = resolved.statuses.unwrap_or_else(|| {
            if resolved.grpc {
                vec![200]
            } else if http {
                // Any status the origin gives freshness to (never a 304; a 206 apart from the
                // complete response).
                (200..600)
                    .filter(|s| !matches!(s, 304 | 412 | 416))
                    .collect()
            } else {
                DEFAULT_STATUSES.to_vec()
            }
        });
        // HTTP mode stores a 5xx the origin gives freshness to, and a 206 apart (a partial
        // response); application mode neither. Never a 304.
        // Never a 412 or 416 either: they answer one request's own preconditions or range.
        let storable = |s: u16| {
            let top = if http { 600 } else { 500 };
            (200..top).contains(&s) && !matches!(s, 304 | 412 | 416) && (http || s != 206)
        };
        let never = |field: &str, s: u16| {
            format!(
                "{place}.{field}: {s} is never stored (only {})",
                if http {
                    "2xx to 5xx, and not 304, 412 or 416"
                } else {
                    "2xx to 4xx, and not 206, 304, 412 or 416"
                }
            )
        };
        for s in &statuses {
            if !storable(*s) {
                errors.push(never("statuses", *s));
            }
        }
        let status_ttls = resolved.status_ttls.unwrap_or_default();
        for (s, ttl) in &status_ttls {
            if !storable(*s) {
                errors.push(never("status_ttls", *s));
            }
            if ttl.is_zero() || *ttl > crate::entry::MAX_TTL {
                errors.push(format!(
                    "{place}.status_ttls: {s}: the TTL must be above zero and at most 10 years"
                ));
            }
            if !statuses.contains(s) {
                statuses.push(*s);
            }
        }
        let max_body_size = resolved.max_body_size.unwrap_or(DEFAULT_MAX_BODY_SIZE);
        let max_variants = resolved.max_variants.unwrap_or(super::DEFAULT_MAX_VARIANTS);
        if max_variants == 0 {
            errors.push(format!("{place}.max_variants: must be at least 1"));
        }
        let swr = resolved.stale_while_revalidate.unwrap_or_default();
        let sie = resolved.stale_if_error.unwrap_or_default();
        for (field, d) in [("stale_while_revalidate", swr), ("stale_if_error", sie)] {
            if d > crate::entry::MAX_TTL {
                errors.push(format!("{place}.{field}: must be at most 10 years"));
            }
        }
        let beta = resolved.early_refresh.unwrap_or(1.0);
        if !beta.is_finite() || beta < 0.0 {
            errors.push(format!(
                "{place}.early_refresh: {beta} must be a finite number, zero or more"
            ));
        }
        let jitter = resolved.ttl_jitter.unwrap_or_default();
        if !jitter.is_zero() && jitter >= ttl {
            errors.push(format!(
                "{place}.ttl_jitter: {jitter:?} must be shorter than the ttl ({ttl:?})"
            ));
        }
        if resolved.upstream_timeout.is_some_and(|t| t.is_zero()) {
            errors.push(format!(
                "{place}.upstream_timeout: must be greater than zero"
            ));
        }
        let max_tags = resolved.max_tags.unwrap_or(super::DEFAULT_MAX_TAGS);
        if max_tags < tags.len() + 2 {
            errors.push(format!(
                "{place}.max_tags: {max_tags} leaves no room for the policy's {} tags and the two the cache may add",
                tags.len()
            ));
        }
        let cookie_name = |name: &str| {
            !name.is_empty()
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b))
        };
        let ignored_cookies = resolved.ignore_cookies.clone().unwrap_or_default();
        for name in &ignored_cookies {
            if !cookie_name(name) {
                errors.push(format!(
                    "{place}.ignore_cookies: `{name}` is not a cookie name"
                ));
            }
        }
        let session = match &resolved.session {
            None => None,
            Some(super::Session::Cookie(name)) => {
                if !cookie_name(name) {
                    errors.push(format!(
                        "{place}.session_cookie: `{name}` is not a cookie name"
                    ));
                }
                Some(SessionKey::Cookie(name.clone()))
            }
            Some(super::Session::Header(name)) => match HeaderName::try_from(name.as_str()) {
                Ok(h) => Some(SessionKey::Header(h)),
                Err(_) => {
                    errors.push(format!(
                        "{place}.session_header: `{name}` is not a header name"
                    ));
                    None
                }
            },
        };
        if !errors.is_empty() {
            return Err(errors);
        }
        let key_host =
            !http && !resolved.grpc && hosts.is_none() && !keyed.contains(&http::header::HOST);
        let session_is = |h: &HeaderName| matches!(&session, Some(SessionKey::Header(s)) if s == h);
        Ok(CompiledPolicy {
            route: format!("{method} {path}"),
            route_label: metrics::SharedString::from(std::sync::Arc::<str>::from(format!(
                "{method} {path}"
            ))),
            counts: Default::default(),
            policy_label: metrics::SharedString::from(std::sync::Arc::<str>::from(
                policy.base.as_deref().unwrap_or("none"),
            )),
            ttl,
            vary_authorization: keyed.contains(&http::header::AUTHORIZATION)
                || session_is(&http::header::AUTHORIZATION),
            vary_cookie: keyed.contains(&http::header::COOKIE)
                || session_is(&http::header::COOKIE)
                || matches!(session, Some(SessionKey::Cookie(_))),
            key,
            query: resolved.query.unwrap_or_default(),
            // HTTP mode invalidates by URL, and a URL has a host; application mode invalidates
            // by key template, which covers every host.
            host_keyed: http && keyed.contains(&http::header::HOST),
            key_headers: keyed
                .iter()
                .filter(|h| !(http && **h == http::header::HOST))
                .cloned()
                .collect(),
            keyed_headers: keyed,
            statuses,
            status_ttls,
            max_body_size,
            tags,
            // A shared cache does not invent validators the origin did not give.
            etag: resolved.etag.unwrap_or(!resolved.grpc && !http),
            stale_while_revalidate: swr,
            stale_if_error: sie,
            // Sliding entries do not expire while used; in HTTP mode the origin's Age and
            // clock would skew the recompute time.
            beta: if sliding.is_some() || (http && resolved.early_refresh.is_none()) {
                0.0
            } else {
                beta
            },
            ttl_jitter: jitter,
            upstream_timeout: resolved.upstream_timeout,
            fields: resolved.fields,
            grpc: resolved.grpc,
            sliding,
            session,
            ignored_cookies,
            http,
            request_directives: resolved.request_directives.unwrap_or(http),
            max_variants,
            allowed_headers,
            hints: resolved.hints.unwrap_or(!http),
            without_set_cookie: resolved.without_set_cookie.unwrap_or(false),
            targeted,
            key_host,
            hosts,
            max_tags,
        })
    }
}

#[cfg(test)]
#[path = "routes_tests.rs"]
mod tests;
