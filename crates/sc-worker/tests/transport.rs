//! The transport seam from outside the crate: a transport made of two channels runs as a socket
//! (`ScHandle::accept`) with the same handshake, handlers, exchange and close codes as a
//! WebSocket; and a broker of the app's carries the channels.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use sc_worker::transport::{Incoming, Transport, TransportError};
use sc_worker::{
    Broker, HandshakeRequest, LocalBroker, Published, ScServer, ScServerBuilder, Subscriber,
};
use serde_json::{Value, json};
use tokio::sync::mpsc;

const WAIT: Duration = Duration::from_secs(5);

/// What the socket did to the client, as the test sees it.
#[derive(Debug, PartialEq)]
enum Event {
    Frame(String),
    Close(u16, String),
}

/// A transport over channels: the test sends client messages into `rx`, frames come out of
/// `tx` once flushed.
struct Pipe {
    rx: mpsc::UnboundedReceiver<Incoming>,
    queued: Vec<Bytes>,
    tx: mpsc::UnboundedSender<Event>,
    flushes: Arc<AtomicUsize>,
}

impl Transport for Pipe {
    fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Result<Incoming, TransportError>> {
        self.rx
            .poll_recv(cx)
            .map(|m| m.ok_or_else(|| TransportError::Io(std::io::ErrorKind::UnexpectedEof.into())))
    }

    fn send(&mut self, message: Bytes) {
        self.queued.push(message);
    }

    fn has_pending(&self) -> bool {
        !self.queued.is_empty()
    }

    fn poll_flush(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), TransportError>> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        for m in self.queued.drain(..) {
            let text = String::from_utf8(m.to_vec()).unwrap();
            let _ = self.tx.send(Event::Frame(text));
        }
        Poll::Ready(Ok(()))
    }

    fn close(&mut self, code: u16, reason: &str) {
        self.poll_flush(&mut Context::from_waker(std::task::Waker::noop()))
            .map(|r| r.unwrap())
            .is_ready();
        let _ = self.tx.send(Event::Close(code, reason.to_owned()));
    }
}

struct Peer {
    to_server: mpsc::UnboundedSender<Incoming>,
    from_server: mpsc::UnboundedReceiver<Event>,
}

impl Peer {
    fn send(&self, v: Value) {
        self.to_server
            .send(Incoming::Text(Bytes::from(v.to_string())))
            .unwrap();
    }

    async fn next(&mut self) -> Event {
        tokio::time::timeout(WAIT, self.from_server.recv())
            .await
            .expect("timed out")
            .expect("transport dropped")
    }

    async fn next_json(&mut self) -> Value {
        loop {
            match self.next().await {
                Event::Frame(t) if t.is_empty() => {}
                Event::Frame(t) => return serde_json::from_str(&t).unwrap(),
                other @ Event::Close(..) => panic!("expected a frame, got {other:?}"),
            }
        }
    }
}

fn pipe() -> (Pipe, Peer, Arc<AtomicUsize>) {
    let (to_server, rx) = mpsc::unbounded_channel();
    let (tx, from_server) = mpsc::unbounded_channel();
    let flushes = Arc::new(AtomicUsize::new(0));
    (
        Pipe {
            rx,
            queued: Vec::new(),
            tx,
            flushes: flushes.clone(),
        },
        Peer {
            to_server,
            from_server,
        },
        flushes,
    )
}

fn app() -> ScServerBuilder {
    ScServer::builder()
        .procedure("echo", |req| async move { Ok(req.data) })
        .procedure("kick", |req| async move {
            req.socket.disconnect(4321, "bye");
            Ok(())
        })
        .on_connection(|s| {
            let _ = s.transmit("greet", "hello");
        })
}

#[tokio::test]
async fn a_transport_of_our_own_runs_a_socket() {
    let (_layer, handle) = app().build_layer().unwrap();
    let (transport, mut peer, flushes) = pipe();
    let request = HandshakeRequest {
        client_addr: Some("192.0.2.9".parse().unwrap()),
        ..HandshakeRequest::default()
    };
    handle
        .accept(transport, request, http::Extensions::new())
        .unwrap();
    peer.send(json!({"event":"#handshake","data":{"authToken":null},"cid":1}));
    let reply = peer.next_json().await;
    assert_eq!(reply["rid"], 1);
    assert_eq!(reply["data"]["isAuthenticated"], false);
    let id = reply["data"]["id"].as_str().unwrap().to_owned();
    assert_eq!(
        peer.next_json().await,
        json!({"event":"greet","data":"hello"})
    );
    let socket = handle.socket(&id).unwrap();
    assert_eq!(socket.client_addr(), Some("192.0.2.9".parse().unwrap()));
    // Invokes, a batch in one message, and a publish through the exchange.
    peer.send(json!({"event":"echo","data":{"a":[1,2]},"cid":2}));
    assert_eq!(peer.next_json().await, json!({"rid":2,"data":{"a":[1,2]}}));
    peer.send(json!([
        {"event":"echo","data":"one","cid":3},
        {"event":"#subscribe","data":{"channel":"news"},"cid":4}
    ]));
    assert_eq!(peer.next_json().await, json!({"rid":3,"data":"one"}));
    assert_eq!(peer.next_json().await, json!({"rid":4}));
    handle.publish("news", "extra").unwrap();
    assert_eq!(
        peer.next_json().await,
        json!({"event":"#publish","data":{"channel":"news","data":"extra"}})
    );
    assert!(flushes.load(Ordering::Relaxed) > 0);
    // A close from the server goes through the transport with its code.
    peer.send(json!({"event":"kick","cid":5}));
    assert_eq!(peer.next_json().await, json!({"rid":5}));
    assert_eq!(peer.next().await, Event::Close(4321, "bye".to_owned()));
}

#[tokio::test]
async fn the_client_closing_its_transport_ends_the_socket_with_its_code() {
    let (tx, mut rx) = mpsc::unbounded_channel();
    let (_layer, handle) = app()
        .on_disconnection(move |_, code, reason| {
            tx.send((code, reason.to_owned())).unwrap();
        })
        .build_layer()
        .unwrap();
    let (transport, mut peer, _) = pipe();
    handle
        .accept(
            transport,
            HandshakeRequest::default(),
            http::Extensions::new(),
        )
        .unwrap();
    peer.send(json!({"event":"#handshake","cid":1}));
    assert_eq!(peer.next_json().await["rid"], 1);
    peer.to_server
        .send(Incoming::Closed(4500, "done".to_owned()))
        .unwrap();
    let closed = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(closed, (4500, "done".to_owned()));
    assert_eq!(handle.clients_count(), 0);
    // Past the connection limit, accept refuses.
    let (_layer, handle) = app().max_connections(1).build_layer().unwrap();
    let (first, _peer1, _) = pipe();
    handle
        .accept(first, HandshakeRequest::default(), http::Extensions::new())
        .unwrap();
    let (second, _peer2, _) = pipe();
    assert!(
        handle
            .accept(second, HandshakeRequest::default(), http::Extensions::new())
            .is_err()
    );
}

/// A broker of the app's: counts publishes and hands them to the in-process broker.
#[derive(Default)]
struct Counting {
    local: LocalBroker,
    publishes: Arc<AtomicUsize>,
}

impl Broker for Counting {
    fn subscribe(&self, channel: &str, subscriber: Subscriber) -> bool {
        self.local.subscribe(channel, subscriber)
    }
    fn unsubscribe(&self, channel: &str, key: u64) {
        self.local.unsubscribe(channel, key);
    }
    fn publish(&self, msg: Arc<Published>) {
        self.publishes.fetch_add(1, Ordering::Relaxed);
        self.local.publish(msg);
    }
    fn subscriber_count(&self, channel: &str) -> usize {
        self.local.subscriber_count(channel)
    }
}

#[tokio::test]
async fn a_broker_of_our_own_carries_the_channels() {
    let broker = Counting::default();
    let publishes = broker.publishes.clone();
    let (_layer, handle) = app().broker(broker).build_layer().unwrap();
    let mut sub = handle.subscribe("room");
    let (transport, mut peer, _) = pipe();
    handle
        .accept(
            transport,
            HandshakeRequest::default(),
            http::Extensions::new(),
        )
        .unwrap();
    peer.send(json!({"event":"#handshake","cid":1}));
    assert_eq!(peer.next_json().await["rid"], 1);
    peer.send(json!({"event":"#publish","data":{"channel":"room","data":"hi"},"cid":2}));
    let got = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.unwrap().as_str(), "\"hi\"");
    assert_eq!(publishes.load(Ordering::Relaxed), 1);
    assert_eq!(handle.subscriber_count("room"), 1);
}
