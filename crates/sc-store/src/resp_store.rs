//! [`RespStore`]: the client for the store server cluster and for Redis.
//!
//! One type serves both, since the store server speaks Redis's protocol: a [`ClusterStore`]
//! lists M store processes, a [`RedisStore`] usually lists one Redis. Keys and channels are
//! sharded over the nodes by rendezvous hashing (see the crate docs). Per node there is one
//! multiplexed command connection (it reconnects with exponential backoff after a failure; the
//! command that saw the failure returns [`Error::Connection`]) and one pub/sub connection, owned
//! by a task that reconnects with backoff, re-subscribes every channel and then sends a
//! [`StoreEvent::Gap`] to every subscriber of that node.

use std::collections::HashMap;
use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use parking_lot::Mutex;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::{IntoConnectionInfo, Value};
use tokio::sync::broadcast;
use tokio::task::JoinHandle;

use crate::db::Hasher;
use crate::hash;
use crate::history::{History, HistoryLimits, Position};
use crate::pubsub::{self, Kind, PubSubSink, PubSubStream};
use crate::slot;
use crate::store::{BoxFuture, Release};
use crate::{Error, KeyTtl, Result, Store, StoreEvent, Subscription};

/// Largest per-channel buffer accepted (larger settings are lowered to it).
pub(crate) const MAX_CAPACITY: usize = 1 << 24;

/// The client of a store server cluster.
pub type ClusterStore = RespStore;
/// The client of Redis (one server, or several sharded like a store cluster).
pub type RedisStore = RespStore;

/// Settings of a [`RespStore`].
#[derive(Debug, Clone)]
pub struct RespConfig {
    /// The nodes: `host:port` or `redis://` URLs. The string is also the node's identity in the
    /// rendezvous hash, so every client must list a node the same way.
    pub nodes: Vec<String>,
    /// The secret sent with `AUTH` (the store server's `--secret`, or Redis's `requirepass`).
    /// Defaults to none.
    pub secret: Option<String>,
    /// Events buffered per channel for the slowest local subscriber before it gets a
    /// [`StoreEvent::Gap`]. Defaults to 1024; at least 1 and at most 2^24 are used.
    pub channel_capacity: usize,
    /// First delay before reconnecting; it doubles after each failed attempt. Defaults to 50 ms.
    pub reconnect_min_delay: Duration,
    /// Longest delay between reconnection attempts. Defaults to 2 s.
    pub reconnect_max_delay: Duration,
    /// How long a command waits for its reply. Defaults to 5 s.
    pub response_timeout: Duration,
    /// How long one connection attempt may take, and how long [`RespStore::connect`] may take
    /// to connect to a node and check it (all nodes are checked at once). Defaults to 2 s.
    pub connect_timeout: Duration,
    /// How often an idle pub/sub connection is checked with `PING`; a ping without a reply
    /// within `response_timeout` counts as a lost connection (and so as a gap). Defaults to 5 s.
    pub ping_interval: Duration,
}

impl RespConfig {
    /// Settings for `nodes` with every other field at its default.
    pub fn new<S: Into<String>>(nodes: impl IntoIterator<Item = S>) -> Self {
        RespConfig {
            nodes: nodes.into_iter().map(Into::into).collect(),
            secret: None,
            channel_capacity: 1024,
            reconnect_min_delay: Duration::from_millis(50),
            reconnect_max_delay: Duration::from_secs(2),
            response_timeout: Duration::from_secs(5),
            connect_timeout: Duration::from_secs(2),
            ping_interval: Duration::from_secs(5),
        }
    }

    /// Sets the secret sent with `AUTH`.
    pub fn secret(mut self, secret: impl Into<String>) -> Self {
        self.secret = Some(secret.into());
        self
    }
}

/// A [`Store`] over RESP servers: the store server cluster or Redis.
///
/// Cloning is cheap; clones share connections and subscriptions. Dropping the last clone closes
/// the connections and ends every subscription stream.
#[derive(Clone)]
pub struct RespStore {
    inner: Arc<Inner>,
}

impl fmt::Debug for RespStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let nodes: Vec<&str> = self.inner.nodes.iter().map(|n| n.id.as_str()).collect();
        f.debug_struct("RespStore").field("nodes", &nodes).finish()
    }
}

struct Inner {
    /// How this store keeps channel history: 0 not known yet, 1 the store server's
    /// `SC.HISTPUB`/`SC.HISTREAD`, 2 Redis (scripts).
    history_mode: std::sync::atomic::AtomicU8,
    response_timeout: Duration,
    nodes: Vec<Node>,
    routing: Routing,
    tasks: Vec<JoinHandle<()>>,
}

/// Which node owns a name.
enum Routing {
    /// Store processes, or Redis servers each on its own: rendezvous hashing over the nodes'
    /// seeds.
    Rendezvous(Vec<u64>),
    /// A Redis Cluster: the node serving each hash slot (indexes into `nodes`), as the cluster
    /// said at connect.
    Slots(Box<[u16]>),
}

impl Routing {
    fn owner(&self, name: &[u8]) -> usize {
        match self {
            Routing::Rendezvous(seeds) => hash::owner(seeds, name),
            Routing::Slots(table) => table
                .get(usize::from(slot::slot(name)))
                .map_or(0, |&i| usize::from(i)),
        }
    }

    fn is_cluster(&self) -> bool {
        matches!(self, Routing::Slots(_))
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        for t in &self.tasks {
            t.abort();
        }
        // Dropping the senders ends every subscription stream.
        for n in &self.nodes {
            n.pubsub.state.lock().channels.clear();
        }
    }
}

struct Node {
    id: String,
    conn: ConnectionManager,
    pubsub: Arc<PubSubNode>,
}

/// The pub/sub side of one node.
struct PubSubNode {
    /// Serialises subscribe, unsubscribe and re-subscription on this node, so that a
    /// subscription is only handed out once the server has confirmed it.
    ops: tokio::sync::Mutex<()>,
    state: Mutex<PubSubState>,
    capacity: usize,
    runtime: tokio::runtime::Handle,
    me: std::sync::Weak<PubSubNode>,
}

struct PubSubState {
    /// `None` while the connection is down.
    sink: Option<PubSubSink>,
    channels: HashMap<String, broadcast::Sender<StoreEvent>, Hasher>,
}

impl Release for PubSubNode {
    fn release(&self, channel: &str) {
        let idle = self
            .state
            .lock()
            .channels
            .get(channel)
            .is_some_and(|tx| tx.receiver_count() == 0);
        let Some(me) = self.me.upgrade().filter(|_| idle) else {
            return;
        };
        let channel = channel.to_owned();
        self.runtime.spawn(async move {
            let _ops = me.ops.lock().await;
            let sink = {
                let mut st = me.state.lock();
                if st
                    .channels
                    .get(&channel)
                    .is_none_or(|tx| tx.receiver_count() != 0)
                {
                    return;
                }
                st.channels.remove(&channel);
                st.sink.clone()
            };
            if let Some(sink) = sink
                && let Err(e) = sink.unsubscribe(&channel).await
            {
                tracing::debug!(error = %e, channel, "unsubscribe failed");
            }
        });
    }
}

fn client_for(addr: &str, config: &RespConfig) -> Result<redis::Client> {
    let url = if addr.contains("://") {
        addr.to_owned()
    } else {
        format!("redis://{addr}/")
    };
    let mut info = url.as_str().into_connection_info()?;
    if let Some(secret) = &config.secret {
        let settings = info.redis_settings().clone().set_password(secret);
        info = info.set_redis_settings(settings);
    }
    Ok(redis::Client::open(info)?)
}

fn backoff(delay: Duration, config: &RespConfig) -> Duration {
    delay
        .saturating_mul(2)
        .min(config.reconnect_max_delay)
        .max(config.reconnect_min_delay)
}

/// Where the pub/sub connection of node `client` goes.
fn pubsub_target(client: &redis::Client, kind: Kind) -> Result<pubsub::Target> {
    let info = client.get_connection_info();
    let redis::ConnectionAddr::Tcp(host, port) = info.addr() else {
        return Err(Error::InvalidArgument(
            "only redis:// (TCP) store addresses are supported",
        ));
    };
    let settings = info.redis_settings();
    Ok(pubsub::Target {
        host: host.clone(),
        port: *port,
        username: settings.username().map(str::to_owned),
        password: settings.password().map(str::to_owned),
        kind,
    })
}

/// Owns a node's pub/sub connection: delivers messages, and after a lost connection reconnects,
/// re-subscribes every channel, then tells every subscriber of the node about the gap.
async fn pubsub_task(
    node: Arc<PubSubNode>,
    target: pubsub::Target,
    mut stream: PubSubStream,
    config: RespConfig,
    id: String,
) {
    let mut ping = tokio::time::interval(config.ping_interval.max(Duration::from_millis(10)));
    ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        ping.reset();
        loop {
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { break };
                    let st = node.state.lock();
                    if let Some(tx) = st.channels.get(msg.channel()) {
                        let _ = tx.send(StoreEvent::Message(msg.payload));
                    }
                }
                _ = ping.tick() => {
                    let sink = node.state.lock().sink.clone();
                    let Some(sink) = sink else { break };
                    let pong = tokio::time::timeout(config.response_timeout, sink.ping());
                    if !matches!(pong.await, Ok(Ok(_))) {
                        break;
                    }
                }
            }
        }
        node.state.lock().sink = None;
        tracing::warn!(node = %id, "store pub/sub connection lost; reconnecting");
        let mut delay = config.reconnect_min_delay;
        loop {
            tokio::time::sleep(delay).await;
            delay = backoff(delay, &config);
            let (sink, new_stream) = match pubsub::connect(&target, config.connect_timeout).await {
                Ok(ps) => ps,
                Err(e) => {
                    tracing::debug!(node = %id, error = %e, "pub/sub reconnect failed");
                    continue;
                }
            };
            let _ops = node.ops.lock().await;
            let channels: Vec<String> = node.state.lock().channels.keys().cloned().collect();
            if !channels.is_empty() {
                match tokio::time::timeout(config.response_timeout, sink.subscribe(&channels)).await
                {
                    Ok(Ok(())) => {}
                    _ => continue,
                }
            }
            let mut st = node.state.lock();
            st.sink = Some(sink);
            for tx in st.channels.values() {
                let _ = tx.send(StoreEvent::Gap);
            }
            drop(st);
            tracing::info!(node = %id, channels = channels.len(), "store pub/sub re-subscribed");
            stream = new_stream;
            break;
        }
    }
}

/// What [`connect_node`] sets up for one node.
struct NodeParts {
    target: pubsub::Target,
    conn: ConnectionManager,
    sink: PubSubSink,
    stream: PubSubStream,
}

/// Checks that node `client` takes our credentials, on a connection of its own: connects
/// without credentials, sends `AUTH` by hand when there is a secret (so that a refusal carries
/// the store's own reply, which the client library replaces by "authentication failed"), then
/// runs `PING`, which a store requiring a secret we did not give answers with `NOAUTH`. Gives
/// back that connection, authenticated.
async fn check_node(
    client: &redis::Client,
    config: &RespConfig,
) -> Result<redis::aio::MultiplexedConnection> {
    let info = client.get_connection_info();
    let given = info.redis_settings();
    let (username, password) = (
        given.username().map(str::to_owned),
        given.password().map(str::to_owned),
    );
    let bare = redis::RedisConnectionInfo::default()
        .set_protocol(given.protocol())
        .set_skip_set_lib_name();
    let probe = redis::Client::open(info.clone().set_redis_settings(bare))?;
    let connection = redis::AsyncConnectionConfig::new()
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let mut conn = probe
        .get_multiplexed_async_connection_with_config(&connection)
        .await?;
    if let Some(password) = password {
        let mut auth = redis::cmd("AUTH");
        if let Some(username) = username {
            auth.arg(username);
        }
        let _: Value = auth.arg(password).query_async(&mut conn).await?;
    }
    let _: Value = redis::cmd("PING").query_async(&mut conn).await?;
    Ok(conn)
}

/// Sets up node `id`: checks it takes our credentials ([`check_node`]), then opens the command
/// connection and the pub/sub connection and runs an authenticated `PING` on each.
async fn connect_node(id: &str, config: &RespConfig, kind: Kind) -> Result<NodeParts> {
    let client = client_for(id, config)?;
    let target = pubsub_target(&client, kind)?;
    check_node(&client, config).await?;
    let manager_config = ConnectionManagerConfig::new()
        .set_min_delay(config.reconnect_min_delay)
        .set_max_delay(config.reconnect_max_delay)
        .set_number_of_retries(6)
        .set_connection_timeout(Some(config.connect_timeout))
        .set_response_timeout(Some(config.response_timeout));
    let mut conn = ConnectionManager::new_with_config(client.clone(), manager_config).await?;
    let _: Value = redis::cmd("PING").query_async(&mut conn).await?;
    let (sink, stream) = pubsub::connect(&target, config.connect_timeout).await?;
    sink.ping().await?;
    Ok(NodeParts {
        target,
        conn,
        sink,
        stream,
    })
}

impl RespStore {
    /// A history command: the store server's own (`native`), or on Redis, which does not know
    /// it, the equivalent `script`; which one works is learnt once. Only the command sent is
    /// built.
    async fn history_query<T: redis::FromRedisValue>(
        &self,
        channel: &str,
        native: impl FnOnce() -> Result<redis::Cmd>,
        script: impl FnOnce() -> Result<redis::Cmd>,
    ) -> Result<T> {
        use std::sync::atomic::Ordering;
        let mode = &self.inner.history_mode;
        if mode.load(Ordering::Relaxed) != HISTORY_SCRIPT {
            match self.query::<T>(channel, &native()?).await {
                Ok(v) => {
                    mode.store(HISTORY_NATIVE, Ordering::Relaxed);
                    return Ok(v);
                }
                Err(e) if unknown_command(&e) => mode.store(HISTORY_SCRIPT, Ordering::Relaxed),
                Err(e) => return Err(e),
            }
        }
        self.query(channel, &script()?).await
    }
    /// Connects to every node of `config` (all at once) and checks each: it must take our
    /// credentials and answer `PING` on both the command and the pub/sub connection, all within
    /// `connect_timeout`. Fails when a node cannot be used now: an [`Error::Node`] naming the
    /// first such node (in `config.nodes` order), whose source is an [`Error::Auth`] when the
    /// node refused our credentials (see [`Error::is_auth`]) or an [`Error::Connection`] when it
    /// could not be reached in time. Later failures are retried in the background.
    pub async fn connect(config: RespConfig) -> Result<Self> {
        if config.nodes.is_empty() {
            return Err(Error::InvalidArgument("at least one store node is needed"));
        }
        let runtime = tokio::runtime::Handle::current();
        let limit = config.connect_timeout;
        let timed_out = || {
            Error::Connection(Box::new(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                format!("no answer within {limit:?}"),
            )))
        };
        // A node of a Redis Cluster names the cluster's masters: they are the nodes.
        let seed = &config.nodes[0];
        let cluster = match tokio::time::timeout(limit, discover(seed, &config)).await {
            Ok(found) => found.map_err(|e| e.at_node(seed))?,
            Err(_) => return Err(timed_out().at_node(seed)),
        };
        let (ids, kind, routing) = match cluster {
            Some((masters, table)) => (masters, Kind::Sharded, Routing::Slots(table)),
            None => {
                let seeds = config.nodes.iter().map(|id| hash::node_seed(id)).collect();
                (
                    config.nodes.clone(),
                    Kind::Plain,
                    Routing::Rendezvous(seeds),
                )
            }
        };
        let results = futures_util::future::join_all(ids.iter().map(|id| {
            let config = &config;
            async move {
                let parts = match tokio::time::timeout(limit, connect_node(id, config, kind)).await
                {
                    Ok(parts) => parts,
                    Err(_) => Err(timed_out()),
                };
                parts.map_err(|e| e.at_node(id))
            }
        }))
        .await;
        let mut nodes = Vec::with_capacity(ids.len());
        let mut tasks = Vec::with_capacity(ids.len());
        let parts = results.into_iter().collect::<Result<Vec<_>>>()?;
        for (id, part) in ids.iter().zip(parts) {
            let pubsub = Arc::new_cyclic(|me| PubSubNode {
                ops: tokio::sync::Mutex::new(()),
                state: Mutex::new(PubSubState {
                    sink: Some(part.sink),
                    channels: HashMap::default(),
                }),
                capacity: config.channel_capacity.clamp(1, MAX_CAPACITY),
                runtime: runtime.clone(),
                me: me.clone(),
            });
            tasks.push(runtime.spawn(pubsub_task(
                pubsub.clone(),
                part.target,
                part.stream,
                config.clone(),
                id.clone(),
            )));
            nodes.push(Node {
                id: id.clone(),
                conn: part.conn,
                pubsub,
            });
        }
        if let Routing::Slots(_) = routing {
            tracing::info!(masters = ?ids, "store: a Redis Cluster; sharded pub/sub on its masters");
        }
        Ok(RespStore {
            inner: Arc::new(Inner {
                history_mode: std::sync::atomic::AtomicU8::new(HISTORY_UNKNOWN),
                response_timeout: config.response_timeout,
                nodes,
                routing,
                tasks,
            }),
        })
    }

    /// The address of the node that owns `name`, a key or a channel: as configured, or on a
    /// Redis Cluster the master serving its slot.
    pub fn node_of(&self, name: &str) -> &str {
        &self.node(name).id
    }

    /// Whether the store is a Redis Cluster (found at connect: its masters are the nodes, and
    /// channels use sharded pub/sub).
    pub fn is_redis_cluster(&self) -> bool {
        self.inner.routing.is_cluster()
    }

    fn node_index(&self, name: &[u8]) -> usize {
        // `owner` returns an index below the number of nodes, and there is at least one node.
        self.inner
            .routing
            .owner(name)
            .min(self.inner.nodes.len() - 1)
    }

    fn node(&self, name: &str) -> &Node {
        &self.inner.nodes[self.node_index(name.as_bytes())]
    }

    async fn query<T: redis::FromRedisValue>(&self, key: &str, cmd: &redis::Cmd) -> Result<T> {
        let mut conn = self.node(key).conn.clone();
        cmd.query_async(&mut conn).await.map_err(|e| {
            let e = Error::from(e);
            match e {
                Error::Reply(r) if r.starts_with("MOVED") || r.starts_with("ASK") => {
                    Error::Reply(format!(
                        "{r} (the Redis Cluster's slots moved since this process connected; \
                         it reads them again when it connects)"
                    ))
                }
                e => e,
            }
        })
    }

    /// Sends `cmds` (each with the channel or key that places it), one pipeline per node in
    /// their order, the nodes concurrently. A node whose connection failed is tried again (at
    /// most [`PIPE_RETRIES`] times, after 50, 100, 150 ms, and not once [`PIPE_RETRY_FOR`] has
    /// passed: a node that stays down fails fast) with its own pipeline only: what other nodes
    /// took is never sent twice. The first error left is returned, once every node is done.
    /// `first`, when given, heads each node's pipeline (the script that its commands run).
    async fn send_by_node<'n>(
        &self,
        first: Option<&redis::Cmd>,
        cmds: impl IntoIterator<Item = (&'n str, redis::Cmd)>,
    ) -> Result<()> {
        let mut pipes: Vec<Option<redis::Pipeline>> =
            (0..self.inner.nodes.len()).map(|_| None).collect();
        for (name, cmd) in cmds {
            if let Some(slot) = pipes.get_mut(self.node_index(name.as_bytes())) {
                slot.get_or_insert_with(|| {
                    let mut pipe = redis::pipe();
                    if let Some(first) = first {
                        pipe.add_command(first.clone()).ignore();
                    }
                    pipe
                })
                .add_command(cmd)
                .ignore();
            }
        }
        let sends = pipes
            .into_iter()
            .zip(self.inner.nodes.iter())
            .filter_map(|(pipe, node)| pipe.map(|p| (p, node)))
            .map(|(pipe, node)| async move {
                let mut tries = 0;
                let started = tokio::time::Instant::now();
                loop {
                    let mut conn = node.conn.clone();
                    match pipe.query_async::<()>(&mut conn).await.map_err(Error::from) {
                        Err(e)
                            if e.is_connection()
                                && tries < PIPE_RETRIES
                                && started.elapsed() < PIPE_RETRY_FOR =>
                        {
                            tries += 1;
                            tokio::time::sleep(PIPE_RETRY_DELAY * tries).await;
                        }
                        r => return r.map_err(|e| e.at_node(&node.id)),
                    }
                }
            });
        let mut first = None;
        for r in futures_util::future::join_all(sends).await {
            if let Err(e) = r {
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    /// `PUBLISH`, or on a Redis Cluster `SPUBLISH` (a channel's messages stay on its shard).
    fn publish_command(&self) -> &'static str {
        if self.inner.routing.is_cluster() {
            "SPUBLISH"
        } else {
            "PUBLISH"
        }
    }
}

/// Asks node `seed` whether it belongs to a Redis Cluster (after checking it takes our
/// credentials): if so, the cluster's masters (as `host:port`, or as URLs like the seed's when
/// it is one) and the index of the master serving each slot; `None` for a Redis without
/// cluster support or a store process.
async fn discover(seed: &str, config: &RespConfig) -> Result<Option<(Vec<String>, Box<[u16]>)>> {
    let client = client_for(seed, config)?;
    let mut conn = check_node(&client, config).await?;
    let slots: Value = match redis::cmd("CLUSTER")
        .arg("SLOTS")
        .query_async(&mut conn)
        .await
    {
        Ok(v) => v,
        // "cluster support disabled" (Redis), "unknown command" (a store process).
        Err(e) if e.kind() == redis::ErrorKind::Server(redis::ServerErrorKind::ResponseError) => {
            return Ok(None);
        }
        Err(e) => return Err(e.into()),
    };
    let redis::ConnectionAddr::Tcp(seed_host, _) = client.get_connection_info().addr() else {
        return Ok(None);
    };
    parse_cluster_slots(slots, seed, seed_host).map(Some)
}

/// A `CLUSTER SLOTS` answer as the masters and the slot table of [`discover`].
fn parse_cluster_slots(
    slots: Value,
    seed: &str,
    seed_host: &str,
) -> Result<(Vec<String>, Box<[u16]>)> {
    let bad = || Error::Reply("malformed CLUSTER SLOTS reply".to_owned());
    let Value::Array(ranges) = slots else {
        return Err(bad());
    };
    let mut masters: Vec<String> = Vec::new();
    let mut table = vec![u16::MAX; slot::SLOTS].into_boxed_slice();
    for range in ranges {
        let Value::Array(fields) = range else {
            return Err(bad());
        };
        let mut it = fields.into_iter();
        let start: usize =
            redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let end: usize = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let Some(Value::Array(master)) = it.next() else {
            return Err(bad());
        };
        let mut m = master.into_iter();
        let host: String = redis::from_redis_value(m.next().ok_or_else(bad)?).map_err(|_| bad())?;
        let port: u16 = redis::from_redis_value(m.next().ok_or_else(bad)?).map_err(|_| bad())?;
        // An empty host (or `?`) means the node's own address is unknown to it: the seed's.
        let host = if host.is_empty() || host == "?" {
            seed_host.to_owned()
        } else {
            host
        };
        let id = like_seed(seed, &host, port);
        let index = match masters.iter().position(|m| *m == id) {
            Some(i) => i,
            None => {
                masters.push(id);
                masters.len() - 1
            }
        };
        let index = u16::try_from(index).map_err(|_| bad())?;
        if start > end || end >= slot::SLOTS {
            return Err(bad());
        }
        table[start..=end].fill(index);
    }
    if let Some(free) = table.iter().position(|&i| i == u16::MAX) {
        return Err(Error::Reply(format!(
            "the Redis Cluster serves no master for slot {free} (is it still being set up?)"
        )));
    }
    Ok((masters, table))
}

/// `host:port` written as the seed is: a bare address, or the seed's URL (scheme, credentials,
/// database) with this address.
fn like_seed(seed: &str, host: &str, port: u16) -> String {
    let addr = if host.contains(':') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    };
    let Some((scheme, rest)) = seed.split_once("://") else {
        return addr;
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    let credentials = authority.rfind('@').map_or("", |at| &authority[..=at]);
    format!("{scheme}://{credentials}{addr}{path}")
}

/// Further tries of a node's pipeline of publishes after its connection failed, and the step
/// of their backoff.
const PIPE_RETRIES: u32 = 3;
const PIPE_RETRY_DELAY: Duration = Duration::from_millis(50);
const PIPE_RETRY_FOR: Duration = Duration::from_secs(1);

const HISTORY_UNKNOWN: u8 = 0;
const HISTORY_NATIVE: u8 = 1;
const HISTORY_SCRIPT: u8 = 2;

/// Redis: records a message and publishes its envelope, in one step. KEYS: the channel's
/// history hash (`e` epoch, `n` latest offset, `a` max age in ms) and its stream (entries with
/// the id `0-<offset>`, fields `d` data and `t` time in ms). ARGV: channel, max length, max age
/// in ms, message, an epoch to start with when the channel has no history, the publish command
/// (`PUBLISH`, or `SPUBLISH` on a Redis Cluster: the keys are in the channel's slot).
const HISTPUB_SCRIPT: &str = r"
local e = redis.call('HGET', KEYS[1], 'e')
if not e then
  e = ARGV[5]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', e)
end
local n = redis.call('HINCRBY', KEYS[1], 'n', 1)
redis.call('HSET', KEYS[1], 'a', ARGV[3])
local t = redis.call('TIME')
local ms = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('XADD', KEYS[2], 'MAXLEN', ARGV[2], '0-' .. n, 'd', ARGV[4], 't', ms)
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('PEXPIRE', KEYS[2], ARGV[3])
redis.call(ARGV[6], ARGV[1], '#' .. n .. ':' .. e .. ':' .. ARGV[4])
return {n, e}
";

/// Redis: reads a channel's history (the keys of [`HISTPUB_SCRIPT`]); ARGV: the offset to
/// read after (`-`: all kept), the most records, an epoch to start when there is no history and
/// how long (ms) to keep that empty history.
/// Answers as `SC.HISTREAD` does: epoch, latest, complete (1/0), then offset and data pairs.
const HISTREAD_SCRIPT: &str = r"
local h = redis.call('HMGET', KEYS[1], 'e', 'n', 'a')
local from = 0
if ARGV[1] ~= '-' then from = tonumber(ARGV[1]) end
if not h[1] then
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'e', ARGV[3], 'n', 0, 'a', ARGV[4])
  redis.call('PEXPIRE', KEYS[1], ARGV[4])
  if from == 0 then return {ARGV[3], 0, 1} end
  return {ARGV[3], 0, 0}
end
local latest = tonumber(h[2])
local age = tonumber(h[3])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
-- Entries are in time order: drop the expired ones from the front, a batch at a time, up to
-- the first that is still young.
local first = latest + 1
while true do
  local batch = redis.call('XRANGE', KEYS[2], '-', '+', 'COUNT', 100)
  local young = nil
  for _, r in ipairs(batch) do
    if now - tonumber(r[2][4]) >= age then
      redis.call('XDEL', KEYS[2], r[1])
    else
      young = tonumber(string.sub(r[1], 3))
      break
    end
  end
  if young then first = young break end
  if #batch < 100 then break end
end
local out = {h[1], latest, 0}
local limit = tonumber(ARGV[2])
if limit > 0 and from < latest then
  for _, r in ipairs(redis.call('XRANGE', KEYS[2], '0-' .. (from + 1), '+', 'COUNT', limit)) do
    out[#out + 1] = tonumber(string.sub(r[1], 3))
    out[#out + 1] = r[2][2]
  end
end
if from <= latest and (ARGV[1] == '-' or from + 1 >= first) then out[3] = 1 end
return out
";

/// How a recorded publish is sent: the store server's own `SC.HISTPUB`, or on Redis
/// [`HISTPUB_SCRIPT`], whole (`EVAL`) or by its hash (`EVALSHA`, in a pipeline that loads the
/// script first: see [`script_load`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum HistPub {
    Native,
    Eval,
    EvalSha,
}

/// A recorded publish of `message` to `channel`, sent as `how` says.
fn histpub_cmd(
    channel: &str,
    message: &[u8],
    limits: HistoryLimits,
    publish: &str,
    how: HistPub,
) -> Result<redis::Cmd> {
    let max_age = millis(limits.max_age)?;
    let max_len = limits.max_len.max(1);
    let mut cmd;
    if how == HistPub::Native {
        cmd = redis::cmd("SC.HISTPUB");
        cmd.arg(channel).arg(max_len).arg(max_age).arg(message);
        return Ok(cmd);
    }
    let (hash, stream) = history_keys(channel, publish == "SPUBLISH")?;
    if how == HistPub::EvalSha {
        cmd = redis::cmd("EVALSHA");
        cmd.arg(histpub_sha());
    } else {
        cmd = redis::cmd("EVAL");
        cmd.arg(HISTPUB_SCRIPT);
    }
    cmd.arg(2)
        .arg(hash)
        .arg(stream)
        .arg(channel)
        .arg(max_len)
        .arg(max_age)
        .arg(message)
        .arg(crate::history::new_epoch())
        .arg(publish);
    Ok(cmd)
}

/// The SHA1 of [`HISTPUB_SCRIPT`], in hex, as Redis names a loaded script.
fn histpub_sha() -> &'static str {
    static SHA: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    SHA.get_or_init(|| sha1_smol::Sha1::from(HISTPUB_SCRIPT).digest().to_string())
}

/// `SCRIPT LOAD` of [`HISTPUB_SCRIPT`]: sent first in each node's pipeline of `EVALSHA`s, so
/// the script is there for them even on a Redis that restarted (and lost its scripts) since the
/// last batch. The script's text then crosses once per batch, not once per publish.
fn script_load() -> redis::Cmd {
    let mut cmd = redis::cmd("SCRIPT");
    cmd.arg("LOAD").arg(HISTPUB_SCRIPT);
    cmd
}

/// The keys of a channel's history on Redis: its hash and its stream, both with the hash tag
/// that puts them in the channel's own slot (the channel's hash tag when it has one, else its
/// name), so that on a Redis Cluster the script that records a publish runs where the channel
/// is published. A name with a `}` outside a hash tag cannot be written as such a tag: on a
/// Redis Cluster (`cluster`) its history is refused.
fn history_keys(channel: &str, cluster: bool) -> Result<(String, String)> {
    let part = slot::hashed_part(channel.as_bytes());
    if part.len() < channel.len() {
        // A hash tag: ASCII braces around it, so its bounds are character boundaries.
        let tag = String::from_utf8_lossy(part);
        return Ok((
            format!("sc:hist:{{{tag}}}:{channel}"),
            format!("sc:hist-s:{{{tag}}}:{channel}"),
        ));
    }
    if cluster && channel.contains('}') {
        return Err(Error::InvalidArgument(
            "on a Redis Cluster, a channel with history cannot have `}` in its name outside a \
             `{hash tag}`",
        ));
    }
    Ok((
        format!("sc:hist:{{{channel}}}"),
        format!("sc:hist-s:{{{channel}}}"),
    ))
}

/// Whether `e` says the server does not know the command (Redis, for `SC.HISTPUB`).
fn unknown_command(e: &Error) -> bool {
    matches!(e, Error::Reply(r) if r.contains("unknown command"))
}

/// A `SC.HISTREAD` (or script) answer as a [`History`].
fn parse_history(v: Value) -> Result<History> {
    let bad = || Error::Reply("malformed history reply".to_owned());
    let Value::Array(items) = v else {
        return Err(bad());
    };
    let mut it = items.into_iter();
    let epoch: String = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let latest: u64 = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let complete: i64 = redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
    let mut records = Vec::new();
    while let Some(o) = it.next() {
        let offset: u64 = redis::from_redis_value(o).map_err(|_| bad())?;
        let data: Vec<u8> =
            redis::from_redis_value(it.next().ok_or_else(bad)?).map_err(|_| bad())?;
        records.push((offset, Bytes::from(data)));
    }
    Ok(History {
        epoch,
        latest,
        records,
        complete: complete == 1,
    })
}

fn millis(ttl: Duration) -> Result<u64> {
    if ttl.is_zero() {
        return Err(Error::InvalidArgument("a TTL must be at least 1 ms"));
    }
    Ok(u64::try_from(ttl.as_millis()).unwrap_or(u64::MAX).max(1))
}

fn bytes(v: Option<Vec<u8>>) -> Option<Bytes> {
    v.map(Bytes::from)
}

impl Store for RespStore {
    fn shards(&self) -> usize {
        self.inner.nodes.len()
    }

    fn shard_of(&self, name: &str) -> usize {
        self.node_index(name.as_bytes())
    }

    fn set<'a>(
        &'a self,
        key: &'a str,
        value: Bytes,
        ttl: Option<Duration>,
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let mut cmd = redis::cmd("SET");
            cmd.arg(key).arg(value.as_ref());
            if let Some(ttl) = ttl {
                cmd.arg("PX").arg(millis(ttl)?);
            }
            let _: Value = self.query(key, &cmd).await?;
            Ok(())
        })
    }

    fn get<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { Ok(bytes(self.query(key, redis::cmd("GET").arg(key)).await?)) })
    }

    fn remove<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move { Ok(self.query::<i64>(key, redis::cmd("DEL").arg(key)).await? > 0) })
    }

    fn has<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            Ok(self
                .query::<i64>(key, redis::cmd("EXISTS").arg(key))
                .await?
                > 0)
        })
    }

    fn expire<'a>(&'a self, key: &'a str, ttl: Duration) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let ms = millis(ttl)?;
            Ok(self
                .query::<i64>(key, redis::cmd("PEXPIRE").arg(key).arg(ms))
                .await?
                > 0)
        })
    }

    fn persist<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            Ok(self
                .query::<i64>(key, redis::cmd("PERSIST").arg(key))
                .await?
                > 0)
        })
    }

    fn ttl<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<KeyTtl>> {
        Box::pin(async move {
            let ms: i64 = self.query(key, redis::cmd("PTTL").arg(key)).await?;
            Ok(match ms {
                -2 => KeyTtl::Missing,
                ms if ms < 0 => KeyTtl::Persistent,
                ms => KeyTtl::Expires(Duration::from_millis(ms.unsigned_abs())),
            })
        })
    }

    fn map_set<'a>(
        &'a self,
        key: &'a str,
        field: &'a str,
        value: Bytes,
    ) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            let cmd = redis::cmd("HSET")
                .arg(key)
                .arg(field)
                .arg(value.as_ref())
                .clone();
            Ok(self.query::<i64>(key, &cmd).await? > 0)
        })
    }

    fn map_get<'a>(&'a self, key: &'a str, field: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move {
            Ok(bytes(
                self.query(key, redis::cmd("HGET").arg(key).arg(field))
                    .await?,
            ))
        })
    }

    fn map_get_all<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Vec<(String, Bytes)>>> {
        Box::pin(async move {
            let all: Vec<(Vec<u8>, Vec<u8>)> =
                self.query(key, redis::cmd("HGETALL").arg(key)).await?;
            Ok(all
                .into_iter()
                .map(|(k, v)| (String::from_utf8_lossy(&k).into_owned(), Bytes::from(v)))
                .collect())
        })
    }

    fn map_remove<'a>(&'a self, key: &'a str, field: &'a str) -> BoxFuture<'a, Result<bool>> {
        Box::pin(async move {
            Ok(self
                .query::<i64>(key, redis::cmd("HDEL").arg(key).arg(field))
                .await?
                > 0)
        })
    }

    fn list_add<'a>(&'a self, key: &'a str, value: Bytes) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            let cmd = redis::cmd("RPUSH").arg(key).arg(value.as_ref()).clone();
            Ok(self.query::<u64>(key, &cmd).await?.saturating_sub(1))
        })
    }

    fn list_concat<'a>(&'a self, key: &'a str, values: Vec<Bytes>) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move {
            if values.is_empty() {
                return self.list_count(key).await;
            }
            let mut cmd = redis::cmd("RPUSH");
            cmd.arg(key);
            for v in &values {
                cmd.arg(v.as_ref());
            }
            self.query(key, &cmd).await
        })
    }

    fn list_range<'a>(
        &'a self,
        key: &'a str,
        start: i64,
        stop: i64,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move {
            let items: Vec<Vec<u8>> = self
                .query(key, redis::cmd("LRANGE").arg(key).arg(start).arg(stop))
                .await?;
            Ok(items.into_iter().map(Bytes::from).collect())
        })
    }

    fn list_count<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<u64>> {
        Box::pin(async move { self.query(key, redis::cmd("LLEN").arg(key)).await })
    }

    fn list_pop<'a>(&'a self, key: &'a str) -> BoxFuture<'a, Result<Option<Bytes>>> {
        Box::pin(async move { Ok(bytes(self.query(key, redis::cmd("RPOP").arg(key)).await?)) })
    }

    fn list_splice<'a>(
        &'a self,
        key: &'a str,
        index: u64,
        count: u64,
        items: Vec<Bytes>,
    ) -> BoxFuture<'a, Result<Vec<Bytes>>> {
        Box::pin(async move {
            let mut conn = self.node(key).conn.clone();
            let (mut list, ttl): (Vec<Vec<u8>>, i64) = redis::pipe()
                .cmd("LRANGE")
                .arg(key)
                .arg(0)
                .arg(-1)
                .cmd("PTTL")
                .arg(key)
                .query_async(&mut conn)
                .await?;
            let index = usize::try_from(index).unwrap_or(usize::MAX).min(list.len());
            let end = index
                .saturating_add(usize::try_from(count).unwrap_or(usize::MAX))
                .min(list.len());
            let removed: Vec<Bytes> = list
                .splice(index..end, items.iter().map(|b| b.to_vec()))
                .map(Bytes::from)
                .collect();
            let mut pipe = redis::pipe();
            pipe.atomic().cmd("DEL").arg(key).ignore();
            if !list.is_empty() {
                pipe.cmd("RPUSH").arg(key).arg(&list).ignore();
                if ttl > 0 {
                    pipe.cmd("PEXPIRE").arg(key).arg(ttl).ignore();
                }
            }
            let _: Value = pipe.query_async(&mut conn).await?;
            Ok(removed)
        })
    }

    fn publish<'a>(&'a self, channel: &'a str, message: Bytes) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let cmd = redis::cmd(self.publish_command())
                .arg(channel)
                .arg(message.as_ref())
                .clone();
            let _: Value = self.query(channel, &cmd).await?;
            Ok(())
        })
    }

    fn publish_recorded<'a>(
        &'a self,
        channel: &'a str,
        message: Bytes,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<Position>> {
        Box::pin(async move {
            let publish = self.publish_command();
            let cmd = |how| histpub_cmd(channel, &message, limits, publish, how);
            let (offset, epoch): (u64, String) = self
                .history_query(channel, || cmd(HistPub::Native), || cmd(HistPub::Eval))
                .await?;
            Ok(Position { offset, epoch })
        })
    }

    fn publish_recorded_many<'a>(
        &'a self,
        messages: &'a [(Arc<str>, Bytes, HistoryLimits)],
    ) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            use std::sync::atomic::Ordering;
            let mode = &self.inner.history_mode;
            let mut rest = messages;
            // Until the store's kind is known, one at a time: the first answer tells.
            while mode.load(Ordering::Relaxed) == HISTORY_UNKNOWN {
                let Some(((channel, message, limits), tail)) = rest.split_first() else {
                    return Ok(());
                };
                self.publish_recorded(channel, message.clone(), *limits)
                    .await?;
                rest = tail;
            }
            let (how, first) = if mode.load(Ordering::Relaxed) == HISTORY_SCRIPT {
                (HistPub::EvalSha, Some(script_load()))
            } else {
                (HistPub::Native, None)
            };
            let cmds = rest
                .iter()
                .map(|(channel, message, limits)| {
                    let cmd = histpub_cmd(channel, message, *limits, self.publish_command(), how)?;
                    Ok((&**channel, cmd))
                })
                .collect::<Result<Vec<_>>>()?;
            self.send_by_node(first.as_ref(), cmds).await
        })
    }

    fn history<'a>(
        &'a self,
        channel: &'a str,
        after: Option<u64>,
        limit: usize,
        limits: HistoryLimits,
    ) -> BoxFuture<'a, Result<History>> {
        Box::pin(async move {
            let max_age = millis(limits.max_age)?;
            let after = after.map_or_else(|| "-".to_owned(), |a| a.to_string());
            let native = || {
                let mut cmd = redis::cmd("SC.HISTREAD");
                cmd.arg(channel)
                    .arg(&after)
                    .arg(limit)
                    .arg(limits.max_len.max(1))
                    .arg(max_age);
                Ok(cmd)
            };
            let script = || {
                let (hash, stream) = history_keys(channel, self.inner.routing.is_cluster())?;
                let mut cmd = redis::cmd("EVAL");
                cmd.arg(HISTREAD_SCRIPT)
                    .arg(2)
                    .arg(hash)
                    .arg(stream)
                    .arg(&after)
                    .arg(limit)
                    .arg(crate::history::new_epoch())
                    .arg(max_age);
                Ok(cmd)
            };
            parse_history(self.history_query(channel, native, script).await?)
        })
    }

    fn publish_many<'a>(&'a self, messages: &'a [(Arc<str>, Bytes)]) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let cmds = messages.iter().map(|(channel, message)| {
                let mut cmd = redis::cmd(self.publish_command());
                cmd.arg(&**channel).arg(message.as_ref());
                (&**channel, cmd)
            });
            self.send_by_node(None, cmds).await
        })
    }

    fn subscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<Subscription>> {
        Box::pin(async move {
            let node = &self.node(channel).pubsub;
            let _ops = node.ops.lock().await;
            let (rx, sink) = {
                let mut st = node.state.lock();
                if let Some(tx) = st.channels.get(channel) {
                    (tx.subscribe(), None)
                } else {
                    let (tx, rx) = broadcast::channel(node.capacity);
                    st.channels.insert(channel.to_owned(), tx);
                    (rx, st.sink.clone())
                }
            };
            // When the connection is being replaced, the re-subscription covers this channel
            // and the subscriber then gets a Gap.
            if let Some(sink) = sink {
                let failed = match tokio::time::timeout(
                    self.inner.response_timeout,
                    sink.subscribe(&[channel]),
                )
                .await
                {
                    Ok(Ok(())) => None,
                    Ok(Err(e)) if e.is_connection() => None,
                    Ok(Err(e)) => Some(e),
                    Err(elapsed) => Some(Error::Connection(Box::new(elapsed))),
                };
                if let Some(e) = failed {
                    drop(rx);
                    let mut st = node.state.lock();
                    if st
                        .channels
                        .get(channel)
                        .is_some_and(|tx| tx.receiver_count() == 0)
                    {
                        st.channels.remove(channel);
                    }
                    return Err(e);
                }
            }
            let owner: Arc<dyn Release> = node.clone();
            Ok(Subscription::new(channel.to_owned(), rx, &owner))
        })
    }

    fn unsubscribe<'a>(&'a self, channel: &'a str) -> BoxFuture<'a, Result<()>> {
        Box::pin(async move {
            let node = &self.node(channel).pubsub;
            let _ops = node.ops.lock().await;
            let sink = {
                let mut st = node.state.lock();
                if st.channels.remove(channel).is_none() {
                    return Ok(());
                }
                st.sink.clone()
            };
            if let Some(sink) = sink {
                sink.unsubscribe(channel).await?;
            }
            Ok(())
        })
    }
}
