#![doc = include_str!("../README.md")]
#![warn(missing_docs)]
#![deny(unsafe_code, unreachable_pub)]
#![cfg_attr(docsrs, feature(doc_auto_cfg))]

pub mod cache;
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

pub use cache::{CacheBody, CacheHint, CacheLayer, CacheService};
pub use entry::{Entry, EntryError};
pub use grpc::{GrpcLayer, GrpcService};
pub use invalidate::{Invalidate, InvalidateLayer, InvalidateService, Rules};
pub use policy::{ConfigError, Policy, Routes};
pub use single_flight::{SingleFlightLayer, SingleFlightService};
pub use stash::{Clock, ManualClock, Stash, StashBuilder, Stats, SystemClock};
pub use store::{
    BreakerState, BusEvent, Guarded, Health, HealthReport, MemoryStore, Store, StoreError,
    StoreFuture, StoreUsage, TieredStore, WriteTicket,
};
#[cfg(feature = "redis")]
pub use store::{RedisStore, RedisStoreBuilder};
