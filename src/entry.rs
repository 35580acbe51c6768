//! A stored response: status, headers, body, trailers, times and tags, and its byte codec.
//!
//! [`Entry::encode`] writes a compact, versioned envelope for stores that keep bytes (Redis);
//! [`Entry::decode`] reads it back, slicing the body and header values out of the buffer without
//! copying them. Anything it cannot read (an unknown version, truncated or corrupt bytes, a
//! header value with a CR or LF) is an [`EntryError`], which stores treat as a miss.
//!
//! A binary envelope of our own rather than JSON or MessagePack: the body is written raw and
//! read back as a slice of the buffer, never copied or escaped (`cargo bench --bench codec`
//! compares the three).
//!
//! # Example
//!
//! ```
//! use std::time::{Duration, SystemTime};
//! use tower_stash::Entry;
//!
//! let mut headers = http::HeaderMap::new();
//! headers.insert("content-type", "application/json".parse().unwrap());
//! let entry = Entry::new("app:v1:user:1", http::StatusCode::OK, headers, r#"{"id":1}"#.into())
//!     .with_times(SystemTime::now(), Duration::from_secs(60))
//!     .with_tags(vec!["users".to_string()]);
//!
//! let bytes = entry.encode();
//! let back = Entry::decode(bytes).unwrap();
//! assert_eq!(back.body(), entry.body());
//! assert_eq!(back.tags(), ["users"]);
//! assert!(Entry::decode(bytes::Bytes::from_static(b"garbage")).is_err());
//! ```

use bytes::{Buf, BufMut, Bytes, BytesMut};
use http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use std::any::Any;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The first bytes of every encoded entry.
const MAGIC: &[u8; 2] = b"TS";
/// The version of the envelope; any other is not read (a miss). Version 2 added the grace
/// period and the recompute time, and flag bit 2 (sliding expiry, followed by its idle time);
/// version 3 dates the entry in microseconds (milliseconds before), so that invalidations
/// and fills are ordered to the microsecond.
const VERSION: u8 = 3;

/// The longest TTL an entry can have (10 years); longer ones are cut to it.
pub const MAX_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// A cached response.
#[derive(Clone, PartialEq)]
pub struct Entry {
    key: String,
    status: StatusCode,
    headers: HeaderMap,
    body: Bytes,
    trailers: Option<HeaderMap>,
    stored_at: SystemTime,
    ttl: Duration,
    /// `stored_at + ttl`, kept: every hit compares it with now.
    expires_at: SystemTime,
    grace: Duration,
    recompute: Duration,
    tags: Vec<String>,
    tombstone: bool,
    /// Stored by a write-through: dated when the write ended, not when it began.
    written: bool,
    /// Sliding expiry: the entry also expires this long after its last hit.
    sliding: Option<Duration>,
    touched: Touched,
    /// When the shared store last heard of a use (sliding expiry), ms since the epoch.
    extended: Touched,
    /// The body decoded by a typed-values handle, kept with the entry in memory.
    decoded: Decoded,
}

/// A typed value decoded from an entry's body, with the version of the type it was read
/// as: not part of the encoding nor of equality, and not cloned (a clone may be changed).
#[derive(Default)]
struct Decoded(OnceLock<(u32, Arc<dyn Any + Send + Sync>)>);

impl Clone for Decoded {
    fn clone(&self) -> Self {
        Self::default()
    }
}

impl PartialEq for Decoded {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

/// When a sliding entry was last used (ms since the epoch): not part of the encoding, and not
/// of equality.
#[derive(Default)]
struct Touched(AtomicU64);

impl Clone for Touched {
    fn clone(&self) -> Self {
        Self(AtomicU64::new(self.0.load(Ordering::Relaxed)))
    }
}

impl PartialEq for Touched {
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl fmt::Debug for Entry {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Entry")
            .field("key", &self.key)
            .field("status", &self.status)
            .field("headers", &self.headers)
            .field("body_len", &self.body.len())
            .field("trailers", &self.trailers)
            .field("stored_at", &self.stored_at)
            .field("ttl", &self.ttl)
            .field("grace", &self.grace)
            .field("recompute", &self.recompute)
            .field("tags", &self.tags)
            .field("tombstone", &self.tombstone)
            .field("sliding", &self.sliding)
            .finish()
    }
}

impl Entry {
    /// A new entry for the full cache key `key`, stored now with no TTL and no tags.
    pub fn new(
        key: impl Into<String>,
        status: StatusCode,
        headers: HeaderMap,
        body: Bytes,
    ) -> Self {
        let now = SystemTime::now();
        Self {
            key: key.into(),
            status,
            headers,
            body,
            trailers: None,
            stored_at: now,
            ttl: Duration::ZERO,
            expires_at: now,
            grace: Duration::ZERO,
            recompute: Duration::ZERO,
            tags: Vec::new(),
            tombstone: false,
            written: false,
            sliding: None,
            touched: Touched(AtomicU64::new(millis(now))),
            extended: Touched(AtomicU64::new(millis(now))),
            decoded: Decoded::default(),
        }
    }

    /// A tombstone for `key`: what an invalidation at `at` leaves in its place. Stores read it
    /// as a miss, and refuse a fill whose request began before `at` (its data may predate the
    /// change that caused the invalidation).
    pub fn tombstone(key: impl Into<String>, at: SystemTime) -> Self {
        let mut entry = Self::new(key, StatusCode::NO_CONTENT, HeaderMap::new(), Bytes::new());
        entry.stored_at = at;
        entry.expires_at = at;
        entry.tombstone = true;
        entry
    }

    /// The envelope of a tombstone dated `at` for any key, around the key: a tombstone's
    /// [`encode`](Self::encode) is `before`, the key's length (4 bytes, big-endian), the key,
    /// then `after`. For a store that writes many tombstones where it cannot call `encode`
    /// (a Redis script).
    #[cfg(feature = "redis")]
    pub(crate) fn tombstone_parts(at: SystemTime) -> (Bytes, Bytes) {
        let mut whole = Self::tombstone("", at).encode();
        let after = whole.split_off(TOMBSTONE_KEY_AT + 4);
        whole.truncate(TOMBSTONE_KEY_AT);
        (whole, after)
    }

    /// Whether this is a tombstone (see [`tombstone`](Self::tombstone)).
    pub fn is_tombstone(&self) -> bool {
        self.tombstone
    }

    /// Marks the entry as stored by a write-through: dated when its write ended, though the
    /// write began earlier, so that an invalidation of one of its tags that came while the
    /// write was in progress drops it even though it is dated after that invalidation (a
    /// fill is dated when its request began, and an entry dated after an invalidation is
    /// otherwise kept).
    pub fn with_written(mut self, written: bool) -> Self {
        self.written = written;
        self
    }

    /// Whether a write-through stored the entry (see [`with_written`](Self::with_written)).
    pub fn is_written(&self) -> bool {
        self.written
    }

    /// Sets when the entry was stored and how long it is fresh (at most [`MAX_TTL`]).
    pub fn with_times(mut self, stored_at: SystemTime, ttl: Duration) -> Self {
        self.stored_at = stored_at;
        self.ttl = ttl.min(MAX_TTL);
        self.expires_at = stored_at.checked_add(self.ttl).unwrap_or(stored_at);
        self.touched = Touched(AtomicU64::new(millis(stored_at)));
        self.extended = Touched(AtomicU64::new(millis(stored_at)));
        self
    }

    /// Makes the expiry sliding: the entry also expires `idle` after its last use
    /// (a hit), and at the latest at [`expires_at`](Self::expires_at), its
    /// absolute cap.
    pub fn with_sliding(mut self, idle: Option<Duration>) -> Self {
        self.sliding = idle.map(|d| d.min(MAX_TTL));
        self
    }

    /// The idle time after which a sliding entry expires, if its expiry slides.
    pub fn sliding(&self) -> Option<Duration> {
        self.sliding
    }

    /// The value a typed-values handle decoded from the body as `D` at `version`, if one did.
    pub(crate) fn decoded<D: Any + Send + Sync>(&self, version: u32) -> Option<&D> {
        match self.decoded.0.get() {
            Some((v, value)) if *v == version => value.downcast_ref(),
            _ => None,
        }
    }

    /// Keeps `value`, the body decoded at `version`, with the entry: the first one kept stays.
    pub(crate) fn keep_decoded(&self, version: u32, value: Arc<dyn Any + Send + Sync>) {
        let _ = self.decoded.0.set((version, value));
    }

    /// Records a use at `now` (sliding expiry), and returns the previous one.
    pub(crate) fn touch(&self, now: SystemTime) -> SystemTime {
        let prev = self.touched.0.fetch_max(millis(now), Ordering::Relaxed);
        at_millis(prev).unwrap_or(now)
    }

    /// Whether the shared store should hear of a use at `now` (sliding expiry): true, and
    /// recorded, when it last heard of one `every` ago or more. One caller wins a race.
    pub(crate) fn extend_due(&self, now: SystemTime, every: Duration) -> bool {
        let now = millis(now);
        let every = u64::try_from(every.as_millis()).unwrap_or(u64::MAX);
        let last = self.extended.0.load(Ordering::Relaxed);
        now.saturating_sub(last) >= every
            && self
                .extended
                .0
                .compare_exchange(last, now, Ordering::Relaxed, Ordering::Relaxed)
                .is_ok()
    }

    /// When the entry stops being fresh: [`expires_at`](Self::expires_at), or for a sliding
    /// entry `idle` after its last use if that comes first.
    pub fn fresh_until(&self) -> SystemTime {
        match self.sliding {
            None => self.expires_at,
            Some(idle) => at_millis(self.touched.0.load(Ordering::Relaxed))
                .and_then(|last| last.checked_add(idle))
                .map_or(self.expires_at, |t| t.min(self.expires_at)),
        }
    }

    /// Sets how long after expiry the entry may still be served stale (stale-while-revalidate,
    /// stale-if-error); stores keep it that much longer than its TTL.
    pub fn with_grace(mut self, grace: Duration) -> Self {
        self.grace = grace.min(MAX_TTL);
        self
    }

    /// Sets how long the response took to produce (the service's time, from request to the
    /// end of the body): the `delta` of early refresh (XFetch).
    pub fn with_recompute_time(mut self, took: Duration) -> Self {
        self.recompute = took.min(MAX_TTL);
        self
    }

    /// Sets the trailers sent after the body.
    pub fn with_trailers(mut self, trailers: Option<HeaderMap>) -> Self {
        self.trailers = trailers;
        self
    }

    /// Sets the tags used to invalidate entries in bulk.
    pub fn with_tags(mut self, tags: Vec<String>) -> Self {
        self.tags = tags;
        self
    }

    /// The full cache key (never the hashed form), compared on every read.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// The response status.
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The response headers as stored. Entries stored by the cache carry `age` and
    /// `cache-status` slots, which every hit overwrites, so that a hit's copy never grows.
    pub fn headers(&self) -> &HeaderMap {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &Bytes {
        &self.body
    }

    /// The trailers, if the response had any.
    pub fn trailers(&self) -> Option<&HeaderMap> {
        self.trailers.as_ref()
    }

    /// When the entry was stored: for entries the cache stores, when the request that produced
    /// it was sent to the service (so `Age` errs on the old side, and a fill that started
    /// earlier than the stored entry's never replaces it).
    pub fn stored_at(&self) -> SystemTime {
        self.stored_at
    }

    /// How long after [`stored_at`](Self::stored_at) the entry is fresh.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// When the entry stops being fresh.
    pub fn expires_at(&self) -> SystemTime {
        self.expires_at
    }

    /// How long after [`expires_at`](Self::expires_at) the entry may still be served stale.
    pub fn grace(&self) -> Duration {
        self.grace
    }

    /// When the entry may no longer be served at all, even stale: stores keep it until then.
    pub fn stale_until(&self) -> SystemTime {
        let expires = self.expires_at();
        expires.checked_add(self.grace).unwrap_or(expires)
    }

    /// How long the response took to produce when it was stored.
    pub fn recompute_time(&self) -> Duration {
        self.recompute
    }

    /// The entry's tags.
    pub fn tags(&self) -> &[String] {
        &self.tags
    }

    /// How long the entry stays fresh after `now` (zero once expired), sliding expiry
    /// included.
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.fresh_until().duration_since(now).unwrap_or_default()
    }

    /// The entry's age at `now`, in whole seconds (the `Age` header).
    pub fn age(&self, now: SystemTime) -> u64 {
        now.duration_since(self.stored_at)
            .unwrap_or_default()
            .as_secs()
    }

    /// Roughly how many bytes the entry holds in memory: key, headers, body, trailers and tags.
    pub fn weight(&self) -> usize {
        fn map(h: &HeaderMap) -> usize {
            h.iter().map(|(n, v)| n.as_str().len() + v.len() + 16).sum()
        }
        128 + self.key.len()
            + map(&self.headers)
            + self.body.len()
            + self.trailers.as_ref().map_or(0, map)
            + self.tags.iter().map(|t| t.len() + 24).sum::<usize>()
    }

    /// Encodes the entry into a versioned envelope; the body is written last, as it is.
    pub fn encode(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(self.weight() + 16);
        out.put_slice(MAGIC);
        out.put_u8(VERSION);
        out.put_u8(
            u8::from(self.trailers.is_some())
                | (u8::from(self.tombstone) << 1)
                | (u8::from(self.sliding.is_some()) << 2)
                | (u8::from(self.written) << 3),
        );
        out.put_u16(self.status.as_u16());
        out.put_u64(micros(self.stored_at));
        out.put_u64(u64::try_from(self.ttl.as_millis()).unwrap_or(u64::MAX));
        out.put_u64(u64::try_from(self.grace.as_millis()).unwrap_or(u64::MAX));
        out.put_u64(u64::try_from(self.recompute.as_millis()).unwrap_or(u64::MAX));
        if let Some(idle) = self.sliding {
            out.put_u64(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX));
        }
        put_bytes(&mut out, self.key.as_bytes());
        put_map(&mut out, &self.headers);
        if let Some(t) = &self.trailers {
            put_map(&mut out, t);
        }
        out.put_u32(len32(self.tags.len()));
        for tag in &self.tags {
            put_bytes(&mut out, tag.as_bytes());
        }
        out.put_u64(self.body.len() as u64);
        out.put_slice(&self.body);
        out.freeze()
    }

    /// Decodes an envelope written by [`encode`](Self::encode). The body and header values are
    /// slices of `bytes`, not copies.
    pub fn decode(bytes: Bytes) -> Result<Self, EntryError> {
        let mut r = Reader { buf: bytes };
        if r.take(2)? != MAGIC[..] {
            return Err(EntryError::Corrupt("not an entry"));
        }
        let version = r.u8()?;
        if version != VERSION {
            return Err(EntryError::Version(version));
        }
        let flags = r.u8()?;
        if flags > 15 {
            return Err(EntryError::Corrupt("flags"));
        }
        let has_trailers = flags & 1 != 0;
        let tombstone = flags & 2 != 0;
        let written = flags & 8 != 0;
        let status = StatusCode::from_u16(r.u16()?).map_err(|_| EntryError::Corrupt("status"))?;
        let stored_at = at_micros(r.u64()?).ok_or(EntryError::Corrupt("stored time"))?;
        let ttl = Duration::from_millis(r.u64()?).min(MAX_TTL);
        let grace = Duration::from_millis(r.u64()?).min(MAX_TTL);
        let recompute = Duration::from_millis(r.u64()?).min(MAX_TTL);
        let read_at = millis(SystemTime::now());
        let sliding = if flags & 4 != 0 {
            Some(Duration::from_millis(r.u64()?).min(MAX_TTL))
        } else {
            None
        };
        let key = r.string()?;
        let headers = r.map()?;
        let trailers = if has_trailers { Some(r.map()?) } else { None };
        let n = r.u32()? as usize;
        let mut tags = Vec::with_capacity(n.min(1024));
        for _ in 0..n {
            tags.push(r.string()?);
        }
        let body_len = usize::try_from(r.u64()?).map_err(|_| EntryError::Corrupt("body length"))?;
        if r.buf.len() != body_len {
            return Err(EntryError::Corrupt("body length"));
        }
        Ok(Self {
            key,
            status,
            headers,
            body: r.buf,
            trailers,
            expires_at: stored_at.checked_add(ttl).unwrap_or(stored_at),
            stored_at,
            ttl,
            grace,
            recompute,
            tags,
            tombstone,
            written,
            sliding,
            // Read just now: the store vouches that it was used within its idle time (and it
            // was just extended, if read with `get_sliding`).
            touched: Touched(AtomicU64::new(read_at)),
            extended: Touched(AtomicU64::new(read_at)),
            decoded: Decoded::default(),
        })
    }
}

/// `t` in milliseconds since the epoch (0 before it, `u64::MAX` past what it holds).
pub(crate) fn millis(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// Where a tombstone's key begins in its envelope: magic, version, flags, status, then four
/// 8-byte numbers (no sliding time).
#[cfg(feature = "redis")]
const TOMBSTONE_KEY_AT: usize = 2 + 1 + 1 + 2 + 4 * 8;

/// `t` in microseconds since the epoch (0 before it, `u64::MAX` past what it holds): how
/// entries, invalidations and fills are dated in stores.
pub(crate) fn micros(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// `t` in microseconds since the epoch rounded up, as invalidations are dated (fills are
/// dated by [`micros`], rounded down).
pub(crate) fn micros_up(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| u64::try_from(d.as_nanos().div_ceil(1000)).unwrap_or(u64::MAX))
        .unwrap_or(0)
}

/// The time `us` microseconds after the epoch, if this platform's `SystemTime` holds it.
pub(crate) fn at_micros(us: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_micros(us))
}

/// The time `ms` milliseconds after the epoch, if this platform's `SystemTime` holds it (the
/// range is the platform's: Linux holds every `u64` of milliseconds, Windows does not).
fn at_millis(ms: u64) -> Option<SystemTime> {
    UNIX_EPOCH.checked_add(Duration::from_millis(ms))
}

fn len32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

fn put_bytes(out: &mut BytesMut, b: &[u8]) {
    out.put_u32(len32(b.len()));
    out.put_slice(b);
}

fn put_map(out: &mut BytesMut, map: &HeaderMap) {
    out.put_u32(len32(map.len()));
    for (name, value) in map {
        put_bytes(out, name.as_str().as_bytes());
        put_bytes(out, value.as_bytes());
    }
}

struct Reader {
    buf: Bytes,
}

impl Reader {
    fn need(&self, n: usize) -> Result<(), EntryError> {
        if self.buf.remaining() < n {
            Err(EntryError::Corrupt("truncated"))
        } else {
            Ok(())
        }
    }
    fn take(&mut self, n: usize) -> Result<Bytes, EntryError> {
        self.need(n)?;
        Ok(self.buf.split_to(n))
    }
    fn u8(&mut self) -> Result<u8, EntryError> {
        self.need(1)?;
        Ok(self.buf.get_u8())
    }
    fn u16(&mut self) -> Result<u16, EntryError> {
        self.need(2)?;
        Ok(self.buf.get_u16())
    }
    fn u32(&mut self) -> Result<u32, EntryError> {
        self.need(4)?;
        Ok(self.buf.get_u32())
    }
    fn u64(&mut self) -> Result<u64, EntryError> {
        self.need(8)?;
        Ok(self.buf.get_u64())
    }
    fn bytes(&mut self) -> Result<Bytes, EntryError> {
        let n = self.u32()? as usize;
        self.take(n)
    }
    fn string(&mut self) -> Result<String, EntryError> {
        String::from_utf8(self.bytes()?.to_vec()).map_err(|_| EntryError::Corrupt("utf-8"))
    }
    fn map(&mut self) -> Result<HeaderMap, EntryError> {
        let n = self.u32()? as usize;
        let mut map = HeaderMap::with_capacity(n.min(256));
        for _ in 0..n {
            let name = HeaderName::from_bytes(&self.bytes()?)
                .map_err(|_| EntryError::Corrupt("header name"))?;
            let value = HeaderValue::from_maybe_shared(self.bytes()?)
                .map_err(|_| EntryError::Corrupt("header value"))?;
            // `append` panics past the map's limit of distinct names.
            map.try_append(name, value)
                .map_err(|_| EntryError::Corrupt("too many headers"))?;
        }
        Ok(map)
    }
}

/// Why bytes could not be read as an [`Entry`]. Stores treat it as a miss.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum EntryError {
    /// The envelope has a version this build does not read.
    Version(u8),
    /// The bytes are not a whole, valid envelope; the string says which part failed.
    Corrupt(&'static str),
}

impl fmt::Display for EntryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Version(v) => write!(f, "cache entry has unknown format version {v}"),
            Self::Corrupt(what) => write!(f, "cache entry is corrupt ({what})"),
        }
    }
}

impl std::error::Error for EntryError {}

#[cfg(test)]
mod tests;
