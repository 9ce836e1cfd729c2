//! Micro-benchmarks of the per-message work: `cargo bench --bench micro`.
//!
//! - verifying a JWT (every connecting client)
//! - parsing a client frame: our serde_json path against simd-json (the faster one belongs on
//!   the hot path)
//! - building one event frame (once per event, whatever the audience)
//! - fanning one frame out to N sockets the way a shard does: queue the shared bytes, one
//!   `writev` per socket

use std::hint::black_box;
use std::io::Read;
use std::os::unix::net::UnixStream;
use std::time::Duration;

use bytes::Bytes;
use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use roomcast::auth::{MintRequest, Verifier, mint};
use roomcast::config::Config;
use roomcast::protocol::{Request, ServerFrame, parse_client_frame};
use roomcast::ws::OutQueue;
use serde_json::value::RawValue;

const SEND_FRAME: &str =
    r#"{"type":"send","room":"team:general","body":{"text":"see you at the standup in five minutes"},"ref":"m-1042"}"#;

fn jwt(c: &mut Criterion) {
    let mut config = Config::default();
    config.auth.keys = vec![roomcast::config::KeyConfig { kid: "k".into(), secret: vec![7; 32] }];
    let verifier = Verifier::new(&config.auth);
    let now = 1_795_000_000;
    let rooms = vec!["team:*".to_string()];
    let request = MintRequest {
        sub: "alice",
        name: Some("Alice"),
        rooms: Some(&rooms),
        role: None,
        ttl: Some(Duration::from_secs(3600)),
        now_unix: now,
    };
    let token = mint(&config.auth.keys[0], &request);
    c.bench_function("jwt/verify_hs256", |b| b.iter(|| verifier.verify(black_box(&token), now).unwrap()));
}

/// What the hot path needs from a `send`: type, room, the raw body and the ref.
fn parse_with_simd_json(frame: &str) -> Option<(String, Box<RawValue>, Option<String>)> {
    use simd_json::prelude::*;
    // simd-json parses in place, so it needs its own copy of the frame.
    let mut bytes = frame.as_bytes().to_vec();
    let value = simd_json::to_borrowed_value(&mut bytes).ok()?;
    let object = value.as_object()?;
    if object.get("type")?.as_str()? != "send" {
        return None;
    }
    let room = object.get("room")?.as_str()?.to_string();
    // The body is forwarded as JSON text, so it has to be written back out.
    let body = RawValue::from_string(object.get("body")?.encode()).ok()?;
    let reference = object.get("ref").and_then(|r| r.as_str()).map(String::from);
    Some((room, body, reference))
}

fn parse(c: &mut Criterion) {
    let mut group = c.benchmark_group("parse_send_frame");
    group.throughput(Throughput::Bytes(SEND_FRAME.len() as u64));
    group.bench_function("serde_json_raw_value", |b| {
        b.iter(|| {
            let frame = parse_client_frame(black_box(SEND_FRAME));
            let Ok(Request::Send { room, body, .. }) = frame.request else { panic!() };
            black_box((room, body.to_owned(), frame.reference));
        })
    });
    group.bench_function("simd_json_borrowed", |b| {
        b.iter(|| black_box(parse_with_simd_json(black_box(SEND_FRAME)).unwrap()))
    });
    group.finish();
}

fn build_frame(c: &mut Criterion) {
    let body = RawValue::from_string(r#"{"text":"see you at the standup in five minutes"}"#.into()).unwrap();
    c.bench_function("frame/message_event", |b| {
        b.iter(|| {
            ServerFrame::Message {
                room: "team:general",
                seq: black_box(1042),
                from: "alice",
                name: Some("Alice"),
                body: &body,
                reply_to: None,
                ts: 1_795_000_000_000,
            }
            .to_frame()
        })
    });
}

fn fanout(c: &mut Criterion) {
    let frame = Bytes::from(vec![b'x'; 120]);
    let mut group = c.benchmark_group("fanout_one_frame");
    for members in [10usize, 100, 1000] {
        let pairs: Vec<(UnixStream, UnixStream)> = (0..members)
            .map(|_| {
                let (a, b) = UnixStream::pair().unwrap();
                a.set_nonblocking(true).unwrap();
                b.set_nonblocking(true).unwrap();
                (a, b)
            })
            .collect();
        let mut queues: Vec<OutQueue> = (0..members).map(|_| OutQueue::default()).collect();
        let mut sink = vec![0u8; 4096];
        group.throughput(Throughput::Elements(members as u64));
        group.bench_with_input(BenchmarkId::from_parameter(members), &members, |b, _| {
            b.iter(|| {
                for (queue, (writer, _)) in queues.iter_mut().zip(&pairs) {
                    queue.push(frame.clone());
                    let mut w = writer;
                    queue.flush(&mut w).unwrap();
                }
                // Drain the receiving ends so the socket buffers never fill.
                for (_, reader) in &pairs {
                    let mut r = reader;
                    while r.read(&mut sink).is_ok_and(|n| n > 0) {}
                }
            })
        });
    }
    group.finish();
}

criterion_group!(benches, jwt, parse, build_frame, fanout);
criterion_main!(benches);
