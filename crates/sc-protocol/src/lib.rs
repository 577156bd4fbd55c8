#![doc = include_str!("../README.md")]
#![cfg_attr(docsrs, feature(doc_cfg))]

mod close;
pub mod decode;
pub mod encode;
mod error;
mod reserved;

#[doc(inline)]
pub use close::CloseCode;
#[doc(inline)]
pub use decode::{Cid, Frame, Packet, decode, decode_binary};
#[doc(inline)]
pub use encode::PublishFrame;
#[doc(inline)]
pub use error::{ErrorName, ScError};
#[doc(inline)]
pub use reserved::{InvalidAction, Reserved};

/// The names of the reserved events.
pub mod events {
    pub use crate::reserved::{
        AUTHENTICATE, HANDSHAKE, KICK_OUT, PUBLISH, REMOVE_AUTH_TOKEN, SET_AUTH_TOKEN, SUBSCRIBE,
        UNSUBSCRIBE,
    };
}

/// Re-exported so users of the raw-JSON API need not depend on serde_json themselves.
pub use serde_json::value::RawValue;
