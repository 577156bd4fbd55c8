//! A balancer of an app's own: [`sc_balancer::Balancer`] wrapped in the built-in IP filter and
//! in a layer written here, [`Firewall`], which works at both stages of the original's
//! balancer middleware: requests (`MIDDLEWARE_REQUEST`: paths under `/internal/` are not
//! served to the outside, 404) and upgrades (`MIDDLEWARE_UPGRADE`: a WebSocket whose `Origin` is
//! not one of the app's pages is refused, 403). Nothing refused reaches a worker.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};

use http::{Request, Response, StatusCode, header};
use sc_balancer::{Balancer, Body, IpFilter, IpFilterLayer, Refusable, WorkerSet, is_upgrade};
use tower_layer::Layer;
use tower_service::Service;

/// The app's firewall layer.
#[derive(Debug, Clone)]
pub struct FirewallLayer {
    origins: Arc<Vec<String>>,
}

impl<S> Layer<S> for FirewallLayer {
    type Service = Firewall<S>;

    fn layer(&self, inner: S) -> Firewall<S> {
        Firewall {
            inner,
            origins: self.origins.clone(),
        }
    }
}

/// The service of [`FirewallLayer`].
#[derive(Debug, Clone)]
pub struct Firewall<S> {
    inner: S,
    origins: Arc<Vec<String>>,
}

fn refuse(status: StatusCode) -> Refusable {
    Box::pin(async move {
        let mut r = Response::new(Body::default());
        *r.status_mut() = status;
        Ok(r)
    })
}

impl<S, B> Service<Request<B>> for Firewall<S>
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

    fn call(&mut self, req: Request<B>) -> Refusable {
        if req.uri().path().starts_with("/internal/") {
            return refuse(StatusCode::NOT_FOUND);
        }
        if is_upgrade(&req) {
            let origin = req
                .headers()
                .get(header::ORIGIN)
                .and_then(|v| v.to_str().ok());
            if !origin.is_some_and(|o| self.origins.iter().any(|a| a == o)) {
                return refuse(StatusCode::FORBIDDEN);
            }
        }
        Box::pin(self.inner.call(req))
    }
}

/// The front door: the IP filter (the documentation range 192.0.2.0/24 denied, as an example),
/// then the firewall, then the balancer over `workers`.
pub fn front_door(
    workers: WorkerSet,
    origins: &[&str],
) -> Result<IpFilter<Firewall<Balancer>>, sc_balancer::InvalidBlocks> {
    let firewall = FirewallLayer {
        origins: Arc::new(origins.iter().map(|o| (*o).to_owned()).collect()),
    };
    Ok(IpFilterLayer::new(Vec::<String>::new(), ["192.0.2.0/24"])?
        .layer(firewall.layer(Balancer::new(workers))))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::SocketAddr;
    use std::time::Duration;

    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::{TcpListener, TcpStream};

    use super::*;

    const WAIT: Duration = Duration::from_secs(5);

    async fn worker() -> (SocketAddr, sc_worker::ScHandle) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (layer, handle) = sc_worker::ScServer::builder().build_layer().unwrap();
        tokio::spawn(sc_worker::serve(
            listener,
            layer.service(sc_worker::NotFound),
            handle.clone(),
        ));
        (addr, handle)
    }

    /// The status line's code of a raw request.
    async fn status(addr: SocketAddr, head: &str) -> u16 {
        let mut s = TcpStream::connect(addr).await.unwrap();
        s.write_all(head.as_bytes()).await.unwrap();
        let mut buf = vec![0u8; 1024];
        let mut got = Vec::new();
        while !got.windows(4).any(|w| w == b"\r\n\r\n") {
            let n = tokio::time::timeout(WAIT, s.read(&mut buf))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed before a response");
            got.extend_from_slice(&buf[..n]);
        }
        let text = String::from_utf8_lossy(&got).into_owned();
        text.split(' ').nth(1).unwrap().parse().unwrap()
    }

    fn upgrade(origin: &str) -> String {
        format!(
            "GET /socketcluster/ HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
             Origin: {origin}\r\n\r\n"
        )
    }

    #[tokio::test]
    async fn the_firewall_refuses_before_the_worker_and_passes_the_rest() {
        let (w, handle) = worker().await;
        let service = front_door(
            WorkerSet::new([w.to_string()]).unwrap(),
            &["https://app.example"],
        )
        .unwrap();
        let listener = sc_balancer::bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
        let b = listener.local_addr().unwrap();
        tokio::spawn(sc_balancer::serve(
            listener,
            service,
            Default::default(),
            std::future::pending(),
        ));
        // Request stage.
        let internal = "GET /internal/metrics HTTP/1.1\r\nHost: x\r\n\r\n";
        assert_eq!(status(b, internal).await, 404);
        // Upgrade stage: a foreign origin never reaches the worker.
        assert_eq!(status(b, &upgrade("https://evil.example")).await, 403);
        assert_eq!(handle.clients_count(), 0);
        // The app's own origin is proxied.
        assert_eq!(status(b, &upgrade("https://app.example")).await, 101);
    }
}
