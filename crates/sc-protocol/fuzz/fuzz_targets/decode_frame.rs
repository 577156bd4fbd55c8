//! Fuzzes frame decoding: `decode_binary`, `Reserved::parse` on every packet, and re-encoding.
//!
//! Besides "never panics": `decode` must agree with the serde-only reference decoder (so the fast
//! scanner never changes a decision), and every packet must survive a round trip: re-encoding it
//! gives valid JSON that decodes to the same packet.

#![no_main]

use libfuzzer_sys::fuzz_target;
use sc_protocol::decode::decode_reference;
use sc_protocol::encode::{
    PublishFrame, write_error_response, write_invoke, write_response, write_transmit,
};
use sc_protocol::{Frame, Packet, RawValue, Reserved, ScError, decode, decode_binary};

fuzz_target!(|bytes: &[u8]| {
    let frame = decode_binary(bytes);
    if let Ok(text) = std::str::from_utf8(bytes) {
        // `decode` and `decode_binary` agree on text, and the fast scanner never decides
        // differently from the serde-only reference decoder.
        assert_eq!(frame, decode(text));
        assert_eq!(frame, decode_reference(text));
    }
    let mut buf = Vec::new();
    for packet in frame.into_packets() {
        buf.clear();
        check_packet(&packet, &mut buf);
    }
});

fn raw(r: Option<&RawValue>) -> Option<&str> {
    r.map(RawValue::get)
}

fn decode_one(buf: &[u8]) -> Packet<'_> {
    // The encoder writes valid JSON, whatever the nesting depth of the payload.
    assert!(
        serde_json::from_slice::<&RawValue>(buf).is_ok(),
        "invalid JSON {buf:?}"
    );
    match decode_binary(buf) {
        Frame::Packet(p) => p,
        other => panic!("re-encoded packet decodes as {other:?}"),
    }
}

fn check_packet(packet: &Packet<'_>, buf: &mut Vec<u8>) {
    match packet {
        Packet::Transmit { event, data } => {
            check_reserved(event, *data);
            write_transmit(buf, event, *data);
            match decode_one(buf) {
                Packet::Transmit {
                    event: e2,
                    data: d2,
                } => {
                    assert_eq!((&**event, raw(*data)), (&*e2, raw(d2)));
                }
                other => panic!("transmit came back as {other:?}"),
            }
        }
        Packet::Invoke { event, data, cid } => {
            check_reserved(event, *data);
            write_invoke(buf, event, *data, *cid);
            match decode_one(buf) {
                Packet::Invoke {
                    event: e2,
                    data: d2,
                    cid: c2,
                } => {
                    assert_eq!((&**event, raw(*data), *cid), (&*e2, raw(d2), c2));
                }
                other => panic!("invoke came back as {other:?}"),
            }
        }
        Packet::Response { rid, data, error } => {
            match error {
                Some(error) => {
                    let hydrated = ScError::from_json(error.get());
                    let again = ScError::from_json(&hydrated.to_json());
                    assert_eq!(
                        (&hydrated.name, &hydrated.message),
                        (&again.name, &again.message)
                    );
                    write_error_response(buf, *rid, error);
                }
                None => write_response(buf, *rid, *data),
            }
            match decode_one(buf) {
                Packet::Response {
                    rid: r2,
                    data: d2,
                    error: e2,
                } => {
                    assert_eq!(*rid, r2);
                    match error {
                        Some(error) => assert_eq!((Some(error.get()), None), (raw(e2), raw(d2))),
                        None => assert_eq!((raw(*data), None), (raw(d2), raw(e2))),
                    }
                }
                other => panic!("response came back as {other:?}"),
            }
        }
        Packet::Raw(_) => {}
    }
}

fn check_reserved(event: &str, data: Option<&RawValue>) {
    match Reserved::parse(event, data) {
        Some(Ok(Reserved::Publish { channel, data })) => {
            let frame = PublishFrame::new(&channel, data);
            let Frame::Packet(Packet::Transmit { event, data: d2 }) = decode(frame.as_str()) else {
                panic!("publish frame {} is no transmit", frame.as_str());
            };
            match Reserved::parse(&event, d2) {
                Some(Ok(Reserved::Publish {
                    channel: c2,
                    data: d3,
                })) => {
                    assert_eq!((&*channel, raw(data)), (&*c2, raw(d3)));
                }
                other => panic!("publish came back as {other:?}"),
            }
        }
        Some(Err(invalid)) => {
            let error = invalid.to_error("id");
            assert_eq!(ScError::from_json(&error.to_json()), error);
        }
        Some(Ok(_)) | None => {}
    }
}
