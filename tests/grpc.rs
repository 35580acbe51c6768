//! The gRPC example's service, served by tonic on a loopback port and called by a real tonic
//! client (and by a raw HTTP/2 client, to see the trailers as they travel).

#[path = "../examples/grpc.rs"]
mod example;

use example::pb::user_service_client::UserServiceClient;
use example::pb::{GetUserRequest, ListUsersRequest, UpdateUserRequest, User};
use example::Db;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;
use tonic::transport::Channel;
use tonic::Code;
use tower_stash::Stash;

/// Fails the test instead of hanging it.
async fn within<T>(what: &str, fut: impl Future<Output = T>) -> T {
    tokio::time::timeout(Duration::from_secs(20), fut)
        .await
        .unwrap_or_else(|_| panic!("{what}: no answer within 20 s"))
}

struct Server {
    addr: SocketAddr,
    db: Arc<Db>,
    stash: Stash,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn start(db_latency: Duration) -> (Server, UserServiceClient<Channel>) {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let db = Db::new(db_latency);
    let stash = Stash::builder().cache_status_detail(true).build().unwrap();
    let task = tokio::spawn({
        let (db, stash) = (db.clone(), stash.clone());
        async move {
            example::serve(listener, db, stash).await.unwrap();
        }
    });
    let client = within("connect", async {
        loop {
            match UserServiceClient::connect(format!("http://{addr}")).await {
                Ok(c) => break c,
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    })
    .await;
    let server = Server {
        addr,
        db,
        stash,
        task,
    };
    (server, client)
}

fn get(id: u64) -> GetUserRequest {
    GetUserRequest { id, fields: vec![] }
}

fn metadata(resp: &tonic::Response<User>, name: &str) -> String {
    resp.metadata()
        .get(name)
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_second_identical_get_user_is_answered_from_the_cache() {
    let (server, mut client) = start(Duration::from_millis(50)).await;
    let first = within("first", client.get_user(get(7))).await.unwrap();
    let second = within("second", client.get_user(get(7))).await.unwrap();
    assert_eq!(server.db.queries(), 1, "the handler ran once");
    assert_eq!(second.get_ref(), first.get_ref());
    assert_eq!(second.get_ref().name, "User 7");
    // tonic merges trailers into the metadata: the service's own trailer is replayed.
    assert!(!metadata(&first, "x-served-at").is_empty());
    assert_eq!(
        metadata(&second, "x-served-at"),
        metadata(&first, "x-served-at")
    );
    assert_eq!(metadata(&second, "x-db-query"), "1");
    assert!(metadata(&second, "cache-status").contains("hit"));
    assert!(metadata(&first, "cache-status").contains("fwd=miss"));
    assert_eq!(server.stash.stats().hits, 1);
}

/// A unary call over a raw HTTP/2 connection: status, headers, body, trailers.
async fn raw_call(
    addr: SocketAddr,
    path: &str,
    msg: &[u8],
) -> (http::HeaderMap, bytes::Bytes, http::HeaderMap) {
    use http_body_util::{BodyExt, Full};
    let stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    let (mut send, conn) = hyper::client::conn::http2::handshake(
        hyper_util::rt::TokioExecutor::new(),
        hyper_util::rt::TokioIo::new(stream),
    )
    .await
    .unwrap();
    tokio::spawn(conn);
    let mut body = vec![0u8];
    body.extend_from_slice(&(msg.len() as u32).to_be_bytes());
    body.extend_from_slice(msg);
    let req = http::Request::post(format!("http://{addr}{path}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(bytes::Bytes::from(body)))
        .unwrap();
    let resp = send.send_request(req).await.unwrap();
    assert_eq!(resp.status(), 200);
    let (parts, body) = resp.into_parts();
    let collected = body.collect().await.unwrap();
    let trailers = collected.trailers().cloned().expect("trailers");
    (parts.headers, collected.to_bytes(), trailers)
}

#[tokio::test]
async fn trailers_are_stored_and_replayed_exactly() {
    let (server, _client) = start(Duration::from_millis(10)).await;
    let msg = prost::Message::encode_to_vec(&get(9));
    let path = "/users.UserService/GetUser";
    let (h1, b1, t1) = within("miss", raw_call(server.addr, path, &msg)).await;
    let (h2, b2, t2) = within("hit", raw_call(server.addr, path, &msg)).await;
    assert_eq!(server.db.queries(), 1);
    assert_eq!(b2, b1);
    assert_eq!(t2, t1, "the same trailers, in the trailers");
    assert_eq!(t2.get("grpc-status").unwrap(), "0");
    assert!(t2.contains_key("x-served-at"));
    assert!(
        !h2.contains_key("grpc-status"),
        "not a trailers-only answer"
    );
    assert!(!h2.contains_key("x-served-at"), "trailers stay trailers");
    assert_eq!(h2.get("x-db-query"), h1.get("x-db-query"));
    assert!(h2
        .get("cache-status")
        .unwrap()
        .to_str()
        .unwrap()
        .contains("hit"));
}

#[tokio::test]
async fn not_found_is_not_cached() {
    let (server, mut client) = start(Duration::from_millis(10)).await;
    for _ in 0..2 {
        let err = within("get", client.get_user(get(1000))).await.unwrap_err();
        assert_eq!(err.code(), Code::NotFound);
    }
    assert_eq!(server.db.queries(), 2);
    assert_eq!(server.stash.stats().hits, 0);
}

#[tokio::test]
async fn two_different_messages_get_two_entries() {
    let (server, mut client) = start(Duration::from_millis(10)).await;
    let masked = GetUserRequest {
        id: 7,
        fields: vec!["name".into()],
    };
    let whole = within("whole", client.get_user(get(7))).await.unwrap();
    let named = within("masked", client.get_user(masked.clone()))
        .await
        .unwrap();
    assert_eq!(server.db.queries(), 2);
    assert_eq!(
        named.get_ref().email,
        "",
        "the mask's answer, not the whole user"
    );
    assert_eq!(whole.get_ref().email, "user7@example.com");
    // Each is answered from its own entry.
    let again = within("masked again", client.get_user(masked))
        .await
        .unwrap();
    let whole_again = within("whole again", client.get_user(get(7)))
        .await
        .unwrap();
    assert_eq!(again.get_ref(), named.get_ref());
    assert_eq!(whole_again.get_ref(), whole.get_ref());
    assert_eq!(server.db.queries(), 2);
}

#[tokio::test]
async fn the_streaming_method_is_untouched() {
    use tokio_stream::StreamExt;
    let (server, mut client) = start(Duration::from_millis(10)).await;
    for round in 1..=2 {
        let resp = within("list", client.list_users(ListUsersRequest { limit: 5 }))
            .await
            .unwrap();
        assert!(resp.metadata().get("cache-status").is_none());
        assert_eq!(
            resp.metadata().get("x-db-query").unwrap(),
            &round.to_string()
        );
        let users: Vec<User> = within("stream", resp.into_inner().collect::<Result<_, _>>())
            .await
            .unwrap();
        assert_eq!(users.len(), 5);
        assert_eq!(users[4].id, 5);
    }
    assert_eq!(server.db.queries(), 2);
}

#[tokio::test]
async fn update_user_invalidates_the_matching_get_user_entries() {
    let (server, mut client) = start(Duration::from_millis(10)).await;
    let masked = GetUserRequest {
        id: 7,
        fields: vec!["name".into()],
    };
    within("get 7", client.get_user(get(7))).await.unwrap();
    within("get 7 masked", client.get_user(masked.clone()))
        .await
        .unwrap();
    within("get 8", client.get_user(get(8))).await.unwrap();
    assert_eq!(server.db.queries(), 3);
    let update = UpdateUserRequest {
        id: 7,
        name: "Renamed".into(),
        email: "renamed@example.com".into(),
    };
    within("update", client.update_user(update)).await.unwrap();
    assert_eq!(server.db.queries(), 4);
    let fresh = within("get 7", client.get_user(get(7))).await.unwrap();
    assert_eq!(fresh.get_ref().name, "Renamed");
    let fresh = within("get 7 masked", client.get_user(masked))
        .await
        .unwrap();
    assert_eq!(fresh.get_ref().name, "Renamed");
    assert_eq!(
        server.db.queries(),
        6,
        "both entries of user 7 were dropped"
    );
    within("get 8", client.get_user(get(8))).await.unwrap();
    assert_eq!(server.db.queries(), 6, "user 8's entry stayed");
    // A failed update (a user needs a name) invalidates nothing: user 8 is still a hit.
    let invalid = UpdateUserRequest {
        id: 8,
        ..Default::default()
    };
    let err = within("update", client.update_user(invalid))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let cached = within("get 8", client.get_user(get(8))).await.unwrap();
    assert!(metadata(&cached, "cache-status").contains("hit"));
    assert_eq!(server.db.queries(), 6);
}

#[tokio::test]
async fn a_hundred_concurrent_identical_cold_calls_make_one_handler_call() {
    let (server, client) = start(Duration::from_millis(200)).await;
    let calls = (0..100).map(|_| {
        let mut c = client.clone();
        async move { c.get_user(get(42)).await }
    });
    let results = within("burst", futures_util::future::join_all(calls)).await;
    assert_eq!(server.db.queries(), 1);
    let first = results[0].as_ref().unwrap().get_ref().clone();
    assert_eq!(first.name, "User 42");
    for r in &results {
        assert_eq!(r.as_ref().unwrap().get_ref(), &first);
    }
}

/// The example's generated code is checked in (the crate has no build script): it must be what
/// tonic-prost-build makes of `examples/proto/users.proto` now. To refresh it, copy the file
/// this test writes over `examples/proto/users.rs`.
#[test]
fn the_checked_in_grpc_code_is_what_the_generator_makes() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let out = std::env::temp_dir().join(format!("tower-stash-grpc-{}", std::process::id()));
    std::fs::create_dir_all(&out).unwrap();
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path().expect("vendored protoc"));
    tonic_prost_build::configure()
        .out_dir(&out)
        .emit_rerun_if_changed(false)
        .compile_with_config(
            config,
            &[root.join("examples/proto/users.proto")],
            &[root.join("examples/proto")],
        )
        .expect("generating the code of examples/proto/users.proto");
    let generated = std::fs::read_to_string(out.join("users.rs")).unwrap();
    let checked_in = std::fs::read_to_string(root.join("examples/proto/users.rs")).unwrap();
    assert!(
        generated == checked_in,
        "examples/proto/users.rs is out of date: copy {} over it",
        out.join("users.rs").display()
    );
    std::fs::remove_dir_all(&out).unwrap();
}
