//! Property tests: encode → decode round trips for every packet kind with arbitrary names and
//! JSON payloads, `write_str` against serde_json, and decoding arbitrary input never panics.

#![allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]

mod common;

use common::{invoke, response, text, transmit};
use proptest::prelude::*;
use sc_protocol::encode::{
    PublishFrame, write_batch, write_error, write_error_response, write_invoke, write_publish,
    write_response, write_str, write_transmit,
};
use sc_protocol::{Frame, Packet, RawValue, Reserved, ScError, decode, decode_binary};
use serde_json::{Map, Value};

/// Strings heavy in what JSON must escape: quotes, backslashes, control characters, plus
/// non-ASCII (U+2028, emoji) and anything else.
fn tricky_string() -> impl Strategy<Value = String> {
    let special = prop::sample::select(vec![
        '"', '\\', '/', '\0', '\n', '\r', '\t', '\u{8}', '\u{c}', '\u{1f}', '\u{7f}', '\u{2028}',
        '\u{2029}', '\u{feff}', 'é', '😀', '#', ' ', '{', '[',
    ]);
    prop_oneof![
        3 => prop::collection::vec(prop_oneof![any::<char>(), special], 0..24)
            .prop_map(String::from_iter),
        1 => any::<String>(),
        1 => "[a-z#/]{0,10}",
    ]
}

/// Arbitrary JSON, floats included when `floats`.
fn json(floats: bool) -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        // Non-finite floats become null, as in JSON.stringify.
        any::<f64>().prop_map(move |f| if floats {
            Value::from(f)
        } else {
            Value::from(f.to_bits() >> 12)
        }),
        tricky_string().prop_map(Value::from),
    ];
    leaf.prop_recursive(5, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(tricky_string(), inner, 0..6)
                .prop_map(|m| Value::Object(m.into_iter().collect::<Map<_, _>>())),
        ]
    })
}

/// A payload as JSON text: compact or pretty (whitespace inside a payload is kept).
fn payload() -> impl Strategy<Value = String> {
    (json(true), any::<bool>()).prop_map(|(v, pretty)| {
        if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            serde_json::to_string(&v).unwrap()
        }
    })
}

fn raw(text: &str) -> &RawValue {
    serde_json::from_str(text).unwrap()
}

fn decode_bytes(buf: &[u8]) -> Frame<'_> {
    // Both entry points agree.
    let frame = decode(text(buf));
    assert_eq!(frame, decode_binary(buf));
    frame
}

/// One packet of a batch, as generated.
#[derive(Debug, Clone)]
enum Gen {
    Transmit(String, Option<String>),
    Invoke(String, Option<String>, u64),
    Ok(u64, Option<String>),
    Err(u64, String),
}

fn gen_packet() -> impl Strategy<Value = Gen> {
    prop_oneof![
        (tricky_string(), prop::option::of(payload())).prop_map(|(e, d)| Gen::Transmit(e, d)),
        (tricky_string(), prop::option::of(payload()), any::<u64>())
            .prop_map(|(e, d, c)| Gen::Invoke(e, d, c)),
        (any::<u64>(), prop::option::of(payload())).prop_map(|(r, d)| Gen::Ok(r, d)),
        (
            any::<u64>(),
            payload().prop_filter("null is no error", |e| e != "null")
        )
            .prop_map(|(r, e)| Gen::Err(r, e)),
    ]
}

impl Gen {
    fn encode(&self, buf: &mut Vec<u8>) {
        match self {
            Gen::Transmit(e, d) => write_transmit(buf, e, d.as_deref().map(raw)),
            Gen::Invoke(e, d, c) => write_invoke(buf, e, d.as_deref().map(raw), *c),
            Gen::Ok(r, d) => write_response(buf, *r, d.as_deref().map(raw)),
            Gen::Err(r, e) => write_error_response(buf, *r, raw(e)),
        }
    }

    fn packet(&self) -> Packet<'_> {
        match self {
            Gen::Transmit(e, d) => transmit(e, d.as_deref()),
            Gen::Invoke(e, d, c) => invoke(e, d.as_deref(), *c),
            Gen::Ok(r, d) => response(*r, d.as_deref(), None),
            Gen::Err(r, e) => response(*r, None, Some(e)),
        }
    }
}

/// Decodes every packet the way a server would, to prove nothing on the path panics.
fn handle_all(frame: Frame<'_>) {
    for packet in frame.into_packets() {
        match packet {
            Packet::Transmit { event, data } | Packet::Invoke { event, data, .. } => {
                if let Some(Ok(Reserved::Publish { channel, data })) = Reserved::parse(&event, data)
                {
                    let _ = PublishFrame::new(&channel, data);
                }
                let mut buf = Vec::new();
                write_transmit(&mut buf, &event, data);
                assert!(serde_json::from_slice::<&RawValue>(&buf).is_ok());
            }
            Packet::Response {
                error: Some(error), ..
            } => {
                let _ = ScError::from_json(error.get()).to_json();
            }
            Packet::Response { .. } | Packet::Raw(_) => {}
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn transmit_round_trip(event in tricky_string(), data in prop::option::of(payload())) {
        let mut buf = Vec::new();
        write_transmit(&mut buf, &event, data.as_deref().map(raw));
        prop_assert_eq!(decode_bytes(&buf), Frame::Packet(transmit(&event, data.as_deref())));
    }

    #[test]
    fn invoke_round_trip(event in tricky_string(), data in prop::option::of(payload()), cid in any::<u64>()) {
        let mut buf = Vec::new();
        write_invoke(&mut buf, &event, data.as_deref().map(raw), cid);
        prop_assert_eq!(decode_bytes(&buf), Frame::Packet(invoke(&event, data.as_deref(), cid)));
    }

    #[test]
    fn response_round_trip(rid in any::<u64>(), data in prop::option::of(payload())) {
        let mut buf = Vec::new();
        write_response(&mut buf, rid, data.as_deref().map(raw));
        prop_assert_eq!(decode_bytes(&buf), Frame::Packet(response(rid, data.as_deref(), None)));
    }

    #[test]
    fn error_response_round_trip(rid in any::<u64>(), error in payload()) {
        let mut buf = Vec::new();
        write_error_response(&mut buf, rid, raw(&error));
        // `error:null` is no error.
        let want = if error == "null" { None } else { Some(error.as_str()) };
        prop_assert_eq!(decode_bytes(&buf), Frame::Packet(response(rid, None, want)));
    }

    #[test]
    fn sc_error_round_trip(
        rid in any::<u64>(),
        name in tricky_string(),
        message in tricky_string(),
        extra in prop::collection::btree_map(tricky_string(), json(false), 0..4),
    ) {
        let mut error = ScError::new(name, message);
        for (k, v) in extra {
            if k != "name" && k != "message" {
                error = error.with(k, v);
            }
        }
        let mut buf = Vec::new();
        write_error(&mut buf, rid, &error);
        let Frame::Packet(Packet::Response { rid: r2, data: None, error: Some(e) }) = decode_bytes(&buf) else {
            panic!("{}", text(&buf));
        };
        prop_assert_eq!(r2, rid);
        prop_assert_eq!(e.get(), error.to_json());
        prop_assert_eq!(ScError::from_json(e.get()), error);
    }

    #[test]
    fn publish_round_trip(channel in tricky_string(), data in prop::option::of(payload())) {
        let frame = PublishFrame::new(&channel, data.as_deref().map(raw));
        let mut buf = Vec::new();
        write_publish(&mut buf, &channel, data.as_deref().map(raw));
        prop_assert_eq!(frame.bytes().as_ref(), buf.as_slice());
        let Frame::Packet(Packet::Transmit { event, data: d2 }) = decode_bytes(&buf) else {
            panic!("{}", text(&buf));
        };
        prop_assert_eq!(&*event, "#publish");
        prop_assert_eq!(
            Reserved::parse(&event, d2),
            Some(Ok(Reserved::Publish { channel: channel.as_str().into(), data: data.as_deref().map(raw) }))
        );
    }

    #[test]
    fn batch_round_trip(packets in prop::collection::vec(gen_packet(), 0..8)) {
        let encoded: Vec<Vec<u8>> = packets
            .iter()
            .map(|p| {
                let mut buf = Vec::new();
                p.encode(&mut buf);
                buf
            })
            .collect();
        let mut buf = Vec::new();
        write_batch(&mut buf, encoded.iter().map(Vec::as_slice));
        let want: Vec<Packet<'_>> = packets.iter().map(Gen::packet).collect();
        prop_assert_eq!(decode_bytes(&buf), Frame::Batch(want));
    }

    #[test]
    fn write_str_is_json(s in tricky_string()) {
        let mut buf = Vec::new();
        write_str(&mut buf, &s);
        prop_assert_eq!(serde_json::from_slice::<String>(&buf).unwrap(), s.as_str());
        // Byte for byte what serde_json (and JSON.stringify) write.
        prop_assert_eq!(text(&buf), serde_json::to_string(&s).unwrap());
    }

    #[test]
    fn decode_never_panics_on_strings(s in any::<String>()) {
        handle_all(decode(&s));
    }

    #[test]
    fn decode_never_panics_on_bytes(bytes in prop::collection::vec(any::<u8>(), 0..256)) {
        handle_all(decode_binary(&bytes));
    }

    #[test]
    fn decode_never_panics_on_json_like_text(
        s in r#"[ \[\]{}",:0-9a-z#\\.eE+\-]{0,64}"#,
        prefix in prop::sample::select(vec!["", "{", "[", r#"{"event":"#, r#"{"rid":1,"error":"#, r#"[{"event":"a","data":"#]),
    ) {
        handle_all(decode(&format!("{prefix}{s}")));
    }

    /// Every well-formed packet object is classified as JSON.parse + the JS rules would.
    #[test]
    fn classification_matches_the_js_rules(
        fields in prop::collection::btree_map(
            prop::sample::select(vec!["event", "data", "cid", "rid", "error", "x"]),
            json(true),
            0..6,
        ),
    ) {
        let map: Map<String, Value> = fields.into_iter().map(|(k, v)| (k.to_owned(), v)).collect();
        let text = serde_json::to_string(&map).unwrap();
        let got = decode(&text);
        let Frame::Packet(got) = got else { panic!() };
        // The payloads come back as the exact text serde_json wrote for them.
        let as_value = |r: Option<&RawValue>| r.map(|r| r.get().to_owned());
        let json_of = |v: Option<&Value>| v.map(|v| serde_json::to_string(v).unwrap());
        match (map.get("event"), map.get("cid"), map.get("rid")) {
            (Some(Value::String(event)), cid, _) => match cid.and_then(|c| c.as_number()) {
                Some(n) => match n.as_u64() {
                    Some(cid) => {
                        let Packet::Invoke { event: e, data, cid: c } = got else { panic!("{got:?}") };
                        prop_assert_eq!((&*e, as_value(data), c), (event.as_str(), json_of(map.get("data")), cid));
                    }
                    // A number that is no u64.
                    None => prop_assert_eq!(got, Packet::Raw(&text)),
                },
                None => {
                    let Packet::Transmit { event: e, data } = got else { panic!("{got:?}") };
                    prop_assert_eq!((&*e, as_value(data)), (event.as_str(), json_of(map.get("data"))));
                }
            },
            (_, _, Some(Value::Number(n))) => match n.as_u64() {
                Some(rid) => {
                    let Packet::Response { rid: r, data, error } = got else { panic!("{got:?}") };
                    let want_error = json_of(map.get("error").filter(|e| !e.is_null()));
                    prop_assert_eq!((r, as_value(data), as_value(error)), (rid, json_of(map.get("data")), want_error));
                }
                None => prop_assert_eq!(got, Packet::Raw(&text)),
            },
            _ => prop_assert_eq!(got, Packet::Raw(&text)),
        }
    }
}
