#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
// On docs.rs (nightly), items are labelled with the features they need (`doc_cfg`, which took
// in `doc_auto_cfg`); `--cfg docsrs` alone, on stable, builds the same docs without labels.
#![cfg_attr(docsrs_nightly, feature(doc_cfg))]

#[cfg(feature = "admin")]
pub mod admin;
#[cfg(feature = "axum")]
pub mod axum;
pub mod cache;
mod concurrently;
#[cfg(feature = "config")]
pub mod config;
pub mod entry;
#[cfg(test)]
mod fuzz_tests;
pub mod grpc;
mod headers;
pub mod http;
pub mod invalidate;
pub mod key;
mod plumbing;
pub mod policy;
pub mod single_flight;
pub mod stash;
pub mod store;
#[cfg(test)]
mod test_util;
pub mod values;

pub use cache::{CacheBody, CacheHint, CacheLayer, CacheService};
pub use entry::{Entry, EntryError};
pub use grpc::{GrpcLayer, GrpcService};
pub use invalidate::{Invalidate, InvalidateLayer, InvalidateService, Rules};
pub use policy::{ConfigError, Policy, Routes};
pub use single_flight::{SingleFlightLayer, SingleFlightService};
pub use stash::{
    Clock, InvalidationRecord, ManualClock, RouteStats, Stash, StashBuilder, Stats, SystemClock,
};
pub use store::{
    BreakerState, BusEvent, Guarded, Health, HealthReport, MemoryStore, Store, StoreError,
    StoreFuture, StoreUsage, TieredStore, WriteTicket,
};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
pub use values::Values;
