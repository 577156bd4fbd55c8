//! Every middleware stage with allow, block and transform.
#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{Client, start, upgrade_status};
use sc_worker::{Blocked, Data, InboundKind, ScError, ScServer, ScServerBuilder};
use serde_json::{Value, json};

#[derive(Clone)]
struct User(String);

fn base() -> ScServerBuilder {
    ScServer::builder()
        .auth_key("mw-key")
        .procedure("echo", |req| async move { Ok(req.data) })
        .procedure("user", |req| async move {
            Ok(req.socket.get::<User>().map(|u| u.0).unwrap_or_default())
        })
        .procedure("whoami", |req| async move {
            Ok(req
                .socket
                .auth_token()
                .map(|t| (*t).clone())
                .unwrap_or(Value::Null))
        })
        .procedure("login", |req| async move {
            req.socket.set_auth_token(json!({"username": "m"}))
        })
        .receiver("note", |socket, data| async move {
            let data = data.unwrap_or_else(Data::null);
            let _ = socket.transmit("noted", data);
        })
}

#[tokio::test]
async fn handshake_ws_allow_block_transform() {
    let server = start(base().handshake_ws(|mut action| async move {
        let user = action
            .request
            .headers
            .get("x-user")
            .and_then(|v| v.to_str().ok());
        match user {
            Some("blocked") => Err(Blocked::error(ScError::new("AuthError", "go away"))),
            Some(name) => {
                let user = User(name.to_owned());
                action.extensions.insert(user);
                Ok(action)
            }
            None => Ok(action),
        }
    }))
    .await;
    // Allow.
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(c.invoke("user", Value::Null, 2).await["data"], "");
    // Block: HTTP 401.
    assert_eq!(
        upgrade_status(server.addr, "/socketcluster/", "x-user: blocked\r\n").await,
        401
    );
    // Transform: the middleware's extension is on the socket.
    let mut s = common::upgrade_stream(server.addr, "/socketcluster/", "x-user: zoe\r\n").await;
    use tokio::io::AsyncWriteExt;
    s.shutdown().await.unwrap();
    let socket_user = {
        let builder = tokio_websockets::ClientBuilder::new()
            .uri(&format!("ws://{}/socketcluster/", server.addr))
            .unwrap()
            .add_header(
                http::HeaderName::from_static("x-user"),
                http::HeaderValue::from_static("zoe"),
            )
            .unwrap();
        let (ws, _) = builder.connect().await.unwrap();
        let mut c = Client {
            ws,
            auto_pong: false,
        };
        c.handshake(None).await;
        c.invoke("user", Value::Null, 2).await
    };
    assert_eq!(socket_user["data"], "zoe");
}

#[tokio::test]
async fn handshake_sc_allow_block_transform() {
    let server = start(base().handshake_sc(|mut action| async move {
        let token = action.auth_token.clone();
        match token.as_ref().and_then(|t| t["username"].as_str()) {
            Some("m") => Err(Blocked::error(
                ScError::new("AuthError", "banned").with("statusCode", 4501),
            )),
            _ if action.auth_error.is_some() => Err(Blocked::silent()),
            _ => {
                // Transform: every anonymous socket is handed a guest identity.
                if action.auth_token.is_none() {
                    action.auth_token = Some(json!({"username": "guest"}));
                }
                Ok(action)
            }
        }
    }))
    .await;
    // Allow + transform.
    let (mut c, data) = Client::connect(&server).await;
    assert_eq!(data["isAuthenticated"], true);
    assert_eq!(
        c.invoke("whoami", Value::Null, 2).await["data"]["username"],
        "guest"
    );
    // Block with an error carrying statusCode.
    c.send_json(json!({"event":"login","cid":3})).await;
    let set = c.next_matching(|v| v["event"] == "#setAuthToken").await;
    let token = set["data"]["token"].as_str().unwrap().to_owned();
    let mut b = Client::open(&server).await;
    b.send_json(json!({"event":"#handshake","data":{"authToken":token},"cid":1}))
        .await;
    let reply = b.next().await;
    assert_eq!(reply["error"]["name"], "AuthError");
    assert_eq!(b.closed().await, 4501);
    // Silent block (a bad token here): SilentMiddlewareBlockedError, close 4008.
    let mut s = Client::open(&server).await;
    s.send_json(json!({"event":"#handshake","data":{"authToken":"bad"},"cid":1}))
        .await;
    let reply = s.next().await;
    assert_eq!(reply["error"]["name"], "SilentMiddlewareBlockedError");
    assert_eq!(reply["error"]["type"], "handshake");
    assert_eq!(s.closed().await, 4008);
}

#[tokio::test]
async fn inbound_raw_allow_block_transform() {
    let server = start(base().inbound_raw(|mut action| async move {
        if action.message.contains("DROP") {
            return Err(Blocked::silent());
        }
        action.message = action.message.replace("lower", "UPPER");
        Ok(action)
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(c.invoke("echo", json!("plain"), 2).await["data"], "plain");
    c.send(r#"{"event":"echo","data":"DROP","cid":3}"#).await;
    assert_eq!(
        c.invoke("echo", json!("lower case"), 4).await,
        json!({"rid":4,"data":"UPPER case"})
    );
}

#[tokio::test]
async fn inbound_allow_block_transform_for_every_kind() {
    let server = start(base().inbound(|mut action| async move {
        match (action.kind, action.name.as_str()) {
            (InboundKind::Invoke, "echo") => {
                if action
                    .data
                    .as_ref()
                    .is_some_and(|d| d.as_str() == "\"block\"")
                {
                    return Err(ScError::new("Denied", "no echo").into());
                }
                if action
                    .data
                    .as_ref()
                    .is_some_and(|d| d.as_str() == "\"silent\"")
                {
                    return Err(Blocked::silent());
                }
                if action
                    .data
                    .as_ref()
                    .is_some_and(|d| d.as_str() == "\"swap\"")
                {
                    action.data = Some(Data::to("swapped").unwrap());
                }
                Ok(action)
            }
            (InboundKind::Transmit, "note") => {
                if action
                    .data
                    .as_ref()
                    .is_some_and(|d| d.as_str() == "\"block\"")
                {
                    return Err(Blocked::silent());
                }
                action.data = action
                    .data
                    .map(|d| Data::to(&format!("{}!", d.parse::<String>().unwrap())).unwrap());
                Ok(action)
            }
            (InboundKind::Subscribe, ch) if ch.starts_with("private/") => {
                Err(ScError::new("ForbiddenError", "private").into())
            }
            (InboundKind::PublishIn, "ro") => Err(ScError::new("ReadOnly", "read only").into()),
            (InboundKind::PublishIn, "loud") => {
                let text: String = action.data.as_ref().unwrap().parse().unwrap();
                action.data = Some(Data::to(&text.to_uppercase()).unwrap());
                Ok(action)
            }
            (InboundKind::Authenticate, _) => {
                if action.auth_token.as_ref().unwrap()["username"] == "m" {
                    Err(ScError::new("AuthError", "not you").into())
                } else {
                    Ok(action)
                }
            }
            _ => Ok(action),
        }
    }))
    .await;
    let (mut c, _) = Client::connect(&server).await;
    // invoke: allow, block with error, silent block, transform.
    assert_eq!(c.invoke("echo", json!("ok"), 2).await["data"], "ok");
    let r = c.invoke("echo", json!("block"), 3).await;
    assert_eq!(
        (&r["error"]["name"], &r["error"]["message"]),
        (&json!("Denied"), &json!("no echo"))
    );
    let r = c.invoke("echo", json!("silent"), 4).await;
    assert_eq!(r["error"]["name"], "SilentMiddlewareBlockedError");
    assert_eq!(r["error"]["type"], "inbound");
    assert_eq!(c.invoke("echo", json!("swap"), 5).await["data"], "swapped");
    // transmit: block (dropped), transform.
    c.send_json(json!({"event":"note","data":"block"})).await;
    c.send_json(json!({"event":"note","data":"hi"})).await;
    assert_eq!(
        c.next_matching(|v| v["event"] == "noted").await,
        json!({"event":"noted","data":"hi!"})
    );
    // subscribe: allow and block.
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"loud"}), 6).await,
        json!({"rid":6})
    );
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"ro"}), 7).await,
        json!({"rid":7})
    );
    let r = c
        .invoke("#subscribe", json!({"channel":"private/x"}), 8)
        .await;
    assert_eq!(r["error"]["name"], "ForbiddenError");
    // publishIn: block, transform.
    let r = c
        .invoke("#publish", json!({"channel":"ro","data":"x"}), 9)
        .await;
    assert_eq!(r["error"]["name"], "ReadOnly");
    c.send_json(json!({"event":"#publish","data":{"channel":"loud","data":"hey"}}))
        .await;
    assert_eq!(
        c.next_matching(|v| v["event"] == "#publish").await["data"],
        json!({"channel":"loud","data":"HEY"})
    );
    // authenticate: block (valid token refused), allow.
    c.send_json(json!({"event":"login","cid":10})).await;
    let set = c.next_matching(|v| v["event"] == "#setAuthToken").await;
    let token = set["data"]["token"].as_str().unwrap().to_owned();
    let (mut d, _) = Client::connect(&server).await;
    let r = d.invoke("#authenticate", json!(token), 2).await;
    assert_eq!(r["data"]["isAuthenticated"], false);
    assert_eq!(r["data"]["authError"]["name"], "AuthError");
}

#[tokio::test]
async fn outbound_allow_block_transform() {
    let server = start(base().outbound(|mut action| async move {
        match action.channel.as_ref() {
            "hidden" => Err(Blocked::silent()),
            "stamped" => {
                let n: i64 = action.data.as_ref().unwrap().parse().unwrap();
                action.data = Some(Data::to(&json!({"n": n, "to": action.socket.id()})).unwrap());
                Ok(action)
            }
            _ => Ok(action),
        }
    }))
    .await;
    let (mut c, data) = Client::connect(&server).await;
    for (i, ch) in ["plain", "hidden", "stamped"].iter().enumerate() {
        let r = c
            .invoke("#subscribe", json!({"channel": ch}), 2 + i as u64)
            .await;
        assert_eq!(r, json!({"rid": 2 + i as u64}));
    }
    server.handle.publish("hidden", 1).unwrap();
    server.handle.publish("stamped", 2).unwrap();
    server.handle.publish("plain", 3).unwrap();
    let first = c.next_matching(|v| v["event"] == "#publish").await;
    assert_eq!(
        first["data"],
        json!({"channel":"stamped","data":{"n":2,"to":data["id"]}})
    );
    let second = c.next_matching(|v| v["event"] == "#publish").await;
    assert_eq!(second["data"], json!({"channel":"plain","data":3}));
}

/// Each `inbound`/`inbound_for` call adds a middleware: an action goes through every one that
/// sees its kind, in registration order, each getting what the one before returned; the first
/// block stops it.
#[tokio::test]
async fn stacked_inbound_middlewares_run_in_registration_order() {
    fn append(action: &mut sc_worker::InboundAction, tag: &str) {
        let text: String = action.data.as_ref().unwrap().parse().unwrap();
        action.data = Some(Data::to(&format!("{text}{tag}")).unwrap());
    }
    let server = start(
        base()
            .inbound(|mut a| async move {
                if a.kind == InboundKind::Invoke {
                    append(&mut a, "1");
                }
                Ok(a)
            })
            // Sees subscriptions only: it must not touch the invoke.
            .inbound_for(&[InboundKind::Subscribe], |a| async move {
                if a.name == "closed" {
                    return Err(ScError::new("Closed", "second middleware").into());
                }
                Ok(a)
            })
            .inbound(|mut a| async move {
                if a.kind == InboundKind::Invoke {
                    append(&mut a, "2");
                }
                Ok(a)
            })
            .inbound_for(&[InboundKind::Invoke], |mut a| async move {
                if a.data.as_ref().is_some_and(|d| d.as_str() == "\"stop12\"") {
                    return Err(ScError::new("Stopped", "third").into());
                }
                append(&mut a, "3");
                Ok(a)
            }),
    )
    .await;
    let (mut c, _) = Client::connect(&server).await;
    assert_eq!(c.invoke("echo", json!("x"), 2).await["data"], "x123");
    // The third saw what the first two made of it, and its block stops the action.
    let r = c.invoke("echo", json!("stop"), 3).await;
    assert_eq!(r["error"]["name"], "Stopped");
    // A subscription passes the invoke-only middleware by and is blocked by its own.
    let r = c.invoke("#subscribe", json!({"channel":"closed"}), 4).await;
    assert_eq!(r["error"]["name"], "Closed");
    assert_eq!(
        c.invoke("#subscribe", json!({"channel":"open"}), 5).await,
        json!({"rid":5})
    );
}

/// `handshake_ws` is async: it awaits a lookup in the server's store and refuses a banned user
/// with HTTP 401, or hands the socket what it found.
#[tokio::test]
async fn async_handshake_ws_awaits_a_store_lookup_and_rejects() {
    use std::sync::Arc;

    use sc_worker::sc_store::{MemoryStore, Store};

    let store: Arc<dyn Store> = Arc::new(MemoryStore::new());
    store.set("banned:eve", "spam".into(), None).await.unwrap();
    store.set("role:bob", "admin".into(), None).await.unwrap();
    let lookup = store.clone();
    let server = start(
        base()
            .store(store.clone())
            .handshake_ws(move |mut action| {
                let store = lookup.clone();
                async move {
                    let user = action
                        .request
                        .headers
                        .get("x-user")
                        .and_then(|v| v.to_str().ok())
                        .unwrap_or_default()
                        .to_owned();
                    if let Some(why) = store.get(&format!("banned:{user}")).await.unwrap() {
                        let why = String::from_utf8_lossy(&why).into_owned();
                        return Err(ScError::new("Banned", format!("banned: {why}")).into());
                    }
                    action.extensions.insert(User(user));
                    Ok(action)
                }
            })
            // The store is reachable from handlers too.
            .procedure("role", |req| async move {
                let user = req.socket.get::<User>().unwrap().0;
                let store = req.socket.server().store().unwrap().clone();
                let role = store.get(&format!("role:{user}")).await.unwrap();
                Ok(role.map_or(Value::Null, |r| String::from_utf8_lossy(&r).into()))
            }),
    )
    .await;
    assert_eq!(
        upgrade_status(server.addr, "/socketcluster/", "x-user: eve\r\n").await,
        401
    );
    let mut bob = Client::connect_with(&server, &[("x-user", "bob")]).await;
    assert_eq!(bob.invoke("user", Value::Null, 2).await["data"], "bob");
    assert_eq!(bob.invoke("role", Value::Null, 3).await["data"], "admin");
}

/// An invalid config is an error from `build_layer` and `build_service`, never replaced by the
/// defaults.
#[test]
fn invalid_config_is_a_build_error() {
    use sc_worker::Config;
    let bad_origins = Config {
        origins: vec!["example.com".to_owned()],
        ..Config::default()
    };
    let e = ScServer::builder()
        .config(bad_origins.clone())
        .build_layer()
        .unwrap_err();
    assert!(e.to_string().contains("example.com"), "{e}");
    let e = ScServer::builder()
        .config(bad_origins)
        .build_service()
        .unwrap_err();
    assert!(e.to_string().contains("origin"), "{e}");
    let e = ScServer::builder()
        .ping_interval(std::time::Duration::from_secs(40))
        .build_layer()
        .unwrap_err();
    assert!(e.to_string().contains("ping_interval_ms"), "{e}");
    let e = ScServer::builder()
        .config(Config {
            trusted_proxies: vec!["10.0.0.0/33".to_owned()],
            ..Config::default()
        })
        .build_service()
        .unwrap_err();
    assert!(e.to_string().contains("10.0.0.0/33"), "{e}");
    // The valid config it was derived from builds.
    assert!(ScServer::builder().build_service().is_ok());
}
