//! A memory hit of `Values::get_or_fetch` next to moka's `get` of an `Arc<T>`, from its sync
//! cache (what this crate's memory tier is built on) and its async one (`moka::future`, as an
//! async handler would use it), and the two codecs on one value.
//!
//! `cargo bench --bench values`; compare `values_hit/get_or_fetch` with `values_hit/moka_get`
//! and `values_hit/moka_future_get`.

use criterion::{criterion_group, criterion_main, Criterion};
use serde::{Deserialize, Serialize};
use std::sync::Arc;
use std::time::Duration;
use tower_stash::values::{Codec, Json};
use tower_stash::{Policy, Stash};

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

fn hit(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let stash = Stash::new();
    let users = stash.values::<User>(Policy::ttl(Duration::from_secs(3600)));
    rt.block_on(async {
        users
            .get_or_fetch("user:1", || async { Ok::<_, ()>(user()) })
            .await
            .unwrap();
    });
    let moka: moka::sync::Cache<String, Arc<User>> = moka::sync::Cache::new(10_000);
    moka.insert("user:1".into(), Arc::new(user()));

    let mut g = c.benchmark_group("values_hit");
    g.bench_function("get_or_fetch", |b| {
        b.to_async(&rt).iter(|| async {
            users
                .get_or_fetch("user:1", || async { Ok::<_, ()>(user()) })
                .await
                .unwrap()
        })
    });
    g.bench_function("moka_get", |b| {
        b.to_async(&rt)
            .iter(|| async { moka.get("user:1").unwrap() })
    });
    let future: moka::future::Cache<String, Arc<User>> = moka::future::Cache::new(10_000);
    rt.block_on(future.insert("user:1".into(), Arc::new(user())));
    g.bench_function("moka_future_get", |b| {
        b.to_async(&rt)
            .iter(|| async { future.get("user:1").await.unwrap() })
    });
    g.finish();

    let value = user();
    let mut g = c.benchmark_group("values_codec");
    let json = Json.encode(&value).unwrap();
    g.bench_function("json_decode", |b| {
        b.iter(|| Json.decode::<User>(&json).unwrap())
    });
    let packed = rmp_serde::to_vec_named(&value).unwrap();
    g.bench_function("msgpack_decode", |b| {
        b.iter(|| rmp_serde::from_slice::<User>(&packed).unwrap())
    });
    g.finish();
}

criterion_group!(benches, hit);
criterion_main!(benches);
