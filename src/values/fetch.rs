//! Fetching values: single flight within the instance and across instances (the store's
//! lease), stale answers while one caller refreshes, and the fill that stores what a fetch
//! returned.

use super::flight::{self, Leader, Outcome, Role};
use super::{Found, Values};
use crate::plumbing::Lease;
use crate::values::Codec;
use http::StatusCode;
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::future::Future;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// What a leader got in a shared store.
enum Leased<T> {
    /// The key's lease (`None`: no shared store, or the wait for it timed out).
    Lease(Option<Lease>),
    /// What another instance fetched.
    Found(Option<Arc<T>>),
    /// Another instance holds the lease, and the caller has a value to answer with.
    Busy,
}

/// A fetch a caller starts and does not wait for: see [`Values::get_or_fetch_detached`].
pub(super) type Detach<T, C, F> = fn(Values<T, C>, Refresh<T>, F);

/// A refresh of a value that is still answered (stale, or refreshed early).
pub(super) struct Refresh<T> {
    key: String,
    full: String,
    stored: Arc<str>,
    none_ok: bool,
    leader: Leader<T>,
}

impl<T, C> Values<T, C>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    pub(super) async fn fetch_or_cached<F, Fut, E>(
        &self,
        key: &str,
        fetch: F,
        none_ok: bool,
        detach: Option<Detach<T, C, F>>,
    ) -> Result<Option<Arc<T>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let ok = |v: &Option<Arc<T>>| v.is_some() || none_ok;
        // A fresh hit in the memory tier: no key built, no await.
        let (mut epoch, mut landed) = (self.stash.epoch(), self.flights.landed());
        let mut found = self.local(key);
        if let Some(Found::Value(v)) = &found {
            if ok(v) {
                self.stash.counters().hit();
                return Ok(v.clone());
            }
        }
        let (full, stored) = self.keys(key);
        loop {
            let found = match found.take() {
                Some(found) => found,
                None => self.lookup(&stored, &full, true).await,
            };
            // A value answered now while one caller refreshes it (`early`: it is fresh), and
            // one answered only if the fetch fails.
            let (mut current, mut spare) = (None, None);
            match found {
                Found::Value(v) if ok(&v) => {
                    self.stash.counters().hit();
                    return Ok(v);
                }
                Found::Early(v) if ok(&v) => current = Some((v, true)),
                Found::Stale(v) if ok(&v) => current = Some((v, false)),
                Found::Spare(v) if ok(&v) => spare = Some(v),
                _ => {}
            }
            let answer = |(v, early): (Option<Arc<T>>, bool)| {
                if early {
                    self.stash.counters().hit();
                } else {
                    self.stash.counters().stale();
                }
                Ok(v)
            };
            // What a failed fetch answers: the value still answerable, or the expired one
            // within stale-if-error, or else its error.
            let kept = |e, current: Option<_>, spare: Option<_>| match (current, spare) {
                (Some(now), _) => answer(now),
                (None, Some(v)) => {
                    self.stash.counters().stale();
                    Ok(v)
                }
                (None, None) => Err(e),
            };
            match self.flights.join(&stored, epoch) {
                // Another caller refreshes it: answered at once.
                Role::Follow(_) if current.is_some() => return current.map_or(Ok(None), answer),
                Role::Follow(rx) => match flight::wait(rx).await {
                    Outcome::Done(v) if ok(&v) => {
                        self.stash.counters().collapsed();
                        return Ok(v);
                    }
                    // The fetch failed: the expired value, within stale-if-error.
                    Outcome::Failed if spare.is_some() => {
                        self.stash.counters().stale();
                        return Ok(spare.flatten());
                    }
                    // Failed, or a not-found this call does not take: look again.
                    _ => {}
                },
                // The key's last fetches failed: a value still answerable is answered (the
                // next refresh is tried once the failures are old), else this caller fetches
                // alone.
                Role::Alone if current.is_some() => return current.map_or(Ok(None), answer),
                Role::Alone => {
                    self.stash.counters().miss();
                    let fetched = self
                        .fetch_and_fill(key, &full, &stored, fetch, None, None)
                        .await;
                    if fetched.is_err() {
                        self.flights.failed(&stored);
                    }
                    return fetched.or_else(|e| kept(e, current, spare));
                }
                Role::Lead(leader) => {
                    // A flight landed between the lookup and the join: it may have stored
                    // the value.
                    if current.is_none() && self.flights.landed() != landed {
                        let again = self.lookup(&stored, &full, false).await;
                        if let Found::Value(v) | Found::Early(v) = again {
                            if ok(&v) {
                                self.stash.counters().hit();
                                leader.finish(v.clone());
                                return Ok(v);
                            }
                        }
                    }
                    if let (Some(detach), Some(now)) = (detach, current.clone()) {
                        let refresh = Refresh {
                            key: key.to_string(),
                            full,
                            stored,
                            none_ok,
                            leader,
                        };
                        detach(self.clone(), refresh, fetch);
                        return answer(now);
                    }
                    let lease = match self
                        .lease_or_value(&stored, &full, none_ok, current.is_some())
                        .await
                    {
                        Leased::Lease(lease) => lease,
                        Leased::Found(found) => {
                            // Fetched by another instance.
                            self.stash.counters().collapsed();
                            leader.finish(found.clone());
                            return Ok(found);
                        }
                        // Another instance refreshes it.
                        Leased::Busy => {
                            leader.step_down();
                            return current.map_or(Ok(None), answer);
                        }
                    };
                    if current.is_some() {
                        self.stash.counters().refresh();
                    } else {
                        self.stash.counters().miss();
                    }
                    let fetched = self
                        .fetch_and_fill(key, &full, &stored, fetch, Some(leader), lease)
                        .await;
                    return fetched.or_else(|e| kept(e, current, spare));
                }
            }
            epoch = self.stash.epoch();
            landed = self.flights.landed();
        }
    }

    /// Runs `fetch` as the key's leader (or alone: no `leader`), stores what it found, hands
    /// it to the waiters and releases the lease; a failed fetch hands them nothing (they try
    /// again).
    async fn fetch_and_fill<F, Fut, E>(
        &self,
        key: &str,
        full: &str,
        stored: &Arc<str>,
        fetch: F,
        leader: Option<Leader<T>>,
        lease: Option<Lease>,
    ) -> Result<Option<Arc<T>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let started = self.stash.began();
        // By the stash's clock (a test's moves only when told).
        let clock = self.stash.now();
        let result = fetch().await;
        let took = self.stash.now().duration_since(clock).unwrap_or_default();
        let value = match result {
            Ok(v) => v.map(Arc::new),
            Err(e) => {
                drop(leader);
                if let Some(lease) = lease {
                    lease.release().await;
                }
                return Err(e);
            }
        };
        self.fill(key, full, stored, value.clone(), started, took)
            .await;
        match leader {
            Some(leader) => leader.finish(value.clone()),
            None => self.flights.succeeded(stored),
        }
        if let Some(lease) = lease {
            lease.release().await;
        }
        Ok(value)
    }

    /// A refresh no caller waits for (see [`get_or_fetch_detached`](Self::get_or_fetch_detached)):
    /// once across instances (the lease), its failure logged and the value kept.
    pub(super) async fn refresh<F, Fut, E>(self, refresh: Refresh<T>, fetch: F)
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        let Refresh {
            key,
            full,
            stored,
            none_ok,
            leader,
        } = refresh;
        let lease = match self.lease_or_value(&stored, &full, none_ok, true).await {
            Leased::Lease(lease) => lease,
            Leased::Found(found) => return leader.finish(found),
            // Another instance refreshes it.
            Leased::Busy => return leader.step_down(),
        };
        self.stash.counters().refresh();
        let fetched = self
            .fetch_and_fill(&key, &full, &stored, fetch, Some(leader), lease)
            .await;
        if fetched.is_err() {
            tracing::debug!(key = %full, "refreshing a value failed: the value is kept");
        }
    }

    /// With a shared store, takes the key's lease; while another instance holds it, polls
    /// for the value it stores (every 2 ms at first, backing off to 50 ms), for at most the
    /// stash's lease TTL (a not-found is found only when `none_ok`), or at once says it is
    /// [`Busy`](Leased::Busy) when the caller holds a `current` value to answer with.
    async fn lease_or_value(
        &self,
        stored: &Arc<str>,
        full: &str,
        none_ok: bool,
        current: bool,
    ) -> Leased<T> {
        let found = |found: Found<T>| match found {
            Found::Value(v) | Found::Early(v) if v.is_some() || none_ok => Some(v),
            _ => None,
        };
        if !self.stash.store().is_shared() {
            return Leased::Lease(None);
        }
        let deadline = Instant::now() + self.stash.inner.lease_ttl;
        let mut pause = Duration::from_millis(2);
        loop {
            if let Some(lease) = Lease::take(&self.stash, stored).await {
                // The holder before may have stored the value and released just now.
                if let Some(v) = found(self.lookup_shared(stored, full).await) {
                    lease.release().await;
                    return Leased::Found(v);
                }
                return Leased::Lease(Some(lease.kept()));
            }
            if current {
                return Leased::Busy;
            }
            if Instant::now() + pause > deadline {
                tracing::debug!(key = %full, "another instance kept the lease too long: going on");
                return Leased::Lease(None);
            }
            tokio::time::sleep(pause).await;
            pause = (pause * 2).min(Duration::from_millis(50));
            if let Some(v) = found(self.lookup_shared(stored, full).await) {
                return Leased::Found(v);
            }
        }
    }

    /// Stores what a fetch found, dated when it began (`started`; it took `took`): a value,
    /// or a not-found when the policy caches them. The entry keeps the decoded value.
    async fn fill(
        &self,
        key: &str,
        full: &str,
        stored: &Arc<str>,
        value: Option<Arc<T>>,
        started: SystemTime,
        took: Duration,
    ) {
        let (status, body, ttl) = match &value {
            Some(v) => match self.codec.encode(&**v) {
                Ok(body) => (StatusCode::OK, body, self.settings.ttl),
                Err(e) => {
                    tracing::warn!(key = %full, error = %e, "a value could not be encoded: not stored");
                    return;
                }
            },
            None => match self.settings.negative {
                Some(ttl) => (StatusCode::NOT_FOUND, Vec::new(), ttl),
                None => return,
            },
        };
        let jitter = self.settings.jitter.mul_f64(self.stash.random());
        let ttl = ttl.saturating_sub(jitter).max(Duration::from_millis(1));
        let grace = if status == StatusCode::OK {
            self.settings.stale.max(self.settings.if_error)
        } else {
            Duration::ZERO
        };
        let entry = self
            .entry(full.to_string(), key, status, body.into(), value.as_deref())
            .with_times(started, ttl)
            .with_grace(grace)
            .with_recompute_time(took)
            .with_sliding(self.settings.sliding);
        let entry = Arc::new(entry);
        self.keep_decoded(&entry, value);
        let keep = ttl.saturating_add(grace).min(crate::entry::MAX_TTL);
        let put = self.stash.store().put(stored.clone(), entry, keep);
        let result = put.await;
        self.stash.record_put(full, result);
    }
}
