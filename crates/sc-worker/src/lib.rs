//! The SocketCluster server: WebSocket and engine.io transports, the socket state machine, the exchange, auth and middleware, as tower layers.

#![cfg_attr(docsrs, feature(doc_cfg))]
