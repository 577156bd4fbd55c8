//! Helpers shared by the integration tests.

#![allow(
    dead_code,
    unreachable_pub,
    clippy::unwrap_used,
    clippy::expect_used,
    clippy::panic
)]

use std::borrow::Cow;

use sc_protocol::{Frame, Packet, RawValue};

/// `text` as a raw JSON value (panics on invalid JSON: test input is valid).
pub fn raw(text: &str) -> &RawValue {
    serde_json::from_str(text).unwrap_or_else(|e| panic!("invalid test JSON {text:?}: {e}"))
}

/// A transmit packet.
pub fn transmit<'a>(event: &'a str, data: Option<&'a str>) -> Packet<'a> {
    Packet::Transmit {
        event: Cow::Borrowed(event),
        data: data.map(raw),
    }
}

/// An invoke packet.
pub fn invoke<'a>(event: &'a str, data: Option<&'a str>, cid: u64) -> Packet<'a> {
    Packet::Invoke {
        event: Cow::Borrowed(event),
        data: data.map(raw),
        cid,
    }
}

/// A response packet.
pub fn response<'a>(rid: u64, data: Option<&'a str>, error: Option<&'a str>) -> Packet<'a> {
    Packet::Response {
        rid,
        data: data.map(raw),
        error: error.map(raw),
    }
}

/// The single packet of a frame (panics on heartbeats and batches).
pub fn single(frame: Frame<'_>) -> Packet<'_> {
    match frame {
        Frame::Packet(p) => p,
        other => panic!("expected one packet, got {other:?}"),
    }
}

/// `buf` as text.
pub fn text(buf: &[u8]) -> &str {
    std::str::from_utf8(buf).unwrap()
}

/// Runs `f` on a new thread with the default 2 MiB test stack and propagates its panic, so a test
/// proves that `f` needs no more stack than an ordinary test thread has.
pub fn on_small_stack(f: impl FnOnce() + Send + 'static) {
    let handle = std::thread::Builder::new()
        .name("small-stack".to_owned())
        .stack_size(2 * 1024 * 1024)
        .spawn(f)
        .unwrap();
    if let Err(panic) = handle.join() {
        std::panic::resume_unwind(panic);
    }
}
