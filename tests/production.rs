//! What a team running the crate in production meets first, against real redis-server
//! processes: the check at start and the readiness probe, what an outage writes to the logs,
//! TLS, ACL users, a client the application already has, and Sentinel.

mod support;

use bytes::Bytes;
use http::{Request, Response, StatusCode};
use http_body_util::{Empty, Full};
use std::convert::Infallible;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use support::redis::RedisServer;
use support::send;
use tower::Layer;
use tower_stash::{CacheLayer, Health, Policy, Routes, Stash};

/// Waits (every 10 ms, at most 10 s) until `cond` holds.
async fn eventually<F: std::future::Future<Output = bool>>(
    what: &str,
    mut cond: impl FnMut() -> F,
) {
    let start = Instant::now();
    while !cond().await {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "{what}: not within 10 s"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn request(path: &str) -> Request<Empty<Bytes>> {
    Request::get(path).body(Empty::new()).unwrap()
}

/// A cached route over a handler that answers at once.
fn service(
    stash: &Stash,
) -> impl tower::Service<
    Request<Empty<Bytes>>,
    Response = Response<tower_stash::CacheBody<Full<Bytes>>>,
    Error = Infallible,
    Future = impl Send,
> + Clone {
    let routes = Routes::new().get(
        "/items/{id}",
        Policy::ttl(Duration::from_secs(60)).key("item:{id}"),
    );
    CacheLayer::new(stash.clone(), routes).layer(tower::service_fn(
        |req: Request<Empty<Bytes>>| async move {
            Ok::<_, Infallible>(Response::new(Full::from(format!("item at {}", req.uri()))))
        },
    ))
}

// ---- Readiness and logs ----

/// The lines logged at info level and above, as `LEVEL message fields`.
#[derive(Default)]
struct Lines(Mutex<Vec<String>>);

struct Collect(Arc<Lines>);

impl tracing::Subscriber for Collect {
    fn enabled(&self, meta: &tracing::Metadata<'_>) -> bool {
        *meta.level() <= tracing::Level::INFO
    }
    fn new_span(&self, _: &tracing::span::Attributes<'_>) -> tracing::span::Id {
        tracing::span::Id::from_u64(1)
    }
    fn record(&self, _: &tracing::span::Id, _: &tracing::span::Record<'_>) {}
    fn record_follows_from(&self, _: &tracing::span::Id, _: &tracing::span::Id) {}
    fn event(&self, event: &tracing::Event<'_>) {
        struct Text(String);
        impl tracing::field::Visit for Text {
            fn record_debug(&mut self, field: &tracing::field::Field, value: &dyn std::fmt::Debug) {
                use std::fmt::Write;
                match field.name() {
                    "message" => write!(self.0, " {value:?}"),
                    name => write!(self.0, " {name}={value:?}"),
                }
                .unwrap();
            }
        }
        let mut text = Text(event.metadata().level().to_string());
        event.record(&mut text);
        self.0 .0.lock().unwrap().push(text.0);
    }
    fn enter(&self, _: &tracing::span::Id) {}
    fn exit(&self, _: &tracing::span::Id) {}
}

/// Redis killed under 10,000 requests (each a lookup and a fill, the stash as
/// `StashBuilder::redis` builds it): every request is answered, and the outage writes a
/// handful of lines (the first error, the breaker opening, the bus and the pool noticing, the
/// breaker closing with the count of calls it refused), not two warnings per request.
#[test]
fn an_outage_of_10_000_requests_logs_a_bounded_number_of_lines() {
    let lines = Arc::new(Lines::default());
    let _logs = tracing::subscriber::set_default(Collect(lines.clone()));
    // One thread: every task of the stash logs to this thread's subscriber.
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let mut redis = RedisServer::start();
        let stash = Stash::builder().redis(redis.url()).build().unwrap();
        eventually("ready", || async { stash.ready().await.is_ok() }).await;
        let svc = service(&stash);
        assert_eq!(
            send(svc.clone(), request("/items/warm")).await.status,
            StatusCode::OK
        );
        lines.0.lock().unwrap().clear();

        redis.kill();
        let start = Instant::now();
        for i in 0..10_000 {
            let got = send(svc.clone(), request(&format!("/items/{i}"))).await;
            assert_eq!(got.status, StatusCode::OK);
        }
        let took = start.elapsed();
        assert_eq!(stash.health(), Health::Degraded);
        let errors = stash.stats().store_errors;
        assert!(errors >= 20_000, "{errors} store errors");
        println!("10,000 requests in {took:?}, {errors} store errors");
        assert!(stash.ready().await.is_err());

        redis.restart();
        eventually("the breaker closed", || async {
            stash.health() == Health::Ok
        })
        .await;
        eventually("ready again", || async { stash.ready().await.is_ok() }).await;
        assert!(stash.ping().await.unwrap() < Duration::from_secs(1));
    });
    let lines = lines.0.lock().unwrap().clone();
    println!("{} lines logged for the outage:", lines.len());
    for line in &lines {
        println!("  {line}");
    }
    let warnings = lines.iter().filter(|l| !l.starts_with("INFO")).count();
    assert!(warnings <= 6, "{warnings} warnings and errors");
    assert!(lines.len() <= 10, "{} lines", lines.len());
    let closed = lines
        .iter()
        .find(|l| l.contains("circuit closed"))
        .expect("a line saying the breaker closed");
    let refused: u64 = closed
        .split("refused=")
        .nth(1)
        .and_then(|n| n.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no count in {closed}"));
    assert!(refused >= 19_000, "{closed}");
}

// ---- TLS and ACL users ----

/// An entry through `store`, and back.
async fn round_trip(store: &tower_stash::RedisStore) -> Result<(), tower_stash::StoreError> {
    use tower_stash::{Entry, Store};
    let at = std::time::SystemTime::now();
    let entry = Entry::new("k", StatusCode::OK, Default::default(), "body".into())
        .with_times(at, Duration::from_secs(60));
    store
        .put("k".into(), Arc::new(entry), Duration::from_secs(60))
        .await?;
    let got = store.get("k".into()).await?.expect("the entry");
    assert_eq!(got.body(), "body");
    Ok(())
}

/// `rediss://` against a real `redis-server --tls-port` whose certificate a test CA signed:
/// trusting that CA, the handshake succeeds and entries go through; trusting another CA (or
/// the system's roots), the store is refused with an error that says why, at the check and
/// on every call. The CA also comes from a configuration file's `ca_file`.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_the_test_ca_and_a_wrong_ca_refused_with_a_clear_error() {
    use support::tls::{TestCa, TlsRedis};
    use tower_stash::RedisStore;

    let ca = TestCa::new("test-ca");
    let redis = tokio::task::block_in_place(|| TlsRedis::start(&ca, false));
    let store = RedisStore::builder(redis.url())
        .tls_root_certificate(ca.pem())
        .connect_timeout(Duration::from_secs(2))
        .build()
        .unwrap();
    let found = store.check(Duration::from_secs(5)).await.unwrap();
    println!("{found}");
    assert!(
        found.starts_with("Redis ") && found.ends_with(&format!(":{} (TLS)", redis.tls_port)),
        "{found}"
    );
    eventually("a round trip over TLS", || async {
        round_trip(&store).await.is_ok()
    })
    .await;
    assert_eq!(redis.server.cli(&["EXISTS", "k"]), "1");

    // Another authority, and the system's roots: refused, and said so.
    let other = TestCa::new("other-ca");
    for (what, builder) in [
        (
            "another CA",
            RedisStore::builder(redis.url()).tls_root_certificate(other.pem()),
        ),
        ("the system's roots", RedisStore::builder(redis.url())),
    ] {
        let wrong = builder.build().unwrap();
        let e = wrong.check(Duration::from_secs(5)).await.unwrap_err();
        println!("{what}: {e}");
        assert!(!e.is_unreachable(), "{what}: {e}");
        let text = e.to_string();
        assert!(
            text.contains("TLS handshake failed") && text.contains("UnknownIssuer"),
            "{what}: {text}"
        );
        assert!(
            round_trip(&wrong).await.is_err(),
            "{what}: a call went through"
        );
    }

    // The same from a configuration file.
    let toml = format!(
        "[stash.redis]\nurl = \"{}\"\nca_file = \"{}\"\n",
        redis.url(),
        ca.ca_file().display()
    );
    let config = tower_stash::config::Config::from_toml(&toml, "tls.toml").unwrap();
    let stash = config.stash().unwrap().build().unwrap();
    let found = stash.check(Duration::from_secs(5)).await.unwrap();
    assert!(found.ends_with("(TLS)"), "{found}");
    let toml = format!(
        "[stash.redis]\nurl = \"{}\"\nca_file = \"{}\"\n",
        redis.url(),
        other.ca_file().display()
    );
    let config = tower_stash::config::Config::from_toml(&toml, "tls.toml").unwrap();
    let stash = config.stash().unwrap().build().unwrap();
    let e = stash.check(Duration::from_secs(5)).await.unwrap_err();
    assert!(e.to_string().contains("TLS handshake failed"), "{e}");
    // A `ca_file` that is not there names its field.
    let toml = format!(
        "[stash.redis]\nurl = \"{}\"\nca_file = \"{}/missing.pem\"\n",
        redis.url(),
        ca.dir().display()
    );
    let config = tower_stash::config::Config::from_toml(&toml, "tls.toml").unwrap();
    let e = config.stash().unwrap_err().to_string();
    assert!(e.contains("ca_file") && e.contains("missing.pem"), "{e}");
}

/// A Redis that asks clients for a certificate (`tls-auth-clients yes`) takes the store's.
#[cfg(feature = "tls")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_with_a_client_certificate() {
    use support::tls::{TestCa, TlsRedis};
    use tower_stash::RedisStore;

    let ca = TestCa::new("mtls-ca");
    let redis = tokio::task::block_in_place(|| TlsRedis::start(&ca, true));
    let (cert, key) = ca.issue("client", &["app"]);
    let store = RedisStore::builder(redis.url())
        .tls_root_certificate(ca.pem())
        .tls_client_certificate(std::fs::read(cert).unwrap(), std::fs::read(key).unwrap())
        .build()
        .unwrap();
    store.check(Duration::from_secs(5)).await.unwrap();
    eventually("a round trip with a client certificate", || async {
        round_trip(&store).await.is_ok()
    })
    .await;
    let without = RedisStore::builder(redis.url())
        .tls_root_certificate(ca.pem())
        .build()
        .unwrap();
    let e = without.check(Duration::from_secs(5)).await.unwrap_err();
    println!("without a client certificate: {e}");
    assert!(
        e.to_string().contains("asks for a client certificate"),
        "{e}"
    );
}

/// An ACL user with only what the store needs (no dangerous commands: no `CONFIG`, no
/// `INFO`), from the URL, from the builder and from a configuration file: entries and
/// invalidations (published on the bus channel) go through as that user; a wrong password is
/// refused at the check, in words that say so.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_acl_user_from_the_url_the_builder_and_the_config_file() {
    use tower_stash::RedisStore;

    let redis = tokio::task::block_in_place(RedisServer::start);
    let acl = [
        "ACL",
        "SETUSER",
        "app",
        "on",
        ">app-secret",
        "~*",
        "&tower-stash:bus",
        "+@all",
        "-@dangerous",
    ];
    assert_eq!(redis.cli(&acl), "OK");
    let port = redis.port();

    let from_url = RedisStore::new(format!("redis://app:app-secret@127.0.0.1:{port}/")).unwrap();
    let found = from_url.check(Duration::from_secs(5)).await.unwrap();
    assert_eq!(
        found,
        format!("Redis at 127.0.0.1:{port} (user app)"),
        "INFO is denied"
    );
    eventually("a round trip as app", || async {
        round_trip(&from_url).await.is_ok()
    })
    .await;

    let from_builder = RedisStore::builder(format!("redis://127.0.0.1:{port}/"))
        .username("app")
        .password("app-secret")
        .build()
        .unwrap();
    assert!(from_builder
        .check(Duration::from_secs(5))
        .await
        .unwrap()
        .ends_with("(user app)"));
    eventually("a round trip as app", || async {
        round_trip(&from_builder).await.is_ok()
    })
    .await;

    let toml = format!(
        "[stash.redis]\nurl = \"redis://127.0.0.1:{port}\"\nusername = \"app\"\npassword = \"app-secret\"\n"
    );
    let config = tower_stash::config::Config::from_toml(&toml, "acl.toml").unwrap();
    assert!(!format!("{config:?}").contains("app-secret"));
    let stash = config.stash().unwrap().build().unwrap();
    assert!(stash
        .check(Duration::from_secs(5))
        .await
        .unwrap()
        .ends_with("(user app)"));
    eventually("ready as app", || async { stash.ready().await.is_ok() }).await;
    let svc = service(&stash);
    assert_eq!(
        send(svc.clone(), request("/items/1")).await.status,
        StatusCode::OK
    );
    stash.invalidate_key("item:1").await.unwrap();
    let clients = redis.cli(&["CLIENT", "LIST"]);
    assert!(clients.lines().any(|l| l.contains("user=app")), "{clients}");

    let wrong = RedisStore::builder(format!("redis://app:not-it@127.0.0.1:{port}/"))
        .build()
        .unwrap();
    let e = wrong.check(Duration::from_secs(5)).await.unwrap_err();
    assert!(!e.is_unreachable());
    assert!(e.to_string().contains("refused the credentials"), "{e}");
    assert!(!e.to_string().contains("not-it"), "{e}");
}

// ---- The application's own client ----

/// Two instances, each a memory tier in front of `redis`: what one invalidates, the other
/// drops from memory (the bus goes through the client the store was given).
async fn invalidations_reach_the_other_instance(
    a: tower_stash::RedisStore,
    b: tower_stash::RedisStore,
) {
    use tower_stash::{Guarded, MemoryStore, TieredStore};
    let stash = |redis| {
        Stash::builder()
            .store(TieredStore::new(
                MemoryStore::default(),
                Guarded::new(redis),
            ))
            .build()
            .unwrap()
    };
    let (a, b) = (stash(a), stash(b));
    for s in [&a, &b] {
        eventually("the bus subscribed", || async { s.ready().await.is_ok() }).await;
    }
    let (svc_a, svc_b) = (service(&a), service(&b));
    send(svc_a.clone(), request("/items/1")).await;
    eventually("b hits what a stored", || {
        let svc_b = svc_b.clone();
        async move { send(svc_b, request("/items/1")).await.is_hit() }
    })
    .await;
    let misses = b.stats().misses;
    a.invalidate_key("item:1").await.unwrap();
    let got = send(svc_b.clone(), request("/items/1")).await;
    assert!(!got.is_hit(), "{}", got.cache_status());
    assert_eq!(b.stats().misses, misses + 1);
}

/// A store built from a `redis::Client` the application has (its database honoured), on its
/// multiplexed connection, on its `ConnectionManager`, and on its bb8 pool: entries go
/// through each, and invalidations reach another instance through the client's bus.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_from_an_existing_client_connection_manager_and_bb8_pool() {
    use bb8_redis::{bb8, RedisConnectionManager};
    use tower_stash::RedisStore;

    let redis = tokio::task::block_in_place(RedisServer::start);
    let url = format!("redis://127.0.0.1:{}/3", redis.port());
    let client = redis::Client::open(url.as_str()).unwrap();

    // The store's own pool over the application's client.
    let own = RedisStore::from_client(client.clone()).build().unwrap();
    eventually("a round trip", || async { round_trip(&own).await.is_ok() }).await;
    assert_eq!(
        redis.cli(&["-n", "3", "EXISTS", "k"]),
        "1",
        "the client's database"
    );
    redis.cli(&["FLUSHALL"]);

    // The application's multiplexed connection.
    let mux = client.get_multiplexed_async_connection().await.unwrap();
    let on_mux = RedisStore::from_client(client.clone())
        .connection(mux.clone())
        .build()
        .unwrap();
    round_trip(&on_mux).await.unwrap();
    assert_eq!(on_mux.connections(), (1, 0));
    assert_eq!(redis.cli(&["-n", "3", "EXISTS", "k"]), "1");

    // Its ConnectionManager.
    let manager = redis::aio::ConnectionManager::new(client.clone())
        .await
        .unwrap();
    let on_manager = RedisStore::from_client(client.clone())
        .connection(manager.clone())
        .build()
        .unwrap();
    round_trip(&on_manager).await.unwrap();

    // Its bb8 pool (bb8-redis), with its own size.
    let pool = bb8::Pool::builder()
        .max_size(3)
        .build(RedisConnectionManager::new(url.as_str()).unwrap())
        .await
        .unwrap();
    let on_pool = RedisStore::from_client(client.clone())
        .pool(pool.clone())
        .build()
        .unwrap();
    round_trip(&on_pool).await.unwrap();
    let (open, _) = on_pool.connections();
    assert!((1..=3).contains(&open), "{open} connections");
    assert_eq!(open, pool.state().connections);
    // A pool size of the store's own does not apply to a given pool: said at build.
    let e = RedisStore::from_client(client.clone())
        .pool(pool.clone())
        .pool_size(8)
        .build()
        .unwrap_err();
    assert!(e.to_string().contains("redis.pool_size"), "{e}");

    // A stash on each: invalidations go through the client's subscription.
    invalidations_reach_the_other_instance(on_manager.clone(), on_pool.clone()).await;
    let found = on_pool.check(Duration::from_secs(5)).await.unwrap();
    assert!(found.ends_with("(db 3)"), "{found}");
}

/// On a cluster, `pool_size` is the number of cluster connections the store opens and uses
/// in turn (each one multiplexed connection per node); one by default.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_opens_pool_size_cluster_connections() {
    use support::cluster::RedisCluster;
    use tower_stash::RedisStore;

    let cluster = tokio::task::block_in_place(RedisCluster::start);
    let store = RedisStore::builder(cluster.url())
        .pool_size(3)
        .build()
        .unwrap();
    eventually("three cluster connections open", || {
        let store = store.clone();
        async move {
            let _ = round_trip(&store).await;
            store.connections().0 == 3
        }
    })
    .await;
    let one = RedisStore::builder(cluster.url()).build().unwrap();
    eventually("a round trip", || async { round_trip(&one).await.is_ok() }).await;
    assert_eq!(one.connections(), (1, 0));
}

// ---- Sentinel ----

/// A master and its replica watched by three real sentinels: the store, on a
/// `redis+sentinel://` URL, finds the master; the master is killed under steady traffic; the
/// sentinels promote the replica and the store follows it by itself. Every request is
/// answered 200 throughout; store errors happen only in the window between the kill and the
/// promotion (the breaker's), none once the store is back.
#[cfg(feature = "sentinel")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sentinel_the_store_follows_the_master_through_a_failover() {
    use support::sentinel::SentinelGroup;
    use tower_stash::{Guarded, MemoryStore, RedisStore, TieredStore};

    let mut group = tokio::task::block_in_place(|| SentinelGroup::start("cache"));
    let (old, new) = (group.master.port(), group.replica.port());
    let redis = RedisStore::builder(group.url()).build().unwrap();
    let found = redis.check(Duration::from_secs(5)).await.unwrap();
    println!("{found}");
    assert!(
        found.contains(&format!("at 127.0.0.1:{old}")) && found.ends_with("via Sentinel `cache`"),
        "{found}"
    );
    // The same URL in a configuration file.
    let toml = format!("[stash.redis]\nurl = \"{}\"\n", group.url());
    let config = tower_stash::config::Config::from_toml(&toml, "sentinel.toml").unwrap();
    let from_file = config.stash().unwrap().build().unwrap();
    let found = from_file.check(Duration::from_secs(5)).await.unwrap();
    assert!(found.ends_with("via Sentinel `cache`"), "{found}");

    let l2 = Guarded::new(redis.clone());
    let stash = Stash::builder()
        .store(TieredStore::new(MemoryStore::default(), l2.clone()))
        .build()
        .unwrap();
    eventually("ready", || async { stash.ready().await.is_ok() }).await;
    let svc = service(&stash);
    let mut n = 0;
    let mut next = || {
        n += 1;
        request(&format!("/items/{n}"))
    };
    eventually("fills reach the master", || {
        let svc = svc.clone();
        let req = next();
        let master = &group.master;
        async move {
            assert_eq!(send(svc, req).await.status, StatusCode::OK);
            master.cli(&["DBSIZE"]) != "0"
        }
    })
    .await;

    let errors_before = stash.stats().store_errors;
    let killed = Instant::now();
    tokio::task::block_in_place(|| group.master.kill());
    // Steady traffic, one request every 5 ms, until the promoted replica holds fills made
    // after the kill and the breaker is closed.
    let replica_keys = group.replica.cli(&["DBSIZE"]).parse::<u64>().unwrap();
    let mut pace = tokio::time::interval(Duration::from_millis(5));
    let recovered = loop {
        pace.tick().await;
        assert_eq!(send(svc.clone(), next()).await.status, StatusCode::OK);
        let promoted =
            group.master_port() == Some(new) && group.replica.cli(&["ROLE"]).starts_with("master");
        if promoted
            && stash.health() == Health::Ok
            && group.replica.cli(&["DBSIZE"]).parse::<u64>().unwrap() > replica_keys
        {
            break killed.elapsed();
        }
        assert!(
            killed.elapsed() < Duration::from_secs(30),
            "the store did not follow the new master within 30 s (promoted: {promoted}, \
             health {}, {} store errors)",
            stash.health(),
            stash.stats().store_errors
        );
    };
    let window = stash.stats().store_errors - errors_before;
    println!("followed the new master {recovered:?} after the kill; {window} store errors meanwhile, all answered 200");

    // Back: no more store errors, fills land on the new master, the bus is subscribed again.
    let errors = stash.stats().store_errors;
    for _ in 0..200 {
        assert_eq!(send(svc.clone(), next()).await.status, StatusCode::OK);
    }
    assert_eq!(
        stash.stats().store_errors,
        errors,
        "store errors after the failover"
    );
    eventually("ready on the new master", || async {
        stash.ready().await.is_ok()
    })
    .await;
    let found = redis.check(Duration::from_secs(5)).await.unwrap();
    assert!(found.contains(&format!("at 127.0.0.1:{new}")), "{found}");
    stash.invalidate_key("item:1").await.unwrap();
}
