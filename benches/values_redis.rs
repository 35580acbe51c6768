//! A Redis hit of `Values::get_or_fetch` (no memory tier: every read is a `GET` and a
//! decode), with each codec, next to the hand-written cache-aside read it replaces: a bb8-redis
//! pool's `GET` and `serde_json::from_slice`. One read at a time (`values_redis`), and 64 at
//! once (`values_redis_64`, the time of the 64). Starts its own `redis-server` on a free
//! loopback port.
//!
//! `cargo bench --features redis,msgpack --bench values_redis`

#[allow(dead_code)]
#[path = "../tests/support/redis.rs"]
mod redis_support;

use bb8_redis::redis::AsyncCommands;
use bb8_redis::{bb8, RedisConnectionManager};
use criterion::{criterion_group, criterion_main, Criterion};
use futures_util::future::join_all;
use redis_support::RedisServer;
use serde::{Deserialize, Serialize};
use std::time::Duration;
use tower_stash::values::{Codec, Json, MessagePack};
use tower_stash::{Policy, RedisStore, Stash, Values};

#[derive(Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

fn user() -> User {
    User {
        id: 1,
        name: "User 1".into(),
        email: "user1@example.com".into(),
    }
}

async fn fetch() -> Result<User, ()> {
    Ok(user())
}

type Pool = bb8::Pool<RedisConnectionManager>;

/// The hand-written read: a pooled connection's `GET`, then `serde_json::from_slice`.
async fn by_hand(pool: &Pool) -> User {
    let mut conn = pool.get().await.unwrap();
    let bytes: Vec<u8> = conn.get("by_hand:user:1").await.unwrap();
    serde_json::from_slice(&bytes).unwrap()
}

fn redis_hit(c: &mut Criterion) {
    let redis = RedisServer::start();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let (json, packed, pool) = rt.block_on(async {
        let stash = Stash::builder()
            .store(RedisStore::builder(redis.url()).build().unwrap())
            .build()
            .unwrap();
        let policy = || Policy::ttl(Duration::from_secs(3600));
        let json: Values<User, Json> = stash.values(policy());
        let packed = stash.values::<User>(policy()).with_codec(MessagePack);
        json.get_or_fetch("json:1", fetch).await.unwrap();
        packed.get_or_fetch("packed:1", fetch).await.unwrap();
        let pool: Pool = bb8::Pool::builder()
            .max_size(16)
            .build(RedisConnectionManager::new(redis.url()).unwrap())
            .await
            .unwrap();
        let mut conn = pool.get().await.unwrap();
        let body = Json.encode(&user()).unwrap();
        let _: () = conn.set_ex("by_hand:user:1", body, 3600).await.unwrap();
        drop(conn);
        (json, packed, pool)
    });

    let mut g = c.benchmark_group("values_redis");
    g.bench_function("json", |b| {
        b.to_async(&rt)
            .iter(|| async { json.get_or_fetch("json:1", fetch).await.unwrap() })
    });
    g.bench_function("msgpack", |b| {
        b.to_async(&rt)
            .iter(|| async { packed.get_or_fetch("packed:1", fetch).await.unwrap() })
    });
    g.bench_function("bb8_get_serde_json", |b| {
        b.to_async(&rt).iter(|| by_hand(&pool))
    });
    g.finish();

    let mut g = c.benchmark_group("values_redis_64");
    g.bench_function("json", |b| {
        b.to_async(&rt).iter(|| {
            join_all((0..64).map(|_| async { json.get_or_fetch("json:1", fetch).await.unwrap() }))
        })
    });
    g.bench_function("msgpack", |b| {
        b.to_async(&rt).iter(|| {
            join_all(
                (0..64).map(|_| async { packed.get_or_fetch("packed:1", fetch).await.unwrap() }),
            )
        })
    });
    g.bench_function("bb8_get_serde_json", |b| {
        b.to_async(&rt)
            .iter(|| join_all((0..64).map(|_| by_hand(&pool))))
    });
    g.finish();
}

criterion_group!(benches, redis_hit);
criterion_main!(benches);
