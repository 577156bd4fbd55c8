//! Sessions: the signed cookie on every response, every socket of one cookie in one session
//! (emit, transmit, data), across two servers sharing a store, the TTL of the data, and the
//! session-end hook.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::{Client, TestServer, WAIT};
use sc_worker::sc_store::{MemoryStore, Store};
use sc_worker::{Config, ScServer, ScServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets::ClientBuilder;

const COOKIE: &str = "n/socketcluster/ssid";

/// The demo-like app: session calls as procedures.
fn app(builder: ScServerBuilder) -> ScServerBuilder {
    builder
        .auth_key("session-key")
        .procedure_sync("sid", |req| Ok(req.socket.session_id().to_owned()))
        .procedure("emit", |req| {
            let r = req.socket.session().emit("hello", req.data);
            std::future::ready(r)
        })
        .procedure("transmit", |req| {
            let r = req.socket.session().transmit("hello", req.data);
            std::future::ready(r)
        })
        .procedure("set", |req| {
            let session = req.socket.session();
            async move {
                let v: Value = req.data.unwrap().parse().unwrap();
                session
                    .set(v["key"].as_str().unwrap(), v["value"].clone())
                    .await
            }
        })
        .procedure("get", |req| {
            let session = req.socket.session();
            async move {
                let key: String = req.data.unwrap().parse().unwrap();
                session.get(&key).await
            }
        })
}

/// A server behind the session layer.
async fn start(builder: ScServerBuilder) -> TestServer {
    let (layer, handle) = builder.build_layer().expect("valid config");
    let svc = handle
        .session_layer()
        .service(layer.service(sc_worker::NotFound));
    listen(svc, handle).await
}

/// Serves `svc` on 127.0.0.1:0.
async fn listen<S, B>(svc: S, handle: sc_worker::ScHandle) -> TestServer
where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<B>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(sc_worker::serve(listener, svc, handle.clone()));
    TestServer { addr, handle }
}

/// The `name=value` of the session cookie a response set, if any.
fn set_cookie(headers: &http::HeaderMap) -> Option<String> {
    headers
        .get_all(http::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find(|v| v.starts_with(&format!("{COOKIE}=")))
        .map(str::to_owned)
}

fn pair(set_cookie: &str) -> String {
    set_cookie.split(';').next().unwrap().to_owned()
}

/// Opens a socket with `cookie` (a `name=value` pair), completes the handshake; returns the
/// client and the `Set-Cookie` of the 101.
async fn open(server: &TestServer, cookie: Option<&str>) -> (Client, Option<String>) {
    let mut b = ClientBuilder::new()
        .uri(&format!("ws://{}/socketcluster/", server.addr))
        .unwrap();
    if let Some(c) = cookie {
        b = b
            .add_header(
                http::header::COOKIE,
                http::HeaderValue::from_str(c).unwrap(),
            )
            .unwrap();
    }
    let (ws, res) = b.connect().await.unwrap();
    let mut c = Client {
        ws,
        auto_pong: false,
    };
    c.handshake(None).await;
    (c, set_cookie(res.headers()))
}

async fn sid(c: &mut Client, cid: u64) -> String {
    c.invoke("sid", Value::Null, cid).await["data"]
        .as_str()
        .unwrap()
        .to_owned()
}

/// The raw response head of `GET path` with `extra` headers.
async fn get_head(server: &TestServer, path: &str, extra: &str) -> String {
    let mut s = TcpStream::connect(server.addr).await.unwrap();
    s.write_all(
        format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n{extra}\r\n").as_bytes(),
    )
    .await
    .unwrap();
    let mut out = Vec::new();
    tokio::time::timeout(WAIT, s.read_to_end(&mut out))
        .await
        .unwrap()
        .unwrap();
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test]
async fn the_cookie_is_set_once_signed_and_a_forged_one_is_replaced() {
    let server = start(app(ScServer::builder())).await;
    // An ordinary HTTP response sets it.
    let head = get_head(&server, "/anything", "").await;
    assert!(head.starts_with("HTTP/1.1 404"), "{head}");
    let line = head
        .lines()
        .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
        .expect("a Set-Cookie");
    let set = line.split_once(':').unwrap().1.trim().to_owned();
    assert!(set.starts_with(&format!("{COOKIE}=")), "{set}");
    for attr in ["Path=/", "HttpOnly", "SameSite=Lax"] {
        assert!(set.contains(attr), "{set} lacks {attr}");
    }
    assert!(
        !set.contains("Secure"),
        "plain HTTP from an untrusted peer: {set}"
    );
    let cookie = pair(&set);
    // A socket with the cookie is in its session, and nothing new is set.
    let (mut a, again) = open(&server, Some(&cookie)).await;
    assert_eq!(again, None);
    let id = sid(&mut a, 2).await;
    assert_eq!(
        cookie.split_once('=').unwrap().1.split('.').next(),
        Some(&*id)
    );
    // A forged signature, or a guessed id with another's signature, gets a new session.
    let (name_id, sig) = cookie.rsplit_once('.').unwrap();
    // The first character changed: a canonical base64 of another tag (a changed last character
    // could be refused by the decoder before the HMAC is checked).
    let forged_sig = format!(
        "{}{}",
        if sig.starts_with('A') { 'B' } else { 'A' },
        &sig[1..]
    );
    for bad in [
        format!("{name_id}.{forged_sig}"),
        format!("{COOKIE}=AAAAAAAAAAAAAAAAAAAAAA.{sig}"),
        format!("{COOKIE}=not-a-session"),
    ] {
        let (mut c, fresh) = open(&server, Some(&bad)).await;
        let fresh = fresh.expect("a new cookie for a bad one");
        let new_id = sid(&mut c, 2).await;
        assert_ne!(new_id, id);
        assert_eq!(
            pair(&fresh).split_once('=').unwrap().1.split('.').next(),
            Some(&*new_id)
        );
    }
    // The engine.io handshake sets it too.
    let head = get_head(&server, "/engine.io/?EIO=4&transport=polling", "").await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.contains(&format!("{COOKIE}=")), "{head}");
}

#[tokio::test]
async fn secure_when_a_trusted_proxy_says_https() {
    let server = start(app(ScServer::builder().config(Config {
        trusted_proxies: vec!["127.0.0.1".into()],
        ..Config::default()
    })))
    .await;
    let head = get_head(&server, "/", "X-Forwarded-Proto: https\r\n").await;
    assert!(head.contains("; Secure"), "{head}");
    let head = get_head(&server, "/", "").await;
    assert!(!head.contains("; Secure"), "{head}");
}

#[tokio::test]
async fn tabs_of_one_session_share_emits_transmits_and_data() {
    let server = start(app(ScServer::builder())).await;
    let (mut tab1, set) = open(&server, None).await;
    let cookie = pair(&set.unwrap());
    let (mut tab2, _) = open(&server, Some(&cookie)).await;
    let (mut other, _) = open(&server, None).await;
    assert_eq!(sid(&mut tab1, 2).await, sid(&mut tab2, 2).await);
    assert_ne!(sid(&mut tab1, 3).await, sid(&mut other, 3).await);
    assert_eq!(server.handle.sessions_count(), 2);

    // emit: both tabs; transmit from tab1: tab2 only.
    tab1.invoke("emit", json!(1), 4).await;
    for tab in [&mut tab1, &mut tab2] {
        let m = tab.next_matching(|v| v["event"] == "hello").await;
        assert_eq!(m["data"], 1);
    }
    // transmit from tab1: tab2 only. Read tab1's frames in order: the reply comes, and the
    // next `hello` it sees is a later emit from tab2, not the transmit.
    tab1.send_json(json!({"event": "transmit", "data": 2, "cid": 5}))
        .await;
    let m = tab2.next_matching(|v| v["event"] == "hello").await;
    assert_eq!(m["data"], 2);
    tab2.invoke("emit", json!(3), 6).await;
    let mut after = Vec::new();
    while after.last().is_none_or(|v: &Value| v["event"] != "hello") {
        after.push(tab1.next().await);
    }
    assert_eq!(after.last().unwrap()["data"], 3, "tab1 saw {after:?}");
    assert!(after.iter().any(|v| v["rid"] == 5), "{after:?}");
    // The other session got none of it.
    other.invoke("emit", json!("mine"), 7).await;
    let m = other.next_matching(|v| v["event"] == "hello").await;
    assert_eq!(m["data"], "mine");

    // Data: set in one tab, read in the other; not in another session.
    tab1.invoke("set", json!({"key": "k", "value": {"n": 1}}), 8)
        .await;
    assert_eq!(
        tab2.invoke("get", json!("k"), 9).await["data"],
        json!({"n": 1})
    );
    assert_eq!(
        other.invoke("get", json!("k"), 10).await["data"],
        Value::Null
    );
    let all = server
        .handle
        .session(&sid(&mut tab1, 11).await)
        .get_all()
        .await
        .unwrap();
    assert_eq!(all.len(), 1);
    assert_eq!(all[0].0, "k");

    // Clients cannot reach a session's channel.
    let r = other
        .invoke(
            "#subscribe",
            json!({"channel": format!("#sc-session/{}", sid(&mut tab1, 12).await)}),
            13,
        )
        .await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
}

#[tokio::test]
async fn without_the_layer_each_socket_is_a_session_of_its_own() {
    let server = common::start(app(ScServer::builder())).await;
    let (mut c, reply) = Client::connect(&server).await;
    assert_eq!(sid(&mut c, 2).await, reply["id"].as_str().unwrap());
}

#[tokio::test]
async fn two_servers_sharing_a_store_share_sessions() {
    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    let a = start(app(ScServer::builder().store(store.clone()))).await;
    let b = start(app(ScServer::builder().store(store))).await;
    let (mut on_a, set) = open(&a, None).await;
    let cookie = pair(&set.unwrap());
    // Server b accepts a's cookie (same auth key): the same session.
    let (mut on_b, again) = open(&b, Some(&cookie)).await;
    assert_eq!(again, None);
    assert_eq!(sid(&mut on_a, 2).await, sid(&mut on_b, 2).await);
    on_a.invoke("emit", json!("x"), 3).await;
    for tab in [&mut on_a, &mut on_b] {
        assert_eq!(
            tab.next_matching(|v| v["event"] == "hello").await["data"],
            "x"
        );
    }
    on_b.invoke("transmit", json!("y"), 4).await;
    assert_eq!(
        on_a.next_matching(|v| v["event"] == "hello").await["data"],
        "y"
    );
    on_a.invoke("set", json!({"key": "k", "value": 7}), 5).await;
    assert_eq!(on_b.invoke("get", json!("k"), 6).await["data"], 7);
    // a goes away: the data is still there for b.
    drop(on_a);
    a.handle.shutdown(Duration::from_secs(1)).await;
    assert_eq!(on_b.invoke("get", json!("k"), 7).await["data"], 7);
}

#[tokio::test]
async fn data_outlives_no_socket_past_the_ttl_and_is_renewed_while_one_lives() {
    let ended = Arc::new(AtomicUsize::new(0));
    let seen = ended.clone();
    let server = start(app(ScServer::builder()
        .config(Config {
            session_timeout_s: 1,
            ..Config::default()
        })
        .on_session_end(move |_| {
            seen.fetch_add(1, Ordering::SeqCst);
        })))
    .await;
    let (mut tab1, set) = open(&server, None).await;
    let cookie = pair(&set.unwrap());
    let (tab2, _) = open(&server, Some(&cookie)).await;
    let id = sid(&mut tab1, 2).await;
    tab1.invoke("set", json!({"key": "k", "value": true}), 3)
        .await;
    // Three TTLs with a socket open: renewed, still there.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(tab1.invoke("get", json!("k"), 4).await["data"], true);
    // One tab closes: the session goes on here.
    drop(tab2);
    tokio::time::timeout(WAIT, async {
        while server.handle.clients_count() > 1 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .unwrap();
    assert_eq!(ended.load(Ordering::SeqCst), 0);
    // The last one closes: the end hook runs once; the data outlives the session's end here
    // (a reloaded page finds it), then expires after the TTL.
    drop(tab1);
    let session = server.handle.session(&id);
    tokio::time::timeout(WAIT, async {
        while ended.load(Ordering::SeqCst) == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("the end hook did not run");
    assert_eq!(
        session.get("k").await.unwrap().map(|d| d.to_value()),
        Some(json!(true)),
        "the data is kept until its TTL"
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    loop {
        if session.get("k").await.unwrap().is_none() {
            break;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "the data did not expire"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(ended.load(Ordering::SeqCst), 1);
    assert_eq!(server.handle.sessions_count(), 0);
}

/// An HTTP handler of the app (what axum's `Extension<Session>` reads): `POST /cart` puts the
/// request's session in the store.
#[derive(Clone)]
struct CartHandler;

impl<B: Send + 'static> tower_service::Service<http::Request<B>> for CartHandler {
    type Response = http::Response<String>;
    type Error = std::convert::Infallible;
    type Future = std::pin::Pin<
        Box<dyn std::future::Future<Output = Result<Self::Response, Self::Error>> + Send>,
    >;

    fn poll_ready(
        &mut self,
        _: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Result<(), Self::Error>> {
        std::task::Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let session = req.extensions().get::<sc_worker::Session>().cloned();
        Box::pin(async move {
            let body = match session {
                Some(s) => {
                    s.set("cart", json!(["apple"])).await.unwrap();
                    s.emit("cart", json!("changed")).unwrap();
                    s.id().to_owned()
                }
                None => "no session".to_owned(),
            };
            Ok(http::Response::new(body))
        })
    }
}

#[tokio::test]
async fn an_http_handler_reaches_the_session_of_its_request() {
    let (layer, handle) = app(ScServer::builder()).build_layer().unwrap();
    let svc = handle.session_layer().service(layer.service(CartHandler));
    let server = listen(svc, handle).await;
    let (mut tab, set) = open(&server, None).await;
    let cookie = pair(&set.unwrap());
    let id = sid(&mut tab, 2).await;
    let head = get_head(&server, "/cart", &format!("Cookie: {cookie}\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(
        head.ends_with(&id),
        "the handler saw the socket's session: {head}"
    );
    assert!(!head.to_ascii_lowercase().contains("set-cookie"), "{head}");
    assert_eq!(
        tab.next_matching(|v| v["event"] == "cart").await["data"],
        "changed"
    );
    assert_eq!(
        tab.invoke("get", json!("cart"), 3).await["data"],
        json!(["apple"])
    );
}

/// With the `axum` feature, a handler's argument.
#[cfg(feature = "axum")]
#[tokio::test]
async fn an_axum_handler_takes_the_session_as_an_extractor() {
    use axum::routing::get;
    async fn cart(session: sc_worker::Session) -> String {
        session.set("cart", json!(2)).await.unwrap();
        session.id().to_owned()
    }
    let (layer, handle) = app(ScServer::builder()).build_layer().unwrap();
    let router = axum::Router::new().route("/cart", get(cart));
    let svc = handle.session_layer().service(layer.service(router));
    let server = listen(svc, handle).await;
    let (mut tab, set) = open(&server, None).await;
    let cookie = pair(&set.unwrap());
    let id = sid(&mut tab, 2).await;
    let head = get_head(&server, "/cart", &format!("Cookie: {cookie}\r\n")).await;
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    assert!(head.ends_with(&id), "{head}");
    assert_eq!(tab.invoke("get", json!("cart"), 3).await["data"], 2);
    // Without the layer the extractor refuses.
    let (layer, handle) = app(ScServer::builder()).build_layer().unwrap();
    let svc = layer.service(axum::Router::new().route("/cart", get(cart)));
    let head = get_head(&listen(svc, handle).await, "/cart", "").await;
    assert!(head.starts_with("HTTP/1.1 500"), "{head}");
    assert!(
        head.ends_with("no SessionLayer in front of this handler"),
        "{head}"
    );
}
