//! Invalidation rules, write-through and purge, on the memory store: what clients get and how
//! often the handler runs.

use crate::test_util::{send, Counter};
use crate::{CacheHint, CacheLayer, Invalidate, InvalidateLayer, Policy, Routes, Rules, Stash};
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::get;
use axum::{Extension, Router};
use http::Request;
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tower::ServiceBuilder;

const HOUR: Duration = Duration::from_secs(3600);

#[derive(Clone, Default)]
struct Db {
    users: Arc<Mutex<HashMap<String, String>>>,
    reads: Counter,
}

impl Db {
    fn reads(&self) -> usize {
        self.reads.calls()
    }
}

async fn get_user(State(db): State<Db>, Path(id): Path<String>) -> (StatusCode, String) {
    db.reads.enter().await;
    match db.users.lock().unwrap().get(&id) {
        Some(name) => (StatusCode::OK, format!("user {id}: {name}")),
        None => (StatusCode::NOT_FOUND, "no such user".into()),
    }
}

async fn put_user(
    State(db): State<Db>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<HashMap<String, String>>,
    name: String,
) -> (StatusCode, String) {
    if q.contains_key("fail") {
        // The write reached the database, then the service failed: the state is unknown.
        db.users.lock().unwrap().insert(id.clone(), name);
        return (StatusCode::SERVICE_UNAVAILABLE, "database failure".into());
    }
    db.users.lock().unwrap().insert(id.clone(), name.clone());
    (StatusCode::OK, format!("user {id}: {name}"))
}

async fn get_product(Path(id): Path<String>) -> (Extension<CacheHint>, String) {
    let brand = if id.starts_with('a') {
        "apple"
    } else {
        "other"
    };
    (
        Extension(CacheHint::new().tags([brand])),
        format!("product {id}"),
    )
}

fn app(stash: &Stash, db: &Db) -> Router {
    Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .route("/products/{id}", get(get_product))
        .with_state(db.clone())
        .layer(
            ServiceBuilder::new()
                .layer(CacheLayer::new(
                    stash.clone(),
                    Routes::new()
                        .get(
                            "/users/{id}",
                            Policy::ttl(HOUR).key("user:{id}").tags(["users"]),
                        )
                        .get("/products/{id}", Policy::ttl(HOUR).key("product:{id}")),
                ))
                .layer(
                    InvalidateLayer::new(
                        stash.clone(),
                        Rules::new().put(
                            "/users/{id}",
                            Invalidate::write_through("user:{id}", HOUR).entry_tags(["users"]),
                        ),
                    )
                    .purge(|req| {
                        req.headers
                            .get("authorization")
                            .is_some_and(|v| v == "Bearer ops")
                    }),
                ),
        )
}

fn get_req(uri: &str) -> Request<Body> {
    Request::get(uri).body(Body::empty()).unwrap()
}

fn put_req(uri: &str, name: &str) -> Request<Body> {
    Request::put(uri)
        .body(Body::from(name.to_string()))
        .unwrap()
}

#[tokio::test]
async fn write_through_then_get_is_a_hit_with_the_new_data() {
    let (stash, db) = (Stash::new(), Db::default());
    let app = app(&stash, &db);
    db.users.lock().unwrap().insert("1".into(), "alice".into());
    assert_eq!(
        send(app.clone(), get_req("/users/1")).await.text(),
        "user 1: alice"
    );
    assert_eq!(db.reads(), 1);
    let put = send(app.clone(), put_req("/users/1", "alicia")).await;
    assert_eq!((put.status, put.text()), (StatusCode::OK, "user 1: alicia"));
    let got = send(app.clone(), get_req("/users/1")).await;
    assert_eq!((got.status, got.text()), (StatusCode::OK, "user 1: alicia"));
    assert_eq!(got.cache_status(), "tower-stash; hit");
    assert_eq!(db.reads(), 1, "no extra handler call");
    // The written entry carries the GET route's tag.
    stash.invalidate_tag("users").await.unwrap();
    send(app.clone(), get_req("/users/1")).await;
    assert_eq!(db.reads(), 2);
}

#[tokio::test]
async fn a_failing_write_leaves_the_key_gone() {
    let (stash, db) = (Stash::new(), Db::default());
    let app = app(&stash, &db);
    db.users.lock().unwrap().insert("1".into(), "alice".into());
    send(app.clone(), get_req("/users/1")).await;
    assert_eq!(
        send(app.clone(), get_req("/users/1")).await.cache_status(),
        "tower-stash; hit"
    );
    let put = send(app.clone(), put_req("/users/1?fail=1", "mallory")).await;
    assert_eq!(put.status, StatusCode::SERVICE_UNAVAILABLE);
    // The old entry is gone: the next GET asks the database (and sees what it holds).
    let got = send(app.clone(), get_req("/users/1")).await;
    let cache = got.cache_status();
    assert!(cache.starts_with("tower-stash; fwd=miss"), "{cache}");
    assert_eq!(got.text(), "user 1: mallory");
    assert_eq!(db.reads(), 2);
}

#[tokio::test]
async fn invalidating_a_tag_drops_exactly_its_entries() {
    let (stash, db) = (Stash::new(), Db::default());
    let app = app(&stash, &db);
    for id in ["a1", "a2", "b1", "b2"] {
        send(app.clone(), get_req(&format!("/products/{id}"))).await;
    }
    for id in ["a1", "a2", "b1", "b2"] {
        assert_eq!(
            send(app.clone(), get_req(&format!("/products/{id}")))
                .await
                .cache_status(),
            "tower-stash; hit"
        );
    }
    stash.invalidate_tag("apple").await.unwrap();
    for (id, hit) in [("a1", false), ("a2", false), ("b1", true), ("b2", true)] {
        let got = send(app.clone(), get_req(&format!("/products/{id}"))).await;
        let cache = got.cache_status();
        assert_eq!(cache == "tower-stash; hit", hit, "{id}: {cache}");
    }
}

#[tokio::test]
async fn purge_needs_authorisation_and_names_what_it_purges() {
    let (stash, db) = (Stash::new(), Db::default());
    let app = app(&stash, &db);
    db.users.lock().unwrap().insert("1".into(), "alice".into());
    send(app.clone(), get_req("/users/1")).await;
    let purge = |auth: Option<&str>, key: Option<&str>| {
        let mut b = Request::builder().method("PURGE").uri("/users/1");
        if let Some(a) = auth {
            b = b.header("authorization", a);
        }
        if let Some(k) = key {
            b = b.header("x-stash-key", k);
        }
        b.body(Body::empty()).unwrap()
    };
    assert_eq!(
        send(app.clone(), purge(None, Some("user:1"))).await.status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(app.clone(), purge(Some("Bearer nope"), Some("user:1")))
            .await
            .status,
        StatusCode::FORBIDDEN
    );
    assert_eq!(
        send(app.clone(), get_req("/users/1")).await.cache_status(),
        "tower-stash; hit",
        "nothing changed"
    );
    assert_eq!(
        send(app.clone(), purge(Some("Bearer ops"), None))
            .await
            .status,
        StatusCode::BAD_REQUEST
    );
    assert_eq!(
        send(app.clone(), purge(Some("Bearer ops"), Some("user:1")))
            .await
            .status,
        StatusCode::OK
    );
    assert!(send(app.clone(), get_req("/users/1"))
        .await
        .cache_status()
        .starts_with("tower-stash; fwd=miss"));
}

#[test]
fn bad_rules_name_their_field() {
    let err = Rules::new()
        .put("/users/{id}", Invalidate::keys(["user:{uid}"]))
        .post("/x", Invalidate::default())
        .route(http::Method::GET, "/y", Invalidate::tags(["t"]))
        .put(
            "/z/{id}",
            Invalidate::write_through("z:{id}", Duration::ZERO),
        )
        .validate()
        .unwrap_err()
        .to_string();
    for want in [
        "rules[PUT /users/{id}].keys",
        "rules[POST /x]: invalidates nothing",
        "rules[GET /y]",
        "rules[PUT /z/{id}].write_through",
    ] {
        assert!(err.contains(want), "{want} not in {err}");
    }
}

/// A service whose PUT commits its body to the database at once, then answers only when its
/// gate (named by the body) opens: the test decides in which order overlapping writes finish.
fn gated_app(
    stash: &Stash,
    db: &Db,
    gates: &Arc<Mutex<HashMap<String, Arc<tokio::sync::Notify>>>>,
) -> Router {
    let gates = gates.clone();
    let put = move |State(db): State<Db>, Path(id): Path<String>, name: String| {
        let gate = gates
            .lock()
            .unwrap()
            .entry(name.clone())
            .or_default()
            .clone();
        async move {
            db.users.lock().unwrap().insert(id.clone(), name.clone());
            gate.notified().await;
            (StatusCode::OK, format!("user {id}: {name}"))
        }
    };
    Router::new()
        .route("/users/{id}", get(get_user).put(put))
        .with_state(db.clone())
        .layer(
            ServiceBuilder::new()
                .layer(CacheLayer::new(
                    stash.clone(),
                    Routes::new().get("/users/{id}", Policy::ttl(HOUR).key("user:{id}")),
                ))
                .layer(InvalidateLayer::new(
                    stash.clone(),
                    Rules::new().put("/users/{id}", Invalidate::write_through("user:{id}", HOUR)),
                )),
        )
}

/// Until the database holds `name` for user 1 (the write with that body committed).
async fn committed(db: &Db, name: &str) {
    tokio::time::timeout(Duration::from_secs(10), async {
        while db.users.lock().unwrap().get("1").map(String::as_str) != Some(name) {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .unwrap_or_else(|_| panic!("the write of {name} never committed"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overlapping_write_throughs_invalidate_instead_of_storing_the_last_to_finish() {
    let (stash, db) = (Stash::new(), Db::default());
    let gates = Arc::default();
    let app = gated_app(&stash, &db, &gates);
    let gate = |name: &str| -> Arc<tokio::sync::Notify> {
        gates
            .lock()
            .unwrap()
            .entry(name.to_string())
            .or_default()
            .clone()
    };
    db.users.lock().unwrap().insert("1".into(), "old".into());
    send(app.clone(), get_req("/users/1")).await;
    // `first` commits first, `second` after it (the database holds `second`), but `first`
    // answers last.
    let spawn_put = |name: &'static str| {
        let app = app.clone();
        tokio::spawn(async move { send(app.clone(), put_req("/users/1", name)).await })
    };
    let first = spawn_put("first");
    committed(&db, "first").await;
    let second = spawn_put("second");
    committed(&db, "second").await;
    gate("second").notify_one();
    assert_eq!(second.await.unwrap().text(), "user 1: second");
    gate("first").notify_one();
    assert_eq!(first.await.unwrap().text(), "user 1: first");
    // Neither answer became the entry: the read asks the database.
    let reads = db.reads();
    let got = send(app.clone(), get_req("/users/1")).await;
    assert_eq!(got.text(), "user 1: second", "{}", got.cache_status());
    assert_eq!(db.reads(), reads + 1);

    // A write alone still becomes the entry, with no read.
    gate("third").notify_one();
    send(app.clone(), put_req("/users/1", "third")).await;
    let got = send(app.clone(), get_req("/users/1")).await;
    assert_eq!(
        (got.text(), got.cache_status()),
        ("user 1: third", "tower-stash; hit")
    );
    assert_eq!(db.reads(), reads + 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_dropped_before_it_answers_invalidates_its_key() {
    let (stash, db) = (Stash::new(), Db::default());
    let gates = Arc::default();
    let app = gated_app(&stash, &db, &gates);
    db.users.lock().unwrap().insert("1".into(), "old".into());
    send(app.clone(), get_req("/users/1")).await;
    assert_eq!(
        send(app.clone(), get_req("/users/1")).await.cache_status(),
        "tower-stash; hit"
    );
    // The client goes away after the write committed, before the service answered.
    let write = {
        let app = app.clone();
        tokio::spawn(async move { send(app.clone(), put_req("/users/1", "new")).await })
    };
    committed(&db, "new").await;
    write.abort();
    assert!(write.await.unwrap_err().is_cancelled());
    // The old entry goes (in the background, bounded), and the next read sees the database.
    tokio::time::timeout(Duration::from_secs(10), async {
        while send(app.clone(), get_req("/users/1")).await.text() != "user 1: new" {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await
    .expect("the old value outlived a dropped write");
}

fn with_host(mut req: Request<Body>, host: &str) -> Request<Body> {
    req.headers_mut()
        .insert(http::header::HOST, host.parse().unwrap());
    req
}

#[tokio::test]
async fn a_write_through_is_the_next_read_for_the_host_it_was_written_on() {
    // Browsers and HTTP/1.1 clients always name a host, and application mode keys it: the
    // write stores the entry the GET of the same host reads.
    let (stash, db) = (Stash::new(), Db::default());
    let app = app(&stash, &db);
    db.users.lock().unwrap().insert("1".into(), "alice".into());
    let get = |host: &str| with_host(get_req("/users/1"), host);
    send(app.clone(), get("api.example.com")).await;
    send(app.clone(), get("other.example.com")).await;
    assert_eq!(db.reads(), 2);
    let put = send(
        app.clone(),
        with_host(put_req("/users/1", "alicia"), "API.example.com:80"),
    )
    .await;
    assert_eq!(put.status, StatusCode::OK);
    let got = send(app.clone(), get("api.example.com")).await;
    assert_eq!(
        (got.text(), got.cache_status()),
        ("user 1: alicia", "tower-stash; hit")
    );
    assert_eq!(db.reads(), 2, "the written entry answered");
    // The other host's entry went with the key's variants: read again, never the old value.
    let other = send(app.clone(), get("other.example.com")).await;
    assert_eq!(other.text(), "user 1: alicia");
    assert_eq!(db.reads(), 3);
}

#[tokio::test]
async fn a_write_through_follows_the_hosts_its_rule_lists() {
    let (stash, db) = (Stash::new(), Db::default());
    db.users.lock().unwrap().insert("1".into(), "alice".into());
    let hosts = ["api.example.com", "www.example.com"];
    let app = Router::new()
        .route("/users/{id}", get(get_user).put(put_user))
        .with_state(db.clone())
        .layer(
            ServiceBuilder::new()
                .layer(CacheLayer::new(
                    stash.clone(),
                    Routes::new().get(
                        "/users/{id}",
                        Policy::ttl(HOUR).key("user:{id}").hosts(hosts),
                    ),
                ))
                .layer(InvalidateLayer::new(
                    stash.clone(),
                    Rules::new().put(
                        "/users/{id}",
                        Invalidate::write_through("user:{id}", HOUR).hosts(hosts),
                    ),
                )),
        );
    let get = |host: &str| with_host(get_req("/users/1"), host);
    send(
        app.clone(),
        with_host(put_req("/users/1", "alicia"), "www.example.com"),
    )
    .await;
    let got = send(app.clone(), get("api.example.com")).await;
    assert_eq!(
        (got.text(), got.cache_status()),
        ("user 1: alicia", "tower-stash; hit")
    );
    assert_eq!(db.reads(), 0);
    // A write for a host off the list is not the listed hosts' entry: it invalidates.
    send(
        app.clone(),
        with_host(put_req("/users/1", "bob"), "evil.example"),
    )
    .await;
    let got = send(app.clone(), get("api.example.com")).await;
    assert_eq!(got.text(), "user 1: bob");
    assert_eq!(db.reads(), 1);
}
