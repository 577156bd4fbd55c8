//! The transport under the client: today one WebSocket (plain or TLS).
//!
//! The connection task only needs "send a text frame", "receive the next text frame or the
//! close", and "close with a code". An engine.io transport will implement the same three
//! operations (with close codes carried in-band), selected by
//! [`Transport`](crate::Transport).

use std::sync::Arc;

use futures_util::{SinkExt as _, StreamExt as _};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;
use tokio_rustls::rustls::pki_types::ServerName;
use tokio_websockets::{CloseCode as WsCloseCode, Limits, Message, WebSocketStream};

use crate::config::{Config, Transport};

/// What the peer sent.
#[derive(Debug)]
pub(crate) enum Incoming {
    /// A text frame (a binary frame is turned into text as socketcluster-server does).
    Text(String),
    /// The peer's close frame.
    Close { code: u16, reason: String },
    /// The peer broke the protocol (or a limit): to be closed with this code.
    Violation { code: u16, reason: String },
}

/// An open connection of whichever transport the client was configured with. The connection task
/// only uses these four operations; a new transport is a new variant.
#[derive(Debug)]
pub(crate) enum Connection {
    WebSocket(WsTransport),
}

impl Connection {
    /// Opens a connection to the configured endpoint.
    pub(crate) async fn open(config: &Config) -> Result<Self, String> {
        match config.transport {
            Transport::WebSocket => WsTransport::connect(config)
                .await
                .map(Connection::WebSocket),
        }
    }

    /// Queues a text frame without flushing.
    pub(crate) async fn feed(&mut self, text: String) -> Result<(), String> {
        match self {
            Connection::WebSocket(ws) => ws.feed(text).await,
        }
    }

    /// Flushes the queued frames.
    pub(crate) async fn flush(&mut self) -> Result<(), String> {
        match self {
            Connection::WebSocket(ws) => ws.flush().await,
        }
    }

    /// The next frame; `None` when the connection ended without a close. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        match self {
            Connection::WebSocket(ws) => ws.recv().await,
        }
    }

    /// Closes with `code` and `reason` (best effort).
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        match self {
            Connection::WebSocket(ws) => ws.close(code, reason).await,
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Io for T {}

/// One WebSocket connection.
pub(crate) struct WsTransport {
    ws: WebSocketStream<Box<dyn Io>>,
}

impl std::fmt::Debug for WsTransport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("WsTransport")
    }
}

impl WsTransport {
    /// Opens the TCP connection, the TLS session for `wss://`, and the WebSocket.
    pub(crate) async fn connect(config: &Config) -> Result<Self, String> {
        let ep = &config.endpoint;
        let tcp = TcpStream::connect((ep.host.as_str(), ep.port))
            .await
            .map_err(|e| format!("TCP connect to {}:{}: {e}", ep.host, ep.port))?;
        let _ = tcp.set_nodelay(true);
        let io: Box<dyn Io> = match &config.tls {
            Some(tls) => {
                let name = ServerName::try_from(ep.host.clone())
                    .map_err(|e| format!("bad TLS server name {:?}: {e}", ep.host))?;
                let stream = TlsConnector::from(Arc::clone(tls))
                    .connect(name, tcp)
                    .await
                    .map_err(|e| format!("TLS handshake with {}: {e}", ep.host))?;
                Box::new(stream)
            }
            None => Box::new(tcp),
        };
        let builder = tokio_websockets::ClientBuilder::new()
            .uri(&ep.uri())
            .map_err(|e| format!("bad URI {}: {e}", ep.uri()))?
            .limits(Limits::default().max_payload_len(Some(config.max_message_size)));
        let (ws, _response) = builder
            .connect_on(io)
            .await
            .map_err(|e| format!("WebSocket upgrade at {}: {e}", ep.uri()))?;
        Ok(WsTransport { ws })
    }

    /// Queues a text frame without flushing.
    pub(crate) async fn feed(&mut self, text: String) -> Result<(), String> {
        self.ws
            .feed(Message::text(text))
            .await
            .map_err(|e| e.to_string())
    }

    /// Flushes the queued frames.
    pub(crate) async fn flush(&mut self) -> Result<(), String> {
        self.ws.flush().await.map_err(|e| e.to_string())
    }

    /// The next frame; `None` when the connection ended without a close frame. Cancel-safe.
    pub(crate) async fn recv(&mut self) -> Option<Result<Incoming, String>> {
        loop {
            let msg = match self.ws.next().await? {
                Ok(msg) => msg,
                Err(e) => {
                    let code = match &e {
                        tokio_websockets::Error::PayloadTooLong { .. } => 1009,
                        tokio_websockets::Error::Protocol(
                            tokio_websockets::proto::ProtocolError::InvalidUtf8,
                        ) => 1007,
                        tokio_websockets::Error::Protocol(_) => 1002,
                        _ => return Some(Err(e.to_string())),
                    };
                    return Some(Ok(Incoming::Violation {
                        code,
                        reason: e.to_string(),
                    }));
                }
            };
            if let Some((code, reason)) = msg.as_close() {
                return Some(Ok(Incoming::Close {
                    code: u16::from(code),
                    reason: reason.to_owned(),
                }));
            }
            if msg.is_text() || msg.is_binary() {
                let payload = msg.into_payload();
                let text = String::from_utf8_lossy(&payload).into_owned();
                return Some(Ok(Incoming::Text(text)));
            }
            // WebSocket-level ping/pong frames are answered by the library.
        }
    }

    /// Sends a close frame with `code` and `reason` (best effort) and flushes it.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) {
        let code = WsCloseCode::try_from(code).unwrap_or(WsCloseCode::NORMAL_CLOSURE);
        // A reason over 123 bytes does not fit a control frame.
        let mut end = reason.len().min(123);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let _ = self
            .ws
            .send(Message::close(Some(code), &reason[..end]))
            .await;
        let _ = self.ws.flush().await;
    }
}
