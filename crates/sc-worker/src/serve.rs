//! A minimal HTTP/1.1 server for a standalone [`ScService`](crate::ScService) (or any service),
//! with WebSocket upgrades and graceful stop on [`ScHandle::shutdown`].

use std::convert::Infallible;
use std::net::SocketAddr;
use std::task::{Context, Poll};
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::handle::ScHandle;
use crate::limits::{AddrSlot, AddressLimits};
use crate::request::{ClientAddr, PeerAddr};

/// How long a trusted proxy has to send its PROXY protocol header.
const PROXY_HEADER_TIMEOUT: Duration = Duration::from_secs(5);

/// Serves `service` on `listener` until `handle`'s [`shutdown`](ScHandle::shutdown) begins.
///
/// Each connection is HTTP/1.1 with upgrades; one that has not sent a whole request head
/// [`http_header_timeout_ms`](crate::Config::http_header_timeout_ms) after it opened or after its
/// last response (a slow, idle or kept-alive client) is closed. Every request carries the connection's
/// [`PeerAddr`] in its extensions, and, with
/// [`proxy_protocol`](crate::Config::proxy_protocol) on, the [`ClientAddr`] a trusted proxy gave
/// in its PROXY protocol header (a connection from a trusted proxy without a valid header is
/// dropped). A peer that is not a trusted proxy may hold
/// [`address_tcp_limit`](crate::Config::address_tcp_limit) connections at once; further ones
/// are closed as soon as they are accepted. Accept errors (such as too many open files) are
/// logged and the loop goes on.
pub async fn serve<S, B>(listener: TcpListener, service: S, handle: ScHandle)
where
    S: Service<Request<Incoming>, Response = Response<B>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: hyper::body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let stop = handle.shutdown_signal();
    tokio::pin!(stop);
    let proxy_protocol = handle.config().proxy_protocol;
    let mut failed = 0u64;
    let mut last_warning = None;
    let peers = AddressLimits::new(handle.config().address_tcp_limit, 0, 0);
    let header_timeout = Duration::from_millis(handle.config().http_header_timeout_ms);
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        let (mut stream, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file handles, say: warn at most once a second, with the count.
                failed += 1;
                if last_warning
                    .is_none_or(|t: tokio::time::Instant| t.elapsed() >= Duration::from_secs(1))
                {
                    tracing::warn!(error = %e, failures = failed, "accept failed");
                    failed = 0;
                    last_warning = Some(tokio::time::Instant::now());
                }
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let trusted = handle.0.trusted.contains(peer.ip());
        // A trusted proxy carries many clients: their addresses are counted per socket.
        let slot = if trusted {
            AddrSlot::none()
        } else {
            match peers.admit(Some(peer.ip())) {
                Ok(slot) => slot,
                Err(_) => {
                    tracing::debug!(%peer, "too many connections from this address: closed");
                    continue;
                }
            }
        };
        let _ = stream.set_nodelay(true);
        let service = service.clone();
        let proxied = proxy_protocol && trusted;
        tokio::spawn(async move {
            let _slot = slot;
            let mut client = None;
            if proxied {
                match crate::client_addr::read_proxy_header(&mut stream, PROXY_HEADER_TIMEOUT).await
                {
                    Ok(source) => client = source.map(|a| a.ip()),
                    Err(e) => {
                        tracing::debug!(%peer, error = %e, "bad PROXY protocol header: connection dropped");
                        return;
                    }
                }
            }
            let svc = TowerToHyperService::new(WithAddr {
                inner: service,
                peer,
                client,
            });
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(header_timeout)
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection error");
            }
        });
    }
}

/// Puts the connection's addresses into each request's extensions.
#[derive(Clone)]
struct WithAddr<S> {
    inner: S,
    peer: SocketAddr,
    /// From a PROXY protocol header.
    client: Option<std::net::IpAddr>,
}

impl<S, B> Service<Request<B>> for WithAddr<S>
where
    S: Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    #[inline]
    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let ext = req.extensions_mut();
        ext.insert(PeerAddr(self.peer));
        if let Some(ip) = self.client {
            ext.insert(ClientAddr(ip));
        }
        self.inner.call(req)
    }
}
