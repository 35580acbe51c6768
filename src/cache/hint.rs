//! [`CacheHint`]: how a handler says how its own response is cached. The type lives with the
//! plumbing every layer shares, since single flight reads hints too (a response its handler
//! keeps out of the cache is not shared with waiters either).

pub use crate::plumbing::CacheHint;
