use super::service::GrpcService;
use crate::{Routes, Rules};
use std::collections::BTreeSet;
use std::fmt;
use std::sync::Arc;
use tower_layer::Layer;

/// The default [`GrpcLayer::max_message_size`]: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 * 1024;

/// A [`Layer`] that reads the request body of the unary gRPC methods it names, so that the
/// layers below can key on it: see the [module docs](crate::grpc).
#[derive(Clone)]
pub struct GrpcLayer {
    pub(crate) methods: Arc<Methods>,
    pub(crate) limit: usize,
}

/// The paths whose bodies are read.
#[derive(Default)]
pub(crate) struct Methods {
    pub(crate) paths: BTreeSet<String>,
}

impl Methods {
    pub(crate) fn contains(&self, path: &str) -> bool {
        self.paths.contains(path)
    }
}

impl fmt::Debug for GrpcLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GrpcLayer")
            .field("methods", &self.methods.paths)
            .field("max_message_size", &self.limit)
            .finish()
    }
}

impl Default for GrpcLayer {
    fn default() -> Self {
        Self::new()
    }
}

impl GrpcLayer {
    /// A layer that reads no body yet: name the methods with [`method`](Self::method),
    /// [`routes`](Self::routes) and [`rules`](Self::rules).
    pub fn new() -> Self {
        Self {
            methods: Arc::new(Methods::default()),
            limit: DEFAULT_MAX_MESSAGE_SIZE,
        }
    }

    /// Reads the bodies of calls to `path` (`/package.Service/Method`, exactly). Name unary
    /// methods only: a client-streaming call's body would be held until the client ends it.
    pub fn method(mut self, path: impl Into<String>) -> Self {
        let path = path.into();
        if !self.methods.paths.contains(&path) {
            let mut paths = self.methods.paths.clone();
            paths.insert(path);
            self.methods = Arc::new(Methods { paths });
        }
        self
    }

    /// Reads the bodies of every gRPC route of `routes` ([`Routes::grpc`]).
    pub fn routes(self, routes: &Routes) -> Self {
        routes.grpc_paths().fold(self, |l, p| l.method(p))
    }

    /// Reads the bodies of every gRPC rule of `rules` ([`Rules::grpc`]).
    pub fn rules(self, rules: &Rules) -> Self {
        rules.grpc_paths().fold(self, |l, p| l.method(p))
    }

    /// Sets the largest body read, in bytes (default [`DEFAULT_MAX_MESSAGE_SIZE`]). A larger
    /// one streams through unread, and its call bypasses the cache.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.limit = bytes;
        self
    }
}

impl<S> Layer<S> for GrpcLayer {
    type Service = GrpcService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        GrpcService {
            inner,
            methods: self.methods.clone(),
            limit: self.limit,
        }
    }
}
