//! The commented config file that `--print-config` prints: every option with its default and
//! what it does. A test checks that every option has a comment and that the text parses back
//! to the defaults.

use std::fmt::Write;

/// The top-level options: (key, comment, example for an option that is unset by default).
const TOP: &[(&str, &str, Option<&str>)] = &[
    (
        "host",
        "Address the balancers listen on (0.0.0.0 for every interface).",
        None,
    ),
    (
        "port",
        "Port the balancers share (SO_REUSEPORT); 0 picks a free one.",
        None,
    ),
    (
        "workers",
        "Worker processes (the app's sockets); 0 = one per core.",
        None,
    ),
    (
        "stores",
        "In-memory store processes (channels and session data, sharded by key); unused with a Redis store.",
        None,
    ),
    ("balancers", "Balancer processes, all on `port`.", None),
    (
        "store",
        "embedded (the store processes above) or redis://HOST:PORT[,HOST:PORT...] (a Redis, or any master of a Redis Cluster: the others are found).",
        None,
    ),
    (
        "store_secret",
        "Secret of the store (AUTH); for embedded stores a random one is made. Prefer SC_STORE_SECRET.",
        Some("\"a long random secret\""),
    ),
    (
        "auth_key",
        "Secret that signs auth tokens, shared by every worker; random per cluster when unset (tokens then die with the master). Prefer SC_AUTH_KEY.",
        Some("\"a long random secret\""),
    ),
    (
        "worker_host",
        "Address the workers listen on and other hosts reach them at: 127.0.0.1 on one machine,\n\
         # this host's address on the network between the hosts of a deployment.",
        None,
    ),
    (
        "deployment",
        "Name of a deployment of several hosts sharing a Redis store (store = \"redis://...\"): the\n\
         # masters with the same name list their workers on Redis, and every balancer routes to the\n\
         # workers of every host (an engine.io session goes on through any host); without an\n\
         # auth_key they share the first master's. Unset: this host alone.",
        Some("\"prod\""),
    ),
    ("management_host", "Address of the management port.", None),
    (
        "management_port",
        "Management port: GET /health (JSON) and GET /metrics (Prometheus); 0 picks a free one.",
        None,
    ),
    (
        "worker_threads",
        "Threads of each worker process; 0 = one per core.",
        None,
    ),
    (
        "balancer_threads",
        "Threads of each balancer process; 0 = one per core.",
        None,
    ),
    (
        "drain_timeout_ms",
        "Milliseconds a draining process (SIGTERM, SIGUSR2) has to answer its invokes and close its sockets before it is killed.",
        None,
    ),
    (
        "restart_backoff_max_ms",
        "Longest wait before respawning a process that keeps crashing (the first respawn is immediate).",
        None,
    ),
    (
        "stable_after_ms",
        "A process that dies sooner than this after its start counts as crash looping: each such death doubles the wait before its respawn (from 100 ms).",
        None,
    ),
    (
        "start_timeout_ms",
        "Milliseconds a process has to become ready.",
        None,
    ),
    (
        "rolling_restart_pause_ms",
        "Milliseconds the rolling restart (SIGUSR2) waits after a worker is back before it drains the next one, so the clients it moved have settled.",
        None,
    ),
];

const BALANCER: &[(&str, &str)] = &[
    (
        "allow",
        "Client networks let in (CIDR, e.g. \"10.0.0.0/8\"); empty lets everyone in.",
    ),
    (
        "deny",
        "Client networks turned away (CIDR), checked before allow.",
    ),
    (
        "address_connection_limit",
        "WebSockets and polling requests open at once from one client address.",
    ),
    (
        "address_connect_rate",
        "New connections per second from one client address, sustained.",
    ),
    (
        "address_connect_burst",
        "New connections from one client address in a burst above the rate.",
    ),
    (
        "address_tcp_limit",
        "TCP connections open at once from one client address.",
    ),
    (
        "cookie_affinity",
        "Route a browser's new connections by its session cookie so its tabs share a worker; otherwise the least-loaded worker takes each.",
    ),
    (
        "health_interval_ms",
        "Milliseconds between health probes of each worker.",
    ),
];

const TLS: &[(&str, &str, &str)] = &[
    (
        "cert",
        "PEM certificate chain; with key, the balancers terminate TLS (reloaded on SIGHUP).",
        "\"/etc/socketcluster/cert.pem\"",
    ),
    (
        "key",
        "PEM private key: PKCS#8, PKCS#1 RSA, SEC1 EC, or encrypted PKCS#8 with passphrase.",
        "\"/etc/socketcluster/key.pem\"",
    ),
    (
        "passphrase",
        "Passphrase of an encrypted key (prefer SC_TLS_KEY_PASSPHRASE).",
        "\"...\"",
    ),
];

/// The workers' options, as `socketcluster serve` takes them under `[worker]`.
const WORKER: &[(&str, &str)] = &[
    (
        "path",
        "the exact path of the WebSocket endpoint (query strings allowed)",
    ),
    (
        "max_payload",
        "largest inbound message; a larger one closes the socket with 1009",
    ),
    (
        "outbound_queue",
        "frames queued for a socket before it counts as a slow consumer and is closed with 4100",
    ),
    (
        "publish_batch_ms",
        "while the worker is behind (publish_batch_above), a socket receiving publishes faster than this writes them at most once per interval, many per syscall (the first after a quiet spell goes at once); 0 writes each at once",
    ),
    (
        "publish_batch_above",
        "publishes delivered to sockets per second (the whole worker) from which publish_batch_ms may apply: only while the worker is also out of CPU (90% of its cores) and its sockets find publishes piling up between writes; otherwise every publish is written at once; 0 = always",
    ),
    (
        "handshake_timeout_ms",
        "no #handshake by then closes with 4005",
    ),
    (
        "ping_interval_ms",
        "how often the server pings ('', or #1 in protocol v1)",
    ),
    (
        "ping_timeout_ms",
        "sent in the handshake reply; no message from the client for that long closes with 4001",
    ),
    (
        "ack_timeout_ms",
        "how long a server-to-client invoke waits for its response",
    ),
    (
        "max_connections",
        "open and handshaking sockets; further upgrades get HTTP 503",
    ),
    ("allow_client_publish", "whether clients may #publish"),
    (
        "socket_channel_limit",
        "channels one socket may be subscribed to at once",
    ),
    (
        "origins",
        "allowed Origins: host:port, host:*, *:port, *:*; others get HTTP 403",
    ),
    (
        "protocol_version",
        "2: ping and pong are ''; 1: ping #1, pong #2",
    ),
    (
        "auth_default_expiry_s",
        "exp = iat + this, unless the token payload has an exp",
    ),
    (
        "websocket",
        "whether the WebSocket endpoint at path is served",
    ),
    (
        "engineio",
        "whether the engine.io endpoint at engineio_path is served (feature engineio)",
    ),
    ("engineio_path", "the engine.io endpoint's path"),
    ("engineio_ping_interval_ms", "engine.io heartbeat interval"),
    (
        "engineio_ping_timeout_ms",
        "engine.io heartbeat timeout: a session that does not answer (an abandoned long-polling client included) is reclaimed",
    ),
    (
        "engineio_max_payload",
        "largest engine.io request payload in bytes",
    ),
    (
        "http_header_timeout_ms",
        "serve closes a connection that has not sent a whole request head this long after it opened or after its last response (slow or idle clients, kept-alive connections included)",
    ),
    (
        "max_channel_name",
        "bytes of a channel name; a longer one in #subscribe or #publish is answered with InvalidActionError",
    ),
    (
        "trusted_proxies",
        "proxies (10.0.0.0/8, 127.0.0.1, ::1, fd00::/8) whose Forwarded / X-Forwarded-For headers, and PROXY protocol headers, give the client's address; from any other peer they are ignored",
    ),
    (
        "proxy_protocol",
        "serve reads a PROXY protocol (v1 or v2) header first on connections from trusted proxies (others are served as they are)",
    ),
    (
        "outbound_queue_bytes",
        "bytes queued for a socket and not yet written; a socket over it is a slow consumer (4100)",
    ),
    (
        "socket_channel_bytes",
        "total bytes of the channel names one socket is subscribed to; a #subscribe over it gets InvalidActionError",
    ),
    (
        "address_connection_limit",
        "sockets and engine.io sessions open at once from one client address (IPv6: one /64); further ones get HTTP 429; 0 = no limit",
    ),
    (
        "address_connect_rate",
        "new sockets and engine.io sessions per second from one client address, after a burst of address_connect_burst; further ones get HTTP 429; 0 = no limit",
    ),
    (
        "address_connect_burst",
        "how many new sockets one client address may open at once before address_connect_rate applies",
    ),
    (
        "address_tcp_limit",
        "serve: TCP connections open at once from one peer address that is not a trusted proxy; further ones are closed at once; 0 = no limit",
    ),
    (
        "engineio_max_sessions",
        "engine.io sessions open at once; further opens get HTTP 503",
    ),
    (
        "inbound_rate_messages",
        "messages per second one socket may send (token bucket, a burst of one second's worth); over it the socket is closed with 4429",
    ),
    (
        "inbound_rate_bytes",
        "bytes per second one socket may send, likewise",
    ),
    (
        "app_name",
        "names the session cookie, n/<app_name>/ssid, so that two apps on one domain keep their sessions apart",
    ),
    (
        "session_timeout_s",
        "how long a session's data lives in the store after the last of its sockets anywhere left (renewed four times per timeout while one lives)",
    ),
    (
        "history",
        "channels whose publishes are kept, so that a client resuming its subscription gets what it\n\
         # missed (or a #gap notice); none by default. One rule per channel name or pattern (`*` matches\n\
         # any run of characters), the first that names a channel applies; instead of this line:\n\
         # [[worker.history]]\n\
         # channel = \"chat.*\"\n\
         # max_len = 1000        # messages kept per channel\n\
         # max_age_ms = 300000   # how long each is kept",
    ),
];

/// `defaults` (the default config as a TOML table) with a comment above every option.
pub(crate) fn commented_defaults(defaults: &toml::Table) -> String {
    let mut out = String::from(
        "# socketcluster run --config FILE: the cluster on one machine. Flags and the\n\
         # environment (SC_AUTH_KEY, SC_STORE_SECRET, SC_TLS_KEY_PASSPHRASE) override this file.\n\n",
    );
    for (key, comment, example) in TOP {
        entry(&mut out, defaults, key, comment, *example);
    }
    section(
        &mut out,
        defaults,
        "balancer",
        "The balancers: the front door.",
    );
    for (key, comment) in BALANCER {
        entry(&mut out, table(defaults, "balancer"), key, comment, None);
    }
    section(
        &mut out,
        defaults,
        "tls",
        "TLS at the balancers (off unless cert and key are set).",
    );
    for (key, comment, example) in TLS {
        entry(
            &mut out,
            table(defaults, "tls"),
            key,
            comment,
            Some(example),
        );
    }
    section(
        &mut out,
        defaults,
        "worker",
        "The workers' options and limits.",
    );
    for (key, comment) in WORKER {
        entry(&mut out, table(defaults, "worker"), key, comment, None);
    }
    section(
        &mut out,
        defaults,
        "app",
        "The app's own options, read by its worker function (the demo app: demo_assets, where the\n\
         # page finds its browser builds, default \"web/node_modules\").",
    );
    out.push_str("# demo_assets = \"web/node_modules\"\n");
    out
}

fn table<'a>(t: &'a toml::Table, key: &str) -> &'a toml::Table {
    static EMPTY: std::sync::OnceLock<toml::Table> = std::sync::OnceLock::new();
    t.get(key)
        .and_then(toml::Value::as_table)
        .unwrap_or_else(|| EMPTY.get_or_init(toml::Table::new))
}

fn section(out: &mut String, _t: &toml::Table, name: &str, comment: &str) {
    let _ = write!(out, "\n# {comment}\n[{name}]\n");
}

fn entry(out: &mut String, t: &toml::Table, key: &str, comment: &str, example: Option<&str>) {
    let _ = writeln!(out, "# {comment}");
    match (t.get(key), example) {
        (Some(v), _) => {
            let _ = writeln!(out, "{key} = {v}");
        }
        (None, Some(e)) => {
            let _ = writeln!(out, "# {key} = {e}");
        }
        (None, None) => {}
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use crate::config::ClusterConfig;

    use super::*;

    #[test]
    fn the_commented_file_is_the_defaults() {
        let text = commented_defaults(&toml::Table::try_from(ClusterConfig::default()).unwrap());
        let parsed = ClusterConfig::from_toml(&text).unwrap();
        assert_eq!(
            toml::Table::try_from(parsed).unwrap(),
            toml::Table::try_from(ClusterConfig::default()).unwrap()
        );
    }

    #[test]
    fn every_option_has_a_comment() {
        let defaults = toml::Table::try_from(ClusterConfig::default()).unwrap();
        let documented = |list: &[&str], key: &str| list.contains(&key);
        let top: Vec<&str> = TOP.iter().map(|r| r.0).collect();
        for (key, value) in &defaults {
            if value.is_table() {
                let inner: Vec<&str> = match key.as_str() {
                    "balancer" => BALANCER.iter().map(|r| r.0).collect(),
                    "tls" => TLS.iter().map(|r| r.0).collect(),
                    "worker" => WORKER.iter().map(|r| r.0).collect(),
                    "app" => vec![],
                    other => panic!("section [{other}] has no comments in docs.rs"),
                };
                for k in value.as_table().unwrap().keys() {
                    assert!(
                        documented(&inner, k),
                        "[{key}] {k} has no comment in docs.rs"
                    );
                }
            } else {
                assert!(documented(&top, key), "{key} has no comment in docs.rs");
            }
        }
        // Options unset by default are documented too.
        for k in ["auth_key", "store_secret", "deployment"] {
            assert!(documented(&top, k));
        }
    }
}
