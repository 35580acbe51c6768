//! A POST flood against HTTP mode's write invalidation (RFC 9111 section 4.4): `ENTRIES`
//! cached URLs in a memory tier, then as many POSTs, each to a distinct cached URL (each
//! drops that URL's entries). Prints the mean time per POST of the first and last tenth, and
//! the memory tier's entries and bytes and the process's resident memory before and after:
//! a write's invalidation should cost the same whether it is the first or the last, and
//! leave memory bounded.
//!
//! `cargo bench --bench post_flood` (100,000 by default; `ENTRIES=10000` for a quick run).

use bytes::Bytes;
use http::{Method, Request, Response};
use http_body_util::{BodyExt, Empty, Full};
use std::convert::Infallible;
use std::time::{Duration, Instant};
use tower::{service_fn, ServiceBuilder, ServiceExt};
use tower_stash::{CacheLayer, MemoryStore, Policy, Routes, Stash};

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/statm")
        .ok()
        .and_then(|s| s.split_whitespace().nth(1)?.parse::<u64>().ok())
        .map_or(0, |pages| pages * 4)
}

fn main() {
    let n: usize = std::env::var("ENTRIES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(100_000);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async move {
        // Room for every entry (each well under 1 KiB), so that only what the flood does
        // can push entries out.
        let store = MemoryStore::new(1 << 30);
        let stash = Stash::builder().store(store.clone()).build().unwrap();
        let routes = Routes::new().get("/{*path}", Policy::new().http_mode(true));
        let origin = service_fn(|req: Request<Empty<Bytes>>| async move {
            let mut resp = Response::new(Full::new(Bytes::from_static(b"resource")));
            if req.method() == Method::GET {
                resp.headers_mut()
                    .insert("cache-control", "max-age=3600".parse().unwrap());
            }
            Ok::<_, Infallible>(resp)
        });
        let svc = ServiceBuilder::new()
            .layer(CacheLayer::new(stash.clone(), routes))
            .service(origin);
        let send = |method: Method, i: usize| {
            let svc = svc.clone();
            async move {
                let req = Request::builder()
                    .method(method)
                    .uri(format!("/items/{i}"))
                    .header("host", "shop.example")
                    .body(Empty::<Bytes>::new())
                    .unwrap();
                let resp = svc.oneshot(req).await.unwrap();
                resp.into_body().collect().await.unwrap();
            }
        };
        for i in 0..n {
            send(Method::GET, i).await;
        }

        let before = (stash.stats(), rss_kib());
        println!(
            "{n} entries cached: {} entries, {} bytes in the memory tier, {} KiB resident",
            before.0.entries, before.0.bytes, before.1
        );
        let tenth = (n / 10).max(1);
        let mut means = Vec::new();
        let mut batch = Instant::now();
        for i in 0..n {
            send(Method::POST, i).await;
            if (i + 1) % tenth == 0 {
                means.push(batch.elapsed() / tenth as u32);
                batch = Instant::now();
            }
        }

        let after = (stash.stats(), rss_kib());
        let us = |d: &Duration| d.as_secs_f64() * 1e6;
        println!(
            "{n} POSTs: mean per POST by tenth (us): {}",
            means
                .iter()
                .map(|d| format!("{:.1}", us(d)))
                .collect::<Vec<_>>()
                .join(" ")
        );
        println!(
            "first tenth {:.1} us, last tenth {:.1} us per POST",
            us(&means[0]),
            us(means.last().unwrap())
        );
        println!(
            "after: {} entries, {} bytes in the memory tier, {} KiB resident",
            after.0.entries, after.0.bytes, after.1
        );
    });
}
