//! Configuration files: what loads, and mistakes named by file, line and field.

use super::Config;
use std::time::Duration;

fn err(text: &str) -> String {
    Config::from_toml(text, "app.toml").unwrap_err().to_string()
}

#[test]
fn a_file_builds_routes_rules_and_a_stash() {
    let text = r#"
[stash]
namespace = "shop"
memory = "1MiB"
cache_status_detail = true

[policies.product]
ttl = "12h"

[routes."GET /products/{id}"]
policy = "product"
key = "product:{id}"
tags = ["products"]

[routes."GET /prices/{symbol}"]
ttl = "5m"
stale_while_revalidate = "30s"
key_query = ["currency"]
max_body_size = 65536

[routes."GET /me"]
sliding = "30m"
max_lifetime = "12h"
session_cookie = "session"

[rules."PUT /products/{id}"]
keys = ["product:{id}"]
tags = ["products"]

[rules."PUT /users/{id}"]
write_through = { key = "user:{id}", ttl = "1h" }
entry_tags = ["users"]
"#;
    let config = Config::from_toml(text, "shop.toml").unwrap();
    assert_eq!(
        config.policies["product"].ttl.unwrap().0,
        Duration::from_secs(12 * 3600)
    );
    let routes = config.routes().unwrap();
    assert_eq!(
        routes.named_policy("product").unwrap(),
        &crate::Policy::ttl(Duration::from_secs(12 * 3600))
    );
    let stash = config.stash().unwrap().build().unwrap();
    assert_eq!(stash.namespace(), "shop");
    let layer = crate::CacheLayer::new(stash, routes);
    let req = http::Request::get("/products/7").body(()).unwrap();
    assert_eq!(layer.key_for(&req).unwrap(), "shop:v1:product:7");
    config.rules().unwrap();
}

#[test]
fn bad_values_name_the_file_line_and_field() {
    let e = err("[routes.\"GET /x\"]\nkey = \"x\"\nttl = \"30 minuts\"\n");
    assert!(
        e.starts_with("app.toml:3: routes.\"GET /x\".ttl: invalid duration `30 minuts`"),
        "{e}"
    );
    let e = err("[stash]\nmemory = \"lots\"\n");
    assert!(
        e.starts_with("app.toml:2: stash.memory: invalid size `lots`"),
        "{e}"
    );
}

#[test]
fn unknown_fields_are_refused_with_their_line() {
    let e = err("[stash]\nnamespace = \"a\"\n\n[routes.\"GET /x\"]\nttl = \"1m\"\nttll = \"2m\"\n");
    assert!(
        e.starts_with("app.toml:6: routes.\"GET /x\".ttll: unknown field `ttll`"),
        "{e}"
    );
    let e = err("[stahs]\nnamespace = \"a\"\n");
    assert!(
        e.starts_with("app.toml:1: stahs: unknown field `stahs`"),
        "{e}"
    );
}

#[test]
fn a_missing_file_is_named() {
    let e = Config::load("/nonexistent/tower-stash.toml")
        .unwrap_err()
        .to_string();
    assert!(
        e.starts_with("/nonexistent/tower-stash.toml: cannot read the file"),
        "{e}"
    );
}

#[test]
fn rules_and_routes_naming_unknown_things_are_placed() {
    // A route on a named policy that does not exist.
    let text = "[routes.\"GET /a\"]\nttl = \"1m\"\n\n[routes.\"GET /users/{id}\"]\ntags = [\"users\"]\npolicy = \"user_profil\"\n";
    let e = err(text);
    assert!(
        e.starts_with(
            "app.toml:6: routes.\"GET /users/{id}\".policy: no named policy `user_profil`"
        ),
        "{e}"
    );
    // A template naming a parameter the path lacks: the line of `key`.
    let text = "[routes.\"GET /users/{id}\"]\nttl = \"1h\"\nkey = \"user:{uid}\"\n";
    let e = err(text);
    assert!(
        e.starts_with("app.toml:3: routes.\"GET /users/{id}\".key: "),
        "{e}"
    );
    // A rule's template, the same.
    let text = "[rules.\"PUT /users/{id}\"]\nkeys = [\"user:{id}\"]\ntags = [\"team:{team}\"]\n";
    let e = err(text);
    assert!(
        e.starts_with("app.toml:3: rules.\"PUT /users/{id}\".tags: "),
        "{e}"
    );
    // A route that is not `METHOD /path`.
    let e = err("[routes.\"/users\"]\nttl = \"1m\"\n");
    assert!(e.starts_with("app.toml:1: routes.\"/users\": "), "{e}");
    // A bad namespace, in `[stash]`.
    let e = err(
        "[routes.\"GET /a\"]\nttl = \"1m\"\n\n[stash]\nmax_key_len = 512\nnamespace = \"a b\"\n",
    );
    assert!(e.starts_with("app.toml:6: stash.namespace: "), "{e}");
}

#[test]
fn every_mistake_is_reported_at_once() {
    let text = "[routes.\"GET /a\"]\nkey = \"a:{nope}\"\nttl = \"1m\"\n\n[rules.\"GET /b\"]\nkeys = [\"b\"]\n";
    let e = err(text);
    assert_eq!(e.lines().count(), 2, "{e}");
    assert!(e.contains("app.toml:2: routes.\"GET /a\".key"), "{e}");
    assert!(e.contains("app.toml:5: rules.\"GET /b\": "), "{e}");
}

#[cfg(feature = "redis")]
#[test]
fn a_bad_redis_url_is_named() {
    let e = err("[stash.redis]\ntimeout = \"10ms\"\nurl = \"http://nope\"\n");
    assert!(e.starts_with("app.toml:3: stash.redis.url: "), "{e}");
}

#[test]
fn redis_settings_are_checked_with_their_lines() {
    let e =
        err("[stash.redis]\nurl = \"redis://127.0.0.1:6379\"\npool_size = 0\ntimeout = \"0s\"\n");
    assert!(
        e.contains("app.toml:3: stash.redis.pool_size: must be at least 1"),
        "{e}"
    );
    assert!(
        e.contains("app.toml:4: stash.redis.timeout: must be more than zero"),
        "{e}"
    );
    let e = err("[stash.redis]\nurl = \"redis://127.0.0.1:6379\"\nprobe_interval = \"100000y\"\n");
    assert!(
        e.contains("app.toml:3: stash.redis.probe_interval: must be at most 10 years"),
        "{e}"
    );
    // Zero turns the probe off.
    let text = "[stash.redis]\nurl = \"redis://127.0.0.1:6379\"\nprobe_interval = \"0s\"\n";
    let redis = Config::from_toml(text, "app.toml")
        .unwrap()
        .stash
        .redis
        .unwrap();
    assert_eq!(redis.probe_interval.unwrap().0, Duration::ZERO);
    let e = err("[stash]\ninvalidation_margin = \"100000y\"\n");
    assert!(
        e.contains("app.toml:2: stash.invalidation_margin: must be at most 10 years"),
        "{e}"
    );
}

#[cfg(feature = "redis")]
#[test]
fn a_cluster_is_a_list_of_seed_nodes() {
    let text =
        "[stash.redis]\ncluster = [\"127.0.0.1:7000\", \"127.0.0.1:7001\"]\ntimeout = \"20ms\"\n";
    let config = Config::from_toml(text, "app.toml").unwrap();
    assert_eq!(config.stash.redis.unwrap().cluster.unwrap().len(), 2);
    let e = err("[stash.redis]\nurl = \"redis://a\"\ncluster = [\"b:1\"]\n");
    assert!(
        e.contains("stash.redis.url: set either `url` or `cluster`, not both"),
        "{e}"
    );
    let e = err("[stash.redis]\ntimeout = \"20ms\"\n");
    assert!(e.starts_with("app.toml:1: stash.redis.url: missing"), "{e}");
}

#[test]
fn http_mode_routes_can_come_from_a_file() {
    let text = "[routes.\"GET /{*path}\"]\nhttp_mode = true\nvary_headers = [\"host\"]\n";
    let config = Config::from_toml(text, "proxy.toml").unwrap();
    // No ttl needed: the origin decides.
    config.routes().unwrap();
    assert_eq!(config.routes["GET /{*path}"].http_mode, Some(true));
}

#[test]
fn status_ttls_are_a_table_of_statuses() {
    let text = "[routes.\"GET /users/{id}\"]\nttl = \"1h\"\nstatus_ttls = { 404 = \"1m\", 429 = \"1s\" }\n";
    let config = Config::from_toml(text, "app.toml").unwrap();
    let policy = config.routes["GET /users/{id}"].to_policy();
    assert_eq!(
        policy,
        crate::Policy::ttl(Duration::from_secs(3600))
            .status_ttl(404, Duration::from_secs(60))
            .status_ttl(429, Duration::from_secs(1))
    );
    config.routes().unwrap();
    let e = err("[routes.\"GET /x\"]\nttl = \"1h\"\nstatus_ttls = { nope = \"1m\" }\n");
    assert!(
        e.starts_with("app.toml:3: routes.\"GET /x\".status_ttls"),
        "{e}"
    );
    assert!(e.contains("a status code from 100 to 599"), "{e}");
    let e = err("[routes.\"GET /x\"]\nttl = \"1h\"\nstatus_ttls = { 503 = \"1m\" }\n");
    assert!(e.contains("status_ttls: 503 is never stored"), "{e}");
}

#[test]
fn allow_headers_come_from_a_file_and_bad_names_are_reported() {
    let text = "[routes.\"GET /x\"]\nttl = \"1h\"\nallow_headers = [\"accept\", \"user-agent\"]\n";
    let config = Config::from_toml(text, "app.toml").unwrap();
    assert_eq!(
        config.routes["GET /x"].to_policy(),
        crate::Policy::ttl(Duration::from_secs(3600)).allow_headers(["accept", "user-agent"])
    );
    config.routes().unwrap();
    let e = err("[routes.\"GET /x\"]\nttl = \"1h\"\nallow_headers = [\"not a name\"]\n");
    assert!(
        e.starts_with("app.toml:3: routes.\"GET /x\".allow_headers"),
        "{e}"
    );
    assert!(e.contains("`not a name` is not a header name"), "{e}");
}

#[test]
fn store_without_set_cookie_comes_from_a_file() {
    let text = "[routes.\"GET /x\"]\nhttp_mode = true\nstore_without_set_cookie = true\n";
    let config = Config::from_toml(text, "app.toml").unwrap();
    assert_eq!(
        config.routes["GET /x"].to_policy(),
        crate::Policy::new()
            .http_mode(true)
            .store_without_set_cookie(true)
    );
    let e = err("[routes.\"GET /x\"]\nstore_without_set_cookie = \"yes\"\n");
    assert!(e.contains("store_without_set_cookie"), "{e}");
}
