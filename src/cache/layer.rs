use super::service::CacheService;
use crate::key;
use crate::policy::{ConfigError, RouteTable, Routes};
use crate::Stash;
use http::{HeaderValue, Method, Request};
use std::borrow::Cow;
use std::fmt;
use std::sync::Arc;
use tower_layer::Layer;

/// What every clone of a layer and its services share.
pub(crate) struct Shared {
    pub(crate) stash: Stash,
    pub(crate) routes: RouteTable,
}

/// A [`Layer`] that answers the routes it names from the cache: see the [module
/// docs](crate::cache).
#[derive(Clone)]
pub struct CacheLayer {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for CacheLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CacheLayer")
            .field("stash", &self.shared.stash)
            .finish_non_exhaustive()
    }
}

impl CacheLayer {
    /// A layer caching `routes` in `stash`.
    ///
    /// # Panics
    ///
    /// When the routes are invalid, with a message naming each route and field, as axum panics
    /// on an invalid route. Use [`try_new`](Self::try_new) to handle the error instead.
    #[track_caller]
    pub fn new(stash: Stash, routes: Routes) -> Self {
        match Self::try_new(stash, routes) {
            Ok(layer) => layer,
            Err(e) => panic!("{e}"),
        }
    }

    /// A layer caching `routes` in `stash`, or what is wrong with the routes.
    pub fn try_new(stash: Stash, routes: Routes) -> Result<Self, ConfigError> {
        Ok(Self {
            shared: Arc::new(Shared {
                routes: routes.compile()?,
                stash,
            }),
        })
    }

    /// The stash this layer uses.
    pub fn stash(&self) -> &Stash {
        &self.shared.stash
    }

    /// What [`Stash::invalidate_key`] takes to drop every entry of `req`'s URL (each query,
    /// header and session variant): its key before the variants, without the namespace; `None`
    /// when no route matches it.
    pub fn invalidation_key_for<B>(&self, req: &Request<B>) -> Option<String> {
        let (policy, params) = self.shared.routes.find(req.method(), req.uri().path())?;
        if policy.grpc || policy.fields.is_some() {
            return None;
        }
        let params = key::Params::new(&params, None);
        Some(base_key(policy, &params, req))
    }

    /// The full cache key this layer would use for `req`, or `None` when no route matches it.
    pub fn key_for<B>(&self, req: &Request<B>) -> Option<String> {
        let (policy, params) = self.shared.routes.find(req.method(), req.uri().path())?;
        if let Some(session) = &policy.session {
            session.value(req.headers())?;
        }
        let fields = if policy.grpc {
            crate::grpc::prepare(policy.fields.as_ref(), req).ok()?
        } else {
            None
        };
        let params = key::Params::new(&params, fields.as_ref());
        Some(self.shared.key_strings(policy, &params, req).0)
    }
}

impl Shared {
    /// The full key, and the hashed key it is stored under when it is too long.
    pub(crate) fn key_strings<B>(
        &self,
        policy: &crate::policy::CompiledPolicy,
        params: &key::Params<'_, '_, '_>,
        req: &Request<B>,
    ) -> (String, Option<String>) {
        key_strings(&self.stash, policy, params, req)
    }
}

/// The key of `req` before its query and headers: what [`Stash::invalidate_key`] takes (after
/// the namespace), which also invalidates every variant.
pub(crate) fn base_key<B>(
    policy: &crate::policy::CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) -> String {
    base_key_parts(policy, params, req).0
}

/// [`base_key`], and the length of its route part (the template or `METHOD path`, without
/// the host an HTTP-mode policy keys).
pub(crate) fn base_key_parts<B>(
    policy: &crate::policy::CompiledPolicy,
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
    policy: &crate::policy::CompiledPolicy,
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
    policy: &crate::policy::CompiledPolicy,
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
    policy: &crate::policy::CompiledPolicy,
    params: &key::Params<'_, '_, '_>,
    req: &Request<B>,
) -> (String, Option<String>) {
    let inner = &stash.inner;
    let mut k = String::with_capacity(inner.prefix.len() + 48);
    k.push_str(&inner.prefix);
    push_base(&mut k, policy, params, req);
    key::push_query(&mut k, req.uri().query(), &policy.query);
    push_keyed_headers(&mut k, req, &policy.key_headers);
    if let Some(session) = &policy.session {
        // A hash, never the secret: keys show in logs, headers and Redis.
        if let Some(id) = session.value(req.headers()) {
            k.push_str("|session=#");
            key::push_hex(&mut k, &blake3::hash(id).as_bytes()[..16]);
        }
    }
    if policy.grpc {
        // The question is in the body: two messages never share an entry.
        match req.extensions().get::<crate::grpc::GrpcMessage>() {
            Some(msg) => msg.push_key(&mut k, req.uri().path()),
            // Callers bypass such calls first (`grpc::prepare`): never a key without the
            // message.
            None => debug_assert!(false, "a gRPC key without its message"),
        }
    }
    let stored = key::storage_key(&k, inner.prefix.len(), inner.max_key_len);
    (k, stored)
}

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            shared: self.shared.clone(),
        }
    }
}
