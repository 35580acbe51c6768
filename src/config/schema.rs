//! The tables of a configuration file, as plain data, and what each becomes.

use super::Config;
use crate::{Invalidate, Policy};
use http::Method;
use serde::{Deserialize, Deserializer};
use std::collections::BTreeMap;
use std::fmt;
use std::ops::Range;
use std::time::Duration;

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
    /// `redis://[user:password@]host:port[/db]` (`rediss://` for TLS), or
    /// `redis+cluster://host:port,host:port` for a cluster's seed nodes.
    pub url: Option<String>,
    /// The ACL user, in place of the URL's.
    pub username: Option<String>,
    /// The password, in place of the URL's.
    pub password: Option<String>,
    /// A PEM file of the certificate authorities trusted to sign the server's certificate, in
    /// place of the system's roots (feature `tls`; a `rediss://` URL). Relative to the
    /// working directory.
    pub ca_file: Option<String>,
    /// A PEM client certificate presented in the TLS handshake (with `client_key_file`).
    pub client_cert_file: Option<String>,
    /// The PEM private key of `client_cert_file`.
    pub client_key_file: Option<String>,
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
            .field("username", &self.username)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
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
    #[serde(alias = "vary_query")]
    pub key_query: Option<Vec<String>>,
    /// Keys no query parameter.
    pub ignore_query: Option<bool>,
    /// Request headers keyed.
    #[serde(alias = "vary_headers")]
    pub key_headers: Option<Vec<String>>,
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
    /// Cookies the route's answers never depend on (see [`Policy::ignore_cookies`]).
    pub ignore_cookies: Option<Vec<String>>,
    /// The header holding the session id.
    pub session_header: Option<String>,
    /// HTTP mode: the origin's headers decide (RFC 9111).
    pub http_mode: Option<bool>,
    /// Whether requests' `Cache-Control` is honoured.
    pub request_directives: Option<bool>,
    /// HTTP mode: the `Vary` variants of one URL kept at most.
    pub max_variants: Option<usize>,
    /// The request headers allowed besides the keyed ones (see [`Policy::allow_headers`]).
    pub allow_headers: Option<Vec<String>>,
    /// Whether the service's hints (`x-stash-*`) are obeyed (see [`Policy::hints`]).
    pub hints: Option<bool>,
    /// Whether `Set-Cookie` answers are stored without it (see
    /// [`Policy::store_without_set_cookie`]).
    pub store_without_set_cookie: Option<bool>,
    /// HTTP mode: a targeted cache-control field naming this cache (see
    /// [`Policy::targeted_field`]).
    pub targeted_field: Option<String>,
    /// HTTP mode: whether `CDN-Cache-Control` is obeyed (see [`Policy::cdn_cache_control`]).
    pub cdn_cache_control: Option<bool>,
    /// Application mode: the hosts answered alike (see [`Policy::hosts`]).
    pub hosts: Option<Vec<String>>,
    /// How many tags one entry may carry (see [`Policy::max_tags`]).
    pub max_tags: Option<usize>,
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
    /// The hosts a write-through's entry is for, as the GET route's `hosts`.
    pub hosts: Option<Vec<String>>,
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

impl PolicyConfig {
    /// The [`Policy`] this table describes.
    pub fn to_policy(&self) -> Policy {
        let mut p = match &self.policy {
            Some(base) => Policy::named(base.clone()),
            None => Policy::new(),
        };
        if let Some(d) = self.ttl {
            p = p.with_ttl(d.0);
        }
        if let Some(k) = &self.key {
            p = p.key(k.clone());
        }
        if let Some(q) = &self.key_query {
            p = p.key_query(q.clone());
        }
        if self.ignore_query == Some(true) {
            p = p.ignore_query();
        }
        if let Some(h) = &self.key_headers {
            p = p.key_headers(h.clone());
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
        if let Some(c) = &self.ignore_cookies {
            p = p.ignore_cookies(c.clone());
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
        if let Some(h) = &self.allow_headers {
            p = p.allow_headers(h.clone());
        }
        if let Some(on) = self.hints {
            p = p.hints(on);
        }
        if let Some(on) = self.store_without_set_cookie {
            p = p.store_without_set_cookie(on);
        }
        if let Some(name) = &self.targeted_field {
            p = p.targeted_field(name.clone());
        }
        if let Some(on) = self.cdn_cache_control {
            p = p.cdn_cache_control(on);
        }
        if let Some(h) = &self.hosts {
            p = p.hosts(h.clone());
        }
        if let Some(n) = self.max_tags {
            p = p.max_tags(n);
        }
        p
    }
}

impl RuleConfig {
    /// The [`Invalidate`] rule this table describes.
    pub fn to_rule(&self) -> Invalidate {
        let mut r = Invalidate::keys(self.keys.clone()).with_tags(self.tags.clone());
        if let Some(w) = &self.write_through {
            let wt = Invalidate::write_through(w.key.clone(), w.ttl.0);
            r = wt.with_keys(r.keys).with_tags(r.tags);
        }
        let r = r.entry_tags(self.entry_tags.clone());
        match &self.hosts {
            Some(hosts) => r.hosts(hosts.clone()),
            None => r,
        }
    }
}

/// `"GET /users/{id}"` into its method and path.
pub(super) fn split_route(route: &str) -> Result<(Method, String), String> {
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

pub(super) fn route_field(table: &str, route: &str, field: Option<&str>) -> Option<String> {
    let mut s = format!("{table}.\"{route}\"");
    if let Some(f) = field {
        s.push('.');
        s.push_str(f);
    }
    Some(s)
}

/// The file as serde reads it: each table with its place, which [`Config`] keeps apart from
/// its plain fields.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct File {
    #[serde(default)]
    stash: StashConfig,
    #[serde(default)]
    policies: BTreeMap<String, toml::Spanned<PolicyConfig>>,
    #[serde(default)]
    routes: BTreeMap<String, toml::Spanned<PolicyConfig>>,
    #[serde(default)]
    rules: BTreeMap<String, toml::Spanned<RuleConfig>>,
}

/// Where the tables of a file stand (byte ranges of its text).
#[derive(Debug, Clone, Default)]
pub(super) struct Spans {
    pub(super) policies: BTreeMap<String, Range<usize>>,
    pub(super) routes: BTreeMap<String, Range<usize>>,
    pub(super) rules: BTreeMap<String, Range<usize>>,
}

fn unspan<T>(
    tables: BTreeMap<String, toml::Spanned<T>>,
    spans: &mut BTreeMap<String, Range<usize>>,
) -> BTreeMap<String, T> {
    tables
        .into_iter()
        .map(|(name, table)| {
            spans.insert(name.clone(), table.span());
            (name, table.into_inner())
        })
        .collect()
}

impl From<File> for Config {
    fn from(file: File) -> Self {
        let mut spans = Spans::default();
        Config {
            stash: file.stash,
            policies: unspan(file.policies, &mut spans.policies),
            routes: unspan(file.routes, &mut spans.routes),
            rules: unspan(file.rules, &mut spans.rules),
            spans,
            source: None,
        }
    }
}
