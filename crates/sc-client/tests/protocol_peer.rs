//! Protocol behaviour the demo app cannot trigger, checked against a scripted peer: a real
//! WebSocket server on 127.0.0.1 that speaks the SocketCluster protocol frame by frame (stale
//! pings, v1 heartbeats, close codes, server-side invokes, `#setAuthToken` as an invoke,
//! `#kickOut`, batches, re-subscription order).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::time::Duration;

use common::{WAIT, next_event};
use futures_util::{SinkExt as _, StreamExt as _};
use sc_client::{ChannelEvent, Client, ConnectionEvent, ConnectionState, Events};
use serde_json::{Value, json};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_websockets::{CloseCode, Message, ServerBuilder, WebSocketStream};

struct Peer {
    listener: TcpListener,
}

#[derive(Debug, PartialEq)]
enum Frame {
    Text(String),
    Close(u16),
    Ended,
}

struct Conn {
    ws: WebSocketStream<TcpStream>,
}

impl Peer {
    async fn bind() -> Peer {
        Peer {
            listener: TcpListener::bind("127.0.0.1:0").await.unwrap(),
        }
    }

    fn url(&self) -> String {
        format!(
            "ws://127.0.0.1:{}",
            self.listener.local_addr().unwrap().port()
        )
    }

    async fn accept(&self) -> Conn {
        let (tcp, _) = timeout(WAIT, self.listener.accept())
            .await
            .unwrap()
            .unwrap();
        let (req, ws) = ServerBuilder::new().accept(tcp).await.unwrap();
        assert_eq!(req.uri().path(), "/socketcluster/");
        Conn { ws }
    }
}

impl Conn {
    async fn recv(&mut self) -> Frame {
        loop {
            match timeout(WAIT, self.ws.next())
                .await
                .expect("nothing from the client")
            {
                None | Some(Err(_)) => return Frame::Ended,
                Some(Ok(m)) => {
                    if let Some((code, _)) = m.as_close() {
                        return Frame::Close(u16::from(code));
                    }
                    if let Some(text) = m.as_text() {
                        return Frame::Text(text.to_owned());
                    }
                }
            }
        }
    }

    async fn recv_json(&mut self) -> Value {
        match self.recv().await {
            Frame::Text(t) => serde_json::from_str(&t).unwrap(),
            other => panic!("expected a packet, got {other:?}"),
        }
    }

    async fn send(&mut self, text: &str) {
        self.ws.send(Message::text(text.to_owned())).await.unwrap();
    }

    /// Reads the `#handshake` and answers it.
    async fn handshake(&mut self, id: &str, ping_timeout_ms: u64) -> Value {
        let hs = self.recv_json().await;
        assert_eq!(hs["event"], "#handshake");
        let cid = hs["cid"].as_u64().expect("the handshake is an invoke");
        let reply = json!({"rid": cid, "data": {"id": id, "pingTimeout": ping_timeout_ms, "isAuthenticated": false}});
        self.send(&reply.to_string()).await;
        hs
    }

    async fn close(&mut self, code: u16) {
        let code = CloseCode::try_from(code).unwrap();
        self.ws
            .send(Message::close(Some(code), "bye"))
            .await
            .unwrap();
    }
}

async fn open_event(events: &mut Events) -> String {
    loop {
        if let ConnectionEvent::Open { id, .. } = next_event(events).await {
            return id;
        }
    }
}

async fn closed_event(events: &mut Events) -> u16 {
    loop {
        if let ConnectionEvent::Closed { code, .. } = next_event(events).await {
            return code.0;
        }
    }
}

#[tokio::test]
async fn stale_connection_is_closed_with_4000_and_replaced_at_once() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url()).build().unwrap();
    let mut events = client.events();
    client.connect().unwrap();

    // Pings keep the connection alive past several ping timeouts.
    let mut conn = peer.accept().await;
    conn.handshake("one", 300).await;
    assert_eq!(open_event(&mut events).await, "one");
    for _ in 0..8 {
        tokio::time::sleep(Duration::from_millis(100)).await;
        conn.send("").await;
        assert_eq!(conn.recv().await, Frame::Text(String::new()));
    }
    assert_eq!(client.state(), ConnectionState::Open);

    // Then no ping: the client gives up after pingTimeout, with 4000, and reconnects at once.
    let silent = tokio::time::Instant::now();
    assert_eq!(conn.recv().await, Frame::Close(4000));
    let waited = silent.elapsed();
    assert!(waited >= Duration::from_millis(250), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert_eq!(closed_event(&mut events).await, 4000);
    assert_eq!(
        next_event(&mut events).await,
        ConnectionEvent::Reconnecting {
            attempt: 1,
            delay: Duration::ZERO
        }
    );
    let mut conn = peer.accept().await;
    conn.handshake("two", 30_000).await;
    assert_eq!(open_event(&mut events).await, "two");
}

#[tokio::test]
async fn v1_and_v2_pings_are_answered() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url()).build().unwrap();
    client.connect().unwrap();
    let mut conn = peer.accept().await;
    conn.handshake("x", 30_000).await;
    conn.send("#1").await;
    assert_eq!(conn.recv().await, Frame::Text("#2".to_owned()));
    conn.send("").await;
    assert_eq!(conn.recv().await, Frame::Text(String::new()));
}

#[tokio::test]
async fn close_codes_decide_reconnection() {
    // 4500 and above, and 1000: no reconnect.
    for code in [4500, 4999, 1000] {
        let peer = Peer::bind().await;
        let client = Client::builder(&peer.url()).build().unwrap();
        let mut events = client.events();
        client.connect().unwrap();
        let mut conn = peer.accept().await;
        conn.handshake("x", 30_000).await;
        open_event(&mut events).await;
        conn.close(code).await;
        assert_eq!(closed_event(&mut events).await, code);
        assert_eq!(client.state(), ConnectionState::Closed, "after {code}");
        assert!(matches!(
            client.transmit("x", &1),
            Err(sc_client::Error::Closed)
        ));
    }
    // 4001: reconnect at once; 4008: reconnect after a backoff delay.
    for (code, immediate) in [(4001, true), (4008, false)] {
        let peer = Peer::bind().await;
        let client = Client::builder(&peer.url()).build().unwrap();
        let mut events = client.events();
        client.connect().unwrap();
        let mut conn = peer.accept().await;
        conn.handshake("x", 30_000).await;
        open_event(&mut events).await;
        conn.close(code).await;
        assert_eq!(closed_event(&mut events).await, code);
        let ConnectionEvent::Reconnecting { delay, .. } = next_event(&mut events).await else {
            panic!("expected Reconnecting after {code}");
        };
        assert_eq!(delay.is_zero(), immediate, "{code}: {delay:?}");
        assert!(delay < Duration::from_secs(1));
        let mut conn = peer.accept().await;
        conn.handshake("y", 30_000).await;
        assert_eq!(open_event(&mut events).await, "y");
    }
}

#[tokio::test]
async fn server_invokes_auth_token_kick_out_and_batches() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url()).build().unwrap();
    let mut ask = client.procedure("ask");
    let mut greet = client.receiver("greet");
    let mut events = client.events();
    client.connect().unwrap();
    let mut conn = peer.accept().await;
    conn.handshake("x", 30_000).await;
    open_event(&mut events).await;

    // A procedure answers the server's invoke; an invoke nobody handles gets no answer.
    conn.send(r#"{"event":"nobody","data":0,"cid":4}"#).await;
    conn.send(r#"{"event":"ask","data":20,"cid":5}"#).await;
    let req = timeout(WAIT, ask.next()).await.unwrap().unwrap();
    assert_eq!(req.event(), "ask");
    let n: u64 = req.data().json().unwrap();
    req.end(&(n + 1)).unwrap();
    assert_eq!(conn.recv_json().await, json!({"rid": 5, "data": 21}));
    conn.send(r#"{"event":"ask","data":0,"cid":6}"#).await;
    let req = timeout(WAIT, ask.next()).await.unwrap().unwrap();
    req.error(&sc_client::ScError::new("Nope", "no")).unwrap();
    assert_eq!(
        conn.recv_json().await,
        json!({"rid": 6, "error": {"name": "Nope", "message": "no"}})
    );

    // A batch is handled in order.
    conn.send(r#"[{"event":"greet","data":1},{"event":"greet","data":2}]"#)
        .await;
    for want in [1, 2] {
        let got: u64 = timeout(WAIT, greet.next())
            .await
            .unwrap()
            .unwrap()
            .json()
            .unwrap();
        assert_eq!(got, want);
    }

    // #setAuthToken as an invoke (rejectOnFailedDelivery) is acknowledged.
    let token = "eyJhbGciOiJIUzI1NiJ9.eyJ1c2VybmFtZSI6ImRhbiJ9.c2ln";
    conn.send(&json!({"event": "#setAuthToken", "data": {"token": token}, "cid": 7}).to_string())
        .await;
    assert_eq!(conn.recv_json().await, json!({"rid": 7}));
    assert!(client.is_authenticated());
    assert_eq!(client.auth_token().unwrap()["username"], "dan");

    // #kickOut ends the channel.
    let mut ch = client.subscribe("room");
    let sub = conn.recv_json().await;
    assert_eq!(sub["event"], "#subscribe");
    assert_eq!(sub["data"], json!({"channel": "room"}));
    conn.send(&json!({"rid": sub["cid"]}).to_string()).await;
    timeout(WAIT, ch.wait_subscribed()).await.unwrap().unwrap();
    conn.send(r##"{"event":"#kickOut","data":{"channel":"room","message":"out"}}"##)
        .await;
    match timeout(WAIT, ch.next()).await.unwrap() {
        Some(ChannelEvent::KickedOut(m)) => assert_eq!(m.json::<String>().unwrap(), "out"),
        other => panic!("expected KickedOut, got {other:?}"),
    }
    assert_eq!(timeout(WAIT, ch.next()).await.unwrap(), None);
    assert!(client.subscriptions().is_empty());

    // #removeAuthToken drops it.
    conn.send(r##"{"event":"#removeAuthToken"}"##).await;
    let mut auth = client.events();
    common::wait_auth(&client, &mut auth, false).await;
    assert_eq!(client.signed_auth_token(), None);
}

#[tokio::test]
async fn resubscribes_in_order_with_a_gap_notice() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url()).build().unwrap();
    let mut events = client.events();
    client.connect().unwrap();
    let mut conn = peer.accept().await;
    conn.handshake("x", 30_000).await;
    open_event(&mut events).await;

    let names = ["c", "a", "b", "z/1", "m"];
    let mut channels: Vec<_> = names.iter().map(|n| client.subscribe(n)).collect();
    for name in names {
        let sub = conn.recv_json().await;
        assert_eq!(sub["data"]["channel"], name);
        conn.send(&json!({"rid": sub["cid"]}).to_string()).await;
    }
    for ch in &mut channels {
        timeout(WAIT, ch.wait_subscribed()).await.unwrap().unwrap();
    }
    // Messages sent while disconnected are buffered and go out after the subscriptions.
    drop(conn);
    assert_eq!(closed_event(&mut events).await, 1006);
    for ch in &mut channels {
        assert_eq!(
            timeout(WAIT, ch.next()).await.unwrap(),
            Some(ChannelEvent::Gap)
        );
    }
    client.transmit("after", &1).unwrap();

    let mut conn = peer.accept().await;
    conn.handshake("y", 30_000).await;
    for name in names {
        let sub = conn.recv_json().await;
        assert_eq!(sub["event"], "#subscribe");
        assert_eq!(sub["data"]["channel"], name);
        conn.send(&json!({"rid": sub["cid"]}).to_string()).await;
    }
    assert_eq!(conn.recv_json().await, json!({"event": "after", "data": 1}));
    for ch in &mut channels {
        timeout(WAIT, ch.wait_subscribed()).await.unwrap().unwrap();
    }
    conn.send(r##"{"event":"#publish","data":{"channel":"m","data":"hi"}}"##)
        .await;
    assert_eq!(common::next_message(&mut channels[4]).await, json!("hi"));
}

#[tokio::test]
async fn a_message_over_the_limit_closes_with_1009_and_reconnects() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url())
        .max_message_size(1000)
        .build()
        .unwrap();
    let mut events = client.events();
    client.connect().unwrap();
    let mut conn = peer.accept().await;
    conn.handshake("x", 30_000).await;
    open_event(&mut events).await;
    let big = json!({"event": "greet", "data": "x".repeat(2000)}).to_string();
    conn.send(&big).await;
    assert_eq!(conn.recv().await, Frame::Close(1009));
    assert_eq!(closed_event(&mut events).await, 1009);
    let mut conn = peer.accept().await;
    conn.handshake("y", 30_000).await;
    assert_eq!(open_event(&mut events).await, "y");
}

#[tokio::test]
async fn calls_in_flight_fail_with_the_close_code() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url()).build().unwrap();
    let mut events = client.events();
    client.connect().unwrap();
    let mut conn = peer.accept().await;
    conn.handshake("x", 30_000).await;
    open_event(&mut events).await;

    // The connection drops while a call waits for its answer: BadConnectionError (1006).
    let caller = client.clone();
    let call = tokio::spawn(async move { caller.invoke::<_, Value>("slow", &1).await });
    assert_eq!(conn.recv_json().await["event"], "slow");
    drop(conn);
    let err = timeout(WAIT, call).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(err, sc_client::Error::BadConnection { code, .. } if code.0 == 1006),
        "{err:?}"
    );
    assert_eq!(err.name(), "BadConnectionError");

    // disconnect() while a call waits: it fails with 1000, and the peer sees the close.
    let mut conn = peer.accept().await;
    conn.handshake("y", 30_000).await;
    open_event(&mut events).await;
    let caller = client.clone();
    let call = tokio::spawn(async move { caller.invoke::<_, Value>("slow", &2).await });
    assert_eq!(conn.recv_json().await["event"], "slow");
    client.disconnect();
    let err = timeout(WAIT, call).await.unwrap().unwrap().unwrap_err();
    assert!(
        matches!(err, sc_client::Error::BadConnection { code, .. } if code.0 == 1000),
        "{err:?}"
    );
    assert_eq!(conn.recv().await, Frame::Close(1000));
    assert_eq!(client.state(), ConnectionState::Closed);
}

#[tokio::test]
async fn resubscribes_with_the_last_position_and_no_gap_when_recovered() {
    let peer = Peer::bind().await;
    let client = Client::builder(&peer.url()).build().unwrap();
    let mut events = client.events();
    client.connect().unwrap();
    let mut conn = peer.accept().await;
    conn.handshake("x", 30_000).await;
    open_event(&mut events).await;

    let mut ch = client.subscribe("news");
    let sub = conn.recv_json().await;
    assert_eq!(
        sub["data"],
        json!({"channel": "news"}),
        "no recover the first time"
    );
    let publish = |n: u64| {
        json!({"event": "#publish", "data":
            {"channel": "news", "data": n, "offset": n, "epoch": "e1"}})
        .to_string()
    };
    conn.send(
        &json!({"rid": sub["cid"], "data": {"channel": "news", "offset": 0, "epoch": "e1"}})
            .to_string(),
    )
    .await;
    conn.send(&publish(1)).await;
    conn.send(&publish(2)).await;
    for n in 1..=2u64 {
        let Some(ChannelEvent::Message(m)) = timeout(WAIT, ch.next()).await.unwrap() else {
            panic!("expected message {n}");
        };
        assert_eq!(m.json::<u64>().unwrap(), n);
        assert_eq!(m.position(), Some(&sc_client::Position::new(n, "e1")));
    }

    // The connection is lost: the resubscribe asks for what follows offset 2, the peer replays
    // 3 and 4, and the stream goes on without a gap.
    drop(conn);
    assert_eq!(closed_event(&mut events).await, 1006);
    let mut conn = peer.accept().await;
    conn.handshake("y", 30_000).await;
    let sub = conn.recv_json().await;
    assert_eq!(
        sub["data"],
        json!({"channel": "news", "data": {"recover": {"offset": 2, "epoch": "e1"}}})
    );
    conn.send(
        &json!({"rid": sub["cid"], "data": {"channel": "news", "offset": 2, "epoch": "e1"}})
            .to_string(),
    )
    .await;
    conn.send(&publish(3)).await;
    conn.send(&publish(4)).await;
    for n in 3..=4u64 {
        match timeout(WAIT, ch.next()).await.unwrap() {
            Some(ChannelEvent::Message(m)) => assert_eq!(m.json::<u64>().unwrap(), n),
            other => panic!("expected message {n}, got {other:?}"),
        }
    }
    assert_eq!(ch.position(), Some(sc_client::Position::new(4, "e1")));

    // Lost again, and this time the history does not reach back: a gap notice, then what it
    // still holds.
    drop(conn);
    assert_eq!(closed_event(&mut events).await, 1006);
    let mut conn = peer.accept().await;
    conn.handshake("z", 30_000).await;
    let sub = conn.recv_json().await;
    assert_eq!(sub["data"]["data"]["recover"]["offset"], 4);
    conn.send(r##"{"event":"#gap","data":{"channel":"news","offset":9,"epoch":"e1"}}"##)
        .await;
    conn.send(
        &json!({"rid": sub["cid"], "data": {"channel": "news", "offset": 9, "epoch": "e1"}})
            .to_string(),
    )
    .await;
    conn.send(&publish(10)).await;
    assert_eq!(
        timeout(WAIT, ch.next()).await.unwrap(),
        Some(ChannelEvent::Gap)
    );
    match timeout(WAIT, ch.next()).await.unwrap() {
        Some(ChannelEvent::Message(m)) => assert_eq!(m.json::<u64>().unwrap(), 10),
        other => panic!("expected message 10, got {other:?}"),
    }
}
