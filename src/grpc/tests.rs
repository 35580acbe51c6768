//! gRPC calls through the layers: keys from the message, entries only for `grpc-status: 0`,
//! trailers replayed, bypasses where the message cannot be keyed.

use super::{Fields, GrpcLayer};
use crate::test_util::{send, Got, TestBody, Upstream};
use crate::{CacheLayer, Invalidate, InvalidateLayer, Policy, Routes, Rules, Stash};
use bytes::{BufMut, Bytes, BytesMut};
use http::{HeaderMap, Request, Response};
use http_body::Frame;
use http_body_util::{BodyExt, Empty, Full, StreamBody};
use std::convert::Infallible;
use std::time::Duration;
use tower::{Service, ServiceBuilder, ServiceExt};

type BoxError = Box<dyn std::error::Error + Send + Sync>;
const GET: &str = "/users.UserService/GetUser";
const UPDATE: &str = "/users.UserService/UpdateUser";
const LIST: &str = "/users.UserService/ListUsers";

/// A message `{ id: 1: varint (< 128), mask: 2: string }`.
fn message(id: u8, mask: &str) -> Bytes {
    let mut m = vec![0x08, id];
    if !mask.is_empty() {
        m.extend_from_slice(&[0x12, mask.len() as u8]);
        m.extend_from_slice(mask.as_bytes());
    }
    Bytes::from(m)
}

/// The message in its gRPC frame (uncompressed, length-prefixed).
fn frame(msg: &[u8]) -> Bytes {
    let mut b = BytesMut::new();
    b.put_u8(0);
    b.put_u32(msg.len() as u32);
    b.put_slice(msg);
    b.freeze()
}

fn decode_id(m: &[u8]) -> Option<u8> {
    match m {
        [0x08, id, ..] if *id < 0x80 => Some(*id),
        _ => None,
    }
}

fn id_fields() -> Fields<u8> {
    Fields::decode_with(decode_id).field("id", |id: &u8| *id)
}

fn call(path: &str, body: Bytes) -> Request<Full<Bytes>> {
    Request::post(path)
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(Full::new(body))
        .unwrap()
}

/// The service: counts calls, records the requests it got, and answers by the message's id:
/// 0 is a trailers-only NOT_FOUND, 99 an INTERNAL error in trailers, 98 a message without
/// trailers, others a user.
fn user_service() -> Upstream {
    Upstream::new(|req, n| {
        let (path, body) = (req.uri().path(), req.body());
        let id = decode_id(body.get(5..).unwrap_or_default()).unwrap_or(0);
        let resp = Response::builder().header("content-type", "application/grpc");
        if id == 0 {
            return resp
                .header("grpc-status", "5")
                .header("grpc-message", "no such user")
                .body(Empty::new().map_err(|e| match e {}).boxed())
                .unwrap();
        }
        let failed = id == 99 || body.windows(4).any(|w| w == b"fail");
        let status = if failed { "13" } else { "0" };
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", status.parse().unwrap());
        trailers.insert("x-answer", format!("{path} #{n}").parse().unwrap());
        let mut frames = vec![
            Ok::<_, BoxError>(Frame::data(frame(
                format!("user {id} #{n} of {}", body.len()).as_bytes(),
            ))),
            Ok(Frame::trailers(trailers)),
        ];
        if id == 98 {
            frames.pop();
        }
        resp.header("x-head", "1")
            .body(BodyExt::boxed(StreamBody::new(futures_util::stream::iter(
                frames,
            ))))
            .unwrap()
    })
}

/// The body of the `n`th request (from 0) `users` got.
fn body_of(users: &Upstream, n: usize) -> Bytes {
    users.requests()[n].body().clone()
}

fn routes() -> Routes {
    Routes::new().grpc(
        GET,
        Policy::ttl(Duration::from_secs(60))
            .key("user:{id}")
            .fields(id_fields())
            .tags(["user:{id}"]),
    )
}

fn rules() -> Rules {
    Rules::new().grpc(UPDATE, Invalidate::keys(["user:{id}"]).fields(id_fields()))
}

/// The layers over the service, as a user stacks them.
trait Stack:
    Service<
    Request<Full<Bytes>>,
    Response = Response<crate::invalidate::InvalidateBody<crate::CacheBody<TestBody>>>,
    Error = Infallible,
>
{
}

impl<S> Stack for S where
    S: Service<
        Request<Full<Bytes>>,
        Response = Response<crate::invalidate::InvalidateBody<crate::CacheBody<TestBody>>>,
        Error = Infallible,
    >
{
}

fn stack(stash: &Stash, grpc: GrpcLayer, routes: Routes, users: &Upstream) -> impl Stack {
    ServiceBuilder::new()
        .layer(grpc)
        .layer(InvalidateLayer::new(stash.clone(), rules()))
        .layer(CacheLayer::new(stash.clone(), routes))
        .service(users.clone())
}

fn setup() -> (Stash, Upstream, impl Stack) {
    let stash = Stash::builder().build().unwrap();
    let users = user_service();
    let (routes, rules) = (routes(), rules());
    let grpc = GrpcLayer::new().routes(&routes).rules(&rules);
    let svc = stack(&stash, grpc, routes, &users);
    (stash, users, svc)
}

#[tokio::test]
async fn a_second_identical_call_is_a_hit_with_the_same_message_and_trailers() {
    let (_stash, users, mut svc) = setup();
    let first = send(&mut svc, call(GET, frame(&message(7, "")))).await;
    let second = send(&mut svc, call(GET, frame(&message(7, "")))).await;
    assert_eq!(users.calls(), 1);
    assert_eq!(second.body, first.body);
    assert_eq!(second.body, frame(b"user 7 #1 of 7"));
    let t = second.trailers.clone().expect("trailers replayed");
    assert_eq!(t.get("grpc-status").unwrap(), "0");
    assert_eq!(t.get("x-answer").unwrap(), &format!("{GET} #1"));
    assert_eq!(Some(t), first.trailers);
    assert_eq!(second.headers.get("x-head").unwrap(), "1");
    assert_eq!(
        second.headers.get("content-type").unwrap(),
        "application/grpc"
    );
    assert!(
        second.cache_status().contains("hit"),
        "{}",
        second.cache_status()
    );
    // The service got the client's bytes, unchanged.
    assert_eq!(body_of(&users, 0), frame(&message(7, "")));
}

#[tokio::test]
async fn two_different_messages_get_two_entries() {
    let (_stash, users, mut svc) = setup();
    // Same id, different mask: the template's fields agree, the digest does not.
    let a = send(&mut svc, call(GET, frame(&message(7, "")))).await;
    let b = send(&mut svc, call(GET, frame(&message(7, "name")))).await;
    let c = send(&mut svc, call(GET, frame(&message(8, "")))).await;
    assert_eq!(users.calls(), 3);
    assert_ne!(a.body, b.body);
    assert_ne!(a.body, c.body);
    for (msg, want) in [
        (message(7, ""), &a),
        (message(7, "name"), &b),
        (message(8, ""), &c),
    ] {
        let again = send(&mut svc, call(GET, frame(&msg))).await;
        assert_eq!(&again.body, &want.body);
    }
    assert_eq!(users.calls(), 3);
}

#[tokio::test]
async fn errors_are_never_stored() {
    let (_stash, users, mut svc) = setup();
    // Trailers-only NOT_FOUND (id 0), INTERNAL in the trailers after a message (id 99), and
    // a message with no trailers at all (id 98: the outcome is unknown).
    for id in [0, 99, 98] {
        let first = send(&mut svc, call(GET, frame(&message(id, "")))).await;
        let second = send(&mut svc, call(GET, frame(&message(id, "")))).await;
        let status = |g: &Got| {
            g.headers
                .get("grpc-status")
                .or_else(|| g.trailers.as_ref().and_then(|t| t.get("grpc-status")))
                .cloned()
        };
        assert_eq!(status(&first), status(&second));
        assert_ne!(status(&first), Some("0".parse().unwrap()));
    }
    assert_eq!(users.calls(), 6);
}

#[tokio::test]
async fn calls_whose_message_is_not_read_bypass() {
    let stash = Stash::builder().build().unwrap();
    let users = user_service();
    // No method named: nothing is read, so nothing can be keyed.
    let mut svc = stack(&stash, GrpcLayer::new(), routes(), &users);
    for _ in 0..2 {
        let got = send(&mut svc, call(GET, frame(&message(7, "")))).await;
        assert!(
            got.cache_status().contains("fwd=bypass"),
            "{}",
            got.cache_status()
        );
    }
    assert_eq!(users.calls(), 2);

    // A message over the limit streams through, whole, and bypasses.
    let users = user_service();
    let grpc = GrpcLayer::new().routes(&routes()).max_message_size(16);
    let mut svc = stack(&stash, grpc, routes(), &users);
    let big = frame(&message(7, "a-mask-longer-than-sixteen-bytes"));
    for _ in 0..2 {
        send(&mut svc, call(GET, big.clone())).await;
    }
    assert_eq!(users.calls(), 2);
    assert_eq!(body_of(&users, 1), big);
}

#[tokio::test]
async fn undecodable_messages_credentials_and_other_content_types_bypass() {
    let (_stash, users, mut svc) = setup();
    // Not a message of the expected type (the id field is missing).
    for _ in 0..2 {
        send(&mut svc, call(GET, frame(&[0x12, 0x01, b'x']))).await;
    }
    assert_eq!(users.calls(), 2);
    // `authorization` metadata, not keyed by the policy.
    for _ in 0..2 {
        let mut req = call(GET, frame(&message(7, "")));
        req.headers_mut()
            .insert("authorization", "Bearer a".parse().unwrap());
        send(&mut svc, req).await;
    }
    assert_eq!(users.calls(), 4);
    // gRPC-Web carries its trailers in the body.
    for _ in 0..2 {
        let mut req = call(GET, frame(&message(7, "")));
        req.headers_mut()
            .insert("content-type", "application/grpc-web".parse().unwrap());
        send(&mut svc, req).await;
    }
    assert_eq!(users.calls(), 6);
}

#[tokio::test]
async fn the_accepted_encodings_are_keyed() {
    let (_stash, users, mut svc) = setup();
    let with = |enc: &str| {
        let mut req = call(GET, frame(&message(7, "")));
        req.headers_mut()
            .insert("grpc-accept-encoding", enc.parse().unwrap());
        req
    };
    send(&mut svc, with("gzip")).await;
    send(&mut svc, with("identity")).await;
    send(&mut svc, with("gzip")).await;
    assert_eq!(users.calls(), 2);
    // The request's own encoding too: the digest covers the bytes as sent.
    let mut req = call(GET, frame(&message(7, "")));
    req.headers_mut()
        .insert("grpc-encoding", "gzip".parse().unwrap());
    send(&mut svc, req).await;
    assert_eq!(users.calls(), 3);
}

#[tokio::test]
async fn two_methods_keyed_by_one_template_never_share_entries() {
    let settings = "/users.UserService/GetUserSettings";
    let policy = || {
        Policy::ttl(Duration::from_secs(60))
            .key("user:{id}")
            .fields(id_fields())
    };
    let routes = Routes::new().grpc(GET, policy()).grpc(settings, policy());
    let stash = Stash::builder().build().unwrap();
    let users = user_service();
    let grpc = GrpcLayer::new().routes(&routes);
    let mut svc = stack(&stash, grpc, routes, &users);
    let user = send(&mut svc, call(GET, frame(&message(7, "")))).await;
    let prefs = send(&mut svc, call(settings, frame(&message(7, "")))).await;
    assert_eq!(users.calls(), 2);
    assert_ne!(user.body, prefs.body);
    assert_eq!(
        send(&mut svc, call(settings, frame(&message(7, ""))))
            .await
            .body,
        prefs.body
    );
    assert_eq!(users.calls(), 2);
}

#[tokio::test]
async fn single_flight_shares_only_successful_answers() {
    use crate::SingleFlightLayer;
    let stash = Stash::builder().build().unwrap();
    let users = user_service().delay(Duration::from_millis(100));
    let routes = routes();
    let svc = ServiceBuilder::new()
        .layer(GrpcLayer::new().routes(&routes))
        .layer(CacheLayer::new(stash.clone(), routes))
        .layer(SingleFlightLayer::new(stash.clone()))
        .service(users.clone());
    // Five concurrent calls per message: an error (99) is each caller's own; a user (7) is
    // shared.
    for (id, want_calls) in [(99, 5), (7, 6)] {
        let calls = (0..5).map(|_| {
            let svc = svc.clone();
            async move {
                let resp = svc
                    .oneshot(call(GET, frame(&message(id, ""))))
                    .await
                    .unwrap();
                resp.into_body()
                    .collect()
                    .await
                    .unwrap()
                    .trailers()
                    .cloned()
            }
        });
        let got = crate::test_util::within("calls", futures_util::future::join_all(calls)).await;
        assert_eq!(users.calls(), want_calls, "id {id}");
        for t in got {
            let want = if id == 99 { "13" } else { "0" };
            assert_eq!(t.unwrap().get("grpc-status").unwrap(), want);
        }
    }
}

#[tokio::test]
async fn unlisted_methods_pass_through_untouched() {
    let (_stash, users, mut svc) = setup();
    for _ in 0..2 {
        let got = send(&mut svc, call(LIST, frame(&message(3, "")))).await;
        assert!(got.headers.get("cache-status").is_none());
        assert_eq!(got.trailers.unwrap().get("grpc-status").unwrap(), "0");
    }
    assert_eq!(users.calls(), 2);
}

#[tokio::test]
async fn a_successful_update_invalidates_every_entry_of_its_id() {
    let (_stash, users, mut svc) = setup();
    send(&mut svc, call(GET, frame(&message(7, "")))).await;
    send(&mut svc, call(GET, frame(&message(7, "name")))).await;
    send(&mut svc, call(GET, frame(&message(8, "")))).await;
    assert_eq!(users.calls(), 3);
    send(&mut svc, call(UPDATE, frame(&message(7, "")))).await;
    assert_eq!(users.calls(), 4);
    // Both entries of user 7 went; user 8's stayed.
    send(&mut svc, call(GET, frame(&message(7, "")))).await;
    send(&mut svc, call(GET, frame(&message(7, "name")))).await;
    send(&mut svc, call(GET, frame(&message(8, "")))).await;
    assert_eq!(users.calls(), 6);
    // A failed update (INTERNAL in its trailers) invalidates nothing.
    send(&mut svc, call(UPDATE, frame(&message(8, "fail")))).await;
    assert_eq!(users.calls(), 7);
    send(&mut svc, call(GET, frame(&message(8, "")))).await;
    assert_eq!(users.calls(), 7);
}

#[test]
fn misconfigured_fields_are_named() {
    let err = Routes::new()
        .get(
            "/users/{id}",
            Policy::ttl(Duration::from_secs(1)).fields(id_fields()),
        )
        .validate()
        .unwrap_err();
    assert!(
        err.to_string().contains("routes[GET /users/{id}].fields"),
        "{err}"
    );
    let err = Routes::new()
        .grpc(
            GET,
            Policy::ttl(Duration::from_secs(1))
                .key("user:{name}")
                .fields(id_fields()),
        )
        .validate()
        .unwrap_err();
    assert!(
        err.to_string().contains(&format!("routes[POST {GET}].key")),
        "{err}"
    );
    let err = Rules::new()
        .post(
            "/users/{id}",
            Invalidate::keys(["user:{id}"]).fields(id_fields()),
        )
        .validate()
        .unwrap_err();
    assert!(
        err.to_string().contains("rules[POST /users/{id}].fields"),
        "{err}"
    );
    // gRPC methods are exact paths; write-through answers are not entries of other routes.
    let err = Routes::new()
        .grpc(
            "/users.UserService/{method}",
            Policy::ttl(Duration::from_secs(1)),
        )
        .validate()
        .unwrap_err();
    assert!(err.to_string().contains("not a pattern"), "{err}");
    let err = Rules::new()
        .grpc(
            UPDATE,
            Invalidate::write_through("user:{id}", Duration::from_secs(1)).fields(id_fields()),
        )
        .validate()
        .unwrap_err();
    assert!(
        err.to_string()
            .contains(&format!("rules[POST {UPDATE}].write_through")),
        "{err}"
    );
}
