//! Unit tests of the decoder internals, chiefly: the fast scanner decides exactly as the serde
//! reference decoder does.

use proptest::prelude::*;

use super::*;

fn raw(text: &str) -> &RawValue {
    serde_json::from_str(text).unwrap()
}

#[test]
fn fast_path_takes_the_common_shapes() {
    let cases = [
        r#"{"event":"echo","data":{"a":1},"cid":7}"#,
        r#"{"event":"echo","data":null}"#,
        r#"{"event":"echo"}"#,
        r#" { "cid" : 0 , "event" : "" } "#,
        r#"{"rid":7,"data":[1,2]}"#,
        r#"{"rid":7,"error":{"name":"E","message":"m"}}"#,
        r#"{"rid":7,"error":null,"data":1}"#,
        r#"{"event":"é😀","cid":18446744073709551615}"#,
        r##"{"event":"#publish","data":{"channel":"c","data":"\u0000\"x"}}"##,
    ];
    for text in cases {
        let fast = decode_packet_fast(text);
        assert!(fast.is_some(), "{text}");
        assert_eq!(fast, Some(decode_packet_slow(text)), "{text}");
    }
}

#[test]
fn canonical_path_takes_what_the_client_writes() {
    let cases = [
        r#"{"event":"echo","data":"abcdefghijklmnop","cid":123456}"#,
        r#"{"event":"echo","data":{"a":[1,{"b":null}]},"cid":1}"#,
        r#"{"event":"echo","cid":0}"#,
        r#"{"event":"echo","data":null}"#,
        r##"{"event":"#publish","data":{"channel":"c","data":"\u0000\"x"}}"##,
        r#"{"event":"","data":1}"#,
        r#"{"event":"é😀","cid":18446744073709551615}"#,
        r#"{"event":"x","cid":1234567890123456789}"#,
    ];
    for text in cases {
        let canonical = decode_canonical(text);
        assert!(canonical.is_some(), "{text}");
        assert_eq!(canonical, decode_packet_fast(text), "{text}");
        assert_eq!(canonical, Some(decode_packet_slow(text)), "{text}");
    }
}

#[test]
fn canonical_path_declines_every_other_shape() {
    let cases = [
        // Other shapes the general scanner or serde read.
        r#"{"cid":7,"event":"echo"}"#,
        r#"{"data":1,"event":"echo"}"#,
        r#"{ "event":"echo"}"#,
        r#"{"event":"echo" }"#,
        r#"{"event":"echo","data":1 }"#,
        r#"{"event":"echo","cid":7 }"#,
        r#"{"event":"echo"} "#,
        r#"{"event":"echo","cid":7,"data":1}"#,
        r#"{"rid":7,"data":1}"#,
        r#"{"event":"a"b"}"#,
        // What is no packet at all.
        r#"{"event":"a","cid":18446744073709551616}"#,
        r#"{"event":"a","cid":99999999999999999999}"#,
        r#"{"event":"a","cid":-1}"#,
        r#"{"event":"a","cid":07}"#,
        r#"{"event":"a","cid":7}x"#,
        r#"{"event":"a","cid":7"#,
        r#"{"event":"a","data":tru}"#,
        r#"{"event":"a","data":"#,
        r#"{"event":"a""#,
        r#"{"event":"#,
    ];
    for text in cases {
        assert_eq!(decode_canonical(text), None, "{text}");
    }
}

#[test]
fn fast_path_leaves_the_rest_to_serde() {
    let cases = [
        "{}",
        r#"{"event":"a","x":1}"#,
        r#"{"event":"a\"b"}"#,
        r#"{"\u0065vent":"a"}"#,
        r#"{"event":5,"rid":1}"#,
        r#"{"event":"a","cid":-1}"#,
        r#"{"event":"a","cid":7.5}"#,
        r#"{"event":"a","cid":1e2}"#,
        r#"{"event":"a","cid":07}"#,
        r#"{"event":"a","cid":18446744073709551616}"#,
        r#"{"event":"a","cid":"7"}"#,
        r#"{"event":"a","event":"b"}"#,
        r#"{"event":"a","data":1,"data":1}"#,
        r#"{"event":"a",}"#,
        r#"{"event":"a"} x"#,
        r#"{"event":"a","data":tru}"#,
        r#"{"event":"a","data":1x}"#,
        r#"{"event":"a","data":{}x}"#,
        r#"{"data":1}"#,
        r#"{"cid":1}"#,
        "{\"event\":\"a\u{1}\"}",
        r#"{"event":"a""#,
        r#"{"event":"a","data":"#,
    ];
    for text in cases {
        assert_eq!(decode_packet_fast(text), None, "{text}");
    }
}

#[test]
fn scanner_pieces() {
    assert_eq!(skip_ws(b" \n\r\tx", 0), 4);
    assert_eq!(skip_ws(b"\x0bx", 0), 0);
    assert_eq!(skip_ws(b"  ", 1), 2);
    assert_eq!(plain_str_end(br#"abc"x"#, 0), Some(3));
    assert_eq!(plain_str_end(br#"a\"c"x"#, 0), None);
    assert_eq!(plain_str_end(b"a\nc\"", 0), None);
    assert_eq!(plain_str_end(b"abc", 0), None);
    assert_eq!(plain_str_end(b"", 5), None);
    assert_eq!(integer(b"0,", 0), Some((0, 1)));
    assert_eq!(integer(b"123}", 0), Some((123, 3)));
    assert_eq!(integer(b"18446744073709551615 ", 0), Some((u64::MAX, 20)));
    assert_eq!(integer(b"18446744073709551616 ", 0), None);
    assert_eq!(integer(b"99999999999999999999999 ", 0), None);
    for bad in [
        &b"01,"[..],
        b"-1,",
        b"1.0,",
        b"1e1,",
        b"1",
        b"x",
        b"",
        b"1x",
    ] {
        assert_eq!(integer(bad, 0), None, "{bad:?}");
    }
    let text = r#"x {"a":[1]} ,"#;
    let (value, end) = raw_value(text, 2).unwrap();
    assert_eq!((value.get(), &text[end..]), (r#"{"a":[1]}"#, " ,"));
    // What follows the value is the caller's to check.
    assert_eq!(
        raw_value("1x", 0).map(|(v, end)| (v.get(), end)),
        Some(("1", 1))
    );
    assert!(raw_value(" 1", 0).is_none());
    assert!(raw_value("tru", 0).is_none());
    assert!(raw_value("", 0).is_none());
    assert!(raw_value("ab", 5).is_none());
}

#[test]
fn borrow_checked_borrows_without_copying() {
    // If a serde_json release changes how it deserialises `&RawValue`, this fails (and decoding
    // silently takes the slower serde path).
    let text = r#"{"a":[1,"x"]}"#;
    let value = borrow_checked(text).expect("serde_json's RawValue protocol changed");
    assert_eq!(value.get(), text);
    assert_eq!(value.get().as_ptr(), text.as_ptr());
}

#[test]
fn skip_value_finds_the_end_of_valid_json() {
    let cases = [
        ("null", 4),
        ("true,", 4),
        ("false]", 5),
        ("0", 1),
        ("-0.5e+10 ", 8),
        ("12E3}", 4),
        (r#""a\"\\\/\b\f\n\r\t\u00E9\ud800""#, 31),
        (r#""é😀""#, 8),
        ("[]", 2),
        ("{}", 2),
        ("[ 1 , [ ] , { } ]x", 17),
        (r#"{ "a" : [ 1 , { "b" : null } ] , "c" : "d" }"#, 44),
        ("0x", 1),
        ("1.5.", 3),
    ];
    for (text, end) in cases {
        assert_eq!(skip_value(text.as_bytes(), 0), Some(end), "{text}");
    }
    let depth = MAX_FAST_DEPTH as usize;
    let nested = "[".repeat(depth) + &"]".repeat(depth);
    assert_eq!(skip_value(nested.as_bytes(), 0), Some(nested.len()));
    // Left to serde_json: too deep (65 open containers), or not JSON.
    let deeper = "[".repeat(depth + 2) + &"]".repeat(depth + 2);
    assert_eq!(skip_value(deeper.as_bytes(), 0), None);
    for text in [
        "",
        " 1",
        "tru",
        "nul",
        "True",
        "-",
        "00",
        "-01",
        "1.",
        ".5",
        "1e",
        "1e+",
        "+1",
        "--1",
        "\"a",
        r#""\u12""#,
        r#""\x""#,
        "\"a\u{1}\"",
        "[1,]",
        "[1 2]",
        "{\"a\"}",
        "{\"a\":1,}",
        "{a:1}",
        "{\"a\" 1}",
        "[",
        "{",
        "[1",
        "{\"a\":1",
        "]",
        "}",
        "[}",
        "{]",
        "{1:1}",
        "NaN",
    ] {
        assert_eq!(skip_value(text.as_bytes(), 0), None, "{text}");
    }
}

#[test]
fn plain_run_stops_at_the_first_special_byte() {
    for len in 0..40 {
        for special in [b'"', b'\\', 0, 0x1f, b'\n'] {
            for filler in [b'a', b' ', 0x7f, 0xc3, 0x20, 0x21, 0x5b, 0x5d, 0xff] {
                let mut s = vec![filler; len];
                assert_eq!(plain_run(&s), len);
                s.push(special);
                s.extend_from_slice(b"\"\\\x01xyzxyzxyz");
                assert_eq!(plain_run(&s), len, "{len} {special} {filler}");
            }
        }
    }
}

proptest! {
    #[test]
    fn plain_run_matches_a_byte_loop(s in prop::collection::vec(any::<u8>(), 0..64)) {
        let want = s.iter().position(|&c| c == b'"' || c == b'\\' || c < 0x20).unwrap_or(s.len());
        prop_assert_eq!(plain_run(&s), want);
    }
}

#[test]
fn json_str_borrows_when_it_can() {
    assert!(matches!(
        json_str(raw(r#""abc""#)),
        Some(Cow::Borrowed("abc"))
    ));
    assert!(matches!(json_str(raw(r#""a\nb""#)), Some(Cow::Owned(s)) if s == "a\nb"));
    assert_eq!(json_str(raw(r#""\ud800""#)), None);
    assert_eq!(json_str(raw("5")), None);
    assert_eq!(json_str(raw("null")), None);
    assert_eq!(json_str(raw(r#"["a"]"#)), None);
}

#[test]
fn present_keeps_null() {
    #[derive(Deserialize)]
    struct T<'a> {
        #[serde(borrow, default, deserialize_with = "present")]
        a: Option<&'a RawValue>,
    }
    let t: T<'_> = serde_json::from_str(r#"{"a":null}"#).unwrap();
    assert_eq!(t.a.map(RawValue::get), Some("null"));
    let t: T<'_> = serde_json::from_str("{}").unwrap();
    assert!(t.a.is_none());
}

#[test]
fn packet_equality_compares_payload_text() {
    let a = Packet::Transmit {
        event: "e".into(),
        data: Some(raw(r#"{"a":1}"#)),
    };
    let b = Packet::Transmit {
        event: Cow::Owned("e".to_owned()),
        data: Some(raw(r#"{"a":1}"#)),
    };
    let c = Packet::Transmit {
        event: "e".into(),
        data: Some(raw(r#"{ "a":1}"#)),
    };
    assert_eq!(a, b);
    assert_ne!(a, c);
    assert_ne!(a, Packet::Raw("e"));
    assert_ne!(Frame::Heartbeat, Frame::PingV1);
    assert_eq!(Frame::Batch(vec![a.clone()]), Frame::Batch(vec![b]));
    assert_eq!(a.event(), Some("e"));
    assert_eq!(Packet::Raw("x").event(), None);
}

/// The whole-frame decoder with the fast path switched off.
fn decode_slow(text: &str) -> Frame<'_> {
    decode_with(text, decode_packet_slow)
}

fn key() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(vec!["event", "data", "cid", "rid", "error"]).prop_map(|k| format!("\"{k}\"")),
        1 => prop::sample::select(vec![
            r#""x""#, r#""\u0065vent""#, r#""Event""#, r#""""#, r#""cid ""#, "event", "'event'",
        ])
        .prop_map(str::to_owned),
    ]
}

fn value() -> impl Strategy<Value = String> {
    let atoms = prop::sample::select(vec![
        r#""echo""#,
        r#""""#,
        r#""a\"b""#,
        r#""\ud800""#,
        r#""é😀""#,
        r#""a\tb""#,
        "\"\u{1}\"",
        r##""#publish""##,
        "0",
        "7",
        "-1",
        "-0",
        "7.5",
        "7.0",
        "1e2",
        "1E+2",
        "07",
        "00",
        "18446744073709551615",
        "18446744073709551616",
        "1e400",
        "123456789012345678901234",
        "null",
        "true",
        "false",
        "[]",
        "{}",
        r#"[1,{"a":null}]"#,
        r#"{"a":[1,2],"b":{"c":"d"}}"#,
        r#"{"channel":"c","data":1}"#,
        "[[[[[]]]]]",
        "tru",
        "[1,",
        r#""open"#,
        "",
        "x",
        "NaN",
        "1.",
        ".5",
        "-",
        "{\"a\"}",
        "{\"a\":1,}",
        "[1 2]",
    ])
    .prop_map(str::to_owned);
    prop_oneof![
        8 => atoms,
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
        1 => any::<u64>().prop_map(|n| n.to_string()),
    ]
}

fn ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![
        8 => Just(""),
        2 => prop::sample::select(vec![" ", "\n", "\r\n\t ", "\t"]),
        1 => prop::sample::select(vec!["\u{a0}", "\u{b}", "\u{feff}"]),
    ]
}

fn good_ws() -> impl Strategy<Value = &'static str> {
    prop_oneof![6 => Just(""), 1 => prop::sample::select(vec![" ", "\n", "\r\n\t "])]
}

/// A well-formed member of a packet: a known key with a value of the usual type (now and then a
/// value the fast path declines, such as an escaped event or a negative cid).
fn good_member() -> impl Strategy<Value = String> {
    let event = prop_oneof![
        4 => "[a-z#/ é😀]{0,12}".prop_map(|s| format!("\"{s}\"")),
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let id = prop_oneof![
        6 => any::<u64>().prop_map(|n| n.to_string()),
        2 => (0u64..1000).prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec!["-1", "7.5", "1e2", "18446744073709551616", "null", "\"7\""])
            .prop_map(str::to_owned),
    ];
    let payload = prop_oneof![
        2 => prop::sample::select(vec![
            "null", "1", "\"s\"", "[]", "{}", r#"{"a":[1,{"b":null}],"c":"d\"e"}"#, "-0.5e-3",
            r#"{"channel":"c","data":[true]}"#, r#"{"message":"m","name":"E"}"#, "[[[[[[1]]]]]]",
        ])
        .prop_map(str::to_owned),
        1 => any::<String>().prop_map(|s| serde_json::to_string(&s).unwrap()),
    ];
    let (event, id2, payload2) = (event.boxed(), id.clone().boxed(), payload.clone().boxed());
    (
        prop_oneof![
            Just("event").prop_flat_map(move |k| (Just(k), event.clone())),
            Just("cid").prop_flat_map(move |k| (Just(k), id.clone())),
            Just("rid").prop_flat_map(move |k| (Just(k), id2.clone())),
            Just("data").prop_flat_map(move |k| (Just(k), payload.clone())),
            Just("error").prop_flat_map(move |k| (Just(k), payload2.clone())),
        ],
        good_ws(),
        good_ws(),
    )
        .prop_map(|((k, v), a, b)| format!("{a}\"{k}\"{b}:{a}{v}{b}"))
}

/// Well-formed packet objects: known keys, in any order, each usually once.
fn good_object() -> impl Strategy<Value = String> {
    (
        good_ws(),
        prop::collection::vec(good_member(), 1..5),
        good_ws(),
    )
        .prop_map(|(a, members, b)| format!("{a}{{{}}}{b}", members.join(",")))
}

/// Object-shaped frames: well-formed ones and ones with defects anywhere.
fn object_frame() -> impl Strategy<Value = String> {
    prop_oneof![3 => good_object(), 2 => hostile_object()]
}

/// Object-shaped frames, mostly well-formed, with the odd defect.
fn hostile_object() -> impl Strategy<Value = String> {
    let member = (ws(), key(), ws(), ws(), value(), ws())
        .prop_map(|(a, k, b, c, v, d)| format!("{a}{k}{b}:{c}{v}{d}"));
    let sep = prop_oneof![20 => Just(","), 1 => Just(""), 1 => Just(",,"), 1 => Just(";")];
    (
        ws(),
        prop::collection::vec((member, sep), 0..7),
        prop_oneof![20 => Just("}"), 1 => Just(""), 1 => Just("]"), 1 => Just(",}")],
        ws(),
        prop_oneof![20 => Just(""), 1 => Just("x"), 1 => Just("}"), 1 => Just("{}")],
    )
        .prop_map(|(lead, members, close, trail, junk)| {
            let n = members.len();
            let body: String = members
                .into_iter()
                .enumerate()
                .map(|(i, (m, sep))| if i + 1 < n { format!("{m}{sep}") } else { m })
                .collect();
            format!("{lead}{{{body}{close}{trail}{junk}")
        })
}

/// Frames in the client's own shape (`{"event":E[,"data":D][,"cid":N]}`, no whitespace), with a
/// value, a cid or an ending that may be wrong.
fn client_frame() -> impl Strategy<Value = String> {
    let cid = prop_oneof![
        4 => any::<u64>().prop_map(|n| n.to_string()),
        1 => prop::sample::select(vec![
            "0", "07", "-1", "7.5", "1e3", "18446744073709551616", "99999999999999999999", "\"7\"", "",
        ])
        .prop_map(str::to_owned),
    ];
    let end = prop::sample::select(vec!["}", "}", "}", "} ", " }", "}x", "", ",}", "}}"]);
    let event = prop_oneof![
        4 => prop::sample::select(vec![r#""echo""#, r##""#publish""##, r#""""#, r#""é😀""#])
            .prop_map(str::to_owned),
        1 => value(),
    ];
    (event, prop::option::of(value()), prop::option::of(cid), end).prop_map(
        |(event, data, cid, end)| {
            let data = data.map_or(String::new(), |d| format!(",\"data\":{d}"));
            let cid = cid.map_or(String::new(), |c| format!(",\"cid\":{c}"));
            format!("{{\"event\":{event}{data}{cid}{end}")
        },
    )
}

fn any_frame() -> impl Strategy<Value = String> {
    prop_oneof![
        6 => object_frame(),
        3 => client_frame(),
        2 => prop::collection::vec(prop_oneof![4 => object_frame(), 1 => value()], 0..5)
            .prop_map(|items| format!("[{}]", items.join(","))),
        1 => any::<String>(),
        1 => (object_frame(), any::<prop::sample::Index>(), any::<String>()).prop_map(|(f, at, s)| {
            // Splice arbitrary text into a frame, on a char boundary.
            let cut = f.char_indices().map(|(i, _)| i).nth(at.index(f.chars().count().max(1))).unwrap_or(f.len());
            format!("{}{s}{}", &f[..cut], &f[cut..])
        }),
    ]
}

/// JSON values with every kind of token, and whitespace, as text.
fn json_text() -> impl Strategy<Value = String> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(serde_json::Value::from),
        any::<String>().prop_map(serde_json::Value::from),
    ];
    let value = leaf.prop_recursive(8, 64, 5, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..5).prop_map(serde_json::Value::Array),
            prop::collection::btree_map(any::<String>(), inner, 0..5)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    });
    (value, any::<bool>()).prop_map(|(v, pretty)| {
        if pretty {
            serde_json::to_string_pretty(&v).unwrap()
        } else {
            serde_json::to_string(&v).unwrap()
        }
    })
}

/// Text that is nearly JSON.
fn json_like() -> impl Strategy<Value = String> {
    prop_oneof![
        r#"[ \[\]{}",:0-9a-z\\.eE+\-\n]{0,48}"#,
        (
            json_text(),
            any::<prop::sample::Index>(),
            r#"[ \[\]{}",:0-9\\.eEu+\-]{0,3}"#
        )
            .prop_map(|(text, at, junk)| {
                let cut = text
                    .char_indices()
                    .map(|(i, _)| i)
                    .nth(at.index(text.chars().count().max(1)))
                    .unwrap_or(text.len());
                format!("{}{junk}{}", &text[..cut], &text[cut..])
            }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 4096, ..ProptestConfig::default() })]

    /// Whatever `skip_value` accepts, serde_json accepts with the same extent.
    #[test]
    fn skip_value_is_a_subset_of_serde(text in json_like()) {
        if let Some(end) = skip_value(text.as_bytes(), 0) {
            let serde = raw_value(&text, 0).map(|(v, end)| (v.get(), end));
            prop_assert_eq!(serde, Some((&text[..end], end)));
        }
    }

    /// And it accepts all valid JSON that is not too deep.
    #[test]
    fn skip_value_accepts_json(text in json_text()) {
        prop_assert_eq!(skip_value(text.as_bytes(), 0), Some(text.len()));
    }

    /// The fast scanner never changes a decision: `decode` equals the serde-only decoder.
    #[test]
    fn fast_path_matches_serde(text in any_frame()) {
        prop_assert_eq!(decode(&text), decode_slow(&text));
        if let Some(fast) = decode_packet_fast(&text) {
            prop_assert_eq!(fast, decode_packet_slow(&text));
        }
        if let Some(canonical) = decode_canonical(&text) {
            prop_assert_eq!(canonical, decode_packet_slow(&text));
        }
    }
}

/// Over 2,000 frames of `strategy`: how many `path` takes, and how many are packets at all. A
/// generator is only worth something if it reaches the path often and misses it often too.
fn path_reach(strategy: impl Strategy<Value = String>, path: fn(&str) -> bool) {
    use proptest::strategy::ValueTree;
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let (mut taken, mut packets) = (0, 0);
    for _ in 0..2000 {
        let text = strategy.new_tree(&mut runner).unwrap().current();
        taken += usize::from(path(&text));
        packets += usize::from(!matches!(decode_packet_slow(&text), Packet::Raw(_)));
    }
    assert!(taken > 200, "path taken {taken} times in 2000");
    assert!(
        packets >= taken + 20,
        "{packets} packets, {taken} on the path"
    );
}

#[test]
fn generator_reaches_both_paths() {
    path_reach(object_frame(), |text| decode_packet_fast(text).is_some());
}

#[test]
fn client_frames_reach_the_canonical_path() {
    path_reach(client_frame(), |text| decode_canonical(text).is_some());
}
