//! The `put_*` encoders of `sc_protocol::encode`: one table per frame shape, each row checked on
//! both buffer types (`Vec<u8>` and `BytesMut`) and appended after existing bytes, the exact
//! length `response_len` promises, the `write_*` forms agreeing with them, and a round trip of
//! every server frame through `decode` (and `Reserved::parse` for the reserved events).

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use bytes::{BufMut, BytesMut};
use common::{raw, response, single, text, transmit};
use sc_protocol::encode::{
    self, INBAND_CLOSE_PREFIX, PublishFrame, parse_inband_close, put_auth_status, put_error,
    put_error_response, put_handshake_reply, put_inband_close, put_invoke, put_kick_out,
    put_publish, put_remove_auth_token, put_response, put_set_auth_token, put_str, put_transmit,
    response_len, write_error, write_error_response, write_invoke, write_publish, write_response,
    write_str, write_transmit,
};
use sc_protocol::{ErrorName, Frame, Packet, Reserved, ScError, decode, events};
use serde_json::{Value, json};

/// Runs `$body` (which writes with `$b`) on a `Vec<u8>`, a `BytesMut` and a `&mut dyn BufMut`,
/// each already holding a prefix, and checks that exactly `$want` was appended.
macro_rules! check {
    ($want:expr, |$b:ident| $body:expr) => {{
        let want: &str = $want;
        let mut vec = b"prefix".to_vec();
        {
            let $b = &mut vec;
            $body;
        }
        assert_eq!(&vec[..6], b"prefix");
        assert_eq!(text(&vec[6..]), want, "Vec<u8>");
        let mut bytes = BytesMut::from(&b"prefix"[..]);
        {
            let $b = &mut bytes;
            $body;
        }
        assert_eq!(&bytes[..6], b"prefix");
        assert_eq!(text(&bytes[6..]), want, "BytesMut");
        let mut dynamic = Vec::new();
        {
            let $b: &mut dyn BufMut = &mut dynamic;
            $body;
        }
        assert_eq!(text(&dynamic), want, "dyn BufMut");
    }};
}

/// Strings that need every kind of escape, with their JSON literals.
const STRINGS: [(&str, &str); 8] = [
    ("", r#""""#),
    ("plain", r#""plain""#),
    ("q\"b\\s/", r#""q\"b\\s/""#),
    ("\n\r\t\u{8}\u{c}", r#""\n\r\t\b\f""#),
    ("\0\u{1}\u{1f}\u{7f}", "\"\\u0000\\u0001\\u001f\u{7f}\""),
    ("é😀\u{2028}", "\"é😀\u{2028}\""),
    ("a\"b\u{b}c", r#""a\"b\u000bc""#),
    ("\\\\", r#""\\\\""#),
];

fn bytes_of(data: Option<&str>) -> Option<&[u8]> {
    data.map(str::as_bytes)
}

fn reserved(frame: &str) -> Reserved<'_> {
    let packet = single(decode(frame));
    let (Packet::Transmit { event, data } | Packet::Invoke { event, data, .. }) = packet else {
        panic!("no event: {frame}")
    };
    let event = event.into_owned();
    Reserved::parse(&event, data)
        .unwrap_or_else(|| panic!("not reserved: {frame}"))
        .unwrap_or_else(|e| panic!("invalid {frame}: {e:?}"))
}

// ---------------------------------------------------------------------------------------------
// Strings

#[test]
fn put_str_escapes_like_json_stringify() {
    for (input, want) in STRINGS {
        check!(want, |b| put_str(b, input));
        let mut buf = Vec::new();
        write_str(&mut buf, input);
        assert_eq!(text(&buf), want, "write_str {input:?}");
        // serde_json escapes the same way.
        assert_eq!(serde_json::to_string(input).unwrap(), want, "{input:?}");
    }
    // Every byte below 0x80, one at a time, agrees with serde_json too.
    for b in 0..0x80u8 {
        let s = char::from(b).to_string();
        check!(&serde_json::to_string(&s).unwrap(), |buf| put_str(buf, &s));
    }
}

// ---------------------------------------------------------------------------------------------
// Packets

#[test]
fn put_transmit_table() {
    let rows: [(&str, Option<&str>, &str); 5] = [
        ("name", Some("[1]"), r#"{"event":"name","data":[1]}"#),
        ("name", None, r#"{"event":"name"}"#),
        ("name", Some("null"), r#"{"event":"name","data":null}"#),
        (
            "q\"\\\n\u{1}é",
            Some(r#"{"a":"\u0000"}"#),
            r#"{"event":"q\"\\\n\u0001é","data":{"a":"\u0000"}}"#,
        ),
        ("", Some("\"\""), r#"{"event":"","data":""}"#),
    ];
    for (event, data, want) in rows {
        check!(want, |b| put_transmit(b, event, bytes_of(data)));
        let mut buf = Vec::new();
        write_transmit(&mut buf, event, data.map(raw));
        assert_eq!(text(&buf), want);
        assert_eq!(decode(want), Frame::Packet(transmit(event, data)), "{want}");
    }
}

#[test]
fn put_invoke_table() {
    let rows: [(&str, Option<&str>, u64, &str); 5] = [
        (
            "echo",
            Some(r#"{"a":1}"#),
            7,
            r#"{"event":"echo","data":{"a":1},"cid":7}"#,
        ),
        (
            "echo",
            None,
            u64::MAX,
            r#"{"event":"echo","cid":18446744073709551615}"#,
        ),
        ("e", Some("null"), 0, r#"{"event":"e","data":null,"cid":0}"#),
        (
            "\t\"",
            Some("-1.5e3"),
            10,
            r#"{"event":"\t\"","data":-1.5e3,"cid":10}"#,
        ),
        (
            events::SUBSCRIBE,
            Some(r#"{"channel":"c"}"#),
            2,
            r##"{"event":"#subscribe","data":{"channel":"c"},"cid":2}"##,
        ),
    ];
    for (event, data, cid, want) in rows {
        check!(want, |b| put_invoke(b, event, bytes_of(data), cid));
        let mut buf = Vec::new();
        write_invoke(&mut buf, event, data.map(raw), cid);
        assert_eq!(text(&buf), want);
        assert_eq!(
            decode(want),
            Frame::Packet(common::invoke(event, data, cid)),
            "{want}"
        );
    }
}

#[test]
fn put_response_table() {
    let rows: [(u64, Option<&str>, &str); 5] = [
        (7, Some("\"ok\""), r#"{"rid":7,"data":"ok"}"#),
        (7, None, r#"{"rid":7}"#),
        (0, Some("null"), r#"{"rid":0,"data":null}"#),
        (
            u64::MAX,
            Some(r#"{"id":1,"t":[true,false]}"#),
            r#"{"rid":18446744073709551615,"data":{"id":1,"t":[true,false]}}"#,
        ),
        (100, Some("[]"), r#"{"rid":100,"data":[]}"#),
    ];
    for (rid, data, want) in rows {
        check!(want, |b| put_response(b, rid, bytes_of(data)));
        assert_eq!(response_len(rid, data.map(str::len)), want.len(), "{want}");
        let mut buf = Vec::new();
        write_response(&mut buf, rid, data.map(raw));
        assert_eq!(text(&buf), want);
        assert_eq!(
            decode(want),
            Frame::Packet(response(rid, data, None)),
            "{want}"
        );
    }
}

#[test]
fn response_len_is_the_written_length() {
    let rids = [
        0,
        1,
        9,
        10,
        11,
        99,
        100,
        999,
        1000,
        u64::from(u32::MAX),
        10u64.pow(19) - 1,
        10u64.pow(19),
        u64::MAX - 1,
        u64::MAX,
    ];
    let long = format!("\"{}\"", "x".repeat(70_000));
    let datas: [Option<&str>; 7] = [
        None,
        Some(""),
        Some("0"),
        Some("null"),
        Some(r#"{"a":[1,2,3]}"#),
        Some(&long[..126]),
        Some(&long),
    ];
    // Every power of ten and its neighbours.
    let powers = (0..20).flat_map(|e| {
        let p = 10u64.pow(e);
        [p - 1, p, p + 1]
    });
    for rid in rids.into_iter().chain(powers) {
        for data in datas {
            let want = response_len(rid, data.map(str::len));
            let mut vec = Vec::new();
            put_response(&mut vec, rid, bytes_of(data));
            assert_eq!(vec.len(), want, "rid {rid}, data {:?}", data.map(str::len));
            let mut bytes = BytesMut::new();
            put_response(&mut bytes, rid, bytes_of(data));
            assert_eq!(
                bytes.len(),
                want,
                "rid {rid}, data {:?}",
                data.map(str::len)
            );
        }
    }
    // Data lengths alone (the content does not matter to the length).
    for n in 0..300 {
        let data = vec![b'1'; n];
        let mut vec = Vec::new();
        put_response(&mut vec, 42, Some(&data));
        assert_eq!(vec.len(), response_len(42, Some(n)), "{n}");
    }
    // It is a constant expression.
    const LEN: usize = response_len(7, None);
    assert_eq!(LEN, r#"{"rid":7}"#.len());
}

/// The hot path the server runs: a WebSocket frame header that needs the length, then the reply
/// encoded in place into the same buffer.
#[test]
fn response_in_place_after_a_frame_header() {
    let mut out = BytesMut::with_capacity(256);
    for (rid, data) in [(1u64, Some(&br#"{"a":1}"#[..])), (123, None)] {
        out.clear();
        let len = response_len(rid, data.map(<[u8]>::len));
        out.put_u8(0x81);
        out.put_u8(u8::try_from(len).unwrap());
        put_response(&mut out, rid, data);
        assert_eq!(out.len(), 2 + len);
        assert_eq!(usize::from(out[1]), out.len() - 2);
        assert!(matches!(
            decode(text(&out[2..])),
            Frame::Packet(Packet::Response { rid: r, .. }) if r == rid
        ));
    }
}

fn sample_errors() -> Vec<(ScError, &'static str)> {
    vec![
        (
            ScError::new(ErrorName::BrokerError, "down"),
            r#"{"message":"down","name":"BrokerError"}"#,
        ),
        (
            ScError::new(ErrorName::AuthTokenExpiredError, "jwt expired")
                .with("expiry", "2020-01-01T00:00:00.000Z"),
            r#"{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2020-01-01T00:00:00.000Z"}"#,
        ),
        (
            ScError::new("BadRequest", "q\"\\\n\u{7}")
                .with("detail", json!({"a":[1,null]}))
                .with("k\"ey", "v\u{1}"),
            r#"{"message":"q\"\\\n\u0007","name":"BadRequest","detail":{"a":[1,null]},"k\"ey":"v\u0001"}"#,
        ),
        (
            ScError::new("E", "m")
                .with("name", "X")
                .with("message", "Y"),
            r#"{"message":"m","name":"E"}"#,
        ),
    ]
}

#[test]
fn sc_error_put_json_table() {
    for (error, want) in sample_errors() {
        check!(want, |b| error.put_json(b));
        let mut buf = Vec::new();
        error.write_json(&mut buf);
        assert_eq!(text(&buf), want);
        assert_eq!(error.to_json(), want);
    }
}

#[test]
fn put_error_table() {
    for (rid, (error, json)) in [0u64, 9, 10, u64::MAX].into_iter().zip(sample_errors()) {
        let want = format!(r#"{{"rid":{rid},"error":{json}}}"#);
        check!(&want, |b| put_error(b, rid, &error));
        check!(&want, |b| put_error_response(b, rid, json.as_bytes()));
        let mut buf = Vec::new();
        write_error(&mut buf, rid, &error);
        assert_eq!(text(&buf), want);
        buf.clear();
        write_error_response(&mut buf, rid, raw(json));
        assert_eq!(text(&buf), want);
        // Round trip: the error decodes as the raw text we wrote and hydrates back.
        assert_eq!(
            decode(&want),
            Frame::Packet(response(rid, None, Some(json))),
            "{want}"
        );
        let back = ScError::from_json(json);
        assert_eq!((&back.name, &back.message), (&error.name, &error.message));
    }
}

// ---------------------------------------------------------------------------------------------
// Reserved events the server sends

#[test]
fn put_publish_table() {
    let rows: [(&str, Option<&str>, &str); 5] = [
        (
            "news",
            Some(r#"{"x":[1,"y"]}"#),
            r##"{"event":"#publish","data":{"channel":"news","data":{"x":[1,"y"]}}}"##,
        ),
        (
            "c",
            Some("null"),
            r##"{"event":"#publish","data":{"channel":"c","data":null}}"##,
        ),
        (
            "c",
            None,
            r##"{"event":"#publish","data":{"channel":"c"}}"##,
        ),
        (
            "é\"\n\u{0}\\",
            Some("1"),
            r##"{"event":"#publish","data":{"channel":"é\"\n\u0000\\","data":1}}"##,
        ),
        (
            "",
            Some("\"\""),
            r##"{"event":"#publish","data":{"channel":"","data":""}}"##,
        ),
    ];
    for (channel, data, want) in rows {
        check!(want, |b| put_publish(b, channel, bytes_of(data)));
        let mut buf = Vec::new();
        write_publish(&mut buf, channel, data.map(raw));
        assert_eq!(text(&buf), want);
        let frame = PublishFrame::from_json(channel, bytes_of(data));
        assert_eq!(frame.as_str(), want);
        assert_eq!(frame, PublishFrame::new(channel, data.map(raw)));
        assert!(matches!(single(decode(want)), Packet::Transmit { .. }));
        assert_eq!(
            reserved(want),
            Reserved::Publish {
                channel: channel.into(),
                data: data.map(raw)
            }
        );
    }
    // `from_json` sizes its one allocation exactly (it debug-asserts the length) for channels
    // with every escape.
    for (channel, _) in STRINGS {
        for data in [None, Some(&b"[1,2]"[..])] {
            let frame = PublishFrame::from_json(channel, data);
            let mut buf = Vec::new();
            put_publish(&mut buf, channel, data);
            assert_eq!(frame.bytes().as_ref(), buf.as_slice());
        }
    }
}

#[test]
fn put_handshake_reply_table() {
    let expired = ScError::new(ErrorName::AuthTokenExpiredError, "jwt expired")
        .with("expiry", "2020-01-01T00:00:00.000Z");
    /// rid, socket id, ping timeout, authenticated, auth error, frame.
    type Row<'a> = (u64, &'a str, u64, bool, Option<&'a ScError>, &'a str);
    let rows: [Row<'_>; 4] = [
        (
            1,
            "abc-123",
            20_000,
            false,
            None,
            r#"{"rid":1,"data":{"id":"abc-123","pingTimeout":20000,"isAuthenticated":false}}"#,
        ),
        (
            1,
            "abc",
            20_000,
            true,
            None,
            r#"{"rid":1,"data":{"id":"abc","pingTimeout":20000,"isAuthenticated":true}}"#,
        ),
        (
            u64::MAX,
            "q\"\\\n",
            0,
            false,
            Some(&expired),
            r#"{"rid":18446744073709551615,"data":{"id":"q\"\\\n","pingTimeout":0,"isAuthenticated":false,"authError":{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2020-01-01T00:00:00.000Z"}}}"#,
        ),
        (
            10,
            "",
            u64::MAX,
            true,
            Some(&expired),
            r#"{"rid":10,"data":{"id":"","pingTimeout":18446744073709551615,"isAuthenticated":true,"authError":{"message":"jwt expired","name":"AuthTokenExpiredError","expiry":"2020-01-01T00:00:00.000Z"}}}"#,
        ),
    ];
    for (rid, id, ping, authed, error, want) in rows {
        check!(want, |b| put_handshake_reply(
            b, rid, id, ping, authed, error
        ));
        let Packet::Response {
            rid: r,
            data: Some(data),
            error: None,
        } = single(decode(want))
        else {
            panic!("not a success response: {want}")
        };
        assert_eq!(r, rid);
        let data: Value = serde_json::from_str(data.get()).unwrap();
        let mut expect = json!({ "id": id, "pingTimeout": ping, "isAuthenticated": authed });
        if let Some(e) = error {
            expect["authError"] = serde_json::from_str(&e.to_json()).unwrap();
        }
        assert_eq!(data, expect, "{want}");
    }
}

#[test]
fn put_auth_status_table() {
    let invalid = ScError::new(ErrorName::AuthTokenInvalidError, "invalid signature");
    let rows: [(u64, bool, Option<&ScError>, &str); 3] = [
        (
            3,
            true,
            None,
            r#"{"rid":3,"data":{"isAuthenticated":true,"authError":null}}"#,
        ),
        (
            0,
            false,
            None,
            r#"{"rid":0,"data":{"isAuthenticated":false,"authError":null}}"#,
        ),
        (
            99,
            false,
            Some(&invalid),
            r#"{"rid":99,"data":{"isAuthenticated":false,"authError":{"message":"invalid signature","name":"AuthTokenInvalidError"}}}"#,
        ),
    ];
    for (rid, authed, error, want) in rows {
        check!(want, |b| put_auth_status(b, rid, authed, error));
        let Packet::Response {
            rid: r,
            data: Some(data),
            error: None,
        } = single(decode(want))
        else {
            panic!("not a success response: {want}")
        };
        assert_eq!(r, rid);
        let data: Value = serde_json::from_str(data.get()).unwrap();
        let auth_error = error.map_or(Value::Null, |e| serde_json::from_str(&e.to_json()).unwrap());
        assert_eq!(
            data,
            json!({ "isAuthenticated": authed, "authError": auth_error })
        );
    }
}

#[test]
fn put_set_auth_token_table() {
    let rows = [
        (
            "a.b.c",
            r##"{"event":"#setAuthToken","data":{"token":"a.b.c"}}"##,
        ),
        ("", r##"{"event":"#setAuthToken","data":{"token":""}}"##),
        (
            "x\"y\\z\n\u{1}",
            r##"{"event":"#setAuthToken","data":{"token":"x\"y\\z\n\u0001"}}"##,
        ),
    ];
    for (token, want) in rows {
        check!(want, |b| put_set_auth_token(b, token));
        assert!(matches!(single(decode(want)), Packet::Transmit { .. }));
        assert_eq!(
            reserved(want),
            Reserved::SetAuthToken {
                token: token.into()
            }
        );
    }
}

#[test]
fn put_remove_auth_token_table() {
    let want = r##"{"event":"#removeAuthToken"}"##;
    check!(want, |b| put_remove_auth_token(b));
    assert_eq!(
        decode(want),
        Frame::Packet(transmit(events::REMOVE_AUTH_TOKEN, None))
    );
    assert_eq!(reserved(want), Reserved::RemoveAuthToken);
}

#[test]
fn put_kick_out_table() {
    let rows: [(&str, Option<&str>, &str); 4] = [
        (
            "c",
            Some("\"bye\""),
            r##"{"event":"#kickOut","data":{"channel":"c","message":"bye"}}"##,
        ),
        (
            "c",
            None,
            r##"{"event":"#kickOut","data":{"channel":"c"}}"##,
        ),
        (
            "c",
            Some("null"),
            r##"{"event":"#kickOut","data":{"channel":"c","message":null}}"##,
        ),
        (
            "é\"\\\t",
            Some(r#"{"why":[1]}"#),
            r##"{"event":"#kickOut","data":{"channel":"é\"\\\t","message":{"why":[1]}}}"##,
        ),
    ];
    for (channel, message, want) in rows {
        check!(want, |b| put_kick_out(b, channel, bytes_of(message)));
        assert!(matches!(single(decode(want)), Packet::Transmit { .. }));
        assert_eq!(
            reserved(want),
            Reserved::KickOut {
                channel: channel.into(),
                message: message.map(raw)
            }
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The engine.io in-band close

#[test]
fn put_inband_close_table() {
    assert_eq!(INBAND_CLOSE_PREFIX, "#close:");
    let rows: [(u16, &str, &str); 5] = [
        (
            4001,
            "Client pong timed out",
            r##"#close:{"code":4001,"reason":"Client pong timed out"}"##,
        ),
        (1000, "", r##"#close:{"code":1000,"reason":""}"##),
        (0, "x", r##"#close:{"code":0,"reason":"x"}"##),
        (u16::MAX, "é", r##"#close:{"code":65535,"reason":"é"}"##),
        (
            1013,
            "q\"\\\n\u{1}\u{7f}",
            "#close:{\"code\":1013,\"reason\":\"q\\\"\\\\\\n\\u0001\u{7f}\"}",
        ),
    ];
    for (code, reason, want) in rows {
        check!(want, |b| put_inband_close(b, code, reason));
        // What the engine.io bridge wrote before: the prefix and serde_json's object.
        let body = json!({ "code": code, "reason": reason });
        assert_eq!(format!("{INBAND_CLOSE_PREFIX}{body}"), want);
        assert_eq!(
            parse_inband_close(want),
            Some((code, reason.to_owned())),
            "{want}"
        );
    }
    for (reason, _) in STRINGS {
        let mut buf = Vec::new();
        put_inband_close(&mut buf, 4000, reason);
        assert_eq!(
            parse_inband_close(text(&buf)),
            Some((4000, reason.to_owned()))
        );
    }
}

#[test]
fn parse_inband_close_table() {
    let none = [
        "",
        "close:",
        "#close",
        "#Close:{}",
        " #close:{}",
        "{\"event\":\"a\"}",
        "#1",
    ];
    for text in none {
        assert_eq!(parse_inband_close(text), None, "{text:?}");
    }
    let empty = || (1000, String::new());
    let rows: [(&str, (u16, String)); 18] = [
        (
            r#"#close:{"code":4001,"reason":"bye"}"#,
            (4001, "bye".to_owned()),
        ),
        (
            r#"#close:{"reason":"bye","code":4001}"#,
            (4001, "bye".to_owned()),
        ),
        (
            r#"#close: { "code" : 4001 , "reason" : "bye" } "#,
            (4001, "bye".to_owned()),
        ),
        (r#"#close:{"code":4001}"#, (4001, String::new())),
        (r#"#close:{"reason":"bye"}"#, (1000, "bye".to_owned())),
        (r#"#close:{"code":null,"reason":null}"#, empty()),
        (r#"#close:{}"#, empty()),
        (
            r#"#close:{"code":4001,"reason":"bye","extra":[1]}"#,
            (4001, "bye".to_owned()),
        ),
        (
            r#"#close:{"code":4001,"reason":"a\"\n\u00e9"}"#,
            (4001, "a\"\né".to_owned()),
        ),
        // Malformed bodies.
        ("#close:", empty()),
        ("#close:garbage", empty()),
        (r#"#close:{"code":4001,"reason":"bye""#, empty()),
        (r#"#close:{"code":70000,"reason":"bye"}"#, empty()),
        (r#"#close:{"code":-1,"reason":"bye"}"#, empty()),
        (r#"#close:{"code":4001.5,"reason":"bye"}"#, empty()),
        (r#"#close:{"code":"4001","reason":"bye"}"#, empty()),
        (r#"#close:{"code":4001,"reason":5}"#, empty()),
        (r#"#close:[4001,"bye"]"#, (4001, "bye".to_owned())),
    ];
    for (text, want) in rows {
        assert_eq!(parse_inband_close(text), Some(want), "{text:?}");
    }
}

#[test]
fn encode_constants_match_the_event_names() {
    let mut buf = Vec::new();
    put_remove_auth_token(&mut buf);
    assert_eq!(
        decode(text(&buf)),
        Frame::Packet(transmit(events::REMOVE_AUTH_TOKEN, None))
    );
    for (frame, event) in [
        (
            {
                let mut b = Vec::new();
                put_set_auth_token(&mut b, "t");
                b
            },
            events::SET_AUTH_TOKEN,
        ),
        (
            {
                let mut b = Vec::new();
                put_kick_out(&mut b, "c", None);
                b
            },
            events::KICK_OUT,
        ),
        (
            {
                let mut b = Vec::new();
                put_publish(&mut b, "c", None);
                b
            },
            events::PUBLISH,
        ),
    ] {
        let Packet::Transmit { event: e, .. } = single(decode(text(&frame))) else {
            panic!()
        };
        assert_eq!(e, event);
    }
    assert_eq!(encode::HEARTBEAT, "");
}
