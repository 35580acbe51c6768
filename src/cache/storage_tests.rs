//! What is stored: only a whole answer, with a reason to store it.

use crate::test_util::{full, send, Upstream};
use crate::{CacheLayer, Policy, Routes, Stash};
use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::Empty;
use std::time::Duration;
use tower::ServiceBuilder;

#[tokio::test]
async fn a_body_that_ends_short_of_its_content_length_is_never_stored() {
    for (declared, body) in [("100", "cut sh"), ("2", "longer than declared")] {
        let handler = Upstream::new(move |_, _| {
            let mut resp = Response::new(full(body));
            resp.headers_mut()
                .insert("content-length", HeaderValue::from_static(declared));
            resp
        });
        let stash = Stash::new();
        let layer = CacheLayer::new(
            stash.clone(),
            Routes::new().get("/f", Policy::ttl(Duration::from_secs(60))),
        );
        let svc = ServiceBuilder::new().layer(layer).service(handler.clone());
        for _ in 0..2 {
            let req = Request::get("/f").body(Empty::<Bytes>::new()).unwrap();
            send(svc.clone(), req).await;
        }
        assert_eq!(handler.calls(), 2, "Content-Length {declared}");
        assert_eq!(stash.stats().stores, 0);
    }
}
