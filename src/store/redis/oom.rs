//! Redis out of memory: what a [`RedisStore`](super::RedisStore) knows of it and does about it.
//!
//! - At `maxmemory` under `noeviction`, Redis refuses every write that may grow its memory
//!   (`OOM command not allowed`), and allows `DEL`. Fills are then skipped for a while
//!   ([`MemoryWatch::fills_paused`]: 100 ms after the first refusal, doubling with each refusal
//!   of a fill sent after the pause, up to 5 s, until a write lands), instead of sent at full
//!   rate; reads go on.
//! - Tombstones, tag epochs and acknowledgements are written all the same by a script allowed
//!   out of memory ([`allow_oom`], Redis 7's `allow-oom` flag): each is a few dozen bytes, and a
//!   tombstone takes the place of the entry it invalidates. Where Redis refuses that too (older
//!   than 7), an invalidation deletes (`DEL`) instead.
//! - Under an eviction policy, Redis evicts keys with a TTL, and every key the store writes
//!   has one: tombstones and tag indexes may go like entries. The policy is read when the
//!   first connection opens ([`MemoryWatch::check_policy`]) and a warning says so.
//!
//! Each outage is said once at warn level, and its end once at info level, never per call.

use redis::aio::ConnectionLike;
use redis::{RedisError, Value};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::Duration;
use tokio::time::Instant;

/// How long fills pause after Redis first refuses a write for lack of memory.
pub(super) const FIRST_PAUSE: Duration = Duration::from_millis(100);
/// The longest pause of fills, however long Redis stays full.
pub(super) const MAX_PAUSE: Duration = Duration::from_secs(5);

/// `script`, run even while Redis is out of memory (the script flag `allow-oom`, Redis 7 and
/// Valkey; an older Redis refuses the script).
pub(super) fn allow_oom(script: &str) -> String {
    format!("#!lua flags=allow-oom\n{script}")
}

/// Whether Redis refused a command for lack of memory (`OOM`, directly or from a script).
pub(super) fn is_oom(e: &RedisError) -> bool {
    e.code() == Some("OOM") || e.to_string().contains("OOM command not allowed")
}

/// Whether `e` is Redis's answer (an error reply), not a failure to reach it.
pub(super) fn is_refusal(e: &RedisError) -> bool {
    e.code().is_some() && !e.is_connection_dropped() && !e.is_io_error() && !e.is_timeout()
}

/// What a store knows of Redis's memory, shared by its clones.
#[derive(Debug, Default)]
pub(super) struct MemoryWatch {
    /// Whether tombstones and tag epochs are written past `maxmemory`.
    past_maxmemory: bool,
    /// Set while Redis refuses writes for lack of memory.
    refusing: Mutex<Option<Refusing>>,
    /// The server's `maxmemory-policy`, once read.
    policy: OnceLock<String>,
    /// Whether the policy is being read, or was.
    checking: AtomicBool,
}

#[derive(Debug)]
struct Refusing {
    /// Fills are skipped until then.
    until: Instant,
    /// The current pause.
    pause: Duration,
    /// Whether this outage made an invalidation delete instead of leaving a tombstone.
    deleted: bool,
}

impl MemoryWatch {
    /// A watch whose store writes tombstones and tag epochs past `maxmemory`, or not.
    pub(super) fn new(past_maxmemory: bool) -> Self {
        Self {
            past_maxmemory,
            ..Self::default()
        }
    }

    /// Whether tombstones and tag epochs are written past `maxmemory` (else: `DEL`).
    pub(super) fn past_maxmemory(&self) -> bool {
        self.past_maxmemory
    }

    fn lock(&self) -> MutexGuard<'_, Option<Refusing>> {
        self.refusing.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How much longer fills are skipped, if they are.
    pub(super) fn fills_paused(&self) -> Option<Duration> {
        let now = Instant::now();
        self.lock()
            .as_ref()
            .map(|r| r.until.saturating_duration_since(now))
            .filter(|left| !left.is_zero())
    }

    /// Redis refused a write for lack of memory: fills pause. A refusal of a write sent after
    /// the pause (the pause is over) doubles it, up to [`MAX_PAUSE`]; one sent before it began
    /// changes nothing. True when this begins an outage (said at warn level).
    pub(super) fn refused(&self) -> bool {
        let now = Instant::now();
        let mut refusing = self.lock();
        match refusing.as_mut() {
            None => {
                *refusing = Some(Refusing {
                    until: now + FIRST_PAUSE,
                    pause: FIRST_PAUSE,
                    deleted: false,
                });
                tracing::warn!(
                    "redis refuses writes: out of memory (maxmemory reached under noeviction); \
                     fills are skipped for a while (from 100 ms, doubling up to 5 s, until one \
                     lands); invalidations still take effect (see RedisStore, \"Out of memory\")"
                );
                true
            }
            Some(r) if now >= r.until => {
                r.pause = (r.pause * 2).min(MAX_PAUSE);
                r.until = now + r.pause;
                false
            }
            Some(_) => false,
        }
    }

    /// A write landed: Redis has memory again, fills resume. True when this ends an outage
    /// (said at info level).
    pub(super) fn accepted(&self) -> bool {
        let ended = self.lock().take().is_some();
        if ended {
            tracing::info!("redis accepts writes again: fills resume");
        }
        ended
    }

    /// An invalidation deleted keys instead of leaving tombstones (or a tag's epoch): said
    /// once per outage, at warn level. True when said.
    pub(super) fn deleted_instead(&self) -> bool {
        let mut refusing = self.lock();
        let first = match refusing.as_mut() {
            Some(r) => !std::mem::replace(&mut r.deleted, true),
            None => {
                *refusing = Some(Refusing {
                    until: Instant::now() + FIRST_PAUSE,
                    pause: FIRST_PAUSE,
                    deleted: true,
                });
                true
            }
        };
        if first {
            tracing::warn!(
                past_maxmemory = self.past_maxmemory,
                "redis out of memory: invalidations delete keys instead of leaving tombstones \
                 (not written past maxmemory, or refused by a Redis older than 7); a fill whose \
                 request began before an invalidation may put the old value back once memory \
                 frees (instances that heard the invalidation refuse it in their memory tier \
                 only, for the tombstone's lifetime)"
            );
        }
        first
    }

    /// The server's `maxmemory-policy`, once read.
    pub(super) fn policy(&self) -> Option<String> {
        self.policy.get().cloned()
    }

    /// Reads the server's `maxmemory` settings on `conn` in the background, once (again on a
    /// later connection if this one fails before Redis answers), and warns if its policy may
    /// evict what the store relies on. A server that refuses `CONFIG` (a managed Redis) is
    /// not checked, said at debug level only.
    pub(super) fn check_policy<C>(self: &Arc<Self>, mut conn: C)
    where
        C: ConnectionLike + Send + 'static,
    {
        if self.checking.swap(true, Ordering::AcqRel) {
            return;
        }
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            self.checking.store(false, Ordering::Release);
            return;
        };
        let this = self.clone();
        rt.spawn(async move {
            let mut cmd = redis::cmd("CONFIG");
            cmd.arg("GET").arg("maxmemory*");
            let reply =
                tokio::time::timeout(Duration::from_secs(5), cmd.query_async::<Value>(&mut conn))
                    .await;
            match reply {
                Ok(Ok(reply)) => {
                    let policy = config_value(&reply, "maxmemory-policy");
                    let limit = config_value(&reply, "maxmemory").unwrap_or_default();
                    let Some(policy) = policy else {
                        tracing::debug!(?reply, "redis: no maxmemory-policy in CONFIG GET's reply");
                        return;
                    };
                    if let Some(warning) = policy_warning(&policy) {
                        tracing::warn!(maxmemory_policy = %policy, maxmemory = %limit, "{warning}");
                    }
                    let _ = this.policy.set(policy);
                }
                Ok(Err(e)) if is_refusal(&e) => {
                    tracing::debug!(error = %e, "redis refuses CONFIG GET: its maxmemory-policy is not checked");
                }
                // Not answered: the next connection asks.
                _ => this.checking.store(false, Ordering::Release),
            }
        });
    }
}

/// What is wrong with a `maxmemory-policy` for the store, if anything.
pub(super) fn policy_warning(policy: &str) -> Option<&'static str> {
    if policy.eq_ignore_ascii_case("noeviction") {
        return None;
    }
    Some(
        "redis may evict keys (maxmemory-policy): every key tower-stash writes has a TTL, so \
         under `allkeys-*` and `volatile-*` policies alike tombstones and tag indexes can be \
         evicted like entries, and then a fill that began before an invalidation may put the \
         old value back, or a tag invalidation miss entries; set `maxmemory-policy noeviction` \
         (when Redis is full, fills are refused and skipped for a while, invalidations still land)",
    )
}

/// The value of `name` in a `CONFIG GET` reply: `[name, value, ...]` (RESP2), a map (RESP3),
/// or either per node (a cluster).
fn config_value(reply: &Value, name: &str) -> Option<String> {
    let text = |v: &Value| match v {
        Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
        Value::SimpleString(s) => Some(s.clone()),
        _ => None,
    };
    match reply {
        Value::Array(items) => items
            .chunks(2)
            .find_map(|pair| match pair {
                [k, v] if text(k).is_some_and(|k| k.eq_ignore_ascii_case(name)) => text(v),
                _ => None,
            })
            .or_else(|| items.iter().find_map(|item| config_value(item, name))),
        Value::Map(pairs) => pairs
            .iter()
            .find_map(|(k, v)| {
                text(k)
                    .filter(|k| k.eq_ignore_ascii_case(name))
                    .and_then(|_| text(v))
            })
            .or_else(|| pairs.iter().find_map(|(_, v)| config_value(v, name))),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn fills_pause_from_100_ms_doubling_to_5_s_until_a_write_lands() {
        let watch = MemoryWatch::default();
        assert_eq!(watch.fills_paused(), None);
        assert!(watch.refused(), "the first refusal begins an outage");
        assert_eq!(watch.fills_paused(), Some(FIRST_PAUSE));
        // Refusals of writes sent before the pause began: no longer pause, no second warning.
        assert!(!watch.refused());
        assert_eq!(watch.fills_paused(), Some(FIRST_PAUSE));
        let mut pauses = Vec::new();
        for _ in 0..8 {
            let pause = watch.fills_paused().unwrap();
            tokio::time::advance(pause).await;
            assert_eq!(watch.fills_paused(), None, "the pause is over: a fill goes");
            assert!(!watch.refused());
            pauses.push(watch.fills_paused().unwrap().as_millis());
        }
        assert_eq!(pauses, [200, 400, 800, 1600, 3200, 5000, 5000, 5000]);
        assert!(watch.accepted(), "a write landed: the outage ends");
        assert!(!watch.accepted());
        assert_eq!(watch.fills_paused(), None);
        // The next outage starts again at 100 ms, and is said again.
        assert!(watch.refused());
        assert_eq!(watch.fills_paused(), Some(FIRST_PAUSE));
    }

    #[tokio::test(start_paused = true)]
    async fn deleting_instead_of_a_tombstone_is_said_once_per_outage() {
        let watch = MemoryWatch::default();
        watch.refused();
        assert!(watch.deleted_instead());
        assert!(!watch.deleted_instead());
        watch.accepted();
        watch.refused();
        assert!(watch.deleted_instead());
    }

    #[test]
    fn only_noeviction_keeps_what_invalidation_relies_on() {
        assert_eq!(policy_warning("noeviction"), None);
        for policy in [
            "allkeys-lru",
            "allkeys-lfu",
            "allkeys-random",
            "volatile-lru",
            "volatile-lfu",
            "volatile-random",
            "volatile-ttl",
        ] {
            assert!(policy_warning(policy).is_some(), "{policy}");
        }
    }

    #[test]
    fn config_replies_are_read_in_every_shape() {
        let b = |s: &str| Value::BulkString(s.as_bytes().to_vec());
        let resp2 = Value::Array(vec![
            b("maxmemory"),
            b("1048576"),
            b("maxmemory-policy"),
            b("allkeys-lru"),
        ]);
        assert_eq!(
            config_value(&resp2, "maxmemory-policy").as_deref(),
            Some("allkeys-lru")
        );
        assert_eq!(
            config_value(&resp2, "maxmemory").as_deref(),
            Some("1048576")
        );
        let resp3 = Value::Map(vec![(b("maxmemory-policy"), b("noeviction"))]);
        assert_eq!(
            config_value(&resp3, "maxmemory-policy").as_deref(),
            Some("noeviction")
        );
        // A node's reply inside a cluster's.
        let nodes = Value::Map(vec![(b("127.0.0.1:7000"), resp2)]);
        assert_eq!(
            config_value(&nodes, "maxmemory-policy").as_deref(),
            Some("allkeys-lru")
        );
        assert_eq!(config_value(&Value::Nil, "maxmemory-policy"), None);
        assert_eq!(config_value(&Value::Array(vec![]), "maxmemory"), None);
    }

    #[test]
    fn oom_replies_are_told_from_other_errors() {
        let error = |reply: &[u8]| {
            redis::parse_redis_value(reply)
                .unwrap()
                .extract_error()
                .unwrap_err()
        };
        let oom = error(b"-OOM command not allowed when used memory > 'maxmemory'.\r\n");
        assert!(is_oom(&oom) && is_refusal(&oom));
        // Redis 6 wraps a script's error in its own.
        let wrapped = error(b"-ERR Error running script (call to f_1): @user_script:1: -OOM command not allowed when used memory > 'maxmemory'.\r\n");
        assert!(is_oom(&wrapped));
        let compile = error(b"-ERR Error compiling script (new function): user_script:1: unexpected symbol near '#'\r\n");
        assert!(!is_oom(&compile) && is_refusal(&compile));
        let dropped = RedisError::from(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(!is_oom(&dropped) && !is_refusal(&dropped));
    }
}
