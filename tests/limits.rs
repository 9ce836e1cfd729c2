//! Every limit and close code of the contract, and that one connection's trouble never
//! reaches another.

mod common;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::{Client, Daemon, WAIT, http_raw, token};
use serde_json::json;
use tungstenite::Message;
use tungstenite::protocol::frame::Frame;
use tungstenite::protocol::frame::coding::{Data, OpCode};

const UPGRADE: &str = "Upgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n";

#[test]
fn frame_over_max_frame_bytes_closes_1009() {
    let d = Daemon::start_with(&[("limits", "max_frame_bytes = 1024"), ("limits", "max_body_bytes = 512")]);
    let mut c = d.client("a");
    c.send_raw(&format!(r#"{{"type":"ping","pad":"{}"}}"#, "x".repeat(2000)));
    assert_eq!(c.expect_close(), Some(1009));
}

#[test]
fn binary_frame_closes_1003() {
    let d = Daemon::start();
    let mut c = d.client("a");
    c.ws.send(Message::binary(vec![1, 2, 3])).unwrap();
    assert_eq!(c.expect_close(), Some(1003));
}

#[test]
fn invalid_utf8_closes_1007() {
    let d = Daemon::start();
    let mut c = d.client("a");
    let frame = Frame::message(Bytes::from_static(b"{\"type\":\"\xff\"}"), OpCode::Data(Data::Text), true);
    c.ws.send(Message::Frame(frame)).unwrap();
    assert_eq!(c.expect_close(), Some(1007));
}

#[test]
fn unmasked_client_frame_closes_1002() {
    let d = Daemon::start();
    let mut s = raw_upgrade(&d, "/ws");
    s.write_all(&[0x81, 0x02, b'h', b'i']).unwrap();
    assert_eq!(read_close_code(&mut s), Some(1002));
}

#[test]
fn rate_limit_drops_then_closes_after_burst_drops_in_a_row() {
    let d = Daemon::start_with(&[("limits", "rate = 1"), ("limits", "burst = 3")]);
    let mut c = d.client("a");
    for i in 0..3 {
        assert_eq!(c.request(json!({"type": "ping", "ref": i.to_string()}), "pong")["ref"], i.to_string());
    }
    c.send(json!({"type": "ping", "ref": "dropped"}));
    let err = c.recv();
    assert_eq!((err["type"].clone(), err["code"].clone()), (json!("error"), json!("rate_limited")));
    assert_eq!(err["ref"], "dropped");
    c.send(json!({"type": "ping"}));
    c.send(json!({"type": "ping"}));
    assert_eq!(c.expect_close(), Some(1008));
}

#[test]
fn slow_reader_is_cut_off_with_1013_and_nobody_else_slows() {
    let d = Daemon::start_with(&[
        ("limits", "max_outbound_bytes = 262144"),
        ("limits", "rate = 100000"),
        ("limits", "burst = 100000"),
    ]);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.connect(&d.addr.into()).unwrap();
    let auth = format!("Bearer {}", token("slow"));
    let mut slow = Client::connect_over(socket.into(), &d, "/ws", &[("Authorization", &auth)]).unwrap();
    slow.recv_type("welcome");
    slow.join("r");
    let mut fast = d.client("fast");
    fast.join("r");
    let mut publisher = d.client("pub");
    publisher.join("r");
    let body = "x".repeat(7000);
    let count = 600;
    let reader = std::thread::spawn(move || {
        let mut seqs = 0;
        while seqs < count {
            if fast.recv()["type"] == "message" {
                seqs += 1;
            }
        }
        seqs
    });
    // Paced by acks, so a reader that keeps up never has much queued.
    for _ in 0..count {
        publisher.say("r", json!(body));
    }
    assert_eq!(reader.join().unwrap(), count, "the fast member got every message");
    assert_eq!(slow.expect_close(), Some(1013));
}

#[test]
fn max_connections_answers_503_and_frees_up() {
    let d = Daemon::start_with(&[("server", "max_connections = 2")]);
    let a = d.client("a");
    let _b = d.client("b");
    assert_eq!(Client::connect_with(&d, "/ws", &[]).err(), Some(503));
    let (status, _) = common::http_get(d.addr, "/healthz");
    assert_eq!(status, 200, "plain HTTP still works at the cap");
    drop(a);
    common::eventually("a slot to free up", || Client::connect_with(&d, "/ws", &[]).ok());
}

#[test]
fn max_connections_per_ip_answers_429() {
    let d = Daemon::start_with(&[("server", "max_connections_per_ip = 2")]);
    let a = d.client("a");
    let _b = d.client("b");
    assert_eq!(Client::connect_with(&d, "/ws", &[]).err(), Some(429));
    drop(a);
    common::eventually("the address to get a slot back", || Client::connect_with(&d, "/ws", &[]).ok());
}

#[test]
fn unfinished_handshakes_are_dropped_after_the_timeout() {
    let d = Daemon::start_with(&[("server", r#"handshake_timeout = "300ms""#)]);
    let mut silent = TcpStream::connect(d.addr).unwrap();
    let mut partial = TcpStream::connect(d.addr).unwrap();
    partial.write_all(b"GET /ws HTTP/1.1\r\nHost: x\r\n").unwrap();
    let started = Instant::now();
    for s in [&mut silent, &mut partial] {
        s.set_read_timeout(Some(WAIT)).unwrap();
        let mut buf = [0u8; 64];
        assert_eq!(s.read(&mut buf).unwrap_or(0), 0, "dropped without a response");
    }
    assert!(started.elapsed() < Duration::from_secs(5));
    let mut c = d.client("still-fine");
    assert_eq!(c.join("r")["room"], "r");
}

#[test]
fn silent_connections_get_pings_then_1001() {
    let d = Daemon::start_with(&[("server", r#"heartbeat = "200ms""#)]);
    let mut lively = d.client("lively");
    let mut silent = d.client("silent");
    // The lively client answers pings while it reads; the silent one reads nothing.
    let until = Instant::now() + Duration::from_millis(900);
    while Instant::now() < until {
        lively.expect_silence(Duration::from_millis(100));
    }
    assert_eq!(lively.request(json!({"type": "ping"}), "pong")["type"], "pong");
    let mut pings = 0;
    let code = loop {
        match silent.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(Message::Close(f)) => break f.map(|f| u16::from(f.code)),
            Ok(_) => {}
            Err(e) => panic!("{e}"),
        }
    };
    assert!(pings >= 1, "server pinged before giving up");
    assert_eq!(code, Some(1001));
}

#[test]
fn a_misbehaving_connection_leaves_the_others_untouched() {
    let d = Daemon::start();
    let mut a = d.client("a");
    let mut b = d.client("b");
    a.join("r");
    b.join("r");
    let mut bad = d.client("bad");
    bad.join("r");
    let frame = Frame::message(Bytes::from_static(b"\xc3\x28"), OpCode::Data(Data::Text), true);
    bad.ws.send(Message::Frame(frame)).unwrap();
    assert_eq!(bad.expect_close(), Some(1007));
    let mut raw = TcpStream::connect(d.addr).unwrap();
    raw.write_all(b"\x16\x03\x01 not http at all\r\n\r\n").unwrap();
    for i in 0..20 {
        a.say("r", json!(i));
    }
    let seqs: Vec<u64> = (0..20).map(|_| b.recv_type("message")["seq"].as_u64().unwrap()).collect();
    assert_eq!(seqs, (1..=20).collect::<Vec<_>>());
}

#[test]
fn http_errors() {
    let d = Daemon::start();
    let cases: [(&str, u16); 7] = [
        ("GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n", 404),
        ("this is not http\r\n\r\n", 400),
        ("GET /ws HTTP/1.1\r\nHost: x\r\n\r\n", 426),
        (&format!("POST /ws HTTP/1.1\r\nHost: x\r\n{UPGRADE}Content-Length: 0\r\n\r\n"), 405),
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 8\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
            426,
        ),
        (
            "GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\r\n",
            400,
        ),
        ("GET /echo HTTP/1.1\r\nHost: x\r\n\r\n", 404),
    ];
    for (request, status) in cases {
        assert_eq!(http_raw(d.addr, request).0, status, "{request:?}");
    }
    let huge = format!("GET / HTTP/1.1\r\nX: {}\r\n\r\n", "a".repeat(10_000));
    assert_eq!(http_raw(d.addr, &huge).0, 431);
    assert_eq!(common::http_get(d.addr, "/healthz"), (200, "ok\n".into()));
}

/// Upgrades a raw socket by hand and skips the 101 response and the welcome frame.
fn raw_upgrade(d: &Daemon, path: &str) -> TcpStream {
    let mut s = TcpStream::connect(d.addr).unwrap();
    s.set_read_timeout(Some(WAIT)).unwrap();
    let auth = format!("Authorization: Bearer {}\r\n", token("raw"));
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n{UPGRADE}{auth}\r\n").as_bytes()).unwrap();
    let mut head = Vec::new();
    let mut byte = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut byte).unwrap();
        head.push(byte[0]);
    }
    assert!(head.starts_with(b"HTTP/1.1 101"));
    let (opcode, payload) = read_frame(&mut s).expect("welcome");
    assert_eq!(opcode, 1);
    assert!(payload.starts_with(br#"{"type":"welcome""#));
    s
}

/// Reads one unmasked server frame: (opcode, payload); None on EOF.
fn read_frame(s: &mut TcpStream) -> Option<(u8, Vec<u8>)> {
    let mut h = [0u8; 2];
    s.read_exact(&mut h).ok()?;
    let len = match h[1] & 0x7f {
        126 => {
            let mut b = [0u8; 2];
            s.read_exact(&mut b).ok()?;
            u16::from_be_bytes(b) as usize
        }
        127 => {
            let mut b = [0u8; 8];
            s.read_exact(&mut b).ok()?;
            u64::from_be_bytes(b) as usize
        }
        n => n as usize,
    };
    let mut payload = vec![0u8; len];
    s.read_exact(&mut payload).ok()?;
    Some((h[0] & 0x0f, payload))
}

fn read_close_code(s: &mut TcpStream) -> Option<u16> {
    loop {
        let (opcode, payload) = read_frame(s)?;
        if opcode == 8 {
            return payload.get(..2).map(|b| u16::from_be_bytes([b[0], b[1]]));
        }
    }
}
