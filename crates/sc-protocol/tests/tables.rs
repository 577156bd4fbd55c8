//! One test per table of the wire protocol (PROTOCOL.md section 1): the codec rules (1.2), packet
//! shapes and classification (1.3), reserved events (1.6), error objects (1.8) and close codes
//! (1.9). Each row is spelled out, so a wrong row fails a test.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use std::borrow::Cow;

use common::{invoke, raw, response, single, text, transmit};
use sc_protocol::encode::{
    self, PublishFrame, write_batch, write_error, write_error_response, write_invoke,
    write_publish, write_response, write_transmit,
};
use sc_protocol::{
    CloseCode, ErrorName, Frame, InvalidAction, Packet, Reserved, ScError, decode, decode_binary,
    events,
};

// ---------------------------------------------------------------------------------------------
// 1.2 Codec

#[test]
fn codec_v1_heartbeats_pass_through() {
    assert_eq!(decode("#1"), Frame::PingV1);
    assert_eq!(decode("#2"), Frame::PongV1);
    assert_eq!(decode(encode::PING_V1), Frame::PingV1);
    assert_eq!(decode(encode::PONG_V1), Frame::PongV1);
    assert_eq!((encode::PING_V1, encode::PONG_V1), ("#1", "#2"));
    // Only the exact texts are heartbeats.
    for other in ["#3", "#1 ", " #1", "#12", "#", "\"#1\""] {
        assert_eq!(
            decode(other),
            Frame::Packet(Packet::Raw(other)),
            "{other:?}"
        );
    }
}

#[test]
fn codec_text_not_starting_with_brace_or_bracket_is_raw() {
    for text in [
        "hello",
        "42",
        "-1",
        "true",
        "null",
        "\"a string\"",
        " ",
        "\n",
        "x{\"event\":\"a\"}",
        // Only space, \n, \r and \t may come first; a no-break space or a BOM may not.
        "\u{a0}{\"event\":\"a\"}",
        "\u{feff}{\"event\":\"a\"}",
        "\u{2028}[]",
        "\x0b{\"event\":\"a\"}",
    ] {
        assert_eq!(decode(text), Frame::Packet(Packet::Raw(text)), "{text:?}");
    }
}

#[test]
fn codec_json_whitespace_before_and_after_is_allowed() {
    assert_eq!(
        single(decode(" \n\r\t{\"event\":\"a\",\"data\":1} \n")),
        transmit("a", Some("1"))
    );
    assert_eq!(
        decode(" [ {\"event\":\"a\"} ] "),
        Frame::Batch(vec![transmit("a", None)])
    );
}

#[test]
fn codec_text_that_fails_to_parse_is_raw() {
    for text in [
        "{",
        "[",
        "{bad json}",
        "{\"event\":\"a\"",
        "{\"event\":\"a\"} trailing",
        "{\"event\":\"a\"}{\"event\":\"b\"}",
        "[1,",
        "[1]]",
        "{'event':'a'}",
        "{\"event\":\"a\",}",
        "{\"event\":\"tab\there\"}",
        "{\"event\":\"a\",\"data\":NaN}",
        "{\"event\":\"a\",\"data\":undefined}",
        "{\"event\":\"a\",\"data\":01}",
    ] {
        assert_eq!(decode(text), Frame::Packet(Packet::Raw(text)), "{text:?}");
    }
}

#[test]
fn codec_base64_objects_stay_opaque() {
    // sc-formatter does not turn `{base64:true}` back into bytes: the application sees the object.
    let frame = r#"{"event":"file","data":{"base64":true,"data":"AAEC/w=="},"cid":4}"#;
    assert_eq!(
        single(decode(frame)),
        invoke("file", Some(r#"{"base64":true,"data":"AAEC/w=="}"#), 4)
    );
    let nested = r#"{"event":"file","data":{"parts":[{"base64":true,"data":"AA=="}]}}"#;
    assert_eq!(
        single(decode(nested)),
        transmit("file", Some(r#"{"parts":[{"base64":true,"data":"AA=="}]}"#))
    );
    // On its own such an object is no packet.
    let bare = r#"{"base64":true,"data":"AA=="}"#;
    assert_eq!(decode(bare), Frame::Packet(Packet::Raw(bare)));
    // And it is forwarded byte for byte.
    let mut buf = Vec::new();
    write_transmit(
        &mut buf,
        "file",
        Some(raw(r#"{"base64":true,"data":"AAEC/w=="}"#)),
    );
    assert_eq!(
        text(&buf),
        r#"{"event":"file","data":{"base64":true,"data":"AAEC/w=="}}"#
    );
}

#[test]
fn codec_binary_frames_decode_as_their_text() {
    let frame = br#"{"event":"a","data":1,"cid":2}"#;
    assert_eq!(single(decode_binary(frame)), invoke("a", Some("1"), 2));
    assert_eq!(decode_binary(b""), Frame::Heartbeat);
    assert_eq!(decode_binary(b"#1"), Frame::PingV1);
    assert_eq!(decode_binary(b"\xff"), Frame::Packet(Packet::Raw("")));
}

// ---------------------------------------------------------------------------------------------
// 1.3 Packet shapes

#[test]
fn shape_transmit() {
    let cases: &[(&str, Option<&str>)] = &[
        (
            r#"{"event":"name","data":{"a":[1,2]}}"#,
            Some(r#"{"a":[1,2]}"#),
        ),
        (r#"{"event":"name","data":"s"}"#, Some(r#""s""#)),
        (r#"{"event":"name","data":12.5e3}"#, Some("12.5e3")),
        (r#"{"event":"name","data":false}"#, Some("false")),
        (r#"{"event":"name","data":[]}"#, Some("[]")),
        // `data:null` is kept, an absent `data` is `None`.
        (r#"{"event":"name","data":null}"#, Some("null")),
        (r#"{"event":"name"}"#, None),
        // Whitespace inside the payload is kept as sent.
        (
            r#"{"event":"name","data": { "a" : 1 } }"#,
            Some(r#"{ "a" : 1 }"#),
        ),
        // Field order does not matter; unknown fields are ignored.
        (r#"{"data":3,"x":[{}],"event":"name"}"#, Some("3")),
    ];
    for (frame, data) in cases {
        assert_eq!(single(decode(frame)), transmit("name", *data), "{frame}");
    }
}

#[test]
fn shape_transmit_when_cid_is_no_number() {
    // RPC only when `typeof cid === 'number'`.
    for cid in [r#""7""#, "null", "true", "[7]", "{}"] {
        let frame = format!(r#"{{"event":"e","data":1,"cid":{cid}}}"#);
        assert_eq!(single(decode(&frame)), transmit("e", Some("1")), "{frame}");
    }
}

#[test]
fn shape_invoke() {
    let cases: &[(&str, Option<&str>, u64)] = &[
        (
            r#"{"event":"echo","data":{"a":1},"cid":7}"#,
            Some(r#"{"a":1}"#),
            7,
        ),
        (r#"{"event":"echo","cid":1}"#, None, 1),
        (r#"{"event":"echo","data":null,"cid":2}"#, Some("null"), 2),
        (r#"{"cid":3,"event":"echo","data":[]}"#, Some("[]"), 3),
        (r#"{"event":"echo","cid":0}"#, None, 0),
        (
            r#"{"event":"echo","cid":18446744073709551615}"#,
            None,
            u64::MAX,
        ),
        // An RPC may carry a `rid` too: `event` decides.
        (r#"{"event":"echo","cid":5,"rid":9}"#, None, 5),
    ];
    for (frame, data, cid) in cases {
        assert_eq!(
            single(decode(frame)),
            invoke("echo", *data, *cid),
            "{frame}"
        );
    }
}

#[test]
fn shape_cid_numbers_that_are_no_u64_are_raw() {
    for cid in [
        "-1",
        "7.5",
        "7.0",
        "1e2",
        "-0",
        "1e400",
        "18446744073709551616",
        "99999999999999999999999999999",
    ] {
        let frame = format!(r#"{{"event":"e","cid":{cid}}}"#);
        assert_eq!(
            decode(&frame),
            Frame::Packet(Packet::Raw(&frame)),
            "{frame}"
        );
        let frame = format!(r#"{{"rid":{cid},"data":1}}"#);
        assert_eq!(
            decode(&frame),
            Frame::Packet(Packet::Raw(&frame)),
            "{frame}"
        );
    }
}

#[test]
fn shape_success_response() {
    let cases: &[(&str, u64, Option<&str>)] = &[
        (r#"{"rid":7,"data":{"ok":true}}"#, 7, Some(r#"{"ok":true}"#)),
        // `data` is left out when undefined, and kept when null.
        (r#"{"rid":7}"#, 7, None),
        (r#"{"rid":7,"data":null}"#, 7, Some("null")),
        (r#"{"data":"x","rid":1}"#, 1, Some(r#""x""#)),
        // `error:null` is no error.
        (r#"{"rid":2,"data":3,"error":null}"#, 2, Some("3")),
    ];
    for (frame, rid, data) in cases {
        assert_eq!(
            single(decode(frame)),
            response(*rid, *data, None),
            "{frame}"
        );
    }
}

#[test]
fn shape_error_response() {
    let frame = r#"{"rid":7,"error":{"message":"m","name":"TimeoutError"}}"#;
    assert_eq!(
        single(decode(frame)),
        response(7, None, Some(r#"{"message":"m","name":"TimeoutError"}"#))
    );
    // A string error stays a string.
    assert_eq!(
        single(decode(r#"{"rid":8,"error":"plain"}"#)),
        response(8, None, Some(r#""plain""#))
    );
}

#[test]
fn shape_classification() {
    // `event` not a string: a number `rid` makes a response, anything else is raw.
    assert_eq!(
        single(decode(r#"{"event":5,"rid":3,"data":1}"#)),
        response(3, Some("1"), None)
    );
    assert_eq!(
        single(decode(r#"{"event":null,"rid":3}"#)),
        response(3, None, None)
    );
    for frame in [
        "{}",
        r#"{"event":5}"#,
        r#"{"event":null,"cid":1}"#,
        r#"{"event":["a"],"data":1}"#,
        r#"{"data":1}"#,
        r#"{"cid":1,"data":1}"#,
        r#"{"rid":"7","data":1}"#,
        r#"{"rid":null}"#,
        r#"{"error":{}}"#,
    ] {
        assert_eq!(decode(frame), Frame::Packet(Packet::Raw(frame)), "{frame}");
    }
    // An empty event name is still a string.
    assert_eq!(single(decode(r#"{"event":""}"#)), transmit("", None));
}

#[test]
fn shape_event_names_with_escapes() {
    let Packet::Transmit { event, .. } = single(decode(r#"{"event":"a\"b\\c\u00e9\n"}"#)) else {
        panic!()
    };
    assert_eq!(event, "a\"b\\c\u{e9}\n");
    assert!(matches!(event, Cow::Owned(_)));
    let Packet::Transmit { event, .. } = single(decode(r#"{"event":"plain é"}"#)) else {
        panic!()
    };
    assert!(matches!(event, Cow::Borrowed("plain é")));
}

#[test]
fn shape_batch_in_order() {
    let frame = r#"[{"event":"a","data":1},{"event":"b","cid":2},{"rid":3,"data":4},{"rid":5,"error":"e"},"text",42,null,[1],{}]"#;
    assert_eq!(
        decode(frame),
        Frame::Batch(vec![
            transmit("a", Some("1")),
            invoke("b", None, 2),
            response(3, Some("4"), None),
            response(5, None, Some(r#""e""#)),
            Packet::Raw(r#""text""#),
            Packet::Raw("42"),
            Packet::Raw("null"),
            Packet::Raw("[1]"),
            Packet::Raw("{}"),
        ])
    );
    assert_eq!(decode("[]"), Frame::Batch(vec![]));
    // Heartbeats are never batched: inside a batch they are raw strings.
    assert_eq!(
        decode(r##"["","#1"]"##),
        Frame::Batch(vec![Packet::Raw(r#""""#), Packet::Raw(r##""#1""##)])
    );
    let packets = decode(r#"[{"event":"x"},{"event":"y"}]"#).into_packets();
    let names: Vec<_> = packets.iter().filter_map(Packet::event).collect();
    assert_eq!(names, ["x", "y"]);
}

#[test]
fn shape_heartbeats() {
    assert_eq!(decode(""), Frame::Heartbeat);
    assert_eq!(decode(encode::HEARTBEAT), Frame::Heartbeat);
    assert_eq!(encode::HEARTBEAT, "");
    assert_eq!(decode("#1"), Frame::PingV1);
    assert_eq!(decode("#2"), Frame::PongV1);
    for frame in ["", "#1", "#2"] {
        assert!(decode(frame).into_packets().is_empty());
    }
    assert_eq!(
        decode(r#"{"event":"a"}"#).into_packets(),
        vec![transmit("a", None)]
    );
}

#[test]
fn encode_shapes() {
    let mut buf = Vec::new();
    let mut check = |f: &dyn Fn(&mut Vec<u8>), want: &str| {
        buf.clear();
        f(&mut buf);
        assert_eq!(text(&buf), want);
    };
    check(
        &|b| write_transmit(b, "name", Some(raw("[1]"))),
        r#"{"event":"name","data":[1]}"#,
    );
    // Properties that are undefined are left out; null is kept.
    check(&|b| write_transmit(b, "name", None), r#"{"event":"name"}"#);
    check(
        &|b| write_transmit(b, "name", Some(raw("null"))),
        r#"{"event":"name","data":null}"#,
    );
    check(
        &|b| write_invoke(b, "echo", Some(raw(r#"{"a":1}"#)), 7),
        r#"{"event":"echo","data":{"a":1},"cid":7}"#,
    );
    check(
        &|b| write_invoke(b, "echo", None, u64::MAX),
        r#"{"event":"echo","cid":18446744073709551615}"#,
    );
    check(
        &|b| write_response(b, 7, Some(raw("\"ok\""))),
        r#"{"rid":7,"data":"ok"}"#,
    );
    check(&|b| write_response(b, 7, None), r#"{"rid":7}"#);
    check(
        &|b| write_response(b, 0, Some(raw("null"))),
        r#"{"rid":0,"data":null}"#,
    );
    check(
        &|b| write_error_response(b, 7, raw(r#"{"message":"m","name":"E"}"#)),
        r#"{"rid":7,"error":{"message":"m","name":"E"}}"#,
    );
    check(
        &|b| write_error(b, 9, &ScError::new(ErrorName::BrokerError, "down")),
        r#"{"rid":9,"error":{"message":"down","name":"BrokerError"}}"#,
    );
    check(
        &|b| write_transmit(b, "q\"\\\n\u{1}é", None),
        r#"{"event":"q\"\\\n\u0001é"}"#,
    );
    check(
        &|b| write_batch(b, [&br#"{"event":"a"}"#[..], br#"{"rid":1}"#]),
        r#"[{"event":"a"},{"rid":1}]"#,
    );
    check(&|b| write_batch(b, std::iter::empty()), "[]");
}

#[test]
fn encode_appends_to_the_buffer() {
    let mut buf = b"prefix".to_vec();
    write_transmit(&mut buf, "a", None);
    write_response(&mut buf, 1, None);
    assert_eq!(text(&buf), r#"prefix{"event":"a"}{"rid":1}"#);
}

#[test]
fn encode_decode_batch() {
    let mut a = Vec::new();
    write_transmit(&mut a, "a", Some(raw("1")));
    let mut b = Vec::new();
    write_invoke(&mut b, "b", None, 2);
    let mut c = Vec::new();
    write_error_response(&mut c, 3, raw(r#"{"message":"x","name":"y"}"#));
    let mut frame = Vec::new();
    write_batch(&mut frame, [a.as_slice(), b.as_slice(), c.as_slice()]);
    assert_eq!(
        decode(text(&frame)),
        Frame::Batch(vec![
            transmit("a", Some("1")),
            invoke("b", None, 2),
            response(3, None, Some(r#"{"message":"x","name":"y"}"#)),
        ])
    );
}

// ---------------------------------------------------------------------------------------------
// 1.6 Reserved events

/// Decodes `frame` (one packet with an event) and parses its reserved event.
fn reserved(frame: &str) -> Option<Result<Reserved<'_>, InvalidAction>> {
    match single(decode(frame)) {
        Packet::Transmit { event, data } | Packet::Invoke { event, data, .. } => {
            Reserved::parse(&event, data)
        }
        other => panic!("{frame} is no event: {other:?}"),
    }
}

fn ok(frame: &str) -> Reserved<'_> {
    match reserved(frame) {
        Some(Ok(r)) => r,
        other => panic!("{frame}: {other:?}"),
    }
}

fn invalid(frame: &str) -> InvalidAction {
    match reserved(frame) {
        Some(Err(e)) => e,
        other => panic!("{frame}: expected InvalidAction, got {other:?}"),
    }
}

#[test]
fn reserved_event_names() {
    assert_eq!(events::HANDSHAKE, "#handshake");
    assert_eq!(events::SUBSCRIBE, "#subscribe");
    assert_eq!(events::UNSUBSCRIBE, "#unsubscribe");
    assert_eq!(events::PUBLISH, "#publish");
    assert_eq!(events::AUTHENTICATE, "#authenticate");
    assert_eq!(events::SET_AUTH_TOKEN, "#setAuthToken");
    assert_eq!(events::REMOVE_AUTH_TOKEN, "#removeAuthToken");
    assert_eq!(events::KICK_OUT, "#kickOut");
    // Other `#` names are ordinary events in v2; `#disconnect` is v1 only.
    for name in [
        "#disconnect",
        "#foo",
        "#",
        "echo",
        "",
        "#Publish",
        "#publish ",
        "#handShake",
    ] {
        assert!(Reserved::parse(name, Some(raw("{}"))).is_none(), "{name}");
    }
}

#[test]
fn reserved_handshake() {
    assert_eq!(
        ok(r##"{"event":"#handshake","data":{"authToken":"a.b.c"},"cid":1}"##),
        Reserved::Handshake {
            auth_token: Some("a.b.c".into())
        }
    );
    for frame in [
        r##"{"event":"#handshake","data":{"authToken":null},"cid":1}"##,
        r##"{"event":"#handshake","data":{},"cid":1}"##,
        r##"{"event":"#handshake","cid":1}"##,
        r##"{"event":"#handshake","data":null,"cid":1}"##,
        r##"{"event":"#handshake","data":{"authToken":5},"cid":1}"##,
    ] {
        assert_eq!(
            ok(frame),
            Reserved::Handshake { auth_token: None },
            "{frame}"
        );
    }
}

#[test]
fn reserved_subscribe() {
    assert_eq!(
        ok(r##"{"event":"#subscribe","data":{"channel":"c"},"cid":2}"##),
        Reserved::Subscribe {
            channel: "c".into(),
            wait_for_auth: false,
            data: None
        }
    );
    assert_eq!(
        ok(
            r##"{"event":"#subscribe","data":{"channel":"c","waitForAuth":true,"data":{"k":[1]}},"cid":2}"##
        ),
        Reserved::Subscribe {
            channel: "c".into(),
            wait_for_auth: true,
            data: Some(raw(r#"{"k":[1]}"#)),
        }
    );
    assert_eq!(
        ok(
            r##"{"event":"#subscribe","data":{"channel":"c","waitForAuth":false,"data":null},"cid":2}"##
        ),
        Reserved::Subscribe {
            channel: "c".into(),
            wait_for_auth: false,
            data: Some(raw("null"))
        }
    );
    // Unknown fields such as `priority` are ignored.
    assert_eq!(
        ok(r##"{"event":"#subscribe","data":{"priority":5,"channel":"c\u00e9"},"cid":3}"##),
        Reserved::Subscribe {
            channel: "c\u{e9}".into(),
            wait_for_auth: false,
            data: None
        }
    );
}

#[test]
fn reserved_subscribe_without_a_string_channel_is_invalid() {
    let want = InvalidAction {
        event: "#subscribe",
        reason: "Subscribe channel name was malformatted",
    };
    for data in [
        "",
        r#","data":null"#,
        r#","data":"c""#,
        r#","data":["c"]"#,
        r#","data":{}"#,
        r#","data":{"channel":null}"#,
        r#","data":{"channel":5}"#,
        r#","data":{"channel":["c"]}"#,
        r#","data":{"channel":"a","channel":"b"}"#,
    ] {
        for cid in ["", r#","cid":1"#] {
            let frame = format!(r##"{{"event":"#subscribe"{data}{cid}}}"##);
            assert_eq!(invalid(&frame), want, "{frame}");
        }
    }
    assert_eq!(
        want.to_error("sid").to_json(),
        r#"{"message":"Subscribe channel name was malformatted","name":"InvalidActionError"}"#
    );
}

#[test]
fn reserved_unsubscribe() {
    assert_eq!(
        ok(r##"{"event":"#unsubscribe","data":"news"}"##),
        Reserved::Unsubscribe {
            channel: "news".into()
        }
    );
    // The server also accepts it as an RPC.
    assert_eq!(
        ok(r##"{"event":"#unsubscribe","data":"a\"b","cid":4}"##),
        Reserved::Unsubscribe {
            channel: "a\"b".into()
        }
    );
    let want = InvalidAction {
        event: "#unsubscribe",
        reason: "Unsubscribe channel name was malformatted",
    };
    for data in [
        "",
        r#","data":null"#,
        r#","data":{"channel":"c"}"#,
        r#","data":5"#,
        r#","data":["c"]"#,
    ] {
        let frame = format!(r##"{{"event":"#unsubscribe"{data}}}"##);
        assert_eq!(invalid(&frame), want, "{frame}");
    }
    assert_eq!(
        want.to_error("sid").to_json(),
        r#"{"message":"Unsubscribe channel name was malformatted","name":"InvalidActionError"}"#
    );
}

#[test]
fn reserved_publish_client_to_server() {
    // transmitPublish and invokePublish.
    for cid in ["", r#","cid":5"#] {
        let frame =
            format!(r##"{{"event":"#publish","data":{{"channel":"c","data":{{"x":1}}}}{cid}}}"##);
        assert_eq!(
            ok(&frame),
            Reserved::Publish {
                channel: "c".into(),
                data: Some(raw(r#"{"x":1}"#))
            }
        );
    }
    assert_eq!(
        ok(r##"{"event":"#publish","data":{"channel":"c","data":null}}"##),
        Reserved::Publish {
            channel: "c".into(),
            data: Some(raw("null"))
        }
    );
    assert_eq!(
        ok(r##"{"event":"#publish","data":{"channel":"c"}}"##),
        Reserved::Publish {
            channel: "c".into(),
            data: None
        }
    );
    let want = InvalidAction {
        event: "#publish",
        reason: "Publish channel name was malformatted",
    };
    for data in [
        "",
        r#","data":null"#,
        r#","data":"c""#,
        r#","data":{"data":1}"#,
        r#","data":{"channel":1,"data":1}"#,
        r#","data":{"channel":null}"#,
        r#","data":[]"#,
    ] {
        for cid in ["", r#","cid":1"#] {
            let frame = format!(r##"{{"event":"#publish"{data}{cid}}}"##);
            assert_eq!(invalid(&frame), want, "{frame}");
        }
    }
    assert_eq!(
        want.to_error("sid").to_json(),
        r#"{"message":"Publish channel name was malformatted","name":"InvalidActionError"}"#
    );
}

#[test]
fn reserved_publish_server_to_client() {
    let frame = PublishFrame::new("c", Some(raw(r#"{"x":[1,"y"]}"#)));
    assert_eq!(
        frame.as_str(),
        r##"{"event":"#publish","data":{"channel":"c","data":{"x":[1,"y"]}}}"##
    );
    assert_eq!(
        ok(frame.as_str()),
        Reserved::Publish {
            channel: "c".into(),
            data: Some(raw(r#"{"x":[1,"y"]}"#))
        }
    );
    // data:null is forwarded as null, absent data stays absent.
    assert_eq!(
        PublishFrame::new("c", Some(raw("null"))).as_str(),
        r##"{"event":"#publish","data":{"channel":"c","data":null}}"##
    );
    assert_eq!(
        PublishFrame::new("c", None).as_str(),
        r##"{"event":"#publish","data":{"channel":"c"}}"##
    );
    let mut buf = Vec::new();
    write_publish(&mut buf, "é\"\n", Some(raw("1")));
    assert_eq!(
        text(&buf),
        r##"{"event":"#publish","data":{"channel":"é\"\n","data":1}}"##
    );
    assert_eq!(
        PublishFrame::new("é\"\n", Some(raw("1"))).bytes().as_ref(),
        buf.as_slice()
    );
    // It is a transmit: no cid.
    assert!(matches!(
        single(decode(frame.as_str())),
        Packet::Transmit { .. }
    ));
}

#[test]
fn reserved_kick_out() {
    assert_eq!(
        ok(r##"{"event":"#kickOut","data":{"channel":"c","message":"bye"}}"##),
        Reserved::KickOut {
            channel: "c".into(),
            message: Some(raw(r#""bye""#))
        }
    );
    assert_eq!(
        ok(r##"{"event":"#kickOut","data":{"channel":"c"}}"##),
        Reserved::KickOut {
            channel: "c".into(),
            message: None
        }
    );
    assert_eq!(
        invalid(r##"{"event":"#kickOut","data":{"message":"m"}}"##).event,
        "#kickOut"
    );
}

#[test]
fn reserved_authenticate() {
    assert_eq!(
        ok(r##"{"event":"#authenticate","data":"a.b.c","cid":3}"##),
        Reserved::Authenticate {
            token: Some("a.b.c".into())
        }
    );
    for data in [
        "",
        r#","data":null"#,
        r#","data":5"#,
        r#","data":{"token":"t"}"#,
    ] {
        let frame = format!(r##"{{"event":"#authenticate"{data},"cid":3}}"##);
        assert_eq!(
            ok(&frame),
            Reserved::Authenticate { token: None },
            "{frame}"
        );
    }
}

#[test]
fn reserved_set_auth_token() {
    assert_eq!(
        ok(r##"{"event":"#setAuthToken","data":{"token":"a.b.c"}}"##),
        Reserved::SetAuthToken {
            token: "a.b.c".into()
        }
    );
    // It is an RPC when the server used rejectOnFailedDelivery.
    assert_eq!(
        ok(r##"{"event":"#setAuthToken","data":{"token":"t"},"cid":1}"##),
        Reserved::SetAuthToken { token: "t".into() }
    );
    let err = invalid(r##"{"event":"#setAuthToken","cid":1}"##);
    assert_eq!(err.event, "#setAuthToken");
    assert_eq!(
        err.to_error("sid").to_json(),
        r#"{"message":"No token data provided by #setAuthToken event","name":"InvalidMessageError"}"#
    );
    assert_eq!(
        invalid(r##"{"event":"#setAuthToken","data":{"token":5}}"##).event,
        "#setAuthToken"
    );
}

#[test]
fn reserved_remove_auth_token() {
    assert_eq!(
        ok(r##"{"event":"#removeAuthToken"}"##),
        Reserved::RemoveAuthToken
    );
    assert_eq!(
        ok(r##"{"event":"#removeAuthToken","cid":1}"##),
        Reserved::RemoveAuthToken
    );
    assert_eq!(
        ok(r##"{"event":"#removeAuthToken","data":"x"}"##),
        Reserved::RemoveAuthToken
    );
}

#[test]
fn invalid_actions_decided_outside_parse() {
    // Checked by the server against the packet kind or its config, not the payload.
    let cases = [
        (
            InvalidAction::HANDSHAKE_WITHOUT_CID,
            "#handshake",
            "Handshake request was malformatted",
        ),
        (
            InvalidAction::AUTHENTICATE_WITHOUT_CID,
            "#authenticate",
            "Authenticate request was malformatted",
        ),
        (
            InvalidAction::PUBLISH_DISABLED,
            "#publish",
            "Client publish feature is disabled",
        ),
    ];
    for (action, event, message) in cases {
        assert_eq!(
            (action.event, action.message("sid")),
            (event, message.to_owned())
        );
        assert_eq!(
            action.to_error("sid").to_json(),
            format!(r#"{{"message":"{message}","name":"InvalidActionError"}}"#)
        );
    }
}

#[test]
fn invalid_action_display_and_message() {
    let e = InvalidAction {
        event: "#publish",
        reason: "Publish channel name was malformatted",
    };
    assert_eq!(e.message("abc"), "Publish channel name was malformatted");
    assert_eq!(
        e.to_string(),
        "invalid #publish: Publish channel name was malformatted"
    );
    assert_eq!(e.to_error("abc").name, "InvalidActionError");
}

// ---------------------------------------------------------------------------------------------
// 1.8 Error objects

#[test]
fn error_names() {
    let names = [
        "AuthTokenExpiredError",
        "AuthTokenInvalidError",
        "AuthTokenNotBeforeError",
        "AuthTokenError",
        "AuthError",
        "SilentMiddlewareBlockedError",
        "InvalidActionError",
        "InvalidArgumentsError",
        "InvalidOptionsError",
        "InvalidMessageError",
        "SocketProtocolError",
        "ServerProtocolError",
        "HTTPServerError",
        "ResourceLimitError",
        "TimeoutError",
        "BadConnectionError",
        "BrokerError",
        "ProcessExitError",
        "UnknownError",
    ];
    let all: Vec<&str> = ErrorName::ALL.iter().map(|n| n.as_str()).collect();
    assert_eq!(all, names);
    for name in ErrorName::ALL {
        assert_eq!(ErrorName::from_name(name.as_str()), Some(name));
        assert_eq!(name.to_string(), name.as_str());
        let e = ScError::new(name, "m");
        assert_eq!(e.to_json(), format!(r#"{{"message":"m","name":"{name}"}}"#));
    }
    for other in ["Error", "BadRequest", "timeoutError", ""] {
        assert_eq!(ErrorName::from_name(other), None);
    }
}

#[test]
fn error_bad_token_names() {
    // TokenExpiredError→AuthTokenExpiredError (bad), JsonWebTokenError→AuthTokenInvalidError (bad),
    // NotBeforeError→AuthTokenNotBeforeError (not bad), anything else→AuthTokenError (bad).
    let bad: Vec<ErrorName> = ErrorName::ALL
        .into_iter()
        .filter(|n| n.is_bad_token())
        .collect();
    assert_eq!(
        bad,
        [
            ErrorName::AuthTokenExpiredError,
            ErrorName::AuthTokenInvalidError,
            ErrorName::AuthTokenError
        ]
    );
}

#[test]
fn error_dehydrated_shape() {
    // `{"message":..,"name":..,...extras}`, with the extra fields each name carries.
    let cases = [
        (
            ScError::new(ErrorName::AuthTokenExpiredError, "jwt expired")
                .with("expiry", "2020-01-01T00:00:00.000Z"),
            r#"{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2020-01-01T00:00:00.000Z"}"#,
        ),
        (
            ScError::new(ErrorName::AuthTokenNotBeforeError, "jwt not active").with("date", "d"),
            r#"{"message":"jwt not active","name":"AuthTokenNotBeforeError","date":"d"}"#,
        ),
        (
            ScError::new(ErrorName::SocketProtocolError, "Socket hung up").with("code", 1006),
            r#"{"message":"Socket hung up","name":"SocketProtocolError","code":1006}"#,
        ),
        (
            ScError::new(ErrorName::ProcessExitError, "exit").with("code", 1),
            r#"{"message":"exit","name":"ProcessExitError","code":1}"#,
        ),
        (
            ScError::new(ErrorName::BadConnectionError, "lost").with("type", "disconnect"),
            r#"{"message":"lost","name":"BadConnectionError","type":"disconnect"}"#,
        ),
        (
            ScError::new(ErrorName::AuthTokenInvalidError, "bad").with("isBadToken", true),
            r#"{"message":"bad","name":"AuthTokenInvalidError","isBadToken":true}"#,
        ),
        (
            ScError::new("BadRequest", "q\"\\\n\u{7}")
                .with("detail", serde_json::json!({"a":[1,null]})),
            r#"{"message":"q\"\\\n\u0007","name":"BadRequest","detail":{"a":[1,null]}}"#,
        ),
        // Extras named like the fixed fields do not duplicate them.
        (
            ScError::new("E", "m")
                .with("name", "X")
                .with("message", "Y"),
            r#"{"message":"m","name":"E"}"#,
        ),
    ];
    for (error, want) in cases {
        assert_eq!(error.to_json(), want);
        let mut buf = b"[".to_vec();
        error.write_json(&mut buf);
        assert_eq!(text(&buf[1..]), want);
        // What we write is valid JSON and hydrates back to the same error.
        serde_json::from_str::<serde_json::Value>(want).unwrap();
        let back = ScError::from_json(want);
        assert_eq!((&back.name, &back.message), (&error.name, &error.message));
    }
}

#[test]
fn error_silent_middleware_block() {
    let e = ScError::silent_block("invoke", "inbound");
    assert_eq!(e.name, "SilentMiddlewareBlockedError");
    assert_eq!(
        e.to_json(),
        r#"{"message":"The invoke AGAction was blocked by inbound middleware","name":"SilentMiddlewareBlockedError","type":"inbound"}"#
    );
    assert_eq!(
        ScError::silent_block("handshakeWS", "handshake").message,
        "The handshakeWS AGAction was blocked by handshake middleware"
    );
}

#[test]
fn error_hydrate_from_json() {
    let e = ScError::from_json(r#"{"message":"m","name":"TimeoutError","extra":[1],"code":4}"#);
    assert_eq!(e.name, "TimeoutError");
    assert_eq!(e.message, "m");
    assert_eq!(e.extra.get("extra"), Some(&serde_json::json!([1])));
    assert_eq!(e.extra.get("code"), Some(&serde_json::json!(4)));
    assert!(!e.extra.contains_key("name") && !e.extra.contains_key("message"));
    // Without a string name the name is `Error`; without a string message sc-errors says so.
    let e = ScError::from_json(r#"{"name":5,"message":7}"#);
    assert_eq!(
        (&*e.name, &*e.message),
        ("Error", ScError::INVALID_MESSAGE_FORMAT)
    );
    assert_eq!(
        ScError::INVALID_MESSAGE_FORMAT,
        "Invalid error message format"
    );
    let e = ScError::from_json("{}");
    assert_eq!(
        (&*e.name, &*e.message),
        ("Error", "Invalid error message format")
    );
    // A string error stays a string (the message).
    let e = ScError::from_json(r#""just text""#);
    assert_eq!((&*e.name, &*e.message), ("Error", "just text"));
    // Other JSON, or no JSON at all: the text.
    assert_eq!(ScError::from_json("42").message, "42");
    assert_eq!(ScError::from_json("not json").message, "not json");
    assert_eq!(ScError::from_json(" [1,2] ").message, "[1,2]");
    // An app error round-trips exactly.
    let app = ScError::new("BadRequest", "fail")
        .with("code", 7)
        .with("isBadToken", false);
    assert_eq!(ScError::from_json(&app.to_json()), app);
    assert_eq!(app.to_string(), "BadRequest: fail");
}

// ---------------------------------------------------------------------------------------------
// 1.9 Close codes

#[test]
fn close_code_table() {
    // (code, constant, description, reconnects, immediately, ignored)
    let rows: [(u16, CloseCode, &str, bool, bool, bool); 21] = [
        (
            1000,
            CloseCode::NORMAL,
            "Socket closed normally",
            false,
            false,
            true,
        ),
        (
            1001,
            CloseCode::GOING_AWAY,
            "Socket was disconnected",
            true,
            false,
            true,
        ),
        (
            1002,
            CloseCode::PROTOCOL_ERROR,
            "A WebSocket protocol error was encountered",
            true,
            false,
            false,
        ),
        (
            1003,
            CloseCode::UNSUPPORTED_DATA,
            "Server terminated socket because it received invalid data",
            true,
            false,
            false,
        ),
        (
            1005,
            CloseCode::NO_STATUS,
            "Socket closed without status code",
            true,
            true,
            false,
        ),
        (
            1006,
            CloseCode::ABNORMAL,
            "Socket hung up",
            true,
            false,
            false,
        ),
        (
            1007,
            CloseCode::INVALID_PAYLOAD,
            "Message format was incorrect",
            true,
            false,
            false,
        ),
        (
            1008,
            CloseCode::POLICY_VIOLATION,
            "Encountered a policy violation",
            true,
            false,
            false,
        ),
        (
            1009,
            CloseCode::MESSAGE_TOO_BIG,
            "Message was too big to process",
            true,
            false,
            false,
        ),
        (
            1010,
            CloseCode::MANDATORY_EXTENSION,
            "Client ended the connection because the server did not comply with extension requirements",
            true,
            false,
            false,
        ),
        (
            1011,
            CloseCode::INTERNAL_ERROR,
            "Server encountered an unexpected fatal condition",
            true,
            false,
            false,
        ),
        (
            4000,
            CloseCode::PING_TIMEOUT,
            "Server ping timed out",
            true,
            true,
            false,
        ),
        (
            4001,
            CloseCode::PONG_TIMEOUT,
            "Client pong timed out",
            true,
            true,
            false,
        ),
        (
            4002,
            CloseCode::AUTH_SIGN_FAILED,
            "Server failed to sign auth token",
            true,
            false,
            false,
        ),
        (
            4003,
            CloseCode::HANDSHAKE_FAILED,
            "Failed to complete handshake",
            true,
            false,
            false,
        ),
        (
            4004,
            CloseCode::AUTH_SAVE_FAILED,
            "Client failed to save auth token",
            true,
            false,
            false,
        ),
        (
            4005,
            CloseCode::HANDSHAKE_TIMEOUT,
            "Did not receive #handshake from client before timeout",
            true,
            false,
            false,
        ),
        (
            4006,
            CloseCode::BROKER_BIND_FAILED,
            "Failed to bind socket to message broker",
            true,
            false,
            false,
        ),
        (
            4007,
            CloseCode::CONNECT_TIMEOUT,
            "Client connection establishment timed out",
            true,
            false,
            false,
        ),
        (
            4008,
            CloseCode::HANDSHAKE_REJECTED,
            "Server rejected handshake from client",
            true,
            false,
            false,
        ),
        (
            4009,
            CloseCode::MESSAGE_BEFORE_HANDSHAKE,
            "Server received a message before the client handshake",
            true,
            false,
            false,
        ),
    ];
    for (code, constant, description, reconnects, immediately, ignored) in rows {
        let c = CloseCode(code);
        assert_eq!(c, constant, "{code}");
        assert_eq!(c.description(), Some(description), "{code}");
        assert_eq!(c.reconnects(), reconnects, "{code} reconnects");
        assert_eq!(
            c.reconnects_immediately(),
            immediately,
            "{code} immediately"
        );
        assert_eq!(c.is_ignored(), ignored, "{code} ignored");
        assert_eq!(c.to_string(), format!("{code} ({description})"));
        assert_eq!(u16::from(c), code);
        assert_eq!(CloseCode::from(code), c);
    }
}

#[test]
fn close_codes_without_description() {
    for code in [
        0,
        999,
        1004,
        1012,
        1015,
        2000,
        3000,
        3999,
        4010,
        4499,
        4500,
        4999,
        u16::MAX,
    ] {
        let c = CloseCode(code);
        assert_eq!(c.description(), None, "{code}");
        assert_eq!(c.to_string(), code.to_string());
        assert!(!c.reconnects_immediately() && !c.is_ignored(), "{code}");
    }
}

#[test]
fn close_code_reconnect_rule() {
    // Never for 1000 or >= 4500; with backoff for every other code.
    assert_eq!(CloseCode::FIRST_PERMANENT, CloseCode(4500));
    for code in 0..=u16::MAX {
        let c = CloseCode(code);
        assert_eq!(c.reconnects(), code != 1000 && code < 4500, "{code}");
        assert_eq!(
            c.reconnects_immediately(),
            matches!(code, 1005 | 4000 | 4001),
            "{code}"
        );
        assert_eq!(c.is_ignored(), matches!(code, 1000 | 1001), "{code}");
        if c.reconnects_immediately() {
            assert!(c.reconnects());
        }
    }
}
