//! What to cache: [`Policy`] per route, [`Routes`] from method and path pattern to policy, and
//! the named policies (the TTL map) that routes can start from.
//!
//! Path patterns use the syntax of axum and [matchit]: `/users/{id}`, `/files/{*path}`. A request
//! that matches no pattern passes through the cache untouched, at the cost of one route match.
//!
//! # Example
//!
//! ```
//! use std::time::Duration;
//! use tower_stash::{Policy, Routes};
//!
//! let hour = Duration::from_secs(3600);
//! let routes = Routes::new()
//!     // Named policies (a TTL map) that routes start from.
//!     .policy("user_profile", Policy::ttl(hour))
//!     .policy("product", Policy::ttl(24 * hour))
//!     // The named policy `user_profile` (1 hour), keyed `user:{id}`, tagged `users`.
//!     .get("/users/{id}", Policy::named("user_profile").key("user:{id}").tags(["users"]))
//!     // A policy of its own: 10 minutes, varying on one query parameter and a header.
//!     .get(
//!         "/search",
//!         Policy::ttl(Duration::from_secs(600))
//!             .key_query(["q"])
//!             .key_headers(["accept-language"]),
//!     )
//!     .get("/products/{id}", Policy::named("product"))
//!     // Override a named policy for every route that uses it.
//!     .policy("product", Policy::ttl(12 * hour));
//! assert!(routes.validate().is_ok());
//!
//! // Mistakes are reported with the route and the field.
//! let err = Routes::new()
//!     .get("/users/{id}", Policy::ttl(hour).key("user:{uid}"))
//!     .validate()
//!     .unwrap_err();
//! assert!(err.to_string().contains("routes[GET /users/{id}].key"));
//! ```
//!
//! [matchit]: https://docs.rs/matchit

mod compiled;
mod routes;

pub(crate) use compiled::{CompiledPolicy, MethodTable, RouteTable};
pub use routes::Routes;

use crate::key::QueryKey;
use std::fmt;
use std::time::Duration;

/// The statuses stored when a policy names none: those RFC 9111 calls heuristically cacheable,
/// minus 206 (a partial body is never the full response), 405, 414 and 501.
pub const DEFAULT_STATUSES: [u16; 8] = [200, 203, 204, 300, 301, 308, 404, 410];

/// The largest body stored when a policy sets no limit: 1 MiB. Larger bodies still stream to
/// the client; they are just not stored.
pub const DEFAULT_MAX_BODY_SIZE: usize = 1024 * 1024;

/// How many `Vary` variants of one URL HTTP mode keeps when a policy sets no bound.
pub const DEFAULT_MAX_VARIANTS: usize = 32;

/// How many tags one entry may carry when a policy sets no bound (its own, the handler's, and
/// the one or two the cache adds to find a key's variants).
pub const DEFAULT_MAX_TAGS: usize = 64;

/// How one route is cached: TTL, key, what varies the key, what is stored.
///
/// Every setting left unset comes from the named base policy ([`Policy::named`]), or else from
/// the defaults: key `METHOD path?query`, every query parameter keyed, no header keyed, the
/// [`DEFAULT_STATUSES`], a [`DEFAULT_MAX_BODY_SIZE`] body limit, no tags, a derived `ETag`.
/// A TTL is required, from the policy or its base.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Policy {
    pub(crate) base: Option<String>,
    pub(crate) ttl: Option<Duration>,
    pub(crate) key: Option<String>,
    pub(crate) query: Option<QueryKey>,
    pub(crate) key_headers: Option<Vec<String>>,
    pub(crate) statuses: Option<Vec<u16>>,
    pub(crate) status_ttls: Option<Vec<(u16, Duration)>>,
    pub(crate) max_body_size: Option<usize>,
    pub(crate) tags: Option<Vec<String>>,
    pub(crate) unsafe_methods: Option<bool>,
    pub(crate) etag: Option<bool>,
    pub(crate) stale_while_revalidate: Option<Duration>,
    pub(crate) stale_if_error: Option<Duration>,
    pub(crate) early_refresh: Option<f64>,
    pub(crate) ttl_jitter: Option<Duration>,
    pub(crate) upstream_timeout: Option<Duration>,
    pub(crate) fields: Option<crate::key::MessageFields>,
    pub(crate) sliding: Option<Duration>,
    pub(crate) max_lifetime: Option<Duration>,
    pub(crate) session: Option<Session>,
    pub(crate) http_mode: Option<bool>,
    pub(crate) request_directives: Option<bool>,
    pub(crate) max_variants: Option<usize>,
    pub(crate) allow_headers: Option<Vec<String>>,
    pub(crate) hints: Option<bool>,
    pub(crate) without_set_cookie: Option<bool>,
    pub(crate) targeted_field: Option<String>,
    pub(crate) cdn_cache_control: Option<bool>,
    pub(crate) hosts: Option<Vec<String>>,
    pub(crate) max_tags: Option<usize>,
    pub(crate) ignore_cookies: Option<Vec<String>>,
    /// Set by [`Routes::grpc`], never inherited.
    pub(crate) grpc: bool,
}

impl Policy {
    /// An empty policy: set a TTL with [`with_ttl`](Self::with_ttl).
    pub fn new() -> Self {
        Self::default()
    }

    /// A policy that caches for `ttl`.
    pub fn ttl(ttl: Duration) -> Self {
        Self::new().with_ttl(ttl)
    }

    /// A policy built on the named policy `name` (see [`Routes::policy`]); what this policy sets
    /// overrides the base.
    pub fn named(name: impl Into<String>) -> Self {
        Self {
            base: Some(name.into()),
            ..Self::default()
        }
    }

    /// Sets how long responses stay fresh (the setter of [`Policy::ttl`]).
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = Some(ttl);
        self
    }

    /// Renamed [`with_ttl`](Self::with_ttl).
    #[deprecated(note = "renamed `with_ttl`")]
    pub fn time_to_live(self, ttl: Duration) -> Self {
        self.with_ttl(ttl)
    }

    /// Sets the key template, such as `user:{id}`, filled from the path parameters. The query
    /// parameters and headers the policy varies on are appended to it.
    pub fn key(mut self, template: impl Into<String>) -> Self {
        self.key = Some(template.into());
        self
    }

    /// Keys only these query parameters; the others never change the response.
    pub fn key_query<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.query = Some(QueryKey::Only(names.into_iter().map(Into::into).collect()));
        self
    }

    /// Renamed [`key_query`](Self::key_query).
    #[deprecated(note = "renamed `key_query`")]
    pub fn vary_query<I, T>(self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.key_query(names)
    }

    /// Keys no query parameter.
    pub fn ignore_query(mut self) -> Self {
        self.query = Some(QueryKey::Ignore);
        self
    }

    /// Keys these request headers. Varying on `authorization` or `cookie` lets requests that
    /// carry them use the cache, each user with entries of their own.
    pub fn key_headers<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.key_headers = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Renamed [`key_headers`](Self::key_headers) (`Vary` is the response's header).
    #[deprecated(note = "renamed `key_headers`")]
    pub fn vary_headers<I, T>(self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.key_headers(names)
    }

    /// Sets the statuses that are stored (2xx to 4xx only, never 206, 304, 412 or 416; in
    /// HTTP mode 2xx to 5xx, a 206 apart as a partial response).
    pub fn statuses<I: IntoIterator<Item = u16>>(mut self, statuses: I) -> Self {
        self.statuses = Some(statuses.into_iter().collect());
        self
    }

    /// Stores answers of `status` for `ttl`, a lifetime of their own (such as a minute for a
    /// 404 on a route whose 200s live an hour), like nginx's `proxy_cache_valid 404 1m`.
    ///
    /// The status joins the stored ones. In application mode `ttl` replaces the policy's TTL
    /// for that status (a handler's [`CacheHint`](crate::CacheHint) TTL still wins); in HTTP
    /// mode it is the lifetime of an answer to which the origin gives no explicit freshness
    /// (`s-maxage`, `max-age`, `Expires`), in place of a heuristic one.
    ///
    /// This is how a policy asks for client errors other than the default 404 and 410 (a
    /// 400, 403, 429): without it, they are never stored. In HTTP mode, a 4xx without a
    /// status TTL is stored only with explicit freshness from the origin, never heuristic.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stash::Policy;
    ///
    /// let policy = Policy::ttl(Duration::from_secs(3600))
    ///     .status_ttl(404, Duration::from_secs(60))
    ///     .status_ttl(429, Duration::from_secs(1));
    /// # let _ = policy;
    /// ```
    pub fn status_ttl(mut self, status: u16, ttl: Duration) -> Self {
        let list = self.status_ttls.get_or_insert_with(Vec::new);
        list.retain(|(s, _)| *s != status);
        list.push((status, ttl));
        self
    }

    /// Sets the largest body stored, in bytes.
    pub fn max_body_size(mut self, bytes: usize) -> Self {
        self.max_body_size = Some(bytes);
        self
    }

    /// Sets the tags of the route's entries; templates such as `user:{id}` are filled from the
    /// path parameters. Handlers can add tags per response ([`CacheHint`](crate::CacheHint)).
    pub fn tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags = Some(tags.into_iter().map(Into::into).collect());
        self
    }

    /// Allows this policy on methods other than GET and HEAD (for example a POST used as a
    /// query). The request body is not part of the key: use it only where the body does not
    /// change the response.
    pub fn unsafe_methods(mut self, allow: bool) -> Self {
        self.unsafe_methods = Some(allow);
        self
    }

    /// Whether to derive a strong `ETag` from the body of stored responses that have none
    /// (default `true`), so that hits can answer `If-None-Match` with 304.
    pub fn etag(mut self, derive: bool) -> Self {
        self.etag = Some(derive);
        self
    }

    /// Serves an expired entry for up to `window` after it expires, at once and marked
    /// `Cache-Status: ...; hit; stale`, while one request per key (across instances sharing a
    /// store with leases) refreshes it in the background. Default: none. In HTTP mode, never
    /// for an entry the origin says must be revalidated (`must-revalidate`,
    /// `proxy-revalidate`, `s-maxage`, `no-cache`).
    pub fn stale_while_revalidate(mut self, window: Duration) -> Self {
        self.stale_while_revalidate = Some(window);
        self
    }

    /// Serves an expired entry for up to `window` after it expires when the service fails
    /// (an error, a 5xx, or no answer within [`upstream_timeout`](Self::upstream_timeout)),
    /// marked `Cache-Status: ...; fwd=stale; ...; stale`. Default: none. In HTTP mode, never
    /// for an entry the origin says must be revalidated, as for
    /// [`stale_while_revalidate`](Self::stale_while_revalidate).
    pub fn stale_if_error(mut self, window: Duration) -> Self {
        self.stale_if_error = Some(window);
        self
    }

    /// Refreshes hot entries in the background shortly before they expire, with probabilistic
    /// early expiration (XFetch): a hit at `now` refreshes when
    /// `now - delta * beta * ln(rand()) >= expiry`, `delta` being how long the response took
    /// to produce. A larger `beta` refreshes earlier; `0` turns it off. Default: `1.0`.
    pub fn early_refresh(mut self, beta: f64) -> Self {
        self.early_refresh = Some(beta);
        self
    }

    /// Shortens each stored entry's TTL by a random amount below `jitter`, so that entries
    /// stored together do not all expire together. Default: none.
    pub fn ttl_jitter(mut self, jitter: Duration) -> Self {
        self.ttl_jitter = Some(jitter);
        self
    }

    /// With a stale entry in hand ([`stale_if_error`](Self::stale_if_error)), how long to wait
    /// for the service before answering with the stale entry; the service's answer is still
    /// stored when it comes. Default: no limit.
    pub fn upstream_timeout(mut self, timeout: Duration) -> Self {
        self.upstream_timeout = Some(timeout);
        self
    }

    /// Names fields of a gRPC route's decoded request message, for the key template and tags
    /// (`user:{id}`): see [`grpc`](crate::grpc).
    pub fn fields<M: 'static>(mut self, fields: crate::key::fields::Fields<M>) -> Self {
        self.fields = Some(fields.into());
        self
    }

    /// Sliding expiry: an entry expires after `idle` without a hit, and at the latest
    /// [`max_lifetime`](Self::max_lifetime) after it was stored (required with this). Every
    /// hit extends it, in memory and in Redis (in the read's round trip, one script; a hit from
    /// the memory tier extends Redis's copy in the background, at most every `idle / 8`).
    /// The policy's `ttl` is not used. Not combined with stale serving or early refresh.
    pub fn sliding(mut self, idle: Duration) -> Self {
        self.sliding = Some(idle);
        self
    }

    /// The absolute cap of a [`sliding`](Self::sliding) entry's life: it expires this long
    /// after it was stored, however active.
    pub fn max_lifetime(mut self, cap: Duration) -> Self {
        self.max_lifetime = Some(cap);
        self
    }

    /// Cookies this route's answers never depend on (analytics, consent banners: `_ga`,
    /// `_gid`), so that a request carrying only these does not bypass the cache (any other
    /// `Cookie` does, unless the policy keys it). They are forwarded to the service on a miss
    /// and are never in the key: name only cookies the service does not read for this route.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stash::Policy;
    ///
    /// let policy = Policy::ttl(Duration::from_secs(60)).ignore_cookies(["_ga", "_gid"]);
    /// # let _ = policy;
    /// ```
    pub fn ignore_cookies<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.ignore_cookies = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Scopes entries to a session: the key holds a 128-bit hash of the cookie `name`'s value,
    /// so an entry is served only to requests with that same cookie, and a request without it
    /// bypasses the cache. Requests carrying other cookies may use the cache too: only this
    /// one is keyed.
    pub fn session_cookie(mut self, name: impl Into<String>) -> Self {
        self.session = Some(Session::Cookie(name.into()));
        self
    }

    /// Scopes entries to a session carried in the header `name` (such as `x-session-id` or
    /// `authorization`): as [`session_cookie`](Self::session_cookie).
    pub fn session_header(mut self, name: impl Into<String>) -> Self {
        self.session = Some(Session::Header(name.into()));
        self
    }

    /// HTTP mode: the origin's headers decide, as in a shared cache (RFC 9111; see
    /// [`http`](crate::http)). Responses are stored only as long as their `Cache-Control`,
    /// `Expires` or `Last-Modified` allow (the policy's `ttl`, if set, caps that), `Age` counts
    /// the time before they arrived, and requests' `Cache-Control` is honoured. Default:
    /// application mode, where the policy decides.
    pub fn http_mode(mut self, on: bool) -> Self {
        self.http_mode = Some(on);
        self
    }

    /// Whether requests' `Cache-Control` (`no-cache`, `max-age`, `only-if-cached`, ...) is
    /// honoured. Default: in HTTP mode yes; in application mode no, so that no client can
    /// force misses onto the service.
    pub fn request_directives(mut self, honour: bool) -> Self {
        self.request_directives = Some(honour);
        self
    }

    /// HTTP mode: how many `Vary` variants of one URL are kept (default
    /// [`DEFAULT_MAX_VARIANTS`]). Storing one more drops the variant stored longest ago, so
    /// that a `Vary` on a header with endless values (`User-Agent`, `Cookie`) cannot fill the
    /// cache with copies of one URL.
    pub fn max_variants(mut self, n: usize) -> Self {
        self.max_variants = Some(n);
        self
    }

    /// Names the request headers, besides the keyed ones, that may reach the service on this
    /// route: closes cache poisoning by construction, where a list of known dangerous
    /// headers always misses one.
    ///
    /// - In application mode (the handler reads the request itself), a request carrying any
    ///   other header bypasses the cache (`Cache-Status: ...; fwd=bypass`, detail
    ///   `unlisted-header`): it is answered, never stored.
    /// - In [HTTP mode](Self::http_mode) (a cache in front of an origin, as a CDN's
    ///   origin-request policy), every other header is removed from the cacheable requests
    ///   the cache forwards; requests it bypasses or passes through keep all of theirs.
    ///
    /// Either way, these always pass: `Host`, the headers the cache itself reads
    /// (`Cache-Control`, `Pragma`, `If-None-Match`, `If-Modified-Since`, `If-Match`,
    /// `If-Unmodified-Since`, `If-Range`, `Range`), `Authorization` and `Cookie` (which bypass
    /// unless keyed, or follow RFC 9111 in HTTP mode), and the connection's own
    /// (`Connection`, `Keep-Alive`, `TE`, `Content-Length`, `Transfer-Encoding`).
    /// Default: no list, every header passes, and only requests carrying one of the headers
    /// known to rewrite what apps answer (`X-Forwarded-Host`, `X-Forwarded-Proto`,
    /// `Forwarded`, `X-HTTP-Method-Override`, ...) bypass.
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stash::Policy;
    ///
    /// let policy = Policy::ttl(Duration::from_secs(60))
    ///     .allow_headers(["accept", "accept-encoding", "accept-language", "user-agent"]);
    /// # let _ = policy;
    /// ```
    pub fn allow_headers<I, T>(mut self, names: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.allow_headers = Some(names.into_iter().map(Into::into).collect());
        self
    }

    /// Whether the service's hints ([`CacheHint`](crate::CacheHint), the `x-stash-skip`,
    /// `x-stash-ttl` and `x-stash-tags` headers) are obeyed. Default: in application mode
    /// yes (the handler is the app's own); in HTTP mode no: there the origin speaks with
    /// `Cache-Control`, and an origin one does not run must not stretch a `max-age=0` to a
    /// year nor tag entries; its `x-stash-*` headers then reach the client as any other.
    pub fn hints(mut self, obey: bool) -> Self {
        self.hints = Some(obey);
        self
    }

    /// Whether an answer carrying `Set-Cookie` is stored, without its `Set-Cookie`, when it
    /// is otherwise storable. Default: no, such an answer is not stored.
    ///
    /// Turned on, the client whose request filled the entry gets its cookie, and every
    /// other client the stored copy, which has none (a `304` that confirms the entry adds
    /// none to it either); single flight hands the waiting requests that copy too. RFC 9111
    /// allows a shared cache to store such answers; it is safe only where the body does not
    /// depend on who the cookie is for (a tracking or load-balancer cookie set on a public
    /// page). Where the cookie opens a session whose page is personal, it serves one
    /// visitor's page to others: key the session instead ([`Policy::session_cookie`]).
    ///
    /// ```
    /// use std::time::Duration;
    /// use tower_stash::Policy;
    ///
    /// let policy = Policy::ttl(Duration::from_secs(60)).store_without_set_cookie(true);
    /// # let _ = policy;
    /// ```
    pub fn store_without_set_cookie(mut self, on: bool) -> Self {
        self.without_set_cookie = Some(on);
        self
    }

    /// HTTP mode: a targeted cache-control field (RFC 9213) naming this cache, such as
    /// `Stash-Cache-Control`: when a response carries it (valid and not empty), its
    /// directives decide instead of `CDN-Cache-Control`, `Cache-Control` and `Expires`. The
    /// field is forwarded to the client like any other. Default: none.
    pub fn targeted_field(mut self, name: impl Into<String>) -> Self {
        self.targeted_field = Some(name.into());
        self
    }

    /// HTTP mode: whether `CDN-Cache-Control` (RFC 9213) is obeyed: when a response carries
    /// it (valid and not empty, and no [`targeted_field`](Self::targeted_field) first), its
    /// directives decide instead of `Cache-Control` and `Expires`. Default: yes, as a CDN
    /// does; turn it off for a cache that is not one.
    pub fn cdn_cache_control(mut self, obey: bool) -> Self {
        self.cdn_cache_control = Some(obey);
        self
    }

    /// Application mode: the hosts this route answers alike. Requests for any other host
    /// (their `Host`, or the authority of an absolute URI) bypass the cache, and the listed
    /// hosts share entries (the host is then not in the key). Default: no list, and each
    /// host a request names gets entries of its own: see [`cache`](crate::cache) for why.
    pub fn hosts<I, T>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// How many tags one entry may carry (default [`DEFAULT_MAX_TAGS`]): the policy's, the
    /// handler's ([`CacheHint`](crate::CacheHint)), and those the cache adds. An answer with
    /// more is not stored (`detail=too-many-tags`): dropping some would leave it out of
    /// invalidations that should reach it, and every tag is an index to keep.
    pub fn max_tags(mut self, n: usize) -> Self {
        self.max_tags = Some(n);
        self
    }

    /// This policy's settings over `base`'s.
    fn over(&self, base: &Policy) -> Policy {
        Policy {
            base: None,
            ttl: self.ttl.or(base.ttl),
            key: self.key.clone().or_else(|| base.key.clone()),
            query: self.query.clone().or_else(|| base.query.clone()),
            key_headers: self
                .key_headers
                .clone()
                .or_else(|| base.key_headers.clone()),
            statuses: self.statuses.clone().or_else(|| base.statuses.clone()),
            status_ttls: self
                .status_ttls
                .clone()
                .or_else(|| base.status_ttls.clone()),
            max_body_size: self.max_body_size.or(base.max_body_size),
            tags: self.tags.clone().or_else(|| base.tags.clone()),
            unsafe_methods: self.unsafe_methods.or(base.unsafe_methods),
            etag: self.etag.or(base.etag),
            stale_while_revalidate: self.stale_while_revalidate.or(base.stale_while_revalidate),
            stale_if_error: self.stale_if_error.or(base.stale_if_error),
            early_refresh: self.early_refresh.or(base.early_refresh),
            ttl_jitter: self.ttl_jitter.or(base.ttl_jitter),
            upstream_timeout: self.upstream_timeout.or(base.upstream_timeout),
            fields: self.fields.clone().or_else(|| base.fields.clone()),
            sliding: self.sliding.or(base.sliding),
            max_lifetime: self.max_lifetime.or(base.max_lifetime),
            session: self.session.clone().or_else(|| base.session.clone()),
            http_mode: self.http_mode.or(base.http_mode),
            request_directives: self.request_directives.or(base.request_directives),
            max_variants: self.max_variants.or(base.max_variants),
            allow_headers: self
                .allow_headers
                .clone()
                .or_else(|| base.allow_headers.clone()),
            hints: self.hints.or(base.hints),
            without_set_cookie: self.without_set_cookie.or(base.without_set_cookie),
            targeted_field: self
                .targeted_field
                .clone()
                .or_else(|| base.targeted_field.clone()),
            cdn_cache_control: self.cdn_cache_control.or(base.cdn_cache_control),
            hosts: self.hosts.clone().or_else(|| base.hosts.clone()),
            max_tags: self.max_tags.or(base.max_tags),
            ignore_cookies: self
                .ignore_cookies
                .clone()
                .or_else(|| base.ignore_cookies.clone()),
            grpc: self.grpc,
        }
    }
}

/// Where a session-scoped policy finds the session id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Session {
    Cookie(String),
    Header(String),
}

/// A configuration mistake. Each line names the place (`routes[GET /users/{id}].key`,
/// `stash.namespace`) and what is wrong with it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    errors: Vec<String>,
}

impl ConfigError {
    pub(crate) fn new(errors: Vec<String>) -> Self {
        Self { errors }
    }

    /// Each mistake, one a line.
    pub fn errors(&self) -> &[String] {
        &self.errors
    }
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid cache configuration: {}", self.errors.join("; "))
    }
}

impl std::error::Error for ConfigError {}
