use super::rules::{RuleTable, Rules};
use super::service::InvalidateService;
use crate::policy::ConfigError;
use crate::Stash;
use http::request::Parts;
use std::fmt;
use std::sync::Arc;
use tower_layer::Layer;

/// Decides whether a PURGE request may invalidate.
pub(crate) type Authorize = dyn Fn(&Parts) -> bool + Send + Sync;

pub(crate) struct Shared {
    pub(crate) stash: Stash,
    pub(crate) rules: Arc<RuleTable>,
    pub(crate) purge: Option<Arc<Authorize>>,
}

/// A [`Layer`] that invalidates cached entries after the requests that change data: see the
/// [module docs](crate::invalidate).
#[derive(Clone)]
pub struct InvalidateLayer {
    stash: Stash,
    rules: Arc<RuleTable>,
    purge: Option<Arc<Authorize>>,
}

impl fmt::Debug for InvalidateLayer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("InvalidateLayer")
            .field("stash", &self.stash)
            .field("purge", &self.purge.is_some())
            .finish_non_exhaustive()
    }
}

impl InvalidateLayer {
    /// A layer applying `rules` to `stash`.
    ///
    /// # Panics
    ///
    /// When the rules are invalid, with a message naming each rule and field; see
    /// [`try_new`](Self::try_new).
    #[track_caller]
    pub fn new(stash: Stash, rules: Rules) -> Self {
        match Self::try_new(stash, rules) {
            Ok(layer) => layer,
            Err(e) => panic!("{e}"),
        }
    }

    /// A layer applying `rules` to `stash`, or what is wrong with the rules.
    pub fn try_new(stash: Stash, rules: Rules) -> Result<Self, ConfigError> {
        Ok(Self {
            stash,
            rules: Arc::new(rules.compile()?),
            purge: None,
        })
    }

    /// Answers `PURGE` requests (off by default): one with `x-stash-key: user:1` or
    /// `x-stash-tag: users` headers (each may repeat) invalidates those keys and tags, if
    /// `authorize` accepts the request; otherwise it gets 403 and nothing changes. A PURGE
    /// naming nothing gets 400; a store failure 503 (the invalidation is retried).
    pub fn purge(mut self, authorize: impl Fn(&Parts) -> bool + Send + Sync + 'static) -> Self {
        self.purge = Some(Arc::new(authorize));
        self
    }
}

impl<S> Layer<S> for InvalidateLayer {
    type Service = InvalidateService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        InvalidateService {
            inner,
            shared: Arc::new(Shared {
                stash: self.stash.clone(),
                rules: self.rules.clone(),
                purge: self.purge.clone(),
            }),
        }
    }
}
