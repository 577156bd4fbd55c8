//! Encoding packets into text frames.
//!
//! The `write_*` functions append one frame to a caller's buffer, so a socket writer reuses one
//! buffer for every frame it sends. Payloads are raw JSON text ([`RawValue`]) copied as they are:
//! data the server only forwards is never parsed and re-serialised.
//!
//! A `#publish` frame is built once per publish as a [`PublishFrame`], whose bytes are
//! reference-counted: handing it to a thousand subscribers clones a pointer a thousand times.
//!
//! ```
//! use sc_protocol::encode::{write_response, PublishFrame};
//! use serde_json::value::RawValue;
//!
//! let mut buf = Vec::new();
//! let data: &RawValue = serde_json::from_str(r#"{"a":1}"#).unwrap();
//! write_response(&mut buf, 7, Some(data));
//! assert_eq!(buf, br#"{"rid":7,"data":{"a":1}}"#);
//!
//! let frame = PublishFrame::new("news", Some(data));
//! assert_eq!(frame.as_str(), r##"{"event":"#publish","data":{"channel":"news","data":{"a":1}}}"##);
//! ```

use bytes::Bytes;
use serde_json::value::RawValue;

use crate::decode::Cid;

/// The protocol v2 ping (server to client) and pong (client to server): an empty text frame.
pub const HEARTBEAT: &str = "";
/// The protocol v1 ping (server to client).
pub const PING_V1: &str = "#1";
/// The protocol v1 pong (client to server).
pub const PONG_V1: &str = "#2";

/// Appends `s` as a JSON string literal, escaped as `JSON.stringify` does.
pub fn write_str(buf: &mut Vec<u8>, s: &str) {
    buf.push(b'"');
    let bytes = s.as_bytes();
    let mut start = 0;
    for (i, &b) in bytes.iter().enumerate() {
        let esc: &[u8] = match b {
            b'"' => b"\\\"",
            b'\\' => b"\\\\",
            b'\n' => b"\\n",
            b'\r' => b"\\r",
            b'\t' => b"\\t",
            0x08 => b"\\b",
            0x0c => b"\\f",
            0x00..=0x1f => {
                buf.extend_from_slice(&bytes[start..i]);
                const HEX: &[u8; 16] = b"0123456789abcdef";
                buf.extend_from_slice(&[
                    b'\\',
                    b'u',
                    b'0',
                    b'0',
                    HEX[usize::from(b >> 4)],
                    HEX[usize::from(b & 0xf)],
                ]);
                start = i + 1;
                continue;
            }
            _ => continue,
        };
        buf.extend_from_slice(&bytes[start..i]);
        buf.extend_from_slice(esc);
        start = i + 1;
    }
    buf.extend_from_slice(&bytes[start..]);
    buf.push(b'"');
}

fn write_u64(buf: &mut Vec<u8>, n: u64) {
    buf.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

fn write_event_head(buf: &mut Vec<u8>, event: &str, data: Option<&RawValue>) {
    buf.extend_from_slice(b"{\"event\":");
    write_str(buf, event);
    if let Some(data) = data {
        buf.extend_from_slice(b",\"data\":");
        buf.extend_from_slice(data.get().as_bytes());
    }
}

/// Appends a transmit: `{"event":E[,"data":D]}`.
pub fn write_transmit(buf: &mut Vec<u8>, event: &str, data: Option<&RawValue>) {
    write_event_head(buf, event, data);
    buf.push(b'}');
}

/// Appends an invoke: `{"event":E[,"data":D],"cid":N}`.
pub fn write_invoke(buf: &mut Vec<u8>, event: &str, data: Option<&RawValue>, cid: Cid) {
    write_event_head(buf, event, data);
    buf.extend_from_slice(b",\"cid\":");
    write_u64(buf, cid);
    buf.push(b'}');
}

/// Appends a success response: `{"rid":N[,"data":D]}`.
pub fn write_response(buf: &mut Vec<u8>, rid: Cid, data: Option<&RawValue>) {
    buf.extend_from_slice(b"{\"rid\":");
    write_u64(buf, rid);
    if let Some(data) = data {
        buf.extend_from_slice(b",\"data\":");
        buf.extend_from_slice(data.get().as_bytes());
    }
    buf.push(b'}');
}

/// Appends an error response: `{"rid":N,"error":E}` where `error` is raw JSON (usually a
/// dehydrated [`crate::ScError`], see [`write_error`]).
pub fn write_error_response(buf: &mut Vec<u8>, rid: Cid, error: &RawValue) {
    buf.extend_from_slice(b"{\"rid\":");
    write_u64(buf, rid);
    buf.extend_from_slice(b",\"error\":");
    buf.extend_from_slice(error.get().as_bytes());
    buf.push(b'}');
}

/// Appends an error response carrying `error` in its dehydrated form.
pub fn write_error(buf: &mut Vec<u8>, rid: Cid, error: &crate::ScError) {
    buf.extend_from_slice(b"{\"rid\":");
    write_u64(buf, rid);
    buf.extend_from_slice(b",\"error\":");
    error.write_json(buf);
    buf.push(b'}');
}

/// Appends the `#publish` transmit a subscriber receives:
/// `{"event":"#publish","data":{"channel":C[,"data":D]}}`.
pub fn write_publish(buf: &mut Vec<u8>, channel: &str, data: Option<&RawValue>) {
    #[cfg(test)]
    tests::PUBLISH_ENCODES.with(|n| n.set(n.get() + 1));
    buf.extend_from_slice(b"{\"event\":\"#publish\",\"data\":{\"channel\":");
    write_str(buf, channel);
    if let Some(data) = data {
        buf.extend_from_slice(b",\"data\":");
        buf.extend_from_slice(data.get().as_bytes());
    }
    buf.extend_from_slice(b"}}");
}

/// A `#publish` frame encoded once and shared by reference among every subscriber.
///
/// Cloning it clones a reference-counted pointer, never the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PublishFrame(Bytes);

impl PublishFrame {
    /// Encodes the frame for a publish of `data` to `channel`.
    pub fn new(channel: &str, data: Option<&RawValue>) -> Self {
        let mut buf = Vec::with_capacity(48 + channel.len() + data.map_or(0, |d| d.get().len()));
        write_publish(&mut buf, channel, data);
        PublishFrame(Bytes::from(buf))
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
        }
    }
}
