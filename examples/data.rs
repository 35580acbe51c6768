//! Typed data caching: a user and a product cached as values inside the code that loads
//! them, against a simulated database that takes 200 ms per query.
//!
//! ```sh
//! cargo run --example data                              # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --example data
//! ```
//!
//! It prints the time of a miss and of a hit, shows a write-through and an invalidation by
//! tag, then compares JSON and MessagePack on the example's values: encoded bytes, encode and
//! decode time per value.

use serde::{Deserialize, Serialize};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};
use tower_stash::values::{Codec, Json};
use tower_stash::{Policy, Stash};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct User {
    id: u64,
    name: String,
    email: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Product {
    id: u64,
    name: String,
    category: String,
    price_cents: u64,
    tags: Vec<String>,
}

/// A database that answers after 200 ms and counts its queries.
#[derive(Default)]
struct Db {
    queries: AtomicU64,
}

impl Db {
    async fn user(&self, id: u64) -> Result<User, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(User {
            id,
            name: format!("User {id}"),
            email: format!("user{id}@example.com"),
        })
    }

    async fn product(&self, id: u64) -> Result<Product, std::io::Error> {
        self.queries.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(Duration::from_millis(200)).await;
        Ok(Product {
            id,
            name: format!("Product {id}"),
            category: "laptops".into(),
            price_cents: 129_900,
            tags: vec!["apple".into(), "laptops".into()],
        })
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stash = Stash::from_env()?;
    let db = Db::default();
    let hour = Duration::from_secs(3600);
    let users = stash.values::<User>(Policy::ttl(hour).tags(["users"]));
    let products = stash.values::<Product>(
        Policy::ttl(hour)
            .tags(["products"])
            .stale_while_revalidate(Duration::from_secs(60)),
    );

    for what in ["miss", "hit"] {
        let started = Instant::now();
        let user = users.get_or_fetch("user:1", || db.user(1)).await?;
        println!(
            "get_user(1), {what}: {:?} ({})",
            started.elapsed(),
            user.name
        );
    }
    // Write-through: the write's value is the next read, no query.
    let renamed = User {
        name: "Ada".into(),
        ..(*users.get_or_fetch("user:1", || db.user(1)).await?).clone()
    };
    users.set("user:1", &renamed).await?;
    let user = users.get_or_fetch("user:1", || db.user(1)).await?;
    println!(
        "after update_user(1): {} ({} queries so far)",
        user.name,
        db.queries.load(Ordering::Relaxed)
    );
    // Invalidation by tag: every product goes, values and responses alike.
    let product = products.get_or_fetch("product:7", || db.product(7)).await?;
    stash.invalidate_tag("products").await?;
    let started = Instant::now();
    products.get_or_fetch("product:7", || db.product(7)).await?;
    println!(
        "get_product(7) after invalidate_tag(\"products\"): {:?}",
        started.elapsed()
    );
    println!("stats: {:?}", stash.stats());

    println!();
    println!(
        "{:<8} {:<12} {:>6} {:>12} {:>12}",
        "value", "codec", "bytes", "encode", "decode"
    );
    let user = (*user).clone();
    let product = (*product).clone();
    table_row("User", &user)?;
    table_row("Product", &product)?;
    Ok(())
}

/// Prints the encoded size and the mean encode and decode times of `value` with each codec.
fn table_row<T: Serialize + serde::de::DeserializeOwned>(
    name: &str,
    value: &T,
) -> Result<(), Box<dyn std::error::Error>> {
    const N: u32 = 20_000;
    let time = |f: &mut dyn FnMut()| {
        let started = Instant::now();
        for _ in 0..N {
            f();
        }
        started.elapsed() / N
    };
    let json = Json.encode(value)?;
    let enc = time(&mut || drop(Json.encode(value)));
    let dec = time(&mut || drop(Json.decode::<T>(&json)));
    println!(
        "{name:<8} {:<12} {:>6} {enc:>12?} {dec:>12?}",
        "json",
        json.len()
    );
    let packed = rmp_serde::to_vec_named(value)?;
    let enc = time(&mut || drop(rmp_serde::to_vec_named(value)));
    let dec = time(&mut || drop(rmp_serde::from_slice::<T>(&packed)));
    println!(
        "{name:<8} {:<12} {:>6} {enc:>12?} {dec:>12?}",
        "msgpack",
        packed.len()
    );
    Ok(())
}
