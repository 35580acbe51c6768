//! Typed values on a real Redis shared by two instances (each with its own memory tier, pool
//! and bus subscription): one fetch for concurrent misses across both, errors never cached,
//! negative caching, codecs and versions, invalidation reaching values and HTTP entries alike.

mod support;

use axum::Router;
use bytes::Bytes;
use http::Request;
use http_body_util::Empty;
use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;
use support::redis::RedisServer;
use support::{send, stored, within, Counter};
use tower::ServiceBuilder;
use tower_stash::{
    CacheLayer, Clock, Guarded, ManualClock, MemoryStore, Policy, RedisStore, Routes, Stash,
    SystemClock, TieredStore, Values,
};

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u32,
    name: String,
}

/// A database both instances query, counting its queries; users 1 to 9 exist.
#[derive(Clone, Default)]
struct Db {
    queries: Counter,
    fail: Arc<AtomicBool>,
}

#[derive(Debug, PartialEq)]
struct DbError;

impl Db {
    async fn user(&self, id: u32) -> Result<Option<User>, DbError> {
        let n = self.queries.enter().await;
        if self.fail.load(Ordering::SeqCst) {
            return Err(DbError);
        }
        Ok((1..10).contains(&id).then(|| User {
            id,
            name: format!("user {id} #{n}"),
        }))
    }

    async fn found(&self, id: u32) -> Result<User, DbError> {
        Ok(self.user(id).await?.expect("a user that exists"))
    }

    fn queries(&self) -> usize {
        self.queries.calls()
    }
}

/// One instance: a stash tiered on the shared Redis, its users, and a cached HTTP route
/// `/users/{id}` keyed `user:{id}` and tagged `users` like the values.
#[derive(Clone)]
struct Instance {
    stash: Stash,
    users: Values<User>,
    app: Router,
    handler: Counter,
}

impl Instance {
    /// An instance whose stash dates and reads entries by `clock` (Redis still expires keys
    /// by its own).
    fn with_clock(redis: &RedisServer, clock: impl Clock) -> Self {
        let l2 = Guarded::new(RedisStore::builder(redis.url()).build().unwrap())
            .timeout(Duration::from_secs(1));
        let stash = Stash::builder()
            .store(TieredStore::new(MemoryStore::new(16 << 20), l2))
            .namespace("app")
            .clock(clock)
            // Fills right after an invalidation are stored (the tests run on one clock).
            .invalidation_margin(Duration::from_millis(1))
            .build()
            .unwrap();
        let policy = Policy::ttl(HOUR)
            .stale_while_revalidate(HOUR)
            .tags(["users"])
            .status_ttl(404, Duration::from_secs(60));
        let users = stash.values::<User>(policy);
        let handler = Counter::default();
        let routes = Routes::new().get(
            "/users/{id}",
            Policy::ttl(HOUR).key("user:{id}").tags(["users"]),
        );
        let app = Router::new()
            .route("/users/{id}", handler.get(|n| format!("response #{n}")))
            .layer(ServiceBuilder::new().layer(CacheLayer::new(stash.clone(), routes)));
        Self {
            stash,
            users,
            app,
            handler,
        }
    }

    /// GET /users/{id}: whether it was a hit.
    async fn get_http(&self, id: u32) -> bool {
        let req = Request::get(format!("/users/{id}"))
            .body(Empty::<Bytes>::new())
            .unwrap();
        send(self.app.clone(), req).await.is_hit()
    }
}

/// Two instances on one Redis, both subscribed to the invalidation bus.
async fn two(redis: &RedisServer) -> (Instance, Instance) {
    two_on(redis, SystemClock).await
}

/// [`two`], on one clock.
async fn two_on(redis: &RedisServer, clock: impl Clock + Clone) -> (Instance, Instance) {
    let a = Instance::with_clock(redis, clock.clone());
    let b = Instance::with_clock(redis, clock);
    within("the subscriptions", async {
        loop {
            let out = redis.cli(&["PUBSUB", "NUMSUB", "tower-stash:bus"]);
            let n: usize = out
                .lines()
                .last()
                .and_then(|l| l.trim().parse().ok())
                .unwrap_or(0);
            if n >= 2 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await;
    (a, b)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_concurrent_misses_across_two_instances_make_one_fetch() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    db.queries.close();
    let calls: Vec<_> = (0..1000)
        .map(|i| {
            let users = if i % 2 == 0 { &a.users } else { &b.users };
            let (users, db) = (users.clone(), db.clone());
            tokio::spawn(async move { users.get_or_fetch("user:7", || db.found(7)).await })
        })
        .collect();
    within("the fetch to begin", async {
        while db.queries() == 0 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    db.queries.open();
    for call in calls {
        let user = within("a call", call).await.unwrap().unwrap();
        assert_eq!(user.name, "user 7 #1");
    }
    assert_eq!(db.queries(), 1);
    let (sa, sb) = (a.stash.stats(), b.stash.stats());
    assert_eq!(sa.leases + sb.leases, 1);
    // Each call is one of: the miss that fetched, a hit, a wait for a fetch.
    assert_eq!(sa.misses + sb.misses, 1);
    let answered = sa.hits + sb.hits + sa.collapsed + sb.collapsed;
    assert_eq!(answered, 999);
}

#[tokio::test]
async fn a_failed_fetch_is_cached_nowhere_and_not_found_is_shared() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    db.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        a.users.get_or_fetch("user:1", || db.found(1)).await,
        Err(DbError)
    );
    db.fail.store(false, Ordering::SeqCst);
    let user = b
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (2, "user 1 #2"));

    // Not found, cached for its 404 TTL: B is answered from Redis.
    let none = a.users.get_or_fetch_option("user:42", || db.user(42)).await;
    assert_eq!(none, Ok(None));
    let none = b.users.get_or_fetch_option("user:42", || db.user(42)).await;
    assert_eq!((none, db.queries()), (Ok(None), 3));
    assert_eq!(b.stash.stats().hits, 1);
}

#[tokio::test]
async fn another_version_on_the_other_instance_reads_as_a_counted_miss() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    // B reads A's value from Redis and decodes it; a B deployed with version 2 cannot.
    let same = b
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((db.queries(), same.name.as_str()), (1, "user 1 #1"));
    let v2 = b.users.clone().with_version(2);
    let user = v2.get_or_fetch("user:2", || db.found(2)).await.unwrap();
    assert_eq!(user.name, "user 2 #2");
    assert!(a.users.get("user:2").await.is_none());
    assert_eq!(a.stash.stats().unreadable, 1);
    // A's memory copy of user 1 is not read by the new version either: another miss.
    v2.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), b.stash.stats().unreadable), (3, 1));
}

/// A deploy that changes the codec: B reads with MessagePack what A wrote in JSON (in Redis,
/// and in neither instance's memory): a counted miss, never a value decoded with the wrong
/// codec; B's fetch then replaces the entry, and A (still JSON) misses on it in turn.
#[cfg(feature = "msgpack")]
#[tokio::test]
async fn another_codec_on_the_other_instance_reads_as_a_counted_miss() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    let packed = b.users.clone().with_codec(tower_stash::values::MessagePack);
    let user = packed.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (2, "user 1 #2"));
    assert_eq!(b.stash.stats().unreadable, 1);
    // A's memory copy is its own (JSON, decoded): A still answers from it, no query.
    let mine = a
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((db.queries(), mine.name.as_str()), (2, "user 1 #1"));
    // A fresh JSON instance finds B's MessagePack entry in Redis: a counted miss too.
    let c = Instance::with_clock(&redis, SystemClock);
    let fresh = c
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((db.queries(), fresh.name.as_str()), (3, "user 1 #3"));
    assert_eq!(c.stash.stats().unreadable, 1);
}

#[tokio::test]
async fn invalidation_on_one_instance_reaches_values_and_http_entries_on_both() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    // Both instances hold user 1's value and response in memory.
    assert!(!a.get_http(1).await);
    stored(&a.stash, 1).await;
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    for i in [&a, &b] {
        assert!(i.get_http(1).await);
        i.users
            .get_or_fetch("user:1", || db.found(1))
            .await
            .unwrap();
    }
    assert_eq!(
        (db.queries(), a.handler.calls() + b.handler.calls()),
        (1, 1)
    );

    // By key, from B: gone from A's memory tier too.
    b.stash.invalidate_key("user:1").await.unwrap();
    assert!(a.users.get("user:1").await.is_none());
    assert!(!a.get_http(1).await);
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((db.queries(), a.handler.calls()), (2, 2));
    // Two fills before, then the value and the response again.
    stored(&a.stash, 4).await;

    // By tag, from A: gone from B's.
    assert!(b.get_http(1).await);
    assert!(b.users.get("user:1").await.is_some());
    a.stash.invalidate_tag("users").await.unwrap();
    assert!(b.users.get("user:1").await.is_none());
    assert!(!b.get_http(1).await);
}

#[tokio::test]
async fn a_write_through_on_one_instance_is_the_other_s_next_read() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    b.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    let ada = User {
        id: 1,
        name: "Ada".into(),
    };
    a.users.set("user:1", &ada).await.unwrap();
    // B's memory copy went with the write; it reads the new value, no query.
    let read = b
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((*read).clone(), ada);
    assert_eq!(db.queries(), 1);
}

#[tokio::test]
async fn a_stale_value_is_answered_on_both_instances_while_one_refreshes_it() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(std::time::SystemTime::now());
    let (a, b) = two_on(&redis, clock.clone()).await;
    let db = Db::default();
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    clock.advance(HOUR);
    db.queries.close();
    let refreshing = tokio::spawn({
        let (users, db) = (a.users.clone(), db.clone());
        async move { users.get_or_fetch("user:1", || db.found(1)).await }
    });
    within("the refresh to begin", async {
        while db.queries() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    // B finds the lease taken: the stale value at once, no wait, no fetch.
    for users in [&b.users, &a.users] {
        let stale = within(
            "a stale answer",
            users.get_or_fetch("user:1", || db.found(1)),
        )
        .await
        .unwrap();
        assert_eq!(stale.name, "user 1 #1");
    }
    assert_eq!(a.stash.stats().stale + b.stash.stats().stale, 2);
    db.queries.open();
    let fresh = within("the refresh", refreshing).await.unwrap().unwrap();
    assert_eq!(fresh.name, "user 1 #2");
    let read = b
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((read.name.as_str(), db.queries()), ("user 1 #2", 2));
}

/// A fetch of user `id` owning what it uses, for `get_or_fetch_detached`.
fn owned(
    db: &Db,
    id: u32,
) -> impl FnOnce()
    -> std::pin::Pin<Box<dyn std::future::Future<Output = Result<User, DbError>> + Send>>
       + Send
       + 'static {
    let db = db.clone();
    move || Box::pin(async move { db.found(id).await })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_detached_refresh_runs_once_across_instances_and_no_caller_waits() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(std::time::SystemTime::now());
    let (a, b) = two_on(&redis, clock.clone()).await;
    let db = Db::default();
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    b.users.get("user:1").await.unwrap();
    clock.advance(HOUR);
    // The refresh's fetch is held: every caller on both instances has the stale value.
    db.queries.close();
    for users in [&a.users, &b.users, &a.users, &b.users] {
        let stale = within(
            "a stale answer",
            users.get_or_fetch_detached("user:1", owned(&db, 1)),
        )
        .await
        .unwrap();
        assert_eq!(stale.name, "user 1 #1");
    }
    within("the refresh to begin", async {
        while db.queries() < 2 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert_eq!(a.stash.stats().stale + b.stash.stats().stale, 4);
    db.queries.open();
    // Each instance comes to the new value, read from Redis: one fetch in all.
    for users in [&a.users, &b.users] {
        within("the refreshed value", async {
            loop {
                let user = users
                    .get_or_fetch_detached("user:1", owned(&db, 1))
                    .await
                    .unwrap();
                if user.name == "user 1 #2" {
                    return;
                }
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
        })
        .await;
    }
    assert_eq!(db.queries(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn within_stale_if_error_both_instances_answer_the_expired_value_and_then_the_new_one() {
    let redis = RedisServer::start();
    let clock = ManualClock::new(std::time::SystemTime::now());
    let (a, b) = two_on(&redis, clock.clone()).await;
    let minute = Duration::from_secs(60);
    let policy = || Policy::ttl(minute).stale_if_error(10 * minute);
    let (on_a, on_b) = (
        a.stash.values::<User>(policy()),
        b.stash.values::<User>(policy()),
    );
    let db = Db::default();
    on_a.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    clock.advance(minute + Duration::from_secs(1));
    // Expired, and the database fails: each instance tries, and answers the expired value.
    db.fail.store(true, Ordering::SeqCst);
    for users in [&on_b, &on_a] {
        let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        assert_eq!(user.name, "user 1 #1");
    }
    assert_eq!(db.queries(), 3);
    assert_eq!(a.stash.stats().stale + b.stash.stats().stale, 2);
    // It works again: B fetches, and A reads B's value from Redis instead of fetching.
    db.fail.store(false, Ordering::SeqCst);
    let user = on_b.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!(user.name, "user 1 #4");
    let user = on_a.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((user.name.as_str(), db.queries()), ("user 1 #4", 4));
    // Past the window, the error on both.
    clock.advance(11 * minute);
    db.fail.store(true, Ordering::SeqCst);
    for users in [&on_a, &on_b] {
        let got = users.get_or_fetch("user:1", || db.found(1)).await;
        assert_eq!(got, Err(DbError));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sliding_value_read_on_one_instance_stays_in_redis_for_the_other() {
    let redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let idle = Duration::from_millis(1000);
    let policy = || {
        Policy::new()
            .sliding(idle)
            .max_lifetime(Duration::from_secs(60))
    };
    let (on_a, on_b) = (
        a.stash.values::<User>(policy()),
        b.stash.values::<User>(policy()),
    );
    let db = Db::default();
    let pttl = || -> i64 { redis.cli(&["PTTL", "app:v1:=user:1"]).parse().unwrap() };
    on_a.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    // Redis keeps it for its idle time, not its cap.
    let left = pttl();
    assert!(left > 0 && left <= 1000, "{left}");
    // Reads from A's memory tier, twice the idle time in all, keep Redis's copy alive.
    for _ in 0..20 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        on_a.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    }
    assert!(pttl() > 0, "Redis's copy expired while A read it");
    // B reads it from Redis (and extends it).
    let user = on_b.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((user.name.as_str(), db.queries()), ("user 1 #1", 1));
    // Unread: gone from Redis, and fetched again on A.
    within("the idle value to leave Redis", async {
        while pttl() != -2 {
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    })
    .await;
    let user = on_a.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((user.name.as_str(), db.queries()), ("user 1 #2", 2));
    // Written through, it lives its idle time in Redis too.
    let user = User {
        id: 2,
        name: "written".into(),
    };
    on_a.set("user:2", &user).await.unwrap();
    let left: i64 = redis.cli(&["PTTL", "app:v1:=user:2"]).parse().unwrap();
    assert!(left > 0 && left <= 1000, "{left}");
    assert_eq!(*on_b.get("user:2").await.unwrap(), user);
}

#[tokio::test]
async fn a_value_read_from_redis_is_kept_in_memory_and_answers_while_redis_is_down() {
    let mut redis = RedisServer::start();
    let (a, b) = two(&redis).await;
    let db = Db::default();
    a.users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    // B reads it from Redis, through its memory tier, which keeps it.
    let user = b
        .users
        .get_or_fetch("user:1", || db.found(1))
        .await
        .unwrap();
    assert_eq!((user.name.as_str(), db.queries()), ("user 1 #1", 1));
    redis.kill();
    db.fail.store(true, Ordering::SeqCst);
    let user = within("B's answer", b.users.get_or_fetch("user:1", || db.found(1)))
        .await
        .unwrap();
    assert_eq!((user.name.as_str(), db.queries()), ("user 1 #1", 1));
}
