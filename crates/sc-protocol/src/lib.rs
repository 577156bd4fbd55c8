//! The SocketCluster wire protocol: packet types, the frame codec, reserved events, close codes and error objects. No I/O.

#![cfg_attr(docsrs, feature(doc_cfg))]
