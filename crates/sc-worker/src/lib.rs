#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod client_addr;
mod config;
mod conn;
mod data;
#[cfg(feature = "engineio")]
mod engineio;
mod exchange;
pub mod middleware;
mod request;
mod serve;
mod server;
mod service;
mod socket;
pub mod transport;

#[doc(inline)]
pub use auth::AuthKey;
#[doc(inline)]
pub use client_addr::{InvalidProxy, TrustedProxies};
#[doc(inline)]
pub use config::{Config, ConfigError};
#[doc(inline)]
pub use data::{Data, IntoData, Json};
#[cfg(feature = "engineio")]
#[doc(inline)]
pub use engineio::{CLOSE_PREFIX, ENGINEIO_SCRIPT_PATH};
#[doc(inline)]
pub use exchange::{Broker, LocalBroker, Published, Subscriber};
#[doc(inline)]
pub use middleware::{
    Blocked, HandshakeAction, HandshakeWsAction, InboundAction, InboundKind, OutboundAction,
    RawAction,
};
#[doc(inline)]
pub use request::{ClientAddr, HandshakeRequest, PeerAddr};
#[doc(inline)]
pub use serve::serve;
#[doc(inline)]
pub use server::{
    BuildError, Request, ScEvent, ScHandle, ScServer, ScServerBuilder, Subscription, SyncRequest,
};
#[doc(inline)]
pub use service::{NotFound, RequestBody, ResponseFuture, ScLayer, ScService};
#[doc(inline)]
pub use socket::{SHUTDOWN, SLOW_CONSUMER, ScSocket};

/// Re-exported: JWT algorithms for [`AuthKey::Pem`].
pub use jsonwebtoken::Algorithm;
/// Re-exported: the wire error object and names.
pub use sc_protocol::{CloseCode, ErrorName, ScError};
/// Re-exported: the store crate, for [`ScServerBuilder::store`].
pub use sc_store;
