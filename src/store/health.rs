//! Whether a store is in use: [`HealthCheck`], and what it reports.

use super::{StoreError, StoreFuture};
use std::fmt;
use std::time::Duration;

/// A store that can be checked: it answers a ping, and may say whether it is in use (a
/// circuit breaker). Offered through [`Store::health_check`](super::Store::health_check).
///
/// The rule: [`ping`](Self::ping) reaches the store as a call does, so that it fails when a
/// call would.
///
/// # Example
///
/// ```
/// use tower_stash::store::{Health, HealthCheck, StoreFuture};
///
/// struct Remote;
///
/// impl HealthCheck for Remote {
///     fn ping(&self) -> StoreFuture<()> {
///         Box::pin(async { Ok(()) }) // a round trip to the store
///     }
/// }
/// assert_eq!(Remote.health(), Health::Ok);
/// ```
pub trait HealthCheck: Send + Sync {
    /// Checks that the store answers (Redis: `PING`), for a background probe while no call is
    /// made.
    fn ping(&self) -> StoreFuture<()>;

    /// Checks that one part of the store answers (see
    /// [`Store::part_of`](super::Store::part_of); a cluster pings that master). The default
    /// pings the store.
    fn ping_part(&self, part: &str) -> StoreFuture<()> {
        let _ = part;
        self.ping()
    }

    /// Connects afresh (past any pool, breaker or memory tier), pings, and says what answered,
    /// such as `Redis 7.2.4 at 10.0.0.5:6379`: a check at start, so that a wrong address or
    /// password is reported then, in clear words, rather than as failing traffic. An error
    /// meaning the store could not be reached at all is [`StoreError::is_unreachable`]. The
    /// default pings within `timeout`.
    fn check(&self, timeout: Duration) -> StoreFuture<String> {
        let ping = self.ping();
        Box::pin(async move {
            match tokio::time::timeout(timeout, ping).await {
                Ok(Ok(())) => Ok("the store answers a ping".to_owned()),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(StoreError::unreachable(format!(
                    "no answer to a ping within {timeout:?}"
                ))),
            }
        })
    }

    /// Whether the store is being used, or skipped because it failed (an open circuit
    /// breaker). The default is always [`Health::Ok`].
    fn health(&self) -> Health {
        Health::Ok
    }

    /// The circuit breaker's state and the time since the last successful call, for a store
    /// that has a breaker ([`Guarded`](super::Guarded)); read with
    /// [`Stash::stats`](crate::Stash::stats). The default is `None`: no breaker.
    fn health_report(&self) -> Option<HealthReport> {
        None
    }
}

/// Whether a store is being used: see [`HealthCheck::health`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
#[non_exhaustive]
pub enum Health {
    /// Calls go to the store.
    #[default]
    Ok,
    /// The store failed and is skipped for now (a circuit breaker is open or probing): calls
    /// fail at once, requests are served from memory or by the service, and nobody waits.
    Degraded,
}

impl Health {
    /// `"ok"` or `"degraded"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ok => "ok",
            Self::Degraded => "degraded",
        }
    }
}

impl fmt::Display for Health {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The state of a store's circuit breaker: see [`HealthCheck::health_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum BreakerState {
    /// Calls go to the store.
    Closed,
    /// Calls fail at once, without touching the store, until a probe.
    Open,
    /// One probe (a ping, or a call) is finding out whether the store answers again; the
    /// other calls fail at once.
    HalfOpen,
}

impl BreakerState {
    /// `"closed"`, `"open"` or `"half-open"`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Closed => "closed",
            Self::Open => "open",
            Self::HalfOpen => "half-open",
        }
    }

    /// [`Health::Ok`] while closed, [`Health::Degraded`] otherwise.
    pub fn health(self) -> Health {
        match self {
            Self::Closed => Health::Ok,
            Self::Open | Self::HalfOpen => Health::Degraded,
        }
    }
}

impl fmt::Display for BreakerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a store with a circuit breaker knows of its health: see [`HealthCheck::health_report`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub struct HealthReport {
    /// The breaker's state.
    pub breaker: BreakerState,
    /// How long ago a call (or a ping) last succeeded; `None` before the first success.
    pub since_last_success: Option<Duration>,
}

impl HealthReport {
    /// A report of `breaker`, whose store last answered `since_last_success` ago.
    pub fn new(breaker: BreakerState, since_last_success: Option<Duration>) -> Self {
        Self {
            breaker,
            since_last_success,
        }
    }

    /// The health the breaker's state means.
    pub fn health(&self) -> Health {
        self.breaker.health()
    }
}
