//! Scenarios shared by the integration tests against the real socketcluster-server (the
//! reference server in `tests/js`) and against `socketcluster serve`. Each scenario is a generic
//! async function over a [`Server`]; the test files only say how to start the server process.
//!
//! Included with `#[path]` by `crates/sc-cli/tests/client_vs_serve.rs`, so it uses nothing but
//! `sc-client`, `tokio`, `futures-util` and `serde_json`.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt as _;
use sc_client::{
    ChannelEvent, ChannelState, Client, ConnectionEvent, ConnectionState, Error, Events,
    FileTokenStore, MemoryTokenStore, SubscribeOptions, TokenStore,
};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt as _, BufReader};
use tokio::process::{Child, Command};
use tokio::time::{Instant, timeout};

/// The auth key every test server gets.
pub const AUTH_KEY: &str = "sc-client-test-key";

/// How long any single awaited event may take before the test fails.
pub const WAIT: Duration = Duration::from_secs(10);

/// Builds the command that starts a server on `port` with auth key `key`.
pub type Launcher = fn(port: u16, key: &str) -> Command;

/// A server process on 127.0.0.1, killed when dropped.
pub struct Server {
    launcher: Launcher,
    pub port: u16,
    child: Option<Child>,
}

/// A free TCP port on 127.0.0.1.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

impl Server {
    /// Starts a server on a free port and waits until it prints that it is listening.
    pub async fn start(launcher: Launcher) -> Server {
        Server::start_on(launcher, free_port()).await
    }

    /// Starts a server on `port`.
    pub async fn start_on(launcher: Launcher, port: u16) -> Server {
        let mut server = Server {
            launcher,
            port,
            child: None,
        };
        server.spawn().await;
        server
    }

    /// `ws://127.0.0.1:PORT` (the client adds the default path).
    pub fn url(&self) -> String {
        format!("ws://127.0.0.1:{}", self.port)
    }

    /// Spawns the process and returns the instant it said it was listening.
    async fn spawn(&mut self) -> Instant {
        let mut cmd = (self.launcher)(self.port, AUTH_KEY);
        cmd.stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .stdin(Stdio::null())
            .kill_on_drop(true);
        let mut child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start the server {cmd:?}: {e}"));
        let stdout = child.stdout.take().unwrap();
        let mut lines = BufReader::new(stdout).lines();
        let ready = timeout(Duration::from_secs(30), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                if line.contains("listening on") {
                    return Instant::now();
                }
            }
            panic!("the server exited before listening: {cmd:?}");
        })
        .await
        .unwrap_or_else(|_| panic!("the server did not listen within 30 s: {cmd:?}"));
        // Keep draining its output so that it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        self.child = Some(child);
        ready
    }

    /// Kills the process with SIGKILL and waits for it to be gone.
    pub async fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            child.kill().await.unwrap();
        }
    }

    /// Starts the process again on the same port; returns when it is listening (that instant).
    pub async fn restart(&mut self) -> Instant {
        self.kill().await;
        self.spawn().await
    }
}

/// A client for `server` with a fresh in-memory token store, not yet connected.
pub fn client(server: &Server) -> Client {
    Client::builder(&server.url()).build().unwrap()
}

/// A connected client.
pub async fn connected(server: &Server) -> Client {
    timeout(WAIT, Client::builder(&server.url()).connect())
        .await
        .expect("connect timed out")
        .expect("connect failed")
}

/// The next event of `events`, failing the test after [`WAIT`].
pub async fn next_event(events: &mut Events) -> ConnectionEvent {
    timeout(WAIT, events.next())
        .await
        .expect("no connection event")
        .expect("event stream ended")
}

/// Waits for the auth state to become `want` (or be it already).
pub async fn wait_auth(client: &Client, events: &mut Events, want: bool) {
    timeout(WAIT, async {
        while client.is_authenticated() != want {
            events.next().await.unwrap();
        }
    })
    .await
    .expect("auth state did not change");
}

/// The next channel message, failing after [`WAIT`].
pub async fn next_message(ch: &mut sc_client::Channel) -> Value {
    timeout(WAIT, ch.next_message())
        .await
        .expect("no channel message")
        .expect("channel ended")
        .json()
        .unwrap()
}

async fn login(client: &Client, username: &str) {
    let mut events = client.events();
    let reply: Value = client
        .invoke("login", &json!({ "username": username }))
        .await
        .unwrap();
    assert_eq!(reply, Value::Null);
    wait_auth(client, &mut events, true).await;
}

async fn whoami(client: &Client) -> Value {
    client.invoke("whoami", &()).await.unwrap()
}

// ---------------------------------------------------------------------------------------------
// Scenarios
// ---------------------------------------------------------------------------------------------

/// Handshake: socket id, ping timeout, auth state, the `greet` transmit, state events, and a
/// disconnect/connect cycle giving a new id.
pub async fn handshake(server: &Server) {
    let client = client(server);
    let mut greet = client.receiver("greet");
    let mut events = client.events();
    assert_eq!(client.state(), ConnectionState::Closed);
    client.connect().unwrap();
    assert_eq!(
        next_event(&mut events).await,
        ConnectionEvent::Connecting { attempt: 0 }
    );
    let ConnectionEvent::Open {
        id,
        is_authenticated,
        ping_timeout,
        auth_error,
    } = next_event(&mut events).await
    else {
        panic!("expected Open");
    };
    assert!(!id.is_empty());
    assert!(!is_authenticated);
    assert_eq!(auth_error, None);
    assert_eq!(ping_timeout, Duration::from_secs(30));
    assert_eq!(client.id().as_deref(), Some(id.as_str()));
    assert_eq!(client.ping_timeout(), Some(Duration::from_secs(30)));
    assert_eq!(client.state(), ConnectionState::Open);
    assert!(!client.is_authenticated());
    let hello = timeout(WAIT, greet.next()).await.unwrap().unwrap();
    assert_eq!(hello.json::<String>().unwrap(), "hello world");

    let other = connected(server).await;
    assert_ne!(other.id(), client.id());

    client.disconnect();
    assert_eq!(client.state(), ConnectionState::Closed);
    let ConnectionEvent::Closed { code, .. } = next_event(&mut events).await else {
        panic!("expected Closed");
    };
    assert_eq!(code.0, 1000);
    assert!(matches!(client.transmit("ping", &()), Err(Error::Closed)));

    client.connect().unwrap();
    timeout(WAIT, client.wait_open()).await.unwrap().unwrap();
    assert_ne!(client.id().as_deref(), Some(id.as_str()));
}

/// Echo: typed and raw invokes, Unicode, nesting, a 1 MiB payload.
pub async fn echo(server: &Server) {
    let client = connected(server).await;
    for value in [
        json!(null),
        json!(42),
        json!("héllo wörld 🌍 \u{2028} \"quoted\" \\ \n"),
        json!({"a": [1, 2, {"b": [true, false, null]}], "c": {"d": {"e": -1.5}}}),
        json!([[[[[[[[[[[[[[[[[[[[1]]]]]]]]]]]]]]]]]]]]),
    ] {
        let back: Value = client.invoke("echo", &value).await.unwrap();
        assert_eq!(back, value);
    }

    #[derive(serde::Serialize, serde::Deserialize, PartialEq, Debug)]
    struct Point {
        x: i32,
        label: String,
    }
    let p = Point {
        x: 7,
        label: "seven".to_owned(),
    };
    let back: Point = client.invoke("echo", &p).await.unwrap();
    assert_eq!(back, p);

    let raw =
        serde_json::value::RawValue::from_string(r#"{"k":[1,"two",3.5]}"#.to_owned()).unwrap();
    let back = client
        .invoke_raw("echo", Some(&raw))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(back.get(), raw.get());

    let big = "x".repeat(1 << 20);
    let back: String = client.invoke("echo", &big).await.unwrap();
    assert_eq!(back.len(), big.len());
}

/// Fail: the error object comes back; an unknown procedure times out (per-call timeout) and the
/// connection stays usable.
pub async fn fail(server: &Server) {
    let client = connected(server).await;
    let err = client
        .invoke::<_, Value>("fail", &json!({"x": 1}))
        .await
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert_eq!(remote.name, "BadRequest");
    assert_eq!(remote.message, "fail requested");
    assert_eq!(err.name(), "BadRequest");

    let started = Instant::now();
    let err = client
        .invoke_with_timeout::<_, Value>("no-such-procedure", &1, Duration::from_millis(300))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Timeout { .. }), "{err:?}");
    assert_eq!(err.name(), "TimeoutError");
    assert!(started.elapsed() >= Duration::from_millis(300));
    assert!(started.elapsed() < Duration::from_secs(3));

    let back: i32 = client.invoke("echo", &5).await.unwrap();
    assert_eq!(back, 5);
}

/// Ping/count: transmits arrive in order before a later invoke; a new socket starts at 0.
pub async fn ping_count(server: &Server) {
    let client = connected(server).await;
    assert_eq!(client.invoke::<_, u64>("count", &()).await.unwrap(), 0);
    for _ in 0..25 {
        client.transmit("ping", &()).unwrap();
    }
    assert_eq!(client.invoke::<_, u64>("count", &()).await.unwrap(), 25);
    client.transmit_raw("ping", None).unwrap();
    assert_eq!(client.invoke::<_, u64>("count", &()).await.unwrap(), 26);
    let other = connected(server).await;
    assert_eq!(other.invoke::<_, u64>("count", &()).await.unwrap(), 0);
}

/// Login/whoami: `#setAuthToken` is stored and authenticates; the stored token authenticates a
/// new connection in its handshake; `authenticate` and `deauthenticate`; a bad token.
pub async fn login_whoami(server: &Server) {
    let store = Arc::new(MemoryTokenStore::default());
    let client = Client::builder(&server.url())
        .token_store_arc(store.clone())
        .connect()
        .await
        .unwrap();
    assert_eq!(whoami(&client).await, Value::Null);
    login(&client, "alice").await;
    assert!(client.is_authenticated());
    let me = whoami(&client).await;
    assert_eq!(me["username"], "alice");
    assert_eq!(client.auth_token().unwrap()["username"], "alice");
    let token = client.signed_auth_token().unwrap();
    assert_eq!(store.load().unwrap().as_deref(), Some(token.as_str()));

    // The stored token in the handshake of a new connection.
    let second = Client::builder(&server.url())
        .token_store(MemoryTokenStore::with_token(token.clone()))
        .connect()
        .await
        .unwrap();
    assert!(second.is_authenticated());
    assert_eq!(whoami(&second).await["username"], "alice");

    // authenticate() with the token on an anonymous connection.
    let third = connected(server).await;
    let status = third.authenticate(&token).await.unwrap();
    assert!(status.is_authenticated);
    assert_eq!(status.auth_error, None);
    assert!(third.is_authenticated());
    assert_eq!(whoami(&third).await["username"], "alice");
    third.deauthenticate().unwrap();
    assert!(!third.is_authenticated());
    assert_eq!(whoami(&third).await, Value::Null);
    let err = third.authenticate("not-a-jwt").await.unwrap_err();
    assert_eq!(err.name(), "AuthTokenInvalidError", "{err:?}");
    assert!(!third.is_authenticated());

    // A bad stored token: the handshake says why, and the server's #removeAuthToken empties the
    // store (it comes before the reply to a later invoke).
    let bad_store = Arc::new(MemoryTokenStore::with_token("not-a-jwt"));
    let bad = Client::builder(&server.url())
        .token_store_arc(bad_store.clone())
        .build()
        .unwrap();
    let mut events = bad.events();
    bad.connect().unwrap();
    let open = loop {
        if let ev @ ConnectionEvent::Open { .. } = next_event(&mut events).await {
            break ev;
        }
    };
    let ConnectionEvent::Open {
        is_authenticated,
        auth_error,
        ..
    } = open
    else {
        unreachable!()
    };
    assert!(!is_authenticated);
    assert_eq!(auth_error.unwrap().name, "AuthTokenInvalidError");
    assert_eq!(whoami(&bad).await, Value::Null);
    assert_eq!(bad_store.load().unwrap(), None);
}

/// Private channel rule: ForbiddenError before login, success after; `waitForAuth` channels
/// subscribe once authenticated.
pub async fn private_channel(server: &Server) {
    let client = connected(server).await;
    let mut ch = client.subscribe("private/secret");
    let err = timeout(WAIT, ch.wait_subscribed())
        .await
        .unwrap()
        .unwrap_err();
    let remote = err.remote().expect("a remote error");
    assert_eq!(remote.name, "ForbiddenError");
    assert_eq!(remote.message, "private channel requires authentication");
    assert!(matches!(
        timeout(WAIT, ch.next()).await.unwrap(),
        Some(ChannelEvent::SubscribeFailed(_))
    ));
    assert_eq!(timeout(WAIT, ch.next()).await.unwrap(), None);
    assert_eq!(client.channel_state("private/secret"), None);

    let mut waiting = client.subscribe_with(
        "private/waiting",
        SubscribeOptions {
            wait_for_auth: true,
            data: None,
        },
    );
    // Not sent before authentication: still pending after a round trip.
    let _: Value = client.invoke("echo", &1).await.unwrap();
    assert_eq!(waiting.state(), ChannelState::Pending);

    login(&client, "bob").await;
    timeout(WAIT, waiting.wait_subscribed())
        .await
        .unwrap()
        .unwrap();
    let mut ch = client.subscribe("private/secret");
    timeout(WAIT, ch.wait_subscribed()).await.unwrap().unwrap();

    // Publishing to private/ is not restricted.
    let anon = connected(server).await;
    anon.invoke_publish("private/secret", &"psst")
        .await
        .unwrap();
    assert_eq!(next_message(&mut ch).await, json!("psst"));
    anon.publish("private/waiting", &"hi").unwrap();
    assert_eq!(next_message(&mut waiting).await, json!("hi"));
}

/// Subscribe/publish/unsubscribe: every subscriber, the publisher included, gets every message
/// in order, through both publish forms and the server's own publish.
pub async fn pubsub(server: &Server) {
    let a = connected(server).await;
    let b = connected(server).await;
    let mut cha = a.subscribe("news");
    let mut chb = b.subscribe("news");
    timeout(WAIT, cha.wait_subscribed()).await.unwrap().unwrap();
    timeout(WAIT, chb.wait_subscribed()).await.unwrap().unwrap();
    assert_eq!(a.subscriptions(), vec!["news".to_owned()]);

    const N: u64 = 100;
    for i in 0..N {
        if i % 3 == 0 {
            a.invoke_publish("news", &i).await.unwrap();
        } else {
            a.publish("news", &i).unwrap();
        }
    }
    for ch in [&mut cha, &mut chb] {
        for i in 0..N {
            assert_eq!(next_message(ch).await, json!(i));
        }
    }

    let _: Value = a
        .invoke(
            "serverPublish",
            &json!({"channel": "news", "data": {"from": "server"}}),
        )
        .await
        .unwrap();
    assert_eq!(next_message(&mut cha).await, json!({"from": "server"}));
    assert_eq!(next_message(&mut chb).await, json!({"from": "server"}));

    chb.unsubscribe();
    assert_eq!(chb.state(), ChannelState::Unsubscribed);
    assert_eq!(timeout(WAIT, chb.next()).await.unwrap(), None);
    assert!(b.subscriptions().is_empty());
    a.invoke_publish("news", &"after").await.unwrap();
    assert_eq!(next_message(&mut cha).await, json!("after"));

    // b subscribes again and only sees what is published from then on.
    let mut chb = b.subscribe("news");
    timeout(WAIT, chb.wait_subscribed()).await.unwrap().unwrap();
    a.invoke_publish("news", &"again").await.unwrap();
    assert_eq!(next_message(&mut chb).await, json!("again"));
    assert_eq!(next_message(&mut cha).await, json!("again"));
}

/// Messages sent while disconnected wait in a bounded buffer, fail clearly when it is full, and
/// go out in order once connected.
pub async fn buffer_while_disconnected(launcher: Launcher) {
    let port = free_port();
    let client = Client::builder(&format!("ws://127.0.0.1:{port}"))
        .buffer_capacity(4)
        .build()
        .unwrap();
    let mut events = client.events();
    client.connect().unwrap();
    // The first attempt fails: nothing listens yet.
    loop {
        if let ConnectionEvent::Reconnecting { .. } = next_event(&mut events).await {
            break;
        }
    }
    assert_eq!(client.state(), ConnectionState::Connecting);
    for _ in 0..3 {
        client.transmit("ping", &()).unwrap();
    }
    // Poll the invoke once, so that it writes itself into the buffer as the 4th message.
    let count = client.invoke_with_timeout::<_, u64>("count", &(), Duration::from_secs(30));
    tokio::pin!(count);
    tokio::select! {
        biased;
        r = &mut count => panic!("the invoke finished while disconnected: {r:?}"),
        () = std::future::ready(()) => {}
    }
    match client.transmit("ping", &()) {
        Err(Error::BufferFull { capacity }) => assert_eq!(capacity, 4),
        other => panic!("expected BufferFull, got {other:?}"),
    }
    let _server = Server::start_on(launcher, port).await;
    let counted = timeout(Duration::from_secs(30), count)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(counted, 3);
}

/// Kill -9 and restart of the server on the same port: the client reconnects by itself,
/// re-subscribes within 1 s of the server being back, and its stored token is still accepted.
/// Returns the measured time from "listening" to re-subscribed.
pub async fn kill_and_restart(server: &mut Server) -> Duration {
    let dir = std::env::temp_dir().join(format!(
        "sc-client-restart-{}-{}",
        std::process::id(),
        server.port
    ));
    std::fs::create_dir_all(&dir).unwrap();
    let store = FileTokenStore::new(dir.join("token"));
    let client = Client::builder(&server.url())
        .token_store(store.clone())
        .build()
        .unwrap();
    let mut events = client.events();
    client.connect().unwrap();
    timeout(WAIT, client.wait_open()).await.unwrap().unwrap();
    login(&client, "carol").await;
    let mut first = client.subscribe("room/1");
    let mut second = client.subscribe("room/2");
    timeout(WAIT, first.wait_subscribed())
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, second.wait_subscribed())
        .await
        .unwrap()
        .unwrap();
    let old_id = client.id().unwrap();
    while let Ok(Some(_)) = timeout(Duration::ZERO, events.next()).await {}

    let killed = Instant::now();
    server.kill().await;
    let code = loop {
        if let ConnectionEvent::Closed { code, .. } = next_event(&mut events).await {
            break code;
        }
    };
    assert!(
        code.reconnects(),
        "close code {code} must make the client reconnect"
    );
    for ch in [&mut first, &mut second] {
        assert_eq!(
            timeout(WAIT, ch.next()).await.unwrap(),
            Some(ChannelEvent::Gap)
        );
        assert_eq!(ch.state(), ChannelState::Pending);
    }

    let back = server.restart().await;
    timeout(WAIT, first.wait_subscribed())
        .await
        .unwrap()
        .unwrap();
    timeout(WAIT, second.wait_subscribed())
        .await
        .unwrap()
        .unwrap();
    let took = back.elapsed();
    eprintln!(
        "server down for {:?}, client re-subscribed {took:?} after it listened again",
        back - killed
    );
    assert!(
        took < Duration::from_secs(1),
        "re-subscribed {took:?} after the server was back"
    );

    assert_ne!(client.id().unwrap(), old_id);
    assert!(
        client.is_authenticated(),
        "the stored token was not accepted after the restart"
    );
    assert_eq!(whoami(&client).await["username"], "carol");
    assert!(store.load().unwrap().is_some());
    assert_eq!(
        client.subscriptions(),
        vec!["room/1".to_owned(), "room/2".to_owned()]
    );

    let other = connected(server).await;
    other.invoke_publish("room/1", &"one").await.unwrap();
    other.invoke_publish("room/2", &"two").await.unwrap();
    assert_eq!(next_message(&mut first).await, json!("one"));
    assert_eq!(next_message(&mut second).await, json!("two"));
    std::fs::remove_dir_all(&dir).unwrap();
    took
}
