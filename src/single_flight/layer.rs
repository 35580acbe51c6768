use super::flight::Flights;
use super::service::SingleFlightService;
use crate::policy::{ConfigError, RouteTable, Routes};
use crate::Stash;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;
use tower_layer::Layer;

/// What every clone of a layer and its services share.
pub(crate) struct Shared {
    pub(crate) stash: Stash,
    pub(crate) routes: Option<Arc<RouteTable>>,
    pub(crate) flights: Arc<Flights>,
    pub(crate) max_waiters: usize,
    pub(crate) max_wait: Duration,
    pub(crate) max_body_size: usize,
    /// Whether a request came with no cache outside this layer (said once per layer).
    pub(crate) misplaced: Arc<std::sync::atomic::AtomicBool>,
}

/// A [`Layer`] that coalesces concurrent identical requests: see the [module
/// docs](crate::single_flight).
#[derive(Clone)]
pub struct SingleFlightLayer {
    stash: Stash,
    routes: Option<Arc<RouteTable>>,
    max_waiters: usize,
    max_wait: Duration,
    max_body_size: usize,
    flights: Arc<Flights>,
    misplaced: Arc<std::sync::atomic::AtomicBool>,
}

impl fmt::Debug for SingleFlightLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SingleFlightLayer")
            .field("max_waiters", &self.max_waiters)
            .field("max_wait", &self.max_wait)
            .field("max_body_size", &self.max_body_size)
            .finish_non_exhaustive()
    }
}

impl SingleFlightLayer {
    /// A layer that coalesces the requests a [`CacheLayer`](crate::CacheLayer) above it
    /// forwards on a miss, by the cache's key; other requests pass through.
    pub fn new(stash: Stash) -> Self {
        Self {
            stash,
            routes: None,
            max_waiters: 10_000,
            max_wait: Duration::from_secs(5),
            max_body_size: crate::policy::DEFAULT_MAX_BODY_SIZE,
            flights: Arc::default(),
            misplaced: Arc::default(),
        }
    }

    /// Also keys requests itself, as a `CacheLayer` with `routes` would: usable with no
    /// cache, to deduplicate idempotent requests in flight. Only the key settings of the
    /// policies are used.
    ///
    /// # Panics
    ///
    /// When the routes are invalid; see [`try_routes`](Self::try_routes).
    #[track_caller]
    pub fn routes(self, routes: Routes) -> Self {
        match self.try_routes(routes) {
            Ok(layer) => layer,
            Err(e) => panic!("{e}"),
        }
    }

    /// [`routes`](Self::routes), or what is wrong with the routes.
    pub fn try_routes(mut self, routes: Routes) -> Result<Self, ConfigError> {
        self.routes = Some(Arc::new(routes.compile()?));
        Ok(self)
    }

    /// Renamed: `SingleFlightLayer::new(stash).routes(routes)`.
    #[deprecated(
        since = "0.2.0",
        note = "use `SingleFlightLayer::new(stash).routes(routes)`"
    )]
    #[track_caller]
    pub fn for_routes(stash: Stash, routes: Routes) -> Self {
        Self::new(stash).routes(routes)
    }

    /// Renamed: `SingleFlightLayer::new(stash).try_routes(routes)`.
    #[deprecated(
        since = "0.2.0",
        note = "use `SingleFlightLayer::new(stash).try_routes(routes)`"
    )]
    pub fn try_for_routes(stash: Stash, routes: Routes) -> Result<Self, ConfigError> {
        Self::new(stash).try_routes(routes)
    }

    /// The most requests that wait on one key (default 10 000); more go to the service
    /// themselves, and their responses are not stored.
    pub fn max_waiters(mut self, n: usize) -> Self {
        self.max_waiters = n;
        self
    }

    /// The longest a request waits for another (default 5 s), including the wait for another
    /// instance's leader; past it, it goes to the service itself, and its response is not
    /// stored.
    pub fn max_wait(mut self, wait: Duration) -> Self {
        self.max_wait = wait;
        self
    }

    /// The largest body held for waiters (default 1 MiB); when the leader's is larger, the
    /// waiters go to the service themselves.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = bytes;
        self
    }

    /// How many keys have a request in flight now (zero once all have ended).
    pub fn in_flight(&self) -> usize {
        self.flights.len()
    }

    #[cfg(test)]
    pub(crate) fn waiting(&self) -> usize {
        self.flights.waiting()
    }
}

impl<S> Layer<S> for SingleFlightLayer {
    type Service = SingleFlightService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        SingleFlightService {
            inner,
            shared: Arc::new(Shared {
                stash: self.stash.clone(),
                routes: self.routes.clone(),
                flights: self.flights.clone(),
                max_waiters: self.max_waiters,
                max_wait: self.max_wait,
                max_body_size: self.max_body_size,
                misplaced: self.misplaced.clone(),
            }),
        }
    }
}
