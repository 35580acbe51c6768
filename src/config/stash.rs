//! The `[stash]` table into a stash builder, and its checks.

use super::{Config, ConfigFileError, RedisConfig};
use crate::StashBuilder;

impl Config {
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
    pub(super) fn check_stash(&self) -> Result<(), ConfigFileError> {
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
                (Some(url), None) => match ["redis+cluster://", "rediss+cluster://"]
                    .iter()
                    .chain(&["redis+sentinel://", "rediss+sentinel://"])
                    .find_map(|scheme| url.strip_prefix(scheme))
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
        if let Some(user) = &r.username {
            rb = rb.username(user.clone());
        }
        if let Some(password) = &r.password {
            rb = rb.password(password.clone());
        }
        rb = tls_files(r, rb)?;
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
}

/// The TLS files of `[stash.redis]`, read into the builder.
#[cfg(feature = "tls")]
fn tls_files(
    r: &RedisConfig,
    mut rb: crate::RedisStoreBuilder,
) -> Result<crate::RedisStoreBuilder, String> {
    let read =
        |field: &str, path: &str| std::fs::read(path).map_err(|e| format!("{field} `{path}`: {e}"));
    if let Some(path) = &r.ca_file {
        rb = rb.tls_root_certificate(read("ca_file", path)?);
    }
    match (&r.client_cert_file, &r.client_key_file) {
        (Some(cert), Some(key)) => {
            rb = rb.tls_client_certificate(
                read("client_cert_file", cert)?,
                read("client_key_file", key)?,
            );
        }
        (None, None) => {}
        _ => return Err("client_cert_file and client_key_file go together".into()),
    }
    Ok(rb)
}

#[cfg(all(feature = "redis", not(feature = "tls")))]
fn tls_files(
    r: &RedisConfig,
    rb: crate::RedisStoreBuilder,
) -> Result<crate::RedisStoreBuilder, String> {
    if r.ca_file.is_some() || r.client_cert_file.is_some() || r.client_key_file.is_some() {
        return Err(
            "ca_file, client_cert_file and client_key_file need tower-stash's `tls` feature".into(),
        );
    }
    Ok(rb)
}
