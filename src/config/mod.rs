//! Configuration files: routes, named policies, invalidation rules and store settings in TOML,
//! so that operators tune TTLs without rebuilding.
//!
//! Durations are written as `"30m"`, `"1h 30m"`, `"500ms"`, `"24h"`; sizes as `"64MiB"` or a
//! number of bytes. A route starts from a named policy (`policy = "user_profile"`) and
//! overrides what it sets. Unknown fields are refused, and every mistake names the file, the
//! line and the field:
//!
//! ```text
//! demo.toml:12: routes."GET /users/{id}".ttl: invalid duration `30 minuts`: unknown time unit "minuts", supported units: ns, us, ms, sec, min, hours, days, weeks, months, years (and few variations)
//! ```
//!
//! The file is a view of the structures the rest of the crate takes ([`Routes`], [`Rules`],
//! [`StashBuilder`]): what it says can equally be built in code, and [`Config`] itself is plain
//! data with public fields.
//!
//! # Example
//!
//! ```
//! use tower_stash::config::Config;
//! use tower_stash::{CacheLayer, InvalidateLayer};
//!
//! let text = r#"
//! [stash]
//! namespace = "shop"
//! memory = "64MiB"
//!
//! [policies.product]            # the guide's TTL map, overridden
//! ttl = "12h"
//!
//! [routes."GET /users/{id}"]
//! policy = "user_profile"       # 1 hour
//! key = "user:{id}"
//! tags = ["users"]
//!
//! [routes."GET /me"]
//! sliding = "30m"
//! max_lifetime = "12h"
//! session_cookie = "session"
//!
//! [rules."PUT /users/{id}"]
//! write_through = { key = "user:{id}", ttl = "1h" }
//! "#;
//! let config = Config::from_toml(text, "shop.toml").unwrap();
//! let stash = config.stash().unwrap().build().unwrap();
//! let cache = CacheLayer::new(stash.clone(), config.routes().unwrap());
//! let invalidate = InvalidateLayer::new(stash, config.rules().unwrap());
//! # let _ = (cache, invalidate);
//!
//! let err = Config::from_toml("[routes.\"GET /x\"]\nttl = \"30 minuts\"\n", "bad.toml").unwrap_err();
//! assert!(err.to_string().starts_with("bad.toml:2: routes.\"GET /x\".ttl: "), "{err}");
//! ```

use crate::{ConfigError, Invalidate, Policy, Routes, Rules, StashBuilder};
use http::Method;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::path::Path;
use std::time::Duration;

/// A configuration file: see the [module docs](self).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct Config {
    /// Store and stash settings.
    #[serde(default)]
    pub stash: StashConfig,
    /// Named policies (the TTL map): the guide's six, plus or over these.
    #[serde(default)]
    pub policies: BTreeMap<String, toml::Spanned<PolicyConfig>>,
    /// Cached routes, by `"METHOD /path/{param}"`.
    #[serde(default)]
    pub routes: BTreeMap<String, toml::Spanned<PolicyConfig>>,
    /// Invalidation rules, by `"METHOD /path/{param}"`.
    #[serde(default)]
    pub rules: BTreeMap<String, toml::Spanned<RuleConfig>>,
    /// The file's name and text, for error lines.
    #[serde(skip)]
    source: Option<(String, String)>,
}

/// The `[stash]` table.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct StashConfig {
    /// The key namespace (default `stash`).
    pub namespace: Option<String>,
    /// The memory tier's bound (default 64 MiB): `"64MiB"` or bytes.
    pub memory: Option<Size>,
    /// Keys longer than this are hashed.
    pub max_key_len: Option<usize>,
    /// The name of the `Cache-Status` entry.
    pub cache_status_name: Option<String>,
    /// Whether `Cache-Status` says why a response was not stored.
    pub cache_status_detail: Option<bool>,
    /// Whether `Cache-Status` shows the key.
    pub cache_status_key: Option<bool>,
    /// How long a single-flight lease lasts.
    pub lease_ttl: Option<Dur>,
    /// The invalidation margin.
    pub invalidation_margin: Option<Dur>,
    /// How long tombstones stay.
    pub tombstone_ttl: Option<Dur>,
    /// Redis, behind the memory tier.
    pub redis: Option<RedisConfig>,
}

/// The `[stash.redis]` table. Its `Debug` output never shows the URLs (they may hold
/// passwords).
#[derive(Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RedisConfig {
    /// `redis://[user:password@]host:port[/db]`, or `redis+cluster://host:port,host:port`
    /// for a cluster's seed nodes.
    pub url: Option<String>,
    /// A Redis Cluster's seed nodes (`host:port` or `redis://[:password@]host:port`), instead
    /// of a `url`.
    pub cluster: Option<Vec<String>>,
    /// Connections in the pool.
    pub pool_size: Option<u32>,
    /// How long connecting may take.
    pub connect_timeout: Option<Dur>,
    /// How long a call waits for a free connection.
    pub checkout_timeout: Option<Dur>,
    /// How long a call to Redis may take before the request goes on without it.
    pub timeout: Option<Dur>,
    /// Failures in a row that open the circuit breaker.
    pub failures: Option<u32>,
    /// How long the open breaker skips Redis before probing it.
    pub cool_down: Option<Dur>,
    /// How long Redis may go without a call before it is pinged, and how often it is pinged
    /// then; `"0s"` turns the pings off.
    pub probe_interval: Option<Dur>,
}

impl fmt::Debug for RedisConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisConfig")
            .field("url", &self.url.as_ref().map(|_| "<redacted>"))
            .field("cluster", &self.cluster.as_ref().map(Vec::len))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("timeout", &self.timeout)
            .field("failures", &self.failures)
            .field("cool_down", &self.cool_down)
            .field("probe_interval", &self.probe_interval)
            .finish()
    }
}

/// A route's or a named policy's table: the fields of [`Policy`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct PolicyConfig {
    /// The named policy this one starts from.
    pub policy: Option<String>,
    /// How long responses stay fresh.
    pub ttl: Option<Dur>,
    /// The key template, such as `user:{id}`.
    pub key: Option<String>,
    /// The only query parameters keyed.
    pub vary_query: Option<Vec<String>>,
    /// Keys no query parameter.
    pub ignore_query: Option<bool>,
    /// Request headers keyed.
    pub vary_headers: Option<Vec<String>>,
    /// Statuses stored.
    pub statuses: Option<Vec<u16>>,
    /// Statuses stored for a lifetime of their own: `status_ttls = { 404 = "1m" }` (see
    /// [`Policy::status_ttl`]).
    pub status_ttls: Option<BTreeMap<Status, Dur>>,
    /// The largest body stored: `"1MiB"` or bytes.
    pub max_body_size: Option<Size>,
    /// Tags (templates).
    pub tags: Option<Vec<String>>,
    /// Caches methods other than GET.
    pub unsafe_methods: Option<bool>,
    /// Derives an `ETag`.
    pub etag: Option<bool>,
    /// Stale-while-revalidate window.
    pub stale_while_revalidate: Option<Dur>,
    /// Stale-if-error window.
    pub stale_if_error: Option<Dur>,
    /// Early refresh's beta (0 turns it off).
    pub early_refresh: Option<f64>,
    /// TTL jitter.
    pub ttl_jitter: Option<Dur>,
    /// Upstream timeout with a stale entry in hand.
    pub upstream_timeout: Option<Dur>,
    /// Sliding expiry's idle time.
    pub sliding: Option<Dur>,
    /// Sliding expiry's cap.
    pub max_lifetime: Option<Dur>,
    /// The cookie holding the session id.
    pub session_cookie: Option<String>,
    /// The header holding the session id.
    pub session_header: Option<String>,
    /// HTTP mode: the origin's headers decide (RFC 9111).
    pub http_mode: Option<bool>,
    /// Whether requests' `Cache-Control` is honoured.
    pub request_directives: Option<bool>,
    /// HTTP mode: the `Vary` variants of one URL kept at most.
    pub max_variants: Option<usize>,
}

/// A rule's table: the fields of [`Invalidate`].
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
#[non_exhaustive]
pub struct RuleConfig {
    /// Keys invalidated (templates).
    #[serde(default)]
    pub keys: Vec<String>,
    /// Tags invalidated (templates).
    #[serde(default)]
    pub tags: Vec<String>,
    /// Stores the response as this key's entry.
    pub write_through: Option<WriteThroughConfig>,
    /// Tags of the entry a write-through stores.
    #[serde(default)]
    pub entry_tags: Vec<String>,
}

/// `write_through = { key = "user:{id}", ttl = "1h" }`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteThroughConfig {
    /// The key template.
    pub key: String,
    /// How long the entry stays fresh.
    pub ttl: Dur,
}

/// A duration written as `"30m"`, `"1h 30m"`, `"500ms"` (humantime's syntax).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Dur(pub Duration);

impl<'de> Deserialize<'de> for Dur {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        humantime::parse_duration(&s)
            .map(Dur)
            .map_err(|e| serde::de::Error::custom(format!("invalid duration `{s}`: {e}")))
    }
}

/// An HTTP status code, as a table key (`404`) or a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Status(pub u16);

impl<'de> Deserialize<'de> for Status {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Number(u64),
            Text(String),
        }
        let n = match Raw::deserialize(d)? {
            Raw::Number(n) => Some(n),
            Raw::Text(s) => s.trim().parse().ok(),
        };
        n.and_then(|n| u16::try_from(n).ok())
            .filter(|n| (100..600).contains(n))
            .map(Status)
            .ok_or_else(|| serde::de::Error::custom("a status code from 100 to 599, such as 404"))
    }
}

/// A size in bytes, written as a number or as `"64MiB"`, `"512 KB"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Size(pub u64);

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Bytes(u64),
            Text(String),
        }
        match Raw::deserialize(d)? {
            Raw::Bytes(n) => Ok(Size(n)),
            Raw::Text(s) => s
                .parse::<bytesize::ByteSize>()
                .map(|b| Size(b.as_u64()))
                .map_err(|e| serde::de::Error::custom(format!("invalid size `{s}`: {e}"))),
        }
    }
}

/// What is wrong with a configuration file: each mistake with its line and field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigFileError {
    file: String,
    errors: Vec<FileError>,
}

/// One mistake in a configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FileError {
    /// The line (from 1), or 0 when the mistake is about the whole file.
    pub line: usize,
    /// The field, such as `routes."GET /users/{id}".ttl`, if known.
    pub field: Option<String>,
    /// What is wrong.
    pub message: String,
}

impl ConfigFileError {
    fn whole(file: &str, message: String) -> Self {
        Self {
            file: file.to_owned(),
            errors: vec![FileError {
                line: 0,
                field: None,
                message,
            }],
        }
    }

    /// The file's name.
    pub fn file(&self) -> &str {
        &self.file
    }

    /// Each mistake.
    pub fn errors(&self) -> &[FileError] {
        &self.errors
    }
}

impl fmt::Display for ConfigFileError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.errors.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{}", self.file)?;
            if e.line > 0 {
                write!(f, ":{}", e.line)?;
            }
            write!(f, ": ")?;
            if let Some(field) = &e.field {
                write!(f, "{field}: ")?;
            }
            write!(f, "{}", e.message)?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigFileError {}

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError::whole(&name, format!("cannot read the file: {e}")))?;
        Self::from_toml(&text, name)
    }

    /// Parses and checks `text`, naming it `file` in errors.
    pub fn from_toml(text: &str, file: impl Into<String>) -> Result<Self, ConfigFileError> {
        let file = file.into();
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigFileError {
                file: file.clone(),
                errors: vec![FileError {
                    line: line_of(text, span.start),
                    field: field_at(text, span.start),
                    message: e.message().trim().to_owned(),
                }],
            }
        })?;
        config.source = Some((file, text.to_owned()));
        // Everything else is checked now, not when a layer is built.
        let mut errors = Vec::new();
        for result in [
            config.routes().map(drop),
            config.rules().map(drop),
            config.check_stash(),
        ] {
            if let Err(e) = result {
                errors.extend(e.errors);
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigFileError {
                file: config.source.take().map(|(f, _)| f).unwrap_or_default(),
                errors,
            })
        }
    }

    /// The routes and named policies.
    pub fn routes(&self) -> Result<Routes, ConfigFileError> {
        let mut routes = Routes::new();
        let mut errors = Vec::new();
        for (name, p) in &self.policies {
            routes = routes.policy(name.clone(), p.get_ref().to_policy());
        }
        for (route, p) in &self.routes {
            match split_route(route) {
                Ok((method, path)) => routes = routes.route(method, path, p.get_ref().to_policy()),
                Err(message) => errors.push(self.error_at(
                    p.span(),
                    route_field("routes", route, None),
                    message,
                )),
            }
        }
        if let Err(e) = routes.validate() {
            errors.extend(self.place_errors(&e));
        }
        self.result(errors).map(|()| routes)
    }

    /// The invalidation rules.
    pub fn rules(&self) -> Result<Rules, ConfigFileError> {
        let mut rules = Rules::new();
        let mut errors = Vec::new();
        for (route, r) in &self.rules {
            match split_route(route) {
                Ok((method, path)) => rules = rules.route(method, path, r.get_ref().to_rule()),
                Err(message) => {
                    errors.push(self.error_at(r.span(), route_field("rules", route, None), message))
                }
            }
        }
        if let Err(e) = rules.validate() {
            errors.extend(self.place_errors(&e));
        }
        self.result(errors).map(|()| rules)
    }

    /// A stash builder with the file's settings and store (memory, or tiered on Redis).
    pub fn stash(&self) -> Result<StashBuilder, ConfigFileError> {
        let s = &self.stash;
        let mut b = crate::Stash::builder();
        if let Some(ns) = &s.namespace {
            b = b.namespace(ns.clone());
        }
        if let Some(n) = s.max_key_len {
            b = b.max_key_len(n);
        }
        if let Some(name) = &s.cache_status_name {
            b = b.cache_status_name(name.clone());
        }
        if let Some(show) = s.cache_status_detail {
            b = b.cache_status_detail(show);
        }
        if let Some(show) = s.cache_status_key {
            b = b.cache_status_key(show);
        }
        if let Some(d) = s.lease_ttl {
            b = b.lease_ttl(d.0);
        }
        if let Some(d) = s.invalidation_margin {
            b = b.invalidation_margin(d.0);
        }
        if let Some(d) = s.tombstone_ttl {
            b = b.tombstone_ttl(d.0);
        }
        let memory = crate::MemoryStore::new(s.memory.map_or(64 << 20, |m| m.0));
        let mut errors = Vec::new();
        match &s.redis {
            None => b = b.store(memory),
            Some(redis) => match self.redis_store(redis, memory) {
                Ok(with_redis) => b = with_redis(b),
                Err(message) => {
                    let field = if redis.cluster.is_some() {
                        "cluster"
                    } else {
                        "url"
                    };
                    errors.push(self.error_at(
                        self.find("stash.redis", Some(field)),
                        Some(format!("stash.redis.{field}")),
                        message,
                    ))
                }
            },
        }
        // The builder's own checks (namespace, lengths), now, with their lines.
        if errors.is_empty() {
            if let Err(e) = b.clone().build() {
                errors.extend(self.place_errors(&e));
            }
        }
        self.result(errors).map(|()| b)
    }

    /// The stash settings, checked without building a store (which needs a runtime).
    fn check_stash(&self) -> Result<(), ConfigFileError> {
        let mut errors = Vec::new();
        let mut bad = |table: &str, field: &str, message: &str| {
            errors.push(self.error_at(
                self.find(table, Some(field)),
                Some(format!("{table}.{field}")),
                message.to_owned(),
            ));
        };
        let s = &self.stash;
        for (field, d) in [
            ("lease_ttl", s.lease_ttl),
            ("invalidation_margin", s.invalidation_margin),
            ("tombstone_ttl", s.tombstone_ttl),
        ] {
            if d.is_some_and(|d| d.0 > crate::entry::MAX_TTL) {
                bad("stash", field, "must be at most 10 years");
            }
        }
        if let Some(r) = &s.redis {
            if r.pool_size == Some(0) {
                bad("stash.redis", "pool_size", "must be at least 1");
            }
            if r.failures == Some(0) {
                bad("stash.redis", "failures", "must be at least 1");
            }
            for (field, d) in [
                ("connect_timeout", r.connect_timeout),
                ("checkout_timeout", r.checkout_timeout),
                ("timeout", r.timeout),
                ("cool_down", r.cool_down),
            ] {
                match d {
                    Some(d) if d.0.is_zero() => bad("stash.redis", field, "must be more than zero"),
                    Some(d) if d.0 > crate::entry::MAX_TTL => {
                        bad("stash.redis", field, "must be at most 10 years")
                    }
                    _ => {}
                }
            }
            if r.probe_interval
                .is_some_and(|d| d.0 > crate::entry::MAX_TTL)
            {
                bad("stash.redis", "probe_interval", "must be at most 10 years");
            }
        }
        if let Some(r) = &self.stash.redis {
            let (field, urls): (&str, Vec<String>) = match (&r.url, &r.cluster) {
                (Some(url), None) => match url
                    .strip_prefix("redis+cluster://")
                    .or_else(|| url.strip_prefix("rediss+cluster://"))
                {
                    // Checked when the store is built (`RedisStore::builder`).
                    Some(_) => ("url", vec![]),
                    None => ("url", vec![url.clone()]),
                },
                (None, Some(nodes)) => (
                    "cluster",
                    nodes
                        .iter()
                        .map(|n| {
                            if n.contains("://") {
                                n.clone()
                            } else {
                                format!("redis://{n}")
                            }
                        })
                        .collect(),
                ),
                _ => ("url", vec![]),
            };
            let mut bad: Option<String> = match (&r.url, &r.cluster) {
                (Some(_), Some(_)) => Some("set either `url` or `cluster`, not both".into()),
                (None, None) => Some("missing: set `url` or `cluster`".into()),
                (None, Some(n)) if n.is_empty() => Some("lists no seed node".into()),
                _ => None,
            };
            #[cfg(feature = "redis")]
            if bad.is_none() {
                bad = urls
                    .iter()
                    .find_map(|u| redis::Client::open(u.as_str()).err())
                    .map(|e| e.to_string());
            }
            #[cfg(not(feature = "redis"))]
            if bad.is_none() {
                let _ = &urls;
                bad = Some("tower-stash was built without its `redis` feature".to_owned());
            }
            if let Some(message) = bad {
                let at = if r.url.is_none() && r.cluster.is_none() {
                    self.find("stash.redis", None)
                } else {
                    self.find("stash.redis", Some(field))
                };
                errors.push(self.error_at(at, Some(format!("stash.redis.{field}")), message));
            }
        }
        let mut without_redis = self.clone();
        without_redis.stash.redis = None;
        if let Err(e) = without_redis.stash() {
            errors.extend(e.errors);
        }
        self.result(errors)
    }

    #[cfg(feature = "redis")]
    #[allow(clippy::type_complexity)]
    fn redis_store(
        &self,
        r: &RedisConfig,
        memory: crate::MemoryStore,
    ) -> Result<Box<dyn FnOnce(StashBuilder) -> StashBuilder>, String> {
        let mut rb = match (&r.url, &r.cluster) {
            (Some(url), None) => crate::RedisStore::builder(url.clone()),
            (None, Some(nodes)) => crate::RedisStore::cluster(nodes.clone()),
            _ => return Err("set either `url` or `cluster`".into()),
        };
        if let Some(n) = r.pool_size {
            rb = rb.pool_size(n);
        }
        if let Some(d) = r.connect_timeout {
            rb = rb.connect_timeout(d.0);
        }
        if let Some(d) = r.checkout_timeout {
            rb = rb.checkout_timeout(d.0);
        }
        let redis = rb.build().map_err(|e| e.to_string())?;
        let mut guarded = crate::Guarded::new(redis);
        if let Some(d) = r.timeout {
            guarded = guarded.timeout(d.0);
        }
        if let Some(n) = r.failures {
            guarded = guarded.failures(n);
        }
        if let Some(d) = r.cool_down {
            guarded = guarded.cool_down(d.0);
        }
        if let Some(d) = r.probe_interval {
            guarded = guarded.probe_interval(d.0);
        }
        let store = crate::TieredStore::new(memory, guarded);
        Ok(Box::new(move |b: StashBuilder| b.store(store)))
    }

    #[cfg(not(feature = "redis"))]
    #[allow(clippy::type_complexity)]
    fn redis_store(
        &self,
        _: &RedisConfig,
        _: crate::MemoryStore,
    ) -> Result<Box<dyn FnOnce(StashBuilder) -> StashBuilder>, String> {
        Err("tower-stash was built without its `redis` feature".into())
    }

    fn result(&self, errors: Vec<FileError>) -> Result<(), ConfigFileError> {
        if errors.is_empty() {
            Ok(())
        } else {
            Err(ConfigFileError {
                file: self.file().to_owned(),
                errors,
            })
        }
    }

    fn file(&self) -> &str {
        self.source.as_ref().map_or("(config)", |(f, _)| f.as_str())
    }

    fn text(&self) -> &str {
        self.source.as_ref().map_or("", |(_, t)| t.as_str())
    }

    fn error_at(&self, span: Range<usize>, field: Option<String>, message: String) -> FileError {
        FileError {
            line: if self.text().is_empty() {
                0
            } else {
                line_of(self.text(), span.start)
            },
            field,
            message,
        }
    }

    /// The span of the table `place` names (`routes[GET /x]`, `policies.name`, `stash`),
    /// narrowed to the line of `field` in it when there is one.
    fn find(&self, place: &str, field: Option<&str>) -> Range<usize> {
        let table = if let Some(route) = place
            .strip_prefix("routes[")
            .and_then(|r| r.strip_suffix(']'))
        {
            self.routes.get(route).map(|p| p.span())
        } else if let Some(route) = place
            .strip_prefix("rules[")
            .and_then(|r| r.strip_suffix(']'))
        {
            self.rules.get(route).map(|r| r.span())
        } else if let Some(name) = place.strip_prefix("policies.") {
            self.policies.get(name).map(|p| p.span())
        } else {
            // `[stash]` or `[stash.redis]`: from its header to the next one.
            let header = format!("[{place}]");
            let text = self.text();
            text.find(&header).map(|at| {
                let end = text[at + header.len()..]
                    .find("\n[")
                    .map_or(text.len(), |n| at + header.len() + n);
                at..end
            })
        };
        let Some(table) = table else {
            return 0..0;
        };
        // A table's span may cover its header only: its fields run to the next header.
        let text = self.text();
        let table = {
            let from = table.end.min(text.len());
            let end = text[from..].find("\n[").map_or(text.len(), |n| from + n);
            table.start..end.max(table.end)
        };
        let Some(field) = field else {
            return table;
        };
        let body = &text[table.clone()];
        let mut offset = 0;
        for line in body.split_inclusive('\n') {
            let trimmed = line.trim_start();
            if let Some(rest) = trimmed.strip_prefix(field) {
                if rest.trim_start().starts_with('=') {
                    let at = table.start + offset + (line.len() - trimmed.len());
                    return at..at + field.len();
                }
            }
            offset += line.len();
        }
        // Inline tables (`{ key = .. }`): search the text of the table.
        match body.find(&format!("{field} =")) {
            Some(at) => table.start + at..table.start + at + field.len(),
            None => table,
        }
    }

    /// [`ConfigError`] lines (`routes[GET /x].key: ...`) with their file lines.
    fn place_errors(&self, e: &ConfigError) -> Vec<FileError> {
        e.errors()
            .iter()
            .map(|line| {
                let (place, message) = line.split_once(": ").unwrap_or(("", line));
                // `routes[GET /x].key`, `policies.name.ttl`, `stash.namespace`
                let (table, field) = match place.rfind(']') {
                    Some(end) => {
                        let field = place[end + 1..].strip_prefix('.');
                        (&place[..=end], field)
                    }
                    None => match place.split_once('.') {
                        Some((head, rest)) if head == "policies" => match rest.split_once('.') {
                            Some((name, field)) => {
                                (&place[..head.len() + 1 + name.len()], Some(field))
                            }
                            None => (place, None),
                        },
                        Some((head, field)) => (head, Some(field)),
                        None => (place, None),
                    },
                };
                let span = self.find(table, field);
                FileError {
                    line: if self.text().is_empty() {
                        0
                    } else {
                        line_of(self.text(), span.start)
                    },
                    field: Some(toml_place(table, field)),
                    message: message.to_owned(),
                }
            })
            .collect()
    }
}

impl PolicyConfig {
    /// The [`Policy`] this table describes.
    pub fn to_policy(&self) -> Policy {
        let mut p = match &self.policy {
            Some(base) => Policy::named(base.clone()),
            None => Policy::new(),
        };
        if let Some(d) = self.ttl {
            p = p.time_to_live(d.0);
        }
        if let Some(k) = &self.key {
            p = p.key(k.clone());
        }
        if let Some(q) = &self.vary_query {
            p = p.vary_query(q.clone());
        }
        if self.ignore_query == Some(true) {
            p = p.ignore_query();
        }
        if let Some(h) = &self.vary_headers {
            p = p.vary_headers(h.clone());
        }
        if let Some(s) = &self.statuses {
            p = p.statuses(s.clone());
        }
        for (status, ttl) in self.status_ttls.iter().flatten() {
            p = p.status_ttl(status.0, ttl.0);
        }
        if let Some(n) = self.max_body_size {
            p = p.max_body_size(usize::try_from(n.0).unwrap_or(usize::MAX));
        }
        if let Some(t) = &self.tags {
            p = p.tags(t.clone());
        }
        if let Some(u) = self.unsafe_methods {
            p = p.unsafe_methods(u);
        }
        if let Some(e) = self.etag {
            p = p.etag(e);
        }
        if let Some(d) = self.stale_while_revalidate {
            p = p.stale_while_revalidate(d.0);
        }
        if let Some(d) = self.stale_if_error {
            p = p.stale_if_error(d.0);
        }
        if let Some(b) = self.early_refresh {
            p = p.early_refresh(b);
        }
        if let Some(d) = self.ttl_jitter {
            p = p.ttl_jitter(d.0);
        }
        if let Some(d) = self.upstream_timeout {
            p = p.upstream_timeout(d.0);
        }
        if let Some(d) = self.sliding {
            p = p.sliding(d.0);
        }
        if let Some(d) = self.max_lifetime {
            p = p.max_lifetime(d.0);
        }
        if let Some(c) = &self.session_cookie {
            p = p.session_cookie(c.clone());
        }
        if let Some(h) = &self.session_header {
            p = p.session_header(h.clone());
        }
        if let Some(on) = self.http_mode {
            p = p.http_mode(on);
        }
        if let Some(on) = self.request_directives {
            p = p.request_directives(on);
        }
        if let Some(n) = self.max_variants {
            p = p.max_variants(n);
        }
        p
    }
}

impl RuleConfig {
    /// The [`Invalidate`] rule this table describes.
    pub fn to_rule(&self) -> Invalidate {
        let mut r = Invalidate::keys(self.keys.clone()).and_tags(self.tags.clone());
        if let Some(w) = &self.write_through {
            let wt = Invalidate::write_through(w.key.clone(), w.ttl.0);
            r = wt.and_keys(r.keys).and_tags(r.tags);
        }
        r.entry_tags(self.entry_tags.clone())
    }
}

/// `"GET /users/{id}"` into its method and path.
fn split_route(route: &str) -> Result<(Method, String), String> {
    let (method, path) = route
        .split_once(' ')
        .ok_or_else(|| format!("`{route}` must be `METHOD /path`, such as `GET /users/{{id}}`"))?;
    let method = Method::from_bytes(method.as_bytes())
        .map_err(|_| format!("`{method}` is not an HTTP method"))?;
    if !path.starts_with('/') {
        return Err(format!("`{path}` must start with `/`"));
    }
    Ok((method, path.to_owned()))
}

fn route_field(table: &str, route: &str, field: Option<&str>) -> Option<String> {
    let mut s = format!("{table}.\"{route}\"");
    if let Some(f) = field {
        s.push('.');
        s.push_str(f);
    }
    Some(s)
}

/// A [`ConfigError`] place (`routes[GET /x]`, `policies.p`, `stash`) written as the file
/// writes it (`routes."GET /x"`).
fn toml_place(table: &str, field: Option<&str>) -> String {
    let mut s = if let Some(route) = table
        .strip_prefix("routes[")
        .and_then(|r| r.strip_suffix(']'))
    {
        format!("routes.\"{route}\"")
    } else if let Some(route) = table
        .strip_prefix("rules[")
        .and_then(|r| r.strip_suffix(']'))
    {
        format!("rules.\"{route}\"")
    } else {
        table.to_owned()
    };
    if let Some(f) = field {
        s.push('.');
        s.push_str(f);
    }
    s
}

/// The line (from 1) of byte `offset`.
fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())].matches('\n').count() + 1
}

/// The dotted name of the key on the line of `offset`: its table header and the key.
fn field_at(text: &str, offset: usize) -> Option<String> {
    let offset = offset.min(text.len());
    let start = text[..offset].rfind('\n').map_or(0, |i| i + 1);
    let line = text[start..].lines().next().unwrap_or("");
    let key = line
        .split_once('=')
        .map(|(k, _)| k.trim().to_owned())
        .filter(|k| !k.is_empty() && !k.starts_with('['));
    let header = text[..start]
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.starts_with('[') && l.ends_with(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    let line_header = line
        .trim()
        .strip_prefix('[')
        .and_then(|l| l.strip_suffix(']'))
        .map(|l| l.trim_matches(|c| c == '[' || c == ']').trim().to_owned());
    match (line_header, header, key) {
        (Some(h), _, _) => Some(h),
        (None, Some(h), Some(k)) => Some(format!("{h}.{k}")),
        (None, None, Some(k)) => Some(k),
        (None, Some(h), None) => Some(h),
        (None, None, None) => None,
    }
}

#[cfg(test)]
mod tests;
