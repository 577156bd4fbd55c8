#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod db;
mod error;
mod hash;
pub mod history;
mod memory;
mod pubsub;
mod resp_store;
pub mod server;
mod slot;
mod store;

#[doc(inline)]
pub use db::KeyTtl;
#[doc(inline)]
pub use error::{Error, Result};
#[doc(inline)]
pub use history::{History, HistoryLimits, Position};
#[doc(inline)]
pub use memory::{MemoryConfig, MemoryStore};
#[doc(inline)]
pub use resp_store::{ClusterStore, RedisStore, RespConfig, RespStore};
#[doc(inline)]
pub use store::{BoxFuture, Store, StoreEvent, Subscription};
