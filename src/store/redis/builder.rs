//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`], checked when it is built.

use super::cluster::{cluster_nodes, redact, Cluster, Clusters};
use super::connect::{is_tls, Connect, Target};
use super::given::{self, Given};
use super::oom::MemoryWatch;
use super::pool::{with_keepalive, Manager, PolicyCheck, RESPONSE_TIMEOUT};
use super::{Backend, RedisStore};
use crate::store::StoreError;
use redis::io::tcp::TcpSettings;
use redis::AsyncConnectionConfig;
use std::fmt;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::Duration;

/// Builds a [`RedisStore`]; from [`RedisStore::builder`].
#[must_use]
#[derive(Clone)]
pub struct RedisStoreBuilder {
    url: String,
    /// The application's client, in place of the URL.
    client: Option<redis::Client>,
    /// The application's connections, in place of the store's own pool.
    given: Option<Arc<dyn Given>>,
    /// Set, or the default (16 connections; one per node on a cluster).
    pool_size: Option<u32>,
    connect_timeout: Duration,
    checkout_timeout: Duration,
    tombstones_past_maxmemory: bool,
    connect: Connect,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("client", &self.client.is_some())
            .field("given", &self.given.is_some())
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("tombstones_past_maxmemory", &self.tombstones_past_maxmemory)
            .field("connect", &self.connect)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The default settings, for the Redis at `url`.
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            client: None,
            given: None,
            pool_size: None,
            connect_timeout: Duration::from_millis(500),
            checkout_timeout: Duration::from_millis(20),
            tombstones_past_maxmemory: true,
            connect: Connect::default(),
        }
    }

    /// The ACL user to authenticate as, in place of the URL's (`redis://USER:PASSWORD@...`).
    /// See the README's "With Redis" for the permissions the store needs.
    pub fn username(mut self, username: impl Into<String>) -> Self {
        self.connect.username = Some(username.into());
        self
    }

    /// The password, in place of the URL's; never shown by `Debug` nor in errors.
    pub fn password(mut self, password: impl Into<String>) -> Self {
        self.connect.password = Some(password.into());
        self
    }

    /// Trusts the certificate authorities in `pem` (one or more PEM certificates) to sign the
    /// server's certificate, in place of the system's roots: a managed Redis's own CA, or a
    /// private one. Needs a `rediss://` URL. Without it, the system's roots are trusted.
    #[cfg(feature = "tls")]
    pub fn tls_root_certificate(mut self, pem: impl Into<Vec<u8>>) -> Self {
        self.connect.root_certificate = Some(pem.into());
        self
    }

    /// Presents a client certificate and its private key (both PEM) in the TLS handshake,
    /// for a Redis that authenticates clients by certificate (`tls-auth-clients yes`).
    #[cfg(feature = "tls")]
    pub fn tls_client_certificate(
        mut self,
        certificate_pem: impl Into<Vec<u8>>,
        key_pem: impl Into<Vec<u8>>,
    ) -> Self {
        self.connect.client_certificate = Some((certificate_pem.into(), key_pem.into()));
        self
    }

    /// A builder for a store on the server of `client`, a client the application has: its
    /// address, credentials, database, protocol and TLS settings are the store's (TCP
    /// keepalive is added). The store opens its own pool of connections with it, and its
    /// subscription to the invalidation bus.
    pub(super) fn from_client(client: redis::Client) -> Self {
        Self {
            client: Some(client),
            ..Self::new(String::new())
        }
    }

    /// The most connections the pool opens (default 16). Calls share them (commands on a
    /// connection are pipelined); a call that finds the pool exhausted waits at most the
    /// [checkout timeout](Self::checkout_timeout). On a cluster, the cluster connections
    /// opened (each one multiplexed connection per node; default 1), used in turn.
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.pool_size = Some(connections);
        self
    }

    /// Runs the store's commands on `connection`, one the application has (a
    /// [`MultiplexedConnection`](redis::aio::MultiplexedConnection), a `ConnectionManager`),
    /// in place of the store's own pool: every call runs on a clone of it. The URL (or the
    /// client) still serves the subscription to the invalidation bus, which a command
    /// connection cannot carry, and [`check`](RedisStore::check). A dropped connection is
    /// the connection's to recover (a `ConnectionManager` reconnects by itself; a
    /// multiplexed connection does not). One server only, not a cluster.
    pub fn connection<C>(mut self, connection: C) -> Self
    where
        C: redis::aio::ConnectionLike + Clone + Send + Sync + 'static,
    {
        self.given = Some(Arc::new(given::One(connection)));
        self
    }

    /// Runs the store's commands on connections of `pool`, the application's bb8 pool of
    /// multiplexed connections (bb8-redis's `RedisConnectionManager`, or the redis crate's
    /// own), in place of the store's own pool: its size, timeouts and checks are its own; a
    /// call waits at most the [checkout timeout](Self::checkout_timeout) for a connection.
    /// As with [`connection`](Self::connection), the URL (or client) serves the bus.
    pub fn pool<M>(mut self, pool: bb8::Pool<M>) -> Self
    where
        M: bb8::ManageConnection<Connection = redis::aio::MultiplexedConnection>,
    {
        self.given = Some(Arc::new(given::Pool(pool)));
        self
    }

    /// How long opening a connection (TCP, AUTH, SELECT) may take (default 500 ms). Opening
    /// happens in the background; a call never waits longer than the checkout timeout for it.
    pub fn connect_timeout(mut self, timeout: Duration) -> Self {
        self.connect_timeout = timeout;
        self
    }

    /// How long a call waits for a free connection before it fails (default 20 ms; bb8's
    /// `connection_timeout`, whose own default of 30 s would hang every request when Redis is
    /// gone).
    pub fn checkout_timeout(mut self, timeout: Duration) -> Self {
        self.checkout_timeout = timeout;
        self
    }

    /// Whether an invalidation on a Redis out of memory (at `maxmemory` under `noeviction`)
    /// still leaves its tombstones and tag epochs (default `true`): they are written past
    /// `maxmemory` by a script allowed out of memory (Redis 7 or later), a few dozen bytes
    /// each, in the place of the entries they invalidate. With `false` (or on an older Redis)
    /// the keys are deleted instead (`DEL`, which Redis allows out of memory): the store never
    /// takes Redis past `maxmemory` for them, but a fill whose request began before the
    /// invalidation may put the old value back once memory frees. See [`RedisStore`], "Out of
    /// memory".
    pub fn tombstones_past_maxmemory(mut self, allow: bool) -> Self {
        self.tombstones_past_maxmemory = allow;
        self
    }

    /// Builds the store without waiting for Redis: a server that is down is not an error, its
    /// calls fail until it answers. A bad setting is an error naming it (`redis.url`, ...).
    ///
    /// Needs a tokio runtime (the pool runs background tasks on it).
    pub fn build(self) -> Result<RedisStore, StoreError> {
        if let Some(nodes) = cluster_nodes(&self.url) {
            return self.build_cluster(nodes?);
        }
        let tls = match &self.client {
            Some(c) => matches!(
                c.get_connection_info().addr(),
                redis::ConnectionAddr::TcpTls { .. }
            ),
            None => is_tls(&self.url),
        };
        let mut errors = self.connect.errors(tls);
        let client = if self.url.starts_with("redis+sentinel://")
            || self.url.starts_with("rediss+sentinel://")
        {
            self.sentinel()
        } else {
            match &self.client {
                Some(c) => self.connect.client_from(c.get_connection_info().clone()),
                None => self.connect.client(&self.url),
            }
            .map(Target::Client)
            .map_err(|e| e.to_string())
        };
        let client = match client {
            Ok(client) => Some(client),
            Err(e) => {
                errors.push(format!("redis.url: {e}"));
                None
            }
        };
        if self.pool_size == Some(0) {
            errors.push("redis.pool_size: must be at least 1".to_string());
        }
        if self.given.is_some() && self.pool_size.is_some() {
            errors.push(
                "redis.pool_size: the store runs on the connections it was given, not a pool of its own"
                    .to_string(),
            );
        }
        errors.extend(self.shared_errors());
        let Some(client) = client.filter(|_| errors.is_empty()) else {
            return Err(StoreError::new(errors.join("; ")));
        };
        let memory = Arc::new(MemoryWatch::new(self.tombstones_past_maxmemory));
        if let Some(given) = self.given {
            // The server's maxmemory-policy, read on one of the given connections.
            let (watch, wait, source) = (memory.clone(), self.connect_timeout, given.clone());
            tokio::spawn(async move {
                if let Ok(conn) = source.connection(wait).await {
                    watch.check_policy(conn);
                }
            });
            return Ok(RedisStore {
                backend: Backend::Given(given),
                checkout_timeout: self.checkout_timeout,
                clients: Arc::new(vec![client]),
                bus_live: Arc::default(),
                one_script: Arc::default(),
                acks: Arc::default(),
                releases: Arc::default(),
                connect_timeout: self.connect_timeout,
                memory,
            });
        }
        let epoch = Arc::new(AtomicU64::new(0));
        let manager = Manager {
            client: client.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            connect_timeout: self.connect_timeout,
            epoch: epoch.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(self.pool_size.unwrap_or(16))
            .connection_timeout(self.checkout_timeout)
            // A PING on every checkout would double the round trips of a hit; dropped
            // connections are found by the calls themselves (see `Manager::has_broken`).
            .test_on_check_out(false)
            // A failed connect is not retried in a loop: the next call asks again.
            .retry_connection(false)
            .min_idle(Some(1))
            // The first connection reads the server's maxmemory-policy, in the background.
            .connection_customizer(Box::new(PolicyCheck(memory.clone())))
            .build_unchecked(manager);
        let reads = Arc::new(super::batch::Reads::new(super::batch::PoolRef {
            pool: pool.clone(),
            epoch: epoch.clone(),
            checkout_timeout: self.checkout_timeout,
        }));
        Ok(RedisStore {
            backend: Backend::Single { pool, epoch, reads },
            checkout_timeout: self.checkout_timeout,
            clients: Arc::new(vec![client]),
            bus_live: Arc::default(),
            one_script: Arc::default(),
            acks: Arc::default(),
            releases: Arc::default(),
            connect_timeout: self.connect_timeout,
            memory,
        })
    }

    /// The sentinels of a `redis+sentinel://` URL.
    #[cfg(feature = "sentinel")]
    fn sentinel(&self) -> Result<Target, String> {
        let url = super::sentinel::sentinel_url(&self.url).expect("a sentinel URL")?;
        super::sentinel::build(url, &self.connect)
            .map(|s| Target::Sentinel(Arc::new(s)))
            .map_err(|e| e.to_string())
    }

    #[cfg(not(feature = "sentinel"))]
    fn sentinel(&self) -> Result<Target, String> {
        Err("a `redis+sentinel://` URL needs tower-stash's `sentinel` feature".to_owned())
    }

    /// What is wrong with the settings one server and a cluster share.
    fn shared_errors(&self) -> Vec<String> {
        let mut errors = Vec::new();
        if self.connect_timeout.is_zero() {
            errors.push("redis.connect_timeout: must be more than zero".to_string());
        }
        if self.checkout_timeout.is_zero() {
            errors.push("redis.checkout_timeout: must be more than zero".to_string());
        }
        if tokio::runtime::Handle::try_current().is_err() {
            errors.push("redis: build() must run inside a tokio runtime".to_string());
        }
        errors
    }

    fn build_cluster(self, nodes: Vec<String>) -> Result<RedisStore, StoreError> {
        let mut errors = self.connect.errors(is_tls(&self.url));
        if self.given.is_some() {
            errors.push(
                "redis.url: a given connection or pool serves one server, not a cluster"
                    .to_string(),
            );
        }
        if self.pool_size == Some(0) {
            errors.push("redis.pool_size: must be at least 1".to_string());
        }
        let mut clients = Vec::new();
        for node in &nodes {
            match self.connect.client(node) {
                Ok(c) => clients.push(Target::Client(c)),
                Err(e) => errors.push(format!("redis.url: node `{}`: {e}", redact(node))),
            }
        }
        if nodes.is_empty() {
            errors.push("redis.url: a cluster needs at least one seed node".to_string());
        }
        errors.extend(self.shared_errors());
        let client = if errors.is_empty() {
            let builder = redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str));
            self.connect
                .cluster(builder)
                .connection_timeout(self.connect_timeout)
                // A node that stops answering (paused, partitioned) fails its calls, so that
                // the slot map is refreshed once a replica takes over.
                .response_timeout(self.connect_timeout)
                .tcp_settings(with_keepalive(&TcpSettings::default()))
                // Failovers and resharding are followed by a few quick retries; a caller that
                // cannot wait is cut short by its own timeout (`Guarded`).
                .retries(4)
                .min_retry_wait(10)
                .max_retry_wait(200)
                .build()
                .map_err(|e| errors.push(format!("redis.url: {e}")))
                .ok()
        } else {
            None
        };
        let Some(client) = client.filter(|_| errors.is_empty()) else {
            return Err(StoreError::new(errors.join("; ")));
        };
        let each = (0..self.pool_size.unwrap_or(1))
            .map(|_| {
                Arc::new(Cluster {
                    client: client.clone(),
                    conn: tokio::sync::watch::channel(None).0,
                    connecting: std::sync::atomic::AtomicBool::new(false),
                    connect_timeout: self.connect_timeout,
                })
            })
            .collect();
        let seeds: Vec<redis::Client> = clients
            .iter()
            .filter_map(|target| match target {
                Target::Client(client) => Some(client.clone()),
                #[cfg(feature = "sentinel")]
                Target::Sentinel(_) => None,
            })
            .collect();
        let cluster = Arc::new(Clusters::new(each, &seeds, self.connect_timeout));
        let memory = Arc::new(MemoryWatch::new(self.tombstones_past_maxmemory));
        // The first connection reads a node's maxmemory-policy, in the background (the wait
        // ends when the store is dropped).
        let (mut opened, watch) = (cluster.first().conn.subscribe(), memory.clone());
        tokio::spawn(async move {
            if let Ok(conn) = opened.wait_for(Option::is_some).await {
                if let Some(conn) = conn.as_ref() {
                    watch.check_policy(conn.clone());
                }
            }
        });
        Ok(RedisStore {
            backend: Backend::Cluster(cluster),
            checkout_timeout: self.checkout_timeout,
            clients: Arc::new(clients),
            bus_live: Arc::default(),
            one_script: Arc::default(),
            acks: Arc::default(),
            releases: Arc::default(),
            connect_timeout: self.connect_timeout,
            memory,
        })
    }
}
