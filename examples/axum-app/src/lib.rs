//! An axum app with ordinary routes (`GET /health`, `GET /visits`) and the SocketCluster
//! endpoint (`/socketcluster/`) on the same port: the layer takes the WebSocket upgrades on its
//! path and passes every other request to the router. The session layer, outermost, gives every
//! request and socket of one browser the same session: `/visits` counts in the session's data
//! what the sockets of that browser can read (`visits` procedure).
//!
//! ```no_run
//! # async fn run() -> Result<(), Box<dyn std::error::Error>> {
//! let (app, _handle) = example_axum_app::app()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! axum::serve(listener, app).await?;
//! # Ok(())
//! # }
//! ```

use axum::Router;
use axum::routing::get;
use sc_worker::{BuildError, ScError, ScHandle, ScServer, Session};

/// `GET /visits`: one more visit of this browser, in its session's data.
async fn visits(session: Session) -> Result<String, (axum::http::StatusCode, String)> {
    let err = |e: ScError| (axum::http::StatusCode::INTERNAL_SERVER_ERROR, e.message);
    let n: u64 = match session.get("visits").await.map_err(err)? {
        Some(d) => d.parse().unwrap_or(0),
        None => 0,
    };
    session.set("visits", n + 1).await.map_err(err)?;
    Ok((n + 1).to_string())
}

/// The app: `GET /health` answers `ok`; `GET /visits` counts this browser's visits;
/// `/socketcluster/` serves SocketCluster clients with an `echo` procedure, a `shout` procedure
/// that upper-cases a string and publishes it to the `shouts` channel, a `visits` procedure
/// that reads the session's count, and a `greet` transmit on connection.
pub fn app() -> Result<(Router, ScHandle), BuildError> {
    let (sc_layer, handle) = ScServer::builder()
        .procedure("echo", |req| async move { Ok(req.data) })
        .procedure("shout", |req| async move {
            let text: String = req
                .data
                .as_ref()
                .and_then(|d| d.parse().ok())
                .ok_or_else(|| ScError::new("BadRequest", "shout needs a string"))?;
            let loud = text.to_uppercase();
            req.socket.server().publish("shouts", loud.as_str())?;
            Ok(loud)
        })
        .procedure("visits", |req| {
            let session = req.socket.session();
            async move { session.get("visits").await }
        })
        .on_connection(|socket| {
            let _ = socket.transmit("greet", "welcome");
        })
        .build_layer()?;
    let router = Router::new()
        .route("/health", get(|| async { "ok" }))
        .route("/visits", get(visits))
        .layer(sc_layer)
        .layer(handle.session_layer());
    Ok((router, handle))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::time::Duration;

    use futures_util::{SinkExt, StreamExt};
    use serde_json::{Value, json};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio_websockets::{ClientBuilder, Message};

    const WAIT: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn health_route_and_socketcluster_invoke_share_a_port() {
        let (app, handle) = super::app().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });

        // The ordinary route.
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        tcp.write_all(b"GET /health HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .await
            .unwrap();
        let mut body = String::new();
        tokio::time::timeout(WAIT, tcp.read_to_string(&mut body))
            .await
            .unwrap()
            .unwrap();
        assert!(body.starts_with("HTTP/1.1 200"), "{body}");
        assert!(body.ends_with("ok"), "{body}");

        // A SocketCluster client: handshake, greet, invoke, and a publish it subscribed to.
        let uri = format!("ws://{addr}/socketcluster/");
        let (mut ws, _) = ClientBuilder::new()
            .uri(&uri)
            .unwrap()
            .connect()
            .await
            .unwrap();
        let mut send = Vec::new();
        send.push(json!({"event":"#handshake","data":{"authToken":null},"cid":1}));
        send.push(json!({"event":"#subscribe","data":{"channel":"shouts"},"cid":2}));
        send.push(json!({"event":"echo","data":{"hello":"axum"},"cid":3}));
        send.push(json!({"event":"shout","data":"hey","cid":4}));
        for v in send {
            ws.send(Message::text(v.to_string())).await.unwrap();
        }
        let mut got = Vec::new();
        while got.len() < 6 {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            if let Some(t) = m.as_text().filter(|t| !t.is_empty()) {
                got.push(serde_json::from_str::<Value>(t).unwrap());
            }
        }
        assert_eq!(got[0]["rid"], 1);
        assert!(got.contains(&json!({"event":"greet","data":"welcome"})));
        assert!(got.contains(&json!({"rid":2})));
        assert!(got.contains(&json!({"rid":3,"data":{"hello":"axum"}})));
        assert!(got.contains(&json!({"rid":4,"data":"HEY"})));
        assert!(
            got.contains(&json!({"event":"#publish","data":{"channel":"shouts","data":"HEY"}}))
        );
        assert_eq!(handle.clients_count(), 1);
    }

    /// The `Set-Cookie` value's `name=value` of a raw response.
    fn cookie_of(response: &str) -> Option<String> {
        response
            .lines()
            .find(|l| l.to_ascii_lowercase().starts_with("set-cookie:"))
            .and_then(|l| l.split_once(':'))
            .map(|(_, v)| v.trim().split(';').next().unwrap_or_default().to_owned())
    }

    async fn get(addr: std::net::SocketAddr, path: &str, cookie: &str) -> String {
        let mut tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let req = format!(
            "GET {path} HTTP/1.1\r\nHost: x\r\nCookie: {cookie}\r\nConnection: close\r\n\r\n"
        );
        tcp.write_all(req.as_bytes()).await.unwrap();
        let mut body = String::new();
        tokio::time::timeout(WAIT, tcp.read_to_string(&mut body))
            .await
            .unwrap()
            .unwrap();
        body
    }

    #[tokio::test]
    async fn a_browser_session_spans_http_routes_and_sockets() {
        let (app, _handle) = super::app().unwrap();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move { axum::serve(listener, app).await });
        // The first visit sets the cookie; the next one with it counts on.
        let first = get(addr, "/visits", "").await;
        assert!(first.ends_with("\r\n\r\n1"), "{first}");
        let cookie = cookie_of(&first).expect("a session cookie");
        let second = get(addr, "/visits", &cookie).await;
        assert!(second.ends_with("\r\n\r\n2"), "{second}");
        assert_eq!(cookie_of(&second), None, "the cookie is kept, not replaced");
        // A socket of the same browser reads the count.
        let uri = format!("ws://{addr}/socketcluster/");
        let (mut ws, _) = ClientBuilder::new()
            .uri(&uri)
            .unwrap()
            .add_header(
                axum::http::header::COOKIE,
                axum::http::HeaderValue::from_str(&cookie).unwrap(),
            )
            .unwrap()
            .connect()
            .await
            .unwrap();
        for v in [
            json!({"event":"#handshake","data":{"authToken":null},"cid":1}),
            json!({"event":"visits","cid":2}),
        ] {
            ws.send(Message::text(v.to_string())).await.unwrap();
        }
        loop {
            let m = tokio::time::timeout(WAIT, ws.next())
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let Some(t) = m.as_text().filter(|t| !t.is_empty()) else {
                continue;
            };
            let v: Value = serde_json::from_str(t).unwrap();
            if v["rid"] == 2 {
                assert_eq!(v["data"], 2);
                break;
            }
        }
    }
}
