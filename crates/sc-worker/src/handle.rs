//! The handle to a running server ([`ScHandle`]) and its server-side subscriptions.

use std::any::Any;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use sc_protocol::{ErrorName, ScError};

use crate::config::Config;
use crate::data::{Data, IntoData};
use crate::exchange::{Sub, Subscriber};
use crate::metrics::Metrics;
use crate::published::Published;
use crate::request::HandshakeRequest;
use crate::socket::{SHUTDOWN, SHUTDOWN_REASON, ScSocket};
use crate::state::ServerInner;
use crate::transport::Transport;

/// The handle to a running server: publish, inspect sockets and [`metrics`](Self::metrics),
/// shut down. Cheap to clone.
#[derive(Clone, Debug)]
pub struct ScHandle(pub(crate) Arc<ServerInner>);

impl ScHandle {
    /// Publishes `data` to `channel` through the exchange: every subscriber gets the same
    /// `#publish` frame, encoded once.
    pub fn publish(&self, channel: &str, data: impl IntoData) -> Result<(), ScError> {
        let data = data.into_data()?;
        self.0.counters.publish();
        self.0
            .broker
            .publish(Arc::new(Published::new(channel, data)));
        Ok(())
    }

    /// Subscribes the server itself to `channel`: every publish to it (from clients or from
    /// [`publish`](Self::publish)) arrives on the returned [`Subscription`], in order, until it is
    /// dropped. A subscription that falls more than `outbound_queue` messages behind loses the
    /// newest ones.
    pub fn subscribe(&self, channel: &str) -> Subscription {
        let key = self.0.next_key.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = tokio::sync::mpsc::channel(self.0.cfg.outbound_queue);
        self.0
            .broker
            .subscribe(channel, Subscriber(Sub::Local { key, tx }));
        Subscription {
            server: self.0.clone(),
            channel: channel.into(),
            key,
            rx,
        }
    }

    /// Resolves once publishes made on other servers reach this server's subscribers of
    /// `channel`, that is once the store has confirmed the channel's subscription. Resolves at
    /// once without a store or when the channel has no local subscriber.
    pub fn subscription_ready(&self, channel: &str) -> impl Future<Output = ()> + Send + 'static {
        self.0.broker.ready(channel)
    }

    /// Runs `transport` as a socket of this server, opened by `request`, with the same handlers,
    /// middleware (but `handshake_ws`, which is HTTP's), auth, exchange and limits as a
    /// WebSocket or engine.io client: the way in for a transport of your own (see
    /// [`Transport`]). The socket starts with `extensions` ([`ScSocket::get`]) and runs on a task
    /// of its own until it closes.
    ///
    /// Fails when the server is shutting down, holds
    /// [`max_connections`](Config::max_connections) sockets, or the request's client address is
    /// over [`address_connection_limit`](Config::address_connection_limit) or
    /// [`address_connect_rate`](Config::address_connect_rate); the transport is dropped then.
    pub fn accept<T: Transport>(
        &self,
        transport: T,
        request: HandshakeRequest,
        extensions: http::Extensions,
    ) -> Result<(), ScError> {
        let server = &self.0;
        let slot = server
            .count_connection(request.client_addr)
            .map_err(|why| ScError::new(ErrorName::BadConnectionError, why.message()))?;
        tokio::spawn(crate::conn::run(
            transport,
            server.clone(),
            request,
            extensions,
            slot,
        ));
        Ok(())
    }

    /// The store given to [`ScServerBuilder::store`](crate::ScServerBuilder::store), for handlers and middleware to keep data in
    /// (sessions, rate limits, lookups); `None` without one.
    pub fn store(&self) -> Option<&Arc<dyn sc_store::Store>> {
        self.0.store.as_ref()
    }

    /// The history of `channel` (a channel a [`Config::history`](crate::Config::history) rule
    /// names): the messages after offset `after` (every one kept with `None`), at most `limit`,
    /// oldest first, each as its offset and its data's JSON text (empty for a publish without
    /// data), with the history's epoch and latest offset. For a page that shows the last
    /// messages of a channel, say. Fails for a channel without a history rule, or when the
    /// store does not answer.
    pub async fn history(
        &self,
        channel: &str,
        after: Option<u64>,
        limit: usize,
    ) -> Result<sc_store::History, sc_store::Error> {
        let (Some(limits), Some(store)) = (
            self.0.history_limits(channel),
            self.0.history_store.as_ref(),
        ) else {
            return Err(sc_store::Error::InvalidArgument(
                "no history rule names this channel",
            ));
        };
        store.history(channel, after, limit, limits).await
    }

    /// Whether the exchange shares channels through a store (see [`ScServerBuilder::store`](crate::ScServerBuilder::store)),
    /// or a [`Broker`](crate::Broker) of the app's ([`ScServerBuilder::broker`](crate::ScServerBuilder::broker)).
    pub fn has_store(&self) -> bool {
        self.0.has_store
    }

    /// Open sockets (handshake done).
    pub fn clients_count(&self) -> usize {
        self.0.clients.read().len()
    }

    /// Sockets still in their handshake.
    pub fn pending_clients_count(&self) -> usize {
        self.0
            .sockets
            .read()
            .len()
            .saturating_sub(self.clients_count())
    }

    /// The session `id` (to emit to it, or read its data, from outside a socket).
    pub fn session(&self, id: &str) -> crate::Session {
        crate::Session::new(self.0.clone(), Arc::from(id), None)
    }

    /// The tower layer that gives every request its session cookie (see
    /// [`SessionLayer`](crate::SessionLayer)); put it outside the [`ScLayer`](crate::ScLayer).
    pub fn session_layer(&self) -> crate::SessionLayer {
        crate::SessionLayer::new(self.0.clone())
    }

    /// Sessions with at least one open socket in this process.
    pub fn sessions_count(&self) -> usize {
        self.0.sessions.local_count()
    }

    /// Sockets closed since the server started (handshaking ones included): with
    /// [`clients_count`](Self::clients_count), what a process watches to notice churn, say
    /// to give memory back after many sockets left.
    pub fn closed_count(&self) -> u64 {
        self.0.closed.load(Ordering::Relaxed)
    }

    /// The open socket with id `id`.
    pub fn socket(&self, id: &str) -> Option<ScSocket> {
        self.0.clients.read().get(id).cloned()
    }

    /// Every open socket.
    pub fn sockets(&self) -> Vec<ScSocket> {
        self.0.clients.read().values().cloned().collect()
    }

    /// Local subscribers of `channel`.
    pub fn subscriber_count(&self, channel: &str) -> usize {
        self.0.broker.subscriber_count(channel)
    }

    /// The options the server runs with.
    pub fn config(&self) -> &Config {
        &self.0.cfg
    }

    /// Whether [`shutdown`](Self::shutdown) was called.
    pub fn is_shutting_down(&self) -> bool {
        self.0.shutting_down.load(Ordering::Acquire)
    }

    /// A future that resolves once shutdown begins (for an accept loop's graceful stop).
    pub fn shutdown_signal(&self) -> impl Future<Output = ()> + Send + 'static {
        let mut rx = self.0.shutdown_tx.subscribe();
        async move {
            let _ = rx.wait_for(|v| *v).await;
        }
    }

    /// Graceful shutdown: new upgrades get HTTP 503; every socket finishes the invokes it is
    /// handling and writes what is queued, then is closed with 1001 ([`SHUTDOWN`]), which makes
    /// clients reconnect (socketcluster-client after its reconnect backoff). Returns when every
    /// socket is gone or after `timeout`. The same as
    /// [`shutdown_with`](Self::shutdown_with)`(SHUTDOWN, "Server is shutting down", timeout)`.
    pub async fn shutdown(&self, timeout: Duration) {
        self.shutdown_with(SHUTDOWN, SHUTDOWN_REASON, timeout).await;
    }

    /// Graceful shutdown that closes every socket with `code` and `reason` (at most 123 bytes
    /// are sent): new upgrades and engine.io sessions get HTTP 503; every socket, WebSocket and
    /// engine.io alike, finishes the invokes it is handling (up to the ack timeout) and writes
    /// what is queued, then is closed with `code` (a socket that opens meanwhile too). Returns
    /// when every socket is gone or after `timeout`.
    ///
    /// A server that is being restarted closes with [`RESTART`](crate::RESTART) (4000), on which
    /// socketcluster-client reconnects at once instead of after its backoff:
    ///
    /// ```no_run
    /// # async fn stop(handle: sc_worker::ScHandle) {
    /// use std::time::Duration;
    /// handle
    ///     .shutdown_with(sc_worker::RESTART, "Server is restarting", Duration::from_secs(5))
    ///     .await;
    /// # }
    /// ```
    ///
    /// Use a code clients accept: 1000, 1001, or 4000 to 4999 (from 4500 on, socketcluster-client
    /// does not reconnect). A second call does not change the code of sockets already closing.
    pub async fn shutdown_with(&self, code: u16, reason: &str, timeout: Duration) {
        *self.0.shutdown_close.lock() = (code, Arc::from(reason));
        self.0.shutting_down.store(true, Ordering::Release);
        self.0.shutdown_tx.send_replace(true);
        let sockets: Vec<ScSocket> = self.0.sockets.read().values().cloned().collect();
        for s in &sockets {
            s.close_with(code, reason, true);
        }
        let deadline = tokio::time::Instant::now() + timeout;
        let all_gone = async {
            loop {
                let notified = self.0.gone.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if self.0.sockets.read().is_empty() {
                    break;
                }
                notified.await;
            }
        };
        if tokio::time::timeout_at(deadline, all_gone).await.is_err() {
            tracing::warn!("shutdown timed out with sockets still open");
        }
    }

    /// The server's counters now: sockets, messages in and out, publishes and deliveries,
    /// store operations and queue drops (see [`Metrics`]). Cheap (a few relaxed loads and a
    /// read lock of the socket table); call it as often as a status page or a supervisor
    /// needs.
    pub fn metrics(&self) -> Metrics {
        let open = self.clients_count() as u64;
        self.0.counters.snapshot(open)
    }
}

/// A server-side channel subscription made by [`ScHandle::subscribe`]; unsubscribes when dropped.
pub struct Subscription {
    server: Arc<ServerInner>,
    channel: Box<str>,
    key: u64,
    rx: tokio::sync::mpsc::Receiver<Arc<Published>>,
}

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("channel", &self.channel)
            .finish()
    }
}

impl Subscription {
    /// The channel.
    pub fn channel(&self) -> &str {
        &self.channel
    }

    /// The next message's data (`None` inside when the publish had no data); `None` when the
    /// server is gone.
    pub async fn recv(&mut self) -> Option<Option<Data>> {
        self.rx.recv().await.map(|p| p.data.clone())
    }
}

impl Drop for Subscription {
    fn drop(&mut self) {
        self.server.broker.unsubscribe(&self.channel, self.key);
    }
}

impl ScSocket {
    /// The server this socket belongs to.
    pub fn server(&self) -> ScHandle {
        let host: Arc<dyn Any + Send + Sync> = self.0.host.clone();
        match host.downcast::<ServerInner>() {
            Ok(server) => ScHandle(server),
            // Every socket is made by `conn::open_socket` with its server's state as host.
            Err(_) => unreachable!("a socket's host is its server's state"),
        }
    }
}
