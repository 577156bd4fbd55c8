//! Encoding packets into text frames.
//!
//! Every frame a SocketCluster peer writes has one encoder here, so the server and the client
//! write the same bytes for the same frame:
//!
//! - The `put_*` functions append one frame to any [`BufMut`] (a `Vec<u8>`, a [`BytesMut`], or a
//!   transport's own write buffer), so a writer can encode in place, right behind the WebSocket
//!   frame header, without an intermediate buffer. [`response_len`] gives the exact length of a
//!   response before it is written, which that header needs. (A buffer that cannot grow, such as
//!   `&mut [u8]`, must have room for the frame: [`BufMut::put_slice`] panics otherwise.)
//! - The `write_*` functions are the `Vec<u8>` + [`RawValue`] forms the client uses; each one
//!   delegates to its `put_*` function.
//!
//! Payloads (`data`, `message`, raw errors) are raw JSON text copied as they are: data the server
//! only forwards is never parsed and re-serialised. A `put_*` function takes such a payload as
//! `Option<&[u8]>`, and its caller must make sure that it is **exactly one valid JSON value**
//! (as a [`RawValue`] or a payload `sc_protocol::decode` borrowed is): nothing checks it, and
//! anything else makes the frame invalid JSON. `None` leaves the property out; JSON `null`
//! (`Some(b"null")`) keeps it. Strings (event names, channels, ids, tokens, reasons) are escaped
//! as `JSON.stringify` escapes them ([`put_str`]).
//!
//! | function | frame |
//! |---|---|
//! | [`put_transmit`] | `{"event":E[,"data":D]}` |
//! | [`put_invoke`] | `{"event":E[,"data":D],"cid":N}` |
//! | [`put_response`] | `{"rid":N[,"data":D]}` |
//! | [`put_error`] | `{"rid":N,"error":E}` with a dehydrated [`ScError`] |
//! | [`put_error_response`] | `{"rid":N,"error":E}` with a raw JSON error |
//! | [`put_publish`] | `{"event":"#publish","data":{"channel":C[,"data":D]}}` |
//! | [`put_handshake_reply`] | `{"rid":N,"data":{"id":ID,"pingTimeout":MS,"isAuthenticated":B[,"authError":E]}}` |
//! | [`put_auth_status`] | `{"rid":N,"data":{"isAuthenticated":B,"authError":E\|null}}` |
//! | [`put_set_auth_token`] | `{"event":"#setAuthToken","data":{"token":T}}` |
//! | [`put_remove_auth_token`] | `{"event":"#removeAuthToken"}` |
//! | [`put_kick_out`] | `{"event":"#kickOut","data":{"channel":C[,"message":M]}}` |
//! | [`put_inband_close`] | `#close:{"code":N,"reason":R}` (engine.io, [`INBAND_CLOSE_PREFIX`]) |
//!
//! A `#publish` frame is built once per publish as a [`PublishFrame`], whose bytes are
//! reference-counted: handing it to a thousand subscribers clones a pointer a thousand times.
//!
//! ```
//! use bytes::BytesMut;
//! use sc_protocol::encode::{put_response, response_len, write_response, PublishFrame};
//! use serde_json::value::RawValue;
//!
//! let mut buf = Vec::new();
//! let data: &RawValue = serde_json::from_str(r#"{"a":1}"#).unwrap();
//! write_response(&mut buf, 7, Some(data));
//! assert_eq!(buf, br#"{"rid":7,"data":{"a":1}}"#);
//!
//! // In place, into a transport's buffer, after a header that needs the length.
//! let mut out = BytesMut::new();
//! let len = response_len(7, Some(7));
//! out.extend_from_slice(&[0x81, len as u8]);
//! put_response(&mut out, 7, Some(br#"{"a":1}"#));
//! assert_eq!(&out[2..], br#"{"rid":7,"data":{"a":1}}"#);
//! assert_eq!(out.len() - 2, len);
//!
//! let frame = PublishFrame::new("news", Some(data));
//! assert_eq!(frame.as_str(), r##"{"event":"#publish","data":{"channel":"news","data":{"a":1}}}"##);
//! ```

use bytes::{BufMut, Bytes, BytesMut};
use serde_json::value::RawValue;

use crate::ScError;
use crate::decode::Cid;

/// The protocol v2 ping (server to client) and pong (client to server): an empty text frame.
pub const HEARTBEAT: &str = "";
/// The protocol v1 ping (server to client).
pub const PING_V1: &str = "#1";
/// The protocol v1 pong (client to server).
pub const PONG_V1: &str = "#2";

/// The start of this project's in-band close message on engine.io, which has no close codes: a
/// close travels as one message `#close:{"code":<u16>,"reason":"<text>"}` before the engine.io
/// close ([`put_inband_close`], [`parse_inband_close`]).
pub const INBAND_CLOSE_PREFIX: &str = "#close:";

// ---------------------------------------------------------------------------------------------
// Strings and numbers

/// What a byte becomes in a JSON string: 0 for itself, `u` for `\u00XX`, else the letter after
/// the backslash (the escapes `JSON.stringify` and serde_json use).
static ESCAPE: [u8; 256] = {
    let mut table = [0u8; 256];
    let mut b = 0;
    while b < 0x20 {
        table[b] = b'u';
        b += 1;
    }
    table[0x08] = b'b';
    table[0x09] = b't';
    table[0x0a] = b'n';
    table[0x0c] = b'f';
    table[0x0d] = b'r';
    table[b'"' as usize] = b'"';
    table[b'\\' as usize] = b'\\';
    table
};

/// Appends `s` as a JSON string literal, escaped as `JSON.stringify` does: `"` and `\` get a
/// backslash, `\b \f \n \r \t` their short escapes, the other control characters below U+0020
/// `\u00XX` (lowercase hex); everything else (`/`, DEL, non-ASCII, U+2028) is copied as is.
pub fn put_str<B: BufMut + ?Sized>(buf: &mut B, s: &str) {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    buf.put_u8(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc = ESCAPE[usize::from(b)];
        if esc == 0 {
            continue;
        }
        if start < i {
            buf.put_slice(&bytes[start..i]);
        }
        if esc == b'u' {
            buf.put_slice(&[
                b'\\',
                b'u',
                b'0',
                b'0',
                HEX[usize::from(b >> 4)],
                HEX[usize::from(b & 0xf)],
            ]);
        } else {
            buf.put_slice(&[b'\\', esc]);
        }
        start = i + 1;
    }
    buf.put_slice(&bytes[start..]);
    buf.put_u8(b'"');
}

/// The number of bytes [`put_str`] writes for `s`.
fn str_len(s: &str) -> usize {
    s.as_bytes().iter().fold(2 + s.len(), |n, &b| {
        n + match ESCAPE[usize::from(b)] {
            0 => 0,
            b'u' => 5,
            _ => 1,
        }
    })
}

/// Appends `s` as a JSON string literal (the `Vec` form of [`put_str`]).
#[inline]
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    put_str(buf, s);
}

#[inline]
fn put_u64<B: BufMut + ?Sized>(buf: &mut B, n: u64) {
    buf.put_slice(itoa::Buffer::new().format(n).as_bytes());
}

#[inline]
fn put_bool<B: BufMut + ?Sized>(buf: &mut B, b: bool) {
    buf.put_slice(if b { b"true" } else { b"false" });
}

#[inline]
fn raw_bytes(data: Option<&RawValue>) -> Option<&[u8]> {
    data.map(|d| d.get().as_bytes())
}

// ---------------------------------------------------------------------------------------------
// Packets

#[inline]
fn put_event_head<B: BufMut + ?Sized>(buf: &mut B, event: &str, data: Option<&[u8]>) {
    buf.put_slice(b"{\"event\":");
    put_str(buf, event);
    if let Some(data) = data {
        buf.put_slice(b",\"data\":");
        buf.put_slice(data);
    }
}

/// Appends a transmit: `{"event":E[,"data":D]}`.
///
/// `data` must be one valid JSON value (see the [module docs](self)).
#[inline]
pub fn put_transmit<B: BufMut + ?Sized>(buf: &mut B, event: &str, data: Option<&[u8]>) {
    put_event_head(buf, event, data);
    buf.put_u8(b'}');
}

/// Appends an invoke: `{"event":E[,"data":D],"cid":N}`.
///
/// `data` must be one valid JSON value (see the [module docs](self)).
#[inline]
pub fn put_invoke<B: BufMut + ?Sized>(buf: &mut B, event: &str, data: Option<&[u8]>, cid: Cid) {
    put_event_head(buf, event, data);
    buf.put_slice(b",\"cid\":");
    put_u64(buf, cid);
    buf.put_u8(b'}');
}

/// Appends a success response: `{"rid":N[,"data":D]}`, [`response_len`] bytes.
///
/// `data` must be one valid JSON value (see the [module docs](self)).
#[inline]
pub fn put_response<B: BufMut + ?Sized>(buf: &mut B, rid: Cid, data: Option<&[u8]>) {
    buf.put_slice(b"{\"rid\":");
    put_u64(buf, rid);
    if let Some(data) = data {
        buf.put_slice(b",\"data\":");
        buf.put_slice(data);
    }
    buf.put_u8(b'}');
}

/// The exact number of bytes [`put_response`] writes for `rid` and data of `data_len` bytes
/// (`None`: no data), computed without formatting anything.
#[inline]
pub const fn response_len(rid: Cid, data_len: Option<usize>) -> usize {
    // `{"rid":` N [`,"data":` D] `}`
    let data = match data_len {
        Some(n) => 8 + n,
        None => 0,
    };
    let digits = match rid.checked_ilog10() {
        // `l` is at most 19, so the cast is lossless.
        Some(l) => l as usize + 1,
        None => 1,
    };
    7 + digits + data + 1
}

#[inline]
fn put_rid_error_head<B: BufMut + ?Sized>(buf: &mut B, rid: Cid) {
    buf.put_slice(b"{\"rid\":");
    put_u64(buf, rid);
    buf.put_slice(b",\"error\":");
}

/// Appends an error response carrying `error` in its dehydrated form (as
/// [`ScError::put_json`] writes it): `{"rid":N,"error":E}`.
pub fn put_error<B: BufMut + ?Sized>(buf: &mut B, rid: Cid, error: &ScError) {
    put_rid_error_head(buf, rid);
    error.put_json(buf);
    buf.put_u8(b'}');
}

/// Appends an error response whose error is raw JSON (usually a dehydrated [`ScError`] a peer
/// sent): `{"rid":N,"error":E}`.
///
/// `error` must be one valid JSON value (see the [module docs](self)).
#[inline]
pub fn put_error_response<B: BufMut + ?Sized>(buf: &mut B, rid: Cid, error: &[u8]) {
    put_rid_error_head(buf, rid);
    buf.put_slice(error);
    buf.put_u8(b'}');
}

/// Appends a transmit: `{"event":E[,"data":D]}` (the `Vec` + [`RawValue`] form of
/// [`put_transmit`]).
#[inline]
pub fn write_transmit(buf: &mut Vec<u8>, event: &str, data: Option<&RawValue>) {
    put_transmit(buf, event, raw_bytes(data));
}

/// Appends an invoke: `{"event":E[,"data":D],"cid":N}` (the `Vec` + [`RawValue`] form of
/// [`put_invoke`]).
#[inline]
pub fn write_invoke(buf: &mut Vec<u8>, event: &str, data: Option<&RawValue>, cid: Cid) {
    put_invoke(buf, event, raw_bytes(data), cid);
}

/// Appends a success response: `{"rid":N[,"data":D]}` (the `Vec` + [`RawValue`] form of
/// [`put_response`]).
#[inline]
pub fn write_response(buf: &mut Vec<u8>, rid: Cid, data: Option<&RawValue>) {
    put_response(buf, rid, raw_bytes(data));
}

/// Appends an error response: `{"rid":N,"error":E}` where `error` is raw JSON (usually a
/// dehydrated [`crate::ScError`], see [`write_error`]); the `Vec` + [`RawValue`] form of
/// [`put_error_response`].
#[inline]
pub fn write_error_response(buf: &mut Vec<u8>, rid: Cid, error: &RawValue) {
    put_error_response(buf, rid, error.get().as_bytes());
}

/// Appends an error response carrying `error` in its dehydrated form (the `Vec` form of
/// [`put_error`]).
#[inline]
pub fn write_error(buf: &mut Vec<u8>, rid: Cid, error: &ScError) {
    put_error(buf, rid, error);
}

// ---------------------------------------------------------------------------------------------
// Reserved events the server sends

const PUBLISH_HEAD: &[u8] = b"{\"event\":\"#publish\",\"data\":{\"channel\":";

/// Appends the `#publish` transmit a subscriber receives:
/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
///
/// `data` must be one valid JSON value (see the [module docs](self)).
pub fn put_publish<B: BufMut + ?Sized>(buf: &mut B, channel: &str, data: Option<&[u8]>) {
    #[cfg(test)]
    tests::PUBLISH_ENCODES.with(|n| n.set(n.get() + 1));
    buf.put_slice(PUBLISH_HEAD);
    put_str(buf, channel);
    if let Some(data) = data {
        buf.put_slice(b",\"data\":");
        buf.put_slice(data);
    }
    buf.put_slice(b"}}");
}

/// Appends the `#publish` transmit a subscriber receives (the `Vec` + [`RawValue`] form of
/// [`put_publish`]).
#[inline]
pub fn write_publish(buf: &mut Vec<u8>, channel: &str, data: Option<&RawValue>) {
    put_publish(buf, channel, raw_bytes(data));
}

/// Appends the reply to a `#handshake` invoke, as socketcluster-server v20 sends it:
/// `{"rid":N,"data":{"id":ID,"pingTimeout":MS,"isAuthenticated":B[,"authError":E]}}`, where `E`
/// is the dehydrated `auth_error` (left out when `None`).
pub fn put_handshake_reply<B: BufMut + ?Sized>(
    buf: &mut B,
    rid: Cid,
    socket_id: &str,
    ping_timeout_ms: u64,
    is_authenticated: bool,
    auth_error: Option<&ScError>,
) {
    buf.put_slice(b"{\"rid\":");
    put_u64(buf, rid);
    buf.put_slice(b",\"data\":{\"id\":");
    put_str(buf, socket_id);
    buf.put_slice(b",\"pingTimeout\":");
    put_u64(buf, ping_timeout_ms);
    buf.put_slice(b",\"isAuthenticated\":");
    put_bool(buf, is_authenticated);
    if let Some(e) = auth_error {
        buf.put_slice(b",\"authError\":");
        e.put_json(buf);
    }
    buf.put_slice(b"}}");
}

/// Appends the reply to an `#authenticate` invoke:
/// `{"rid":N,"data":{"isAuthenticated":B,"authError":E}}`, where `E` is the dehydrated
/// `auth_error`, or `null` when `None`.
pub fn put_auth_status<B: BufMut + ?Sized>(
    buf: &mut B,
    rid: Cid,
    is_authenticated: bool,
    auth_error: Option<&ScError>,
) {
    buf.put_slice(b"{\"rid\":");
    put_u64(buf, rid);
    buf.put_slice(b",\"data\":{\"isAuthenticated\":");
    put_bool(buf, is_authenticated);
    buf.put_slice(b",\"authError\":");
    match auth_error {
        Some(e) => e.put_json(buf),
        None => buf.put_slice(b"null"),
    }
    buf.put_slice(b"}}");
}

/// Appends a `#setAuthToken` transmit: `{"event":"#setAuthToken","data":{"token":T}}`, where `T`
/// is the signed token as a JSON string.
#[inline]
pub fn put_set_auth_token<B: BufMut + ?Sized>(buf: &mut B, token: &str) {
    buf.put_slice(b"{\"event\":\"#setAuthToken\",\"data\":{\"token\":");
    put_str(buf, token);
    buf.put_slice(b"}}");
}

/// Appends a `#removeAuthToken` transmit: `{"event":"#removeAuthToken"}`.
#[inline]
pub fn put_remove_auth_token<B: BufMut + ?Sized>(buf: &mut B) {
    buf.put_slice(b"{\"event\":\"#removeAuthToken\"}");
}

/// Appends a `#kickOut` transmit: `{"event":"#kickOut","data":{"channel":C[,"message":M]}}`.
///
/// `message` must be one valid JSON value (see the [module docs](self)).
#[inline]
pub fn put_kick_out<B: BufMut + ?Sized>(buf: &mut B, channel: &str, message: Option<&[u8]>) {
    buf.put_slice(b"{\"event\":\"#kickOut\",\"data\":{\"channel\":");
    put_str(buf, channel);
    if let Some(m) = message {
        buf.put_slice(b",\"message\":");
        buf.put_slice(m);
    }
    buf.put_slice(b"}}");
}

// ---------------------------------------------------------------------------------------------
// The engine.io in-band close

/// Appends the engine.io in-band close message: `#close:{"code":N,"reason":R}`
/// ([`INBAND_CLOSE_PREFIX`]), with `reason` as a JSON string.
#[inline]
pub fn put_inband_close<B: BufMut + ?Sized>(buf: &mut B, code: u16, reason: &str) {
    buf.put_slice(b"#close:{\"code\":");
    put_u64(buf, u64::from(code));
    buf.put_slice(b",\"reason\":");
    put_str(buf, reason);
    buf.put_u8(b'}');
}

/// Parses an engine.io message that may be an in-band close.
///
/// `None` when `text` does not start with [`INBAND_CLOSE_PREFIX`] (an ordinary message). Else the
/// code and reason of the JSON object after the prefix: a missing (or `null`) `code` gives 1000, a
/// missing (or `null`) `reason` gives `""`, other fields are ignored, and a malformed body (not
/// JSON, a code that is no integer in `0..=65535`, a reason that is no string) gives `(1000, "")`.
/// (As serde reads structs, a `[code, reason]` array is accepted too.)
///
/// ```
/// use sc_protocol::encode::{parse_inband_close, put_inband_close};
///
/// let mut buf = Vec::new();
/// put_inband_close(&mut buf, 4001, "Client pong timed out");
/// let text = std::str::from_utf8(&buf).unwrap();
/// assert_eq!(text, r##"#close:{"code":4001,"reason":"Client pong timed out"}"##);
/// assert_eq!(parse_inband_close(text), Some((4001, "Client pong timed out".to_owned())));
/// assert_eq!(parse_inband_close("#close:garbage"), Some((1000, String::new())));
/// assert_eq!(parse_inband_close("hello"), None);
/// ```
pub fn parse_inband_close(text: &str) -> Option<(u16, String)> {
    #[derive(serde::Deserialize)]
    struct Close {
        code: Option<u16>,
        reason: Option<String>,
    }
    let body = text.strip_prefix(INBAND_CLOSE_PREFIX)?;
    Some(match serde_json::from_str::<Close>(body) {
        Ok(c) => (c.code.unwrap_or(1000), c.reason.unwrap_or_default()),
        Err(_) => (1000, String::new()),
    })
}

// ---------------------------------------------------------------------------------------------
// Shared frames

/// A `#publish` frame encoded once and shared by reference among every subscriber.
///
/// Cloning it clones a reference-counted pointer, never the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFrame(Bytes);

impl PublishFrame {
    /// Encodes the frame for a publish of `data` to `channel`.
    pub fn new(channel: &str, data: Option<&RawValue>) -> Self {
        Self::from_json(channel, raw_bytes(data))
    }

    /// Encodes the frame for a publish of `data`, raw JSON text, to `channel`, into one
    /// allocation of exactly the frame's size.
    ///
    /// `data` must be one valid JSON value (see the [module docs](self)).
    pub fn from_json(channel: &str, data: Option<&[u8]>) -> Self {
        let len = PUBLISH_HEAD.len() + str_len(channel) + data.map_or(0, |d| 8 + d.len()) + 2;
        let mut buf = BytesMut::with_capacity(len);
        put_publish(&mut buf, channel, data);
        debug_assert_eq!(buf.len(), len, "PublishFrame::from_json: wrong length");
        PublishFrame(buf.freeze())
    }

    /// The frame's text.
    pub fn as_str(&self) -> &str {
        // The bytes were written from `&str`s and ASCII punctuation, so they are UTF-8.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The shared bytes of the frame (a cheap clone).
    pub fn bytes(&self) -> &Bytes {
        &self.0
    }

    /// The shared bytes of the frame.
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

/// Encodes `frames` as one batch frame: `[f1,f2,...]`. Each element must be one encoded packet.
pub fn write_batch<'a>(buf: &mut Vec<u8>, frames: impl IntoIterator<Item = &'a [u8]>) {
    buf.push(b'[');
    for (i, f) in frames.into_iter().enumerate() {
        if i > 0 {
            buf.push(b',');
        }
        buf.extend_from_slice(f);
    }
    buf.push(b']');
}

#[cfg(test)]
mod tests {
    use std::cell::Cell;

    use super::*;

    thread_local! {
        /// How many `#publish` frames this thread encoded.
        pub(super) static PUBLISH_ENCODES: Cell<usize> = const { Cell::new(0) };
    }

    fn encodes() -> usize {
        PUBLISH_ENCODES.with(Cell::get)
    }

    fn raw(text: &str) -> &RawValue {
        serde_json::from_str(text).unwrap()
    }

    /// One subscriber's outbound queue.
    #[derive(Default)]
    struct Subscriber {
        queue: Vec<Bytes>,
    }

    #[test]
    fn publish_to_1000_subscribers_is_encoded_once() {
        let mut subscribers: Vec<Subscriber> = (0..1000).map(|_| Subscriber::default()).collect();
        let before = encodes();

        let frame = PublishFrame::new("news", Some(raw(r#"{"headline":"x","n":[1,2,3]}"#)));
        for subscriber in &mut subscribers {
            subscriber.queue.push(frame.clone().into_bytes());
        }

        assert_eq!(
            encodes() - before,
            1,
            "the frame was encoded more than once"
        );
        let shared = frame.bytes();
        for subscriber in &subscribers {
            let [bytes] = subscriber.queue.as_slice() else {
                panic!("one frame per subscriber")
            };
            assert_eq!(bytes.as_ptr(), shared.as_ptr(), "a subscriber got a copy");
            assert_eq!(bytes, shared);
        }
        assert_eq!(
            frame.as_str(),
            r##"{"event":"#publish","data":{"channel":"news","data":{"headline":"x","n":[1,2,3]}}}"##
        );
    }

    /// The checks above can fail: encoding per subscriber is counted and gives other pointers.
    #[test]
    fn encoding_per_subscriber_would_be_caught() {
        let before = encodes();
        let a = PublishFrame::new("news", Some(raw("1")));
        let b = PublishFrame::new("news", Some(raw("1")));
        assert_eq!(encodes() - before, 2);
        assert_eq!(a, b);
        assert_ne!(a.bytes().as_ptr(), b.bytes().as_ptr());
        let mut buf = Vec::new();
        write_publish(&mut buf, "news", None);
        assert_eq!(encodes() - before, 3);
    }

    #[test]
    fn publish_frame_accessors() {
        let frame = PublishFrame::new("é", None);
        assert_eq!(
            frame.as_str(),
            r##"{"event":"#publish","data":{"channel":"é"}}"##
        );
        assert_eq!(frame.bytes().as_ref(), frame.as_str().as_bytes());
        let bytes = frame.clone().into_bytes();
        assert_eq!(bytes.as_ptr(), frame.bytes().as_ptr());
    }

    #[test]
    fn str_len_counts_every_escape() {
        for b in 0..=0x7fu8 {
            let s = format!("a{}b", char::from(b));
            let mut buf = Vec::new();
            put_str(&mut buf, &s);
            assert_eq!(str_len(&s), buf.len(), "{b:#x}");
        }
    }

    #[test]
    fn write_str_escapes_like_json_stringify() {
        let cases = [
            ("", r#""""#),
            ("plain", r#""plain""#),
            ("q\"b\\s/", r#""q\"b\\s/""#),
            ("\n\r\t\u{8}\u{c}", r#""\n\r\t\b\f""#),
            ("\0\u{1}\u{1f}\u{7f}", "\"\\u0000\\u0001\\u001f\u{7f}\""),
            ("é😀\u{2028}", "\"é😀\u{2028}\""),
        ];
        for (input, want) in cases {
            let mut buf = Vec::new();
            write_str(&mut buf, input);
            assert_eq!(std::str::from_utf8(&buf).unwrap(), want, "{input:?}");
            assert_eq!(str_len(input), buf.len(), "{input:?}");
        }
    }
}
