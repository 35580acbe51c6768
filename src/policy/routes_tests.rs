use super::*;

#[test]
fn named_policies_resolve_and_override() {
    let t = Routes::new()
        .policy("user_profile", Policy::ttl(Duration::from_secs(3600)))
        .policy("product", Policy::ttl(Duration::from_secs(24 * 3600)))
        .get("/u/{id}", Policy::named("user_profile"))
        .get(
            "/p/{id}",
            Policy::named("product").with_ttl(Duration::from_secs(5)),
        )
        .policy("statistics", Policy::ttl(Duration::from_secs(7)))
        .get("/s", Policy::named("statistics"))
        .compile()
        .unwrap();
    let ttl = |p: &str| t.find(&Method::GET, p).unwrap().0.ttl;
    assert_eq!(ttl("/u/1"), Duration::from_secs(3600));
    assert_eq!(ttl("/p/1"), Duration::from_secs(5));
    assert_eq!(ttl("/s"), Duration::from_secs(7));
    assert!(t.find(&Method::HEAD, "/s").is_some());
    assert!(t.find(&Method::POST, "/s").is_none());
    assert!(t.find(&Method::GET, "/other").is_none());
}

#[test]
fn errors_name_route_and_field() {
    let err = Routes::new()
        .get("/a", Policy::new())
        .get("/b", Policy::named("nope"))
        .route(Method::POST, "/c", Policy::ttl(Duration::from_secs(1)))
        .get("/d", Policy::ttl(Duration::from_secs(1)).statuses([500]))
        .get(
            "/e",
            Policy::ttl(Duration::from_secs(1)).key_headers(["bad header"]),
        )
        .get("/{x", Policy::ttl(Duration::from_secs(1)))
        .get("/a", Policy::ttl(Duration::from_secs(1)))
        .compile()
        .unwrap_err();
    let all = err.errors().join("\n");
    for want in [
        "routes[GET /a].ttl: missing",
        "routes[GET /b].policy: no named policy `nope`",
        "routes[POST /c].unsafe_methods",
        "routes[GET /d].statuses: 500",
        "routes[GET /e].key_headers",
        "routes[GET /{x]: invalid path pattern",
    ] {
        assert!(all.contains(want), "{want} not in:\n{all}");
    }
}

#[test]
fn overlapping_keys_of_two_routes_are_an_error() {
    let err = Routes::new()
        .get(
            "/items/{id}",
            Policy::ttl(Duration::from_secs(1)).key("item:{id}"),
        )
        .get(
            "/items/{id}/detail",
            Policy::ttl(Duration::from_secs(1)).key("item:{id}:detail"),
        )
        .get(
            "/kinds/{kind}",
            Policy::ttl(Duration::from_secs(1)).key("{kind}:1"),
        )
        .compile()
        .unwrap_err();
    assert_eq!(err.errors().len(), 1, "{err}");
    assert!(
        err.errors()[0].contains("routes[GET /kinds/{kind}].key"),
        "{err}"
    );
    // The same template on two routes shares entries on purpose.
    Routes::new()
        .get(
            "/users/{id}",
            Policy::ttl(Duration::from_secs(1)).key("user:{id}"),
        )
        .get(
            "/people/{id}",
            Policy::ttl(Duration::from_secs(1)).key("user:{id}"),
        )
        .compile()
        .unwrap();
    let err = Routes::new()
        .get("/x", Policy::ttl(Duration::MAX))
        .compile()
        .unwrap_err();
    assert!(err.to_string().contains("routes[GET /x].ttl"));
}

#[test]
fn unsafe_method_with_opt_in_is_allowed() {
    let t = Routes::new()
        .route(
            Method::POST,
            "/q",
            Policy::ttl(Duration::from_secs(1)).unsafe_methods(true),
        )
        .compile()
        .unwrap();
    assert!(t.find(&Method::POST, "/q").is_some());
}
