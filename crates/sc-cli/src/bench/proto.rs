//! The wire protocols the generator speaks: SocketCluster (protocol v2), a minimal socket.io v5
//! client over the engine.io v4 WebSocket transport, and `ws-echo`: no protocol at all, for a bare
//! WebSocket echo server (the SocketCluster frames are sent and come back unchanged, so an invoke's
//! reply is the invoke itself): a reference with no protocol work, for scale.
//!
//! | action | SocketCluster | socket.io |
//! | --- | --- | --- |
//! | invoke `e` with id N | `{"event":"e","data":D,"cid":N}` | `42N["e",D]` |
//! | its reply | `{"rid":N,"data":R}` | `43N[R]` |
//! | transmit | `{"event":"e","data":D}` | `42["e",D]` |
//! | subscribe to C | `#subscribe` invoke | `subscribe` event with an ack (the server joins room C) |
//! | publish X to C | `#publish` transmit | `publish` event `{"channel":C,"data":X}` |
//! | delivery | `{"event":"#publish","data":{"channel":C,"data":X}}` | `42["publish",{"channel":C,"data":X}]` |
//! | heartbeat | `''` answered `''` | `2` answered `3` |

use clap::ValueEnum;

use super::ws::{Conn, Out, ReadError};

/// The wire protocol of the server under test.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub(crate) enum Protocol {
    /// SocketCluster protocol v2 (socketcluster-server v20, `socketcluster serve`)
    Sc,
    /// socket.io v5 over the engine.io v4 WebSocket transport (socket.io 4, socketioxide)
    Socketio,
    /// A bare WebSocket echo server (no handshake; every message comes back unchanged): a
    /// reference with no protocol work, for `echo`, `rate` and `conns`
    WsEcho,
}

/// A message from the server, classified.
#[derive(Debug)]
pub(crate) enum Incoming<'a> {
    /// A reply to the invoke with this id; `error` when it is an error reply.
    Reply {
        /// The invoke id.
        id: u64,
        /// An error reply.
        error: bool,
        /// The whole message, to read the data from.
        body: &'a [u8],
    },
    /// A channel delivery (the whole message).
    Publish(&'a [u8]),
    /// Anything else.
    Other,
}

impl Protocol {
    /// The default URL of the demo app for this protocol.
    pub(crate) fn default_url(self) -> &'static str {
        match self {
            Protocol::Sc => "ws://127.0.0.1:8000/socketcluster/",
            Protocol::Socketio => "ws://127.0.0.1:8000/socket.io/",
            Protocol::WsEcho => "ws://127.0.0.1:8000/",
        }
    }

    /// The query the transport needs.
    pub(crate) fn extra_query(self) -> &'static str {
        match self {
            Protocol::Sc | Protocol::WsEcho => "",
            Protocol::Socketio => "EIO=4&transport=websocket",
        }
    }

    /// The first invoke id after the handshake.
    pub(crate) fn first_id(self) -> u64 {
        match self {
            Protocol::Sc => 2,
            Protocol::Socketio | Protocol::WsEcho => 1,
        }
    }

    /// The protocol's name in reports.
    pub(crate) fn name(self) -> &'static str {
        match self {
            Protocol::Sc => "sc",
            Protocol::Socketio => "socketio",
            Protocol::WsEcho => "ws-echo",
        }
    }

    /// Whether `scenario` means anything with this protocol: a bare echo server has no counter
    /// and no channels (fanout needs the peer's `--broadcast` mode, which relays every
    /// `#publish` to every other connection).
    pub(crate) fn supports(self, scenario: &str) -> bool {
        self != Protocol::WsEcho || matches!(scenario, "echo" | "rate" | "conns" | "fanout")
    }

    /// Completes the protocol handshake on a fresh WebSocket.
    pub(crate) async fn handshake(self, conn: &mut Conn) -> Result<(), String> {
        match self {
            Protocol::WsEcho => Ok(()),
            Protocol::Sc => {
                self.invoke(&mut conn.out, "#handshake", b"{\"authToken\":null}", 1);
                conn.flush().await.map_err(|e| e.to_string())?;
                wait_for(conn, |m| {
                    m.starts_with(b"{\"rid\":1,") || m.starts_with(b"{\"rid\":1}")
                })
                .await
            }
            Protocol::Socketio => {
                wait_for(conn, |m| m.first() == Some(&b'0')).await?;
                conn.out.text(b"40");
                conn.flush().await.map_err(|e| e.to_string())?;
                wait_for(conn, |m| m.starts_with(b"40")).await
            }
        }
    }

    /// Appends an invoke (a call with an ack).
    pub(crate) fn invoke(self, out: &mut Out, event: &str, data: &[u8], id: u64) {
        let mut n = itoa::Buffer::new();
        let id = n.format(id).as_bytes();
        match self {
            Protocol::Sc | Protocol::WsEcho => out.text_with(|b| {
                b.extend_from_slice(b"{\"event\":\"");
                b.extend_from_slice(event.as_bytes());
                b.extend_from_slice(b"\",\"data\":");
                b.extend_from_slice(data);
                b.extend_from_slice(b",\"cid\":");
                b.extend_from_slice(id);
                b.push(b'}');
            }),
            Protocol::Socketio => out.text_with(|b| {
                b.extend_from_slice(b"42");
                b.extend_from_slice(id);
                b.extend_from_slice(b"[\"");
                b.extend_from_slice(event.as_bytes());
                b.extend_from_slice(b"\",");
                b.extend_from_slice(data);
                b.push(b']');
            }),
        }
    }

    /// Appends a transmit (no ack).
    pub(crate) fn transmit(self, out: &mut Out, event: &str, data: &[u8]) {
        match self {
            Protocol::Sc | Protocol::WsEcho => out.text_with(|b| {
                b.extend_from_slice(b"{\"event\":\"");
                b.extend_from_slice(event.as_bytes());
                b.extend_from_slice(b"\",\"data\":");
                b.extend_from_slice(data);
                b.push(b'}');
            }),
            Protocol::Socketio => out.text_with(|b| {
                b.extend_from_slice(b"42[\"");
                b.extend_from_slice(event.as_bytes());
                b.extend_from_slice(b"\",");
                b.extend_from_slice(data);
                b.push(b']');
            }),
        }
    }

    /// Appends a subscribe call to `channel` with ack id `id`.
    pub(crate) fn subscribe(self, out: &mut Out, channel: &str, id: u64) {
        let chan = json_string(channel);
        match self {
            Protocol::Sc | Protocol::WsEcho => {
                let data = format!("{{\"channel\":{chan}}}");
                self.invoke(out, "#subscribe", data.as_bytes(), id);
            }
            Protocol::Socketio => self.invoke(out, "subscribe", chan.as_bytes(), id),
        }
    }

    /// Appends a publish of `data` (JSON) to `channel`, written by `fill`.
    pub(crate) fn publish_with(
        self,
        out: &mut Out,
        channel_json: &str,
        fill: impl FnOnce(&mut Vec<u8>),
    ) {
        out.text_with(|b| {
            match self {
                Protocol::Sc | Protocol::WsEcho => {
                    b.extend_from_slice(b"{\"event\":\"#publish\",\"data\":{\"channel\":")
                }
                Protocol::Socketio => b.extend_from_slice(b"42[\"publish\",{\"channel\":"),
            }
            b.extend_from_slice(channel_json.as_bytes());
            b.extend_from_slice(b",\"data\":");
            fill(b);
            match self {
                Protocol::Sc | Protocol::WsEcho => b.extend_from_slice(b"}}"),
                Protocol::Socketio => b.extend_from_slice(b"}]"),
            }
        });
    }

    /// Classifies a server message; answers heartbeats into `out`.
    pub(crate) fn classify<'a>(self, msg: &'a [u8], out: &mut Out) -> Incoming<'a> {
        match self {
            // A publish relayed by the broadcast peer, as sent (no cid).
            Protocol::WsEcho if msg.starts_with(b"{\"event\":\"#publish\"") => {
                Incoming::Publish(msg)
            }
            // The invoke came back: its id is the last `"cid":` (the data comes before it).
            Protocol::WsEcho => match rfind(msg, b",\"cid\":") {
                Some(at) => {
                    let (id, used) = parse_u64(&msg[at + 7..]);
                    if used > 0 {
                        Incoming::Reply {
                            id,
                            error: false,
                            body: msg,
                        }
                    } else {
                        Incoming::Other
                    }
                }
                None => Incoming::Other,
            },
            Protocol::Sc => {
                if msg.is_empty() {
                    out.text(b"");
                    return Incoming::Other;
                }
                if let Some(rest) = msg.strip_prefix(b"{\"rid\":") {
                    let (id, used) = parse_u64(rest);
                    if used > 0 {
                        let error = rest[used..].starts_with(b",\"error\"");
                        return Incoming::Reply {
                            id,
                            error,
                            body: msg,
                        };
                    }
                }
                if msg.starts_with(b"{\"event\":\"#publish\"") {
                    return Incoming::Publish(msg);
                }
                if msg.starts_with(b"[")
                    || (msg.starts_with(b"{") && !msg.starts_with(b"{\"event\""))
                {
                    // A batch or a packet with its keys in another order: the slow path.
                    return classify_slow(msg);
                }
                Incoming::Other
            }
            Protocol::Socketio => {
                if msg == b"2" {
                    out.text(b"3");
                    return Incoming::Other;
                }
                if let Some(rest) = msg.strip_prefix(b"43") {
                    let (id, used) = parse_u64(rest);
                    if used > 0 {
                        return Incoming::Reply {
                            id,
                            error: false,
                            body: msg,
                        };
                    }
                }
                if msg.starts_with(b"42[\"publish\"") {
                    return Incoming::Publish(msg);
                }
                Incoming::Other
            }
        }
    }
}

fn classify_slow(msg: &[u8]) -> Incoming<'_> {
    #[derive(serde::Deserialize)]
    struct Pkt {
        rid: Option<u64>,
        error: Option<serde::de::IgnoredAny>,
        event: Option<String>,
    }
    match serde_json::from_slice::<Pkt>(msg) {
        Ok(Pkt {
            rid: Some(id),
            error,
            ..
        }) => Incoming::Reply {
            id,
            error: error.is_some(),
            body: msg,
        },
        Ok(Pkt { event: Some(e), .. }) if e == "#publish" => Incoming::Publish(msg),
        _ => Incoming::Other,
    }
}

/// Reads until a message matches `done`, answering heartbeats meanwhile (10 s at most).
async fn wait_for(conn: &mut Conn, done: impl Fn(&[u8]) -> bool) -> Result<(), String> {
    let fut = async {
        loop {
            let mut seen = false;
            conn.drain_frames(|m, out| {
                if done(m) {
                    seen = true;
                } else if m.is_empty() {
                    out.text(b"");
                } else if m == b"2" {
                    out.text(b"3");
                }
            })
            .map_err(|e: ReadError| e.to_string())?;
            conn.flush().await.map_err(|e| e.to_string())?;
            if seen {
                return Ok(());
            }
            conn.read_more().await.map_err(|e| e.to_string())?;
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(10), fut)
        .await
        .map_err(|_| "handshake timed out after 10 s".to_owned())?
}

/// The position of the last occurrence of `needle` in `hay`.
fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// Parses leading ASCII digits; returns the value and how many bytes were used.
pub(crate) fn parse_u64(b: &[u8]) -> (u64, usize) {
    let mut v: u64 = 0;
    let mut i = 0;
    while i < b.len() && b[i].is_ascii_digit() && i < 19 {
        v = v * 10 + u64::from(b[i] - b'0');
        i += 1;
    }
    (v, i)
}

/// The number after the first occurrence of `key` (e.g. `"seq":`) in `msg`.
pub(crate) fn field_u64(msg: &[u8], key: &[u8]) -> Option<u64> {
    let at = super::ws::find(msg, key)?;
    let (v, used) = parse_u64(&msg[at + key.len()..]);
    (used > 0).then_some(v)
}

/// `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::to_string(s).unwrap_or_else(|_| "\"\"".to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn out() -> Out {
        Out::for_tests()
    }

    #[test]
    fn classify_sc() {
        let mut o = out();
        assert!(matches!(
            Protocol::Sc.classify(br#"{"rid":42,"data":"x"}"#, &mut o),
            Incoming::Reply {
                id: 42,
                error: false,
                ..
            }
        ));
        assert!(matches!(
            Protocol::Sc.classify(br#"{"rid":7,"error":{"name":"E"}}"#, &mut o),
            Incoming::Reply {
                id: 7,
                error: true,
                ..
            }
        ));
        assert!(matches!(
            Protocol::Sc.classify(br#"{"data":1,"rid":9}"#, &mut o),
            Incoming::Reply { id: 9, .. }
        ));
        assert!(matches!(
            Protocol::Sc.classify(
                br##"{"event":"#publish","data":{"channel":"c","data":{"seq":3}}}"##,
                &mut o
            ),
            Incoming::Publish(_)
        ));
        assert!(o.buf.is_empty());
        assert!(matches!(
            Protocol::Sc.classify(b"", &mut o),
            Incoming::Other
        ));
        assert!(!o.buf.is_empty(), "the ping is answered");
    }

    #[test]
    fn classify_socketio() {
        let mut o = out();
        assert!(matches!(
            Protocol::Socketio.classify(br#"4312["x"]"#, &mut o),
            Incoming::Reply { id: 12, .. }
        ));
        assert!(matches!(
            Protocol::Socketio
                .classify(br#"42["publish",{"channel":"c","data":{"seq":1}}]"#, &mut o),
            Incoming::Publish(_)
        ));
        assert_eq!(field_u64(br#"{"seq":123,"t":5}"#, b"\"seq\":"), Some(123));
        assert_eq!(field_u64(br#"{"seq":123,"t":5}"#, b"\"t\":"), Some(5));
    }

    #[test]
    fn ws_echo_takes_the_echoed_invoke_as_its_reply() {
        let mut o = out();
        let p = Protocol::WsEcho;
        p.invoke(&mut o, "echo", br#"{"x":1,"cid":9}"#, 31);
        let frame = o.buf.clone();
        // A client frame: 2 header bytes, 4 mask bytes, then the masked text.
        let mask = [frame[2], frame[3], frame[4], frame[5]];
        let text: Vec<u8> = frame[6..]
            .iter()
            .enumerate()
            .map(|(i, b)| b ^ mask[i % 4])
            .collect();
        assert!(matches!(
            p.classify(&text, &mut o),
            Incoming::Reply {
                id: 31,
                error: false,
                ..
            }
        ));
        assert!(matches!(p.classify(b"hello", &mut o), Incoming::Other));
        assert!(matches!(
            p.classify(br#"{"x":1,"cid":}"#, &mut o),
            Incoming::Other
        ));
        assert!(p.supports("fanout") && !p.supports("ping") && p.supports("echo"));
        // The broadcast peer relays a publish as the publisher sent it.
        assert!(matches!(
            p.classify(
                br##"{"event":"#publish","data":{"channel":"c","data":{"seq":1,"t":2}}}"##,
                &mut o
            ),
            Incoming::Publish(_)
        ));
    }
}
