//! Balancer middleware: tower layers around [`Balancer`](crate::Balancer) that see every request
//! and upgrade before a worker does (the original's `MIDDLEWARE_REQUEST` and
//! `MIDDLEWARE_UPGRADE`; [`is_upgrade`](crate::is_upgrade) tells the two apart). Two are built in:
//! [`IpFilterLayer`] (allow and deny lists of CIDR blocks) and [`AddressLimitLayer`] (connections
//! open at once and new ones per second per client address). An app adds its own the same way.

use std::convert::Infallible;
use std::future::Future;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode};
use sc_worker::{AddressLimits, InvalidProxy, PeerAddr, TrustedProxies};
use tower_layer::Layer;
use tower_service::Service;

use crate::proxy::{Body, SlotCell, is_upgrade, plain};
use crate::route::sid_of;

/// The future of a middleware service: the inner service's, or a refusal made at once.
pub type Refusable = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

/// The client's address: the TCP peer of the balancer.
fn client_ip<B>(req: &Request<B>) -> Option<IpAddr> {
    req.extensions().get::<PeerAddr>().map(|p| p.0.ip())
}

/// A set of CIDR blocks (`10.0.0.0/8`, `192.168.1.7`, `fd00::/8`).
pub type IpBlocks = TrustedProxies;
/// An entry of an allow or deny list that is not an IP address or CIDR block.
pub type InvalidBlocks = InvalidProxy;

/// Allow and deny lists of client addresses: a request from a denied address, or from one
/// outside a non-empty allow list, gets 403 before any worker sees it.
#[derive(Debug, Clone)]
pub struct IpFilterLayer {
    lists: Arc<(IpBlocks, IpBlocks)>,
}

impl IpFilterLayer {
    /// `allow` (empty: every address) and `deny` lists of CIDR blocks.
    pub fn new<A, D, S1, S2>(allow: A, deny: D) -> Result<Self, InvalidBlocks>
    where
        A: IntoIterator<Item = S1>,
        D: IntoIterator<Item = S2>,
        S1: AsRef<str>,
        S2: AsRef<str>,
    {
        Ok(IpFilterLayer {
            lists: Arc::new((IpBlocks::parse(allow)?, IpBlocks::parse(deny)?)),
        })
    }

    fn admits(&self, ip: Option<IpAddr>) -> bool {
        let (allow, deny) = &*self.lists;
        match ip {
            Some(ip) => !deny.contains(ip) && (allow.is_empty() || allow.contains(ip)),
            // No address known (the service was mounted without the balancer's listener).
            None => allow.is_empty(),
        }
    }
}

impl<S> Layer<S> for IpFilterLayer {
    type Service = IpFilter<S>;

    fn layer(&self, inner: S) -> IpFilter<S> {
        IpFilter {
            inner,
            layer: self.clone(),
        }
    }
}

/// The service of [`IpFilterLayer`].
#[derive(Debug, Clone)]
pub struct IpFilter<S> {
    inner: S,
    layer: IpFilterLayer,
}

impl<S, B> Service<Request<B>> for IpFilter<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Refusable;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        if self.layer.admits(client_ip(&req)) {
            Box::pin(self.inner.call(req))
        } else {
            tracing::debug!(client = ?client_ip(&req), "refused by the IP filter");
            Box::pin(async { Ok(plain(StatusCode::FORBIDDEN, "Forbidden")) })
        }
    }
}

/// Per-client-address caps on new connections: WebSocket upgrades open at once (the place is
/// held for as long as the proxied WebSocket is open), and upgrades plus engine.io sessions
/// opened per second (a token bucket). Over a cap: 429. Requests of an engine.io session that
/// is already open are not counted.
#[derive(Debug, Clone)]
pub struct AddressLimitLayer {
    limits: Arc<AddressLimits>,
}

impl AddressLimitLayer {
    /// `limit` upgrades open at once per address (0 = none), `rate` new connections per second
    /// after a `burst` (rate 0 = none).
    pub fn new(limit: usize, rate: u32, burst: u32) -> Self {
        AddressLimitLayer {
            limits: AddressLimits::new(limit, rate, burst),
        }
    }

    /// The counts this layer keeps (shared by every service it made).
    pub fn limits(&self) -> &Arc<AddressLimits> {
        &self.limits
    }
}

impl<S> Layer<S> for AddressLimitLayer {
    type Service = AddressLimit<S>;

    fn layer(&self, inner: S) -> AddressLimit<S> {
        AddressLimit {
            inner,
            limits: self.limits.clone(),
        }
    }
}

/// The service of [`AddressLimitLayer`].
#[derive(Debug, Clone)]
pub struct AddressLimit<S> {
    inner: S,
    limits: Arc<AddressLimits>,
}

impl<S, B> Service<Request<B>> for AddressLimit<S>
where
    S: Service<Request<B>, Response = Response<Body>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Refusable;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        // An engine.io request without `sid` opens a session.
        let opens_session = req
            .uri()
            .query()
            .is_some_and(|q| q.split('&').any(|kv| kv.starts_with("EIO=")) && sid_of(q).is_none());
        let upgrade = is_upgrade(&req);
        if !opens_session && !upgrade {
            return Box::pin(self.inner.call(req));
        }
        match self.limits.admit(client_ip(&req)) {
            Ok(slot) => {
                if upgrade {
                    // Held by the tunnel; a plain request gives it back when it is answered.
                    req.extensions_mut().insert(SlotCell(Arc::new(slot)));
                }
                Box::pin(self.inner.call(req))
            }
            Err(refusal) => Box::pin(async move { Ok(plain(refusal.status(), refusal.message())) }),
        }
    }
}
