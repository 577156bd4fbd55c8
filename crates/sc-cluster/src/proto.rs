//! The line protocol between the master and a child over the child's stdin and stdout.
//!
//! Master → child (stdin): the first line is the child's [`ChildSpec`] as JSON; then commands,
//! one per line: `stop` (drain and exit), and for balancers `add ADDR` / `remove ADDR` (a worker
//! that is ready, or about to go). End of input means the master is gone: the child exits at
//! once, so no process outlives its master.
//!
//! Child → master (stdout): `ready ADDR` once it serves, then `stats {JSON}` every second (the
//! counters the management port exports); a balancer answers each `add`/`remove` with `done …`
//! once its routing changed. Logs go to stderr, which the master prefixes with the
//! child's role and id.

use std::net::SocketAddr;

use serde::{Deserialize, Serialize};

use crate::config::ClusterConfig;

/// The environment variable that makes a process a child, and says which: `worker`, `store` or
/// `balancer`. The rest comes on stdin.
pub(crate) const ROLE_ENV: &str = "SC_CLUSTER_ROLE";

/// The three kinds of child process.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// An in-memory store process (channels, session data).
    Store,
    /// A worker process: the app's sockets.
    Worker,
    /// A balancer process: the front door.
    Balancer,
}

impl Role {
    /// `store`, `worker` or `balancer`.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Store => "store",
            Role::Worker => "worker",
            Role::Balancer => "balancer",
        }
    }

    pub(crate) fn parse(s: &str) -> Option<Role> {
        match s {
            "store" => Some(Role::Store),
            "worker" => Some(Role::Worker),
            "balancer" => Some(Role::Balancer),
            _ => None,
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// What a child needs to know, sent by the master as the first line of its stdin.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ChildSpec {
    pub(crate) role: Role,
    pub(crate) id: usize,
    /// Where this child listens.
    pub(crate) addr: SocketAddr,
    /// The cluster's options, secrets resolved.
    pub(crate) config: ClusterConfig,
    /// The token signing key every worker shares.
    pub(crate) auth_key: String,
    /// The store's secret (AUTH), if any.
    pub(crate) store_secret: Option<String>,
    /// The store nodes workers connect to (`HOST:PORT` of store processes, or `redis://` URLs).
    pub(crate) store_nodes: Vec<String>,
    /// The workers' addresses (for balancers).
    pub(crate) workers: Vec<SocketAddr>,
}

/// A command from the master.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    /// Drain and exit.
    Stop,
    /// Route to this worker (balancers).
    Add(String),
    /// Stop routing new traffic to this worker (balancers).
    Remove(String),
    /// Read the TLS certificate and key again (balancers; the master got SIGHUP).
    Reload,
}

impl Command {
    pub(crate) fn parse(line: &str) -> Option<Command> {
        let line = line.trim();
        match line.split_once(' ') {
            None if line == "stop" => Some(Command::Stop),
            None if line == "reload" => Some(Command::Reload),
            Some(("add", a)) => Some(Command::Add(a.trim().to_owned())),
            Some(("remove", a)) => Some(Command::Remove(a.trim().to_owned())),
            _ => None,
        }
    }

    pub(crate) fn line(&self) -> String {
        match self {
            Command::Stop => "stop\n".to_owned(),
            Command::Reload => "reload\n".to_owned(),
            Command::Add(a) => format!("add {a}\n"),
            Command::Remove(a) => format!("remove {a}\n"),
        }
    }
}

/// A line from a child.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Report {
    /// It serves at this address.
    Ready(String),
    /// Its counters and gauges, by exported name.
    Stats(Vec<(String, u64)>),
    /// A command was carried out (balancers: `done add ADDR`, `done remove ADDR`).
    Done,
}

impl Report {
    pub(crate) fn parse(line: &str) -> Option<Report> {
        if let Some(addr) = line.strip_prefix("ready ") {
            return Some(Report::Ready(addr.trim().to_owned()));
        }
        if line.starts_with("done ") {
            return Some(Report::Done);
        }
        let json = line.strip_prefix("stats ")?;
        let map: std::collections::BTreeMap<String, u64> = serde_json::from_str(json).ok()?;
        Some(Report::Stats(map.into_iter().collect()))
    }
}

/// Writes one line to stdout (the master reads it) and flushes.
pub(crate) fn say(line: &str) {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_round_trip() {
        for c in [
            Command::Stop,
            Command::Reload,
            Command::Add("127.0.0.1:1".into()),
            Command::Remove("[::1]:2".into()),
        ] {
            assert_eq!(Command::parse(&c.line()), Some(c));
        }
        assert_eq!(Command::parse("reboot"), None);
        assert_eq!(Command::parse(""), None);
    }

    #[test]
    fn reports_parse() {
        assert_eq!(
            Report::parse("ready 127.0.0.1:4000"),
            Some(Report::Ready("127.0.0.1:4000".into()))
        );
        assert_eq!(
            Report::parse(r#"stats {"b":2,"a":1}"#),
            Some(Report::Stats(vec![("a".into(), 1), ("b".into(), 2)]))
        );
        assert_eq!(Report::parse("done remove 127.0.0.1:1"), Some(Report::Done));
        assert_eq!(Report::parse("stats {nope"), None);
        assert_eq!(Report::parse("hello"), None);
    }
}
