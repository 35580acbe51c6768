//! A tonic gRPC `UserService` behind tower-stash: unary `GetUser` answered from the cache,
//! `UpdateUser` invalidating it, a server-streaming `ListUsers` left alone.
//!
//! ```text
//! cargo run --example grpc --features prost -- [--listen 127.0.0.1:50051] [--db-latency-ms 200]
//! ```
//!
//! With `--demo`, it also plays a client against itself and prints what it saw: a miss, then
//! a hit with the same message and trailers, one database query for a burst of 100 identical
//! calls, and an update invalidating the entry. The stash is in memory, or tiered on Redis
//! when `REDIS_URL` is set.
//!
//! The service, its database and its layers are also what `tests/grpc.rs` drives.

#![allow(dead_code)] // Parts are used by the tests only.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio_stream::Stream;
use tonic::{Request, Response, Status};
use tower_stash::grpc::{Fields, GrpcLayer};
use tower_stash::{
    CacheLayer, Invalidate, InvalidateLayer, Policy, Routes, Rules, SingleFlightLayer, Stash,
};

/// The code generated from `examples/proto/users.proto` by tonic-prost-build, checked in so
/// that the crate has no build script (`tests/grpc.rs` checks it is up to date).
pub mod pb {
    include!("proto/users.rs");
}

use pb::user_service_server::{UserService, UserServiceServer};
use pb::{GetUserRequest, ListUsersRequest, UpdateUserRequest, User};

/// A simulated database: every query takes `latency` and is counted.
pub struct Db {
    users: Mutex<BTreeMap<u64, User>>,
    queries: AtomicU64,
    latency: Duration,
}

impl Db {
    /// Users 1 to 100, answering after `latency`.
    pub fn new(latency: Duration) -> Arc<Self> {
        let users = (1..=100)
            .map(|id| {
                let user = User {
                    id,
                    name: format!("User {id}"),
                    email: format!("user{id}@example.com"),
                };
                (id, user)
            })
            .collect();
        Arc::new(Self {
            users: Mutex::new(users),
            queries: AtomicU64::new(0),
            latency,
        })
    }

    /// How many queries reached the database.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::SeqCst)
    }

    /// One query: waits, then returns its number.
    async fn query(&self) -> u64 {
        let n = self.queries.fetch_add(1, Ordering::SeqCst) + 1;
        tokio::time::sleep(self.latency).await;
        n
    }
}

/// The gRPC service over the database.
pub struct Users {
    db: Arc<Db>,
}

type UserStream = Pin<Box<dyn Stream<Item = Result<User, Status>> + Send>>;

#[tonic::async_trait]
impl UserService for Users {
    async fn get_user(&self, req: Request<GetUserRequest>) -> Result<Response<User>, Status> {
        let n = self.db.query().await;
        let req = req.into_inner();
        let Some(mut user) = self.db.users.lock().unwrap().get(&req.id).cloned() else {
            return Err(Status::not_found(format!("no user {}", req.id)));
        };
        // A field mask: a different question, a different answer.
        if !req.fields.is_empty() {
            if !req.fields.iter().any(|f| f == "name") {
                user.name.clear();
            }
            if !req.fields.iter().any(|f| f == "email") {
                user.email.clear();
            }
        }
        let mut resp = Response::new(user);
        resp.metadata_mut()
            .insert("x-db-query", n.to_string().parse().unwrap());
        Ok(resp)
    }

    async fn update_user(&self, req: Request<UpdateUserRequest>) -> Result<Response<User>, Status> {
        let req = req.into_inner();
        if req.name.is_empty() {
            return Err(Status::invalid_argument("a user needs a name"));
        }
        self.db.query().await;
        let mut users = self.db.users.lock().unwrap();
        let Some(user) = users.get_mut(&req.id) else {
            return Err(Status::not_found(format!("no user {}", req.id)));
        };
        user.name = req.name;
        user.email = req.email;
        Ok(Response::new(user.clone()))
    }

    type ListUsersStream = UserStream;

    async fn list_users(
        &self,
        req: Request<ListUsersRequest>,
    ) -> Result<Response<Self::ListUsersStream>, Status> {
        let n = self.db.query().await;
        let limit = req.into_inner().limit as usize;
        let users: Vec<_> = self
            .db
            .users
            .lock()
            .unwrap()
            .values()
            .take(limit)
            .cloned()
            .map(Ok)
            .collect();
        let mut resp = Response::new(Box::pin(tokio_stream::iter(users)) as UserStream);
        resp.metadata_mut()
            .insert("x-db-query", n.to_string().parse().unwrap());
        Ok(resp)
    }
}

/// The `id` field of a request message, for key templates and rules.
fn get_user_id() -> Fields<GetUserRequest> {
    Fields::prost().field("id", |m: &GetUserRequest| m.id)
}

/// What is cached: `GetUser` for 1 hour, keyed `user:{id}`
/// (plus a digest of the whole message: a field mask is a different entry).
pub fn routes() -> Routes {
    Routes::new().grpc(
        "/users.UserService/GetUser",
        Policy::ttl(Duration::from_secs(3600))
            .key("user:{id}")
            .fields(get_user_id())
            .tags(["users"]),
    )
}

/// What is invalidated: `UpdateUser { id }` drops every `GetUser` entry of that user.
pub fn rules() -> Rules {
    Rules::new().grpc(
        "/users.UserService/UpdateUser",
        Invalidate::keys(["user:{id}"])
            .fields(Fields::prost().field("id", |m: &UpdateUserRequest| m.id)),
    )
}

/// Serves the user service with the cache on `listener` until the task is dropped.
pub async fn serve(
    listener: tokio::net::TcpListener,
    db: Arc<Db>,
    stash: Stash,
) -> Result<(), tonic::transport::Error> {
    let (routes, rules) = (routes(), rules());
    let layers = tower::ServiceBuilder::new()
        // Outermost: reads the messages of the methods the routes and rules name.
        .layer(GrpcLayer::new().routes(&routes).rules(&rules))
        .layer(InvalidateLayer::new(stash.clone(), rules))
        .layer(CacheLayer::new(stash.clone(), routes))
        .layer(SingleFlightLayer::new(stash))
        // Trailers of the service's own, replayed from the cache on every hit.
        .map_response(add_trailer);
    tonic::transport::Server::builder()
        .layer(layers)
        .add_service(UserServiceServer::new(Users { db }))
        .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener))
        .await
}

/// Adds the custom trailer `x-served-at` (when the service answered, in ms since the epoch) to
/// answers that carry their status in trailers.
fn add_trailer(resp: http::Response<tonic::body::Body>) -> http::Response<tonic::body::Body> {
    use http_body_util::BodyExt;
    if resp.headers().contains_key("grpc-status") {
        return resp; // trailers-only: no body, no trailers to add to
    }
    let at = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_millis();
    let mut trailers = http::HeaderMap::new();
    trailers.insert("x-served-at", at.to_string().parse().unwrap());
    resp.map(|body| {
        tonic::body::Body::new(body.with_trailers(std::future::ready(Some(Ok(trailers)))))
    })
}

/// In memory, or tiered on Redis when `REDIS_URL` is set; `Cache-Status` says why a call was
/// not stored.
fn stash() -> Result<Stash, Box<dyn std::error::Error>> {
    let builder = Stash::builder().cache_status_detail(true);
    match std::env::var("REDIS_URL") {
        #[cfg(feature = "redis")]
        Ok(url) if !url.is_empty() => Ok(builder.redis(url).build()?),
        #[cfg(not(feature = "redis"))]
        Ok(url) if !url.is_empty() => Err("REDIS_URL is set: build with --features redis".into()),
        _ => Ok(builder.build()?),
    }
}

fn arg(name: &str) -> Option<String> {
    std::env::args().skip_while(|a| a != name).nth(1)
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let listen: SocketAddr = arg("--listen")
        .unwrap_or_else(|| "127.0.0.1:50051".into())
        .parse()
        .map_err(|e| format!("--listen: {e}"))?;
    let latency = match arg("--db-latency-ms") {
        Some(ms) => Duration::from_millis(ms.parse().map_err(|e| format!("--db-latency-ms: {e}"))?),
        None => Duration::from_millis(200),
    };
    let stash = stash()?;
    let db = Db::new(latency);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    let addr = listener.local_addr()?;
    println!("gRPC UserService on http://{addr} (GetUser cached, UpdateUser invalidates)");
    let server = tokio::spawn(serve(listener, db.clone(), stash.clone()));
    if std::env::args().any(|a| a == "--demo") {
        demo(addr, &db, &stash).await?;
        server.abort();
        return Ok(());
    }
    server.await??;
    Ok(())
}

/// A client's tour: miss, hit, burst, update.
async fn demo(addr: SocketAddr, db: &Db, stash: &Stash) -> Result<(), Box<dyn std::error::Error>> {
    use pb::user_service_client::UserServiceClient;
    let mut client = UserServiceClient::connect(format!("http://{addr}")).await?;
    let get = |id| GetUserRequest { id, fields: vec![] };
    for label in ["first call (miss)", "second call (hit)"] {
        let t = Instant::now();
        let resp = client.get_user(get(7)).await?;
        let md = resp.metadata();
        println!(
            "{label}: {:?} in {:?}; cache-status {:?}, x-served-at {:?}",
            resp.get_ref(),
            t.elapsed(),
            md.get("cache-status"),
            md.get("x-served-at"),
        );
    }
    let before = db.queries();
    let calls = (0..100).map(|_| {
        let mut c = client.clone();
        async move { c.get_user(get(8)).await }
    });
    let t = Instant::now();
    let results = futures_util::future::join_all(calls).await;
    println!(
        "100 concurrent calls for a cold user: {} ok in {:?}, {} database queries",
        results.iter().filter(|r| r.is_ok()).count(),
        t.elapsed(),
        db.queries() - before
    );
    client
        .update_user(UpdateUserRequest {
            id: 7,
            name: "Renamed".into(),
            email: "renamed@example.com".into(),
        })
        .await?;
    let resp = client.get_user(get(7)).await?;
    println!("after UpdateUser: {:?}", resp.get_ref());
    let s = stash.stats();
    println!(
        "stats: hits {} misses {} collapsed {} db queries {}",
        s.hits,
        s.misses,
        s.collapsed,
        db.queries()
    );
    Ok(())
}
