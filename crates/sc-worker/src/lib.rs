#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod auth;
mod builder;
mod client_addr;
mod config;
mod conn;
mod data;
#[cfg(feature = "engineio")]
mod engineio;
mod exchange;
mod handle;
mod handler;
mod limits;
mod metrics;
pub mod middleware;
mod published;
mod request;
mod serve;
mod service;
mod session;
mod sessions;
mod socket;
mod state;
pub mod transport;

#[doc(inline)]
pub use auth::AuthKey;
#[doc(inline)]
pub use builder::{BuildError, ScServer, ScServerBuilder};
#[doc(inline)]
pub use client_addr::{InvalidProxy, TrustedProxies};
#[doc(inline)]
pub use config::{Config, ConfigError, HistoryRule};
#[doc(inline)]
pub use data::{Data, IntoData, Json};
#[cfg(feature = "engineio")]
#[doc(inline)]
pub use engineio::{CLOSE_PREFIX, ENGINEIO_SCRIPT_PATH};
#[doc(inline)]
pub use exchange::{Broker, LocalBroker, Subscriber};
#[doc(inline)]
pub use handle::{ScHandle, Subscription};
#[doc(inline)]
pub use handler::{Request, SyncRequest};
#[doc(inline)]
pub use metrics::Metrics;
#[doc(inline)]
pub use middleware::{
    Blocked, HandshakeAction, HandshakeWsAction, InboundAction, InboundKind, OutboundAction,
    RawAction,
};
#[doc(inline)]
pub use published::Published;
#[doc(inline)]
pub use request::{ClientAddr, HandshakeRequest, PeerAddr, RequestBody, SessionId, cookie_pairs};
#[doc(inline)]
pub use serve::serve;
#[doc(inline)]
pub use service::{NotFound, RECOVERY_SCRIPT_PATH, ResponseFuture, ScLayer, ScService};
#[doc(inline)]
pub use session::{Session, SessionFuture, SessionLayer, SessionService};
#[doc(inline)]
pub use socket::{RATE_LIMITED, RESTART, SHUTDOWN, SLOW_CONSUMER, ScEvent, ScSocket};

/// Re-exported: JWT algorithms for [`AuthKey::Pem`].
pub use jsonwebtoken::Algorithm;
/// Per-address connection limits, shared with the balancer.
pub use limits::{AddrSlot, AddressLimits, Refusal};
/// Re-exported: the wire error object and names.
pub use sc_protocol::{CloseCode, ErrorName, ScError};
/// Re-exported: the store crate, for [`ScServerBuilder::store`].
pub use sc_store;
