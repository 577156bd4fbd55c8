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
    decode_with(text, decode_packet)
}

/// The serde-only decoder (the fast scanner switched off), for the fuzz target to compare
/// [`decode`] against. Only built under `cfg(fuzzing)`.
#[cfg(fuzzing)]
#[doc(hidden)]
pub fn decode_reference(text: &str) -> Frame<'_> {
    decode_with(text, decode_packet_slow)
}

/// Classifies a frame, decoding each packet (a text starting with `{`) with `packet`.
#[inline]
fn decode_with<'a>(text: &'a str, packet: impl Fn(&'a str) -> Packet<'a>) -> Frame<'a> {
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
        Some(b'{') => Frame::Packet(packet(text)),
        Some(b'[') => match serde_json::from_str::<Vec<&RawValue>>(text) {
            Ok(items) => Frame::Batch(
                items
                    .into_iter()
                    .map(|raw| {
                        let text = raw.get();
                        if text.starts_with('{') {
                            packet(text)
                        } else {
                            Packet::Raw(text)
                        }
                    })
                    .collect(),
            ),
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

/// Decodes one packet (a frame or a batch element that starts with `{`): the fast scanner for the
/// common shapes, serde for everything else.
fn decode_packet(text: &str) -> Packet<'_> {
    match decode_packet_fast(text) {
        Some(packet) => packet,
        None => decode_packet_slow(text),
    }
}

/// The fast path for the shapes nearly every frame has: one flat object whose keys are among
/// `event`, `data`, `cid`, `rid` and `error` (each once, written without escapes), with an
/// escape-free string `event` and plain integer `cid`/`rid`. Payloads are still validated and
/// borrowed by serde_json. `None` means "not this shape": [`decode_packet_slow`] decides, and for
/// every frame where this returns `Some`, the slow path returns the same packet (tested).
fn decode_packet_fast(text: &str) -> Option<Packet<'_>> {
    let b = text.as_bytes();
    let mut i = skip_ws(b, 0);
    if b.get(i) != Some(&b'{') {
        return None;
    }
    i += 1;
    let mut event: Option<&str> = None;
    let mut data: Option<&RawValue> = None;
    let mut error: Option<&RawValue> = None;
    let mut cid: Option<Cid> = None;
    let mut rid: Option<Cid> = None;
    loop {
        i = skip_ws(b, i);
        if b.get(i) != Some(&b'"') {
            return None;
        }
        let key_end = plain_str_end(b, i + 1)?;
        let key = b.get(i + 1..key_end)?;
        i = skip_ws(b, key_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        match key {
            b"event" if event.is_none() => {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let end = plain_str_end(b, i + 1)?;
                event = Some(text.get(i + 1..end)?);
                i = end + 1;
            }
            b"cid" if cid.is_none() => (cid, i) = integer(b, i).map(|(n, i)| (Some(n), i))?,
            b"rid" if rid.is_none() => (rid, i) = integer(b, i).map(|(n, i)| (Some(n), i))?,
            b"data" if data.is_none() => {
                (data, i) = raw_value(text, i).map(|(v, i)| (Some(v), i))?
            }
            b"error" if error.is_none() => {
                (error, i) = raw_value(text, i).map(|(v, i)| (Some(v), i))?;
            }
            // Other keys and duplicates.
            _ => return None,
        }
        i = skip_ws(b, i);
        match b.get(i) {
            Some(b',') => i += 1,
            Some(b'}') => break,
            _ => return None,
        }
    }
    if skip_ws(b, i + 1) != b.len() {
        return None;
    }
    match (event, cid, rid) {
        (Some(event), Some(cid), _) => Some(Packet::Invoke {
            event: Cow::Borrowed(event),
            data,
            cid,
        }),
        (Some(event), None, _) => Some(Packet::Transmit {
            event: Cow::Borrowed(event),
            data,
        }),
        (None, _, Some(rid)) => Some(Packet::Response {
            rid,
            data,
            error: error.filter(|e| e.get() != "null"),
        }),
        (None, _, None) => None,
    }
}

/// The index after the JSON whitespace from `i`.
fn skip_ws(b: &[u8], mut i: usize) -> usize {
    while let Some(b' ' | b'\n' | b'\r' | b'\t') = b.get(i) {
        i += 1;
    }
    i
}

/// The index of the closing quote of a string whose content starts at `i`, if the string has no
/// escapes and no control characters (which JSON forbids unescaped).
fn plain_str_end(b: &[u8], i: usize) -> Option<usize> {
    let len = b
        .get(i..)?
        .iter()
        .position(|&c| c == b'"' || c == b'\\' || c < 0x20)?;
    (b.get(i + len) == Some(&b'"')).then_some(i + len)
}

/// A JSON integer `0|[1-9][0-9]*` that fits a [`Cid`] at `i`, and the index after it. `None` for
/// anything else (a sign, a fraction, an exponent, an overflow, no number).
fn integer(b: &[u8], mut i: usize) -> Option<(Cid, usize)> {
    let mut n: Cid = 0;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                n = n.checked_mul(10)?.checked_add(Cid::from(d - b'0'))?;
                i += 1;
            }
        }
        _ => return None,
    }
    match b.get(i) {
        Some(b' ' | b'\n' | b'\r' | b'\t' | b',' | b'}') => Some((n, i)),
        _ => None,
    }
}

/// One JSON value at `i`, validated and borrowed by serde_json, and the index after it.
fn raw_value(text: &str, i: usize) -> Option<(&RawValue, usize)> {
    let rest = text.get(i..)?;
    let value = <&RawValue>::deserialize(&mut serde_json::Deserializer::from_str(rest)).ok()?;
    // `rest` starts with the value (the caller skipped the whitespace), so the value is the first
    // `len` bytes of `rest`; what follows it is the caller's to check.
    let value_text = value.get();
    (value_text.as_ptr() == rest.as_ptr()).then_some((value, i + value_text.len()))
}

/// The reference decoder: serde_json with a borrowed struct. It decides every frame the fast path
/// leaves alone.
fn decode_packet_slow(text: &str) -> Packet<'_> {
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
