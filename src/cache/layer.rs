use super::service::CacheService;
use crate::key;
use crate::plumbing::{base_key, key_strings};
use crate::policy::{ConfigError, RouteTable, Routes};
use crate::Stash;
use http::Request;
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
        let routes = routes.compile()?;
        stash.register_routes(routes.policies());
        Ok(Self {
            shared: Arc::new(Shared { routes, stash }),
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
            crate::plumbing::prepare(policy.fields.as_ref(), req).ok()?
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

impl<S> Layer<S> for CacheLayer {
    type Service = CacheService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        CacheService {
            inner,
            shared: self.shared.clone(),
            span: tracing::Span::none(),
        }
    }
}
