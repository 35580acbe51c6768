//! Configuration files: routes, named policies, invalidation rules and store settings in TOML,
//! so that operators tune TTLs without rebuilding.
//!
//! Durations are written as `"30m"`, `"1h 30m"`, `"500ms"`, `"24h"`; sizes as `"64MiB"` or a
//! number of bytes. A route starts from a named policy (`policy = "user_profile"`) and
//! overrides what it sets. Unknown fields are refused, and every mistake names the file, the
//! line and the field:
//!
//! ```text
//! demo.toml:12: routes."GET /users/{id}".ttl: invalid duration `30 minuts`: unknown time unit "minuts", supported units: ns, us, ms, sec, min, hours, days, weeks, months, years (and few variations)
//! ```
//!
//! The file is a view of the structures the rest of the crate takes ([`Routes`], [`Rules`],
//! [`StashBuilder`](crate::StashBuilder)): what it says can equally be built in code, and [`Config`] itself is plain
//! data with public fields.
//!
//! # Example
//!
//! ```
//! use tower_stash::config::Config;
//! use tower_stash::{CacheLayer, InvalidateLayer};
//!
//! let text = r#"
//! [stash]
//! namespace = "shop"
//! memory = "64MiB"
//!
//! [policies.user_profile]       # a named policy routes start from
//! ttl = "1h"
//!
//! [routes."GET /users/{id}"]
//! policy = "user_profile"       # 1 hour
//! key = "user:{id}"
//! tags = ["users"]
//!
//! [routes."GET /me"]
//! sliding = "30m"
//! max_lifetime = "12h"
//! session_cookie = "session"
//!
//! [rules."PUT /users/{id}"]
//! write_through = { key = "user:{id}", ttl = "1h" }
//! "#;
//! let config = Config::from_toml(text, "shop.toml").unwrap();
//! let stash = config.stash().unwrap().build().unwrap();
//! let cache = CacheLayer::new(stash.clone(), config.routes().unwrap());
//! let invalidate = InvalidateLayer::new(stash, config.rules().unwrap());
//! # let _ = (cache, invalidate);
//!
//! let err = Config::from_toml("[routes.\"GET /x\"]\nttl = \"30 minuts\"\n", "bad.toml").unwrap_err();
//! assert!(err.to_string().starts_with("bad.toml:2: routes.\"GET /x\".ttl: "), "{err}");
//! ```

use crate::{Routes, Rules};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::Path;

/// A configuration file: see the [module docs](self). Its `Debug` output never shows the
/// file's text, nor the Redis URLs and passwords in it.
#[derive(Clone, Default, Deserialize)]
#[serde(from = "schema::File")]
#[non_exhaustive]
pub struct Config {
    /// Store and stash settings.
    pub stash: StashConfig,
    /// Named policies (a TTL map) that routes start from.
    pub policies: BTreeMap<String, PolicyConfig>,
    /// Cached routes, by `"METHOD /path/{param}"`.
    pub routes: BTreeMap<String, PolicyConfig>,
    /// Invalidation rules, by `"METHOD /path/{param}"`.
    pub rules: BTreeMap<String, RuleConfig>,
    /// Where each table stands in the file, for error lines.
    spans: schema::Spans,
    /// The file's name and text, for error lines.
    source: Option<(String, String)>,
}

impl std::fmt::Debug for Config {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Config")
            .field("stash", &self.stash)
            .field("policies", &self.policies)
            .field("routes", &self.routes)
            .field("rules", &self.rules)
            .field("file", &self.source.as_ref().map(|(name, _)| name))
            .finish_non_exhaustive()
    }
}

mod error;
mod schema;
mod stash;

use error::{field_at, line_of};
pub use error::{ConfigFileError, FileError};
use schema::{route_field, split_route};
pub use schema::{
    Dur, PolicyConfig, RedisConfig, RuleConfig, Size, StashConfig, Status, WriteThroughConfig,
};

impl Config {
    /// Reads and checks the file at `path`.
    pub fn load(path: impl AsRef<Path>) -> Result<Self, ConfigFileError> {
        let path = path.as_ref();
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigFileError::whole(&name, format!("cannot read the file: {e}")))?;
        Self::from_toml(&text, name)
    }

    /// Parses and checks `text`, naming it `file` in errors.
    pub fn from_toml(text: &str, file: impl Into<String>) -> Result<Self, ConfigFileError> {
        let file = file.into();
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let span = e.span().unwrap_or(0..0);
            ConfigFileError {
                file: file.clone(),
                errors: vec![FileError {
                    line: line_of(text, span.start),
                    field: field_at(text, span.start),
                    message: e.message().trim().to_owned(),
                }],
            }
        })?;
        config.source = Some((file, text.to_owned()));
        // Everything else is checked now, not when a layer is built.
        let mut errors = Vec::new();
        for result in [
            config.routes().map(drop),
            config.rules().map(drop),
            config.check_stash(),
        ] {
            if let Err(e) = result {
                errors.extend(e.errors);
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigFileError {
                file: config.source.take().map(|(f, _)| f).unwrap_or_default(),
                errors,
            })
        }
    }

    /// The routes and named policies.
    pub fn routes(&self) -> Result<Routes, ConfigFileError> {
        let mut routes = Routes::new();
        let mut errors = Vec::new();
        for (name, p) in &self.policies {
            routes = routes.policy(name.clone(), p.to_policy());
        }
        for (route, p) in &self.routes {
            match split_route(route) {
                Ok((method, path)) => routes = routes.route(method, path, p.to_policy()),
                Err(message) => errors.push(self.error_at(
                    self.spans.routes.get(route).cloned().unwrap_or_default(),
                    route_field("routes", route, None),
                    message,
                )),
            }
        }
        if let Err(e) = routes.validate() {
            errors.extend(self.place_errors(&e));
        }
        self.result(errors).map(|()| routes)
    }

    /// The invalidation rules.
    pub fn rules(&self) -> Result<Rules, ConfigFileError> {
        let mut rules = Rules::new();
        let mut errors = Vec::new();
        for (route, r) in &self.rules {
            match split_route(route) {
                Ok((method, path)) => rules = rules.route(method, path, r.to_rule()),
                Err(message) => errors.push(self.error_at(
                    self.spans.rules.get(route).cloned().unwrap_or_default(),
                    route_field("rules", route, None),
                    message,
                )),
            }
        }
        if let Err(e) = rules.validate() {
            errors.extend(self.place_errors(&e));
        }
        self.result(errors).map(|()| rules)
    }
}

#[cfg(test)]
mod tests;
