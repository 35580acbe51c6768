//! Typed data caching: the guide's service written with tower-stash's typed values, against a
//! simulated database that takes 200 ms per query.
//!
//! ```sh
//! cargo run --example data                                             # in memory
//! REDIS_URL=redis://127.0.0.1:6379 cargo run --features redis --example data
//! ```
//!
//! - `get_user`: cache-aside; `update_user`: write-through (a failed write drops the key).
//! - `get_product`: tagged with its category from the data; `category`: the list of a
//!   category's product ids, each product read through `get_product` (cached products);
//!   `update_product`: write-through of the product and a cascade (its old and new
//!   categories' lists, and `products:all`, dropped by tag and key).
//! - `price`: a short TTL with early refresh and stale-while-revalidate; refreshed on a task of
//!   its own (`get_or_fetch_detached`), so no caller waits for the database once it is cached.
//!
//! It prints the time of each step, then compares JSON and MessagePack on the example's values:
//! encoded bytes, encode and decode time per value.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tower_stash::values::{Codec, Json};
use tower_stash::{Policy, Stash, Values};

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

#[derive(Debug, Clone, Serialize, Deserialize)]
struct Price {
    symbol: String,
    cents: u64,
    quote: u64,
}

#[derive(Debug)]
struct DbError;

impl std::fmt::Display for DbError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("the database failed")
    }
}

impl std::error::Error for DbError {}

/// A database that answers after 200 ms and counts its queries.
struct Db {
    users: Mutex<BTreeMap<u64, User>>,
    products: Mutex<BTreeMap<u64, Product>>,
    queries: AtomicU64,
}

impl Db {
    fn new() -> Arc<Self> {
        let users = (1..=100)
            .map(|id| {
                let (name, email) = (format!("User {id}"), format!("user{id}@example.com"));
                (id, User { id, name, email })
            })
            .collect();
        let products = [
            ("MacBook Air", "laptops", 119_900),
            ("ThinkPad X1", "laptops", 149_900),
            ("Kettle", "kitchen", 4_900),
        ]
        .into_iter()
        .zip(1..)
        .map(|((name, category, price_cents), id)| {
            let tags = vec![category.to_string(), "sale".to_string()];
            let (name, category) = (name.to_string(), category.to_string());
            let product = Product {
                id,
                name,
                category,
                price_cents,
                tags,
            };
            (id, product)
        })
        .collect();
        Arc::new(Self {
            users: Mutex::new(users),
            products: Mutex::new(products),
            queries: AtomicU64::new(0),
        })
    }

    async fn query(&self) -> u64 {
        let n = self.queries.fetch_add(1, Ordering::Relaxed) + 1;
        tokio::time::sleep(Duration::from_millis(200)).await;
        n
    }

    fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    async fn user(&self, id: u64) -> Result<User, DbError> {
        self.query().await;
        self.users.lock().unwrap().get(&id).cloned().ok_or(DbError)
    }

    async fn rename_user(&self, id: u64, name: &str) -> Result<User, DbError> {
        self.query().await;
        let mut users = self.users.lock().unwrap();
        let user = users.get_mut(&id).ok_or(DbError)?;
        user.name = name.to_string();
        Ok(user.clone())
    }

    async fn product(&self, id: u64) -> Result<Option<Product>, DbError> {
        self.query().await;
        Ok(self.products.lock().unwrap().get(&id).cloned())
    }

    async fn category(&self, category: &str) -> Result<Vec<u64>, DbError> {
        self.query().await;
        let products = self.products.lock().unwrap();
        let ids = products.values().filter(|p| p.category == category);
        Ok(ids.map(|p| p.id).collect())
    }

    async fn update_product(
        &self,
        id: u64,
        category: &str,
        price_cents: u64,
    ) -> Result<(Product, String), DbError> {
        self.query().await;
        let mut products = self.products.lock().unwrap();
        let product = products.get_mut(&id).ok_or(DbError)?;
        let before = std::mem::replace(&mut product.category, category.to_string());
        product.price_cents = price_cents;
        Ok((product.clone(), before))
    }

    async fn price(&self, symbol: &str) -> Result<Price, DbError> {
        let quote = self.query().await;
        let base = symbol.bytes().map(u64::from).sum::<u64>() * 100;
        let symbol = symbol.to_string();
        Ok(Price {
            symbol,
            cents: base + quote,
            quote,
        })
    }
}

/// The service: the database behind one typed handle per kind of value.
struct Service {
    stash: Stash,
    db: Arc<Db>,
    users: Values<User>,
    products: Values<Product>,
    lists: Values<Vec<u64>>,
    prices: Values<Price>,
}

impl Service {
    fn new(stash: Stash, db: Arc<Db>) -> Self {
        let hour = Duration::from_secs(3600);
        let users = stash.values(Policy::ttl(hour).tags(["users"]));
        // Tagged with its category from the data; a missing product is remembered 30 s.
        let products = stash
            .values(
                Policy::ttl(hour)
                    .tags(["products"])
                    .status_ttl(404, Duration::from_secs(30)),
            )
            .with_tags_from(|p: &Product| vec![format!("category:{}", p.category)]);
        let lists = stash.values(Policy::ttl(hour).tags(["products"]));
        // Fresh for a second; then served for 10 s more while one refresh runs, and refreshed
        // early (XFetch) by busy readers shortly before it expires.
        let prices = stash.values(
            Policy::ttl(Duration::from_secs(1))
                .stale_while_revalidate(Duration::from_secs(10))
                .early_refresh(1.0),
        );
        Self {
            stash,
            db,
            users,
            products,
            lists,
            prices,
        }
    }

    /// Cache-aside.
    async fn get_user(&self, id: u64) -> Result<Arc<User>, DbError> {
        let key = format!("user:{id}");
        self.users.get_or_fetch(key, || self.db.user(id)).await
    }

    /// Write-through: the write's answer is the next read; a failed write drops the key.
    async fn update_user(&self, id: u64, name: &str) -> Result<Arc<User>, DbError> {
        let key = format!("user:{id}");
        let write = || self.db.rename_user(id, name);
        self.users.update(key, write).await
    }

    async fn get_product(&self, id: u64) -> Result<Option<Arc<Product>>, DbError> {
        let key = format!("product:{id}");
        let fetch = || self.db.product(id);
        self.products.get_or_fetch_option(key, fetch).await
    }

    /// A category's products: its list of ids, then each product from the cache.
    async fn category(&self, category: &str) -> Result<Vec<Arc<Product>>, DbError> {
        let key = format!("category:{category}");
        let ids = self
            .lists
            .get_or_fetch(key, || self.db.category(category))
            .await?;
        let mut products = Vec::with_capacity(ids.len());
        for id in ids.iter() {
            products.extend(self.get_product(*id).await?);
        }
        Ok(products)
    }

    /// Write-through of the product, and a cascade: both categories' lists and the list of
    /// all products go (the product's own entry is the write's answer).
    async fn update_product(
        &self,
        id: u64,
        category: &str,
        price_cents: u64,
    ) -> Result<Arc<Product>, Box<dyn std::error::Error>> {
        let key = format!("product:{id}");
        let (product, before) = self.db.update_product(id, category, price_cents).await?;
        self.products.set(&key, &product).await?;
        for category in [before.as_str(), category] {
            self.stash
                .invalidate_key(&format!("category:{category}"))
                .await?;
        }
        self.stash.invalidate_key("products:all").await?;
        Ok(Arc::new(product))
    }

    /// A price: never waited for once cached (refreshed on a task of its own).
    async fn price(&self, symbol: &str) -> Result<Arc<Price>, DbError> {
        let (db, owned) = (self.db.clone(), symbol.to_string());
        let fetch = move || async move { db.price(&owned).await };
        self.prices.get_or_fetch_detached(symbol, fetch).await
    }
}

/// Runs `f` and prints how long it took, with `what` and what it says of the answer.
async fn timed<T, F: std::future::Future<Output = T>>(
    what: &str,
    f: F,
    say: impl Fn(&T) -> String,
) -> T {
    let started = Instant::now();
    let out = f.await;
    println!("{what:<44} {:>10.3?}  {}", started.elapsed(), say(&out));
    out
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let stash = Stash::from_env()?;
    let db = Db::new();
    let service = Service::new(stash.clone(), db.clone());
    let queries = || format!("({} queries)", db.queries());

    for what in ["get_user(1), a miss", "get_user(1), a hit"] {
        let user = timed(what, service.get_user(1), |_| queries()).await?;
        assert_eq!(user.name, "User 1");
    }
    timed(
        "update_user(1, \"Ada\")",
        service.update_user(1, "Ada"),
        |_| queries(),
    )
    .await?;
    let user = timed("get_user(1) after it", service.get_user(1), |_| queries()).await?;
    assert_eq!(user.name, "Ada");

    let say = |p: &Result<Vec<Arc<Product>>, DbError>| {
        let n = p.as_ref().map_or(0, Vec::len);
        format!("{n} products {}", queries())
    };
    timed(
        "category(\"laptops\"), a miss",
        service.category("laptops"),
        say,
    )
    .await?;
    timed(
        "category(\"laptops\"), a hit",
        service.category("laptops"),
        say,
    )
    .await?;
    let moved = service.update_product(1, "sale", 99_900);
    timed("update_product(1) to \"sale\": the cascade", moved, |_| {
        queries()
    })
    .await?;
    let laptops = timed(
        "category(\"laptops\") after it",
        service.category("laptops"),
        say,
    )
    .await?;
    assert_eq!(laptops.len(), 1);
    timed("category(\"sale\")", service.category("sale"), say).await?;
    let missing = timed(
        "get_product(99), not found",
        service.get_product(99),
        |_| queries(),
    );
    assert!(missing.await?.is_none());
    timed(
        "get_product(99) again: remembered",
        service.get_product(99),
        |_| queries(),
    )
    .await?;

    let say = |p: &Result<Arc<Price>, DbError>| match p {
        Ok(p) => format!("quote #{} {}", p.quote, queries()),
        Err(e) => e.to_string(),
    };
    timed("price(\"ACME\"), a miss", service.price("ACME"), say).await?;
    timed("price(\"ACME\"), a hit", service.price("ACME"), say).await?;
    tokio::time::sleep(Duration::from_millis(1100)).await;
    timed(
        "price(\"ACME\") expired: stale, refreshing",
        service.price("ACME"),
        say,
    )
    .await?;
    tokio::time::sleep(Duration::from_millis(300)).await;
    timed("price(\"ACME\") once refreshed", service.price("ACME"), say).await?;
    println!("{:?}", stash.stats());

    println!();
    println!(
        "{:<8} {:<8} {:>6} {:>10} {:>10}",
        "value", "codec", "bytes", "encode", "decode"
    );
    let user = (*service.get_user(2).await?).clone();
    let product = (*service.get_product(2).await?.ok_or(DbError)?).clone();
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
    let enc = time(&mut || drop(std::hint::black_box(Json.encode(value))));
    let dec = time(&mut || drop(std::hint::black_box(Json.decode::<T>(&json))));
    println!(
        "{name:<8} {:<8} {:>6} {enc:>10?} {dec:>10?}",
        "json",
        json.len()
    );
    let packed = rmp_serde::to_vec_named(value)?;
    let enc = time(&mut || drop(std::hint::black_box(rmp_serde::to_vec_named(value))));
    let dec = time(&mut || drop(std::hint::black_box(rmp_serde::from_slice::<T>(&packed))));
    println!(
        "{name:<8} {:<8} {:>6} {enc:>10?} {dec:>10?}",
        "msgpack",
        packed.len()
    );
    Ok(())
}
