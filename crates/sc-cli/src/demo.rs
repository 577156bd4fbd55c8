//! The demo app of `socketcluster serve` (greet, echo, fail, count/ping, login, whoami,
//! serverPublish, and the `private/` channel rule). Its contract, the behaviour of
//! socketcluster-server v20 that it must match, is `docs/demo-app.md` in the repository
//! (`../../../docs/demo-app.md` from this file).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use sc_worker::{Blocked, Data, InboundKind, Json, ScError, ScServerBuilder};
use serde::Deserialize;

/// This socket's count of `ping` transmits.
#[derive(Clone, Default)]
struct PingCount(Arc<AtomicU64>);

fn bad_request(message: &str) -> ScError {
    ScError::new("BadRequest", message)
}

#[derive(Deserialize)]
struct Login {
    username: String,
}

#[derive(Deserialize)]
struct ServerPublish<'a> {
    channel: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

/// Registers the demo app's handlers on `builder`.
pub(crate) fn app(builder: ScServerBuilder) -> ScServerBuilder {
    builder
        .on_connection(|socket| {
            socket.insert(PingCount::default());
            let _ = socket.transmit("greet", "hello world");
        })
        .receiver("ping", |socket, _| {
            // Borrowed in place: no clone of the counter per ping.
            socket.with_extensions(|ext| {
                if let Some(count) = ext.get::<PingCount>() {
                    count.0.fetch_add(1, Ordering::Relaxed);
                }
            });
            std::future::ready(())
        })
        .procedure_sync("echo", |req| Ok(req.data))
        .procedure_sync("fail", |_| Err::<(), _>(bad_request("fail requested")))
        .procedure_sync("count", |req| {
            Ok(req.socket.with_extensions(|ext| {
                ext.get::<PingCount>()
                    .map_or(0, |c| c.0.load(Ordering::Relaxed))
            }))
        })
        .procedure("login", |req| {
            let result = match req.data.as_ref().and_then(|d| d.parse::<Login>().ok()) {
                Some(login) => req
                    .socket
                    .set_auth_token(serde_json::json!({ "username": login.username })),
                None => Err(bad_request("login requires {\"username\": string}")),
            };
            std::future::ready(result)
        })
        .procedure("whoami", |req| {
            let token = req.socket.auth_token();
            std::future::ready(Ok(match token {
                Some(t) => Json((*t).clone()),
                None => Json(serde_json::Value::Null),
            }))
        })
        .procedure("serverPublish", |req| {
            let parsed = req
                .data
                .as_ref()
                .and_then(|d| d.parse::<ServerPublish<'_>>().ok())
                .map(|p| (p.channel, p.data.map(Data::from_raw)));
            let result = match parsed {
                Some((channel, data)) => req.socket.server().publish(&channel, data),
                None => Err(bad_request(
                    "serverPublish requires {\"channel\": string, \"data\": any}",
                )),
            };
            std::future::ready(result)
        })
        .inbound_for(&[InboundKind::Subscribe], |action| {
            let blocked = action.name.starts_with("private/") && !action.socket.is_authenticated();
            std::future::ready(if blocked {
                Err(Blocked::error(ScError::new(
                    "ForbiddenError",
                    "private channel requires authentication",
                )))
            } else {
                Ok(action)
            })
        })
}

/// `GET /stats`: the server's live counts as JSON
/// (`{"clients":N,"pending":N,"engineio_sessions":N}`); every other request gets 404.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    layer: sc_worker::ScLayer,
    handle: sc_worker::ScHandle,
}

impl Stats {
    pub(crate) fn new(layer: sc_worker::ScLayer, handle: sc_worker::ScHandle) -> Self {
        Stats { layer, handle }
    }
}

impl<B> tower_service::Service<http::Request<B>> for Stats {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let mut res = if req.uri().path() == "/stats" && req.method() == http::Method::GET {
            let body = serde_json::json!({
                "clients": self.handle.clients_count(),
                "pending": self.handle.pending_clients_count(),
                "engineio_sessions": self.layer.engineio_sessions(),
            });
            let mut res = http::Response::new(format!("{body}\n"));
            res.headers_mut().insert(
                http::header::CONTENT_TYPE,
                http::HeaderValue::from_static("application/json"),
            );
            res
        } else {
            let mut res = http::Response::new("Not Found\n".to_owned());
            *res.status_mut() = http::StatusCode::NOT_FOUND;
            res
        };
        res.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        std::future::ready(Ok(res))
    }
}
