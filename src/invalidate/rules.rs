use crate::key::template::path_params;
use crate::key::Template;
use crate::policy::ConfigError;
use crate::policy::MethodTable;
use http::Method;
use std::time::Duration;

/// What a successful (2xx) request invalidates: keys and tags, filled from its path
/// parameters, and optionally a write-through of its response.
///
/// ```
/// use std::time::Duration;
/// use tower_stash::Invalidate;
///
/// // PUT /users/{id} answers with the updated user: store it as GET /users/{id}'s entry.
/// let put = Invalidate::write_through("user:{id}", Duration::from_secs(3600)).with_tags(["users"]);
/// // POST /products/{id}: drop the product, the list, and its category's entries.
/// let post = Invalidate::keys(["product:{id}", "products:all"]).with_tags(["products"]);
/// # let _ = (put, post);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Invalidate {
    pub(crate) keys: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) write_through: Option<(String, Duration)>,
    pub(crate) entry_tags: Vec<String>,
    pub(crate) fields: Option<crate::key::MessageFields>,
    pub(crate) hosts: Option<Vec<String>>,
}

impl Invalidate {
    /// Invalidates these keys (templates such as `user:{id}`, without the namespace), with
    /// every variant of each.
    pub fn keys<I, T>(keys: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::default().with_keys(keys)
    }

    /// Invalidates these tags (templates such as `category:{category}`).
    pub fn tags<I, T>(tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        Self::default().with_tags(tags)
    }

    /// Stores the response of a successful request as the entry of `key` (a template) for
    /// `ttl`: the response to `PUT /users/{id}` becomes what `GET /users/{id}` (keyed
    /// `user:{id}`) answers. When the request fails (an error or a status outside 2xx), the
    /// key is invalidated instead, so no old value outlives a failed write. Only 200 and 203
    /// responses are stored (a 201, 202 or 204 is not what the read answers); responses with
    /// `Set-Cookie`, `no-store` or `private`, or bodies over 1 MiB, are not either: the key is
    /// invalidated then.
    pub fn write_through(key: impl Into<String>, ttl: Duration) -> Self {
        Self {
            write_through: Some((key.into(), ttl)),
            ..Self::default()
        }
    }

    /// The hosts a write-through's entry is for, when the GET route's policy lists them
    /// ([`Policy::hosts`](crate::Policy::hosts)): set the same list here. By default, as
    /// the GET route keys the host a request names, the entry is stored for the host the
    /// write names; with a list, it is stored once for all of them, and a write naming a
    /// host off the list stores nothing (its key is invalidated).
    pub fn hosts<I, T>(mut self, hosts: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.hosts = Some(hosts.into_iter().map(Into::into).collect());
        self
    }

    /// Also invalidates these keys.
    pub fn with_keys<I, T>(mut self, keys: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.keys.extend(keys.into_iter().map(Into::into));
        self
    }

    /// Renamed [`with_keys`](Self::with_keys).
    #[deprecated(note = "renamed `with_keys`")]
    pub fn and_keys<I, T>(self, keys: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.with_keys(keys)
    }

    /// Also invalidates these tags.
    pub fn with_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.tags.extend(tags.into_iter().map(Into::into));
        self
    }

    /// Renamed [`with_tags`](Self::with_tags).
    #[deprecated(note = "renamed `with_tags`")]
    pub fn and_tags<I, T>(self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.with_tags(tags)
    }

    /// Names fields of a gRPC rule's decoded request message for its templates
    /// (`user:{id}`): see [`grpc`](crate::grpc).
    pub fn fields<M: 'static>(mut self, fields: crate::key::fields::Fields<M>) -> Self {
        self.fields = Some(fields.into());
        self
    }

    /// Tags the entry a write-through stores (templates), as the GET route's policy tags its
    /// entries, so that invalidating those tags drops it too.
    pub fn entry_tags<I, T>(mut self, tags: I) -> Self
    where
        I: IntoIterator<Item = T>,
        T: Into<String>,
    {
        self.entry_tags.extend(tags.into_iter().map(Into::into));
        self
    }
}

/// Maps method and path pattern (axum syntax) to what a successful request invalidates.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Rules {
    rules: Vec<(Method, String, Invalidate)>,
    /// The paths of gRPC rules.
    grpc: Vec<String>,
}

impl Rules {
    /// No rules.
    pub fn new() -> Self {
        Self::default()
    }

    /// A rule for PUT requests to `path`.
    pub fn put(self, path: impl Into<String>, rule: Invalidate) -> Self {
        self.route(Method::PUT, path, rule)
    }

    /// A rule for POST requests to `path`.
    pub fn post(self, path: impl Into<String>, rule: Invalidate) -> Self {
        self.route(Method::POST, path, rule)
    }

    /// A rule for PATCH requests to `path`.
    pub fn patch(self, path: impl Into<String>, rule: Invalidate) -> Self {
        self.route(Method::PATCH, path, rule)
    }

    /// A rule for DELETE requests to `path`.
    pub fn delete(self, path: impl Into<String>, rule: Invalidate) -> Self {
        self.route(Method::DELETE, path, rule)
    }

    /// A rule for the unary gRPC method `path` (`/package.Service/Method`), applied when the
    /// call ends with `grpc-status: 0` (the answer is read whole first, to see its trailers).
    /// Templates may name fields of the request message ([`Invalidate::fields`]); it needs a
    /// [`GrpcLayer`](crate::grpc::GrpcLayer) outside to read the message.
    pub fn grpc(mut self, path: impl Into<String>, rule: Invalidate) -> Self {
        let path = path.into();
        self.grpc.push(path.clone());
        self.route(Method::POST, path, rule)
    }

    /// The paths of the gRPC rules.
    pub(crate) fn grpc_paths(&self) -> impl Iterator<Item = &str> {
        self.grpc.iter().map(String::as_str)
    }

    /// A rule for `method` requests to `path`.
    pub fn route(mut self, method: Method, path: impl Into<String>, rule: Invalidate) -> Self {
        self.rules.push((method, path.into(), rule));
        self
    }

    /// Checks the rules without building a layer.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.compile().map(|_| ())
    }

    pub(crate) fn compile(&self) -> Result<RuleTable, ConfigError> {
        let mut errors = Vec::new();
        let mut table = MethodTable::new();
        for (method, path, rule) in &self.rules {
            let place = format!("rules[{method} {path}]");
            let mut params = path_params(path);
            let mut bad = Vec::new();
            let grpc = *method == Method::POST && self.grpc.contains(path);
            if grpc && rule.write_through.is_some() {
                bad.push(format!(
                    "{place}.write_through: not for gRPC rules (an answer framed for gRPC is no other route's entry); invalidate the keys instead"
                ));
            }
            if grpc && path.contains('{') {
                bad.push(format!(
                    "{place}: a gRPC rule is one method's exact path (`/package.Service/Method`), not a pattern"
                ));
            }
            if let Some(fields) = &rule.fields {
                if !grpc {
                    bad.push(format!(
                        "{place}.fields: message fields are for gRPC rules (Rules::grpc)"
                    ));
                }
                for name in &fields.names {
                    if params.contains(name) {
                        bad.push(format!("{place}.fields: `{name}` is also a path parameter"));
                    }
                    params.push(name.clone());
                }
            }
            let mut parse = |field: &str, t: &str| match Template::parse(t, &params) {
                Ok(t) => Some(t),
                Err(e) => {
                    bad.push(format!("{place}.{field}: {e}"));
                    None
                }
            };
            let keys: Vec<_> = rule.keys.iter().filter_map(|t| parse("keys", t)).collect();
            let tags: Vec<_> = rule.tags.iter().filter_map(|t| parse("tags", t)).collect();
            let entry_tags: Vec<_> = rule
                .entry_tags
                .iter()
                .filter_map(|t| parse("entry_tags", t))
                .collect();
            let write_through = rule
                .write_through
                .as_ref()
                .and_then(|(t, ttl)| parse("write_through", t).map(|t| (t, *ttl)));
            errors.append(&mut bad);
            if let Some((_, ttl)) = &rule.write_through {
                if ttl.is_zero() || *ttl > crate::entry::MAX_TTL {
                    errors.push(format!(
                        "{place}.write_through: the ttl must be more than zero and at most 10 years"
                    ));
                }
            }
            if rule.hosts.is_some() && rule.write_through.is_none() {
                errors.push(format!(
                    "{place}.hosts: for a write-through (an invalidation covers every host)"
                ));
            }
            if rule.keys.is_empty() && rule.tags.is_empty() && rule.write_through.is_none() {
                errors.push(format!("{place}: invalidates nothing"));
            }
            if matches!(*method, Method::GET | Method::HEAD) {
                errors.push(format!(
                    "{place}: GET and HEAD do not change data; rules are for the methods that do"
                ));
            }
            let compiled = Compiled {
                keys,
                tags,
                write_through,
                entry_tags,
                fields: rule.fields.clone(),
                hosts: rule.hosts.as_ref().map(|list| {
                    list.iter()
                        .map(|h| crate::key::normal_host(h.as_str().into()).into_owned())
                        .collect()
                }),
                grpc,
            };
            if let Err(e) = table.insert(method, path, compiled, "rule") {
                errors.push(format!("{place}: {e}"));
            }
        }
        if errors.is_empty() {
            Ok(RuleTable { table })
        } else {
            Err(ConfigError::new(errors))
        }
    }
}

#[derive(Debug)]
pub(crate) struct Compiled {
    pub(crate) keys: Vec<Template>,
    pub(crate) tags: Vec<Template>,
    pub(crate) write_through: Option<(Template, Duration)>,
    pub(crate) entry_tags: Vec<Template>,
    fields: Option<crate::key::MessageFields>,
    /// Normalised ([`crate::key::normal_host`]).
    hosts: Option<Vec<String>>,
    grpc: bool,
}

#[derive(Debug)]
pub(crate) struct RuleTable {
    table: MethodTable<Compiled>,
}

/// A matched rule, its templates filled.
#[derive(Debug, Default)]
pub(crate) struct Work {
    pub(crate) keys: Vec<String>,
    pub(crate) tags: Vec<String>,
    pub(crate) write_through: Option<WriteThrough>,
    pub(crate) entry_tags: Vec<String>,
    /// A gRPC call: it succeeded only if its trailers say `grpc-status: 0`.
    pub(crate) grpc: bool,
}

/// A write-through's filled key.
#[derive(Debug)]
pub(crate) struct WriteThrough {
    /// The base key (the template filled), whose variants the write invalidates.
    pub(crate) key: String,
    /// What the GET route appends to the base key for the host the write names (`|host=..`
    /// or nothing); `None` when the write is for no host the route answers: then it stores
    /// nothing.
    pub(crate) variant: Option<String>,
    pub(crate) ttl: Duration,
}

impl WriteThrough {
    /// The variant a ticket follows (nothing when no entry is stored).
    pub(crate) fn variant(&self) -> &str {
        self.variant.as_deref().unwrap_or("")
    }
}

impl RuleTable {
    /// What `req` invalidates when it succeeds.
    pub(crate) fn find<B>(&self, req: &http::Request<B>) -> Option<Work> {
        let (rule, path_params) = self.table.find(req.method(), req.uri().path())?;
        let fields = match &rule.fields {
            None => None,
            Some(f) => match crate::plumbing::prepare(Some(f), req) {
                Ok(values) => values,
                Err(reason) => {
                    // The write may still change data: only the templates that need no field
                    // can be applied. A missing GrpcLayer is a setup mistake worth shouting.
                    tracing::error!(
                        path = req.uri().path(),
                        reason,
                        "invalidation rule cannot read the gRPC message: templates naming its fields are skipped"
                    );
                    None
                }
            },
        };
        let params = crate::key::Params::new(&path_params, fields.as_ref());
        let usable = |t: &&Template| t.params().all(|name| params.get(name).is_some());
        let fill = |t: &Template| {
            let mut s = String::new();
            t.render_into(&mut s, |name| params.get(name));
            s
        };
        Some(Work {
            keys: rule.keys.iter().filter(usable).map(fill).collect(),
            tags: rule.tags.iter().filter(usable).map(fill).collect(),
            write_through: rule.write_through.as_ref().filter(|(t, _)| usable(&t)).map(
                |(t, ttl)| WriteThrough {
                    key: fill(t),
                    variant: host_variant(rule.hosts.as_deref(), req),
                    ttl: *ttl,
                },
            ),
            entry_tags: rule.entry_tags.iter().filter(usable).map(fill).collect(),
            grpc: rule.grpc,
        })
    }
}

/// The key variant a write-through stores for the host `req` names, as the GET route keys it
/// (see [`WriteThrough::variant`]): with no list of hosts, each host its own; with a list,
/// one entry for the listed hosts and none for others.
fn host_variant<B>(hosts: Option<&[String]>, req: &http::Request<B>) -> Option<String> {
    use crate::plumbing::{host_mismatch, request_host};
    if host_mismatch(req) {
        return None;
    }
    let host = request_host(req);
    match (hosts, host) {
        (None, None) => Some(String::new()),
        (None, Some(host)) => {
            let mut k = String::from("|host=");
            crate::key::escape_into(&mut k, host.as_bytes());
            Some(k)
        }
        (Some(list), Some(host)) if list.iter().any(|h| *h == host) => Some(String::new()),
        (Some(_), _) => None,
    }
}
