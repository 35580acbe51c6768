//! The entry envelope weighed against JSON and MessagePack (issue 3 asks to measure and choose).
//!
//! The same entry (status, headers, key, times, tags, body) in three encodings: our binary
//! envelope (`Entry::encode` / `Entry::decode`: the body written raw and sliced out on read
//! without a copy), serde_json (the body as a byte array), and MessagePack through rmp-serde
//! (the body as `bin`). `cargo bench --bench codec`; the sizes are printed once.

use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion};
use serde::{Deserialize, Serialize};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tower_stash::Entry;

#[derive(Serialize, Deserialize)]
struct Wire {
    v: u8,
    key: String,
    status: u16,
    stored_at_ms: u64,
    ttl_ms: u64,
    headers: Vec<(String, serde_bytes::ByteBuf)>,
    tags: Vec<String>,
    #[serde(with = "serde_bytes")]
    body: Vec<u8>,
}

fn wire(e: &Entry) -> Wire {
    Wire {
        v: 1,
        key: e.key().to_string(),
        status: e.status().as_u16(),
        stored_at_ms: e
            .stored_at()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_millis() as u64,
        ttl_ms: e.ttl().as_millis() as u64,
        headers: e
            .headers()
            .iter()
            .map(|(n, v)| {
                (
                    n.to_string(),
                    serde_bytes::ByteBuf::from(v.as_bytes().to_vec()),
                )
            })
            .collect(),
        tags: e.tags().to_vec(),
        body: e.body().to_vec(),
    }
}

fn entry(size: usize) -> Entry {
    let mut headers = http::HeaderMap::new();
    headers.insert("content-type", "application/json".parse().unwrap());
    headers.insert(
        "etag",
        "\"061501b38f4e562eb57a7fbba6b1775d\"".parse().unwrap(),
    );
    headers.insert("content-length", size.to_string().parse().unwrap());
    Entry::new(
        "app:v1:user:1",
        http::StatusCode::OK,
        headers,
        vec![b'x'; size].into(),
    )
    .with_times(SystemTime::now(), Duration::from_secs(3600))
    .with_tags(vec!["users".into()])
}

fn codec(c: &mut Criterion) {
    let mut group = c.benchmark_group("envelope");
    for size in [64usize, 16 * 1024] {
        let e = entry(size);
        let ours = e.encode();
        let json = serde_json::to_vec(&wire(&e)).unwrap();
        let msgpack = rmp_serde::to_vec_named(&wire(&e)).unwrap();
        println!(
            "body {size} B: envelope {} B, json {} B, msgpack {} B",
            ours.len(),
            json.len(),
            msgpack.len()
        );
        group.bench_with_input(BenchmarkId::new("ours/encode", size), &e, |b, e| {
            b.iter(|| e.encode())
        });
        group.bench_with_input(BenchmarkId::new("json/encode", size), &e, |b, e| {
            b.iter(|| serde_json::to_vec(&wire(e)).unwrap())
        });
        group.bench_with_input(BenchmarkId::new("msgpack/encode", size), &e, |b, e| {
            b.iter(|| rmp_serde::to_vec_named(&wire(e)).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("ours/decode", size),
            &ours,
            |b, bytes: &Bytes| b.iter(|| Entry::decode(bytes.clone()).unwrap()),
        );
        group.bench_with_input(BenchmarkId::new("json/decode", size), &json, |b, bytes| {
            b.iter(|| serde_json::from_slice::<Wire>(bytes).unwrap())
        });
        group.bench_with_input(
            BenchmarkId::new("msgpack/decode", size),
            &msgpack,
            |b, bytes| b.iter(|| rmp_serde::from_slice::<Wire>(bytes).unwrap()),
        );
    }
    group.finish();
}

criterion_group!(benches, codec);
criterion_main!(benches);
