//! Typed data caching: values inside handlers (a user row, a price list) cached through the
//! same store, tiers, tags and invalidation as the HTTP entries.
//!
//! [`Stash::values`] gives a [`Values`] handle for one type and one [`Policy`]:
//! [`get_or_fetch`](Values::get_or_fetch) answers from the cache or calls the fetch once
//! (cache-aside), [`set`](Values::set) stores a value after a write (write-through), and
//! [`Stash::invalidate_key`] and [`Stash::invalidate_tag`] drop values as they drop responses.
//!
//! - **Errors are never cached**: the fetch's error is returned as it is.
//! - **Not found** ([`get_or_fetch_option`](Values::get_or_fetch_option) returning `None`) is
//!   cached only when the policy gives a 404 a TTL of its own (`status_ttl(404, ..)`).
//! - **Memory hits do no decoding**: the memory tier keeps the decoded `Arc<T>` with the entry
//!   it was read from (it goes when the entry goes: invalidated, expired, evicted); Redis
//!   holds the encoded bytes, decoded once per read there. The memory tier weighs the entry
//!   by its encoded bytes; the decoded value beside it is not counted.
//! - **Codecs and versions**: [`Json`] by default, [`MessagePack`](crate::values::Codec) with the
//!   `msgpack` feature; the codec's name and the type's version ([`Values::with_version`]) are
//!   stored with each value: another codec or another version reads as a miss, counted in
//!   [`Stats::unreadable`](crate::Stats::unreadable).
//! - **Single flight**: concurrent misses of a key make one fetch in the process, and with a
//!   shared store (Redis) one across instances (the store's lease). A failed fetch is not
//!   shared (its error is its caller's): the others queue behind another one, for three
//!   failures in a row at most, then each fetches alone.
//! - **Refreshes**: within the policy's `stale_while_revalidate` window past its TTL, and
//!   shortly before it (early refresh, XFetch, from the time the fetch took:
//!   `early_refresh(beta)`, on by default), one caller fetches the value again while every
//!   other caller, in this instance and the others sharing the store, gets the current value
//!   at once. With [`get_or_fetch`](Values::get_or_fetch) that caller waits for its fetch (a
//!   failed one answers the value it had); with
//!   [`get_or_fetch_detached`](Values::get_or_fetch_detached) (a fetch that owns what it
//!   uses) the fetch runs on a task of its own and no caller waits.
//! - **Stale-if-error**: within the policy's `stale_if_error` window past its TTL, a failed
//!   fetch answers the expired value instead of its error.
//! - **Sliding expiry**: with `sliding(idle)` and its cap `max_lifetime(cap)` (instead of a
//!   TTL), a value expires `idle` after its last read, and `cap` after it was stored however
//!   often it is read; reads extend Redis's copy too. Not combined with stale serving or early
//!   refresh, as for responses.
//! - **Tags** from the policy, and from each value ([`Values::with_tags_from`]).
//! - From the [`Policy`]: its TTL, tags, `ttl_jitter`, `stale_while_revalidate`,
//!   `stale_if_error`, `early_refresh`, `sliding` with `max_lifetime`, and
//!   `status_ttl(404, ..)`. Its HTTP settings (keys from requests, statuses, bodies) do not
//!   apply.
//!
//! Keys and tags are escaped as template keys are: each segment between `:` and `/` has every
//! byte outside `A-Z a-z 0-9 - . _ ~` percent-escaped (`user:a b` is stored as `user:a%20b`,
//! and is invalidated by that name). A value is stored under a key of its own (`=` after the
//! namespace, which no HTTP key starts with), so a value and an HTTP entry never share an
//! entry; but `invalidate_key("user:42")` drops both the route's `user:42` and the value
//! `user:42`, and a tag drops every value and response carrying it.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_stash::{Policy, Stash};
//!
//! #[derive(serde::Serialize, serde::Deserialize)]
//! struct User {
//!     name: String,
//! }
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let stash = Stash::new();
//! let users = stash.values::<User>(Policy::ttl(Duration::from_secs(3600)).tags(["users"]));
//!
//! let fetch = || async { Ok::<_, std::io::Error>(User { name: "Ada".into() }) };
//! let user = users.get_or_fetch("user:1", fetch).await?; // a miss: fetched and stored
//! assert_eq!(user.name, "Ada");
//! let again = users.get_or_fetch("user:1", fetch).await?; // a hit: the same Arc<User>
//! assert!(std::sync::Arc::ptr_eq(&user, &again));
//!
//! users.set("user:1", &User { name: "Grace".into() }).await?; // write-through
//! assert_eq!(users.get("user:1").await.unwrap().name, "Grace");
//!
//! stash.invalidate_tag("users").await?; // values and responses tagged `users` go
//! assert!(users.get("user:1").await.is_none());
//! # Ok(())
//! # }
//! ```

mod codec;
mod fetch;
mod flight;
mod read;
#[cfg(test)]
mod tests;
mod write;

#[cfg(feature = "msgpack")]
pub use codec::MessagePack;
pub use codec::{Codec, CodecError, Json};

use crate::{Entry, Policy, Stash};
use fetch::Detach;
use flight::Flights;
use http::{HeaderName, HeaderValue, StatusCode};
use serde::de::DeserializeOwned;
use serde::Serialize;
use std::fmt;
use std::future::Future;
use std::marker::PhantomData;
use std::sync::Arc;
use std::time::Duration;

/// The header of a value's entry naming its codec.
const CODEC: HeaderName = HeaderName::from_static("x-stash-codec");
/// The header of a value's entry holding its type's version.
const VERSION: HeaderName = HeaderName::from_static("x-stash-version");

impl Stash {
    /// A handle caching values of type `T` under `policy` (see [`values`](crate::values) for
    /// the settings it takes), encoded as JSON.
    /// Cheap to clone: clones share their flights.
    ///
    /// # Panics
    ///
    /// When `policy` has no TTL of its own ([`Policy::new`], [`Policy::named`]), slides
    /// ([`Policy::sliding`]) without a [`max_lifetime`](Policy::max_lifetime), refreshes early
    /// with a `beta` that is not a finite number, zero or more, or has a
    /// [`ttl_jitter`](Policy::ttl_jitter) as long as its TTL: the message names the setting.
    pub fn values<T>(&self, policy: Policy) -> Values<T>
    where
        T: Serialize + DeserializeOwned + Send + Sync + 'static,
    {
        let sliding = policy.sliding;
        let ttl = match sliding {
            Some(_) => policy
                .max_lifetime
                .expect("Stash::values: a sliding policy needs its cap (Policy::max_lifetime)"),
            None => policy
                .ttl
                .expect("Stash::values: the policy needs a TTL of its own (Policy::ttl)"),
        };
        let beta = policy.early_refresh.unwrap_or(1.0);
        assert!(
            beta.is_finite() && beta >= 0.0,
            "Stash::values: early_refresh: {beta} must be a finite number, zero or more"
        );
        let jitter = policy.ttl_jitter.unwrap_or_default();
        assert!(
            jitter.is_zero() || jitter < ttl,
            "Stash::values: ttl_jitter: {jitter:?} must be shorter than the TTL ({ttl:?})"
        );
        let tags = policy
            .tags
            .unwrap_or_default()
            .into_iter()
            .map(|t| escaped(&t))
            .collect();
        let negative = policy
            .status_ttls
            .unwrap_or_default()
            .into_iter()
            .find_map(|(status, ttl)| (status == 404).then_some(ttl));
        // As for responses: a sliding value is neither served stale nor refreshed early.
        let unless_sliding = |d: Option<Duration>| d.filter(|_| sliding.is_none());
        let settings = Settings {
            ttl,
            stale: unless_sliding(policy.stale_while_revalidate).unwrap_or_default(),
            if_error: unless_sliding(policy.stale_if_error).unwrap_or_default(),
            beta: if sliding.is_some() { 0.0 } else { beta },
            sliding,
            jitter,
            negative,
            tags,
            version: 0,
        };
        Values::build(self.clone(), Arc::new(Json), settings, None)
    }
}

#[derive(Clone)]
struct Settings {
    /// How long a value is fresh; with sliding expiry, its cap.
    ttl: Duration,
    /// Stale-while-revalidate: how long past its TTL a value is still answered while one
    /// caller fetches it again.
    stale: Duration,
    /// Stale-if-error: how long past its TTL a value answers for a failed fetch.
    if_error: Duration,
    /// Early refresh (XFetch); 0: none.
    beta: f64,
    sliding: Option<Duration>,
    jitter: Duration,
    negative: Option<Duration>,
    tags: Vec<String>,
    version: u32,
}

/// What the memory tier keeps with an entry a handle read: its decoded value (`None`: a
/// not-found), for `T` read with `C`.
struct Decoded<T, C>(Option<Arc<T>>, PhantomData<fn() -> C>);

/// Values of one type cached under one policy: see [`Stash::values`]. Cheap to clone.
pub struct Values<T, C = Json> {
    stash: Stash,
    codec: Arc<C>,
    settings: Arc<Settings>,
    flights: Arc<Flights<T>>,
    tags_from: Option<TagsFrom<T>>,
}

/// Tags taken from a value: see [`Values::with_tags_from`].
type TagsFrom<T> = Arc<dyn Fn(&T) -> Vec<String> + Send + Sync>;

impl<T, C> Clone for Values<T, C> {
    fn clone(&self) -> Self {
        Self {
            stash: self.stash.clone(),
            codec: self.codec.clone(),
            settings: self.settings.clone(),
            flights: self.flights.clone(),
            tags_from: self.tags_from.clone(),
        }
    }
}

impl<T, C: Codec> fmt::Debug for Values<T, C> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Values")
            .field("type", &std::any::type_name::<T>())
            .field("codec", &C::NAME)
            .field("version", &self.settings.version)
            .field("ttl", &self.settings.ttl)
            .finish()
    }
}

/// What a lookup found.
enum Found<T> {
    /// A fresh value, or a cached not-found.
    Value(Option<Arc<T>>),
    /// A fresh one this read refreshes early (XFetch chose it).
    Early(Option<Arc<T>>),
    /// One past its TTL, within the stale-while-revalidate window.
    Stale(Option<Arc<T>>),
    /// One past its TTL, within the stale-if-error window only: a miss, answered when the
    /// fetch fails.
    Spare(Option<Arc<T>>),
    Miss,
}

impl<T, C> Values<T, C>
where
    T: Serialize + DeserializeOwned + Send + Sync + 'static,
    C: Codec,
{
    fn build(
        stash: Stash,
        codec: Arc<C>,
        settings: Settings,
        tags_from: Option<TagsFrom<T>>,
    ) -> Self {
        Self {
            flights: Arc::new(Flights::new(stash.inner.clock.clone())),
            stash,
            codec,
            settings: Arc::new(settings),
            tags_from,
        }
    }

    /// The same handle with another codec (a new handle: it shares no flights).
    pub fn with_codec<D: Codec>(self, codec: D) -> Values<T, D> {
        let settings = Arc::unwrap_or_clone(self.settings);
        Values::build(self.stash, Arc::new(codec), settings, self.tags_from)
    }

    /// The version of `T`'s stored form (default 0). Raise it when `T` changes shape: values
    /// stored with another version read as misses (counted in
    /// [`Stats::unreadable`](crate::Stats::unreadable)) and are fetched again.
    pub fn with_version(self, version: u32) -> Self {
        let mut settings = Arc::unwrap_or_clone(self.settings);
        settings.version = version;
        Self::build(self.stash, self.codec, settings, self.tags_from)
    }

    /// Tags each value also carries, taken from the value (`|p: &Product| vec![format!(
    /// "category:{}", p.category)]`), escaped as keys are: [`Stash::invalidate_tag`] drops
    /// every value carrying one.
    pub fn with_tags_from<F>(mut self, tags: F) -> Self
    where
        F: Fn(&T) -> Vec<String> + Send + Sync + 'static,
    {
        self.tags_from = Some(Arc::new(tags));
        self
    }

    /// The value under `key`, from the cache only: `None` on a miss (or a cached not-found,
    /// or a value past its stale-while-revalidate window).
    pub async fn get(&self, key: impl AsRef<str>) -> Option<Arc<T>> {
        let key = key.as_ref();
        let found = match self.local(key) {
            Some(found) => found,
            None => {
                let (full, stored) = self.keys(key);
                self.lookup(&stored, &full, true).await
            }
        };
        match found {
            Found::Value(v) | Found::Early(v) | Found::Stale(v) => v,
            Found::Spare(_) | Found::Miss => None,
        }
    }

    /// The value under `key`: from the cache, or else from `fetch`, which is then stored with
    /// the policy's TTL and tags (cache-aside). Concurrent calls for a key make one fetch (in
    /// every instance sharing a store with leases, one in all). The fetch's error is returned
    /// and never cached (or the expired value, within the policy's stale-if-error window);
    /// the callers that waited on a failed fetch try again behind a new one, and once three
    /// fetches of the key failed in a row (within a second of each other) each fetches alone.
    ///
    /// A refresh (stale-while-revalidate, early refresh) is made by the caller that starts
    /// it, which waits for it: see [`get_or_fetch_detached`](Self::get_or_fetch_detached)
    /// for refreshes no caller waits for.
    pub async fn get_or_fetch<F, Fut, E>(&self, key: impl AsRef<str>, fetch: F) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<T, E>>,
    {
        let fetch = || async { fetch().await.map(Some) };
        match self
            .fetch_or_cached(key.as_ref(), fetch, false, None)
            .await?
        {
            Some(value) => Ok(value),
            None => unreachable!("a fetch of a value always gives one"),
        }
    }

    /// As [`get_or_fetch`](Self::get_or_fetch), for a fetch that owns what it uses (`move ||
    /// async move { .. }` over clones): a refresh (stale-while-revalidate, early refresh) runs
    /// on a task of its own, and every caller, the one that started it too, gets the current
    /// value at once. A miss still waits for its fetch. Needs a tokio runtime.
    pub async fn get_or_fetch_detached<F, Fut, E>(
        &self,
        key: impl AsRef<str>,
        fetch: F,
    ) -> Result<Arc<T>, E>
    where
        F: FnOnce() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send + 'static,
        E: Send + 'static,
    {
        let fetch = move || async move { fetch().await.map(Some) };
        let detach: Detach<T, C, _> = |values, refresh, fetch| {
            tokio::spawn(async move { values.refresh(refresh, fetch).await });
        };
        match self
            .fetch_or_cached(key.as_ref(), fetch, false, Some(detach))
            .await?
        {
            Some(value) => Ok(value),
            None => unreachable!("a fetch of a value always gives one"),
        }
    }

    /// As [`get_or_fetch`](Self::get_or_fetch), for a fetch that may find nothing: `None` is
    /// cached (negative caching) only when the policy sets a 404 TTL
    /// (`Policy::ttl(..).status_ttl(404, ttl)`), for that TTL.
    pub async fn get_or_fetch_option<F, Fut, E>(
        &self,
        key: impl AsRef<str>,
        fetch: F,
    ) -> Result<Option<Arc<T>>, E>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<Option<T>, E>>,
    {
        self.fetch_or_cached(key.as_ref(), fetch, true, None).await
    }

    /// Keeps `value`, decoded from `entry` (or stored in it), with the entry.
    fn keep_decoded(&self, entry: &Entry, value: Option<Arc<T>>) {
        let decoded: Decoded<T, C> = Decoded(value, PhantomData);
        entry.keep_decoded(self.settings.version, Arc::new(decoded));
    }

    /// An entry of this handle: the codec and version in its headers, the key's family tag
    /// (so that [`Stash::invalidate_key`] reaches it), the policy's tags and the value's.
    fn entry(
        &self,
        full: String,
        key: &str,
        status: StatusCode,
        body: bytes::Bytes,
        value: Option<&T>,
    ) -> Entry {
        let mut headers = http::HeaderMap::with_capacity(2);
        headers.insert(CODEC, HeaderValue::from_static(C::NAME));
        headers.insert(VERSION, HeaderValue::from(self.settings.version));
        let mut tags = Vec::with_capacity(self.settings.tags.len() + 1);
        tags.push(crate::stash::family_tag(&escaped(key)));
        tags.extend(self.settings.tags.iter().cloned());
        if let (Some(tags_from), Some(value)) = (&self.tags_from, value) {
            tags.extend(tags_from(value).iter().map(|t| escaped(t)));
        }
        // Indexed as every tag is: hashed past the longest key.
        let tags = tags
            .iter()
            .map(|t| self.stash.tag_name(t).into_owned())
            .collect();
        Entry::new(full, status, headers, body).with_tags(tags)
    }

    /// The full key of `key` and the key it is stored under.
    fn keys(&self, key: &str) -> (String, Arc<str>) {
        let full = format!("{}{}", self.stash.inner.prefix, value_key(key));
        let stored = self.stash.stored_key(&full);
        (full, stored)
    }
}

/// A value's key after the namespace: `=` (which no HTTP key starts with), then `key` escaped.
fn value_key(key: &str) -> String {
    let mut out = String::with_capacity(key.len() + 1);
    out.push('=');
    push_escaped(&mut out, key);
    out
}

/// `s` escaped as template keys are: each segment between `:` and `/` percent-escaped.
fn escaped(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    push_escaped(&mut out, s);
    out
}

fn push_escaped(out: &mut String, s: &str) {
    let mut rest = s;
    while let Some(i) = rest.find([':', '/']) {
        crate::key::escape_param_into(out, &rest[..i]);
        out.push_str(&rest[i..=i]);
        rest = &rest[i + 1..];
    }
    crate::key::escape_param_into(out, rest);
}
