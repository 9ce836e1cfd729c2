//! RFC 6455 protocol conformance of the `/echo` endpoint, driven over raw TCP with hand-built
//! frames. The cases mirror the Autobahn testsuite's groups: 1 framing, 2 pings and pongs,
//! 3 reserved bits, 4 opcodes, 5 fragmentation, 6 UTF-8, 7 close handling, 9 limits, 10 misc.

mod common;

use std::fmt;
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use common::Daemon;
use tungstenite::handshake::client::generate_key;
use tungstenite::handshake::derive_accept_key;

/// The longest a single read may wait for the server.
const TIMEOUT: Duration = Duration::from_secs(5);
/// `limits.max_frame_bytes` of the echo daemon: room for the 16 MiB case.
const MAX_FRAME_BYTES: u64 = 20_000_000;

// Opcodes (RFC 6455 5.2).
const CONTINUATION: u8 = 0x0;
const TEXT: u8 = 0x1;
const BINARY: u8 = 0x2;
const CLOSE: u8 = 0x8;
const PING: u8 = 0x9;
const PONG: u8 = 0xA;

// The reserved bits as they sit in a frame's first byte.
const RSV1: u8 = 0x40;
const RSV2: u8 = 0x20;
const RSV3: u8 = 0x10;

/// The masking key of every client frame: no zero byte, so a server that skips unmasking fails.
const MASK: [u8; 4] = [0x37, 0xfa, 0x21, 0x3d];

/// Payload lengths on both sides of each length encoding's limit (RFC 6455 5.2), and 1 MiB.
const SIZES: [usize; 10] = [0, 1, 125, 126, 127, 128, 65535, 65536, 65537, 1 << 20];

// ---- toolkit ------------------------------------------------------------------------------------

/// A daemon with `/echo` on, no heartbeat ping during a test, and room for 16 MiB messages.
fn echo_daemon() -> Daemon {
    echo_daemon_with(&[])
}

/// `echo_daemon` with `extra` config lines, which replace its own lines of the same key.
fn echo_daemon_with(extra: common::Overrides) -> Daemon {
    let max_frame = format!("max_frame_bytes = {MAX_FRAME_BYTES}");
    let mut config = vec![
        ("server", "echo = true"),
        ("server", "heartbeat = \"1h\""),
        ("limits", max_frame.as_str()),
        ("limits", "max_outbound_bytes = 50000000"),
    ];
    config.extend_from_slice(extra);
    Daemon::start_with(&config)
}

/// The header of a client frame announcing `len` payload bytes, with the shortest length
/// encoding (7-bit, 16-bit or 64-bit) and, unless `mask` is `None`, the mask bit and masking
/// key (RFC 6455 5.2). `rsv` holds RSV1-3 as they sit in the first byte.
fn header(fin: bool, rsv: u8, opcode: u8, mask: Option<[u8; 4]>, len: u64) -> Vec<u8> {
    let mut out = vec![(u8::from(fin) << 7) | rsv | opcode];
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    match len {
        0..=125 => out.push(mask_bit | len as u8),
        126..=0xFFFF => {
            out.push(mask_bit | 126);
            out.extend((len as u16).to_be_bytes());
        }
        _ => {
            out.push(mask_bit | 127);
            out.extend(len.to_be_bytes());
        }
    }
    if let Some(key) = mask {
        out.extend(key);
    }
    out
}

/// A masked client frame carrying `payload`.
fn frame(fin: bool, rsv: u8, opcode: u8, payload: &[u8]) -> Vec<u8> {
    let mut out = header(fin, rsv, opcode, Some(MASK), payload.len() as u64);
    out.extend(payload.iter().zip(MASK.iter().cycle()).map(|(b, m)| b ^ m));
    out
}

/// A final masked frame without reserved bits: a whole message or a control frame.
fn msg(opcode: u8, payload: &[u8]) -> Vec<u8> {
    frame(true, 0, opcode, payload)
}

/// A close frame's payload: the code, big-endian, then the reason (RFC 6455 5.5.1).
fn close_payload(code: u16, reason: &[u8]) -> Vec<u8> {
    [&code.to_be_bytes()[..], reason].concat()
}

/// One message as frames carrying `pieces` in order: the first has `opcode`, the rest are
/// continuations, and only the last has FIN (RFC 6455 5.4).
fn fragments(opcode: u8, pieces: &[&[u8]]) -> Vec<Vec<u8>> {
    let last = pieces.len() - 1;
    let op = |i| if i == 0 { opcode } else { CONTINUATION };
    pieces.iter().enumerate().map(|(i, piece)| frame(i == last, 0, op(i), piece)).collect()
}

/// A message of two fragments, kept apart so a control frame can go between them.
fn two_fragments(opcode: u8, first: &[u8], second: &[u8]) -> [Vec<u8>; 2] {
    [frame(false, 0, opcode, first), frame(true, 0, CONTINUATION, second)]
}

/// `len` bytes of ASCII text.
fn text_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| b'a' + (i % 26) as u8).collect()
}

/// `len` bytes cycling through 0..=250 (a prime period, so an offset slip shows), which is
/// not UTF-8 once past 128 bytes.
fn binary_payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// A frame as the server sent it.
struct Frame {
    fin: bool,
    opcode: u8,
    payload: Vec<u8>,
}

impl fmt::Debug for Frame {
    fn fmt(&self, f: &mut fmt::Formatter) -> fmt::Result {
        let start = &self.payload[..self.payload.len().min(32)];
        write!(
            f,
            "Frame {{ fin: {}, opcode: {:#x}, {} bytes: {start:02x?}.. }}",
            self.fin,
            self.opcode,
            self.payload.len()
        )
    }
}

/// Panics at the first byte where `got` and `want` differ, without printing megabytes.
fn assert_same_payload(got: &[u8], want: &[u8]) {
    if got != want {
        let at = got.iter().zip(want).position(|(a, b)| a != b).unwrap_or(got.len().min(want.len()));
        panic!("payload differs: got {} bytes, want {}, first difference at byte {at}", got.len(), want.len());
    }
}

/// A raw client connection to `/echo`, past the opening handshake.
struct Conn {
    stream: TcpStream,
}

impl Conn {
    fn open(addr: SocketAddr) -> Conn {
        Conn::open_with_key(addr, &generate_key())
    }

    /// Sends the opening handshake with `key` and checks the 101 answer and its
    /// `Upgrade`, `Connection` and `Sec-WebSocket-Accept` headers (RFC 6455 4.2.2).
    fn open_with_key(addr: SocketAddr, key: &str) -> Conn {
        let mut stream = TcpStream::connect(addr).expect("tcp connect");
        stream.set_read_timeout(Some(TIMEOUT)).unwrap();
        stream.set_nodelay(true).unwrap();
        let request = format!(
            "GET /echo HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n"
        );
        stream.write_all(request.as_bytes()).expect("send handshake");
        let mut conn = Conn { stream };
        let head = conn.read_response_head();
        let mut lines = head.split("\r\n");
        let status = lines.next().unwrap_or_default();
        assert!(status.starts_with("HTTP/1.1 101 "), "handshake refused:\n{head}");
        let headers: Vec<(String, &str)> =
            lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim())).collect();
        let header = |name: &str| headers.iter().find(|(k, _)| k == name).map(|(_, v)| *v);
        assert!(header("upgrade").is_some_and(|v| v.eq_ignore_ascii_case("websocket")), "{head}");
        let connection = header("connection").unwrap_or_default();
        assert!(connection.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade")), "{head}");
        assert_eq!(header("sec-websocket-accept"), Some(derive_accept_key(key.as_bytes()).as_str()), "{head}");
        conn
    }

    /// Reads the HTTP response head a byte at a time, so no frame byte behind it is consumed.
    fn read_response_head(&mut self) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0u8];
            self.read_exact(&mut byte, "the handshake response");
            head.push(byte[0]);
        }
        String::from_utf8(head).expect("ASCII response head")
    }

    fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).expect("send");
    }

    /// Sends `bytes` in writes of `chunk_size` bytes (no Nagle delay), so the server sees
    /// frames split at arbitrary points across reads.
    fn send_in_chunks(&mut self, bytes: &[u8], chunk_size: usize) {
        for chunk in bytes.chunks(chunk_size) {
            self.stream.write_all(chunk).expect("send");
            self.stream.flush().expect("flush");
        }
    }

    fn send_byte_by_byte(&mut self, bytes: &[u8]) {
        self.send_in_chunks(bytes, 1);
    }

    fn read_exact(&mut self, buf: &mut [u8], what: &str) {
        match self.stream.read_exact(buf) {
            Ok(()) => {}
            Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => {
                panic!("no {what} within {TIMEOUT:?}")
            }
            Err(e) => panic!("reading {what}: {e}"),
        }
    }

    /// The next frame from the server, checked to be unmasked (RFC 6455 5.1), without reserved
    /// bits, with the shortest length encoding (5.2), and unfragmented if a control frame (5.5).
    fn read_frame(&mut self) -> Frame {
        let mut head = [0u8; 2];
        self.read_exact(&mut head, "frame header");
        assert_eq!(head[0] & (RSV1 | RSV2 | RSV3), 0, "server frame with reserved bits: {head:02x?}");
        assert_eq!(head[1] & 0x80, 0, "masked server frame: {head:02x?}");
        let len = match head[1] & 0x7f {
            126 => {
                let mut ext = [0u8; 2];
                self.read_exact(&mut ext, "16-bit length");
                let len = u64::from(u16::from_be_bytes(ext));
                assert!(len > 125, "16-bit encoding of length {len}");
                len
            }
            127 => {
                let mut ext = [0u8; 8];
                self.read_exact(&mut ext, "64-bit length");
                let len = u64::from_be_bytes(ext);
                assert!(len > 0xFFFF && len >> 63 == 0, "64-bit encoding of length {len}");
                len
            }
            len => u64::from(len),
        };
        let mut payload = vec![0; len as usize];
        self.read_exact(&mut payload, "frame payload");
        let frame = Frame { fin: head[0] & 0x80 != 0, opcode: head[0] & 0x0f, payload };
        if frame.opcode >= CLOSE {
            assert!(frame.fin && frame.payload.len() <= 125, "malformed control frame {frame:?}");
        }
        frame
    }

    /// Asserts the next frame is a single final frame of `opcode` carrying exactly `payload`.
    fn expect_frame(&mut self, opcode: u8, payload: &[u8]) {
        let frame = self.read_frame();
        assert!(frame.fin && frame.opcode == opcode, "expected a final {opcode:#x} frame, got {frame:?}");
        assert_same_payload(&frame.payload, payload);
    }

    /// Reads the server's close frame, which must be the next frame, checks its payload is
    /// well-formed (RFC 6455 5.5.1), then that the server ends the TCP connection. Returns the
    /// close code, if the frame has one.
    fn read_close(&mut self) -> Option<u16> {
        let frame = self.read_frame();
        assert_eq!(frame.opcode, CLOSE, "expected a close frame, got {frame:?}");
        let code = match frame.payload.as_slice() {
            [] => None,
            [_] => panic!("close frame with a 1-byte payload"),
            [hi, lo, reason @ ..] => {
                assert!(std::str::from_utf8(reason).is_ok(), "close reason is not UTF-8: {frame:?}");
                Some(u16::from_be_bytes([*hi, *lo]))
            }
        };
        self.expect_eof();
        code
    }

    fn expect_close(&mut self, code: u16) {
        assert_eq!(self.read_close(), Some(code), "close code");
    }

    /// Asserts the server ends the TCP connection (EOF) within the timeout, sending nothing more.
    fn expect_eof(&mut self) {
        let mut rest = Vec::new();
        match self.stream.read_to_end(&mut rest) {
            Ok(_) => assert!(
                rest.is_empty(),
                "{} bytes after the close frame: {:02x?}",
                rest.len(),
                &rest[..rest.len().min(32)]
            ),
            Err(e) => panic!("expected EOF after the close frame, got {e} ({} bytes before it)", rest.len()),
        }
    }

    /// The client starts a normal close: the server must answer 1000 and hang up.
    fn close_normally(&mut self) {
        self.send(&msg(CLOSE, &close_payload(1000, b"")));
        self.expect_close(1000);
    }
}

// ---- 1: framing ---------------------------------------------------------------------------------

/// Sends one `opcode` message of each of `SIZES` in writes of `chunk_size` bytes (whole frames
/// when `None`) and checks each echo.
fn echo_each_size(addr: SocketAddr, opcode: u8, chunk_size: Option<usize>) {
    let mut ws = Conn::open(addr);
    for len in SIZES {
        let payload = if opcode == TEXT { text_payload(len) } else { binary_payload(len) };
        let bytes = msg(opcode, &payload);
        ws.send_in_chunks(&bytes, chunk_size.unwrap_or(bytes.len()));
        ws.expect_frame(opcode, &payload);
    }
    ws.close_normally();
}

/// RFC 6455 5.2, 5.6: text messages at each payload-length encoding boundary echo intact.
#[test]
fn case_1_1_text_echo_sizes() {
    let d = echo_daemon();
    echo_each_size(d.addr, TEXT, None);
}

/// RFC 6455 5.2, 5.6: binary messages at each payload-length encoding boundary echo intact.
#[test]
fn case_1_2_binary_echo_sizes() {
    let d = echo_daemon();
    echo_each_size(d.addr, BINARY, None);
}

/// RFC 6455 5.2: text frames split across TCP writes of 1, 7 and 997 bytes echo intact.
#[test]
fn case_1_1_text_echo_sizes_in_chunks() {
    let d = echo_daemon();
    for chunk_size in [1, 7, 997] {
        echo_each_size(d.addr, TEXT, Some(chunk_size));
    }
}

/// RFC 6455 5.2: binary frames split across TCP writes of 1, 7 and 997 bytes echo intact.
#[test]
fn case_1_2_binary_echo_sizes_in_chunks() {
    let d = echo_daemon();
    for chunk_size in [1, 7, 997] {
        echo_each_size(d.addr, BINARY, Some(chunk_size));
    }
}

/// RFC 6455 5.2: many frames in one write are each parsed and echoed, in order.
#[test]
fn case_1_3_pipelined_frames_echo_in_order() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    // Every size but 1 MiB, text and binary alternating.
    let messages: Vec<(u8, Vec<u8>)> =
        SIZES[..9].iter().flat_map(|&len| [(TEXT, text_payload(len)), (BINARY, binary_payload(len))]).collect();
    let batch: Vec<u8> = messages.iter().flat_map(|(op, payload)| msg(*op, payload)).collect();
    ws.send(&batch);
    for (op, payload) in &messages {
        ws.expect_frame(*op, payload);
    }
    ws.close_normally();
}

// ---- 2: pings and pongs -------------------------------------------------------------------------

/// RFC 6455 5.5.2, 5.5.3: a ping without payload gets a pong without payload.
#[test]
fn case_2_1_ping_without_payload_gets_empty_pong() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(PING, b""));
    ws.expect_frame(PONG, b"");
    ws.close_normally();
}

/// RFC 6455 5.5.3: a pong carries the ping's "Application data", binary included.
#[test]
fn case_2_3_ping_binary_payload_gets_same_pong() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = [0x00, 0xff, 0xfe, 0xfd, 0xfc, 0xfb, 0x80, 0x7f];
    ws.send(&msg(PING, &payload));
    ws.expect_frame(PONG, &payload);
    ws.close_normally();
}

/// RFC 6455 5.5: a ping with the largest control payload (125 bytes) gets the same pong.
#[test]
fn case_2_4_ping_125_byte_payload_gets_same_pong() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = binary_payload(125);
    ws.send(&msg(PING, &payload));
    ws.expect_frame(PONG, &payload);
    ws.close_normally();
}

/// RFC 6455 5.5: "All control frames MUST have a payload length of 125 bytes or less".
#[test]
fn case_2_5_ping_126_byte_payload_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(PING, &binary_payload(126)));
    ws.expect_close(1002);
}

/// RFC 6455 5.5.2: a 125-byte ping delivered a byte at a time gets the same pong.
#[test]
fn case_2_6_ping_125_bytes_byte_by_byte() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = binary_payload(125);
    ws.send_byte_by_byte(&msg(PING, &payload));
    ws.expect_frame(PONG, &payload);
    ws.close_normally();
}

/// RFC 6455 5.5.3: "A response to an unsolicited Pong frame is not expected."
#[test]
fn case_2_7_unsolicited_pongs_are_ignored() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[msg(PONG, b""), msg(PONG, b"unsolicited"), msg(TEXT, b"still here")].concat());
    ws.expect_frame(TEXT, b"still here");
    ws.close_normally();
}

/// RFC 6455 5.5.2: ten pings in one write get ten pongs, in order.
#[test]
fn case_2_10_ten_pings_in_one_write_get_ten_pongs_in_order() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
    ws.send(&payloads.iter().flat_map(|p| msg(PING, p)).collect::<Vec<u8>>());
    for payload in &payloads {
        ws.expect_frame(PONG, payload);
    }
    ws.close_normally();
}

/// RFC 6455 5.5.2: ten pings delivered a byte at a time get ten pongs, in order.
#[test]
fn case_2_11_ten_pings_byte_by_byte_get_ten_pongs_in_order() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payloads: Vec<Vec<u8>> = (0..10).map(|i| format!("ping {i}").into_bytes()).collect();
    ws.send_byte_by_byte(&payloads.iter().flat_map(|p| msg(PING, p)).collect::<Vec<u8>>());
    for payload in &payloads {
        ws.expect_frame(PONG, payload);
    }
    ws.close_normally();
}

// ---- 3: reserved bits ---------------------------------------------------------------------------

/// Every non-zero combination of RSV1-3.
fn rsv_combinations() -> impl Iterator<Item = u8> {
    (1..8u8).map(|n| n << 4)
}

/// RFC 6455 5.2: RSV bits set without a negotiated extension fail the connection, on data frames.
#[test]
fn case_3_1_rsv_bits_on_data_frames_fail_1002() {
    let d = echo_daemon();
    for opcode in [TEXT, BINARY] {
        for rsv in rsv_combinations() {
            let mut ws = Conn::open(d.addr);
            ws.send(&frame(true, rsv, opcode, b"Hello"));
            ws.expect_close(1002);
        }
    }
}

/// RFC 6455 5.2: a valid message before an RSV2 frame is echoed; nothing after it is.
#[test]
fn case_3_2_rsv2_text_after_valid_text_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[msg(TEXT, b"before"), frame(true, RSV2, TEXT, b"Hello"), msg(TEXT, b"after")].concat());
    ws.expect_frame(TEXT, b"before");
    ws.expect_close(1002);
}

/// RFC 6455 5.2: after an RSV3 frame, a following ping gets no pong.
#[test]
fn case_3_3_rsv3_text_then_ping_fails_1002_without_pong() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[msg(TEXT, b"before"), frame(true, RSV3, TEXT, b"Hello"), msg(PING, b"after")].concat());
    ws.expect_frame(TEXT, b"before");
    ws.expect_close(1002);
}

/// RFC 6455 5.2: the same with RSV1, every frame delivered a byte at a time.
#[test]
fn case_3_4_rsv1_text_byte_by_byte_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send_byte_by_byte(&[msg(TEXT, b"before"), frame(true, RSV1, TEXT, b"Hello"), msg(PING, b"after")].concat());
    ws.expect_frame(TEXT, b"before");
    ws.expect_close(1002);
}

/// RFC 6455 5.2: RSV bits on control frames (ping, pong, close) fail the connection.
#[test]
fn case_3_6_rsv_bits_on_control_frames_fail_1002() {
    let d = echo_daemon();
    let payloads: [(u8, Vec<u8>); 3] =
        [(PING, b"ping".to_vec()), (PONG, b"pong".to_vec()), (CLOSE, close_payload(1000, b""))];
    for (opcode, payload) in &payloads {
        for rsv in rsv_combinations() {
            let mut ws = Conn::open(d.addr);
            ws.send(&frame(true, rsv, *opcode, payload));
            ws.expect_close(1002);
        }
    }
}

// ---- 4: opcodes ---------------------------------------------------------------------------------

/// Sends `opcode` empty on one connection and with a payload between a text and a ping on
/// another: each must fail with 1002, the text echoed first and no pong after.
fn expect_opcode_rejected(addr: SocketAddr, opcode: u8) {
    let mut ws = Conn::open(addr);
    ws.send(&msg(opcode, b""));
    ws.expect_close(1002);
    let mut ws = Conn::open(addr);
    ws.send(&[msg(TEXT, b"before"), msg(opcode, b"reserved"), msg(PING, b"after")].concat());
    ws.expect_frame(TEXT, b"before");
    ws.expect_close(1002);
}

/// RFC 6455 5.2: the reserved non-control opcodes 0x3-0x7 fail the connection.
#[test]
fn case_4_1_reserved_data_opcodes_fail_1002() {
    let d = echo_daemon();
    for opcode in 0x3..=0x7 {
        expect_opcode_rejected(d.addr, opcode);
    }
}

/// RFC 6455 5.2: the reserved control opcodes 0xB-0xF fail the connection.
#[test]
fn case_4_2_reserved_control_opcodes_fail_1002() {
    let d = echo_daemon();
    for opcode in 0xB..=0xF {
        expect_opcode_rejected(d.addr, opcode);
    }
}

// ---- 5: fragmentation ---------------------------------------------------------------------------

/// RFC 6455 5.4: "Control frames ... MUST NOT be fragmented" (a ping with FIN=0).
#[test]
fn case_5_1_fragmented_ping_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[frame(false, 0, PING, b"fragment1"), frame(true, 0, CONTINUATION, b"fragment2")].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4: a pong with FIN=0 fails the connection.
#[test]
fn case_5_2_fragmented_pong_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[frame(false, 0, PONG, b"fragment1"), frame(true, 0, CONTINUATION, b"fragment2")].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4: a close with FIN=0 fails the connection.
#[test]
fn case_5_fragmented_close_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let close = close_payload(1000, b"fragmented");
    ws.send(&[frame(false, 0, CLOSE, &close[..4]), frame(true, 0, CONTINUATION, &close[4..])].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4: a text message in two fragments echoes as one message.
#[test]
fn case_5_3_text_in_two_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&fragments(TEXT, &[b"fragment1", b"fragment2"]).concat());
    ws.expect_frame(TEXT, b"fragment1fragment2");
    ws.close_normally();
}

/// RFC 6455 5.4: the same, delivered a byte at a time.
#[test]
fn case_5_4_text_in_two_fragments_byte_by_byte() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send_byte_by_byte(&fragments(TEXT, &[b"fragment1", b"fragment2"]).concat());
    ws.expect_frame(TEXT, b"fragment1fragment2");
    ws.close_normally();
}

/// RFC 6455 5.4: text and binary messages in many fragments echo whole.
#[test]
fn case_5_text_and_binary_in_many_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    for (opcode, payload) in [(TEXT, text_payload(5000)), (BINARY, binary_payload(5000))] {
        let pieces: Vec<&[u8]> = payload.chunks(97).collect();
        ws.send(&fragments(opcode, &pieces).concat());
        ws.expect_frame(opcode, &payload);
    }
    ws.close_normally();
}

/// RFC 6455 5.4: "Control frames MAY be injected in the middle of a fragmented message"; the
/// pong comes before the message it interrupted.
#[test]
fn case_5_6_fragmentation_with_interleaved_ping() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let [first, second] = two_fragments(TEXT, b"fragment1", b"fragment2");
    ws.send(&[first, msg(PING, b"pongme!"), second].concat());
    ws.expect_frame(PONG, b"pongme!");
    ws.expect_frame(TEXT, b"fragment1fragment2");
    ws.close_normally();
}

/// RFC 6455 5.4: the same, delivered a byte at a time.
#[test]
fn case_5_8_fragmentation_with_interleaved_ping_byte_by_byte() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let [first, second] = two_fragments(TEXT, b"fragment1", b"fragment2");
    ws.send_byte_by_byte(&[first, msg(PING, b"pongme!"), second].concat());
    ws.expect_frame(PONG, b"pongme!");
    ws.expect_frame(TEXT, b"fragment1fragment2");
    ws.close_normally();
}

/// RFC 6455 5.4, 5.5.3: an unsolicited pong between fragments is ignored.
#[test]
fn case_5_fragmentation_with_interleaved_pong() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let [first, second] = two_fragments(BINARY, b"fragment1", b"fragment2");
    ws.send(&[first, msg(PONG, b"unsolicited"), second].concat());
    ws.expect_frame(BINARY, b"fragment1fragment2");
    ws.close_normally();
}

/// RFC 6455 5.4: a continuation frame with nothing to continue fails the connection.
#[test]
fn case_5_9_continuation_without_start_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[frame(true, 0, CONTINUATION, b"non-continuation payload"), msg(TEXT, b"Hello")].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4: the same, delivered a byte at a time.
#[test]
fn case_5_10_continuation_without_start_byte_by_byte_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send_byte_by_byte(&[frame(true, 0, CONTINUATION, b"non-continuation payload"), msg(TEXT, b"Hello")].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4: a non-final continuation with nothing to continue fails the connection.
#[test]
fn case_5_12_unfinished_continuation_without_start_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[frame(false, 0, CONTINUATION, b"non-continuation payload"), msg(TEXT, b"Hello")].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4: a complete fragmented message is echoed; a stray final continuation after it
/// fails the connection and the text behind it is not echoed.
#[test]
fn case_5_17_stray_continuation_after_fragmented_message_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let mut batch = fragments(TEXT, &[b"fragment1", b"fragment2"]).concat();
    batch.extend(frame(true, 0, CONTINUATION, b"fragment3"));
    batch.extend(msg(TEXT, b"Hello"));
    ws.send(&batch);
    ws.expect_frame(TEXT, b"fragment1fragment2");
    ws.expect_close(1002);
}

/// RFC 6455 5.4: a new data frame while a fragmented message is open fails the connection.
#[test]
fn case_5_18_new_text_frame_inside_fragmented_message_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[frame(false, 0, TEXT, b"fragment1"), frame(true, 0, TEXT, b"fragment2")].concat());
    ws.expect_close(1002);
}

/// RFC 6455 5.4, 5.5.2: each ping between fragments is answered while the message is still
/// open, and the message echoes whole at the end.
#[test]
fn case_5_19_pings_between_many_fragments_are_answered_mid_message() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let pieces: [&[u8]; 5] = [b"fragment1", b"fragment2", b"fragment3", b"fragment4", b"fragment5"];
    for (i, fragment) in fragments(TEXT, &pieces).iter().enumerate() {
        ws.send(fragment);
        if i < pieces.len() - 1 {
            let ping = format!("pongme {i}");
            ws.send(&msg(PING, ping.as_bytes()));
            ws.expect_frame(PONG, ping.as_bytes());
        }
    }
    ws.expect_frame(TEXT, &pieces.concat());
    ws.close_normally();
}

// ---- 6: UTF-8 -----------------------------------------------------------------------------------

/// Valid text with 1- to 4-byte sequences, including the edges of each length and U+10FFFF.
const VALID_TEXT: [&str; 7] = [
    "Hello-\u{b5}@\u{df}\u{f6}\u{e4}\u{fc}\u{e0}\u{e1}-UTF-8!!",
    "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5}",
    "2-byte edges: \u{80} \u{7ff}",
    "3-byte edges: \u{800} \u{d7ff} \u{e000} \u{fffd} \u{fffe} \u{ffff}",
    "4-byte edges: \u{10000} \u{1d11e} \u{1f600} \u{10ffff}",
    "\u{feff}byte order mark",
    "\0NUL and DEL\x7f",
];

/// Invalid UTF-8 (RFC 3629), each behind a valid prefix.
const INVALID_UTF8: [(&str, &[u8]); 24] = [
    ("overlong '/' in 2 bytes", b"\xc0\xaf"),
    ("overlong '/' in 3 bytes", b"\xe0\x80\xaf"),
    ("overlong '/' in 4 bytes", b"\xf0\x80\x80\xaf"),
    ("overlong NUL", b"\xc0\x80"),
    ("largest overlong 2-byte", b"\xc1\xbf"),
    ("largest overlong 3-byte", b"\xe0\x9f\xbf"),
    ("largest overlong 4-byte", b"\xf0\x8f\xbf\xbf"),
    ("surrogate U+D800", b"\xed\xa0\x80"),
    ("surrogate U+DFFF", b"\xed\xbf\xbf"),
    ("surrogate pair", b"\xed\xa0\x80\xed\xb0\x80"),
    ("U+110000", b"\xf4\x90\x80\x80"),
    ("lead byte 0xF5", b"\xf5\x80\x80\x80"),
    ("5-byte form", b"\xf8\x88\x80\x80\x80"),
    ("6-byte form", b"\xfc\x84\x80\x80\x80\x80"),
    ("byte 0xFE", b"\xfe"),
    ("byte 0xFF", b"\xff"),
    ("lone continuation 0x80", b"\x80"),
    ("lone continuation 0xBF", b"\xbf"),
    ("continuation run", b"\x80\xbf\x80\xbf"),
    ("2-byte lead then ASCII", b"\xc2A"),
    ("3-byte sequence cut by ASCII", b"\xe2\x82A"),
    ("truncated 2-byte at end", b"\xc2"),
    ("truncated 3-byte at end", b"\xe2\x82"),
    ("truncated 4-byte at end", b"\xf0\x9f\x98"),
];

/// A message that is valid text up to `bad`.
fn invalid_text(bad: &[u8]) -> Vec<u8> {
    ["\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5} ".as_bytes(), bad].concat()
}

/// RFC 6455 5.4, 5.6: empty text fragments are valid, alone or around a non-empty one.
#[test]
fn case_6_1_empty_text_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&fragments(TEXT, &[b"", b"", b""]).concat());
    ws.expect_frame(TEXT, b"");
    ws.send(&fragments(TEXT, &[b"", b"middle", b""]).concat());
    ws.expect_frame(TEXT, b"middle");
    ws.close_normally();
}

/// RFC 6455 5.6: valid multi-byte UTF-8 text echoes byte for byte.
#[test]
fn case_6_2_valid_multibyte_text_echoes_exactly() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    for text in VALID_TEXT {
        ws.send(&msg(TEXT, text.as_bytes()));
        ws.expect_frame(TEXT, text.as_bytes());
    }
    ws.close_normally();
}

/// RFC 6455 5.6: valid text in 1-byte fragments (every multi-byte character split) echoes whole.
#[test]
fn case_6_2_3_valid_text_in_one_byte_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    for text in VALID_TEXT {
        let pieces: Vec<&[u8]> = text.as_bytes().chunks(1).collect();
        ws.send(&fragments(TEXT, &pieces).concat());
        ws.expect_frame(TEXT, text.as_bytes());
    }
    ws.close_normally();
}

/// RFC 6455 5.6: a 4-byte character split at each of its inner boundaries between two
/// fragments echoes correctly.
#[test]
fn case_6_2_4_four_byte_char_split_across_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    for text in ["a\u{1d11e}b", "a\u{10ffff}b"] {
        for cut in 2..=4 {
            let (head, tail) = text.as_bytes().split_at(cut);
            ws.send(&fragments(TEXT, &[head, tail]).concat());
            ws.expect_frame(TEXT, text.as_bytes());
        }
    }
    ws.close_normally();
}

/// RFC 6455 8.1: a text message with invalid UTF-8 fails the connection with 1007 (7.4.1).
#[test]
fn case_6_3_invalid_utf8_fails_1007() {
    let d = echo_daemon();
    for (what, bad) in INVALID_UTF8 {
        let mut ws = Conn::open(d.addr);
        ws.send(&msg(TEXT, &invalid_text(bad)));
        assert_eq!(ws.read_close(), Some(1007), "{what}");
    }
}

/// RFC 6455 8.1: the same invalid text sent as 1-byte fragments fails with 1007.
#[test]
fn case_6_3_2_invalid_utf8_in_one_byte_fragments_fails_1007() {
    let d = echo_daemon();
    for (what, bad) in INVALID_UTF8 {
        let mut ws = Conn::open(d.addr);
        let text = invalid_text(bad);
        let pieces: Vec<&[u8]> = text.chunks(1).collect();
        ws.send(&fragments(TEXT, &pieces).concat());
        assert_eq!(ws.read_close(), Some(1007), "{what}");
    }
}

/// The two Autobahn 6.4 splits of a message whose middle fragment makes it invalid (U+110000):
/// the bad sequence inside the second fragment, or its lead byte ending the first.
const SPLIT_INVALID: [[&[u8]; 3]; 2] = [
    [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5", b"\xf4\x90\x80\x80", b"edited"],
    [b"\xce\xba\xe1\xbd\xb9\xcf\x83\xce\xbc\xce\xb5\xf4", b"\x90", b"\x80\x80edited"],
];

/// RFC 6455 8.1: an invalid sequence split across fragments fails the connection with 1007.
#[test]
fn case_6_4_1_invalid_utf8_split_across_fragments_fails_1007() {
    let d = echo_daemon();
    for pieces in SPLIT_INVALID {
        let mut ws = Conn::open(d.addr);
        ws.send(&fragments(TEXT, &pieces).concat());
        ws.expect_close(1007);
    }
}

/// RFC 6455 8.1 ("fail fast"): the 1007 close arrives as soon as the fragment holding the bad
/// byte is in, before the final fragment is sent. tungstenite validates each fragment as it
/// arrives, so the final fragment is never sent here; a server that only validated whole
/// messages would time out.
#[test]
fn case_6_4_2_invalid_utf8_fails_fast_before_final_fragment() {
    let d = echo_daemon();
    for [first, bad, _never_sent] in SPLIT_INVALID {
        let mut ws = Conn::open(d.addr);
        ws.send(&frame(false, 0, TEXT, first));
        ws.send(&frame(false, 0, CONTINUATION, bad));
        ws.expect_close(1007);
    }
}

// ---- 7: close handling --------------------------------------------------------------------------

/// RFC 6455 5.5.1, 7.1.2: a message, then a close in a later write: echo, then close 1000, then EOF.
#[test]
fn case_7_1_1_text_then_close() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(TEXT, b"Hello World!"));
    ws.expect_frame(TEXT, b"Hello World!");
    ws.close_normally();
}

/// RFC 6455 5.5.1: a message and a close in one write: the echo must come before the close,
/// since "after sending a Close frame, the endpoint MUST NOT send any more data frames".
#[test]
fn case_7_1_1_text_and_close_in_one_write() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[msg(TEXT, b"Hello World!"), msg(CLOSE, &close_payload(1000, b""))].concat());
    ws.expect_frame(TEXT, b"Hello World!");
    ws.expect_close(1000);
}

/// RFC 6455 5.5.1: a second close after the first is ignored; one close answers.
#[test]
fn case_7_1_2_second_close_is_ignored() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let close = msg(CLOSE, &close_payload(1000, b""));
    ws.send(&[close.clone(), close].concat());
    ws.expect_close(1000);
}

/// RFC 6455 5.5.2: no pong for a ping sent after a close ("unless it already received a Close").
#[test]
fn case_7_1_3_ping_after_close_gets_no_pong() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[msg(CLOSE, &close_payload(1000, b"")), msg(PING, b"too late")].concat());
    ws.expect_close(1000);
}

/// RFC 6455 1.4, 5.5.1: data after the close is ignored (no echo).
#[test]
fn case_7_1_4_text_after_close_is_not_echoed() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&[msg(CLOSE, &close_payload(1000, b"")), msg(TEXT, b"too late")].concat());
    ws.expect_close(1000);
}

/// RFC 6455 5.5.1: a message whose last fragment comes after the close is never echoed.
#[test]
fn case_7_1_5_fragment_after_close_is_not_echoed() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let [first, second] = two_fragments(TEXT, b"fragment1", b"fragment2");
    ws.send(&[first, msg(CLOSE, &close_payload(1000, b"")), second].concat());
    ws.expect_close(1000);
}

/// RFC 6455 5.5.1: a close without payload is answered by a close (empty, or 1000) and EOF.
#[test]
fn case_7_3_1_close_without_payload() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(CLOSE, b""));
    let code = ws.read_close();
    assert!(matches!(code, None | Some(1000)), "answered with {code:?}");
}

/// RFC 6455 5.5.1: a close body starts with a 2-byte code, so a 1-byte payload is invalid.
#[test]
fn case_7_3_2_close_with_1_byte_payload_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(CLOSE, b"\x03"));
    ws.expect_close(1002);
}

/// RFC 6455 5.5.1: close 1000 without a reason is answered with 1000.
#[test]
fn case_7_3_3_close_1000_without_reason() {
    let d = echo_daemon();
    Conn::open(d.addr).close_normally();
}

/// RFC 6455 5.5.1: close 1000 with a reason is answered with 1000.
#[test]
fn case_7_3_4_close_1000_with_reason() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(CLOSE, &close_payload(1000, b"Hello World!")));
    ws.expect_close(1000);
}

/// RFC 6455 5.5: a close with the longest reason that fits (123 bytes) is answered with 1000.
#[test]
fn case_7_3_5_close_with_123_byte_reason() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(CLOSE, &close_payload(1000, &text_payload(123))));
    ws.expect_close(1000);
}

/// RFC 6455 5.5: a 124-byte reason makes a 126-byte control frame, which fails the connection.
#[test]
fn case_7_3_6_close_with_124_byte_reason_fails_1002() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(CLOSE, &close_payload(1000, &text_payload(124))));
    ws.expect_close(1002);
}

/// RFC 6455 5.5.1, 8.1: a close reason that is not UTF-8 fails the connection (1002 or 1007).
#[test]
fn case_7_5_1_close_with_invalid_utf8_reason() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&msg(CLOSE, &close_payload(1000, &invalid_text(b"\xf4\x90\x80\x80"))));
    let code = ws.read_close();
    assert!(matches!(code, Some(1002 | 1007)), "answered with {code:?}");
}

/// RFC 6455 7.4.1, 7.4.2: close codes defined for use on the wire are echoed.
#[test]
fn case_7_7_valid_close_codes_are_echoed() {
    let d = echo_daemon();
    for code in [1000, 1001, 1002, 1003, 1007, 1008, 1009, 1010, 1011, 3000, 3999, 4000, 4999] {
        let mut ws = Conn::open(d.addr);
        ws.send(&msg(CLOSE, &close_payload(code, b"")));
        assert_eq!(ws.read_close(), Some(code), "client closed with {code}");
    }
}

/// RFC 6455 7.4.1, 7.4.2: codes that must not appear in a close frame (unused, reserved, or
/// only for local reporting: 1004-1006, 1015) fail the connection with 1002.
#[test]
fn case_7_9_invalid_close_codes_fail_1002() {
    let d = echo_daemon();
    for code in [0, 999, 1004, 1005, 1006, 1015, 1016, 1100, 2000, 2999, 5000, 65535] {
        let mut ws = Conn::open(d.addr);
        ws.send(&msg(CLOSE, &close_payload(code, b"")));
        assert_eq!(ws.read_close(), Some(1002), "client closed with {code}");
    }
}

// ---- 9: limits and performance ------------------------------------------------------------------

/// RFC 6455 5.6: a 4 MiB text message echoes intact.
#[test]
fn case_9_1_4_text_message_4_mib() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = text_payload(4 << 20);
    ws.send(&msg(TEXT, &payload));
    ws.expect_frame(TEXT, &payload);
    ws.close_normally();
}

/// RFC 6455 5.6: a 16 MiB binary message echoes intact.
#[test]
fn case_9_2_6_binary_message_16_mib() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = binary_payload(16 << 20);
    ws.send(&msg(BINARY, &payload));
    ws.expect_frame(BINARY, &payload);
    ws.close_normally();
}

/// RFC 6455 5.4: a text message of 1000 fragments, cutting through multi-byte characters,
/// echoes intact.
#[test]
fn case_9_3_text_message_in_1000_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = "\u{3ba}\u{1f79}\u{3c3}\u{3bc}\u{3b5} \u{1d11e}".repeat(1000).into_bytes();
    let pieces: Vec<&[u8]> = payload.chunks(payload.len().div_ceil(1000)).collect();
    assert_eq!(pieces.len(), 1000);
    ws.send(&fragments(TEXT, &pieces).concat());
    ws.expect_frame(TEXT, &payload);
    ws.close_normally();
}

/// RFC 6455 5.4: a binary message of 1000 fragments echoes intact.
#[test]
fn case_9_4_binary_message_in_1000_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = binary_payload(1000 * 1024);
    let pieces: Vec<&[u8]> = payload.chunks(1024).collect();
    ws.send(&fragments(BINARY, &pieces).concat());
    ws.expect_frame(BINARY, &payload);
    ws.close_normally();
}

/// RFC 6455 7.4.1 (1009): a header announcing more than `max_frame_bytes` is refused at once,
/// without the payload ever being sent.
#[test]
fn case_9_frame_header_over_limit_fails_1009_before_payload() {
    let d = echo_daemon();
    for opcode in [TEXT, BINARY] {
        let mut ws = Conn::open(d.addr);
        ws.send(&header(true, 0, opcode, Some(MASK), MAX_FRAME_BYTES + 1));
        ws.expect_close(1009);
    }
}

/// RFC 6455 7.4.1 (1009): with `max_frame_bytes = 65536`, a message of exactly that size in
/// two fragments echoes, and one byte more fails with 1009.
#[test]
fn case_9_fragmented_message_over_limit_fails_1009() {
    let d = echo_daemon_with(&[("limits", "max_frame_bytes = 65536")]);
    let payload = binary_payload(65537);
    let mut ws = Conn::open(d.addr);
    ws.send(&fragments(BINARY, &[&payload[..40000], &payload[40000..65536]]).concat());
    ws.expect_frame(BINARY, &payload[..65536]);
    ws.close_normally();
    let mut ws = Conn::open(d.addr);
    ws.send(&fragments(BINARY, &[&payload[..40000], &payload[40000..]]).concat());
    ws.expect_close(1009);
}

// ---- 10: miscellaneous --------------------------------------------------------------------------

/// RFC 6455 1.3, 4.2.2: the server answers the RFC's sample key with the RFC's accept value.
#[test]
fn case_10_handshake_accept_key_matches_rfc_example() {
    assert_eq!(derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ=="), "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    let d = echo_daemon();
    let mut ws = Conn::open_with_key(d.addr, "dGhlIHNhbXBsZSBub25jZQ==");
    ws.send(&msg(TEXT, b"hi"));
    ws.expect_frame(TEXT, b"hi");
    ws.close_normally();
}

/// RFC 6455 5.4: a 65536-byte text message in 1300-byte fragments echoes intact.
#[test]
fn case_10_1_1_text_65536_in_1300_byte_fragments() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    let payload = text_payload(65536);
    let pieces: Vec<&[u8]> = payload.chunks(1300).collect();
    ws.send(&fragments(TEXT, &pieces).concat());
    ws.expect_frame(TEXT, &payload);
    ws.close_normally();
}

/// RFC 6455 5.1: "The server MUST close the connection upon receiving a frame that is not
/// masked" (data and control frames alike).
#[test]
fn case_10_unmasked_client_frame_fails_1002() {
    let d = echo_daemon();
    for (opcode, payload) in [(TEXT, &b"Hello"[..]), (BINARY, b"\x00\xff"), (PING, b"ping")] {
        let mut ws = Conn::open(d.addr);
        ws.send(&[header(true, 0, opcode, None, payload.len() as u64), payload.to_vec()].concat());
        ws.expect_close(1002);
    }
}

/// RFC 6455 5.2: a 64-bit length with the most significant bit set is invalid; the server
/// must fail the connection (1002, or 1009 as it is over any limit) rather than wait for it.
#[test]
fn case_10_length_with_most_significant_bit_set_fails() {
    let d = echo_daemon();
    let mut ws = Conn::open(d.addr);
    ws.send(&header(true, 0, BINARY, Some(MASK), 1 << 63));
    let code = ws.read_close();
    assert!(matches!(code, Some(1002 | 1009)), "answered with {code:?}");
}

/// RFC 6455 7.1.7: failing one connection leaves a concurrent one on the same shard working,
/// even with a fragmented message open across the failure.
#[test]
fn case_10_violation_leaves_other_connection_working() {
    let d = echo_daemon_with(&[("server", "shards = 1")]);
    let mut good = Conn::open(d.addr);
    let mut bad = Conn::open(d.addr);
    good.send(&msg(TEXT, b"first"));
    good.expect_frame(TEXT, b"first");
    good.send(&frame(false, 0, TEXT, b"before the violation, "));
    bad.send(&msg(0x3, b"reserved"));
    bad.expect_close(1002);
    good.send(&frame(true, 0, CONTINUATION, b"after it"));
    good.expect_frame(TEXT, b"before the violation, after it");
    good.close_normally();
}
