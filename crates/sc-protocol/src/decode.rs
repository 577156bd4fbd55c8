//! Decoding text frames into packets.
//!
//! A frame is classified the way socketcluster-server v20 and socketcluster-client v20 classify it:
//! `''` and `#1`/`#2` are heartbeats, a JSON object is a packet, a JSON array is a batch of packets
//! handled in order, and everything else is [`Packet::Raw`]. Payloads (`data`, `error`) are never
//! parsed: they are borrowed as [`RawValue`] slices of the input, so a server that only forwards
//! them never pays for a parse and a re-serialisation.
//!
//! ```
//! use sc_protocol::{decode, Frame, Packet};
//!
//! let frame = decode(r#"{"event":"echo","data":{"a":1},"cid":7}"#);
//! let Frame::Packet(Packet::Invoke { event, data, cid }) = frame else { unreachable!() };
//! assert_eq!((&*event, data.map(|d| d.get()), cid), ("echo", Some(r#"{"a":1}"#), 7));
//! ```

use std::borrow::Cow;

use serde::{Deserialize, Deserializer};
use serde_json::value::RawValue;

/// The number a client gives an invoke (`cid`) and the server echoes in its response (`rid`).
///
/// socketcluster-client starts at 1 and counts up; cids are JSON numbers on the wire. A cid that is
/// a JSON number but not written as an integer in `0..=u64::MAX` (`-1`, `7.5`, `7.0`, `1e3`,
/// `18446744073709551616`) makes the packet [`Packet::Raw`].
pub type Cid = u64;

/// One decoded text frame.
#[derive(Debug, Clone)]
pub enum Frame<'a> {
    /// `''`: the protocol v2 ping (server to client) and pong (client to server).
    Heartbeat,
    /// `#1`: the protocol v1 ping.
    PingV1,
    /// `#2`: the protocol v1 pong.
    PongV1,
    /// A single packet.
    Packet(Packet<'a>),
    /// A JSON array of packets, to be handled in order.
    Batch(Vec<Packet<'a>>),
}

impl<'a> Frame<'a> {
    /// The packets of this frame in order: none for a heartbeat, one for a packet, all of a batch.
    pub fn into_packets(self) -> Vec<Packet<'a>> {
        match self {
            Frame::Heartbeat | Frame::PingV1 | Frame::PongV1 => Vec::new(),
            Frame::Packet(p) => vec![p],
            Frame::Batch(ps) => ps,
        }
    }
}

/// One SocketCluster packet.
#[derive(Debug, Clone)]
pub enum Packet<'a> {
    /// `{"event":E,"data":D}`: no reply expected.
    Transmit {
        /// The event name (reserved names start with `#`, see [`crate::Reserved`]).
        event: Cow<'a, str>,
        /// The payload as raw JSON text; `None` when the packet has no `data`.
        data: Option<&'a RawValue>,
    },
    /// `{"event":E,"data":D,"cid":N}`: a call that expects a response with `rid` N.
    Invoke {
        /// The event (procedure) name.
        event: Cow<'a, str>,
        /// The payload as raw JSON text; `None` when the packet has no `data`.
        data: Option<&'a RawValue>,
        /// The call id to answer with.
        cid: Cid,
    },
    /// `{"rid":N,"data":D}` or `{"rid":N,"error":E}`: the answer to an invoke.
    Response {
        /// The call id this answers.
        rid: Cid,
        /// The result payload; `None` when absent.
        data: Option<&'a RawValue>,
        /// The error object (or any JSON a peer put there); `None` for a success.
        error: Option<&'a RawValue>,
    },
    /// Text that is no packet: not JSON, JSON that is not a packet (`{}`, `42`, `null`,
    /// `{"event":5}`), duplicate keys, nesting too deep to parse. Servers raise a `raw` event and
    /// otherwise ignore it.
    Raw(&'a str),
}

fn raw_text(raw: Option<&RawValue>) -> Option<&str> {
    raw.map(RawValue::get)
}

/// Payloads compare by their JSON text (`{"a":1}` and `{ "a": 1 }` differ).
impl PartialEq for Packet<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (
                Packet::Transmit { event, data },
                Packet::Transmit {
                    event: e2,
                    data: d2,
                },
            ) => event == e2 && raw_text(*data) == raw_text(*d2),
            (
                Packet::Invoke { event, data, cid },
                Packet::Invoke {
                    event: e2,
                    data: d2,
                    cid: c2,
                },
            ) => event == e2 && raw_text(*data) == raw_text(*d2) && cid == c2,
            (
                Packet::Response { rid, data, error },
                Packet::Response {
                    rid: r2,
                    data: d2,
                    error: e2,
                },
            ) => rid == r2 && raw_text(*data) == raw_text(*d2) && raw_text(*error) == raw_text(*e2),
            (Packet::Raw(a), Packet::Raw(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Packet<'_> {}

/// Payloads compare by their JSON text, as for [`Packet`].
impl PartialEq for Frame<'_> {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Frame::Heartbeat, Frame::Heartbeat)
            | (Frame::PingV1, Frame::PingV1)
            | (Frame::PongV1, Frame::PongV1) => true,
            (Frame::Packet(a), Frame::Packet(b)) => a == b,
            (Frame::Batch(a), Frame::Batch(b)) => a == b,
            _ => false,
        }
    }
}

impl Eq for Frame<'_> {}

impl Packet<'_> {
    /// The event name of a transmit or an invoke.
    pub fn event(&self) -> Option<&str> {
        match self {
            Packet::Transmit { event, .. } | Packet::Invoke { event, .. } => Some(event),
            Packet::Response { .. } | Packet::Raw(_) => None,
        }
    }
}

/// Decodes one text frame. Never fails and never panics: what is not a packet is
/// [`Packet::Raw`].
pub fn decode(text: &str) -> Frame<'_> {
    match text {
        "" => return Frame::Heartbeat,
        "#1" => return Frame::PingV1,
        "#2" => return Frame::PongV1,
        _ => {}
    }
    // sc-formatter only tries JSON when the text matches `/^[ \n\r\t]*[{\[]/`.
    match text
        .trim_start_matches([' ', '\n', '\r', '\t'])
        .as_bytes()
        .first()
    {
        Some(b'{') => Frame::Packet(decode_packet(text)),
        Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => Frame::Batch(items.into_iter().map(decode_element).collect()),
            Err(_) => Frame::Packet(Packet::Raw(text)),
        },
        _ => Frame::Packet(Packet::Raw(text)),
    }
}

/// Decodes a binary frame. socketcluster-server turns a binary frame into a string before decoding;
/// bytes that are not UTF-8 are [`Packet::Raw`] of an empty string, never a panic.
pub fn decode_binary(bytes: &[u8]) -> Frame<'_> {
    match std::str::from_utf8(bytes) {
        Ok(text) => decode(text),
        Err(_) => Frame::Packet(Packet::Raw("")),
    }
}

fn decode_element(raw: &RawValue) -> Packet<'_> {
    let text = raw.get();
    if text.starts_with('{') {
        decode_packet(text)
    } else {
        Packet::Raw(text)
    }
}

/// The fields a packet may have, each kept as raw JSON.
#[derive(Deserialize)]
struct Wire<'a> {
    #[serde(borrow, default, deserialize_with = "present")]
    event: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    data: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    cid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    rid: Option<&'a RawValue>,
    #[serde(borrow, default, deserialize_with = "present")]
    error: Option<&'a RawValue>,
}

/// `Some` for a present field, even when it is `null` (serde's `Option` would say `None`).
pub(crate) fn present<'de, D: Deserializer<'de>>(d: D) -> Result<Option<&'de RawValue>, D::Error> {
    <&RawValue>::deserialize(d).map(Some)
}

fn decode_packet(text: &str) -> Packet<'_> {
    let Ok(wire) = serde_json::from_str::<Wire<'_>>(text) else {
        return Packet::Raw(text);
    };
    if let Some(event) = wire.event.filter(|e| e.get().starts_with('"')) {
        // A JSON string Rust cannot hold (a lone surrogate escape such as `"\ud800"`).
        let Some(event) = json_str(event) else {
            return Packet::Raw(text);
        };
        return match wire.cid {
            Some(cid) if is_number(cid) => match cid.get().parse::<Cid>() {
                Ok(cid) => Packet::Invoke {
                    event,
                    data: wire.data,
                    cid,
                },
                Err(_) => Packet::Raw(text),
            },
            _ => Packet::Transmit {
                event,
                data: wire.data,
            },
        };
    }
    match wire.rid {
        Some(rid) if is_number(rid) => match rid.get().parse::<Cid>() {
            Ok(rid) => Packet::Response {
                rid,
                data: wire.data,
                error: wire.error.filter(|e| e.get() != "null"),
            },
            Err(_) => Packet::Raw(text),
        },
        _ => Packet::Raw(text),
    }
}

fn is_number(raw: &RawValue) -> bool {
    matches!(raw.get().as_bytes().first(), Some(b'-' | b'0'..=b'9'))
}

/// The string a raw JSON value holds, borrowed when it has no escapes; `None` if it is no string.
pub(crate) fn json_str(raw: &RawValue) -> Option<Cow<'_, str>> {
    let text = raw.get();
    let inner = text.strip_prefix('"')?.strip_suffix('"')?;
    if inner.contains('\\') {
        serde_json::from_str::<String>(text).ok().map(Cow::Owned)
    } else {
        Some(Cow::Borrowed(inner))
    }
}

#[cfg(test)]
mod tests;
