//! [`RedisStoreBuilder`]: the settings of a [`RedisStore`], checked when it is built.

use super::cluster::{cluster_nodes, redact, Cluster};
use super::oom::MemoryWatch;
use super::pool::{connection_info, with_keepalive, Manager, PolicyCheck, RESPONSE_TIMEOUT};
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
    pool_size: u32,
    connect_timeout: Duration,
    checkout_timeout: Duration,
    tombstones_past_maxmemory: bool,
}

impl fmt::Debug for RedisStoreBuilder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisStoreBuilder")
            .field("pool_size", &self.pool_size)
            .field("connect_timeout", &self.connect_timeout)
            .field("checkout_timeout", &self.checkout_timeout)
            .field("tombstones_past_maxmemory", &self.tombstones_past_maxmemory)
            .finish_non_exhaustive()
    }
}

impl RedisStoreBuilder {
    /// The default settings, for the Redis at `url`.
    pub(super) fn new(url: String) -> Self {
        Self {
            url,
            pool_size: 16,
            connect_timeout: Duration::from_millis(500),
            checkout_timeout: Duration::from_millis(20),
            tombstones_past_maxmemory: true,
        }
    }

    /// The most connections the pool opens (default 16). Each serves one call at a time; a call
    /// that finds none free waits at most the [checkout timeout](Self::checkout_timeout).
    pub fn pool_size(mut self, connections: u32) -> Self {
        self.pool_size = connections;
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
        let mut errors = Vec::new();
        let client = match connection_info(&self.url).and_then(redis::Client::open) {
            Ok(client) => Some(client),
            Err(e) => {
                errors.push(format!("redis.url: {e}"));
                None
            }
        };
        if self.pool_size == 0 {
            errors.push("redis.pool_size: must be at least 1".to_string());
        }
        errors.extend(self.shared_errors());
        let Some(client) = client.filter(|_| errors.is_empty()) else {
            return Err(StoreError::new(errors.join("; ")));
        };
        let epoch = Arc::new(AtomicU64::new(0));
        let memory = Arc::new(MemoryWatch::new(self.tombstones_past_maxmemory));
        let manager = Manager {
            client: client.clone(),
            config: AsyncConnectionConfig::new()
                .set_connection_timeout(Some(self.connect_timeout))
                .set_response_timeout(Some(RESPONSE_TIMEOUT)),
            connect_timeout: self.connect_timeout,
            epoch: epoch.clone(),
        };
        let pool = bb8::Pool::builder()
            .max_size(self.pool_size)
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
        Ok(RedisStore {
            backend: Backend::Single { pool, epoch },
            checkout_timeout: self.checkout_timeout,
            clients: Arc::new(vec![client]),
            bus_live: Arc::default(),
            connect_timeout: self.connect_timeout,
            memory,
        })
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
        let mut errors = Vec::new();
        let mut clients = Vec::new();
        for node in &nodes {
            match connection_info(node).and_then(redis::Client::open) {
                Ok(c) => clients.push(c),
                Err(e) => errors.push(format!("redis.url: node `{}`: {e}", redact(node))),
            }
        }
        if nodes.is_empty() {
            errors.push("redis.url: a cluster needs at least one seed node".to_string());
        }
        errors.extend(self.shared_errors());
        let client = if errors.is_empty() {
            redis::cluster::ClusterClient::builder(nodes.iter().map(String::as_str))
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
        let cluster = Arc::new(Cluster {
            client,
            conn: tokio::sync::watch::channel(None).0,
            connecting: std::sync::atomic::AtomicBool::new(false),
            connect_timeout: self.connect_timeout,
        });
        let memory = Arc::new(MemoryWatch::new(self.tombstones_past_maxmemory));
        // The first connection reads a node's maxmemory-policy, in the background (the wait
        // ends when the store is dropped).
        let (mut opened, watch) = (cluster.conn.subscribe(), memory.clone());
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
            connect_timeout: self.connect_timeout,
            memory,
        })
    }
}
