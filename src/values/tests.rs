//! Typed values, each rule checked on what a caller gets and how often the database is asked.

use super::{Codec, CodecError, Json};
use crate::test_util::{send, within, Counter, Upstream};
use crate::{
    CacheLayer, Entry, ManualClock, MemoryStore, Policy, Routes, Stash, Store, StoreFuture,
};
use http::Request;
use http_body_util::Empty;
use serde::{Deserialize, Serialize};
use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tower::ServiceBuilder;

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct User {
    id: u32,
    name: String,
}

/// A database that counts its queries: `user(id)` finds users 1 to 9, and fails while `fail`.
#[derive(Clone, Default)]
struct Db {
    queries: Counter,
    fail: Arc<std::sync::atomic::AtomicBool>,
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

fn stash() -> (Stash, ManualClock) {
    let clock = ManualClock::default();
    let stash = Stash::builder()
        .namespace("app")
        .clock(clock.clone())
        .build()
        .unwrap();
    (stash, clock)
}

#[tokio::test]
async fn a_miss_fetches_once_and_a_hit_is_the_same_decoded_value() {
    let (stash, _) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR));
    let first = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    let second = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!(db.queries(), 1);
    assert_eq!(first.name, "user 1 #1");
    // No decoding on a memory hit: the very value decoded (here: stored) before.
    assert!(Arc::ptr_eq(&first, &second));
    let stats = stash.stats();
    assert_eq!((stats.hits, stats.misses, stats.stores), (1, 1, 1));
    // A clone of the handle shares its decoded values.
    let third = users.clone().get("user:1").await.unwrap();
    assert!(Arc::ptr_eq(&first, &third));
}

#[tokio::test]
async fn a_value_expires_after_its_ttl_and_jitter_only_shortens_it() {
    let (stash, clock) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR).ttl_jitter(Duration::from_secs(600)));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    let entry = stash.store().get_local("app:v1:=user:1").unwrap().unwrap();
    assert!(entry.ttl() <= HOUR && entry.ttl() > HOUR - Duration::from_secs(600));
    clock.advance(entry.ttl() - Duration::from_millis(1));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!(db.queries(), 1);
    clock.advance(Duration::from_millis(1));
    let again = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), again.name.as_str()), (2, "user 1 #2"));
}

#[tokio::test]
async fn the_fetch_s_error_is_returned_and_never_cached() {
    let (stash, _) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR).status_ttl(404, HOUR));
    db.fail.store(true, Ordering::SeqCst);
    assert_eq!(
        users.get_or_fetch("user:1", || db.found(1)).await,
        Err(DbError)
    );
    assert_eq!(
        users.get_or_fetch_option("user:1", || db.user(1)).await,
        Err(DbError)
    );
    assert_eq!(db.queries(), 2);
    assert!(users.get("user:1").await.is_none());
    db.fail.store(false, Ordering::SeqCst);
    let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (3, "user 1 #3"));
    assert_eq!(stash.stats().stores, 1);
}

#[tokio::test]
async fn not_found_is_cached_only_when_the_policy_gives_404_a_ttl_of_its_own() {
    let (stash, clock) = stash();
    let db = Db::default();
    let plain = stash.values::<User>(Policy::ttl(HOUR));
    assert_eq!(
        plain.get_or_fetch_option("user:404", || db.user(404)).await,
        Ok(None)
    );
    assert_eq!(
        plain.get_or_fetch_option("user:404", || db.user(404)).await,
        Ok(None)
    );
    assert_eq!(db.queries(), 2);
    assert_eq!(stash.stats().stores, 0);

    let negative = stash.values::<User>(Policy::ttl(HOUR).status_ttl(404, Duration::from_secs(30)));
    for _ in 0..3 {
        let got = negative
            .get_or_fetch_option("user:405", || db.user(405))
            .await;
        assert_eq!(got, Ok(None));
    }
    assert_eq!(db.queries(), 3);
    // Its own TTL, not the value's.
    clock.advance(Duration::from_secs(30));
    assert_eq!(
        negative
            .get_or_fetch_option("user:405", || db.user(405))
            .await,
        Ok(None)
    );
    assert_eq!(db.queries(), 4);
    // A caller that needs a value is never answered by a not-found: it fetches.
    let err = negative
        .get_or_fetch("user:405", || async { Err::<User, _>(DbError) })
        .await;
    assert_eq!(err, Err(DbError));
}

/// JSON under another name.
#[derive(Clone, Copy, Default)]
struct OtherJson;

impl Codec for OtherJson {
    const NAME: &'static str = "other-json";
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        Json.encode(value)
    }
    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        Json.decode(bytes)
    }
}

#[tokio::test]
async fn another_codec_or_another_version_reads_as_a_miss_and_is_counted() {
    let (stash, _) = stash();
    let db = Db::default();
    let json = stash.values::<User>(Policy::ttl(HOUR));
    json.get_or_fetch("user:1", || db.found(1)).await.unwrap();

    // The same bytes would decode: the codec's name keeps them apart.
    let other = stash
        .values::<User>(Policy::ttl(HOUR))
        .with_codec(OtherJson);
    let user = other.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (2, "user 1 #2"));
    assert_eq!(stash.stats().unreadable, 1);

    let v1 = stash.values::<User>(Policy::ttl(HOUR)).with_version(1);
    v1.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!(db.queries(), 3);
    assert_eq!(stash.stats().unreadable, 2);
    // Version 1 is stored now: the old version reads it as a miss in turn.
    assert!(json.get("user:1").await.is_none());
    assert!(v1.get("user:1").await.is_some());
    assert_eq!(stash.stats().unreadable, 3);

    // Bytes the type cannot be read from: a miss too, never an error.
    #[derive(Serialize, Deserialize)]
    struct Renamed {
        login: String,
    }
    let renamed = stash.values::<Renamed>(Policy::ttl(HOUR)).with_version(1);
    assert!(renamed.get("user:1").await.is_none());
    assert_eq!(stash.stats().unreadable, 4);
}

#[cfg(feature = "msgpack")]
#[tokio::test]
async fn message_pack_values_round_trip_and_are_misses_for_json() {
    let (stash, _) = stash();
    let db = Db::default();
    let packed = stash
        .values::<User>(Policy::ttl(HOUR))
        .with_codec(super::MessagePack);
    packed.get_or_fetch("user:2", || db.found(2)).await.unwrap();
    let entry = stash.store().get_local("app:v1:=user:2").unwrap().unwrap();
    let back: User = rmp_serde::from_slice(entry.body()).unwrap();
    assert_eq!(back.name, "user 2 #1");
    assert!(stash
        .values::<User>(Policy::ttl(HOUR))
        .get("user:2")
        .await
        .is_none());
    assert_eq!(stash.stats().unreadable, 1);
}

#[tokio::test]
async fn values_and_http_entries_never_share_a_key_but_share_invalidation() {
    let (stash, clock) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR).tags(["users"]));
    let routes = Routes::new().get(
        "/users/{id}",
        Policy::ttl(HOUR).key("user:{id}").tags(["users"]),
    );
    let upstream = Upstream::echo();
    let svc = ServiceBuilder::new()
        .layer(CacheLayer::new(stash.clone(), routes))
        .service(upstream.clone());
    let get = || {
        Request::get("/users/1")
            .body(Empty::<bytes::Bytes>::new())
            .unwrap()
    };
    let both = || async {
        let got = send(svc.clone(), get()).await;
        users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        got
    };
    let first = both().await;
    assert!(!first.is_hit(), "{first:?}");
    let second = both().await;
    assert!(second.is_hit(), "{second:?}");
    // Both stored, apart: the response under `user:1`, the value under `=user:1`.
    assert_eq!((upstream.calls(), db.queries()), (1, 1));
    let store = stash.store();
    assert_eq!(
        store.get_local("app:v1:user:1").unwrap().unwrap().status(),
        200
    );
    assert!(store.get_local("app:v1:=user:1").unwrap().is_some());

    stash.invalidate_key("user:1").await.unwrap();
    // Past the invalidation margin: fills from now on are stored.
    clock.advance(Duration::from_secs(1));
    assert!(!both().await.is_hit());
    assert_eq!((upstream.calls(), db.queries()), (2, 2));

    stash.invalidate_tag("users").await.unwrap();
    clock.advance(Duration::from_secs(1));
    assert!(!both().await.is_hit());
    assert_eq!((upstream.calls(), db.queries()), (3, 3));
    assert!(both().await.is_hit());
    assert_eq!((upstream.calls(), db.queries()), (3, 3));
}

#[tokio::test]
async fn keys_and_tags_are_escaped_as_template_keys_are() {
    let (stash, _) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR).tags(["team:a b"]));
    users
        .get_or_fetch("user:a b|x", || db.found(1))
        .await
        .unwrap();
    let entry = stash
        .store()
        .get_local("app:v1:=user:a%20b%7Cx")
        .unwrap()
        .unwrap();
    assert_eq!(entry.tags(), ["~user:a%20b%7Cx", "team:a%20b"]);
    // An escaped key is left as it is: both spellings are one value.
    users
        .get_or_fetch("user:a%20b%7Cx", || db.found(1))
        .await
        .unwrap();
    assert_eq!(db.queries(), 1);
    stash.invalidate_key("user:a%20b%7Cx").await.unwrap();
    assert!(users.get("user:a b|x").await.is_none());
}

#[tokio::test]
async fn a_write_through_is_the_next_read_and_no_older_fill_puts_back_the_old_value() {
    let (stash, _) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    let ada = User {
        id: 1,
        name: "Ada".into(),
    };
    users.set("user:1", &ada).await.unwrap();
    assert_eq!(*users.get("user:1").await.unwrap(), ada);

    // A read that began before the write stores what it read: refused.
    let db2 = Db::default();
    db2.queries.close();
    let reading = tokio::spawn({
        let (users, db2) = (users.clone(), db2.clone());
        async move { users.get_or_fetch("user:2", || db2.found(2)).await.unwrap() }
    });
    crate::test_util::until("the read to begin", || db2.queries() == 1).await;
    users
        .set(
            "user:2",
            &User {
                id: 2,
                name: "Grace".into(),
            },
        )
        .await
        .unwrap();
    db2.queries.open();
    within("the read", reading).await.unwrap();
    assert_eq!(users.get("user:2").await.unwrap().name, "Grace");
    assert_eq!(db.queries(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_misses_of_a_cold_key_make_one_fetch() {
    let (stash, _) = stash();
    let db = Db::default();
    db.queries.close();
    let users = stash.values::<User>(Policy::ttl(HOUR));
    let calls: Vec<_> = (0..1000)
        .map(|_| {
            let (users, db) = (users.clone(), db.clone());
            tokio::spawn(async move { users.get_or_fetch("user:7", || db.found(7)).await })
        })
        .collect();
    crate::test_util::until("the fetch to begin", || db.queries() == 1).await;
    db.queries.open();
    for call in calls {
        let user = within("a call", call).await.unwrap().unwrap();
        assert_eq!(user.name, "user 7 #1");
    }
    assert_eq!(db.queries(), 1);
    let stats = stash.stats();
    assert_eq!(stats.misses, 1);
    assert_eq!(stats.hits + stats.collapsed, 999);
    assert_eq!(users.flights.len(), 0);
}

#[tokio::test]
async fn a_leader_that_goes_away_lets_a_waiter_fetch() {
    let (stash, _) = stash();
    let db = Db::default();
    db.queries.close();
    let users = stash.values::<User>(Policy::ttl(HOUR));
    let leader = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { users.get_or_fetch("user:3", || db.found(3)).await }
    });
    crate::test_util::until("the fetch to begin", || db.queries() == 1).await;
    let waiter = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { users.get_or_fetch("user:3", || db.found(3)).await }
    });
    tokio::task::yield_now().await;
    leader.abort();
    crate::test_util::until("the waiter to fetch", || db.queries() == 2).await;
    db.queries.open();
    let user = within("the waiter", waiter).await.unwrap().unwrap();
    assert_eq!(user.name, "user 3 #2");
    assert_eq!(users.flights.len(), 0);
}

/// A store that keeps bytes, as Redis does: every read decodes an entry anew.
#[derive(Default)]
struct Bytes(MemoryStore, AtomicUsize);

impl Store for Bytes {
    fn get(&self, key: Arc<str>) -> StoreFuture<Option<Arc<Entry>>> {
        self.1.fetch_add(1, Ordering::SeqCst);
        let get = self.0.get(key);
        Box::pin(async move {
            let found = get.await?;
            Ok(found.map(|e| Arc::new(Entry::decode(e.encode()).unwrap())))
        })
    }
    fn put(&self, key: Arc<str>, entry: Arc<Entry>, ttl: Duration) -> StoreFuture<()> {
        self.0.put(key, entry, ttl)
    }
    fn delete(&self, key: Arc<str>) -> StoreFuture<()> {
        self.0.delete(key)
    }
}

/// JSON that counts what it decodes.
#[derive(Clone, Default)]
struct Counting(Arc<AtomicUsize>);

impl Codec for Counting {
    const NAME: &'static str = "json";
    fn encode<T: Serialize>(&self, value: &T) -> Result<Vec<u8>, CodecError> {
        Json.encode(value)
    }
    fn decode<T: serde::de::DeserializeOwned>(&self, bytes: &[u8]) -> Result<T, CodecError> {
        self.0.fetch_add(1, Ordering::SeqCst);
        Json.decode(bytes)
    }
}

#[tokio::test]
async fn the_memory_tier_keeps_values_decoded_and_every_handle_shares_them() {
    let (stash, _) = stash();
    let db = Db::default();
    let codec = Counting::default();
    let users = stash
        .values::<User>(Policy::ttl(HOUR))
        .with_codec(codec.clone());
    let first = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    for _ in 0..100 {
        let hit = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        assert!(Arc::ptr_eq(&first, &hit));
    }
    // Another handle of the same type and codec reads what the entry keeps.
    let other = stash
        .values::<User>(Policy::ttl(HOUR))
        .with_codec(codec.clone());
    assert!(Arc::ptr_eq(&first, &other.get("user:1").await.unwrap()));
    assert_eq!((codec.0.load(Ordering::SeqCst), db.queries()), (0, 1));
    // A write-through's entry keeps the value written.
    users
        .update("user:1", || async {
            Ok::<_, DbError>(User {
                id: 1,
                name: "Ada".into(),
            })
        })
        .await
        .unwrap();
    assert_eq!(users.get("user:1").await.unwrap().name, "Ada");
    assert_eq!(codec.0.load(Ordering::SeqCst), 0);
}

#[tokio::test]
async fn a_value_read_from_a_byte_store_is_decoded_once_per_read() {
    let store = Arc::new(Bytes::default());
    let stash = Stash::builder()
        .store(store.clone() as Arc<dyn Store>)
        .build()
        .unwrap();
    let db = Db::default();
    let codec = Counting::default();
    let users = stash
        .values::<User>(Policy::ttl(HOUR))
        .with_codec(codec.clone());
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    let read = users.get("user:1").await.unwrap();
    let again = users.get("user:1").await.unwrap();
    assert_eq!(*read, *again);
    // The miss, then two reads, each decoded once.
    assert_eq!((store.1.load(Ordering::SeqCst), db.queries()), (3, 1));
    assert_eq!(codec.0.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn an_update_is_the_next_read_and_one_that_fails_or_is_dropped_invalidates() {
    let (stash, clock) = stash();
    let db = Db::default();
    let users = stash.values::<User>(Policy::ttl(HOUR));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    let ada = User {
        id: 1,
        name: "Ada".into(),
    };
    let written = users
        .update("user:1", || async { Ok::<_, DbError>(ada.clone()) })
        .await
        .unwrap();
    // The write's own value: no query, no decoding.
    let read = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert!(Arc::ptr_eq(&written, &read));
    assert_eq!(db.queries(), 1);

    // A failed write: the data may have changed, the old value goes.
    let failed = users
        .update("user:1", || async { Err::<User, _>(DbError) })
        .await;
    assert_eq!(failed, Err(DbError));
    assert!(users.get("user:1").await.is_none());
    clock.advance(Duration::from_secs(1));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!(db.queries(), 2);

    // A write dropped midway: the same.
    let gate = Counter::closed();
    let writing = tokio::spawn({
        let (users, gate) = (users.clone(), gate.clone());
        async move {
            users
                .update("user:1", || async move {
                    gate.enter().await;
                    Ok::<_, DbError>(User {
                        id: 1,
                        name: "never".into(),
                    })
                })
                .await
        }
    });
    crate::test_util::until("the write to begin", || gate.calls() == 1).await;
    writing.abort();
    crate::test_util::until("the rollback", || {
        stash
            .store()
            .get_local("app:v1:=user:1")
            .unwrap()
            .is_none_or(|e| e.is_tombstone())
    })
    .await;
    assert!(users.get("user:1").await.is_none());
}

#[tokio::test]
async fn a_stale_value_is_answered_at_once_while_one_caller_fetches_it_again() {
    let (stash, clock) = stash();
    let db = Db::default();
    let minute = Duration::from_secs(60);
    let users = stash.values::<User>(Policy::ttl(minute).stale_while_revalidate(minute));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    clock.advance(minute);
    db.queries.close();
    let refreshing = tokio::spawn({
        let (users, db) = (users.clone(), db.clone());
        async move { users.get_or_fetch("user:1", || db.found(1)).await }
    });
    crate::test_util::until("the refresh to begin", || db.queries() == 2).await;
    for _ in 0..3 {
        let stale = within(
            "a stale answer",
            users.get_or_fetch("user:1", || db.found(1)),
        )
        .await
        .unwrap();
        assert_eq!(stale.name, "user 1 #1");
    }
    assert_eq!((db.queries(), stash.stats().stale), (2, 3));
    db.queries.open();
    let fresh = within("the refresh", refreshing).await.unwrap().unwrap();
    assert_eq!(fresh.name, "user 1 #2");
    let hit = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert!(Arc::ptr_eq(&fresh, &hit));
    // Past the window: a miss, every caller waits for the fetch.
    clock.advance(2 * minute);
    let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (3, "user 1 #3"));
}

#[tokio::test]
async fn tags_taken_from_the_value_drop_exactly_the_values_carrying_them() {
    let (stash, _) = stash();
    let db = Db::default();
    let users = stash
        .values::<User>(Policy::ttl(HOUR))
        .with_tags_from(|u: &User| vec![format!("parity:{}", u.id % 2)]);
    for id in 1..=4 {
        users
            .get_or_fetch(format!("user:{id}"), || db.found(id))
            .await
            .unwrap();
    }
    stash.invalidate_tag("parity:1").await.unwrap();
    for id in 1..=4 {
        let cached = users.get(format!("user:{id}")).await.is_some();
        assert_eq!(cached, id % 2 == 0, "user {id}");
    }
    // A write-through carries the tags of the value written.
    users
        .set(
            "user:2",
            &User {
                id: 3,
                name: "odd now".into(),
            },
        )
        .await
        .unwrap();
    stash.invalidate_tag("parity:1").await.unwrap();
    assert!(users.get("user:2").await.is_none());
    assert!(users.get("user:4").await.is_some());
}

#[tokio::test]
async fn within_stale_if_error_a_failed_fetch_answers_the_expired_value() {
    let (stash, clock) = stash();
    let db = Db::default();
    let minute = Duration::from_secs(60);
    let users = stash.values::<User>(Policy::ttl(minute).stale_if_error(10 * minute));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    clock.advance(minute);
    // Expired: fetched again, and when that fails the expired value answers.
    db.fail.store(true, Ordering::SeqCst);
    let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (2, "user 1 #1"));
    assert_eq!(stash.stats().stale, 1);
    // Not a value the cache alone answers with.
    assert!(users.get("user:1").await.is_none());
    // A fetch that works replaces it.
    db.fail.store(false, Ordering::SeqCst);
    let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (3, "user 1 #3"));
    // Past the window, the error.
    clock.advance(11 * minute);
    db.fail.store(true, Ordering::SeqCst);
    let got = users.get_or_fetch("user:1", || db.found(1)).await;
    assert_eq!(got, Err(DbError));
}

/// A fetch of user 1 that takes `took` by `clock`.
fn slow(
    db: &Db,
    clock: &ManualClock,
    took: Duration,
) -> impl Future<Output = Result<User, DbError>> {
    let (db, clock) = (db.clone(), clock.clone());
    async move {
        clock.advance(took);
        db.found(1).await
    }
}

#[tokio::test]
async fn a_read_shortly_before_expiry_refreshes_early_once() {
    let clock = ManualClock::default();
    let stash = Stash::builder()
        .clock(clock.clone())
        .random_seed(7)
        .build()
        .unwrap();
    let db = Db::default();
    // The fetch takes 10 s: with beta 1, reads refresh early from 140 s before expiry on,
    // almost surely in the last 10 ms.
    let users = stash.values::<User>(Policy::ttl(HOUR).early_refresh(1.0));
    let ten = Duration::from_secs(10);
    users
        .get_or_fetch("user:1", || slow(&db, &clock, ten))
        .await
        .unwrap();
    for _ in 0..100 {
        users
            .get_or_fetch("user:1", || slow(&db, &clock, ten))
            .await
            .unwrap();
    }
    assert_eq!(db.queries(), 1);
    // 10 ms before expiry (stored when the fetch began).
    clock.advance(HOUR - ten - Duration::from_millis(10));
    let mut reads = 0;
    let user = loop {
        reads += 1;
        assert!(reads <= 100, "no early refresh in 100 reads");
        let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        if db.queries() == 2 {
            break user;
        }
        assert_eq!(user.name, "user 1 #1");
    };
    // The reader that refreshed waited for the new value; the refresh is counted.
    assert_eq!(user.name, "user 1 #2");
    assert_eq!(stash.stats().refreshes, 1);
    for _ in 0..100 {
        let hit = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        assert_eq!(hit.name, "user 1 #2");
    }
    assert_eq!(db.queries(), 2);
    // Off with beta 0.
    let never = stash.values::<User>(Policy::ttl(HOUR).early_refresh(0.0));
    never
        .get_or_fetch("user:2", || async {
            clock.advance(ten);
            db.found(2).await
        })
        .await
        .unwrap();
    clock.advance(HOUR - ten - Duration::from_millis(1));
    for _ in 0..100 {
        never.get_or_fetch("user:2", || db.found(2)).await.unwrap();
    }
    assert_eq!(db.queries(), 3);
}

/// A fetch of user `id` owning what it uses, for `get_or_fetch_detached`.
fn owned(
    db: &Db,
    id: u32,
) -> impl FnOnce() -> std::pin::Pin<Box<dyn Future<Output = Result<User, DbError>> + Send>>
       + Send
       + 'static {
    let db = db.clone();
    move || Box::pin(async move { db.found(id).await })
}

#[tokio::test]
async fn a_detached_refresh_keeps_every_caller_from_waiting() {
    let (stash, clock) = stash();
    let db = Db::default();
    let minute = Duration::from_secs(60);
    let users = stash.values::<User>(Policy::ttl(minute).stale_while_revalidate(minute));
    users
        .get_or_fetch_detached("user:1", owned(&db, 1))
        .await
        .unwrap();
    clock.advance(minute);
    // The refresh's fetch is held: no caller waits for it, the one that started it neither.
    db.queries.close();
    for _ in 0..3 {
        let stale = within(
            "a stale answer",
            users.get_or_fetch_detached("user:1", owned(&db, 1)),
        )
        .await
        .unwrap();
        assert_eq!(stale.name, "user 1 #1");
    }
    crate::test_util::until("the refresh to begin", || db.queries() == 2).await;
    assert_eq!((stash.stats().stale, stash.stats().refreshes), (3, 1));
    db.queries.open();
    crate::test_util::until("the refresh to store", || stash.stats().stores == 2).await;
    let fresh = users.get("user:1").await.unwrap();
    assert_eq!((db.queries(), fresh.name.as_str()), (2, "user 1 #2"));
    // A failed refresh keeps the stale value, and the key is refreshed again later.
    clock.advance(minute);
    db.fail.store(true, Ordering::SeqCst);
    let stale = users
        .get_or_fetch_detached("user:1", owned(&db, 1))
        .await
        .unwrap();
    assert_eq!(stale.name, "user 1 #2");
    crate::test_util::until("the failed refresh", || {
        db.queries() == 3 && users.flights.len() == 0
    })
    .await;
    db.fail.store(false, Ordering::SeqCst);
    users
        .get_or_fetch_detached("user:1", owned(&db, 1))
        .await
        .unwrap();
    crate::test_util::until("the second refresh to store", || stash.stats().stores == 3).await;
    assert_eq!(users.get("user:1").await.unwrap().name, "user 1 #4");
}

#[tokio::test]
async fn a_sliding_value_lives_while_it_is_read_and_at_most_its_cap() {
    let (stash, clock) = stash();
    let db = Db::default();
    let minute = Duration::from_secs(60);
    let users = stash.values::<User>(Policy::new().sliding(10 * minute).max_lifetime(HOUR));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    for _ in 0..5 {
        clock.advance(9 * minute);
        users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    }
    assert_eq!(db.queries(), 1);
    // Unread for longer than its idle time: gone (at 56 min).
    clock.advance(11 * minute);
    let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (2, "user 1 #2"));
    // Read every 9 min, it still goes at its cap (an hour after it was stored).
    for _ in 0..6 {
        clock.advance(9 * minute);
        users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    }
    assert_eq!(db.queries(), 2);
    clock.advance(9 * minute);
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!(db.queries(), 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn callers_queue_behind_three_failed_fetches_at_most_then_each_fetches_alone() {
    let (stash, clock) = stash();
    let users = stash.values::<User>(Policy::ttl(HOUR));
    let calls = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(0));
    // The first three fetches fail at once; the others fail once the gate opens.
    let fetch = || {
        let (calls, gate) = (calls.clone(), gate.clone());
        move || async move {
            if calls.fetch_add(1, Ordering::SeqCst) >= 3 {
                let _ = gate.acquire().await;
            }
            Err::<User, _>(DbError)
        }
    };
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (users, fetch) = (users.clone(), fetch());
            tokio::spawn(async move { users.get_or_fetch("user:1", fetch).await })
        })
        .collect();
    // Queueing one failed leader after another, they would wait on the gate one at a time.
    crate::test_util::until("every caller to fetch", || {
        calls.load(Ordering::SeqCst) == 50
    })
    .await;
    gate.add_permits(1000);
    for caller in callers {
        assert_eq!(within("a caller", caller).await.unwrap(), Err(DbError));
    }
    // A fetch that works ends it: a burst shares one fetch again.
    let db = Db::default();
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    stash.invalidate_key("user:1").await.unwrap();
    // (A fill dated at the invalidation's instant is refused: the clock moves on.)
    clock.advance(Duration::from_secs(1));
    db.queries.close();
    let callers: Vec<_> = (0..50)
        .map(|_| {
            let (users, db) = (users.clone(), db.clone());
            tokio::spawn(async move { users.get_or_fetch("user:1", || db.found(1)).await })
        })
        .collect();
    crate::test_util::until("a fetch", || db.queries() == 2).await;
    db.queries.open();
    for caller in callers {
        within("a caller", caller).await.unwrap().unwrap();
    }
    assert_eq!(db.queries(), 2);
    assert_eq!(users.flights.len(), 0);
}

#[tokio::test]
async fn a_stale_value_is_answered_without_a_fetch_while_its_last_refreshes_failed() {
    let (stash, clock) = stash();
    let db = Db::default();
    let minute = Duration::from_secs(60);
    let users = stash.values::<User>(Policy::ttl(minute).stale_while_revalidate(HOUR));
    users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    clock.advance(minute);
    db.fail.store(true, Ordering::SeqCst);
    // Each of three callers refreshes it, fails, and answers the stale value.
    for n in 2..=4 {
        let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        assert_eq!((db.queries(), user.name.as_str()), (n, "user 1 #1"));
    }
    // Then the database is left alone a while: the stale value, at once.
    for _ in 0..10 {
        let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
        assert_eq!((db.queries(), user.name.as_str()), (4, "user 1 #1"));
    }
    assert_eq!(stash.stats().stale, 13);
    // Once the failures are old, a caller refreshes it again.
    clock.advance(Duration::from_secs(1));
    db.fail.store(false, Ordering::SeqCst);
    let user = users.get_or_fetch("user:1", || db.found(1)).await.unwrap();
    assert_eq!((db.queries(), user.name.as_str()), (5, "user 1 #5"));
    assert_eq!(users.flights.len(), 0);
}

#[test]
#[should_panic(expected = "early_refresh: NaN must be a finite number")]
fn an_early_refresh_that_is_not_a_number_is_refused_naming_the_setting() {
    let (stash, _) = stash();
    let _ = stash.values::<User>(Policy::ttl(HOUR).early_refresh(f64::NAN));
}

#[test]
#[should_panic(expected = "ttl_jitter: 3600s must be shorter than the TTL")]
fn a_jitter_as_long_as_the_ttl_is_refused_naming_the_setting() {
    let (stash, _) = stash();
    let _ = stash.values::<User>(Policy::ttl(HOUR).ttl_jitter(HOUR));
}

#[tokio::test]
async fn failures_of_many_keys_are_forgotten_once_old() {
    let (stash, clock) = stash();
    let db = Db::default();
    db.fail.store(true, Ordering::SeqCst);
    let users = stash.values::<User>(Policy::ttl(HOUR));
    // 10,000 keys fail once each, a second apart: the map keeps the recent ones only.
    for id in 0..10_000 {
        let got = users
            .get_or_fetch(format!("user:{id}"), || db.found(1))
            .await;
        assert_eq!(got, Err(DbError));
        clock.advance(Duration::from_secs(1));
    }
    let remembered = users.flights.remembered();
    assert!(remembered <= super::flight::MAP_TIDY + 1, "{remembered}");
    assert_eq!(users.flights.len(), 0);
}
