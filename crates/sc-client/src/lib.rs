//! The Rust SocketCluster client: handshake, transmit and invoke, channels as streams, auth tokens and auto-reconnect.

#![cfg_attr(docsrs, feature(doc_cfg))]
