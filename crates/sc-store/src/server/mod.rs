//! The store server: a single-threaded process speaking a subset of the Redis protocol (RESP2).
//!
//! Every command of the [`Store`](crate::Store) trait maps onto one Redis command, so the cluster
//! client ([`ClusterStore`](crate::ClusterStore)), `redis-cli` and `redis-benchmark` all talk to
//! it. One process runs one `current_thread` tokio runtime: the data needs no locks, and each
//! connection parses every pipelined command in its read buffer and answers them with one write.
//!
//! Supported commands: `PING ECHO QUIT RESET AUTH HELLO SELECT CLIENT CONFIG COMMAND INFO DBSIZE
//! FLUSHDB FLUSHALL SET GET DEL EXISTS EXPIRE PEXPIRE PERSIST TTL PTTL HSET HGET HGETALL HDEL
//! RPUSH LRANGE LLEN RPOP PUBLISH SUBSCRIBE UNSUBSCRIBE MULTI EXEC DISCARD`. There is no
//! command that runs code (`EVAL`, `FUNCTION` are unknown commands).
//!
//! ```no_run
//! use sc_store::server::{self, ServerConfig};
//!
//! # fn main() -> std::io::Result<()> {
//! let listener = std::net::TcpListener::bind("127.0.0.1:6380")?;
//! server::run(listener, ServerConfig::default()) // blocks: serves until the process ends
//! # }
//! ```

mod cmd;
mod conn;
pub(crate) mod resp;
mod stats;

use std::cell::RefCell;
use std::collections::HashMap;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::oneshot;

use crate::db::{Db, Hasher};

#[doc(inline)]
pub use stats::{Stats, StatsSnapshot};

/// Settings of the store server. Every limit applies per connection unless said otherwise.
#[derive(Debug, Clone)]
pub struct ServerConfig {
    /// When set, clients must send `AUTH <secret>` (or `HELLO 2 AUTH <user> <secret>`) before
    /// any other command, or get a `NOAUTH` error; until then the `unauth_*` limits and
    /// [`auth_timeout`](Self::auth_timeout) apply. Defaults to none.
    pub secret: Option<String>,
    /// Largest bulk string (key or value) accepted; a larger declared length is a protocol error
    /// and closes the connection. Defaults to 32 MiB.
    pub max_bulk_len: usize,
    /// Most arguments in one command. Defaults to 1,048,576.
    pub max_multibulk_len: usize,
    /// Longest inline (telnet-style) command line. Defaults to 64 KiB.
    pub max_inline_len: usize,
    /// Largest incomplete request buffered for one connection, and largest total size of the
    /// commands queued by one `MULTI`. Defaults to 64 MiB.
    pub max_query_buffer: usize,
    /// Most pending output per connection: pushed pub/sub messages plus replies not yet written.
    /// A subscriber above it is disconnected, like Redis's pub/sub output buffer limit. Replies
    /// to requests never pass it: the server stops reading a client's requests while its replies
    /// wait to be written. Defaults to 32 MiB.
    pub max_output_buffer: usize,
    /// A connection whose pending output makes no progress for this long is closed: this is how
    /// a client that never reads its replies is dropped. Defaults to 30 seconds.
    pub write_stall_timeout: Duration,
    /// Most simultaneous client connections (for the whole server); the next one gets an error
    /// reply and is closed. Defaults to 10,000.
    pub max_clients: usize,
    /// How often expired keys are swept (they also expire when accessed). Defaults to 100 ms.
    pub sweep_interval: Duration,
    /// With a [`secret`](Self::secret), the most arguments in one command of a connection that has
    /// not authenticated yet; more is `-ERR Protocol error: unauthenticated multibulk length` and
    /// closes the connection. Defaults to 10, as in Redis (`HELLO 2 AUTH <user> <secret>
    /// SETNAME <name>` has 6).
    pub unauth_max_multibulk_len: usize,
    /// With a secret, the largest bulk string of a connection that has not authenticated yet; a
    /// larger declared length is `-ERR Protocol error: unauthenticated bulk length` and closes the
    /// connection before its bytes are read. Defaults to 16 KiB, as in Redis.
    pub unauth_max_bulk_len: usize,
    /// With a secret, the largest incomplete request buffered for a connection that has not
    /// authenticated yet (the whole unread input of a connection that sends no complete command);
    /// more is `-ERR Protocol error: unauthenticated request too large` and closes the connection.
    /// Defaults to 64 KiB.
    pub unauth_max_query_buffer: usize,
    /// With a secret, a connection without a successful `AUTH` (or `HELLO ... AUTH`) this long
    /// after it was accepted gets `-ERR unauthenticated connection closed: ...` and is closed,
    /// whatever it sent meanwhile. Defaults to 10 seconds.
    pub auth_timeout: Duration,
    /// The server's counters: keep a clone of this `Arc` before handing the config to
    /// [`run`] to read them from another thread ([`Stats::snapshot`]). Defaults to fresh
    /// counters; a config cloned for a second server shares them (counts add up, and `keys` is
    /// the last one written).
    pub stats: Arc<Stats>,
}

impl Default for ServerConfig {
    fn default() -> Self {
        ServerConfig {
            secret: None,
            max_bulk_len: 32 << 20,
            max_multibulk_len: 1 << 20,
            max_inline_len: 64 << 10,
            max_query_buffer: 64 << 20,
            max_output_buffer: 32 << 20,
            write_stall_timeout: Duration::from_secs(30),
            max_clients: 10_000,
            sweep_interval: Duration::from_millis(100),
            unauth_max_multibulk_len: 10,
            unauth_max_bulk_len: 16 << 10,
            unauth_max_query_buffer: 64 << 10,
            auth_timeout: Duration::from_secs(10),
            stats: Arc::default(),
        }
    }
}

/// The state of one server: the data and the channel subscribers, owned by its one thread.
#[derive(Debug)]
pub(crate) struct State {
    pub(crate) db: Db,
    /// Channel histories (`SC.HISTPUB`, `SC.HISTREAD`).
    pub(crate) histories: crate::history::Histories,
    pub(crate) channels: HashMap<Bytes, Vec<Rc<conn::ConnShared>>, Hasher>,
    pub(crate) clients: usize,
    pub(crate) next_id: u64,
    /// Bytes read from all connections since the start (`INFO`'s `total_net_input_bytes`).
    pub(crate) net_input_bytes: u64,
    /// Counts not yet added to `stats` (see [`State::publish_stats`]).
    pub(crate) counts: stats::Counts,
    pub(crate) stats: Arc<Stats>,
}

impl State {
    /// Adds the counts gathered since the last call to the shared [`Stats`] and sets the number
    /// of keys: once per batch of commands, so that a command costs no atomic operation.
    pub(crate) fn publish_stats(&mut self) {
        self.stats.add(&mut self.counts, self.db.len());
    }
}

/// Serves `listener` on the calling thread until the process ends. See [`run_until`].
pub fn run(listener: std::net::TcpListener, config: ServerConfig) -> io::Result<()> {
    run_until(listener, config, std::future::pending())
}

/// Serves `listener` on the calling thread (with its own single-threaded tokio runtime) until
/// `shutdown` completes; then every connection is closed.
///
/// Call it outside any tokio runtime (for example on a dedicated thread).
pub fn run_until(
    listener: std::net::TcpListener,
    config: ServerConfig,
    shutdown: impl Future<Output = ()>,
) -> io::Result<()> {
    listener.set_nonblocking(true)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, async move {
        let listener = tokio::net::TcpListener::from_std(listener)?;
        tokio::select! {
            r = serve(listener, config) => r,
            () = shutdown => Ok(()),
        }
    })
}

async fn serve(listener: tokio::net::TcpListener, config: ServerConfig) -> io::Result<()> {
    let config = Rc::new(config);
    let state = Rc::new(RefCell::new(State {
        db: Db::default(),
        histories: crate::history::Histories::default(),
        channels: HashMap::default(),
        clients: 0,
        next_id: 1,
        net_input_bytes: 0,
        counts: stats::Counts::default(),
        stats: config.stats.clone(),
    }));
    tokio::task::spawn_local(sweep(Rc::downgrade(&state), config.sweep_interval));
    tracing::info!(addr = ?listener.local_addr().ok(), "store server listening");
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(x) => x,
            Err(e) => {
                // Out of file descriptors and the like: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        tokio::task::spawn_local(conn::serve(stream, peer, state.clone(), config.clone()));
    }
}

async fn sweep(state: std::rc::Weak<RefCell<State>>, every: Duration) {
    let mut tick = tokio::time::interval(every.max(Duration::from_millis(1)));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(state) = state.upgrade() else { return };
        loop {
            let done = match state.try_borrow_mut() {
                Ok(mut st) => {
                    let removed = st.db.sweep(1000);
                    st.histories.sweep();
                    if removed > 0 {
                        st.publish_stats();
                    }
                    removed < 1000
                }
                Err(_) => true,
            };
            if done {
                break;
            }
            tokio::task::yield_now().await;
        }
    }
}

/// A store server running on its own thread, for embedding and tests. Dropping the handle shuts
/// the server down.
#[derive(Debug)]
pub struct ServerHandle {
    addr: SocketAddr,
    stats: Arc<Stats>,
    shutdown: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<io::Result<()>>>,
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The server's counters (those of its [`ServerConfig::stats`]).
    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Stops the server, closes its connections and waits for its thread.
    pub fn shutdown(mut self) -> io::Result<()> {
        self.stop()
    }

    fn stop(&mut self) -> io::Result<()> {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        match self.thread.take().map(|t| t.join()) {
            Some(Ok(r)) => r,
            Some(Err(_)) => Err(io::Error::other("the store server thread panicked")),
            None => Ok(()),
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        let _ = self.stop();
    }
}

/// Binds `addr` and serves it on a new thread. `127.0.0.1:0` picks a free port; see
/// [`ServerHandle::local_addr`].
pub fn spawn(addr: SocketAddr, config: ServerConfig) -> io::Result<ServerHandle> {
    let listener = std::net::TcpListener::bind(addr)?;
    let addr = listener.local_addr()?;
    let stats = config.stats.clone();
    let (tx, rx) = oneshot::channel::<()>();
    let thread = std::thread::Builder::new()
        .name(format!("sc-store {addr}"))
        .spawn(move || {
            run_until(listener, config, async {
                let _ = rx.await;
            })
        })?;
    Ok(ServerHandle {
        addr,
        stats,
        shutdown: Some(tx),
        thread: Some(thread),
    })
}
