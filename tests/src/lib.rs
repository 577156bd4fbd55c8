//! Cross-crate test harness: spawn servers and clusters, kill processes, drive real clients.
//!
//! [`redis`]: real `redis-server` processes on free ports, one alone ([`RedisProcess`]) or a
//! Redis Cluster of three masters ([`RedisCluster`]), killed when dropped.

// A test harness: failing loudly (a panic naming what did not happen) is its way to report.
#![allow(clippy::expect_used, clippy::panic)]

pub mod redis;

pub use redis::{RedisCluster, RedisProcess, free_port};
