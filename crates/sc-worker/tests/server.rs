//! The server API from Rust with raw SocketCluster frames: handshake, timers, limits, invoke and
//! transmit both ways, channels, auth, shutdown.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use common::{Client, WAIT, kept_alive, read_status, start, upgrade_status, upgrade_stream};
use sc_worker::{Data, ScError, ScServer, ScServerBuilder};
use serde_json::{Value, json};
use tokio::io::AsyncWriteExt;
use tokio::sync::{Notify, mpsc};

#[derive(Clone, Default)]
struct Count(Arc<AtomicU64>);

fn app() -> ScServerBuilder {
    ScServer::builder()
        .auth_key("test-key")
        .on_connection(|s| {
            s.insert(Count::default());
            s.transmit("greet", "hello").unwrap();
        })
        .procedure("echo", |req| async move { Ok(req.data) })
        .procedure_sync("echoSync", |req| Ok(req.data))
        .procedure_sync("failSync", |req| {
            Err::<(), _>(ScError::new("BadRequest", format!("no {}", req.procedure)))
        })
        .procedure("fail", |_| async {
            Err::<(), _>(ScError::new("BadRequest", "fail requested").with("code", 7))
        })
        .procedure("later", |req| async move {
            tokio::task::yield_now().await;
            Ok(req.data)
        })
        .receiver("ping", |s, _| {
            s.get::<Count>().unwrap().0.fetch_add(1, Ordering::Relaxed);
            async {}
        })
        .procedure("count", |req| {
            let n = req.socket.get::<Count>().unwrap().0.load(Ordering::Relaxed);
            async move { Ok(n) }
        })
        .procedure("login", |req| async move {
            let name: String = req.data.unwrap().parse().unwrap();
            req.socket.set_auth_token(json!({ "username": name }))
        })
        .procedure("loginExpired", |req| async move {
            req.socket
                .set_auth_token(json!({ "username": "old", "exp": 1000 }))
        })
        .procedure("whoami", |req| async move {
            Ok(req
                .socket
                .auth_token()
                .map(|t| (*t).clone())
                .unwrap_or(Value::Null))
        })
}

#[tokio::test]
async fn handshake_reply_and_greet() {
    let server = start(app().ping_timeout(Duration::from_millis(12_345))).await;
    let mut c = Client::open(&server).await;
    c.send_json(json!({"event":"#handshake","data":{"authToken":null},"cid":9}))
        .await;
    let reply = c.next().await;
    assert_eq!(reply["rid"], 9);
    let data = reply["data"].as_object().unwrap();
    assert_eq!(data["pingTimeout"], 12_345);
    assert_eq!(data["isAuthenticated"], false);
    assert!(!data.contains_key("authError"));
    let id = data["id"].as_str().unwrap();
    assert_eq!(id.len(), 20);
    assert!(!id.contains('/') && !id.contains('+'));
    assert_eq!(c.next().await, json!({"event":"greet","data":"hello"}));
    assert_eq!(server.handle.clients_count(), 1);
    assert!(server.handle.socket(id).is_some());
    let (_c2, d2) = Client::connect(&server).await;
    assert_ne!(d2["id"], data["id"]);
}

#[tokio::test]
async fn strict_handshake_close_codes() {
    let server = start(app().handshake_timeout(Duration::from_millis(1000))).await;
    for frame in ["", r#"{"event":"echo","data":1,"cid":1}"#, "not json", "[]"] {
        let mut c = Client::open(&server).await;
        c.send(frame).await;
        assert_eq!(c.closed().await, 4009, "frame {frame:?}");
    }
    let mut c = Client::open(&server).await;
    c.send(r##"{"event":"#handshake","data":{}}"##).await;
    assert_eq!(c.closed().await, 4008);
    let mut c = Client::open(&server).await;
    c.send(r##"{"event":"#handshake","data":{},"cid":"1"}"##)
        .await;
    assert_eq!(c.closed().await, 4008);
    // No handshake at all: 4005 after the (short) handshake timeout.
    let mut c = Client::open(&server).await;
    assert_eq!(c.closed().await, 4005);
}

#[tokio::test]
async fn message_over_max_payload_closes_1009_and_others_are_unaffected() {
    let server = start(app().max_payload(1024)).await;
    let (mut other, _) = Client::connect(&server).await;
    let (mut c, _) = Client::connect(&server).await;
    let big = "x".repeat(2000);
    c.send_json(json!({"event":"echo","data":big,"cid":2}))
        .await;
    assert_eq!(c.closed().await, 1009);
    let small = "y".repeat(900);
    assert_eq!(
        other.invoke("echo", json!(small), 2).await["data"],
        json!(small)
    );
}

#[tokio::test]
async fn pong_timeout_closes_4001_and_pongs_keep_alive() {
    let server = start(
        app()
            .ping_interval(Duration::from_millis(50))
            .ping_timeout(Duration::from_millis(500)),
    )
    .await;
    // A client that answers: ten pings later it is still usable.
    let (mut alive, _) = Client::connect(&server).await;
    alive.auto_pong = false;
    let mut pings = 0;
    while pings < 10 {
        let f = alive.next_raw().await.unwrap();
        if f.is_empty() {
            pings += 1;
            alive.send("").await;
        }
    }
    alive.auto_pong = true;
    assert_eq!(alive.invoke("echo", json!("ok"), 5).await["data"], "ok");
    // A client that stays silent is closed with 4001.
    let (mut silent, _) = Client::connect(&server).await;
    silent.auto_pong = false;
    assert_eq!(silent.closed().await, 4001);
}

#[tokio::test]
async fn protocol_v1_heartbeats() {
    let server = start(
        app()
            .protocol_version(1)
            .ping_interval(Duration::from_millis(50))
            .ping_timeout(Duration::from_millis(500)),
    )
    .await;
    let (mut c, _) = Client::connect(&server).await;
    c.auto_pong = false;
    let mut pings = 0;
    while pings < 8 {
        let f = c.next_raw().await.unwrap();
        if f == "#1" {
            pings += 1;
            c.send("#2").await;
        }
    }
    assert_eq!(c.invoke("echo", json!(1), 2).await["data"], 1);
}

#[tokio::test]
async fn invoke_transmit_and_batches() {
    let server = start(app()).await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("echo", json!({"a":[1,"é",null]}), 2).await,
        json!({"rid":2,"data":{"a":[1,"é",null]}})
    );
    assert_eq!(
        c.invoke("fail", json!(null), 3).await,
        json!({"rid":3,"error":{"message":"fail requested","name":"BadRequest","code":7}})
    );
    assert_eq!(c.invoke("later", json!("async"), 4).await["data"], "async");
    // No data key in, no data key out.
    c.send(r#"{"event":"echo","cid":5}"#).await;
    assert_eq!(c.next_matching(|v| v["rid"] == 5).await, json!({"rid":5}));
    // Unknown procedure: no reply; the next frame is the following echo's reply.
    c.send(r#"{"event":"nope","data":1,"cid":6}"#).await;
    c.send(r##"{"event":"#nope","data":1,"cid":7}"##).await;
    c.send(r#"{"event":"echo","data":"after","cid":8}"#).await;
    assert_eq!(
        c.next_matching(|v| v.get("rid").is_some()).await,
        json!({"rid":8,"data":"after"})
    );
    // Transmits reach receivers in arrival order; a batch is handled in order.
    c.send(r#"[{"event":"ping"},{"event":"ping"},{"event":"count","cid":9},{"event":"ping"},{"event":"count","cid":10}]"#)
        .await;
    let a = c.next_matching(|v| v.get("rid").is_some()).await;
    let b = c.next_matching(|v| v.get("rid").is_some()).await;
    assert_eq!(
        (a, b),
        (json!({"rid":9,"data":2}), json!({"rid":10,"data":3}))
    );
    // Odd frames are ignored.
    for odd in [
        "{}",
        "42",
        "null",
        r#"{"event":5}"#,
        r#"{"rid":99999}"#,
        "not json",
    ] {
        c.send(odd).await;
    }
    assert_eq!(c.invoke("echo", json!("alive"), 11).await["data"], "alive");
}

#[tokio::test]
async fn invalid_reserved_payloads_get_invalid_action_errors() {
    let server = start(app()).await;
    let (mut c, _) = Client::connect(&server).await;
    let cases = [
        json!({"event":"#publish","cid":20}),
        json!({"event":"#publish","data":{"channel":5},"cid":20}),
        json!({"event":"#subscribe","data":{},"cid":20}),
        json!({"event":"#subscribe","data":"chan","cid":20}),
        json!({"event":"#unsubscribe","data":5,"cid":20}),
    ];
    for case in cases {
        c.send_json(case.clone()).await;
        let r = c.next_matching(|v| v["rid"] == 20).await;
        assert_eq!(r["error"]["name"], "InvalidActionError", "{case}");
    }
}

#[tokio::test]
async fn channels_publish_unsubscribe_kick_out_and_server_publish() {
    let server = start(app()).await;
    let (mut a, _) = Client::connect(&server).await;
    let (mut b, bdata) = Client::connect(&server).await;
    assert_eq!(
        a.invoke("#subscribe", json!({"channel":"news"}), 2).await,
        json!({"rid":2})
    );
    assert_eq!(
        b.invoke("#subscribe", json!({"channel":"news"}), 2).await,
        json!({"rid":2})
    );
    assert_eq!(server.handle.subscriber_count("news"), 2);
    // Transmit publish: both subscribers, the publisher included.
    a.send_json(json!({"event":"#publish","data":{"channel":"news","data":{"n":1}}}))
        .await;
    let expected = json!({"event":"#publish","data":{"channel":"news","data":{"n":1}}});
    assert_eq!(
        a.next_matching(|v| v["event"] == "#publish").await,
        expected
    );
    assert_eq!(
        b.next_matching(|v| v["event"] == "#publish").await,
        expected
    );
    // Invoke publish is answered {rid}.
    a.send_json(json!({"event":"#publish","data":{"channel":"news","data":2},"cid":3}))
        .await;
    assert_eq!(a.next_matching(|v| v["rid"] == 3).await, json!({"rid":3}));
    assert_eq!(
        b.next_matching(|v| v["event"] == "#publish").await["data"]["data"],
        2
    );
    // Per-channel order for many publishes.
    for i in 0..200 {
        server.handle.publish("news", i).unwrap();
    }
    for i in 0..200 {
        assert_eq!(
            b.next_matching(|v| v["event"] == "#publish").await["data"]["data"],
            i
        );
    }
    // Unsubscribe stops delivery.
    b.send(r##"{"event":"#unsubscribe","data":"news"}"##).await;
    assert_eq!(
        b.invoke("#subscribe", json!({"channel":"marker"}), 4).await,
        json!({"rid":4})
    );
    a.send_json(json!({"event":"#publish","data":{"channel":"news","data":"gone"}}))
        .await;
    server.handle.publish("marker", "end").unwrap();
    assert_eq!(
        b.next_matching(|v| v["event"] == "#publish").await["data"],
        json!({"channel":"marker","data":"end"})
    );
    // Kick out.
    let bsock = server.handle.socket(bdata["id"].as_str().unwrap()).unwrap();
    assert!(bsock.is_subscribed("marker"));
    bsock.kick_out("marker", "bye").unwrap();
    assert_eq!(
        b.next_matching(|v| v["event"] == "#kickOut").await,
        json!({"event":"#kickOut","data":{"channel":"marker","message":"bye"}})
    );
    assert!(!bsock.is_subscribed("marker"));
}

#[tokio::test]
async fn channel_limit_and_client_publish_switch() {
    let server = start(app().socket_channel_limit(2).allow_client_publish(false)).await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"a"}), 2).await,
        json!({"rid":2})
    );
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"a"}), 3).await,
        json!({"rid":3})
    );
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"b"}), 4).await,
        json!({"rid":4})
    );
    let r = c.invoke("#subscribe", json!({"channel":"c"}), 5).await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
    let r = c
        .invoke("#publish", json!({"channel":"a","data":1}), 6)
        .await;
    assert_eq!(r["error"]["name"], "InvalidActionError");
}

#[tokio::test]
async fn server_to_client_invoke_acks_errors_and_timeouts() {
    let server = start(app().ack_timeout(Duration::from_millis(1000))).await;
    let (mut c, data) = Client::connect(&server).await;
    let socket = server.handle.socket(data["id"].as_str().unwrap()).unwrap();
    let s2 = socket.clone();
    let call = tokio::spawn(async move { s2.invoke("question", json!({"q":1})).await });
    let q = c.next_matching(|v| v["event"] == "question").await;
    assert_eq!(q["data"], json!({"q":1}));
    let cid = q["cid"].as_u64().unwrap();
    c.send_json(json!({"rid":cid,"data":"answer"})).await;
    let answer = call.await.unwrap().unwrap().unwrap();
    assert_eq!(answer.as_str(), "\"answer\"");

    let s2 = socket.clone();
    let call = tokio::spawn(async move { s2.invoke("question", ()).await });
    let q = c.next_matching(|v| v["event"] == "question").await;
    let cid = q["cid"].as_u64().unwrap();
    c.send_json(json!({"rid":cid,"error":{"name":"Nope","message":"no"}}))
        .await;
    let err = call.await.unwrap().unwrap_err();
    assert_eq!((&*err.name, &*err.message), ("Nope", "no"));

    // Nobody answers: TimeoutError after the ack timeout.
    let err = socket.invoke("question", ()).await.unwrap_err();
    assert_eq!(err.name, "TimeoutError");
    // Transmit from the server.
    socket
        .transmit("note", Data::from_json("[1,2]").unwrap())
        .unwrap();
    assert_eq!(
        c.next_matching(|v| v["event"] == "note").await,
        json!({"event":"note","data":[1,2]})
    );
}

#[tokio::test]
async fn auth_tokens() {
    let server = start(app()).await;
    let (mut a, _) = Client::connect(&server).await;
    a.next_matching(|v| v["event"] == "greet").await;
    a.send_json(json!({"event":"login","data":"alice","cid":2}))
        .await;
    // The reply and #setAuthToken, in either order.
    let frames = [a.next().await, a.next().await];
    let set = frames
        .iter()
        .find(|v| v["event"] == "#setAuthToken")
        .unwrap();
    let token = set["data"]["token"].as_str().unwrap().to_owned();
    assert!(frames.contains(&json!({"rid":2})), "{frames:?}");
    let who = a.invoke("whoami", Value::Null, 3).await;
    assert_eq!(who["data"]["username"], "alice");
    let exp = who["data"]["exp"].as_u64().unwrap();
    assert_eq!(exp - who["data"]["iat"].as_u64().unwrap(), 86_400);

    // The token in a handshake, on this server and on another with the same key.
    let mut b = Client::open(&server).await;
    let reply = b.handshake(Some(&token)).await;
    assert_eq!(reply["data"]["isAuthenticated"], true);
    let other = start(app()).await;
    let mut c = Client::open(&other).await;
    assert_eq!(
        c.handshake(Some(&token)).await["data"]["isAuthenticated"],
        true
    );
    let third = start(app().auth_key("another-key")).await;
    let mut d = Client::open(&third).await;
    let reply = d.handshake(Some(&token)).await;
    assert_eq!(reply["data"]["isAuthenticated"], false);
    assert_eq!(reply["data"]["authError"]["name"], "AuthTokenInvalidError");
    d.next_matching(|v| v["event"] == "#removeAuthToken").await;

    // #authenticate: good, then bad.
    let (mut e, _) = Client::connect(&server).await;
    assert_eq!(
        e.invoke("#authenticate", json!(token), 2).await,
        json!({"rid":2,"data":{"isAuthenticated":true,"authError":null}})
    );
    e.send(r##"{"event":"#authenticate","data":"not-a-jwt","cid":3}"##)
        .await;
    let r = e.next_matching(|v| v["rid"] == 3).await;
    assert_eq!(r["error"]["name"], "AuthTokenInvalidError");
    assert_eq!(
        e.invoke("whoami", Value::Null, 4).await["data"],
        Value::Null
    );

    // An expired token: AuthTokenExpiredError at the handshake.
    a.send_json(json!({"event":"loginExpired","cid":5})).await;
    let set = a.next_matching(|v| v["event"] == "#setAuthToken").await;
    let expired = set["data"]["token"].as_str().unwrap().to_owned();
    let mut f = Client::open(&server).await;
    let reply = f.handshake(Some(&expired)).await;
    assert_eq!(reply["data"]["authError"]["name"], "AuthTokenExpiredError");
    assert_eq!(
        reply["data"]["authError"]["expiry"],
        "1970-01-01T00:16:40.000Z"
    );
    // The socket that holds it is deauthenticated on its next message.
    assert_eq!(
        a.invoke("whoami", Value::Null, 6).await["data"],
        Value::Null
    );

    // #removeAuthToken from the client.
    b.send(r##"{"event":"#removeAuthToken"}"##).await;
    assert_eq!(
        b.invoke("whoami", Value::Null, 7).await["data"],
        Value::Null
    );
}

#[tokio::test]
async fn http_routing_origins_and_limits() {
    let server = start(app().origins(["good.example:*"]).max_connections(1)).await;
    let origin_ok = "Origin: http://good.example\r\n";
    assert_eq!(upgrade_status(server.addr, "/other/", origin_ok).await, 404);
    assert_eq!(
        upgrade_status(
            server.addr,
            "/socketcluster/",
            "Origin: http://evil.example\r\n"
        )
        .await,
        403
    );
    assert_eq!(
        upgrade_status(server.addr, "/socketcluster/", "").await,
        403
    );
    assert_eq!(
        upgrade_status(server.addr, "/socketcluster/?a=1", origin_ok).await,
        101
    );
    // A socket holding the only connection slot: the next upgrade gets 503.
    let mut holder = upgrade_stream(server.addr, "/socketcluster/", origin_ok).await;
    assert_eq!(
        upgrade_status(server.addr, "/socketcluster/", origin_ok).await,
        503
    );
    holder.shutdown().await.unwrap();
}

#[tokio::test]
async fn slow_consumer_is_dropped() {
    let server = start(app().outbound_queue(8)).await;
    let (mut c, data) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"firehose"}), 2)
            .await,
        json!({"rid":2})
    );
    let socket = server.handle.socket(data["id"].as_str().unwrap()).unwrap();
    // The client does not read while 64 KiB messages are published until the socket goes.
    let blob = "z".repeat(64 * 1024);
    let mut published = 0;
    while socket.is_open() {
        server.handle.publish("firehose", blob.as_str()).unwrap();
        published += 1;
        assert!(published < 10_000, "slow consumer never dropped");
        tokio::task::yield_now().await;
    }
    let code = c.closed().await;
    assert!(
        code == sc_worker::SLOW_CONSUMER || code == 1006,
        "code {code}"
    );
    assert_eq!(server.handle.subscriber_count("firehose"), 0);
}

#[tokio::test]
async fn graceful_shutdown_finishes_inflight_invokes_then_closes_1001() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    let server = start(app().procedure("slow", move |req| {
        let started = started_tx.clone();
        let rel = rel.clone();
        async move {
            let _ = started.send(());
            rel.notified().await;
            Ok(req.data)
        }
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    c.send(r#"{"event":"slow","data":"done","cid":2}"#).await;
    tokio::time::timeout(WAIT, started_rx.recv()).await.unwrap();
    let handle = server.handle.clone();
    let shutdown = tokio::spawn(async move { handle.shutdown(WAIT).await });
    // New sockets are refused while shutting down.
    let mut tries = 0;
    while !server.handle.is_shutting_down() {
        tokio::task::yield_now().await;
        tries += 1;
        assert!(tries < 10_000);
    }
    release.notify_one();
    assert_eq!(
        c.next_matching(|v| v["rid"] == 2).await,
        json!({"rid":2,"data":"done"})
    );
    assert_eq!(c.closed().await, 1001);
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!(server.handle.clients_count(), 0);
}

/// A restart's drain: the chosen code (`RESTART`, on which socketcluster-client reconnects at
/// once) and reason reach a real WebSocket client, after the answer to an invoke whose handler
/// was still running, and new upgrades get 503 meanwhile.
#[tokio::test]
async fn shutdown_with_closes_with_the_chosen_code_after_inflight_invokes() {
    let (started_tx, mut started_rx) = mpsc::unbounded_channel::<()>();
    let release = Arc::new(Notify::new());
    let rel = release.clone();
    let server = start(app().procedure("slow", move |req| {
        let started = started_tx.clone();
        let rel = rel.clone();
        async move {
            let _ = started.send(());
            rel.notified().await;
            Ok(req.data)
        }
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    // A second socket with nothing in flight closes with the same code.
    let (mut idle, _) = Client::connect(&server).await;
    let mut http = kept_alive(server.addr).await;
    c.send(r#"{"event":"slow","data":"done","cid":2}"#).await;
    tokio::time::timeout(WAIT, started_rx.recv()).await.unwrap();
    let handle = server.handle.clone();
    let shutdown = tokio::spawn(async move {
        handle
            .shutdown_with(sc_worker::RESTART, "Server is restarting", WAIT)
            .await;
    });
    tokio::time::timeout(WAIT, server.handle.shutdown_signal())
        .await
        .unwrap();
    assert_eq!(
        read_status(&mut http, server.addr, "/socketcluster/", "").await,
        503
    );
    assert_eq!(idle.closed().await, 4000);
    // The slow invoke is still running: its socket waits for it.
    assert!(!shutdown.is_finished());
    release.notify_one();
    assert_eq!(
        c.next_matching(|v| v["rid"] == 2).await,
        json!({"rid":2,"data":"done"})
    );
    let close = loop {
        let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
            .await
            .expect("timed out waiting for the close")
            .expect("the server closed without a close frame")
            .unwrap();
        if let Some((code, reason)) = m.as_close() {
            break (u16::from(code), reason.to_owned());
        }
    };
    assert_eq!(
        close,
        (sc_worker::RESTART, "Server is restarting".to_owned())
    );
    tokio::time::timeout(WAIT, shutdown).await.unwrap().unwrap();
    assert_eq!(server.handle.clients_count(), 0);
    assert_eq!(server.handle.metrics().sockets_open, 0);
}

#[tokio::test]
async fn disconnect_and_hooks() {
    let (tx, mut rx) = mpsc::unbounded_channel::<(String, u16)>();
    let server = start(app().on_disconnection(move |s, code, _| {
        let _ = tx.send((s.id().to_owned(), code));
    }))
    .await;
    let (mut c, data) = Client::connect(&server).await;
    let id = data["id"].as_str().unwrap().to_owned();
    server.handle.socket(&id).unwrap().disconnect(4321, "bye");
    assert_eq!(c.closed().await, 4321);
    let (gone, code) = tokio::time::timeout(WAIT, rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((gone.as_str(), code), (id.as_str(), 4321));
    assert!(server.handle.socket(&id).is_none());
}

#[tokio::test]
async fn server_side_subscription() {
    let server = start(app()).await;
    let mut sub = server.handle.subscribe("feed");
    assert_eq!(sub.channel(), "feed");
    let (mut c, _) = Client::connect(&server).await;
    c.send_json(
        json!({"event":"#publish","data":{"channel":"feed","data":{"from":"client"}},"cid":2}),
    )
    .await;
    assert_eq!(c.next_matching(|v| v["rid"] == 2).await, json!({"rid":2}));
    server.handle.publish("feed", "from server").unwrap();
    let first = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.as_str(), r#"{"from":"client"}"#);
    let second = tokio::time::timeout(WAIT, sub.recv())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(second.as_str(), r#""from server""#);
    assert_eq!(server.handle.subscriber_count("feed"), 1);
    drop(sub);
    assert_eq!(server.handle.subscriber_count("feed"), 0);
}

#[tokio::test]
async fn websocket_pings_are_answered_and_large_frames_read() {
    use futures_util::SinkExt;
    let server = start(app()).await;
    let (mut c, _) = Client::connect(&server).await;
    c.ws.send(tokio_websockets::Message::ping("are you there"))
        .await
        .unwrap();
    let pong = loop {
        let m = tokio::time::timeout(WAIT, futures_util::StreamExt::next(&mut c.ws))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        if m.is_pong() {
            break m;
        }
    };
    assert_eq!(&pong.into_payload()[..], b"are you there");
    // A 100 KB invoke (a 64-bit length frame, read straight into a buffer of its size).
    let big = "é".repeat(50_000);
    assert_eq!(c.invoke("echo", json!(big), 2).await["data"], json!(big));
}

#[tokio::test]
async fn set_auth_token_confirmed_waits_for_the_client() {
    let server = start(app()).await;
    let (mut c, data) = Client::connect(&server).await;
    let socket = server.handle.socket(data["id"].as_str().unwrap()).unwrap();
    let s2 = socket.clone();
    let call =
        tokio::spawn(async move { s2.set_auth_token_confirmed(json!({"username":"kim"})).await });
    let frame = c.next_matching(|v| v["event"] == "#setAuthToken").await;
    assert!(frame["data"]["token"].is_string());
    let cid = frame["cid"].as_u64().unwrap();
    c.send_json(json!({ "rid": cid })).await;
    call.await.unwrap().unwrap();
    assert_eq!(socket.auth_token().unwrap()["username"], "kim");
}

#[tokio::test]
async fn socket_events() {
    use futures_util::SinkExt;
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    let server = start(app().on_event(move |_, ev| {
        let _ = tx.send(format!("{ev:?}"));
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    let mut next = async || {
        tokio::time::timeout(WAIT, rx.recv())
            .await
            .unwrap()
            .unwrap()
    };
    c.invoke("#subscribe", json!({"channel":"a"}), 2).await;
    assert_eq!(next().await, r#"Subscribe("a")"#);
    c.invoke("#unsubscribe", json!("a"), 3).await;
    assert_eq!(next().await, r#"Unsubscribe("a")"#);
    c.invoke("login", json!("lee"), 4).await;
    assert_eq!(next().await, "Authenticate");
    c.send(r##"{"event":"#removeAuthToken"}"##).await;
    assert_eq!(next().await, "Deauthenticate");
    c.send(r##"{"event":"#authenticate","data":"bad","cid":5}"##)
        .await;
    assert!(next().await.starts_with("BadAuthToken"));
    c.invoke("#subscribe", json!({"channel":"b"}), 6).await;
    assert_eq!(next().await, r#"Subscribe("b")"#);
    c.ws.close().await.unwrap();
    assert_eq!(next().await, r#"Unsubscribe("b")"#);
}

#[tokio::test]
async fn frames_sent_with_the_upgrade_request_are_not_lost() {
    use tokio::io::AsyncReadExt;
    let server = start(app()).await;
    let mut s = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    // The request and the first WebSocket frame in one write: the server reads both at once.
    let mut bytes = format!(
        "GET /socketcluster/ HTTP/1.1\r\nHost: {}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n",
        server.addr
    )
    .into_bytes();
    let payload = br##"{"event":"#handshake","data":{},"cid":1}"##;
    let mask = [1u8, 2, 3, 4];
    bytes.extend_from_slice(&[0x81, 0x80 | payload.len() as u8]);
    bytes.extend_from_slice(&mask);
    bytes.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    while !got.windows(8).any(|w| w == br#"{"rid":1"#) {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("no handshake reply")
            .unwrap();
        assert!(n > 0, "closed before the handshake reply");
        got.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&got).starts_with("HTTP/1.1 101"));
}

#[tokio::test]
async fn publishes_in_quick_succession_are_held_until_the_interval_ends_or_the_client_speaks() {
    // Held at any delivery rate (`publish_batch_above(0)`), so that this one socket shows it.
    let server = start(
        app()
            .publish_batch(Duration::from_secs(2))
            .publish_batch_above(0),
    )
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"news"}), 2).await,
        json!({"rid":2})
    );
    // The first publish after a quiet spell is written at once.
    server.handle.publish("news", 0).unwrap();
    assert_eq!(
        c.next_matching(|v| v["event"] == "#publish").await["data"]["data"],
        0
    );
    // Those that follow within the interval are held...
    for i in 1..=50 {
        server.handle.publish("news", i).unwrap();
    }
    assert!(
        tokio::time::timeout(Duration::from_millis(500), c.next())
            .await
            .is_err(),
        "a publish was written within the interval"
    );
    // ...and all arrive, in order, when it ends.
    for i in 1..=50 {
        assert_eq!(c.next().await["data"]["data"], i);
    }
    // Held publishes go out before the client's next message is answered.
    for i in 51..=60 {
        server.handle.publish("news", i).unwrap();
    }
    c.send_json(json!({"event":"echo","data":"now","cid":3}))
        .await;
    for i in 51..=60 {
        assert_eq!(c.next().await["data"]["data"], i);
    }
    assert_eq!(c.next().await, json!({"rid":3,"data":"now"}));
}

#[tokio::test]
async fn publishes_are_not_held_while_the_server_delivers_few() {
    // The default `publish_batch_above` (50,000 deliveries/s): one socket getting a burst of 50
    // is far below it, so nothing waits for the (long) interval.
    let server = start(app().publish_batch(Duration::from_secs(2))).await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"news"}), 2).await,
        json!({"rid":2})
    );
    for round in 0..3 {
        for i in 0..50 {
            server.handle.publish("news", round * 50 + i).unwrap();
        }
        for i in 0..50 {
            let v = tokio::time::timeout(Duration::from_millis(1000), c.next())
                .await
                .unwrap_or_else(|_| panic!("publish {} held", round * 50 + i));
            assert_eq!(v["data"]["data"], round * 50 + i);
        }
    }
}

#[tokio::test]
async fn sync_procedures_answer_inline() {
    let server = start(app()).await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(
        c.invoke("echoSync", json!({"a":[1,2]}), 2).await,
        json!({"rid":2,"data":{"a":[1,2]}})
    );
    assert_eq!(
        c.invoke("echoSync", Value::Null, 3).await,
        json!({"rid":3,"data":null})
    );
    let failed = c.invoke("failSync", json!(1), 4).await;
    assert_eq!(failed["rid"], 4);
    assert_eq!(failed["error"]["name"], "BadRequest");
    assert_eq!(failed["error"]["message"], "no failSync");
    // Back and forth between procedures on one socket: each invoke reaches its own.
    assert_eq!(
        c.invoke("echoSync", json!(5), 5).await,
        json!({"rid":5,"data":5})
    );
    let failed = c.invoke("failSync", json!(1), 6).await;
    assert_eq!(failed["error"]["message"], "no failSync");
    // Replies around the frame header's length forms: 7-bit, 16-bit and 64-bit lengths.
    for (cid, len) in [(7, 100), (8, 110), (9, 126), (10, 1000), (11, 70_000)] {
        let text = "x".repeat(len);
        assert_eq!(
            c.invoke("echoSync", json!(text), cid).await,
            json!({"rid":cid,"data":text})
        );
    }
}

/// A masked client text frame.
fn client_frame(payload: &[u8]) -> Vec<u8> {
    let mask = [7u8, 1, 9, 3];
    let mut f = vec![0x81];
    match payload.len() {
        n if n < 126 => f.push(0x80 | n as u8),
        n => {
            f.push(0x80 | 126);
            f.extend_from_slice(&(n as u16).to_be_bytes());
        }
    }
    f.extend_from_slice(&mask);
    f.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    f
}

#[tokio::test]
async fn a_read_of_many_frames_is_handled_whole_and_in_order() {
    use tokio::io::AsyncReadExt;
    let server = start(app()).await;
    let mut s = upgrade_stream(server.addr, "/socketcluster/", "").await;
    // The handshake and 300 invokes in one write: far more frames than one read burst handles
    // (the rest must wait for the next round, none dropped), sync and async procedures mixed.
    let mut bytes = client_frame(br##"{"event":"#handshake","data":{},"cid":1}"##);
    for cid in 2..302u64 {
        let event = if cid % 3 == 0 { "echo" } else { "echoSync" };
        let frame = format!(r#"{{"event":"{event}","data":{cid},"cid":{cid}}}"#);
        bytes.extend(client_frame(frame.as_bytes()));
    }
    s.write_all(&bytes).await.unwrap();
    let mut got = Vec::new();
    let mut rids = Vec::new();
    let mut buf = [0u8; 4096];
    while rids.len() < 301 {
        let n = tokio::time::timeout(WAIT, s.read(&mut buf))
            .await
            .expect("replies stopped coming")
            .unwrap();
        assert!(n > 0, "closed after {} replies", rids.len());
        got.extend_from_slice(&buf[..n]);
        // Whole server frames (unmasked, short) off the front.
        while got.len() >= 2 && got.len() >= 2 + usize::from(got[1] & 0x7f) {
            assert!(got[1] < 126, "unexpectedly long frame");
            let len = usize::from(got[1]);
            let v: Value = serde_json::from_slice(&got[2..2 + len]).unwrap();
            got.drain(..2 + len);
            if let Some(rid) = v["rid"].as_u64() {
                if rid > 1 {
                    assert_eq!(v["data"], json!(rid), "{v}");
                }
                rids.push(rid);
            }
        }
    }
    // Sync replies are written as their invokes are read, async ones when they complete: each
    // kind in order, every invoke answered once.
    let sync: Vec<u64> = rids
        .iter()
        .copied()
        .filter(|r| *r > 1 && r % 3 != 0)
        .collect();
    assert!(sync.windows(2).all(|w| w[0] < w[1]), "{sync:?}");
    rids.sort_unstable();
    assert_eq!(rids, (1..302).collect::<Vec<u64>>());
}
