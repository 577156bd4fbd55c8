//! The demo app of `socketcluster serve` (greet, echo, fail, count/ping, login, whoami,
//! serverPublish, the `private/` channel rule, and the session calls: sessionId, sessionEmit,
//! sessionSet, sessionGet, and demoStart with its `rand` stream). Its contract, the behaviour of
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
struct SessionEmit<'a> {
    event: String,
    #[serde(borrow)]
    data: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct SessionSet<'a> {
    key: String,
    #[serde(borrow)]
    value: Option<&'a serde_json::value::RawValue>,
}

#[derive(Deserialize)]
struct SessionKey {
    key: String,
}

/// Marks a socket that invoked `demoStart`: it gets a `rand` event every second.
#[derive(Clone, Copy)]
struct DemoRand;

/// The demo's `rand` number of `session` for the second `t`: 0–99, the same in every process
/// (a fixed-key hash of both), so all tabs of a session see the same number whichever process
/// serves them, and other sessions see others.
fn rand_of(session: &str, t: u64) -> u64 {
    use std::hash::{Hash, Hasher};
    #[allow(deprecated)]
    let mut h = std::hash::SipHasher::new_with_keys(0x5c_5e55_1017, 0x0de_3a00);
    session.hash(&mut h);
    t.hash(&mut h);
    h.finish() % 100
}

/// Every whole second: one `rand` event `{"rand":N,"t":SECOND}` to every socket here that
/// invoked `demoStart`. Runs until the server shuts down.
async fn rand_ticker(handle: sc_worker::ScHandle) {
    let stop = handle.shutdown_signal();
    tokio::pin!(stop);
    loop {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        let next = std::time::Duration::from_secs(now.as_secs() + 1).saturating_sub(now);
        tokio::select! {
            () = &mut stop => return,
            () = tokio::time::sleep(next) => {}
        }
        let t = now.as_secs() + 1;
        for socket in handle.sockets() {
            if socket.get::<DemoRand>().is_some() {
                let n = rand_of(socket.session_id(), t);
                let _ = socket.transmit("rand", Json(serde_json::json!({ "rand": n, "t": t })));
            }
        }
    }
}

static RAND_TICKER: std::sync::OnceLock<()> = std::sync::OnceLock::new();

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
        .procedure_sync("sessionId", |req| Ok(req.socket.session_id().to_owned()))
        .procedure("sessionEmit", |req| {
            let parsed = req
                .data
                .as_ref()
                .and_then(|d| d.parse::<SessionEmit<'_>>().ok())
                .map(|e| (e.event, e.data.map(Data::from_raw)));
            std::future::ready(match parsed {
                Some((event, data)) => req.socket.session().emit(&event, data),
                None => Err(bad_request(
                    "sessionEmit requires {\"event\": string, \"data\": any}",
                )),
            })
        })
        .procedure("sessionSet", |req| {
            let parsed = req
                .data
                .as_ref()
                .and_then(|d| d.parse::<SessionSet<'_>>().ok())
                .map(|s| (s.key, s.value.map(Data::from_raw)));
            let session = req.socket.session();
            async move {
                match parsed {
                    Some((key, value)) => session.set(&key, value).await,
                    None => Err(bad_request(
                        "sessionSet requires {\"key\": string, \"value\": any}",
                    )),
                }
            }
        })
        .procedure("sessionGet", |req| {
            let key = req
                .data
                .as_ref()
                .and_then(|d| d.parse::<SessionKey>().ok())
                .map(|k| k.key);
            let session = req.socket.session();
            async move {
                match key {
                    // `null` when missing (no data at all would be `undefined` in JS).
                    Some(key) => Ok(session.get(&key).await?.unwrap_or_else(Data::null)),
                    None => Err(bad_request("sessionGet requires {\"key\": string}")),
                }
            }
        })
        .procedure_sync("demoStart", |req| {
            req.socket.insert(DemoRand);
            if RAND_TICKER.set(()).is_ok() {
                tokio::spawn(rand_ticker(req.socket.server()));
            }
            Ok(())
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

/// The demo page at `/` (this crate's `demo.html`).
const PAGE: &str = include_str!("demo.html");

/// The browser builds the demo page loads, from an npm install (`npm ci --prefix web` installs
/// them into `web/node_modules`): socketcluster-client, and engine.io-client for the page's
/// long-polling mode. Read once at startup; missing ones are answered with 404 and a hint.
#[derive(Debug, Default)]
pub(crate) struct DemoAssets {
    client: Option<String>,
    engineio: Option<String>,
    dir: std::path::PathBuf,
}

impl DemoAssets {
    pub(crate) fn load(node_modules: &std::path::Path) -> Self {
        let read = |rel: &str| std::fs::read_to_string(node_modules.join(rel)).ok();
        let assets = DemoAssets {
            client: read("socketcluster-client/socketcluster-client.min.js"),
            engineio: read("engine.io-client/dist/engine.io.js"),
            dir: node_modules.to_owned(),
        };
        if assets.client.is_none() {
            tracing::info!(
                dir = %node_modules.display(),
                "the demo page at / needs socketcluster-client's browser build: run `npm ci --prefix web`"
            );
        }
        assets
    }
}

/// The demo's HTTP side: the page at `/` with the browser builds it loads (`/demo/...`), and
/// `GET /stats`, the server's live counts as JSON
/// (`{"clients":N,"pending":N,"engineio_sessions":N,"sessions":N}`); every other request gets
/// 404.
#[derive(Debug, Clone)]
pub(crate) struct Stats {
    layer: sc_worker::ScLayer,
    handle: sc_worker::ScHandle,
    assets: Arc<DemoAssets>,
}

impl Stats {
    pub(crate) fn new(
        layer: sc_worker::ScLayer,
        handle: sc_worker::ScHandle,
        assets: Arc<DemoAssets>,
    ) -> Self {
        Stats {
            layer,
            handle,
            assets,
        }
    }
}

fn with_type(body: String, content_type: &'static str) -> http::Response<String> {
    let mut res = http::Response::new(body);
    res.headers_mut().insert(
        http::header::CONTENT_TYPE,
        http::HeaderValue::from_static(content_type),
    );
    res
}

fn not_found(body: String) -> http::Response<String> {
    let mut res = http::Response::new(body);
    *res.status_mut() = http::StatusCode::NOT_FOUND;
    res
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
        let asset = |file: &Option<String>, name: &str| match file {
            Some(js) => with_type(js.clone(), "text/javascript; charset=utf-8"),
            None => not_found(format!(
                "{name} is not installed in {}: run `npm ci --prefix web`\n",
                self.assets.dir.display()
            )),
        };
        let mut res = match (req.method(), req.uri().path()) {
            (&http::Method::GET, "/stats") => {
                let body = serde_json::json!({
                    "clients": self.handle.clients_count(),
                    "pending": self.handle.pending_clients_count(),
                    "engineio_sessions": self.layer.engineio_sessions(),
                    "sessions": self.handle.sessions_count(),
                });
                with_type(format!("{body}\n"), "application/json")
            }
            (&http::Method::GET, "/") => with_type(PAGE.to_owned(), "text/html; charset=utf-8"),
            (&http::Method::GET, "/demo/socketcluster-client.min.js") => {
                asset(&self.assets.client, "socketcluster-client")
            }
            (&http::Method::GET, "/demo/engine.io.js") => {
                asset(&self.assets.engineio, "engine.io-client")
            }
            _ => not_found("Not Found\n".to_owned()),
        };
        res.headers_mut().insert(
            http::header::CACHE_CONTROL,
            http::HeaderValue::from_static("no-store"),
        );
        std::future::ready(Ok(res))
    }
}
