//! The SocketCluster front door, **planned**: a reverse proxy to workers with routing,
//! middleware and TLS termination. Nothing is implemented yet; `socketcluster serve` is reached
//! directly.

#![cfg_attr(docsrs, feature(doc_cfg))]
