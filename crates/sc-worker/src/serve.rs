//! A minimal HTTP/1.1 server for a standalone [`ScService`](crate::ScService) (or any service),
//! with WebSocket upgrades and graceful stop on [`ScHandle::shutdown`].

use std::convert::Infallible;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_service::Service;

use crate::server::ScHandle;

/// Serves `service` on `listener` until `handle`'s [`shutdown`](ScHandle::shutdown) begins.
///
/// Each connection is HTTP/1.1 with upgrades. Accept errors (such as too many open files) are
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
    loop {
        let accepted = tokio::select! {
            () = &mut stop => return,
            a = listener.accept() => a,
        };
        let (stream, _) = match accepted {
            Ok(a) => a,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(std::time::Duration::from_millis(10)).await;
                continue;
            }
        };
        let _ = stream.set_nodelay(true);
        let svc = TowerToHyperService::new(service.clone());
        tokio::spawn(async move {
            let conn = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .with_upgrades();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "HTTP connection error");
            }
        });
    }
}
