//! An operator console: an axum [`Router`] with a JSON API and one HTML page (no build step,
//! nothing fetched from elsewhere), behind an authorisation check the application supplies.
//! Feature `admin`.
//!
//! | route | what |
//! |---|---|
//! | `GET /` | the page: hit ratio per route (refreshing every 2 s), health and breaker, entries and bytes, recent invalidations, a key lookup, purge |
//! | `GET /api/stats` | [`Stats`](crate::Stats), [`route_stats`](crate::Stash::route_stats) and [`recent_invalidations`](crate::Stash::recent_invalidations) as JSON |
//! | `GET /api/lookup?key=K` (or `?url=/path`) | whether the entry is cached, its status, age, remaining TTL, tags, size, whether this instance's memory holds it, and the `Cache-Status` a request would get now |
//! | `POST /api/purge` `{"key": K}`, `{"tag": T}`, `{"url": "/path"}`, `{"prefix": "user:"}` or `{"url_prefix": "/users/"}` | invalidates, in every instance (through the store's bus); a prefix through [`Stash::invalidate_prefix`](crate::Stash::invalidate_prefix) |
//!
//! Every API call is refused (`401`) unless `authorize` accepts its headers; the page holds
//! no data and asks for the token it sends as `Authorization: Bearer <token>` (it reads one
//! from the URL's fragment, `#token=...`, too). A URL is purged by its default key,
//! `GET /path` (routes whose key is a template are purged by key or tag).
//!
//! ```
//! use axum::Router;
//! use tower_stash::{admin, Stash};
//!
//! let stash = Stash::new();
//! let token = "s3cret".to_string();
//! let console = admin::router(stash.clone(), move |headers| {
//!     headers
//!         .get("authorization")
//!         .is_some_and(|v| v.as_bytes() == format!("Bearer {token}").as_bytes())
//! });
//! let app: Router = Router::new().nest("/admin", console);
//! # let _ = app;
//! ```

use crate::entry::millis;
use crate::Stash;
use axum::extract::{Query, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{Html, IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde_json::{json, Value};
use std::sync::Arc;
use std::time::Duration;

/// The page, served as it is.
const PAGE: &str = include_str!("page.html");

/// Who may call the API: the application's check of a request's headers.
type Authorize = Arc<dyn Fn(&HeaderMap) -> bool + Send + Sync>;

#[derive(Clone)]
struct Console {
    stash: Stash,
    authorize: Authorize,
}

/// The console of `stash`, to [`nest`](Router::nest) where the application wants it; its
/// API answers only requests `authorize` accepts.
pub fn router<F>(stash: Stash, authorize: F) -> Router
where
    F: Fn(&HeaderMap) -> bool + Send + Sync + 'static,
{
    let console = Console {
        stash,
        authorize: Arc::new(authorize),
    };
    Router::new()
        .route("/", get(page))
        .route("/api/stats", get(stats))
        .route("/api/lookup", get(lookup))
        .route("/api/purge", post(purge))
        .with_state(console)
}

async fn page() -> Response {
    (
        [
            (header::CACHE_CONTROL, "no-store"),
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
                 connect-src 'self'",
            ),
        ],
        Html(PAGE),
    )
        .into_response()
}

/// `401` with a JSON error, unless the request is authorised.
fn check(console: &Console, headers: &HeaderMap) -> Result<(), Box<Response>> {
    if (console.authorize)(headers) {
        Ok(())
    } else {
        Err(Box::new(
            (
                StatusCode::UNAUTHORIZED,
                [(header::CACHE_CONTROL, "no-store")],
                Json(json!({ "error": "not authorised" })),
            )
                .into_response(),
        ))
    }
}

fn answer(value: Value) -> Response {
    ([(header::CACHE_CONTROL, "no-store")], Json(value)).into_response()
}

async fn stats(State(console): State<Console>, headers: HeaderMap) -> Response {
    if let Err(refused) = check(&console, &headers) {
        return *refused;
    }
    let stash = &console.stash;
    let routes: Vec<Value> = stash
        .route_stats()
        .iter()
        .map(|r| {
            json!({
                "route": r.route,
                "hits": r.hits,
                "misses": r.misses,
                "stale": r.stale,
                "bypasses": r.bypasses,
                "hit_rate": r.hit_rate(),
            })
        })
        .collect();
    let invalidations: Vec<Value> = stash
        .recent_invalidations()
        .iter()
        .rev()
        .map(|i| {
            json!({
                "kind": i.kind,
                "target": i.target,
                "at_ms": millis(i.at),
                "ok": i.ok,
            })
        })
        .collect();
    answer(json!({
        "stats": stash.stats(),
        "routes": routes,
        "invalidations": invalidations,
        "pending_invalidations": stash.pending_invalidations(),
    }))
}

#[derive(serde::Deserialize)]
struct Target {
    key: Option<String>,
    tag: Option<String>,
    url: Option<String>,
    /// A key prefix (`user:`).
    prefix: Option<String>,
    /// A URL prefix (`/users/`): the default keys under it (`GET /users/...`).
    url_prefix: Option<String>,
}

impl Target {
    /// The key a `key` or `url` names (a URL by its default key, `GET /path`).
    fn key(&self) -> Option<String> {
        match (&self.key, &self.url) {
            (Some(key), _) if !key.is_empty() => Some(key.clone()),
            (_, Some(url)) if !url.is_empty() => {
                let path = url.split_once("://").map_or(url.as_str(), |(_, rest)| {
                    rest.find('/').map_or("/", |at| &rest[at..])
                });
                Some(format!("GET {path}"))
            }
            _ => None,
        }
    }
}

async fn lookup(
    State(console): State<Console>,
    headers: HeaderMap,
    Query(target): Query<Target>,
) -> Response {
    if let Err(refused) = check(&console, &headers) {
        return *refused;
    }
    let Some(key) = target.key() else {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "name a ?key= or a ?url=" })),
        )
            .into_response();
    };
    let stash = &console.stash;
    let stored = stash.stored_key(&format!("{}{key}", stash.inner.prefix));
    let local = stash.store().get_local(&stored);
    let in_memory = matches!(&local, Some(Some(e)) if !e.is_tombstone());
    let found = match local {
        Some(Some(entry)) => Ok(Some(entry)),
        _ => {
            let get = stash.store().get(stored.clone());
            match tokio::time::timeout(Duration::from_secs(2), get).await {
                Ok(found) => found,
                Err(_) => Err(crate::StoreError::new("no answer within 2 s")),
            }
        }
    };
    let entry = match found {
        Ok(entry) => entry,
        Err(e) => {
            return (
                StatusCode::SERVICE_UNAVAILABLE,
                Json(json!({ "key": key, "error": e.to_string() })),
            )
                .into_response()
        }
    };
    let now = stash.now();
    let name = &stash.inner.status.name;
    let Some(entry) = entry else {
        return answer(json!({
            "key": key,
            "stored_key": &*stored,
            "cached": false,
            "cache_status": format!("{name}; fwd=miss"),
        }));
    };
    if entry.is_tombstone() {
        return answer(json!({
            "key": key,
            "stored_key": &*stored,
            "cached": false,
            "invalidated_at_ms": millis(entry.stored_at()),
            "cache_status": format!("{name}; fwd=miss; detail=invalidated"),
        }));
    }
    // What a request for it would be answered with now (its policy's windows aside).
    let fresh = now < entry.fresh_until();
    let cache_status = if fresh {
        format!("{name}; hit; ttl={}", entry.remaining(now).as_secs())
    } else if now < entry.stale_until() {
        format!("{name}; hit; stale")
    } else {
        format!("{name}; fwd=miss; detail=expired")
    };
    answer(json!({
        "key": key,
        "stored_key": &*stored,
        "cached": true,
        "in_memory": in_memory,
        "status": entry.status().as_u16(),
        "age_s": entry.age(now),
        "ttl_s": entry.remaining(now).as_secs(),
        "fresh": fresh,
        "cache_status": cache_status,
        "stored_at_ms": millis(entry.stored_at()),
        "tags": entry.tags(),
        "size": entry.body().len(),
        "written": entry.is_written(),
    }))
}

async fn purge(
    State(console): State<Console>,
    headers: HeaderMap,
    Json(target): Json<Target>,
) -> Response {
    if let Err(refused) = check(&console, &headers) {
        return *refused;
    }
    let stash = &console.stash;
    let mut done = Vec::new();
    let mut failed = None;
    if let Some(tag) = target.tag.as_deref().filter(|t| !t.is_empty()) {
        match stash.invalidate_tag(tag).await {
            Ok(()) => done.push(format!("tag {tag}")),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(key) = target.key() {
        match stash.invalidate_key(&key).await {
            Ok(()) => done.push(format!("key {key}")),
            Err(e) => failed = Some(e),
        }
    }
    let prefix = match (&target.prefix, &target.url_prefix) {
        (Some(p), _) if !p.is_empty() => Some(p.clone()),
        (_, Some(u)) if !u.is_empty() => Some(format!("GET {u}")),
        _ => None,
    };
    if let Some(prefix) = prefix {
        match stash.invalidate_prefix(&prefix).await {
            Ok(n) => done.push(format!("prefix {prefix} ({n} keys)")),
            Err(e) => failed = Some(e),
        }
    }
    if let Some(e) = failed {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({
                "purged": done,
                "error": e.to_string(),
                "retrying": "in the background, until the store takes it",
            })),
        )
            .into_response();
    }
    if done.is_empty() {
        return (
            StatusCode::BAD_REQUEST,
            Json(json!({ "error": "name a key, a tag, a url, a prefix or a url_prefix" })),
        )
            .into_response();
    }
    answer(json!({ "purged": done }))
}
