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
    // Nearly every frame is one packet: `{` first, no whitespace before it.
    if text.as_bytes().first() == Some(&b'{') {
        return Frame::Packet(packet(text));
    }
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

/// Decodes one packet (a frame or a batch element that starts with `{`): the client's own shape by
/// fixed comparisons, other flat objects by the key scanner, serde for everything else.
fn decode_packet(text: &str) -> Packet<'_> {
    match decode_canonical(text).or_else(|| decode_packet_fast(text)) {
        Some(packet) => packet,
        None => decode_packet_slow(text),
    }
}

/// A transmit or an invoke exactly as socketcluster-client writes one (`JSON.stringify` of
/// `{event, data, cid}`: no whitespace, keys in this order, `data` and `cid` optional), with an
/// escape-free `event`: checked with three fixed comparisons instead of a key scan. `None` for any
/// other text, which [`decode_packet_fast`] then reads; where this returns `Some`, so would it,
/// with the same packet (tested).
#[inline]
fn decode_canonical(text: &str) -> Option<Packet<'_>> {
    const EVENT: &[u8] = b"{\"event\":\"";
    const DATA: &[u8] = b",\"data\":";
    const CID: &[u8] = b",\"cid\":";
    let b = text.as_bytes();
    if !b.starts_with(EVENT) {
        return None;
    }
    let end = plain_str_end(b, EVENT.len())?;
    let event = Cow::Borrowed(text.get(EVENT.len()..end)?);
    let mut i = end + 1;
    let mut data = None;
    if b.get(i..)?.starts_with(DATA) {
        let (value, after) = payload(text, i + DATA.len())?;
        (data, i) = (Some(value), after);
    }
    let rest = b.get(i..)?;
    if rest == b"}" {
        return Some(Packet::Transmit { event, data });
    }
    if !rest.starts_with(CID) {
        return None;
    }
    let (cid, after) = integer(b, i + CID.len())?;
    (after + 1 == b.len() && b.get(after) == Some(&b'}')).then_some(Packet::Invoke {
        event,
        data,
        cid,
    })
}

/// The fast path for the shapes nearly every frame has: one flat object whose keys are among
/// `event`, `data`, `cid`, `rid` and `error` (each once, written without escapes), with an
/// escape-free string `event` and plain integer `cid`/`rid`. Payloads are validated (by
/// [`skip_value`], or serde_json when that declines) and borrowed. `None` means "not this shape":
/// [`decode_packet_slow`] decides, and for every frame where this returns `Some`, the slow path
/// returns the same packet (tested).
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
        let (key, key_end) = packet_key(b, i + 1)?;
        i = skip_ws(b, key_end + 1);
        if b.get(i) != Some(&b':') {
            return None;
        }
        i = skip_ws(b, i + 1);
        match key {
            Key::Event if event.is_none() => {
                if b.get(i) != Some(&b'"') {
                    return None;
                }
                let end = plain_str_end(b, i + 1)?;
                event = Some(text.get(i + 1..end)?);
                i = end + 1;
            }
            Key::Cid if cid.is_none() => (cid, i) = integer(b, i).map(|(n, i)| (Some(n), i))?,
            Key::Rid if rid.is_none() => (rid, i) = integer(b, i).map(|(n, i)| (Some(n), i))?,
            Key::Data if data.is_none() => {
                (data, i) = payload(text, i).map(|(v, i)| (Some(v), i))?;
            }
            Key::Error if error.is_none() => {
                (error, i) = payload(text, i).map(|(v, i)| (Some(v), i))?;
            }
            // Duplicates.
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

/// The keys a packet may have.
#[derive(Clone, Copy)]
enum Key {
    Event,
    Data,
    Cid,
    Rid,
    Error,
}

/// The packet key whose name starts at `i` (just after its opening quote), written without
/// escapes, and the index of its closing quote. `None` for any other key: the slow path decides.
#[inline]
fn packet_key(b: &[u8], i: usize) -> Option<(Key, usize)> {
    let name = b.get(i..)?;
    let (key, len) = match *name.first()? {
        b'e' if name.starts_with(b"event\"") => (Key::Event, 5),
        b'e' if name.starts_with(b"error\"") => (Key::Error, 5),
        b'd' if name.starts_with(b"data\"") => (Key::Data, 4),
        b'c' if name.starts_with(b"cid\"") => (Key::Cid, 3),
        b'r' if name.starts_with(b"rid\"") => (Key::Rid, 3),
        _ => return None,
    };
    Some((key, i + len))
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
    let end = i + plain_run(b.get(i..)?);
    (b.get(end) == Some(&b'"')).then_some(end)
}

/// Whether a byte ends the plain run of a JSON string: `"`, `\` and the control characters.
static STRING_STOP: [bool; 256] = {
    let mut stop = [false; 256];
    let mut c = 0;
    while c < 0x20 {
        stop[c] = true;
        c += 1;
    }
    stop[b'"' as usize] = true;
    stop[b'\\' as usize] = true;
    stop
};

/// The length of the run of string bytes at the start of `s` that need no attention (no `"`, `\`
/// or control character), eight bytes at a time where it can.
fn plain_run(s: &[u8]) -> usize {
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGH: u64 = 0x8080_8080_8080_8080;
    let mut chunks = s.chunks_exact(8);
    let mut n = 0;
    for chunk in &mut chunks {
        let mut word = [0; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        // The high bit of each byte of `v` that is zero, of `x` that is below 0x20. A borrow can
        // only flag bytes above a flagged one, so the lowest flag is exact.
        let zero = |v: u64| v.wrapping_sub(ONES) & !v;
        let quote = zero(x ^ (ONES * u64::from(b'"')));
        let backslash = zero(x ^ (ONES * u64::from(b'\\')));
        let control = x.wrapping_sub(ONES * 0x20) & !x;
        let hits = (quote | backslash | control) & HIGH;
        if hits != 0 {
            return n + (hits.trailing_zeros() / 8) as usize;
        }
        n += 8;
    }
    let rest = chunks.remainder();
    n + rest
        .iter()
        .position(|&c| STRING_STOP[usize::from(c)])
        .unwrap_or(rest.len())
}

/// A JSON integer `0|[1-9][0-9]*` that fits a [`Cid`] at `i`, and the index after it. `None` for
/// anything else (a sign, a fraction, an exponent, an overflow, no number).
fn integer(b: &[u8], mut i: usize) -> Option<(Cid, usize)> {
    let mut n: Cid = 0;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(b'1'..=b'9') => {
            let start = i;
            while let Some(&d @ b'0'..=b'9') = b.get(i) {
                n = n.wrapping_mul(10).wrapping_add(Cid::from(d - b'0'));
                i += 1;
            }
            // Up to 19 digits always fit a u64; longer ones are counted again with checks.
            if i - start > 19 {
                n = b.get(start..i)?.iter().try_fold(0, |n: Cid, &d| {
                    n.checked_mul(10)?.checked_add(Cid::from(d - b'0'))
                })?;
            }
        }
        _ => return None,
    }
    match b.get(i) {
        Some(b' ' | b'\n' | b'\r' | b'\t' | b',' | b'}') => Some((n, i)),
        _ => None,
    }
}

/// The JSON value at `i` (no whitespace before it) and the index after it: checked by
/// [`skip_value`] and borrowed with [`borrow_checked`] when it can, else by serde_json.
fn payload(text: &str, i: usize) -> Option<(&RawValue, usize)> {
    let b = text.as_bytes();
    // A string (the commonest payload) needs none of the container bookkeeping.
    let end = if b.get(i) == Some(&b'"') {
        string_end(b, i + 1).map(|end| end + 1)
    } else {
        skip_value(b, i)
    };
    end.and_then(|end| Some((borrow_checked(text.get(i..end)?)?, end)))
        .or_else(|| raw_value(text, i))
}

/// Nesting deeper than this is left to serde_json (which has no limit).
const MAX_FAST_DEPTH: u32 = 64;

/// The end of the JSON value that starts at `i`, if it is valid JSON that nests at most
/// [`MAX_FAST_DEPTH`] levels. Accepts a subset of what serde_json accepts, with the same extent
/// (tested): what it rejects goes to serde_json, which decides. What follows the value is the
/// caller's to check.
fn skip_value(b: &[u8], mut i: usize) -> Option<usize> {
    // One bit per open container, set for an object; `depth` of them are in use.
    let mut objects: u64 = 0;
    let mut depth: u32 = 0;
    loop {
        // A value starts at `i`.
        match *b.get(i)? {
            open @ (b'{' | b'[') => {
                let object = open == b'{';
                i = skip_ws(b, i + 1);
                if b.get(i) == Some(if object { &b'}' } else { &b']' }) {
                    i += 1;
                } else {
                    if depth == MAX_FAST_DEPTH {
                        return None;
                    }
                    objects = (objects << 1) | u64::from(object);
                    depth += 1;
                    if object {
                        i = member_value(b, i)?;
                    }
                    continue;
                }
            }
            b'"' => i = string_end(b, i + 1)? + 1,
            b't' => i = literal(b, i, b"true")?,
            b'f' => i = literal(b, i, b"false")?,
            b'n' => i = literal(b, i, b"null")?,
            b'-' | b'0'..=b'9' => i = number_end(b, i)?,
            _ => return None,
        }
        // A value ended at `i`: close containers until another value starts.
        loop {
            if depth == 0 {
                return Some(i);
            }
            let object = objects & 1 == 1;
            i = skip_ws(b, i);
            match *b.get(i)? {
                b',' => {
                    i = skip_ws(b, i + 1);
                    if object {
                        i = member_value(b, i)?;
                    }
                    break;
                }
                b'}' if object => {}
                b']' if !object => {}
                _ => return None,
            }
            objects >>= 1;
            depth -= 1;
            i += 1;
        }
    }
}

/// Skips `"key" :` at `i` and the whitespace after it: the index of the member's value.
fn member_value(b: &[u8], i: usize) -> Option<usize> {
    if b.get(i) != Some(&b'"') {
        return None;
    }
    let i = skip_ws(b, string_end(b, i + 1)? + 1);
    (b.get(i) == Some(&b':')).then(|| skip_ws(b, i + 1))
}

/// The index of the closing quote of the string whose content starts at `i`: no raw control
/// characters, escapes as JSON defines them (serde_json, like `JSON.parse`, accepts any `\uXXXX`).
fn string_end(b: &[u8], mut i: usize) -> Option<usize> {
    loop {
        i += plain_run(b.get(i..)?);
        match *b.get(i)? {
            b'"' => return Some(i),
            b'\\' => match *b.get(i + 1)? {
                b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => i += 2,
                b'u' if b.get(i + 2..i + 6)?.iter().all(u8::is_ascii_hexdigit) => i += 6,
                _ => return None,
            },
            0..=0x1f => return None,
            _ => i += 1,
        }
    }
}

/// The index after `word` at `i`.
fn literal(b: &[u8], i: usize, word: &[u8]) -> Option<usize> {
    (b.get(i..i + word.len())? == word).then_some(i + word.len())
}

/// The index after the number at `i`: `-?(0|[1-9][0-9]*)(\.[0-9]+)?([eE][+-]?[0-9]+)?`.
fn number_end(b: &[u8], mut i: usize) -> Option<usize> {
    let digits = |mut i: usize| {
        let start = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        (i > start).then_some(i)
    };
    if b.get(i) == Some(&b'-') {
        i += 1;
    }
    i = match *b.get(i)? {
        // serde_json rejects a leading zero followed by a digit outright.
        b'0' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => return None,
        b'0' => i + 1,
        b'1'..=b'9' => digits(i)?,
        _ => return None,
    };
    if b.get(i) == Some(&b'.') {
        i = digits(i + 1)?;
    }
    if let Some(b'e' | b'E') = b.get(i) {
        i += 1;
        if let Some(b'+' | b'-') = b.get(i) {
            i += 1;
        }
        i = digits(i)?;
    }
    Some(i)
}

/// Borrows `json`, which [`skip_value`] has checked, as a [`RawValue`] without serde_json
/// scanning it again.
///
/// serde_json deserialises a `&RawValue` by asking for a newtype struct and reading a map with one
/// entry whose value is the borrowed JSON text; [`Checked`] answers exactly that. Should a
/// serde_json release do it differently, this returns `None` and the caller lets serde_json parse
/// the value (a unit test watches for that).
fn borrow_checked(json: &str) -> Option<&RawValue> {
    <&RawValue>::deserialize(Checked(json)).ok()
}

/// A deserializer over JSON text that is known to be valid, see [`borrow_checked`].
struct Checked<'a>(&'a str);

impl<'de> Deserializer<'de> for Checked<'de> {
    type Error = serde::de::value::Error;

    fn deserialize_any<V: serde::de::Visitor<'de>>(
        self,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_borrowed_str(self.0)
    }

    fn deserialize_newtype_struct<V: serde::de::Visitor<'de>>(
        self,
        name: &'static str,
        visitor: V,
    ) -> Result<V::Value, Self::Error> {
        visitor.visit_map(CheckedEntry {
            key: Some(name),
            json: self.0,
        })
    }

    serde::forward_to_deserialize_any! {
        bool i8 i16 i32 i64 i128 u8 u16 u32 u64 u128 f32 f64 char str string bytes byte_buf option
        unit unit_struct seq tuple tuple_struct map struct enum identifier ignored_any
    }
}

/// The one entry `{name: json}` of [`Checked`].
struct CheckedEntry<'a> {
    key: Option<&'static str>,
    json: &'a str,
}

impl<'de> serde::de::MapAccess<'de> for CheckedEntry<'de> {
    type Error = serde::de::value::Error;

    fn next_key_seed<K: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: K,
    ) -> Result<Option<K::Value>, Self::Error> {
        self.key
            .take()
            .map(|key| seed.deserialize(serde::de::value::BorrowedStrDeserializer::new(key)))
            .transpose()
    }

    fn next_value_seed<V: serde::de::DeserializeSeed<'de>>(
        &mut self,
        seed: V,
    ) -> Result<V::Value, Self::Error> {
        seed.deserialize(serde::de::value::BorrowedStrDeserializer::new(self.json))
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
