//! The balancer in front of real workers (sc-worker servers on 127.0.0.1): WebSockets and
//! engine.io through it, the client's address, routing of engine.io sessions across balancer
//! processes, a worker that refuses connections, a worker that crashes, and the built-in layers.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use sc_balancer::{
    AddressLimitLayer, Balancer, BalancerMetrics, IpFilterLayer, ServeOptions, WorkerSet,
    bind_reuseport, serve,
};
use sc_worker::{Config, ScServer, ScServerBuilder};
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_websockets::{ClientBuilder, MaybeTlsStream, Message, WebSocketStream};
use tower_layer::Layer;

const WAIT: Duration = Duration::from_secs(5);

/// A worker's app: `whoami` answers the worker's port and the client's address.
fn app(port: u16) -> ScServerBuilder {
    let config = Config {
        trusted_proxies: vec!["127.0.0.1".to_owned()],
        ..Config::default()
    };
    ScServer::builder()
        .config(config)
        .procedure("whoami", move |req| async move {
            Ok(json!({
                "worker": port,
                "client": req.socket.client_addr().map(|a| a.to_string()),
            }))
        })
}

/// A worker on its own runtime and thread; dropping the returned sender crashes it: the
/// runtime is dropped with every connection task, so its sockets close with no close frame,
/// as the sockets of a killed process do.
fn worker_on_own_runtime() -> (SocketAddr, tokio::sync::oneshot::Sender<()>) {
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (crash_tx, crash_rx) = tokio::sync::oneshot::channel::<()>();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            addr_tx.send(worker().await).unwrap();
            let _ = crash_rx.await;
        });
        drop(rt);
    });
    (addr_rx.recv().unwrap(), crash_tx)
}

/// A worker on the current runtime.
async fn worker() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (layer, handle) = app(addr.port()).build_layer().unwrap();
    tokio::spawn(sc_worker::serve(
        listener,
        layer.service(sc_worker::NotFound),
        handle,
    ));
    addr
}

/// A balancer over `workers` on a port of its own.
async fn balancer(workers: &[SocketAddr]) -> (SocketAddr, WorkerSet) {
    let set = WorkerSet::new(workers.iter().map(ToString::to_string)).unwrap();
    let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        Balancer::new(set.clone()),
        ServeOptions::default(),
        std::future::pending(),
    ));
    (addr, set)
}

/// Serves `service` (a balancer, in layers or not) on a port of its own.
fn serve_on_port<S>(service: S) -> SocketAddr
where
    S: tower_service::Service<
            http::Request<hyper::body::Incoming>,
            Response = http::Response<sc_balancer::Body>,
            Error = std::convert::Infallible,
        > + Clone
        + Send
        + 'static,
    S::Future: Send + 'static,
{
    let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(serve(
        listener,
        service,
        ServeOptions::default(),
        std::future::pending(),
    ));
    addr
}

/// An address where nothing listens: connecting is refused.
async fn dead_port() -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    l.local_addr().unwrap()
}

/// Waits for the close frame that ends `ws`; its code and reason.
async fn close_of(ws: &mut Ws) -> (u16, String) {
    loop {
        let m = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match m {
            Some(Ok(m)) if m.is_close() => {
                let (code, reason) = m.as_close().unwrap();
                return (u16::from(code), reason.to_owned());
            }
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    }
}

/// Opens an engine.io session (polling) through `b`; its session id.
async fn open_eio_session(b: SocketAddr) -> String {
    let (status, open) = http(b, "GET", "/engine.io/?EIO=4&transport=polling", "").await;
    assert_eq!(status, 200, "{open}");
    let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
    open["sid"].as_str().unwrap().to_owned()
}

const SESSION_UNKNOWN: &str = r#"{"code":1,"message":"Session ID unknown"}"#;

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn connect(addr: SocketAddr, headers: &[(&'static str, &str)]) -> Ws {
    let mut b = ClientBuilder::new()
        .uri(&format!("ws://{addr}/socketcluster/"))
        .unwrap();
    for (k, v) in headers {
        b = b
            .add_header(
                http::HeaderName::from_static(k),
                http::HeaderValue::from_str(v).unwrap(),
            )
            .unwrap();
    }
    let (mut ws, _) = tokio::time::timeout(WAIT, b.connect())
        .await
        .unwrap()
        .unwrap();
    call(&mut ws, "#handshake", json!({"authToken": null}), 1).await;
    ws
}

/// Sends an invoke and returns its reply (answering pings on the way).
async fn call(ws: &mut Ws, event: &str, data: Value, cid: u64) -> Value {
    let frame = json!({"event": event, "data": data, "cid": cid}).to_string();
    ws.send(Message::text(frame)).await.unwrap();
    loop {
        let m = tokio::time::timeout(WAIT, ws.next())
            .await
            .expect("a reply in time")
            .expect("the connection open")
            .unwrap();
        let Some(t) = m.as_text() else { continue };
        if t.is_empty() {
            ws.send(Message::text(String::new())).await.unwrap();
            continue;
        }
        let v: Value = serde_json::from_str(t).unwrap();
        if v["rid"] == cid {
            return v;
        }
    }
}

/// One HTTP/1.1 request on a new connection; the status and the body.
async fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    let mut s = TcpStream::connect(addr).await.unwrap();
    let req = format!(
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nContent-Type: text/plain;charset=UTF-8\r\n\
         Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = String::new();
    tokio::time::timeout(WAIT, s.read_to_string(&mut out))
        .await
        .unwrap()
        .unwrap();
    let status = out.split(' ').nth(1).unwrap().parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    (status, body)
}

#[tokio::test]
async fn websocket_through_the_balancer_carries_the_clients_address_not_a_forged_one() {
    let w = worker().await;
    let (b, _) = balancer(&[w]).await;
    let mut ws = connect(
        b,
        &[("x-forwarded-for", "6.6.6.6"), ("forwarded", "for=6.6.6.7")],
    )
    .await;
    let who = call(&mut ws, "whoami", Value::Null, 2).await;
    assert_eq!(who["data"]["worker"], w.port());
    assert_eq!(who["data"]["client"], "127.0.0.1", "{who}");
}

#[tokio::test]
async fn new_connections_spread_over_live_workers_and_skip_one_that_refuses() {
    let (w1, w2) = (worker().await, worker().await);
    // A port with nothing listening: connecting is refused.
    let dead = {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        l.local_addr().unwrap()
    };
    let (b, set) = balancer(&[dead, w1, w2]).await;
    let mut seen = std::collections::HashMap::new();
    let mut open = Vec::new();
    for i in 0..8 {
        let mut ws = connect(b, &[]).await;
        let who = call(&mut ws, "whoami", Value::Null, 2 + i).await;
        *seen
            .entry(who["data"]["worker"].as_u64().unwrap())
            .or_insert(0) += 1;
        open.push(ws);
    }
    assert_eq!(seen.len(), 2, "both live workers used: {seen:?}");
    assert_eq!(
        seen[&u64::from(w1.port())],
        4,
        "least-loaded spreads evenly: {seen:?}"
    );
    let dead_worker = set
        .workers()
        .into_iter()
        .find(|w| w.socket_addr() == dead)
        .unwrap();
    assert!(!dead_worker.is_healthy());
}

/// A worker dying with connections in its backlog: the kernel completed them, then they are
/// closed before any answer. A new WebSocket or a request without a body goes to another worker.
#[tokio::test]
async fn a_connection_lost_before_the_workers_answer_is_retried_on_another_worker() {
    let dying = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let dying_addr = dying.local_addr().unwrap();
    let lost = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let counter = lost.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = dying.accept().await {
            // Reads the request head, then goes away without a word.
            let mut buf = [0u8; 1024];
            let _ = s.read(&mut buf).await;
            counter.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            drop(s);
        }
    });
    let w = worker().await;
    let (b, _) = balancer(&[dying_addr, w]).await;
    for i in 0..4 {
        let mut ws = connect(b, &[]).await;
        let who = call(&mut ws, "whoami", Value::Null, 2 + i).await;
        assert_eq!(who["data"]["worker"], w.port());
        let (status, body) = http(b, "GET", "/engine.io/?EIO=4&transport=polling", "").await;
        assert_eq!(status, 200, "{body}");
    }
    assert!(
        lost.load(std::sync::atomic::Ordering::Relaxed) > 0,
        "the dying worker was tried"
    );
}

#[tokio::test]
async fn a_crashed_worker_closes_its_clients_with_4000() {
    let (w, crash) = worker_on_own_runtime();
    let (b, _) = balancer(&[w]).await;
    let mut ws = connect(b, &[]).await;
    assert_eq!(
        call(&mut ws, "whoami", Value::Null, 2).await["data"]["worker"],
        w.port()
    );
    drop(crash);
    let close = loop {
        let m = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
        match m {
            Some(Ok(m)) if m.is_close() => break m,
            Some(Ok(_)) => {}
            other => panic!("expected a close frame, got {other:?}"),
        }
    };
    let (code, reason) = close.as_close().unwrap();
    assert_eq!(u16::from(code), 4000);
    assert_eq!(reason, "worker lost");
}

#[tokio::test]
async fn an_engineio_session_routes_to_its_worker_through_any_balancer() {
    let (w1, w2) = (worker().await, worker().await);
    let (a, _) = balancer(&[w1, w2]).await;
    let (b, _) = balancer(&[w1, w2]).await;
    for i in 0..10 {
        // Open on balancer A.
        let (status, open) = http(a, "GET", "/engine.io/?EIO=4&transport=polling", "").await;
        assert_eq!(status, 200, "{open}");
        let open: Value = serde_json::from_str(open.strip_prefix('0').unwrap()).unwrap();
        let sid = open["sid"].as_str().unwrap();
        assert!(sid.len() == 16 + 1 + 8, "tagged sid: {sid}");
        // Every later request goes through balancer B (or A, alternately).
        let via = if i % 2 == 0 { b } else { a };
        let q = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");
        let hs = json!({"event": "#handshake", "data": {"authToken": null}, "cid": 1});
        let (status, body) = http(via, "POST", &q, &format!("4{hs}")).await;
        assert_eq!((status, body.as_str()), (200, "ok"));
        let (status, body) = http(via, "GET", &q, "").await;
        assert_eq!(status, 200, "{body}");
        assert!(
            body.contains("{\"rid\":1,\"data\":{\"id\""),
            "the handshake reply: {body}"
        );
    }
    // A session id no balancer handed out.
    let (status, body) = http(
        b,
        "GET",
        "/engine.io/?EIO=4&transport=polling&sid=AAAAAAAAAAAAAAAA",
        "",
    )
    .await;
    assert_eq!(
        (status, body.as_str()),
        (400, r#"{"code":1,"message":"Session ID unknown"}"#)
    );
}

#[tokio::test]
async fn ip_filter_and_address_limits() {
    let w = worker().await;
    let set = WorkerSet::new([w.to_string()]).unwrap();
    // Denied: 403 before any worker sees it.
    let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
    let denied = listener.local_addr().unwrap();
    let svc = IpFilterLayer::new(Vec::<String>::new(), ["127.0.0.0/8"])
        .unwrap()
        .layer(Balancer::new(set.clone()));
    tokio::spawn(serve(
        listener,
        svc,
        ServeOptions::default(),
        std::future::pending(),
    ));
    assert_eq!(http(denied, "GET", "/", "").await.0, 403);
    // One WebSocket at once per address.
    let listener = bind_reuseport("127.0.0.1:0".parse().unwrap()).unwrap();
    let limited = listener.local_addr().unwrap();
    let layer = AddressLimitLayer::new(1, 0, 0);
    let limits = layer.limits().clone();
    let svc = layer.layer(Balancer::new(set));
    tokio::spawn(serve(
        listener,
        svc,
        ServeOptions::default(),
        std::future::pending(),
    ));
    let ws = connect(limited, &[]).await;
    let second = ClientBuilder::new()
        .uri(&format!("ws://{limited}/socketcluster/"))
        .unwrap()
        .connect()
        .await;
    assert!(
        second.is_err(),
        "a second WebSocket over the limit is refused"
    );
    let (status, _) = http(limited, "GET", "/", "").await;
    assert_eq!(
        status, 404,
        "plain requests are not counted (the worker answers)"
    );
    // The place is given back once the tunnel closes.
    let released = limits.released();
    drop(ws);
    tokio::time::timeout(WAIT, released)
        .await
        .expect("the place was not given back");
    ClientBuilder::new()
        .uri(&format!("ws://{limited}/socketcluster/"))
        .unwrap()
        .connect()
        .await
        .expect("a WebSocket once the place is back");
}

#[tokio::test]
async fn a_worker_added_at_run_time_takes_a_burst_until_loads_are_even() {
    let (w1, w2) = (worker().await, worker().await);
    let (b, set) = balancer(&[w1]).await;
    let mut open = Vec::new();
    for i in 0..10 {
        let mut ws = connect(b, &[]).await;
        assert_eq!(
            call(&mut ws, "whoami", Value::Null, 2 + i).await["data"]["worker"],
            w1.port()
        );
        open.push(ws);
    }
    set.add(&w2.to_string()).unwrap();
    let burst = futures_util::future::join_all((0..30).map(|i| async move {
        let mut ws = connect(b, &[]).await;
        let who = call(&mut ws, "whoami", Value::Null, 2 + i).await;
        (ws, who["data"]["worker"].as_u64().unwrap())
    }))
    .await;
    let on_w2 = burst
        .iter()
        .filter(|(_, w)| *w == u64::from(w2.port()))
        .count();
    // Each connection counts from the moment its worker is chosen, so connects still in flight
    // are seen by the next choice: the new worker takes 10 to catch up, then they alternate.
    assert!(
        (18..=22).contains(&on_w2),
        "{on_w2} of 30 on the added worker"
    );
}

#[tokio::test]
async fn a_worker_removed_then_added_again_under_a_live_tunnel() {
    let (w1, crash) = worker_on_own_runtime();
    let w2 = worker().await;
    let set = WorkerSet::new([w1.to_string()]).unwrap();
    let balancer = Balancer::new(set.clone());
    let metrics = balancer.metrics_handle();
    let b = serve_on_port(balancer);
    let tag = set.workers()[0].tag().to_owned();
    // A WebSocket and an engine.io session on w1.
    let mut ws = connect(b, &[]).await;
    assert_eq!(
        call(&mut ws, "whoami", Value::Null, 2).await["data"]["worker"],
        w1.port()
    );
    let sid = open_eio_session(b).await;
    assert!(sid.ends_with(&format!(".{tag}")), "{sid}");
    let q = format!("/engine.io/?EIO=4&transport=polling&sid={sid}");

    // The master takes w1 out before restarting it.
    set.add(&w2.to_string()).unwrap();
    assert!(set.remove(&w1.to_string()));
    // The open tunnel is left alone.
    assert_eq!(
        call(&mut ws, "whoami", Value::Null, 3).await["data"]["worker"],
        w1.port()
    );
    // New connections go elsewhere; the session's requests get engine.io's 400.
    let mut others = Vec::new();
    for i in 0..3 {
        let mut other = connect(b, &[]).await;
        assert_eq!(
            call(&mut other, "whoami", Value::Null, 2 + i).await["data"]["worker"],
            w2.port()
        );
        others.push(other);
    }
    assert_eq!(
        http(b, "GET", &q, "").await,
        (400, SESSION_UNKNOWN.to_owned())
    );
    let fresh = open_eio_session(b).await;
    assert!(!fresh.ends_with(&tag), "{fresh}");

    // Added again at the same address: the same tag, healthy at once, its session routed to it.
    let again = set.add(&w1.to_string()).unwrap();
    assert_eq!(again.tag(), tag);
    assert!(again.is_healthy());
    let hs = json!({"event": "#handshake", "data": {"authToken": null}, "cid": 1});
    assert_eq!(
        http(b, "POST", &q, &format!("4{hs}")).await,
        (200, "ok".to_owned())
    );
    let (status, body) = http(b, "GET", &q, "").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("{\"rid\":1,\"data\":{\"id\""), "{body}");
    assert_eq!(
        call(&mut ws, "whoami", Value::Null, 4).await["data"]["worker"],
        w1.port()
    );
    assert_eq!(metrics.snapshot().tunnels_open, 4);

    // w1's process goes away: its client is told with 4000, counted before it is told.
    drop(crash);
    assert_eq!(close_of(&mut ws).await, (4000, "worker lost".to_owned()));
    let m = metrics.snapshot();
    assert_eq!(
        (m.worker_lost, m.tunnels_open, m.upgrades),
        (1, 3, 4),
        "{m:?}"
    );
    // Still w2's clients are served.
    assert_eq!(
        call(&mut others[0], "whoami", Value::Null, 9).await["data"]["worker"],
        w2.port()
    );
}

#[tokio::test]
async fn metrics_count_requests_upgrades_tunnels_retries_and_bad_gateways() {
    let (w, crash) = worker_on_own_runtime();
    let dead = dead_port().await;
    let set = WorkerSet::new([dead.to_string(), w.to_string()]).unwrap();
    let balancer = Balancer::new(set.clone());
    // Taken before the balancer goes into its layers and is served.
    let metrics = balancer.metrics_handle();
    let b = serve_on_port(AddressLimitLayer::new(100, 0, 0).layer(balancer));
    assert_eq!(metrics.snapshot(), BalancerMetrics::default());

    // The first pick is the dead worker (ties start at the first listed): refused, then the
    // upgrade is sent to the live one.
    let mut ws = connect(b, &[]).await;
    assert_eq!(
        metrics.snapshot(),
        BalancerMetrics {
            upgrades: 1,
            tunnels_open: 1,
            retries: 1,
            ..BalancerMetrics::default()
        }
    );
    // A request the worker answers (404), and an upgrade it refuses (not its path).
    assert_eq!(http(b, "GET", "/nothing", "").await.0, 404);
    let refused = ClientBuilder::new()
        .uri(&format!("ws://{b}/not-socketcluster/"))
        .unwrap()
        .connect()
        .await;
    assert!(refused.is_err());
    assert_eq!(metrics.snapshot().requests, 2);
    // No worker left that can take a request: 503.
    assert!(set.remove(&w.to_string()));
    assert_eq!(http(b, "GET", "/", "").await.0, 503);
    // The worker dies under the open tunnel: 4000.
    drop(crash);
    assert_eq!(close_of(&mut ws).await.0, 4000);
    assert_eq!(
        metrics.snapshot(),
        BalancerMetrics {
            requests: 2,
            upgrades: 1,
            tunnels_open: 0,
            worker_lost: 1,
            bad_gateway: 1,
            retries: 1,
        }
    );
    let json = serde_json::to_value(metrics.snapshot()).unwrap();
    assert_eq!(json["worker_lost"], 1);
}
