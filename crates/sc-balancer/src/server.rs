//! The balancer's listener: binding with `SO_REUSEPORT` (several balancer processes on one
//! port), TLS termination, and the HTTP/1.1 connections that feed a service.

use std::convert::Infallible;
use std::future::Future;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use sc_worker::{AddressLimits, PeerAddr};
use tokio::net::TcpListener;
use tower_service::Service;

use crate::proxy::Secure;
use crate::tls::ReloadableAcceptor;

/// How long a client has to complete its TLS handshake, and to send a request head.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Binds `addr` with `SO_REUSEADDR` and `SO_REUSEPORT`: several processes (each its own
/// listener) may bind the same port, and the kernel spreads new connections over them.
pub fn bind_reuseport(addr: SocketAddr) -> std::io::Result<TcpListener> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(4096)?;
    TcpListener::from_std(socket.into())
}

/// Options of [`serve`].
#[derive(Debug, Clone, Default)]
pub struct ServeOptions {
    /// Terminate TLS with this acceptor (its certificate can be reloaded while serving).
    pub tls: Option<ReloadableAcceptor>,
    /// TCP connections open at once from one client address; further ones are closed as soon
    /// as they are accepted. 0 = no limit.
    pub address_tcp_limit: usize,
}

/// Serves `service` on `listener` until `stop` completes: each connection is HTTP/1.1 with
/// upgrades (after TLS with [`ServeOptions::tls`]), each request carries the connection's
/// [`PeerAddr`] (and [`Secure`] over TLS) in its extensions.
pub async fn serve<S, B>(
    listener: TcpListener,
    service: S,
    options: ServeOptions,
    stop: impl Future<Output = ()>,
) where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    tokio::pin!(stop);
    let peers = AddressLimits::new(options.address_tcp_limit, 0, 0);
    let mut last_warning: Option<tokio::time::Instant> = None;
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        let (stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                if last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
                    tracing::warn!(error = %e, "accept failed");
                    last_warning = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
                continue;
            }
        };
        let Ok(slot) = peers.admit(Some(peer.ip())) else {
            tracing::debug!(%peer, "too many connections from this address: closed");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let tls = options.tls.as_ref().map(ReloadableAcceptor::acceptor);
        tokio::spawn(async move {
            let _slot = slot;
            match tls {
                None => serve_conn(TokioIo::new(stream), service, peer, false).await,
                Some(acceptor) => {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => serve_conn(TokioIo::new(tls), service, peer, true).await,
                        Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                        Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
                    }
                }
            }
        });
    }
}

async fn serve_conn<I, S, B>(io: I, service: S, peer: SocketAddr, secure: bool)
where
    I: hyper::rt::Read + hyper::rt::Write + Unpin + Send + 'static,
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let svc = TowerToHyperService::new(WithConn {
        inner: service,
        peer,
        secure,
    });
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(HANDSHAKE_TIMEOUT)
        .serve_connection(io, svc)
        .with_upgrades();
    if let Err(e) = conn.await {
        tracing::debug!(error = %e, "HTTP connection error");
    }
}

/// Puts the connection's peer (and TLS) into each request's extensions.
#[derive(Clone)]
struct WithConn<S> {
    inner: S,
    peer: SocketAddr,
    secure: bool,
}

impl<S, B> Service<Request<B>> for WithConn<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let ext = req.extensions_mut();
        ext.insert(PeerAddr(self.peer));
        if self.secure {
            ext.insert(Secure);
        }
        self.inner.call(req)
    }
}
