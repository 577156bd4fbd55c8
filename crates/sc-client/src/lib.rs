#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod channel;
mod client;
mod config;
mod driver;
mod error;
mod message;
mod position;
mod token;
mod transport;

#[doc(inline)]
pub use channel::{Channel, ChannelEvent, ChannelState, SubscribeOptions};
#[doc(inline)]
pub use client::{AuthStatus, Client, ConnectionState};
#[doc(inline)]
pub use config::{ClientBuilder, DEFAULT_PATH, ReconnectConfig, Transport};
#[doc(inline)]
pub use error::Error;
#[doc(inline)]
pub use message::{ConnectionEvent, Events, Message, Procedure, Receiver, Request};
#[doc(inline)]
pub use position::Position;
#[doc(inline)]
pub use token::{FileTokenStore, MemoryTokenStore, TokenStore};

pub use sc_protocol::{CloseCode, RawValue, ScError};
/// The rustls crate, for [`ClientBuilder::tls_config`].
pub use tokio_rustls::rustls;
