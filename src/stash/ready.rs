//! Readiness: a check at start ([`Stash::check`]), a ping ([`Stash::ping`]) and a readiness
//! probe ([`Stash::ready`]).

use super::Stash;
use crate::store::StoreError;
use std::time::{Duration, Instant};

impl Stash {
    /// Connects to the store afresh (past its breaker and memory tier), pings it, and says what
    /// answered: `Redis 7.2.4 at 10.0.0.5:6379 (TLS, user app)`. Call it once at start, right
    /// after [`build`](crate::StashBuilder::build), which never waits for the store: a wrong
    /// URL, password or certificate authority is then an error that says so, rather than
    /// requests failing over to the service in silence. A store that cannot be reached at all
    /// is [`StoreError::is_unreachable`]: the stash still works (from memory and the service)
    /// and uses the store by itself once it answers. A store with nothing to check (memory)
    /// answers at once.
    ///
    /// ```no_run
    /// # async fn start() -> Result<(), Box<dyn std::error::Error>> {
    /// # let stash = tower_stash::Stash::new();
    /// use std::time::Duration;
    /// match stash.check(Duration::from_secs(2)).await {
    ///     Ok(store) => println!("cache store: {store}"),
    ///     Err(e) if e.is_unreachable() => println!("{e}: serving from memory meanwhile"),
    ///     Err(e) => return Err(e.into()), // a wrong password: refuse to start
    /// }
    /// # Ok(())
    /// # }
    /// ```
    pub async fn check(&self, timeout: Duration) -> Result<String, StoreError> {
        let check = match self.inner.store.health_check() {
            Some(h) => h.check(timeout),
            None => return Ok("in memory".to_owned()),
        };
        check.await
    }

    /// Pings the store as a call goes (through its breaker and timeout, when it is
    /// [`Guarded`](crate::Guarded)) and returns the round trip's time; at once for a store
    /// with nothing to ping (memory). Fails at once while the breaker is open.
    pub async fn ping(&self) -> Result<Duration, StoreError> {
        let ping = match self.inner.store.health_check() {
            Some(h) => h.ping(),
            None => return Ok(Duration::ZERO),
        };
        let start = Instant::now();
        ping.await?;
        Ok(start.elapsed())
    }

    /// For a readiness probe: `Ok` when the store is in use (its breaker closed), hears the
    /// other instances' invalidations (its bus subscribed, when it has one) and answers a
    /// [`ping`](Self::ping); else the reason. Whether an instance without its shared store
    /// should take traffic is the application's choice: it still answers every request, from
    /// memory and the service.
    pub async fn ready(&self) -> Result<(), StoreError> {
        if self.health() != crate::Health::Ok {
            return Err(StoreError::new(
                "the store is failing: its circuit breaker is open",
            ));
        }
        if !self.inner.store.bus_live() {
            return Err(StoreError::new(
                "the invalidation bus is not subscribed: other instances' invalidations are not heard",
            ));
        }
        self.ping().await.map(drop)
    }
}
