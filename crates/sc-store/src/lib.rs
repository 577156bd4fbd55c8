//! The nData-style store: a Store trait for keys with TTL, maps, lists and channel pub/sub, with in-memory, store-server and Redis backends.

#![cfg_attr(docsrs, feature(doc_cfg))]
