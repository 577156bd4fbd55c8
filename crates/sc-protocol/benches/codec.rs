//! Codec benchmarks: the hot path of an echo RPC (decode a typical invoke frame, encode its
//! response into a reused buffer) beside the naive `serde_json::Value` round trip, and a
//! `#publish` frame built once and handed to 1,000 subscribers.
//!
//! Run with `cargo bench -p sc-protocol --bench codec` (pin it to one core with `taskset -c 1` on a
//! busy machine).

#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used, clippy::panic)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_group, criterion_main};
use sc_protocol::encode::{PublishFrame, write_response};
use sc_protocol::{Frame, Packet, RawValue, decode};
use serde_json::{Map, Value};

/// A typical invoke: a ~100-byte JSON object as data.
const FRAME: &str = r#"{"event":"echo","data":{"id":1024,"user":"alice","text":"hello, world!","tags":["a","b","c"],"score":98.25,"ok":true,"meta":{"k":"v"}},"cid":7}"#;

/// What the naive codec does: parse to a `Value`, build the response `Value`, serialise it.
fn naive_round_trip(frame: &str) -> String {
    let Value::Object(mut packet) = serde_json::from_str::<Value>(frame).unwrap() else {
        panic!("not an object")
    };
    assert!(packet.get("event").is_some_and(Value::is_string));
    let mut response = Map::new();
    response.insert("rid".to_owned(), packet.remove("cid").unwrap());
    if let Some(data) = packet.remove("data") {
        response.insert("data".to_owned(), data);
    }
    serde_json::to_string(&Value::Object(response)).unwrap()
}

/// Ours: decode borrowing the payload, write the response into `buf`.
fn decode_encode(frame: &str, buf: &mut Vec<u8>) {
    buf.clear();
    match decode(frame) {
        Frame::Packet(Packet::Invoke { event, data, cid }) if event == "echo" => {
            write_response(buf, cid, data);
        }
        other => panic!("unexpected {other:?}"),
    }
}

fn rpc(c: &mut Criterion) {
    let data_len = {
        let Frame::Packet(Packet::Invoke { data, .. }) = decode(FRAME) else {
            panic!()
        };
        data.map_or(0, |d| d.get().len())
    };
    let mut buf = Vec::with_capacity(256);
    decode_encode(FRAME, &mut buf);
    // Same response (serde_json's map sorts the keys, so compare as values).
    assert_eq!(
        serde_json::from_slice::<Value>(&buf).unwrap(),
        serde_json::from_str::<Value>(&naive_round_trip(FRAME)).unwrap()
    );

    let mut group = c.benchmark_group(format!("echo invoke ({data_len}-byte data)"));
    group.bench_function("decode+encode pair", |b| {
        b.iter(|| decode_encode(black_box(FRAME), &mut buf));
    });
    group.bench_function("serde_json::Value round trip", |b| {
        b.iter(|| naive_round_trip(black_box(FRAME)));
    });
    group.bench_function("decode only", |b| {
        b.iter(|| black_box(decode(black_box(FRAME))));
    });
    group.finish();
}

fn publish(c: &mut Criterion) {
    let data: &RawValue =
        serde_json::from_str(r#"{"from":"alice","text":"hello, world!","at":1700000000000}"#)
            .unwrap();
    let mut subscribers: Vec<Bytes> = Vec::with_capacity(1000);
    c.bench_function("PublishFrame::new + 1,000 clones", |b| {
        b.iter(|| {
            let frame = PublishFrame::new(black_box("chat/room-1"), Some(data));
            subscribers.clear();
            subscribers.extend((0..1000).map(|_| frame.bytes().clone()));
            black_box(&subscribers);
        });
    });
}

criterion_group!(benches, rpc, publish);
criterion_main!(benches);
