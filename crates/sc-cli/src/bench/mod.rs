//! `socketcluster bench`: a load generator for SocketCluster-protocol servers (and, with
//! `--protocol socketio`, for socket.io servers running the same demo app; with
//! `--protocol ws-echo`, for a bare WebSocket echo server).
//!
//! Every scenario runs `--warmup`, then measures for `--duration`, prints a progress line on
//! stderr while it runs, and ends with a table (or one JSON line with `--json`). The generator
//! reports its own CPU time so a reader can tell when it, not the server, set the pace; with
//! `--server-pid` it also reports the server's CPU time per message (and memory for `conns`).

mod proto;
mod scenarios;
mod stats;
mod ws;

use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Subcommand};

use proto::Protocol;

/// Options of `socketcluster bench`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
#[command(after_help = AFTER_HELP)]
pub(crate) struct BenchArgs {
    #[command(subcommand)]
    scenario: Scenario,
}

const AFTER_HELP: &str = "\
Every scenario takes --url (default ws://127.0.0.1:8000/socketcluster/), --duration, --warmup,
--json (one JSON line instead of the table), --server-pid PID (the server's CPU time per message
from /proc, and its memory for `conns`) and --protocol socketio (socket.io servers running the
same app: `echo`/`count` with acks, `ping`, `subscribe`/`publish` with rooms) or --protocol ws-echo
(a bare WebSocket echo server, a reference with no protocol work: echo, rate and conns; an
invoke comes back as its own reply; fanout against a broadcast server that relays each
`#publish` frame to every other connection, as `ws-echo-peer --broadcast`). A progress line
goes to stderr. The generator reports its own CPU (gen_cpu_pct): near 100% means it, not the
server, set the pace. Pin the server and the generator to different cores (taskset) to compare
servers; scripts/bench does it for the project's peers.

Examples:
  socketcluster bench echo -c 100 -k 8 --duration 10s --server-pid $(pgrep -n socketcluster)
  socketcluster bench fanout -s 1000 -p 1000 --json
  socketcluster bench fanout -s 1000 -p 1000 --url ws://127.0.0.1:8000/socketcluster/ \
      --url2 ws://127.0.0.1:8001/socketcluster/ --store-pid $(pgrep -n redis-server)
  socketcluster bench conns -n max --server-pid 1234";

/// The scenarios.
#[derive(Debug, Subcommand)]
#[deny(missing_docs)]
enum Scenario {
    /// Closed loop: C connections each keep K `echo` invokes in flight; reports round trips/s
    /// and latency percentiles (p50, p99, p99.9, max)
    Echo(EchoArgs),
    /// Open loop: C connections each send R `echo` invokes/s on a fixed schedule; latency is
    /// measured from the scheduled send time, so a stalled server cannot hide its delay
    Rate(RateArgs),
    /// The original SocketCluster benchmark: C clients each transmit `ping` `{"param":"pong"}` at
    /// R/s; at the end every socket's `count` is read and checked against what it sent
    Ping(PingArgs),
    /// S subscribers on one channel, P publishes/s from another connection; reports
    /// deliveries/s, publish-to-delivery latency, lost and duplicated messages and order
    /// violations. With --url2 the subscribers are split over two servers sharing channels (a
    /// store such as Redis) and the publisher stays on --url: fan-out across nodes, or with -s 1
    /// a cross-node echo
    Fanout(FanoutArgs),
    /// Opens N connections (handshake done), holds them, and reports the server's memory per
    /// connection (`--server-pid`); source addresses are spread over 127.0.0.0/8
    Conns(ConnsArgs),
    /// N sessions of two tabs, tab 1 on --url and tab 2 (same session cookie) on --url2 (another
    /// worker sharing the store); tab 1 emits to its session R times/s (`sessionEmit`, or with
    /// --mode channel a `#publish` to a channel both tabs subscribed); reports the latency from
    /// emit to tab 2, lost messages, and the store's CPU per emit (--store-pid)
    Session(SessionArgs),
}

/// Options every scenario takes.
#[derive(Debug, Args, Clone)]
#[deny(missing_docs)]
pub(crate) struct Common {
    /// Server URL [default: ws://127.0.0.1:8000/socketcluster/, or ws://127.0.0.1:8000/socket.io/
    /// with --protocol socketio, or ws://127.0.0.1:8000/ with --protocol ws-echo]
    #[arg(long)]
    url: Option<String>,
    /// Wire protocol of the server
    #[arg(long, value_enum, default_value = "sc")]
    protocol: Protocol,
    /// How long to measure (e.g. 10s, 500ms, 1m)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    duration: Duration,
    /// Load applied before measuring starts
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Print the result as one JSON line instead of a table
    #[arg(long)]
    json: bool,
    /// Pid of the server process, to report its CPU time (and memory for `conns`) from /proc
    #[arg(long)]
    server_pid: Option<u32>,
    /// Generator threads; 1 runs everything on one thread (pin it with taskset)
    #[arg(long, default_value_t = 1)]
    threads: usize,
    /// No progress line
    #[arg(long, short)]
    quiet: bool,
}

/// Options of `bench echo`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct EchoArgs {
    /// Connections
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Invokes in flight per connection
    #[arg(long, short = 'k', default_value_t = 8)]
    in_flight: usize,
    /// Size of the echoed string in bytes
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// Sleep until replies arrive instead of busy-polling. By default the generator never
    /// sleeps while it runs (it polls its sockets), so a server on the same machine is not
    /// charged for waking it up: a client on another machine costs the server nothing of the
    /// kind. Busy-polling takes the generator its whole core
    #[arg(long)]
    no_busy_poll: bool,
    #[command(flatten)]
    common: Common,
}

/// Options of `bench rate`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct RateArgs {
    /// Connections
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// Invokes per second per connection
    #[arg(long, short = 'r', default_value_t = 1000)]
    rate: u64,
    /// Size of the echoed string in bytes
    #[arg(long, default_value_t = 16)]
    payload: usize,
    /// After the last send, how long to wait for outstanding replies
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    drain: Duration,
    #[command(flatten)]
    common: Common,
}

/// Options of `bench ping`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct PingArgs {
    /// Clients
    #[arg(long, short = 'c', default_value_t = 100)]
    connections: usize,
    /// `ping` transmits per second per client
    #[arg(long, short = 'r', default_value_t = 1000)]
    rate: u64,
    #[command(flatten)]
    common: Common,
}

/// Options of `bench fanout`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct FanoutArgs {
    /// Subscribers
    #[arg(long, short = 's', default_value_t = 1000)]
    subscribers: usize,
    /// Publishes per second (from one extra connection)
    #[arg(long, short = 'p', default_value_t = 1000)]
    publish_rate: u64,
    /// Channel name
    #[arg(long, default_value = "bench/fanout")]
    channel: String,
    /// After the last publish, how long to wait for every subscriber to receive it
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    /// A second server sharing channels with --url (e.g. another `serve --store redis://…`):
    /// the subscribers alternate between the two, the first on --url2, so it gets half of them
    /// (rounded up; with -s 1 the only subscriber is there: a cross-node echo); the publisher
    /// stays on --url
    #[arg(long)]
    url2: Option<String>,
    /// Pid of the --url2 server, to report its CPU time (server2_cpu_*)
    #[arg(long)]
    server2_pid: Option<u32>,
    /// Pid of the store both servers share (e.g. redis-server), to report its CPU time per
    /// delivery and per publish (store_cpu_*; from /proc/PID/task/*/schedstat, in ns)
    #[arg(long)]
    store_pid: Option<u32>,
    #[command(flatten)]
    common: Common,
}

/// What `bench session` sends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub(crate) enum SessionMode {
    /// `sessionEmit` of the demo app: the server emits to every socket of the session.
    Session,
    /// `#publish` to a channel of the pair that both tabs subscribed (the same fan-out by
    /// channel, for comparison).
    Channel,
}

/// Options of `bench session`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct SessionArgs {
    /// Sessions (two tabs each)
    #[arg(long, short = 's', default_value_t = 1000)]
    sessions: usize,
    /// Emits per second per session, from tab 1
    #[arg(long, short = 'r', default_value_t = 10)]
    rate: u64,
    /// The worker of tab 2 [default: --url]
    #[arg(long)]
    url2: Option<String>,
    /// What tab 1 sends
    #[arg(long, value_enum, default_value = "session")]
    mode: SessionMode,
    /// Pid of tab 2's worker, to report its CPU time
    #[arg(long)]
    server2_pid: Option<u32>,
    /// Pid of the store process, to report its CPU time per emit
    #[arg(long)]
    store_pid: Option<u32>,
    /// After the last emit, how long to wait for tab 2 to receive it
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    drain: Duration,
    #[command(flatten)]
    common: Common,
}

/// Options of `bench conns`.
#[derive(Debug, Args)]
#[deny(missing_docs)]
pub(crate) struct ConnsArgs {
    /// Connections to open; `max` opens as many as this process's open-files limit allows
    #[arg(long, short = 'n', default_value = "10000")]
    count: String,
    /// Connection attempts in progress at once
    #[arg(long, default_value_t = 200)]
    concurrency: usize,
    /// Connections per source address (127.0.0.0/8 is used when the server is on loopback); the
    /// default stays within `serve`'s per-address limits (4096 open, a burst of 2000 new)
    #[arg(long, default_value_t = 2_000)]
    per_source: usize,
    /// How long to hold the connections before reading the server's memory
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    hold: Duration,
    #[command(flatten)]
    common: Common,
}

/// Parses `10s`, `500ms`, `2m`, `1.5s` or a bare number of seconds.
fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(n) = s.strip_suffix("ms") {
        (n, 0.001)
    } else if let Some(n) = s.strip_suffix('s') {
        (n, 1.0)
    } else if let Some(n) = s.strip_suffix('m') {
        (n, 60.0)
    } else {
        (s, 1.0)
    };
    let v: f64 = num
        .trim()
        .parse()
        .map_err(|_| format!("not a duration: {s:?} (use e.g. 10s, 500ms, 2m)"))?;
    if !v.is_finite() || v < 0.0 || v * mult > 86_400.0 {
        return Err(format!("duration out of range: {s:?}"));
    }
    Ok(Duration::from_secs_f64(v * mult))
}

/// Runs `socketcluster bench`.
pub(crate) fn run(args: BenchArgs) -> ExitCode {
    let common = match &args.scenario {
        Scenario::Echo(a) => &a.common,
        Scenario::Rate(a) => &a.common,
        Scenario::Ping(a) => &a.common,
        Scenario::Fanout(a) => &a.common,
        Scenario::Conns(a) => &a.common,
        Scenario::Session(a) => &a.common,
    }
    .clone();
    let rt = if common.threads <= 1 {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(common.threads)
            .enable_all()
            .build()
    };
    let rt = match rt {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = rt.block_on(async {
        match args.scenario {
            Scenario::Echo(a) => scenarios::echo(a).await,
            Scenario::Rate(a) => scenarios::rate(a).await,
            Scenario::Ping(a) => scenarios::ping(a).await,
            Scenario::Fanout(a) => scenarios::fanout(a).await,
            Scenario::Conns(a) => scenarios::conns(a).await,
            Scenario::Session(a) => scenarios::session(a).await,
        }
    });
    // Connections still held are dropped with the runtime.
    rt.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(report) => {
            if common.json {
                crate::print_line(&report.json());
            } else {
                crate::print_line(report.table().trim_end());
            }
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
        assert!(parse_duration("x").is_err());
        assert!(parse_duration("-1s").is_err());
    }
}
