//! Hostile input: deep nesting, huge numbers, invalid UTF-8, duplicate keys. Each is a clean
//! [`Packet::Raw`] or a packet whose payload is kept as raw JSON, never a panic or a stack
//! overflow. The nesting tests run on a thread with the default 2 MiB test stack.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{invoke, on_small_stack, raw, response, single, transmit};
use sc_protocol::encode::{PublishFrame, write_error_response, write_transmit};
use sc_protocol::{Frame, Packet, RawValue, Reserved, ScError, decode, decode_binary};

const DEPTH: usize = 100_000;

fn nested_arrays(depth: usize) -> String {
    "[".repeat(depth) + &"]".repeat(depth)
}

fn nested_objects(depth: usize) -> String {
    r#"{"a":"#.repeat(depth) + "1" + &"}".repeat(depth)
}

/// Every packet of the frame, with reserved events parsed and a publish frame built, the way a
/// server handles a frame. Exercises every code path a hostile frame reaches.
fn handle(frame: &Frame<'_>) {
    let packets = match frame {
        Frame::Packet(p) => std::slice::from_ref(p),
        Frame::Batch(ps) => ps.as_slice(),
        Frame::Heartbeat | Frame::PingV1 | Frame::PongV1 => &[],
    };
    for packet in packets {
        match packet {
            Packet::Transmit { event, data } | Packet::Invoke { event, data, .. } => {
                if let Some(Ok(Reserved::Publish { channel, data })) = Reserved::parse(event, *data)
                {
                    // Forward it and read it back (once: the forwarded frame is a publish too).
                    let frame = PublishFrame::new(&channel, data);
                    let Frame::Packet(Packet::Transmit { event, data: d2 }) =
                        decode(frame.as_str())
                    else {
                        panic!("publish frame is no transmit")
                    };
                    assert_eq!(
                        Reserved::parse(&event, d2),
                        Some(Ok(Reserved::Publish { channel, data }))
                    );
                }
            }
            Packet::Response { error: Some(e), .. } => {
                let _ = ScError::from_json(e.get()).to_json();
            }
            Packet::Response { .. } | Packet::Raw(_) => {}
        }
    }
}

#[test]
fn deep_nesting_as_the_whole_frame() {
    on_small_stack(|| {
        let arrays = nested_arrays(DEPTH);
        // A batch whose one element is no packet.
        let inner = &arrays[1..arrays.len() - 1];
        assert_eq!(decode(&arrays), Frame::Batch(vec![Packet::Raw(inner)]));
        handle(&decode(&arrays));

        let objects = nested_objects(DEPTH);
        assert_eq!(decode(&objects), Frame::Packet(Packet::Raw(&objects)));

        // Unclosed, and closed with the wrong brackets.
        for text in [
            "[".repeat(DEPTH),
            r#"{"a":"#.repeat(DEPTH),
            "[".repeat(DEPTH) + &"}".repeat(DEPTH),
            "[{".repeat(DEPTH),
        ] {
            assert_eq!(decode(&text), Frame::Packet(Packet::Raw(&text)));
        }
    });
}

#[test]
fn deep_nesting_inside_data() {
    on_small_stack(|| {
        for deep in [nested_arrays(DEPTH), nested_objects(DEPTH)] {
            let frame = format!(r#"{{"event":"e","data":{deep},"cid":1}}"#);
            assert_eq!(single(decode(&frame)), invoke("e", Some(&deep), 1));
            handle(&decode(&frame));

            // Forwarded untouched.
            let Packet::Invoke { data, .. } = single(decode(&frame)) else {
                panic!()
            };
            let mut buf = Vec::new();
            write_transmit(&mut buf, "e", data);
            assert_eq!(buf.len(), deep.len() + r#"{"event":"e","data":}"#.len());

            // In a #publish, the payload is forwarded as it is.
            let publish =
                format!(r##"{{"event":"#publish","data":{{"channel":"c","data":{deep}}}}}"##);
            let Packet::Transmit { event, data } = single(decode(&publish)) else {
                panic!()
            };
            let Some(Ok(Reserved::Publish { channel, data })) = Reserved::parse(&event, data)
            else {
                panic!()
            };
            assert_eq!(
                (&*channel, data.map(RawValue::get)),
                ("c", Some(deep.as_str()))
            );
            let frame = PublishFrame::new(&channel, data);
            assert_eq!(frame.as_str().len(), publish.len());
            handle(&decode(&publish));

            // In an error, hydrating gives up cleanly.
            let mut buf = Vec::new();
            write_error_response(&mut buf, 3, raw(&deep));
            let text = std::str::from_utf8(&buf).unwrap();
            assert_eq!(single(decode(text)), response(3, None, Some(&deep)));
            let error = ScError::from_json(&deep);
            assert_eq!((&*error.name, error.message.len()), ("Error", deep.len()));
            handle(&decode(text));

            // As a reserved payload or inside one.
            for frame in [
                format!(r##"{{"event":"#subscribe","data":{deep},"cid":1}}"##),
                format!(
                    r##"{{"event":"#subscribe","data":{{"channel":"c","data":{deep}}},"cid":1}}"##
                ),
                format!(r##"{{"event":"#unsubscribe","data":{deep}}}"##),
                format!(r##"{{"event":"#handshake","data":{{"x":{deep}}},"cid":1}}"##),
                format!(r##"{{"event":"#kickOut","data":{{"channel":"c","message":{deep}}}}}"##),
            ] {
                let (Packet::Transmit { event, data } | Packet::Invoke { event, data, .. }) =
                    single(decode(&frame))
                else {
                    panic!("{}", &frame[..40]);
                };
                assert!(Reserved::parse(&event, data).is_some());
            }
        }
    });
}

#[test]
fn deep_nesting_inside_an_unknown_field() {
    on_small_stack(|| {
        let deep = nested_arrays(DEPTH);
        let frame = format!(r#"{{"event":"e","extra":{deep},"data":2}}"#);
        assert_eq!(single(decode(&frame)), transmit("e", Some("2")));
        let frame = format!(r#"{{"rid":4,"x":{}}}"#, nested_objects(DEPTH));
        assert_eq!(single(decode(&frame)), response(4, None, None));
        // In the fields that classify a packet: not a string, not a number.
        let frame = format!(r#"{{"event":{deep}}}"#);
        assert_eq!(decode(&frame), Frame::Packet(Packet::Raw(&frame)));
        let frame = format!(r#"{{"event":"e","cid":{deep}}}"#);
        assert_eq!(single(decode(&frame)), transmit("e", None));
        let frame = format!(r#"{{"rid":{deep}}}"#);
        assert_eq!(decode(&frame), Frame::Packet(Packet::Raw(&frame)));
    });
}

#[test]
fn deep_nesting_inside_a_batch() {
    on_small_stack(|| {
        let deep = nested_objects(DEPTH);
        let frame = format!(r#"[{{"event":"a","data":{deep}}},{deep},{{"rid":1}}]"#);
        assert_eq!(
            decode(&frame),
            Frame::Batch(vec![
                transmit("a", Some(&deep)),
                Packet::Raw(&deep),
                response(1, None, None),
            ])
        );
        handle(&decode(&frame));
        // A batch nested in a batch is no packet.
        let frame = format!("[{}]", nested_arrays(DEPTH));
        assert!(matches!(decode(&frame), Frame::Batch(ps) if matches!(ps[..], [Packet::Raw(_)])));
    });
}

#[test]
fn huge_numbers() {
    for n in [
        "1e400",
        "-1e400",
        "18446744073709551616",
        "-1",
        "7.5",
        "1E2",
        "-0",
        "0.0",
        "123456789012345678901234567890",
    ] {
        for frame in [
            format!(r#"{{"event":"e","cid":{n}}}"#),
            format!(r#"{{"rid":{n},"data":1}}"#),
            format!(r#"{{"rid":{n},"error":{{"message":"m","name":"E"}}}}"#),
        ] {
            assert_eq!(
                decode(&frame),
                Frame::Packet(Packet::Raw(&frame)),
                "{frame}"
            );
        }
        // As data they are forwarded as written.
        let frame = format!(r#"{{"event":"e","data":{n},"cid":1}}"#);
        assert_eq!(single(decode(&frame)), invoke("e", Some(n), 1));
        let frame = format!(r#"{{"event":"e","data":{{"big":[{n}]}}}}"#);
        assert_eq!(
            single(decode(&frame)),
            transmit("e", Some(&format!(r#"{{"big":[{n}]}}"#)))
        );
    }
    // The largest cid there is.
    assert_eq!(
        single(decode(r#"{"event":"e","cid":18446744073709551615}"#)),
        invoke("e", None, u64::MAX)
    );
    // A number a million digits long.
    let long = "9".repeat(1_000_000);
    let frame = format!(r#"{{"event":"e","data":{long},"cid":{long}}}"#);
    assert_eq!(decode(&frame), Frame::Packet(Packet::Raw(&frame)));
    let frame = format!(r#"{{"event":"e","data":{long}}}"#);
    assert_eq!(single(decode(&frame)), transmit("e", Some(&long)));
    // Hydrating an error with huge numbers.
    let e = ScError::from_json(r#"{"message":"m","name":"E","code":1e400}"#);
    assert_eq!(e.message, r#"{"message":"m","name":"E","code":1e400}"#);
}

#[test]
fn invalid_utf8_in_binary_frames() {
    let cases: &[&[u8]] = &[
        b"\xff",
        b"\xfe\xff",
        b"\xc0\x80",
        b"\xed\xa0\x80",
        b"\xf4\x90\x80\x80",
        b"{\"event\":\"\xff\"}",
        b"{\"event\":\"e\",\"data\":\"\x80\"}",
        b"[{\"event\":\"a\"},\"\xe2\x82\"]",
        b"#1\xff",
        b"\xe2\x82",
    ];
    for bytes in cases {
        assert_eq!(
            decode_binary(bytes),
            Frame::Packet(Packet::Raw("")),
            "{bytes:?}"
        );
    }
    // Valid UTF-8 decodes as text.
    assert_eq!(
        single(decode_binary("{\"event\":\"é😀\"}".as_bytes())),
        transmit("é😀", None)
    );
}

#[test]
fn duplicate_keys() {
    for frame in [
        r#"{"event":"a","event":"b"}"#,
        r#"{"event":"a","event":"a"}"#,
        r#"{"event":"a","data":1,"data":2}"#,
        r#"{"event":"a","cid":1,"cid":2}"#,
        r#"{"rid":1,"rid":2}"#,
        r#"{"rid":1,"error":"x","error":"y"}"#,
        r#"{"rid":1,"data":null,"data":null}"#,
    ] {
        assert_eq!(decode(frame), Frame::Packet(Packet::Raw(frame)), "{frame}");
    }
    // In a batch, only the element with duplicate keys is raw.
    assert_eq!(
        decode(r#"[{"event":"a","event":"b"},{"event":"c"}]"#),
        Frame::Batch(vec![
            Packet::Raw(r#"{"event":"a","event":"b"}"#),
            transmit("c", None)
        ])
    );
    // Duplicates of fields the protocol does not use do not matter.
    assert_eq!(
        single(decode(r#"{"x":1,"x":2,"event":"a"}"#)),
        transmit("a", None)
    );
    // Inside a payload they are forwarded as they are.
    assert_eq!(
        single(decode(r#"{"event":"a","data":{"k":1,"k":2}}"#)),
        transmit("a", Some(r#"{"k":1,"k":2}"#))
    );
    // In a reserved payload's fields, the action is invalid.
    let frame = r##"{"event":"#subscribe","data":{"channel":"a","channel":"b"},"cid":1}"##;
    let Packet::Invoke { event, data, .. } = single(decode(frame)) else {
        panic!()
    };
    assert!(matches!(Reserved::parse(&event, data), Some(Err(_))));
}

#[test]
fn strings_rust_cannot_hold() {
    // A lone surrogate escape is valid JSON text but no Rust string: the packet is raw.
    for frame in [
        r#"{"event":"\ud800"}"#,
        r#"{"event":"\udc00x","cid":1}"#,
        r#"{"event":"\ud800","rid":1}"#,
    ] {
        assert_eq!(decode(frame), Frame::Packet(Packet::Raw(frame)), "{frame}");
    }
    // In a payload it is forwarded as written.
    assert_eq!(
        single(decode(r#"{"event":"a","data":"\ud800"}"#)),
        transmit("a", Some(r#""\ud800""#))
    );
    // A surrogate pair is fine.
    assert_eq!(
        single(decode(r#"{"event":"\ud83d\ude00"}"#)),
        transmit("😀", None)
    );
    // As a channel, the action is invalid.
    let frame = r##"{"event":"#unsubscribe","data":"\ud800"}"##;
    let Packet::Transmit { event, data } = single(decode(frame)) else {
        panic!()
    };
    assert!(matches!(Reserved::parse(&event, data), Some(Err(_))));
    // Raw control characters and bad escapes are no JSON.
    for frame in [
        "{\"event\":\"a\u{1}\"}",
        r#"{"event":"\x41"}"#,
        r#"{"event":"\u12"}"#,
    ] {
        assert_eq!(decode(frame), Frame::Packet(Packet::Raw(frame)), "{frame}");
    }
}

#[test]
fn large_frames() {
    // A 16 MiB payload and a 100,000-packet batch.
    let big = format!("\"{}\"", "x".repeat(16 << 20));
    let frame = format!(r#"{{"event":"e","data":{big},"cid":2}}"#);
    assert_eq!(single(decode(&frame)), invoke("e", Some(&big), 2));
    let batch = format!("[{}]", vec![r#"{"event":"e"}"#; 100_000].join(","));
    let Frame::Batch(packets) = decode(&batch) else {
        panic!()
    };
    assert_eq!(packets.len(), 100_000);
    assert!(packets.iter().all(|p| *p == transmit("e", None)));
}

#[test]
fn nul_and_odd_whitespace() {
    for frame in [
        "\0",
        "\0{\"event\":\"a\"}",
        "{\"event\":\"a\"}\0",
        "{\"event\":\"a\"}\u{a0}",
    ] {
        assert_eq!(
            decode(frame),
            Frame::Packet(Packet::Raw(frame)),
            "{frame:?}"
        );
    }
}
