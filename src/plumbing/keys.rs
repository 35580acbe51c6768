//! The keys of a request under a policy: the full key, the key it is stored under, and the
//! base key that invalidation takes.

use crate::key;
use crate::policy::CompiledPolicy;
use crate::Stash;
use http::{HeaderValue, Method, Request};
use std::borrow::Cow;

/// The key of `req` before its query and headers: what [`Stash::invalidate_key`] takes (after
/// the namespace), which also invalidates every variant.
pub(crate) fn base_key<B>(
    policy: &CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) -> String {
    base_key_parts(policy, params, req).0
}

/// [`base_key`], and the length of its route part (the template or `METHOD path`, without
/// the host an HTTP-mode policy keys).
pub(crate) fn base_key_parts<B>(
    policy: &CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) -> (String, usize) {
    let mut k = String::new();
    let route = push_base(&mut k, policy, params, req);
    (k, route)
}

/// Appends the template, filled from the path parameters, or the default `METHOD path`; and
/// the host, when the policy keys it (the `Host` header, or an HTTP/2 request's authority).
/// Returns how long the route part is.
fn push_base<B>(
    k: &mut String,
    policy: &CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) -> usize {
    let start = k.len();
    push_route(k, policy, params, req);
    let route = k.len() - start;
    if policy.host_keyed {
        push_keyed_headers(k, req, std::slice::from_ref(&http::header::HOST));
    }
    route
}

/// Appends the keyed request headers; `Host` from an HTTP/2 request's authority when the
/// request has no `Host` header.
fn push_keyed_headers<B>(k: &mut String, req: &Request<B>, names: &[http::HeaderName]) {
    for name in names {
        if name == http::header::HOST {
            k.push_str("|host");
            if let Some(host) = request_host(req) {
                k.push('=');
                key::escape_into(k, host.as_bytes());
            }
        } else {
            key::push_headers(k, req.headers(), std::slice::from_ref(name));
        }
    }
}

/// The host a request is for, as keys hold it ([`key::normal_host`]): its `Host` header, or
/// else (HTTP/2) its URI's authority without user information. Several `Host` headers give
/// all of them, comma-separated (such a key matches no other).
pub(crate) fn request_host<B>(req: &Request<B>) -> Option<Cow<'_, str>> {
    let mut values = req.headers().get_all(http::header::HOST).iter();
    fn lossy(v: &HeaderValue) -> Cow<'_, str> {
        key::normal_host(String::from_utf8_lossy(v.as_bytes()))
    }
    match (values.next(), values.next()) {
        (Some(one), None) => Some(lossy(one)),
        (Some(first), Some(second)) => {
            let all: Vec<Cow<'_, str>> = [first, second]
                .into_iter()
                .chain(values)
                .map(lossy)
                .collect();
            Some(all.join(",").into())
        }
        (None, _) => {
            let authority = req.uri().authority()?.as_str();
            Some(key::normal_host(authority.rsplit('@').next()?.into()))
        }
    }
}

fn push_route<B>(
    k: &mut String,
    policy: &CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) {
    match &policy.key {
        Some(t) => t.render_into(k, |name| params.get(name)),
        None => {
            let method = if req.method() == Method::HEAD {
                &Method::GET
            } else {
                req.method()
            };
            key::push_default(k, method, req.uri().path());
        }
    }
}

/// The full key of `req` under `policy`, and the hashed key it is stored under when it is
/// too long.
pub(crate) fn key_strings<B>(
    stash: &Stash,
    policy: &CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) -> (String, Option<String>) {
    let inner = &stash.inner;
    let mut k = String::with_capacity(inner.prefix.len() + 48);
    k.push_str(&inner.prefix);
    push_base(&mut k, policy, params, req);
    key::push_query(&mut k, req.uri().query(), &policy.query);
    push_keyed_headers(&mut k, req, &policy.key_headers);
    if policy.key_host {
        // Application mode: the host the request names, when it names one.
        if let Some(host) = request_host(req) {
            k.push_str("|host=");
            key::escape_into(&mut k, host.as_bytes());
        }
    }
    if let Some(session) = &policy.session {
        // A hash, never the secret: keys show in logs, headers and Redis.
        if let Some(id) = session.value(req.headers()) {
            k.push_str("|session=#");
            key::push_hex(&mut k, &blake3::hash(id).as_bytes()[..16]);
        }
    }
    if policy.grpc {
        // The question is in the body: two messages never share an entry.
        match req.extensions().get::<super::GrpcMessage>() {
            Some(msg) => msg.push_key(&mut k, req.uri().path()),
            // Callers bypass such calls first (`grpc::prepare`): never a key without the
            // message.
            None => debug_assert!(false, "a gRPC key without its message"),
        }
    }
    let stored = key::storage_key(&k, inner.prefix.len(), inner.max_key_len);
    (k, stored)
}

/// Application mode: why a request may not use the cache for the host it names, if it may
/// not. An absolute URI naming another host than `Host` (which the app may read either of)
/// bypasses; with a list of hosts ([`Policy::hosts`](crate::Policy::hosts)), any host off it
/// does, and so does a request naming none.
pub(crate) fn host_bypass<B>(policy: &CompiledPolicy, req: &Request<B>) -> Option<&'static str> {
    if policy.http || policy.grpc {
        return None;
    }
    if host_mismatch(req) {
        return Some("host-mismatch");
    }
    let hosts = policy.hosts.as_ref()?;
    match request_host(req) {
        Some(host) if hosts.iter().any(|h| *h == host) => None,
        _ => Some("unknown-host"),
    }
}

/// An absolute URI naming another host than `Host` (an app may read either of them).
pub(crate) fn host_mismatch<B>(req: &Request<B>) -> bool {
    let authority = req.uri().authority().map(|a| a.as_str());
    let (Some(authority), Some(host)) = (authority, req.headers().get(http::header::HOST)) else {
        return false;
    };
    let named = |s: &str| key::normal_host(s.rsplit('@').next().unwrap_or(s).into()).into_owned();
    named(authority) != named(&String::from_utf8_lossy(host.as_bytes()))
}
