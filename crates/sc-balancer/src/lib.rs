//! The SocketCluster front door: a reverse proxy to workers with sticky routing, middleware and TLS termination.

#![cfg_attr(docsrs, feature(doc_cfg))]
